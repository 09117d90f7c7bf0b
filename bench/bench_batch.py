"""Batch benchmark: N sample images through `igcli explain DIR`.

Prints inputs per second, the share of wall time spent outside model calls (goal: under
10%), the largest completeness error, and peak memory for several directory sizes (goal:
flat as the directory grows). Each size runs in a fresh subprocess so peak RSS belongs to
that run alone. Last, the ceiling the model calls alone set on this machine: the gradient
graph's rows per second on one thread (at its best call size) times the cores, over the
gradient rows an input took. No run can beat it, so it tells a slow machine from time lost
outside the model: 1,000 digits ran at 201 inputs/s on one 2-core machine, and
at 70-120 on another (AVX2 only, its speed drifting by 40% within an hour) whose ceiling was
339, where each row cost twice its isolated time in the run and the run's Python work
(drawing, writing, path points: about 8 ms of CPU per input) took the rest.

Inputs and outputs go to a tmpfs (/dev/shm) unless `--workdir DIR` says where: on ext4,
each new file makes the filesystem look over the inodes freed in the last minutes, and each
run of this script deletes 2,000 to 4,000 files when it ends, so a second run within minutes
read up to 15% slow. Into a fresh folder on a disk where nothing was deleted lately, the
same run took the time it takes on tmpfs (1,000 digits, farm-bench -n 5, paired: 1.007).

`--steps auto` runs adaptive steps (default tolerance 0.5%). `--workers`
lists the worker-process settings to run each size with, side by side (1: one process;
auto: igcli's default, see igcli/pool.py); peak memory is the largest single process, and
with workers the model time is theirs added up (so "outside model" reads low).

    .venv/bin/python bench/bench_batch.py [--sizes 50,100,200] [--gradients auto] [--steps 50]
                                          [--workers 1,auto] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
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


def one_run(n: int, gradients: str, steps: str, workers: str = "1", workdir=None) -> dict:
    from igcli.batch import OutputSettings, discover
    from igcli.console import Messages
    from igcli.heap import keep_freed_memory
    from igcli.run import plan, run_explain
    from igcli.session import AttributionSettings, Session

    keep_freed_memory()  # as the command's process does (igcli.launch)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
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
        "rows_per_input": statistics.mean(r["steps_used"] for r in report["results"]),
    }


def gradient_rows_per_s(rounds: int = 7) -> tuple[float, int]:
    """The sample model's gradient-graph rows per second on one thread, with igcli's session
    options, at its fastest call size (best of `rounds` interleaved timings): (rows/s, size)."""
    import onnx
    import onnxruntime as ort

    from igcli.autodiff import GRAD, SEED
    from igcli.autodiff.shapes import build_gradient_model_probing
    from igcli.memory import RowTuner
    from igcli.model import graph_inputs, graph_outputs, session_options, with_dynamic_batch

    model = with_dynamic_batch(onnx.load(MODEL))
    x_in, y_out = graph_inputs(model)[0], graph_outputs(model)[0]
    x_name, out = x_in.name, y_out.name
    grad = build_gradient_model_probing(model, x_name, out)
    session = ort.InferenceSession(grad.SerializeToString(), session_options(1),
                                   ["CPUExecutionProvider"])  # fmt: skip
    shape, out_shape = x_in.shape[1:], y_out.shape[1:]
    rng = np.random.default_rng(0)
    feeds = {}
    for size in [s for s in RowTuner.SIZES if s <= 128]:  # the sizes igcli's tuner tries
        seed = np.zeros((size, *out_shape), np.float32)
        seed.reshape(size, -1)[:, 0] = 1
        feeds[size] = {x_name: rng.uniform(0, 1, (size, *shape)).astype(np.float32), SEED: seed}
        session.run([out, GRAD], feeds[size])  # warm-up
    best: dict[int, float] = {}
    for _ in range(rounds):
        for size, feed in feeds.items():
            calls = max(1, 512 // size)
            start = time.perf_counter()
            for _ in range(calls):
                session.run([out, GRAD], feed)
            per_row = (time.perf_counter() - start) / (calls * size)
            best[size] = min(best.get(size, per_row), per_row)
    size = min(best, key=best.get)
    return 1 / best[size], size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="50,100,200")
    parser.add_argument("--gradients", default="auto")
    parser.add_argument("--steps", default="50", help="path points, or auto")
    parser.add_argument("--workers", default="1,auto", help="settings to run side by side")
    parser.add_argument(
        "--workdir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where inputs and outputs go (default: tmpfs where there is one, see above)",
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = one_run(args.one, args.gradients, args.steps, args.workers, args.workdir)
        print(json.dumps(result))
        return
    print(
        f"{'inputs':>6} {'workers':>8} {'source':>6} {'wall s':>8} {'inputs/s':>9} "
        f"{'outside model':>14} {'max error':>10} {'peak RSS MB':>12}"
    )
    rows = []
    for n in (int(v) for v in args.sizes.split(",")):
        for workers in args.workers.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(n), "--gradients", args.gradients]
                + ["--steps", args.steps, "--workers", workers]
                + (["--workdir", args.workdir] if args.workdir else []),
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r["rows_per_input"])
            asked = f"{workers}:{r['workers']}" if workers == "auto" else workers
            print(
                f"{r['inputs']:>6} {asked:>8} {r['gradient_source']:>6} {r['wall_s']:>8} "
                f"{r['inputs_per_s']:>9} {r['outside_model_share'] * 100:>13.1f}% "
                f"{r['max_error'] * 100:>9.3f}% {r['peak_rss_mb']:>12}"
            )
    from igcli.model import usable_cpus

    per_s, size = gradient_rows_per_s()
    cores = usable_cpus()
    per_input = statistics.mean(rows)
    print(
        f"ceiling: the gradient graph alone runs {per_s:.0f} rows/s on one thread (calls of "
        f"{size} rows); at {per_input:.1f} gradient rows per input on {cores} cores, no run "
        f"here can pass {per_s * cores / per_input:.0f} inputs/s"
    )


if __name__ == "__main__":
    main()
