"""Check a gradient graph against central finite differences.

`check_op` builds a one-node model, derives its gradient graph with the driver, and compares
the analytic gradient of sum(seed * output) with central differences of the forward model:
in float64 with onnx's reference evaluator (exact math), and in float32 with ONNX Runtime
(proves the emitted graph loads and runs where igcli runs it).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from igcli.autodiff import GRAD, SEED, build_gradient_model


class GatherElements(OpRun):
    """As ONNX Runtime runs it: indices may be shorter than the data on the other axes (the
    reference evaluator refuses that)."""

    op_domain = ""

    def _run(self, data, indices, axis=None):
        axis = (axis or 0) % data.ndim
        view = data[tuple(slice(0, n) if a != axis else slice(None)
                          for a, n in enumerate(indices.shape))]  # fmt: skip
        index = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(view, index, axis=axis),)


class Scatter(OpRun):
    """Scatter-9/10 (ScatterElements' earlier name, which the reference evaluator lacks):
    data with updates written at indices along axis."""

    op_domain = ""

    def _run(self, data, indices, updates, axis=None):
        axis = (axis or 0) % data.ndim
        out = data.copy()
        index = np.where(indices < 0, indices + data.shape[axis], indices)
        np.put_along_axis(out, index, updates, axis=axis)
        return (out,)


class MaxUnpool(OpRun):
    """With output_shape, as ONNX Runtime computes it: the reference evaluator scatters into
    the shape it infers from the window and pads that, so flat indices land wrong (or out of
    range) wherever output_shape is larger."""

    op_domain = ""

    def _run(self, x, indices, output_shape=None, kernel_shape=None, pads=None, strides=None):
        if output_shape is None:  # the shape the windows span
            n = len(kernel_shape)
            pads, strides = pads or [0] * 2 * n, strides or [1] * n
            output_shape = [*x.shape[:2], *((d - 1) * s + k - p - q for d, s, k, p, q in zip(
                x.shape[2:], strides, kernel_shape, pads[:n], pads[n:], strict=True))]  # fmt: skip
        out = np.zeros(int(np.prod(output_shape)), dtype=x.dtype)
        out[indices.ravel()] = x.ravel()
        return (out.reshape([int(d) for d in output_shape]),)


def _pool_windows(sizes, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides):
    """A pooling node's windows as ONNX Runtime lays them out: the padding before each
    spatial axis, the window counts, np.pad widths for [N, C, ...] and the strides and
    dilations filled in."""
    n = len(kernel_shape)
    strides, dilations = strides or [1] * n, dilations or [1] * n
    spans = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations, strict=True)]
    begins, outs = [], []
    for i, (size, st, span) in enumerate(zip(sizes, strides, spans, strict=True)):
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-size // st)
            total = max(0, (out - 1) * st + span - size)
            begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        else:
            begin, end = (0, 0) if auto_pad == "VALID" or not pads else (pads[i], pads[n + i])
            room = size + begin + end - span
            out = room // st + 1
            if ceil_mode:
                out = -(-room // st) + 1
                out -= (out - 1) * st >= size + begin  # a last window inside the end pad
            begins.append(begin)
        outs.append(out)
    axes = list(zip(outs, strides, spans, sizes, begins, strict=True))
    ends = [max(0, (o - 1) * st + span - sz - b) for o, st, span, sz, b in axes]
    widths = [(0, 0), (0, 0), *zip(begins, ends, strict=True)]
    return begins, outs, widths, strides, dilations


class LpPool(OpRun):
    """(sum of |x|^p over each window)^(1/p), pads adding nothing, as ONNX Runtime computes
    it: the reference evaluator averages and multiplies by the kernel size, wrong wherever a
    window meets the padding."""

    op_domain = ""

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None,
             p=2, pads=None, strides=None):  # fmt: skip
        _, outs, widths, strides, dilations = _pool_windows(
            x.shape[2:], auto_pad, ceil_mode, dilations, kernel_shape, pads, strides
        )
        xp = np.pad(np.abs(x) ** p, widths)
        total = np.zeros(x.shape[:2] + tuple(outs), dtype=x.dtype)
        for taps in itertools.product(*[range(k) for k in kernel_shape]):
            cut = tuple(slice(t * d, t * d + (o - 1) * st + 1, st) for t, d, o, st
                        in zip(taps, dilations, outs, strides, strict=True))  # fmt: skip
            total = total + xp[(slice(None), slice(None), *cut)]
        return (total ** (1.0 / p),)


class GlobalLpPool(OpRun):
    """(sum of |x|^p over all spatial positions)^(1/p) (not in the reference evaluator)."""

    op_domain = ""

    def _run(self, x, p=2):
        axes = tuple(range(2, x.ndim))
        return ((np.abs(x) ** p).sum(axis=axes, keepdims=True) ** (1.0 / p),)


class GridSample(OpRun):
    """Linear and nearest sampling of 2-D images and 3-D volumes in the input's precision, as
    ONNX Runtime computes it: the reference evaluator rounds the coordinates to float32, too
    coarse for differences."""

    op_domain = ""

    def _run(self, x, grid, mode=None, padding_mode=None, align_corners=None):
        mode, padding = mode or "linear", padding_mode or "zeros"
        n, spatial = x.shape[0], x.shape[2:]  # (H, W) or (D, H, W)
        nd = len(spatial)

        def pixel(normal, size):
            p = (normal + 1) / 2 * (size - 1) if align_corners else ((normal + 1) * size - 1) / 2
            lo, hi = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
            out = (p < lo) | (p > hi)
            if padding == "border":
                p = np.where(out, np.clip(p, 0, size - 1), p)
            elif padding == "reflection":
                span = hi - lo
                dist = np.where(p < lo, lo - p, p - hi)
                turns = np.floor(dist / span)
                rest = dist - turns * span
                from_lo = (p < lo) ^ (turns % 2 == 1)
                p = np.where(out, np.where(from_lo, lo + rest, hi - rest), p)
            return p

        # per spatial axis (D, H, W order), the pixel coordinate [N, *out]
        ps = [pixel(grid[..., nd - 1 - a], spatial[a]) for a in range(nd)]
        batch = np.arange(n).reshape(-1, *([1] * (grid.ndim - 2)))

        def read(idx):  # per-axis [N, *out] indices -> [N, C, *out]
            inside = np.ones(idx[0].shape, bool)
            for i, size in zip(idx, spatial, strict=True):
                inside &= (i >= 0) & (i < size)
            clipped = [np.clip(i, 0, size - 1) for i, size in zip(idx, spatial, strict=True)]
            v = x[(batch, slice(None), *clipped)]  # [N, *out, C]
            if padding == "zeros":
                v = v * inside[..., None]
            return np.moveaxis(v, -1, 1)

        if mode == "nearest":
            return (read([np.rint(p).astype(int) for p in ps]).astype(x.dtype),)
        lows = [np.floor(p) for p in ps]
        fracs = [(p - lo)[:, None] for p, lo in zip(ps, lows, strict=True)]
        out = 0.0
        for pick in itertools.product((0, 1), repeat=nd):
            w = 1.0
            for b, f in zip(pick, fracs, strict=True):
                w = w * (f if b else 1 - f)
            out = out + w * read([lo.astype(int) + b for lo, b in zip(lows, pick, strict=True)])
        return (out.astype(x.dtype),)


class AffineGrid(OpRun):
    """theta applied to the base grid, in theta's precision (the reference evaluator's is
    float32)."""

    op_domain = ""

    def _run(self, theta, size, align_corners=None):
        spatial = [int(d) for d in size[2:]]  # (H, W) or (D, H, W)

        def axis(n):
            if align_corners:
                return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
            return (2 * np.arange(n) + 1) / n - 1

        mesh = np.meshgrid(*[axis(n) for n in spatial], indexing="ij")[::-1]  # x first
        base = np.stack([*mesh, np.ones(spatial)], axis=-1).reshape(-1, len(spatial) + 1)
        grid = np.einsum("nij,pj->npi", theta, base)
        return (grid.reshape(theta.shape[0], *spatial, len(spatial)).astype(theta.dtype),)


class MaxPool(OpRun):
    """As ONNX Runtime computes it: the reference evaluator's Indices are off wherever pads
    meet stride 1 (they count the padded width). Each window's first maximum in row-major tap
    order; Indices flat over the whole unpadded tensor."""

    op_domain = ""

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None,
             pads=None, storage_order=None, strides=None):  # fmt: skip
        n, sizes = len(kernel_shape), x.shape[2:]
        begins, outs, widths, strides, dilations = _pool_windows(
            sizes, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides
        )
        xp = np.pad(x, widths, constant_values=-np.inf)
        best = np.full(x.shape[:2] + tuple(outs), -np.inf, dtype=x.dtype)
        where = np.full(best.shape, -1, dtype=np.int64)
        grids = np.meshgrid(*[np.arange(o) for o in outs], indexing="ij")
        for taps in itertools.product(*[range(k) for k in kernel_shape]):
            cut = tuple(slice(t * d, t * d + (o - 1) * st + 1, st) for t, d, o, st
                        in zip(taps, dilations, outs, strides, strict=True))  # fmt: skip
            vals = xp[(slice(None), slice(None), *cut)]
            coords = [g * st + t * d - b for g, st, t, d, b
                      in zip(grids, strides, taps, dilations, begins, strict=True)]  # fmt: skip
            bounds = [(c >= 0) & (c < sz) for c, sz in zip(coords, sizes, strict=True)]
            inside = np.logical_and.reduce(bounds)
            if storage_order:
                flat = coords[0] + coords[1] * sizes[0]
            else:
                clipped = [np.clip(c, 0, sz - 1) for c, sz in zip(coords, sizes, strict=True)]
                flat = np.ravel_multi_index(clipped, sizes)
            take = inside & ((vals > best) | (where < 0))
            best = np.where(take, vals, best)
            where = np.where(take, flat, where)
        plane = int(np.prod(sizes))
        offset = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[:2] + (1,) * n) * plane
        if len(self.onnx_node.output) > 1:
            return best, where + offset
        return (best,)


class BatchNormalization(OpRun):
    """Inference form at every opset."""

    op_domain = ""

    def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, training_mode=None):
        c = (1, -1) + (1,) * (x.ndim - 2)
        y = (x - mean.reshape(c)) / np.sqrt(var.reshape(c) + epsilon)
        return ((y * scale.reshape(c) + bias.reshape(c)).astype(x.dtype),)


class LRN(OpRun):
    """Window over channels c - (size-1)//2 .. c + ceil((size-1)/2)."""

    op_domain = ""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        before = (size - 1) // 2
        sq = np.pad(x * x, [(0, 0), (before, size - 1 - before)] + [(0, 0)] * (x.ndim - 2))
        window = sum(sq[:, j : j + x.shape[1]] for j in range(size))
        return ((x / (bias + alpha / size * window) ** beta).astype(x.dtype),)


class Softmax(OpRun):
    """Softmax-1..12: flatten to 2-D at `axis` (default 1), normalise each row."""

    op_domain = ""

    def _run(self, x, axis=None):
        # OpRun fills defaults from the newest schema (axis=-1): read the node itself.
        axis = next((a.i for a in self.onnx_node.attribute if a.name == "axis"), 1)
        rows = x.reshape(int(np.prod(x.shape[:axis])), -1)
        e = np.exp(rows - rows.max(axis=1, keepdims=True))
        return ((e / e.sum(axis=1, keepdims=True)).reshape(x.shape),)


REFERENCE_KERNELS = [GatherElements, Scatter, MaxPool, MaxUnpool, BatchNormalization, LRN,
                     LpPool, GlobalLpPool, GridSample, AffineGrid]  # fmt: skip


def reference_evaluator(model: onnx.ModelProto, extra=()) -> ReferenceEvaluator:
    """onnx's reference evaluator with the kernels above (and Softmax-1..12's flattening
    below opset 13), which compute real models right."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    kernels = [*REFERENCE_KERNELS, *([Softmax] if opset < 13 else []), *extra]
    return ReferenceEvaluator(model, new_ops=kernels)


NP_TO_ONNX = {
    np.dtype(np.float32): onnx.TensorProto.FLOAT,
    np.dtype(np.float64): onnx.TensorProto.DOUBLE,
}


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    output: str,
    opset: int,
    constants: dict[str, np.ndarray] | None = None,
    dynamic: bool = False,
) -> onnx.ModelProto:
    """A model whose graph inputs are `inputs` and whose `constants` are initializers."""
    graph_inputs = []
    for name, value in inputs.items():
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        shape = ["N", *value.shape[1:]] if dynamic and value.ndim else list(value.shape)
        graph_inputs.append(helper.make_tensor_value_info(name, elem, shape))
    inits = [numpy_helper.from_array(v, k) for k, v in (constants or {}).items()]
    graph = helper.make_graph(
        nodes,
        "check",
        graph_inputs,
        [helper.make_tensor_value_info(output, onnx.TensorProto.UNDEFINED, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    inferred = onnx.shape_inference.infer_shapes(model)
    found = [*inferred.graph.value_info, *inferred.graph.output]
    out_vi = next((v for v in found if v.name == output), None)
    if out_vi is not None:
        del model.graph.output[:]
        model.graph.output.append(out_vi)
    return model


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model computing in float64: initializers, constants, types and casts, in
    subgraphs (If branches) too."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _graph_to_float64(out.graph)
    return out


def _double(t: onnx.TensorProto) -> None:
    if t.data_type == TensorProto.FLOAT:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))


def _graph_to_float64(graph: onnx.GraphProto) -> None:
    for init in graph.initializer:
        _double(init)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _double(attr.t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _graph_to_float64(attr.g)
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE


class Runner:
    """Run forward and gradient models with one backend."""

    def __init__(self, model: onnx.ModelProto, wrt: str, output: str, backend: str) -> None:
        self.wrt, self.output, self.backend = wrt, output, backend
        grad_model = build_gradient_model(model, wrt, output)
        onnx.checker.check_model(grad_model)
        if backend == "reference":
            self.fwd = reference_evaluator(model)
            self.bwd = reference_evaluator(grad_model)
        else:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self.fwd = ort.InferenceSession(model.SerializeToString(), opts)
            self.bwd = ort.InferenceSession(grad_model.SerializeToString(), opts)

    def forward(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.fwd.run([self.output], feeds)[0])

    def gradient(self, feeds: dict[str, np.ndarray], seed: np.ndarray) -> np.ndarray:
        out = self.bwd.run([self.output, GRAD], {**feeds, SEED: seed})
        return np.asarray(out[1])


def _as_float(value: np.ndarray, dtype) -> np.ndarray:
    return value.astype(dtype) if value.dtype.kind == "f" else value


def numeric_gradient(run: Runner, feeds, seed, eps: float) -> np.ndarray:
    x = feeds[run.wrt]
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = grad.reshape(-1)
    for i in range(x.size):
        plus, minus = x.copy(), x.copy()
        plus.reshape(-1)[i] += eps
        minus.reshape(-1)[i] -= eps
        f_plus = np.sum(seed * run.forward({**feeds, run.wrt: plus}))
        f_minus = np.sum(seed * run.forward({**feeds, run.wrt: minus}))
        flat[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def check_op(
    op_type: str,
    inputs: dict[str, np.ndarray],
    attrs: dict | None = None,
    *,
    constants: dict[str, np.ndarray] | None = None,
    n_outputs: int = 1,
    output_index: int = 0,
    **options,
) -> None:
    """Gradient of one op w.r.t. each input in `wrt` (default: every input) vs. central FD.

    `inputs` are graph inputs (float ones made float64; others, such as a bool condition, kept
    and not differentiated); `constants` become initializers (no gradient);
    `options` are check_graph's.
    """
    outputs = [f"y{k}" for k in range(n_outputs)]
    node = helper.make_node(op_type, list(inputs) + list(constants or {}), outputs, **(attrs or {}))
    check_graph([node], inputs, outputs[output_index], constants=constants, **options)


def check_graph(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    output: str,
    *,
    opset: int = 17,
    wrt: list[str] | None = None,
    constants: dict[str, np.ndarray] | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-7,
    ort_rtol: float = 2e-3,
    check_ort: bool = True,
    dynamic: bool = False,
    eps: float = 1e-6,
    seed: int = 0,
) -> None:
    """Like check_op for a small graph of several nodes."""
    rng = np.random.default_rng(seed)
    inputs64 = {k: _as_float(np.asarray(v), np.float64) for k, v in inputs.items()}
    consts64 = {
        k: (v.astype(np.float64) if v.dtype.kind == "f" else v)
        for k, v in (constants or {}).items()
    }
    model64 = make_model(nodes, inputs64, output, opset, consts64, dynamic)
    for name in wrt or [k for k, v in inputs64.items() if v.dtype.kind == "f"]:
        run = Runner(model64, name, output, "reference")
        y = run.forward(inputs64)
        seed_arr = rng.standard_normal(y.shape)
        analytic = run.gradient(inputs64, seed_arr)
        numeric = numeric_gradient(run, inputs64, seed_arr, eps)
        assert analytic.shape == inputs64[name].shape, (analytic.shape, inputs64[name].shape)
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol, err_msg=f"d/d{name}")
        if check_ort:
            inputs32 = {k: _as_float(v, np.float32) for k, v in inputs64.items()}
            consts32 = {k: _as_float(v, np.float32) for k, v in consts64.items()}
            model32 = make_model(nodes, inputs32, output, opset, consts32, dynamic)
            run32 = Runner(model32, name, output, "ort")
            got = run32.gradient(inputs32, seed_arr.astype(np.float32))
            scale = np.abs(analytic).max() + 1e-12
            np.testing.assert_allclose(got, analytic, rtol=ort_rtol, atol=ort_rtol * scale,
                                       err_msg=f"ORT float32 d/d{name}")  # fmt: skip
            _check_float64_in_ort(model64, name, output, inputs64, seed_arr, analytic)


def _check_float64_in_ort(model64, name, output, inputs64, seed_arr, analytic) -> None:
    """The gradient graph built from the float64 model runs in ONNX Runtime and agrees with
    the reference. The reference evaluator computes a float32 constant beside float64 data
    without a word, so a rule that wrote one (a Slice's zero pad) passed here and failed on
    every float64 and float16 model; kernels ONNX Runtime lacks for double are skipped."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        forward = ort.InferenceSession(model64.SerializeToString(), opts)
        y = forward.run([output], inputs64)[0]
    except Exception:  # noqa: BLE001
        return  # (the op itself has no double kernel in ONNX Runtime)
    try:
        run = Runner(model64, name, output, "ort")
        got = run.gradient(inputs64, seed_arr.astype(y.dtype))  # (a Cast's float32 output)
    except Exception as e:  # noqa: BLE001
        if "NOT_IMPLEMENTED" in str(e) or "not supported" in str(e).lower():
            return  # (nor has one the reverse pass uses)
        raise
    scale = np.abs(analytic).max() + 1e-12
    np.testing.assert_allclose(got, analytic, rtol=1e-5, atol=1e-8 * scale,
                               err_msg=f"ORT float64 d/d{name}")  # fmt: skip


class Case:
    """One rule check: an op, its float64 inputs, attributes and check_op options.

    Each rule test module lists its cases in a module-level CASES list; test_coverage.py
    asserts that every registered rule appears in some CASES, so no rule goes unchecked.
    """

    def __init__(self, op: str, inputs: dict[str, np.ndarray], attrs: dict | None = None,
                 id: str = "", **options) -> None:  # fmt: skip
        self.op, self.inputs, self.attrs, self.options = op, inputs, attrs or {}, options
        self.id = id or f"{op}-opset{options.get('opset', 17)}"

    def run(self) -> None:
        check_op(self.op, self.inputs, self.attrs, **self.options)

    def __repr__(self) -> str:
        return self.id


def check_model_gradient(
    model: onnx.ModelProto,
    input_name: str,
    output_name: str,
    x: np.ndarray,
    *,
    feeds: dict[str, np.ndarray] | None = None,
    batches: tuple[int, ...] = (1, 2),
    n_dirs: int = 3,
    step: float = 1e-5,
    tol: float = 1e-5,
    ort_tol: float = 1e-3,
    seed: int = 0,
):
    """A whole float32 model's gradient graph, built for x's sample shape, at each batch size:
    the graph in float64 (onnx's reference evaluator) against float64 central differences of
    the model along random directions (|fd - g.v| / |g| < tol), and the graph as igcli runs
    it (ONNX Runtime, float32) against the float64 graph (within ort_tol of |g|). `x` and
    `feeds` hold one sample (batch 1). Returns the GradientGraph."""
    from igcli.autodiff import build_gradient_graph, feed_batch_axis

    feeds = feeds or {}
    graph = build_gradient_graph(model, input_name, output_name, sample_shape=x.shape[1:],
                                 feeds=feeds)  # fmt: skip
    onnx.checker.check_model(graph.model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(graph.model.SerializeToString(), opts)
    forward64 = reference_evaluator(to_float64(model))
    backward64 = reference_evaluator(to_float64(graph.model))
    rng = np.random.default_rng(seed)
    axes = {k: feed_batch_axis(model, input_name, k) for k in feeds}
    for batch in batches if graph.batch_dynamic else (1,):
        xb = np.concatenate([x] + [x + 0.1 * rng.standard_normal(x.shape)] * (batch - 1))
        xb = xb.astype(np.float32)
        fb = {k: v if axes[k] is None else np.repeat(v, batch, axis=axes[k])
              for k, v in feeds.items()}  # fmt: skip
        fb64 = {k: _as_float(v, np.float64) for k, v in fb.items()}
        x64 = xb.astype(np.float64)
        y = forward64.run([output_name], {input_name: x64, **fb64})[0]
        seed_arr = rng.standard_normal(y.shape)
        grad32 = sess.run([GRAD], {input_name: xb, **fb, SEED: seed_arr.astype(np.float32)})[0]
        grad = backward64.run([GRAD], {input_name: x64, **fb64, SEED: seed_arr})[0]
        assert grad32.shape == grad.shape == xb.shape, (grad32.shape, grad.shape, xb.shape)
        norm = float(np.linalg.norm(grad))
        assert norm > 0, "all-zero gradient"
        off = float(np.linalg.norm(grad32 - grad)) / norm
        assert off < ort_tol, f"batch {batch}: ORT float32 vs float64 graph: {off:.2e}"

        def f(z, s=seed_arr, extra=fb64):
            return float(np.sum(s * forward64.run([output_name], {input_name: z, **extra})[0]))

        for _ in range(n_dirs):
            v = rng.standard_normal(x64.shape)
            fd = (f(x64 + step * v) - f(x64 - step * v)) / (2 * step)
            err = abs(fd - float(np.sum(grad * v))) / norm
            assert err < tol, f"batch {batch}: |fd - g.v| / |g| = {err:.2e}"
    return graph
