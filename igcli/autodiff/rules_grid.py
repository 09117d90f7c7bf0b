"""Gradient rules for GridSample, sampling an image at the points of a grid, and AffineGrid,
which makes such a grid from an affine transform (together, a spatial transformer).

y[n, c, p] reads X[n, c] at the point grid[n, p] (x, then y, in [-1, 1]): bilinearly from the
four pixels around it, or the nearest one. The gradient reaches X by adding each output's GO
into the pixels it read, with the same weights (a ScatterND with reduction add), and reaches
the grid through the slope of the interpolation between those pixels (zero for nearest).
"""

from __future__ import annotations

import itertools

import numpy as np
from onnx import numpy_helper

from igcli.autodiff.builder import NodeGrad
from igcli.autodiff.registry import NoGradient, rule


def _coordinate(g: NodeGrad, normal: str, size: int, corners: bool, padding: str):
    """Pixel coordinate of a normalised one, after the padding mode's clamp or reflection, and
    its derivative. Points outside [lo, hi] (the pixel centres with align_corners, else the
    image's edges) are clamped to the centres (border) or reflected at lo and hi until inside
    (reflection); zeros leaves them, and their pixels read 0."""
    scale = (size - 1) / 2.0 if corners else size / 2.0
    offset = (size - 1) / 2.0
    pixel = g.op("Add", g.op("Mul", normal, g.scalar(scale)), g.scalar(offset))
    slope = g.op("Add", g.op("Mul", normal, g.scalar(0.0)), g.scalar(scale))  # shaped
    if padding == "zeros":
        return pixel, slope
    lo, hi = (0.0, size - 1.0) if corners else (-0.5, size - 0.5)
    below = g.op("Less", pixel, g.scalar(lo))
    above = g.op("Greater", pixel, g.scalar(hi))
    outside = g.op("Or", below, above)
    zero = g.scalar(0.0)
    if padding == "border":
        clamped = g.op("Clip", pixel, g.scalar(0.0), g.scalar(size - 1.0))
        return g.op("Where", outside, clamped, pixel), g.op("Where", outside, zero, slope)
    span = hi - lo
    if span <= 0:
        raise NoGradient("GridSample reflection on a one-pixel axis")
    dist = g.op("Where", below, g.op("Sub", g.scalar(lo), pixel),
                g.op("Where", above, g.op("Sub", pixel, g.scalar(hi)), zero))  # fmt: skip
    turns = g.op("Floor", g.op("Div", dist, g.scalar(span)))
    rest = g.op("Sub", dist, g.op("Mul", turns, g.scalar(span)))
    half = g.op("Floor", g.op("Mul", turns, g.scalar(0.5)))
    odd = g.op("Greater", g.op("Sub", turns, g.op("Mul", half, g.scalar(2.0))), zero)
    from_lo = g.op("Xor", below, odd)  # lo + rest (else hi - rest)
    reflected = g.op("Where", from_lo, g.op("Add", g.scalar(lo), rest),
                     g.op("Sub", g.scalar(hi), rest))  # fmt: skip
    # d(lo + rest)/d pixel is -1 below, +1 above; d(hi - rest) the opposite
    sign = g.op("Where", g.op("Xor", from_lo, below), g.scalar(1.0), g.scalar(-1.0))
    return (g.op("Where", outside, reflected, pixel),
            g.op("Where", outside, g.op("Mul", sign, slope), slope))  # fmt: skip


def _tap(g: NodeGrad, index: str, size: int, padding: str) -> tuple[str, str | None]:
    """A pixel index (float) as an int64 index inside the image, and for zeros padding a 0/1
    mask of whether it was inside (outside pixels read 0)."""
    inside = None
    if padding == "zeros":
        ok = g.op("And", g.op("Not", g.op("Less", index, g.scalar(0.0))),
                  g.op("Not", g.op("Greater", index, g.scalar(size - 1.0))))  # fmt: skip
        inside = g.op("Cast", ok, to=g.e.infos_elem(g.I(0)))
    clamped = g.op("Clip", index, g.scalar(0.0), g.scalar(size - 1.0))
    return g.op("Cast", clamped, to=7), inside


@rule("GridSample")
def GridSample(g: NodeGrad):
    """y[n, c, p] = sum over the taps t around grid[n, p] of w_t X[n, c, t] (w: bilinear, or
    trilinear for a volume, weights, or 1 at the nearest pixel): dX[n, c, t] += w_t GO[n, c,
    p]; dgrid[n, p, k] = sum over c of GO[n, c, p] dy/d(coordinate k) times d(coordinate
    k)/d(grid k), the first from the taps' values, the second from the padding mode
    (_coordinate). 2-D images and 3-D volumes (GridSample-20, [N, C, D, H, W]); no bicubic,
    and no nearest with reflection (its rounding and reflection do not commute)."""
    x, grid, go = g.I(0), g.I(1), g.GO(0)
    mode = g.attr("mode", "linear" if g.opset >= 20 else "bilinear")
    padding, corners = g.attr("padding_mode", "zeros"), bool(g.attr("align_corners", 0))
    shape = g.e.static_shape(x)
    if shape is None or len(shape) not in (4, 5):
        raise NoGradient("GridSample needs static shapes (a 4-D image or a 5-D volume)")
    if not all(isinstance(d, int) for d in shape[1:]):
        raise NoGradient("GridSample needs static shapes (the image's channels and size)")
    if mode not in ("linear", "bilinear", "nearest"):
        raise NoGradient(f"GridSample mode {mode}")
    if mode == "nearest" and padding == "reflection":
        raise NoGradient("GridSample nearest with reflection padding")
    channels, spatial = shape[1], shape[2:]  # (H, W) or (D, H, W)
    nd = len(spatial)
    # grid [N, ..., nd] -> coordinates [N, P, 1] each; the grid's k-th is the (nd-1-k)-th axis
    flat = g.op("Reshape", grid, g.e.ints([0, -1, nd]))
    normals = [g.e.slice(flat, [k], [k + 1], [2]) for k in range(nd)]
    coords = [_coordinate(g, normals[k], spatial[nd - 1 - k], corners, padding)
              for k in range(nd)]  # fmt: skip
    zero, one = g.scalar(0.0), g.scalar(1.0)
    if mode == "nearest":  # Round: half to even, as the runtimes round
        corners_of = [[(g.op("Round", p), None)] for p, _ in coords]
    else:
        corners_of = []
        for p, _ in coords:
            lo = g.op("Floor", p)
            w_hi = g.op("Sub", p, lo)
            corners_of.append([(lo, g.op("Sub", one, w_hi)), (g.op("Add", lo, one), w_hi)])
    strides = [int(np.prod(spatial[a + 1 :])) for a in range(nd)]  # along D, H, W
    # each tap: which corner per grid coordinate, its flat index, inside mask and weight
    taps, indices, masks, weights = [], [], [], []
    for pick in itertools.product(*(range(len(c)) for c in corners_of)):
        index, mask, weight = None, None, None
        for k, b in enumerate(pick):
            at, w = corners_of[k][b]
            i, m = _tap(g, at, spatial[nd - 1 - k], padding)
            part = g.op("Mul", i, g.e.ints([strides[nd - 1 - k]]))
            index = part if index is None else g.op("Add", index, part)
            mask = m if mask is None else (mask if m is None else g.op("Mul", mask, m))
            if w is not None:
                weight = w if weight is None else g.op("Mul", weight, w)
        taps.append(pick)
        indices.append(index)
        masks.append(mask)
        if weight is None:  # nearest: weight 1 (or the mask)
            weights.append(
                mask if mask is not None else g.op("Add", g.op("Mul", normals[0], zero), one)
            )
        else:
            weights.append(weight if mask is None else g.op("Mul", weight, mask))
    go_rows = _rows(g, go, channels)
    grads: list[str | None] = [None, None]
    if g.needs(0):
        size = int(np.prod(spatial))
        grads[0] = _scatter_to_image(g, go_rows, indices, weights, [size, channels])
    if g.needs(1):
        if mode == "nearest":  # piecewise constant in the grid
            grads[1] = g.op("Mul", grid, zero)
        else:
            image = _rows(g, x, channels)  # (only the grid's gradient reads the pixels)
            values = []
            for idx, mask in zip(indices, masks, strict=True):
                v = g.op("GatherND", image, idx, batch_dims=1)  # [N, P, C]
                values.append(v if mask is None else g.op("Mul", v, mask))
            value_at = dict(zip(taps, values, strict=True))
            parts = []
            for k in range(nd):  # dy/dp_k: over the other coordinates' corners, their weight
                along = None  # times (value at the high corner on k - value at the low one)
                others = [j for j in range(nd) if j != k]
                for rest in itertools.product((0, 1), repeat=nd - 1):
                    hi, lo = ([*rest[:k], b, *rest[k:]] for b in (1, 0))
                    term = g.op("Sub", value_at[tuple(hi)], value_at[tuple(lo)])
                    for j, b in zip(others, rest, strict=True):
                        term = g.op("Mul", corners_of[j][b][1], term)
                    along = term if along is None else g.op("Add", along, term)
                parts.append(g.op("Mul", g.e.reduce_sum(g.op("Mul", go_rows, along), [2]),
                                  coords[k][1]))  # fmt: skip
            grads[1] = g.op("Reshape", g.op("Concat", *parts, axis=2), g.op("Shape", grid))
    return grads


def _rows(g: NodeGrad, t: str, channels: int) -> str:
    """[N, C, ...] -> [N, positions, C]: a pixel's channels in a row, for GatherND/ScatterND."""
    return g.op("Transpose", g.op("Reshape", t, g.e.ints([0, channels, -1])), perm=[0, 2, 1])


def _scatter_to_image(g: NodeGrad, go_rows: str, indices, weights, rows: list[int]) -> str:
    """dX: each tap adds weight * GO's row into its pixel's row of [N, H*W, C] (`rows`:
    [H*W, C]), then back to X's shape."""
    n_index = _batch_index(g, indices[0])
    at = [g.op("Concat", n_index, idx, axis=2) for idx in indices]
    updates = [g.op("Mul", go_rows, w) for w in weights]
    where = at[0] if len(at) == 1 else g.op("Concat", *at, axis=1)
    what = updates[0] if len(updates) == 1 else g.op("Concat", *updates, axis=1)
    summed = g.e.scatter_nd_add(_zero_rows(g, g.I(0), rows), where, what, like=g.I(0))
    return _unrows(g, summed, g.I(0))


def _zero_rows(g: NodeGrad, x: str, rows: list[int]) -> str:
    """Zeros [N, H*W, C] in x's type and batch (`rows`: [H*W, C]): what dX adds into."""
    zero = numpy_helper.from_array(np.zeros(1, dtype=g.e.np_dtype(x)))
    batch = g.op("Gather", g.op("Shape", x), g.e.ints([0]))
    return g.op("ConstantOfShape", g.op("Concat", batch, g.e.ints(rows), axis=0), value=zero)


def _unrows(g: NodeGrad, t: str, x: str) -> str:
    """[N, positions, C] back to x's [N, C, ...]: the inverse of _rows."""
    return g.op("Reshape", g.op("Transpose", t, perm=[0, 2, 1]), g.op("Shape", x))


def _batch_index(g: NodeGrad, like: str) -> str:
    """[N, P, 1] holding n at [n, p]: the batch half of ScatterND's (n, pixel) indices."""
    shape = g.op("Shape", like)
    n = g.op("Gather", shape, g.e.ints([0]))
    ns = g.op("Range", g.e.const(np.array(0, np.int64)), g.op("Squeeze", n, g.e.ints([0])),
              g.e.const(np.array(1, np.int64)))  # fmt: skip
    return g.op("Expand", g.op("Reshape", ns, g.e.ints([-1, 1, 1])), shape)


@rule("AffineGrid")
def AffineGrid(g: NodeGrad):
    """grid[n, p] = theta[n] b[p], b[p] = (x, y[, z], 1) the p-th point of the base grid:
    dtheta[n] = sum over p of GO[n, p] b[p]^T. b is AffineGrid itself applied to the identity
    (its coordinates: the same align_corners, one batch), with a column of ones; the size
    gets none."""
    theta, size = g.I(0), g.I(1)
    shape = g.e.static_shape(theta)
    if shape is None or len(shape) != 3 or shape[1] not in (2, 3):
        raise NoGradient("AffineGrid needs static shapes (theta's rank and dims)")
    dims = shape[1]
    identity = np.eye(dims, dims + 1)[None]
    one_image = g.op("Concat", g.e.ints([1]), g.e.slice(size, [1], [2 + dims], [0]), axis=0)
    base = g.op("AffineGrid", g.e.const(identity, g.e.np_dtype(theta)), one_image,
                align_corners=g.attr("align_corners", 0))  # fmt: skip
    points = g.op("Reshape", base, g.e.ints([1, -1, dims]))  # [1, P, dims]
    ones = g.op("Add", g.op("Mul", g.e.slice(points, [0], [1], [2]), g.scalar(0.0, theta)),
                g.scalar(1.0, theta))  # fmt: skip
    homogeneous = g.op("Concat", points, ones, axis=2)  # [1, P, dims + 1]
    go = g.op("Reshape", g.GO(0), g.e.ints([0, -1, dims]))  # [N, P, dims]
    return [g.op("MatMul", g.op("Transpose", go, perm=[0, 2, 1]), homogeneous), None]


def _roi_axis(g: NodeGrad, start, end, legacy: bool, out: int, ratio: int, size: int):
    """One axis of RoiAlign's samples, [R, out, G] (G: `ratio`, or the largest adaptive grid
    among the rois): the int64 indices and bilinear weights of the low and high pixel, each
    weight divided by the roi's grid (so the product over the two axes averages), the slope
    of the low->high value change (d weight_high / d coordinate, over the grid), and how the
    coordinate moves with the roi's start and end."""
    one, zero = g.scalar(1.0), g.scalar(0.0)
    extent = g.op("Sub", end, start)  # [R]
    unclamped = one
    if legacy:  # a malformed roi is taken as one pixel wide
        unclamped = g.op("Cast", g.op("Greater", extent, one), to=g.e.infos_elem(g.I(0)))
        extent = g.op("Max", extent, one)
    step = g.op("Div", extent, g.scalar(float(out)))  # a bin's side
    if ratio > 0:
        grid = g.op("Add", g.op("Mul", extent, zero), g.scalar(float(ratio)))
        taps = g.e.const(np.arange(ratio, dtype=g.e.np_dtype(g.I(0))))
    else:  # adaptive: ceil(extent / out) samples a bin, up to the most any roi takes
        grid = g.op("Ceil", step)
        most = g.op("ReduceMax", g.op("Concat", grid, g.e.const(np.ones(1, g.e.np_dtype(g.I(0)))),
                                      axis=0), keepdims=0)  # fmt: skip
        taps = g.op("Range", zero, most, one)
    grid3 = g.e.unsqueeze(grid, [1, 2])  # [R, 1, 1]
    bins = g.e.const(np.arange(out, dtype=g.e.np_dtype(g.I(0))).reshape(1, out, 1))
    taps3 = g.e.unsqueeze(taps, [0, 1])  # [1, 1, G]
    used = g.op("Max", grid3, one)
    frac = g.op("Div", g.op("Add", bins, g.op("Div", g.op("Add", taps3, g.scalar(0.5)), used)),
                g.scalar(float(out)))  # (p + (s + 0.5) / grid) / out, [R, out, G]  # fmt: skip
    v = g.op("Add", g.e.unsqueeze(start, [1, 2]), g.op("Mul", frac, g.e.unsqueeze(extent, [1, 2])))
    inside = g.op("And", g.op("Less", taps3, grid3),
                  g.op("Not", g.op("Or", g.op("Less", v, g.scalar(-1.0)),
                                   g.op("Greater", v, g.scalar(float(size))))))  # fmt: skip
    kept = g.op("Div", g.op("Cast", inside, to=g.e.infos_elem(g.I(0))), used)
    v = g.op("Max", v, zero)
    low = g.op("Floor", v)
    edge = g.op("Not", g.op("Less", low, g.scalar(size - 1.0)))  # from the last pixel on
    last = g.scalar(size - 1.0)
    low = g.op("Where", edge, last, low)
    high = g.op("Where", edge, last, g.op("Add", low, one))
    w_high = g.op("Where", edge, zero, g.op("Sub", v, low))
    w_low = g.op("Sub", one, w_high)
    moves = g.op("Not", g.op("Or", edge, g.op("Not", g.op("Greater", v, zero))))
    slope = g.op("Mul", kept, g.op("Cast", moves, to=g.e.infos_elem(g.I(0))))
    by_end = g.op("Mul", frac, g.e.unsqueeze(unclamped, [1, 2]) if legacy else unclamped)
    by_start = g.op("Sub", one, by_end)
    as_index = [g.op("Cast", t, to=7) for t in (low, high)]
    return as_index, [g.op("Mul", w, kept) for w in (w_low, w_high)], slope, by_start, by_end


@rule("RoiAlign")
def RoiAlign(g: NodeGrad):
    """y[r, c, ph, pw] averages, over a grid of points in bin (ph, pw) of roi r, the bilinear
    read of X[b_r, c] at each point: linear in X, so dX adds GO times each point's weights
    into the four pixels it read (a ScatterND with reduction add, a corner at a time). The
    points move with the roi's corners (y = start + (p + (s + 0.5) / grid) * extent / out),
    so d rois = sum over points of GO times the read's slope along each axis (the weights'
    other factor times the high pixel minus the low one) times d point / d corner. The grid
    (`sampling_ratio`, or ceil(extent / out) per roi), points outside [-1, size] (read as 0)
    and the clamps at the image's edges are steps: no gradient. Average mode only (max mode's
    kernel takes the largest weighted corner, not a read), from opset 16."""
    x, rois, go = g.I(0), g.I(1), g.GO(0)
    if g.attr("mode", "avg") != "avg":
        raise NoGradient("max mode")
    if g.opset < 16:
        raise NoGradient("below opset 16, where ScatterND cannot add")
    shape = g.e.static_shape(x)
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise NoGradient("an image of unknown channels or size")
    channels, height, width = shape[1:]
    out_h, out_w = g.attr("output_height", 1), g.attr("output_width", 1)
    ratio, scale = g.attr("sampling_ratio", 0), g.attr("spatial_scale", 1.0)
    legacy = g.attr("coordinate_transformation_mode", "half_pixel" if g.opset >= 16 else
                    "output_half_pixel") == "output_half_pixel"  # fmt: skip
    corners = g.op("Mul", rois, g.scalar(scale))
    if not legacy:
        corners = g.op("Sub", corners, g.scalar(0.5))
    x1, y1, x2, y2 = (g.e.squeeze(g.e.slice(corners, [k], [k + 1], [1]), [1]) for k in range(4))
    ys = _roi_axis(g, y1, y2, legacy, out_h, ratio, height)
    xs = _roi_axis(g, x1, x2, legacy, out_w, ratio, width)

    def along_y(t):  # [R, out_h, Gy] -> [R, out_h, Gy, 1, 1]
        return g.e.unsqueeze(t, [3, 4])

    def along_x(t):  # [R, out_w, Gx] -> [R, 1, 1, out_w, Gx]
        return g.e.unsqueeze(t, [1, 2])

    # GO as rows of channels at each point: [R, out_h, 1, out_w, 1, C]
    go_rows = g.e.unsqueeze(g.op("Transpose", go, perm=[0, 2, 3, 1]), [2, 4])
    batch = g.op("Reshape", g.op("Cast", g.I(2), to=7), g.e.ints([-1, 1, 1, 1, 1]))
    image = _rows(g, x, channels) if g.needs(1) else None  # [N, H*W, C]
    summed = _zero_rows(g, x, [height * width, channels]) if g.needs(0) else None
    parts: list[str | None] = [None] * 4  # d x1, y1, x2, y2 of each roi

    def points(ys, xs) -> None:
        """The reverse of one block of sample points: [R, out_h, Gy] by [R, out_w, Gx]."""
        nonlocal summed
        where = {}  # (y corner, x corner) -> [R, out_h, Gy, out_w, Gx, 2] (n, flat pixel)
        for a, b in itertools.product((0, 1), (0, 1)):
            flat = g.op("Add", along_y(g.op("Mul", ys[0][a], g.e.ints([width]))),
                        along_x(xs[0][b]))  # fmt: skip
            n = g.op("Expand", batch, g.op("Shape", flat))
            where[a, b] = g.op("Concat", g.e.unsqueeze(n, [5]), g.e.unsqueeze(flat, [5]), axis=5)
        if summed is not None:
            for (a, b), at in where.items():
                weight = g.op("Mul", along_y(ys[1][a]), along_x(xs[1][b]))
                update = g.op("Mul", go_rows, g.e.unsqueeze(weight, [5]))
                summed = g.e.scatter_nd_add(summed, at, update, like=x)
        if image is None:
            return
        read = {k: g.e.reduce_sum(g.op("Mul", go_rows, g.op("GatherND", image, at)), [5],
                                  keepdims=False) for k, at in where.items()}  # fmt: skip

        # dy/d(row), dy/d(column) of each point, times GO, over the channels: [R, oh, Gy, ow, Gx]
        def rise(weights, hi_lo):  # sum over the other axis' corners of w * (hi - lo)
            terms = [g.op("Mul", w, g.op("Sub", read[hi], read[lo]))
                     for w, (hi, lo) in zip(weights, hi_lo, strict=True)]  # fmt: skip
            return g.op("Add", *terms)

        rise_y = rise([along_x(w) for w in xs[1]], [((1, 0), (0, 0)), ((1, 1), (0, 1))])
        rise_x = rise([along_y(w) for w in ys[1]], [((0, 1), (0, 0)), ((1, 1), (1, 0))])
        d_y = g.op("Mul", rise_y, along_y(ys[2]))
        d_x = g.op("Mul", rise_x, along_x(xs[2]))
        moved = [g.op("Mul", d_x, along_x(xs[3])), g.op("Mul", d_y, along_y(ys[3])),
                 g.op("Mul", d_x, along_x(xs[4])), g.op("Mul", d_y, along_y(ys[4]))]  # fmt: skip
        for k, m in enumerate(moved):
            m = g.e.reduce_sum(m, [1, 2, 3, 4], keepdims=False)
            parts[k] = m if parts[k] is None else g.op("Add", parts[k], m)

    if ratio > 0:  # a fixed grid: a point of each bin at a time, a 1/ratio^2 of the memory

        def pick(axis, k):
            return ([g.e.slice(t, [k], [k + 1], [2]) for t in axis[0]],
                    [g.e.slice(t, [k], [k + 1], [2]) for t in axis[1]],
                    *(g.e.slice(t, [k], [k + 1], [2]) for t in axis[2:]))  # fmt: skip

        for iy, ix in itertools.product(range(ratio), range(ratio)):
            points(pick(ys, iy), pick(xs, ix))
    else:
        points(ys, xs)
    grads: list[str | None] = [None, None, None]
    if summed is not None:
        grads[0] = _unrows(g, summed, x)
    if image is not None:
        stacked = g.op("Concat", *(g.e.unsqueeze(p, [1]) for p in parts), axis=1)
        grads[1] = g.op("Mul", stacked, g.scalar(scale))
    return grads
