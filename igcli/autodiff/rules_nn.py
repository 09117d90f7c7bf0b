"""Gradient rules for network layers: matrix products, convolution, pooling, normalisation."""

from __future__ import annotations

from igcli.autodiff.builder import NodeGrad
from igcli.autodiff.registry import rule


@rule("MatMul")
def MatMul(g: NodeGrad):
    """y = a @ b: da = GO @ b^T, db = a^T @ GO (batch dims broadcast, then summed back)."""
    go = g.GO(0)
    ra, rb = g.e.rank(g.I(0)), g.e.rank(g.I(1))
    if ra is None or rb is None or ra < 2 or rb < 2:
        from igcli.autodiff.registry import NoGradient

        raise NoGradient("MatMul with 1-D or unknown-rank operands")

    def t(name: str, rank: int) -> str:
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        return g.op("Transpose", name, perm=perm)

    ga = g.reduce_to(g.op("MatMul", go, t(g.I(1), rb)), 0) if g.needs(0) else None
    gb = g.reduce_to(g.op("MatMul", t(g.I(0), ra), go), 1) if g.needs(1) else None
    return [ga, gb]
