"""Gradient rules for elementwise arithmetic and activations.

Each rule is named after its op; the docstring states the derivative it implements.
`g` is the NodeGrad; rules return one gradient (or None) per forward input.
"""

from __future__ import annotations

from igcli.autodiff.builder import NodeGrad
from igcli.autodiff.registry import rule


@rule("Identity")
def Identity(g: NodeGrad):
    """dy/dx = 1."""
    return [g.GO(0)]


@rule("Add")
def Add(g: NodeGrad):
    """y = a + b: both receive GO, summed down to their own (broadcast) shapes."""
    go = g.GO(0)
    return [g.reduce_to(go, k) if g.needs(k) else None for k in (0, 1)]


@rule("Sub")
def Sub(g: NodeGrad):
    """y = a - b: a gets GO, b gets -GO."""
    go = g.GO(0)
    ga = g.reduce_to(go, 0) if g.needs(0) else None
    gb = g.reduce_to(g.op("Neg", go), 1) if g.needs(1) else None
    return [ga, gb]


@rule("Mul")
def Mul(g: NodeGrad):
    """y = a * b: da = GO * b, db = GO * a."""
    go = g.GO(0)
    ga = g.reduce_to(g.op("Mul", go, g.I(1)), 0) if g.needs(0) else None
    gb = g.reduce_to(g.op("Mul", go, g.I(0)), 1) if g.needs(1) else None
    return [ga, gb]


@rule("Div")
def Div(g: NodeGrad):
    """y = a / b: da = GO / b, db = -GO * y / b."""
    go = g.GO(0)
    ga = g.reduce_to(g.op("Div", go, g.I(1)), 0) if g.needs(0) else None
    gb = None
    if g.needs(1):
        gb = g.reduce_to(g.op("Neg", g.op("Div", g.op("Mul", go, g.O(0)), g.I(1))), 1)
    return [ga, gb]


@rule("Neg")
def Neg(g: NodeGrad):
    """dy/dx = -1."""
    return [g.op("Neg", g.GO(0))]


@rule("Relu")
def Relu(g: NodeGrad):
    """dy/dx = 1 where x > 0, else 0."""
    mask = g.op("Cast", g.op("Greater", g.I(0), g.scalar(0.0)), to=g.e.infos_elem(g.I(0)))
    return [g.op("Mul", g.GO(0), mask)]


@rule("Sigmoid")
def Sigmoid(g: NodeGrad):
    """dy/dx = y (1 - y)."""
    y = g.O(0)
    return [g.op("Mul", g.GO(0), g.op("Mul", y, g.op("Sub", g.scalar(1.0), y)))]


@rule("Tanh")
def Tanh(g: NodeGrad):
    """dy/dx = 1 - y^2."""
    y = g.O(0)
    return [g.op("Mul", g.GO(0), g.op("Sub", g.scalar(1.0), g.op("Mul", y, y)))]


@rule("Exp")
def Exp(g: NodeGrad):
    """dy/dx = y."""
    return [g.op("Mul", g.GO(0), g.O(0))]


@rule("Log")
def Log(g: NodeGrad):
    """dy/dx = 1 / x."""
    return [g.op("Div", g.GO(0), g.I(0))]
