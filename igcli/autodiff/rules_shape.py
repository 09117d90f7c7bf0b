"""Gradient rules for layout and indexing ops: the gradient is moved, never scaled.

Each rule is named after its op; the docstring states the derivative it implements. Most
rules undo the forward move (reshape back, transpose back, slice the concatenation apart).
Ops that copy one input element to several places (Gather, Tile, Expand, Pad's edge modes,
Resize) add the copies back up. Resize is linear in its input and separable per axis: its
gradient contracts GO with each resized axis' interpolation matrix, found at build time by
resizing an identity matrix with onnx's reference evaluator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from igcli.autodiff.builder import NodeGrad
from igcli.autodiff.registry import NoGradient, rule

INT_MAX = np.iinfo(np.int64).max


# -- helpers -------------------------------------------------------------------------------
def _rank(g: NodeGrad, name: str) -> int:
    rank = g.e.rank(name)
    if rank is None:
        raise NoGradient(f"{g.node.op_type} of a tensor of unknown rank")
    return rank


def _shape_vector(g: NodeGrad, parts: Sequence[int | tuple[str, int]]) -> str:
    """A 1-D int64 shape from static ints and (tensor, axis) pairs read with Shape at runtime."""
    pieces, static = [], []
    for p in parts:
        if isinstance(p, tuple):
            if static:
                pieces.append(g.e.ints(static))
                static = []
            pieces.append(g.op("Gather", g.op("Shape", p[0]), g.e.ints([p[1]])))
        else:
            static.append(int(p))
    if static or not pieces:
        pieces.append(g.e.ints(static))
    return pieces[0] if len(pieces) == 1 else g.op("Concat", *pieces, axis=0)


def _dims(g: NodeGrad, name: str, axes: Sequence[int]) -> list[int | tuple[str, int]]:
    """Each listed dim of `name`: its static size, or (name, axis) to read it at runtime."""
    shape = g.e.static_shape(name) or []
    return [shape[a] if a < len(shape) and isinstance(shape[a], int) else (name, a) for a in axes]


def _zeros(g: NodeGrad, shape: str, like: str) -> str:
    """Zeros of a runtime shape, in the element type of `like`."""
    zero = numpy_helper.from_array(np.zeros(1, dtype=g.e.np_dtype(like)))
    return g.op("ConstantOfShape", shape, value=zero)


def _along_axis(g: NodeGrad, x: str, axis: int, rank: int, mat) -> str:
    """out[.., j, ..] = sum_i x[.., i, ..] * mat[i, j]: a matrix applied along one axis.

    `mat` is a numpy array (made a constant in the type of the node's input 0) or a tensor name.
    """
    dtype = g.e.np_dtype(g.I(0))
    if axis == rank - 2:  # [n_new, n_x] @ [.., n_x, w]: no transposes needed
        if isinstance(mat, np.ndarray):
            return g.op("MatMul", g.e.const(mat.T, dtype), x)
        return g.op("MatMul", g.op("Transpose", mat, perm=[1, 0]), x)
    if isinstance(mat, np.ndarray):
        mat = g.e.const(mat, dtype)
    if axis == rank - 1:
        return g.op("MatMul", x, mat)
    perm = [k for k in range(rank) if k != axis] + [axis]
    moved = g.op("MatMul", g.op("Transpose", x, perm=perm), mat)
    return g.op("Transpose", moved, perm=[int(k) for k in np.argsort(perm)])


def _scalar_int(g: NodeGrad, value: int) -> str:
    return g.e.const(np.asarray(value, dtype=np.int64))


def _ints_or_none(g: NodeGrad, k: int) -> list[int] | None:
    """Constant input k as a list of ints (None when absent or computed at runtime)."""
    value = g.const_input(k) if g.I(k) else None
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


# -- rules ---------------------------------------------------------------------------------
@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def Reshape(g: NodeGrad):
    """Only the shape changes (Reshape, Flatten, Squeeze, Unsqueeze): dx = GO reshaped back to
    the input's runtime shape, whatever the axes, the 0 and -1 entries or the opset. Where
    that shape is known but for a leading batch, it is a constant with -1 there: a Shape op
    per Reshape cost a ViT-S/16's gradient call 0.7 ms (206 of them) per row."""
    shape = g.e.static_shape(g.I(0))
    if shape and all(isinstance(d, int) and d > 0 for d in shape[1:]):
        return [g.op("Reshape", g.GO(0), g.e.ints([-1, *shape[1:]]))]
    return [g.op("Reshape", g.GO(0), g.op("Shape", g.I(0)))]


@rule("Transpose")
def Transpose(g: NodeGrad):
    """y = x.transpose(perm): dx = GO.transpose(argsort(perm)); perm defaults to reversed axes."""
    perm = g.attr("perm")
    if perm is None:
        perm = list(reversed(range(_rank(g, g.I(0)))))
    return [g.op("Transpose", g.GO(0), perm=[int(k) for k in np.argsort(perm)])]


@rule("Concat")
def Concat(g: NodeGrad):
    """y = concat(x_0, x_1, ...) along axis: dx_k = GO[.., o_k : o_k + n_k, ..], o_k = sum n_<k."""
    go = g.GO(0)
    rank = _rank(g, g.O(0))
    axis = g.attr("axis") % rank
    sizes = [(g.e.static_shape(x) or [None] * rank)[axis] for x in g.node.input]
    if all(isinstance(n, int) for n in sizes):
        offsets = np.cumsum([0, *sizes]).tolist()
        return [
            g.e.slice(go, [offsets[k]], [offsets[k + 1]], [axis]) if g.needs(k) else None
            for k in range(len(sizes))
        ]
    if g.opset < 10:
        raise NoGradient("Concat along a dynamic axis needs Slice with inputs (opset 10)")
    grads, start = [], g.e.ints([0])
    for k, x in enumerate(g.node.input):
        end = g.op("Add", start, _shape_vector(g, _dims(g, x, [axis])))
        grads.append(g.op("Slice", go, start, end, g.e.ints([axis])) if g.needs(k) else None)
        start = end
    return grads


@rule("Split")
def Split(g: NodeGrad):
    """Outputs are consecutive pieces of x: dx = concat(GO_0, GO_1, ...) along axis, with zeros
    for pieces that receive no gradient."""
    pieces = [g.GO(k) or g.e.zeros_like(g.O(k)) for k in range(len(g.node.output))]
    axis = g.attr("axis", 0)
    if axis < 0:
        axis += _rank(g, g.I(0))
    return [g.op("Concat", *pieces, axis=axis)]


def _slice_indices(start: int, end: int, step: int, n: int) -> list[int]:
    """The positions ONNX Slice selects along an axis of size n (its clamping rules)."""
    start, end = start + n if start < 0 else start, end + n if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return list(range(start, end, step))


def _slice_params(g: NodeGrad):
    """(starts, ends, axes, steps) as int lists, or None when some are computed at runtime."""
    if g.opset < 10:
        starts, ends = list(g.attr("starts")), list(g.attr("ends"))
        return starts, ends, list(g.attr("axes", range(len(starts)))), [1] * len(starts)
    starts, ends = _ints_or_none(g, 1), _ints_or_none(g, 2)
    if starts is None or ends is None:
        return None
    axes = _ints_or_none(g, 3) if g.I(3) else list(range(len(starts)))
    steps = _ints_or_none(g, 4) if g.I(4) else [1] * len(starts)
    return None if axes is None or steps is None else (starts, ends, axes, steps)


@rule("Slice")
def Slice(g: NodeGrad):
    """y = x[starts:ends:steps] on some axes: dx = GO scattered back into zeros at the selected
    positions (Pad for unit steps, a Gather from [GO, 0] for other steps; with runtime shapes
    or parameters, a ScatterElements of the flat positions the same Slice picks)."""
    x, go = g.I(0), g.GO(0)
    rank = _rank(g, x)
    shape = g.e.static_shape(x)
    params = _slice_params(g)
    if params is not None and all(isinstance(shape[a % rank], int) for a in params[2]):
        pads = [0] * (2 * rank)
        grad = go
        for start, end, axis, step in zip(*params, strict=True):
            axis %= rank
            n = shape[axis]
            idx = _slice_indices(start, end, step, n)
            if not idx:
                return [g.e.zeros_like(x)]
            if step == 1:
                pads[axis], pads[rank + axis] = idx[0], n - 1 - idx[-1]
                continue
            # position i of dx takes GO[inv[i]]; unselected positions read an appended zero
            inv = np.full(n, len(idx), dtype=np.int64)
            inv[idx] = np.arange(len(idx))
            ends = [1 if k == rank + axis else 0 for k in range(2 * rank)]
            grad = g.op("Gather", g.e.pad(grad, ends, like=x), g.e.ints(inv), axis=axis)
        return [g.e.pad(grad, pads, like=x) if any(pads) else grad]
    if g.opset < 11:
        raise NoGradient("Slice of a dynamic axis or with runtime bounds below opset 11")
    size = g.op("Size", x)
    arange = g.op("Range", _scalar_int(g, 0), size, _scalar_int(g, 1))
    positions = g.op("Reshape", arange, g.op("Shape", x))
    picked = g.op("Slice", positions, *g.node.input[1:])
    flat = g.op("ScatterElements", _zeros(g, g.op("Reshape", size, g.e.ints([1])), x),
                g.op("Reshape", picked, g.e.ints([-1])), g.op("Reshape", go, g.e.ints([-1])),
                axis=0)  # fmt: skip
    return [g.op("Reshape", flat, g.op("Shape", x))]


@rule("Gather")
def Gather(g: NodeGrad):
    """y = x.take(idx, axis): dx[.., i, ..] = sum of GO[.., q, ..] over all q with idx[q] = i
    (negative indices wrap, repeated ones accumulate): ScatterElements(add) from opset 16, a
    MatMul with the one-hot matrix M[q, i] = (idx[q] == i) below."""
    if not g.needs(0):
        return [None, None]
    x, idx, go = g.I(0), g.I(1), g.GO(0)
    rank, q_rank = _rank(g, x), _rank(g, idx)
    axis = g.attr("axis", 0) % rank
    depth = (g.e.static_shape(x) or [None] * rank)[axis]
    # GO as x's shape with the axis holding every gathered slice: pre + [n_idx] + post
    if q_rank == 0:
        upd = g.e.unsqueeze(go, [axis])
    elif q_rank == 1:
        upd = go
    else:
        dims = [*_dims(g, x, range(axis)), -1, *_dims(g, x, range(axis + 1, rank))]
        upd = g.op("Reshape", go, _shape_vector(g, dims))
    const = g.const_input(1)
    if const is not None and isinstance(depth, int):
        flat = np.asarray(const, dtype=np.int64).reshape(-1)
        flat = np.where(flat < 0, flat + depth, flat)
        if g.opset < 16:
            return [_along_axis(g, upd, axis, rank, np.eye(depth)[flat]), None]
        flat_name = g.e.ints(flat)
    else:
        if isinstance(depth, int):
            n = _scalar_int(g, depth)
        else:
            n = g.op("Gather", g.op("Shape", x), _scalar_int(g, axis))
        flat_name = g.op("Reshape", g.op("Cast", idx, to=onnx.TensorProto.INT64), g.e.ints([-1]))
        negative = g.op("Less", flat_name, _scalar_int(g, 0))
        flat_name = g.op("Where", negative, g.op("Add", flat_name, n), flat_name)
        if g.opset < 16:
            on_off = g.e.const([0, 1], g.e.np_dtype(x))
            return [_along_axis(g, upd, axis, rank, g.op("OneHot", flat_name, n, on_off)), None]
    index_shape = [1] * axis + [-1] + [1] * (rank - axis - 1)
    index = g.op("Expand", g.op("Reshape", flat_name, g.e.ints(index_shape)), g.op("Shape", upd))
    zeros = _zeros(g, g.op("Shape", x), x)
    return [g.op("ScatterElements", zeros, index, upd, axis=axis, reduction="add"), None]


@rule("GatherElements")
def GatherElements(g: NodeGrad):
    """y[.., q, ..] = x[.., idx[.., q, ..], ..] along axis: dx[.., i, ..] = sum of GO at all
    positions whose index is i (negative indices wrap; repeats accumulate), zeros elsewhere,
    also past idx's extent on the other axes. Opset >= 16: ScatterElements(add). Below (no
    accumulating scatter), the sum is spelled with OneHot: one [.., n] row per index,
    weighted by GO and summed over the axis (idx.size * n values)."""
    if not g.needs(0):
        return [None, None]
    x, idx, go = g.I(0), g.I(1), g.GO(0)
    rank = _rank(g, x)
    axis = g.attr("axis", 0) % rank
    depth = (g.e.static_shape(x) or [None] * rank)[axis]
    if isinstance(depth, int):
        n = _scalar_int(g, depth)
    else:
        n = g.op("Gather", g.op("Shape", x), _scalar_int(g, axis))
    index = g.op("Cast", idx, to=onnx.TensorProto.INT64)
    index = g.op("Where", g.op("Less", index, _scalar_int(g, 0)), g.op("Add", index, n), index)
    zeros = _zeros(g, g.op("Shape", x), x)
    if g.opset >= 16:
        return [g.op("ScatterElements", zeros, index, go, axis=axis, reduction="add"), None]
    on_off = g.e.const([0, 1], g.e.np_dtype(x))
    hot = g.op("OneHot", index, n, on_off, axis=-1)  # idx.shape + [n]
    weighted = g.op("Mul", hot, g.e.unsqueeze(go, [rank]))
    summed = g.e.squeeze(g.e.reduce_sum(weighted, [axis], keepdims=True), [axis])
    perm = [*range(axis), rank - 1, *range(axis, rank - 1)]  # the [n] axis back to `axis`
    grad = g.op("Transpose", summed, perm=perm) if axis != rank - 1 else summed
    shape_x, shape_idx = g.e.static_shape(x), g.e.static_shape(idx)
    if (
        shape_x is not None
        and shape_idx is not None
        and all(
            a == axis or (isinstance(d, int) and d == e)
            for a, (d, e) in enumerate(zip(shape_x, shape_idx, strict=True))
        )
    ):
        return [grad, None]
    # idx may be shorter than x on the other axes: zeros fill the rest
    missing = g.op("Sub", g.op("Shape", x), g.op("Shape", grad))
    pads = g.op("Concat", g.e.ints([0] * rank), missing, axis=0)
    return [g.op("Pad", grad, pads, g.scalar(0.0, x)), None]


@rule("CumSum")
def CumSum(g: NodeGrad):
    """y[i] = sum of x[j] along axis over j <= i (j < i exclusive; j >= i, j > i reverse):
    x[j] appears in the sums at the positions the same scan reaches from j the other way,
    so dx = CumSum(GO) with reverse flipped and exclusive kept. The axis gets none."""
    flipped = 1 - g.attr("reverse", 0)
    scan = g.op("CumSum", g.GO(0), g.I(1), exclusive=g.attr("exclusive", 0), reverse=flipped)
    return [scan, None]


CUMPROD_MAX = 2048  # longest CumProd axis with a rule: its gradient holds n * n values a line


@rule("CumProd")
def CumProd(g: NodeGrad):
    """y[j] = product of x[k] along the axis over k <= j (k < j exclusive; the other way round
    with reverse). dy[j]/dx[i] = E[i] Q[i, j] for j >= i, E[i] the product before i (the
    exclusive scan), Q[i, j] that over i < k <= j: dx[i] = E[i] * sum over j >= i of Q[i, j]
    GO[j]. Exclusive moves GO one place back (its y[j] is the inclusive y[j - 1]); reverse
    runs on the flipped axis. Q is CumProd itself over an [n, n] plane holding x[k] where
    k > i and 1 elsewhere: no division, so a zero in x gets its exact gradient (dividing y by
    x would give NaN), for n * n values a line. The axis gets none."""
    axis_value, shape = g.const_input(1), g.e.static_shape(g.I(0))
    if axis_value is None or shape is None:
        raise NoGradient("CumProd needs a constant axis and a known rank")
    rank = len(shape)
    axis = int(np.asarray(axis_value).reshape(-1)[0]) % rank
    n = shape[axis]
    if not isinstance(n, int) or n > CUMPROD_MAX:
        raise NoGradient(f"CumProd needs a fixed axis of at most {CUMPROD_MAX} values")
    x, go, last = g.I(0), g.GO(0), rank - 1
    perm = list(range(rank))
    perm[axis], perm[last] = last, axis  # (a swap: its own inverse)
    reverse = bool(g.attr("reverse", 0))

    def flip(t: str) -> str:
        return g.e.slice(t, [-1], [np.iinfo(np.int64).min], [last], [-1]) if reverse else t

    def swap(t: str) -> str:
        return g.op("Transpose", t, perm=perm) if axis != last else t

    x, go = flip(swap(x)), flip(swap(go))  # the scan's axis last, running forwards
    if g.attr("exclusive", 0):
        tail = g.e.slice(go, [1], [n], [last])
        go = g.op("Concat", tail, g.op("Mul", g.e.slice(go, [0], [1], [last]), g.scalar(0.0)),
                  axis=last)  # fmt: skip
    scan_axis = g.e.const(np.array(last, np.int64))
    before = g.op("CumProd", x, scan_axis, exclusive=1)
    i, k = np.indices((n, n))
    plane = g.op("Where", g.e.const(k > i), g.e.unsqueeze(x, [last]), g.scalar(1.0))
    q = g.op("CumProd", plane, g.e.const(np.array(rank, np.int64)))  # [..., i, j]
    upper = g.op("Mul", q, g.e.const((k >= i).astype(g.e.np_dtype(g.I(0)))))
    summed = g.e.squeeze(g.op("MatMul", upper, g.e.unsqueeze(go, [rank])), [rank])
    return [swap(flip(g.op("Mul", before, summed))), None]


@rule("Trilu")
def Trilu(g: NodeGrad):
    """y = x with the entries outside the k-th upper (or lower) triangle of the last two axes
    zeroed, a fixed mask: dx = the same Trilu of GO. k gets none."""
    k = [g.I(1)] if g.I(1) else []
    return [g.op("Trilu", g.GO(0), *k, upper=g.attr("upper", 1)), None]


@rule("ReverseSequence")
def ReverseSequence(g: NodeGrad):
    """y reverses the first lens[b] steps of each batch entry b: a permutation that is its
    own inverse, so dx = the same node applied to GO. The lengths get none."""
    attrs = {k: g.attr(k) for k in ("batch_axis", "time_axis") if k in g.attrs}
    return [g.op("ReverseSequence", g.GO(0), g.I(1), **attrs), None]


@rule("CenterCropPad")
def CenterCropPad(g: NodeGrad):
    """y is x cropped or zero-padded about its centre to a shape: dx = GO cropped or padded
    about its centre back to x's shape (ONNX's offsets, (big - small) // 2, agree both ways).
    The shape gets none."""
    x, axes = g.I(0), g.attr("axes", None)
    shape, attrs = g.op("Shape", x), {}
    if axes is not None:
        shape, attrs = g.op("Gather", shape, g.e.ints(list(axes))), {"axes": list(axes)}
    return [g.op("CenterCropPad", g.GO(0), shape, **attrs), None]


@rule("TopK")
def TopK(g: NodeGrad):
    """Values are the k largest (or smallest) elements of x along axis, read at Indices,
    distinct positions: dx = GO of Values written at Indices into zeros (Scatter before
    opset 11, ScatterElements from 11). Indices (integers) and K get none."""
    x, idx = g.I(0), g.O(1)
    if not idx:
        raise NoGradient("TopK without its Indices output")
    axis = g.attr("axis", -1) % _rank(g, x)
    scatter = "ScatterElements" if g.opset >= 11 else "Scatter"
    zeros = _zeros(g, g.op("Shape", x), x)
    return [g.op(scatter, zeros, idx, g.GO(0), axis=axis)] + [None] * (g.n_inputs() - 1)


def _distinct_rows(rows: np.ndarray, dims: Sequence) -> bool:
    """Whether index rows (one position per row, over axes of sizes `dims`) name distinct
    positions once negative indices wrap; False when a negative index meets an unknown size."""
    rows = np.array(rows, dtype=np.int64).reshape(len(rows), -1)
    for a in range(rows.shape[1]):
        if (rows[:, a] < 0).any():
            if not isinstance(dims[a], int):
                return False
            rows[:, a] = np.where(rows[:, a] < 0, rows[:, a] + dims[a], rows[:, a])
    return len(np.unique(rows, axis=0)) == len(rows)


def _element_positions(indices: np.ndarray, axis: int) -> np.ndarray:
    """The positions ScatterElements writes: each index's own coordinates, `indices` along
    `axis`, one row per element."""
    coords = np.indices(indices.shape)
    coords[axis] = indices
    return coords.reshape(indices.ndim, -1).T


def _update_ids(g: NodeGrad, updates: str) -> str:
    """0, 1, 2, ... in the shape of `updates` (int64): which update is which."""
    size = g.op("Size", updates)
    ids = g.op("Range", _scalar_int(g, 0), size, _scalar_int(g, 1))
    return g.op("Reshape", ids, g.op("Shape", updates))


def _last_writers(g: NodeGrad, scatter: str, gather: str, x: str, idx: str, updates: str,
                  **attrs) -> str:  # fmt: skip
    """Where several updates write one position (no reduction), only the one the runtime
    writes last reaches y. Scattering the updates' ids through the same op, then reading the
    ids back at the indices, tells each update whether it is that one (a bool in the shape
    of `updates`): exact wherever the runtime resolves repeats the same way each run, as
    ONNX Runtime's CPU kernels, which write in order, do."""
    ids = _update_ids(g, updates)
    minus_one = numpy_helper.from_array(np.full(1, -1, dtype=np.int64))
    blank = g.op("ConstantOfShape", g.op("Shape", x), value=minus_one)
    written = g.op(scatter, blank, idx, ids, **attrs)
    return g.op("Equal", g.op(gather, written, idx, **attrs), ids)


def _scatter_grad(g: NodeGrad, scatter: str, gather: str, distinct: bool, **attrs):
    """[dx, None, d updates] of ScatterElements / ScatterND: dx = GO with the written
    positions zeroed (no reduction) or GO itself (add); d updates = GO read at the indices,
    0 for updates overwritten by a later one."""
    x, idx, updates, go = g.I(0), g.I(1), g.I(2), g.GO(0)
    reduction = g.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise NoGradient(f"{g.node.op_type} with reduction {reduction}")
    gx = gu = None
    if g.needs(0):
        if reduction == "add":
            gx = go
        else:
            gx = g.op(scatter, go, idx, _zeros(g, g.op("Shape", updates), x), **attrs)
    if g.needs(2):
        if g.opset < 11:
            raise NoGradient(f"{g.node.op_type}'s updates below opset 11 (no GatherElements)")
        gu = g.op(gather, go, idx, **attrs)
        if reduction == "none" and not distinct:
            won = _last_writers(g, scatter, gather, x, idx, updates, **attrs)
            gu = g.op("Where", won, gu, g.scalar(0.0, x))
    return [gx, None, gu]


@rule("ScatterElements", "Scatter")
def ScatterElements(g: NodeGrad):
    """y = x with updates written (reduction none) or added (add) along axis at indices
    (Scatter is its name before opset 11): dx = GO zeroed where written (none) or GO (add);
    d updates = GatherElements(GO, indices), where repeated positions under none give GO
    to the update written last only (see _last_writers; skipped when constant indices are
    distinct). mul, max and min are refused."""
    x, rank = g.I(0), _rank(g, g.I(0))
    axis = g.attr("axis", 0) % rank
    scatter = "ScatterElements" if g.opset >= 11 else "Scatter"
    const = g.const_input(1)
    distinct = False
    if const is not None:
        dims = [None] * rank
        dims[axis] = (g.e.static_shape(x) or [None] * rank)[axis]
        distinct = _distinct_rows(_element_positions(np.asarray(const), axis), dims)
    return _scatter_grad(g, scatter, "GatherElements", distinct, axis=axis)


@rule("Compress")
def Compress(g: NodeGrad):
    """y keeps the slices of x along `axis` (or, without one, the elements of x flattened)
    where the condition is true: dx = GO written back at those positions into zeros, a
    ScatterND over the axis moved first. The condition gets none."""
    if g.opset < 11:
        raise NoGradient("Compress before opset 11 (no ScatterND to write it back)")
    x, go = g.I(0), g.GO(0)
    positions = g.op("Transpose", g.op("NonZero", g.I(1)), perm=[1, 0])  # [K, 1]
    axis = g.attr("axis", None)
    if axis is None:
        flat = _zeros(g, g.op("Reshape", g.op("Size", x), g.e.ints([1])), x)
        return [g.op("Reshape", g.op("ScatterND", flat, positions, go), g.op("Shape", x)), None]
    rank = _rank(g, x)
    axis %= rank
    perm = [axis, *(k for k in range(rank) if k != axis)]
    zeros = _zeros(g, g.op("Gather", g.op("Shape", x), g.e.ints(perm)), x)
    written = g.op("ScatterND", zeros, positions, g.op("Transpose", go, perm=perm))
    return [g.op("Transpose", written, perm=[int(k) for k in np.argsort(perm)]), None]


@rule("ScatterND")
def ScatterND(g: NodeGrad):
    """y = x with update slices written (reduction none) or added (add) at the positions in
    indices' last axis: dx = GO zeroed where written (none) or GO (add); d updates =
    GatherND(GO, indices), where a position written twice under none gives GO to the update
    written last only (see _last_writers; skipped when constant indices are distinct).
    mul, max and min are refused."""
    x, const = g.I(0), g.const_input(1)
    distinct = False
    if const is not None:
        const = np.asarray(const)
        depth = const.shape[-1]
        dims = (g.e.static_shape(x) or [None] * depth)[:depth]
        distinct = _distinct_rows(const.reshape(-1, depth), dims)
    return _scatter_grad(g, "ScatterND", "GatherND", distinct)


@rule("GatherND")
def GatherND(g: NodeGrad):
    """y[b.., q..] = x[b.., idx[b.., q..], ...]: the first batch_dims axes shared, idx's last
    axis a position over the next m axes of x. dx = GO added into zeros at those positions
    (batch coordinates prepended, negative indices wrapped), repeats accumulating:
    ScatterND(add) from opset 16; below, only constant indices naming distinct positions
    (ScatterND without reduction would keep one of the repeats)."""
    if not g.needs(0):
        return [None, None]
    x, idx, go = g.I(0), g.I(1), g.GO(0)
    b = g.attr("batch_dims", 0)
    q_rank = _rank(g, idx)
    depth = (g.e.static_shape(idx) or [None])[-1]
    if not isinstance(depth, int):
        raise NoGradient("GatherND with an index depth unknown at build time")
    shape = g.e.static_shape(x) or [None] * (b + depth)
    batch = shape[:b]
    if not all(isinstance(d, int) for d in batch):
        raise NoGradient("GatherND with batch_dims over axes of unknown size")
    grid = np.zeros([1] * (q_rank - 1) + [0], dtype=np.int64)  # the batch coordinates
    if b:
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in batch], indexing="ij"), axis=-1)
        grid = grid.reshape(*batch, *[1] * (q_rank - 1 - b), b).astype(np.int64)
    const = g.const_input(1)
    sizes = shape[b : b + depth]
    if const is not None and all(isinstance(d, int) for d in sizes):
        const = np.asarray(const, dtype=np.int64)
        const = np.where(const < 0, const + np.asarray(sizes, dtype=np.int64), const)
        full = np.concatenate([np.broadcast_to(grid, (*const.shape[:-1], b)), const], axis=-1)
        distinct = _distinct_rows(full.reshape(-1, b + depth), shape[: b + depth])
        index = g.e.const(full)
    else:
        distinct = False
        dims = _shape_vector(g, _dims(g, x, range(b, b + depth)))
        index = g.op("Where", g.op("Less", idx, _scalar_int(g, 0)), g.op("Add", idx, dims), idx)
        if b:
            lead = g.e.slice(g.op("Shape", idx), [0], [q_rank - 1], [0])
            spread = g.op("Expand", g.e.const(grid), g.op("Concat", lead, g.e.ints([b]), axis=0))
            index = g.op("Concat", spread, index, axis=q_rank - 1)
    if g.opset < 16 and not distinct:
        raise NoGradient("GatherND with indices that may repeat below opset 16 (ScatterND "
                         "adds repeats from 16 on)")  # fmt: skip
    zeros = _zeros(g, g.op("Shape", x), x)
    if distinct:
        return [g.op("ScatterND", zeros, index, go), None]
    return [g.e.scatter_nd_add(zeros, index, go, like=x), None]


@rule("Range")
def Range(g: NodeGrad):
    """y[i] = start + i * delta, i < n = max(ceil((limit - start) / delta), 0): d start =
    sum(GO), d delta = sum(i * GO); the count changes in steps, so limit gets none."""
    go, y = g.GO(0), g.O(0)
    d_start = g.e.reduce_sum(go, [0], keepdims=False) if g.needs(0) else None
    d_delta = None
    if g.needs(2):
        elem = g.e.infos_elem(y)
        count = g.op("Cast", g.op("Size", y), to=elem)
        steps = g.op("Range", g.scalar(0.0, y), count, g.scalar(1.0, y))
        d_delta = g.e.reduce_sum(g.op("Mul", go, steps), [0], keepdims=False)
    return [d_start, None, d_delta]


@rule("Pad")
def Pad(g: NodeGrad):
    """constant: y = x with borders added (positive pads) or cut off (negative pads), so dx = GO
    with those borders cut off or zeros added back. edge/reflect/wrap: each border element
    copies an input element, so along each padded axis dx = GO @ M with M[j, i] = (src(j) = i)."""
    x, go = g.I(0), g.GO(0)
    if g.needs(2):
        raise NoGradient("Pad with a padding value that depends on the input")
    rank = _rank(g, x)
    mode = g.attr("mode", "constant")
    pads = list(g.attr("pads")) if g.opset < 11 else _ints_or_none(g, 1)
    axes = _ints_or_none(g, 3) if g.opset >= 18 and g.I(3) else list(range(rank))
    if pads is None or axes is None:
        if mode != "constant":
            raise NoGradient(f"Pad mode {mode} with pads computed at runtime")
        ins = [go, g.op("Neg", g.I(1)), g.scalar(0.0, x)] + ([g.I(3)] if g.I(3) else [])
        return [g.op("Pad", *ins, mode="constant")]
    begin, end = [0] * rank, [0] * rank
    for k, axis in enumerate(axes):
        begin[axis % rank], end[axis % rank] = pads[k], pads[len(axes) + k]
    if mode == "constant":
        cut = [a for a in range(rank) if begin[a] > 0 or end[a] > 0]
        grad = go
        if cut:
            starts = [max(begin[a], 0) for a in cut]
            ends = [-end[a] if end[a] > 0 else INT_MAX for a in cut]
            grad = g.e.slice(grad, starts, ends, cut)
        grow = [max(-p, 0) for p in begin + end]
        return [g.e.pad(grad, grow) if any(grow) else grad]
    if any(p < 0 for p in begin + end):
        raise NoGradient(f"Pad mode {mode} with negative pads")
    shape = g.e.static_shape(x)
    grad = go
    for a in range(rank):
        if begin[a] or end[a]:
            if not isinstance(shape[a], int):
                raise NoGradient(f"Pad mode {mode} along a dynamic axis")
            grad = _unpad_axis(g, grad, a, rank, shape[a], begin[a], end[a], mode)
    return [grad]


def _unpad_axis(g: NodeGrad, go: str, a: int, rank: int, n: int, before: int, after: int,
                mode: str) -> str:  # fmt: skip
    """dx along axis a of an edge/reflect/wrap Pad: GO's middle n, plus each border's GO added
    where its elements were copied from (src), through a matrix over only the source range
    it reads: [border, span]. A dense [n + pads, n] matrix took 3.6 GB on a 22,000-long
    audio axis (basic-pitch: inspect was killed)."""
    src = np.pad(np.arange(n), (before, after), mode=mode)
    grad = g.e.slice(go, [before], [before + n], [a])
    for lo, hi in ((0, before), (before + n, before + n + after)):
        if hi == lo:
            continue
        part = src[lo:hi]
        first, last = int(part.min()), int(part.max())
        copies = (part[:, None] == np.arange(first, last + 1)[None, :]).astype(np.float64)
        border = _along_axis(g, g.e.slice(go, [lo], [hi], [a]), a, rank, copies)
        grow = [0] * (2 * rank)
        grow[a], grow[rank + a] = first, n - 1 - last
        grad = g.op("Add", grad, g.e.pad(border, grow, like=g.I(0)) if any(grow) else border)
    return grad


@rule("Expand")
def Expand(g: NodeGrad):
    """y = x broadcast to a shape: dx = GO summed over the broadcast axes."""
    try:
        return [g.reduce_to(g.GO(0), 0), None]
    except NotImplementedError as exc:  # the emitter's runtime fallback needs opset 13
        raise NoGradient(f"Expand to a shape unknown at build time: {exc}") from exc


@rule("Tile")
def Tile(g: NodeGrad):
    """y = tile(x, r): y viewed as [r0, d0, r1, d1, ...] holds r0 r1 ... copies of x, so
    dx = GO reshaped that way and summed over the repeat axes 0, 2, 4, ..."""
    x = g.I(0)
    rank = _rank(g, x)
    reps = _ints_or_none(g, 1)
    dims = _dims(g, x, range(rank))
    if reps is not None and all(isinstance(d, int) for d in dims):
        split = g.e.ints([v for pair in zip(reps, dims, strict=True) for v in pair])
    else:
        reps_vec = g.e.ints(reps) if reps is not None else g.I(1)
        pairs = [g.e.unsqueeze(v, [1]) for v in (reps_vec, g.op("Shape", x))]
        split = g.op("Reshape", g.op("Concat", *pairs, axis=1), g.e.ints([-1]))
    grouped = g.op("Reshape", g.GO(0), split)
    return [g.e.reduce_sum(grouped, list(range(0, 2 * rank, 2)), keepdims=False), None]


@rule("DepthToSpace")
def DepthToSpace(g: NodeGrad):
    """Depth moved into b x b spatial blocks, a permutation: dx = SpaceToDepth(GO) for mode DCR;
    for CRD the forward reshape/transpose chain run backwards."""
    b = g.attr("blocksize")
    if g.attr("mode", "DCR") == "DCR":
        return [g.op("SpaceToDepth", g.GO(0), blocksize=b)]
    n, c, h, w = _dims(g, g.I(0), range(4))
    blocks = [n, c // (b * b) if isinstance(c, int) else -1, h, b, w, b]
    grouped = g.op("Reshape", g.GO(0), _shape_vector(g, blocks))
    moved = g.op("Transpose", grouped, perm=[0, 1, 3, 5, 2, 4])
    return [g.op("Reshape", moved, g.op("Shape", g.I(0)))]


@rule("SpaceToDepth")
def SpaceToDepth(g: NodeGrad):
    """Spatial b x b blocks moved into depth (DCR order), a permutation: dx = DepthToSpace(GO)."""
    return [g.op("DepthToSpace", g.GO(0), blocksize=g.attr("blocksize"))]


# -- Resize and Upsample -------------------------------------------------------------------
def _interpolation_matrix(n: int, attrs: dict, scale=None, size=None, roi=None) -> np.ndarray:
    """M[k, i]: the weight of input i in output k of a 1-D resize, found by resizing eye(n)
    with the node's attributes: by onnx's reference Resize-19 (float64), checked against
    ONNX Runtime's (float32), whose matrix is used where the two differ. With `scales`, the
    reference maps coordinates by the unrounded output length n * scale where ONNX Runtime
    (and torch) take its floor: align_corners at 90 x 0.75 gave a gradient 59% off."""
    reference = _reference_matrix(n, attrs, scale, size, roi)
    runtime = _runtime_matrix(n, attrs, scale, size, roi)
    if runtime is None or (
        runtime.shape == reference.shape and np.abs(runtime - reference).max() <= 1e-5
    ):
        return reference
    return runtime.astype(np.float64)


def _runtime_matrix(n: int, attrs: dict, scale, size, roi) -> np.ndarray | None:
    """The matrix as ONNX Runtime resizes eye(n) (the last axis of [1, 1, n, n]); None where
    it cannot run the probe (then neither can it the model's node, which is a 4-D one)."""
    import onnxruntime as ort

    names, inits = ["x", "roi", "", ""], []
    box = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    if roi is not None:
        box[3], box[7] = roi
    inits.append(numpy_helper.from_array(np.asarray(box, np.float32), "roi"))
    if scale is not None:
        names[2] = "scales"
        inits.append(numpy_helper.from_array(np.asarray([1, 1, 1, scale], np.float32), "scales"))
    else:
        names[3] = "sizes"
        inits.append(numpy_helper.from_array(np.asarray([1, 1, n, size], np.int64), "sizes"))
    graph = helper.make_graph(
        [helper.make_node("Resize", names, ["y"], **attrs)], "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, n, n])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
        (out,) = session.run(None, {"x": np.eye(n, dtype=np.float32)[None, None]})
    except Exception:  # a mode this ONNX Runtime lacks: the reference stands
        return None
    return np.asarray(out, dtype=np.float64)[0, 0].T


def _reference_matrix(n: int, attrs: dict, scale, size, roi) -> np.ndarray:
    """The matrix by onnx's reference Resize-19 (rows of eye(n) resized along axis 1)."""
    inputs = {
        "roi": np.asarray([] if roi is None else [0.0, roi[0], 1.0, roi[1]], dtype=np.float32),
        "scales": np.asarray([] if scale is None else [1.0, scale], dtype=np.float32),
        "sizes": np.asarray([n, size] if size is not None else [], dtype=np.int64),
    }
    names = ["x", "roi", "scales" if scale is not None else "", "sizes" if size is not None else ""]
    consts = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k))
              for k, v in inputs.items()]  # fmt: skip
    node = helper.make_node("Resize", names, ["y"], **attrs)
    graph = helper.make_graph(
        [*consts, node], "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, [n, n])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    from onnx.reference import ReferenceEvaluator  # slow to import; only Resize needs it

    (out,) = ReferenceEvaluator(model).run(None, {"x": np.eye(n)})
    return np.asarray(out).T


# The largest dense interpolation matrix a Resize's gradient builds, n * max(n, out) values:
# 4096 x 8192 (a long audio axis of 22,000 would have taken 4 GB, and its probe as much again).
RESIZE_MATRIX_MAX = 2**25


def _resize_grad(g: NodeGrad, axes_params: list, attrs_for) -> str:
    """Contract GO with the interpolation matrix of every axis that is not left unchanged.

    axes_params[a] = (scale, size, roi) of axis a; attrs_for(scale) gives the probe's attributes.
    """
    x = g.I(0)
    rank = _rank(g, x)
    shape = g.e.static_shape(x)
    grad = g.GO(0)
    for a, (scale, size, roi) in enumerate(axes_params):
        n = shape[a]
        unchanged = (scale == 1.0 if scale is not None else size == n) and roi in (None, (0, 1))
        # a runtime size on a dynamic axis (typically the batch, copied by Shape) is taken as
        # unchanged; were it not, the gradient would come out with a shape other than x's
        unknown = scale is None and not isinstance(size, int) and not isinstance(n, int)
        if unchanged or unknown:
            continue
        if not isinstance(n, int) and isinstance(size, int):  # (a batch fixed at 1 in sizes)
            raise NoGradient(
                f"{g.node.op_type} to a fixed length {size} along axis {a}, whose input length "
                "is known only at run time"
            )
        if not isinstance(n, int) or (scale is None and not isinstance(size, int)):
            raise NoGradient(f"{g.node.op_type} along axis {a} needs static sizes")
        out = size if scale is None else int(n * scale)
        if n * max(n, out) > RESIZE_MATRIX_MAX:  # (the probes resize eye(n): n * n values)
            raise NoGradient(
                f"{g.node.op_type} along axis {a} of length {n}: its interpolation matrix "
                f"({n} x {out}) is too large to build"
            )
        mat = _interpolation_matrix(n, attrs_for(scale), scale, size, roi)
        grad = _along_axis(g, grad, a, rank, mat)
    return grad


def _legacy_attrs(mode: str):
    """Resize-10 and Upsample map output k to k / scale; ORT's nearest takes the floor when
    upsampling and the ceiling when downsampling."""

    def attrs_for(scale: float) -> dict:
        nearest = "floor" if scale >= 1 else "ceil"
        return {"mode": mode, "coordinate_transformation_mode": "asymmetric",
                "nearest_mode": nearest}  # fmt: skip

    return attrs_for


def _legacy_scales(g: NodeGrad, k: int) -> list:
    scales = g.attr("scales") if g.n_inputs() <= k else g.const_input(k)
    if scales is None:
        raise NoGradient(f"{g.node.op_type} with scales computed at runtime")
    mode = g.attr("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise NoGradient(f"{g.node.op_type} mode {mode}")
    return [(float(s), None, None) for s in np.asarray(scales).reshape(-1)]


@rule("Upsample")
def Upsample(g: NodeGrad):
    """y = x upsampled (nearest or N-linear, y[k] at x[k / scale]): linear in x and separable,
    so dx = GO contracted with each resized axis' interpolation matrix: dx = M^T GO per axis."""
    params = _legacy_scales(g, 1)
    return [_resize_grad(g, params, _legacy_attrs(g.attr("mode", "nearest"))), None]


@rule("Resize")
def Resize(g: NodeGrad):
    """y = x resized (nearest, linear or cubic, any coordinate mode): linear in x and separable,
    y = M_0 (x) M_1 (x) ..., so dx = GO contracted with every resized axis' matrix, M_a^T per
    axis (extrapolated tf_crop_and_resize values are constants and get no gradient)."""
    x = g.I(0)
    if g.opset < 11:
        return [_resize_grad(g, _legacy_scales(g, 1), _legacy_attrs(g.attr("mode", "nearest")))]
    rank = _rank(g, x)
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
    if attrs.get("coordinate_transformation_mode") == "tf_half_pixel_for_nn":
        raise NoGradient("Resize coordinate mode tf_half_pixel_for_nn")
    axes = [a % rank for a in attrs.pop("axes", range(rank))]
    attrs.pop("keep_aspect_ratio_policy", None)
    attrs["extrapolation_value"] = 0.0

    def given(k: int):
        value = g.const_input(k) if g.I(k) else None
        return None if value is None or value.size == 0 else value.reshape(-1).tolist()

    roi, scales, sizes = given(1), given(2), given(3)
    cropping = attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize"
    if cropping and roi is None:
        raise NoGradient("Resize tf_crop_and_resize with roi computed at runtime")
    if g.I(2) and scales is None and g.const_input(2) is None:
        raise NoGradient("Resize with scales computed at runtime")
    if sizes is None and scales is None:  # sizes computed at runtime: trust shape inference
        sizes = g.e.static_shape(g.O(0))
        if sizes is None:
            raise NoGradient("Resize with sizes computed at runtime and unknown output shape")
        sizes = [sizes[a] for a in axes]
    if sizes is not None and g.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise NoGradient("Resize with sizes and keep_aspect_ratio_policy")
    params = [(1.0, None, None)] * rank
    for k, a in enumerate(axes):
        scale = None if scales is None else float(scales[k])
        size = None if sizes is None or scale is not None else sizes[k]
        box = (roi[k], roi[len(axes) + k]) if cropping and roi is not None else None
        params[a] = (scale, size, box)
    return [_resize_grad(g, params, lambda _scale: attrs)]
