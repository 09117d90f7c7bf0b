"""Paths from baseline to input. IG integrates grad F(gamma(a)) . gamma'(a) over a in [0, 1].

A path gives the points gamma(a) and the velocities gamma'(a) for a batch of alphas; the IG
core needs nothing else, so non-straight paths plug in here:

- `StraightPath`: b + a (x - b), Integrated Gradients proper.
- `BlurPath`: through Gaussian scale space, from a maximally blurred input to the input
  (Blur IG, Xu et al. 2020), with PAIR saliency's parameters (max_sigma, sqrt spacing).
- extremal paths move one feature group at a time (`extremal_breakpoints`); each leg is a
  straight path, so they need no path object: the legs are ordinary IG problems whose
  attributions add up (and Shapley value sampling averages random orders of them).
- `GuidedPath`: Guided IG (Kapishnikov et al. 2021), the adaptive path that moves the
  features with the smallest gradient magnitude first. It is chosen step by step from the
  gradients met on the way, so it is a state machine that the IG core's sequential driver
  (`ig.sequential_many`) feeds one gradient at a time.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Path(Protocol):
    name: str

    def points(self, x: np.ndarray, baseline: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """gamma(alpha) for each alpha, stacked on a new leading axis."""
        ...

    def velocities(self, x: np.ndarray, baseline: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """gamma'(alpha), same shape as points (may broadcast over the leading axis)."""
        ...


class StraightPath:
    """gamma(a) = b + a (x - b): the path of Integrated Gradients proper."""

    name = "straight"

    def points(self, x: np.ndarray, baseline: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        shape = (-1,) + (1,) * x.ndim
        points = alphas.reshape(shape) * (x - baseline)[None]
        points += baseline  # in place: one array of points, not two (a digit's: 45 us, not 380)
        return points

    def velocities(self, x: np.ndarray, baseline: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        return (x - baseline)[None]


# -- path names on the command line --------------------------------------------------------

PATHS = ("straight", "blur", "guided", "extremal", "shapley")


@dataclass(frozen=True)
class PathSpec:
    """A parsed --path: the kind, and for `extremal:ORDER` the order given (group indices)."""

    kind: str
    order: tuple[int, ...] | None = None


def parse_path(text: str) -> PathSpec:
    """`straight`, `blur`, `guided`, `extremal`, `extremal:3,0,1` or `shapley`.

    Raises ValueError with a one-line reason; the caller turns it into a usage error.
    """
    kind, sep, rest = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in PATHS:
        raise ValueError(f"unknown path {text!r}; choose {', '.join(PATHS[:-2])}, "
                         "extremal[:ORDER] or shapley")  # fmt: skip
    if not sep:
        return PathSpec(kind)
    if kind != "extremal":
        raise ValueError(f"only the extremal path takes an order (extremal:ORDER), not {kind}")
    if not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*,?\s*", rest):
        raise ValueError(f"extremal order {rest!r}: use comma-separated group indices, e.g. 3,0,1")
    order = tuple(int(v) for v in rest.split(",") if v.strip())
    if len(set(order)) != len(order):
        raise ValueError(f"extremal order {rest!r} names a group twice")
    return PathSpec(kind, order)


# -- Blur IG ---------------------------------------------------------------------------------

# Below this blur the sampled Gaussian is the identity to double precision (the first
# off-centre tap weighs exp(-1 / (2 sigma^2)) < 1e-87), and so is its derivative.
_SHARP = 0.05


def blur_matrix(n: int, sigma: float, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, dK/dsigma): a 1-D Gaussian blur of n samples as an n x n matrix, and its derivative.

    The kernel is the sampled Gaussian exp(-k^2 / (2 sigma^2)), |k| <= radius, normalised to
    sum 1; samples past the ends are zero ("constant" padding), as scipy.ndimage's
    gaussian_filter does with mode="constant", which PAIR's Blur IG uses. The radius is fixed
    along a path (4 max_sigma, as scipy truncates at its largest sigma), so the blur is a
    smooth function of sigma and its derivative below is exact:
    d w_k / d sigma = w_k (k^2 - sum_j w_j j^2) / sigma^3.
    """
    if sigma < _SHARP:
        return np.eye(n), np.zeros((n, n))
    if radius <= _WIDEST_KERNEL:
        k = np.arange(-radius, radius + 1, dtype=np.float64)
        g = np.exp(-0.5 * (k / sigma) ** 2)
        w = g / g.sum()
        dw = w * (k**2 - np.dot(w, k**2)) / sigma**3
    else:  # only the taps that reach a sample are made (see _wide_kernel)
        w, dw, radius = _wide_kernel(n, sigma, radius)
    offset = np.arange(n)[:, None] - np.arange(n)[None, :]
    inside = np.abs(offset) <= radius
    index = np.clip(offset + radius, 0, 2 * radius)
    return np.where(inside, w[index], 0.0), np.where(inside, dw[index], 0.0)


_WIDEST_KERNEL = 1 << 18  # taps made in full up to this radius (4 MB)


def _wide_kernel(n: int, sigma: float, radius: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The taps |k| < n of a kernel of `radius` > _WIDEST_KERNEL (a --blur-sigma of 1e9 made
    an 8e9-tap kernel, 60 GB, for a 28-pixel image), normalised as the whole kernel is: its
    sum and second moment are exact sums where the Gaussian underflows to 0 within
    _WIDEST_KERNEL taps, else the integrals with their Euler-Maclaurin endpoint terms (equal
    to the sums to double precision for sigma over a few hundred)."""
    m = min(radius, n - 1)
    reach = int(40.0 * sigma) + 1  # exp(-800) is 0.0: taps beyond add nothing
    if reach <= _WIDEST_KERNEL:
        k = np.arange(-reach, reach + 1, dtype=np.float64)
        g = np.exp(-0.5 * (k / sigma) ** 2)
        total, second = g.sum(), np.dot(g, k**2)
    else:
        r = float(radius)
        e, fr = math.erf(r / (sigma * math.sqrt(2.0))), math.exp(-0.5 * (r / sigma) ** 2)
        root = math.sqrt(2.0 * math.pi)
        total = sigma * root * e + fr - (r / sigma**2) * fr / 6.0
        second = (sigma**3 * root * e - 2.0 * sigma**2 * r * fr + r * r * fr
                  + (2.0 * r - r**3 / sigma**2) * fr / 6.0)  # fmt: skip
    k = np.arange(-m, m + 1, dtype=np.float64)
    w = np.exp(-0.5 * (k / sigma) ** 2) / total
    return w, w * (k**2 - second / total) / sigma**3, m


class BlurPath:
    """Blur IG's path: gamma(a) = blur(x, sigma(a)), from sigma(0) (the most blurred input,
    the baseline) to sigma(1) = 0 (the input itself).

    sigma(a) = (1 - a) max_sigma, or with `sqrt` sqrt((1 - a) max_sigma), PAIR saliency's
    two spacings (with sqrt the largest blur is sqrt(max_sigma), as in PAIR). The blur acts
    on the two spatial axes `axes` of a sample, each channel on its own, with zero padding.
    PAIR differentiates the blur by a forward difference (grad_step); here the velocity is the
    exact derivative, so the integral's completeness is limited by the quadrature alone.
    """

    name = "blur"

    def __init__(self, axes: tuple[int, int], max_sigma: float = 50.0, sqrt: bool = False):
        if not max_sigma > 0:
            raise ValueError(f"max_sigma must be positive, not {max_sigma}")
        self.axes, self.max_sigma, self.sqrt = tuple(axes), float(max_sigma), bool(sqrt)
        top = self.sigma(np.zeros(1))[0]
        self.radius = int(4.0 * top + 0.5)

    def sigma(self, alphas: np.ndarray) -> np.ndarray:
        t = np.clip(1.0 - np.asarray(alphas, dtype=np.float64), 0.0, 1.0)
        return np.sqrt(t * self.max_sigma) if self.sqrt else t * self.max_sigma

    def _dsigma(self, sigma: float) -> float:
        """d sigma / d alpha at sigma."""
        if not self.sqrt:
            return -self.max_sigma
        return -self.max_sigma / (2.0 * sigma) if sigma >= _SHARP else 0.0

    def _apply(self, x: np.ndarray, kh: np.ndarray, kw: np.ndarray) -> np.ndarray:
        moved = np.moveaxis(x, self.axes, (-2, -1))
        return np.moveaxis(kh @ moved @ kw.T, (-2, -1), self.axes)

    def start(self, x: np.ndarray) -> np.ndarray:
        """gamma(0): the most blurred input, Blur IG's baseline."""
        return self.points(x, x, np.zeros(1))[0]

    def points(self, x: np.ndarray, baseline: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        h, w = (x.shape[a] for a in self.axes)
        out = []
        for s in self.sigma(alphas):
            kh, _ = blur_matrix(h, s, self.radius)
            kw, _ = blur_matrix(w, s, self.radius)
            out.append(self._apply(x, kh, kw))
        return np.stack(out)

    def velocities(self, x: np.ndarray, baseline: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        h, w = (x.shape[a] for a in self.axes)
        out = []
        for s in self.sigma(alphas):
            kh, dkh = blur_matrix(h, s, self.radius)
            kw, dkw = blur_matrix(w, s, self.radius)
            d = self._apply(x, dkh, kw) + self._apply(x, kh, dkw)
            out.append(d * self._dsigma(s))
        return np.stack(out)


# -- extremal paths --------------------------------------------------------------------------


def group_members(groups: np.ndarray | None, size: int) -> list[np.ndarray]:
    """Flat feature indices of each group (groups: a group id per feature; None: one each).

    Groups are numbered 0..G-1 in the order of their ids, which is how ORDER names them.
    """
    if groups is None:
        return [np.array([i]) for i in range(size)]
    flat = np.asarray(groups).reshape(-1)
    ids, inverse = np.unique(flat, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return list(np.split(order, bounds))


def default_order(x: np.ndarray, baseline: np.ndarray, members: list[np.ndarray]) -> list[int]:
    """Groups by descending total |x - b| (ties by index): the largest change goes first."""
    d = np.abs(np.asarray(x, np.float64) - np.asarray(baseline, np.float64)).reshape(-1)
    size = np.array([d[m].sum() for m in members])
    return [int(g) for g in np.argsort(-size, kind="stable")]


def complete_order(given: tuple[int, ...] | None, default: list[int], count: int) -> list[int]:
    """ORDER as given, followed by the groups it leaves out in the default order.

    Raises ValueError naming an index out of range.
    """
    given = tuple(given or ())
    bad = [g for g in given if not 0 <= g < count]
    if bad:
        raise ValueError(f"extremal order names group {bad[0]}, but there are {count} groups "
                         f"(0 to {count - 1})")  # fmt: skip
    named = set(given)
    return list(given) + [g for g in default if g not in named]


def extremal_breakpoints(
    x: np.ndarray, baseline: np.ndarray, members: list[np.ndarray], order: list[int]
) -> tuple[list[np.ndarray], list[int]]:
    """The corners of the extremal path that moves the groups one at a time in `order`.

    Returns the points p_0 = b, p_1, ..., p_m = x (p_k is p_{k-1} with group order[k-1] set to
    its input values) and the groups moved, skipping groups whose features all equal the
    baseline (their leg has length 0). Each leg p_{k-1} -> p_k is a straight path along one
    group only, so its IG attributes F(p_k) - F(p_{k-1}) to that group alone: summed over the
    legs, that is the extremal path's attribution (the seed's blog post: x1 then x2 for
    F = min(1, x1 + x2) at (1.2, 0.6) gives (1, 0)).
    """
    x64, b64 = np.asarray(x, np.float64), np.asarray(baseline, np.float64)
    flat_x = x64.reshape(-1)
    current = b64.reshape(-1).copy()
    corners, moved = [b64.copy()], []
    for g in order:
        idx = members[g]
        if np.array_equal(current[idx], flat_x[idx]):
            continue
        current = current.copy()
        current[idx] = flat_x[idx]
        corners.append(current.reshape(x64.shape))
        moved.append(g)
    if len(corners) > 1:
        corners[-1] = x64.copy()  # exactly the input, whatever the order
    return corners, moved


def shapley_orders(
    count: int, samples: int, rng: np.random.Generator
) -> tuple[Sequence[list[int]], bool]:
    """Orders of `count` groups for Shapley value sampling, and whether they are all of them.

    When count! <= samples every order is used once, and the average over them is the exact
    Shapley value; otherwise `samples` orders are drawn uniformly (seeded by rng), as
    SampledOrders: drawn again each time they are walked, never held all at once.
    """
    import itertools
    import math

    if count <= 8 and math.factorial(count) <= samples:
        return [list(p) for p in itertools.permutations(range(count))], True
    return SampledOrders(count, samples, rng), False


class SampledOrders(Sequence):
    """`samples` random orders of `count` groups: the permutations rng would draw one after
    the other from its state now, made again from that state each time they are walked
    (a path is walked once per baseline). 100,000 orders of a digit's 784 pixels held as
    lists took gigabytes before the first gradient; this holds rng's state. rng itself moves
    on past them, as if it had drawn them all, so what it draws next does not change."""

    def __init__(self, count: int, samples: int, rng: np.random.Generator) -> None:
        self.count, self.samples = count, samples
        self._kind = type(rng.bit_generator)
        self._state = rng.bit_generator.state
        for _ in range(samples):  # (a permutation takes a varying number of draws)
            rng.permutation(count)

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, k):  # (one walk up to it, as RecordSpool's)
        if isinstance(k, slice):
            return list(itertools.islice(iter(self), *k.indices(self.samples)))
        if not -self.samples <= k < self.samples:
            raise IndexError(k)
        return next(itertools.islice(iter(self), k % self.samples, None))

    def __iter__(self) -> Iterator[list[int]]:
        bits = self._kind()
        bits.state = self._state
        rng = np.random.Generator(bits)
        for _ in range(self.samples):
            yield [int(v) for v in rng.permutation(self.count)]


# -- Guided IG -------------------------------------------------------------------------------

_CLOSE = 1e-9  # PAIR's tolerance for having reached a step's L1 target


@dataclass
class GuidedPath:
    """Guided IG for one input: the path moves, at each of `steps` steps, the features with
    the smallest |gradient| first, staying within `max_dist` (in alpha) of the straight
    path; each step closes 1/steps of the L1 distance between baseline and input.

    Semantics of PAIR saliency's `GuidedIG` (steps 200, fraction 0.25, max_dist 0.02):
    the gradient is taken at the start of each step and multiplies every move made in it
    (a left Riemann sum along the path, hence completeness up to O(1/steps)); within a step
    the `fraction` of features with the smallest |gradient| (ties included; features already
    at the step's upper bound excluded) move towards that bound, all the way or just enough
    to reach the step's L1 target, until it is reached; features that fall behind the lower
    bound are pulled up to it. max_dist 0 is IG on the straight path with a left Riemann sum.

    Use: `point()` is where the next gradient is needed (None once done); `take(grad)` makes
    the step; `attributions` add up along the way.
    """

    x: np.ndarray
    baseline: np.ndarray
    steps: int = 200
    fraction: float = 0.25
    max_dist: float = 0.02
    step: int = 0
    attributions: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float64)
        self.baseline = np.asarray(self.baseline, dtype=np.float64)
        self.current = self.baseline.copy()
        self.attributions = np.zeros_like(self.x)
        self.span = self.x - self.baseline
        self.l1_total = float(np.abs(self.span).sum())
        if self.l1_total == 0:
            self.step = self.steps  # nothing moves: attributions are zero

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    def point(self) -> np.ndarray | None:
        return None if self.done else self.current

    def _at(self, alpha: float) -> np.ndarray:
        return self.baseline + self.span * alpha

    def take(self, grad: np.ndarray) -> None:
        """One step of the path, with the gradient at its start."""
        grad = np.asarray(grad, dtype=np.float64).reshape(self.x.shape)
        x = self.current
        alpha = (self.step + 1.0) / self.steps
        lo, hi = max(alpha - self.max_dist, 0.0), min(alpha + self.max_dist, 1.0)
        x_lo, x_hi = self._at(lo), self._at(hi)
        target = self.l1_total * (1.0 - (self.step + 1.0) / self.steps)
        magnitude = np.abs(grad)
        moving = self.span != 0
        start = x.copy()
        while True:
            with np.errstate(divide="ignore", invalid="ignore"):
                where = np.where(moving, (x - self.baseline) / self.span, hi)
            behind = where < lo
            x[behind] = x_lo[behind]
            now = float(np.abs(x - self.x).sum())
            if abs(now - target) <= max(_CLOSE * max(abs(now), abs(target)), _CLOSE):
                break
            free = x != x_hi  # features at the upper bound stay put this step
            ranked = np.where(free, magnitude, np.inf)
            threshold = np.quantile(ranked, self.fraction, method="lower")
            chosen = free & (magnitude <= threshold)
            room = float((np.abs(x - x_hi) * chosen).sum())
            if room <= 0:
                break  # nothing left to move (cannot happen with exact arithmetic)
            gamma = (now - target) / room
            if gamma > 1.0:
                x[chosen] = x_hi[chosen]
            else:
                x[chosen] = x[chosen] + gamma * (x_hi[chosen] - x[chosen])
                break
        self.attributions += (x - start) * grad
        self.step += 1
        self.current = x
