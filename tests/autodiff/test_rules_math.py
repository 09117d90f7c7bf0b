"""Every rule of rules_math (elementwise, variadic, softmax, reductions) against central FD."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from igcli.autodiff import blocking_ops, build_gradient_model
from tests.autodiff.checker import Case, Runner, check_graph, make_model

rng = np.random.default_rng(42)


def r(*shape, low=-2.0, high=2.0):
    return rng.uniform(low, high, size=shape)


def away_from_zero(x, margin=0.05):
    """Move values off a kink at zero so central differences do not straddle it."""
    return np.where(np.abs(x) < margin, np.sign(x + 1e-12) * margin * 2, x)


CASES: list[Case] = []
for opset in (9, 13, 17):
    for sa, sb in [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1))]:
        for op in ("Add", "Sub", "Mul", "Div"):
            b = r(*sb)
            if op == "Div":
                b = np.sign(b) * (np.abs(b) + 0.5)
            CASES.append(Case(op, {"a": r(*sa), "b": b}, opset=opset, id=f"{op}-{sa}-{sb}-{opset}"))
for op in ("Identity", "Neg", "Relu", "Sigmoid", "Tanh", "Exp"):
    CASES.append(Case(op, {"x": away_from_zero(r(3, 5))}))
for opset in (9, 17):  # float32 images of 16k channels: the Conv-based mask in ONNX Runtime
    CASES.append(Case("Relu", {"x": away_from_zero(r(2, 16, 3, 4))}, opset=opset,
                      id=f"Relu-image-{opset}"))  # fmt: skip
CASES.append(Case("Log", {"x": r(3, 4, low=0.2, high=3.0)}))
for op in ("Sigmoid", "Tanh"):  # the slope is computed from x: check far out too
    for opset in (9, 13):
        CASES.append(Case(op, {"x": r(4, 5, low=-12, high=12)}, opset=opset,
                          id=f"{op}-wide-{opset}"))  # fmt: skip


# -- helpers for the cases below ----------------------------------------------------------


class NodeCase(Case):
    """A Case whose node lists its inputs explicitly: absent optional inputs as "", a
    constant (in `constants`) placed before a graph input, or outputs of `before` nodes."""

    def __init__(self, op, node_inputs, inputs, attrs=None, id="", before=(), **options):
        super().__init__(op, inputs, attrs, id, **options)
        self.node_inputs, self.before = node_inputs, list(before)

    def run(self):
        node = helper.make_node(self.op, self.node_inputs, ["y"], **self.attrs)
        check_graph([*self.before, node], self.inputs, "y", **self.options)


def away_from(x, points, margin=0.05):
    """Push values at least `margin` away from each kink in `points`."""
    for p in points:
        near = np.abs(x - p) < margin
        x = np.where(near, p + np.where(x >= p, 2, -2) * margin, x)
    return x


def distinct(*shape, low=-2.0, high=2.0, gap=0.01):
    """Values whose pairwise gaps exceed `gap`, so max/min have no near-ties for FD."""
    n = int(np.prod(shape))
    grid = np.linspace(low, high, max(n, int((high - low) / gap) // 2))
    return rng.permutation(rng.choice(grid, size=n, replace=False)).reshape(shape)


# -- variadic Sum, Mean, Max, Min ---------------------------------------------------------
VARIADIC_SHAPES = [[(3, 4)], [(3, 4), (3, 4)], [(2, 3, 4), (4,), (3, 1)], [(2, 1, 4), (1, 3, 1)]]
for opset in (9, 13):
    for op in ("Sum", "Mean", "Max", "Min"):
        for shapes in VARIADIC_SHAPES:
            if op == "Mean" and shapes[0] == (2, 1, 4):
                shapes = [(2, 3, 4), (1, 3, 1)]  # onnx.reference's Mean adds in place into x0
            if op in ("Max", "Min"):
                vals = distinct(sum(int(np.prod(s)) for s in shapes))
                parts = np.split(vals, np.cumsum([int(np.prod(s)) for s in shapes])[:-1])
                ins = {
                    f"x{k}": p.reshape(s)
                    for k, (p, s) in enumerate(zip(parts, shapes, strict=True))
                }
            else:
                ins = {f"x{k}": r(*s) for k, s in enumerate(shapes)}
            CASES.append(Case(op, ins, opset=opset, id=f"{op}-{shapes}-{opset}"))
    for op in ("Sum", "Max"):
        ins = {"a": distinct(3, 4), "b": distinct(3, 4) + 0.003}
        CASES.append(Case(op, ins, opset=opset, dynamic=True, id=f"{op}-dynamic-{opset}"))

# -- unary --------------------------------------------------------------------------------
# onnx.reference evaluates erf in float32: a wider FD step and tolerance for Erf and Gelu
ERF_FD = {"eps": 3e-3, "rtol": 1e-4, "atol": 1e-4}
for opset in (9, 13):
    CASES.append(Case("Abs", {"x": away_from_zero(r(3, 4))}, opset=opset, id=f"Abs-{opset}"))
    CASES.append(Case("Sqrt", {"x": r(3, 4, low=0.2)}, opset=opset, id=f"Sqrt-{opset}"))
    CASES.append(
        Case(
            "Reciprocal",
            {"x": away_from(r(3, 4), [0.0], 0.3)},
            opset=opset,
            id=f"Reciprocal-{opset}",
        )
    )
    CASES.append(Case("Softplus", {"x": r(3, 4)}, opset=opset, id=f"Softplus-{opset}"))
    CASES.append(Case("Softsign", {"x": r(3, 4)}, opset=opset, id=f"Softsign-{opset}"))
    CASES.append(Case("Erf", {"x": r(3, 4)}, opset=opset, id=f"Erf-{opset}", **ERF_FD))
CASES.append(Case("Sqrt", {"x": r(3, 4, low=0.2)}, dynamic=True, id="Sqrt-dynamic"))

# trigonometric and hyperbolic: inside each domain, away from poles and branch points
TRIG_INPUTS = {
    "Sin": r(3, 4, low=-6, high=6), "Cos": r(3, 4, low=-6, high=6),
    "Tan": r(3, 4, low=-1.4, high=1.4), "Asin": r(3, 4, low=-0.95, high=0.95),
    "Acos": r(3, 4, low=-0.95, high=0.95), "Atan": r(3, 4, low=-30, high=30),
    "Sinh": r(3, 4, low=-8, high=8), "Cosh": r(3, 4, low=-8, high=8),
    "Asinh": r(3, 4, low=-50, high=50), "Acosh": r(3, 4, low=1.05, high=50),
    "Atanh": r(3, 4, low=-0.95, high=0.95),
}  # fmt: skip
for op, x in TRIG_INPUTS.items():
    for opset in (9, 13):
        CASES.append(Case(op, {"x": x}, opset=opset, id=f"{op}-{opset}"))
    CASES.append(Case(op, {"x": x}, opset=13, dynamic=True, id=f"{op}-dynamic"))

# Celu (12+): slope exp(min(x, 0) / alpha); Mish (18+): smooth, checked far out too
for opset in (12, 13, 22):
    CASES.append(Case("Celu", {"x": r(3, 5, low=-6, high=4)}, opset=opset, id=f"Celu-{opset}"))
    CASES.append(Case("Celu", {"x": r(3, 5, low=-6, high=4)}, {"alpha": 0.4}, opset=opset,
                      id=f"Celu-alpha0.4-{opset}"))  # fmt: skip
for opset in (18, 22):
    CASES.append(Case("Mish", {"x": r(4, 5, low=-4, high=4)}, opset=opset, id=f"Mish-{opset}"))
    CASES.append(Case("Mish", {"x": r(4, 5, low=-30, high=30)}, opset=opset,
                      id=f"Mish-wide-{opset}"))  # fmt: skip
CASES.append(Case("Mish", {"x": r(3, 4)}, opset=18, dynamic=True, id="Mish-dynamic"))
# Swish (24+): x sigmoid(alpha x), alpha of either sign, far out too
for attrs in ({}, {"alpha": 1.7}, {"alpha": -0.6}):
    CASES.append(Case("Swish", {"x": r(4, 5, low=-4, high=4)}, attrs, opset=24,
                      id=f"Swish-{attrs.get('alpha', 1.0)}"))  # fmt: skip
CASES.append(Case("Swish", {"x": r(4, 5, low=-40, high=40)}, opset=24, id="Swish-wide"))
CASES.append(Case("Swish", {"x": r(3, 4)}, opset=24, dynamic=True, id="Swish-dynamic"))


def off_integer_ratios(a, b, margin=0.05):
    """Nudge a so that a / b keeps `margin` from every integer: Mod jumps there."""
    q = a / b
    frac = q - np.floor(q)
    q = np.where(frac < margin, np.floor(q) + 2 * margin, q)
    q = np.where(frac > 1 - margin, np.floor(q) + 1 - 2 * margin, q)
    return q * b


# Mod (10+) on floats: fmod=1 (C's fmod, the sign of a) and, from opset 28, fmod=0 (the sign
# of b, as Python's %), broadcast
for fmod, opset in ((0, 28), (1, 13)):
    for sa, sb in [((3, 4), (3, 4)), ((2, 3, 4), (4,))]:
        b = r(*sb, low=0.6, high=1.5) * np.where(r(*sb) > 0, 1, -1)
        a = off_integer_ratios(r(*sa, low=-5, high=5), b)
        CASES.append(Case("Mod", {"a": a, "b": b}, {"fmod": fmod}, opset=opset,
                          id=f"Mod-fmod{fmod}-{sa}-{sb}"))  # fmt: skip
# ThresholdedRelu (10+) and Shrink (9+): steps at alpha, at +-lambd
for opset in (10, 22):
    x = r(3, 6, low=-3, high=3)
    CASES.append(Case("ThresholdedRelu", {"x": away_from(x, [1.0])}, opset=opset,
                      id=f"ThresholdedRelu-default-{opset}"))  # fmt: skip
    CASES.append(Case("ThresholdedRelu", {"x": away_from(x, [-0.5])}, {"alpha": -0.5},
                      opset=opset, id=f"ThresholdedRelu--0.5-{opset}"))  # fmt: skip
for opset in (9, 13):
    x = r(3, 6, low=-3, high=3)
    CASES.append(Case("Shrink", {"x": away_from(x, [-0.5, 0.5])}, opset=opset,
                      id=f"Shrink-default-{opset}"))  # fmt: skip
    CASES.append(Case("Shrink", {"x": away_from(x, [-1.2, 1.2])}, {"lambd": 1.2, "bias": 0.3},
                      opset=opset, id=f"Shrink-attrs-{opset}"))  # fmt: skip

# Pow: tensor exponent (both gradients), constant scalar / tensor / integer exponents
for opset in (9, 13, 15):
    CASES.append(
        Case("Pow", {"a": r(3, 4, low=0.3), "b": r(3, 4)}, opset=opset, id=f"Pow-tensor-{opset}")
    )
    CASES.append(
        Case(
            "Pow",
            {"a": r(2, 3, 4, low=0.3), "b": r(4, low=-1.5, high=2.5)},
            opset=opset,
            id=f"Pow-broadcast-{opset}",
        )
    )
    for b in (2.0, 3.0, 0.5, -1.5):
        x = r(3, 4, low=0.3) if b % 1 else r(3, 4)
        CASES.append(
            Case(
                "Pow",
                {"a": x},
                constants={"b": np.array(b)},
                opset=opset,
                id=f"Pow-const{b}-{opset}",
            )
        )
    CASES.append(
        Case(
            "Pow",
            {"a": r(2, 3)},
            constants={"b": np.array([1.0, 2.0, 3.0])},
            opset=opset,
            dynamic=True,
            id=f"Pow-const-vector-dynamic-{opset}",
        )
    )
for opset in (12, 15):  # exponent of another type (integer) from opset 12 on
    CASES.append(
        Case(
            "Pow",
            {"a": r(3, 4)},
            constants={"b": np.array(3, dtype=np.int64)},
            opset=opset,
            id=f"Pow-int-exponent-{opset}",
        )
    )
    CASES.append(
        NodeCase(
            "Pow",
            ["a", "b_int"],
            {"a": r(3, 4), "b": np.array([[1.0], [2.0], [3.0]])},
            before=[helper.make_node("Cast", ["b"], ["b_int"], to=TensorProto.INT64)],
            opset=opset,
            wrt=["a"],
            id=f"Pow-int-exponent-at-run-time-{opset}",
        )
    )

# rectifiers and friends
for opset in (9, 16):
    x = away_from_zero(r(3, 5))
    CASES.append(Case("LeakyRelu", {"x": x}, opset=opset, id=f"LeakyRelu-default-{opset}"))
    CASES.append(
        Case("LeakyRelu", {"x": x}, {"alpha": 0.3}, opset=opset, id=f"LeakyRelu-0.3-{opset}")
    )
    CASES.append(Case("Elu", {"x": x}, opset=opset, id=f"Elu-default-{opset}"))
    CASES.append(Case("Elu", {"x": x}, {"alpha": 0.7}, opset=opset, id=f"Elu-0.7-{opset}"))
    CASES.append(Case("Selu", {"x": x}, opset=opset, id=f"Selu-default-{opset}"))
    CASES.append(
        Case("Selu", {"x": x}, {"alpha": 1.2, "gamma": 0.8}, opset=opset, id=f"Selu-attrs-{opset}")
    )
    # PRelu: slope [C,1,1] (the usual opset<=9 export), [W], scalar-like [1], full shape
    for slope_shape in [(3, 1, 1), (5,), (1,), (3, 4, 5)]:
        CASES.append(
            Case(
                "PRelu",
                {"x": away_from_zero(r(2, 3, 4, 5)), "s": r(*slope_shape)},
                opset=opset,
                id=f"PRelu-{slope_shape}-{opset}",
            )
        )
    CASES.append(
        Case(
            "PRelu",
            {"x": away_from_zero(r(2, 3, 4, 5))},
            constants={"s": r(3, 1, 1)},
            opset=opset,
            dynamic=True,
            id=f"PRelu-const-slope-dynamic-{opset}",
        )
    )
CASES.append(
    Case("LeakyRelu", {"x": away_from_zero(r(3, 5))}, dynamic=True, id="LeakyRelu-dynamic")
)

# HardSigmoid: kinks where alpha x + beta hits 0 or 1
for alpha, beta in [(0.2, 0.5), (0.5, 0.3)]:
    x = away_from(r(3, 6, low=-4, high=4), [-beta / alpha, (1 - beta) / alpha])
    attrs = {} if (alpha, beta) == (0.2, 0.5) else {"alpha": alpha, "beta": beta}
    for opset in (9, 13):
        CASES.append(
            Case(
                "HardSigmoid",
                {"x": x},
                attrs,
                opset=opset,
                id=f"HardSigmoid-{alpha}-{beta}-{opset}",
            )
        )
for opset in (14, 20):
    CASES.append(
        Case(
            "HardSwish",
            {"x": away_from(r(4, 6, low=-5, high=5), [-3.0, 3.0])},
            opset=opset,
            id=f"HardSwish-{opset}",
        )
    )
for approximate in ("none", "tanh"):
    for dynamic in (False, True):
        CASES.append(
            Case(
                "Gelu",
                {"x": r(3, 5, low=-4, high=4)},
                {"approximate": approximate},
                opset=20,
                dynamic=dynamic,
                id=f"Gelu-{approximate}-dyn{dynamic}",
                **ERF_FD,
            )
        )
CASES.append(Case("Gelu", {"x": r(3, 5, low=-4, high=4)}, opset=20, id="Gelu-default", **ERF_FD))

# Clip: attributes before opset 11, optional inputs after (constants, graph inputs, absent)
x_clip = away_from(r(3, 5), [-0.5, 0.8])
CASES.append(Case("Clip", {"x": x_clip}, {"min": -0.5, "max": 0.8}, opset=9, id="Clip-attrs-9"))
CASES.append(Case("Clip", {"x": x_clip}, {"min": -0.5}, opset=9, id="Clip-min-attr-9"))
CASES.append(Case("Clip", {"x": x_clip}, {"max": 0.8}, opset=10, id="Clip-max-attr-10"))
CASES.append(Case("Clip", {"x": x_clip}, opset=9, id="Clip-no-bounds-9"))
for opset in (11, 13):
    bounds = {"lo": np.array(-0.5), "hi": np.array(0.8)}
    CASES.append(
        Case("Clip", {"x": x_clip}, constants=bounds, opset=opset, id=f"Clip-const-bounds-{opset}")
    )
    CASES.append(
        Case("Clip", {"x": x_clip, **bounds}, opset=opset, id=f"Clip-input-bounds-{opset}")
    )
    CASES.append(
        NodeCase(
            "Clip",
            ["x", "", "hi"],
            {"x": x_clip},
            opset=opset,
            constants={"hi": np.array(0.8)},
            id=f"Clip-no-min-{opset}",
        )
    )
    CASES.append(
        NodeCase(
            "Clip",
            ["x", "lo", ""],
            {"x": x_clip, "lo": np.array(-0.5)},
            opset=opset,
            id=f"Clip-no-max-{opset}",
        )
    )
    CASES.append(Case("Clip", {"x": x_clip}, opset=opset, id=f"Clip-no-inputs-{opset}"))
CASES.append(
    Case(
        "Clip",
        {"x": x_clip},
        constants={"lo": np.array(-0.5), "hi": np.array(0.8)},
        opset=13,
        dynamic=True,
        id="Clip-dynamic",
    )
)

# Cast between float types (the float32 rounding needs a wider FD step)
for opset in (9, 13, 19):
    # no ORT check: its float32 model would output double, but the checker seeds float32
    CASES.append(
        Case(
            "Cast",
            {"x": r(3, 4)},
            {"to": TensorProto.DOUBLE},
            opset=opset,
            check_ort=False,
            id=f"Cast-double-{opset}",
        )
    )
    CASES.append(
        Case(
            "Cast",
            {"x": r(3, 4)},
            {"to": TensorProto.FLOAT},
            opset=opset,
            eps=1e-3,
            atol=1e-4,
            rtol=1e-4,
            id=f"Cast-float-{opset}",
        )
    )

# CastLike (opset 15+): the type comes from a second input, which gets no gradient
for opset in (15, 19, 21):
    CASES.append(Case("CastLike", {"x": r(3, 4)}, constants={"like": np.zeros(1)}, opset=opset,
                      id=f"CastLike-same-{opset}"))  # fmt: skip
    float_like = helper.make_node("Constant", [], ["like"], value=numpy_helper.from_array(
        np.zeros(1, np.float32)))  # fmt: skip
    CASES.append(NodeCase("CastLike", ["x", "like"], {"x": r(3, 4)}, opset=opset, eps=1e-3,
                          atol=1e-4, rtol=1e-4, check_ort=False, before=[float_like],
                          id=f"CastLike-float-{opset}"))  # fmt: skip

# Dropout in inference: ratio attribute (9, 10), ratio and training_mode inputs (12+)
for opset in (9, 10):
    CASES.append(
        Case(
            "Dropout",
            {"x": r(3, 4)},
            {"ratio": 0.3},
            opset=opset,
            n_outputs=2,
            id=f"Dropout-attr-{opset}",
        )
    )
CASES.append(Case("Dropout", {"x": r(3, 4)}, opset=12, id="Dropout-plain-12"))
CASES.append(
    Case(
        "Dropout",
        {"x": r(3, 4)},
        constants={"ratio": np.array(0.3)},
        opset=13,
        n_outputs=2,
        id="Dropout-ratio-13",
    )
)
CASES.append(
    Case(
        "Dropout",
        {"x": r(3, 4)},
        constants={"ratio": np.array(0.3), "mode": np.array(False)},
        opset=13,
        dynamic=True,
        id="Dropout-training-false-13",
    )
)

# Where: the condition (a constant bool) comes first, X and Y broadcast
for opset in (9, 16):
    for sc, sa, sb in [
        ((3, 4), (3, 4), (3, 4)),
        ((3, 1), (4,), (2, 3, 4)),
        ((2, 3, 4), (3, 1), ()),
    ]:
        cond = rng.uniform(size=sc) > 0.5
        CASES.append(
            NodeCase(
                "Where",
                ["c", "a", "b"],
                {"a": r(*sa), "b": r(*sb)},
                opset=opset,
                constants={"c": cond},
                id=f"Where-{sc}-{sa}-{sb}-{opset}",
            )
        )
CASES.append(
    NodeCase(
        "Where",
        ["c", "a", "b"],
        {"a": r(2, 4), "b": r(2, 4)},
        opset=13,
        constants={"c": rng.uniform(size=(4,)) > 0.5},
        dynamic=True,
        id="Where-dynamic",
    )
)


# Softmax / LogSoftmax: before 13 the input is flattened to 2-D at `axis` (default 1); from 13
# on the reduction is over the one `axis` (default -1)
class Pre13SoftmaxCase(Case):
    """Softmax/LogSoftmax before opset 13, where the axes after `axis` are one flattened block.

    onnx.reference ignores that coercion to 2-D, so the forward for finite differences is
    numpy, and the gradient graph runs in ONNX Runtime in float64 (which implements it).
    """

    def run(self):
        opset, dynamic = self.options["opset"], self.options.get("dynamic", False)
        x = self.inputs["x"]
        model = make_model(
            [helper.make_node(self.op, ["x"], ["y"], **self.attrs)],
            {"x": x},
            "y",
            opset,
            dynamic=dynamic,
        )
        runner = Runner(model, "x", "y", "ort")
        np.testing.assert_allclose(runner.forward({"x": x}), self.forward(x), atol=1e-12)
        seed = rng.standard_normal(x.shape)
        analytic = runner.gradient({"x": x}, seed)
        numeric = np.zeros_like(x)
        for i in range(x.size):
            step = np.zeros(x.size)
            step[i] = 1e-6
            step = step.reshape(x.shape)
            diff = self.forward(x + step) - self.forward(x - step)
            numeric.reshape(-1)[i] = np.sum(seed * diff) / 2e-6
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)

    def forward(self, x):
        axis = self.attrs.get("axis", 1) % x.ndim
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        shifted = flat - flat.max(axis=1, keepdims=True)
        log_y = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return (log_y if self.op == "LogSoftmax" else np.exp(log_y)).reshape(x.shape)


for op in ("Softmax", "LogSoftmax"):
    for opset, axis in [(9, None), (9, 0), (11, 1), (11, -2), (11, 2), (11, -1)]:
        attrs = {} if axis is None else {"axis": axis}
        CASES.append(
            Pre13SoftmaxCase(
                op, {"x": r(2, 3, 4)}, attrs, opset=opset, id=f"{op}-axis{axis}-{opset}"
            )
        )
    CASES.append(
        Pre13SoftmaxCase(op, {"x": r(2, 3, 4)}, opset=11, dynamic=True, id=f"{op}-dynamic-11")
    )
    # last axis: both semantics agree, so the standard check (with onnx.reference) applies
    CASES.append(Case(op, {"x": r(2, 3, 4)}, {"axis": 2}, opset=9, id=f"{op}-last-axis-9"))
    for opset, axis in [(13, None), (13, 1), (13, 0), (13, -2)]:
        attrs = {} if axis is None else {"axis": axis}
        CASES.append(Case(op, {"x": r(2, 3, 4)}, attrs, opset=opset, id=f"{op}-axis{axis}-{opset}"))
    CASES.append(
        Case(op, {"x": r(2, 3, 4)}, {"axis": 1}, opset=18, dynamic=True, id=f"{op}-dynamic-18")
    )

# Reductions: axes attribute before opset 13 (ReduceSum) / 18 (others), an input after;
# keepdims 0/1; axes absent (all axes); noop_with_empty_axes; dynamic batch
REDUCE_OPS = (
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "ReduceProd",
    "ReduceL1",
    "ReduceLogSum",
)


def reduce_input(op, *shape):
    if op in ("ReduceMax", "ReduceMin"):
        return distinct(*shape)
    if op == "ReduceLogSum":
        return r(*shape, low=0.2, high=2.0)
    if op == "ReduceL1":
        return away_from_zero(r(*shape))
    return r(*shape)


def reduce_case(op, opset, axes, keepdims, dynamic=False, noop=None, shape=(2, 3, 4)):
    as_input = opset >= 18 or (op == "ReduceSum" and opset >= 13)
    attrs = {} if keepdims is None else {"keepdims": keepdims}
    if noop is not None:
        attrs["noop_with_empty_axes"] = noop
    consts = {}
    if axes is not None and as_input:
        consts["axes"] = np.array(axes, dtype=np.int64)
    elif axes is not None:
        attrs["axes"] = axes
    tag = f"{op}-axes{axes}-keep{keepdims}-noop{noop}-dyn{dynamic}-{opset}"
    return Case(
        op,
        {"x": reduce_input(op, *shape)},
        attrs,
        constants=consts,
        opset=opset,
        dynamic=dynamic,
        id=tag,
    )


for op in REDUCE_OPS:
    for opset in (11, 13, 18):
        for axes, keepdims in [([1], 1), ([0, 2], 0), ([-1], 0), (None, 1), (None, 0)]:
            CASES.append(reduce_case(op, opset, axes, keepdims))
        CASES.append(reduce_case(op, opset, [2, 1], None, dynamic=True))
        if op != "ReduceProd":  # needs static reduced sizes (test_reduce_prod_over_a_dynamic...)
            CASES.append(reduce_case(op, opset, [0], 0, dynamic=True))  # batch size at run time
            CASES.append(reduce_case(op, opset, None, 0, dynamic=True))
    CASES.append(reduce_case(op, 18, [], 1, noop=1))
    CASES.append(reduce_case(op, 18, None, 0, noop=1))
    CASES.append(reduce_case(op, 18, [], 1, noop=0))
CASES.append(reduce_case("ReduceSum", 13, [], 0, noop=1))
CASES.append(reduce_case("ReduceMean", 9, [1, 2], 0, shape=(3, 2, 2)))
CASES.append(reduce_case("ReduceProd", 9, [0, 2], 1, shape=(3, 2, 5)))
CASES.append(reduce_case("ReduceL1", 9, [-2], 0))
CASES.append(reduce_case("ReduceLogSum", 9, None, 1))
# ReduceProd where a block holds zeros: the product is multilinear, so central differences
# are exact there; dx_i is the product of the others, not y / x_i
x_zeros = r(3, 4, 5)
x_zeros[0, 1, 2] = 0.0  # one zero in block (0, :, 2) over axis 1 and in row (0, 1, :)
x_zeros[1, 0, 3] = x_zeros[1, 2, 3] = 0.0  # two zeros in block (1, :, 3)
x_zeros[2, 3, :] = 0.0  # a row of zeros
for opset, axes, keepdims in [(11, [1], 1), (13, [-1], 0), (18, [0, 2], 0), (18, None, 1)]:
    case = reduce_case("ReduceProd", opset, axes, keepdims, shape=(3, 4, 5))
    case.inputs = {"x": x_zeros}
    case.id += "-zeros"
    CASES.append(case)
for n in (1, 2, 3, 5, 8, 9):  # scan lengths around powers of two
    case = reduce_case("ReduceProd", 18, [1], 0, shape=(2, n))
    case.id += f"-n{n}"
    CASES.append(case)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_rule(case):
    case.run()


# -- where finite differences cannot look: ties, step functions, unsupported settings ---------


def grad_of(model, wrt, feeds, seed, backend):
    runner = Runner(model, wrt, "y", backend)
    return runner.gradient(feeds, seed)


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("op", ["Max", "Min"])
def test_variadic_ties_share_the_gradient(op, opset):
    """As central differences do, and IG's symmetry asks of features tied along the path."""
    a = np.array([[1.0, 2.0, 3.0], [0.0, 5.0, -1.0]])
    b = np.array([[1.0, 0.0, 3.0], [0.0, 5.0, 4.0]]) * (1 if op == "Max" else -1)
    if op == "Min":
        a = -a
    feeds = {"a": a, "b": b, "c": a.copy()}  # c ties a everywhere, b ties a at four places
    model = make_model([helper.make_node(op, ["a", "b", "c"], ["y"])], feeds, "y", opset)
    seed = rng.uniform(1.0, 2.0, size=a.shape)
    for backend, dtype in (("reference", np.float64), ("ort", np.float32)):
        m = (
            model
            if dtype == np.float64
            else make_model(
                [helper.make_node(op, ["a", "b", "c"], ["y"])],
                {k: v.astype(dtype) for k, v in feeds.items()},
                "y",
                opset,
            )
        )
        fd = {k: v.astype(dtype) for k, v in feeds.items()}
        grads = {k: grad_of(m, k, fd, seed.astype(dtype), backend) for k in feeds}
        np.testing.assert_allclose(grads["a"] + grads["b"] + grads["c"], seed, rtol=1e-6)
        np.testing.assert_allclose(grads["c"], grads["a"], rtol=1e-6)  # c ties a everywhere
        share = np.where(a == b, 1 / 3, np.where((a > b) if op == "Max" else (a < b), 0.5, 0))
        np.testing.assert_allclose(grads["a"], share * seed, rtol=1e-6)
        b_share = np.where(a == b, 1 / 3, np.where((b > a) if op == "Max" else (b < a), 1, 0))
        np.testing.assert_allclose(grads["b"], b_share * seed, rtol=1e-6)


@pytest.mark.parametrize("opset", [11, 18])
@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_ties_share_the_gradient(op, opset, keepdims):
    # a Relu output: whole blocks of zeros tie; the gradient must not be multiplied
    x = np.maximum(rng.standard_normal((2, 3, 4)), 0.0)
    x[0] = 0.0
    x[1, 1, 1] = x[1, 2, 0] = x[1].max() + 1.0  # two equal maxima, (1, 1) comes first
    x = -x if op == "ReduceMin" else x
    axes = [1, 2]
    attrs, consts = {"keepdims": keepdims}, {}
    if opset >= 18:
        consts["axes"] = np.array(axes, dtype=np.int64)
    else:
        attrs["axes"] = axes
    node = helper.make_node(op, ["x", *consts], ["y"], **attrs)
    seed = rng.uniform(1.0, 2.0, size=(2, 1, 1) if keepdims else (2,))
    for dynamic in (False, True):
        model = make_model([node], {"x": x}, "y", opset, consts, dynamic=dynamic)
        grad = grad_of(model, "x", {"x": x}, seed, "reference")
        expected = np.zeros_like(x)
        expected[0] = seed.ravel()[0] / 12  # twelve zeros tie
        expected[1, 1, 1] = expected[1, 2, 0] = seed.ravel()[1] / 2
        np.testing.assert_allclose(grad, expected, rtol=1e-12)


def test_reduce_ties_over_a_dynamic_axis_share_the_gradient():
    x = np.array([[1.0, 3.0], [3.0, 2.0], [3.0, 0.0]])  # column 0: two equal maxima
    node = helper.make_node("ReduceMax", ["x"], ["y"], axes=[0], keepdims=0)
    model = make_model([node], {"x": x}, "y", 13, dynamic=True)
    seed = np.array([2.0, 1.0])
    grad = grad_of(model, "x", {"x": x}, seed, "reference")
    np.testing.assert_allclose(grad, [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize("to", [TensorProto.INT64, TensorProto.BOOL])
def test_cast_to_integer_or_bool_carries_no_gradient(to):
    x = r(3, 4)
    model = make_model([helper.make_node("Cast", ["x"], ["y"], to=to)], {"x": x}, "y", 13)
    seed = np.ones((3, 4), dtype=helper.tensor_dtype_to_np_dtype(to))
    np.testing.assert_array_equal(grad_of(model, "x", {"x": x}, seed, "reference"), 0.0)


def test_dropout_in_training_mode_blocks():
    node = helper.make_node("Dropout", ["x", "ratio", "mode"], ["y"])
    consts = {"ratio": np.array(0.5), "mode": np.array(True)}
    model = make_model([node], {"x": r(3, 4)}, "y", 13, consts)
    assert blocking_ops(model, "x", "y") == ["Dropout (Dropout in training mode is random)"]


def test_reduce_prod_over_a_dynamic_axis_blocks():
    node = helper.make_node("ReduceProd", ["x"], ["y"], axes=[0], keepdims=0)
    model = make_model([node], {"x": r(3, 4)}, "y", 13, dynamic=True)
    assert blocking_ops(model, "x", "y") == [
        "ReduceProd (ReduceProd over axes whose sizes are known only at run time)"
    ]


def test_reduction_over_runtime_axes_blocks():
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"])
    inputs = {"x": r(3, 4), "axes": np.array([1], dtype=np.int64)}
    model = make_model([node], inputs, "y", 18)
    assert blocking_ops(model, "x", "y") == ["ReduceMean (reduction axes computed at run time)"]


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_broadcast_of_a_tensor_of_unknown_shape(opset):
    """b's shape is unknown at build time (a Reshape to a shape fed at run time): its
    gradient is summed back at run time (the path a legacy ViT export took, which once
    raised)."""
    nodes = [
        helper.make_node("Reshape", ["b", "s"], ["br"]),
        helper.make_node("Add", ["a", "br"], ["sum"]),
        helper.make_node("Reshape", ["sum", "out_shape"], ["y"]),  # a known output shape
    ]
    consts = {"out_shape": np.array([2, 3, 4], np.int64)}
    inputs = {"a": r(2, 3, 4), "b": r(3, 1), "s": np.array([3, 1], np.int64)}
    check_graph(nodes, inputs, "y", opset=opset, constants=consts)
    model = make_model(nodes, inputs, "y", opset, consts)
    ops = {n.op_type for n in build_gradient_model(model, "b", "y").graph.node}
    assert "Compress" in ops  # the runtime reduction was used


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "Softplus", "Elu", "Selu"])
def test_saturated_slopes_are_accurate_in_float32(op):
    """Where the output saturates, the slope is still right to float32 precision in ONNX
    Runtime (1 - y^2 and y (1 - y) from its output are 0 or tens of percent off there, as
    are ONNX Runtime's Sigmoid for Softplus and y + alpha for Elu and Selu)."""
    x = np.array([[-40.0, -25.0, -15.0, -9.5, 0.3, 9.5, 15.0, 25.0]])
    model = make_model([helper.make_node(op, ["x"], ["y"])], {"x": x.astype(np.float32)}, "y", 13)
    grad_model = build_gradient_model(model, "x", "y")
    sess = ort.InferenceSession(grad_model.SerializeToString())
    got = sess.run(["igcli_grad"], {"x": x.astype(np.float32),
                                    "igcli_seed": np.ones_like(x, np.float32)})[0]  # fmt: skip
    s = 1 / (1 + np.exp(-x))
    want = s * (1 - s) if op == "Sigmoid" else 1 - np.tanh(x) ** 2
    if op == "Tanh":  # 1 - tanh^2 loses everything in float64 too: 4 e / (1 + e)^2
        e = np.exp(-2 * np.abs(x))
        want = 4 * e / (1 + e) ** 2
    if op == "Softplus":
        want = np.exp(np.minimum(x, 0)) / (1 + np.exp(-np.abs(x)))
    if op in ("Elu", "Selu"):
        alpha, gamma = (1.0, 1.0) if op == "Elu" else (1.6732632423543772, 1.0507009873554805)
        want = np.where(x > 0, gamma, gamma * alpha * np.exp(np.minimum(x, 0)))
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("op", ["Softplus", "Mish"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_kernels_are_as_accurate_as_onnx_runtimes(op, dtype):
    """The gradient graph computes Softplus and Mish from Exp and Log (faster_kernels), as
    accurately as ONNX Runtime's own kernels: within 4.5 units in the last place at every x
    whose result is a normal number, tiny results (x far below 0) and infinities included."""
    x = np.concatenate([[-np.inf, -80, -30, -17, -1e-3, 0, 1e-3, 17, 30, 100, np.inf],
                        np.random.default_rng(0).standard_normal(4000) * 12])  # fmt: skip
    x = x.astype(dtype)[None]
    model = make_model([helper.make_node(op, ["x"], ["y"])], {"x": x}, "y", 18)
    grad_model = build_gradient_model(model, "x", "y")
    assert op not in {n.op_type for n in grad_model.graph.node}
    got = ort.InferenceSession(grad_model.SerializeToString()).run(
        ["y"], {"x": x, "igcli_seed": np.ones_like(x)}
    )[0]
    with np.errstate(invalid="ignore"):
        x64 = x.astype(np.float64)
        want = np.logaddexp(0.0, x64) if op == "Softplus" else x64 * np.tanh(np.logaddexp(0, x64))
    finite = np.isfinite(want) & (np.abs(want) >= np.finfo(dtype).tiny)
    np.testing.assert_array_equal(got[~np.isfinite(want)], want[~np.isfinite(want)])
    ulps = np.abs(got[finite] - want[finite]) / np.spacing(np.abs(want[finite]).astype(dtype))
    assert ulps.max() <= 4.5


@pytest.mark.parametrize("opset", [9, 17])
def test_relu_image_mask_is_exact_in_float32(opset):
    """The Conv-based mask is 0 at y = 0 and 1 for every normal float32 y > 0, from the
    smallest normal number up to the largest (where y * 2^127 overflows to inf)."""
    tiny = float(np.finfo(np.float32).tiny)
    big = float(np.finfo(np.float32).max)
    values = np.array([-1.0, -tiny, 0.0, tiny, 2 * tiny, 1e-30, 1e-3, 1.0, 3.0, 1e30, big])
    x = np.resize(values, 2 * 16 * 3 * 4).reshape(2, 16, 3, 4).astype(np.float32)
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": x}, "y", opset)
    seed = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    got = grad_of(model, "x", {"x": x}, seed, "ort")
    np.testing.assert_array_equal(got, np.where(x > 0, seed, 0).astype(np.float32))


def _mish_slope(x):
    sp = np.logaddexp(0.0, x)
    return np.tanh(sp) + x * (1 - np.tanh(sp) ** 2) / (1 + np.exp(-x))


FLOAT32_SLOPES = [  # op, attrs, opset, x, the slope in float64 (written to stay exact)
    ("Asinh", {}, 13, [-1e30, -3e19, -1e4, 0.3, 2e19, 1e35], lambda x: 1 / np.hypot(x, 1)),
    (
        "Acosh",
        {},
        13,
        [1 + 2**-20, 1.001, 3.0, 3e19, 1e30],
        lambda x: 1 / (np.sqrt(x - 1) * np.sqrt(x + 1)),
    ),
    ("Atanh", {}, 13, [-1 + 2**-23, -0.999, 0.5, 1 - 2**-24], lambda x: 1 / ((1 - x) * (1 + x))),
    ("Asin", {}, 13, [-1 + 2**-23, 0.999, 1 - 2**-24], lambda x: 1 / np.sqrt((1 - x) * (1 + x))),
    ("Tan", {}, 13, [1.5707, -1.57, 0.1], lambda x: 1 / np.cos(x) ** 2),
    (
        "Celu",
        {"alpha": 2.0},
        12,
        [-160.0, -60.0, -30.0, -1.0, 3.0],
        lambda x: np.exp(np.minimum(x, 0) / 2),
    ),
    ("Mish", {}, 18, [-80.0, -40.0, -20.0, -1.5, 0.0, 0.7, 15.0, 60.0, 1e30], _mish_slope),
]


@pytest.mark.parametrize("op,attrs,opset,values,slope", FLOAT32_SLOPES,
                         ids=[c[0] for c in FLOAT32_SLOPES])  # fmt: skip
def test_extreme_slopes_are_accurate_in_float32(op, attrs, opset, values, slope):
    """Where x^2 overflows, 1 - x^2 cancels or the output saturates, the slope in ONNX Runtime
    is still right to float32 precision (the inputs are float32 numbers)."""
    x = np.array([values], dtype=np.float32)
    model = make_model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": x}, "y", opset)
    got = grad_of(model, "x", {"x": x}, np.ones_like(x), "ort")
    want = slope(x.astype(np.float64))
    assert np.all(want != 0)
    np.testing.assert_allclose(got, want, rtol=3e-6)


# -- a GELU written out with Erf: its last Mul takes the whole slope (rules_math._erf_gelu) ------
def _gelu_nodes(form: str) -> list:
    n = helper.make_node
    if form == "dynamo":  # x * (0.5 * (erf(x / sqrt2) + 1))
        return [n("Div", ["x", "root2"], ["u"]), n("Erf", ["u"], ["e"]),
                n("Add", ["e", "one"], ["a"]), n("Mul", ["half", "a"], ["b"]),
                n("Mul", ["x", "b"], ["y"])]  # fmt: skip
    if form == "hf":  # (x * 0.5) * (1 + erf(x / sqrt2))
        return [n("Mul", ["x", "half"], ["p"]), n("Div", ["x", "root2"], ["u"]),
                n("Erf", ["u"], ["e"]), n("Add", ["one", "e"], ["a"]),
                n("Mul", ["p", "a"], ["y"])]  # fmt: skip
    if form == "legacy":  # (x * (erf(x / sqrt2) + 1)) * 0.5
        return [n("Div", ["x", "root2"], ["u"]), n("Erf", ["u"], ["e"]),
                n("Add", ["e", "one"], ["a"]), n("Mul", ["x", "a"], ["m"]),
                n("Mul", ["m", "half"], ["y"])]  # fmt: skip
    if form == "times-k":  # ((erf(x * k) + 1) * 0.5) * x, other constants
        return [n("Mul", ["x", "k"], ["u"]), n("Erf", ["u"], ["e"]),
                n("Add", ["e", "one"], ["a"]), n("Mul", ["a", "half"], ["b"]),
                n("Mul", ["b", "x"], ["y"])]  # fmt: skip
    if form == "shared":  # dynamo, and `a` read again: its other reader's gradient still flows
        return [*_gelu_nodes("dynamo")[:-1], n("Mul", ["x", "b"], ["g"]),
                n("Mul", ["a", "a"], ["aa"]), n("Add", ["g", "aa"], ["y"])]  # fmt: skip
    if form == "two-plus":  # 2 + erf: not the pattern, the plain rules
        return [n("Div", ["x", "root2"], ["u"]), n("Erf", ["u"], ["e"]),
                n("Add", ["e", "two"], ["a"]), n("Mul", ["x", "a"], ["y"])]  # fmt: skip
    if form == "negative-k":  # erf(-0.7 x): the coefficient's log is not taken, plain rules
        return [n("Mul", ["x", "negk"], ["u"]), n("Erf", ["u"], ["e"]),
                n("Add", ["e", "one"], ["a"]), n("Mul", ["x", "a"], ["y"])]  # fmt: skip
    raise ValueError(form)


GELU_CONSTANTS = {"root2": np.array(2**0.5), "one": np.array(1.0), "half": np.array(0.5),
                  "k": np.array([1.3]), "two": np.array(2.0), "negk": np.array(-0.7)}  # fmt: skip
GELU_FORMS = ["dynamo", "hf", "legacy", "times-k", "shared", "two-plus", "negative-k"]


@pytest.mark.parametrize("form", GELU_FORMS)
def test_erf_gelu_patterns(form):
    nodes = _gelu_nodes(form)
    used = {i for node in nodes for i in node.input}
    consts = {k: v for k, v in GELU_CONSTANTS.items() if k in used}
    check_graph(nodes, {"x": r(3, 5, low=-4, high=4)}, "y", constants=consts, opset=13, **ERF_FD)


@pytest.mark.parametrize("form", ["dynamo", "hf", "legacy", "times-k"])
def test_erf_gelu_is_reversed_as_one_slope(form):
    """The fused route: no Div (the Erf argument's reverse) and no Sum of x's two gradients."""
    nodes = _gelu_nodes(form)
    used = {i for node in nodes for i in node.input}
    consts = {k: v for k, v in GELU_CONSTANTS.items() if k in used}
    model = make_model(nodes, {"x": r(3, 5)}, "y", 13, consts, False)
    grad = build_gradient_model(model, "x", "y")
    reverse = [n.op_type for n in grad.graph.node if n.name.startswith("igcli_grad")]
    assert "Sum" not in reverse and "Div" not in reverse, reverse
    assert reverse.count("Exp") == 1
