"""Where a gradient-graph call spends its time: ONNX Runtime's profiler, per op type.

For each model, builds the gradient graph the way igcli does, times a forward call and a
gradient-graph call at one batch (interleaved, median of --repeats), then profiles a few
gradient calls (SessionOptions.enable_profiling) and prints the time per op type, split into
the forward part and the reverse part of the graph, and the layout reorders ONNX Runtime
inserted. `--save DIR` also writes ONNX Runtime's optimised graphs there, for a look with
an ONNX viewer.

    .venv/bin/python bench/profile_gradients.py [--models resnet50,densenet121,vit]
        [--batch 16] [--threads 2] [--repeats 5] [--top 15] [--save DIR]

`vit` is bench/bench_vs_captum.py's ViT-S/16, which that script exports into its workdir
(/tmp/igcli-bench/vit.onnx; see its docstring for the venv). Any other model: its .onnx path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from igcli.autodiff import GRAD, SEED  # noqa: E402
from igcli.autodiff.shapes import build_gradient_model_probing  # noqa: E402
from igcli.model import session_options  # noqa: E402

VIT = Path("/tmp/igcli-bench/vit.onnx")  # bench_vs_captum.py's default workdir


def load_case(name: str) -> onnx.ModelProto:
    """A light model with seeded weights and a free batch, or an ONNX file's path."""
    if name.endswith(".onnx"):
        return onnx.load(name)
    if name == "vit":
        return onnx.load(str(VIT))
    from tests.light_models import randomized

    return randomized(name, batch_free=True)


def free_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = "N"
    del model.graph.value_info[:]
    return model


def session(model: onnx.ModelProto, threads: int, profile: str | None = None, save=None):
    """A session with igcli's own options: ONNX Runtime's defaults (memory pattern on, say)
    time some kernels differently, a ViT's widest MatMuls at twice igcli's time."""
    opts = session_options(threads)
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    if save:
        opts.optimized_model_filepath = str(save)
    return ort.InferenceSession(model.SerializeToString(), opts, ["CPUExecutionProvider"])


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def node_kinds(grad_model: onnx.ModelProto, n_forward: int) -> dict[str, str]:
    """Node name -> 'fwd' or 'bwd' (the driver appends reverse nodes after the forward ones)."""
    kinds = {}
    for k, node in enumerate(grad_model.graph.node):
        kinds[node.name or node.output[0]] = "fwd" if k < n_forward else "bwd"
    return kinds


def summarize(trace: list[dict], calls: int, top: int) -> list[str]:
    """Per op type (and forward/backward), the mean time per call; reorders called out."""
    per_op: dict[tuple[str, str], float] = defaultdict(float)
    count: dict[tuple[str, str], int] = defaultdict(int)
    for ev in trace:
        if ev.get("cat") != "Node" or not ev["name"].endswith("_kernel_time"):
            continue
        args = ev.get("args", {})
        op = args.get("op_name", "?")
        name = ev["name"][: -len("_kernel_time")]
        side = "bwd" if name.startswith("igcli_grad") else "fwd"
        if "reorder" in name.lower() or op.startswith("Reorder"):
            side = "reorder"
        per_op[(side, op)] += ev["dur"] / 1000.0 / calls
        count[(side, op)] += 1
    total = sum(per_op.values())
    by_side = defaultdict(float)
    for (side, _), ms in per_op.items():
        by_side[side] += ms
    lines = [
        f"  kernels {total:8.1f} ms/call: "
        + ", ".join(f"{s} {v:.1f}" for s, v in sorted(by_side.items()))
    ]
    for (side, op), ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]:
        n = count[(side, op)] // calls
        lines.append(f"    {side:7s} {op:24s} {ms:8.1f} ms  {100 * ms / total:5.1f}%  x{n}")
    return lines


def run_case(name: str, batch: int, threads: int, repeats: int, top: int, save) -> None:
    model = free_batch(load_case(name))
    inits = {i.name for i in model.graph.initializer}
    x_in = next(i for i in model.graph.input if i.name not in inits)
    out = model.graph.output[0].name
    start = time.perf_counter()
    grad_model = build_gradient_model_probing(model, x_in.name, out)
    build_s = time.perf_counter() - start
    shape = [batch] + [d.dim_value for d in x_in.type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(0).uniform(0, 1, size=shape).astype(np.float32)
    tmp = Path(tempfile.mkdtemp())
    save_dir = Path(save) if save else None
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(name).stem
    fwd = session(model, threads, save=save_dir / f"{stem}_fwd.onnx" if save_dir else None)
    bwd = session(grad_model, threads, save=save_dir / f"{stem}_grad.onnx" if save_dir else None)
    y = fwd.run([out], {x_in.name: x})[0]
    seed = np.zeros_like(y)
    seed.reshape(len(y), -1)[:, 0] = 1
    feeds = {x_in.name: x, SEED: seed}
    bwd.run([GRAD], feeds)  # warm-up
    f_times, g_times = [], []
    for _ in range(repeats):  # interleaved, so load from other processes hits both alike
        f_times.append(median_time(lambda: fwd.run([out], {x_in.name: x}), 1))
        g_times.append(median_time(lambda: bwd.run([out, GRAD], feeds), 1))
    f, g = statistics.median(f_times), statistics.median(g_times)
    n_fwd = sum(1 for n in grad_model.graph.node if not n.name.startswith("igcli_grad"))
    n_bwd = len(grad_model.graph.node) - n_fwd
    print(f"{name}: batch {batch}, {threads} threads, {n_fwd} forward + {n_bwd} reverse nodes")
    print(f"  build gradient graph {build_s:6.2f} s")
    print(
        f"  forward {1000 * f:7.1f} ms (spread {1000 * min(f_times):.0f}-{1000 * max(f_times):.0f})"
        f"   gradient {1000 * g:7.1f} ms (spread {1000 * min(g_times):.0f}-"
        f"{1000 * max(g_times):.0f})   ratio {g / f:.2f}"
    )
    prof = session(grad_model, threads, profile=str(tmp / stem))
    calls = 3
    prof.run([GRAD], feeds)
    for _ in range(calls):
        prof.run([out, GRAD], feeds)
    trace_path = prof.end_profiling()
    trace = json.loads(Path(trace_path).read_text())
    # drop the warm-up call: keep the last `calls` runs' node events
    runs = [ev for ev in trace if ev.get("cat") == "Session" and ev["name"] == "model_run"]
    if len(runs) > calls:
        cutoff = runs[-calls]["ts"]
        trace = [ev for ev in trace if ev.get("ts", 0) >= cutoff]
    print("\n".join(summarize(trace, calls, top)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet50,densenet121")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--save")
    args = parser.parse_args()
    for name in args.models.split(","):
        run_case(name, args.batch, args.threads, args.repeats, args.top, args.save)


if __name__ == "__main__":
    main()
