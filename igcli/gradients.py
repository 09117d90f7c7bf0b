"""Where gradients come from. The IG core sees only `GradientSource`: points in, values and
gradients out. Two sources live here: the gradient graph (analytic, run by ONNX Runtime) and
central finite differences on the plain model (any model, costlier).

Every source explains the same scalar function: F(x) = output(x).flatten()[target], where
`output` already includes the softmax when --softmax was asked for (see model.with_softmax).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from igcli.model import ModelRunner, check_finite


class GradientSource(Protocol):
    name: str

    def values(self, points: np.ndarray) -> np.ndarray:
        """F at each point: shape [K]."""
        ...

    def values_and_gradients(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """F and dF/dx at each point: shapes [K] and [K, *sample_shape]."""
        ...


def pick(outputs: np.ndarray, target: int | np.ndarray) -> np.ndarray:
    """The target entry of each sample's flattened output (one target, or one per row)."""
    flat = outputs.reshape(len(outputs), -1)
    if np.ndim(target):
        return flat[np.arange(len(flat)), target].astype(np.float64)
    return flat[:, target].astype(np.float64)


class GraphGradients:
    """Analytic gradients from the gradient graph: one model call gives F and dF/dx."""

    name = "graph"

    def __init__(
        self, forward: ModelRunner, backward: GradientGraphRunner, target: int | np.ndarray
    ) -> None:
        # target: one output index, or one per row of the points (see merge)
        self.forward, self.backward, self.target = forward, backward, target

    @classmethod
    def merge(cls, per_row: list[GraphGradients]) -> GraphGradients:
        """One source for points of several problems: each row keeps its own target."""
        first = per_row[0]
        return cls(first.forward, first.backward, np.array([s.target for s in per_row]))

    def values(self, points: np.ndarray) -> np.ndarray:
        return pick(self.forward.run(points), self.target)

    def values_and_gradients(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs, grads = self.backward.run(points, self.target)
        return pick(outputs, self.target), grads.astype(np.float64)


class GradientGraphRunner:
    """Runs a gradient model: inputs + one-hot seed in, (output, d(seed . output)/dx) out."""

    def __init__(self, runner: ModelRunner, output_shape: tuple[int, ...]) -> None:
        # `runner` wraps the gradient model; its session has the extra seed input.
        self.runner, self.output_shape = runner, output_shape

    def run(self, points: np.ndarray, target: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outputs and gradients of each row's target (one int, or an int per row)."""
        from igcli.autodiff import GRAD, SEED

        r = self.runner
        outs, grads = [], []
        width = int(np.prod(self.output_shape))
        for start, batch in r.batches(points):
            seed = np.zeros((len(batch), width), dtype=r.output_dtype)
            rows = target[start : start + len(batch)] if np.ndim(target) else target
            seed[np.arange(len(batch)), rows] = 1
            seed = seed.reshape((len(batch), *self.output_shape))
            out, grad = r.call(batch, [r.output_name, GRAD], {SEED: seed})
            outs.append(out)
            grads.append(grad)
        out, grad = np.concatenate(outs), np.concatenate(grads)
        check_finite(out, f"output {r.output_name!r}", r.path)
        check_finite(grad, "gradient", r.path)
        return out, grad


class FiniteDifferences:
    """Central differences of the plain model along the IG direction, one group at a time.

    For direction d = x - baseline and a group g of features, the derivative of F along d
    restricted to g is exactly the sum over g of the IG integrand dF/dx_i * d_i. Each group
    therefore costs two model rows per path point, and its attribution is exact up to the
    differencing error. Singleton groups give per-feature attributions; patch groups make
    large images affordable. The returned "gradient" spreads each group's directional
    derivative over its features in proportion to d_i, so that (x - b) * gradient sums to
    the right value over every group.
    """

    name = "fd"

    def __init__(
        self,
        runner: ModelRunner,
        target: int,
        direction: np.ndarray,
        groups: np.ndarray | None = None,
        relative_step: float = 1e-3,
    ) -> None:
        self.runner, self.target = runner, target
        self.direction = np.asarray(direction, dtype=np.float64)
        if groups is None:
            groups = np.arange(self.direction.size).reshape(self.direction.shape)
        self.groups = groups
        flat_groups = groups.reshape(-1)
        d = self.direction.reshape(-1)
        scale = float(np.max(np.abs(d))) if d.size else 0.0
        # The perturbation moves the largest coordinate by relative_step of the path's range.
        self.step = relative_step * scale if scale > 0 else relative_step
        order = np.argsort(flat_groups, kind="stable")
        bounds = np.flatnonzero(np.diff(flat_groups[order])) + 1
        self.index_sets = []  # features of each group that move along d
        self.unit_values = []  # the group's slice of d, scaled so its largest entry is 1
        self.spread = []  # d_g / |d_g|^2 * max|d_g|: turns a unit-step derivative into grads
        for idx in np.split(order, bounds):
            idx = idx[d[idx] != 0]
            if idx.size == 0:
                continue
            dg = d[idx]
            peak = np.max(np.abs(dg))
            self.index_sets.append(idx)
            self.unit_values.append(dg / peak)
            self.spread.append(dg * peak / np.sum(dg * dg))

    def values(self, points: np.ndarray) -> np.ndarray:
        return pick(self.runner.run(points), self.target)

    def values_and_gradients(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = points.reshape(len(points), -1).astype(np.float64)
        grads = np.zeros_like(flat)
        values = self.values(points)
        h = self.step
        chunk = max(1, self.runner.batch_size // 2)  # groups per model call
        for row, p in enumerate(flat):
            for start in range(0, len(self.index_sets), chunk):
                sets = range(start, min(start + chunk, len(self.index_sets)))
                rows = np.repeat(p[None], 2 * len(sets), axis=0)
                for j, g in enumerate(sets):
                    rows[2 * j, self.index_sets[g]] += h * self.unit_values[g]
                    rows[2 * j + 1, self.index_sets[g]] -= h * self.unit_values[g]
                f = pick(self.runner.run(rows.reshape(-1, *points.shape[1:])), self.target)
                deriv = (f[0::2] - f[1::2]) / (2 * h)
                for j, g in enumerate(sets):
                    grads[row, self.index_sets[g]] = deriv[j] * self.spread[g]
        return values, grads.reshape(points.shape)
