"""Gradient rules for network layers: matrix products, convolution, pooling, normalisation.

Spatial rules need static spatial sizes and channel counts (from shape inference); the batch
dimension may be symbolic. A sliding window is one `Window`: output position o, tap j reads
padded position o*s + j*d, which is input position o*s + j*d - pad_begin. Gradients of
windowed ops scatter back with an unpadded ConvTranspose (length `span`) and are then cropped
to the input, so every opset from 9 on is served by the same few ops.
"""

from __future__ import annotations

import itertools
import math
import string
from collections import Counter
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from igcli.autodiff.builder import NodeGrad, TensorInfo
from igcli.autodiff.registry import NoGradient, rule

INT64_MAX = 2**63 - 1
# Stands in for -inf in max-pool padding: below any real activation, yet finite, so that
# multiplying it by 0 (as a one-hot Conv does) gives 0. (The dtype's lowest value overflows
# inside the Conv kernels; half precision gets a quarter of its range.)
PAD_LOW = -1e30
MAX_TAPS = 256  # MaxPool windows up to 16x16: the one-hot scatter does taps^2 work per window
MAX_PHASE_TAPS = 25  # MaxPool windows routed tap by tap (5x5): four or five ops per tap
MAX_PHASE_GRID = 100  # strided Convs' input gradients by phases up to 10 x 10 output positions
MAX_CLASSES = 64  # disjoint window classes of a MaxPool scatter before opset 16 (3x3 s2: 4)


# -- shapes and windows ------------------------------------------------------------------------
def _shape(g: NodeGrad, name: str) -> list[int]:
    """Static shape of `name`; the batch dim may be symbolic (returned as -1)."""
    shape = g.e.static_shape(name)
    if shape is None or not shape or not all(isinstance(d, int) for d in shape[1:]):
        raise NoGradient(f"{g.node.op_type} needs static shapes (got {shape} for {name})")
    return [d if isinstance(d, int) else -1 for d in shape]


@dataclass(frozen=True)
class Axis:
    """One spatial axis of a sliding window."""

    kernel: int
    stride: int
    dilation: int
    begin: int  # padding before
    end: int  # padding after
    size: int  # padded side: the input of a Conv/pool, the output of a ConvTranspose
    out: int  # window positions: the output of a Conv/pool, the input of a ConvTranspose

    @property
    def span(self) -> int:
        """The padded length the windows reach: (o-1)*s + (k-1)*d + 1."""
        return (self.out - 1) * self.stride + (self.kernel - 1) * self.dilation + 1

    @property
    def tail(self) -> int:
        """Length from the end of the input to the end of the span (negative: unused input)."""
        return self.span - self.begin - self.size


@dataclass
class Window:
    axes: list[Axis]

    def of(self, field: str) -> list[int]:
        return [getattr(a, field) for a in self.axes]

    def crop(self, g: NodeGrad, x: str) -> str:
        """From span-long padded coordinates (spatial axes 2..) back to the input's sizes."""
        return _fit(g, x, [-a.begin for a in self.axes], [-a.tail for a in self.axes])


def _window(g: NodeGrad, kernel: list[int], sizes: list[int], outs: list[int]) -> Window:
    """Strides, dilations and pads (explicit or auto_pad) of a Conv or pooling node."""
    n = len(kernel)
    strides = list(g.attr("strides", None) or [1] * n)
    dilations = list(g.attr("dilations", None) or [1] * n)
    pads = list(g.attr("pads", None) or [0] * (2 * n))
    if g.attr("auto_pad", "NOTSET") != "NOTSET":
        pads = [0] * (2 * n)
    axes = [Axis(*v) for v in zip(kernel, strides, dilations, pads[:n], pads[n:], sizes, outs,
                                  strict=True)]  # fmt: skip
    auto_pad = g.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        axes = [_same(a, max(0, a.span - a.size), auto_pad == "SAME_UPPER") for a in axes]
    return Window(axes)


def _same(a: Axis, total: int, upper: bool) -> Axis:
    """Split `total` padding as auto_pad SAME_UPPER (extra at the end) or SAME_LOWER does."""
    small, big = total // 2, total - total // 2
    begin, end = (small, big) if upper else (big, small)
    return Axis(a.kernel, a.stride, a.dilation, begin, end, a.size, a.out)


def _pool_window(g: NodeGrad) -> tuple[Window, int]:
    """The window of a pooling node, and its channel count. Output sizes are computed as the
    runtimes do: with ceil_mode a last window starting in the end padding is dropped (onnx
    shape inference may keep it)."""
    x_shape = _shape(g, g.I(0))
    kernel, n = list(g.attr("kernel_shape")), len(x_shape) - 2
    win = _window(g, kernel, x_shape[2:], [1] * n)
    outs = []
    for a in win.axes:
        room = a.size + a.begin + a.end - (a.kernel - 1) * a.dilation - 1
        if g.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
            outs.append(-(-a.size // a.stride))
        elif g.attr("ceil_mode", 0):
            out = -(-room // a.stride) + 1
            outs.append(out - 1 if (out - 1) * a.stride >= a.size + a.begin else out)
        else:
            outs.append(room // a.stride + 1)
    return _window(g, kernel, x_shape[2:], outs), x_shape[1]


def _fit(g: NodeGrad, x: str, begins: list[int], ends: list[int]) -> str:
    """Pad (positive) or crop (negative) the spatial axes 2.. of x at both ends."""
    n = len(begins)
    if any(b < 0 for b in begins) or any(e < 0 for e in ends):
        starts = [max(0, -b) for b in begins]
        stops = [e if e < 0 else INT64_MAX for e in ends]
        x = g.e.slice(x, starts, stops, list(range(2, 2 + n)))
    if any(b > 0 for b in begins) or any(e > 0 for e in ends):
        g.e.infos.setdefault(x, TensorInfo(g.e.infos_elem(g.I(0)), None))  # pad value's type
        x = g.e.pad(x, [0, 0, *(max(0, b) for b in begins), 0, 0, *(max(0, e) for e in ends)])
    return x


def _reshape(g: NodeGrad, x: str, shape: list[int]) -> str:
    return g.op("Reshape", x, g.e.ints(shape))


def _transpose01(g: NodeGrad, x: str, rank: int) -> str:
    return g.op("Transpose", x, perm=[1, 0, *range(2, rank)])


def _per_channel(g: NodeGrad, v: str) -> str:
    """A [C] vector shaped [C, 1, ..., 1] to broadcast against input 0 ([N, C, ...])."""
    rank = g.e.rank(g.I(0))
    if rank is None:
        raise NoGradient(f"{g.node.op_type} needs the input rank")
    return g.e.unsqueeze(v, list(range(1, rank - 1))) if rank > 2 else v


def _sum_but_channels(g: NodeGrad, x: str) -> str:
    """Sum over every axis but 1: a per-channel parameter's gradient."""
    return g.e.reduce_sum(x, [0, *range(2, g.e.rank(g.I(0)))], keepdims=False)


# -- convolution building blocks --------------------------------------------------------------
def _conv_transpose(g: NodeGrad, x: str, w: str, group: int, win: Window) -> str:
    """Unpadded ConvTranspose(x, w) with the window's strides and dilations: x holds window
    positions, the result is span-long. Grouped forms other than one-to-one depthwise are
    spelled as depthwise or per-group ConvTransposes: the same math, and onnx's reference
    runtime mishandles them otherwise."""
    attrs = {"strides": win.of("stride"), "dilations": win.of("dilation")}
    cin, b, *kernel = _shape(g, w)
    a = cin // group  # input channels per group; b: output channels per group
    if group == 1 or (a == 1 and b == 1):
        return g.op("ConvTranspose", x, w, group=group, **attrs)
    if b == 1:  # each input channel scatters alone, then a group's `a` results add up
        y = g.op("ConvTranspose", x, w, group=cin, **attrs)
        return g.e.reduce_sum(_reshape(g, y, [0, group, a, *win.of("span")]), [2], False)
    if a == 1:  # each input channel feeds b outputs: repeat it b times, then go depthwise
        x = g.op("Expand", g.e.unsqueeze(x, [2]), g.e.ints([1, 1, b] + [1] * len(kernel)))
        x = _reshape(g, x, [0, group * b, *win.of("out")])
        w = _reshape(g, w, [group * b, 1, *kernel])
        return g.op("ConvTranspose", x, w, group=group * b, **attrs)
    parts = []
    for k in range(group):
        xk = g.e.slice(x, [k * a], [(k + 1) * a], [1])
        wk = g.e.slice(w, [k * a], [(k + 1) * a], [0])
        parts.append(g.op("ConvTranspose", xk, wk, **attrs))
    return g.op("Concat", *parts, axis=1)


def _kernel_grad(g: NodeGrad, padded: str, ca: int, taps: str, group: int, win: Window) -> str:
    """dW[m, c, j] = sum over n, o of taps[n, m, o] * padded[n, c, o*s + j*d - pad] (c within
    m's group), shaped [M, C/group, k...]: a Conv of `padded` with `taps` as weights, batch
    and channel axes swapped, strides and dilations trading places."""
    rank = 2 + len(win.axes)
    sizes = win.of("size")  # padded: [N, ca, sizes...]
    if group == 1:
        x = _transpose01(g, padded, rank)  # [C, N, ...]
    else:  # group k's channels meet group k's weights: [C/group, group*N, ...]
        x = _reshape(g, padded, [0, group, ca // group, *sizes])
        x = g.op("Transpose", x, perm=[2, 1, 0, *range(3, rank + 1)])
        x = _reshape(g, x, [ca // group, -1, *sizes])
    w = _transpose01(g, taps, rank)  # [M, N, outs...]
    ends = [max(0, a.tail) for a in win.axes]
    got = [(a.size + a.begin + e - (a.out - 1) * a.stride - 1) // a.dilation + 1
           for a, e in zip(win.axes, ends, strict=True)]  # fmt: skip
    dw = g.op("Conv", x, w, group=group, strides=win.of("dilation"),
              dilations=win.of("stride"), pads=[*win.of("begin"), *ends])  # fmt: skip
    if got != win.of("kernel"):
        dw = g.e.slice(dw, [0] * len(got), win.of("kernel"), list(range(2, rank)))
    return _transpose01(g, dw, rank)


def _conv_input_grad_as_conv(g: NodeGrad, go: str, win: Window, group: int) -> str | None:
    """dx of a stride-1 Conv with constant weights, as a Conv of GO with the kernel flipped
    and its channel axes swapped (computed now, in numpy): ONNX Runtime's Conv is much faster
    than its ConvTranspose. dx[i] = sum_j GO[i + j*d - ((k-1)*d - pad_begin)] W[k-1-j].
    None when the shortcut does not apply (strides, runtime weights, over-wide padding) or
    does not pay: x has fewer than 8 channels. ONNX Runtime's blocked Conv computes 8 or 16
    output channels and drops the rest, so an image's gradient (1 to 4 channels) costs 2.4 to
    6 times its ConvTranspose (a digits CNN: 9.4 ms against 1.5 ms for 250 rows)."""
    w = g.const_input(1)
    if w is None or any(a.stride != 1 for a in win.axes) or w.shape[1] * group < 8:
        return None
    pads = [(a.kernel - 1) * a.dilation - a.begin for a in win.axes]
    pads += [(a.kernel - 1) * a.dilation - a.end for a in win.axes]
    if min(pads) < 0:
        return None
    m, c_per_group, *kernel = w.shape
    flipped = w[(slice(None), slice(None), *[slice(None, None, -1)] * len(kernel))]
    grouped = flipped.reshape(group, m // group, c_per_group, *kernel)
    swapped = np.swapaxes(grouped, 1, 2).reshape(group * c_per_group, m // group, *kernel)
    weights = g.e.const(np.ascontiguousarray(swapped), g.e.np_dtype(g.I(0)))
    return g.op("Conv", go, weights, group=group, pads=pads, dilations=win.of("dilation"))


def _conv_input_grad_by_phases(g: NodeGrad, go: str, win: Window) -> str | None:
    """dx of a strided 2-D Conv with constant weights and few output positions, as a stride-1
    Conv of GO per phase of padded x (rows and columns i with i mod s = r, which kernel taps
    j = a*s + r reach from GO[i // s - a]: the taps in reverse order, padded A - 1 before),
    the phases interleaved by DepthToSpace. ONNX Runtime's ConvTranspose multiplies W by GO
    as one matrix product with a column per GO position, slow where they are few: ResNet-50's
    last 3x3 stride-2 Conv (GO 7 x 7) took 4.0 ms per row, its phases 2.6; at 14 x 14 the
    ConvTranspose is the faster (2.8 against 3.2 ms). None where this does not apply (groups,
    dilations, a kernel narrower than the stride, x's channels not whole 16-wide blocks)."""
    w, axes = g.const_input(1), win.axes
    if w is None or len(axes) != 2 or g.attr("group", 1) != 1 or w.shape[1] % 16:
        return None
    s = axes[0].stride
    if s < 2 or any(a.stride != s or a.dilation != 1 or a.kernel < s for a in axes):
        return None
    if math.prod(win.of("out")) > MAX_PHASE_GRID or g.e.infos_elem(g.I(0)) != TensorProto.FLOAT:
        return None
    sides = [-(-(a.begin + a.size) // s) for a in axes]  # each phase's length
    after = [side - a.out for side, a in zip(sides, axes, strict=True)]
    if min(after) < 0:
        return None
    phases = []
    for rh, rw in itertools.product(range(s), repeat=2):
        rows, cols = range(rh, axes[0].kernel, s)[::-1], range(rw, axes[1].kernel, s)[::-1]
        taps = w[:, :, list(rows)][:, :, :, list(cols)].transpose(1, 0, 2, 3)
        kernel = g.e.const(np.ascontiguousarray(taps), np.float32)
        phases.append(g.op("Conv", go, kernel, pads=[len(rows) - 1, len(cols) - 1, *after]))
    dx = g.op("DepthToSpace", g.op("Concat", *phases, axis=1), blocksize=s)
    ends = [side * s - a.begin - a.size for side, a in zip(sides, axes, strict=True)]
    dx = _fit(g, dx, [-a.begin for a in axes], [-e for e in ends])
    return _reenter(g, dx, _shape(g, g.I(0)))


def _reenter(g: NodeGrad, x: str, shape: list[int]) -> str:
    """x through an identity depthwise 1x1 Conv, for float32 images whose channels fill
    ONNX Runtime's 16-wide NCHWc blocks. ONNX Runtime moves a tensor into its blocked NCHWc
    layout only in front of a Conv or a pool; Mul and Sum run blocked only when all their
    inputs already are. So a gradient coming out of a ConvTranspose (plain NCHW) would keep
    every later Mul and Sum of a residual stream in NCHW, with a reorder around each Conv;
    this Conv takes it back into the blocked layout once. (A Conv-based polyphase form of the
    strided input gradient, Conv + DepthToSpace, was measured and is slower than this.)"""
    if g.e.infos_elem(g.I(0)) != TensorProto.FLOAT or len(shape) != 4 or shape[1] % 16:
        return x
    ones = g.e.const(np.ones([shape[1], 1, 1, 1]), np.float32)
    return g.op("Conv", x, ones, group=shape[1])


@rule("Conv")
def Conv(g: NodeGrad):
    """y[o] = sum_j W[j] x[o*s + j*d - pad] + B: dx = ConvTranspose(GO, W) cropped to x;
    dW[j] = sum over n, o of GO[o] x[o*s + j*d - pad]; dB = GO summed over batch and space."""
    x, w, go = g.I(0), g.I(1), g.GO(0)
    x_shape, w_shape, y_shape = _shape(g, x), _shape(g, w), _shape(g, g.O(0))
    win = _window(g, w_shape[2:], x_shape[2:], y_shape[2:])
    group = g.attr("group", 1)
    gx = None
    if g.needs(0):
        gx = _conv_input_grad_as_conv(g, go, win, group) or _conv_input_grad_by_phases(g, go, win)
        if gx is None:
            gx = _reenter(g, win.crop(g, _conv_transpose(g, go, w, group, win)), x_shape)
    gw = _kernel_grad(g, x, x_shape[1], go, group, win) if g.needs(1) else None
    gb = _sum_but_channels(g, go) if g.needs(2) else None
    return [gx, gw, gb]


def _transpose_window(g: NodeGrad) -> Window:
    """A ConvTranspose's window: x's positions o write y[o*s + j*d - pad]."""
    x_shape, w_shape, y_shape = _shape(g, g.I(0)), _shape(g, g.I(1)), _shape(g, g.O(0))
    win = _window(g, w_shape[2:], y_shape[2:], x_shape[2:])
    auto_pad = g.attr("auto_pad", "NOTSET")
    if g.attr("output_shape", None) is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # pads follow from the output size: total = span + output_padding - size
        extra = list(g.attr("output_padding", None) or [0] * len(win.axes))
        win = Window([_same(a, a.span + e - a.size, auto_pad == "SAME_UPPER")
                      for a, e in zip(win.axes, extra, strict=True)])  # fmt: skip
    if any(a.begin < 0 for a in win.axes):
        raise NoGradient("ConvTranspose with negative padding")
    return win


@rule("ConvTranspose")
def ConvTranspose(g: NodeGrad):
    """y[o*s + j*d - pad] += W[j] x[o] (+ B): dx = Conv(GO, W) with the same strides,
    dilations, pads and group; dW[j] = sum over n, o of x[o] GO[o*s + j*d - pad]; dB = sum GO."""
    x, w, go = g.I(0), g.I(1), g.GO(0)
    win, group = _transpose_window(g), g.attr("group", 1)
    gx = None
    if g.needs(0):
        begins, ends = win.of("begin"), win.of("tail")
        attrs = {"strides": win.of("stride"), "dilations": win.of("dilation"), "group": group}
        if min(ends) < 0:  # the last rows of y get no x: crop them first
            gx = g.op("Conv", _fit(g, go, begins, ends), w, **attrs)
        else:
            gx = g.op("Conv", go, w, pads=[*begins, *ends], **attrs)
    gw = _kernel_grad(g, go, _shape(g, g.O(0))[1], x, group, win) if g.needs(1) else None
    gb = _sum_but_channels(g, go) if g.needs(2) else None
    return [gx, gw, gb]


# -- pooling ----------------------------------------------------------------------------------
def _scatter(g: NodeGrad, stack: str, kernels: np.ndarray, win: Window, channels: int) -> str:
    """Each of the K channels of stack [N*C, K, outs...] carries one kernel tap's share:
    ConvTranspose with `kernels` [K, 1, k...] adds them up where they land; then crop."""
    weights = g.e.const(kernels, g.e.np_dtype(g.I(0)))
    attrs = {"strides": win.of("stride"), "dilations": win.of("dilation")}
    y = g.op("ConvTranspose", stack, weights, **attrs)
    return win.crop(g, _reshape(g, y, [-1, channels, *win.of("span")]))


def _taps(g: NodeGrad, x: str, win: Window) -> str:
    """x[o*s + j*d - pad] for every kernel tap j, as [N*C, K, outs...]: one Conv with one-hot
    kernels (fast, any opset) over x padded with PAD_LOW. Not -inf: the Conv multiplies the
    other taps by 0, and -inf * 0 is NaN."""
    dtype = g.e.np_dtype(x)
    ends = [max(0, a.tail) for a in win.axes]
    padded = [a.begin + a.size + e for a, e in zip(win.axes, ends, strict=True)]
    low = PAD_LOW if dtype.itemsize >= 4 else float(np.finfo(dtype).min) / 4
    xp = g.e.pad(x, [0, 0, *win.of("begin"), 0, 0, *ends], value=low)
    kernels = g.e.const(_one_hot_kernels(win.of("kernel")), dtype)
    attrs = {"strides": win.of("stride"), "dilations": win.of("dilation")}
    taps = g.op("Conv", _reshape(g, xp, [-1, 1, *padded]), kernels, **attrs)
    if any(a.tail < 0 for a in win.axes):  # input rows no window reaches give extra positions
        n = len(win.axes)
        taps = g.e.slice(taps, [0] * n, win.of("out"), list(range(2, 2 + n)))
    return taps


def _one_hot_kernels(kernel: list[int]) -> np.ndarray:
    """[K, 1, k...]: kernel t is 1 at tap t (row-major over the window), 0 elsewhere."""
    size = int(np.prod(kernel))
    return np.eye(size).reshape(size, 1, *kernel)


@rule("MaxPool")
def MaxPool(g: NodeGrad):
    """y[o] = max_j x[o*s + j*d - pad]: GO[o] goes to the window's first arg-max, summed
    where windows overlap. Routes, fastest first: windows that tile x, 2-D windows by phases,
    MaxPool's Indices; else taps gathered by a one-hot Conv, scattered by a one-hot
    ConvTranspose."""
    win, channels = _pool_window(g)
    routed = (_max_pool_tiled(g, win) or _max_pool_by_phases(g, win, channels)
              or _max_pool_by_indices(g, win, channels))  # fmt: skip
    if routed is not None:
        return [routed]
    n_taps, n = int(np.prod(win.of("kernel"))), len(win.axes)
    if n_taps > MAX_TAPS:
        raise NoGradient(f"MaxPool window of {n_taps} taps: its scatter costs taps^2 per window")
    first = g.op("ArgMax", _taps(g, g.I(0), win), axis=1, keepdims=1)  # [N*C, 1, outs...]
    tap_ids = g.e.ints(np.arange(n_taps).reshape(1, n_taps, *[1] * n))
    hit = g.op("Cast", g.op("Equal", first, tap_ids), to=g.e.infos_elem(g.I(0)))
    stack = g.op("Mul", hit, _reshape(g, g.GO(0), [-1, 1, *win.of("out")]))
    return [_scatter(g, stack, _one_hot_kernels(win.of("kernel")), win, channels)]


def _max_pool_tiled(g: NodeGrad, win: Window) -> str | None:
    """Windows that tile x (stride = kernel, no pads or dilation, sizes multiples of the
    kernel), the common 2x2 pool: GO goes to each window's first arg-max by MaxUnpool, its
    indices found without a MaxPool's Indices output, which ONNX Runtime computes one element
    at a time (the digits CNN's two pools: a third of its gradient call). Each input equal to
    its window's max (y scaled up by Resize) is marked with its tap's priority, K less its
    offset in the window, highest for the first tap; a plain MaxPool of the marks gives each
    window the first equal tap, whose flat index is the window's base + K - mark. Marks are
    whole numbers up to K, exact in float32. None where this does not apply."""
    elem = g.e.infos_elem(g.I(0))
    if elem != TensorProto.FLOAT or g.opset < 11:  # (ONNX Runtime's MaxUnpool: float only)
        return None
    if any(a.stride != a.kernel or a.dilation != 1 or a.begin or a.end or a.size != a.out * a.kernel
           for a in win.axes):  # fmt: skip
        return None
    sizes, kernel, outs = win.of("size"), win.of("kernel"), win.of("out")
    steps = [math.prod(sizes[d + 1 :]) for d in range(len(sizes))]  # flat step of each axis
    top = sum((k - 1) * s for k, s in zip(kernel, steps, strict=True)) + 1
    if top >= 2**24:  # marks must be exact in float32
        return None
    offset = sum(np.arange(n)[(...,) + (None,) * (len(sizes) - 1 - d)] % k * s
                 for d, (n, k, s) in enumerate(zip(sizes, kernel, steps, strict=True)))  # fmt: skip
    marks = g.e.const((top - offset)[None, None], np.float32)  # [1, 1, *sizes]
    scales = g.e.const([1.0, 1.0, *map(float, kernel)], np.float32)
    roi = g.e.const(np.zeros(0, np.float32))
    up = g.op("Resize", g.O(0), roi, scales, mode="nearest",
              coordinate_transformation_mode="asymmetric", nearest_mode="floor")  # fmt: skip
    hit = g.op("Cast", g.op("Equal", g.I(0), up), to=elem)
    # one channel per (sample, channel): a plain layout, not the blocked one ONNX Runtime
    # would reorder a pool of C = 8, 16, ... channels into and out of
    rank = 2 + len(sizes)
    planes = g.op("Reshape", g.op("Mul", hit, marks), g.e.ints([-1, 1, *sizes]))
    best = g.op("MaxPool", planes, kernel_shape=kernel, strides=kernel)
    best = g.op("Max", best, g.scalar(1.0, g.I(0)))  # (a NaN window marks none: keep in range)
    count = g.op("Gather", g.op("Shape", best), g.e.const(0, np.int64))
    plane = g.op("Range", g.e.const(0, np.int64), count, g.e.const(1, np.int64))
    base = g.op("Mul", g.op("Reshape", plane, g.e.ints([-1] + [1] * (rank - 1))),
                g.e.const(math.prod(sizes), np.int64))  # fmt: skip
    for d, (o, k, s) in enumerate(zip(outs, kernel, steps, strict=True)):
        part = np.arange(o) * k * s + (top if d == 0 else 0)
        base = g.op("Add", base, g.e.const(part.reshape([-1] + [1] * (len(sizes) - 1 - d))))
    first = g.op("Sub", base, g.op("Cast", best, to=TensorProto.INT64))
    first = g.op("Reshape", first, g.op("Shape", g.O(0)))
    shape = g.op("Shape", g.I(0))
    return g.op("MaxUnpool", g.GO(0), first, shape, kernel_shape=kernel, strides=kernel)


def _max_pool_by_phases(g: NodeGrad, win: Window, channels: int) -> str | None:
    """A 2-D pool's GO routed to each window's first arg-max, tap by tap in pooled-size
    tensors: x padded with -inf and cut into its stride x stride phases (SpaceToDepth) gives
    each tap's values for all windows as one Slice; in window order each tap takes what is
    left of GO where it equals y (Equal, Cast, Mul, Sub), the last tap all that is left; the
    one-hot ConvTranspose adds the shares up where they land. (Equal, not "not below y":
    ONNX Runtime's max of a window holding a NaN can be the max of the taps after the NaN,
    below an earlier one.) The other routes need MaxPool's Indices, which ONNX Runtime finds
    one element at a time: ResNet-50's 3x3 stride-2 pool's reverse, one row, one thread,
    took 9.3 ms (opset 10; 6.5 with opset 16's adding scatter), this 4.1-4.4, and the whole
    gradient call 3.5 ms less on ResNet-50 and DenseNet-121. None where this does not apply
    (other ranks, not float32, strides that differ by axis, windows of many taps)."""
    axes = win.axes
    if len(axes) != 2 or g.opset < 9 or axes[0].stride != axes[1].stride:
        return None
    elem = g.e.infos_elem(g.I(0))
    if elem != TensorProto.FLOAT:  # (ONNX Runtime's ConvTranspose: float only)
        return None
    s, kernel, outs = axes[0].stride, win.of("kernel"), win.of("out")
    if math.prod(kernel) > (MAX_PHASE_TAPS if g.opset < 16 else 16):
        return None  # (from opset 16 wider windows go faster by ScatterElements adding)
    # x padded to cover every window (and all of x), its sides whole multiples of s
    sides = [-(-max(a.span, a.begin + a.size) // s) * s for a in axes]
    ends = [side - a.begin - a.size for side, a in zip(sides, axes, strict=True)]
    xp = g.e.pad(g.I(0), [0, 0, *win.of("begin"), 0, 0, *ends], value=float("-inf"))
    phases = g.op("SpaceToDepth", xp, blocksize=s) if s > 1 else xp  # [N, s*s*C, side/s...]
    left, shares = g.GO(0), []
    taps = list(itertools.product(*[[j * a.dilation for j in range(a.kernel)] for a in axes]))
    for k, at in enumerate(taps):
        if k == len(taps) - 1:
            shares.append(left)  # (what is left: the last tap is the max)
            break
        phase, shift = (at[0] % s) * s + at[1] % s, [t // s for t in at]
        stops = [(phase + 1) * channels, *(t + o for t, o in zip(shift, outs, strict=True))]
        tap = g.e.slice(phases, [phase * channels, *shift], stops, [1, 2, 3])
        if g.opset >= 11:
            hit = g.op("Equal", tap, g.O(0))
        else:  # (no float Equal) |tap - y| below the least normal float: NaN taps too
            gap = g.op("Abs", g.op("Sub", tap, g.O(0)))
            hit = g.op("Less", gap, g.scalar(float(np.finfo(np.float32).tiny)))
        share = g.op("Mul", left, g.op("Cast", hit, to=elem))
        shares.append(share)
        left = g.op("Sub", left, share)
    stack = g.op("Concat", *[g.e.unsqueeze(t, [2]) for t in shares], axis=2)
    return _scatter(g, _reshape(g, stack, [-1, len(taps), *outs]), _one_hot_kernels(kernel),
                    win, channels)  # fmt: skip


def _max_pool_by_indices(g: NodeGrad, win: Window, channels: int) -> str | None:
    """GO[o] scattered to the flat index of window o's first arg-max, which a second MaxPool
    reports as its Indices output (flat over the whole tensor, ties to the first): a memset and
    one pass over y, where the one-hot Conv route moves every tap of every window through two
    Convs and their layout reorders (on the digits CNN, most of its reverse pass). Overlapping
    windows add up where they share an input: ScatterElements' reduction from opset 16, one
    class of disjoint windows at a time before (or, faster, by tap: see _scatter_by_taps).
    None for other element types (and opset 8)."""
    if g.e.infos_elem(g.I(0)) not in (TensorProto.FLOAT, TensorProto.DOUBLE) or g.opset < 9:
        return None
    if _windows_in_pads(win):
        return None
    overlap = any(a.stride < (a.kernel - 1) * a.dilation + 1 for a in win.axes)
    # before opset 16 overlapping windows go by tap: faster than a class at a time (but not
    # than ScatterElements adding, from 16: 105 against 131 ms on ResNet-50's pool)
    by_taps = overlap and g.opset < 16 and _taps_apart(win)
    in_classes = (overlap and g.opset < 16) or g.opset < 11  # no adding scatter, or none at all
    if not by_taps and in_classes and np.prod(_window_classes(win)) > MAX_CLASSES:
        return None
    keep = ("kernel_shape", "strides", "dilations", "ceil_mode")
    attrs = {k: g.attr(k) for k in keep if k in g.attrs}
    # explicit pads, never auto_pad: onnx's reference evaluator gets Indices wrong with it
    attrs["pads"] = [*win.of("begin"), *win.of("end")]
    _, first = g.e.op_multi("MaxPool", [g.I(0)], 2, **attrs)
    if by_taps:
        return _scatter_by_taps(g, first, win, channels)
    shape = g.op("Shape", g.I(0))
    if not overlap and _unpools(win) and g.e.infos_elem(g.I(0)) == TensorProto.FLOAT:
        # an input is the arg-max of one window at most: MaxUnpool (float only) puts GO there
        # (no zeros to fill and copy, no flattening: the digits CNN's two pools' reverse
        # 3.4 against 4.9 ms per 200 rows)
        return g.op("MaxUnpool", g.GO(0), first, shape, kernel_shape=win.of("kernel"),
                    strides=win.of("stride"), pads=attrs["pads"])  # fmt: skip
    flat = g.e.ints([-1])
    zero = helper.make_tensor("zero", g.e.infos_elem(g.I(0)), [1], [0])
    zeros = g.op("Reshape", g.op("ConstantOfShape", shape, value=zero), flat)
    if in_classes:
        dx = _scatter_in_classes(g, zeros, first, win)
    else:
        go = g.op("Reshape", g.GO(0), flat)
        reduction = "add" if overlap else None
        dx = g.op("ScatterElements", zeros, g.op("Reshape", first, flat), go, axis=0,
                  reduction=reduction)  # fmt: skip
    return g.op("Reshape", dx, shape)


@rule("MaxUnpool")
def MaxUnpool(g: NodeGrad):
    """y = zeros with y.flat[I] = x (I: a MaxPool's Indices, flat over the whole output):
    dx = GO.flat[I]. The indices and output_shape get none."""
    flat = g.op("Reshape", g.GO(0), g.e.ints([-1]))
    return [g.op("Gather", flat, g.I(1), axis=0)] + [None] * (g.n_inputs() - 1)


def _unpools(win: Window) -> bool:
    """Whether MaxUnpool takes x's shape as its output_shape: ONNX Runtime refuses one smaller
    than (out - 1) * stride - pads + kernel (a ceil_mode window that reaches past x), and
    any axis where that is not positive (windows apart, padded on both sides of a short
    axis)."""
    return all(0 < (a.out - 1) * a.stride - a.begin - a.end + a.kernel <= a.size
               for a in win.axes)  # fmt: skip


def _windows_in_pads(win: Window) -> bool:
    """Whether some window lies wholly in the padding (a dilated window with pads, over a
    short axis): it has no arg-max in x, and the Indices ONNX Runtime gives it point into x
    all the same, so routing GO by them is wrong. The one-hot tap route sends such a
    window's GO into the padding, which is cropped away."""
    for a in win.axes:
        taps = np.arange(a.out)[:, None] * a.stride + np.arange(a.kernel) * a.dilation - a.begin
        if not ((taps >= 0) & (taps < a.size)).any(axis=1).all():
            return True
    return False


def _rows(win: Window) -> list[int]:
    """Elements per step along each spatial axis of the input (row-major)."""
    sizes = win.of("size")
    return [int(np.prod(sizes[a + 1 :])) for a in range(len(sizes))]


def _taps_apart(win: Window) -> bool:
    """Whether every tap of a window sits at its own offset from the window's origin in the
    flattened input (not so where a window is wider than the input along an inner axis),
    and the window is small enough for the one-hot scatter."""
    if np.prod(win.of("kernel")) > MAX_TAPS:
        return False
    row, n = _rows(win), len(win.axes)
    spans = [(a.kernel - 1) * a.dilation for a in win.axes]
    return all(sum(spans[b] * row[b] for b in range(a, n)) < row[a - 1] for a in range(1, n))


def _scatter_by_taps(g: NodeGrad, first: str, win: Window, channels: int) -> str:
    """Overlapping windows where no scatter adds (before opset 16): which tap of its window
    each first arg-max is, from its flat index (its offset in the plane less the window's
    origin), as a one-hot stack [N*C, K, outs...] of GO that the one-hot ConvTranspose adds
    up where windows overlap. A 16-row gradient call of ResNet-50 (opset 9, a 3x3 stride-2
    pool) took 1408-1412 ms against 1453-1546 with the four classes' Gathers and Scatters,
    DenseNet-121 1615 against 1746 ms."""
    n, row = len(win.axes), _rows(win)
    plane = g.e.ints([int(np.prod(win.of("size")))])
    offset = g.op("Sub", first, g.op("Mul", g.op("Div", first, plane), plane))  # idx mod plane
    grids = np.meshgrid(*[np.arange(a.out) * a.stride - a.begin for a in win.axes], indexing="ij")
    origin = sum(grid * r for grid, r in zip(grids, row, strict=True))
    taps = np.meshgrid(*[np.arange(a.kernel) * a.dilation for a in win.axes], indexing="ij")
    tap_offsets = sum(t * r for t, r in zip(taps, row, strict=True)).reshape(1, -1, *[1] * n)
    at = g.op("Sub", offset, g.e.ints(origin))
    hit = g.op("Equal", _reshape(g, at, [-1, 1, *win.of("out")]), g.e.ints(tap_offsets))
    hit = g.op("Cast", hit, to=g.e.infos_elem(g.I(0)))
    stack = g.op("Mul", hit, _reshape(g, g.GO(0), [-1, 1, *win.of("out")]))
    return _scatter(g, stack, _one_hot_kernels(win.of("kernel")), win, channels)


def _window_classes(win: Window) -> list[int]:
    """Per axis, how many classes of windows that do not overlap: ceil(span / stride)."""
    return [-(-((a.kernel - 1) * a.dilation + 1) // a.stride) for a in win.axes]


def _scatter_in_classes(g: NodeGrad, zeros: str, first: str, win: Window) -> str:
    """Overlapping windows before opset 16, where no scatter adds: the windows split into
    classes that do not overlap (every c-th window along each axis, c = ceil(span / stride):
    4 classes for 3x3 stride 2), so within a class the arg-max indices are distinct. Each
    class adds its GO to what the classes before it left at those indices (a Gather, an Add
    and a Scatter that overwrites); only pooled-size tensors move, where the one-hot route
    moves every tap of every window through a Conv, an ArgMax and a ConvTranspose."""
    steps = _window_classes(win)
    scatter = "ScatterElements" if g.opset >= 11 else "Scatter"
    flat = g.e.ints([-1])
    acc = zeros
    for offsets in itertools.product(*[range(c) for c in steps]):
        idx, go = first, g.GO(0)
        for k, (a, c, r) in enumerate(zip(win.axes, steps, offsets, strict=True)):
            if c > 1:  # this class's windows along axis 2 + k
                keep = g.e.ints(range(r, a.out, c))
                idx = g.op("Gather", idx, keep, axis=2 + k)
                go = g.op("Gather", go, keep, axis=2 + k)
        idx, go = g.op("Reshape", idx, flat), g.op("Reshape", go, flat)
        if acc is not zeros:
            go = g.op("Add", go, g.op("Gather", acc, idx, axis=0))
        acc = g.op(scatter, acc, idx, go, axis=0)
    return acc


def _pool_counts(win: Window, include_pad: bool) -> np.ndarray:
    """How many taps each window averages: those inside x, or inside x and its pads."""
    counts = np.ones([])
    for a in win.axes:
        pos = np.arange(a.out)[:, None] * a.stride + np.arange(a.kernel) * a.dilation - a.begin
        lo, hi = (-a.begin, a.size + a.end) if include_pad else (0, a.size)
        counts = np.multiply.outer(counts, ((pos >= lo) & (pos < hi)).sum(axis=1))
    return counts


@rule("AveragePool")
def AveragePool(g: NodeGrad):
    """y[o] = sum_j x[o*s + j*d - pad] / count[o]: dx scatters GO[o] / count[o] to every
    tap of window o (count: the window's taps inside x, or inside x and its pads)."""
    win, channels = _pool_window(g)
    counts = _pool_counts(win, bool(g.attr("count_include_pad", 0)))
    go = g.GO(0)
    if np.all(counts == counts.flat[0]):  # one count: it goes into the kernel
        gx = _depthwise_scatter(g, go, win, channels, 1.0 / float(counts.flat[0]))
        if gx is not None:
            return [gx]
    share = g.op("Mul", go, g.e.const(1.0 / counts, g.e.np_dtype(g.I(0))))
    gx = _depthwise_scatter(g, share, win, channels, 1.0)
    if gx is not None:
        return [gx]
    stack = _reshape(g, share, [-1, 1, *win.of("out")])
    return [_scatter(g, stack, np.ones([1, 1, *win.of("kernel")]), win, channels)]


@rule("GlobalAveragePool")
def GlobalAveragePool(g: NodeGrad):
    """y = mean of x over space: dx = GO / (spatial size), broadcast over space."""
    sizes = _shape(g, g.I(0))[2:]
    size = int(np.prod(sizes))
    win = Window([Axis(n, 1, 1, 0, 0, n, 1) for n in sizes])  # one window over all of x
    gx = _depthwise_scatter(g, g.GO(0), win, _shape(g, g.I(0))[1], 1.0 / size)
    if gx is not None:
        return [gx]
    share = g.op("Mul", g.GO(0), g.scalar(1.0 / size))
    return [g.op("Expand", share, g.op("Shape", g.I(0)))]


def _lp_slope(g: NodeGrad, p: float) -> tuple[str, str]:
    """For y = (sum |x|^p)^(1/p) over windows: (GO y^(1-p), 0 where y = 0) in window space
    and |x|^(p-1) sign(x) in x's space, whose product, scattered, is dx. A window of zeros
    has no derivative for p > 1 (and |x|^(p-1) is 0 there anyway): its share is 0."""
    x, y = g.I(0), g.O(0)
    if p == 1.0:
        share, along = g.GO(0), g.op("Sign", x)
    else:
        inv = g.op("Pow", y, g.scalar(1.0 - p, y))
        safe = g.op("Where", g.op("Greater", y, g.scalar(0.0, y)), inv, g.scalar(0.0, y))
        share = g.op("Mul", g.GO(0), safe)
        if p == 2.0:
            along = x
        else:
            magnitude = g.op("Abs", x)
            along = g.op("Mul", g.op("Pow", magnitude, g.scalar(p - 2.0, x)), x)
            if p < 2.0:  # |x|^(p-2) x is 0 * inf at x = 0, where the slope is 0
                nonzero = g.op("Greater", magnitude, g.scalar(0.0, x))
                along = g.op("Where", nonzero, along, g.scalar(0.0, x))
    return share, along


def _lp_power(g: NodeGrad) -> float:
    p = float(g.attr("p", 2))
    if p < 1.0:
        raise NoGradient(f"{g.node.op_type} with p={p:g}")
    return p


@rule("LpPool")
def LpPool(g: NodeGrad):
    """y[o] = (sum_j |x[o*s + j*d - pad]|^p)^(1/p): dx[i] = |x_i|^(p-1) sign(x_i) times the sum
    over windows o holding i of GO[o] y[o]^(1-p) (see _lp_slope); pads add nothing."""
    win, channels = _pool_window(g)
    share, along = _lp_slope(g, _lp_power(g))
    scattered = _depthwise_scatter(g, share, win, channels, 1.0)
    if scattered is None:
        stack = _reshape(g, share, [-1, 1, *win.of("out")])
        scattered = _scatter(g, stack, np.ones([1, 1, *win.of("kernel")]), win, channels)
    return [g.op("Mul", scattered, along)]


@rule("GlobalLpPool")
def GlobalLpPool(g: NodeGrad):
    """y = (sum over space of |x|^p)^(1/p): dx = GO y^(1-p) |x|^(p-1) sign(x), GO and y
    broadcast over space."""
    share, along = _lp_slope(g, _lp_power(g))
    return [g.op("Mul", share, along)]


def _depthwise_scatter(g: NodeGrad, go: str, win: Window, channels: int, weight: float):
    """sum over windows o holding i of weight * GO[o], for float32 images whose windows have
    stride 1 (or are a single window): a depthwise Conv of GO with a constant kernel, padded
    so that tap j of window o lands on o + j*d - pad_begin. ONNX Runtime runs that Conv in its
    blocked NCHWc layout, next to the Convs around it; the general scatter (a ConvTranspose on
    [N*C, 1, ...]) would need layout reorders on both sides. None where it does not apply, or
    where the kernel is so large (over 64 taps) that the Conv would cost more than them."""
    if g.e.infos_elem(g.I(0)) != TensorProto.FLOAT or len(win.axes) != 2 or channels % 16:
        return None
    if any(a.stride != 1 and a.out != 1 for a in win.axes) or np.prod(win.of("kernel")) > 64:
        return None
    before = [(a.kernel - 1) * a.dilation - a.begin for a in win.axes]
    after = [a.size - a.out - b + (a.kernel - 1) * a.dilation
             for a, b in zip(win.axes, before, strict=True)]  # fmt: skip
    if min(before + after) < 0:
        return None
    kernel = g.e.const(np.full([channels, 1, *win.of("kernel")], weight), np.float32)
    return g.op("Conv", go, kernel, group=channels, pads=[*before, *after],
                dilations=win.of("dilation"))  # fmt: skip


@rule("GlobalMaxPool")
def GlobalMaxPool(g: NodeGrad):
    """y = max of x over space: GO goes to the first arg-max of each (n, c) plane."""
    x = g.I(0)
    size = int(np.prod(_shape(g, x)[2:]))
    first = g.op("ArgMax", _reshape(g, x, [0, 0, -1]), axis=2, keepdims=1)  # [N, C, 1]
    hit = g.op("Cast", g.op("Equal", first, g.e.ints(np.arange(size))), to=g.e.infos_elem(x))
    routed = g.op("Mul", hit, _reshape(g, g.GO(0), [0, 0, 1]))
    return [g.op("Reshape", routed, g.op("Shape", x))]


# -- matrix products --------------------------------------------------------------------------
def _broadcast_dims(a: list, b: list) -> list:
    """numpy broadcasting of two static (possibly symbolic) batch shapes."""
    n = max(len(a), len(b))
    a, b = [1] * (n - len(a)) + list(a), [1] * (n - len(b)) + list(b)
    return [y if x == 1 else x if y == 1 or x == y else None for x, y in zip(a, b, strict=True)]


def _last2(g: NodeGrad, grad: str, k: int, batch: list) -> str:
    """Sum a product's gradient over the batch dims input k was broadcast along."""
    shape = g.e.static_shape(g.I(k))
    if shape is not None:
        g.e.infos[grad] = TensorInfo(g.e.infos_elem(g.I(k)), [*batch, *shape[-2:]])
    return g.e.reduce_to_shape_of(grad, g.I(k))


@rule("MatMul")
def MatMul(g: NodeGrad):
    """y = a @ b: da = GO @ b^T, db = a^T @ GO. Batch dims broadcast and are summed back;
    a 1-D a is a row [1, K] and a 1-D b a column [K, 1], as in numpy."""
    a, b, go = g.I(0), g.I(1), g.GO(0)
    ra, rb = g.e.rank(a), g.e.rank(b)
    if ra is None or rb is None:
        raise NoGradient("MatMul with operands of unknown rank")
    rank = max(ra, rb, 2)
    if rb == 1:  # the product dropped b's column axis ...
        go = g.e.unsqueeze(go, [rank - 1 - (ra == 1)])
        b = g.e.unsqueeze(b, [1])
    if ra == 1:  # ... and a's row axis
        go = g.e.unsqueeze(go, [rank - 2])
        a = g.e.unsqueeze(a, [0])

    def batch(name: str) -> list:
        shape = g.e.static_shape(name)
        return [] if shape is None else shape[:-2]

    dims = _broadcast_dims(batch(g.I(0)), batch(g.I(1)))
    ga = gb = None
    if g.needs(0):
        ga = g.op("MatMul", go, _t(g, b, max(rb, 2)))
        if ra == 1:  # [..., 1, K] -> [K]
            ga = g.e.reduce_sum(ga, list(range(rank - 1)), keepdims=False)
        else:
            ga = _last2(g, ga, 0, dims)
    if g.needs(1):
        gb = g.op("MatMul", _t(g, a, max(ra, 2)), go)
        if rb == 1:  # [..., K, 1] -> [K]
            gb = g.e.reduce_sum(gb, [*range(rank - 2), rank - 1], keepdims=False)
        else:
            gb = _last2(g, gb, 1, dims)
    return [ga, gb]


def _t(g: NodeGrad, x: str, rank: int) -> str:
    """Swap the last two axes."""
    return g.op("Transpose", x, perm=[*range(rank - 2), rank - 1, rank - 2])


def _einsum_subscripts(g: NodeGrad) -> tuple[list[str], str]:
    """The operands' and the output's subscripts, with each '...' spelled out as letters the
    equation does not use (right-aligned: an operand with fewer ellipsis dims takes the last
    ones) and an implicit output made explicit (the ellipsis, then the letters used once,
    in alphabetical order)."""
    eq = g.attr("equation").replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != g.n_inputs():
        raise NoGradient(f"Einsum equation {eq!r} for {g.n_inputs()} operands")
    named = [t.replace("...", "") for t in terms]
    spans = []
    for k, t in enumerate(terms):
        rank = g.e.rank(g.I(k))
        if "..." in t and rank is None:
            raise NoGradient(f"Einsum {eq!r}: '...' on an operand of unknown rank")
        spans.append(rank - len(named[k]) if "..." in t else 0)
    free = "".join(c for c in string.ascii_letters if c not in eq)[: max(spans, default=0)]
    terms = [t.replace("...", free[len(free) - n :]) for t, n in zip(terms, spans, strict=True)]
    if arrow:
        return terms, rhs.replace("...", free)
    once = sorted(c for c, n in Counter("".join(named)).items() if n == 1)
    return terms, free + "".join(once)


@rule("Einsum")
def Einsum(g: NodeGrad):
    """y = einsum(x_0, x_1, ...): linear in each operand, so dx_k = einsum(GO, the other
    operands) onto x_k's subscripts. Letters of x_k that GO and the others lack (summed in
    x_k alone) are left out and broadcast back by Expand; size-1 axes are squeezed out of
    every operand first (they broadcast: x_k's gets the sum over the letter, and an
    explicit letter never meets two sizes). '...' is spelled out as letters. An index
    repeated within one operand (a diagonal 'ii->i', a trace 'ii') reads only the diagonal:
    the gradient over its letters once is laid back on the diagonal by identity matrices,
    dx_ij = g_i delta_ij (_on_diagonal)."""
    terms, out = _einsum_subscripts(g)
    n = g.n_inputs()
    units = []
    for k, term in enumerate(terms):
        shape = g.e.static_shape(g.I(k)) or [None] * len(term)
        units.append({c for c, d in zip(term, shape, strict=False) if d == 1})
    squeezed: dict[int, tuple[str, str]] = {}

    def operand(j: int) -> tuple[str, str]:
        """Operand j and its subscripts, size-1 axes squeezed out."""
        if j not in squeezed:
            pos = [i for i, c in enumerate(terms[j]) if c in units[j]]
            name = g.e.squeeze(g.I(j), pos) if pos else g.I(j)
            squeezed[j] = (name, "".join(c for c in terms[j] if c not in units[j]))
        return squeezed[j]

    grads: list[str | None] = []
    for k in range(n):
        if not g.needs(k):
            grads.append(None)
            continue
        others = [operand(j) for j in range(n) if j != k]
        seen = set(out).union(*(set(sub) for _, sub in others))
        keep = "".join(dict.fromkeys(c for c in terms[k] if c in seen and c not in units[k]))
        if not others and keep == out:
            grad = g.GO(0)
        else:
            eq = ",".join([out, *(sub for _, sub in others)]) + "->" + keep
            grad = g.op("Einsum", g.GO(0), *(name for name, _ in others), equation=eq)
        grad, keep = _on_diagonal(g, grad, keep, terms[k], units[k], g.I(k))
        dropped = [i for i, c in enumerate(terms[k]) if c not in keep]
        if dropped:
            grad = g.e.unsqueeze(grad, dropped)
            if any(terms[k][i] not in units[k] for i in dropped):
                grad = g.op("Expand", grad, g.op("Shape", g.I(k)))
        grads.append(grad)
    return grads


def _on_diagonal(
    g: NodeGrad, grad: str, keep: str, term: str, units: set[str], x: str
) -> tuple[str, str]:
    """grad (subscripts `keep`, each letter once) laid on the diagonals of the letters `term`
    repeats, as an Einsum with an identity matrix per repeat: ('i' for 'ii') -> 'ij' via
    'i,ij->ij'. Returns it and its subscripts, `term` with each repeat a fresh letter."""
    repeated = [c for c in dict.fromkeys(term) if term.count(c) > 1 and c not in units]
    if not repeated:
        return grad, keep
    fresh = iter(c for c in string.ascii_letters if c not in term)
    shape = g.op("Shape", x)
    eyes, subs, first, out = [], [keep], set(), ""
    for pos, c in enumerate(term):
        if c not in repeated:
            out += c if c in keep else ""
        elif c not in first:
            first.add(c)
            out += c
        else:
            f = next(fresh)
            size = g.e.slice(shape, [pos], [pos + 1], [0])
            square = g.op("Expand", g.scalar(0.0, x), g.op("Concat", size, size, axis=0))
            eyes.append(g.op("EyeLike", square))
            subs.append(c + f)
            out += f
    eq = ",".join(subs) + "->" + out
    return g.op("Einsum", grad, *eyes, equation=eq), out


@rule("Det")
def Det(g: NodeGrad):
    """y = det(A) over the last two axes (n x n): dA = GO C, C the cofactor matrix, C_ij =
    (-1)^(i+j) det(A without row i and column j). That is det(A) A^-T where A is invertible,
    and still right where it is not; standard ONNX has no inverse anyway. The n^2 minors come
    from two Gathers and one batched Det."""
    a, go = g.I(0), g.GO(0)
    shape = g.e.static_shape(a)
    n = shape[-1] if shape else None
    if not isinstance(n, int) or len(shape) < 2:
        raise NoGradient("Det needs a static matrix size")
    rank = len(shape)
    spread = g.e.unsqueeze(go, [rank - 2, rank - 1])
    if n == 1:
        return [spread]
    others = g.e.const(np.array([[k for k in range(n) if k != i] for i in range(n)], np.int64))
    rows = g.op("Gather", a, others, axis=rank - 2)  # [..., i, n - 1, n]
    minors = g.op("Gather", rows, others, axis=rank)  # [..., i, n - 1, j, n - 1]
    batch = list(range(rank - 2))
    minors = g.op("Transpose", minors, perm=[*batch, rank - 2, rank, rank - 1, rank + 1])
    signs = (-1.0) ** np.add.outer(np.arange(n), np.arange(n))
    cofactors = g.op("Mul", g.op("Det", minors), g.e.const(signs, g.e.np_dtype(a)))
    return [g.op("Mul", cofactors, spread)]


@rule("Gemm")
def Gemm(g: NodeGrad):
    """y = alpha * A' @ B' + beta * C with A' = A or A^T, B' = B or B^T:
    dA' = alpha GO B'^T, dB' = alpha A'^T GO, dC = beta GO summed to C's shape."""
    a, b, go = g.I(0), g.I(1), g.GO(0)
    alpha, beta = g.attr("alpha", 1.0), g.attr("beta", 1.0)
    ta, tb = g.attr("transA", 0), g.attr("transB", 0)
    zero = g.scalar(0.0)  # C is required below opset 11; beta = 0 ignores it

    def gemm(x: str, y: str, tx: int, ty: int) -> str:
        return g.op("Gemm", x, y, zero, alpha=float(alpha), beta=0.0, transA=tx, transB=ty)

    ga = gb = gc = None
    if g.needs(0):
        ga = gemm(b, go, tb, 1) if ta else gemm(go, b, 0, 1 - tb)
    if g.needs(1):
        gb = gemm(go, a, 1, ta) if tb else gemm(a, go, 1 - ta, 0)
    if g.needs(2):
        gc = g.reduce_to(g.op("Mul", go, g.scalar(beta)), 2)
    return [ga, gb, gc]


# -- normalisation ----------------------------------------------------------------------------
def _normalized_grad(g: NodeGrad, go_hat: str, x_hat: str, inv_std: str, axes: list[int]):
    """d/dx of x_hat = (x - mean) * inv_std, both statistics over `axes`, given the gradient
    go_hat w.r.t. x_hat: inv_std * (go_hat - mean(go_hat) - x_hat * mean(go_hat * x_hat))."""
    mean_g = g.e.reduce("ReduceMean", go_hat, axes)
    mean_gx = g.e.reduce("ReduceMean", g.op("Mul", go_hat, x_hat), axes)
    centred = g.op("Sub", g.op("Sub", go_hat, mean_g), g.op("Mul", x_hat, mean_gx))
    return g.op("Mul", centred, inv_std)


def _standardize(g: NodeGrad, x: str, axes: list[int], eps: float):
    """(x - mean) * inv_std and inv_std = 1 / sqrt(var + eps), statistics over `axes`."""
    centred = g.op("Sub", x, g.e.reduce("ReduceMean", x, axes))
    var = g.e.reduce("ReduceMean", g.op("Mul", centred, centred), axes)
    inv_std = g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, g.scalar(eps, x))))
    return g.op("Mul", centred, inv_std), inv_std


@rule("BatchNormalization")
def BatchNormalization(g: NodeGrad):
    """Inference: y = scale (x - mean) / sqrt(var + eps) + B, per channel. With r =
    1/sqrt(var + eps): dx = GO scale r; dscale = sum GO (x - mean) r; dB = sum GO;
    dmean = -sum GO scale r; dvar = -1/2 sum GO scale (x - mean) r^3."""
    training = g.attr("training_mode", 0) if g.opset >= 14 else sum(map(bool, g.node.output)) > 1
    if training:
        raise NoGradient("BatchNormalization in training mode")
    if g.opset < 9 and g.attr("spatial", 1) == 0:
        raise NoGradient("BatchNormalization with per-activation statistics (spatial=0)")
    x, scale, mean, var, go = g.I(0), g.I(1), g.I(3), g.I(4), g.GO(0)
    r = g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, g.scalar(g.attr("epsilon", 1e-5), var))))
    scale_r = g.op("Mul", scale, r)
    grads = [None] * 5
    if g.needs(0):
        grads[0] = g.op("Mul", go, _per_channel(g, scale_r))
    if g.needs(2):
        grads[2] = _sum_but_channels(g, go)
    if g.needs(3):
        grads[3] = g.op("Neg", g.op("Mul", _sum_but_channels(g, go), scale_r))
    if g.needs(1) or g.needs(4):
        sum_gc = _sum_but_channels(g, g.op("Mul", go, g.op("Sub", x, _per_channel(g, mean))))
        if g.needs(1):
            grads[1] = g.op("Mul", sum_gc, r)
        if g.needs(4):
            r3 = g.op("Mul", g.op("Mul", r, r), scale_r)
            grads[4] = g.op("Mul", g.op("Mul", sum_gc, r3), g.scalar(-0.5, var))
    return grads


@rule("InstanceNormalization")
def InstanceNormalization(g: NodeGrad):
    """y = scale x_hat + B, x_hat = (x - mean) / sqrt(var + eps) over each (n, c) plane:
    dx = r (g - mean(g) - x_hat mean(g x_hat)) with g = GO scale; dscale = sum GO x_hat;
    dB = sum GO (sums over batch and space)."""
    x, scale, go = g.I(0), g.I(1), g.GO(0)
    if g.e.rank(x) is None:
        raise NoGradient("InstanceNormalization needs the input rank")
    axes = list(range(2, g.e.rank(x)))
    x_hat, inv_std = _standardize(g, x, axes, g.attr("epsilon", 1e-5))
    gx = gs = gb = None
    if g.needs(0):
        gx = _normalized_grad(g, g.op("Mul", go, _per_channel(g, scale)), x_hat, inv_std, axes)
    if g.needs(1):
        gs = _sum_but_channels(g, g.op("Mul", go, x_hat))
    if g.needs(2):
        gb = _sum_but_channels(g, go)
    return [gx, gs, gb]


@rule("LayerNormalization")
def LayerNormalization(g: NodeGrad):
    """y = scale x_hat + B, x_hat = (x - mean) r, r = 1/sqrt(var + eps) over axes axis..:
    dx = r (g - mean(g) - x_hat mean(g x_hat)) with g = GO scale, plus GO_mean / n and
    -GO_invstd r^2 x_hat / n from the optional Mean and InvStdDev outputs; dscale = sum GO
    x_hat; dB = sum GO (sums over the leading and broadcast axes)."""
    x, scale, go = g.I(0), g.I(1), g.GO(0)
    rank = g.e.rank(x)
    if rank is None:
        raise NoGradient("LayerNormalization needs the input rank")
    axes = list(range(g.attr("axis", -1) % rank, rank))
    x_hat, inv_std = _standardized_by_layer_norm(g, x, axes)
    gx = gs = gb = None
    if g.needs(0):
        parts = []
        if go is not None:
            parts.append(_normalized_grad(g, g.op("Mul", go, scale), x_hat, inv_std, axes))
        elem = g.e.infos_elem(x)
        n = g.op("Cast", g.op("Size", x_hat), to=elem)
        n = g.op("Div", n, g.op("Cast", g.op("Size", inv_std), to=elem))
        go_mean, go_inv_std = (g.op("Cast", go_k, to=elem) if go_k else None  # stash type
                               for go_k in (g.GO(1), g.GO(2)))  # fmt: skip
        if go_mean is not None:
            parts.append(g.op("Expand", g.op("Div", go_mean, n), g.op("Shape", x)))
        if go_inv_std is not None:
            r2 = g.op("Mul", inv_std, inv_std)
            parts.append(
                g.op("Neg", g.op("Div", g.op("Mul", g.op("Mul", go_inv_std, r2), x_hat), n))
            )
        gx = parts[0] if len(parts) == 1 else g.op("Sum", *parts)
    if go is not None and g.needs(1):
        gs = g.reduce_to(g.op("Mul", go, x_hat), 1)
    if go is not None and g.needs(2):
        gb = g.reduce_to(go, 2)
    return [gx, gs, gb]


@rule("RMSNormalization")
def RMSNormalization(g: NodeGrad):
    """y = scale x r, r = 1 / sqrt(mean(x^2) + eps) over axes axis..: with h = GO scale,
    dx = r (h - x_hat mean(h x_hat)), x_hat = x r; dscale = sum GO x_hat over the leading
    and broadcast axes. The statistics in the input's own precision."""
    x, scale, go = g.I(0), g.I(1), g.GO(0)
    rank = g.e.rank(x)
    if rank is None:
        raise NoGradient("RMSNormalization needs the input rank")
    axes = list(range(g.attr("axis", -1) % rank, rank))
    mean_sq = g.e.reduce("ReduceMean", g.op("Mul", x, x), axes)
    r = g.op("Reciprocal", g.op("Sqrt", g.op("Add", mean_sq, g.scalar(g.attr("epsilon", 1e-5), x))))
    x_hat = g.op("Mul", x, r)
    gx = gs = None
    if g.needs(0):
        h = g.op("Mul", go, scale)
        along = g.op("Mul", x_hat, g.e.reduce("ReduceMean", g.op("Mul", h, x_hat), axes))
        gx = g.op("Mul", g.op("Sub", h, along), r)
    if g.needs(1):
        gs = g.reduce_to(g.op("Mul", go, x_hat), 1)
    return [gx, gs]


@rule("Attention")
def Attention(g: NodeGrad):
    """Y = P V per head, P = softmax(scale Q K^T + mask) (causal: masked above the diagonal),
    each K/V head shared by q_num_heads / kv_num_heads query heads. P is the node's own
    output 3 (optimize.prepare asks for it), so the reverse uses ONNX Runtime's P exactly:
    dV = P^T dY, dP = dY V^T, dS = P (dP - rowsum(dP P)), dQ = scale dS K,
    dK = scale dS^T Q, dmask = dS; K and V gradients summed over their query heads. 3-D
    inputs [B, S, heads x size] are viewed as [B, heads, S, size]. A softcap c caps the
    scores before the mask (ONNX Runtime and the spec's reference alike): c tanh(s / c), so
    past dmask, dS takes the factor 1 - tanh^2(s / c), with s = scale Q K^T computed again. Not
    followed: past key/value, nonpad_kv_seqlen, gradients of outputs 1-3."""
    if any(g.GO(k) is not None for k in (1, 2, 3)):
        raise NoGradient("Attention with its present key/value or qk output on the path")
    if any(g.I(k) for k in (4, 5, 6)):
        raise NoGradient("Attention with past key/value or nonpad_kv_seqlen")
    probs = g.O(3)
    if not probs or g.attr("qk_matmul_output_mode", 0) != 3:
        raise NoGradient("Attention whose softmax output is not exposed")
    q, k, v, go = g.I(0), g.I(1), g.I(2), g.GO(0)
    q_shape, k_shape = g.e.static_shape(q), g.e.static_shape(k)
    if q_shape is None or k_shape is None or len(q_shape) not in (3, 4):
        raise NoGradient("Attention needs the rank of Q and K")
    if len(q_shape) == 3:
        hq, hkv = g.attr("q_num_heads", 0), g.attr("kv_num_heads", 0)
        width = q_shape[-1]
        if not (hq and hkv and isinstance(width, int)):
            raise NoGradient("3-D Attention needs q_num_heads, kv_num_heads and a static width")
        size = width // hq
        q4, k4, v4, go4 = (_heads(g, t, h) for t, h in ((q, hq), (k, hkv), (v, hkv), (go, hq)))
    else:
        hq, hkv, size = q_shape[1], k_shape[1], q_shape[-1]
        if not all(isinstance(d, int) for d in (hq, hkv, size)):
            raise NoGradient("Attention needs static head counts and head size")
        q4, k4, v4, go4 = q, k, v, go
    group = hq // hkv
    scale = g.attr("scale", None) or 1.0 / math.sqrt(size)
    k_all, v_all = _repeat_heads(g, k4, group), _repeat_heads(g, v4, group)
    last_two = [0, 1, 3, 2]
    d_probs = g.op("MatMul", go4, g.op("Transpose", v_all, perm=last_two))
    dot = g.e.reduce("ReduceSum", g.op("Mul", d_probs, probs), [-1])
    d_scores = d_biased = g.op("Mul", probs, g.op("Sub", d_probs, dot))
    softcap = g.attr("softcap", 0.0)
    if softcap > 0:  # (a negative one is ignored, by ONNX Runtime and the reference alike)
        scores = g.op("MatMul", q4, g.op("Transpose", k_all, perm=last_two))
        capped = g.op("Tanh", g.op("Mul", scores, g.scalar(scale / softcap, q)))
        slope = g.op("Sub", g.scalar(1.0, q), g.op("Mul", capped, capped))
        d_scores = g.op("Mul", d_scores, slope)
    grads: list[str | None] = [None] * 7
    if g.needs(0):
        dq = g.op("Mul", g.op("MatMul", d_scores, k_all), g.scalar(scale, q))
        grads[0] = _merge_heads(g, dq, q) if len(q_shape) == 3 else dq
    if g.needs(1):
        dk = g.op("MatMul", g.op("Transpose", d_scores, perm=last_two), q4)
        dk = _sum_groups(g, g.op("Mul", dk, g.scalar(scale, q)), hkv, group)
        grads[1] = _merge_heads(g, dk, k) if len(q_shape) == 3 else dk
    if g.needs(2):
        dv = _sum_groups(
            g, g.op("MatMul", g.op("Transpose", probs, perm=last_two), go4), hkv, group
        )
        grads[2] = _merge_heads(g, dv, v) if len(q_shape) == 3 else dv
    if g.needs(3):
        g.e.set_info(d_biased, probs)
        grads[3] = g.e.reduce_to_shape_of(d_biased, g.I(3))
    return grads


@rule("RotaryEmbedding")
def RotaryEmbedding(g: NodeGrad):
    """Each rotated pair (x1, x2) becomes (x1 cos - x2 sin, x1 sin + x2 cos): a rotation,
    whose transpose turns the other way. So dx is the same node applied to GO with the sine
    negated; the dims past rotary_embedding_dim pass through both ways. The caches are not
    followed (they are constants in exported models)."""
    if g.needs(1) or g.needs(2):
        raise NoGradient("RotaryEmbedding with its cos/sin cache on the path")
    ins = [g.GO(0), g.I(1), g.op("Neg", g.I(2))]
    if g.I(3):
        ins.append(g.I(3))
    return [g.op("RotaryEmbedding", *ins, **g.attrs)]


def _heads(g: NodeGrad, t: str, heads: int) -> str:
    """[B, S, heads x size] -> [B, heads, S, size]."""
    split = _reshape(g, t, [0, 0, heads, -1])
    return g.op("Transpose", split, perm=[0, 2, 1, 3])


def _merge_heads(g: NodeGrad, t: str, like: str) -> str:
    """[B, heads, S, size] -> [B, S, heads x size], shaped like `like`."""
    return g.op("Reshape", g.op("Transpose", t, perm=[0, 2, 1, 3]), g.op("Shape", like))


def _repeat_heads(g: NodeGrad, t: str, group: int) -> str:
    """[B, Hkv, L, d] -> [B, Hkv group, L, d], each KV head serving `group` query heads in a
    row (query head h reads KV head h // group)."""
    if group == 1:
        return t
    wide = g.op("Expand", g.e.unsqueeze(t, [2]), g.e.ints([1, 1, group, 1, 1]))
    return _heads_as(g, wide, [-1], 3)


def _sum_groups(g: NodeGrad, t: str, hkv: int, group: int) -> str:
    """[B, Hkv group, L, d] -> [B, Hkv, L, d]: the query heads' shares of each KV head."""
    if group == 1:
        return t
    return g.e.reduce("ReduceSum", _heads_as(g, t, [hkv, group], 2), [2], keepdims=False)


def _heads_as(g: NodeGrad, t: str, heads: list[int], rest: int) -> str:
    """t reshaped to [B, *heads, L, d], B its first dim and L, d its dims from `rest` on."""
    shape = g.op("Shape", t)
    first, tail = g.e.slice(shape, [0], [1], [0]), g.e.slice(shape, [rest], [rest + 2], [0])
    return g.op("Reshape", t, g.op("Concat", first, g.e.ints(heads), tail, axis=0))


@rule("MeanVarianceNormalization")
def MeanVarianceNormalization(g: NodeGrad):
    """y = (x - mean) / sqrt(mean((x - mean)^2)), statistics over `axes` (default [0, 2, 3];
    out-of-range axes dropped, as ONNX Runtime does; its deviation has no epsilon, the ONNX
    function's 1e-9 is below float precision there). y is x standardized, so dx = r (GO -
    mean(GO) - y mean(GO y)) with r = 1 / deviation; ONNX Runtime's normalize_variance=0
    (centring only) gives GO - mean(GO)."""
    x, go = g.I(0), g.GO(0)
    rank = g.e.rank(x)
    if rank is None:
        raise NoGradient("MeanVarianceNormalization needs the input rank")
    axes = sorted({a % rank for a in g.attr("axes", [0, 2, 3]) if -rank <= a < rank})
    if g.attr("normalize_variance", 1) == 0:
        return [g.op("Sub", go, g.e.reduce("ReduceMean", go, axes))]
    centred = g.op("Sub", x, g.e.reduce("ReduceMean", x, axes))
    var = g.e.reduce("ReduceMean", g.op("Mul", centred, centred), axes)
    inv_std = g.op("Reciprocal", g.op("Sqrt", var))
    return [_normalized_grad(g, go, g.O(0), inv_std, axes)]


@rule("LpNormalization")
def LpNormalization(g: NodeGrad):
    """y = x / ||x||_p along `axis`, p 1 or 2: dx = (GO - d sum(GO y)) / ||x||_p with d = y
    for p = 2 and sign(x) for p = 1. A zero vector gives zeros in ONNX Runtime and has no
    derivative (y jumps there): its gradient is 0."""
    p = g.attr("p", 2)
    if p not in (1, 2):
        raise NoGradient(f"LpNormalization with p={p}")
    x, y, go = g.I(0), g.O(0), g.GO(0)
    axis = [g.attr("axis", -1)]
    norm = g.e.reduce("ReduceL2" if p == 2 else "ReduceL1", x, axis)
    along = g.op(
        "Mul", y if p == 2 else g.op("Sign", x), g.e.reduce("ReduceSum", g.op("Mul", go, y), axis)
    )
    inv = g.op("Where", g.op("Greater", norm, g.scalar(0.0, x)), g.op("Reciprocal", norm),
               g.scalar(0.0, x))  # fmt: skip
    return [g.op("Mul", g.op("Sub", go, along), inv)]


@rule("GroupNormalization")
def GroupNormalization(g: NodeGrad):
    """x viewed as [N, G, C/G, rest] is standardized over each (n, group) block: x_hat =
    (x - mean) r, r = 1/sqrt(var + eps); y = scale x_hat + bias, scale and bias per channel
    (opset 21) or per group (18). dx = r (h - mean(h) - x_hat mean(h x_hat)) with h =
    GO scale; dscale = sum GO x_hat, dbias = sum GO, over batch and space (and, per group,
    over the group's channels). The statistics are taken in the input's own precision
    (stash_type only names the forward's)."""
    x, go = g.I(0), g.GO(0)
    shape = g.e.static_shape(x)
    channels = shape[1] if shape is not None and len(shape) >= 2 else None
    if not isinstance(channels, int):
        raise NoGradient("GroupNormalization needs a static channel count")
    groups = g.attr("num_groups")
    per_channel = g.opset >= 21
    view = [0, groups, channels // groups, -1]  # [N, G, C/G, rest]

    def param(v: str) -> str:
        """scale or bias shaped to broadcast over the [N, G, C/G, rest] view."""
        return _reshape(g, v, [groups, channels // groups, 1] if per_channel else [groups, 1, 1])

    blocks = _reshape(g, x, view)
    g.e.infos[blocks] = TensorInfo(g.e.infos_elem(x), None)  # epsilon's type
    x_hat, inv_std = _standardize(g, blocks, [2, 3], g.attr("epsilon", 1e-5))
    go4 = _reshape(g, go, view)
    summed = [0, 3] if per_channel else [0, 2, 3]
    flat = [channels] if per_channel else [groups]
    gx = gs = gb = None
    if g.needs(0):
        h = g.op("Mul", go4, param(g.I(1)))
        gx = g.op("Reshape", _normalized_grad(g, h, x_hat, inv_std, [2, 3]), g.op("Shape", x))
    if g.needs(1):
        gs = _reshape(g, g.e.reduce_sum(g.op("Mul", go4, x_hat), summed, False), flat)
    if g.needs(2):
        gb = _reshape(g, g.e.reduce_sum(go4, summed, False), flat)
    return [gx, gs, gb]


def _standardized_by_layer_norm(g: NodeGrad, x: str, axes: list[int]) -> tuple[str, str]:
    """x_hat and inv_std for LayerNormalization's gradient from a second LayerNormalization
    with unit scale, which returns both (outputs 0 and 2) in one fused pass, where
    `_standardize` takes eight ops and three passes over x (a quarter of a ViT's reverse
    pass is its LayerNorms). float32 only: its statistics are computed in float32 (the
    default stash_type), which would cost float64 graphs their precision (the reference
    evaluator has no other stash_type) and float16 graphs their types."""
    elem = g.e.infos_elem(x)
    if elem != TensorProto.FLOAT:
        return _standardize(g, x, axes, g.attr("epsilon", 1e-5))
    shape = g.e.static_shape(x)
    dims = shape[axes[0] :] if shape is not None else None
    if dims is not None and all(isinstance(d, int) for d in dims):
        ones = g.e.const(np.ones(dims), g.e.np_dtype(x))
    else:
        one = helper.make_tensor("one", elem, [1], [1])
        tail = g.e.slice(g.op("Shape", x), [axes[0]], [INT64_MAX], [0])
        ones = g.op("ConstantOfShape", tail, value=one)
    x_hat, _, inv_std = g.e.op_multi(
        "LayerNormalization", [x, ones], 3, axis=axes[0], epsilon=g.attr("epsilon", 1e-5)
    )
    for name in (x_hat, inv_std):
        g.e.infos[name] = TensorInfo(elem, None)
    return x_hat, inv_std


def _channel_window_sum(g: NodeGrad, x: str, size: int, before: int, after: int) -> str:
    """s[c] = sum of x[c - before .. c + after] over channels (zero outside), any rank."""
    channels = _shape(g, g.I(0))[1]
    planes = _reshape(g, x, [0, 1, channels, -1])  # [N, 1, C, rest]
    ones = g.e.const(np.ones([1, 1, size, 1]), g.e.np_dtype(g.I(0)))
    summed = g.op("Conv", planes, ones, pads=[before, 0, after, 0])
    return g.op("Reshape", summed, g.op("Shape", x))


@rule("LRN")
def LRN(g: NodeGrad):
    """y[c] = x[c] D[c]^-beta, D[c] = bias + alpha/size * sum of x^2 over channels
    c - (size-1)//2 .. c + ceil((size-1)/2): dx[c'] = GO[c'] D[c']^-beta -
    2 alpha beta / size * x[c'] * sum over windows c holding c' of GO[c] x[c] D[c]^(-beta-1)."""
    x, go = g.I(0), g.GO(0)
    size, alpha, beta = g.attr("size"), g.attr("alpha", 1e-4), g.attr("beta", 0.75)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = _channel_window_sum(g, g.op("Mul", x, x), size, lo, hi)
    d = g.op("Add", g.scalar(g.attr("bias", 1.0)), g.op("Mul", sq, g.scalar(alpha / size)))
    d_pow = g.op("Pow", d, g.scalar(-beta))
    inner = g.op("Div", g.op("Mul", g.op("Mul", go, x), d_pow), d)
    spread = _channel_window_sum(g, inner, size, hi, lo)
    cross = g.op("Mul", g.op("Mul", x, spread), g.scalar(2.0 * alpha * beta / size))
    return [g.op("Sub", g.op("Mul", go, d_pow), cross)]


@rule("Col2Im")
def Col2Im(g: NodeGrad):
    """Blocks [N, C*K, L] summed into an image [N, C, *image]: each input value lands on one
    pixel (or in the padding), so dx takes the pixel's gradient back, block by block. That
    is an im2col of GO, which is a Conv with one one-hot kernel per block tap, C groups of K
    (the order of Col2Im's channels: c major, then the tap in row-major order)."""
    if not g.needs(0):
        return [None, None, None]
    block = g.const_input(2)
    rows = _shape(g, g.I(0))
    if block is None:
        raise NoGradient("Col2Im with a block_shape computed at run time")
    taps = int(np.prod(block))
    if rows[1] % taps:
        raise NoGradient("Col2Im whose channels are not a multiple of the block size")
    channels = rows[1] // taps
    dims = [int(b) for b in block]
    kernel = np.zeros((channels * taps, 1, *dims))
    for c, k in itertools.product(range(channels), range(taps)):
        kernel[(c * taps + k, 0, *np.unravel_index(k, dims))] = 1.0
    n = len(dims)
    pads = list(g.attr("pads", None) or [0] * 2 * n)
    unfolded = g.op(
        "Conv", g.GO(0), g.e.const(kernel, g.e.np_dtype(g.I(0))), group=channels,
        strides=list(g.attr("strides", None) or [1] * n), pads=pads,
        dilations=list(g.attr("dilations", None) or [1] * n),
    )  # fmt: skip
    return [g.op("Reshape", unfolded, g.e.ints([0, 0, -1])), None, None]
