"""Subgraphs (If, Loop, Scan bodies): what they read from outside, renaming, inlining.

A subgraph may read any tensor of an enclosing scope by name, without listing it as an input
of its node. The reverse walk must see those reads as edges, or a gradient that flows through
an `If` branch is silently lost. `captures` finds them; `renamed_copy` copies a body under
fresh names (so a copy can live beside the original); `inline_constant_ifs` replaces an `If`
whose condition is known by the branch it takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def defined_names(graph: onnx.GraphProto) -> set[str]:
    """Names a graph defines itself: its inputs, initializers and node outputs (not nested)."""
    names = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    names.update(o for n in graph.node for o in n.output if o)
    return names


def captures(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes, nested subgraphs included."""
    own = defined_names(graph)
    used: set[str] = set()
    for node in graph.node:
        used.update(i for i in node.input if i)
        for sub in subgraphs(node):
            used |= captures(sub)
    used.update(o.name for o in graph.output)
    return used - own


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's explicit inputs followed by what its subgraphs read from outside."""
    explicit = [i for i in node.input if i]
    extra: set[str] = set()
    for sub in subgraphs(node):
        extra |= captures(sub)
    return explicit + sorted(extra - set(explicit))


def all_defined(graph: onnx.GraphProto) -> set[str]:
    """Every name defined in a graph and, recursively, in its subgraphs."""
    names = defined_names(graph)
    for node in graph.node:
        for sub in subgraphs(node):
            names |= all_defined(sub)
    return names


def _rename_graph(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Apply a name mapping in place to every reference and definition, recursively."""

    def m(name: str) -> str:
        return mapping.get(name, name)

    for vi in [*graph.input, *graph.output, *graph.value_info]:
        vi.name = m(vi.name)
    for init in graph.initializer:
        init.name = m(init.name)
    for node in graph.node:
        node.input[:] = [m(i) if i else i for i in node.input]
        node.output[:] = [m(o) if o else o for o in node.output]
        if node.name:
            node.name = m(node.name) if node.name in mapping else node.name
        for sub in subgraphs(node):
            _rename_graph(sub, mapping)


def renamed_copy(
    graph: onnx.GraphProto, fresh: Callable[[str], str]
) -> tuple[onnx.GraphProto, dict[str, str]]:
    """A copy of `graph` whose every own name (recursively) is replaced by fresh(name).

    Captured outer names stay as they are. Returns the copy and the old -> new mapping.
    """
    copy = onnx.GraphProto()
    copy.CopyFrom(graph)
    mapping = {name: fresh(name) for name in sorted(all_defined(graph))}
    _rename_graph(copy, mapping)
    for node in copy.node:  # node names only need to be unique; keep them readable
        if node.name:
            node.name = fresh(node.name)
    return copy, mapping


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs of one graph (not nested)."""
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.attribute:
            attr = node.attribute[0]
            if attr.name == "value":
                consts[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
                consts[node.output[0]] = np.asarray(helper.get_attribute_value(attr))
    return consts


def _unique_namer(taken: set[str], tag: str) -> Callable[[str], str]:
    counter = [0]

    def fresh(name: str) -> str:
        while True:
            counter[0] += 1
            new = f"{name}/{tag}{counter[0]}"
            if new not in taken:
                taken.add(new)
                return new

    return fresh


def inline_constant_ifs(model: onnx.ModelProto, known: dict[str, np.ndarray] | None = None) -> int:
    """Replace (in place) every If whose condition is a constant by the branch it takes.

    `known` adds values known for this run (folded tensors). Works through nested branches
    too: an inlined branch's own constant Ifs are inlined in the next pass. Returns how many
    If nodes were replaced.
    """
    total = 0
    taken = all_defined(model.graph)
    fresh = _unique_namer(taken, "inl")
    while True:
        done = _inline_in(model.graph, model.graph, dict(known or {}), fresh)
        total += done
        if not done:
            return total


def _inline_in(graph, root, outer: dict[str, np.ndarray], fresh) -> int:
    consts = {**outer, **constant_values(graph)}
    new_nodes: list[onnx.NodeProto] = []
    done = 0
    for node in graph.node:
        cond = consts.get(node.input[0]) if node.op_type == "If" and node.input else None
        if cond is not None and np.asarray(cond).size == 1:
            branch_name = "then_branch" if bool(np.asarray(cond).reshape(-1)[0]) else "else_branch"
            branch = next(a.g for a in node.attribute if a.name == branch_name)
            body, _ = renamed_copy(branch, fresh)
            new_nodes.extend(body.node)
            root.initializer.extend(body.initializer)
            for out, res in zip(node.output, body.output, strict=False):
                if out:
                    new_nodes.append(helper.make_node("Identity", [res.name], [out]))
            done += 1
            continue
        for sub in subgraphs(node):
            done += _inline_in(sub, root, consts, fresh)
        new_nodes.append(node)
    if done:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return done


def remove_dead_nodes(graph: onnx.GraphProto, keep: Iterable[str] = ()) -> int:
    """Drop nodes none of whose outputs is used (by a node, a subgraph or a graph output)."""
    removed = 0
    while True:
        used = {o.name for o in graph.output} | set(keep)
        for node in graph.node:
            used.update(node_inputs(node))
        alive = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(alive) == len(graph.node):
            return removed
        removed += len(graph.node) - len(alive)
        del graph.node[:]
        graph.node.extend(alive)
