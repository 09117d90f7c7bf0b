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


# RoiAlign (16 and 21; ONNX Runtime has no RoiAlign-22), average mode: with respect to the
# image and to the rois; half_pixel and output_half_pixel (whose malformed rois are taken as
# one pixel wide), a fixed sampling grid and the adaptive one (ceil(extent / out) points a
# bin, different per roi), rois reaching outside the image and past its last pixel, a
# spatial scale, two images
def roi_boxes(*boxes):
    """Rois whose sample points keep clear of whole pixel coordinates (checked by the cases'
    finite differences: a point crossing one changes the pixels it reads)."""
    return np.array(boxes, dtype=np.float64)


ROI_IMAGE = rng.uniform(-2, 2, (2, 3, 6, 7))
ROI_BOXES = roi_boxes([0.31, 0.47, 4.23, 3.61], [1.13, 0.22, 6.71, 5.93], [-1.37, 2.09, 2.83, 7.41])
ROI_BATCH = np.array([0, 1, 1], np.int64)
for opset, attrs, tag in (
    (16, {"output_height": 2, "output_width": 3, "sampling_ratio": 2}, "half-pixel-ratio2"),
    (21, {"output_height": 3, "output_width": 2, "sampling_ratio": 0}, "half-pixel-adaptive"),
    (16, {"output_height": 2, "output_width": 2, "sampling_ratio": 1, "spatial_scale": 0.5,
          "coordinate_transformation_mode": "output_half_pixel"}, "output-half-pixel-scale"),
):  # fmt: skip
    boxes = ROI_BOXES * 2 if attrs.get("spatial_scale") else ROI_BOXES
    CASES.append(Case("RoiAlign", {"x": ROI_IMAGE, "rois": boxes}, attrs, opset=opset,
                      constants={"batch": ROI_BATCH}, id=f"RoiAlign-{tag}"))  # fmt: skip
# a roi under one pixel wide: output_half_pixel widens it to one (no gradient from its end)
CASES.append(Case("RoiAlign", {"x": ROI_IMAGE[:1], "rois": roi_boxes([2.13, 1.29, 2.61, 1.74])},
                  {"output_height": 2, "output_width": 2, "sampling_ratio": 2,
                   "coordinate_transformation_mode": "output_half_pixel"}, opset=16,
                  constants={"batch": np.array([0], np.int64)},
                  id="RoiAlign-malformed-roi"))  # fmt: skip


@pytest.mark.parametrize(
    ("opset", "attrs", "why"),
    [(16, {"mode": "max"}, "max mode"), (11, {}, "below opset 16, where ScatterND cannot add")],
)
def test_roi_align_without_a_rule(opset, attrs, why):
    """Max mode, and models below opset 16 (whose ScatterND cannot add), fall back."""
    from onnx import helper

    from igcli.autodiff import blocking_ops
    from tests.autodiff.checker import make_model

    node = helper.make_node("RoiAlign", ["x", "rois", "batch"], ["y"], **attrs)
    inputs = {"x": ROI_IMAGE, "rois": ROI_BOXES}
    model = make_model([node], inputs, "y", opset, {"batch": ROI_BATCH}, False)
    assert blocking_ops(model, "x", "y") == [f"RoiAlign ({why})"]
