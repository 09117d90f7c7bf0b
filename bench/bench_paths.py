"""Path-method family benchmark: model calls and time, inputs alone against inputs together.

For each method, the six sample digits are explained one at a time and then all at once
(`Session.attribute_many`, as a batch run groups them). Together, their path points,
noisy copies, baselines and legs share model calls: Guided IG advances every input's path
in the same call each round; Blur IG and the others pack rows up to the batch size.
Prints gradient evaluations per input, model calls and seconds for both ways.

    .venv/bin/python bench/bench_paths.py [--model sample_models/digits_cnn.onnx]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "sample_inputs" / "digits"

METHODS = {
    "IG (straight)": {},
    "Blur IG": {"path": "blur"},
    "Guided IG": {"path": "guided"},
    "extremal": {"path": "extremal"},
    "Shapley, 4 orders": {"path": "shapley", "samples": 4},
    "multi-baseline (6)": {"baselines": str(DIGITS)},
    "expected gradients (200)": {"baselines": str(DIGITS), "samples": 200},
    "SmoothGrad x10": {"noise": 10},
    "Guided IG, SmoothGrad x4": {"path": "guided", "noise": 4},
    "XRAI": {"regions": "xrai"},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(ROOT / "sample_models" / "digits_cnn.onnx"))
    args = parser.parse_args()
    os.environ.setdefault("IGCLI_CACHE_DIR", tempfile.mkdtemp(prefix="igcli-bench-"))
    import igcli
    from igcli.session import AttributionSettings

    session = igcli.Session(args.model)
    samples = [session.load(p)[0] for p in sorted(DIGITS.glob("*.png"))]
    session.attribute_many(samples[:1], None, AttributionSettings(steps=4))  # warm up
    runner = session.runner
    print(f"{args.model}: {len(samples)} inputs, up to {runner.batch_size} rows per call")
    head = f"{'method':26} {'grads/input':>11} {'calls alone':>11} {'s alone':>8} "
    print(head + f"{'calls together':>14} {'s together':>10} {'speed-up':>8}")
    for name, options in METHODS.items():
        settings = AttributionSettings(**options)
        calls, start = runner.calls, time.perf_counter()
        alone = [session.attribute_many([s], None, settings)[0][0] for s in samples]
        alone_calls, alone_s = runner.calls - calls, time.perf_counter() - start
        calls, start = runner.calls, time.perf_counter()
        session.attribute_many(samples, None, settings)
        together_calls, together_s = runner.calls - calls, time.perf_counter() - start
        grads = sum(a.extra["steps_used"] for a in alone) / len(alone)
        print(f"{name:26} {grads:11.0f} {alone_calls:11d} {alone_s:8.2f} "
              f"{together_calls:14d} {together_s:10.2f} {alone_s / together_s:7.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
