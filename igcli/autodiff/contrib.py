"""ONNX Runtime's contrib ops written as standard ONNX ops before differentiating.

Models that ONNX Runtime's transformer optimizer (or Olive, or optimum) has fused carry ops of
the com.microsoft domain: BiasGelu, FastGelu, SkipLayerNormalization and the like, and
SimplifiedLayerNormalization, a contrib op in the standard domain. None had a gradient rule,
so such a model fell back to finite differences (an optimised 2-layer BERT: 16 s instead of
2.7). Each is the composition of standard ops written here, with the same inputs, attributes
and outputs, so the rules of those ops give its gradient. Only the graph that is
differentiated is rewritten: the model's own forward still runs the fused kernels, and the
self-check holds the gradient to finite differences of that model.

scikit-learn models converted by skl2onnx carry ai.onnx.ml ops the same way: a StandardScaler
is a Scaler, a LogisticRegression a LinearClassifier. Those with a plain composition (Scaler,
Normalizer, LinearClassifier, LinearRegressor, ArrayFeatureExtractor) are written here too, so
such a pipeline gets a gradient graph instead of finite differences.

The compositions follow ONNX Runtime's CPU kernels (tests/autodiff/test_contrib.py compares
each with the kernel, output by output). An attribute or input form that is not handled here
(an optional output the gradient would have to pass through) leaves the node as it is, so it
is named among the ops without a rule.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"


class _Writer:
    """Nodes and scalar constants for one graph, under fresh names."""

    def __init__(
        self, graph: onnx.GraphProto, opset: int, weights: Mapping[str, list[int]], ranks
    ) -> None:
        taken = set(weights)
        taken |= {n for node in graph.node for n in [*node.input, *node.output]}
        taken |= {i.name for i in [*graph.initializer, *graph.input]}
        self._taken = taken
        self._fresh = (n for k in itertools.count() if (n := f"igcli_std_{k}") not in taken)
        self.opset = opset
        self.weights = weights  # initializer name -> dims
        self.ranks = ranks  # tensor name -> rank, where known
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._consts: dict[tuple[int, float], str] = {}
        self.elem = TensorProto.FLOAT

    def unique(self, name: str) -> str:
        """`name` if no tensor has it yet, else a fresh name."""
        if name in self._taken:
            return next(self._fresh)
        self._taken.add(name)
        return name

    def const(self, value: float, elem: int | None = None) -> str:
        elem = elem or self.elem
        if (elem, value) not in self._consts:
            dtype = helper.tensor_dtype_to_np_dtype(elem)
            self._consts[elem, value] = self.array(np.array(value, dtype))
        return self._consts[elem, value]

    def array(self, values: np.ndarray) -> str:
        """A constant tensor, under a fresh name."""
        name = next(self._fresh)
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def floats(self, values) -> str:
        """A float32 constant (a list, or a list of lists)."""
        return self.array(np.array(values, np.float32))

    def ints(self, values, scalar: bool = False) -> str:
        """An int64 constant: a list, or one value as a scalar."""
        return self.array(np.array(values if scalar else list(values), np.int64))

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        name = out or next(self._fresh)
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def reduce(
        self, op_type: str, x: str, axes: list[int], keepdims: int = 1, out: str | None = None
    ) -> str:
        """A reduction over `axes` (an input from opset 18, ReduceSum's from 13)."""
        if self.opset >= (13 if op_type == "ReduceSum" else 18):
            return self.op(op_type, x, self.ints(axes), out=out, keepdims=keepdims)
        return self.op(op_type, x, out=out, axes=axes, keepdims=keepdims)


def node_attr(node: onnx.NodeProto, name: str, default):
    """Attribute `name` of a node, or `default` where it has none."""
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def _text(node: onnx.NodeProto, name: str, default: str) -> str:
    """A string attribute (onnx gives bytes) as text."""
    value = node_attr(node, name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def node_arg(node: onnx.NodeProto, k: int) -> str:
    """Input k of a node, or "" where it has none (an optional input left out)."""
    return node.input[k] if len(node.input) > k else ""


def _out(node: onnx.NodeProto, k: int) -> str:
    return node.output[k] if len(node.output) > k else ""


def _gelu(w: _Writer, x: str, out: str) -> None:
    """x/2 (1 + erf(x / sqrt 2))."""
    erf = w.op("Erf", w.op("Mul", x, w.const(1 / math.sqrt(2))))
    w.op("Mul", w.op("Mul", x, w.const(0.5)), w.op("Add", erf, w.const(1.0)), out=out)


def _biased(w: _Writer, x: str, bias: str) -> str:
    return w.op("Add", x, bias) if bias else x


def gelu(w: _Writer, node: onnx.NodeProto) -> bool:
    _gelu(w, node.input[0], node.output[0])
    return True


def bias_gelu(w: _Writer, node: onnx.NodeProto) -> bool:
    _gelu(w, _biased(w, node.input[0], node_arg(node, 1)), node.output[0])
    return True


def fast_gelu(w: _Writer, node: onnx.NodeProto) -> bool:
    """y (1/2 + tanh(sqrt(2/pi) (y + 0.044715 y^3)) / 2), y = x + bias: the tanh form."""
    y = _biased(w, node.input[0], node_arg(node, 1))
    alpha = math.sqrt(2 / math.pi)
    inner = w.op("Mul", y, w.op("Add", w.const(alpha), w.op("Mul", w.const(alpha * 0.044715),
                                                              w.op("Mul", y, y))))  # fmt: skip
    half = w.op("Add", w.const(0.5), w.op("Mul", w.const(0.5), w.op("Tanh", inner)))
    w.op("Mul", y, half, out=node.output[0])
    return True


def quick_gelu(w: _Writer, node: onnx.NodeProto) -> bool:
    """x sigmoid(alpha x)."""
    x, alpha = node.input[0], float(node_attr(node, "alpha", 1.702))
    w.op("Mul", x, w.op("Sigmoid", w.op("Mul", x, w.const(alpha))), out=node.output[0])
    return True


def _layer_norm(w: _Writer, s: str, gamma: str, beta: str, eps: float, outs: list[str]) -> None:
    """LayerNormalization over the last axis of s into outs (y, mean, inv_std; "" where not
    wanted): the op itself from opset 17, its mean and variance before."""
    y, mean_out, inv_out = outs
    if w.opset >= 17:
        inputs = [s, gamma] + ([beta] if beta else [])
        names = [y, mean_out, inv_out]
        while names and not names[-1]:
            names.pop()
        node = helper.make_node("LayerNormalization", inputs, names, name=y, axis=-1, epsilon=eps)
        w.nodes.append(node)
        return
    mean = w.reduce("ReduceMean", s, [-1], out=mean_out or None)
    centred = w.op("Sub", s, mean)
    var = w.reduce("ReduceMean", w.op("Mul", centred, centred), [-1])
    inv = w.op("Reciprocal", w.op("Sqrt", w.op("Add", var, w.const(eps))), out=inv_out or None)
    scaled = w.op("Mul", w.op("Mul", centred, inv), gamma, out=None if beta else y)
    if beta:
        w.op("Add", scaled, beta, out=y)


def _rms_norm(w: _Writer, s: str, gamma: str, eps: float, axes: list[int], y: str, inv_out: str):
    """s / sqrt(mean(s^2) + eps) * gamma."""
    ms = w.reduce("ReduceMean", w.op("Mul", s, s), axes)
    inv = w.op("Reciprocal", w.op("Sqrt", w.op("Add", ms, w.const(eps))), out=inv_out or None)
    w.op("Mul", w.op("Mul", s, inv), gamma, out=y)


def _skip_sum(w: _Writer, node: onnx.NodeProto, bias_at: int) -> str:
    """input + skip (+ the bias input at `bias_at`), under output 3's name where it is one."""
    total = w.op("Add", node.input[0], node.input[1])
    if node_arg(node, bias_at):
        return w.op("Add", total, node_arg(node, bias_at), out=_out(node, 3) or None)
    return w.op("Identity", total, out=_out(node, 3)) if _out(node, 3) else total


def skip_layer_norm(w: _Writer, node: onnx.NodeProto) -> bool:
    """LayerNorm(input + skip + bias) * gamma + beta; outputs y, mean, inv_std, the sum."""
    eps = float(node_attr(node, "epsilon", 1e-12))
    outs = [node.output[0], _out(node, 1), _out(node, 2)]
    _layer_norm(w, _skip_sum(w, node, 4), node.input[2], node_arg(node, 3), eps, outs)
    return True


def skip_simplified_layer_norm(w: _Writer, node: onnx.NodeProto) -> bool:
    """RMSNorm(input + skip + bias) * gamma; outputs y, (mean: none), inv_std, the sum."""
    if _out(node, 1):
        return False  # a mean this op does not define
    eps = float(node_attr(node, "epsilon", 1e-12))
    _rms_norm(w, _skip_sum(w, node, 3), node.input[2], eps, [-1], node.output[0], _out(node, 2))
    return True


def simplified_layer_norm(w: _Writer, node: onnx.NodeProto) -> bool:
    """RMSNorm over the axes from `axis` on: X / sqrt(mean(X^2) + eps) * scale."""
    axis = int(node_attr(node, "axis", -1))
    rank = w.ranks.get(node.input[0])
    if axis != -1 and rank is None:
        return False
    axes = [-1] if axis == -1 else list(range(axis % rank, rank))
    eps = float(node_attr(node, "epsilon", 1e-5))
    _rms_norm(w, node.input[0], node.input[1], eps, axes, node.output[0], _out(node, 1))
    return True


def fused_matmul(w: _Writer, node: onnx.NodeProto) -> bool:
    """alpha * op(A) @ op(B), op transposing the last two axes where transA/transB say (the
    batch-transposing forms are left as they are)."""
    if node_attr(node, "transBatchA", 0) or node_attr(node, "transBatchB", 0):
        return False
    operands = []
    for name, flag in zip(node.input[:2], ("transA", "transB"), strict=True):
        if node_attr(node, flag, 0):
            rank = w.ranks.get(name)
            if rank is None or rank < 2:
                return False
            name = w.op("Transpose", name, perm=[*range(rank - 2), rank - 1, rank - 2])
        operands.append(name)
    alpha = float(node_attr(node, "alpha", 1.0))
    if alpha == 1.0:
        w.op("MatMul", *operands, out=node.output[0])
    else:
        w.op("Mul", w.op("MatMul", *operands), w.const(alpha), out=node.output[0])
    return True


def attention(w: _Writer, node: onnx.NodeProto) -> bool:
    """Multi-head self-attention on input [B, S, D] with packed weights [D, q + k + v]:
    softmax(Q K^T * scale + mask) V, heads concatenated. Masks: none, key lengths [B], a
    0/1 mask [B, S] or [B, S, S], attention_bias, unidirectional; a past state (a decoder
    step) is left as it is."""
    x, weights, bias = node.input[0], node.input[1], node_arg(node, 2)
    mask, bias_in = node_arg(node, 3), node_arg(node, 5)
    if node_arg(node, 4) or node_arg(node, 6) or _out(node, 1) or node_attr(node, "do_rotary", 0):
        return False
    heads = int(node_attr(node, "num_heads", 0))
    sizes = list(node_attr(node, "qkv_hidden_sizes", []))
    width = w.weights.get(weights)
    if not sizes and width is not None:
        sizes = [width[-1] // 3] * 3
    if heads < 1 or len(sizes) != 3 or any(s % heads for s in sizes):
        return False
    scale = float(node_attr(node, "scale", 0.0)) or 1 / math.sqrt(sizes[0] // heads)
    qkv = w.op("MatMul", x, weights)
    qkv = w.op("Add", qkv, bias) if bias else qkv
    edges = np.cumsum([0, *sizes]).tolist()

    def head(k: int) -> str:  # [B, S, size] -> [B, N, S, size / N]
        part = w.op("Slice", qkv, w.ints([edges[k]]), w.ints([edges[k + 1]]), w.ints([-1]))
        split = w.op("Reshape", part, w.ints([0, 0, heads, sizes[k] // heads]))
        return w.op("Transpose", split, perm=[0, 2, 1, 3])

    return _attend(w, node, head(0), head(1), head(2), (x, x), mask, bias_in, scale, sizes[2])


def multi_head_attention(w: _Writer, node: onnx.NodeProto) -> bool:
    """Attention of query [B, S, D] over key [B, L, D] and value [B, L, Dv], each projected
    already (bias [D + D + Dv] added here): softmax(Q K^T * scale + mask + attention_bias) V,
    heads concatenated. Masks as Attention's (key lengths [B], 0/1 [B, L] or [B, S, L]).
    Packed, BNSH or past inputs are left as they are."""
    query, key, value, bias = node.input[0], node_arg(node, 1), node_arg(node, 2), node_arg(node, 3)
    mask, bias_in = node_arg(node, 4), node_arg(node, 5)
    if any(node_arg(node, k) for k in range(6, len(node.input))) or any(
        _out(node, k) for k in range(1, len(node.output))
    ):
        return False
    heads = int(node_attr(node, "num_heads", 0))
    if heads < 1 or not key or not value or any(w.ranks.get(t) != 3 for t in (query, key, value)):
        return False
    parts = [query, key, value]
    if bias:  # [D + D + Dv]: its pieces end where query's and value's widths say
        widths = [w.op("Slice", w.op("Shape", t), w.ints([2]), w.ints([3])) for t in parts]
        ends = [widths[0], w.op("Add", widths[0], widths[1])]
        ends.append(w.op("Add", ends[1], widths[2]))
        starts = [w.ints([0]), *ends[:2]]
        parts = [w.op("Add", t, w.op("Slice", bias, a, b))
                 for t, a, b in zip(parts, starts, ends, strict=True)]  # fmt: skip

    def head(t: str) -> str:  # [B, S, size] -> [B, N, S, size / N]
        split = w.op("Reshape", t, w.ints([0, 0, heads, -1]))
        return w.op("Transpose", split, perm=[0, 2, 1, 3])

    q, k, v = (head(t) for t in parts)
    scale = float(node_attr(node, "scale", 0.0))
    if not scale:  # 1 / sqrt(head size), from query's width at run time
        size = w.op("Gather", w.op("Shape", q), w.ints(3, scalar=True))
        root = w.op("Sqrt", w.op("Cast", size, to=w.elem))
        scale = w.op("Reciprocal", root)
    return _attend(w, node, q, k, v, (query, key), mask, bias_in, scale, None)


def _attend(
    w: _Writer,
    node: onnx.NodeProto,
    q: str,
    k: str,
    v: str,
    seqs: tuple[str, str],
    mask: str,
    bias_in: str,
    scale: float | str,
    width: int | None,
) -> bool:
    """softmax(q k^T * scale + mask + bias_in [+ causal]) v for heads [B, N, ., size], heads
    joined again into node's output [B, S, N * size]. `seqs`: [B, S, .] and [B, L, .] tensors
    whose axis 1 gives the query and key positions."""
    fill = float(node_attr(node, "mask_filter_value", -10000.0))
    factor = w.const(scale) if isinstance(scale, float) else scale
    scores = w.op("Mul", w.op("MatMul", q, w.op("Transpose", k, perm=[0, 1, 3, 2])), factor)
    if mask:
        rank = w.ranks.get(mask)
        if rank not in (1, 2, 3):
            return False
        scores = w.op("Add", scores, _mask_values(w, seqs[1], mask, rank, fill))
    if bias_in:
        scores = w.op("Add", scores, bias_in)
    if node_attr(node, "unidirectional", 0):
        later = w.op("Greater", w.op("Reshape", _positions(w, seqs[1]), w.ints([1, -1])),
                     w.op("Reshape", _positions(w, seqs[0]), w.ints([-1, 1])))  # fmt: skip
        scores = w.op("Add", scores, w.op("Where", later, w.const(fill), w.const(0.0)))
    probs = w.op("Softmax", scores, axis=-1)
    mixed = w.op("Transpose", w.op("MatMul", probs, v), perm=[0, 2, 1, 3])
    w.op("Reshape", mixed, w.ints([0, 0, width or -1]), out=node.output[0])
    return True


def _mask_values(w: _Writer, x: str, mask: str, rank: int, fill: float) -> str:
    """What the scores get added: 0 where a key is kept, `fill` where masked, shaped to
    broadcast over [B, N, S, S]. Rank 1: each row's key count; else 1 keeps a key."""
    if rank == 1:
        count = w.op("Cast", mask, to=TensorProto.INT64)
        keep = w.op("Less", w.op("Reshape", _positions(w, x), w.ints([1, -1])),
                    w.op("Reshape", count, w.ints([-1, 1])))  # fmt: skip
    else:
        keep = w.op("Greater", w.op("Cast", mask, to=TensorProto.INT64), w.ints(0, scalar=True))
    values = w.op("Where", keep, w.const(0.0), w.const(fill))
    if rank < 3:
        return w.op("Reshape", values, w.ints([0, 1, 1, -1]))
    if w.opset >= 13:  # [B, S, L] -> [B, 1, S, L]
        return w.op("Unsqueeze", values, w.ints([1]))
    return w.op("Unsqueeze", values, axes=[1])


def embed_layer_norm(w: _Writer, node: onnx.NodeProto) -> bool:
    """LayerNorm(word[ids] + position[0..S-1 or position_ids] + segment[segment_ids]);
    outputs y, mask_index (each row's count of mask ones), the sum before the norm. The
    word lookup becomes a Gather of its own: the embedding lookup a token model is
    attributed at."""
    ids, segments = node.input[0], node_arg(node, 1)
    words, places, kinds = node.input[2], node.input[3], node_arg(node, 4)
    gamma, beta = node.input[5], node.input[6]
    mask, position_ids = node_arg(node, 7), node_arg(node, 8)
    if _out(node, 1) and (not mask or int(node_attr(node, "mask_index_type", 1)) != 1):
        return False
    total = w.op("Gather", words, ids, axis=0, out=w.unique(f"{node.output[0]}/word_embeddings"))
    where = position_ids or _positions(w, ids)
    total = w.op("Add", total, w.op("Gather", places, where, axis=0))
    if segments and kinds:
        total = w.op("Add", total, w.op("Gather", kinds, segments, axis=0))
    if _out(node, 2):
        total = w.op("Identity", total, out=node.output[2])
    eps = float(node_attr(node, "epsilon", 1e-12))
    _layer_norm(w, total, gamma, beta, eps, [node.output[0], "", ""])
    if _out(node, 1):
        ones = w.op("Cast", w.op("Greater", w.op("Cast", mask, to=TensorProto.INT64),
                                 w.ints(0, scalar=True)), to=TensorProto.INT32)  # fmt: skip
        w.reduce("ReduceSum", ones, [1], keepdims=0, out=node.output[1])
    return True


def _positions(w: _Writer, x: str) -> str:
    """0, 1, ..., S - 1 for x [B, S, D]."""
    size = w.op("Gather", w.op("Shape", x), w.ints(1, scalar=True))
    return w.op("Range", w.ints(0, scalar=True), size, w.ints(1, scalar=True))


Build = Callable[[_Writer, onnx.NodeProto], bool]
_MS_OPS: dict[str, Build] = {
    "Gelu": gelu,
    "BiasGelu": bias_gelu,
    "FastGelu": fast_gelu,
    "QuickGelu": quick_gelu,
    "SkipLayerNormalization": skip_layer_norm,
    "SkipSimplifiedLayerNormalization": skip_simplified_layer_norm,
    "FusedMatMul": fused_matmul,
    "Attention": attention,
    "MultiHeadAttention": multi_head_attention,
    "EmbedLayerNormalization": embed_layer_norm,
}


# -- ai.onnx.ml: what skl2onnx writes for scalers and linear models ----------------------
# ONNX Runtime's kernels compute these in float32 (a double or integer input is cast first) and
# give float32 outputs; the forms below do the same (onnxruntime/core/providers/cpu/ml/).
ML = "ai.onnx.ml"


def _as_float(w: _Writer, x: str) -> str:
    """x as float32, the element type every ai.onnx.ml kernel below computes in."""
    floats = w.elem
    w.elem = TensorProto.FLOAT
    return x if floats == TensorProto.FLOAT else w.op("Cast", x, to=TensorProto.FLOAT)


def ml_scaler(w: _Writer, node: onnx.NodeProto) -> bool:
    """(X - offset) * scale, offset and scale one value or one per feature (the last axis)."""
    offset = [float(v) for v in node_attr(node, "offset", [])] or [0.0]
    scale = [float(v) for v in node_attr(node, "scale", [])] or [1.0]
    x = _as_float(w, node.input[0])
    w.op("Mul", w.op("Sub", x, w.floats(offset)), w.floats(scale), out=node.output[0])
    _same_rank(w, node)
    return True


def _same_rank(w: _Writer, node: onnx.NodeProto) -> None:
    """The output's rank is the input's: onnx's shape inference gives no shape to ai.onnx.ml
    outputs, and the ops after may need it (ArrayFeatureExtractor)."""
    if node.input[0] in w.ranks:
        w.ranks[node.output[0]] = w.ranks[node.input[0]]


def ml_normalizer(w: _Writer, node: onnx.NodeProto) -> bool:
    """Each row of X [N, C] (or X [C]) over its max, L1 or L2 norm; a row whose norm is 0
    is kept as it is."""
    norm = _text(node, "norm", "MAX")
    if norm not in ("MAX", "L1", "L2"):
        return False
    x = _as_float(w, node.input[0])
    if norm == "MAX":
        z = w.reduce("ReduceMax", x, [-1])
    elif norm == "L1":
        z = w.reduce("ReduceSum", w.op("Abs", x), [-1])
    else:
        z = w.op("Sqrt", w.reduce("ReduceSum", w.op("Mul", x, x), [-1]))
    zero = w.op("Equal", z, w.const(0.0))
    w.op("Div", x, w.op("Where", zero, w.const(1.0), z), out=node.output[0])
    _same_rank(w, node)
    return True


def _linear(w: _Writer, node: onnx.NodeProto, rows: int) -> str | None:
    """X [N, C] (or X [C], one row) @ coefficients [rows, C]^T + intercepts: the scores
    [N, rows]."""
    coefficients = [float(v) for v in node_attr(node, "coefficients", [])]
    intercepts = [float(v) for v in node_attr(node, "intercepts", [])] or [0.0] * rows
    if rows < 1 or not coefficients or len(coefficients) % rows or len(intercepts) != rows:
        return None
    matrix = np.array(coefficients, np.float32).reshape(rows, -1).T
    x = w.op("Reshape", _as_float(w, node.input[0]), w.ints([-1, len(matrix)]))
    scores = w.op("Add", w.op("MatMul", x, w.floats(matrix.tolist())), w.floats(intercepts))
    for out in node.output[1:] if node.op_type == "LinearClassifier" else node.output[:1]:
        w.ranks[out] = 2
    return scores


def ml_linear_classifier(w: _Writer, node: onnx.NodeProto) -> bool:
    """Scores X @ coefficients^T + intercepts, one per class, then the post transform (NONE,
    LOGISTIC elementwise or SOFTMAX over the classes); the label is the class of the first
    largest score. One row of coefficients for two labels (ONNX Runtime adds a second class
    then), SOFTMAX_ZERO and PROBIT are left as they are."""
    labels = list(node_attr(node, "classlabels_ints", [])) or list(
        node_attr(node, "classlabels_strings", []))  # fmt: skip
    rows = len(node_attr(node, "intercepts", []))
    transform = _text(node, "post_transform", "NONE")
    if rows < 2 or len(labels) != rows or transform not in ("NONE", "LOGISTIC", "SOFTMAX"):
        return False
    scores = _linear(w, node, rows)
    if scores is None:
        return False
    if _out(node, 0):
        best = w.op("ArgMax", scores, axis=1, keepdims=0)
        table = np.array(labels, object if isinstance(labels[0], bytes) else np.int64)
        w.op("Gather", w.array(table), best, axis=0, out=node.output[0])
    if _out(node, 1):
        if transform == "NONE":
            w.op("Identity", scores, out=node.output[1])
        elif transform == "LOGISTIC":
            w.op("Sigmoid", scores, out=node.output[1])
        else:
            w.op("Softmax", scores, axis=1, out=node.output[1])
    return True


def ml_linear_regressor(w: _Writer, node: onnx.NodeProto) -> bool:
    """X @ coefficients^T + intercepts, one column per target (post_transform NONE only)."""
    transform = _text(node, "post_transform", "NONE")
    if transform != "NONE":
        return False
    scores = _linear(w, node, int(node_attr(node, "targets", 1)))
    if scores is None:
        return False
    w.op("Identity", scores, out=node.output[0])
    return True


def ml_array_feature_extractor(w: _Writer, node: onnx.NodeProto) -> bool:
    """X's entries at the indices along the last axis (X [C]: a [1, K] result)."""
    rank = w.ranks.get(node.input[0])
    if rank is None or rank < 1:
        return False
    flat = w.op("Reshape", node.input[1], w.ints([-1]))
    if rank == 1:
        picked = w.op("Gather", node.input[0], flat, axis=0)
        if w.opset >= 13:
            w.op("Unsqueeze", picked, w.ints([0]), out=node.output[0])
        else:
            w.op("Unsqueeze", picked, out=node.output[0], axes=[0])
    else:
        w.op("Gather", node.input[0], flat, axis=rank - 1, out=node.output[0])
    return True


def ml_imputer(w: _Writer, node: onnx.NodeProto) -> bool:
    """X with each entry equal to replaced_value_float (NaN: each NaN) replaced by the
    imputed value (one, or one per feature along the last axis): scikit-learn's SimpleImputer
    as skl2onnx writes it. Its gradient passes where X is kept, 0 where it is replaced.
    Integer imputers are left as they are."""
    values = [float(v) for v in node_attr(node, "imputed_value_floats", [])]
    if not values or w.opset < 9:  # (IsNaN and Where: opset 9)
        return False
    replaced = float(node_attr(node, "replaced_value_float", 0.0))
    x = _as_float(w, node.input[0])
    hit = w.op("IsNaN", x) if math.isnan(replaced) else w.op("Equal", x, w.const(replaced))
    w.op("Where", hit, w.floats(values), x, out=node.output[0])
    _same_rank(w, node)
    return True


_ML_OPS: dict[str, Build] = {
    "Imputer": ml_imputer,
    "Scaler": ml_scaler,
    "Normalizer": ml_normalizer,
    "LinearClassifier": ml_linear_classifier,
    "LinearRegressor": ml_linear_regressor,
    "ArrayFeatureExtractor": ml_array_feature_extractor,
}


def standard_forms(
    graph: onnx.GraphProto,
    opset: int,
    types: Mapping[str, tuple[int, int]],
    weights: Mapping[str, tuple[int, list[int]]],
    only: set[str] | None = None,
) -> list[onnx.TensorProto]:
    """Rewrite the contrib ops of `graph` (not its subgraphs) in standard ops, in place;
    returns the constants the new nodes read, for the caller to add as initializers.
    `types`: name -> (element type, rank), where known; `weights`: initializer name ->
    (element type, dims). onnx's shape inference stops at the first contrib op, so a node's float
    type may come from its weights instead, or else from the graph's weights."""
    inits = {name: elem for name, (elem, _) in weights.items()}
    floats = [t for t in inits.values() if t in _FLOATS]
    usual = max(set(floats), key=floats.count) if floats else TensorProto.FLOAT
    ranks = {name: rank for name, (_, rank) in types.items()}
    ranks.update({name: len(dims) for name, (_, dims) in weights.items()})
    w = _Writer(graph, opset, {name: dims for name, (_, dims) in weights.items()}, ranks)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        build = _builder(node) if only is None or node.op_type in only else None
        known = [types.get(i, (0, 0))[0] or inits.get(i, 0) for i in node.input if i]
        elem = next((t for t in known if t in _FLOATS), usual)
        if build is None or elem not in _FLOATS:
            nodes.append(node)
            continue
        w.elem, w.nodes = elem, []
        nodes.extend(w.nodes if build(w, node) else [node])
    del graph.node[:]
    graph.node.extend(nodes)
    return w.initializers


_FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _builder(node: onnx.NodeProto) -> Build | None:
    if node.domain == MS:
        return _MS_OPS.get(node.op_type)
    if node.domain == ML:
        return _ML_OPS.get(node.op_type)
    if node.domain in ("", "ai.onnx") and node.op_type == "SimplifiedLayerNormalization":
        return simplified_layer_norm
    return None


def with_embeddings_exposed(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each fused EmbedLayerNormalization written out (a copy; the model itself
    when it has none): its word-embedding lookup is then a Gather of the ids that a token
    model's attributions can start at, as in the model before ONNX Runtime fused it."""
    if not any(n.domain == MS and n.op_type == "EmbedLayerNormalization" for n in model.graph.node):
        return model
    from igcli.autodiff.driver import model_opset  # (the driver imports this module)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = model_opset(out)
    weights = {i.name: (i.data_type, list(i.dims)) for i in out.graph.initializer}
    found = standard_forms(out.graph, opset, {}, weights, only={"EmbedLayerNormalization"})
    out.graph.initializer.extend(found)
    return out
