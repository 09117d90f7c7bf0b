"""Every layer rule (rules_nn) against central finite differences.

Cases run in float64 through onnx's reference evaluator and in float32 through ONNX Runtime.
A few reference kernels are wrong for some configurations; the cases avoid those and say so:
- ConvTranspose with group > 1 is only right when every group maps one channel to one channel
  (plain depthwise), so grouped ConvTranspose forward nodes are tested depthwise only (the
  rules' own grouped scatters are rewritten into forms it handles, and Conv covers them);
- LRN loops over the batch size instead of the channels, so LRN cases use N == C;
- GlobalMaxPool reduces axes 2 and 3 only, so its cases are 4-D;
- BatchNormalization-9 applies momentum to batch statistics, so opset 9 is checked against
  numpy in ONNX Runtime below (test_batch_normalization_opset9).
Max-like ops get inputs spaced 0.1 apart: no ties, and a difference step never moves an
arg-max.
"""

import itertools
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from igcli.autodiff import GRAD, SEED, build_gradient_model
from tests.autodiff.checker import Case, check_graph, make_model

rng = np.random.default_rng(7)


def r(*shape, low=-1.0, high=1.0):
    return rng.uniform(low, high, size=shape)


def distinct(*shape):
    """Values 0.1 apart in random order (plus a little jitter): no ties in any window."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * 0.1 + rng.uniform(-0.02, 0.02, n)).reshape(shape)


CASES: list[Case] = []


def add(op, inputs, attrs=None, tag="", **options):
    """One Case, with an id naming the op, what the case is about, and the opset."""
    opset = options.get("opset", 17)
    CASES.append(Case(op, inputs, attrs, id=f"{op}-{tag}-opset{opset}", **options))


# -- MatMul: 2-D, batched, broadcast batch dims, 1-D operands (numpy promotion) ----------------
for opset in (9, 13, 17):
    add("MatMul", {"a": r(3, 4), "b": r(4, 5)}, tag="2d", opset=opset)
    add("MatMul", {"a": r(2, 1, 3, 4), "b": r(3, 4, 2)}, tag="broadcast", opset=opset)
    add("MatMul", {"a": r(4), "b": r(2, 4, 3)}, tag="1d@3d", opset=opset)
    add("MatMul", {"a": r(2, 3, 4), "b": r(4)}, tag="3d@1d", opset=opset)
add("MatMul", {"a": r(4), "b": r(4)}, tag="1d@1d")
add("MatMul", {"a": r(5), "b": r(5, 2)}, tag="1d@2d", opset=11)
add("MatMul", {"a": r(2, 3, 4)}, tag="dynamic", opset=13, dynamic=True,
    constants={"b": r(4, 2)})  # fmt: skip
add("MatMul", {"a": r(2, 3, 4)}, tag="dynamic-1d", opset=9, dynamic=True,
    constants={"b": r(4)})  # fmt: skip

# -- Einsum (12+): products, transposes, reductions, outer products, ellipsis, implicit output -
EINSUMS = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 2)]),
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),  # attention scores
    ("bhqk,bhkd->bqhd", [(1, 2, 3, 4), (1, 2, 4, 2)]),  # attention output, heads moved
    ("ij,jk->ki", [(3, 4), (4, 2)]),
    ("ij,j->i", [(3, 4), (4,)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ij,ij->", [(3, 4), (3, 4)]),
    ("bi,bi->b", [(3, 4), (3, 4)]),
    ("ijk,jl->il", [(2, 3, 4), (3, 5)]),  # k summed in the first operand alone
    ("ij,kl->ik", [(2, 3), (4, 5)]),  # j and l summed alone
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
    ("ij->ji", [(3, 4)]),
    ("ijk->ki", [(2, 3, 4)]),
    ("ij->", [(3, 4)]),
    ("ij->ij", [(3, 4)]),
    ("ij,jk", [(3, 4), (4, 5)]),  # implicit output: ik
    ("ba", [(3, 4)]),  # implicit output: ab, a transpose
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (1, 3, 4, 5)]),  # size-1 dims broadcast
    ("...ij,jk->...ik", [(2, 3, 3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (1, 4, 5)]),  # an explicit letter broadcast
    ("i...,i...->...", [(3, 2, 2), (3, 2, 2)]),
    ("...i,...i", [(2, 3, 4), (2, 3, 4)]),  # implicit: ..., the ellipsis kept
    ("...ij->...", [(2, 3, 4)]),
    # an index repeated within an operand reads its diagonal
    ("ii->i", [(3, 3)]),
    ("ii", [(3, 3)]),  # the trace
    ("bii->bi", [(2, 3, 3)]),
    ("iij,jk->ik", [(3, 3, 4), (4, 2)]),
    ("ii,i->i", [(3, 3), (3,)]),  # the diagonal times a vector; the second needs the first's
    ("bij,bjj->bi", [(2, 3, 4), (2, 4, 4)]),
    ("iji->j", [(3, 2, 3)]),
    ("iii->i", [(2, 2, 2)]),
    ("iij->", [(3, 3, 2)]),  # j summed alone as well
    ("...ii->...i", [(2, 3, 3)]),
    ("ii->i", [(1, 1)]),  # a size-1 repeat
]
for opset in (12, 17):
    for eq, shapes in EINSUMS:
        ins = {f"x{k}": r(*shape) for k, shape in enumerate(shapes)}
        add("Einsum", ins, {"equation": eq}, tag=f"{eq}-{shapes}", opset=opset)
for eq, shapes in [
    ("bij,jk->bik", [(2, 3, 4), (4, 5)]),
    ("b...j,b...j->b...", [(2, 3, 4)] * 2),
    ("bii,bi->bi", [(2, 3, 3), (2, 3)]),
]:
    add("Einsum", {f"x{k}": r(*shape) for k, shape in enumerate(shapes)}, {"equation": eq},
        tag=f"{eq}-dynamic", opset=13, dynamic=True)  # fmt: skip
add("Einsum", {"x0": r(2, 3, 4)}, {"equation": "b i j , j k -> b i k"}, tag="spaces",
    constants={"w": r(4, 5)})  # fmt: skip

# -- Det (11+): batched, 1x1, and singular (where det(A) A^-T does not exist) ------------------
for tag, a in [("3x3", r(3, 3)), ("batch", r(2, 3, 4, 4)), ("1x1", r(2, 1, 1)), ("2x2", r(2, 2))]:
    add("Det", {"x": a}, tag=tag, opset=11)
singular = r(3, 3)
singular[2] = singular[0] + singular[1]  # rank 2: its cofactors are not all zero
add("Det", {"x": singular}, tag="singular", opset=11)

# -- Gemm: transposes, alpha/beta, C broadcast or absent (C is required before opset 11) --------
for opset in (9, 11, 13):
    for ta, tb in [(0, 0), (1, 0), (0, 1), (1, 1)]:
        a = r(4, 3) if ta else r(3, 4)
        b = r(5, 4) if tb else r(4, 5)
        attrs = {"transA": ta, "transB": tb, "alpha": 0.7, "beta": 1.3}
        add("Gemm", {"a": a, "b": b, "c": r(3, 5)}, attrs, tag=f"t{ta}{tb}", opset=opset)
    add("Gemm", {"a": r(3, 4), "b": r(5, 4), "c": r(5)}, {"transB": 1}, tag="c-row", opset=opset)
    add("Gemm", {"a": r(3, 4), "b": r(4, 5), "c": r(3, 1)}, {"beta": 0.5}, tag="c-col",
        opset=opset)  # fmt: skip
    add("Gemm", {"a": r(3, 4), "b": r(4, 5), "c": r(1)}, tag="c-scalar", opset=opset)
for opset in (11, 13):
    add("Gemm", {"a": r(4, 3), "b": r(5, 4)}, {"transA": 1, "transB": 1, "alpha": 2.0},
        tag="no-c", opset=opset)  # fmt: skip
add("Gemm", {"a": r(3, 4)}, {"transB": 1}, tag="dynamic", opset=9, dynamic=True,
    constants={"b": r(5, 4), "c": r(5)})  # fmt: skip


# -- Conv: 1-D/2-D/3-D, strides, dilations, pads, auto_pad, groups, bias ------------------------
def conv(tag, x, w, opset=17, bias=True, **attrs):
    add("Conv", {"x": x, "w": w, **({"b": r(w.shape[0])} if bias else {})}, attrs, tag, opset=opset)


conv("1d", r(2, 3, 7), r(4, 3, 3), strides=[2], pads=[1, 2], dilations=[2])
conv("2d", r(1, 2, 6, 5), r(3, 2, 3, 2), strides=[2, 1], pads=[1, 0, 0, 1], dilations=[1, 2])
conv("2d-stride3", r(1, 2, 8, 7), r(2, 2, 2, 3), strides=[3, 2], pads=[0, 2, 1, 0])
conv("3d", r(1, 2, 4, 4, 3), r(2, 2, 2, 2, 2), strides=[2, 1, 1], pads=[1, 0, 0, 0, 1, 1])
conv("groups", r(1, 4, 5, 5), r(4, 2, 3, 3), group=2, pads=[1, 1, 1, 1])
conv("groups-strided", r(1, 6, 6, 5), r(3, 2, 3, 3), group=3, strides=[2, 2])
conv("depthwise", r(1, 3, 5, 5), r(3, 1, 3, 3), group=3, strides=[2, 2], pads=[1, 1, 1, 1])
conv("depthwise-x2", r(1, 2, 5, 5), r(4, 1, 3, 3), group=2, dilations=[2, 1])
conv("groups-shrink", r(1, 4, 5, 5), r(2, 2, 3, 3), group=2)
conv("same-upper", r(1, 2, 6, 5), r(2, 2, 3, 2), auto_pad="SAME_UPPER", strides=[2, 2])
conv("same-lower", r(1, 2, 6, 5), r(2, 2, 2, 2), auto_pad="SAME_LOWER")
conv("valid", r(1, 2, 6, 5), r(2, 2, 3, 2), auto_pad="VALID", strides=[2, 1])
for opset in (9, 11, 22):
    conv("nobias", r(1, 2, 6, 5), r(3, 2, 3, 3), opset, False, strides=[2, 2], pads=[1] * 4)
add("Conv", {"x": r(2, 2, 6, 5)}, {"strides": [2, 2], "pads": [1, 1, 1, 1]}, "dynamic",
    dynamic=True, opset=9, constants={"w": r(3, 2, 3, 3), "b": r(3)})  # fmt: skip
add("Conv", {"x": r(2, 4, 5, 4)}, {"group": 2, "auto_pad": "SAME_UPPER"}, "dynamic-groups",
    dynamic=True, opset=13, constants={"w": r(4, 2, 3, 3)})  # fmt: skip
# Constant weights and stride 1 take the Conv-with-flipped-kernel route for dx; flip-overpadded's
# padding exceeds (k-1)*d, so it falls back to ConvTranspose.
for tag, x, w, attrs in [
    ("flip-2d", r(2, 3, 6, 5), r(4, 3, 3, 2), {"pads": [1, 0, 2, 1], "dilations": [1, 2]}),
    ("flip-1d", r(2, 2, 7), r(3, 2, 3), {"pads": [2, 0]}),
    ("flip-3d", r(1, 2, 4, 4, 3), r(2, 2, 2, 2, 2), {"pads": [1, 0, 1, 0, 1, 0]}),
    ("flip-depthwise", r(2, 3, 5, 5), r(3, 1, 3, 3), {"group": 3, "pads": [1, 1, 1, 1]}),
    ("flip-depthwise-x2", r(1, 2, 5, 5), r(4, 1, 3, 3), {"group": 2, "dilations": [2, 1]}),
    ("flip-groups", r(1, 4, 5, 5), r(6, 2, 3, 3), {"group": 2, "pads": [0, 1, 2, 1]}),
    ("flip-same-lower", r(1, 2, 6, 5), r(2, 2, 2, 2), {"auto_pad": "SAME_LOWER"}),
    ("flip-overpadded", r(1, 2, 4, 4), r(3, 2, 1, 1), {"pads": [1, 1, 1, 1]}),
    # strided, 16 input channels: ConvTranspose, then an identity Conv back into NCHWc
    ("strided-reenter", r(2, 16, 5, 6), r(4, 16, 3, 3), {"strides": [2, 2], "pads": [1] * 4}),
    ("strided-1x1-reenter", r(2, 16, 5, 5), r(8, 16, 1, 1), {"strides": [2, 2]}),
    # strided, 16 input channels, a small output grid: a Conv per phase, then DepthToSpace
    ("phases-4x4", r(1, 16, 7, 6), r(4, 16, 4, 4), {"strides": [2, 2], "pads": [1, 2, 1, 0]}),
    ("phases-stride3", r(1, 16, 8, 7), r(4, 16, 3, 4), {"strides": [3, 3], "pads": [0, 1, 2, 0]}),
    ("phases-5x5", r(1, 16, 6, 6), r(2, 16, 5, 5), {"strides": [2, 2], "pads": [2] * 4}),
    ("phases-unreached", r(1, 16, 8, 7), r(4, 16, 3, 3), {"strides": [2, 2]}),
]:
    for opset in (9, 17):
        add("Conv", {"x": x}, attrs, f"{tag}-{opset}", dynamic=True, opset=opset,
            constants={"w": w, "b": r(w.shape[0])})  # fmt: skip


# -- ConvTranspose: strides, pads, output_padding, output_shape, auto_pad, depthwise, bias -------
def conv_t(tag, x, w, opset=17, bias=True, **attrs):
    inputs = {"x": x, "w": w, **({"b": r(w.shape[1])} if bias else {})}
    add("ConvTranspose", inputs, attrs, tag, opset=opset)


conv_t("2d", r(1, 2, 3, 3), r(2, 3, 3, 3), strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 0])
conv_t("1d", r(2, 2, 4), r(2, 3, 3), strides=[3], pads=[2, 1], dilations=[2])
conv_t("depthwise", r(1, 2, 3, 3), r(2, 1, 3, 3), 17, False, group=2, strides=[2, 1],
       dilations=[1, 2])  # fmt: skip
conv_t("output-shape", r(1, 2, 3, 3), r(2, 2, 2, 3), strides=[2, 2], output_shape=[6, 8])
conv_t("same-upper", r(1, 2, 3, 3), r(2, 2, 2, 3), strides=[2, 2], auto_pad="SAME_UPPER")
conv_t("same-lower", r(1, 2, 3, 3), r(2, 2, 3, 3), strides=[2, 2], auto_pad="SAME_LOWER")
conv_t("3d", r(1, 2, 2, 3, 2), r(2, 2, 2, 2, 2), strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0])
for opset in (9, 11):
    conv_t("nobias", r(1, 2, 3, 3), r(2, 2, 3, 3), opset, False, strides=[2, 2])
add("ConvTranspose", {"x": r(2, 3, 3, 2)}, {"strides": [2, 2], "pads": [1, 1, 0, 0]}, "dynamic",
    dynamic=True, opset=13, constants={"w": r(3, 2, 3, 3)})  # fmt: skip


# -- MaxPool: overlapping windows, pads, dilations, ceil_mode, auto_pad, 1-D/2-D/3-D -------------
def max_pool(tag, shape, opset, **attrs):
    add("MaxPool", {"x": distinct(*shape)}, attrs, tag, opset=opset)


max_pool("3x3s2", (1, 2, 7, 7), 9, kernel_shape=[3, 3], strides=[2, 2])
max_pool("pads", (1, 2, 7, 6), 9, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 0])
max_pool("2x2s2", (2, 1, 4, 6), 9, kernel_shape=[2, 2], strides=[2, 2])
max_pool("s1-same", (1, 2, 5, 5), 9, kernel_shape=[3, 3], auto_pad="SAME_UPPER")
max_pool("storage-order", (1, 2, 5, 5), 9, kernel_shape=[3, 3], strides=[2, 2], storage_order=1)
max_pool("ceil", (1, 2, 6, 6), 10, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
max_pool("1d", (2, 2, 9), 11, kernel_shape=[3], strides=[2], pads=[1, 1])
max_pool("same-lower", (1, 2, 6, 7), 11, kernel_shape=[2, 3], auto_pad="SAME_LOWER")
max_pool("1d-dilated-ceil", (2, 2, 8), 12, kernel_shape=[3], strides=[2], dilations=[2],
         ceil_mode=1, pads=[1, 0])  # fmt: skip
max_pool("valid", (1, 2, 6, 7), 13, kernel_shape=[3, 2], strides=[1, 2], auto_pad="VALID")
max_pool("3d", (1, 2, 4, 5, 4), 13, kernel_shape=[2, 3, 2], strides=[2, 1, 2],
         pads=[0, 1, 0, 1, 0, 1])  # fmt: skip
max_pool("dilated", (1, 1, 7, 8), 17, kernel_shape=[2, 3], dilations=[2, 2], pads=[1, 0, 1, 1])
max_pool("3x3s2-pads", (1, 2, 7, 7), 22, kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
# narrower than the window (two taps one offset apart): a class at a time, not by tap
max_pool("narrow", (1, 2, 5, 2), 9, kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
max_pool("3x3s2-pads-11", (2, 2, 7, 7), 11, kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
# windows that never overlap: MaxUnpool in float32 (odd sizes, ceil_mode, pads, gaps, 3-D)
max_pool("2x2s2-odd", (2, 2, 7, 5), 17, kernel_shape=[2, 2], strides=[2, 2])
max_pool("2x2s2-ceil", (1, 2, 7, 7), 17, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
max_pool("2x2s2-pads", (1, 2, 6, 7), 11, kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 0, 0])
max_pool("2-dil2-s4", (1, 2, 9, 9), 17, kernel_shape=[2, 2], strides=[4, 4], dilations=[2, 2])
max_pool("1d-gaps", (2, 2, 10), 9, kernel_shape=[2], strides=[3])
max_pool("3d-2s2", (1, 2, 4, 5, 4), 13, kernel_shape=[2, 2, 2], strides=[2, 2, 2])
# windows that tile x: first arg-maxes from a MaxPool of marks (1-D, 2-D, 3-D, uneven kernels)
max_pool("tiled-2x2", (2, 3, 4, 6), 13, kernel_shape=[2, 2], strides=[2, 2])
max_pool("tiled-2x3", (1, 2, 6, 6), 17, kernel_shape=[2, 3], strides=[2, 3])
max_pool("tiled-1d", (2, 2, 9), 11, kernel_shape=[3], strides=[3])
max_pool("tiled-3d", (1, 2, 4, 2, 6), 18, kernel_shape=[2, 2, 3], strides=[2, 2, 3])
# MaxUnpool would size a short padded axis at 0 or less (ONNX Runtime refuses): scattered
max_pool("2s2-pads-short", (2, 3, 1, 4), 17, kernel_shape=[2, 2], strides=[2, 2], pads=[1] * 4)
max_pool("3s3-pads-1d", (1, 2, 1), 17, kernel_shape=[3], strides=[3], pads=[2, 2])
add("MaxPool", {"x": distinct(1, 2, 7, 7)}, {"kernel_shape": [3, 3], "strides": [2, 2]},
    "indices-output", opset=11, n_outputs=2)  # fmt: skip
for opset in (9, 18):
    add("MaxPool", {"x": distinct(2, 2, 7, 7)}, {"kernel_shape": [3, 3], "strides": [2, 2],
        "pads": [1, 1, 1, 1]}, "dynamic", opset=opset, dynamic=True)  # fmt: skip


# -- AveragePool: count_include_pad, pads, ceil_mode, strides, dilations (opset 19) --------------
def avg_pool(tag, shape, opset, **attrs):
    add("AveragePool", {"x": r(*shape)}, attrs, tag, opset=opset)


avg_pool("3x3s2", (1, 2, 7, 7), 9, kernel_shape=[3, 3], strides=[2, 2])
avg_pool("pads", (1, 2, 7, 6), 9, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 0])
avg_pool("pads-incl", (1, 2, 7, 6), 9, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 0],
         count_include_pad=1)  # fmt: skip
avg_pool("1d", (2, 2, 9), 11, kernel_shape=[4], strides=[2], pads=[2, 1])
avg_pool("ceil-incl", (1, 2, 8, 7), 11, kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 0, 1],
         count_include_pad=1, ceil_mode=1)  # fmt: skip
avg_pool("ceil", (1, 2, 8, 7), 13, kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 0, 1],
         ceil_mode=1)  # fmt: skip
avg_pool("same-upper", (1, 2, 6, 5), 11, kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER")
avg_pool("same-lower", (1, 2, 6, 7), 13, kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER")
avg_pool("3d", (1, 1, 4, 5, 3), 17, kernel_shape=[2, 2, 2], strides=[2, 1, 1],
         pads=[0, 1, 0, 0, 0, 1])  # fmt: skip
avg_pool("dilated-incl", (2, 2, 9), 19, kernel_shape=[3], strides=[2], dilations=[2], pads=[1, 2],
         count_include_pad=1)  # fmt: skip
avg_pool("dilated", (1, 2, 7, 6), 22, kernel_shape=[2, 2], dilations=[2, 1], pads=[1, 1, 0, 1])
add("AveragePool", {"x": r(2, 2, 7, 7)}, {"kernel_shape": [3, 3], "strides": [2, 2],
    "pads": [1, 1, 1, 1]}, "dynamic", opset=13, dynamic=True)  # fmt: skip
# 16 channels, stride 1 or one window: in float32 the scatter is a depthwise Conv (one count
# folded into the kernel, or per-position counts multiplied in first)
avg_pool("dw-s1", (2, 16, 5, 6), 9, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
avg_pool("dw-s1-counts", (2, 16, 5, 6), 11, kernel_shape=[3, 2], pads=[1, 0, 1, 1])
avg_pool("dw-s1-dilated", (1, 16, 7, 6), 19, kernel_shape=[2, 2], dilations=[2, 1])
avg_pool("dw-one-window", (2, 16, 4, 4), 9, kernel_shape=[4, 4], strides=[4, 4])
avg_pool("dw-one-window-pads", (2, 16, 3, 4), 11, kernel_shape=[4, 4], strides=[2, 2],
         pads=[1, 0, 0, 0])  # fmt: skip


# -- LpPool (2, 11, 18: dilations, ceil_mode) and GlobalLpPool: p = 1 (a kink at 0), 2, 3 ----------
def away_from_zero(x, margin=0.1):
    """Values at least `margin` from 0, where |x|^p bends (p = 1 has a kink)."""
    return np.where(np.abs(x) < margin, np.sign(x + 1e-12) * 2 * margin, x)


def lp_pool(tag, shape, opset, **attrs):
    add("LpPool", {"x": away_from_zero(r(*shape))}, attrs, tag, opset=opset)


for p in (1, 2, 3):
    lp_pool(f"p{p}-3x3s2-pads", (1, 2, 7, 6), 11, kernel_shape=[3, 3], strides=[2, 2],
            pads=[1, 1, 1, 0], p=p)  # fmt: skip
    lp_pool(f"p{p}-dw-s1", (2, 16, 5, 4), 18, kernel_shape=[3, 2], pads=[1, 0, 1, 1], p=p)
    add("GlobalLpPool", {"x": away_from_zero(r(2, 3, 3, 4))}, {"p": p}, f"p{p}", opset=9)
lp_pool("default-p-1d", (2, 2, 9), 9, kernel_shape=[4], strides=[2])
lp_pool("ceil-dilated", (1, 2, 8, 7), 18, kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 1],
        ceil_mode=1)  # fmt: skip
lp_pool("same-upper", (1, 2, 6, 5), 11, kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER")
add("LpPool", {"x": away_from_zero(r(2, 2, 7, 7))}, {"kernel_shape": [3, 3],
    "strides": [2, 2]}, "dynamic", opset=18, dynamic=True)  # fmt: skip
add("GlobalLpPool", {"x": away_from_zero(r(2, 16, 5))}, tag="1d-dynamic", dynamic=True)

# -- global pools -------------------------------------------------------------------------------
for opset in (9, 13, 22):
    add("GlobalAveragePool", {"x": r(2, 3, 3, 4)}, tag="2d", opset=opset)
    add("GlobalMaxPool", {"x": distinct(2, 3, 3, 4)}, tag="2d", opset=opset)
add("GlobalAveragePool", {"x": r(2, 3, 5)}, tag="1d-dynamic", opset=11, dynamic=True)
add("GlobalAveragePool", {"x": r(1, 2, 2, 3, 2)}, tag="3d")
add("GlobalMaxPool", {"x": distinct(2, 3, 2, 3)}, tag="dynamic", opset=11, dynamic=True)
for opset in (9, 17):  # float32, 16 channels: a depthwise Conv spreads GO over the plane
    add("GlobalAveragePool", {"x": r(2, 16, 3, 4)}, tag="dw", opset=opset, dynamic=True)
add("GlobalAveragePool", {"x": r(1, 16, 9, 8)}, tag="wide")  # 72 taps: Expand instead


# -- normalisation ------------------------------------------------------------------------------
def bn_inputs(shape):
    c = shape[1]
    return {"x": r(*shape), "s": r(c), "b": r(c), "m": r(c), "v": r(c, low=0.5, high=1.5)}


for opset in (14, 15):
    add("BatchNormalization", bn_inputs((2, 3, 3, 2)), {"epsilon": 1e-3}, tag="4d", opset=opset)
    add("BatchNormalization", bn_inputs((4, 3)), tag="2d", opset=opset)
add("BatchNormalization", bn_inputs((2, 2, 2, 2, 2)), tag="5d", opset=22)
add("BatchNormalization", {"x": r(2, 3, 4)}, tag="dynamic", opset=14, dynamic=True,
    constants={k: v for k, v in bn_inputs((1, 3)).items() if k != "x"})  # fmt: skip

for opset in (9, 17, 22):
    add("InstanceNormalization", {"x": r(2, 3, 4, 3), "s": r(3), "b": r(3)}, {"epsilon": 1e-3},
        tag="2d", opset=opset)  # fmt: skip
add("InstanceNormalization", {"x": r(2, 3, 5), "s": r(3), "b": r(3)}, tag="1d", opset=11)
add("InstanceNormalization", {"x": r(2, 2, 4, 3)}, tag="dynamic", opset=13, dynamic=True,
    constants={"s": r(2), "b": r(2)})  # fmt: skip

for axis, s_shape in [(-1, (4,)), (1, (3, 4)), (1, (1, 4)), (-2, (3, 1))]:
    add("LayerNormalization", {"x": r(2, 3, 4), "s": r(*s_shape), "b": r(4)},
        {"axis": axis, "epsilon": 1e-3}, tag=f"axis{axis}-scale{s_shape}")  # fmt: skip
add("LayerNormalization", {"x": r(2, 3, 4), "s": r(4)}, tag="no-bias", opset=18)
for index, name in [(1, "mean"), (2, "inv-std-dev")]:
    add("LayerNormalization", {"x": r(2, 3, 4), "s": r(4), "b": r(4)}, tag=f"{name}-output",
        n_outputs=3, output_index=index, opset=18, wrt=["x"])  # fmt: skip
add("LayerNormalization", {"x": r(2, 3, 4)}, {"axis": 1}, tag="dynamic", opset=17, dynamic=True,
    constants={"s": r(3, 4), "b": r(3, 4)})  # fmt: skip

# RMSNormalization (opset 23) over the last axes, with the scale a graph input too
for axis, s_shape in [(-1, (4,)), (1, (3, 4))]:
    add("RMSNormalization", {"x": r(2, 3, 4), "s": r(*s_shape)}, {"axis": axis, "epsilon": 1e-3},
        tag=f"axis{axis}", opset=23)  # fmt: skip
add("RMSNormalization", {"x": r(2, 3, 4)}, tag="dynamic", opset=23, dynamic=True,
    constants={"s": r(4)})  # fmt: skip

# Attention (opset 23): plain, causal, grouped KV heads, an additive mask, 3-D inputs
B, S, L = 2, 3, 5
add("Attention", {"q": r(B, 2, S, 4), "k": r(B, 2, L, 4), "v": r(B, 2, L, 3)}, tag="4d", opset=23)
add("Attention", {"q": r(B, 2, L, 4), "k": r(B, 2, L, 4), "v": r(B, 2, L, 4)}, {"is_causal": 1},
    tag="causal", opset=23)  # fmt: skip
add("Attention", {"q": r(B, 4, S, 4), "k": r(B, 2, L, 4), "v": r(B, 2, L, 4)}, {"scale": 0.3},
    tag="gqa-scale", opset=23)  # fmt: skip
add("Attention", {"q": r(B, 2, S, 4), "k": r(B, 2, L, 4), "v": r(B, 2, L, 4),
                  "mask": r(S, L)}, tag="float-mask", opset=23)  # fmt: skip
add("Attention", {"q": r(B, S, 8), "k": r(B, L, 4), "v": r(B, L, 6)},
    {"q_num_heads": 2, "kv_num_heads": 1}, tag="3d-gqa", opset=23)  # fmt: skip
# softcap (Gemma 2): scores capped by c tanh(s / c) before the mask; small c so tanh bends
add("Attention", {"q": r(B, 4, S, 4), "k": r(B, 2, L, 4), "v": r(B, 2, L, 4),
                  "mask": r(S, L)}, {"softcap": 0.7, "is_causal": 1}, tag="softcap-gqa-mask",
    opset=23)  # fmt: skip
add("Attention", {"q": r(B, S, 8), "k": r(B, L, 8), "v": r(B, L, 6)},
    {"q_num_heads": 2, "kv_num_heads": 2, "softcap": 1.5, "scale": 2.0}, tag="3d-softcap",
    opset=23)  # fmt: skip


# RotaryEmbedding (opset 23): 4-D and 3-D (num_heads), halves or interleaved pairs, a partial
# rotary_embedding_dim, caches per batch and sequence or indexed by position_ids; the caches
# are random, not cos/sin pairs: the reverse rotation is the transpose, not the inverse
def rotary(tag, x, half, attrs=None, positions=None):
    b, s = x.shape[0], x.shape[2] if x.ndim == 4 else x.shape[1]
    rows = [7] if positions is not None else [b, s]
    consts = {"cos": r(*rows, half), "sin": r(*rows, half)}
    if positions is not None:
        consts["pos"] = positions
    add("RotaryEmbedding", {"x": x}, attrs, tag, opset=23, constants=consts)


rotary("4d", r(2, 2, 3, 8), 4)
rotary("4d-interleaved-positions", r(2, 2, 3, 8), 4, {"interleaved": 1},
       positions=np.array([[0, 2, 5], [6, 1, 1]], dtype=np.int64))  # fmt: skip
rotary("3d-heads", r(2, 3, 16), 4, {"num_heads": 2})
rotary("partial", r(1, 2, 3, 8), 2, {"rotary_embedding_dim": 4})
rotary("3d-partial-interleaved", r(2, 3, 12), 2, {"num_heads": 2, "rotary_embedding_dim": 4,
       "interleaved": 1})  # fmt: skip

# LpNormalization p = 2 (the reference's p = 1 sums x, not |x|: see test_lp1_and_mvn)
for axis in (-1, 1):
    add("LpNormalization", {"x": r(3, 4, 5)}, {"p": 2, "axis": axis}, tag=f"p2-axis{axis}",
        opset=9)  # fmt: skip


# GroupNormalization: scale and bias per group at opset 18, per channel at 21 (where the
# reference computes the statistics in float32 unless stash_type says double)
class GroupNormCase(Case):
    """onnx infers no type for GroupNormalization's output: adding it to zeros (their type)
    and a Reshape to x's constant shape give the checked output one. onnx's checker refuses
    GroupNormalization-18 (its schema is marked deprecated since 21 changed scale and bias),
    which ONNX Runtime and the reference evaluator run and igcli never checks: below opset 21
    the checker is passed over."""

    def run(self):
        if self.options["opset"] < 21:
            with mock.patch("onnx.checker.check_model"):
                return self._run()
        return self._run()

    def _run(self):
        x = self.inputs["x"]
        params = self.options.get("constants", {})
        consts = {**params, "zeros": np.zeros(x.shape), "shape": np.asarray(x.shape)}
        nodes = [
            helper.make_node(self.op, [*self.inputs, *params], ["g"], **self.attrs),
            helper.make_node("Add", ["zeros", "g"], ["c"]),
            helper.make_node("Reshape", ["c", "shape"], ["y"]),
        ]
        check_graph(nodes, self.inputs, "y", **{**self.options, "constants": consts})


def group_norm(tag, inputs, attrs, opset, **options):
    CASES.append(GroupNormCase("GroupNormalization", inputs, attrs,
                               id=f"GroupNormalization-{tag}-opset{opset}", opset=opset,
                               **options))  # fmt: skip


for opset, per in [(18, 2), (21, 6)]:
    double = {"stash_type": 11} if opset >= 21 else {}
    for shape in [(2, 6, 3), (2, 6, 2, 3), (3, 6)]:
        attrs = {"num_groups": 2, "epsilon": 1e-3, **double}
        group_norm(f"{shape}", {"x": r(*shape), "s": r(per), "b": r(per)}, attrs, opset)
    n = 3 if opset < 21 else 6
    group_norm("const-params", {"x": r(2, 6, 2, 2)}, {"num_groups": 3, **double}, opset,
               constants={"s": r(n), "b": r(n)})  # fmt: skip
# the default stash_type: the reference's statistics in float32, so a wider FD step
group_norm("stash-float", {"x": r(2, 6, 3), "s": r(6), "b": r(6)}, {"num_groups": 3}, 21,
           eps=3e-3, rtol=1e-3, atol=1e-3)  # fmt: skip
group_norm("one-group", {"x": r(2, 4, 5)}, {"num_groups": 1}, 18,
           constants={"s": r(1), "b": r(1)})  # fmt: skip

for opset, size in [(9, 3), (13, 5), (17, 1)]:
    add("LRN", {"x": r(4, 4, 2, 2)}, {"size": size, "alpha": 0.5, "beta": 0.75, "bias": 1.5},
        tag=f"size{size}", opset=opset)  # fmt: skip
# ORT accepts odd sizes only; the even window (one more channel after than before) is checked
# in float64 only.
add("LRN", {"x": r(5, 5, 2, 1)}, {"size": 4, "alpha": 0.3, "beta": 0.6}, tag="size4",
    check_ort=False)  # fmt: skip
add("LRN", {"x": r(3, 3, 2, 2)}, {"size": 3, "alpha": 0.2}, tag="dynamic", dynamic=True)

# -- Col2Im (torch's nn.Fold; MobileViTV2 fell back to finite differences without it) ----------
i64 = np.int64
add("Col2Im", {"x": r(2, 2 * 6, 16)}, constants={"image": np.array([5, 6], i64),
    "block": np.array([2, 3], i64)}, tag="2x3-blocks", opset=18)  # fmt: skip
add("Col2Im", {"x": r(1, 3 * 4, 6)}, {"strides": [2, 2], "pads": [1, 0, 1, 2],
    "dilations": [1, 2]}, constants={"image": np.array([5, 4], i64),
    "block": np.array([2, 2], i64)}, tag="strides-pads-dilations", opset=18)  # fmt: skip
add("Col2Im", {"x": r(2, 2 * 2, 4)}, constants={"image": np.array([5], i64),
    "block": np.array([2], i64)}, tag="1d", opset=18, dynamic=True)  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_rule(case):
    case.run()


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_float64_graph_is_well_typed(case):
    """Strict type inference over each float64 gradient graph: the reference evaluator mixes
    float32 constants into float64 math silently, ONNX Runtime would refuse them."""
    opts = case.options
    outputs = [f"y{k}" for k in range(opts.get("n_outputs", 1))]
    output = outputs[opts.get("output_index", 0)]
    constants, inputs = opts.get("constants") or {}, case.inputs
    schema = onnx.defs.get_schema(case.op, opts.get("opset", 17))
    if not any("tensor(double)" in c.allowed_type_strs for c in schema.type_constraints):
        # (RotaryEmbedding: float32 and narrower only) the same graph, typed in float32
        single = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in inputs.items()}
        constants = {k: v.astype(np.float32) if v.dtype.kind == "f" else v
                     for k, v in constants.items()}  # fmt: skip
        inputs = single
    node = helper.make_node(case.op, [*inputs, *constants], outputs, **case.attrs)
    model = make_model([node], inputs, output, opts.get("opset", 17), constants,
                       opts.get("dynamic", False))  # fmt: skip
    for name in opts.get("wrt") or list(inputs):
        grad_model = build_gradient_model(model, name, output)
        onnx.shape_inference.infer_shapes(grad_model, check_type=True, strict_mode=True)


def test_batch_normalization_opset9():
    """BatchNormalization-9 in inference form, in ONNX Runtime, against numpy differences."""
    eps = 1e-3
    inputs = bn_inputs((2, 3, 3, 2))
    seed = rng.standard_normal(inputs["x"].shape)

    def f(values):
        x, s, b, m, v = (values[k][None, :, None, None] if k != "x" else values[k] for k in "xsbmv")
        return np.sum(seed * (s * (x - m) / np.sqrt(v + eps) + b))

    node = helper.make_node("BatchNormalization", list("xsbmv"), ["y"], epsilon=eps)
    feeds = {k: a.astype(np.float32) for k, a in inputs.items()}
    model = make_model([node], feeds, "y", 9)
    for name in "xsbmv":
        sess = ort.InferenceSession(build_gradient_model(model, name, "y").SerializeToString())
        got = sess.run([GRAD], {**feeds, SEED: seed.astype(np.float32)})[0]
        expected = np.zeros_like(inputs[name])
        for i in range(expected.size):
            up, down = dict(inputs), dict(inputs)
            up[name], down[name] = inputs[name].copy(), inputs[name].copy()
            up[name].flat[i] += 1e-6
            down[name].flat[i] -= 1e-6
            expected.flat[i] = (f(up) - f(down)) / 2e-6
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"d/d{name}")


def _first_argmax_scatter(x, seed, k, s, pad):
    """numpy: each window's seed goes to its first maximum (row-major), summed over windows."""
    n, c, h, w = x.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)], constant_values=-np.inf)
    dx = np.zeros_like(xp)
    for i in range(seed.shape[2]):
        for j in range(seed.shape[3]):
            win = xp[:, :, i * s : i * s + k, j * s : j * s + k].reshape(n, c, -1)
            first = win.argmax(axis=2)
            for a in range(n):
                for b in range(c):
                    di, dj = divmod(int(first[a, b]), k)
                    dx[a, b, i * s + di, j * s + dj] += seed[a, b, i, j]
    return dx[:, :, pad : pad + h, pad : pad + w]


@pytest.mark.parametrize(("k", "s", "pad", "opset"), [(2, 2, 0, 9), (2, 2, 0, 17), (4, 4, 0, 11),
                                                      (3, 2, 1, 9), (3, 2, 1, 13), (3, 1, 1, 11),
                                                      (3, 2, 1, 18)])  # fmt: skip
def test_max_pool_ties_go_to_the_first_maximum(k, s, pad, opset):
    """Flat image regions make ties in every window: like PyTorch and ONNX Runtime, the whole
    gradient goes to the first maximum (each route: Scatter before opset 11, overlapping
    windows one class at a time before opset 16, ScatterElements adding from 16, marks for
    windows that tile x), never split and never to every tied input."""
    x = rng.integers(0, 2, size=(2, 3, 8, 8)).astype(np.float32)
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s],
                            pads=[pad] * 4)  # fmt: skip
    model = make_model([node], {"x": x}, "y", opset)
    sess = ort.InferenceSession(build_gradient_model(model, "x", "y").SerializeToString())
    out = (8 + 2 * pad - k) // s + 1
    seed = rng.standard_normal((2, 3, out, out)).astype(np.float32)
    got = sess.run([GRAD], {"x": x, SEED: seed})[0]
    np.testing.assert_allclose(got, _first_argmax_scatter(x, seed, k, s, pad), atol=1e-6)


@pytest.mark.parametrize(("x", "w", "attrs", "phases"), [
    ((1, 16, 14, 14), (8, 16, 3, 3), {"strides": [2, 2], "pads": [1] * 4}, True),
    ((1, 16, 21, 21), (8, 16, 3, 3), {"strides": [2, 2], "pads": [1] * 4}, False),  # 11 x 11
    ((1, 8, 14, 14), (8, 8, 3, 3), {"strides": [2, 2], "pads": [1] * 4}, False),  # 8 channels
    ((1, 16, 14, 14), (8, 16, 1, 1), {"strides": [2, 2]}, False),  # a phase no tap reaches
    ((1, 16, 14, 14), (8, 8, 3, 3), {"strides": [2, 2], "group": 2}, False),
    ((1, 16, 14, 14), (8, 16, 3, 3), {"strides": [2, 2], "dilations": [2, 2]}, False),
])  # fmt: skip
def test_a_strided_conv_on_a_small_grid_goes_back_by_phases(x, w, attrs, phases):
    """ONNX Runtime's ConvTranspose is slow where GO has few positions (ResNet-50's last
    3x3 stride-2 Conv, 7 x 7: 4.0 ms, its phases 2.6): there, up to 10 x 10, a Conv per
    phase and DepthToSpace; elsewhere the ConvTranspose."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    model = make_model([node], {"x": r(*x).astype(np.float32)}, "y", 17,
                       {"w": r(*w).astype(np.float32)})  # fmt: skip
    ops = {n.op_type for n in build_gradient_model(model, "x", "y").graph.node}
    assert ("DepthToSpace" in ops) == phases and ("ConvTranspose" in ops) != phases


def _max_pool_reference(x, y, seed, kernel, strides, dilations, begins, ends):
    """numpy, any 2-D window: each window's seed goes to its first tap equal to y, the
    window's max as ONNX Runtime found it (with a NaN in the window, the max of the taps
    after it), or to its last tap where none is (y NaN); summed over windows."""
    pads = [(0, 0), (0, 0), *zip(begins, ends, strict=True)]
    xp = np.pad(x, [(a, max(b, 0)) for a, b in pads], constant_values=-np.inf)
    dx = np.zeros(xp.shape, np.float64)
    taps = list(itertools.product(*[range(k) for k in kernel]))
    for i, j in np.ndindex(*seed.shape[2:]):
        rows = [i * strides[0] + t[0] * dilations[0] for t in taps]
        cols = [j * strides[1] + t[1] * dilations[1] for t in taps]
        for a, b in np.ndindex(*x.shape[:2]):
            hits = np.flatnonzero(xp[a, b, rows, cols] == y[a, b, i, j])
            first = hits[0] if len(hits) else len(taps) - 1
            dx[a, b, rows[first], cols[first]] += seed[a, b, i, j]
    h, w = x.shape[2:]
    return dx[:, :, begins[0] : begins[0] + h, begins[1] : begins[1] + w]


PHASE_POOLS = [  # (shape, attrs): every one goes by phases
    ((2, 3, 8, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((2, 3, 9, 7), {"kernel_shape": [3, 3], "strides": [2, 2]}),  # a column in no window
    ((1, 2, 7, 7), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 2, 11, 10), {"kernel_shape": [3, 2], "strides": [3, 3], "pads": [0, 1, 2, 0]}),
    ((1, 2, 9, 9), {"kernel_shape": [2, 3], "strides": [2, 2], "dilations": [2, 1]}),
    ((2, 2, 6, 6), {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),
    ((1, 2, 6, 5), {"kernel_shape": [5, 5], "strides": [1, 1], "pads": [2, 2, 2, 2]}),
    ((1, 2, 5, 2), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 2, 7, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 3, 3), {"kernel_shape": [2, 2], "strides": [3, 3]}),  # taps reach one phase
]


@pytest.mark.parametrize("opset", [10, 13, 17])
@pytest.mark.parametrize(("shape", "attrs"), PHASE_POOLS, ids=repr)
@pytest.mark.parametrize("values", ["distinct", "ties", "nans"])
def test_max_pool_by_phases_sends_each_window_to_its_first_maximum(shape, attrs, values, opset):
    """The phase route (SpaceToDepth, a Slice per tap, a one-hot ConvTranspose) against
    numpy: strides, dilations, uneven pads, ceil_mode, auto_pad, rows no window reaches;
    ties go to the first maximum; with NaNs, the first tap equal to the max ONNX
    Runtime found (which can be below a tap before a NaN), or the last where it is NaN."""
    if attrs.get("kernel_shape") == [5, 5] and opset >= 16:
        pytest.skip("from opset 16 a 5x5 window goes by ScatterElements")
    x = distinct(*shape).astype(np.float32)
    if values == "ties":
        x = rng.integers(0, 3, size=shape).astype(np.float32)
    elif values == "nans":
        x[rng.random(shape) < 0.2] = np.nan
    node = helper.make_node("MaxPool", ["x"], ["y"], **attrs)
    model = make_model([node], {"x": x}, "y", opset)
    grad_model = build_gradient_model(model, "x", "y")
    assert "SpaceToDepth" in {n.op_type for n in grad_model.graph.node} or attrs["strides"][0] == 1
    assert not any(n.op_type == "MaxPool" and len(n.output) == 2 for n in grad_model.graph.node)
    sess = ort.InferenceSession(grad_model.SerializeToString())
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    seed = rng.standard_normal(y.shape).astype(np.float32)
    got = sess.run([GRAD], {"x": x, SEED: seed})[0]
    win = ort_window(attrs, shape, y.shape)
    np.testing.assert_allclose(got, _max_pool_reference(x, y, seed, *win), rtol=1e-6, atol=1e-6)


def ort_window(attrs, shape, out_shape):
    """(kernel, strides, dilations, begins, ends) with auto_pad resolved as SAME_UPPER does."""
    kernel, strides = attrs["kernel_shape"], attrs["strides"]
    dilations = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    if attrs.get("auto_pad") == "SAME_UPPER":
        sides = zip(out_shape[2:], strides, kernel, dilations, shape[2:], strict=True)
        total = [max(0, (o - 1) * s + (k - 1) * d + 1 - n) for o, s, k, d, n in sides]
        pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    ends = [max(p, (o - 1) * s + (k - 1) * d + 1 - b - n) for p, o, s, k, d, b, n in
            zip(pads[2:], out_shape[2:], strides, kernel, dilations, pads[:2], shape[2:],
                strict=True)]  # fmt: skip
    return kernel, strides, dilations, pads[:2], ends


@pytest.mark.parametrize(
    ("kernel", "opset", "phases"), [(5, 13, True), (5, 17, False), (4, 17, True), (6, 13, False)]
)
def test_wide_max_pool_windows_keep_the_indices_route(kernel, opset, phases):
    """Four or five ops per tap: windows past 5x5 (past 4x4 from opset 16, where a scatter
    adds) go by MaxPool's Indices."""
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[kernel] * 2, strides=[1, 1])
    model = make_model([node], {"x": distinct(1, 2, 9, 9).astype(np.float32)}, "y", opset)
    nodes = build_gradient_model(model, "x", "y").graph.node
    assert any(n.op_type == "MaxPool" and len(n.output) == 2 for n in nodes) != phases


@pytest.mark.parametrize(("shape", "scatters"), [((1, 2, 9, 9), False), ((1, 2, 5, 2), True)])
def test_overlapping_max_pool_windows_go_by_tap_before_opset_16(shape, scatters):
    """Strides that differ by axis (no phases) at opset 9: the one-hot ConvTranspose of each
    window's tap, not classes of Gathers and Scatters; a window wider than the input keeps
    the classes."""
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 1],
                            pads=[1] * 4)  # fmt: skip
    model = make_model([node], {"x": distinct(*shape).astype(np.float32)}, "y", 9)
    ops = {n.op_type for n in build_gradient_model(model, "x", "y").graph.node}
    assert ("Scatter" in ops) == scatters and ("ConvTranspose" in ops) != scatters
    assert "SpaceToDepth" not in ops


@pytest.mark.parametrize(
    ("shape", "attrs", "dtype", "unpools"),
    [
        ((1, 2, 8), {}, np.float32, True),
        ((1, 2, 7), {"ceil_mode": 1}, np.float32, False),  # MaxUnpool would refuse 7
        ((1, 2, 8), {}, np.float64, False),  # ONNX Runtime's MaxUnpool is float only
    ],
)
def test_max_pool_windows_apart_go_back_by_max_unpool(shape, attrs, dtype, unpools):
    """A 1-D pool (the 2-D ones go by phases) whose windows are apart but do not tile x."""
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2], strides=[3], **attrs)
    model = make_model([node], {"x": distinct(*shape).astype(dtype)}, "y", 17)
    ops = {n.op_type for n in build_gradient_model(model, "x", "y").graph.node}
    assert ("MaxUnpool" in ops) == unpools and ("ScatterElements" in ops) != unpools


@pytest.mark.parametrize(("kernel", "shape", "route"), [
    ([2, 2], (1, 8, 6, 4), "MaxUnpool"),
    ([2, 2], (1, 8, 7, 4), "SpaceToDepth"),  # a row in no window: by phases
    ([2], (2, 3, 8), "MaxUnpool"),
    ([2], (2, 3, 7), "Indices"),  # 1-D, a row in no window: MaxPool's Indices
])  # fmt: skip
def test_max_pool_windows_that_tile_x_need_no_indices(kernel, shape, route):
    """ONNX Runtime finds a MaxPool's Indices one element at a time (a third of the digits
    CNN's gradient call); windows that tile x find the first arg-max with plain MaxPools."""
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=kernel, strides=kernel)
    model = make_model([node], {"x": distinct(*shape).astype(np.float32)}, "y", 17)
    nodes = build_gradient_model(model, "x", "y").graph.node
    indices = [n for n in nodes if n.op_type == "MaxPool" and len(n.output) == 2]
    assert bool(indices) == (route == "Indices")
    assert route == "Indices" or any(n.op_type == route for n in nodes)


def test_a_tiled_max_pool_window_of_nans_keeps_its_index_in_range():
    """A window whose max is NaN equals nothing: its index stays inside the window, so the
    call runs (F is NaN, which the session reports) instead of failing in MaxUnpool, and
    the other windows are routed as ever."""
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    x[:, :, :2, :2] = np.nan
    model = make_model([node], {"x": x}, "y", 17)
    sess = ort.InferenceSession(build_gradient_model(model, "x", "y").SerializeToString())
    seed = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    got = sess.run([GRAD], {"x": x, SEED: seed})[0]
    expected = _first_argmax_scatter(np.nan_to_num(x, nan=-np.inf), seed, 2, 2, 0)
    got[:, :, :2, :2] = expected[:, :, :2, :2] = 0
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("opset", [11, 17])
def test_a_max_pool_window_wholly_in_the_pads_sends_nothing_to_x(opset):
    """Dilated taps both in the pads: the window has no arg-max in x, though ONNX Runtime's
    Indices for it point into x (routed by them, x got GO: 0.25-1.4 off in a sweep)."""
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2], strides=[3],
                            dilations=[2], pads=[1, 1])  # fmt: skip
    x = rng.standard_normal((2, 3, 1)).astype(np.float32)
    model = make_model([node], {"x": x}, "y", opset)
    sess = ort.InferenceSession(build_gradient_model(model, "x", "y").SerializeToString())
    seed = rng.standard_normal((2, 3, 1)).astype(np.float32)
    np.testing.assert_array_equal(sess.run([GRAD], {"x": x, SEED: seed})[0], 0)


def _mvn(x, axes):
    centred = x - x.mean(axis=axes, keepdims=True)
    return centred / np.sqrt((centred**2).mean(axis=axes, keepdims=True))


def _lp1(x, axis):
    return x / np.abs(x).sum(axis=axis, keepdims=True)


LP1_AND_MVN = [  # (op, attrs, opset, shape, the function in float64 numpy)
    ("MeanVarianceNormalization", {}, 9, (2, 3, 4, 3), lambda x: _mvn(x, (0, 2, 3))),
    ("MeanVarianceNormalization", {}, 13, (2, 3, 4, 3), lambda x: _mvn(x, (0, 2, 3))),
    ("MeanVarianceNormalization", {"axes": [2, 3]}, 13, (2, 3, 4, 3), lambda x: _mvn(x, (2, 3))),
    ("MeanVarianceNormalization", {"axes": [-1]}, 13, (2, 3, 5), lambda x: _mvn(x, (2,))),
    ("MeanVarianceNormalization", {}, 13, (3, 4, 5), lambda x: _mvn(x, (0, 2))),  # axis 3 dropped
    ("LpNormalization", {"p": 1, "axis": -1}, 9, (3, 4, 5), lambda x: _lp1(x, -1)),
    ("LpNormalization", {"p": 1, "axis": 0}, 9, (3, 4, 5), lambda x: _lp1(x, 0)),
]


LP1_AND_MVN_IDS = [f"{c[0]}-{c[1]}-{c[2]}-{len(c[3])}d" for c in LP1_AND_MVN]
GRAPH_CHECKED_OPS = ("MeanVarianceNormalization", "MaxUnpool")  # (checked here, not in CASES)


@pytest.mark.parametrize("op,attrs,opset,shape,f", LP1_AND_MVN, ids=LP1_AND_MVN_IDS)
def test_lp1_and_mvn(op, attrs, opset, shape, f):
    """Ops whose reference kernel cannot check them (onnx's function for
    MeanVarianceNormalization adds a float epsilon, so it has no float64 form; its p = 1
    LpNormalization sums x, not |x|): ONNX Runtime's float32 gradient against float64
    central differences of the op's own formula, as ONNX Runtime computes it."""
    x = rng.uniform(-1, 1, shape)
    x = np.where(np.abs(x) < 0.1, np.sign(x + 1e-12) * 0.2, x)  # off sign's kink
    model = make_model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": x.astype(np.float32)},
                       "y", opset)  # fmt: skip
    seed = rng.standard_normal(shape)
    sess = ort.InferenceSession(build_gradient_model(model, "x", "y").SerializeToString())
    got = sess.run([GRAD], {"x": x.astype(np.float32), SEED: seed.astype(np.float32)})[0]
    want, eps = np.zeros(shape), 1e-6
    for i in range(x.size):
        step = np.zeros(x.size)
        step[i] = eps
        step = step.reshape(shape)
        want.reshape(-1)[i] = np.sum(seed * (f(x + step) - f(x - step))) / (2 * eps)
    forward = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x.astype(np.float32)})
    np.testing.assert_allclose(forward[0], f(x), rtol=1e-4, atol=1e-5)  # the same function
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


@pytest.mark.parametrize("opset", [9, 11])
def test_max_unpool(opset):
    """MaxUnpool writes x back at a MaxPool's indices (of another tensor here), into the
    default shape or a given output_shape (opset 11): dx reads GO there."""
    shape = ["shape"] if opset >= 11 else []
    size = [1, 2, 5, 5] if shape else [1, 2, 4, 4]
    nodes = [
        helper.make_node("MaxPool", ["p"], ["pooled", "idx"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxUnpool", ["x", "idx", *shape], ["u"], kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Reshape", ["u", "size"], ["y"]),  # (a static shape for the seed)
    ]  # fmt: skip
    constants = {"size": np.array(size, np.int64)}
    if shape:
        constants["shape"] = np.array(size, np.int64)
    check_graph(nodes, {"p": distinct(1, 2, 4, 4), "x": r(1, 2, 2, 2)}, "y", wrt=["x"],
                opset=opset, constants=constants)  # fmt: skip
