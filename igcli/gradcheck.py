"""Does the gradient graph agree with finite differences? The self-check every run makes, and
`igcli gradcheck`.

Random directions v keep the cost at a few forward rows each, whatever the input size: the
graph's g . v is compared with central differences (F(x + h v) - F(x - h v)) / 2h at four
steps h, h/4, h/16, h/64. A checker that fails correct graphs teaches users to ignore it, so
three things are told apart before anything is called wrong:
- the scale: each feature moves by h times its own magnitude (a feature on a 0.01 scale beside
  one on a 1000 scale), and errors are measured against |g * s|, the typical size of g . v,
  not against g . v itself (which can be near zero in one direction);
- float32 resolution: when |g * s| is below what differences of float32 outputs can resolve
  (a saturated softmax, say), the direction is "unresolved", not wrong;
- kinks: a large step crosses ReLU and max-pool kinks, a small one drowns in rounding; the
  estimate is taken where two neighbouring steps agree best, and their disagreement is the
  doubt granted to it. When no two steps agree, or the differences are still closing in on
  g . v as the step shrinks (a random ReLU net can have kinks every 1e-4 of an input's scale,
  beyond what float32 differences resolve), the direction cannot tell ("kink"). A wrong
  gradient shows as differences that settle somewhere else;
- kinks closer together than float32 differences can resolve (a random ResNeXt-50: its
  differences settled 16-20% off a right gradient at every step): before a direction is
  called wrong, the graph's g . v is averaged over the segment the differences span, at
  PATH_POINTS midpoints. F(x + hv) - F(x - hv) is that integral exactly, at any scale, so a
  right graph agrees with it ("path") and a wrong one does not.
A gradient is called wrong only when most directions that can tell disagree with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from igcli.gradients import GraphRunner, pick

FLOAT32_EPS = float(np.finfo(np.float32).eps)
STEPS, SHRINK = 4, 4.0  # differences at h, h/4, h/16, h/64
PATH_POINTS = 16  # gradients along a suspect direction's segment (see the module doc)
# Input bytes of the points one model call of the check takes: a 2000 x 2000 image's 16
# points in one call took 4.4 GB under --memory-limit 1G (its activations grow with it).
CALL_BYTES = 16 << 20
DOUBTS = 3  # unstable differences cannot tell a gradient within this many doubts of them


@dataclass
class DirectionCheck:
    graph: float  # g . v
    fd: float  # Richardson extrapolation of the central differences at h and h/2
    fd_coarse: float  # at step h
    scale: float  # |g * s|: the typical size of g . v
    noise: float  # what float32 differences can resolve at this step
    status: str  # "ok", "path", "mismatch", "kink" or "unresolved"
    doubt: float = 0.0  # how far the two best-agreeing steps differ (kinks, rounding)
    along: float | None = None  # g . v averaged over the differences' segment ("path")

    @property
    def compared(self) -> float:
        """What the differences are held to: g . v, or its mean over their segment."""
        return self.graph if self.along is None else self.along

    @property
    def error(self) -> float:
        return abs(self.compared - self.fd) / self.scale if self.scale > 0 else float("inf")


@dataclass
class GradientCheck:
    target: int
    step: float
    tolerance: float
    jitter: float
    directions: list[DirectionCheck] = field(default_factory=list)
    first: GradientCheck | None = None  # a first point that disagreed (see check_directions)

    @property
    def voting(self) -> list[DirectionCheck]:
        return [d for d in self.directions if d.status in ("ok", "path", "mismatch")]

    @property
    def error(self) -> float:
        """Median error of the directions that can tell (nan when none can)."""
        votes = self.voting
        return float(np.median([d.error for d in votes])) if votes else float("nan")

    @property
    def verdict(self) -> str:
        """ok, mismatch (most of the directions that can tell disagree, or a quarter of them
        and two at least), saturated (nothing resolvable) or kinks (no stable differences).
        A quarter is enough: a Resize whose matrix was off passed with 4 of 8 directions
        16-58% off, and with half asked for, a gradient 3 times too large on one row of a
        feature map passed `igcli gradcheck` (2 of 8 directions off) where the self-check's
        2 of 4 failed it. One of two is not: where kinks leave two directions that can tell,
        a right graph's odd one is common. A mismatch stands only if a second point
        disagrees too."""
        votes = self.voting
        if votes:
            wrong = sum(d.status == "mismatch" for d in votes)
            many = 2 * wrong > len(votes) or (wrong >= 2 and 4 * wrong >= len(votes))
            return "mismatch" if many or self.off_overall > self.tolerance else "ok"
        if all(d.status == "unresolved" for d in self.directions):
            return "saturated"
        return "kinks"

    @property
    def off_overall(self) -> float:
        """How far the graph's g . v are from the differences over all voting directions
        together, beyond each one's doubt, relative to their size: ||a - e|| / ||a||.

        Per direction, errors are measured against |g * s| so that a direction where g . v
        happens to be near zero cannot cry wolf; but then a gradient 10% off everywhere
        passes wherever g . v is small against |g * s|, which is often. Taken together the
        directions cannot hide it: a gradient c times the true one is |c - 1| / |c| off."""
        clean = 0.2 * self.tolerance
        votes = [
            d for d in self.voting if d.doubt - d.noise <= clean * max(abs(d.compared), abs(d.fd))
        ]
        if len(votes) < 2:
            return 0.0
        a = np.array([d.compared for d in votes])
        e = np.array([d.fd for d in votes])
        residual = np.maximum(np.abs(a - e) - np.array([d.doubt for d in votes]), 0.0)
        size = max(float(np.linalg.norm(a)), float(np.linalg.norm(e)))
        return float(np.linalg.norm(residual)) / size if size > 0 else 0.0

    @property
    def passed(self) -> bool:
        return self.verdict != "mismatch"

    def summary(self) -> dict:
        """The few numbers a record carries about the self-check."""
        err = self.error
        found = {
            "verdict": self.verdict,
            "error": None if np.isnan(err) else round(err, 6),
            "directions": len(self.directions),
            "voting": len(self.voting),
        }
        if self.first is not None:  # checked at a second point
            found["points"] = 2
        return found


@dataclass
class StoredCheck:
    """The summary of a self-check an earlier run made on the same cached graph."""

    stored: dict

    @property
    def verdict(self) -> str:
        return self.stored["verdict"]

    def summary(self) -> dict:
        return dict(self.stored)


def feature_scale(x: np.ndarray) -> np.ndarray:
    """Each feature's own magnitude, floored so zeros still move (by a bit of the largest)."""
    mag = np.abs(x.astype(np.float64))
    peak = float(mag.max()) if mag.size else 0.0
    floor = max(1e-3 * peak, float(np.median(mag)) if mag.size else 0.0, 1e-6)
    return np.maximum(mag, floor)


def check_directions(
    graph: GraphRunner,
    x: np.ndarray,
    *,
    target: int | None = None,
    directions: int = 4,
    step: float = 2e-3,
    tolerance: float = 0.05,
    jitter: float = 1e-2,
    seed: int = 0,
    values=None,
) -> GradientCheck:
    """Compare g . v with central differences along `directions` random directions near x.

    The check point is x plus a little noise (`jitter` of each feature's scale): real inputs
    have exact ties (a flat black background under max-pooling) where the function has no
    derivative, and differences there average two branches that no gradient can match.
    `values` (anything with `run(points)`: the plain model, say) computes F at the difference
    points; by default the graph does.

    A mismatch is checked again at a second point nearby (other noise, other directions),
    and stands only if that point disagrees too: where kinks lie closer together than the
    smallest step (a random Inception-v3 at 299x299), differences can settle a few percent
    off a right gradient in two directions of eight, at one point in forty. A wrong gradient
    is wrong at both. The check returned is the second one, with the first as `first`.
    """
    kw = dict(directions=directions, step=step, tolerance=tolerance, jitter=jitter)
    check = _check_at(graph, x, target=target, seed=seed, values=values, **kw)
    if check.verdict != "mismatch":
        return check
    # a stream of its own: seed + 1 made the second point of --seed S the first of S + 1
    again = _check_at(graph, x, target=check.target, seed=[seed, 1], values=values, **kw)
    again.first = check
    return again


def _check_at(graph, x, *, target, directions, step, tolerance, jitter, seed, values):
    """One point's check (see check_directions)."""
    values = values or graph
    if target is None:  # the input's own top class, as explain's: not the jittered point's,
        # which differs where the top two are close (a random LeViT: 4.249 against 4.189)
        target = int(np.argmax(values.run(x[None]).reshape(-1)))
    rng = np.random.default_rng(seed)
    s = feature_scale(x)
    x64 = x.astype(np.float64) + jitter * s * rng.uniform(-1, 1, size=x.shape)
    x = x64.astype(x.dtype)
    out, grad = graph.run_with_gradients(x[None], target)
    f0 = abs(float(pick(out, target)[0]))
    g = grad[0].astype(np.float64)
    # Rounding of the model's own precision (float16 holds 3 digits): the steps grow with it,
    # so differences of float16 outputs still resolve g . v, and so does the noise.
    # The differences' precision: the values' model's (a float16 model's float32 copy, see
    # Session.check_values), else the graph's own.
    wide = getattr(values, "precision", None)
    taken = np.dtype(wide) if wide is not None else x.dtype
    given = np.dtype(wide) if wide is not None else np.asarray(out).dtype
    eps = max(_eps(taken), _eps(given), FLOAT32_EPS)
    step *= np.sqrt(eps / FLOAT32_EPS)
    # F moves by about g . r when each coordinate of a point rounds by r (|r_i| <= eps |x_i| / 2)
    input_rounding = 0.5 * _eps(taken) * float(np.linalg.norm(g * x64))
    vs = [rng.standard_normal(x.shape) * s for _ in range(directions)]
    hs = [step * SHRINK**-k for k in range(STEPS)]
    # One direction at a time, its points made a call's worth at a time (see CALL_BYTES)
    # in an array of the model's type, through one float64 buffer: all 32 points as float64
    # copies, then their stack, took 1.5 GB for a 3 x 1024 x 1024 image, whatever the
    # memory budget said.
    f = np.empty((directions, STEPS, 2))
    pairs = [(h, sign) for h in hs for sign in (1, -1)]
    each = _per_call(np.dtype(taken).itemsize * x.size)
    points = np.empty((min(each, len(pairs)), *x.shape), taken)
    moved = np.empty(x.shape, np.float64)
    for k, v in enumerate(vs):
        found = []
        for start in range(0, len(pairs), each):
            part = pairs[start : start + each]
            for i, (h, sign) in enumerate(part):
                np.multiply(v, sign * h, out=moved)
                moved += x64
                points[i] = moved
            found.append(pick(values.run(points[: len(part)]), target))
        f[k] = np.concatenate(found).reshape(STEPS, 2)
    del points, moved
    check = GradientCheck(target, step, tolerance, jitter)
    # F exactly 0 all around says nothing of its gradient: ONNX Runtime's Sigmoid returns 0
    # below -18 where the graph's derivative is 1e-15 (a PaddleOCR detector's map over an
    # image without text failed as 'wrong'). Its rounding is then read at the scale of the
    # other outputs (1 when they are all 0 too).
    flat = f0 == 0 and not np.any(f)
    level = (float(np.abs(out).max()) or 1.0) if flat else f0
    h = np.array(hs)
    seen = []
    for fv in f:
        d = (fv[:, 0] - fv[:, 1]) / (2 * h)  # central differences, step by step
        # outputs carry rounding of a few ulps of |F|, and the points their own; both are
        # magnified by 1/h
        noise = (8 * eps * np.maximum(level, np.abs(fv).max(axis=1)) + input_rounding) / h
        # the pair of neighbouring steps that agree best: kinks crossed at large steps and
        # rounding at small ones both show as disagreement
        spread = np.abs(np.diff(d)) + noise[1:]
        best = int(np.argmin(spread))
        seen.append((d, noise, best, float(d[best + 1]), float(spread[best])))
    # The typical size of g . v, from the graph and from the differences alike: from the
    # graph alone, a graph giving zeros made every direction 'unresolved' and passed.
    typical = float(np.sqrt(np.mean([e**2 for _, _, _, e, _ in seen])))
    scale = max(float(np.linalg.norm(g * s)), typical)
    for v, (d, noise, best, estimate, doubt) in zip(vs, seen, strict=True):
        analytic = float(np.sum(g * v))
        # where rounding is small, do the differences close in on g . v as the step shrinks?
        # (they do when the step still crosses kinks: a ReLU net seen at too coarse a scale)
        clear = noise < 0.1 * scale
        errors = np.abs(d[clear] - analytic)
        closing = errors.size >= 2 and errors[-1] <= 0.7 * errors[0]
        off = abs(analytic - estimate)
        if scale <= 4 * noise[0]:
            status = "unresolved"
        elif off <= tolerance * scale + doubt:
            status = "ok"
        elif closing or (doubt > 0.1 * scale and off <= DOUBTS * doubt + tolerance * scale):
            status = "kink"  # the differences cannot tell yet: still moving, or unstable
        else:  # (a sign-flipped gradient sat at 27 doubts from stable differences: 'kink')
            status = "mismatch"
        check.directions.append(
            DirectionCheck(
                analytic, estimate, float(d[0]), scale, float(noise[best + 1]), status, doubt
            )
        )
        if status == "mismatch":
            suspect = check.directions[-1]
            _along_the_segment(graph, suspect, x64, v, hs[best + 1], target, taken, tolerance)
    return check


def _along_the_segment(graph, check: DirectionCheck, x, v, h, target, dtype, tolerance) -> None:
    """Hold a suspect direction's differences at step h to the graph's g . v averaged over
    [x - hv, x + hv] (midpoints; the two interleaved halves' disagreement is the doubt of the
    average). Agreement makes it "path": kinks closer than the step, not a wrong graph; an
    average whose halves disagree by more than the tolerance cannot tell ("kink")."""
    t = h * (-1 + (2 * np.arange(PATH_POINTS) + 1) / PATH_POINTS)
    points = np.stack([x + k * v for k in t]).astype(dtype)
    grads = _in_parts(lambda part: graph.run_with_gradients(part, target)[1], points)
    slopes = grads.reshape(len(t), -1).astype(np.float64) @ v.reshape(-1)
    mean = float(slopes.mean())
    spread = abs(float(slopes[::2].mean()) - float(slopes[1::2].mean()))
    if spread > tolerance * check.scale:
        check.status = "kink"  # the average itself is too rough to tell
    # relative to the slopes themselves, not |g * s|: a gradient 1.3 times the true one agreed
    # within 5% of |g * s| wherever g . v was small, and one direction then passed it
    elif abs(mean - check.fd) <= tolerance * max(abs(mean), abs(check.fd)) + spread + check.noise:
        check.status, check.along, check.doubt = "path", mean, spread + check.noise


def _per_call(point_bytes: int) -> int:
    """How many points of this size one call of the check takes: what CALL_BYTES holds, one
    at least."""
    return max(1, CALL_BYTES // max(1, point_bytes))


def _in_parts(call, points: np.ndarray) -> np.ndarray:
    """call(points), in calls of _per_call points, joined."""
    each = _per_call(points[0].nbytes)
    if len(points) <= each:
        return np.asarray(call(points))
    return np.concatenate([np.asarray(call(points[k : k + each]))
                           for k in range(0, len(points), each)])  # fmt: skip


def _eps(dtype: np.dtype) -> float:
    """Machine epsilon of a float dtype; 0 for others (integer ids do not round)."""
    return float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else 0.0
