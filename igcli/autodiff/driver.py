"""Reverse-mode transform: extend an ONNX model with the gradient of one output.

The driver knows nothing about individual ops. It finds the nodes on a float path from the
attributed input to the explained output, walks them backwards calling each op's rule, sums
gradients where a tensor fans out, and returns a model with one extra input (the seed, shaped
like the output) and one extra output: d(sum(seed * output)) / d(input).

Only float tensors carry gradient: a path through Shape, a Cast to an integer type or a
comparison is cut there, so shape arithmetic (Range, integer Gather/Concat, ...) never blocks a
graph. Subgraphs read outer tensors without naming them as inputs; those reads are edges too
(`subgraphs.captures`). An `If` whose condition is a constant is replaced by the branch it
takes; any other `If` on the path is differentiated branch by branch (the gradient is itself
an `If` on the same condition); `Loop` and `Scan` on the path refuse, naming the op.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper

from igcli.autodiff import rules_grid, rules_math, rules_nn, rules_shape, rules_signal  # noqa: F401
from igcli.autodiff.builder import FLOAT_TYPES, GraphEmitter, NodeGrad, TensorInfo
from igcli.autodiff.inference import infer_shapes
from igcli.autodiff.optimize import annotate, faster_kernels, prepare
from igcli.autodiff.recurrent import RECURRENT, recurrent_unsupported, unroll_recurrents
from igcli.autodiff.registry import RULES, ZERO_GRADIENT
from igcli.autodiff.specialize import sanitize_dims
from igcli.autodiff.subgraphs import (
    constant_values,
    inline_constant_ifs,
    node_inputs,
    renamed_copy,
    subgraphs,
)
from igcli.errors import UnsupportedOpsError

SEED = "igcli_seed"
GRAD = "igcli_grad"


def model_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


# The reverse pass needs Expand (opset 8) and Where (9): an older model's gradient graph
# would not load ('No Op registered for Expand with domain_version of 7'), and it fell back
# to finite differences (a classic CNN at opset 7: Pearson 0.52 at 4x4 patches).
MIN_OPSET = 9


def at_least_min_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """An older model converted to MIN_OPSET by onnx's version converter (its adapters
    rewrite what changed, BatchNormalization's and Upsample's forms, say); as it is where
    that fails. The self-check holds the gradient to the model as given either way."""
    if model_opset(model) >= MIN_OPSET:
        return model
    from onnx import version_converter

    # (it wants each initializer among the inputs, as IR 3 had them: igcli takes them out)
    inputs = {i.name for i in model.graph.input}
    listed = onnx.ModelProto()
    listed.CopyFrom(model)
    listed.graph.input.extend(
        helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
        for i in model.graph.initializer
        if i.name not in inputs
    )
    try:
        converted = version_converter.convert_version(listed, MIN_OPSET)
    except Exception:  # (an op without an adapter: the graph then fails as it did)
        return model
    kept = [i for i in converted.graph.input if i.name in inputs]
    del converted.graph.input[:]
    converted.graph.input.extend(kept)
    return converted


def _value_infos(graph: onnx.GraphProto, infos: dict[str, TensorInfo]) -> None:
    """Collect the type and shape of every named value of a graph and its subgraphs."""
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        if not vi.type.HasField("tensor_type"):
            continue
        t = vi.type.tensor_type
        shape = None
        if t.HasField("shape"):
            shape = [
                d.dim_value
                if d.HasField("dim_value") and d.dim_value >= 0
                else (d.dim_param or None)
                for d in t.shape.dim
            ]
        known = infos.get(vi.name)
        if known is None or (known.shape is None and shape is not None) or not known.elem_type:
            infos[vi.name] = TensorInfo(t.elem_type, shape)
    for init in graph.initializer:
        infos[init.name] = TensorInfo(init.data_type, list(init.dims))
    for node in graph.node:
        for sub in subgraphs(node):
            _value_infos(sub, infos)


def _tensor_infos(
    model: onnx.ModelProto, hints: dict[str, TensorInfo] | None = None
) -> dict[str, TensorInfo]:
    """Types and shapes from onnx shape inference; `hints` fill what inference left open."""
    try:
        inferred = infer_shapes(model, data_prop=True)
    except Exception:  # inference is a help, not a requirement
        inferred = model
    infos: dict[str, TensorInfo] = {}
    _value_infos(inferred.graph, infos)
    for name, hint in (hints or {}).items():
        known = infos.get(name)
        if known is None or known.shape is None or len(known.shape) != len(hint.shape):
            infos[name] = hint
        else:  # keep what inference knows for sure; take observed sizes for the rest
            pairs = zip(known.shape, hint.shape, strict=True)
            shape = [k if isinstance(k, int) else h for k, h in pairs]
            infos[name] = TensorInfo(known.elem_type, shape)
    _same_batch_symbols(model.graph, infos)
    return infos


# ops whose first output has the broadcast shape of their inputs (one input: its shape;
# not CastLike, whose second input only lends its type)
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Sum", "Mean",
                "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Erf",
                "Neg", "Abs", "Reciprocal", "Identity", "Cast", "Clip", "Dropout",
                "Softmax", "LogSoftmax", "Gelu", "Softplus", "Elu", "Selu", "HardSigmoid",
                "HardSwish", "LayerNormalization", "Sin", "Cos"}  # fmt: skip
_SHAPE_OPS = {"Shape", "Slice", "Concat", "Gather", "Cast", "Unsqueeze", "Squeeze", "Identity",
              "Add", "Sub", "Mul", "Div"}  # fmt: skip
_INT_ARITHMETIC = {"Add": int.__add__, "Sub": int.__sub__, "Mul": int.__mul__,
                   "Div": lambda a, b: a // b if b and a % b == 0 else None}  # fmt: skip


def _same_batch_symbols(graph: onnx.GraphProto, infos: dict[str, TensorInfo]) -> None:
    """Give dims that are provably equal one symbol where onnx's inference gave fresh ones.

    onnx names the -1 dim of a Reshape (and the shape a Reshape reads from Shape, Slice and
    Concat) with a fresh symbol, unk__0, even where the sizes prove it equal to the input's
    batch N or to N*6; a MatMul or Add of two such tensors then gets another fresh one. The
    reverse pass cannot see that a gradient and its forward tensor have the same shape, and
    sums it to that shape at run time: a ReduceSum that copies and fourteen shape ops, 84
    times in a ViT-S/16 (about 4% of its gradient call). Walking the nodes in order, a
    Reshape's dims are worked out from its input's one symbolic dim and its shape's values
    (a -1 that is N*k, or a plain size where the symbols cancel), and an elementwise op's or
    a MatMul's batch dims from inputs whose dims other than 1 share one symbol; each fresh
    symbol so proven equal to a symbol or a size is replaced everywhere. Nothing is merged on
    assumption.
    """
    consts = constant_values(graph)
    rename: dict[str, str | int] = {}
    multiples: dict[str, tuple[str, int]] = {}  # a name given here -> (symbol, factor)
    values: dict[str, list] = {}  # 1-D shape tensors: their values (ints and symbols)

    def dims(name: str) -> list | None:
        info = infos.get(name)
        return (
            None if info is None or info.shape is None else [rename.get(d, d) for d in info.shape]
        )

    def prove(out: str, axis: int, name: str | int | None) -> None:
        old = (dims(out) or [None] * (axis + 1))[axis]
        if isinstance(old, str) and isinstance(name, str | int) and old != name:
            rename[old] = name

    for node in graph.node:
        op = node.op_type
        if op in _SHAPE_OPS:
            known = _shape_value(node, dims, values, consts)
            if known is not None:
                values[node.output[0]] = known
        if op == "Reshape" and len(node.input) > 1:
            target = values.get(node.input[1])
            if target is None and node.input[1] in consts:
                target = [int(v) for v in consts[node.input[1]].reshape(-1)]
            x, y = dims(node.input[0]), dims(node.output[0])
            if target is None or x is None or y is None or len(y) != len(target):
                continue
            for axis, name in enumerate(_reshaped(x, target, multiples)):
                prove(node.output[0], axis, name)
        elif op in _ELEMENTWISE or op == "MatMul":
            shapes = [dims(i) for i in node.input if i]
            y = dims(node.output[0])
            if y is None or any(d is None for d in shapes):
                continue
            if op == "MatMul":  # the batch dims broadcast; the last two multiply
                if any(len(d) < 2 for d in shapes):
                    continue
                shapes = [d[:-2] for d in shapes]
                y = y[:-2]
            for axis in range(1, len(y) + 1):
                seen = {d[-axis] for d in shapes if len(d) >= axis and d[-axis] != 1}
                if len(seen) <= 1:  # one symbol or size, or 1 everywhere
                    prove(node.output[0], len(y) - axis, seen.pop() if seen else 1)
    if not rename:
        return

    def final(d):
        for _ in range(len(rename)):  # a symbol renamed to one renamed later
            if d not in rename:
                break
            d = rename[d]
        return d

    for name, info in list(infos.items()):
        if info.shape is not None and any(d in rename for d in info.shape):
            infos[name] = TensorInfo(info.elem_type, [final(d) for d in info.shape])


def _shape_value(node, dims, values, consts) -> list | None:
    """The values of a 1-D shape tensor (ints and dim symbols) from Shape, Slice, Concat,
    Gather, Cast, Unsqueeze and Squeeze of known ones; None where not followed."""

    def value(name: str) -> list | None:
        if name in values:
            return values[name]
        if name in consts and consts[name].dtype.kind in "iu" and consts[name].ndim <= 1:
            return [int(v) for v in consts[name].reshape(-1)]
        return None

    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op == "Shape":
        shape = dims(node.input[0])
        return None if shape is None else shape[attrs.get("start", 0) : attrs.get("end")]
    if op in ("Cast", "Unsqueeze", "Squeeze", "Identity"):  # a scalar dim made 1-D, or back
        return value(node.input[0])
    if op in _INT_ARITHMETIC:  # sizes worked out from known ints (a head count, say)
        a, b = value(node.input[0]), value(node.input[1])
        if a is None or b is None or len(b) not in (1, len(a)) or len(a) not in (1, len(b)):
            return None
        pairs = zip(a * (len(b) // len(a)), b * (len(a) // len(b)), strict=True)
        out = [_INT_ARITHMETIC[op](p, q) if isinstance(p, int) and isinstance(q, int) else None
               for p, q in pairs]  # fmt: skip
        return out if None not in out else None
    if op == "Concat":
        parts = [value(i) for i in node.input]
        return None if any(p is None for p in parts) else [d for p in parts for d in p]
    data = value(node.input[0])
    if data is None:
        return None
    if op == "Gather":
        index = value(node.input[1]) if len(node.input) > 1 else None
        if index is None or attrs.get("axis", 0) != 0:
            return None
        return [data[i] for i in index] if all(-len(data) <= i < len(data) for i in index) else None
    if op == "Slice" and len(node.input) >= 3:
        starts, ends = value(node.input[1]), value(node.input[2])
        axes = value(node.input[3]) if len(node.input) > 3 and node.input[3] else [0]
        steps = value(node.input[4]) if len(node.input) > 4 and node.input[4] else [1]
        if None in (starts, ends, axes, steps) or axes != [0] or len(starts) != 1:
            return None
        return data[slice(starts[0], ends[0], steps[0])]
    return None


def _reshaped(x: list, target: list, multiples: dict[str, tuple[str, int]]) -> list:
    """The dims a Reshape of an input shaped `x` to `target` gives, as far as they are
    proven: a symbol named in `target`, or the -1 worked out where x has one symbolic dim
    (N, or N*k as named here) and the rest are ints; None where not proven."""
    out = [t if isinstance(t, str) or (isinstance(t, int) and t > 0) else None for t in target]
    if target.count(-1) != 1 or 0 in target:  # (a 0 copies an input dim: not followed)
        return out
    symbols = [d for d in x if not isinstance(d, int)]
    named = [t for t in target if isinstance(t, str)]
    if len(symbols) != 1 or not isinstance(symbols[0], str) or len(named) > 1:
        return out
    symbol, factor = multiples.get(symbols[0], (symbols[0], 1))
    size = factor * int(np.prod([d for d in x if isinstance(d, int)]))
    rest = int(np.prod([t for t in target if isinstance(t, int) and t != -1]))
    if named:  # [N, 32, 4, 4] to [N, 32, -1]: the symbols cancel, the -1 is 16
        other, times = multiples.get(named[0], (named[0], 1))
        if other != symbol:
            return out
        rest *= times
    if rest <= 0 or size % rest:
        return out
    k = size // rest
    if named:
        out[target.index(-1)] = k
        return out
    name = symbol if k == 1 else f"{symbol}*{k}"
    multiples[name] = (symbol, k)
    out[target.index(-1)] = name
    return out


def _concat_of_slices(e: GraphEmitter, name: str, parts: list[str]) -> str | None:
    """The gradients of slices that tile tensor `name` along one axis (q, k and v cut from
    one projection) are zero-padded copies of each slice's gradient: their sum is the Concat of
    the unpadded ones. One pass instead of a Pad per slice and a Sum over full-size tensors
    (a ViT-S/16 has twelve). None unless every part is such a Pad and together they tile."""
    specs = [e.pads.get(p) for p in parts]
    if any(s is None or s[3] != "constant" or s[2] != 0.0 for s in specs):
        return None
    rank = len(specs[0][1]) // 2
    if any(len(s[1]) != 2 * rank for s in specs) or any(p < 0 for s in specs for p in s[1]):
        return None
    axes = {k for s in specs for k in range(rank) if s[1][k] or s[1][rank + k]}
    if len(axes) != 1:
        return None
    (axis,) = axes
    order = sorted(specs, key=lambda s: s[1][axis])
    begins, ends = [s[1][axis] for s in order], [s[1][rank + axis] for s in order]
    sizes = {begins[k + 1] + ends[k] for k in range(len(order) - 1)}  # the axis's full size
    if begins[0] != 0 or ends[-1] != 0 or len(sizes) != 1:
        return None
    size, shape = sizes.pop(), e.static_shape(name)
    if shape is None or len(shape) != rank or shape[axis] != size:
        return None  # a gap or an overlap between the pieces (or a size we cannot check)
    if any(size - b - f <= 0 for b, f in zip(begins, ends, strict=True)):
        return None  # an empty piece
    if any(p in e.pad_uses for p in parts):
        return None  # a rule also used a padded tensor itself: keep it
    e.dropped.update(parts)
    return e.op("Concat", *[s[0] for s in order], axis=axis)


def _standard(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _op_label(node: onnx.NodeProto) -> str:
    return node.op_type if _standard(node) else f"{node.domain}.{node.op_type}"


class _Walk:
    """The reverse walk over one graph body (the main graph or an If branch)."""

    def __init__(self, emitter: GraphEmitter, blocked: list[str], where: str = "") -> None:
        self.e, self.blocked, self.where = emitter, blocked, where

    def is_float(self, name: str) -> bool:
        info = self.e.infos.get(name)
        return info is None or not info.elem_type or info.elem_type in FLOAT_TYPES

    def analyse(self, nodes, wrt: set[str], targets) -> tuple[set[str], list[onnx.NodeProto]]:
        """The differentiable names (float values a float path from `wrt` reaches) and the
        nodes on such a path to one of `targets`, in graph order."""
        diff = set(wrt)
        for node in nodes:
            if _standard(node) and node.op_type in ZERO_GRADIENT:
                continue
            steps = _step_inputs(node)
            if any(i in diff for i in node_inputs(node) if i not in steps):
                diff.update(o for o in node.output if o and self.is_float(o))
        needed = {t for t in targets if t in diff}
        relevant = []
        for node in reversed(nodes):
            if any(o in needed for o in node.output if o):
                relevant.append(node)
                needed.update(i for i in node_inputs(node) if i in diff)
        relevant.reverse()
        return diff, relevant

    def static_blockers(self, relevant, diff: set[str]) -> None:
        """Ops on the path without a rule, looking into If branches (before emitting)."""
        for node in relevant:
            label = _op_label(node) + self.where
            if _standard(node) and node.op_type == "If":
                for attr in node.attribute:
                    if attr.type != onnx.AttributeProto.GRAPH:
                        continue
                    body = attr.g
                    inner = _Walk(self.e, self.blocked, f" (in {label} {attr.name})")
                    sub_diff, sub_rel = inner.analyse(
                        body.node, diff, [o.name for o in body.output]
                    )
                    inner.static_blockers(sub_rel, sub_diff)
            elif subgraphs(node):
                self.blocked.append(f"{label} (control flow with a differentiable value inside)")
            elif _standard(node) and node.op_type in RECURRENT:
                why = recurrent_unsupported(node, self.e.infos, self.e.constants)
                why = why or "not unrolled inside a branch"
                self.blocked.append(f"{node.op_type} ({why}){self.where}")
            elif not _standard(node) or node.op_type not in RULES:
                self.blocked.append(label)

    def backward(self, nodes, wrt: set[str], seeds: dict[str, list[str]]) -> dict[str, str | None]:
        """Gradients of sum(seed * target) for every name in `wrt`, emitted into self.e."""
        diff, relevant = self.analyse(nodes, wrt, list(seeds))
        grads = {name: list(parts) for name, parts in seeds.items() if name in diff}
        e = self.e

        def total(name: str) -> str | None:
            parts = grads.get(name)
            if not parts:
                return None
            if len(parts) > 1:
                summed = _concat_of_slices(e, name, parts) or e.op("Sum", *parts)
                e.set_info(summed, name)
                grads[name] = [summed]
            return grads[name][0]

        for node in reversed(relevant):
            grad_outputs = [total(o) if o else None for o in node.output]
            if all(g is None for g in grad_outputs):
                continue
            if node.op_type == "If":
                pairs = self.if_gradient(node, grad_outputs, diff)
            else:
                wants = [bool(i) and i in diff for i in node.input]
                try:
                    input_grads = RULES[node.op_type](NodeGrad(node, grad_outputs, wants, e))
                except NotImplementedError as exc:  # NoGradient, or an emitter helper's limit
                    self.blocked.append(f"{_op_label(node)} ({exc}){self.where}")
                    continue
                pairs = [
                    (name, g)
                    for name, want, g in zip(node.input, wants, input_grads, strict=False)
                    if want and g is not None
                ]
            for name, g in pairs:
                e.set_info(g, name)
                grads.setdefault(name, []).append(g)
        return {name: total(name) for name in wrt}

    def if_gradient(self, node, grad_outputs, diff: set[str]) -> list[tuple[str, str]]:
        """An If whose branches recompute their forward values and return the gradient of
        every differentiable outer tensor the If reads (zeros where a branch does not)."""
        targets = [c for c in node_inputs(node)[1:] if c in diff]
        if not targets:
            return []
        e = self.e
        outs = [e.fresh("If") for _ in targets]
        branches = {}
        for attr in node.attribute:
            if attr.type != onnx.AttributeProto.GRAPH:
                continue
            body, mapping = renamed_copy(attr.g, lambda _name: e.fresh("fwd"))
            for old, new in mapping.items():
                if old in e.infos:
                    e.infos[new] = e.infos[old]
            e.constants.update(constant_values(body))
            e.producers.update({o: n for n in body.node for o in n.output if o})
            sub = e.child()
            seeds: dict[str, list[str]] = {}
            for out, go in zip(body.output, grad_outputs, strict=False):
                if go is not None:
                    seeds.setdefault(out.name, []).append(go)
            label = f" (in {_op_label(node)} {attr.name}){self.where}"
            grads = _Walk(sub, self.blocked, label).backward(list(body.node), set(targets), seeds)
            for t, out in zip(targets, outs, strict=True):
                sub.nodes.append(helper.make_node("Identity", [grads[t] or sub.zeros_like(t)],
                                                  [out]))  # fmt: skip
            branches[attr.name] = helper.make_graph(
                [*body.node, *sub.emitted()],
                e.fresh(attr.name),
                [],
                [
                    helper.make_tensor_value_info(o, e.infos_elem(t), None)
                    for t, o in zip(targets, outs, strict=True)
                ],  # fmt: skip
                list(body.initializer),
                value_info=list(body.value_info),
            )
        e.nodes.append(helper.make_node("If", [node.input[0]], outs, name=outs[0], **branches))
        return list(zip(targets, outs, strict=True))


def _step_inputs(node: onnx.NodeProto) -> set[str]:
    """Inputs a node's output follows only in steps: a nearest GridSample's grid (each
    output takes the pixel the grid rounds to). A path from the input through them alone
    carries no gradient, as one through Round does."""
    if _standard(node) and node.op_type == "GridSample" and len(node.input) > 1:
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"")
        if mode == b"nearest":
            return {node.input[1]} - {node.input[0]}
    return set()


def _steps_only(nodes, input_name: str, output_name: str, diff: set[str]) -> list[str]:
    """When a float output depends on the input only through integer or step-function ops,
    its gradient is zero almost everywhere though F(x) != F(b): name the ops that cut the
    path (finite differences at least see the jumps). Empty when the output does not depend
    on the input at all."""
    influenced, cuts = {input_name}, []
    for node in nodes:
        ins = node_inputs(node)
        if not any(i in influenced for i in ins):
            continue
        influenced.update(o for o in node.output if o)
        if any(i in diff for i in ins) and not any(o in diff for o in node.output if o):
            cuts.append(_op_label(node))
    if output_name not in influenced:
        return []
    # (it said "the output depends on the input only through steps or integers", which
    # read as a statement about the op)
    return [f"{op} (the input reaches the output only through it, and it gives steps or "
            "integers)" for op in sorted(set(cuts))]  # fmt: skip


def build_gradient_model(
    model: onnx.ModelProto,
    input_name: str,
    output_name: str,
    shape_hints: dict[str, TensorInfo] | None = None,
) -> onnx.ModelProto:
    """Return a model computing (output, d(sum(seed*output))/d input); raise if an op blocks it.

    `shape_hints` (see shapes.probe_shapes) give shapes that onnx shape inference cannot.
    Raises UnsupportedOpsError naming every op on the path that has no rule (or refuses).
    """
    model = at_least_min_opset(model)
    model = prepare(model, input_name, output_name)  # a copy: BatchNorms folded, dead nodes gone
    sanitize_dims(model)
    inline_constant_ifs(model)
    graph = model.graph
    infos = _tensor_infos(model, shape_hints)
    emitter = GraphEmitter(opset=model_opset(model), infos=infos, constants=constant_values(graph))
    blocked: list[str] = []
    walk = _Walk(emitter, blocked)
    nodes = list(graph.node)
    diff, relevant = walk.analyse(nodes, {input_name}, [output_name])
    loops = {tuple(n.output) for n in relevant if n.op_type in RECURRENT and _standard(n)}
    if loops and unroll_recurrents(model, loops, infos, emitter.constants, emitter.opset):
        infos.clear()  # the unrolled steps need their own types and shapes
        infos.update(_tensor_infos(model, shape_hints))
        emitter.constants.update(constant_values(graph))
        nodes = list(graph.node)
        diff, relevant = walk.analyse(nodes, {input_name}, [output_name])
    emitter.producers.update({o: n for n in nodes for o in n.output if o})
    walk.static_blockers(relevant, diff)
    if output_name not in diff and walk.is_float(output_name):
        blocked.extend(_steps_only(nodes, input_name, output_name, diff))
    if blocked:
        raise UnsupportedOpsError(blocked)
    grad_in = walk.backward(nodes, {input_name}, {output_name: [SEED]})[input_name]
    if blocked:
        raise UnsupportedOpsError(blocked)
    grad_in = grad_in or emitter.zeros_like(input_name)
    model = faster_kernels(_assemble(model, input_name, output_name, emitter, grad_in), infos)
    reverse = {o for n in emitter.emitted() for o in n.output}
    return annotate(model, emitter.infos, reverse & {o for n in model.graph.node for o in n.output})


def _read_only(nodes: list[onnx.NodeProto], grad_in: str) -> list[onnx.NodeProto]:
    """The reverse nodes that the input's gradient depends on. Rules emit some values only
    a later choice reads (LayerNormalization's element count, for its Mean and InvStdDev
    outputs' gradients), and ONNX Runtime runs what is left unread: a ViT-S/16's gradient
    graph ran 125 such Size, Cast and Div nodes per call."""
    needed, kept = {grad_in}, []
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o):
            needed.update(node_inputs(node))
            kept.append(node)
    return kept[::-1]


def _assemble(model, input_name, output_name, emitter, grad_in) -> onnx.ModelProto:
    graph = model.graph
    out_info = next((o for o in graph.output if o.name == output_name), None)
    if out_info is None:
        out_info = next((v for v in graph.value_info if v.name == output_name), None)
    info = emitter.infos.get(output_name)
    elem = info.elem_type if info and info.elem_type else emitter.infos_elem(input_name)
    shape = info.shape if info and info.shape is not None else None
    in_vi = next(i for i in graph.input if i.name == input_name)
    graph.input.append(helper.make_tensor_value_info(SEED, elem, shape))
    graph.node.extend(_read_only(emitter.emitted(), grad_in))
    graph.node.append(helper.make_node("Identity", [grad_in], [GRAD], name=GRAD))
    # (only those read: a dropped node's constants would be loaded, then thrown away, by
    # ONNX Runtime with a warning each: 11,264 for an unrolled LSTM's gradient)
    read = {i for n in graph.node for i in node_inputs(n)}
    graph.initializer.extend(i for i in emitter.initializers if i.name in read)
    del graph.output[:]
    if out_info is not None:
        graph.output.append(out_info)
    else:
        graph.output.append(helper.make_tensor_value_info(output_name, elem, shape))
    grad_vi = copy.deepcopy(in_vi)
    grad_vi.name = GRAD
    graph.output.append(grad_vi)
    return model
