"""Where gradients come from. The IG core sees only `GradientSource`: points in, values and
gradients out. Two sources live here: the gradient graph (analytic, run by ONNX Runtime) and
central finite differences on the plain model (any model, costlier).

Every source explains the same scalar function: F(x) = output(x).flatten()[target], where
`output` already includes the softmax when softmax was asked for (see model.with_softmax).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper

from igcli.errors import InputError, NonFiniteGradient, UnsupportedOpsError
from igcli.model import (
    TOP_CLASS,
    Context,
    ModelRunner,
    check_finite,
    check_output,
    check_rows,
    join_rows,
    rows_of,
    stack_contexts,
)

TARGET = "igcli_target"  # per-row target index fed to a gradient model


class GradientSource(Protocol):
    name: str

    def values(self, points: np.ndarray) -> np.ndarray:
        """F at each point: shape [K]."""
        ...

    def values_and_gradients(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """F and dF/dx at each point: shapes [K] and [K, *sample_shape]."""
        ...


def pick(outputs: np.ndarray, target: int | np.ndarray) -> np.ndarray:
    """The target entry of each sample's flattened output (one target, or one per row)."""
    flat = outputs.reshape(len(outputs), -1)
    if np.ndim(target):
        return flat[np.arange(len(flat)), target].astype(np.float64)
    return flat[:, target].astype(np.float64)


def with_target_seed(grad_model: onnx.ModelProto, output_name: str) -> onnx.ModelProto:
    """Feed the gradient model a target index per row instead of a seed tensor.

    The seed becomes OneHot(target) over each row's flattened output, reshaped like the
    output, so callers need not know the output's shape; an index past the end (see
    model.NO_TARGET) gives an all-zero seed: a plain forward call on the same session; and
    model.TOP_CLASS seeds the row's own arg-max (the first largest value), the default target
    that is known only once the output is: the call that picks it gives its gradient too.
    """
    from igcli.autodiff import SEED
    from igcli.autodiff.driver import model_opset

    model = copy.deepcopy(grad_model)
    graph = model.graph
    seed_vi = next(i for i in graph.input if i.name == SEED)
    elem = seed_vi.type.tensor_type.elem_type or TensorProto.FLOAT
    graph.input.remove(seed_vi)
    graph.input.append(helper.make_tensor_value_info(TARGET, TensorProto.INT64, [None]))
    p = "igcli_seed/"
    out_vi = next((o for o in graph.output if o.name == output_name), None)
    scalar = (
        out_vi is not None
        and out_vi.type.tensor_type.HasField("shape")
        and not out_vi.type.tensor_type.shape.dim
    )  # a model summing over everything: one row per call, its output a single value
    depth = _row_size(out_vi)  # (values per row, where declared: read before they go)
    if out_vi is not None and not scalar:
        # The seed takes its shape from the output's at run time; a declared [1, C] (dynamic
        # axes given for the input only) let ONNX Runtime fold that Shape to [1, C] and
        # refuse a call of two rows: the declared sizes go, the rank stays.
        for dim in out_vi.type.tensor_type.shape.dim:
            dim.Clear()
    graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(
                np.array([1 if scalar else 0, -1], dtype=np.int64), p + "flat_shape"
            ),
            onnx.numpy_helper.from_array(np.array(1, dtype=np.int64), p + "one"),
            # float32: ONNX Runtime has no OneHot for double (the seed is cast below)
            onnx.numpy_helper.from_array(np.array([0, 1], dtype=np.float32), p + "off_on"),
            onnx.numpy_helper.from_array(np.array(TOP_CLASS, dtype=np.int64), p + "top_class"),
        ]
    )
    # target, or the row's arg-max where it is TOP_CLASS: target * (1 - top) + argmax * top
    # (integer arithmetic: Where needs opset 9, and these models go back to 7)
    nodes = [helper.make_node("Reshape", [output_name, p + "flat_shape"], [p + "flat"])]
    ranked = p + "flat"
    if elem not in (TensorProto.FLOAT, TensorProto.DOUBLE):  # (ORT's ArgMax: no float16)
        ranked = p + "flat32"
        nodes.append(helper.make_node("Cast", [p + "flat"], [ranked], to=TensorProto.FLOAT))
    nodes += [
        helper.make_node("ArgMax", [ranked], [p + "argmax"], axis=1, keepdims=0),
        helper.make_node("Equal", [TARGET, p + "top_class"], [p + "is_top"]),
        helper.make_node("Cast", [p + "is_top"], [p + "top"], to=TensorProto.INT64),
        helper.make_node("Sub", [p + "one", p + "top"], [p + "not_top"]),
        helper.make_node("Mul", [TARGET, p + "not_top"], [p + "given"]),
        helper.make_node("Mul", [p + "argmax", p + "top"], [p + "chosen"]),
        helper.make_node("Add", [p + "given", p + "chosen"], [p + "target"]),
    ]
    if model_opset(model) >= 9:
        nodes += [
            helper.make_node("Shape", [p + "flat"], [p + "flat_dims"]),
            helper.make_node("Gather", [p + "flat_dims", p + "one"], [p + "depth"], axis=0),
            helper.make_node(
                "OneHot", [p + "target", p + "depth", p + "off_on"], [p + "hot"], axis=-1
            ),
        ]
    else:  # no OneHot before opset 9 (the model zoo's "-7" files): compare with 0..depth-1
        if depth is None:
            # (with a sample's shape, shape inference mostly gives the output's size)
            raise UnsupportedOpsError(
                [f"OneHot before opset 9 (output {output_name!r} of open size)"]
            )
        graph.initializer.append(
            onnx.numpy_helper.from_array(np.arange(depth, dtype=np.int64)[None], p + "ids")
        )
        nodes += [
            helper.make_node("Unsqueeze", [p + "target"], [p + "column"], axes=[1]),
            helper.make_node("Equal", [p + "column", p + "ids"], [p + "is"]),
            helper.make_node("Cast", [p + "is"], [p + "hot"], to=TensorProto.FLOAT),
        ]
    nodes += [
        helper.make_node("Shape", [output_name], [p + "out_dims"]),
        helper.make_node("Reshape", [p + "hot", p + "out_dims"], [SEED]),
    ]
    if elem != TensorProto.FLOAT:
        nodes[-1].output[0] = p + "seed32"
        nodes.append(helper.make_node("Cast", [p + "seed32"], [SEED], to=elem))
    # The seed must exist before the first backward node reads it.
    first = next((k for k, n in enumerate(graph.node) if SEED in n.input), len(graph.node))
    for offset, node in enumerate(nodes):
        graph.node.insert(first + offset, node)
    return model


def _row_size(value_info) -> int | None:
    """Values per row of an output whose dims after the batch axis are all fixed."""
    if value_info is None or not value_info.type.tensor_type.HasField("shape"):
        return None
    dims = value_info.type.tensor_type.shape.dim[1:]
    if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    return int(np.prod([d.dim_value for d in dims]))


class GraphRunner:
    """A gradient model in one session: outputs and d(output[target])/dx for rows of points."""

    def __init__(self, runner: ModelRunner, cache_key: str | None = None) -> None:
        self.runner = runner  # its model has the TARGET input (see with_target_seed)
        self.check = None  # the self-check's GradientCheck (or its stored summary), once run
        self.cache_key = cache_key  # where its self-check verdict is kept (None: nowhere)
        self.bytes_per_row: int | None = None  # memory one more row costs, once measured
        self.stored: dict | None = None  # what an earlier run recorded ({}: nothing), once read

    @property
    def batch_size(self) -> int:
        return self.runner.batch_size

    def run(self, points: np.ndarray, context: Context | None = None) -> np.ndarray:
        """Outputs only (a zero seed): the model's forward values from the same session."""
        return self.runner.run(points, context)

    def run_with_gradients(
        self, points: np.ndarray, target: int | np.ndarray, context: Context | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Outputs and gradients of each row's target (one int, or an int per row);
        `context`: other inputs' values for one sample, or one entry per row."""
        from igcli.autodiff import GRAD

        r = self.runner
        outs, grads = [], []
        for start, batch in r.batches(points):
            rows = target[start : start + len(batch)] if np.ndim(target) else target
            targets = np.broadcast_to(np.asarray(rows, dtype=np.int64), (len(batch),))
            part = rows_of(context, start, len(batch), len(points))
            out, grad = r.call(batch, [r.output_name, GRAD], targets, part)
            outs.append(out)
            grads.append(grad)
        out, grad = join_rows(outs, r.output_name, r.path), join_rows(grads, "gradient", r.path)
        check_rows(out, len(points), r.output_name, r.path)
        if grad.shape != points.shape:  # (the graph's reading of the rows, as the output's)
            raise InputError(
                f"the gradient graph gives a gradient of shape {list(grad.shape)} for points "
                f"of shape {list(points.shape)}: the model's first axis is not a batch",
                r.path,
            )
        check_output(out, r.output_name, r.path)
        check_finite(grad, "gradient", r.path, NonFiniteGradient)  # (where F is finite)
        return out, grad


class GraphGradients:
    """Analytic gradients from the gradient graph: one model call gives F and dF/dx."""

    name = "graph"

    def __init__(
        self, graph: GraphRunner, target: int | np.ndarray, context: Context | None = None
    ) -> None:
        # target: one output index, or one per row of the points (see merge); context: the
        # sample's values of other inputs (a mask, say), or one entry per row
        self.graph, self.target, self.context = graph, target, context

    @classmethod
    def merge(cls, per_row: list[GraphGradients]) -> GraphGradients:
        """One source for points of several problems: each row keeps its own target (and
        its own sample's context)."""
        targets = np.array([s.target for s in per_row])
        return cls(per_row[0].graph, targets, stack_contexts([s.context for s in per_row]))

    def values(self, points: np.ndarray) -> np.ndarray:
        return pick(self.graph.run(points, self.context), self.target)

    def values_and_gradients(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs, grads = self.graph.run_with_gradients(points, self.target, self.context)
        return pick(outputs, self.target), grads.astype(np.float64)


class Forward(Protocol):
    batch_size: int

    def run(self, points: np.ndarray) -> np.ndarray: ...


class Bound:
    """A runner (ModelRunner or GraphRunner) with one sample's context bound to every call,
    for code that calls `run(points)` (finite differences, the gradient self-check)."""

    def __init__(self, runner, context: Context | None) -> None:
        self.runner, self.context = runner, context

    @property
    def batch_size(self) -> int:
        return self.runner.batch_size

    @property
    def precision(self) -> np.dtype | None:
        """The float type the runner computes in, where it takes and gives one."""
        taken, given = (
            getattr(self.runner, "input_dtype", None),
            getattr(self.runner, "output_dtype", None),
        )
        return taken if taken is not None and taken == given and taken.kind == "f" else None

    def run(self, points: np.ndarray) -> np.ndarray:
        return self.runner.run(points, self.context)

    def run_with_gradients(self, points: np.ndarray, target) -> tuple[np.ndarray, np.ndarray]:
        return self.runner.run_with_gradients(points, target, self.context)


class FiniteDifferences:
    """Central differences of the plain model along the IG direction, one group at a time.

    For direction d = x - baseline and a group g of features, the derivative of F along d
    restricted to g is exactly the sum over g of the IG integrand dF/dx_i * d_i. Each group
    therefore costs two model rows per path point, and its attribution is exact up to the
    differencing error. Singleton groups give per-feature attributions; patch groups make
    large images affordable. The returned "gradient" spreads each group's directional
    derivative over its features in proportion to d_i, so that (x - b) * gradient sums to
    the right value over every group.

    Each group gets its own step, `relative_step` times its own scale (the larger of its
    largest |d_i| and its largest |x_i| or |b_i|): a feature on a 0.01 scale beside one on a
    1000 scale is moved by a small step of its own, and a float32 model never sees a step
    that its rounding swallows.
    """

    name = "fd"

    def __init__(
        self,
        runner: Forward,
        target: int,
        direction: np.ndarray,
        groups: np.ndarray | None = None,
        relative_step: float = 1e-3,
        ends: tuple[np.ndarray, np.ndarray] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.runner, self.target = runner, target
        self.direction = np.asarray(direction, dtype=np.float64)
        self.progress = progress  # called with the number of model rows after each call
        if groups is None:
            groups = np.arange(self.direction.size).reshape(self.direction.shape)
        self.groups = groups
        flat_groups = groups.reshape(-1)
        d = self.direction.reshape(-1)
        if ends is None:
            magnitude = np.abs(d)
        else:
            magnitude = np.maximum(np.abs(ends[0]), np.abs(ends[1])).reshape(-1)
        order = np.argsort(flat_groups, kind="stable")
        bounds = np.flatnonzero(np.diff(flat_groups[order])) + 1
        self.index_sets = []  # features of each group that move along d
        self.steps = []  # each group's step along its slice of d
        self.unit_values = []  # the group's slice of d, scaled so its largest entry is 1
        self.spread = []  # d_g / |d_g|^2 * max|d_g|: turns a unit-step derivative into grads
        for idx in np.split(order, bounds):
            idx = idx[d[idx] != 0]
            if idx.size == 0:
                continue
            dg = d[idx]
            peak = float(np.max(np.abs(dg)))
            scale = max(peak, float(np.max(magnitude[idx])))
            self.index_sets.append(idx)
            self.steps.append(relative_step * scale)
            self.unit_values.append(dg / peak)
            self.spread.append(dg * peak / np.sum(dg * dg))
        self.relative_step = relative_step
        self.zero_differences = 0  # central differences that came out 0 (to a few ulps)
        self.differences = 0

    @property
    def step(self) -> float:
        """The largest step taken (reported in records)."""
        return max(self.steps, default=0.0)

    def values(self, points: np.ndarray) -> np.ndarray:
        return pick(self.runner.run(points), self.target)

    def values_and_gradients(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = points.reshape(len(points), -1).astype(np.float64)
        grads = np.zeros_like(flat)
        values = self.values(points)
        chunk = max(1, self.runner.batch_size // 2)  # groups per model call
        for row, p in enumerate(flat):
            for start in range(0, len(self.index_sets), chunk):
                sets = range(start, min(start + chunk, len(self.index_sets)))
                rows = np.repeat(p[None], 2 * len(sets), axis=0)
                h = np.array([self.steps[g] for g in sets])
                for j, g in enumerate(sets):
                    rows[2 * j, self.index_sets[g]] += h[j] * self.unit_values[g]
                    rows[2 * j + 1, self.index_sets[g]] -= h[j] * self.unit_values[g]
                out = self.runner.run(rows.reshape(-1, *points.shape[1:]))
                f = pick(out, self.target)
                diff = f[0::2] - f[1::2]
                self.differences += len(diff)
                # zero to within a few ulps: a tree export's kernel may round one ulp apart
                # depending on the rows it shares a call with (hummingbird's: 1.5e-5 of 44)
                ulps = 4 * np.finfo(out.dtype if out.dtype.kind == "f" else np.float64).eps
                noise = ulps * np.maximum(np.abs(f[0::2]), np.abs(f[1::2]))
                self.zero_differences += int(np.count_nonzero(np.abs(diff) <= noise))
                deriv = diff / (2 * h)
                for j, g in enumerate(sets):
                    grads[row, self.index_sets[g]] = deriv[j] * self.spread[g]
                if self.progress is not None:
                    self.progress(len(rows))
        return values, grads.reshape(points.shape)

    @property
    def looks_piecewise_constant(self) -> bool:
        """Most differences zero (to a few ulps): a tree ensemble or a step function, where
        gradients vanish almost everywhere and IG cannot converge whatever the number of steps."""
        return self.differences >= 8 and self.zero_differences >= 0.9 * self.differences
