"""LSTM as the primitive ops it is made of, unrolled over a sequence of static length.

An LSTM node is a loop over time; with the sequence length known (a fixed dim, or the
sample shape of a specialised graph) it is the same as T steps of MatMul, Sigmoid, Tanh and
Mul (ONNX's gate order i, o, f, c):

    i = sigmoid(X W_i + H R_i + P_i C + b_i)     f = sigmoid(X W_f + H R_f + P_f C + b_f)
    c~ = tanh(X W_c + H R_c + b_c)               C' = f C + i c~
    o = sigmoid(X W_o + H R_o + P_o C' + b_o)    H' = o tanh(C')

Those ops all have checked gradient rules, so the driver differentiates an LSTM by replacing
it with its unrolled form first. Supported: forward, reverse and bidirectional, peepholes,
initial states, layout 0, the default activations; anything else (clip, input_forget,
sequence lengths other than T, other activations, layout 1) stays an LSTM and blocks.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from igcli.autodiff.builder import GraphEmitter, TensorInfo

DEFAULT_ACTIVATIONS = ["Sigmoid", "Tanh", "Tanh"]
MAX_STEPS = 256  # longer sequences stay an LSTM (the unrolled graph grows with T)


def lstm_unsupported(node: onnx.NodeProto, infos: dict[str, TensorInfo], consts) -> str | None:
    """Why this LSTM cannot be unrolled (None when it can)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    directions = 2 if attrs.get("direction", b"forward") == b"bidirectional" else 1
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    if acts and acts != DEFAULT_ACTIVATIONS * directions:
        return f"LSTM activations {acts}"
    if attrs.get("clip") is not None:
        return "LSTM with clip"
    if attrs.get("input_forget", 0):
        return "LSTM with input_forget"
    if attrs.get("layout", 0):
        return "LSTM with layout 1"
    info = infos.get(node.input[0])
    steps = info.shape[0] if info is not None and info.shape else None
    if not isinstance(steps, int):
        return "LSTM over a sequence of unknown length"
    if steps > MAX_STEPS:
        return f"LSTM over {steps} steps (unrolled up to {MAX_STEPS})"
    if len(node.input) > 4 and node.input[4]:
        lens = consts.get(node.input[4])
        if lens is None or not np.all(np.asarray(lens) == steps):
            return "LSTM with sequence_lens shorter than the sequence"
    return None


def unroll_lstm(node: onnx.NodeProto, e: GraphEmitter, steps: int) -> list[onnx.NodeProto]:
    """The nodes computing the LSTM's outputs (under its output names) step by step."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    hidden = int(attrs["hidden_size"])
    direction = attrs.get("direction", b"forward").decode()
    ins = list(node.input) + [""] * (8 - len(node.input))
    x, w, r, b, _, h0, c0, p = ins[:8]
    start = len(e.nodes)
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    ys, hs, cs = [], [], []
    for d, way in enumerate(dirs):
        y, h, c = _direction(e, x, w, r, b, h0, c0, p, d, hidden, steps, way == "reverse")
        ys.append(y)
        hs.append(h)
        cs.append(c)
    outs = list(node.output) + [""] * (3 - len(node.output))
    results = [
        ys[0] if len(ys) == 1 else e.op("Concat", *ys, axis=1),  # [T, D, N, H]
        hs[0] if len(hs) == 1 else e.op("Concat", *hs, axis=0),  # [D, N, H]
        cs[0] if len(cs) == 1 else e.op("Concat", *cs, axis=0),
    ]
    for out, res in zip(outs, results, strict=True):
        if out:
            e.nodes.append(helper.make_node("Identity", [res], [out], name=e.fresh("lstm_out")))
    new = e.nodes[start:]
    del e.nodes[start:]
    return new


def _pick(e: GraphEmitter, t: str, d: int) -> str:
    """Direction d of a [D, ...] tensor, without the direction axis."""
    return e.op("Gather", t, e.const(np.asarray(d, np.int64)), axis=0)


def _direction(e, x, w, r, b, h0, c0, p, d, hidden, steps, reverse):
    wt = e.op("Transpose", _pick(e, w, d), perm=[1, 0])  # [I, 4H]
    rt = e.op("Transpose", _pick(e, r, d), perm=[1, 0])  # [H, 4H]
    xw = e.op("MatMul", x, wt)  # [T, N, 4H]: the input part of every step at once
    if b:
        bias = _pick(e, b, d)  # [8H]: Wb then Rb
        wb = e.slice(bias, [0], [4 * hidden], [0])
        rb = e.slice(bias, [4 * hidden], [8 * hidden], [0])
        xw = e.op("Add", xw, e.op("Add", wb, rb))
    peep = None
    if p:
        pd = _pick(e, p, d)  # [3H]: P_i, P_o, P_f
        peep = [e.slice(pd, [k * hidden], [(k + 1) * hidden], [0]) for k in range(3)]

    def step_input(t: int) -> str:
        return e.op("Gather", xw, e.const(np.asarray(t, np.int64)), axis=0)  # [N, 4H]

    zeros = None
    if not h0 or not c0:  # zeros shaped [N, H] from the data (N may be dynamic)
        zeros = e.op("Mul", e.slice(step_input(0), [0], [hidden], [1]), e.scalar(0.0, x))
    h = _pick(e, h0, d) if h0 else zeros
    c = _pick(e, c0, d) if c0 else zeros
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    outputs: dict[int, str] = {}
    for t in order:
        gates = e.op("Add", step_input(t), e.op("MatMul", h, rt))
        gi, go, gf, gc = (e.slice(gates, [k * hidden], [(k + 1) * hidden], [1]) for k in range(4))
        if peep is not None:
            gi = e.op("Add", gi, e.op("Mul", peep[0], c))
            gf = e.op("Add", gf, e.op("Mul", peep[2], c))
        i, f = e.op("Sigmoid", gi), e.op("Sigmoid", gf)
        c = e.op("Add", e.op("Mul", f, c), e.op("Mul", i, e.op("Tanh", gc)))
        if peep is not None:
            go = e.op("Add", go, e.op("Mul", peep[1], c))
        h = e.op("Mul", e.op("Sigmoid", go), e.op("Tanh", c))
        outputs[t] = h
    stacked = [e.unsqueeze(outputs[t], [0]) for t in range(steps)]
    y = stacked[0] if steps == 1 else e.op("Concat", *stacked, axis=0)  # [T, N, H]
    return e.unsqueeze(y, [1]), e.unsqueeze(h, [0]), e.unsqueeze(c, [0])


def unroll_lstms(model: onnx.ModelProto, keys: set[tuple], infos, consts, opset: int) -> int:
    """Replace (in place, main graph) the LSTMs whose tuple(outputs) is in `keys` and that
    can be unrolled. Returns how many."""
    graph = model.graph
    e = GraphEmitter(opset=opset, infos=infos, constants=consts, prefix="igcli_lstm")
    new_nodes, done = [], 0
    for node in graph.node:
        if (node.op_type == "LSTM" and node.domain in ("", "ai.onnx")
                and tuple(node.output) in keys
                and lstm_unsupported(node, infos, consts) is None):  # fmt: skip
            new_nodes.extend(unroll_lstm(node, e, infos[node.input[0]].shape[0]))
            done += 1
        else:
            new_nodes.append(node)
    if done:
        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.extend(e.initializers)
    return done
