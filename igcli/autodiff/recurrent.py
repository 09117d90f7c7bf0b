"""LSTM, GRU and RNN as the primitive ops they are made of, unrolled over a sequence of
static length.

A recurrent node is a loop over time; with the sequence length known (a fixed dim, or the
sample shape of a specialised graph) it is the same as T steps of MatMul, Sigmoid, Tanh and
Mul. LSTM (ONNX's gate order i, o, f, c):

    i = sigmoid(X W_i + H R_i + P_i C + b_i)     f = sigmoid(X W_f + H R_f + P_f C + b_f)
    c~ = tanh(X W_c + H R_c + b_c)               C' = f C + i c~
    o = sigmoid(X W_o + H R_o + P_o C' + b_o)    H' = o tanh(C')

GRU (gates z, r, h; linear_before_reset as PyTorch exports it, or not):

    z = sigmoid(X W_z + H R_z + b_z)             r = sigmoid(X W_r + H R_r + b_r)
    h~ = tanh(X W_h + (r H) R_h + Rb_h + Wb_h)   or   tanh(X W_h + r (H R_h + Rb_h) + Wb_h)
    H' = (1 - z) h~ + z H

RNN: H' = tanh(X W + H R + b).

Those ops all have checked gradient rules, so the driver differentiates a recurrent node by
replacing it with its unrolled form first. Supported: forward, reverse and bidirectional,
LSTM peepholes, initial states, layout 0, any of the spec's activations (with their alpha
and beta); anything else (clip, input_forget, sequence lengths other than T, layout 1) stays a
recurrent node and blocks.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from igcli.autodiff.builder import GraphEmitter, TensorInfo

RECURRENT = {"LSTM", "GRU", "RNN"}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                       "RNN": ["Tanh"]}  # fmt: skip
# Activations a node may name instead (torch's nn.RNN(nonlinearity="relu") writes Relu), with
# the ONNX defaults of the alpha and beta each takes from activation_alpha and _beta, in the
# order listed (None: it takes none).
ACTIVATIONS = {"Sigmoid": (None, None), "Tanh": (None, None), "Relu": (None, None),
               "Softsign": (None, None), "Softplus": (None, None), "LeakyRelu": (0.01, None),
               "ThresholdedRelu": (1.0, None), "Elu": (1.0, None), "HardSigmoid": (0.2, 0.5),
               "Affine": (1.0, 0.0), "ScaledTanh": (1.0, 1.0)}  # fmt: skip
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
MAX_STEPS = 256  # longer sequences stay recurrent (the unrolled graph grows with T)


def recurrent_unsupported(node: onnx.NodeProto, infos: dict[str, TensorInfo], consts) -> str | None:
    """Why this LSTM, GRU or RNN cannot be unrolled (None when it can)."""
    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    directions = 2 if attrs.get("direction", b"forward") == b"bidirectional" else 1
    acts = _named(attrs)
    if acts and (len(acts) != len(DEFAULT_ACTIVATIONS[op]) * directions
                 or any(_canonical(a) not in ACTIVATIONS for a in acts)):  # fmt: skip
        return f"{op} activations {acts}"
    if attrs.get("clip") is not None:
        return f"{op} with clip"
    if attrs.get("input_forget", 0):
        return f"{op} with input_forget"
    if attrs.get("layout", 0):
        return f"{op} with layout 1"
    info = infos.get(node.input[0])
    steps = info.shape[0] if info is not None and info.shape else None
    if not isinstance(steps, int):
        return f"{op} over a sequence of unknown length"
    if steps > MAX_STEPS:
        return f"{op} over {steps} steps (unrolled up to {MAX_STEPS})"
    if len(node.input) > 4 and node.input[4]:
        lens = consts.get(node.input[4])
        if lens is None or not np.all(np.asarray(lens) == steps):
            return f"{op} with sequence_lens shorter than the sequence"
    return None


def unroll_recurrent(node: onnx.NodeProto, e: GraphEmitter, steps: int) -> list[onnx.NodeProto]:
    """The nodes computing the node's outputs (under its output names) step by step."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    hidden = int(attrs["hidden_size"])
    direction = attrs.get("direction", b"forward").decode()
    ins = list(node.input) + [""] * (8 - len(node.input))
    x, w, r, b, _, h0, c0, p = ins[:8]
    if node.op_type != "LSTM":
        c0 = p = ""
    start = len(e.nodes)
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    ys, hs, cs = [], [], []
    acts = _activations(node.op_type, attrs, len(dirs))
    for d, way in enumerate(dirs):
        cell = _Cell(e, node.op_type, hidden, attrs.get("linear_before_reset", 0), acts[d])
        y, h, c = cell.run(x, w, r, b, h0, c0, p, d, steps, way == "reverse")
        ys.append(y)
        hs.append(h)
        cs.append(c)
    outs = list(node.output) + [""] * (3 - len(node.output))
    results = [
        ys[0] if len(ys) == 1 else e.op("Concat", *ys, axis=1),  # [T, D, N, H]
        hs[0] if len(hs) == 1 else e.op("Concat", *hs, axis=0),  # [D, N, H]
        cs[0] if len(cs) == 1 else (e.op("Concat", *cs, axis=0) if cs[0] else ""),
    ]
    for out, res in zip(outs, results, strict=True):
        if out and res:
            name = e.fresh(f"{node.op_type.lower()}_out")
            e.nodes.append(helper.make_node("Identity", [res], [out], name=name))
    new = e.nodes[start:]
    del e.nodes[start:]
    return new


def _canonical(name: str) -> str:
    """An activation's name as listed in ACTIVATIONS (the spec's names are matched in any
    case: exporters write 'Relu', 'relu' or 'RELU')."""
    return next((known for known in ACTIVATIONS if known.lower() == name.lower()), name)


def _named(attrs: dict) -> list[str]:
    """The node's own activations attribute, as text."""
    return [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]


def _activations(op: str, attrs: dict, directions: int) -> list[list]:
    """Per direction, the activations as (name, alpha, beta): activation_alpha and _beta are
    consumed in order by the activations that take them (their ONNX defaults otherwise)."""
    names = [_canonical(a) for a in _named(attrs)] or DEFAULT_ACTIVATIONS[op] * directions
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    out = []
    for name in names:
        alpha, beta = ACTIVATIONS[name]
        if alpha is not None and alphas:
            alpha = float(alphas.pop(0))
        if beta is not None and betas:
            beta = float(betas.pop(0))
        out.append((name, alpha, beta))
    per = len(names) // directions
    return [out[d * per : (d + 1) * per] for d in range(directions)]


def _pick(e: GraphEmitter, t: str, d: int) -> str:
    """Direction d of a [D, ...] tensor, without the direction axis."""
    return e.op("Gather", t, e.const(np.asarray(d, np.int64)), axis=0)


class _Cell:
    """One direction of an LSTM, GRU or RNN, step by step."""

    def __init__(
        self, e: GraphEmitter, op: str, hidden: int, linear_before_reset: int, acts: list
    ) -> None:
        self.e, self.op, self.hidden, self.lbr = e, op, hidden, linear_before_reset
        # the gates' activation f, the candidate's g, the output's h (LSTM), as (name,
        # alpha, beta): see _activations
        self.f, self.g, self.h = (*acts, None, None)[:3]

    def act(self, which, x: str) -> str:
        name, alpha, beta = which
        e = self.e
        if name in ("Sigmoid", "Tanh", "Relu", "Softsign", "Softplus"):
            return e.op(name, x)
        if name in ("LeakyRelu", "ThresholdedRelu", "Elu"):
            return e.op(name, x, alpha=alpha)
        if name == "HardSigmoid":
            return e.op(name, x, alpha=alpha, beta=beta)
        if name == "Affine":
            return e.op("Add", e.op("Mul", x, e.scalar(alpha, x)), e.scalar(beta, x))
        # ScaledTanh: alpha tanh(beta x)
        return e.op("Mul", e.op("Tanh", e.op("Mul", x, e.scalar(beta, x))), e.scalar(alpha, x))

    def gate(self, t: str, k: int, axis: int = 1) -> str:
        h = self.hidden
        return self.e.slice(t, [k * h], [(k + 1) * h], [axis])

    def gates_at_once(self, t: str, n: int) -> list[str]:
        """The first n gates of t through the gate activation f in one node, then apart: one
        activation, and one reverse of it, a step instead of n (each slope is 7 nodes): timm's
        sequencer2d_s's gradient graph has 90,364 nodes instead of 110,076, and builds in
        7.2 s instead of 7.8. (ONNX Runtime's time to load it stayed the same.)"""
        both = self.act(self.f, self.e.slice(t, [0], [n * self.hidden], [1]))
        return [self.gate(both, k) for k in range(n)]

    def run(self, x, w, r, b, h0, c0, p, d, steps, reverse):
        e, hidden, gates = self.e, self.hidden, GATES[self.op]
        wt = e.op("Transpose", _pick(e, w, d), perm=[1, 0])  # [I, G H]
        rt = e.op("Transpose", _pick(e, r, d), perm=[1, 0])  # [H, G H]
        xw = e.op("MatMul", x, wt)  # [T, N, G H]: the input part of every step at once
        rb = None
        if b:
            bias = _pick(e, b, d)  # [2 G H]: Wb then Rb
            wb = e.slice(bias, [0], [gates * hidden], [0])
            rb = e.slice(bias, [gates * hidden], [2 * gates * hidden], [0])
            # a GRU's Rb goes in at each step (Rb_h is inside the reset, either way)
            xw = e.op("Add", xw, wb if self.op == "GRU" else e.op("Add", wb, rb))
        peep = None
        if p:
            pd = _pick(e, p, d)  # [3H]: P_i, P_o, P_f
            peep = [self.gate(pd, k, 0) for k in range(3)]

        # each step's [N, G H], cut once: as Slices (not Gathers) that tile xw, their
        # gradients are added up as one Concat (driver._concat_of_slices), where a Gather's
        # is a ScatterElements into a zero [T, N, G H] each, T of them summed (timm's
        # sequencer2d_s: 27% of its gradient call, and a Sum of 9% more)
        step_input = [e.squeeze(e.slice(xw, [t], [t + 1], [0]), [0]) for t in range(steps)]
        zeros = None
        if not h0 or (self.op == "LSTM" and not c0):  # zeros [N, H] (N may be dynamic)
            zeros = e.op("Mul", self.gate(step_input[0], 0), e.scalar(0.0, x))
        h = _pick(e, h0, d) if h0 else zeros
        c = (_pick(e, c0, d) if c0 else zeros) if self.op == "LSTM" else ""
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        outputs: dict[int, str] = {}
        for t in order:
            if self.op == "LSTM":
                h, c = self.lstm_step(step_input[t], h, c, rt, peep)
            elif self.op == "GRU":
                h = self.gru_step(step_input[t], h, rt, rb)
            else:
                h = self.act(self.f, e.op("Add", step_input[t], e.op("MatMul", h, rt)))
            outputs[t] = h
        stacked = [e.unsqueeze(outputs[t], [0]) for t in range(steps)]
        y = stacked[0] if steps == 1 else e.op("Concat", *stacked, axis=0)  # [T, N, H]
        return e.unsqueeze(y, [1]), e.unsqueeze(h, [0]), (e.unsqueeze(c, [0]) if c else "")

    def lstm_step(self, xt, h, c, rt, peep):
        e = self.e
        gates = e.op("Add", xt, e.op("MatMul", h, rt))
        if peep is None:  # i, o, f side by side take their (element-wise) activation at once
            i, o, f = self.gates_at_once(gates, 3)
        else:  # peepholes: i and f read C, o reads C' (below)
            gi, go, gf = (self.gate(gates, k) for k in range(3))
            i = self.act(self.f, e.op("Add", gi, e.op("Mul", peep[0], c)))
            f = self.act(self.f, e.op("Add", gf, e.op("Mul", peep[2], c)))
        c = e.op("Add", e.op("Mul", f, c), e.op("Mul", i, self.act(self.g, self.gate(gates, 3))))
        if peep is not None:
            o = self.act(self.f, e.op("Add", go, e.op("Mul", peep[1], c)))
        return e.op("Mul", o, self.act(self.h, c)), c

    def gru_step(self, xt, h, rt, rb):
        e = self.e
        r_zr = e.op("MatMul", h, e.slice(rt, [0], [2 * self.hidden], [1]))  # [N, 2H]
        if rb is not None:
            r_zr = e.op("Add", r_zr, e.slice(rb, [0], [2 * self.hidden], [0]))
        x_zr = e.slice(xt, [0], [2 * self.hidden], [1])
        z, reset = self.gates_at_once(e.op("Add", x_zr, r_zr), 2)
        x_h = self.gate(xt, 2)
        r_h = self.gate(rt, 2)  # [H, H]
        rb_h = self.gate(rb, 2, 0) if rb is not None else None
        if self.lbr:  # r (H R_h + Rb_h)
            inner = e.op("MatMul", h, r_h)
            inner = e.op("Add", inner, rb_h) if rb_h else inner
            cand = e.op("Add", x_h, e.op("Mul", reset, inner))
        else:  # (r H) R_h + Rb_h
            inner = e.op("MatMul", e.op("Mul", reset, h), r_h)
            cand = e.op("Add", x_h, e.op("Add", inner, rb_h) if rb_h else inner)
        cand = self.act(self.g, cand)
        # H' = (1 - z) h~ + z H = h~ + z (H - h~)
        return e.op("Add", cand, e.op("Mul", z, e.op("Sub", h, cand)))


def unroll_recurrents(model: onnx.ModelProto, keys: set[tuple], infos, consts, opset: int) -> int:
    """Replace (in place, main graph) the LSTMs, GRUs and RNNs whose tuple(outputs) is in
    `keys` and that can be unrolled. Returns how many."""
    graph = model.graph
    e = GraphEmitter(opset=opset, infos=infos, constants=consts, prefix="igcli_rnn")
    new_nodes, done = [], 0
    for node in graph.node:
        if (node.op_type in RECURRENT and node.domain in ("", "ai.onnx")
                and tuple(node.output) in keys
                and recurrent_unsupported(node, infos, consts) is None):  # fmt: skip
            new_nodes.extend(unroll_recurrent(node, e, infos[node.input[0]].shape[0]))
            done += 1
        else:
            new_nodes.append(node)
    if done:
        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.extend(e.initializers)
    return done
