"""Model-to-model rewrites before differentiating: fewer and cheaper nodes to reverse.

- ONNX Runtime's contrib ops (SkipLayerNormalization, BiasGelu, ...) are written as the
  standard ops they compose (see contrib.py), so the standard ops' rules reverse them.
- Inference BatchNormalization, and Mul/Add/Sub/Div by per-channel constants, right after a
  Conv with constant weights are folded into that Conv's weights and bias. The reverse pass
  then has one Conv to reverse instead of a Conv and a chain of per-channel products.
- A BatchNormalization after anything else (a Concat, a pool), with the per-channel
  products after it, becomes one per-channel affine: for float32 images whose channels fill
  16-wide blocks a depthwise 1x1 Conv, which ONNX Runtime runs (with its reverse, again a
  depthwise Conv) in its blocked NCHWc layout next to the real Convs, where a Mul would
  force layout reorders in and out; otherwise one BatchNormalization.
- Gather of one constant index (a ViT picking q, k and v, or its class token) becomes
  Slice + Squeeze: the reverse of a Slice is a Pad, where the reverse of a Gather is a
  ScatterElements with reduction, which ONNX Runtime runs element by element (19% of a
  ViT-S/16 gradient call).
- A Gather of one constant index from a Transpose (through a Squeeze) whose every reader
  is such a Gather reads the Transpose's input instead, where what is left of the Transpose
  is a Squeeze: torch's MultiheadAttention cutting q, k and v from one projection.
- MaxPool after a never-decreasing activation (Relu, Softplus, Sigmoid, Tanh, Elu, ...) read by
  nothing else pools first: f(MaxPool(x)) is MaxPool(f(x)), and f and its reverse then run
  on the pooled tensor.
- Nodes the explained output does not depend on are dropped (the gradient model keeps only
  that output).

Every rewrite is exact up to float rounding: folded weights are computed in float64 and
stored in the model's own float type.

After the transform, `faster_kernels` writes forward nodes that ONNX Runtime's CPU kernels run
slowly as compositions of fast ones, as accurate: Softplus (four fifths of the sample digits
CNN's forward) and Mish. Their reverse rules, which read x and y, are unchanged.

After the transform, `annotate` records the shape of every reverse-pass tensor the rules know
(a gradient is shaped like its forward tensor, symbolic batch included). ONNX Runtime cannot
infer shapes that pass through Reshape(x, Shape(y)); without them it cannot prove that a
gradient and a ReLU mask have the same shape, and runs their product in plain NCHW with
layout reorders around every Conv.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from igcli.autodiff.contrib import standard_forms
from igcli.autodiff.inference import infer_shapes, without_initializers

FOLDABLE = {"BatchNormalization", "Mul", "Add", "Sub", "Div"}


def prepare(model: onnx.ModelProto, input_name: str, output_name: str) -> onnx.ModelProto:
    """A copy of `model` with affine chains folded and dead nodes dropped (see module doc)."""
    out = without_initializers(model)  # the weights kept are copied in once, at the end
    graph = out.graph
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 1)
    consts = _constants(model.graph, opset)
    protected = {input_name, output_name, *(o.name for o in graph.output)}
    infos = _ranks(model)
    weights = {i.name: (i.data_type, list(i.dims)) for i in model.graph.initializer}
    new_inits = standard_forms(graph, opset, infos, weights)  # contrib ops, before all else
    nodes = [_Node(n) for n in _live_nodes(graph, output_name)]
    _fold(nodes, consts, protected, infos, new_inits, opset)
    _gathers_before_transposes(nodes, consts, infos, new_inits, opset, protected)
    _gathers_as_slices(nodes, consts, infos, new_inits, opset)
    _activations_after_pools(nodes, protected)
    _attention_probabilities(nodes)
    reshaped = _explicit_defaults(nodes)
    folded = [n.proto for n in nodes if not n.dead]
    del graph.node[:]
    graph.node.extend(folded)
    live = _live_nodes(graph, output_name)  # the constants folded away are dead now
    del graph.node[:]
    graph.node.extend(live)
    _add_used_initializers(graph, [*model.graph.initializer, *new_inits], input_name)
    for vi in [*graph.value_info, *graph.output]:  # dims inferred the wrong way before
        if vi.name in reshaped:
            for k, dim in enumerate(vi.type.tensor_type.shape.dim):
                if dim.HasField("dim_value"):  # (symbolic ones, a batch, stay as they are)
                    dim.dim_param = f"{vi.name}_dim{k}"  # (clears dim_value: a oneof)
    if out.ir_version < 4:  # initializers need not be graph inputs from IR 4 on
        out.ir_version = 4
    return out


def _explicit_defaults(nodes: list[_Node]) -> set[str]:
    """Write out defaults that onnx's shape inference reads otherwise than the runtimes: an
    STFT without `onesided` is one-sided (the spec, ONNX Runtime), but inference gives it
    every bin, and the gradient graph's seed would then be shaped for them. Returns the
    outputs whose recorded shapes (a model saved after shape inference) are then wrong."""
    reshaped = set()
    for n in nodes:
        p = n.proto
        stft = p.op_type == "STFT" and p.domain in ("", "ai.onnx")
        if stft and not any(a.name == "onesided" for a in p.attribute):
            p.attribute.append(helper.make_attribute("onesided", 1))
            reshaped.update(p.output)
    return reshaped


def annotate(model: onnx.ModelProto, infos: Mapping, names: set[str]) -> onnx.ModelProto:
    """Add value_info for each tensor in `names` whose rank and type `infos` (name ->
    builder.TensorInfo) know; tensors already described are left alone."""
    graph = model.graph
    known = {vi.name for vi in [*graph.value_info, *graph.input, *graph.output]}
    for name in sorted(names - known):
        info = infos.get(name)
        if info is not None and info.shape is not None and info.elem_type:
            vi = helper.make_tensor_value_info(name, info.elem_type, list(info.shape))
            graph.value_info.append(vi)
    return model


def faster_kernels(model: onnx.ModelProto, infos: Mapping) -> onnx.ModelProto:
    """Replace each float32/float64 Softplus and Mish in `model` by the same function in
    element-wise ops that ONNX Runtime vectorises (its own kernels take 25-28 ms on 1.6 M
    floats, the compositions 5-14), as accurate: within 4.5 units in the last place."""
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    consts: dict[tuple[int, float], str] = {}
    taken = {n for node in graph.node for n in [*node.input, *node.output]}
    taken |= {i.name for i in [*graph.initializer, *graph.input]}
    fresh = (name for k in itertools.count() if (name := f"igcli_fast_{k}") not in taken)

    def const(elem: int, value: float) -> str:
        if (elem, value) not in consts:
            consts[elem, value] = next(fresh)
            array = np.array(value, helper.tensor_dtype_to_np_dtype(elem))
            graph.initializer.append(numpy_helper.from_array(array, consts[elem, value]))
        return consts[elem, value]

    def step(op: str, *inputs: str, out: str | None = None) -> str:
        """Append a node; its output's name (a fresh one unless `out` is given)."""
        name = out or next(fresh)
        nodes.append(helper.make_node(op, list(inputs), [name], name=name))
        return name

    for node in graph.node:
        info = infos.get(node.input[0]) if node.input else None
        elem = info.elem_type if info else 0
        build = _FAST.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if build is None or elem not in (TensorProto.FLOAT, TensorProto.DOUBLE):
            nodes.append(node)
            continue
        build(step, node.input[0], node.output[0], functools.partial(const, elem))
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _softplus(step, x: str, y: str, const) -> None:
    """max(x, 0) + log1p(e) with e = exp(-|x|) in [0, 1]; log1p(e) = Log(u) - (u - 1 - e)/u
    with u = 1 + e: the correction restores what rounding 1 + e dropped, so a tiny e (x far
    below 0) keeps its digits instead of becoming log(1) = 0."""
    e = step("Exp", step("Neg", step("Abs", x)))
    u = step("Add", e, const(1.0))
    dropped = step("Div", step("Sub", step("Sub", u, const(1.0)), e), u)
    above = step("Max", x, const(0.0))  # (a Relu would run in a Conv's blocked layout: reorders)
    step("Add", above, step("Sub", step("Log", u), dropped), out=y)


def _mish(step, x: str, y: str, const) -> None:
    """x tanh(softplus(x)) = x q / (q + 2) with q = w (w + 2), w = e^x: no Log at all. w is
    taken at min(x, 20), beyond which q / (q + 2) is 1 in float64 too (and w^2 would
    overflow float32 from x = 44 on)."""
    w = step("Exp", step("Min", x, const(20.0)))
    q = step("Mul", w, step("Add", w, const(2.0)))
    step("Mul", x, step("Div", q, step("Add", q, const(2.0))), out=y)


_FAST = {"Softplus": _softplus, "Mish": _mish}


class _Node:
    def __init__(self, proto: onnx.NodeProto) -> None:
        self.proto, self.dead = proto, False


# -- constants ---------------------------------------------------------------------------------
def _constants(graph: onnx.GraphProto, opset: int) -> dict[str, np.ndarray]:
    """Initializers, Constant nodes, and shape ops applied to them (Unsqueeze of a BN scale)."""
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        try:
            value = _evaluate(node, consts, opset)
        except Exception:  # an odd constant is simply not folded
            value = None
        if value is not None:
            consts[node.output[0]] = value
    return consts


def _evaluate(node: onnx.NodeProto, consts: dict, opset: int) -> np.ndarray | None:
    attrs = _attrs(node)
    if node.op_type == "Constant":
        if "value" in attrs:
            return numpy_helper.to_array(attrs["value"])
        for key in ("value_float", "value_floats", "value_int", "value_ints"):
            if key in attrs:
                return np.asarray(attrs[key], np.float32 if "float" in key else np.int64)
        return None
    if node.domain not in ("", "ai.onnx") or not node.input or node.input[0] not in consts:
        return None
    x = consts[node.input[0]]
    second = consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if node.op_type == "Identity":
        return x
    if node.op_type == "Cast":
        return x.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if node.op_type in ("Unsqueeze", "Squeeze"):
        axes = attrs.get("axes") if opset < 13 else second
        if axes is None:
            return np.squeeze(x) if node.op_type == "Squeeze" else None
        axes = [int(a) for a in np.asarray(axes).reshape(-1)]
        if node.op_type == "Squeeze":
            return np.squeeze(x, axis=tuple(a % x.ndim for a in axes))
        rank = x.ndim + len(axes)
        for a in sorted(a % rank for a in axes):
            x = np.expand_dims(x, a)
        return x
    if node.op_type == "Reshape" and second is not None and not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else int(d) for i, d in enumerate(second)]
        return x.reshape(shape)
    return None


def _ranks(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """(element type, rank) from onnx shape inference (empty where it fails)."""
    try:
        inferred = infer_shapes(model)
    except Exception:
        return {}
    ranks = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            ranks[vi.name] = (t.elem_type, len(t.shape.dim))
    return ranks


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# -- liveness ----------------------------------------------------------------------------------
def _reads(node: onnx.NodeProto) -> set[str]:
    """Every name a node reads, including outer-scope names its subgraphs use."""
    names = {i for i in node.input if i}
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            inner = {o for n in sub.node for o in n.output} | {i.name for i in sub.input}
            inner |= {i.name for i in sub.initializer}
            for n in sub.node:
                names |= _reads(n) - inner
    return names


def _live_nodes(graph: onnx.GraphProto, output_name: str) -> list[onnx.NodeProto]:
    """The nodes the output depends on, in graph order."""
    nodes = list(graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    live: set[int] = set()
    stack = [output_name]
    while stack:
        k = producer.get(stack.pop())
        if k is None or k in live:
            continue
        live.add(k)
        stack.extend(_reads(nodes[k]))
    return [n for k, n in enumerate(nodes) if k in live]


def _add_used_initializers(
    graph: onnx.GraphProto, candidates: list[onnx.TensorProto], input_name: str
) -> None:
    """Give the graph the initializers among `candidates` that it reads, and take
    initializers off the graph inputs: igcli never feeds them (see model.graph_inputs), and
    ONNX Runtime treats an initializer that is also an input as a runtime value (no
    constant folding, no pre-packed weights)."""
    used = set().union(*(_reads(n) for n in graph.node)) if graph.node else set()
    used |= {o.name for o in graph.output}
    inits = {i.name for i in candidates} - {input_name}
    graph.initializer.extend(i for i in candidates if i.name in used and i.name in inits)
    inputs = [vi for vi in graph.input if vi.name not in inits]  # real inputs all stay
    del graph.input[:]
    graph.input.extend(inputs)


# -- folding -----------------------------------------------------------------------------------
def _readers(nodes: list[_Node]) -> dict[str, list[_Node]]:
    """Each tensor name -> the nodes that read it (see _reads)."""
    users: dict[str, list[_Node]] = {}
    for n in nodes:
        for name in _reads(n.proto):
            users.setdefault(name, []).append(n)
    return users


def _fold(nodes: list[_Node], consts, protected, ranks, new_inits, opset) -> None:
    """Fold each affine chain into the Conv before it (or into a new per-channel Conv)."""
    users = _readers(nodes)
    names = iter(range(1 << 62))

    def fresh(hint: str) -> str:
        return f"igcli_fold/{hint}_{next(names)}"

    for n in nodes:
        if n.dead:
            continue
        node = n.proto
        conv = _conv_affine(node, consts)
        if conv is None:
            conv = _standalone_affine(node, consts, ranks, opset)
            if conv is None:
                continue
        weight, bias = conv
        tail = node
        while True:
            y = tail.output[0]
            after = users.get(y, [])
            if y in protected or len(after) != 1 or after[0].dead:
                break
            step = _affine_step(after[0].proto, y, consts, weight.shape[0], weight.ndim, opset)
            if step is None:
                break
            scale, shift = step
            weight = weight * scale.reshape(-1, *[1] * (weight.ndim - 1))
            bias = bias * scale + shift
            if tail is not node:
                _kill(tail, nodes)
            tail = after[0].proto
        depthwise = node.op_type != "Conv" and _blocked_layout_fits(node, weight, consts)
        if tail is node and not depthwise:
            continue  # nothing to fold, nothing to gain
        _emit(n, node, tail, weight, bias, consts, new_inits, fresh, depthwise)
        if tail is not node:
            _kill(tail, nodes)


def _kill(proto: onnx.NodeProto, nodes: list[_Node]) -> None:
    for n in nodes:
        if n.proto is proto:
            n.dead = True


def _float_const(consts, name: str) -> np.ndarray | None:
    value = consts.get(name) if name else None
    return value if value is not None and value.dtype.kind == "f" else None


def _conv_affine(node: onnx.NodeProto, consts) -> tuple[np.ndarray, np.ndarray] | None:
    """(weight, bias) in float64 of a Conv with constant weights and bias."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return None
    weight = _float_const(consts, node.input[1])
    if weight is None or weight.ndim < 3:
        return None
    if len(node.input) > 2 and node.input[2]:
        bias = _float_const(consts, node.input[2])
        if bias is None:
            return None
    else:
        bias = np.zeros(weight.shape[0])
    return weight.astype(np.float64), bias.astype(np.float64).reshape(-1)


def _standalone_affine(node, consts, ranks, opset) -> tuple[np.ndarray, np.ndarray] | None:
    """An inference BatchNormalization not after a Conv: (scale, shift) per channel, the
    scale shaped like a depthwise 1x1 kernel ([C, 1, ...], the input's rank)."""
    if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
        return None
    rank = ranks.get(node.input[0], (0, None))[1]
    step = _bn_step(node, consts, opset)
    if step is None or rank is None or rank < 2:
        return None
    scale, shift = step
    return scale.reshape(-1, *[1] * (rank - 1)), shift


def _blocked_layout_fits(node, weight: np.ndarray, consts) -> bool:
    """Whether a per-channel affine is best a depthwise Conv: float32 images whose channels
    fill ONNX Runtime's 16-wide NCHWc blocks. Elsewhere (double has no Conv kernel in ONNX
    Runtime; other shapes stay in NCHW) a BatchNormalization is the cheaper spelling."""
    dtype = consts[node.input[1]].dtype
    return dtype == np.float32 and weight.ndim == 4 and weight.shape[0] % 16 == 0


def _bn_step(node, consts, opset) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (scale, shift) of an inference BatchNormalization with constant parameters."""
    attrs = _attrs(node)
    training = attrs.get("training_mode", 0) if opset >= 14 else sum(map(bool, node.output)) > 1
    if training or attrs.get("spatial", 1) == 0 or len(node.input) < 5:
        return None
    params = [_float_const(consts, name) for name in node.input[1:5]]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
    scale = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
    return scale, beta - mean * scale


def _affine_step(node, x: str, consts, channels: int, rank: int, opset: int):
    """(scale, shift) per channel when `node` maps x to x * scale + shift; else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in FOLDABLE:
        return None
    if node.op_type == "BatchNormalization":
        if node.input[0] != x:
            return None
        step = _bn_step(node, consts, opset)
        if step is None or len(step[0]) != channels:
            return None
        return step
    if len(node.input) != 2 or x not in node.input or node.input[0] == node.input[1]:
        return None
    other = node.input[1] if node.input[0] == x else node.input[0]
    c = _per_channel(_float_const(consts, other), channels, rank)
    if c is None:
        return None
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op_type == "Mul":
        return c, zeros
    if node.op_type == "Add":
        return ones, c
    if node.op_type == "Sub":
        return (ones, -c) if node.input[0] == x else None
    if node.op_type == "Div":
        return (1.0 / c, zeros) if node.input[0] == x and np.all(c != 0) else None
    return None


def _per_channel(value: np.ndarray | None, channels: int, rank: int) -> np.ndarray | None:
    """A constant that broadcasts against [N, C, ...] as one value per channel, as [C]."""
    if value is None or value.ndim > rank:
        return None
    shape = [1] * (rank - value.ndim) + list(value.shape)
    if any(d != 1 for k, d in enumerate(shape) if k != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.astype(np.float64).reshape(-1), [channels]).copy()


def _emit(n: _Node, head, tail, weight, bias, consts, new_inits, fresh, depthwise) -> None:
    """Replace head..tail by one node writing tail's output: the head Conv with new weights,
    a depthwise 1x1 Conv, or a BatchNormalization that is just x * scale + shift."""
    x, y, name = head.input[0], tail.output[0], head.name or fresh("affine")
    dtype = consts[head.input[1]].dtype  # the Conv's weight, or the BatchNormalization's scale

    def const(value, hint: str) -> str:
        new_inits.append(numpy_helper.from_array(np.asarray(value).astype(dtype), fresh(hint)))
        return new_inits[-1].name

    if head.op_type == "Conv":
        proto = helper.make_node("Conv", [x, const(weight, "weight"), const(bias, "bias")], [y],
                                 name=name)  # fmt: skip
        proto.attribute.extend(head.attribute)
    elif depthwise:
        proto = helper.make_node("Conv", [x, const(weight, "weight"), const(bias, "bias")], [y],
                                 name=name, group=int(weight.shape[0]))  # fmt: skip
    else:  # mean 0, variance 1, epsilon 0: scale and shift exactly
        scale, zeros = weight.reshape(-1), np.zeros(weight.shape[0])
        inputs = [const(scale, "scale"), const(bias, "shift"), const(zeros, "mean")]
        proto = helper.make_node("BatchNormalization", [x, *inputs, const(zeros + 1, "var")],
                                 [y], name=name, epsilon=0.0)  # fmt: skip
    n.proto = proto


# -- Gather of one index -----------------------------------------------------------------------
def _attention_probabilities(nodes: list[_Node]) -> None:
    """Attention nodes also output their softmax probabilities (output 3 with
    qk_matmul_output_mode 3), which the Attention rule reverses through: exactly the P ONNX
    Runtime used, masks and causality included, not a recomputation. Nodes that already use
    output 3 keep it (the rule then refuses unless it is the softmax)."""
    for n in nodes:
        node = n.proto
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx") or n.dead:
            continue
        if len(node.output) > 3 and node.output[3]:
            continue
        while len(node.output) < 4:
            node.output.append("")
        node.output[3] = f"{node.output[0]}/igcli_probs"
        for attr in list(node.attribute):
            if attr.name == "qk_matmul_output_mode":
                node.attribute.remove(attr)
        node.attribute.append(helper.make_attribute("qk_matmul_output_mode", 3))


# Element-wise activations that never decrease (with these attributes): a max-pool of their
# outputs is the activation of the max-pool of their inputs. Relu too, though ONNX Runtime
# runs it inside the Conv before it at no cost: its reverse, a mask and a product, is then a
# quarter as large (ResNet-50's stem: the reverse pass 1-2 ms per row less).
_RISING = {
    "Relu": {},
    "LeakyRelu": {"alpha": 0.01},
    "Sigmoid": {},
    "Tanh": {},
    "Softplus": {},
    "Softsign": {},
    "Elu": {"alpha": 1.0},
    "Celu": {"alpha": 1.0},
    "Selu": {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
    "HardSigmoid": {"alpha": 0.2},
}


def _activations_after_pools(nodes: list[_Node], protected: set[str]) -> None:
    """MaxPool(f(x)) becomes f(MaxPool(x)) for a never-decreasing element-wise f read only by
    the pool: the same values (the max of f is f of the max), but f and its reverse run on
    the pooled tensor, a quarter of the values after a 2x2 pool. The sample digits CNN
    (Conv, Softplus, MaxPool twice): gradient kernels 2.3-3.2 -> 1.5-1.6 ms per 16 rows.
    Only pools whose every window holds an input value (a window of padding alone is the
    lowest float, which f would change): no ceil_mode, no SAME padding, and pads only where
    the windows are contiguous and each pad is under the kernel."""
    users = _readers(nodes)
    producer = {o: n for n in nodes if not n.dead for o in n.proto.output if o}
    for pool in nodes:
        p = pool.proto
        if pool.dead or not _plain_max_pool(p):
            continue
        act = producer.get(p.input[0])
        if act is None or not _rising(act.proto):
            continue
        a = act.proto
        y = a.output[0]
        if y in protected or len(users.get(y, [])) != 1 or len([o for o in a.output if o]) != 1:
            continue
        pooled = f"{y}/igcli_pooled"
        moved_pool = helper.make_node(p.op_type, [a.input[0]], [pooled], name=p.name)
        moved_pool.attribute.extend(p.attribute)
        moved_act = helper.make_node(a.op_type, [pooled], [p.output[0]], name=a.name)
        moved_act.attribute.extend(a.attribute)
        act.proto, pool.proto = moved_pool, moved_act  # (the order stays topological)


def _plain_max_pool(node: onnx.NodeProto) -> bool:
    if node.domain not in ("", "ai.onnx") or len([o for o in node.output if o]) != 1:
        return False
    if node.op_type == "GlobalMaxPool":
        return True
    attrs = _attrs(node)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if node.op_type != "MaxPool" or node.output[0] == "" or attrs.get("ceil_mode", 0):
        return False
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) not in ("NOTSET", "VALID"):
        return False
    # Every window holds an input value: unpadded, or contiguous with each pad under the
    # kernel. (Dilated windows over padding can miss the input: k=2, dilation 2, pads 1 on
    # a length-1 axis reads only padding.)
    kernel, pads = list(attrs.get("kernel_shape", [])), list(attrs.get("pads", []))
    if not any(pads):
        return True
    contiguous = all(d == 1 for d in attrs.get("dilations", []))
    return (
        contiguous
        and len(pads) == 2 * len(kernel)
        and all(p < k for p, k in zip(pads, kernel * 2, strict=True))
    )


def _rising(node: onnx.NodeProto) -> bool:
    """Whether node is an element-wise activation that never decreases (see _RISING)."""
    defaults = _RISING.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if defaults is None or len(node.input) != 1:
        return False
    attrs = _attrs(node)
    return all(float(attrs.get(name, value)) >= 0 for name, value in defaults.items())


def _gathers_before_transposes(nodes: list[_Node], consts, infos, new_inits, opset, protected):
    """Gather(Transpose(u), i) with a constant scalar i (maybe through a Squeeze) becomes a
    Gather of u itself, where what is left of the Transpose only moves axes of size 1, i.e.
    is a Squeeze. torch's MultiheadAttention cuts q, k and v from its packed projection as
    Reshape, Unsqueeze, Transpose(3, 1, 2, 0, 4), Squeeze, Gather 0, 1, 2: the Transpose
    copies every value, and so does its reverse (a ViT-S/16: 35 + 33 ms of a 1.9 s gradient
    call). Rewritten only where every reader of the Transpose is such a Gather, so the
    Transpose goes away."""
    users = _readers(nodes)
    for t_node in nodes:
        t = t_node.proto
        if t_node.dead or t.op_type != "Transpose" or t.domain not in ("", "ai.onnx"):
            continue
        rank = infos.get(t.input[0], (0, None))[1]
        if rank is None or t.output[0] in protected:
            continue
        perm = list(_attrs(t).get("perm", range(rank - 1, -1, -1)))
        plans = _gather_plans(t.output[0], perm, users, consts, opset, protected)
        if plans is None:
            continue
        for gather, axis, unit_axes in plans:
            _gather_early(nodes, gather, t.input[0], axis, unit_axes, new_inits, opset)
        t_node.dead = True
        for n in users.get(t.output[0], []):
            if n.proto.op_type == "Squeeze":
                n.dead = True


def _gather_plans(t: str, perm, users, consts, opset, protected):
    """For each Gather reading Transpose output t (directly or through one Squeeze): (its
    node, the axis of the Transpose's input it takes, the axes of that Gather's result to
    squeeze). None unless every reader is such a Gather and what is left of the Transpose
    after each is a Squeeze."""
    plans = []
    for n in users.get(t, []):
        node, squeezed = n.proto, []
        if n.dead or node.input[0] != t:
            return None
        if node.op_type == "Squeeze" and node.domain in ("", "ai.onnx"):
            axes = (
                _attrs(node).get("axes")
                if opset < 13
                else (consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None)
            )
            if axes is None or node.output[0] in protected:
                return None
            squeezed = sorted(int(a) % len(perm) for a in np.asarray(axes).reshape(-1))
            readers = users.get(node.output[0], [])
            source = node.output[0]
        else:
            source = t
            readers = [n]
        if not readers:
            return None
        for g in readers:
            gp = g.proto
            index = consts.get(gp.input[1]) if len(gp.input) > 1 else None
            if (gp.op_type != "Gather" or gp.domain not in ("", "ai.onnx") or g.dead
                    or gp.input[0] != source or index is None or index.ndim != 0
                    or index.dtype.kind not in "iu"):  # fmt: skip
                return None
            kept = [a for a in range(len(perm)) if a not in squeezed]
            axis = kept[_attrs(gp).get("axis", 0) % len(kept)]  # in t's axes
            left = [v - (v > perm[axis]) for v in perm if v != perm[axis]]
            gone = {left[a - (a > axis)] for a in squeezed}
            if [v for v in left if v not in gone] != sorted(set(left) - gone):
                return None  # what is left still reorders axes: no gain
            plans.append((g, perm[axis], sorted(gone)))
    return plans or None


def _gather_early(nodes, g: _Node, u: str, axis: int, axes: list[int], new_inits, opset) -> None:
    """g's Gather on u, the Transpose's input, along `axis`, followed by a Squeeze of `axes`
    (those that were squeezed before it, in u's order less the gathered one)."""
    gp = g.proto
    out = gp.output[0]
    early = f"{out}/igcli_early" if axes else out
    gather = helper.make_node("Gather", [u, gp.input[1]], [early], name=gp.name, axis=axis)
    g.proto = gather
    if not axes:
        return
    if opset >= 13:
        name = f"{early}/squeeze_axes"
        new_inits.append(numpy_helper.from_array(np.array(axes, np.int64), name))
        squeeze = helper.make_node(
            "Squeeze", [early, name], [out], name=f"{gp.name or out}/unit_axes"
        )
    else:
        squeeze = helper.make_node(
            "Squeeze", [early], [out], name=f"{gp.name or out}/unit_axes", axes=axes
        )
    nodes.insert(nodes.index(g) + 1, _Node(squeeze))


def _gathers_as_slices(nodes: list[_Node], consts, infos, new_inits, opset) -> None:
    """Gather(x, i) with a constant scalar i on a float x: Squeeze(Slice(x, i, i + 1))."""
    for n in nodes:
        node = n.proto
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or n.dead:
            continue
        index = consts.get(node.input[1])
        elem, rank = infos.get(node.input[0], (0, None))
        if index is None or index.ndim != 0 or index.dtype.kind not in "iu" or rank is None:
            continue
        if elem not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % rank
        start = int(index)
        end = start + 1 if start != -1 else np.iinfo(np.int64).max
        sliced = f"{node.output[0]}/igcli_slice"
        if opset >= 10:
            names = [f"{sliced}/{k}" for k in ("starts", "ends", "axes")]
            for name, value in zip(names, ([start], [end], [axis]), strict=True):
                new_inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
            slice_node = helper.make_node("Slice", [node.input[0], *names], [sliced])
        else:
            slice_node = helper.make_node("Slice", [node.input[0]], [sliced], starts=[start],
                                          ends=[end], axes=[axis])  # fmt: skip
        if opset >= 13:
            axes = f"{sliced}/squeeze_axes"
            new_inits.append(numpy_helper.from_array(np.array([axis], np.int64), axes))
            squeeze = helper.make_node("Squeeze", [sliced, axes], [node.output[0]])
        else:
            squeeze = helper.make_node("Squeeze", [sliced], [node.output[0]], axes=[axis])
        base = node.name or node.output[0]  # (unnamed nodes must not share a made-up name)
        slice_node.name, squeeze.name = f"{base}/slice", f"{base}/squeeze"
        n.proto = slice_node
        nodes.insert(nodes.index(n) + 1, _Node(squeeze))
