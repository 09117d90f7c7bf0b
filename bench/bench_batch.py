"""Batch benchmark: N sample images through `igcli explain DIR`.

Prints inputs per second, the share of wall time spent outside model calls (goal: under
10%), the largest completeness error, and peak memory for several directory sizes (goal:
flat as the directory grows). Each size runs in a fresh subprocess so peak RSS belongs to
that run alone. `--steps auto` runs adaptive steps (default tolerance 0.5%). `--workers`
lists the worker-process settings to run each size with, side by side (1: one process;
auto: igcli's default, see igcli/pool.py); peak memory is the largest single process, and
with workers the model time is theirs added up (so "outside model" reads low).

    .venv/bin/python bench/bench_batch.py [--sizes 50,100,200] [--gradients auto] [--steps 50]
                                          [--workers 1,auto]
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "sample_models" / "digits_cnn.onnx"


def make_inputs(folder: Path, n: int) -> None:
    """n digit images: the samples, shifted and with a little noise, so no two are alike."""
    rng = np.random.default_rng(0)
    sources = [
        np.asarray(Image.open(p)) for p in sorted((ROOT / "sample_inputs" / "digits").glob("*.png"))
    ]
    for i in range(n):
        img = np.roll(sources[i % len(sources)], rng.integers(-2, 3, size=2), axis=(0, 1))
        noisy = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        sub = folder / f"part{i % 4}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(noisy).save(sub / f"img{i:04d}.png")


def one_run(n: int, gradients: str, steps: str, workers: str = "1") -> dict:
    from igcli.batch import OutputSettings, discover
    from igcli.console import Messages
    from igcli.run import plan, run_explain
    from igcli.session import AttributionSettings, Session

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        make_inputs(folder, n)
        out = Path(tmp) / "out"
        start = time.perf_counter()
        make = functools.partial(Session, MODEL, gradients=gradients)
        session = make()
        code = run_explain(
            session,
            plan(discover([str(folder)], recursive=True)),
            settings=AttributionSettings(steps=steps if steps == "auto" else int(steps)),
            targets=None,
            outputs=OutputSettings(out_dir=out),
            messages=Messages(quiet=True),
            workers=workers,
            session_factory=make,
        )
        wall = time.perf_counter() - start
        report = json.loads((out / "report.json").read_text())
    model_time = report["settings"]["model_time_s"]
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF,
                                                            resource.RUSAGE_CHILDREN))  # fmt: skip
    return {
        "inputs": n,
        "workers": (report["settings"].get("workers") or {}).get("processes", 1),
        "exit_code": int(code),
        "wall_s": round(wall, 2),
        "inputs_per_s": round(n / wall, 2),
        "model_time_s": model_time,
        "outside_model_share": round(1 - model_time / wall, 3),
        "peak_rss_mb": round(peak / 1024, 1),
        "gradient_source": report["settings"]["gradient_source"],
        "max_error": max(abs(r["rel_error"]) for r in report["results"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="50,100,200")
    parser.add_argument("--gradients", default="auto")
    parser.add_argument("--steps", default="50", help="path points, or auto")
    parser.add_argument("--workers", default="1,auto", help="settings to run side by side")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.gradients, args.steps, args.workers)))
        return
    print(
        f"{'inputs':>6} {'workers':>8} {'source':>6} {'wall s':>8} {'inputs/s':>9} "
        f"{'outside model':>14} {'max error':>10} {'peak RSS MB':>12}"
    )
    for n in (int(v) for v in args.sizes.split(",")):
        for workers in args.workers.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(n), "--gradients", args.gradients]
                + ["--steps", args.steps, "--workers", workers],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            asked = f"{workers}:{r['workers']}" if workers == "auto" else workers
            print(
                f"{r['inputs']:>6} {asked:>8} {r['gradient_source']:>6} {r['wall_s']:>8} "
                f"{r['inputs_per_s']:>9} {r['outside_model_share'] * 100:>13.1f}% "
                f"{r['max_error'] * 100:>9.3f}% {r['peak_rss_mb']:>12}"
            )


if __name__ == "__main__":
    main()
