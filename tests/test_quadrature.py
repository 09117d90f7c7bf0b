import math

import numpy as np
import pytest

from igcli.quadrature import RULES, alphas_and_weights


@pytest.mark.parametrize("method", list(RULES))
@pytest.mark.parametrize("n", [2, 3, 7, 10, 16, 50, 51, 100, 257, 1000])
def test_weights_sum_to_exactly_one(method, n):
    _, weights = alphas_and_weights(method, n)
    total = math.fsum(weights)
    # The bias this guards against is (n-1)/n, i.e. 1e-3 at n = 1000: far above this bound.
    assert abs(total - 1.0) < 1e-13, f"{method} weights sum to {total!r} at n={n}"


def test_trapezoid_is_not_the_biased_variant():
    """n times 1/n with halved ends sums to (n-1)/n; ours integrates a constant exactly."""
    alphas, weights = alphas_and_weights("riemann_trapezoid", 50)
    assert np.dot(weights, np.ones_like(alphas)) == pytest.approx(1.0, abs=1e-14)
    assert weights[0] == pytest.approx(1 / 98) and weights[1] == pytest.approx(1 / 49)
    assert alphas[0] == 0.0 and alphas[-1] == 1.0


@pytest.mark.parametrize("method", list(RULES))
def test_alphas_inside_unit_interval(method):
    alphas, _ = alphas_and_weights(method, 20)
    assert np.all((alphas >= 0) & (alphas <= 1))


@pytest.mark.parametrize("method", list(RULES))
def test_converges_on_smooth_integrand(method):
    """Error on integral_0^1 exp(3a) da shrinks as steps grow."""
    exact = (math.exp(3) - 1) / 3
    errors = []
    for n in (4, 16, 64, 256):
        a, w = alphas_and_weights(method, n)
        errors.append(abs(np.dot(w, np.exp(3 * a)) - exact))
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:], strict=False)) or errors[-1] < 1e-12
    assert errors[-1] < 0.05 * errors[0] or errors[-1] < 1e-12


def test_orders_of_accuracy():
    f = lambda a: np.exp(3 * a)  # noqa: E731
    exact = (math.exp(3) - 1) / 3

    def err(method, n):
        a, w = alphas_and_weights(method, n)
        return abs(np.dot(w, f(a)) - exact)

    assert err("riemann_left", 100) / err("riemann_left", 200) == pytest.approx(2, rel=0.05)
    assert err("riemann_middle", 100) / err("riemann_middle", 200) == pytest.approx(4, rel=0.05)
    assert err("riemann_trapezoid", 101) / err("riemann_trapezoid", 201) == pytest.approx(
        4, rel=0.05
    )
    assert err("gausslegendre", 10) < 1e-12


def test_bad_arguments():
    with pytest.raises(ValueError):
        alphas_and_weights("simpson", 10)
    with pytest.raises(ValueError):
        alphas_and_weights("riemann_trapezoid", 1)
    with pytest.raises(ValueError):
        alphas_and_weights("gausslegendre", 0)
