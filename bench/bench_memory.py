"""Memory of whole runs, each a fresh process measured from outside (peak resident memory).

- resnet50: a default run (no --batch-size) of the onnx package's ResNet-50 graph (random
  weights, 224x224) on one input, against the memory budget the run chose.
- csv: a CSV of N rows of the breast-cancer model streams with flat memory; the peak should
  not grow with N.

    .venv/bin/python bench/bench_memory.py                 # both
    .venv/bin/python bench/bench_memory.py --case csv --rows 1000,10000,100000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `igcli args` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "igcli", *args, "--quiet"], cwd=ROOT, check=False)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print("  (peak hidden by an earlier, larger child; run the cases one by one)")
    return wall, peak / 1024


def resnet(tmp: Path, steps: int) -> None:
    import onnx

    from tests.light_models import randomized

    model = tmp / "resnet50.onnx"
    onnx.save(randomized("resnet50", batch_free=True), str(model))
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)
    np.save(tmp / "x.npy", x)
    out = tmp / "out"
    wall, peak = run(["explain", str(model), str(tmp / "x.npy"), "--steps", str(steps),
                      "--baseline", "zero", "--out", str(out)])  # fmt: skip
    s = json.loads((out / "report.json").read_text())["settings"]
    budget = s["memory_budget"] / 2**20
    print(f"resnet50 224x224, {steps} steps, default rows per call")
    print(f"  memory budget {budget:8.0f} MiB   peak RSS {peak:8.0f} MiB   wall {wall:6.1f} s")
    print(f"  rows per call: cap {s['batch_size_cap']} (measured {s['memory_per_row']} B/row), "
          f"settled {s['batch_size']}")  # fmt: skip


def csv_rows(tmp: Path, counts: list[int], steps: int) -> None:
    header = (ROOT / "sample_inputs" / "breast_cancer.csv").read_text().splitlines()
    base = np.array([[float(v) for v in line.split(",")] for line in header[1:]])
    rng = np.random.default_rng(0)
    print(f"CSV rows, breast-cancer MLP, {steps} steps, --no-heatmaps")
    print(f"{'rows':>8} {'wall s':>8} {'rows/s':>8} {'peak RSS MiB':>13}")
    for n in counts:
        path = tmp / f"rows{n}.csv"
        with open(path, "w") as fh:
            fh.write(header[0] + "\n")
            for k in range(0, n, 1000):
                block = base[rng.integers(0, len(base), size=min(1000, n - k))]
                block = block * rng.uniform(0.9, 1.1, size=block.shape)
                fh.writelines(",".join(f"{v:.6g}" for v in row) + "\n" for row in block)
        model = "sample_models/breast_cancer_mlp.onnx"
        out = str(tmp / f"o{n}")
        wall, peak = run(
            ["explain", model, str(path), "--steps", str(steps), "--no-heatmaps", "--out", out]
        )
        print(f"{n:>8} {wall:>8.1f} {n / wall:>8.0f} {peak:>13.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=["resnet50", "csv", "all"], default="all")
    parser.add_argument("--rows", default="1000,10000")
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.case in ("csv", "all"):
            csv_rows(Path(tmp), [int(v) for v in args.rows.split(",")], args.steps)
        if args.case in ("resnet50", "all"):
            resnet(Path(tmp), args.steps)


if __name__ == "__main__":
    main()
