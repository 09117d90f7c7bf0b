"""The GridSample rule against central finite differences: bilinear and nearest, the three
padding modes, with and without align_corners, points inside and outside the image, with
respect to the image and to the grid."""

import numpy as np
import pytest

from tests.autodiff.checker import Case

rng = np.random.default_rng(5)


def grid_for(n, ho, wo, h, w, corners, reach=2.5):
    """A grid whose pixel coordinates keep clear of whole numbers (tap changes, the centres
    where border and reflection turn) and of halves (edges, nearest's rounding): each is
    k + f with f in [0.1, 0.4] or [0.6, 0.9], some up to `reach` pixels outside the image."""
    coords = []
    for size in (w, h):
        whole = rng.integers(-int(reach), size + int(reach), size=(n, ho, wo))
        frac = rng.uniform(0.1, 0.4, size=(n, ho, wo)) + rng.integers(0, 2, size=(n, ho, wo)) * 0.5
        p = whole + frac
        coords.append(2 * p / (size - 1) - 1 if corners else (2 * p + 1) / size - 1)
    return np.stack(coords, axis=-1)


CASES: list[Case] = []
for mode, opset in (("bilinear", 16), ("linear", 22), ("nearest", 20)):
    for padding in ("zeros", "border", "reflection"):
        if mode == "nearest" and padding == "reflection":
            continue  # no rule: falls back (see test_nearest_reflection_has_no_rule)
        for corners in (0, 1):
            attrs = {"mode": mode, "padding_mode": padding, "align_corners": corners}
            inputs = {"x": rng.uniform(-2, 2, (2, 3, 4, 5)),
                      "grid": grid_for(2, 3, 2, 4, 5, corners)}  # fmt: skip
            tag = f"{mode}-{padding}-corners{corners}-{opset}"
            # (nearest follows its grid in steps only: a path through the grid alone refuses,
            # see test_driver.py)
            wrt = {"wrt": ["x"]} if mode == "nearest" else {}
            CASES.append(Case("GridSample", inputs, attrs, opset=opset, id=f"GridSample-{tag}",
                              **wrt))  # fmt: skip
CASES.append(Case("GridSample", {"x": rng.uniform(-2, 2, (2, 16, 3, 4)),
                                 "grid": grid_for(2, 5, 3, 3, 4, 0, reach=4.5)},
                  {"padding_mode": "reflection"}, opset=20, dynamic=True,
                  id="GridSample-reflection-far-16ch-dyn"))  # fmt: skip


def grid3_for(n, do, ho, wo, d, h, w, corners, reach=2.5):
    """grid_for for a volume: [N, Do, Ho, Wo, 3] holding (x, y, z)."""
    coords = []
    for size in (w, h, d):
        whole = rng.integers(-int(reach), size + int(reach), size=(n, do, ho, wo))
        frac = rng.uniform(0.1, 0.4, size=whole.shape) + rng.integers(0, 2, size=whole.shape) * 0.5
        p = whole + frac
        coords.append(2 * p / (size - 1) - 1 if corners else (2 * p + 1) / size - 1)
    return np.stack(coords, axis=-1)


# GridSample-20 on volumes [N, C, D, H, W] (torch's grid_sample on 5-D: trilinear)
for mode in ("linear", "nearest"):
    for padding in ("zeros", "border", "reflection"):
        if mode == "nearest" and padding == "reflection":
            continue
        for corners in (0, 1):
            attrs = {"mode": mode, "padding_mode": padding, "align_corners": corners}
            inputs = {"x": rng.uniform(-2, 2, (2, 2, 3, 4, 5)),
                      "grid": grid3_for(2, 2, 3, 2, 3, 4, 5, corners)}  # fmt: skip
            wrt = {"wrt": ["x"]} if mode == "nearest" else {}
            CASES.append(Case("GridSample", inputs, attrs, opset=20,
                              id=f"GridSample-3d-{mode}-{padding}-corners{corners}",
                              **wrt))  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_rule(case):
    case.run()


def test_nearest_reflection_has_no_rule():
    from onnx import helper

    from igcli.autodiff import blocking_ops
    from tests.autodiff.checker import make_model

    node = helper.make_node("GridSample", ["x", "grid"], ["y"], mode="nearest",
                            padding_mode="reflection")  # fmt: skip
    inputs = {"x": np.zeros((1, 1, 3, 3)), "grid": np.zeros((1, 2, 2, 2))}
    model = make_model([node], inputs, "y", 20, {}, False)
    assert blocking_ops(model, "x", "y")


# AffineGrid (20+): 2-D and 3-D, both align_corners; and a spatial transformer, AffineGrid into
# GridSample, differentiated through both to theta and to the image
for corners in (0, 1):
    CASES.append(Case("AffineGrid", {"theta": rng.uniform(-1, 1, (2, 2, 3))},
                      {"align_corners": corners}, opset=20,
                      constants={"size": np.array([2, 3, 4, 5], np.int64)},
                      id=f"AffineGrid-2d-corners{corners}"))  # fmt: skip
    CASES.append(Case("AffineGrid", {"theta": rng.uniform(-1, 1, (1, 3, 4))},
                      {"align_corners": corners}, opset=20,
                      constants={"size": np.array([1, 2, 3, 2, 4], np.int64)},
                      id=f"AffineGrid-3d-corners{corners}"))  # fmt: skip


def test_spatial_transformer():
    from onnx import helper

    from tests.autodiff.checker import check_graph

    nodes = [
        helper.make_node("AffineGrid", ["theta", "size"], ["grid"]),
        helper.make_node("GridSample", ["x", "grid"], ["y"], padding_mode="border"),
    ]
    theta = np.array([[[0.83, 0.21, 0.137], [-0.17, 0.91, -0.061]]])
    check_graph(nodes, {"x": rng.uniform(-2, 2, (1, 2, 5, 6)), "theta": theta}, "y", opset=20,
                constants={"size": np.array([1, 2, 4, 3], np.int64)})  # fmt: skip
