"""Reverse-mode transform: extend an ONNX model with the gradient of one output.

The driver knows nothing about individual ops. It finds the nodes that lie between the
attributed input and the explained output, walks them backwards calling each op's rule,
sums gradients where a tensor fans out, and returns a model with one extra input (the seed,
shaped like the output) and one extra output: d(sum(seed * output)) / d(input).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from igcli.autodiff import rules_math, rules_nn, rules_shape  # noqa: F401  (register rules)
from igcli.autodiff.builder import FLOAT_TYPES, GraphEmitter, NodeGrad, TensorInfo
from igcli.autodiff.optimize import annotate, prepare
from igcli.autodiff.registry import RULES, ZERO_GRADIENT, NoGradient
from igcli.errors import UnsupportedOpsError

SEED = "igcli_seed"
GRAD = "igcli_grad"


def model_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def _tensor_infos(
    model: onnx.ModelProto, hints: dict[str, TensorInfo] | None = None
) -> dict[str, TensorInfo]:
    """Types and shapes from onnx shape inference; `hints` fill what inference left open."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is a help, not a requirement
        inferred = model
    infos: dict[str, TensorInfo] = {}
    graph = inferred.graph
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        shape = None
        if t.HasField("shape"):
            shape = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.shape.dim
            ]
        infos[vi.name] = TensorInfo(t.elem_type, shape)
    for init in graph.initializer:
        infos[init.name] = TensorInfo(init.data_type, list(init.dims))
    for name, hint in (hints or {}).items():
        known = infos.get(name)
        if known is None or known.shape is None or len(known.shape) != len(hint.shape):
            infos[name] = hint
        else:  # keep what inference knows for sure; take observed sizes for the rest
            pairs = zip(known.shape, hint.shape, strict=True)
            shape = [k if isinstance(k, int) else h for k, h in pairs]
            infos[name] = TensorInfo(known.elem_type, shape)
    return infos


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            attr = node.attribute[0]
            if attr.name == "value":
                consts[node.output[0]] = numpy_helper.to_array(attr.t)
            else:
                consts[node.output[0]] = np.asarray(helper.get_attribute_value(attr))
    return consts


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    )


def _op_label(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _relevant_nodes(graph: onnx.GraphProto, input_name: str, output_name: str):
    """Nodes influenced by the input that the output depends on, in graph order."""
    all_nodes = list(graph.node)
    influenced = {input_name}
    for node in all_nodes:
        if any(i in influenced for i in node.input if i):
            influenced.update(o for o in node.output if o)
    producer = {o: k for k, node in enumerate(all_nodes) for o in node.output}
    needed: set[int] = set()
    stack = [output_name]
    while stack:
        k = producer.get(stack.pop())
        if k is None or k in needed:
            continue
        needed.add(k)
        stack.extend(i for i in all_nodes[k].input if i)
    return [
        node
        for k, node in enumerate(all_nodes)
        if k in needed and any(i in influenced for i in node.input if i)
    ]


def build_gradient_model(
    model: onnx.ModelProto,
    input_name: str,
    output_name: str,
    shape_hints: dict[str, TensorInfo] | None = None,
) -> onnx.ModelProto:
    """Return a model computing (output, d(sum(seed*output))/d input); raise if an op blocks it.

    `shape_hints` (see shapes.probe_shapes) give shapes that onnx shape inference cannot.
    """
    model = prepare(model, input_name, output_name)  # fold BatchNorms, drop dead nodes
    graph = model.graph
    opset = model_opset(model)
    infos = _tensor_infos(model, shape_hints)
    emitter = GraphEmitter(opset=opset, infos=infos, constants=_constants(graph))
    nodes = _relevant_nodes(graph, input_name, output_name)

    def is_float(name: str) -> bool:
        info = infos.get(name)
        return info is None or info.elem_type in FLOAT_TYPES

    differentiable = {input_name}
    blocked: list[str] = []
    for node in nodes:
        if _has_subgraph(node):
            blocked.append(f"{_op_label(node)} (control flow)")
        elif node.op_type in ZERO_GRADIENT and node.domain in ("", "ai.onnx"):
            continue
        elif node.op_type not in RULES or node.domain not in ("", "ai.onnx"):
            blocked.append(_op_label(node))
        elif any(i in differentiable for i in node.input if i):
            differentiable.update(o for o in node.output if o and is_float(o))
    if blocked:
        raise UnsupportedOpsError(blocked)

    grads: dict[str, list[str]] = {output_name: [SEED]}

    def total(name: str) -> str | None:
        parts = grads.get(name)
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        summed = emitter.op("Sum", *parts)
        emitter.set_info(summed, name)
        return summed

    for node in reversed(nodes):
        if node.op_type in ZERO_GRADIENT:
            continue
        grad_outputs = [total(o) if o else None for o in node.output]
        if all(g is None for g in grad_outputs):
            continue
        wants = [bool(i) and i in differentiable for i in node.input]
        if not any(wants):
            continue
        try:
            input_grads = RULES[node.op_type](NodeGrad(node, grad_outputs, wants, emitter))
        except NoGradient as exc:
            blocked.append(f"{_op_label(node)} ({exc})")
            continue
        for name, want, g in zip(node.input, wants, input_grads, strict=False):
            if want and g is not None:
                emitter.set_info(g, name)
                grads.setdefault(name, []).append(g)
    if blocked:
        raise UnsupportedOpsError(blocked)

    grad_in = total(input_name) or emitter.zeros_like(input_name)
    model = _assemble(model, input_name, output_name, emitter, grad_in)
    return annotate(model, emitter.infos, {o for n in emitter.nodes for o in n.output})


def _assemble(model, input_name, output_name, emitter, grad_in) -> onnx.ModelProto:
    out = copy.deepcopy(model)
    graph = out.graph
    out_info = next((o for o in graph.output if o.name == output_name), None)
    if out_info is None:
        out_info = next((v for v in graph.value_info if v.name == output_name), None)
    info = emitter.infos.get(output_name)
    elem = info.elem_type if info else TensorProto.FLOAT
    shape = info.shape if info and info.shape is not None else None
    in_vi = next(i for i in graph.input if i.name == input_name)
    graph.input.append(helper.make_tensor_value_info(SEED, elem, shape))
    graph.node.extend(emitter.nodes)
    graph.node.append(helper.make_node("Identity", [grad_in], [GRAD], name=GRAD))
    graph.initializer.extend(emitter.initializers)
    del graph.output[:]
    if out_info is not None:
        graph.output.append(out_info)
    else:
        graph.output.append(helper.make_tensor_value_info(output_name, elem, shape))
    grad_vi = copy.deepcopy(in_vi)
    grad_vi.name = GRAD
    graph.output.append(grad_vi)
    return out
