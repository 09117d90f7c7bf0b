"""Preprocessing and input readers: layouts, channels, resizing, normalisation, CSV headers."""

import numpy as np
import pytest
from PIL import Image

from igcli.baselines import make_baseline
from igcli.errors import InputError, UsageError
from igcli.inputs import load_samples, make_preprocessing
from igcli.model import Sidecar, TensorSpec


def spec(shape, name="x"):
    return TensorSpec(name, shape, np.dtype(np.float32))


def rgb_png(path, size=(10, 6)):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_nchw_and_nhwc_are_detected_and_images_resized(tmp_path):
    img = rgb_png(tmp_path / "a.png")
    nchw = make_preprocessing(spec(["N", 3, 8, 8]), Sidecar())
    nhwc = make_preprocessing(spec(["N", 8, 8, 3]), Sidecar())
    assert (nchw.layout, nhwc.layout) == ("NCHW", "NHWC")
    a = load_samples(img, nchw, "a")[0]
    b = load_samples(img, nhwc, "a")[0]
    assert a.x.shape == (3, 8, 8) and b.x.shape == (8, 8, 3)
    np.testing.assert_allclose(np.transpose(a.x, (1, 2, 0)), b.x)
    assert a.x.min() >= 0.0 and a.x.max() <= 1.0


def test_color_image_to_one_channel_model(tmp_path):
    img = rgb_png(tmp_path / "a.png")
    prep = make_preprocessing(spec([1, 1, 5, 5]), Sidecar())
    sample = load_samples(img, prep, "a")[0]
    assert sample.x.shape == (1, 5, 5) and sample.pixels.shape == (5, 5, 1)


def test_mean_std_normalisation_and_black_baseline(tmp_path):
    img = rgb_png(tmp_path / "a.png")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    prep = make_preprocessing(spec(["N", 3, 4, 4]), Sidecar(), mean=mean, std=std)
    sample = load_samples(img, prep, "a")[0]
    expected = (sample.pixels - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(sample.x, np.transpose(expected, (2, 0, 1)), rtol=1e-5)
    black = make_baseline("black", sample, prep)
    np.testing.assert_allclose(black[:, 0, 0], -np.array(mean) / np.array(std), rtol=1e-6)
    white = make_baseline("white", sample, prep)
    np.testing.assert_allclose(white[:, 0, 0], (1 - np.array(mean)) / np.array(std), rtol=1e-6)
    assert not np.allclose(make_baseline("zero", sample, prep), black)


def test_noise_and_blur_baselines(tmp_path):
    img = rgb_png(tmp_path / "a.png", size=(16, 16))
    prep = make_preprocessing(spec(["N", 3, 16, 16]), Sidecar())
    sample = load_samples(img, prep, "a")[0]
    u1 = make_baseline("uniform", sample, prep, seed=1)
    assert np.array_equal(u1, make_baseline("uniform", sample, prep, seed=1))
    assert not np.array_equal(u1, make_baseline("uniform", sample, prep, seed=2))
    blur = make_baseline("blur", sample, prep)
    assert blur.shape == sample.x.shape
    assert blur.std() < sample.x.std()  # blurring removes detail
    assert blur.mean() == pytest.approx(sample.x.mean(), abs=0.05)


def test_file_baselines(tmp_path):
    img = rgb_png(tmp_path / "a.png")
    prep = make_preprocessing(spec(["N", 3, 4, 4]), Sidecar(), mean=[0.5], std=[0.5])
    sample = load_samples(img, prep, "a")[0]
    np.testing.assert_allclose(make_baseline(str(img), sample, prep), sample.x)
    np.save(tmp_path / "b.npy", np.full((3, 4, 4), 0.25, dtype=np.float32))
    assert make_baseline(str(tmp_path / "b.npy"), sample, prep).mean() == pytest.approx(0.25)
    with pytest.raises(UsageError):
        make_baseline("purple", sample, prep)


def test_csv_columns_follow_the_sidecar_names(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("b,a\n2,1\n4,3\n")
    side = Sidecar(feature_names=["a", "b"], preprocessing={"mean": [1, 1], "std": [2, 2]})
    prep = make_preprocessing(spec(["N", 2]), side)
    rows = load_samples(csv, prep, "t")
    assert [r.name for r in rows] == ["t_row0", "t_row1"]
    np.testing.assert_allclose(rows[1].raw_values, [3, 4])
    np.testing.assert_allclose(rows[1].x, [1.0, 1.5])
    assert rows[0].feature_names == ["a", "b"]
    with pytest.raises(UsageError, match="blur"):
        make_baseline("blur", rows[0], prep)


@pytest.mark.parametrize(
    "text,problem",
    [("a,b\n1\n", "short"), ("a,c\n1,2\n", "lacks feature"), ("a,b\n1,x\n", "not all numbers"),
     ("a,b\n", "header row and at least one data row"), ("a,b\n1,nan\n", "NaN"),
     # float() reads these (as 13.68, 3 and 12): no feature table means them
     ("a,b\n1,1_3.68\n", "not all numbers"), ("a,b\n1,\u0663\n", "not all numbers"),
     ("a,b\n1,\uff11\uff12\n", "not all numbers")],
)  # fmt: skip
def test_bad_csv(tmp_path, text, problem):
    csv = tmp_path / "t.csv"
    csv.write_text(text)
    prep = make_preprocessing(spec(["N", 2]), Sidecar(feature_names=["a", "b"]))
    with pytest.raises(InputError, match=problem) as err:
        load_samples(csv, prep, "t")
    assert "t.csv" in str(err.value)


def test_blur_keeps_constants_and_spreads_a_dot_symmetrically():
    from igcli.baselines import blur_pixels

    flat = np.full((9, 7, 1), 0.3)
    np.testing.assert_allclose(blur_pixels(flat, 2.0), flat)
    dot = np.zeros((21, 21, 1))
    dot[10, 10] = 1.0
    out = blur_pixels(dot, 1.5)[:, :, 0]
    np.testing.assert_allclose(out, out.T, atol=1e-12)
    np.testing.assert_allclose(out, out[::-1, ::-1], atol=1e-12)
    assert out.sum() == pytest.approx(1.0, abs=1e-9) and out[10, 10] == out.max() < 0.1
    assert blur_pixels(np.ones((1, 1, 3)), 5.0).shape == (1, 1, 3)


def test_presets_normalise_and_centre_crop(tmp_path):
    from PIL import Image as PILImage

    from igcli.inputs import PRESETS, read_image

    spec = TensorSpec("x", ["N", 3, 8, 8], np.dtype(np.float32))
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :20] = 255  # a white band at the left edge of a wide image
    PILImage.fromarray(img).save(tmp_path / "wide.png")
    squash = make_preprocessing(spec, Sidecar())
    imagenet = make_preprocessing(spec, Sidecar(), preset="imagenet")
    assert squash.crop is None and imagenet.crop == 0.875
    np.testing.assert_allclose(imagenet.mean, PRESETS["imagenet"]["mean"])
    assert read_image(tmp_path / "wide.png", squash)[:, 0].max() == 1.0  # band kept
    assert read_image(tmp_path / "wide.png", imagenet).max() == 0.0  # band cut away
    assert "centre crop" in imagenet.describe() and "[imagenet]" in imagenet.describe()
    given = make_preprocessing(spec, Sidecar(), mean=[0.5], std=[0.5], preset="imagenet")
    np.testing.assert_allclose(given.mean, [0.5, 0.5, 0.5])  # what is given wins
    side = make_preprocessing(spec, Sidecar(preprocessing={"preset": "clip"}))
    assert side.preset == "clip" and side.crop == 1.0
    plain = make_preprocessing(spec, Sidecar(preprocessing={"preset": "clip"}), preset="none")
    assert plain.mean is None and plain.crop is None
    with pytest.raises(UsageError, match="preset"):
        make_preprocessing(spec, Sidecar(), preset="vgg")


def test_an_unnormalised_rgb_model_gets_a_note(tmp_path):
    import igcli
    from tests import models

    path = models.save(models.image_model(channels=3), tmp_path / "rgb.onnx")
    Image.new("RGB", (8, 8), (200, 30, 90)).save(tmp_path / "a.png")
    np.save(tmp_path / "a.npy", np.zeros((3, 8, 8), np.float32))
    warnings = []
    session = igcli.Session(path, warn=warnings.append)
    session.load(tmp_path / "a.npy")  # a tensor is a model input already: nothing to say
    assert not warnings
    session.load(tmp_path / "a.png")
    session.load(tmp_path / "a.png")
    assert sum("--preprocess imagenet" in w for w in warnings) == 1  # said once, at a picture
    warnings.clear()
    igcli.Session(path, warn=warnings.append, preprocess="imagenet").load(tmp_path / "a.png")
    assert not any("--preprocess" in w for w in warnings)


def test_a_sidecar_layout_that_puts_a_width_where_the_channels_are_is_one_error():
    """layout NHWC on an [N, 3, 224, 224] model read 224 channels: every input then failed
    in ONNX Runtime, each with its raw message. One error now, exit 3, as for other sidecar
    mistakes; a layout that fits is taken."""
    from igcli.errors import ModelError

    with pytest.raises(ModelError, match="layout NHWC does not fit"):
        make_preprocessing(spec(["N", 3, 224, 224]), Sidecar(preprocessing={"layout": "NHWC"}))
    fits = make_preprocessing(spec(["N", 224, 224, 3]), Sidecar(preprocessing={"layout": "NHWC"}))
    assert fits.layout == "NHWC" and fits.channels == 3


def test_a_fully_transparent_image_is_noted(tmp_path):
    """Every alpha 0 (RGBA, LA, or a palette's transparent entry): the model sees colours no
    viewer shows, so it is said; a half-transparent or opaque picture is not."""
    from PIL import Image

    from igcli.inputs import Preprocessing, read_image

    prep = Preprocessing([1, 1, 28, 28], channels=1, height=28, width=28)
    palette = Image.new("P", (28, 28), 0)
    palette.info["transparency"] = 0
    cases = [(Image.new("RGBA", (28, 28), (200, 0, 0, 0)), True),
             (Image.new("LA", (28, 28), (90, 0)), True), (palette, True),
             (Image.new("RGBA", (28, 28), (200, 0, 0, 40)), False),
             (Image.new("RGB", (28, 28), (200, 0, 0)), False)]  # fmt: skip
    for k, (picture, noted) in enumerate(cases):
        path = tmp_path / f"{k}.png"
        picture.save(path, **({"transparency": 0} if picture.mode == "P" else {}))
        notes: list[str] = []
        read_image(path, prep, notes=notes)
        assert any("fully transparent" in n for n in notes) == noted, (picture.mode, notes)


def test_an_image_squashed_out_of_shape_is_noted(tmp_path):
    """A 2000x1 strip made 28x28 says so (EXIF rotation counted); a 40x30 photo does not."""
    from PIL import Image

    from igcli.inputs import Preprocessing, read_image

    prep = Preprocessing([1, 1, 28, 28], channels=1, height=28, width=28)
    for (w, h), want in [((2000, 1), "1x2000 image (HxW, as --size) squashed to the model's"),
                         ((40, 30), None), ((56, 28), "ratio changed 2.0-fold")]:  # fmt: skip
        path = tmp_path / f"{w}x{h}.png"
        Image.new("L", (w, h), 128).save(path)
        notes: list[str] = []
        assert read_image(path, prep, notes=notes).shape == (28, 28, 1)
        assert (notes == []) if want is None else (want in notes[0])
    wide = Image.new("L", (60, 20), 128)
    exif = wide.getexif()
    exif[0x0112] = 6  # stored sideways: upright it is 20x60
    wide.save(tmp_path / "turned.jpg", exif=exif)
    notes = []
    tall = Preprocessing([1, 1, 30, 10], channels=1, height=30, width=10)
    read_image(tmp_path / "turned.jpg", tall, notes=notes)
    assert notes == []  # upright 20x60 to 10x30: the same shape
    wide.save(tmp_path / "wide.png")  # 20 high, 60 wide, to 30 high, 10 wide: both HxW
    read_image(tmp_path / "wide.png", tall, notes=notes)
    assert "20x60 image (HxW, as --size) squashed to the model's 30x10" in notes[0]


def test_a_misnamed_file_is_read_as_what_it_holds(tmp_path):
    """A .npy named .png, or a PNG named .npy, is read by its content, with a note; a binary
    file named .csv says what it holds, not that the model takes no rows."""
    prep = make_preprocessing(spec(["N", 3, 8, 8]), Sidecar())
    png = rgb_png(tmp_path / "photo.png")
    arr = np.random.default_rng(1).uniform(0, 1, (3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "t.npy", arr)
    (tmp_path / "photo.npy").write_bytes(png.read_bytes())
    (tmp_path / "t.png").write_bytes((tmp_path / "t.npy").read_bytes())
    as_image = load_samples(tmp_path / "photo.npy", prep, "photo")[0]
    assert as_image.kind == "image"
    np.testing.assert_array_equal(as_image.x, load_samples(png, prep, "photo")[0].x)
    assert as_image.notes == ["named .npy but holds a PNG image; read as what it holds"]
    as_array = load_samples(tmp_path / "t.png", prep, "t")[0]
    assert as_array.kind == "tensor" and as_array.notes[-1].startswith("named .png but holds a")
    np.testing.assert_array_equal(as_array.x, arr)
    (tmp_path / "t.csv").write_bytes(png.read_bytes())
    rows = make_preprocessing(spec(["N", 2]), Sidecar())
    with pytest.raises(InputError, match="t.csv: not CSV text: it holds a PNG image"):
        load_samples(tmp_path / "t.csv", rows, "t")
    # a damaged file of the named kind, or one holding something else, keeps its own error
    (tmp_path / "bad.npy").write_bytes(b"GIF8 but not quite")
    with pytest.raises(InputError, match="no NumPy header"):
        load_samples(tmp_path / "bad.npy", prep, "bad")
    vector = make_preprocessing(spec(["N", 4]), Sidecar())
    with pytest.raises(InputError, match="an image, but the model input"):
        load_samples(png, vector, "photo")
    (tmp_path / "photo_vector.npy").write_bytes(png.read_bytes())
    with pytest.raises(InputError, match="holds a PNG image, not a NumPy array, and the model"):
        load_samples(tmp_path / "photo_vector.npy", vector, "photo")
