"""Gradient rules for signal transforms (DFT).

The DFT is linear, so its gradient is its adjoint, built from DFT nodes too: for a complex
linear map y = A z on (real, imaginary) pairs the adjoint is the conjugate transpose A^H.
"""

from __future__ import annotations

import numpy as np

from igcli.autodiff.builder import NodeGrad, TensorInfo
from igcli.autodiff.registry import NoGradient, rule


def _dft_axis(g: NodeGrad, rank: int) -> int:
    """The signal axis, counted from 0 over the input's dims (the last dim is real/imag)."""
    if g.opset >= 20:
        given = g.const_input(2) if g.I(2) else None
        if g.I(2) and given is None:
            raise NoGradient("DFT with an axis known only at run time")
        axis = int(given) if given is not None else -2
    else:
        axis = int(g.attr("axis", 1))
    return axis % rank


@rule("DFT")
def DFT(g: NodeGrad):
    """y = S F P z: P pads or cuts the signal to dft_length n, F is the n-point DFT matrix
    (F_kj = exp(-2 pi i jk / n); with inverse=1 its conjugate over n), S keeps the first
    n//2 + 1 bins when onesided. dz = P^T F^H S^T GO: GO padded back to n bins with zeros,
    through the opposite DFT (n times an inverse DFT undoes the 1/n; over n for an inverse
    one), then cut or padded back to the input's length; a real input (last dim 1) takes the
    real part. dft_length and axis get none."""
    x, go = g.I(0), g.GO(0)
    shape = g.e.static_shape(x)
    if shape is None:
        raise NoGradient("DFT needs the input rank")
    rank = len(shape)
    axis = _dft_axis(g, rank)
    m = shape[axis]
    if not isinstance(m, int):
        raise NoGradient("DFT needs a static signal length")
    length = g.const_input(1) if g.I(1) else None
    if g.I(1) and length is None:
        raise NoGradient("DFT with a dft_length known only at run time")
    n = int(length) if length is not None else m
    inverse, onesided = int(g.attr("inverse", 0)), int(g.attr("onesided", 0))
    if inverse and onesided:
        raise NoGradient("DFT with inverse and onesided (a real inverse transform)")
    if onesided and n - (n // 2 + 1) > 0:
        pads = [0] * (2 * rank)
        pads[rank + axis] = n - (n // 2 + 1)
        go = g.e.pad(go, pads)
    axis_arg = {"axis": axis} if g.opset < 20 else {}
    extra = [g.e.const(np.array(n, np.int64))]
    if g.opset >= 20:
        extra.append(g.e.const(np.array(axis, np.int64)))
    back = g.op("DFT", go, *extra, inverse=1 - inverse, **axis_arg)
    back = g.op("Mul", back, g.scalar(float(n) if not inverse else 1.0 / n, x))
    if n > m:
        back = g.e.slice(back, [0], [m], [axis])
    elif n < m:
        g.e.infos.setdefault(back, TensorInfo(g.e.infos_elem(x), None))  # the pad's type
        pads = [0] * (2 * rank)
        pads[rank + axis] = m - n
        back = g.e.pad(back, pads)
    if shape[-1] == 1:
        back = g.e.slice(back, [0], [1], [rank - 1])
    return [back] + [None] * (g.n_inputs() - 1)
