"""Gradient rules for elementwise arithmetic and activations.

Each rule is named after its op; the docstring states the derivative it implements.
`g` is the NodeGrad; rules return one gradient (or None) per forward input.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from igcli.autodiff.builder import FLOAT_TYPES, NodeGrad, TensorInfo
from igcli.autodiff.registry import NoGradient, rule


@rule("Identity")
def Identity(g: NodeGrad):
    """dy/dx = 1."""
    return [g.GO(0)]


@rule("Add")
def Add(g: NodeGrad):
    """y = a + b: both receive GO, summed down to their own (broadcast) shapes."""
    go = g.GO(0)
    return [g.reduce_to(go, k) if g.needs(k) else None for k in (0, 1)]


@rule("Sub")
def Sub(g: NodeGrad):
    """y = a - b: a gets GO, b gets -GO."""
    go = g.GO(0)
    ga = g.reduce_to(go, 0) if g.needs(0) else None
    gb = g.reduce_to(g.op("Neg", go), 1) if g.needs(1) else None
    return [ga, gb]


@rule("Mul")
def Mul(g: NodeGrad):
    """y = a * b: da = GO * b, db = GO * a (the last Mul of a GELU written with Erf: see
    _erf_gelu)."""
    go = g.GO(0)
    gelu = _erf_gelu(g)
    if gelu is not None:
        return gelu
    ga = g.reduce_to(g.op("Mul", go, g.I(1)), 0) if g.needs(0) else None
    gb = g.reduce_to(g.op("Mul", go, g.I(0)), 1) if g.needs(1) else None
    return [ga, gb]


def _erf_gelu(g: NodeGrad) -> list[str | None] | None:
    """The last Mul of a GELU written out with Erf, as torch exports nn.GELU: y = X1 * X2,
    X1 = x or c1 x, X2 = A or c2 A, A = 1 + erf(k x), c1, c2 and k scalar constants (the
    Erf's argument u = k x written x * k or x / (1/k)). dy/dx through X2 is c2 A'(x) X1 with
    A' = 2k/sqrt(pi) exp(-u^2); it goes into X1's gradient, which X1's own rule then scales by
    c1: GX1 = GO (X2 + x exp(log(c2 2k/sqrt(pi)) - u^2)), and X2 gets none from this node.

    So the four nodes between x and X2 are not reversed one by one (they still are for any
    other reader of theirs): 6 passes over the MLP's widest tensor instead of 9, and no Sum
    of x's two gradients. None where the pattern is not there (the plain rule applies)."""
    go = g.GO(0)
    if go is None:
        return None
    for k in (0, 1):
        x1, x2 = g.I(k), g.I(1 - k)
        if not g.needs(k):
            continue
        a, c2 = _times_scalar(g, x2)
        erf = _one_plus_erf(g, a)
        if erf is None:
            continue
        u, x, slope = erf
        if x != x1 and _times_scalar(g, x1)[0] != x:
            continue
        coef = c2 * 2.0 * slope / math.sqrt(math.pi)
        if not (math.isfinite(coef) and coef > 0):
            continue
        bump = g.op("Exp", g.op("Sub", g.scalar(math.log(coef), x), g.op("Mul", u, u)))
        grad = g.op("Mul", go, g.op("Add", x2, g.op("Mul", x, bump)))
        out: list[str | None] = [None, None]
        out[k] = g.reduce_to(grad, k)
        return out
    return None


def _scalar_const(g: NodeGrad, name: str) -> float | None:
    value = g.e.constants.get(name)
    if value is None or np.size(value) != 1 or np.asarray(value).dtype.kind != "f":
        return None
    return float(np.asarray(value).reshape(-1)[0])


def _times_scalar(g: NodeGrad, name: str) -> tuple[str, float]:
    """(t, c) when tensor `name` is t * c or t / (1/c) for a scalar constant c, else (name, 1)."""
    node = g.producer(name)
    if node is not None and node.op_type in ("Mul", "Div") and len(node.input) == 2:
        a, b = node.input
        for t, c in ((a, b), (b, a)) if node.op_type == "Mul" else ((a, b),):
            value = _scalar_const(g, c)
            if value is not None and value != 0 and g.e.constants.get(t) is None:
                return t, (value if node.op_type == "Mul" else 1.0 / value)
    return name, 1.0


def _one_plus_erf(g: NodeGrad, name: str) -> tuple[str, str, float] | None:
    """(u, x, k) when tensor `name` is 1 + erf(u) with u = k x (k a scalar constant)."""
    node = g.producer(name)
    if node is None or node.op_type != "Add" or len(node.input) != 2:
        return None
    for e, one in (node.input, node.input[::-1]):
        erf = g.producer(e)
        if _scalar_const(g, one) == 1.0 and erf is not None and erf.op_type == "Erf":
            u = erf.input[0]
            return (u, *_times_scalar(g, u))
    return None


@rule("Div")
def Div(g: NodeGrad):
    """y = a / b: da = GO / b, db = -GO * y / b."""
    go = g.GO(0)
    ga = g.reduce_to(g.op("Div", go, g.I(1)), 0) if g.needs(0) else None
    gb = None
    if g.needs(1):
        gb = g.reduce_to(g.op("Neg", g.op("Div", g.op("Mul", go, g.O(0)), g.I(1))), 1)
    return [ga, gb]


@rule("Neg")
def Neg(g: NodeGrad):
    """dy/dx = -1."""
    return [g.op("Neg", g.GO(0))]


@rule("Relu")
def Relu(g: NodeGrad):
    """dy/dx = 1 where x > 0, else 0. The mask reads y (y > 0 exactly where x > 0): the graph
    already keeps y for the next layer, so x need not stay alive. (Where is 4x slower than Mul.)

    For float32 images ([N, C, H, W], C a multiple of 16) the mask is Clip(y * 2^127, 0, 1),
    the scaling done by a depthwise 1x1 Conv: ONNX Runtime keeps such a Conv, and the Mul of
    two of its blocked-layout outputs, in its NCHWc layout (16-channel blocks) next to the real
    Convs, where Greater and Cast would force a reorder out and back in around every ReLU. (On
    its own, outside such a layout, the Conv form costs about twice Greater and Cast.) The
    mask is exactly 0 where y = 0 and exactly 1 for every y >= 2^-127, which includes every
    normal float32; only a subnormal y (below 1.2e-38, a unit at its kink to within float32
    resolution) gets a mask in (0, 1)."""
    y = g.O(0)
    shape = g.e.static_shape(y)
    if g.e.infos_elem(y) == TensorProto.FLOAT and shape and len(shape) == 4:
        channels = shape[1]
        if isinstance(channels, int) and channels > 0 and channels % 16 == 0:
            scale = g.e.const(np.full([channels, 1, 1, 1], 2.0**127), np.float32)
            scaled = g.op("Conv", y, scale, group=channels)
            if g.opset >= 11:
                mask = g.op("Clip", scaled, g.scalar(0.0, y), g.scalar(1.0, y))
            else:
                mask = g.op("Clip", scaled, min=0.0, max=1.0)
            return [g.op("Mul", g.GO(0), mask)]
    mask = g.op("Cast", g.op("Greater", y, g.scalar(0.0)), to=g.e.infos_elem(g.I(0)))
    return [g.op("Mul", g.GO(0), mask)]


def _bell(g: NodeGrad, x: str, scale: float) -> str:
    """e / (1 + e)^2 with e = exp(-scale |x|): sigmoid'(scale x), accurate where y saturates.

    y (1 - y) from the output would lose it there: ONNX Runtime's float32 Sigmoid returns 0
    below x = -18 (and 3.6e-7 for 3.1e-7 at -15), its Tanh exactly 1 from |x| = 9 on, so
    y (1 - y) and 1 - y^2 are 0 or off by tens of percent where the true slope is 1e-9.
    """
    e = g.op("Exp", g.op("Mul", g.op("Abs", x), g.scalar(-scale, x)))
    one_plus = g.op("Add", e, g.scalar(1.0, x))
    return g.op("Div", e, g.op("Mul", one_plus, one_plus))


@rule("Sigmoid")
def Sigmoid(g: NodeGrad):
    """dy/dx = y (1 - y) = e / (1 + e)^2 with e = exp(-|x|) (see _bell)."""
    return [g.op("Mul", g.GO(0), _bell(g, g.I(0), 1.0))]


@rule("Tanh")
def Tanh(g: NodeGrad):
    """dy/dx = 1 - y^2 = 4 e / (1 + e)^2 with e = exp(-2 |x|) (see _bell)."""
    slope = g.op("Mul", _bell(g, g.I(0), 2.0), g.scalar(4.0))
    return [g.op("Mul", g.GO(0), slope)]


@rule("Exp")
def Exp(g: NodeGrad):
    """dy/dx = y."""
    return [g.op("Mul", g.GO(0), g.O(0))]


@rule("Log")
def Log(g: NodeGrad):
    """dy/dx = 1 / x."""
    return [g.op("Div", g.GO(0), g.I(0))]


# -- helpers shared by the rules below ------------------------------------------------------


def _float(g: NodeGrad, cond: str, like: str) -> str:
    """A boolean mask as 0/1 in the float type of `like`."""
    return g.op("Cast", cond, to=g.e.infos_elem(like))


def _at_top(g: NodeGrad, x: str, y: str, largest: bool) -> str:
    """Boolean x == y where y is an upper (largest) or lower bound of x.

    Spelled Not(x < y) / Not(x > y): Equal takes floats only from opset 11 on.
    """
    return g.op("Not", g.op("Less" if largest else "Greater", x, y))


def _where_positive(g: NodeGrad, x: str, pos: str, neg: str) -> str:
    """pos where x > 0, else neg."""
    return g.op("Where", g.op("Greater", x, g.scalar(0.0, x)), pos, neg)


# -- variadic, broadcasting -----------------------------------------------------------------


@rule("Sum")
def Sum(g: NodeGrad):
    """y = sum_k x_k: every input receives GO, summed down to its own shape."""
    return [g.reduce_to(g.GO(0), k) if g.needs(k) else None for k in range(g.n_inputs())]


@rule("Mean")
def Mean(g: NodeGrad):
    """y = (1/n) sum_k x_k: every input receives GO / n, summed down to its own shape."""
    n = g.n_inputs()
    go = g.op("Mul", g.GO(0), g.scalar(1.0 / n, g.O(0)))
    return [g.reduce_to(go, k) if g.needs(k) else None for k in range(n)]


def _variadic_extreme(g: NodeGrad, largest: bool):
    """GO goes to the input holding the extreme, shared equally where several tie. Ties held
    all along a path (two equal features against equal baselines) are where IG's symmetry
    asks for equal shares; central differences give them, and so does PyTorch's maximum.
    (The first input alone took it: a tie of x3 and x7 gave them -1.3 and 2.0, where
    --gradients fd gave 0.34 each.)"""
    y, go = g.O(0), g.GO(0)
    hits = [_float(g, _at_top(g, g.I(k), y, largest), y) for k in range(g.n_inputs())]
    count = hits[0] if len(hits) == 1 else g.op("Sum", *hits)
    share = g.op("Div", go, count)
    return [g.reduce_to(g.op("Mul", share, hit), k) if g.needs(k) else None
            for k, hit in enumerate(hits)]  # fmt: skip


@rule("Max")
def Max(g: NodeGrad):
    """y = max_k x_k: dx_k = GO where x_k equals y, shared by the inputs that tie."""
    return _variadic_extreme(g, largest=True)


@rule("Min")
def Min(g: NodeGrad):
    """y = min_k x_k: dx_k = GO where x_k equals y, shared by the inputs that tie."""
    return _variadic_extreme(g, largest=False)


# -- unary and binary elementwise ----------------------------------------------------------


@rule("Abs")
def Abs(g: NodeGrad):
    """dy/dx = sign(x)."""
    return [g.op("Mul", g.GO(0), g.op("Sign", g.I(0)))]


@rule("Sqrt")
def Sqrt(g: NodeGrad):
    """dy/dx = 0.5 / y."""
    return [g.op("Div", g.op("Mul", g.GO(0), g.scalar(0.5)), g.O(0))]


@rule("Reciprocal")
def Reciprocal(g: NodeGrad):
    """y = 1/x: dy/dx = -y^2."""
    y = g.O(0)
    return [g.op("Neg", g.op("Mul", g.GO(0), g.op("Mul", y, y)))]


@rule("Pow")
def Pow(g: NodeGrad):
    """y = a^b: da = GO * b * a^(b-1), db = GO * y * log(a) (taken as 0 where a <= 0)."""
    a, b, go = g.I(0), g.I(1), g.GO(0)
    ga = gb = None
    if g.needs(0):
        b_val = g.const_input(1)
        if b_val is not None:
            coef = g.e.const(b_val, g.e.np_dtype(a))
            b_minus_1 = g.e.const(b_val.astype(np.float64) - 1.0, g.e.np_dtype(a))
        else:
            coef = b
            if g.e.infos_elem(b) != g.e.infos_elem(a):
                coef = g.op("Cast", b, to=g.e.infos_elem(a))
            b_minus_1 = g.op("Sub", coef, g.scalar(1.0, a))
        ga = g.reduce_to(g.op("Mul", go, g.op("Mul", coef, g.op("Pow", a, b_minus_1))), 0)
    if g.needs(1):
        positive = g.op("Greater", a, g.scalar(0.0, a))
        log_a = g.op("Log", g.op("Where", positive, a, g.scalar(1.0, a)))
        gb = g.reduce_to(g.op("Mul", go, g.op("Mul", g.O(0), log_a)), 1)
    return [ga, gb]


@rule("LeakyRelu")
def LeakyRelu(g: NodeGrad):
    """dy/dx = 1 where x > 0, else alpha."""
    go = g.GO(0)
    return [_where_positive(g, g.I(0), go, g.op("Mul", go, g.scalar(g.attr("alpha", 0.01))))]


@rule("PRelu")
def PRelu(g: NodeGrad):
    """y = x if x >= 0 else slope * x: dx = GO * (1 or slope), dslope = GO * x where x < 0."""
    x, slope, go = g.I(0), g.I(1), g.GO(0)
    negative = g.op("Less", x, g.scalar(0.0, x))
    zero = g.scalar(0.0, x)
    gx = gs = None
    if g.needs(0):  # slope broadcasts to x, never the other way: no reduction needed
        gx = g.op("Where", negative, g.op("Mul", go, slope), go)
    if g.needs(1):
        gs = g.reduce_to(g.op("Where", negative, g.op("Mul", go, x), zero), 1)
    return [gx, gs]


def _scaled_exp_below_zero(g: NodeGrad, scale: float) -> str:
    """scale * exp(min(x, 0)): the slope of an exponential linear unit below zero, from x.
    As y + alpha it cancels where y rounds to -alpha: ONNX Runtime's float32 Elu gave a slope
    of exactly 0 at x = -20 (true 2e-9) and 44% too much at -17."""
    below = g.op("Exp", g.op("Min", g.I(0), g.scalar(0.0, g.I(0))))
    return g.op("Mul", below, g.scalar(scale, g.I(0)))


@rule("Elu")
def Elu(g: NodeGrad):
    """dy/dx = 1 where x > 0, else alpha exp(x) (see _scaled_exp_below_zero)."""
    go = g.GO(0)
    neg = g.op("Mul", go, _scaled_exp_below_zero(g, g.attr("alpha", 1.0)))
    return [_where_positive(g, g.I(0), go, neg)]


@rule("Selu")
def Selu(g: NodeGrad):
    """dy/dx = gamma where x > 0, else gamma alpha exp(x) (see _scaled_exp_below_zero)."""
    alpha = g.attr("alpha", 1.67326319217681884765625)
    gamma = g.attr("gamma", 1.05070102214813232421875)
    go = g.GO(0)
    pos = g.op("Mul", go, g.scalar(gamma))
    neg = g.op("Mul", go, _scaled_exp_below_zero(g, gamma * alpha))
    return [_where_positive(g, g.I(0), pos, neg)]


@rule("Clip")
def Clip(g: NodeGrad):
    """dy/dx = 1 strictly inside (min, max), else 0; dmin = GO below min, dmax = GO above max."""
    x, go = g.I(0), g.GO(0)
    if g.opset < 11:
        lo = g.attr("min")
        hi = g.attr("max")
        lo = None if lo is None else g.scalar(lo, x)
        hi = None if hi is None else g.scalar(hi, x)
    else:
        lo = g.I(1) or None
        hi = g.I(2) or None
    zero = g.scalar(0.0, x)
    inside = None
    for bound, cmp in ((lo, "Greater"), (hi, "Less")):
        if bound is not None:
            ok = g.op(cmp, x, bound)
            inside = ok if inside is None else g.op("And", inside, ok)
    grads: list[str | None] = [None] * g.n_inputs()
    if g.needs(0):
        grads[0] = go if inside is None else g.op("Where", inside, go, zero)
    for k, cmp in ((1, "Less"), (2, "Greater")):
        if g.needs(k):
            below = g.op(cmp, x, g.I(k))
            grads[k] = g.reduce_to(g.op("Where", below, go, zero), k)
    return grads


@rule("HardSigmoid")
def HardSigmoid(g: NodeGrad):
    """y = clip(alpha x + beta, 0, 1): dy/dx = alpha where 0 < y < 1, else 0."""
    y = g.O(0)
    inside = g.op("And", g.op("Greater", y, g.scalar(0.0, y)), g.op("Less", y, g.scalar(1.0, y)))
    scaled = g.op("Mul", g.GO(0), g.scalar(g.attr("alpha", 0.2), y))
    return [g.op("Where", inside, scaled, g.scalar(0.0, y))]


@rule("HardSwish")
def HardSwish(g: NodeGrad):
    """y = x * clip(x/6 + 1/2, 0, 1): dy/dx = 0 below -3, 1 above 3, x/3 + 1/2 between."""
    x = g.I(0)
    ramp = g.op("Add", g.op("Mul", x, g.scalar(1.0 / 3.0)), g.scalar(0.5))
    above = g.op("Where", g.op("Greater", x, g.scalar(3.0)), g.scalar(1.0), ramp)
    slope = g.op("Where", g.op("Less", x, g.scalar(-3.0)), g.scalar(0.0), above)
    return [g.op("Mul", g.GO(0), slope)]


@rule("Softplus")
def Softplus(g: NodeGrad):
    """y = log(1 + e^x): dy/dx = sigmoid(x) = exp(x - y). From x and y, not ONNX Runtime's
    float32 Sigmoid, which is 0 below x = -18 (see _bell) where the slope is e^x: x - y is
    accurate to a unit of x at any x, so the slope is too."""
    return [g.op("Mul", g.GO(0), g.op("Exp", g.op("Sub", g.I(0), g.O(0))))]


@rule("Swish")
def Swish(g: NodeGrad):
    """y = x sigmoid(a x): dy/dx = s + a x s (1 - s) with s = sigmoid(a x), and s (1 - s)
    from _bell (accurate where s saturates)."""
    x, alpha = g.I(0), float(g.attr("alpha", 1.0))
    ax = g.op("Mul", x, g.scalar(alpha))
    s = g.op("Sigmoid", ax)
    bend = g.op("Mul", ax, _bell(g, x, abs(alpha)))
    return [g.op("Mul", g.GO(0), g.op("Add", s, bend))]


@rule("Mod")
def Mod(g: NodeGrad):
    """y = a - b k with k = trunc(a / b) (fmod=1, C's fmod) or floor(a / b) (fmod=0, as
    Python's %): da = GO, db = -GO k; k is a step function of a and b. Integer Mod carries
    no gradient (nothing float reaches it)."""
    a, b, go = g.I(0), g.I(1), g.GO(0)
    ga = g.reduce_to(go, 0) if g.needs(0) else None
    gb = None
    if g.needs(1):
        q = g.op("Div", a, b)
        if g.attr("fmod", 0):
            k = g.op("Mul", g.op("Sign", q), g.op("Floor", g.op("Abs", q)))
        else:
            k = g.op("Floor", q)
        gb = g.reduce_to(g.op("Neg", g.op("Mul", go, k)), 1)
    return [ga, gb]


@rule("Softsign")
def Softsign(g: NodeGrad):
    """y = x / (1 + |x|): dy/dx = 1 / (1 + |x|)^2."""
    d = g.op("Add", g.scalar(1.0), g.op("Abs", g.I(0)))
    return [g.op("Div", g.GO(0), g.op("Mul", d, d))]


@rule("Erf")
def Erf(g: NodeGrad):
    """dy/dx = 2 / sqrt(pi) * exp(-x^2), spelled exp(log(2 / sqrt(pi)) - x^2): four passes
    over x instead of five, and no Neg (slower than Mul in ONNX Runtime). In a ViT's GELUs
    this rule took 7% of the gradient call."""
    x = g.I(0)
    bump = g.op("Exp", g.op("Sub", g.scalar(math.log(2.0 / math.sqrt(math.pi))), g.op("Mul", x, x)))
    return [g.op("Mul", g.GO(0), bump)]


@rule("Gelu")
def Gelu(g: NodeGrad):
    """none: dy/dx = Phi(x) + x phi(x) with Phi(x) = (1 + erf(x/sqrt 2))/2, phi = Phi'.

    tanh: y = x (1 + t)/2, t = tanh(u), u = c (x + k x^3), c = sqrt(2/pi), k = 0.044715:
    dy/dx = (1 + t)/2 + x (1 - t^2) c (1 + 3 k x^2) / 2.
    """
    x, s = g.I(0), g.scalar
    x2 = g.op("Mul", x, x)
    if g.attr("approximate", "none") == "tanh":
        c, k = math.sqrt(2.0 / math.pi), 0.044715
        u = g.op("Mul", g.op("Mul", x, g.op("Add", s(1.0), g.op("Mul", x2, s(k)))), s(c))
        t = g.op("Tanh", u)
        du = g.op("Mul", g.op("Add", s(1.0), g.op("Mul", x2, s(3.0 * k))), s(c))
        dt = g.op("Mul", g.op("Sub", s(1.0), g.op("Mul", t, t)), du)
        slope = g.op("Mul", g.op("Add", g.op("Add", s(1.0), t), g.op("Mul", x, dt)), s(0.5))
    else:
        cdf = g.op("Mul", g.op("Add", s(1.0), g.op("Erf", g.op("Mul", x, s(0.5**0.5)))), s(0.5))
        pdf = g.op("Mul", g.op("Exp", g.op("Mul", x2, s(-0.5))), s(1.0 / math.sqrt(2 * math.pi)))
        slope = g.op("Add", cdf, g.op("Mul", x, pdf))
    return [g.op("Mul", g.GO(0), slope)]


# -- trigonometric and hyperbolic ----------------------------------------------------------


def _slope(g: NodeGrad, slope: str) -> list[str]:
    return [g.op("Mul", g.GO(0), slope)]


@rule("Sin")
def Sin(g: NodeGrad):
    """dy/dx = cos(x)."""
    return _slope(g, g.op("Cos", g.I(0)))


@rule("Cos")
def Cos(g: NodeGrad):
    """dy/dx = -sin(x)."""
    return [g.op("Neg", g.op("Mul", g.GO(0), g.op("Sin", g.I(0))))]


@rule("Tan")
def Tan(g: NodeGrad):
    """dy/dx = 1 + tan(x)^2 = 1 + y^2 (as precise as y, also near the poles)."""
    y = g.O(0)
    return _slope(g, g.op("Add", g.op("Mul", y, y), g.scalar(1.0)))


def _one_minus_square(g: NodeGrad, x: str) -> str:
    """1 - x^2 as (1 - x)(1 + x): exact near |x| = 1, where 1 - x*x cancels."""
    one = g.scalar(1.0, x)
    return g.op("Mul", g.op("Sub", one, x), g.op("Add", one, x))


@rule("Asin")
def Asin(g: NodeGrad):
    """dy/dx = 1 / sqrt((1 - x)(1 + x))."""
    return [g.op("Div", g.GO(0), g.op("Sqrt", _one_minus_square(g, g.I(0))))]


@rule("Acos")
def Acos(g: NodeGrad):
    """dy/dx = -1 / sqrt((1 - x)(1 + x))."""
    return [g.op("Neg", g.op("Div", g.GO(0), g.op("Sqrt", _one_minus_square(g, g.I(0)))))]


@rule("Atan")
def Atan(g: NodeGrad):
    """dy/dx = 1 / (1 + x^2)."""
    x = g.I(0)
    return [g.op("Div", g.GO(0), g.op("Add", g.op("Mul", x, x), g.scalar(1.0)))]


@rule("Sinh")
def Sinh(g: NodeGrad):
    """dy/dx = cosh(x)."""
    return _slope(g, g.op("Cosh", g.I(0)))


@rule("Cosh")
def Cosh(g: NodeGrad):
    """dy/dx = sinh(x)."""
    return _slope(g, g.op("Sinh", g.I(0)))


@rule("Asinh")
def Asinh(g: NodeGrad):
    """dy/dx = 1 / sqrt(x^2 + 1) = 1 / hypot(x, 1), spelled m sqrt((|x|/m)^2 + (1/m)^2) with
    m = max(|x|, 1): x^2 overflows float32 from |x| = 1.8e19 on, where the slope is a normal
    1/|x| that 1 / sqrt(inf) would silently make 0."""
    x = g.I(0)
    a = g.op("Abs", x)
    m = g.op("Max", a, g.scalar(1.0))
    u, v = g.op("Div", a, m), g.op("Reciprocal", m)
    hypot = g.op("Mul", m, g.op("Sqrt", g.op("Add", g.op("Mul", u, u), g.op("Mul", v, v))))
    return [g.op("Div", g.GO(0), hypot)]


@rule("Acosh")
def Acosh(g: NodeGrad):
    """dy/dx = 1 / sqrt(x^2 - 1) = 1 / (sqrt(x - 1) sqrt(x + 1)): exact near x = 1, and no
    overflow of x^2 for large x."""
    x, one = g.I(0), g.scalar(1.0)
    root = g.op("Mul", g.op("Sqrt", g.op("Sub", x, one)), g.op("Sqrt", g.op("Add", x, one)))
    return [g.op("Div", g.GO(0), root)]


@rule("Atanh")
def Atanh(g: NodeGrad):
    """dy/dx = 1 / ((1 - x)(1 + x))."""
    return [g.op("Div", g.GO(0), _one_minus_square(g, g.I(0)))]


# -- more activations ----------------------------------------------------------------------


@rule("Celu")
def Celu(g: NodeGrad):
    """y = max(0, x) + min(0, alpha (exp(x / alpha) - 1)): dy/dx = exp(min(x, 0) / alpha),
    1 for x > 0. From x, not as y / alpha + 1: far below zero y rounds to -alpha and that
    difference to 0, where the slope is a small positive number."""
    x = g.I(0)
    inner = g.op("Div", g.op("Min", x, g.scalar(0.0)), g.scalar(g.attr("alpha", 1.0)))
    return _slope(g, g.op("Exp", inner))


@rule("Mish")
def Mish(g: NodeGrad):
    """y = x tanh(softplus(x)): dy/dx = tanh(sp) + x sech^2(sp) sigmoid(x). With w = e^x,
    tanh(sp) = ((1+w)^2 - 1) / ((1+w)^2 + 1) and x sech^2(sp) sigmoid(x) = 4 x w (1+w) /
    ((1+w)^2 + 1)^2. Written with a = exp(-|x|) (no overflow; numerator and denominator
    times a^2 above zero), s = 1 + a, and (b, c) = (1, a) above zero, (a, 1) below, so that
    s - c = b and d = s^2 + c^2: dy/dx = (b (s + c) + 4 x a c s / d) / d. b stands for
    s - c, which rounds to 0 below x = -17 in float32, where the slope (1 + x) e^x owes a
    twentieth of its value to that term."""
    x = g.I(0)
    a = g.op("Exp", g.op("Neg", g.op("Abs", x)))
    one = g.scalar(1.0)
    positive = g.op("Greater", x, g.scalar(0.0))
    b, c = g.op("Where", positive, one, a), g.op("Where", positive, a, one)
    s = g.op("Add", a, one)
    d = g.op("Add", g.op("Mul", s, s), g.op("Mul", c, c))
    tanh_num = g.op("Mul", b, g.op("Add", s, c))
    cross = g.op("Mul", g.op("Mul", g.op("Mul", x, a), g.op("Mul", c, s)), g.scalar(4.0))
    slope = g.op("Div", g.op("Add", tanh_num, g.op("Div", cross, d)), d)
    return _slope(g, slope)


@rule("ThresholdedRelu")
def ThresholdedRelu(g: NodeGrad):
    """y = x where x > alpha, else 0: dy/dx = 1 where x > alpha, else 0."""
    x = g.I(0)
    above = g.op("Greater", x, g.scalar(g.attr("alpha", 1.0)))
    return [g.op("Where", above, g.GO(0), g.scalar(0.0, x))]


@rule("Shrink")
def Shrink(g: NodeGrad):
    """y = x - bias where x > lambd, x + bias where x < -lambd, else 0: dy/dx = 1 where
    |x| > lambd, else 0."""
    x = g.I(0)
    outside = g.op("Greater", g.op("Abs", x), g.scalar(g.attr("lambd", 0.5)))
    return [g.op("Where", outside, g.GO(0), g.scalar(0.0, x))]


@rule("Cast")
def Cast(g: NodeGrad):
    """Float to float: the gradient cast back to the input's type. To integers/bool: none
    (a step function)."""
    src, dst = g.e.infos_elem(g.I(0)), g.attr("to")
    if src not in FLOAT_TYPES or dst not in FLOAT_TYPES:
        return [None]
    return [_cast_back(g, src, dst)]


def _cast_back(g: NodeGrad, src: int, dst: int) -> str:
    """GO in the type of x. Where inference lost x's type (infos_elem then says float32),
    CastLike takes it from x itself at run time: a float64 x after a GroupNormalization
    otherwise got a float32 gradient."""
    if g.e.info(g.I(0)) is None and g.opset >= 15:
        return g.op("CastLike", g.GO(0), g.I(0))
    return g.GO(0) if src == dst else g.op("Cast", g.GO(0), to=src)


@rule("CastLike")
def CastLike(g: NodeGrad):
    """y = x cast to the type of `target`: as Cast (float to float: the gradient cast back to
    x's type; to integers/bool: none). `target` only gives a type: no gradient."""
    src, dst = g.e.infos_elem(g.I(0)), g.e.infos_elem(g.I(1))
    if src not in FLOAT_TYPES or dst not in FLOAT_TYPES:
        return [None, None]
    return [_cast_back(g, src, dst), None]


@rule("Dropout")
def Dropout(g: NodeGrad):
    """Inference: y = x, dy/dx = 1 (ratio and training_mode get none)."""
    if g.opset >= 12 and g.I(2):
        training = g.const_input(2)
        if training is None or bool(np.asarray(training).item()):
            raise NoGradient("Dropout in training mode is random")
    return [g.GO(0)] + [None] * (g.n_inputs() - 1)


@rule("Where")
def Where(g: NodeGrad):
    """y = cond ? a : b: da = GO where cond, db = GO elsewhere; cond gets none."""
    cond, go = g.I(0), g.GO(0)
    zero = g.scalar(0.0, g.O(0))
    ga = g.reduce_to(g.op("Where", cond, go, zero), 1) if g.needs(1) else None
    gb = g.reduce_to(g.op("Where", cond, zero, go), 2) if g.needs(2) else None
    return [None, ga, gb]


# -- softmax -----------------------------------------------------------------------------


def _softmax_axes(g: NodeGrad) -> list[int]:
    """Opset >= 13: the one `axis` (default -1). Before: every axis from `axis` (default 1)
    on, since the input was coerced to 2-D there."""
    if g.opset >= 13:
        return [g.attr("axis", -1)]
    axis, rank = g.attr("axis", 1), g.e.rank(g.I(0))
    if rank is None:
        raise NoGradient("Softmax before opset 13 on a tensor of unknown rank")
    return list(range(axis % rank if rank else 0, rank))


@rule("Softmax")
def Softmax(g: NodeGrad):
    """dx = y * (GO - sum(GO * y, axes))."""
    y, go = g.O(0), g.GO(0)
    dot = g.e.reduce_sum(g.op("Mul", go, y), _softmax_axes(g), keepdims=True)
    return [g.op("Mul", y, g.op("Sub", go, dot))]


@rule("LogSoftmax")
def LogSoftmax(g: NodeGrad):
    """dx = GO - exp(y) * sum(GO, axes)."""
    y, go = g.O(0), g.GO(0)
    total = g.e.reduce_sum(go, _softmax_axes(g), keepdims=True)
    return [g.op("Sub", go, g.op("Mul", g.op("Exp", y), total))]


# -- reductions --------------------------------------------------------------------------


def _reduced_axes(g: NodeGrad) -> list[int] | None:
    """The sorted, non-negative axes the node reduces: None for all, [] for a no-op.

    Axes are an attribute before opset 13 (ReduceSum) or 18 (the others), an input after.
    """
    as_input = g.opset >= 18 or (g.node.op_type == "ReduceSum" and g.opset >= 13)
    if as_input:
        axes = []
        if g.I(1):
            value = g.const_input(1)
            if value is None:
                raise NoGradient("reduction axes computed at run time")
            axes = [int(a) for a in np.asarray(value).ravel()]
        if not axes:
            return [] if g.attr("noop_with_empty_axes", 0) else None
    else:
        axes = g.attr("axes")
        if not axes:
            return None
    if any(a < 0 for a in axes):
        rank = g.e.rank(g.I(0))
        if rank is None:
            raise NoGradient("negative reduction axes on a tensor of unknown rank")
        axes = [a % rank for a in axes]
    return sorted(set(axes))


class _Reduction:
    """What all reduction rules share: the axes, GO and y brought back to keepdims form, and
    the answer (a gradient for the data input only; axes get none)."""

    def __init__(self, g: NodeGrad) -> None:
        self.g, self.x = g, g.I(0)
        self.axes = _reduced_axes(g)
        self.squeezed = bool(self.axes) and not g.attr("keepdims", 1)
        self.go = self.kept(g.GO(0))

    def kept(self, t: str) -> str:
        """t (shaped like the output) with the reduced axes restored as size-1 dims."""
        return self.g.e.unsqueeze(t, self.axes) if self.squeezed else t

    def y(self) -> str:
        return self.kept(self.g.O(0))

    def answer(self, dx: str) -> list[str | None]:
        return [dx] + [None] * (self.g.n_inputs() - 1)

    def all_axes(self) -> list[int] | None:
        rank = self.g.e.rank(self.x)
        return self.axes if self.axes is not None else (None if rank is None else list(range(rank)))

    def reduced_dims(self) -> list[int] | None:
        """Static sizes of the reduced axes (None when any is unknown or symbolic)."""
        axes, shape = self.all_axes(), self.g.e.static_shape(self.x)
        if axes is None or shape is None:
            return None
        dims = [shape[a] for a in axes]
        return dims if all(isinstance(d, int) for d in dims) else None

    def expand(self, t: str) -> str:
        """Broadcast t (keepdims form) to the input's shape."""
        return self.g.op("Expand", t, self.g.op("Shape", self.x))


@rule("ReduceSum")
def ReduceSum(g: NodeGrad):
    """dx = GO broadcast back over the reduced axes."""
    red = _Reduction(g)
    return red.answer(red.expand(red.go))


@rule("ReduceMean")
def ReduceMean(g: NodeGrad):
    """dx = GO / n broadcast back over the reduced axes, n the number of reduced elements."""
    red, x = _Reduction(g), g.I(0)
    dims = red.reduced_dims()
    if dims is not None:
        n = g.scalar(float(np.prod(dims, dtype=np.int64)), x)
    else:  # some reduced size is only known at run time: n = size(x) / size(y)
        elem = g.e.infos_elem(x)
        size_x = g.op("Cast", g.op("Size", x), to=elem)
        n = g.op("Div", size_x, g.op("Cast", g.op("Size", g.O(0)), to=elem))
    return red.answer(red.expand(g.op("Div", red.go, n)))


def _reduce_extreme(g: NodeGrad, largest: bool):
    """GO goes to the element equal to the extreme, shared equally where several tie (as
    _variadic_extreme, and as PyTorch's amax)."""
    red, x = _Reduction(g), g.I(0)
    if red.axes == []:
        return red.answer(red.go)
    hit = _float(g, _at_top(g, x, red.y(), largest), x)
    mask = g.op("Div", hit, g.e.reduce("ReduceSum", hit, red.all_axes(), keepdims=True))
    return red.answer(g.op("Mul", red.go, mask))


@rule("ReduceMax")
def ReduceMax(g: NodeGrad):
    """dx = GO at the arg-max of each reduced block (shared on ties), else 0."""
    return _reduce_extreme(g, largest=True)


@rule("ReduceMin")
def ReduceMin(g: NodeGrad):
    """dx = GO at the arg-min of each reduced block (shared on ties), else 0."""
    return _reduce_extreme(g, largest=False)


@rule("ReduceL2")
def ReduceL2(g: NodeGrad):
    """y = sqrt(sum x^2): dx = GO * x / y (0 where y = 0, since x = 0 there)."""
    red, x = _Reduction(g), g.I(0)
    tiny = g.scalar(float(np.finfo(g.e.np_dtype(x)).tiny), x)
    return red.answer(g.op("Div", g.op("Mul", red.go, x), g.op("Max", red.y(), tiny)))


@rule("ReduceLogSumExp")
def ReduceLogSumExp(g: NodeGrad):
    """y = log sum exp(x): dx = GO * exp(x - y), a softmax over the reduced block."""
    red, x = _Reduction(g), g.I(0)
    return red.answer(g.op("Mul", red.go, g.op("Exp", g.op("Sub", x, red.y()))))


@rule("ReduceSumSquare")
def ReduceSumSquare(g: NodeGrad):
    """y = sum x^2: dx = 2 x GO."""
    red, x = _Reduction(g), g.I(0)
    return red.answer(g.op("Mul", red.go, g.op("Mul", x, g.scalar(2.0, x))))


@rule("ReduceL1")
def ReduceL1(g: NodeGrad):
    """y = sum |x|: dx = GO * sign(x) (0 at x = 0, the kink)."""
    red, x = _Reduction(g), g.I(0)
    return red.answer(g.op("Mul", red.go, g.op("Sign", x)))


@rule("ReduceLogSum")
def ReduceLogSum(g: NodeGrad):
    """y = log sum x: dx = GO / sum x broadcast back over the reduced axes, the sum taken
    again (exp(-y) would carry y's rounding, |y| ulps). A no-op reduction is log x
    elementwise: dx = GO / x."""
    red, x = _Reduction(g), g.I(0)
    total = x if red.axes == [] else g.e.reduce("ReduceSum", x, red.axes, keepdims=True)
    return red.answer(red.expand(g.op("Div", red.go, total)))


def _shifted(g: NodeGrad, t: str, by: int, n: int, rank: int, reverse: bool) -> str:
    """t moved `by` places along its last axis (of size n), towards the end (or, reverse,
    towards the start), the vacated places filled with 1."""
    axis = rank - 1
    kept = g.e.slice(t, [by], [n], [axis]) if reverse else g.e.slice(t, [0], [n - by], [axis])
    g.e.infos[kept] = TensorInfo(g.e.infos_elem(g.I(0)), None)  # the fill value's type
    pads = [0] * (2 * rank)
    pads[2 * rank - 1 if reverse else rank - 1] = by
    return g.e.pad(kept, pads, value=1.0)


def _exclusive_products(g: NodeGrad, t: str, n: int, rank: int, reverse: bool) -> str:
    """out[i] = prod of t[j] over j < i (reverse: j > i) along the last axis, of static size
    n: shifted one place, then a Hillis-Steele scan (each step multiplies in the partial
    product 1, 2, 4, ... places back): ceil(log2 n) Muls, no division."""
    out, step = _shifted(g, t, 1, n, rank, reverse), 1
    while step < n - 1:
        out = g.op("Mul", out, _shifted(g, out, step, n, rank, reverse))
        step *= 2
    return out


@rule("ReduceProd")
def ReduceProd(g: NodeGrad):
    """y = prod x: dx_i = GO * (product of the block's other elements), computed as the
    exclusive prefix times the exclusive suffix product over the block (flattened to one
    last axis), not as y / x_i, which is 0/0 at a zero and wrong for its neighbours when a
    block holds one zero. Needs static sizes on the reduced axes (the scan's length)."""
    red, x = _Reduction(g), g.I(0)
    if red.axes == []:
        return red.answer(red.go)
    axes, dims, rank = red.all_axes(), red.reduced_dims(), g.e.rank(x)
    if axes is None or dims is None:
        raise NoGradient("ReduceProd over axes whose sizes are known only at run time")
    n = int(np.prod(dims, dtype=np.int64))
    if n == 1:
        return red.answer(red.expand(red.go))
    kept = [a for a in range(rank) if a not in axes]
    perm = kept + axes
    moved = x if perm == list(range(rank)) else g.op("Transpose", x, perm=perm)
    flat = g.op("Reshape", moved, g.e.ints([0] * len(kept) + [n]))
    before = _exclusive_products(g, flat, n, len(kept) + 1, reverse=False)
    after = _exclusive_products(g, flat, n, len(kept) + 1, reverse=True)
    others = g.op("Reshape", g.op("Mul", before, after), g.op("Shape", moved))
    if moved != x:
        others = g.op("Transpose", others, perm=[int(k) for k in np.argsort(perm)])
    return red.answer(g.op("Mul", red.go, others))
