"""Specialise a model to the shapes of one run, so that shape arithmetic becomes constants.

Exporters write shapes as computations: Shape -> Gather -> Concat -> Reshape, Range for
position ids, Ifs on "is this dim 1?", a sample-rate input selecting a branch. Rules need
static shapes and constant parameters, so with the sample shape of the run at hand:

1. the attributed input gets its concrete non-batch dims (the batch stays symbolic), fed
   inputs get the shapes of their values;
2. a dependence analysis finds every tensor whose value does not depend on the attributed
   input's *values* (only on its shape, on constants and on fed inputs);
3. ONNX Runtime computes those of them that feed the rest of the graph (one run of the model
   at batch 1 and one at batch 2: what differs between the two depends on the batch and
   stays computed at run time), and they become initializers;
4. Ifs whose condition became a constant are replaced by their taken branch, dead nodes
   go, and the whole repeats until nothing changes (an inlined branch brings new tensors).

ONNX Runtime does the arithmetic, so every op the model uses is covered (no hand-written
shape algebra); onnx shape inference then sees constant shapes. The result is valid for one
sample shape (and, when `uses_feed_values`, for the fed values it was built with).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from igcli.autodiff.builder import FLOAT_TYPES
from igcli.autodiff.inference import infer_shapes
from igcli.autodiff.subgraphs import (
    constant_values,
    inline_constant_ifs,
    node_inputs,
    remove_dead_nodes,
)

MAX_FOLD_INTEGER = 1 << 20  # elements: larger integer tensors stay computed at run time
MAX_FOLD_FLOAT = 1 << 16  # float tensors (anchor grids, masks) are folded only when small
MAX_ROUNDS = 12  # each round may inline one more level of nested Ifs


# Ops whose output shape depends only on input shapes and attributes (never on input values),
# and for the others, which inputs' values decide the output shape. Ops not listed are taken
# to depend on every input's value (safe: their outputs are then not folded).
def _ops(names: str) -> set[str]:
    return set(names.split())


_SHAPE_FROM_SHAPES = _ops(
    """Abs Acos Acosh Asin Asinh Atan Atanh Ceil Cos Cosh Erf Exp Floor Identity IsInf IsNaN Log
    Neg Not Reciprocal Relu Round Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Tan Tanh
    HardSigmoid HardSwish LeakyRelu Elu Selu Celu Gelu Mish ThresholdedRelu Shrink PRelu Clip
    Cast CastLike Dropout BitwiseNot QuantizeLinear DequantizeLinear Add Sub Mul Div Pow Mod And
    Or Xor Equal Greater GreaterOrEqual Less LessOrEqual Max Min Mean Sum Where BitShift
    BitwiseAnd BitwiseOr BitwiseXor Conv ConvTranspose ConvInteger MaxPool AveragePool LpPool
    GlobalAveragePool GlobalMaxPool GlobalLpPool BatchNormalization InstanceNormalization
    LayerNormalization GroupNormalization LRN LpNormalization MeanVarianceNormalization Softmax
    LogSoftmax Hardmax MatMul MatMulInteger Gemm Einsum Transpose Flatten Concat Gather
    GatherElements GatherND ScatterElements ScatterND DepthToSpace SpaceToDepth ArgMax ArgMin
    Shape Size EyeLike CumSum CumProd Trilu ReverseSequence GridSample RoiAlign Swish
    RotaryEmbedding Det"""
)
_SHAPE_VALUE_INPUTS = {
    **dict.fromkeys(
        _ops(
            "Reshape Expand Tile Squeeze Unsqueeze Split TopK OneHot Compress "
            "Upsample "
            "CenterCropPad AffineGrid ReduceSum ReduceMean ReduceMax ReduceMin "
            "ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp "
            "ReduceSumSquare"
        ),
        {1},
    ),  # fmt: skip
    "Slice": {1, 2, 3, 4},
    "Pad": {1, 3},
    "Resize": {1, 2, 3},
    "ConstantOfShape": {0},
    "Range": {0, 1, 2},
    "Col2Im": {1, 2},
    "MaxUnpool": {2},
    "DFT": {1, 2},
    "STFT": {1, 3},
}
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
           "Bernoulli", "Multinomial"}  # fmt: skip


@dataclass
class Specialized:
    model: onnx.ModelProto
    batch_dynamic: bool  # False: the graph only runs at the batch size it was probed with
    uses_feed_values: bool  # some folded value was computed from a fed input's values
    folded: int  # tensors replaced by constants
    inlined: int  # If nodes replaced by their taken branch


def feed_batch_axis(model: onnx.ModelProto, input_name: str, feed_name: str) -> int | None:
    """The batch axis of another input: the axis whose symbolic dim is the attributed input's
    batch dim (Silero's state is [2, batch, 128]); else its only dynamic axis, else axis 0
    if dynamic; None for inputs without a dynamic axis (a sample rate, say)."""
    specs = {i.name: i.type.tensor_type for i in model.graph.input}
    x_dims, dims = _dims(specs[input_name]), _dims(specs[feed_name])
    if not x_dims or not dims or isinstance(x_dims[0], int):
        return None
    if x_dims[0] and x_dims[0] in dims:
        return dims.index(x_dims[0])
    dynamic = [k for k, d in enumerate(dims) if not isinstance(d, int)]
    return dynamic[0] if len(dynamic) == 1 else (0 if 0 in dynamic else None)


def _dims(t: onnx.TypeProto.Tensor) -> list[int | str | None]:
    """Dims as ints, symbolic names, or None (unknown, including the -1 some exporters write)."""
    if not t.HasField("shape"):
        return []
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else (d.dim_param or None)
        for d in t.shape.dim
    ]


def _set_shape(vi: onnx.ValueInfoProto, dims: list[int | str | None]) -> None:
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif d:
            dim.dim_param = d


def sanitize_dims(model: onnx.ModelProto) -> None:
    """Negative dims (paddle2onnx writes -1) become unknown: shape inference rejects them."""
    graph = model.graph
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        t = vi.type.tensor_type
        if t.HasField("shape") and any(d.HasField("dim_value") and d.dim_value < 0
                                       for d in t.shape.dim):  # fmt: skip
            _set_shape(vi, _dims(t))


def _dependence(graph: onnx.GraphProto, seeds: set[str]) -> set[str]:
    """Names whose values depend on the values of `seeds` (Shape and Size of a tensor depend
    only on its shape; a shape depends on the values that decide it, per op)."""
    value_dep, shape_dep = set(seeds), set()
    for node in graph.node:
        ins = node_inputs(node)
        explicit = list(node.input)
        op = node.op_type if node.domain in ("", "ai.onnx") else None
        if op in ("Shape", "Size"):
            if node.input[0] in shape_dep:
                value_dep.update(node.output)
            continue
        shape_vary = any(i in shape_dep for i in ins)
        if op in _SHAPE_FROM_SHAPES:
            pass
        elif op in _SHAPE_VALUE_INPUTS:
            picks = [explicit[k] for k in _SHAPE_VALUE_INPUTS[op] if k < len(explicit)]
            shape_vary |= any(i in value_dep for i in picks)
        else:  # unknown op, control flow, data-dependent shapes: assume any value matters
            shape_vary |= any(i in value_dep for i in ins)
        if shape_vary:
            shape_dep.update(o for o in node.output if o)
        if any(i in value_dep for i in ins) or shape_vary or op in _RANDOM:
            value_dep.update(o for o in node.output if o)
    return value_dep


def _frontier(graph: onnx.GraphProto, varying: set[str], elem: dict[str, int]) -> list[str]:
    """Tensors not depending on the input's values that the rest of the graph reads (and
    every If condition that is such a tensor): what folding must compute."""
    consts = set(constant_values(graph))
    produced = {o for n in graph.node for o in n.output if o}
    wanted: list[str] = []

    def want(name: str) -> None:
        fixed = name in produced and name not in consts and name not in varying
        if fixed and name not in wanted:
            wanted.append(name)

    for node in graph.node:
        if node.op_type == "If" and node.input:
            want(node.input[0])
        if any(o in varying for o in node.output):
            for name in node_inputs(node):
                want(name)
    return [w for w in wanted if elem.get(w)]


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = infer_shapes(model, data_prop=True)
    except Exception:
        inferred = model
    graph = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             [*graph.input, *graph.value_info, *graph.output]}  # fmt: skip
    types.update({i.name: i.data_type for i in graph.initializer})
    return {k: v for k, v in types.items() if v}


def _probe(model, names, elem, input_name, sample_shape, feeds, batches, batch_axes):
    """Values of `names` at each batch size (x filled with 0.5): a list of dicts, or None."""
    probe = copy.deepcopy(model)
    graph = probe.graph
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(n, elem[n], None) for n in names)
    del graph.value_info[:]
    spec = next(i for i in graph.input if i.name == input_name).type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(spec.elem_type)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(probe.SerializeToString(), opts)
        runs = []
        for batch in batches:
            x = np.full([batch, *sample_shape], 0.5, dtype=dtype)
            extra = {}
            for k, v in feeds.items():
                axis = batch_axes.get(k)
                extra[k] = v if axis is None else np.repeat(v, batch, axis=axis)
            values = session.run(names, {input_name: x, **extra})
            runs.append(dict(zip(names, values, strict=True)))
    except Exception:
        return None
    return runs


def specialize(
    model: onnx.ModelProto,
    input_name: str,
    sample_shape: list[int] | tuple[int, ...],
    feeds: dict[str, np.ndarray] | None = None,
    *,
    fold_feed_values: bool = True,
) -> Specialized:
    """A copy of `model` specialised to inputs of shape [batch, *sample_shape].

    `feeds` hold the other inputs' values for one sample (batch of 1 along their batch axis,
    see `feed_batch_axis`). The result computes the same function for inputs of that shape;
    shape arithmetic that does not depend on the batch is folded into constants, and Ifs
    with a condition fixed by those constants keep only their taken branch. Integer values
    computed from fed inputs (an If on a sample rate) are folded too unless
    `fold_feed_values` is False; `uses_feed_values` says whether any was.
    """
    feeds = dict(feeds or {})
    out = copy.deepcopy(model)
    sanitize_dims(out)
    graph = out.graph
    spec = next(i for i in graph.input if i.name == input_name)
    declared = _dims(spec.type.tensor_type)
    batch = declared[0] if declared else None
    batch_dynamic = not isinstance(batch, int)
    if batch_dynamic and not batch:
        batch = "N"
    batch_axes = {
        vi.name: feed_batch_axis(model, input_name, vi.name) if batch_dynamic else None
        for vi in graph.input
        if vi.name in feeds
    }
    for name, axis in batch_axes.items():  # a feed's batch axis is named like x's
        vi = next(i for i in graph.input if i.name == name)
        dims = list(np.shape(feeds[name]))
        if axis is not None and axis < len(dims):
            dims[axis] = batch
        _set_shape(vi, dims)
    _set_shape(spec, [batch, *sample_shape])
    del graph.value_info[:]

    fed = set(feeds)
    uses_feeds = False
    folded = inlined = 0
    batches = [1, 2] if batch_dynamic else [batch]
    for _ in range(MAX_ROUNDS):
        varying = _dependence(graph, {input_name})
        feed_dep = _dependence(graph, fed)
        elem = _elem_types(out)
        names = [
            n for n in _frontier(graph, varying, elem)
            if n not in feed_dep or (fold_feed_values and elem[n] not in FLOAT_TYPES)
        ]  # fmt: skip
        changed = 0
        if names:
            runs = _probe(out, names, elem, input_name, sample_shape, feeds, batches, batch_axes)
            if runs is None and batch_dynamic:  # e.g. a feed without a batch axis: fix it at 1
                batch_dynamic, batches = False, [1]
                _set_shape(spec, [1, *sample_shape])
                for name in batch_axes:
                    vi = next(i for i in graph.input if i.name == name)
                    _set_shape(vi, list(np.shape(feeds[name])))
                batch_axes = dict.fromkeys(batch_axes)
                continue
            if runs is None:
                break
            for name in names:
                values = [np.asarray(run[name]) for run in runs]
                first = values[0]
                limit = MAX_FOLD_FLOAT if elem[name] in FLOAT_TYPES else MAX_FOLD_INTEGER
                if first.size > limit or any(
                    v.shape != first.shape or not np.array_equal(v, first) for v in values[1:]
                ):
                    continue
                _replace_by_constant(graph, name, first)
                uses_feeds |= name in feed_dep
                changed += 1
        folded += changed
        done = inline_constant_ifs(out)
        inlined += done
        remove_dead_nodes(graph)
        if not changed and not done:
            break
    if batch_dynamic and feeds:  # a feed without a batch axis may pin the batch: try it
        outputs = [o.name for o in graph.output]
        elem = _elem_types(out)
        if all(elem.get(o) for o in outputs):
            ran = _probe(out, outputs, elem, input_name, sample_shape, feeds, [2], batch_axes)
            if ran is None:
                batch_dynamic = False
                _set_shape(spec, [1, *sample_shape])
    return Specialized(out, batch_dynamic, uses_feeds, folded, inlined)


def _replace_by_constant(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    """`name` becomes an initializer; its producer's output is renamed away (then dead)."""
    for node in graph.node:
        for k, o in enumerate(node.output):
            if o == name:
                node.output[k] = f"{name}/folded_away"
    graph.initializer.append(numpy_helper.from_array(value, name))
