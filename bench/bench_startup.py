"""Start-up of a second run: how long from process start until igcli starts explaining.

Runs `igcli explain MODEL INPUT --steps 2` in fresh processes against one cache folder (the
first run fills it and is shown apart) and prints, for each later run, the time from process
start to the first call of the IG core, split into imports, opening the model and the
session, and the rest (the first run of a graph also builds, saves and self-checks it).

    .venv/bin/python bench/bench_startup.py MODEL INPUT [--runs 5] [--cache DIR]

Issue goal: a second run of ResNet-50 starts explaining within 1 s of process start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs inside the measured process: marks the moments of interest, then runs the CLI, loaded
# as the `igcli` command loads it (igcli.launch.load_cli).
PROBE = r"""
import json, os, sys, time
t0 = time.perf_counter()
marks = {}
try:
    from igcli.launch import load_cli
    load_cli()
except ImportError:  # (an older tree, timed for comparison: it imported the CLI alone)
    from igcli.heap import keep_freed_memory
    keep_freed_memory()
import igcli.cli as cli
marks["imports"] = time.perf_counter() - t0
import igcli.session as session_mod

def wrap(mod, name, key):
    inner = getattr(mod, name)
    def timed(*args, **kwargs):
        marks.setdefault(key + "_start", time.perf_counter() - t0)
        try:
            return inner(*args, **kwargs)
        finally:
            marks.setdefault(key + "_end", time.perf_counter() - t0)
    setattr(mod, name, timed)

wrap(session_mod, "load_model", "load_model")
ig_core = session_mod.integrated_gradients_many
def first_ig(*args, **kwargs):
    marks.setdefault("explaining", time.perf_counter() - t0)
    return ig_core(*args, **kwargs)
session_mod.integrated_gradients_many = first_ig
try:
    cli.main(sys.argv[1:], prog_name="igcli")
finally:
    marks["exit"] = time.perf_counter() - t0
    with open(os.environ["IGCLI_BENCH_MARKS"], "w") as f:
        json.dump(marks, f)
"""


def one_run(model: str, inputs: str, cache: Path, out: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        marks_path = f.name
    env = {**os.environ, "IGCLI_CACHE_DIR": str(cache), "IGCLI_BENCH_MARKS": marks_path}
    argv = ["explain", model, inputs, "--steps", "2", "--out", str(out), "--no-heatmaps"]
    subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    marks = json.loads(Path(marks_path).read_text())
    os.unlink(marks_path)
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("input")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache", help="cache folder (default: a fresh temporary one)")
    args = parser.parse_args()
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="igcli-cache-"))
    out = Path(tempfile.mkdtemp(prefix="igcli-out-"))
    first = one_run(args.model, args.input, cache, out)
    print(f"first run (fills the cache): starts explaining at {first['explaining']:.2f} s")
    runs = [one_run(args.model, args.input, cache, out) for _ in range(args.runs)]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"later runs, median of {args.runs}:")
    print(f"  imports                {med('imports'):6.2f} s")
    print(f"  model loaded           {med('load_model_end'):6.2f} s")
    print(f"  starts explaining      {med('explaining'):6.2f} s   (goal: 1 s)")
    print(f"  process done           {med('exit'):6.2f} s")
    print("  each run: " + ", ".join(f"{r['explaining']:.2f}" for r in runs))


if __name__ == "__main__":
    main()
