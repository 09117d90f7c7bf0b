"""Paths other than the straight line, on their own: blur, extremal corners, guided steps."""

import itertools

import numpy as np
import pytest

from igcli.ig import Problem, integrated_gradients_many, sequential_many
from igcli.paths import (
    BlurPath,
    GuidedPath,
    blur_matrix,
    complete_order,
    default_order,
    extremal_breakpoints,
    group_members,
    parse_path,
    shapley_orders,
)
from tests.test_ig import Analytic


def test_parse_path():
    assert parse_path("straight").kind == "straight"
    assert parse_path("extremal:3, 0,1").order == (3, 0, 1)
    assert parse_path("Shapley").kind == "shapley"
    for bad, words in [("curvy", "unknown path"), ("blur:1", "only the extremal"),
                       ("extremal:1,x", "comma-separated"), ("extremal:1,1", "twice")]:  # fmt: skip
        with pytest.raises(ValueError, match=words):
            parse_path(bad)


def test_blur_matches_scipy_gaussian_filter_with_zero_padding():
    """PAIR's Blur IG blurs with scipy.ndimage.gaussian_filter(mode="constant")."""
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 20, 24))  # CHW: blur the last two axes
    path = BlurPath((1, 2), max_sigma=50)
    np.testing.assert_allclose(path.points(x, x, np.ones(1))[0], x)  # alpha 1: the input
    for alpha in (0.0, 0.5, 0.95):
        sigma = path.sigma(np.array([alpha]))[0]
        ref = ndimage.gaussian_filter(x, sigma=[0, sigma, sigma], mode="constant")
        # the same kernel up to scipy's truncation at 4 sigma (igcli: 4 max_sigma, smooth)
        np.testing.assert_allclose(path.points(x, x, np.array([alpha]))[0], ref, atol=1e-4)
    np.testing.assert_allclose(path.start(x), path.points(x, x, np.zeros(1))[0])


@pytest.mark.parametrize("sqrt", [False, True])
def test_blur_velocity_is_the_derivative_of_the_points(sqrt):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 10, 2))  # HWC
    path = BlurPath((0, 1), max_sigma=20, sqrt=sqrt)
    for alpha in (0.05, 0.5, 0.9, 0.99):
        h = 1e-6
        ahead = path.points(x, x, np.array([alpha + h]))[0]
        behind = path.points(x, x, np.array([alpha - h]))[0]
        velocity = path.velocities(x, x, np.array([alpha]))[0]
        np.testing.assert_allclose((ahead - behind) / (2 * h), velocity, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.3, 7.0, 70000.0, 1e9])
def test_a_blur_wider_than_the_image_makes_only_the_taps_that_reach_it(sigma):
    """--blur-sigma 1e9 made an 8e9-tap kernel (60 GB) for a 28-pixel image, and the CLI
    blamed --memory-limit. Past 2**18 taps only those within the image are made; the
    kernel's sum and second moment stay those of the whole kernel."""
    import tracemalloc

    from igcli import paths

    radius = max(int(4.0 * sigma + 0.5), paths._WIDEST_KERNEL + 1)
    tracemalloc.start()
    try:
        k, dk = blur_matrix(28, sigma, radius)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20 and np.isfinite(k).all() and np.isfinite(dk).all()
    if radius > 1_000_000:
        return  # (the full kernel is the allocation refused above)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (taps / sigma) ** 2)
    w = g / g.sum()
    dw = w * (taps**2 - np.dot(w, taps**2)) / sigma**3
    index = np.arange(28)[:, None] - np.arange(28)[None, :] + radius
    np.testing.assert_allclose(k, w[index], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(dk, dw[index], rtol=1e-9, atol=1e-12 * np.abs(dw).max())


def test_blur_matrix_rows_sum_to_one_inside():
    k, dk = blur_matrix(200, 3.0, 12)
    np.testing.assert_allclose(k[50:150].sum(axis=1), 1.0)
    np.testing.assert_allclose(dk[50:150].sum(axis=1), 0.0, atol=1e-12)
    eye, zero = blur_matrix(5, 0.0, 3)
    assert np.array_equal(eye, np.eye(5)) and not zero.any()


def test_blur_ig_completeness_on_an_analytic_function():
    """Blur IG is a path method: sum = F(x) - F(most blurred x), up to quadrature."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(6, 7))
    x = rng.uniform(size=(6, 7))
    source = Analytic(
        lambda p: np.tanh((p * w).sum()), lambda p: (1 - np.tanh((p * w).sum()) ** 2) * w
    )
    path = BlurPath((0, 1), max_sigma=10)
    start = path.start(x)
    [result] = integrated_gradients_many([Problem(x, start, source)], steps=64, path=path)
    assert result.rel_error < 1e-6
    [auto] = integrated_gradients_many([Problem(x, start, source)], steps="auto", path=path,
                                       tolerance=1e-5)  # fmt: skip
    assert auto.converged and auto.rel_error <= 1e-5


def test_extremal_corners_move_one_group_at_a_time():
    x = np.arange(1.0, 7.0).reshape(2, 3)
    b = np.zeros((2, 3))
    groups = np.array([[0, 0, 1], [2, 2, 1]])
    members = group_members(groups, x.size)
    assert [m.tolist() for m in members] == [[0, 1], [2, 5], [3, 4]]
    order = default_order(x, b, members)
    assert order == [1, 2, 0]  # |x - b| per group: 3, 9, 9: ties by index
    corners, moved = extremal_breakpoints(x, b, members, [1, 0, 2])
    assert moved == [1, 0, 2] and len(corners) == 4
    np.testing.assert_array_equal(corners[1], [[0, 0, 3], [0, 0, 6]])
    np.testing.assert_array_equal(corners[-1], x)
    # a group that does not move has no leg
    _, moved = extremal_breakpoints(x, np.where(groups == 0, x, 0.0), members, [0, 1, 2])
    assert moved == [1, 2]


def test_complete_order_and_shapley_orders():
    assert complete_order((2,), [0, 1, 2, 3], 4) == [2, 0, 1, 3]
    with pytest.raises(ValueError, match="group 7"):
        complete_order((7,), [0, 1], 2)
    rng = np.random.default_rng(0)
    orders, exact = shapley_orders(3, 25, rng)
    assert exact and len(orders) == 6 and len({tuple(o) for o in orders}) == 6
    orders, exact = shapley_orders(5, 10, rng)
    assert not exact and len(orders) == 10 and all(sorted(o) == list(range(5)) for o in orders)


def test_guided_with_max_dist_zero_is_left_riemann_ig():
    """PAIR: max_dist 0 allows no deviation from the straight path (IG)."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=5)
    x, b = rng.normal(size=5), rng.normal(size=5)
    source = Analytic(lambda p: np.tanh(p @ w), lambda p: (1 - np.tanh(p @ w) ** 2) * w)
    path = GuidedPath(x, b, steps=40, fraction=0.25, max_dist=0.0)
    [used] = sequential_many([source], [path])
    assert used == 40 and path.done
    [ig] = integrated_gradients_many([Problem(x, b, source)], steps=40, method="riemann_left")
    np.testing.assert_allclose(path.attributions, ig.attributions, rtol=1e-10, atol=1e-12)


def test_guided_moves_small_gradients_first_and_stays_complete():
    """F = 10 x0 + x1 (linear: any path is exact). Guided IG moves x1 (small gradient) first;
    the attributions stay (10, 1) whatever the path, and the path leaves the diagonal."""
    w = np.array([10.0, 1.0])
    source = Analytic(lambda p: p @ w, lambda p: w.copy())
    x, b = np.ones(2), np.zeros(2)
    path = GuidedPath(x, b, steps=10, fraction=0.5, max_dist=1.0)
    first = None
    while not path.done:
        path.take(source.grad(path.point()))
        if first is None:
            first = path.current.copy()
    assert first[1] > first[0]  # the small-gradient feature ran ahead
    np.testing.assert_allclose(path.attributions, [10.0, 1.0], rtol=1e-9)


def test_guided_zero_distance_gives_zero():
    x = np.ones(3)
    path = GuidedPath(x, x.copy(), steps=5)
    assert path.done and path.point() is None and not path.attributions.any()


def test_sampled_shapley_orders_are_made_as_walked_and_leave_the_seed_where_it_was():
    """100,000 orders of 784 groups once took gigabytes as lists before the first gradient:
    they are drawn again on each walk, the same each time, and the generator moves on past
    them as if it had drawn them."""
    rng = np.random.default_rng(4)
    orders, exact = shapley_orders(784, 20_000, rng)
    assert not exact and len(orders) == 20_000
    first = list(itertools.islice(orders, 3))
    assert first == list(itertools.islice(orders, 3)) and first[1] == orders[1]
    assert sorted(first[2]) == list(range(784)) and first[0] != first[1]
    drawn = np.random.default_rng(4)
    want = [[int(v) for v in drawn.permutation(784)] for _ in range(3)]
    assert first == want
    small = shapley_orders(6, 40, rng := np.random.default_rng(9))[0]
    held = np.random.default_rng(9)
    assert list(small) == [[int(v) for v in held.permutation(6)] for _ in range(40)]
    assert rng.integers(1 << 30) == held.integers(1 << 30)  # rng moved on past all 40
