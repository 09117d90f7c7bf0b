"""Independent Integrated Gradients references for the corpus, in float64.

Two kinds, so that no reference shares code with igcli's gradient transform:
- `captum_ig`: PyTorch autograd through Captum's IntegratedGradients (the module the model was
  exported from, or an onnx2torch conversion of an ONNX-only model), run in float64.
- `fd_ig`: float64 central differences of a plain forward function (scikit-learn's
  predict_proba, or an ONNX model converted to float64), one difference per feature and
  quadrature node, each along that feature's share of the path direction.

Both use the same quadrature as igcli and Captum: Gauss-Legendre nodes mapped to [0, 1] with
weights that sum to 1 (Captum's "gausslegendre" uses numpy's leggauss exactly so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


def quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1] (weights sum to 1), as igcli and Captum define them."""
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1.0) / 2.0, weights / 2.0
    if method == "riemann_middle":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    raise ValueError(f"no reference quadrature for {method!r}")


@dataclass
class Reference:
    """Attributions (float64, the input's shape) and the numbers completeness is judged by."""

    attributions: np.ndarray
    f_input: float
    f_baseline: float
    kind: str

    @property
    def delta(self) -> float:
        return self.f_input - self.f_baseline

    @property
    def rel_error(self) -> float:
        """The reference's own completeness error |sum - delta| / |delta|."""
        d = self.delta
        return abs(float(self.attributions.sum()) - d) / abs(d) if d else float("inf")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom else float("nan")


def rel_l1(a: np.ndarray, ref: np.ndarray) -> float:
    """sum |a - ref| / sum |ref|: the share of the reference's mass that is wrong."""
    a = np.asarray(a, np.float64).ravel()
    ref = np.asarray(ref, np.float64).ravel()
    return float(np.abs(a - ref).sum() / np.abs(ref).sum())


# -- PyTorch + Captum ------------------------------------------------------------------------


def captum_ig(
    forward: Callable,
    x: np.ndarray,
    baseline: np.ndarray,
    target: int,
    steps: int,
    method: str,
    *,
    dtype: str = "float64",
    internal_batch_size: int | None = None,
) -> Reference:
    """Captum IntegratedGradients of output `target` (flattened per sample) of `forward`.

    `forward` maps a torch batch to any output; it is flattened per sample here, so a target
    counts over the flattened output exactly as igcli's `--target` does.
    """
    import torch
    from captum.attr import IntegratedGradients

    tdtype = getattr(torch, dtype)

    def flat(batch):
        out = forward(batch)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.reshape(out.shape[0], -1)

    xt = torch.from_numpy(np.asarray(x, np.float64)).to(tdtype)
    bt = torch.from_numpy(np.asarray(baseline, np.float64)).to(tdtype)
    ig = IntegratedGradients(flat)
    attr = ig.attribute(
        xt,
        baselines=bt,
        target=int(target),
        n_steps=steps,
        method=method,
        internal_batch_size=internal_batch_size,
    )
    with torch.no_grad():
        ends = flat(torch.cat([xt, bt]))[:, int(target)].double().numpy()
    return Reference(
        attr.detach().double().numpy(), float(ends[0]), float(ends[1]), f"captum_ig_{dtype}"
    )


# -- float64 central differences --------------------------------------------------------------


def fd_ig(
    f: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    baseline: np.ndarray,
    target: int,
    steps: int,
    method: str,
    *,
    rel_step: float = 1e-5,
    rows_per_call: int = 1024,
    kind: str = "fd_float64",
) -> Reference:
    """IG from float64 central differences of `f` (rows of x's shape -> per-row outputs).

    Feature i is moved by +-h (x_i - b_i) with h = `rel_step`, so each difference is the
    derivative along that feature's share of the path, already multiplied by x_i - b_i.
    Features with x_i == b_i get 0, as they do in exact IG. `x` and `baseline` carry the
    batch axis of 1.
    """
    x = np.asarray(x, np.float64)
    b = np.asarray(baseline, np.float64)
    shape = x.shape[1:]
    d = (x - b).reshape(-1)
    moved = np.flatnonzero(d)
    alphas, weights = quadrature(method, steps)

    def value(rows: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(rows), rows_per_call):
            chunk = rows[start : start + rows_per_call].reshape((-1, *shape))
            out.append(np.asarray(f(chunk), np.float64).reshape(len(chunk), -1)[:, target])
        return np.concatenate(out)

    attributions = np.zeros(x.size)
    for alpha, weight in zip(alphas, weights, strict=True):
        point = (b + alpha * (x - b)).reshape(-1)
        rows = np.repeat(point[None], 2 * len(moved), axis=0)
        step = rel_step * d[moved]
        rows[np.arange(len(moved)), moved] += step
        rows[len(moved) + np.arange(len(moved)), moved] -= step
        vals = value(rows)
        diff = (vals[: len(moved)] - vals[len(moved) :]) / (2 * rel_step)
        attributions[moved] += weight * diff
    ends = value(np.concatenate([x.reshape(1, -1), b.reshape(1, -1)]))
    return Reference(attributions.reshape(x.shape), float(ends[0]), float(ends[1]), kind)


# -- ONNX models in float64 ---------------------------------------------------------------

# Inputs that the ONNX spec types as float32 whatever the data type (they stay float32).
_FLOAT32_ONLY = {("Resize", 2), ("Upsample", 1)}


def onnx_to_double(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model computing in float64: float32 initializers, constants, casts and
    declared types become float64, in subgraphs too (If branches read outer-scope tensors).
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep32: set[str] = set()

    def scan(graph):
        for node in graph.node:
            for op, idx in _FLOAT32_ONLY:
                if node.op_type == op and len(node.input) > idx and node.input[idx]:
                    keep32.add(node.input[idx])
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    scan(attr.g)
                for g in attr.graphs:
                    scan(g)

    def to64(t: TensorProto) -> None:
        if t.data_type == TensorProto.FLOAT and t.name not in keep32:
            arr = numpy_helper.to_array(t).astype(np.float64)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))

    def fix_type(vi) -> None:
        tt = vi.type.tensor_type
        if tt.elem_type == TensorProto.FLOAT and vi.name not in keep32:
            tt.elem_type = TensorProto.DOUBLE

    def convert(graph):
        for t in graph.initializer:
            to64(t)
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            fix_type(vi)
        for node in graph.node:
            const_out = node.op_type == "Constant" and node.output[0] in keep32
            cast_out = node.op_type == "Cast" and node.output[0] not in keep32
            for attr in node.attribute:
                is_tensor = attr.type == onnx.AttributeProto.TENSOR and not const_out
                if is_tensor and attr.t.data_type == TensorProto.FLOAT:
                    arr = numpy_helper.to_array(attr.t).astype(np.float64)
                    attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
                if cast_out and attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.DOUBLE
                if attr.type == onnx.AttributeProto.GRAPH:
                    convert(attr.g)
                for g in attr.graphs:
                    convert(g)

    scan(m.graph)
    convert(m.graph)
    return m


def onnx_runner(model: onnx.ModelProto):
    """A float64 forward function (feeds -> outputs) and the engine's name: ONNX Runtime if it
    runs the double model, else onnx's ReferenceEvaluator (ONNX Runtime has no double Conv)."""
    import onnxruntime as ort

    blob = model.SerializeToString()
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])

        def run(feed):
            return sess.run(None, feed)

        engine = "onnxruntime"
    except Exception:  # no double kernel for some op: the reference evaluator has them all
        from onnx.reference import ReferenceEvaluator

        ev = ReferenceEvaluator(model)

        def run(feed):
            return ev.run(None, feed)

        engine = "onnx.reference"
    return run, engine
