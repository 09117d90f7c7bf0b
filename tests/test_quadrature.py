import math
import tracemalloc

import numpy as np
import pytest

from igcli.quadrature import (
    LEGGAUSS_MAX,
    RULES,
    _gauss_legendre,
    alphas_and_weights,
    gausslegendre,
)


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


# -- Gauss-Legendre for any n in O(n) memory -------------------------------------------------

# (n, index, node on [0, 1], weight on [0, 1]) computed independently in 40-digit arithmetic
# (mpmath: Newton's method on the three-term recurrence), nodes in ascending order.
REFERENCE_NODES = [
    (1000, 0, 1.4443509622447150619e-6, 3.7066692082160357587e-6),
    (1000, 9, 0.00023436700333799575124, 0.000048058736772735283021),
    (1000, 10, 0.0002848894381959429975, 0.00005298605004950854858),
    (1000, 499, 0.49921499475995840309, 0.0015700091900914338935),
    (100000, 0, 1.4457820327984985246e-10, 3.7103435817923590106e-10),
    (100000, 9, 2.3461743035193645993e-8, 4.8113847479349624125e-9),
    (100000, 10, 2.8519865306757104242e-8, 5.3048598073109602743e-9),
]


@pytest.fixture(scope="module")
def gl_100000():
    return gausslegendre(100000)


@pytest.mark.parametrize("n", [101, 128, 200])
def test_gausslegendre_matches_numpy(n):
    """Above LEGGAUSS_MAX our own method; numpy's leggauss (eigenvalues) as the reference.

    leggauss's weights are themselves only good to ~1e-11 at n = 128
    (REFERENCE_NODES is the tighter check), hence the weight tolerance."""
    alphas, weights = gausslegendre(n)
    nodes, ref_weights = np.polynomial.legendre.leggauss(n)
    np.testing.assert_allclose(alphas, (nodes + 1) / 2, rtol=0, atol=2e-15)
    np.testing.assert_allclose(weights, ref_weights / 2, rtol=5e-8)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 21, 64, 100])
def test_own_method_also_matches_numpy_below_the_switch(n):
    """The O(n) method works for every n, not only where it is used."""
    theta, w = _gauss_legendre(n)
    nodes, ref_weights = np.polynomial.legendre.leggauss(n)
    half = (n + 1) // 2
    np.testing.assert_allclose(np.cos(theta), nodes[::-1][:half], rtol=0, atol=1e-15)
    np.testing.assert_allclose(w, ref_weights[::-1][:half], rtol=1e-11)


def test_leggauss_kept_up_to_the_switch():
    """Existing results stay bit for bit: n <= LEGGAUSS_MAX is still numpy's rule."""
    alphas, weights = gausslegendre(LEGGAUSS_MAX)
    nodes, ref_weights = np.polynomial.legendre.leggauss(LEGGAUSS_MAX)
    assert np.array_equal(alphas, (nodes + 1) / 2) and np.array_equal(weights, ref_weights / 2)


@pytest.mark.parametrize("n,index,node,weight", REFERENCE_NODES)
def test_gausslegendre_against_high_precision(n, index, node, weight, gl_100000):
    alphas, weights = gl_100000 if n == 100000 else gausslegendre(n)
    assert alphas[index] == pytest.approx(node, rel=4e-15)
    assert alphas[n - 1 - index] == pytest.approx(1 - node, rel=0, abs=2e-16)
    assert weights[index] == pytest.approx(weight, rel=1e-13)
    assert weights[n - 1 - index] == weights[index]


def test_gausslegendre_100000_is_exact_on_polynomials(gl_100000):
    """Degree up to 2n - 1 is exact: moments of a^k and an oscillation with n/2 periods."""
    alphas, weights = gl_100000
    n = len(alphas)
    assert np.all(np.diff(alphas) > 0) and alphas[0] > 0 and alphas[-1] < 1
    assert np.all(weights > 0) and abs(math.fsum(weights) - 1) < 1e-15
    for k in (1, 2, 7, 100, 1000, 2 * n - 1):
        moment = math.fsum(weights * alphas**k)
        assert moment == pytest.approx(1 / (k + 1), rel=1e-9), k
    for omega in (1.0, n / 2, float(n)):  # integral of cos(omega (2a - 1)) over [0, 1]
        value = math.fsum(weights * np.cos(omega * (2 * alphas - 1)))
        assert value == pytest.approx(math.sin(omega) / omega, rel=0, abs=1e-12), omega


def test_gausslegendre_memory_is_linear():
    """A few arrays of n floats, never an n x n matrix (800 MB here, 74.5 GiB at 100000)."""
    tracemalloc.start()
    try:
        _gauss_legendre(10000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("method", list(RULES))
def test_every_rule_at_the_largest_step_count(method, gl_100000):
    alphas, weights = alphas_and_weights(method, 100000)
    assert len(alphas) == len(weights) == 100000
    assert abs(math.fsum(weights) - 1.0) < 1e-13
    assert np.all((alphas >= 0) & (alphas <= 1))
