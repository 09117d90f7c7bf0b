"""Heatmap options as the CLI passes them: overlays, shared scale, signs, labels."""

import json

import numpy as np
import pytest
from PIL import Image

import igcli
from tests.test_cli import CANCER, CANCER_CSV, DIGIT_PNGS, DIGITS, run


def png(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("overlay", ["heatmap", "blend", "masked"])
def test_single_overlays_have_the_input_size_scaled(tmp_path, overlay):
    result = run(
        "explain", DIGITS, DIGIT_PNGS[0], "--overlay", overlay, "--out", tmp_path, "--steps", "8"
    )
    assert result.exit_code == 0, result.stderr
    pixels = png(tmp_path / f"{DIGIT_PNGS[0].stem}.png")
    assert pixels.shape == (224, 224, 3)  # 28x28 scaled by 8
    assert pixels.std() > 5


def test_shared_scale_makes_maps_comparable(tmp_path):
    """With one scale, the input with weaker attributions draws paler than with its own scale."""
    args = ["explain", DIGITS, *DIGIT_PNGS[:4], "--overlay", "heatmap", "--steps", "8"]
    run(*args, "--out", tmp_path / "own")
    run(*args, "--scale", "shared", "--out", tmp_path / "shared")
    sums = {}
    for p in DIGIT_PNGS[:4]:
        a = np.abs(np.load(tmp_path / "own" / f"{p.stem}.npy")).max()
        sums[p.stem] = a
    weakest = min(sums, key=sums.get)
    own = png(tmp_path / "own" / f"{weakest}.png").astype(float)
    shared = png(tmp_path / "shared" / f"{weakest}.png").astype(float)
    # Saturation (max - min channel) is lower when the colour scale is larger.
    sat = lambda im: (im.max(axis=2) - im.min(axis=2)).mean()  # noqa: E731
    assert sat(shared) < sat(own)


def test_labels_file_names_the_target(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"digit-{i}" for i in range(10)) + "\n")
    result = run(
        "explain",
        DIGITS,
        DIGIT_PNGS[0],
        "--labels",
        labels,
        "--json",
        "--steps",
        "4",
        "--out",
        tmp_path / "o",
    )
    rec = json.loads(result.stdout)
    assert rec["label"] == f"digit-{rec['target']}"
    assert f"digit-{rec['target']}" in (tmp_path / "o" / "report.md").read_text()


def test_tabular_bars_show_positive_and_negative(tmp_path):
    run("explain", CANCER, CANCER_CSV, "--steps", "8", "--out", tmp_path)
    pixels = png(tmp_path / "breast_cancer_row0.png")
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 80)
    attributions = np.load(tmp_path / "breast_cancer_row0.npy")
    assert (attributions > 0).any() and (attributions < 0).any()  # row 0 has both signs
    assert red.sum() > 100 and blue.sum() > 100


@pytest.mark.parametrize("sign", ["positive", "negative", "absolute"])
def test_sign_options_render(tmp_path, sign):
    result = run(
        "explain",
        DIGITS,
        DIGIT_PNGS[1],
        "--sign",
        sign,
        "--overlay",
        "heatmap",
        "--out",
        tmp_path,
        "--steps",
        "8",
    )
    assert result.exit_code == 0
    pixels = png(tmp_path / f"{DIGIT_PNGS[1].stem}.png")
    # magnitude maps use a sequential map whose zero is dark
    assert np.median(pixels) < 128


def test_captions_name_the_baseline_and_csv_titles_the_row(tmp_path):
    from igcli.visualize import caption, title

    session = igcli.Session(CANCER)
    a = session.attribute_many(session.load(CANCER_CSV)[2:3])[0][0]
    assert title(a).startswith("breast_cancer.csv row 2 - target")
    assert caption(a).startswith("baseline zero \u00b7 completeness error")
    top = a.record()["top_features"]
    assert len(top) == 10 and abs(top[0]["attribution"]) >= abs(top[-1]["attribution"])
    assert {"name", "value", "attribution"} <= set(top[0])


def test_resumed_heatmaps_are_drawn_again_with_the_runs_shared_scale(tmp_path):
    """A resumed run drew its shared scale from its new inputs only, and the resumed inputs
    kept the first run's scale: now every heatmap equals a one-pass run's. A shard says that
    its scale is its own."""
    part, every = tmp_path / "part", tmp_path / "all"
    part.mkdir()
    every.mkdir()
    for k, png in enumerate(DIGIT_PNGS[:4]):
        (every / png.name).write_bytes(png.read_bytes())
        if k < 2:
            (part / png.name).write_bytes(png.read_bytes())
    shared = ("--scale", "shared", "-q")
    assert run("explain", DIGITS, part, "--out", tmp_path / "r", *shared).exit_code == 0
    for png in DIGIT_PNGS[2:4]:
        (part / png.name).write_bytes(png.read_bytes())
    again = run("explain", DIGITS, part, "--out", tmp_path / "r", "--skip-existing", *shared)
    assert again.exit_code == 0, again.stderr
    assert run("explain", DIGITS, every, "--out", tmp_path / "f", *shared).exit_code == 0
    for png in DIGIT_PNGS[:4]:
        name = png.stem + ".png"
        assert (tmp_path / "r" / name).read_bytes() == (tmp_path / "f" / name).read_bytes()
    shard = run("explain", DIGITS, every, "--out", tmp_path / "s", "--scale", "shared",
                "--shard", "1/2")  # fmt: skip
    assert shard.exit_code == 0 and "not the whole run's" in shard.stderr
