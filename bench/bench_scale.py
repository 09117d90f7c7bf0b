"""Scale-out benchmark: what --dask costs per input against a one-process run, same machine.

Runs `igcli explain` on N digit images (as a subprocess each time, cache warm) four ways:
one process; --dask with a LocalCluster of 1 and of 2 worker processes started beforehand
(127.0.0.1 only); and --dask local:2 (the cluster started by igcli). Prints each run's wall
time (from report.json: the explain loop and the reports, without Python start-up and model
loading, which are the same for all), inputs per second, and the Dask overhead per input:
(1-worker Dask time - one-process time) / N, where both use the same cores for the model.
No thresholds: figures to read.

    .venv/bin/python bench/bench_scale.py [--n 1000] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "sample_models" / "digits_cnn.onnx"
sys.path.insert(0, str(ROOT))


def explain(inputs: Path, out: Path, steps: int, *extra: str) -> tuple[float, float]:
    """(wall seconds of the whole command, the report's wall_time_s)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "igcli", "explain", str(MODEL), str(inputs), "--out", str(out),
         "--steps", str(steps), "-q", "--no-heatmaps", *extra],
        check=True, cwd=ROOT,
    )  # fmt: skip
    total = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    return total, report["settings"]["wall_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="digit images")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    from distributed import LocalCluster

    from tests.scale_inputs import comparable, make_digits, output_files

    os.environ.setdefault("IGCLI_CACHE_DIR", tempfile.mkdtemp(prefix="igcli-bench-cache-"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_digits(tmp / "in", args.n)
        explain(tmp / "in", tmp / "warm", args.steps)  # the gradient graph into the cache
        rows = []
        total, loop = explain(tmp / "in", tmp / "local", args.steps)
        rows.append(("one process", total, loop))
        for workers in (1, 2):
            with LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None,
            ) as cluster:  # fmt: skip
                total, loop = explain(
                    tmp / "in", tmp / f"dask{workers}", args.steps, "--dask",
                    cluster.scheduler_address,
                )  # fmt: skip
            rows.append((f"--dask, {workers} worker(s) already up", total, loop))
        total, loop = explain(tmp / "in", tmp / "daskl2", args.steps, "--dask", "local:2")
        rows.append(("--dask local:2 (starts its cluster)", total, loop))
        # the same results? .npy bytes, records without timings, reports without timings
        local_files = output_files(tmp / "local")
        same = {}
        for name in ("dask1", "dask2", "daskl2"):
            files = output_files(tmp / name)
            equal = sum(files.get(k) == v for k, v in local_files.items())
            reports = [json.loads((tmp / d / "report.json").read_text()) for d in ("local", name)]
            same[name] = (equal, len(local_files), comparable(reports[0]) == comparable(reports[1]))

    n = args.n
    print(f"{n} digit images, {args.steps} steps, no heatmaps, {os.cpu_count()} cores")
    print(f"{'run':40s} {'command s':>10s} {'loop s':>8s} {'inputs/s':>9s}")
    for name, total, loop in rows:
        print(f"{name:40s} {total:10.2f} {loop:8.2f} {n / loop:9.1f}")
    for name, (equal, count, report) in same.items():
        print(f"{name}: {equal} of {count} output files identical to one process; "
              f"report equal but for timings: {report}")  # fmt: skip
    local, one = rows[0][2], rows[1][2]
    print(
        f"Dask overhead per input (1 worker vs one process, loop times): "
        f"{(one - local) / n * 1000:.2f} ms ({(one - local) / local * 100:+.0f}% of the local loop)"
    )


if __name__ == "__main__":
    main()
