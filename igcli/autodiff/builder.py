"""The vocabulary gradient rules speak: read the forward node, emit backward nodes.

A rule receives a `NodeGrad` for one forward node and returns one gradient name (or None)
per forward input. Inside, `I(k)`/`O(k)` name the node's k-th input/output, `GO(k)` the
gradient arriving at output k, and `needs(k)` says whether input k wants a gradient at all.
Every emitted op is a standard ONNX op at the model's own opset; helpers such as
`reduce_sum`, `unsqueeze` and `slice` hide the attribute-versus-input changes between
opsets 9 and the newest, so rules read like the math.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SMALL = 16  # constants of at most this many elements are made once each (GraphEmitter.const)
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}

Dim = int | str | None  # a static size, a symbolic name, or unknown


@dataclass
class TensorInfo:
    elem_type: int
    shape: list[Dim] | None  # None when even the rank is unknown

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


@dataclass
class GraphEmitter:
    """Collects backward nodes and constants; knows the opset and the inferred types."""

    opset: int
    infos: dict[str, TensorInfo]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # forward values known now
    counter: list[int] = field(default_factory=lambda: [0])  # shared with child emitters
    prefix: str = "igcli_grad"
    # Pad outputs -> (padded tensor, pads, value, mode): lets the driver add up the
    # gradients of slices that tile a tensor as one Concat (see driver._concat_of_slices)
    pads: dict[str, tuple[str, tuple[int, ...], float, str]] = field(default_factory=dict)
    pad_uses: set[str] = field(default_factory=set)  # Pad outputs some emitted node reads
    dropped: set[str] = field(default_factory=set)  # outputs of nodes to leave out (emitted())
    # forward tensor -> the node computing it, so a rule can see the pattern it ends (an Erf
    # GELU's last Mul, say); shared with child emitters, which add their branches' nodes
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    # (dtype, shape, bytes) of each small constant -> its initializer, shared with children
    interned: dict[tuple, str] = field(default_factory=dict)

    def fresh(self, hint: str) -> str:
        self.counter[0] += 1
        return f"{self.prefix}/{hint}_{self.counter[0]}"

    def child(self) -> GraphEmitter:
        """An emitter for a subgraph body: its own nodes; names, types, constants,
        initializers (kept in the main graph, visible from every scope) and producers shared."""
        return GraphEmitter(self.opset, self.infos, [], self.initializers, self.constants,
                            self.counter, self.prefix, producers=self.producers,
                            interned=self.interned)  # fmt: skip

    # -- emitting ----------------------------------------------------------------------
    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        """Emit one node with a single output and return that output's name."""
        return self.op_multi(op_type, inputs, 1, **attrs)[0]

    def op_multi(self, op_type: str, inputs: Sequence[str], n_out: int, **attrs) -> list[str]:
        outs = [self.fresh(op_type) for _ in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))
        if self.pads:
            self.pad_uses.update(i for i in inputs if i in self.pads)
        return outs

    def emitted(self) -> list[onnx.NodeProto]:
        """The nodes emitted, without those dropped since (left in `nodes` until now: one
        pass at the end, where a pass per drop made an unrolled GRU's build quadratic)."""
        if not self.dropped:
            return self.nodes
        return [n for n in self.nodes if n.output[0] not in self.dropped]

    def const(self, value, dtype: int | np.dtype | None = None) -> str:
        """A constant tensor (as an initializer); dtype is a numpy dtype or TensorProto type.
        A small one (a scalar, axes, a shape) is made once and shared: rules ask for the same
        few again and again (an unrolled LSTM's gradient asked for 57,673, of 89 values), and
        each initializer costs ONNX Runtime time to load and then to find it is shared."""
        if isinstance(dtype, int):
            dtype = helper.tensor_dtype_to_np_dtype(dtype)
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= SMALL else None
        if key is not None and key in self.interned:
            return self.interned[key]
        name = self.fresh("const")
        self.initializers.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self.interned[key] = name
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64))

    # -- type information ----------------------------------------------------------------
    def info(self, name: str) -> TensorInfo | None:
        return self.infos.get(name)

    def infos_elem(self, name: str) -> int:
        """The TensorProto element type of a tensor (FLOAT when unknown)."""
        info = self.infos.get(name)
        return info.elem_type if info else TensorProto.FLOAT

    def np_dtype(self, name: str) -> np.dtype:
        info = self.infos.get(name)
        elem = info.elem_type if info else TensorProto.FLOAT
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem))

    def rank(self, name: str) -> int | None:
        info = self.infos.get(name)
        return info.rank if info else None

    def static_shape(self, name: str) -> list[Dim] | None:
        info = self.infos.get(name)
        return None if info is None or info.shape is None else list(info.shape)

    def scalar(self, value: float, like: str) -> str:
        """A scalar constant with the float type of tensor `like`."""
        return self.const(np.asarray(value, dtype=self.np_dtype(like)))

    def set_info(self, name: str, like: str) -> None:
        if like in self.infos:
            self.infos[name] = self.infos[like]

    # -- opset-aware helpers ------------------------------------------------------------
    def reduce_sum(self, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        if not axes:
            return x
        axes = [int(a) for a in axes]
        if self.opset >= 13:
            return self.op("ReduceSum", x, self.ints(axes), keepdims=int(keepdims))
        return self.op("ReduceSum", x, axes=axes, keepdims=int(keepdims))

    def reduce(self, op_type: str, x: str, axes: Sequence[int] | None, keepdims: bool = True):
        """ReduceMax/ReduceMean/... over static axes (None: all), at any opset."""
        axes_list = None if axes is None else [int(a) for a in axes]
        takes_input = self.opset >= 18 or (op_type == "ReduceSum" and self.opset >= 13)
        if takes_input and axes_list is not None:
            return self.op(op_type, x, self.ints(axes_list), keepdims=int(keepdims))
        return self.op(op_type, x, axes=axes_list, keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", x, self.ints(axes))
        return self.op("Unsqueeze", x, axes=[int(a) for a in axes])

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", x, self.ints(axes))
        return self.op("Squeeze", x, axes=[int(a) for a in axes])

    def slice(
        self,
        x: str,
        starts: Sequence[int],
        ends: Sequence[int],
        axes: Sequence[int],
        steps: Sequence[int] | None = None,
    ) -> str:
        if self.opset >= 10:
            ins = [x, self.ints(starts), self.ints(ends), self.ints(axes)]
            if steps is not None:
                ins.append(self.ints(steps))
            return self.op("Slice", *ins)
        if steps is not None and any(s != 1 for s in steps):
            raise NotImplementedError("strided Slice needs opset 10")
        return self.op("Slice", x, starts=list(starts), ends=list(ends), axes=list(axes))

    def pad(
        self,
        x: str,
        pads: Sequence[int],
        value: float = 0.0,
        mode: str = "constant",
        like: str | None = None,
    ) -> str:
        """Pad with ONNX's [begin..., end...] layout over all axes; the value in the element
        type of `like` (default x: name a tensor of known type where x is a new one)."""
        if self.opset >= 11:
            ins = [x, self.ints(pads)]
            if mode == "constant":
                ins.append(self.scalar(value, like or x))
            out = self.op("Pad", *ins, mode=mode)
        else:
            out = self.op("Pad", x, pads=list(pads), value=float(value), mode=mode)
        self.pads[out] = (x, tuple(int(p) for p in pads), float(value), mode)
        return out

    def scatter_nd_add(self, data: str, indices: str, updates: str, like: str) -> str:
        """ScatterND with reduction add, for data in the float type of `like`. ONNX Runtime's
        CPU kernel has none for float16 or bfloat16 (the reverse of a float16 GatherND or
        GridSample failed at its first call): those add in float32 and cast back."""
        elem = self.infos_elem(like)
        if elem not in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
            return self.op("ScatterND", data, indices, updates, reduction="add")
        wide = [self.op("Cast", t, to=TensorProto.FLOAT) for t in (data, updates)]
        summed = self.op("ScatterND", wide[0], indices, wide[1], reduction="add")
        return self.op("Cast", summed, to=elem)

    def zeros_like(self, x: str) -> str:
        return self.op("Mul", x, self.scalar(0.0, x))

    def reduce_to_shape_of(self, grad: str, target: str) -> str:
        """Sum a broadcast gradient back to the shape of `target` (numpy broadcasting rules)."""
        g_rank, t_rank = self.rank(grad), self.rank(target)
        g_shape, t_shape = self.static_shape(grad), self.static_shape(target)
        if g_rank is None or t_rank is None:
            return self._reduce_to_shape_dynamic(grad, target)
        out = grad
        lead = g_rank - t_rank
        if lead > 0:
            out = self.reduce_sum(out, list(range(lead)), keepdims=False)
        axes = []
        for i in range(t_rank):
            t_dim = t_shape[i]
            g_dim = g_shape[lead + i]
            if t_dim == 1 and isinstance(g_dim, int) and g_dim != 1:
                axes.append(i)
            elif t_dim == 1 and g_dim != 1:
                # broadcast or not is known only at run time: a batch fixed at 1 where the
                # graph is built, with an Expand to a computed shape, runs with N rows
                return self._reduce_to_shape_dynamic(out, target)
            elif t_dim is None or (isinstance(t_dim, str) and t_dim != g_dim):
                return self._reduce_to_shape_dynamic(out, target)
        out = self.reduce_sum(out, axes, keepdims=True)
        if out == grad:
            return grad
        self.infos[out] = TensorInfo(self.infos[target].elem_type, list(t_shape))
        return out

    def _reduce_to_shape_dynamic(self, grad: str, target: str) -> str:
        """Runtime version for unknown shapes: needs ReduceSum with axes as input (opset 13)."""
        if self.opset < 13:
            raise NotImplementedError("broadcast of a tensor with unknown shape below opset 13")
        g_shape = self.op("Shape", grad)
        t_shape = self.op("Shape", target)
        g_rank = self.op("Size", g_shape)
        t_rank = self.op("Size", t_shape)
        one = self.ints([1])
        # left-pad the target shape with ones to the gradient's rank
        lead = self.op("Sub", g_rank, t_rank)
        ones = self.op("Expand", one, self.op("Reshape", lead, one))
        t_full = self.op("Concat", ones, t_shape, axis=0)
        reduce_axes_mask = self.op(
            "And",
            self.op("Equal", t_full, one),
            self.op("Not", self.op("Equal", g_shape, one)),
        )
        zero, step = (self.const(np.asarray(v, dtype=np.int64)) for v in (0, 1))  # scalars
        all_axes = self.op("Range", zero, g_rank, step)
        axes = self.op("Compress", all_axes, reduce_axes_mask, axis=0)
        summed = self.op("ReduceSum", grad, axes, keepdims=1, noop_with_empty_axes=1)
        return self.op("Reshape", summed, t_shape)


class NodeGrad:
    """What one rule sees: the forward node, its incoming gradients, and the emitter."""

    def __init__(
        self,
        node: onnx.NodeProto,
        grad_outputs: list[str | None],
        wants: list[bool],
        emitter: GraphEmitter,
    ) -> None:
        self.node = node
        self.e = emitter
        self._go = grad_outputs
        self._wants = wants
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    @property
    def opset(self) -> int:
        return self.e.opset

    def I(self, k: int) -> str:  # noqa: N802 - the vocabulary of gradient rules
        return self.node.input[k] if k < len(self.node.input) else ""

    def O(self, k: int) -> str:  # noqa: N802
        return self.node.output[k] if k < len(self.node.output) else ""

    def GO(self, k: int) -> str | None:  # noqa: N802
        return self._go[k] if k < len(self._go) else None

    def n_inputs(self) -> int:
        return len(self.node.input)

    def needs(self, k: int) -> bool:
        return k < len(self._wants) and self._wants[k]

    def attr(self, name: str, default=None):
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def producer(self, name: str) -> onnx.NodeProto | None:
        """The forward node that computes tensor `name` (None for inputs and weights)."""
        return self.e.producers.get(name)

    def const_input(self, k: int) -> np.ndarray | None:
        """The value of input k when it is a constant known at build time."""
        return self.e.constants.get(self.I(k))

    # Shortcuts to the emitter keep rules short.
    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        return self.e.op(op_type, *inputs, **attrs)

    def scalar(self, value: float, like: str | None = None) -> str:
        return self.e.scalar(value, like or self.I(0))

    def reduce_to(self, grad: str, k: int, like: str | None = None) -> str:
        """Undo broadcasting: sum `grad` (shaped like `like`, default output 0) to input k."""
        if grad not in self.e.infos:
            self.e.set_info(grad, like or self.O(0))
        return self.e.reduce_to_shape_of(grad, self.I(k))
