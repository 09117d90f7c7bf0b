"""The entry point: a gradient graph for a model, specialised to the run's shapes when needed.

`build_gradient_graph` first builds a graph valid for every input shape. When a rule needs
what symbolic dims hide (static sizes, constant Reshape/Slice parameters, an If on a shape),
it builds one for the sample shape at hand instead: `specialize` folds the shape arithmetic
into constants and inlines the Ifs that become fixed; where onnx shape inference still
leaves a shape open, the model is run at batch 1 and 2 with every intermediate tensor made
an output (`probe_shapes`): dims that change with the batch are the symbolic batch dim.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from igcli.autodiff.builder import TensorInfo
from igcli.autodiff.driver import build_gradient_model
from igcli.autodiff.inference import infer_shapes
from igcli.autodiff.specialize import _dims, feed_batch_axis, sanitize_dims, specialize
from igcli.errors import UnsupportedOpsError


@dataclass
class GradientGraph:
    """A model computing (output, d sum(seed * output) / d input), and where it is valid."""

    model: onnx.ModelProto
    # None: valid for every input shape. Otherwise valid only for inputs shaped
    # [batch, *sample_shape]: build one graph per distinct sample shape.
    sample_shape: tuple[int, ...] | None = None
    # False: valid only at batch size 1 (the model or its feeds pin the batch).
    batch_dynamic: bool = True
    # True: fed inputs' values were folded in: valid only for the feeds it was built with.
    uses_feed_values: bool = False


def build_gradient_graph(
    model: onnx.ModelProto,
    input_name: str,
    output_name: str,
    *,
    sample_shape: tuple[int, ...] | list[int] | None = None,
    feeds: dict[str, np.ndarray] | None = None,
    fold_feed_values: bool = True,
) -> GradientGraph:
    """The gradient graph of `output_name` w.r.t. `input_name`, general when possible.

    `sample_shape` is the attributed input's shape without the batch axis (e.g. (3, 48, 192));
    `feeds` the other inputs' values for one sample (batch of 1 on their batch axis, see
    `specialize.feed_batch_axis`). Without a sample shape only fixed declared dims are used.
    With `fold_feed_values` False, fed values are never folded into the graph (only their
    shapes are used), so the graph holds for any fed values.
    Raises UnsupportedOpsError naming the ops that block (even once specialised).
    """
    try:
        return GradientGraph(build_gradient_model(model, input_name, output_name))
    except UnsupportedOpsError as general:
        if sample_shape is None:
            sample_shape = _declared_sample_shape(model, input_name)
            if sample_shape is None:
                raise
        first = general
    sample_shape = tuple(int(d) for d in sample_shape)
    declared = _dims(next(i for i in model.graph.input if i.name == input_name).type.tensor_type)
    if declared and len(declared) != len(sample_shape) + 1:
        raise ValueError(
            f"sample shape {sample_shape} does not fit input {input_name!r} of rank "
            f"{len(declared)} (the sample shape leaves out the batch axis)"
        )
    spec = specialize(model, input_name, sample_shape, feeds, fold_feed_values=fold_feed_values)
    try:
        grad = build_gradient_model(spec.model, input_name, output_name)
    except UnsupportedOpsError as exc:
        hints = probe_shapes(spec.model, input_name, list(sample_shape), feeds)
        if not hints:
            raise exc from first
        grad = build_gradient_model(spec.model, input_name, output_name, shape_hints=hints)
    return GradientGraph(grad, sample_shape, spec.batch_dynamic, spec.uses_feed_values)


def _declared_sample_shape(model: onnx.ModelProto, input_name: str) -> tuple[int, ...] | None:
    spec = next(i for i in model.graph.input if i.name == input_name).type.tensor_type
    dims = _dims(spec)[1:]
    return tuple(dims) if all(isinstance(d, int) and d > 0 for d in dims) else None


def probe_shapes(
    model: onnx.ModelProto,
    input_name: str,
    sample_shape: list[int],
    feeds: dict[str, np.ndarray] | None = None,
) -> dict[str, TensorInfo]:
    """Observed type and shape of every node output; {} when the model cannot be run so.

    A probe at one sample shape says nothing about another: the hints hold for
    `sample_shape` only. With a symbolic (or -1) batch dim the model runs at batch 1 and 2
    and dims that change are symbolic; with a fixed batch it runs once at that batch.
    """
    probe = copy.deepcopy(model)
    sanitize_dims(probe)
    graph = probe.graph
    spec = next(i for i in graph.input if i.name == input_name).type.tensor_type
    declared = _dims(spec)
    batch = declared[0] if declared else None
    if isinstance(batch, int):
        batches, batch_dim = [batch], None
    else:
        batches, batch_dim = [1, 2], batch or "N"
    # ONNX Runtime wants each output's element type: those shape inference found, and
    # guesses past where it stopped (see _guess_types)
    try:
        typed = infer_shapes(probe).graph.value_info
    except Exception:
        return {}
    inferred = {vi.name: vi.type.tensor_type.elem_type for vi in typed}
    inferred = {k: v for k, v in inferred.items() if v}
    guessed = _guess_types(graph, inferred)
    known = {o.name for o in graph.output}
    axes = {k: feed_batch_axis(model, input_name, k) for k in feeds or {}}
    dtype = helper.tensor_dtype_to_np_dtype(spec.elem_type)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = None
    for types in [guessed, inferred] if guessed != inferred else [inferred]:
        del graph.output[len(known) :]
        graph.output.extend(
            helper.make_tensor_value_info(name, elem, None)
            for node in graph.node
            for name in node.output
            if name and name not in known and (elem := types.get(name))
        )
        try:  # a wrong guess fails here: then only the inferred types, as before guessing
            session = ort.InferenceSession(probe.SerializeToString(), opts)
            break
        except Exception:
            continue
    if session is None:
        return {}
    try:
        outputs = [o.name for o in session.get_outputs()]
        runs = []
        for b in batches:
            x = np.full([b, *sample_shape], 0.5, dtype=dtype)
            extra = {k: v if axes[k] is None else np.repeat(v, b, axis=axes[k])
                     for k, v in (feeds or {}).items()}  # fmt: skip
            runs.append(session.run(outputs, {input_name: x, **extra}))
    except Exception:  # a model that needs a fixed batch, say: no hints, no harm
        return {}
    hints = {}
    for name, *values in zip(outputs, *runs, strict=True):
        values = [np.asarray(v) for v in values]
        if any(v.ndim != values[0].ndim for v in values):
            continue
        shape = [_probed_dim(name, k, [v.shape[k] for v in values], batches, batch_dim)
                 for k in range(values[0].ndim)]  # fmt: skip
        hints[name] = TensorInfo(helper.np_dtype_to_tensor_dtype(values[0].dtype), shape)
    return hints


_INDEX_OUTPUTS = {"Shape", "Size", "ArgMax", "ArgMin", "NonZero"}
_BOOL_OUTPUTS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And",
                 "Or", "Xor", "IsNaN", "IsInf"}  # fmt: skip


def _guess_types(graph: onnx.GraphProto, inferred: dict[str, int]) -> dict[str, int]:
    """Element types of node outputs: inferred ones, and past an op onnx's inference does
    not follow (GroupNormalization-21 left every later tensor untyped) the type of the
    node's first input (int64 for shapes and indices, bool for comparisons, `to` for a Cast,
    Where's values). A wrong guess makes ONNX Runtime refuse the probe, which then exposes
    the inferred types alone."""
    types = {k: v for k, v in inferred.items() if v}
    for vi in [*graph.input, *graph.output]:
        if vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for init in graph.initializer:
        types.setdefault(init.name, init.data_type)
    for node in graph.node:
        if node.op_type in _INDEX_OUTPUTS:
            guess = onnx.TensorProto.INT64
        elif node.op_type in _BOOL_OUTPUTS:
            guess = onnx.TensorProto.BOOL
        elif node.op_type == "Cast":
            guess = next((a.i for a in node.attribute if a.name == "to"), 0)
        elif node.op_type == "Where":
            guess = types.get(node.input[1], 0)
        else:
            guess = types.get(node.input[0], 0) if node.input else 0
        for name in node.output:
            if name and guess:
                types.setdefault(name, guess)
    return types


def _probed_dim(name: str, axis: int, seen: list[int], batches: list[int], batch_dim):
    """One dim of a probed tensor: fixed where it did not change with the batch; the batch
    symbol where it is the batch; `N*m` where it is m times the batch (rows of a flattened
    [N*17, d] tensor); else a symbol of its own. ONNX Runtime trusts equal symbols to be equal
    sizes, so only dims that are truly equal may share one."""
    if all(d == seen[0] for d in seen):
        return seen[0]
    m = seen[0] // batches[0]
    if all(d == m * b for d, b in zip(seen, batches, strict=True)):
        return batch_dim if m == 1 else f"{batch_dim}*{m}"
    return f"{batch_dim}?{name}:{axis}"


def build_gradient_model_probing(
    model: onnx.ModelProto,
    input_name: str,
    output_name: str,
    feeds: dict[str, np.ndarray] | None = None,
    sample_shape: tuple[int, ...] | list[int] | None = None,
) -> onnx.ModelProto:
    """The model of build_gradient_graph, for callers that keep only the model (and cache it
    by model and input/output names): fed values are never folded into it, and without a
    sample shape it is specialised only to fixed declared dims, which every input has."""
    return build_gradient_graph(
        model, input_name, output_name, sample_shape=sample_shape, feeds=feeds,
        fold_feed_values=False,
    ).model  # fmt: skip


def blocking_ops(
    model: onnx.ModelProto,
    input_name: str,
    output_name: str,
    *,
    sample_shape: tuple[int, ...] | list[int] | None = None,
    feeds: dict[str, np.ndarray] | None = None,
) -> list[str]:
    """The ops that keep a gradient graph from being built (empty when one can be)."""
    try:
        build_gradient_graph(model, input_name, output_name, sample_shape=sample_shape,
                             feeds=feeds)  # fmt: skip
    except UnsupportedOpsError as exc:
        return exc.ops
    return []
