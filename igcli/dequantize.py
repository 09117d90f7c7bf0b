"""`--dequantize`: a quantized model's float twin, the function its integers approximate.

A quantized model rounds its activations to integers, so its output is a staircase in the
input: the gradient is zero almost everywhere and Integrated Gradients can attribute nothing
(the session says so). What such a model's user wants explained is the function the integers
stand for: the same graph and the same quantized weights, computed without rounding the
activations. This module writes that model in standard ONNX:

- weights stored as integers (a DequantizeLinear of an initializer, a QLinear op's weight, an
  integer op's constant operand) become float initializers, computed as the kernels do;
- an activation's QuantizeLinear becomes x / scale + zero_point, clipped to the integer type's
  range but not rounded (saturation is part of the function; rounding makes the staircase).
  A tensor that held integers then holds the same values unrounded, and ops that only move
  values (Reshape, MaxPool, Concat, ...) carry them as they carried the integers;
- a DequantizeLinear of such a tensor becomes (u - zero_point) * scale;
- DynamicQuantizeLinear's tensor is its input, with scale 1 and zero point 0, so the integer
  ops after it multiply by 1 where they multiplied by the scale;
- ConvInteger, MatMulInteger, QLinearConv, QLinearMatMul and ONNX Runtime's QGemm,
  QLinearAdd, QLinearMul, QLinearAveragePool, QLinearGlobalAveragePool, QLinearSigmoid,
  QLinearLeakyRelu and QLinearConcat become their float op between a dequantization and a
  quantization written as above.

Anything else that reads integers computed from the input is refused by name: the model is
then explained as it is, or not at all, never by a twin that computes something else.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from igcli.autodiff.contrib import MS, node_arg, node_attr
from igcli.autodiff.subgraphs import constant_values, node_inputs, subgraphs
from igcli.errors import ModelError

_RANGES = {
    TensorProto.UINT8: (0, 255),
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535),
    TensorProto.INT16: (-32768, 32767),
}
# ops that move or select values without computing new ones: they carry unrounded values as
# they carried integers (input 0 is the data; other inputs are shapes, indices, axes)
_CARRY = {
    "Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather",
    "Split", "Concat", "MaxPool", "GlobalMaxPool", "Resize", "Upsample", "DepthToSpace",
    "SpaceToDepth", "Tile", "Expand", "Pad", "ReduceMax", "ReduceMin", "Shape", "Size",
}  # fmt: skip
_INTEGER_OUT = {"Shape", "Size"}  # (their outputs are shapes, not values)
QUANTIZED_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
    "MatMulInteger", "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul",
    "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearConcat", "QLinearSoftmax", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
}  # fmt: skip


# ops that round activations to integers: a model with them is a step function of its input
ROUNDING_OPS = QUANTIZED_OPS - {"DequantizeLinear"}


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether the model rounds activations (a DequantizeLinear of weights alone does not)."""
    return any(n.op_type in ROUNDING_OPS for n in model.graph.node)


def float_twin(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """A copy of `model` computing without rounding (see the module doc); a ModelError
    naming the first op it cannot rewrite."""
    if any(
        n.op_type in QUANTIZED_OPS for g in _nested(model.graph) for n in g.node
    ):  # (a branch of If, a Loop body)
        raise ModelError("--dequantize: quantized ops inside an If or Loop are not handled", path)
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    _Rewriter(twin.graph, path, list(twin.opset_import)).run()
    return twin


def _nested(graph: onnx.GraphProto):
    """Every subgraph of `graph`'s nodes, at any depth."""
    for node in graph.node:
        for sub in subgraphs(node):
            yield sub
            yield from _nested(sub)


class _Rewriter:
    """One pass over the nodes (they come in topological order), writing the twin's."""

    def __init__(self, graph: onnx.GraphProto, path: Path, opsets) -> None:
        self.graph, self.path, self.opsets = graph, path, opsets
        self.consts = constant_values(graph)
        self.unrounded: set[str] = set()  # tensors that held integers and now hold floats
        # an unrounded tensor written by `quantized`: (the float it came from, scale, zero
        # point, the integer range), so that a dequantization with the same scale is a clip
        self.sources: dict[str, tuple[str, float, float, int, int]] = {}
        self.written: set[int] = set()  # ids of the nodes written here (pruned if unread)
        self.changed: set[str] = set()  # tensors whose type changed (their value_info goes)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        taken = {n for node in graph.node for n in [*node.input, *node.output]}
        taken |= {i.name for i in [*graph.initializer, *graph.input, *graph.output]}
        self._fresh = (n for k in itertools.count() if (n := f"igcli_dq_{k}") not in taken)

    def fail(self, node: onnx.NodeProto, why: str) -> None:
        raise ModelError(f"--dequantize: {node.op_type} {node.name or node.output[0]!r} {why}",
                         self.path)  # fmt: skip

    # -- writing --------------------------------------------------------------------------

    def const(self, value: np.ndarray, name: str | None = None) -> str:
        name = name or next(self._fresh)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        self.consts[name] = np.asarray(value)
        return name

    def op(self, op: str, *inputs: str, out: str | None = None, **attrs) -> str:
        name = out or next(self._fresh)
        self.nodes.append(helper.make_node(op, list(inputs), [name], **attrs))
        self.written.add(id(self.nodes[-1]))
        return name

    # -- values ---------------------------------------------------------------------------

    def value(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def scalar(self, node: onnx.NodeProto, name: str, what: str) -> np.ndarray:
        """A constant holding one value (a scale or zero point of a computed tensor)."""
        v = self.value(name)
        if v is None or v.size != 1:
            self.fail(node, f"has a {what} that is not one constant (per-axis or computed)")
        return v.reshape(())

    def dequantized(self, node: onnx.NodeProto, x: str, s: str, zp: str, axis: int = 1) -> str:
        """The float value of integers x with scale s and zero point zp: a folded initializer
        for constant x, else (u - zp) * s of its unrounded value."""
        xv, sv = self.value(x), self.value(s)
        if xv is not None and sv is not None and (not zp or self.value(zp) is not None):
            return self.const(_dequantize(xv, sv, self.value(zp), axis))
        if x not in self.unrounded:
            self.fail(node, f"reads integers {x!r} that are not quantized from the input")
        scale = self.scalar(node, s, "scale")
        zero = self.scalar(node, zp, "zero point") if zp else np.zeros((), np.int64)
        if x in self.sources and self.sources[x][1:3] == (float(scale), float(zero)):
            # dequantized with the scale it was quantized with: y clipped to the range
            y, step, at, lo, hi = self.sources[x]
            top = self.op("Min", y, self.const(np.array((hi - at) * step, scale.dtype)))
            return self.op("Max", top, self.const(np.array((lo - at) * step, scale.dtype)))
        shifted = x
        if zero != 0:
            shifted = self.op("Sub", x, self.const(zero.astype(scale.dtype)))
        return self.op("Mul", shifted, s if self.value(s) is not None else self.const(scale))

    def quantized(
        self, node: onnx.NodeProto, y: str, s: str, zp: str, out: str, elem: int | None = None
    ) -> None:
        """Unrounded integers of float y with scale s and zero point zp, into `out`."""
        scale = self.scalar(node, s, "scale")
        if zp:
            zero = self.scalar(node, zp, "zero point")
            elem = helper.np_dtype_to_tensor_dtype(zero.dtype)
        else:
            zero = np.zeros((), np.int64)
            elem = elem or TensorProto.UINT8
        if elem not in _RANGES:
            self.fail(node, f"quantizes to {TensorProto.DataType.Name(elem)}, not handled")
        lo, hi = _RANGES[elem]
        u = self.op("Div", y, self.const(scale))
        if zero != 0:
            u = self.op("Add", u, self.const(zero.astype(scale.dtype)))
        u = self.op("Min", u, self.const(np.array(hi, scale.dtype)))
        self.op("Max", u, self.const(np.array(lo, scale.dtype)), out=out)
        self.unrounded.add(out)
        self.changed.add(out)
        self.sources[out] = (y, float(scale), float(zero), lo, hi)

    def shifted(self, node: onnx.NodeProto, x: str, zp: str, axis: int) -> str:
        """x - zp as floats: an integer op's operand (folded when constant)."""
        xv = self.value(x)
        if xv is not None:
            return self.const(_dequantize(xv, np.ones((), np.float32), self.value(zp), axis))
        if x not in self.unrounded:
            self.fail(node, f"reads integers {x!r} that are not quantized from the input")
        if not zp:
            return x
        zero = self.value(zp)
        if zero is None:
            self.fail(node, "has a computed zero point")
        if not np.any(zero):  # (DynamicQuantizeLinear's, here)
            return x
        return self.op("Sub", x, self.const(zero.astype(np.float32)))

    # -- the pass -------------------------------------------------------------------------

    def run(self) -> None:
        for node in self.graph.node:
            handle = getattr(self, f"_{node.op_type}", None)
            if node.op_type in QUANTIZED_OPS and node.domain in ("", "ai.onnx", MS) and handle:
                handle(node)
            elif any(i in self.unrounded for i in node.input):
                self._carried(node)
            else:
                self.nodes.append(node)
        outputs = {o.name for o in self.graph.output}
        if held := sorted(outputs & self.changed):
            raise ModelError(f"--dequantize: output {held[0]!r} holds integers", self.path)
        keep = [v for v in self.graph.value_info if v.name not in self.changed]
        del self.graph.value_info[:]
        self.graph.value_info.extend(keep)
        del self.graph.node[:]
        self.graph.node.extend(self._read())
        used = {o.name for o in self.graph.output}
        used.update(*(node_inputs(n) for n in self.graph.node))
        inits = [i for i in [*self.graph.initializer, *self.inits] if i.name in used]
        del self.graph.initializer[:]  # (the integer weights folded into float ones go)
        self.graph.initializer.extend(inits)

    def _read(self) -> list[onnx.NodeProto]:
        """The nodes, less those written here whose outputs nothing reads (a quantization
        that only a dequantization with its own scale read, which became a clip)."""
        read = {o.name for o in self.graph.output}
        kept = []
        for node in reversed(self.nodes):
            if id(node) not in self.written or read.intersection(node.output):
                kept.append(node)
                read.update(node_inputs(node))
        return kept[::-1]

    def _carried(self, node: onnx.NodeProto) -> None:
        """An op reading unrounded values: carried if it only moves them, else refused."""
        if node.op_type == "Cast" and node.domain in ("", "ai.onnx"):
            to = node_attr(node, "to", None)
            if to in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
                self.nodes.append(node)  # (integers read as floats: the unrounded values)
                return
        if node.op_type not in _CARRY or node.domain not in ("", "ai.onnx"):
            self.fail(node, "reads quantized integers and is not handled")
        if node.op_type == "Pad" and len(node.input) > 2 and node.input[2]:
            fill = self.value(node.input[2])
            if fill is None:
                self.fail(node, "pads with a computed value")
            node.input[2] = self.const(fill.astype(np.float32))
        if node.op_type == "Concat":  # (integers beside them: the same numbers as floats)
            for k, name in enumerate(node.input):
                if name not in self.unrounded:
                    part = self.value(name)
                    if part is None:
                        self.fail(node, f"joins them to integers {name!r} that are computed")
                    node.input[k] = self.const(part.astype(np.float32))
        self.nodes.append(node)
        if node.op_type in _INTEGER_OUT:
            return
        data = [o for o in node.output if o][: None if node.op_type == "Split" else 1]
        self.unrounded.update(data)
        self.changed.update(data)

    def _QuantizeLinear(self, node: onnx.NodeProto) -> None:
        x, s = node.input[0], node.input[1]
        zp = node_arg(node, 2)
        axis = node_attr(node, "axis", 1)
        xv, sv = self.value(x), self.value(s)
        if xv is not None and sv is not None and (not zp or self.value(zp) is not None):
            zv = self.value(zp)
            elem = (
                helper.np_dtype_to_tensor_dtype(zv.dtype)
                if zv is not None
                else (node_attr(node, "output_dtype", 0) or TensorProto.UINT8)
            )
            if elem not in _RANGES:
                self.fail(node, f"quantizes to {TensorProto.DataType.Name(elem)}, not handled")
            self.const(_quantize(xv, sv, zv, axis, elem), node.output[0])
            return
        self.quantized(node, x, s, zp, node.output[0], node_attr(node, "output_dtype", 0) or None)

    def _DequantizeLinear(self, node: onnx.NodeProto) -> None:
        zp = node_arg(node, 2)
        if node_attr(node, "block_size", 0) and self.value(node.input[0]) is None:
            self.fail(node, "dequantizes a computed tensor in blocks")
        name = self.dequantized(node, node.input[0], node.input[1], zp, node_attr(node, "axis", 1))
        self._rename(name, node.output[0])

    def _rename(self, name: str, out: str) -> None:
        """Make `out` the name of what was just written as `name`."""
        if self.nodes and self.nodes[-1].output[0] == name:
            self.nodes[-1].output[0] = out
        elif name in self.consts and self.inits and self.inits[-1].name == name:
            self.inits[-1].name = out
            self.consts[out] = self.consts.pop(name)
        else:
            self.op("Identity", name, out=out)

    def _DynamicQuantizeLinear(self, node: onnx.NodeProto) -> None:
        y, scale, zero = (list(node.output) + ["", "", ""])[:3]
        self.op("Identity", node.input[0], out=y)
        self.unrounded.add(y)
        self.changed.add(y)
        if scale:
            self.const(np.ones((), np.float32), scale)
        if zero:  # (a float 0: its readers are rewritten here, which read it as such)
            self.const(np.zeros((), np.float32), zero)
            self.changed.add(zero)

    def _integer_op(self, node: onnx.NodeProto, op: str, b_axis: int) -> None:
        a, b = node.input[0], node.input[1]
        a_zp = node_arg(node, 2)
        b_zp = node_arg(node, 3)
        left = self.shifted(node, a, a_zp, 1)
        right = self.shifted(node, b, b_zp, b_axis)
        self.nodes.append(helper.make_node(op, [left, right], [node.output[0]], name=node.name))
        self.nodes[-1].attribute.extend(node.attribute)
        self.changed.add(node.output[0])

    def _ConvInteger(self, node: onnx.NodeProto) -> None:
        self._integer_op(node, "Conv", 0)  # (a weight's zero point per output channel)

    def _MatMulInteger(self, node: onnx.NodeProto) -> None:
        self._integer_op(node, "MatMul", -1)  # (B's zero point per column)

    def _float_op(
        self,
        node: onnx.NodeProto,
        op: str,
        operands: list[tuple[int, int, int, int]],
        out: tuple[int, int] | None,
        extra: list[str] | None = None,
        attrs: dict | None = None,
    ) -> None:
        """node as `op` on dequantized operands ((value, scale, zero point, axis) input
        positions), quantized again with the scale and zero point at `out` (positions)."""
        ins = list(node.input) + [""] * 12
        floats = [self.dequantized(node, ins[v], ins[s], ins[z], a) for v, s, z, a in operands]
        y = self.op(op, *floats, *(extra or []), **(attrs or {}))
        if out is None or not ins[out[0]]:
            self._rename(y, node.output[0])
            return
        self.quantized(node, y, ins[out[0]], ins[out[1]], node.output[0])

    def _QLinearConv(self, node: onnx.NodeProto) -> None:
        ins = list(node.input) + [""]
        bias = []
        if len(node.input) > 8 and node.input[8]:
            b, xs, ws = (self.value(ins[k]) for k in (8, 1, 4))
            if b is None or xs is None or ws is None:
                self.fail(node, "has a computed bias or scale")
            bias = [self.const((b.astype(np.float64) * xs * ws).astype(xs.dtype))]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self._float_op(node, "Conv", [(0, 1, 2, 1), (3, 4, 5, 0)], (6, 7), bias, attrs)

    def _QLinearMatMul(self, node: onnx.NodeProto) -> None:
        self._float_op(node, "MatMul", [(0, 1, 2, 1), (3, 4, 5, -1)], (6, 7))

    def _QGemm(self, node: onnx.NodeProto) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = 0 if attrs.get("transB", 0) else -1  # (B's zero point per output column)
        extra = []
        if len(node.input) > 6 and node.input[6]:
            c, xs, ws = (self.value(node.input[k]) for k in (6, 1, 4))
            if c is None or xs is None or ws is None:
                self.fail(node, "has a computed bias or scale")
            extra = [self.const((c.astype(np.float64) * xs * ws).astype(xs.dtype))]
        out = (7, 8) if len(node.input) > 7 and node.input[7] else None
        self._float_op(node, "Gemm", [(0, 1, 2, 1), (3, 4, 5, axis)], out, extra, attrs)

    def _QLinearAdd(self, node: onnx.NodeProto) -> None:
        self._float_op(node, "Add", [(0, 1, 2, 1), (3, 4, 5, 1)], (6, 7))

    def _QLinearMul(self, node: onnx.NodeProto) -> None:
        self._float_op(node, "Mul", [(0, 1, 2, 1), (3, 4, 5, 1)], (6, 7))

    def _DynamicQuantizeMatMul(self, node: onnx.NodeProto) -> None:
        # A (float, rounded inside the kernel: no more) @ B dequantized, + bias
        a, b, s, zp, bias = (list(node.input) + [""] * 5)[:5]
        self._matmul(node, a, self.dequantized(node, b, s, zp, -1), bias)

    def _MatMulIntegerToFloat(self, node: onnx.NodeProto) -> None:
        a, b, a_s, b_s, a_zp, b_zp, bias = (list(node.input) + [""] * 7)[:7]
        left = self.dequantized(node, a, a_s, a_zp)
        self._matmul(node, left, self.dequantized(node, b, b_s, b_zp, -1), bias)

    def _matmul(self, node: onnx.NodeProto, a: str, b: str, bias: str) -> None:
        y = self.op("MatMul", a, b)
        self._rename(self.op("Add", y, bias) if bias else y, node.output[0])

    def _QLinearSigmoid(self, node: onnx.NodeProto) -> None:
        self._float_op(node, "Sigmoid", [(0, 1, 2, 1)], (3, 4))

    def _QLinearLeakyRelu(self, node: onnx.NodeProto) -> None:
        alpha = node_attr(node, "alpha", 0.01)
        self._float_op(node, "LeakyRelu", [(0, 1, 2, 1)], (3, 4), attrs={"alpha": alpha})

    def _QLinearGlobalAveragePool(self, node: onnx.NodeProto) -> None:
        if node_attr(node, "channels_last", 0):
            self.fail(node, "pools channels-last")
        self._float_op(node, "GlobalAveragePool", [(0, 1, 2, 1)], (3, 4))

    def _QLinearAveragePool(self, node: onnx.NodeProto) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.pop("channels_last", 0):
            self.fail(node, "pools channels-last")
        self._float_op(node, "AveragePool", [(0, 1, 2, 1)], (3, 4), attrs=attrs)

    def _QLinearSoftmax(self, node: onnx.NodeProto) -> None:
        # (its `opset` attribute says whose Softmax: before 13, the axes from `axis` on are
        # flattened into one; written as this graph's Softmax only where that is the same)
        graph_opset = next((o.version for o in self.opsets if o.domain in ("", "ai.onnx")), 13)
        if (node_attr(node, "opset", 13) >= 13) != (graph_opset >= 13):
            self.fail(node, "is a Softmax of another opset than the model's")
        attrs = {"axis": node_attr(node, "axis", -1)}
        self._float_op(node, "Softmax", [(0, 1, 2, 1)], (3, 4), attrs=attrs)

    def _QLinearConcat(self, node: onnx.NodeProto) -> None:
        n = (len(node.input) - 2) // 3
        operands = [(2 + 3 * k, 3 + 3 * k, 4 + 3 * k, 1) for k in range(n)]
        self._float_op(node, "Concat", operands, (0, 1), attrs={"axis": node_attr(node, "axis", 0)})


def _along(v: np.ndarray | None, rank: int, axis: int, size: int) -> np.ndarray | float:
    """A per-axis scale or zero point shaped to broadcast along `axis` of a rank-`rank` array
    (blocked ones, as long as that axis in blocks of equal size, repeated to it)."""
    if v is None:
        return 0.0
    v = v.astype(np.float64)
    if v.size == 1:
        return v.reshape(())
    axis %= rank
    if v.ndim == rank:  # blocked (opset 21)
        return np.repeat(v, -(-size // v.shape[axis]), axis=axis).take(range(size), axis=axis)
    return v.reshape([-1 if k == axis else 1 for k in range(rank)])


def _dequantize(x: np.ndarray, s: np.ndarray, zp: np.ndarray | None, axis: int) -> np.ndarray:
    """(x - zp) * s as DequantizeLinear computes it, in s's float type."""
    rank, size = max(x.ndim, 1), x.shape[axis % max(x.ndim, 1)] if x.ndim else 1
    shifted = x.astype(np.float64) - _along(zp, rank, axis, size)
    return (shifted * _along(s, rank, axis, size)).astype(s.dtype)


def _quantize(x: np.ndarray, s: np.ndarray, zp: np.ndarray | None, axis: int, elem: int):
    """QuantizeLinear of a constant: rounded half to even and saturated, as `elem`."""
    lo, hi = _RANGES[elem]
    rank, size = max(x.ndim, 1), x.shape[axis % max(x.ndim, 1)] if x.ndim else 1
    scaled = x.astype(np.float32) / np.asarray(_along(s, rank, axis, size), np.float32)
    q = np.rint(scaled) + _along(zp, rank, axis, size)
    return np.clip(q, lo, hi).astype(helper.tensor_dtype_to_np_dtype(elem))
