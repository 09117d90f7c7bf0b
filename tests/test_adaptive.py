"""Adaptive steps (steps="auto"): closed forms, the tolerance, shared calls, reuse, the cap."""

import math
from pathlib import Path

import numpy as np
import pytest

from igcli import ig
from igcli.gradients import FiniteDifferences, GraphGradients, pick
from igcli.ig import ADAPTIVE_METHOD, Problem, integrated_gradients, integrated_gradients_many
from igcli.inputs import load_samples
from igcli.model import ModelRunner
from igcli.session import AttributionSettings, Session
from tests import models

ROOT = Path(__file__).resolve().parent.parent


class Source:
    """A vectorised numpy gradient source that logs every point it is asked for.

    Sources of this class can be merged like the gradient graph's: one call then serves rows
    of several problems, each row evaluated by its own problem's functions.
    """

    name = "analytic"

    def __init__(self, f, grad, x, baseline, log=None, tag=0):
        self.f, self.grad = f, grad  # on [K, d] points: [K] values and [K, d] gradients
        self.x, self.b = np.asarray(x, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
        self.log = log if log is not None else []  # one list of (tag, alpha) per call
        self.tag = tag

    def alpha(self, point):
        d = self.x - self.b
        return float(np.dot(point - self.b, d) / np.dot(d, d))

    def values(self, points):
        return self.f(points)

    def values_and_gradients(self, points):
        self.log.append([(self.tag, self.alpha(p)) for p in points])
        return self.f(points), self.grad(points)

    @classmethod
    def merge(cls, per_row):
        return _Merged(per_row)


class _Merged:
    def __init__(self, per_row):
        self.per_row = per_row

    def values_and_gradients(self, points):
        rows = list(zip(self.per_row, points, strict=True))
        self.per_row[0].log.append([(s.tag, s.alpha(p)) for s, p in rows])
        f = np.array([s.f(p[None])[0] for s, p in rows])
        g = np.stack([s.grad(p[None])[0] for s, p in rows])
        return f, g


def separable(c, k, x, b, log=None, tag=0):
    """F(p) = sum_i c_i sin(k_i p_i): IG is exactly c_i (sin(k_i x_i) - sin(k_i b_i))."""
    return Source(
        lambda p: np.sin(p * k) @ c, lambda p: c * k * np.cos(p * k), x, b, log, tag
    ), c * (np.sin(k * x) - np.sin(k * b))


def min_one_sum(x, b, log=None, tag=0):
    """F = min(1, x1 + x2), the seed's example: IG at (1.2, 0.6) from 0 is (2/3, 1/3)."""
    return Source(
        lambda p: np.minimum(1.0, p.sum(1)),
        lambda p: np.where(p.sum(1, keepdims=True) < 1, 1.0, 0.0) * np.ones_like(p),
        x,
        b,
        log,
        tag,
    )


def auto(source, x, b, **kw):
    return integrated_gradients(source, x, b, steps="auto", **kw)


def test_quartic_is_exact_in_the_first_round():
    """F = sum c_i p_i^4: dF/dalpha is a cubic, which Simpson's rule integrates exactly."""
    rng = np.random.default_rng(0)
    c, x, b = rng.normal(size=5), rng.normal(size=5), rng.normal(size=5)
    src = Source(lambda p: (p**4) @ c, lambda p: 4 * c * p**3, x, b)
    r = auto(src, x, b, tolerance=1e-12)
    assert r.converged and r.steps == 9 and r.method == ADAPTIVE_METHOD
    assert r.stop_reason == "tolerance"
    np.testing.assert_allclose(r.attributions, c * (x**4 - b**4), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(r.alphas, np.arange(9) / 8)


@pytest.mark.parametrize("tolerance", [1e-2, 1e-4, 1e-6, 1e-8])
def test_converges_to_the_tolerance_on_a_closed_form(tolerance):
    rng = np.random.default_rng(1)
    c, k = rng.normal(size=8), rng.uniform(1, 6, size=8)
    x, b = rng.normal(size=8), np.zeros(8)
    src, exact = separable(c, k, x, b)
    r = auto(src, x, b, tolerance=tolerance)
    assert r.converged and r.rel_error <= tolerance
    assert r.delta == pytest.approx(exact.sum())
    # every attribution, not only their sum, is within the tolerance's reach
    assert np.abs(r.attributions - exact).max() <= 10 * tolerance * np.abs(exact).sum()


def test_more_steps_for_a_tighter_tolerance():
    rng = np.random.default_rng(2)
    c, k = rng.normal(size=6), rng.uniform(2, 8, size=6)
    x, b = rng.normal(size=6), np.zeros(6)
    steps = [auto(separable(c, k, x, b)[0], x, b, tolerance=t).steps for t in (1e-2, 1e-5, 1e-8)]
    assert steps[0] < steps[1] < steps[2] <= 1024


def test_min_one_sum_closed_form_and_points_gather_at_the_kink():
    x, b = np.array([1.2, 0.6]), np.zeros(2)
    r = auto(min_one_sum(x, b), x, b, tolerance=1e-6)
    assert r.converged and r.rel_error <= 1e-6
    np.testing.assert_allclose(r.attributions, [2 / 3, 1 / 3], atol=1e-5)
    kink = 1 / 1.8  # where x1 + x2 reaches 1 along the path
    near = np.abs(r.alphas - kink) < 1 / 16
    assert near.sum() > 0.6 * r.steps  # an eighth of the path holds most of the points


def steps_at(thresholds, c, x):
    """F = sum c_i max(0, p_i - t_i): along the path from 0 to x (x_i = 1), feature i's
    integrand is a step c_i [alpha > t_i], as in a ReLU network; IG_i = c_i (1 - t_i)."""
    return Source(
        lambda p: np.maximum(0, p - thresholds) @ c,
        lambda p: c * (p > thresholds),
        x,
        np.zeros_like(x),
    ), c * (1 - thresholds)


@pytest.mark.parametrize("tolerance", [0.02, 0.005, 0.001])
def test_feature_error_estimates_each_features_error_where_integrands_jump(tolerance):
    """Completeness checks the sum, whose errors cancel; feature_error follows the map's."""
    rng = np.random.default_rng(3)
    n = 400
    x, t, c = np.ones(n), rng.uniform(0.02, 0.98, n), rng.normal(size=n)
    src, exact = steps_at(t, c, x)
    r = auto(src, x, np.zeros(n), tolerance=tolerance)
    true = np.linalg.norm(r.attributions - exact) / np.linalg.norm(exact)
    assert r.converged and true > 2 * r.rel_error  # the sum hides much of it
    assert 0.5 * true <= r.feature_error <= 2 * true


def test_feature_error_errs_high_where_the_integrand_is_smooth():
    rng = np.random.default_rng(4)
    c, k = rng.normal(size=8), rng.uniform(1, 6, size=8)
    x = rng.normal(size=8)
    src, exact = separable(c, k, x, np.zeros(8))
    r = auto(src, x, np.zeros(8), tolerance=1e-4)
    true = np.linalg.norm(r.attributions - exact) / np.linalg.norm(exact)
    assert r.feature_error >= true
    fixed = integrated_gradients(src, x, np.zeros(8), steps=16)
    assert fixed.feature_error is None  # (fixed rules give no estimate)


def test_feature_error_counts_panels_committed_for_memory(monkeypatch):
    """Panels frozen to free their vectors keep their part of the estimate."""
    rng = np.random.default_rng(5)
    n = 400
    x, t, c = np.ones(n), rng.uniform(0.02, 0.98, n), rng.normal(size=n)
    src, exact = steps_at(t, c, x)
    froze = []
    freeze = ig._Adaptive.freeze
    monkeypatch.setattr(ig._Adaptive, "freeze", lambda s, k: froze.append(k) or freeze(s, k))
    r = ig._adaptive_many([Problem(x, np.zeros(n), src)], ig.StraightPath(), 64, 0.005, 1024,
                          memory_limit=12 * n * 8)[0]  # fmt: skip
    true = np.linalg.norm(r.attributions - exact) / np.linalg.norm(exact)
    assert froze and 0.5 * true <= r.feature_error <= 2 * true


def test_one_problem_points_are_never_evaluated_twice():
    log = []
    x, b = np.array([1.2, 0.6]), np.zeros(2)
    r = auto(min_one_sum(x, b, log), x, b, tolerance=1e-8)
    seen = [a for call in log for _, a in call]
    assert len(seen) == len(set(seen)) == r.steps
    np.testing.assert_allclose(sorted(seen), r.alphas, atol=1e-15)
    assert len(log) > 1  # several rounds


def test_problems_share_model_calls_and_keep_their_own_results():
    rng = np.random.default_rng(3)
    log = []
    problems, exact = [], []
    for tag in range(5):
        c, k = rng.normal(size=4), rng.uniform(1, 8, size=4)
        x, b = rng.normal(size=4), rng.normal(size=4) * 0.1
        src, ex = separable(c, k, x, b, log, tag)
        problems.append(Problem(x, b, src))
        exact.append(ex)
    shared = integrated_gradients_many(problems, steps="auto", tolerance=1e-6, batch_size=1000)
    calls = list(log)
    # one call per round, serving every problem still working
    assert set(t for t, _ in calls[0]) == set(range(5))
    rounds = {t: sum(any(tt == t for tt, _ in call) for call in calls) for t in range(5)}
    assert len(calls) == max(rounds.values())
    for tag, r in enumerate(shared):
        alphas = [a for call in calls for t, a in call if t == tag]
        assert len(alphas) == len(set(alphas)) == r.steps  # nothing evaluated twice
        assert r.converged and r.rel_error <= 1e-6
        assert np.abs(r.attributions - exact[tag]).max() < 1e-4
    # small calls, or one problem at a time: the same points and the same numbers
    log.clear()
    small = integrated_gradients_many(problems, steps="auto", tolerance=1e-6, batch_size=4)
    assert all(len(call) <= 4 for call in log)
    alone = [integrated_gradients_many([p], steps="auto", tolerance=1e-6)[0] for p in problems]
    for a, s, o in zip(shared, small, alone, strict=True):
        np.testing.assert_array_equal(a.attributions, s.attributions)
        np.testing.assert_array_equal(a.attributions, o.attributions)
        np.testing.assert_array_equal(a.alphas, o.alphas)


def test_gradient_graph_calls_are_shared_through_onnx_runtime():
    """Real model calls: all rows of all problems in the fewest calls, none repeated."""
    model = ROOT / "sample_models" / "breast_cancer_mlp.onnx"
    ex = Session(model, cache=False, threads=1, batch_size=64)
    samples = load_samples(ROOT / "sample_inputs" / "breast_cancer.csv", ex.prep, "bc")
    problems = []
    for s in samples:
        base = np.zeros_like(s.x)
        ends = ex.graph.run(np.stack([s.x, base]))
        t = int(np.argmax(ends[0]))
        problems.append(Problem(s.x, base, GraphGradients(ex.graph, t), tuple(pick(ends, t))))
    runner = ex.graph.runner
    runner.calls = runner.rows = 0
    shared = integrated_gradients_many(problems, steps="auto", batch_size=64)
    shared_calls = runner.calls
    assert runner.rows == sum(r.steps for r in shared)  # every row is a new point
    runner.calls = 0
    alone = [integrated_gradients_many([p], steps="auto", batch_size=64)[0] for p in problems]
    assert shared_calls < runner.calls
    for a, b in zip(shared, alone, strict=True):
        assert a.converged and a.rel_error <= 0.005
        assert a.steps == b.steps
        np.testing.assert_allclose(a.attributions, b.attributions, rtol=1e-5, atol=1e-6)


def test_max_steps_caps_and_says_so():
    x, b = np.array([1.2, 0.6]), np.zeros(2)
    r = auto(min_one_sum(x, b), x, b, tolerance=1e-13, max_steps=40)
    assert not r.converged and 39 <= r.steps <= 40 and r.stop_reason == "max_steps"
    assert r.rel_error > 1e-13
    small = auto(min_one_sum(x, b), x, b, max_steps=3)  # one panel: ends and midpoint
    assert small.steps == 3 and not small.converged and small.stop_reason == "max_steps"


def test_zero_delta_uses_the_variation_along_the_path():
    """F = sin(pi p1) exp(p2) from 0 to (1, 1): F(x) = F(b) = 0, yet the attributions are
    -c and c with c = pi (1 + e) / (1 + pi^2); relative error is undefined, the absolute
    one is judged against the variation of F along the path (about 2 max F)."""
    x, b = np.ones(2), np.zeros(2)
    src = Source(
        lambda p: np.sin(np.pi * p[:, 0]) * np.exp(p[:, 1]),
        lambda p: np.stack(
            [
                np.pi * np.cos(np.pi * p[:, 0]) * np.exp(p[:, 1]),
                np.sin(np.pi * p[:, 0]) * np.exp(p[:, 1]),
            ],
            axis=1,
        ),
        x,
        b,
    )
    r = auto(src, x, b, tolerance=1e-6, end_values=(0.0, 0.0))
    c = math.pi * (1 + math.e) / (1 + math.pi**2)
    assert r.delta == 0 and r.converged
    np.testing.assert_allclose(r.attributions, [-c, c], atol=1e-5)
    assert r.abs_error <= 1e-6 * 2 * 2.2  # variation <= 2 max F, max F < 2.2


def test_constant_function_converges_at_once():
    x, b = np.ones(3), np.zeros(3)
    src = Source(lambda p: np.full(len(p), 2.0), lambda p: np.zeros_like(p), x, b)
    r = auto(src, x, b)
    assert r.converged and r.steps == 9 and r.abs_error == 0


def test_nan_stops_at_once():
    x, b = np.array([1.0, 1.0]), np.array([-1.0, -1.0])
    src = Source(lambda p: np.log(p.sum(1)), lambda p: 1 / p.sum(1, keepdims=True) + 0 * p, x, b)
    with np.errstate(all="ignore"):
        r = auto(src, x, b, end_values=(math.log(2), float("nan")))
    assert not r.converged and r.steps == 9 and r.stop_reason == "nonfinite"


@pytest.mark.parametrize("end", [0.0, 1.0])
def test_an_infinite_slope_at_an_end_is_an_integrable_singularity(end):
    """sqrt at a zero baseline: the slope along the path is infinite at alpha 0 (or, from the
    other side, at alpha 1) and finite everywhere else. The end is kept out of every rule,
    its panel takes its midpoint and is split until completeness holds; this stopped at the
    first round ("nonfinite") before."""
    rng = np.random.default_rng(4)
    c, x = rng.uniform(0.5, 1.5, 6), rng.uniform(0.2, 2.0, 6)
    b = np.zeros(6)
    if end == 0.0:
        exact = c * np.sqrt(x)
        src = Source(lambda p: np.sqrt(p) @ c, lambda p: c / (2 * np.sqrt(p)), x, b)
    else:  # F = sum c_i sqrt(x_i - p_i): the slope blows up at p = x
        exact = -c * np.sqrt(x)
        src = Source(lambda p: np.sqrt(np.abs(x - p)) @ c,
                     lambda p: -c / (2 * np.sqrt(np.abs(x - p))), x, b)  # fmt: skip
    with np.errstate(divide="ignore", invalid="ignore"):
        r = auto(src, x, b, tolerance=1e-3)
    assert r.converged and r.rel_error <= 1e-3 and r.steps < 80
    np.testing.assert_allclose(r.attributions, exact, rtol=5e-3)
    assert np.isfinite(r.attributions).all() and np.isfinite(r.feature_error)
    # the points gather at the singular end
    assert min(abs(a - end) for a in r.alphas if a != end) < 1e-3


def test_a_slope_too_steep_for_any_panel_at_an_end_is_kept_out_like_an_infinite_one():
    """HuBERT's stacked norms at a zero baseline: F moves by 10% of F(x) - F(b) within 1e-9
    of the baseline, a slope of -6.2e11 there. Simpson's weight on it, even in the narrowest
    panel, gave an attribution sum of -98,405 where F(x) - F(b) was 0.0034. Such an end is
    kept out of every rule, as an infinite slope is: the miss is then that step's share."""
    x, b = np.array([1.0, 2.0], np.float32), np.zeros(2, np.float32)  # (panels >= 9.5e-7)
    tau, step = 1e-9, -0.1  # a step of -0.1 within ~1e-9 of the baseline, then a line

    def f(p):
        t = p @ np.array([1.0, 0.0])  # alpha
        return step * (1 - np.exp(-t / tau)) + 1.1 * t

    def grad(p):
        t = p @ np.array([1.0, 0.0])
        return np.stack([step / tau * np.exp(-t / tau) + 1.1, 0 * t], axis=1)

    r = auto(Source(f, grad, x, b), x, b, tolerance=5e-3)
    assert abs(r.attributions.sum() - 1.1) < 1e-6  # the line, exactly; the step unresolved
    assert abs(r.rel_error) == pytest.approx(0.1, rel=1e-3)


def test_an_infinite_slope_inside_the_path_still_stops():
    x, b = np.full(3, 2.0), np.zeros(3)
    src = Source(lambda p: np.sqrt(np.abs(p - 1.0)).sum(1),
                 lambda p: np.sign(p - 1.0) / (2 * np.sqrt(np.abs(p - 1.0))), x, b)  # fmt: skip
    with np.errstate(divide="ignore", invalid="ignore"):
        r = auto(src, x, b)
    assert not r.converged and r.stop_reason == "nonfinite"


def test_a_singular_end_through_the_gradient_graph(tmp_path):
    """The gradient graph's NaN at the baseline (Abs' 0 times Sqrt's infinite slope) failed
    the input under --gradients graph, and under auto fell back to finite differences, which
    reached 2.1% after 1,023 evaluations. Now: the graph, 29 evaluations, 0.42%."""
    path = models.save(models.root_sum(), tmp_path / "root.onnx")
    x = np.random.default_rng(0).uniform(0.2, 2, (1, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    session = Session(path, gradients="graph", cache=False, threads=1)
    a = session.attribute(tmp_path / "x.npy", steps="auto")
    assert a.gradient_source == "graph" and abs(a.rel_error) <= 0.005
    assert a.extra["steps_used"] < 60
    exact = np.linspace(0.5, 1.5, 8) * np.sqrt(x[0])
    np.testing.assert_allclose(a.attributions, exact, rtol=0.01, atol=0.01 * exact.max())


def test_finite_differences_through_onnx_runtime(tmp_path):
    """The fallback source works too: it returns F at its points as the graph does."""
    path = models.save(models.min_one_sum(), tmp_path / "m.onnx")
    runner = ModelRunner(models.min_one_sum(), path, "x", "y")
    x, b = np.array([1.2, 0.6], dtype=np.float32), np.zeros(2)
    r = auto(FiniteDifferences(runner, 0, x - b), x, b, tolerance=1e-3)
    assert r.converged and r.rel_error <= 1e-3
    np.testing.assert_allclose(r.attributions, [2 / 3, 1 / 3], atol=5e-3)


def test_memory_limit_bounds_the_stored_gradients(monkeypatch):
    """Past the limit, settled panels are committed and their gradients dropped; the result
    still converges where the work is local (here a kink: away from it F is linear)."""
    d = 20_000
    rng = np.random.default_rng(4)
    w, x, b = rng.normal(size=d), rng.normal(size=d), np.zeros(d)
    w *= np.sign(w @ x)
    s = 0.55 * (w @ x)  # F = min(s, w.p) bends at alpha = 0.55
    exact = w * x / (w @ x) * s
    stored = []
    real_accept = ig._Adaptive.accept

    def accept(self, values, vectors, sums=None):
        stored.append(self.stored_bytes)  # what the last round left
        real_accept(self, values, vectors, sums)

    monkeypatch.setattr(ig._Adaptive, "accept", accept)

    def run(limit):
        stored.clear()
        src = Source(
            lambda p: np.minimum(s, p @ w),
            lambda p: np.where((p @ w < s)[:, None], w, 0.0),
            x,
            b,
        )
        r = integrated_gradients_many(
            [Problem(x, b, src)], steps="auto", tolerance=1e-9, memory_limit=limit
        )[0]
        return r, max(stored)

    vector = d * 8
    free, most = run(2**40)
    assert free.steps > 40 and most > 30 * vector  # a vector per point
    capped, most = run(10 * vector)
    assert most <= 10 * vector
    assert capped.converged and capped.rel_error <= 1e-9 and capped.steps == free.steps
    np.testing.assert_allclose(capped.attributions, free.attributions, rtol=1e-12)
    np.testing.assert_allclose(capped.attributions, exact, rtol=2e-9)  # F depends on w.p only


def test_fixed_steps_are_unchanged():
    rng = np.random.default_rng(5)
    c, k = rng.normal(size=3), rng.uniform(1, 3, size=3)
    x, b = rng.normal(size=3), np.zeros(3)
    r = integrated_gradients(separable(c, k, x, b)[0], x, b, steps=16)
    assert r.steps == 16 and r.method == "gausslegendre" and r.converged is None
    assert r.alphas is None and r.stop_reason is None


def test_a_delta_the_path_cannot_reach_stops_early():
    """F(x) - F(b) as given disagrees with F along the path (say the forward model and the
    gradient graph round differently) by more than the tolerance: refining cannot help."""
    x, b = np.array([1.2, 0.6]), np.zeros(2)
    r = auto(min_one_sum(x, b), x, b, tolerance=1e-3, end_values=(1.01, 0.0))
    assert not r.converged and r.stop_reason == "floor" and r.steps < 100


def test_a_tighter_tolerance_is_never_a_worse_answer():
    """Past what rounding allows, splits still go on while they lower the error: a tolerance
    of 1e-30 stopped at 9 points ('floor'), ten times further off than 1e-4 got (found by a
    hostile-input sweep on the digits CNN)."""
    session = Session(ROOT / "sample_models" / "digits_cnn.onnx")
    digit = ROOT / "sample_inputs" / "digits" / "digit_3_idx30.png"
    errors = {}
    for tolerance in (1e-4, 1e-8, 1e-30):
        a = session.attribute(digit, steps="auto", tolerance=tolerance, max_steps=100_000)
        errors[tolerance] = abs(a.rel_error)
    assert errors[1e-8] <= errors[1e-4] and errors[1e-30] <= errors[1e-4]
    assert errors[1e-30] < 1e-5


def test_float32_inputs_are_not_refined_below_their_resolution():
    """Panels narrower than a few float32 ulps would evaluate the same model inputs."""
    x, b = np.array([1.2, 0.6], dtype=np.float32), np.zeros(2, dtype=np.float32)
    r = auto(min_one_sum(x, b), x, b, tolerance=1e-12)
    assert not r.converged and r.stop_reason == "floor"
    assert np.min(np.diff(r.alphas)) >= 2 * np.finfo(np.float32).eps


def test_errors_within_the_rounding_of_f_are_not_split(monkeypatch):
    """F computed in float32 (a saturated output near 1): F(x) - F(b) is a few units in the
    last place, and the panels' errors are that rounding, which halving never lowers."""
    x, b = np.array([1.0, 2.0, 3.0], dtype=np.float32), np.zeros(3, dtype=np.float32)

    def sigmoid(p):
        return 1 / (1 + np.exp(-p.sum(1)))

    def f(p):
        return (1 - 1e-6 * sigmoid(p)).astype(np.float32).astype(np.float64)

    def grad(p):
        s = sigmoid(p)[:, None]
        return -1e-6 * s * (1 - s) * np.ones_like(p)

    r = auto(Source(f, grad, x, b), x, b)
    assert not r.converged and r.stop_reason == "floor" and r.steps == 9
    monkeypatch.setattr(ig, "NOISE_ULPS", 0)  # without the rule: split down to the budget
    assert auto(Source(f, grad, x, b), x, b).steps > 100


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(steps="many"), "steps must be"),
        (dict(steps=True), "steps must be"),
        (dict(steps="auto", method="riemann_left"), "own rule"),
        (dict(steps="auto", tolerance=-1.0), "tolerance"),
        (dict(steps="auto", tolerance=float("nan")), "tolerance"),
        (dict(steps="auto", max_steps=2), "max_steps"),
    ],
)
def test_bad_arguments(kwargs, message):
    x, b = np.ones(2), np.zeros(2)
    with pytest.raises(ValueError, match=message):
        integrated_gradients(min_one_sum(x, b), x, b, **kwargs)


@pytest.mark.parametrize("at", [(1.0,), (1.0, 0.0)], ids=["x", "x-and-baseline"])
def test_gradients_given_at_the_ends_are_first_round_points_not_asked_again(at):
    """The call that gives F(x) and F(b) can give dF/dx there too (Session's ends, seeded at
    the target): the first round then takes them for alpha = 1 (and 0), the same result, a
    row fewer for each."""
    rng = np.random.default_rng(4)
    c, k = rng.normal(size=6), rng.uniform(1, 6, size=6)
    x, b = rng.normal(size=6), rng.normal(size=6)
    log = []
    src, _ = separable(c, k, x, b, log)
    plain = integrated_gradients_many([Problem(x, b, src)], steps="auto", tolerance=1e-6)[0]
    asked_plain = [a for call in log for _, a in call]
    log.clear()
    ends = (float(src.f(x[None])[0]), float(src.f(b[None])[0]))
    grads = {a: src.grad(p[None])[0] for a, p in ((1.0, x), (0.0, b)) if a in at}
    given = Problem(x, b, src, ends, end_gradient=grads.get(1.0),
                    baseline_gradient=grads.get(0.0))  # fmt: skip
    reused = integrated_gradients_many([given], steps="auto", tolerance=1e-6)[0]
    asked = [a for call in log for _, a in call]
    assert set(at) <= set(asked_plain) and not set(at) & set(asked)
    assert len(asked) == len(asked_plain) - len(at)
    assert reused.steps == plain.steps  # (the ends still count as evaluations)
    np.testing.assert_array_equal(reused.alphas, plain.alphas)
    np.testing.assert_array_equal(reused.attributions, plain.attributions)


def test_a_given_target_seeds_the_baseline_row_too():
    """With a target named, the ends' call seeds the input's and the baseline's rows at it:
    adaptive steps then ask no new row for either end, and the result is the one without."""
    model = ROOT / "sample_models" / "digits_cnn.onnx"
    ex = Session(model, cache=False, threads=1)
    path = sorted((ROOT / "sample_inputs" / "digits").glob("*.png"))[0]
    samples = load_samples(path, ex.prep, path.stem)
    auto = AttributionSettings(steps="auto", baseline="zero")
    ex.attribute_many(samples, settings=auto)  # the graph and its checks, ready
    runner = ex.graph.runner
    runner.rows = 0
    (got,) = ex.attribute_many(samples, settings=auto, targets_per_sample=[[7]])
    rows = runner.rows
    base = np.zeros_like(samples[0].x)
    ends = (got[0].f_input, got[0].f_baseline)
    runner.rows = 0
    (again,) = integrated_gradients_many(
        [Problem(samples[0].x, base, GraphGradients(ex.graph, 7), ends)], steps="auto"
    )
    assert rows == 2 + runner.rows - 2  # the ends' two rows stand for alpha = 1 and 0
    assert got[0].extra["steps_used"] == again.steps
    np.testing.assert_allclose(got[0].attributions, again.attributions, rtol=1e-4, atol=1e-6)


def test_the_session_reuses_the_gradient_its_ends_call_gave():
    """Adaptive steps through the gradient graph: the ends' call is seeded at each sample's
    top class (TOP_CLASS) or given target, so x is one row fewer, with the same results as
    integrating the same problems without it; the shared baseline's row is seeded like most
    inputs (here at its own top class), and a problem whose target that is takes it for
    alpha = 0. A second target of the same sample, and fixed steps, get no x row."""
    model = ROOT / "sample_models" / "digits_cnn.onnx"
    ex = Session(model, cache=False, threads=1)
    paths = sorted((ROOT / "sample_inputs" / "digits").glob("*.png"))[:3]
    samples = [s for p in paths for s in load_samples(p, ex.prep, p.stem)]
    auto = AttributionSettings(steps="auto", baseline="zero")
    ex.attribute_many(samples, settings=auto)  # the graph and its checks, ready
    runner = ex.graph.runner
    runner.rows = 0
    got = ex.attribute_many(samples, settings=auto, targets_per_sample=[None, [3, 5], None])
    rows = runner.rows
    bases = [np.zeros_like(s.x) for s in samples]
    top_of_baseline = int(np.argmax(ex.runner.run(bases[0][None]).reshape(-1)))
    problems = []
    for s, base, mine in zip(samples, bases, got, strict=True):
        for a in mine:
            ends = (a.f_input, a.f_baseline)
            problems.append(Problem(s.x, base, GraphGradients(ex.graph, a.target), ends))
    runner.rows = 0
    again = integrated_gradients_many(problems, steps="auto", batch_size=runner.batch_size)
    ends_rows = len(samples) + 1  # the inputs and the shared baseline
    flat = [a for mine in got for a in mine]
    at_baseline = sum(a.target == top_of_baseline for a in flat)
    assert at_baseline == 1  # (these digits: one of the four problems)
    # the top classes of samples 0 and 2, and target 3 of sample 1, came with the ends, and
    # so did the baseline's gradient for the problem whose target is its top class
    assert rows == ends_rows + runner.rows - 3 - at_baseline
    assert [a.target for a in got[1]] == [3, 5]
    for a, r in zip(flat, again, strict=True):
        assert a.extra["steps_used"] == r.steps
        np.testing.assert_allclose(a.attributions, r.attributions, rtol=1e-4, atol=1e-6)
    runner.rows = 0
    ex.attribute_many(samples[:1], settings=AttributionSettings(steps=16, baseline="zero"))
    assert runner.rows == 2 + 16  # fixed steps: the ends and the rule's points


def test_a_round_splits_the_largest_errors_until_split_goal_of_the_target_is_left():
    """Four first panels with errors 4, 3, 2, 1 (F falls by them where g is 0), target 5: the
    round splits the two largest (what is left, 3 and a square of 5, is within 0.85 of the
    target), not a third as a goal of half the target did; their quarter points come next."""
    alphas = np.arange(9) / 8
    f = np.concatenate([[0.0], -np.cumsum(np.repeat([4.0, 3.0, 2.0, 1.0], 2) / 2)])
    state = ig._Adaptive(np.zeros(1, np.float32), f[-1] - f[0], 0.5, max_steps=64)
    assert state.pending == alphas.tolist()
    state.accept(f, [np.zeros(1, np.float32)] * 9, np.zeros(9))
    assert ig.SPLIT_GOAL == 0.85 and not state.done
    np.testing.assert_allclose(state.errors, [4, 3, 2, 1])
    assert sorted(state.pending) == [1 / 16, 3 / 16, 5 / 16, 7 / 16]
