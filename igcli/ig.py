"""Integrated Gradients, independent of where gradients come from.

attribution_i = (x_i - b_i) * integral_0^1 dF/dx_i(gamma(a)) da  for the straight path, and in
general the integral of grad F(gamma(a)) * gamma'(a). The integral is a quadrature rule over
path points, evaluated in batches; completeness says the attributions sum to F(x) - F(b).

Two ways to choose the points:
- a fixed rule (`steps=n`): n points of a named quadrature rule, the same for every problem;
- adaptive steps (`steps="auto"`): per problem, points are added where the integrand needs
  them until the completeness error is within a tolerance (see `_Adaptive`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from igcli.errors import NonFiniteGradient
from igcli.paths import Path, StraightPath
from igcli.quadrature import (
    ADAPTIVE_METHOD,
    DEFAULT_MAX_STEPS,
    DEFAULT_METHOD,
    DEFAULT_TOLERANCE,
    alphas_and_weights,
)

if TYPE_CHECKING:
    from igcli.gradients import GradientSource
# Stored integrand vectors of unfinished panels, over all problems of one call. Beyond it the
# panels with the smallest errors are committed (frozen) so their gradients can be dropped.
DEFAULT_MEMORY_LIMIT = 256 * 2**20
STOP_REASONS = {
    "tolerance": "the completeness error is within the tolerance",
    "max_steps": "max_steps gradient evaluations were used",
    "floor": "no refinement can lower the error further: the panels left are too narrow to "
    "split or their errors are the rounding of F itself, or F(x) - F(b) as given differs "
    "from what F along the path adds up to",
    "nonfinite": "F or its gradient is NaN or infinite at a path point",
}


# A relative completeness error above this says the path integral is not resolved: each such
# result is warned of (once per run), and the run's end counts them.
UNRESOLVED = 0.05


class Completeness:
    """The completeness numbers of anything with `attributions`, `f_input` and `f_baseline`
    (an IG result, a finished Attribution): the attributions should add up to F(x) - F(b)."""

    @property
    def attribution_sum(self) -> float:
        return float(np.sum(self.attributions, dtype=np.float64))

    @property
    def delta(self) -> float:
        """F(x) - F(baseline): what the attributions should add up to."""
        return self.f_input - self.f_baseline

    @property
    def abs_error(self) -> float:
        return abs(self.attribution_sum - self.delta)

    @property
    def rel_error(self) -> float:
        """|sum - delta| / |delta|; inf when delta is 0 but the sum is not."""
        if self.delta == 0:
            return 0.0 if self.abs_error == 0 else float("inf")
        return self.abs_error / abs(self.delta)


@dataclass
class IGResult(Completeness):
    attributions: np.ndarray  # same shape as x
    f_input: float
    f_baseline: float
    steps: int  # gradient evaluations used
    method: str
    # Adaptive steps only (None for a fixed rule): whether the tolerance was met, why the
    # refinement stopped (STOP_REASONS), and the path points evaluated (ascending).
    converged: bool | None = None
    stop_reason: str | None = None
    alphas: np.ndarray | None = None
    # Adaptive steps only: the estimated per-feature error of the attributions, relative L2
    # (see _Adaptive.feature_error); completeness checks only their sum
    feature_error: float | None = None


@dataclass
class Problem:
    """One IG integral: a sample, its baseline, and the source of its function's gradients."""

    x: np.ndarray
    baseline: np.ndarray
    source: GradientSource
    end_values: tuple[float, float] | None = None  # F(x), F(baseline) when already known
    # dF/dx at x (alpha 1) for this target, when the call that gave F(x) gave it too:
    # adaptive steps then take it as their first round's last point instead of a new row;
    # and at the baseline (alpha 0), likewise their first point
    end_gradient: np.ndarray | None = None
    baseline_gradient: np.ndarray | None = None


Steps = int | Literal["auto"]


def integrated_gradients(
    source: GradientSource,
    x: np.ndarray,
    baseline: np.ndarray,
    *,
    steps: Steps = 50,
    method: str | None = None,
    path: Path | None = None,
    batch_size: int = 64,
    end_values: tuple[float, float] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> IGResult:
    """IG of `source`'s scalar function at x (one sample, no batch axis) from `baseline`.

    `end_values` are F(x) and F(baseline) when the caller already has them.
    """
    problem = Problem(x, baseline, source, end_values)
    return integrated_gradients_many([problem], steps=steps, method=method, path=path,
                                     batch_size=batch_size, tolerance=tolerance,
                                     max_steps=max_steps)[0]  # fmt: skip


def _segments(counts: list[int], batch_size: int, straddle: bool):
    """(problem, first row, last row) segments, grouped into calls of <= batch_size rows.

    Problem j asks for counts[j] rows. Calls mix problems only when `straddle` (their sources
    can be merged into one call).
    """
    chunk, used = [], 0
    for j, n in enumerate(counts):
        k = 0
        while k < n:
            take = min(n - k, batch_size - used)
            chunk.append((j, k, k + take))
            used += take
            k += take
            if used == batch_size or (not straddle and k == n):
                yield chunk
                chunk, used = [], 0
    if chunk:
        yield chunk


def _row_chunks(n_problems: int, steps: int, batch_size: int, straddle: bool):
    """`_segments` for n_problems problems of `steps` rows each (the fixed rules)."""
    return _segments([steps] * n_problems, batch_size, straddle)


def _can_straddle(problems: list[Problem]) -> bool:
    kinds = {type(p.source) for p in problems}
    return len(kinds) == 1 and hasattr(next(iter(kinds)), "merge")


def _call(problems: list[Problem], chunk, points: np.ndarray):
    """F and dF/dx at the chunk's points, through one (merged) source."""
    owners = [problems[j].source for j, lo, hi in chunk for _ in range(lo, hi)]
    source = owners[0] if len({id(s) for s in owners}) == 1 else type(owners[0]).merge(owners)
    return source.values_and_gradients(points)


def integrated_gradients_many(
    problems: list[Problem],
    *,
    steps: Steps = 50,
    method: str | None = None,
    path: Path | None = None,
    batch_size: int = 64,
    tolerance: float = DEFAULT_TOLERANCE,
    max_steps: int = DEFAULT_MAX_STEPS,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
) -> list[IGResult]:
    """IG for several problems, their path points packed into shared model calls.

    Points of different problems share a call when their sources can be merged (the source
    class has `merge(sources_per_row)`, as the gradient graph does: one seed per row); else
    each problem gets calls of its own.

    `steps` is a number of points of the rule `method` (default Gauss-Legendre), or "auto":
    adaptive steps, per problem, until the relative completeness error is at most `tolerance`
    or `max_steps` gradient evaluations are used (then the result's `converged` is False, and
    `stop_reason` says why: see STOP_REASONS).
    `method` must be None with "auto" (the adaptive rule is fixed). `memory_limit` bounds the
    bytes of integrand vectors adaptive steps keep between rounds, over all problems (a
    round's new ones come on top, at most as many again; fixed rules keep none); past it,
    settled panels are committed, which can cost convergence in extreme cases.
    """
    path = path or StraightPath()
    for p in problems:
        if p.x.shape != p.baseline.shape:
            raise ValueError(f"baseline shape {p.baseline.shape} differs from {p.x.shape}")
    if isinstance(steps, str):
        if steps != "auto":
            raise ValueError(f"steps must be a number or 'auto', not {steps!r}")
        if method is not None and method != ADAPTIVE_METHOD:
            raise ValueError(f"steps='auto' uses its own rule; method {method!r} does not apply")
        return _adaptive_many(
            problems, path, max(1, batch_size), tolerance, max_steps, memory_limit
        )
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"steps must be a number or 'auto', not {steps!r}")
    method = method or DEFAULT_METHOD
    xs = [p.x.astype(np.float64) for p in problems]
    bs = [p.baseline.astype(np.float64) for p in problems]
    alphas, weights = alphas_and_weights(method, steps)
    straddle = _can_straddle(problems)
    totals = [np.zeros_like(x) for x in xs]
    for chunk in _row_chunks(len(problems), steps, batch_size, straddle):
        points = np.concatenate([path.points(xs[j], bs[j], alphas[lo:hi]) for j, lo, hi in chunk])
        _, grads = _call(problems, chunk, points)
        row = 0
        for j, lo, hi in chunk:
            velocity = path.velocities(xs[j], bs[j], alphas[lo:hi])
            totals[j] += np.tensordot(weights[lo:hi], grads[row : row + hi - lo] * velocity, axes=1)
            row += hi - lo
    results = []
    for p, x, b, total in zip(problems, xs, bs, totals, strict=True):
        ends = p.end_values or tuple(p.source.values(np.stack([x, b])))
        results.append(IGResult(total, float(ends[0]), float(ends[1]), steps, method))
    return results


# -- points other than a quadrature rule's ---------------------------------------------------


def evaluate_many(
    sources: list[GradientSource], points: list[np.ndarray], batch_size: int = 64
) -> list[tuple[np.ndarray, np.ndarray]]:
    """F and dF/dx at each source's own points ([n_j, *shape] each), in shared calls.

    For methods that choose their points themselves (expected gradients' random alphas, the
    steps of a guided path): rows of several sources share a call exactly as path points of
    several problems do (see `integrated_gradients_many`).
    """
    problems = [Problem(p[0] if len(p) else p, p[0] if len(p) else p, s)
                for s, p in zip(sources, points, strict=True)]  # fmt: skip
    counts = [len(p) for p in points]
    straddle = _can_straddle(problems)
    values = [[] for _ in points]
    grads = [[] for _ in points]
    for chunk in _segments(counts, max(1, batch_size), straddle):
        rows = np.concatenate([np.asarray(points[j][lo:hi], dtype=np.float64)
                               for j, lo, hi in chunk])  # fmt: skip
        f, g = _call(problems, chunk, rows)
        row = 0
        for j, lo, hi in chunk:
            values[j].append(np.asarray(f[row : row + hi - lo], dtype=np.float64))
            grads[j].append(np.asarray(g[row : row + hi - lo], dtype=np.float64))
            row += hi - lo
    shapes = [np.shape(p)[1:] for p in points]
    return [
        (np.concatenate(v) if v else np.zeros(0),
         np.concatenate(g) if g else np.zeros((0, *shape)))
        for v, g, shape in zip(values, grads, shapes, strict=True)
    ]  # fmt: skip


def values_many(
    sources: list[GradientSource], points: list[np.ndarray], batch_size: int = 64
) -> list[np.ndarray]:
    """F at each source's own points, forward only, in shared calls where sources merge."""
    merged = _can_straddle([Problem(np.zeros(1), np.zeros(1), s) for s in sources])
    out: list[list[np.ndarray]] = [[] for _ in points]
    counts = [len(p) for p in points]
    for chunk in _segments(counts, max(1, batch_size), merged):
        rows = np.concatenate([np.asarray(points[j][lo:hi]) for j, lo, hi in chunk])
        owners = [sources[j] for j, lo, hi in chunk for _ in range(lo, hi)]
        same = len({id(s) for s in owners}) == 1
        source = owners[0] if same else type(owners[0]).merge(owners)
        f = source.values(rows)
        row = 0
        for j, lo, hi in chunk:
            out[j].append(np.asarray(f[row : row + hi - lo], dtype=np.float64))
            row += hi - lo
    return [np.concatenate(v) if v else np.zeros(0) for v in out]


class SequentialPath(Protocol):
    """A path chosen on the way (Guided IG): where its next gradient is needed, and the step
    that gradient decides."""

    attributions: np.ndarray

    def point(self) -> np.ndarray | None: ...

    def take(self, grad: np.ndarray) -> None: ...


def sequential_many(
    sources: list[GradientSource], paths: list[SequentialPath], batch_size: int = 64
) -> list[int]:
    """Walk every path to its end, one gradient per path per round; a round's points share
    model calls. Returns the gradient evaluations each path used."""
    used = [0] * len(paths)
    while True:
        live = [j for j, p in enumerate(paths) if p.point() is not None]
        if not live:
            return used
        results = evaluate_many(
            [sources[j] for j in live], [paths[j].point()[None] for j in live], batch_size
        )
        for j, (_, grads) in zip(live, results, strict=True):
            paths[j].take(grads[0])
            used[j] += 1


# -- adaptive steps ------------------------------------------------------------------------

FIRST_PANELS = 4  # the first round: Simpson on 4 panels, 9 points including both ends
# A panel's error within this many units in the last place of |F| at its ends is rounding:
# F(c) - F(a) carries that much from the model's own arithmetic, however narrow the panel,
# so splitting cannot lower it.
NOISE_ULPS = 4
# A round splits panels until the error left, counting the split ones as gone, is this much of
# the target: the halves keep some error, so 1 would often need one more round. Replayed on
# six CNNs' integrands sampled on a 1/256 grid, 0.85 took 5-10% fewer evaluations than 0.5
# at tolerances 0.01, 0.005 and 0.002, with at most one more round (ResNet-50: 33 not 35).
SPLIT_GOAL = 0.85


class _Adaptive:
    """Adaptive Simpson on dyadic panels of [0, 1] for one problem, checked by completeness.

    Why this scheme: the gradient source returns F at every point it evaluates, so on a panel
    [a, c] whose ends and midpoint m were evaluated the exact integral of the scalar integrand
    dF/dalpha is known: F(gamma(c)) - F(gamma(a)). Simpson's rule on the panel,
    (c - a)/6 (g(a) + 4 g(m) + g(c)), therefore has an exactly known completeness error e_p.
    Each round splits the panels with the largest |e_p| in two; the halves reuse the parent's
    three points (ends and midpoint) and need only their two quarter points, so no gradient
    is computed twice, and points gather where the integrand moves (a kink, a saturating
    softmax). Points are dyadic rationals, exact in floating point. The attributions are the
    composite Simpson rule over the final panels (its weights sum to 1).

    Stopping: the completeness error of the attributions, |sum - delta| as `IGResult` reports
    it, is at most tolerance * |delta|, and so is the root-sum-square of the panel errors.
    The second test keeps a lucky cancellation between panels with large errors of opposite
    signs from passing for convergence. When F(x) = F(b) the relative error is undefined;
    errors are then measured against the variation of F seen along the path (the sum of
    |F(a_{i+1}) - F(a_i)| over the evaluated points) instead of |delta|, and if F is constant
    at every evaluated point only a zero error passes. A panel whose error is within F's own
    rounding is never split (its halves would carry as much); when such errors alone exceed
    the target, splits go on only while what they can remove exceeds them, then the run stops
    there ("floor").

    Per feature: completeness checks one sum. Simpson's rule is Richardson's extrapolation
    of two trapezoid rules, on the panels' ends (T_ends) and on all points (T):
    S = (4 T - T_ends) / 3. Where each feature's integrand jumps (a ReLU network's gradient
    is piecewise constant along the path) both trapezoid errors fall only as the panel width,
    and S's error is then about 2 |S - T|: `feature_error` reports 2 ||S - T|| / ||S||. On
    ResNet-50 and DenseNet-121 (integrands sampled on a 1/256 grid, tolerances 0.02 to
    0.001) it came within 0.97-1.06 of the distance from a 256-step Gauss-Legendre
    reference, which is 5-10 times the completeness error there. Where the integrand is
    smooth, S's error is far smaller and the estimate errs high.

    Memory: the integrand vector of each point is kept while a live panel uses it. `freeze`
    commits panels (their Simpson contribution is added to a running total and they are never
    split again) so their vectors can be dropped; the driver calls it only past its budget.
    """

    def __init__(self, x: np.ndarray, delta: float, tolerance: float, max_steps: int) -> None:
        self.delta, self.tolerance, self.max_steps = delta, tolerance, max_steps
        self.store_dtype = np.result_type(x.dtype, np.float32)  # the model's own precision
        self.alphas: list[float] = []
        self.index: dict[float, int] = {}
        self.f: list[float] = []
        self.g: list[float] = []  # dF/dalpha at each point: the sum of its integrand vector
        self.vec: list[np.ndarray | None] = []  # integrand vectors; None once no panel uses it
        self.users: list[int] = []  # live panels using each point
        self.singular: set[int] = set()  # ends (alpha 0 or 1) where the slope is infinite
        # (or all but: see accept)
        self.panels: list[tuple[int, int, int]] = []  # live panels as point indices (a, m, c)
        self.estimates = np.zeros(0)  # Simpson's rule for dF/dalpha on each live panel
        self.errors = np.zeros(0)  # its signed completeness error
        self.frozen = np.zeros(x.shape, dtype=np.float64)  # committed panels' contribution
        self.frozen_diff: np.ndarray | None = None  # and their S - T, once any is committed
        self.frozen_sum = 0.0  # committed panels' estimates and errors (signed sum and sum
        self.frozen_error = 0.0  # of squares)
        self.frozen_sq_error = 0.0
        self.split: list[int] = []  # live panels chosen for splitting (their quarter points
        self.pending: list[float] = []  # are pending evaluation)
        self.converged = False
        self.finite = True  # every F and integrand sum so far
        self.stop_reason: str | None = None
        self.done = False
        self.first_round = True
        self.max_new = max_steps  # points a round may add (the driver lowers it for memory)
        # Narrower panels are not split: their points would be the same model inputs (about 8
        # units in the last place of the input's type apart; dyadic alphas stay exact).
        self.eps = float(np.finfo(self.store_dtype).eps)
        self.min_width = max(8 * self.eps, 2.0**-40)
        self.attributions = self.frozen  # final once done
        self.feature_error: float | None = None
        n = FIRST_PANELS
        while n > 1 and 2 * n + 1 > max_steps:
            n //= 2
        self.pending = [k / (2 * n) for k in range(2 * n + 1)]

    @property
    def stored_bytes(self) -> int:
        return sum(v.nbytes for v in self.vec if v is not None)

    def accept(
        self, values: np.ndarray, vectors: list[np.ndarray], sums: np.ndarray | None = None
    ) -> None:
        """Take F and the integrand vector at each pending point (and the vectors' sums,
        when the caller has them), then decide what next."""
        alphas, self.pending = self.pending, []
        if sums is None:
            sums = np.array([np.sum(v, dtype=np.float64) for v in vectors])
        # An end whose slope is infinite (sqrt at a zero baseline) where F is finite: an
        # integrable singularity, kept out of every rule (see _weights). So is an end whose
        # slope is so steep that its weight in the narrowest panel alone would miss the
        # tolerance: HuBERT's stacked norms at a zero baseline, -6.2e11 against a mean of
        # 0.0034, gave an attribution sum of -98,405 where F(x) - F(b) was 0.0034.
        steep = 6 * self.tolerance * abs(self.delta) / self.min_width if self.delta else math.inf
        with np.errstate(invalid="ignore"):
            spike = ~np.isfinite(sums) | (np.abs(sums) > steep)
        ends = np.isin(alphas, (0.0, 1.0)) & np.isfinite(values) & spike
        self.finite = self.finite and bool(
            np.isfinite(values).all() and (np.isfinite(sums) | ends).all()
        )
        for a, f, v, g, end in zip(alphas, values, vectors, sums.tolist(), ends, strict=True):
            self.index[a] = len(self.alphas)
            if end:
                self.singular.add(len(self.alphas))
                v, g = None, math.nan
            self.alphas.append(a)
            self.f.append(float(f))
            self.g.append(g)
            self.vec.append(v)
            self.users.append(0)
        if self.first_round:  # uniform panels
            self.first_round = False
            ids = [self.index[a] for a in alphas]
            new = [(ids[k], ids[k + 1], ids[k + 2]) for k in range(0, len(ids) - 2, 2)]
        else:
            new = []
            for k in self.split:
                a, m, c = self.panels[k]
                qa = self.index[(self.alphas[a] + self.alphas[m]) / 2]
                qc = self.index[(self.alphas[m] + self.alphas[c]) / 2]
                new += [(a, qa, m), (m, qc, c)]
                for i in (a, m, c):
                    self.users[i] -= 1
            gone = set(self.split)
            keep = [k for k in range(len(self.panels)) if k not in gone]
            self.panels = [self.panels[k] for k in keep]
            self.estimates, self.errors = self.estimates[keep], self.errors[keep]
        for panel in new:
            for i in panel:
                self.users[i] += 1
        self.panels += new
        estimates = np.array([self._simpson(p) for p in new])
        exact = np.array([self.f[c] - self.f[a] for a, _, c in new])
        self.estimates = np.concatenate([self.estimates, estimates])
        self.errors = np.concatenate([self.errors, estimates - exact])
        self.split = []
        self._decide(finite=self.finite)

    def _weights(self, panel: tuple[int, int, int]) -> tuple[tuple[int, float, float], ...]:
        """(point, weight, weight in S - T) of a panel's rule: Simpson's, h/6 (1, 4, 1), and
        its difference from the trapezoid rule, h/12 (-1, 2, -1). A panel with a singular
        end takes its midpoint alone (h g(m): exact for lines), whose error, like any
        panel's, completeness gives exactly: splitting it, each split takes about 1/sqrt(2)
        off an inverse-square-root singularity's error (an S - T of 0: the per-feature
        error leaves it out)."""
        a, m, c = panel
        h = self.alphas[c] - self.alphas[a]
        if a in self.singular or c in self.singular:
            return ((m, h, 0.0),)
        return ((a, h / 6, -h / 12), (m, 4 * h / 6, h / 6), (c, h / 6, -h / 12))

    def _simpson(self, panel: tuple[int, int, int]) -> float:
        return sum(w * self.g[i] for i, w, _ in self._weights(panel))

    def _sum_attributions(self) -> tuple[np.ndarray, np.ndarray]:
        """The panels' rules (see _weights) summed, and their difference from the trapezoid
        rule on the same points."""
        weights: dict[int, tuple[float, float]] = {}
        for panel in self.panels:
            for i, w, d in self._weights(panel):
                w0, d0 = weights.get(i, (0.0, 0.0))
                weights[i] = (w0 + w, d0 + d)
        total = self.frozen.copy()
        diff = np.zeros_like(total) if self.frozen_diff is None else self.frozen_diff.copy()
        for i, (w, d) in weights.items():
            total += w * self.vec[i]
            diff += d * self.vec[i]
        return total, diff

    def _scale(self) -> float:
        if self.delta != 0:
            return abs(self.delta)
        f = np.array(self.f)[np.argsort(self.alphas)]
        return float(np.sum(np.abs(np.diff(f))))

    def _decide(self, finite: bool) -> None:
        """Check convergence; if not there, choose the panels to split next round."""
        if not finite:
            self._finish("nonfinite")  # refining cannot help; report what there is
            return
        target = self.tolerance * self._scale()
        # The attributions' sum, from the scalars (the same up to rounding): the vectors are
        # summed only once, at the end.
        signed = self.frozen_sum + float(np.sum(self.estimates)) - self.delta
        sq = self.frozen_sq_error + float(np.sum(self.errors**2))
        if abs(signed) <= target and math.sqrt(sq) <= target:
            self.converged = True
            self._finish("tolerance")
            return
        room = min((self.max_steps - len(self.alphas)) // 2, self.max_new // 2)
        if room < 1:  # each split costs two points
            self._finish("max_steps")
            return
        widths = np.array([self.alphas[c] - self.alphas[a] for a, _, c in self.panels])
        # A panel is split while wider than min_width and while its error is more than F's
        # rounding (NOISE_ULPS), which its halves would carry as much of: a saturated softmax,
        # F(x) and F(b) 12 float32 units apart, was split down to min_width on Inception-v2,
        # 809 evaluations and 63 s to say what the first 9 said.
        ends = np.array([max(abs(self.f[a]), abs(self.f[c])) for a, _, c in self.panels])
        rounding = NOISE_ULPS * self.eps * ends
        splittable = (widths > self.min_width) & (np.abs(self.errors) > rounding)
        # What no split can remove: the errors of committed panels and of panels not to split
        # (too narrow, or at F's rounding), and the reported delta against the F the source
        # returned along the path (they come from different calls), with rounding.
        stuck = ~splittable
        live = self.errors[splittable]
        live_sum = float(np.sum(live))
        fixed_sum = signed - live_sum
        fixed_sq = self.frozen_sq_error + float(np.sum(self.errors[stuck] ** 2))
        # Past a floor above the target, splits still lower what they can: until what they
        # can remove is below what they cannot (a tolerance of 1e-30 stopped at 9 points,
        # ten times further off than 1e-4 did).
        reach = max(target, abs(fixed_sum), math.sqrt(fixed_sq))
        if not live.size or (
            reach > target and abs(live_sum) <= reach
            and math.sqrt(float(np.sum(live**2))) <= reach
        ):  # fmt: skip
            self._finish("floor")
            return
        # Split the largest errors until what is left is SPLIT_GOAL of the target (or halfway
        # down to it from what no split removes).
        target = reach
        goal_sum = max(SPLIT_GOAL * target, (target + abs(fixed_sum)) / 2)
        goal_sq = max((SPLIT_GOAL * target) ** 2, (target**2 + fixed_sq) / 2)
        rest_sum, rest_sq = signed, sq
        for k in np.argsort(-np.abs(self.errors), kind="stable"):
            if len(self.split) >= room:
                break
            if self.split and abs(rest_sum) <= goal_sum and rest_sq <= goal_sq:
                break
            if not splittable[k]:
                continue
            self.split.append(int(k))
            rest_sum -= self.errors[k]
            rest_sq -= self.errors[k] ** 2
        if not self.split:
            self._finish("floor")
            return
        for k in self.split:
            a, m, c = self.panels[k]
            self.pending += [(self.alphas[a] + self.alphas[m]) / 2,
                             (self.alphas[m] + self.alphas[c]) / 2]  # fmt: skip

    def freeze(self, keep_bytes: int) -> None:
        """Commit live panels, smallest |error| first, until the stored vectors fit keep_bytes.

        Panels chosen for splitting stay live. Committed panels are final: their error still
        counts, they are just never refined.
        """
        chosen = set(self.split)
        stored = self.stored_bytes
        frozen = set()
        for k in np.argsort(np.abs(self.errors), kind="stable"):
            if stored <= keep_bytes:
                break
            if int(k) in chosen:
                continue
            a, m, c = self.panels[k]
            if self.frozen_diff is None:
                self.frozen_diff = np.zeros_like(self.frozen)
            for i, w, d in self._weights(self.panels[k]):
                self.frozen += w * self.vec[i]
                self.frozen_diff += d * self.vec[i]
            self.frozen_sum += float(self.estimates[k])
            self.frozen_error += float(self.errors[k])
            self.frozen_sq_error += float(self.errors[k]) ** 2
            frozen.add(int(k))
            for i in (a, m, c):
                self.users[i] -= 1
                if self.users[i] == 0 and self.vec[i] is not None:
                    stored -= self.vec[i].nbytes
                    self.vec[i] = None
        if frozen:
            keep = [k for k in range(len(self.panels)) if k not in frozen]
            renumber = {old: new for new, old in enumerate(keep)}
            self.panels = [self.panels[k] for k in keep]
            self.estimates, self.errors = self.estimates[keep], self.errors[keep]
            self.split = [renumber[k] for k in self.split]

    def _finish(self, reason: str) -> None:
        """Sum the attributions and drop the stored gradients."""
        self.stop_reason = reason
        self.attributions, diff = self._sum_attributions()
        size = float(np.linalg.norm(self.attributions))
        spread = 2 * float(np.linalg.norm(diff))
        if size > 0 and math.isfinite(size) and math.isfinite(spread):
            self.feature_error = spread / size
        elif size == 0 and spread == 0:
            self.feature_error = 0.0
        self.vec = []
        self.done = True

    def result(self, f_input: float, f_baseline: float) -> IGResult:
        order = np.argsort(self.alphas)
        alphas = np.array(self.alphas)[order]
        return IGResult(self.attributions, f_input, f_baseline, len(alphas), ADAPTIVE_METHOD,
                        converged=self.converged, stop_reason=self.stop_reason,
                        alphas=alphas, feature_error=self.feature_error)  # fmt: skip


def _call_at_ends(problems: list[Problem], chunk, points: np.ndarray, alphas: dict):
    """_call, where a row at a path's end (alpha 0 or 1) may have a slope that is not finite
    where F is: its gradient comes back NaN (see _Adaptive.accept). Only when the call
    fails so are the chunk's rows taken apart: the ends one by one, the rest per problem (a
    slope that is not finite inside the path is the failure it was)."""
    try:
        return _call(problems, chunk, points)
    except NonFiniteGradient:
        if not any(np.isin(alphas[j], (0.0, 1.0)).any() for j, _, _ in chunk):
            raise
    values, grads, row = [], [], 0
    for j, lo, hi in chunk:
        source, mine = problems[j].source, points[row : row + hi - lo]
        row += hi - lo
        end = np.isin(alphas[j], (0.0, 1.0))
        f = np.empty(len(mine))
        g = np.full(mine.shape, np.nan)
        if (~end).any():
            f[~end], g[~end] = source.values_and_gradients(mine[~end])
        for k in np.flatnonzero(end):
            try:
                f[k : k + 1], g[k : k + 1] = source.values_and_gradients(mine[k : k + 1])
            except NonFiniteGradient:
                f[k : k + 1] = source.values(mine[k : k + 1])
        values.append(f)
        grads.append(g)
    return np.concatenate(values), np.concatenate(grads)


def _adaptive_many(
    problems: list[Problem],
    path: Path,
    batch_size: int,
    tolerance: float,
    max_steps: int,
    memory_limit: int,
) -> list[IGResult]:
    """Adaptive steps for every problem, in rounds that share model calls.

    Each round, every unfinished problem proposes its next points; all of them are packed into
    calls of at most batch_size rows exactly as fixed rules pack theirs; each problem then
    takes its values and decides whether it is done.
    """
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be a finite number > 0, not {tolerance!r}")
    if max_steps < 3:
        raise ValueError("max_steps must be at least 3 (one Simpson panel)")
    xs = [p.x.astype(np.float64) for p in problems]
    bs = [p.baseline.astype(np.float64) for p in problems]
    ends = [p.end_values or tuple(p.source.values(np.stack([x, b])))
            for p, x, b in zip(problems, xs, bs, strict=True)]  # fmt: skip
    states = [
        _Adaptive(p.x, float(e[0]) - float(e[1]), tolerance, max_steps)
        for p, e in zip(problems, ends, strict=True)
    ]
    straddle = _can_straddle(problems)
    # points already evaluated: x itself and the baseline, where the ends' call gave their
    # gradients for this target
    given = [{a: (float(f), g) for a, f, g in ((1.0, e[0], p.end_gradient),
                                               (0.0, e[1], p.baseline_gradient)) if g is not None}
             for p, e in zip(problems, ends, strict=True)]  # fmt: skip

    def integrand(j: int, alphas: np.ndarray, grads: np.ndarray) -> tuple[list, np.ndarray]:
        """The rows' integrand vectors (one array per row, so that each can be dropped on
        its own) in the model's precision, and their sums."""
        stored = (grads * path.velocities(xs[j], bs[j], alphas)).astype(
            states[j].store_dtype, copy=False
        )
        sums = stored.reshape(len(stored), -1).sum(axis=1, dtype=np.float64)
        return [v.copy() for v in stored], sums

    while True:
        active = [j for j, s in enumerate(states) if not s.done]
        if not active:
            break
        asked = {j: [a for a in states[j].pending if a not in given[j]] for j in active}
        got: dict[int, dict[float, tuple[float, np.ndarray, float]]] = {j: {} for j in active}
        for j in active:
            known = [a for a in states[j].pending if a in given[j]]
            if known:
                pairs = [given[j].pop(a) for a in known]
                grads = np.stack([g for _, g in pairs]).astype(np.float64)
                vecs, sums = integrand(j, np.array(known), grads)
                for a, (fa, _), v, g in zip(known, pairs, vecs, sums.tolist(), strict=True):
                    got[j][a] = (fa, v, g)
        counts = [len(asked[j]) for j in active]
        for chunk in _segments(counts, batch_size, straddle):
            chunk = [(active[k], lo, hi) for k, lo, hi in chunk]
            alphas = {j: np.array(asked[j][lo:hi]) for j, lo, hi in chunk}
            points = np.concatenate([path.points(xs[j], bs[j], alphas[j]) for j, _, _ in chunk])
            f, grads = _call_at_ends(problems, chunk, points, alphas)
            row = 0
            for j, lo, hi in chunk:
                vecs, sums = integrand(j, alphas[j], grads[row : row + hi - lo])
                for a, fa, v, g in zip(alphas[j].tolist(), f[row : row + hi - lo].tolist(),
                                       vecs, sums.tolist(), strict=True):  # fmt: skip
                    got[j][a] = (float(fa), v, g)
                row += hi - lo
        share = memory_limit // len(active)
        for j in active:
            rows = [got[j][a] for a in states[j].pending]
            # a split panel keeps 3 vectors live: at most share / 3 of them per round
            states[j].max_new = max(2, 2 * (share // (3 * max(1, rows[0][1].nbytes))))
            states[j].accept(np.array([r[0] for r in rows]), [r[1] for r in rows],
                             np.array([r[2] for r in rows]))  # fmt: skip
        live = [s for s in states if not s.done]
        if live and sum(s.stored_bytes for s in live) > memory_limit:
            for s in live:
                s.freeze(memory_limit // len(live))
    return [s.result(float(e[0]), float(e[1])) for s, e in zip(states, ends, strict=True)]
