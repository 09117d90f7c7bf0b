"""XRAI regions: the greedy ranking in closed form, the picture, the record, the extra."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

import igcli
from igcli import regions
from igcli.errors import ExitCode, UsageError
from igcli.render import render_image
from tests.test_cli import CANCER, CANCER_CSV, DIGIT_PNGS, DIGITS, run


def test_rank_regions_closed_form():
    """Left half density 1, top-right quadrant density 2, the rest 0. Candidates: the left
    half, the top-right quadrant and the whole image. Greedy by density of new pixels: the
    quadrant (2), then the left half (1; the whole image would add 75 pixels at 2/3), then
    the whole image's last 25 pixels (0)."""
    attr = np.zeros((10, 10))
    attr[:, :5] = 1.0
    attr[:5, 5:] = 2.0
    left = np.zeros((10, 10), bool)
    left[:, :5] = True
    quadrant = np.zeros((10, 10), bool)
    quadrant[:5, 5:] = True
    found = regions.rank_regions(attr, [left, quadrant, np.ones((10, 10), bool)], 1)
    assert found.densities == [2.0, 1.0, 0.0]
    assert found.areas == [0.25, 0.5, 0.25]
    assert found.sums == [50.0, 50.0, 0.0]
    assert (found.ranks[quadrant] == 1).all() and (found.ranks[left] == 2).all()
    assert found.ranks[9, 9] == 3 and found.heatmap[9, 9] == 0.0
    assert found.top_mask(0.25).sum() == 25
    summary = found.summary(0.25)
    assert summary["count"] == 3 and summary["ranked"][0] == {
        "rank": 1, "area": 0.25, "attribution": 50.0, "density": 2.0}  # fmt: skip


def test_small_regions_are_dropped_and_the_rest_filled():
    attr = np.arange(16, dtype=float).reshape(4, 4)
    tiny = np.zeros((4, 4), bool)
    tiny[0, 0] = True
    found = regions.rank_regions(attr, [tiny], min_pixel_diff=2)
    # no region qualifies: the whole image is one region at its mean
    assert found.densities == [7.5] and found.areas == [1.0] and (found.ranks == 1).all()


def test_parameters_scale_with_the_image():
    assert regions.scaled(5, (224, 224)) == 5 and regions.scaled(50, (224, 224), area=True) == 50
    assert regions.scaled(5, (28, 28)) == 1 and regions.scaled(50, (64, 64), area=True) == 4


def test_region_tile_in_the_panel():
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(16, 16, 3))
    attr = rng.normal(size=(16, 16, 3))
    mask = np.zeros((16, 16), bool)
    mask[4:10, 2:8] = True
    plain = render_image(image, attr)
    four = render_image(image, attr, regions=mask, regions_label="XRAI top 30%")
    assert four.width > plain.width and four.height == plain.height
    with pytest.raises(ValueError, match="regions"):
        render_image(image, attr, regions=mask[:8])


def test_cli_regions_write_record_and_picture(tmp_path):
    pytest.importorskip("skimage")
    result = run("explain", DIGITS, DIGIT_PNGS[2], "--regions", "xrai", "--steps", "16",
                 "--json", "--out", tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["baseline"] == "black+white" and record["baselines"]["count"] == 2
    ranked = record["regions"]["ranked"]
    assert ranked[0]["rank"] == 1 and ranked[0]["density"] >= ranked[-1]["density"]
    assert record["regions"]["top_fraction"] == 0.3
    with Image.open(tmp_path / record["heatmap_file"]) as img:
        assert img.width > 900  # four tiles: input, heatmap, overlay, regions
    # an explicit baseline is used as given
    again = igcli.Session(DIGITS).attribute(DIGIT_PNGS[2], baseline="zero", regions="xrai")
    assert again.baseline_name == "zero" and again.extra["baselines"] is None


def test_regions_need_an_image_model(tmp_path):
    result = run("explain", CANCER, CANCER_CSV, "--regions", "xrai", "--out", tmp_path)
    assert result.exit_code == ExitCode.USAGE and "needs an image model" in result.stderr


def test_without_scikit_image_the_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(UsageError, match=r"igcli\[xrai\]"):
        regions.segments(np.zeros((8, 8, 1)))
