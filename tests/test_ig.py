"""IG against closed forms, independent of the gradient source."""

import numpy as np
import pytest

from igcli.gradients import FiniteDifferences
from igcli.ig import integrated_gradients
from igcli.model import ModelRunner
from igcli.quadrature import RULES
from tests import models


class Analytic:
    """A gradient source from numpy functions: the IG core needs nothing more."""

    name = "analytic"

    def __init__(self, f, grad):
        self.f, self.grad = f, grad

    def values(self, points):
        return np.array([self.f(p) for p in points])

    def values_and_gradients(self, points):
        return self.values(points), np.stack([self.grad(p) for p in points])


def min_one_sum():
    return Analytic(
        lambda p: min(1.0, p.sum()), lambda p: np.ones(2) if p.sum() < 1 else np.zeros(2)
    )


@pytest.mark.parametrize("method", ["riemann_middle", "riemann_left", "gausslegendre"])
def test_min_one_sum_closed_form(method):
    x, b = np.array([1.2, 0.6]), np.zeros(2)
    result = integrated_gradients(min_one_sum(), x, b, steps=3000, method=method)
    np.testing.assert_allclose(result.attributions, [2 / 3, 1 / 3], atol=2e-3)
    assert result.delta == pytest.approx(1.0)


def test_min_one_sum_through_onnx_runtime(tmp_path):
    """Same closed form, with the real model and finite differences through ORT."""
    path = models.save(models.min_one_sum(), tmp_path / "m.onnx")
    runner = ModelRunner(models.min_one_sum(), path, "x", "y")
    x, b = np.array([1.2, 0.6]), np.zeros(2)
    source = FiniteDifferences(runner, 0, x - b)
    result = integrated_gradients(
        source, x.astype(np.float32), b, steps=1000, method="riemann_middle"
    )
    np.testing.assert_allclose(result.attributions, [2 / 3, 1 / 3], atol=5e-3)
    assert result.rel_error < 5e-3


def test_one_minus_relu_saturated_gets_full_credit(tmp_path):
    """f(x) = 1 - ReLU(1 - x) at x = 2: gradient 0 at x, but IG from 0 gives 1 (sensitivity)."""
    model = models.one_minus_relu()
    runner = ModelRunner(model, tmp_path / "m.onnx", "x", "y")
    x, b = np.array([2.0], dtype=np.float32), np.zeros(1)
    source = FiniteDifferences(runner, 0, x - b)
    _, grad_at_x = source.values_and_gradients(x[None])
    assert grad_at_x[0, 0] == pytest.approx(0.0, abs=1e-6)
    result = integrated_gradients(source, x, b, steps=200, method="riemann_middle")
    assert result.attributions[0] == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("method", list(RULES))
def test_completeness_converges(method):
    rng = np.random.default_rng(0)
    w = rng.normal(size=5)
    src = Analytic(lambda p: np.tanh(p @ w), lambda p: (1 - np.tanh(p @ w) ** 2) * w)
    x, b = rng.normal(size=5), np.zeros(5)
    errs = [integrated_gradients(src, x, b, steps=n, method=method).abs_error for n in (4, 32, 256)]
    assert errs[2] <= errs[1] < errs[0] and errs[2] < 5e-3


def test_linear_model_is_exact_with_any_rule():
    w = np.array([1.0, -2.0, 3.0])
    src = Analytic(lambda p: p @ w, lambda p: w)
    x, b = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5, 0.5])
    for method in RULES:
        result = integrated_gradients(src, x, b, steps=7, method=method)
        np.testing.assert_allclose(result.attributions, (x - b) * w, rtol=1e-12)
        assert result.rel_error < 1e-12


def test_batching_does_not_change_the_result():
    rng = np.random.default_rng(3)
    w = rng.normal(size=4)
    src = Analytic(lambda p: np.sin(p @ w), lambda p: np.cos(p @ w) * w)
    x, b = rng.normal(size=4), np.zeros(4)
    a = integrated_gradients(src, x, b, steps=50, batch_size=1).attributions
    c = integrated_gradients(src, x, b, steps=50, batch_size=64).attributions
    np.testing.assert_allclose(a, c, rtol=1e-12)


def test_grouped_fd_keeps_group_sums(tmp_path):
    """Patch groups: each group's attribution equals the sum of per-feature attributions."""
    model = models.tanh_linear(features=6, classes=2)
    runner = ModelRunner(model, tmp_path / "m.onnx", "x", "y")
    rng = np.random.default_rng(5)
    x, b = rng.normal(size=6).astype(np.float32), np.zeros(6)
    per_feature = integrated_gradients(FiniteDifferences(runner, 1, x - b), x, b).attributions
    groups = np.array([0, 0, 1, 1, 1, 2])
    grouped = integrated_gradients(FiniteDifferences(runner, 1, x - b, groups), x, b)
    for g in range(3):
        assert grouped.attributions[groups == g].sum() == pytest.approx(
            per_feature[groups == g].sum(), abs=1e-4
        )
    assert grouped.rel_error < 1e-3
