"""Quadrature rules on [0, 1]: where along the path to evaluate gradients, and with what weight.

Every rule returns `n` points (alphas) and weights that sum to 1, so a constant gradient is
integrated exactly. (A widely used library halves the end weights of its trapezoid rule
without rescaling, so its weights sum to (n-1)/n: a silent 1/n bias on every attribution.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np

DEFAULT_METHOD = "gausslegendre"  # the rule for a number of steps when none is named
# Adaptive steps (ig.py): their own rule, the completeness error they aim for, their budget.
ADAPTIVE_METHOD = "adaptive_simpson"
DEFAULT_TOLERANCE = 0.005
DEFAULT_MAX_STEPS = 1024
MAX_STEPS = 100_000  # the most points a run may ask for (fixed rules, --max-steps)

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


# Below this many points numpy's leggauss is cheap (its companion matrix is n x n: 80 KB at
# 100) and keeps existing results bit for bit; above it, an O(n) method (see _gauss_legendre).
LEGGAUSS_MAX = 100

# The first zeros of the Bessel function J0: near theta = 0 the Legendre nodes sit close to
# j_{0,k} / (n + 1/2), which makes a starting guess good to ~1e-11 (Olver's expansion).
_J0_ZEROS = np.array(
    [
        2.404825557695773,
        5.520078110286311,
        8.653727912911013,
        11.791534439014281,
        14.930917708487787,
        18.071063967910924,
        21.21163662987926,
        24.352471530749302,
        27.493479132040253,
        30.634606468431976,
    ]
)


def gausslegendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes on [0, 1]: exact for polynomials of degree 2n-1.

    O(n) memory and time for any n (100000 points: about 1 s, a few MB), accurate to a few
    units in the last place; see `_gauss_legendre`.
    """
    if n <= LEGGAUSS_MAX:
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return (nodes + 1.0) / 2.0, weights / 2.0
    theta, weights = _gauss_legendre(n)
    # x = cos(theta) on [-1, 1]; on [0, 1] the node pair is sin^2(theta/2) and cos^2(theta/2),
    # computed from theta so that nodes near 0 keep their relative accuracy (and nodes near
    # 1 their distance to 1).
    low = np.sin(theta / 2) ** 2
    half = n // 2
    alphas = np.concatenate([low, 1.0 - low[:half][::-1]])
    if n % 2:
        alphas[half] = 0.5  # theta = pi/2 exactly
    return alphas, np.concatenate([weights, weights[:half][::-1]]) / 2.0


def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """theta_k (x_k = cos theta_k, k = 1..ceil(n/2), theta ascending to pi/2) and weights on
    [-1, 1], in O(n) memory and time.

    Newton's method on P_n(cos theta) = 0 in theta (so nodes near x = +-1 keep their relative
    accuracy), as Hale and Townsend do (SIAM J. Sci. Comput. 35(2), 2013):
    - interior nodes (k > 10): P_n and its derivative from Stieltjes' asymptotic expansion,
      O(1) per node; the starting guess is Tricomi-like, (k - 1/4) pi / (n + 1/2) plus its
      first correction, and three Newton steps reach machine precision;
    - the 10 nodes nearest the end, where that expansion loses accuracy: the three-term
      recurrence in Reinsch's form (it carries P_k - P_{k-1}, stable next to x = 1), O(n) per
      node, started from Bessel-zero guesses.
    Weights w_k = 2 / (dP_n/dtheta)^2 at the nodes.
    """
    half = (n + 1) // 2
    rho = n + 0.5
    m = min(half, len(_J0_ZEROS))
    psi = _J0_ZEROS[:m] / rho
    theta_b = psi + (psi / np.tan(psi) - 1.0) / (8.0 * psi * rho**2)
    theta_b, w_b = _newton_recurrence(n, theta_b)
    if half == m:
        return theta_b, w_b
    k = np.arange(m + 1, half + 1, dtype=np.float64)
    phi = (k - 0.25) * np.pi / rho
    theta = phi + np.cos(phi) / (np.sin(phi) * 8.0 * rho**2)
    for _ in range(10):
        s, ds = _stieltjes(n, theta)
        step = s / ds
        theta -= step
        if np.max(np.abs(step)) <= 1e-15 * np.pi:
            break
    if n % 2:
        theta[-1] = np.pi / 2
    _, ds = _stieltjes(n, theta)
    # P_n(cos theta) = C_n * s with C_n = (4/pi) prod_{j<=n} j / (j + 1/2)
    log_c = -math.fsum(np.log1p(0.5 / np.arange(1, n + 1, dtype=np.float64)))
    c_n = 4.0 / np.pi * math.exp(log_c)
    return np.concatenate([theta_b, theta]), np.concatenate([w_b, 2.0 / (c_n * ds) ** 2])


def _stieltjes(n: int, theta: np.ndarray, terms: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """S and dS/dtheta with P_n(cos theta) = C_n S (Stieltjes' expansion, Szego 8.21.11):

    S = sum_m h_m cos((n + m + 1/2) theta - (m + 1/2) pi/2) / (2 sin theta)^(m + 1/2),
    h_0 = 1, h_m = h_{m-1} (m - 1/2)^2 / (m (n + m + 1/2)).
    20 terms reach double precision from the 11th node on for every n > 100 (the terms
    shrink by about m / (2 n sin theta) each).
    """
    two_sin = 2.0 * np.sin(theta)
    cot = np.cos(theta) / np.sin(theta)
    s, ds = np.zeros_like(theta), np.zeros_like(theta)
    h, scale = 1.0, 1.0 / np.sqrt(two_sin)
    for m in range(terms):
        if m:
            h *= (m - 0.5) ** 2 / (m * (n + m + 0.5))
        phase = (n + m + 0.5) * theta - (m + 0.5) * np.pi / 2
        amp = h * scale
        cos, sin = np.cos(phase), np.sin(phase)
        s += amp * cos
        ds -= amp * ((n + m + 0.5) * sin + (m + 0.5) * cot * cos)
        scale = scale / two_sin
    return s, ds


def _newton_recurrence(n: int, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Refine nodes theta with Newton steps on the recurrence; return them and their weights.

    Each pass costs n steps (vectorised over the few nodes); from the Bessel-zero guesses one
    step is enough for large n, small n take a few.
    """
    theta = theta.copy()
    for _ in range(8):
        p, d, u = _reinsch(n, theta)
        dtheta = n * (d - u * p) / np.sin(theta)  # dP_n/dtheta
        step = p / dtheta
        theta -= step
        if np.max(np.abs(step / theta)) <= 1e-13:  # quadratic: the next error is ~1e-26
            break
    p, d, u = _reinsch(n, theta)
    return theta, 2.0 * np.sin(theta) ** 2 / (n * (u * p - d)) ** 2


def _reinsch(n: int, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P_n(cos theta), d_n = P_n - P_{n-1} and u = 1 - cos theta by the three-term recurrence
    in Reinsch's form: with u instead of x, nothing cancels next to x = 1."""
    u = 2.0 * np.sin(theta / 2) ** 2
    d = -u  # P_1 - P_0
    p = 1.0 - u
    for k in range(1, n):
        d = (k * d - (2 * k + 1) * u * p) / (k + 1)
        p = p + d
    return p, d, u


RULES: dict[str, Rule] = {
    "riemann_left": riemann_left,
    "riemann_right": riemann_right,
    "riemann_middle": riemann_middle,
    "riemann_trapezoid": riemann_trapezoid,
    "gausslegendre": gausslegendre,
}


# Runs reuse one rule; Gauss-Legendre takes up to ~1 s (100000 points). 32 rules of at most
# 100000 points hold at most 51 MB.
@lru_cache(maxsize=32)
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
