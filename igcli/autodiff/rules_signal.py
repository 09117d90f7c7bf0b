"""Gradient rules for signal transforms (DFT, STFT).

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


def _dft(g: NodeGrad, x: str, n: int, axis: int, inverse: int) -> str:
    """A full (two-sided) n-point DFT node along `axis`, in this opset's form (the axis an
    attribute before opset 20, an input from it)."""
    if g.opset >= 20:
        axis_input = g.e.const(np.array(axis, np.int64))
        return g.op("DFT", x, g.e.const(np.array(n, np.int64)), axis_input, inverse=inverse)
    return g.op("DFT", x, g.e.const(np.array(n, np.int64)), inverse=inverse, axis=axis)


def _pad_end(g: NodeGrad, x: str, rank: int, axis: int, amount: int) -> str:
    """x with `amount` zeros after its end along `axis`."""
    g.e.infos.setdefault(x, TensorInfo(g.e.infos_elem(g.I(0)), None))  # the pad's type
    pads = [0] * (2 * rank)
    pads[rank + axis] = amount
    return g.e.pad(x, pads)


def _adjoint_dft(g: NodeGrad, go: str, rank: int, axis: int, n: int, inverse: int,
                 onesided: int) -> str:  # fmt: skip
    """F^H S^T GO for the n-point DFT (inverse: its conjugate over n) along `axis`, S keeping
    the first n//2 + 1 bins when onesided: GO padded back to n bins with zeros, through the
    opposite DFT, scaled (n times an inverse DFT undoes its 1/n; over n for an inverse one)."""
    if onesided and n - (n // 2 + 1) > 0:
        go = _pad_end(g, go, rank, axis, n - (n // 2 + 1))
    back = _dft(g, go, n, axis, inverse=1 - inverse)
    return g.op("Mul", back, g.scalar(float(n) if not inverse else 1.0 / n))


@rule("DFT")
def DFT(g: NodeGrad):
    """y = S F P z: P pads or cuts the signal to dft_length n, F is the n-point DFT matrix
    (F_kj = exp(-2 pi i jk / n); with inverse=1 its conjugate over n), S keeps the first
    n//2 + 1 bins when onesided. dz = P^T F^H S^T GO (_adjoint_dft), cut or padded back to
    the input's length; a real input (last dim 1) takes the real part. dft_length and axis
    get none."""
    x, go = g.I(0), g.GO(0)
    shape = g.e.static_shape(x)
    if shape is None:
        raise NoGradient("DFT needs static shapes (the input's rank)")
    rank = len(shape)
    axis = _dft_axis(g, rank)
    m = shape[axis]
    if not isinstance(m, int):
        raise NoGradient("DFT needs static shapes (the signal length)")
    length = g.const_input(1) if g.I(1) else None
    if g.I(1) and length is None:
        raise NoGradient("DFT with a dft_length known only at run time")
    n = int(length) if length is not None else m
    inverse, onesided = int(g.attr("inverse", 0)), int(g.attr("onesided", 0))
    if inverse and onesided:
        raise NoGradient("DFT with inverse and onesided (a real inverse transform)")
    back = _adjoint_dft(g, go, rank, axis, n, inverse, onesided)
    if n > m:
        back = g.e.slice(back, [0], [m], [axis])
    elif n < m:
        back = _pad_end(g, back, rank, axis, m - n)
    if shape[-1] == 1:
        back = g.e.slice(back, [0], [1], [rank - 1])
    return [back] + [None] * (g.n_inputs() - 1)


@rule("STFT")
def STFT(g: NodeGrad):
    """y[f] = S F (w * x[f s : f s + W]) for frames f at step s, W the frame length, w the
    window (ones without one), F the W-point DFT, S the first W//2 + 1 bins when onesided.
    dx is the frames' adjoints added back where each frame was read: F^H S^T GO per frame
    (as in DFT), times w, overlap-added by a ConvTranspose whose W input channels each land
    at their own offset (an identity kernel, stride s). A real signal takes the real part.
    The window gets none (it is a constant in exported models)."""
    if g.needs(2):
        raise NoGradient("STFT with its window on the path")
    x, go = g.I(0), g.GO(0)
    shape = g.e.static_shape(x)
    step = g.const_input(1)
    window = g.const_input(2) if g.I(2) else None
    given = g.const_input(3) if len(g.node.input) > 3 and g.I(3) else None
    if shape is not None and len(shape) == 2:  # [B, L]: ONNX Runtime takes it as [B, L, 1]
        shape = [*shape, 1]
    if shape is None or len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
        raise NoGradient("STFT needs the signal's length and parts known when it is built")
    if (
        step is None
        or (g.I(2) and window is None)
        or (len(g.node.input) > 3 and g.I(3) and given is None)
    ):
        raise NoGradient("STFT with a step, window or frame length known only at run time")
    length, parts = shape[1], shape[2]
    width = int(given) if given is not None else (len(window) if window is not None else length)
    step = int(step)
    frames = 1 + (length - width) // step
    back = _adjoint_dft(g, go, 4, 2, width, 0, int(g.attr("onesided", 1)))  # [B, frames, W, 2]
    if parts == 1:
        back = g.e.slice(back, [0], [1], [3])
    if window is not None:
        w = np.asarray(window, dtype=g.e.np_dtype(x)).reshape(1, 1, width, 1)
        back = g.op("Mul", back, g.e.const(w, g.e.np_dtype(x)))
    columns = g.op("Reshape", g.op("Transpose", back, perm=[0, 3, 2, 1]),
                   g.e.ints([-1, width, frames]))  # fmt: skip
    eye = g.e.const(np.eye(width).reshape(width, 1, width), g.e.np_dtype(x))
    added = g.op("ConvTranspose", columns, eye, strides=[step])  # [B * parts, 1, span]
    span = (frames - 1) * step + width
    signal = g.op("Reshape", added, g.e.ints([-1, parts, span]))
    if span < length:
        signal = _pad_end(g, signal, 3, 2, length - span)
    dx = g.op("Transpose", signal, perm=[0, 2, 1])
    if len(g.e.static_shape(x)) == 2:
        dx = g.op("Reshape", dx, g.e.ints([-1, length]))
    return [dx] + [None] * (g.n_inputs() - 1)
