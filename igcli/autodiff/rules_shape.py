"""Gradient rules for layout and indexing ops: the gradient is moved, never scaled."""

from __future__ import annotations

from igcli.autodiff.builder import NodeGrad
from igcli.autodiff.registry import rule


@rule("Reshape", "Flatten")
def Reshape(g: NodeGrad):
    """A reshape's gradient is the incoming gradient reshaped back to the input's shape."""
    return [g.op("Reshape", g.GO(0), g.op("Shape", g.I(0)))]
