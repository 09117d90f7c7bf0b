"""Intra-op threads 1 vs 2: a folder of small inputs against one large model.

For the `--threads` default. Three ways to use two cores, timed as whole `igcli explain`
processes with a warm gradient-graph cache, interleaved over --rounds (medians, spread):

- digits: --images sample-digit images (28x28, the bundled CNN) in one folder, with
  `--threads 1`, with `--threads 2`, and as two concurrent `--threads 1` shards
  (`--shard 1/2` and `--shard 2/2`);
- resnet50: one 224x224 input through light_resnet50 (seeded weights), 64 Gauss-Legendre
  steps, with `--threads 1` and `--threads 2`; igcli's own per-target time (the record's
  wall_time_s, without start-up) is shown too.

    .venv/bin/python bench/bench_threads.py [--images 200] [--rounds 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
IGCLI = [sys.executable, "-m", "igcli"]


def explain(model: Path, inputs: list[str], threads: int, cache: Path, out: Path, *extra):
    """Start one igcli process; returns the Popen (stdout: JSON Lines)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*IGCLI, "explain", str(model), *inputs, "--threads", str(threads), "--out", str(out),
           "--json", "--quiet", *extra]  # fmt: skip
    env = {**os.environ, "IGCLI_CACHE_DIR": str(cache)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc) -> list[dict]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"igcli failed ({proc.returncode}): {err.strip()[-500:]}")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def timed(*procs_args) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    procs = [explain(*a) for a in procs_args]
    records = [r for p in procs for r in finish(p)]
    return time.perf_counter() - start, records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="igcli-threads-"))
    work.mkdir(parents=True, exist_ok=True)
    from bench.bench_batch import make_inputs
    from tests.light_models import randomized

    digits_dir, digits = work / "digits", ROOT / "sample_models" / "digits_cnn.onnx"
    if not digits_dir.exists():
        digits_dir.mkdir()
        make_inputs(digits_dir, args.images)
    resnet = work / "resnet50.onnx"
    if not resnet.exists():
        onnx.save(randomized("resnet50", batch_free=True), str(resnet))
    x = work / "x.npy"
    np.save(x, np.random.default_rng(0).uniform(0, 1, (3, 224, 224)).astype(np.float32))
    cache = work / "cache"
    digit_args = [str(digits_dir), "-r"]
    big_args = [str(x), "--steps", str(args.steps), "--baseline", "zero", "--batch-size", "16"]
    finish(explain(digits, digit_args, 2, cache, work / "o"))  # fill the cache, untimed
    finish(explain(resnet, big_args, 2, cache, work / "o"))

    runs = {
        "digits, --threads 1": lambda: timed((digits, digit_args, 1, cache, work / "o1")),
        "digits, --threads 2": lambda: timed((digits, digit_args, 2, cache, work / "o1")),
        "digits, 2 shards x --threads 1": lambda: timed(
            (digits, [*digit_args, "--shard", "1/2"], 1, cache, work / "o1"),
            (digits, [*digit_args, "--shard", "2/2"], 1, cache, work / "o2"),
        ),
        "resnet50, --threads 1": lambda: timed((resnet, big_args, 1, cache, work / "o1")),
        "resnet50, --threads 2": lambda: timed((resnet, big_args, 2, cache, work / "o1")),
    }
    walls: dict[str, list[float]] = {k: [] for k in runs}
    inner: dict[str, list[float]] = {k: [] for k in runs}
    print(f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    for k in range(args.rounds):
        names = list(runs)
        names = names[k % len(names) :] + names[: k % len(names)]
        for name in names:
            took, records = runs[name]()
            walls[name].append(took)
            inner[name].append(sum(r.get("wall_time_s", 0.0) for r in records))
            print(f"  round {k + 1} {name:32s} {took:7.2f} s ({len(records)} records)", flush=True)
    print(f"\n{args.images} digit images; resnet50: one input, {args.steps} steps, batch 16. "
          f"Median (min-max) of {args.rounds} interleaved rounds.")  # fmt: skip
    print("| run | whole process, s | per input or target in igcli, s | inputs/s |")
    print("|---|---:|---:|---:|")
    for name in runs:
        w, i = walls[name], inner[name]
        n = args.images if name.startswith("digits") else 1
        print(f"| {name} | {statistics.median(w):.2f} ({min(w):.2f}-{max(w):.2f}) | "
              f"{statistics.median(i) / n:.3f} | {n / statistics.median(w):.2f} |")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
