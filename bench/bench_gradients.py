"""Gradient benchmark: forward call vs gradient-graph call, full IG, peak memory.

For the sample digits model, light_resnet50 at 224x224 (from the onnx package, with seeded
random weights) and any corpus model as `corpus:NAME` (tests/corpus, with its own input),
prints the time of one forward call on a batch of path points, one gradient-graph call on
the same batch (goal: at most 3x the forward call), a full IG explanation at 50 steps with
the gradient graph and with finite differences, and peak RSS. Each model runs in its own
subprocess so peak memory is its own.

    .venv/bin/python bench/bench_gradients.py [--batch 16] [--threads 2] [--fd-steps 50]
    .venv/bin/python bench/bench_gradients.py \
        --cases corpus:tv_vit_legacy_op17,corpus:tv_convnext_legacy_op17

Finite differences on a 224x224x3 image cost 2 forward rows per patch per step, so for
ResNet-50 they run with 32x32 patches and --fd-steps (default 4) steps, and the time is
also shown scaled to 50 steps.
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
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def best_of(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(case: str, batch: int, threads: int, fd_steps: int) -> dict:
    from igcli.gradients import FiniteDifferences, GraphGradients
    from igcli.ig import integrated_gradients
    from igcli.model import ModelRunner
    from igcli.session import Session, parse_groups

    tmp = Path(tempfile.mkdtemp())
    x = None
    if case == "digits":
        model = ROOT / "sample_models" / "digits_cnn.onnx"
        fd_groups, fd_steps = None, 50
    elif case.startswith("corpus:"):
        corpus = ROOT / "tests" / "corpus"
        manifest = json.loads((corpus / "corpus.json").read_text())
        entry = next(e for e in manifest["models"] if e["name"] == case.split(":", 1)[1])
        model = corpus / entry["file"]
        x = np.load(corpus / entry["input"]).astype(np.float32)
        x = x[0] if x.ndim == 4 else x
        fd_groups = "4x4"
    else:
        from tests.light_models import randomized

        model = tmp / "light_resnet50.onnx"
        onnx.save(randomized("resnet50", batch_free=True), str(model))
        fd_groups = "32x32"
    start = time.perf_counter()
    ex = Session(model, threads=threads, batch_size=batch, cache=False)
    setup = time.perf_counter() - start
    plain = ModelRunner(
        ex.run_model, model, ex.input_spec.name, ex.output_name, threads=threads, batch_size=batch
    )
    rng = np.random.default_rng(0)
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in ex.input_spec.shape[1:]]
    if x is None:
        x = rng.uniform(0, 1, size=shape).astype(np.float32)
    shape = list(x.shape)
    base = np.zeros_like(x)
    points = np.repeat(x[None], batch, axis=0)
    forward = best_of(lambda: plain.run(points))
    graph = best_of(lambda: ex.graph.run_with_gradients(points, 0))
    source = GraphGradients(ex.graph, 0)
    ig_graph = best_of(lambda: integrated_gradients(source, x, base, steps=50, batch_size=batch), 2)
    from igcli.inputs import Sample

    sample = Sample(model, "x", "image", x, pixels=np.zeros((*shape[1:], shape[0])))
    groups = parse_groups(fd_groups, sample, ex.prep)
    fd = FiniteDifferences(plain, 0, x - base, groups)
    start = time.perf_counter()
    integrated_gradients(fd, x, base, steps=fd_steps, batch_size=batch)
    ig_fd = time.perf_counter() - start
    return {
        "case": case,
        "input": list(x.shape),
        "batch": batch,
        "setup_s": setup,
        "forward_s": forward,
        "graph_s": graph,
        "ratio": graph / forward,
        "ig_graph_50_s": ig_graph,
        "ig_fd_s": ig_fd,
        "fd_steps": fd_steps,
        "fd_groups": fd_groups or "1",
        "fd_groups_count": len(fd.index_sets),
        "ig_fd_50_s": ig_fd * 50 / fd_steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fd-steps", type=int, default=4)
    parser.add_argument("--cases", default="digits,resnet50")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.threads, args.fd_steps)))
        return
    for case in args.cases.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            case,
            "--batch",
            str(args.batch),
            "--threads",
            str(args.threads),
            "--fd-steps",
            str(args.fd_steps),
        ]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        print(f"{r['case']}: input {r['input']}, batch {r['batch']}, {args.threads} threads")
        print(f"  build session + gradient graph    {r['setup_s']:8.3f} s")
        print(f"  forward call                      {r['forward_s']:8.4f} s")
        print(
            f"  gradient-graph call               {r['graph_s']:8.4f} s  "
            f"({r['ratio']:.2f}x forward; goal <= 3x)"
        )
        print(f"  IG, 50 steps, gradient graph      {r['ig_graph_50_s']:8.3f} s")
        print(
            f"  IG, {r['fd_steps']} steps, finite differences  {r['ig_fd_s']:8.3f} s  "
            f"({r['fd_groups_count']} groups of {r['fd_groups']}; "
            f"{r['ig_fd_50_s']:.1f} s at 50 steps)"
        )
        print(f"  peak RSS                          {r['peak_rss_mb']:8.1f} MB")


if __name__ == "__main__":
    main()
