"""Quadrature rules on [0, 1]: where along the path to evaluate gradients, and with what weight.

Every rule returns `n` points (alphas) and weights that sum to 1, so a constant gradient is
integrated exactly. (A widely used library halves the end weights of its trapezoid rule
without rescaling, so its weights sum to (n-1)/n: a silent 1/n bias on every attribution.)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

Rule = Callable[[int], tuple[np.ndarray, np.ndarray]]


def riemann_left(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Left endpoints k/n, k = 0..n-1."""
    return np.arange(n) / n, np.full(n, 1.0 / n)


def riemann_right(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Right endpoints k/n, k = 1..n."""
    return np.arange(1, n + 1) / n, np.full(n, 1.0 / n)


def riemann_middle(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoints (k + 1/2)/n: second-order accurate for smooth integrands."""
    return (np.arange(n) + 0.5) / n, np.full(n, 1.0 / n)


def riemann_trapezoid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n equally spaced points including both ends; n - 1 intervals, end weights halved."""
    if n < 2:
        raise ValueError("the trapezoid rule needs at least 2 steps")
    weights = np.full(n, 1.0 / (n - 1))
    weights[[0, -1]] /= 2
    return np.linspace(0.0, 1.0, n), weights


def gausslegendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes mapped from [-1, 1] to [0, 1]: exact for polynomials of degree 2n-1."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1.0) / 2.0, weights / 2.0


RULES: dict[str, Rule] = {
    "riemann_left": riemann_left,
    "riemann_right": riemann_right,
    "riemann_middle": riemann_middle,
    "riemann_trapezoid": riemann_trapezoid,
    "gausslegendre": gausslegendre,
}


@lru_cache(maxsize=32)  # Gauss-Legendre nodes cost an eigenvalue problem; runs reuse one rule
def alphas_and_weights(method: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points and weights of a named rule; weights are renormalised to sum to 1 exactly.

    The arrays are read-only because they are shared between calls.
    """
    if method not in RULES:
        raise ValueError(f"unknown quadrature rule {method!r}; choose from {', '.join(RULES)}")
    if n < 1:
        raise ValueError("steps must be at least 1")
    alphas, weights = RULES[method](n)
    alphas, weights = alphas.astype(np.float64), weights / np.sum(weights)
    alphas.flags.writeable = weights.flags.writeable = False
    return alphas, weights
