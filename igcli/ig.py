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
    if x.shape != baseline.shape:
        raise ValueError(f"baseline shape {baseline.shape} differs from input shape {x.shape}")
    path = path or StraightPath()
    x64, b64 = x.astype(np.float64), baseline.astype(np.float64)
    alphas, weights = alphas_and_weights(method, steps)
    total = np.zeros_like(x64)
    for start in range(0, steps, max(1, batch_size)):
        a = alphas[start : start + batch_size]
        w = weights[start : start + batch_size]
        points = path.points(x64, b64, a)
        _, grads = source.values_and_gradients(points)
        velocity = path.velocities(x64, b64, a)
        total += np.tensordot(w, grads * velocity, axes=1)
    if end_values is None:
        end_values = tuple(source.values(np.stack([x64, b64])))
    f_input, f_baseline = end_values
    return IGResult(total, float(f_input), float(f_baseline), steps, method)
