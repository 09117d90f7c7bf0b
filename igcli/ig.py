"""Integrated Gradients, independent of where gradients come from.

attribution_i = (x_i - b_i) * integral_0^1 dF/dx_i(gamma(a)) da  for the straight path, and in
general the integral of grad F(gamma(a)) * gamma'(a). The integral is a quadrature rule over
path points, evaluated in batches; completeness says the attributions sum to F(x) - F(b).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from igcli.gradients import GradientSource
from igcli.paths import Path, StraightPath
from igcli.quadrature import alphas_and_weights


@dataclass
class IGResult:
    attributions: np.ndarray  # same shape as x
    f_input: float
    f_baseline: float
    steps: int
    method: str

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
class Problem:
    """One IG integral: a sample, its baseline, and the source of its function's gradients."""

    x: np.ndarray
    baseline: np.ndarray
    source: GradientSource
    end_values: tuple[float, float] | None = None  # F(x), F(baseline) when already known


def integrated_gradients(
    source: GradientSource,
    x: np.ndarray,
    baseline: np.ndarray,
    *,
    steps: int = 50,
    method: str = "gausslegendre",
    path: Path | None = None,
    batch_size: int = 64,
    end_values: tuple[float, float] | None = None,
) -> IGResult:
    """IG of `source`'s scalar function at x (one sample, no batch axis) from `baseline`.

    `end_values` are F(x) and F(baseline) when the caller already has them.
    """
    problem = Problem(x, baseline, source, end_values)
    return integrated_gradients_many([problem], steps=steps, method=method, path=path,
                                     batch_size=batch_size)[0]  # fmt: skip


def _row_chunks(n_problems: int, steps: int, batch_size: int, straddle: bool):
    """(problem, first step, last step) segments, grouped into model calls of <= batch_size rows.

    Calls mix problems only when `straddle` (their sources can be merged into one call).
    """
    chunk, used = [], 0
    for j in range(n_problems):
        k = 0
        while k < steps:
            take = min(steps - k, batch_size - used)
            chunk.append((j, k, k + take))
            used += take
            k += take
            if used == batch_size or (not straddle and k == steps):
                yield chunk
                chunk, used = [], 0
    if chunk:
        yield chunk


def integrated_gradients_many(
    problems: list[Problem],
    *,
    steps: int = 50,
    method: str = "gausslegendre",
    path: Path | None = None,
    batch_size: int = 64,
) -> list[IGResult]:
    """IG for several problems, their path points packed into shared model calls.

    Points of different problems share a call when their sources can be merged (the source
    class has `merge(sources_per_row)`, as the gradient graph does: one seed per row); else
    each problem gets calls of its own.
    """
    path = path or StraightPath()
    for p in problems:
        if p.x.shape != p.baseline.shape:
            raise ValueError(f"baseline shape {p.baseline.shape} differs from {p.x.shape}")
    xs = [p.x.astype(np.float64) for p in problems]
    bs = [p.baseline.astype(np.float64) for p in problems]
    alphas, weights = alphas_and_weights(method, steps)
    kinds = {type(p.source) for p in problems}
    straddle = len(kinds) == 1 and hasattr(next(iter(kinds)), "merge")
    totals = [np.zeros_like(x) for x in xs]
    for chunk in _row_chunks(len(problems), steps, max(1, batch_size), straddle):
        points = np.concatenate([path.points(xs[j], bs[j], alphas[lo:hi]) for j, lo, hi in chunk])
        owners = [problems[j].source for j, lo, hi in chunk for _ in range(lo, hi)]
        source = owners[0] if len({id(s) for s in owners}) == 1 else type(owners[0]).merge(owners)
        _, grads = source.values_and_gradients(points)
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
