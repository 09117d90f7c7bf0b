"""Render known attributions and check the pixels a person would see."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from igcli import render
from igcli.render import (
    OVERLAYS,
    SIGNS,
    attribution_map,
    color_scale,
    render_bars,
    render_image,
    select_sign,
)


def _px(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int64)


def _ramp(h: int = 28, w: int = 28) -> np.ndarray:
    """A gray image whose brightness rises left to right, (H, W, 1) in [0.1, 0.9]."""
    return np.tile(np.linspace(0.1, 0.9, w), (h, 1))[..., None]


def _left_right(h: int = 28, w: int = 28, c: int = 1) -> np.ndarray:
    """+1 in the left half, -1 in the right half."""
    a = np.ones((h, w, c))
    a[:, w // 2 :] = -1.0
    return a


# ---------------------------------------------------------------- maps


def test_attribution_map_sum_and_maxabs_on_a_hand_made_pixel():
    attr = np.array([[[0.5, -2.0, 1.0], [3.0, -1.0, 0.0]]])  # (1, 2, 3)
    np.testing.assert_allclose(attribution_map(attr), [[-0.5, 2.0]])
    np.testing.assert_allclose(attribution_map(attr, "maxabs"), [[-2.0, 3.0]])
    with pytest.raises(ValueError, match="reduce"):
        attribution_map(attr, "mean")


def test_select_sign_on_known_values():
    m = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_array_equal(select_sign(m, "all"), m)
    np.testing.assert_array_equal(select_sign(m, "positive"), [[0.0, 0.0, 3.0]])
    np.testing.assert_array_equal(select_sign(m, "negative"), [[2.0, 0.0, 0.0]])
    np.testing.assert_array_equal(select_sign(m, "absolute"), [[2.0, 0.0, 3.0]])
    with pytest.raises(ValueError, match="sign"):
        select_sign(m, "both")


def test_color_scale_ignores_a_single_huge_outlier():
    m = np.linspace(-1.0, 1.0, 10_000)
    m[1234] = 1e6
    assert 0.9 < color_scale(m, 99.5) <= 1.0
    assert color_scale(m, 100) == 1e6


def test_color_scale_is_always_positive():
    sparse = np.zeros(10_000)
    sparse[0] = -0.25  # below the percentile: falls back to max|m|
    assert color_scale(sparse) == 0.25
    assert color_scale(np.zeros((4, 4))) == 1.0
    assert color_scale(np.array([np.nan, np.inf])) == 1.0


# ---------------------------------------------------------------- single modes


def test_heatmap_positive_left_is_red_negative_right_is_blue():
    px = _px(render_image(_ramp(), _left_right(), overlay="heatmap"))
    h, w, _ = px.shape
    left, right = px[h // 2, w // 4], px[h // 2, 3 * w // 4]
    assert left[0] > left[2] + 100 and left[0] > left[1] + 100  # red dominates
    assert right[2] > right[0] + 100 and right[2] > right[1] + 100  # blue dominates


def test_heatmap_of_zero_is_the_neutral_centre_colour():
    px = _px(render_image(_ramp(), np.zeros((28, 28, 1)), overlay="heatmap"))
    assert (px == px[0, 0]).all()
    r, g, b = px[0, 0]
    assert min(r, g, b) > 215 and max(r, g, b) - min(r, g, b) < 15  # near-white, no hue


def test_magnitude_maps_are_dark_at_zero_and_bright_at_vmax():
    attr = _left_right()
    px = _px(render_image(_ramp(), attr, overlay="heatmap", sign="positive", vmax=1.0))
    h, w, _ = px.shape
    assert px[h // 2, 3 * w // 4].sum() < 30  # the negative half has no positive part: dark
    assert px[h // 2, w // 4].sum() > 500  # full scale: bright
    neg = _px(render_image(_ramp(), attr, overlay="heatmap", sign="negative", vmax=1.0))
    np.testing.assert_array_equal(neg, px[:, ::-1])  # the mirror image


def test_blend_with_zero_attribution_is_the_dimmed_input():
    image = _ramp()
    px = _px(render_image(image, np.zeros((28, 28, 1)), overlay="blend"))
    original = np.repeat(np.rint(image[..., 0] * 255), 8, axis=0).repeat(8, axis=1)
    gray = px.mean(axis=2)
    assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()  # grayscale
    assert (gray < original).all()
    row = gray[100]
    assert (np.diff(row) >= 0).all() and row[-1] > row[0] + 50  # brightness order kept


def test_blend_colours_only_where_attribution_is():
    attr = np.zeros((28, 28, 1))
    attr[10:14, 10:14] = 1.0
    px = _px(render_image(_ramp(), attr, overlay="blend"))
    hot, cold = px[12 * 8, 12 * 8], px[24 * 8, 12 * 8]
    assert hot[0] > hot[2] + 80  # red
    assert cold[0] == cold[1] == cold[2]  # untouched dimmed gray


def test_masked_keeps_the_top_percent_bright_and_darkens_the_rest():
    image = np.full((20, 20, 1), 0.8)
    attr = np.zeros((20, 20, 1))
    attr[:4, :10] = np.arange(40).reshape(4, 10)[..., None] + 1.0  # 40 pixels = 10%, all > 0
    attr[10:, 10:] = -0.01  # small but nonzero: must be darkened
    px = _px(render_image(image, attr, overlay="masked", mask_top_percent=10.0, min_size=20))
    assert px.shape == (20, 20, 3)
    bright = px[..., 0] > 150
    np.testing.assert_array_equal(bright, np.abs(attr[..., 0]) >= 1.0)
    assert px[~bright].max() < 0.8 * 255 * 0.3  # heavily darkened


def test_masked_never_keeps_zero_attribution_pixels():
    px = _px(render_image(_ramp(), np.zeros((28, 28, 1)), overlay="masked"))
    assert px.max() < 60


@pytest.mark.parametrize("overlay", ["heatmap", "blend", "masked"])
def test_single_modes_upscale_small_inputs_by_an_integer_factor(overlay):
    im = render_image(_ramp(), _left_right(c=3), overlay=overlay)
    assert im.size == (224, 224) and im.mode == "RGB"
    px = _px(im)
    assert (px[:8, :8] == px[0, 0]).all()  # NEAREST: each input pixel is one 8x8 block
    rect = render_image(np.zeros((28, 14, 3)), np.ones((28, 14, 2)), overlay=overlay)
    assert rect.size == (14 * 16, 28 * 16)  # shorter side 14 -> factor 16


@pytest.mark.parametrize("overlay", ["heatmap", "blend", "masked"])
def test_single_modes_keep_large_inputs_at_their_size(overlay):
    image = np.random.default_rng(0).random((200, 300, 3))
    im = render_image(image, _left_right(200, 300, 3), overlay=overlay)
    assert im.size == (300, 200) and im.mode == "RGB"


def test_shared_vmax_makes_scales_comparable():
    weak = _left_right() * 0.1
    own = _px(render_image(_ramp(), weak, overlay="heatmap"))
    shared = _px(render_image(_ramp(), weak, overlay="heatmap", vmax=1.0))
    assert own[100, 50, 0] - own[100, 50, 2] > shared[100, 50, 0] - shared[100, 50, 2] + 50


# ---------------------------------------------------------------- panel


@pytest.mark.parametrize("sign", SIGNS)
def test_panel_is_wide_and_not_blank(sign):
    rng = np.random.default_rng(1)
    im = render_image(
        _ramp(),
        rng.standard_normal((28, 28, 1)),
        sign=sign,
        title="digit_3.png \u2014 target 3 (score 0.987)",
        caption="completeness error 0.02% \u00b7 50 steps \u00b7 gausslegendre",
    )
    assert im.mode == "RGB" and im.width > im.height
    assert im.width >= 3 * 224
    assert _px(im).std() > 30


def test_panel_contains_the_input_tile_unchanged():
    image = _ramp()
    px = _px(render_image(image, _left_right()))
    tile = np.repeat(np.rint(image[..., 0] * 255), 8, axis=0).repeat(8, axis=1)
    row = tile[0].astype(np.int64)
    hits = [
        (y, x)
        for y in range(px.shape[0])
        for x in np.flatnonzero(px[y, :, 0] == row[0])
        if x + 224 <= px.shape[1] and (px[y, x : x + 224, 0] == row).all()
    ]
    assert hits, "the 224 px upscaled input row is not in the panel"


def test_title_with_characters_the_font_lacks_still_renders():
    im = render_image(_ramp(), _left_right(), title="caf\u00e9 \u2014 \u2212 \u2192 \u4e00")
    assert im.width > im.height
    assert render._drawable("caf\u00e9 \u2014 x", render._font(16)) == "cafe - x"
    # control and format characters (no glyph: a box each) as spaces
    assert render._drawable("a\tb\nc\u202ed\x00", render._font(16)) == "a b c d "


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="overlay"):
        render_image(_ramp(), _left_right(), overlay="contour")
    with pytest.raises(ValueError, match="H x W"):
        render_image(_ramp(), np.ones((27, 28, 1)))
    with pytest.raises(ValueError, match="vmax"):
        render_image(_ramp(), _left_right(), vmax=0.0)
    assert set(OVERLAYS) == {"heatmap", "blend", "masked", "panel"}


# ---------------------------------------------------------------- bars


def _longest_run(row: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D boolean array."""
    padded = np.concatenate([[0], row.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max(initial=0))


def _bar_rows(px: np.ndarray) -> list[tuple[int, str]]:
    """(first y, 'red' | 'blue') of each bar, top down: a long solid run, not coloured text."""
    red = (px[..., 0] > 150) & (px[..., 1] < 60) & (px[..., 2] < 60)
    blue = (px[..., 2] > 170) & (px[..., 0] < 80)
    rows, previous = [], None
    for y in range(px.shape[0]):
        colour = (
            "red" if _longest_run(red[y]) > 12 else "blue" if _longest_run(blue[y]) > 12 else None
        )
        if colour and colour != previous:
            rows.append((y, colour))
        previous = colour
    return rows


def test_bars_put_the_largest_magnitude_on_top_with_its_colour():
    names = ["small", "top_positive", "second_negative"]
    im = render_bars(names, np.array([0.01, 2.0, -1.5]), np.array([1.0, 2.0, 3.0]), title="t")
    assert im.mode == "RGB" and 850 <= im.width <= 950
    rows = _bar_rows(_px(im))
    assert [c for _, c in rows] == ["red", "blue"]  # 0.01 is too short to detect

    flipped = render_bars(names, np.array([0.01, -2.0, 1.5]))
    assert [c for _, c in _bar_rows(_px(flipped))] == ["blue", "red"]


def test_bars_length_is_proportional_to_attribution():
    px = _px(render_bars(["a", "b"], np.array([1.0, 0.5])))
    red = (px[..., 0] > 150) & (px[..., 1] < 60) & (px[..., 2] < 60)
    widths = [w for w in map(_longest_run, red) if w > 12]
    long, short = max(widths), min(widths)
    assert abs(short / long - 0.5) < 0.03


def test_bars_handle_top_k_larger_than_n_and_cut_with_a_taller_chart():
    a = np.array([0.3, -0.2, 0.1])
    few = render_bars(["x", "y", "z"], a, top_k=15)
    assert len(_bar_rows(_px(few))) == 3
    names = [f"f{i}" for i in range(40)]
    many = render_bars(names, np.linspace(-1, 1, 40), top_k=15)
    assert many.height > few.height
    assert len(_bar_rows(_px(many))) >= 2
    with pytest.raises(ValueError, match="names"):
        render_bars(["x"], a)


# ---------------------------------------------------------------- save


@pytest.mark.parametrize("deflate", ["zlib-ng", "zlib"])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "I;16"])
def test_png_bytes_round_trip_every_mode(mode, deflate, monkeypatch):
    """Our own encoder (RGB and L) and Pillow's (the rest) give back the very pixels, with
    zlib-ng's deflate and with zlib's (where zlib-ng has no wheel)."""
    import zlib

    from igcli import outputs
    from igcli.outputs import png_bytes

    if deflate == "zlib":
        monkeypatch.setattr(outputs, "_deflate", zlib)
        monkeypatch.setattr(outputs, "_LEVEL", 3)
    else:
        assert outputs._deflate.__name__.endswith("zlib_ng")
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (3, 5), (414, 748)]:
        base = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), mode="RGBA")
        im = base.convert(mode) if mode != "I;16" else Image.new("I;16", (w, h), 40000)
        with Image.open(io.BytesIO(png_bytes(im))) as back:
            back.load()
            assert back.size == im.size and back.mode == im.mode
            np.testing.assert_array_equal(np.asarray(back), np.asarray(im))


def test_atomic_png_writes_a_readable_png_with_open_s_mode_and_no_temp_file(
    tmp_path: Path, write_route
):
    from igcli.outputs import atomic_save_png

    im = render_image(_ramp(), _left_right(), overlay="heatmap")
    target = tmp_path / "new" / "out.png"  # a missing folder is made
    atomic_save_png(target, im)
    atomic_save_png(target, im)  # replacing an existing file works too
    assert os.listdir(target.parent) == ["out.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with Image.open(target) as back:
        np.testing.assert_array_equal(np.asarray(back), np.asarray(im))


@pytest.mark.parametrize("failing", ["write", "close", "replace"])
def test_atomic_png_failing_mid_write_keeps_the_old_file_and_no_temp(
    tmp_path, monkeypatch, failing, write_route
):
    from igcli.errors import OutputError
    from igcli.outputs import atomic_save_png

    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    real = getattr(os, failing)

    def full_disk(*args):
        if failing != "replace":  # the bytes go out (a close still closes), then it fails
            real(*args)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, full_disk)
    with pytest.raises(OutputError, match="No space left"):
        atomic_save_png(target, Image.new("RGB", (4, 4)))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["out.png"] and target.read_bytes() == b"old"


def test_shared_scale_streams_to_the_same_value_as_the_pooled_percentile():
    from igcli.render import SharedScale, color_scale

    rng = np.random.default_rng(3)
    maps = [rng.standard_cauchy(size=(28, 28)) for _ in range(7)] + [np.zeros((5, 5))]
    scale = SharedScale(99.5)
    for see in (scale.see_peak, scale.see_values):
        for m in maps:
            see(m)
    exact = color_scale(np.concatenate([m.ravel() for m in maps]), 99.5)
    assert abs(scale.value() - exact) <= scale.peak / SharedScale.BINS * 4  # a few bins
    empty = SharedScale(99.5)
    empty.see_peak(np.zeros(4))
    empty.see_values(np.zeros(4))
    assert empty.value() == 1.0


@pytest.mark.parametrize("size", [11, 13, 17, 24, 48])
def test_text_drawn_glyph_by_glyph_matches_pillow(size):
    """A line drawn from cached glyphs is Pillow's own line of text, pixel for pixel (glyphs
    whose boxes overlap, as in 'ffi' and 'rt', too), and as wide."""
    font = render._font(size)
    assert render._glyph_by_glyph(font)
    line = (
        "img_0042.png - target 3 (score -16.4) \u00b7 0.0681% (22.57 of 22.55) jÿ W,A ffi rt// f j"
    )
    ours = Image.new("RGB", (2000, 120), (255, 255, 255))
    pillows = ours.copy()
    render._text(ours, (10, 60), line, font, (20, 30, 40), 1900)
    y = round(60 - render._mid_line(font))
    from PIL import ImageDraw

    line = render._drawable(line, font)  # as _text draws it: 'ÿ' is not in the font
    ImageDraw.Draw(pillows).text((10, y), line, font=font, fill=(20, 30, 40))
    diff = np.abs(_px(ours) - _px(pillows))
    assert diff.max() == 0
    assert render._textlen(font, line) == font.getlength(line)


def test_words_whose_boxes_meet_are_combined_glyph_by_glyph():
    """Words are composed once each and laid side by side; where two words' boxes meet
    across a space, the line is composed glyph by glyph (as Pillow combines them)."""
    cover = np.full((4, 6), 200, dtype=np.uint16)
    apart = [(0, 0, cover), (6, 0, cover)]
    meeting = [(0, 0, cover), (4, 0, cover)]
    assert render._composed(apart, meet=False)[0].shape == (4, 12)
    assert render._composed(meeting, meet=False) is None
    both = render._composed(meeting, meet=True)[0]
    assert both.shape == (4, 10) and both[0, 4] == 200 + 200 - (200 * 200 + 127) // 255


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("xy", [(10, 40), (-30, 3), (150, 76), (-500, 40), (10, 300)])
def test_text_on_pixels_is_pillows_paste_clipped_at_the_edges(xy, plain):
    """The panel's text, drawn into numpy pixels, is what Pillow's paste draws on the same
    picture (a busy background, so the blend's rounding shows; a plain one, which goes by a
    lookup table), also where the line runs off an edge or lies wholly outside."""
    font = render._font(17)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (80, 160, 3), dtype=np.uint8)
    if plain:
        pixels[...] = (90, 200, 17)
    pillows = Image.fromarray(pixels.copy())
    render._text(pixels, xy, "Wide ffi -0.0123 jÿ", font, (200, 30, 90), 1000)
    render._text(pillows, xy, "Wide ffi -0.0123 jÿ", font, (200, 30, 90), 1000)
    np.testing.assert_array_equal(pixels, _px(pillows).astype(np.uint8))


def test_text_on_pixels_falls_back_to_pillow_for_other_fonts():
    bitmap = __import__("PIL.ImageFont", fromlist=["ImageFont"]).load_default_imagefont()
    pixels = np.full((30, 200, 3), 255, dtype=np.uint8)
    render._text(pixels, (5, 15), "fallback", bitmap, (0, 0, 0), 190)
    assert (pixels < 128).any()


def test_panel_pixels_are_the_panel_image():
    """render_image is image_pixels as a PIL image; png_bytes takes the pixels as they are."""
    from igcli.outputs import png_bytes

    rng = np.random.default_rng(0)
    img, attr = rng.uniform(0, 1, (9, 14, 3)), rng.normal(size=(9, 14, 1))
    pixels = render.image_pixels(img, attr, title="t", caption="c")
    image = render.render_image(img, attr, title="t", caption="c")
    np.testing.assert_array_equal(pixels, np.asarray(image))
    assert png_bytes(pixels) == png_bytes(image)
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(pixels.astype(np.float32))


def test_text_falls_back_to_pillow_for_other_fonts():
    bitmap = __import__("PIL.ImageFont", fromlist=["ImageFont"]).load_default_imagefont()
    assert not render._glyph_by_glyph(bitmap)
    im = Image.new("RGB", (200, 30), (255, 255, 255))
    render._text(im, (5, 15), "fallback", bitmap, (0, 0, 0), 190)
    assert (_px(im) < 128).any()


@pytest.mark.parametrize("shape", [(28, 28, 3), (7, 13, 3), (1, 5, 3), (31, 2), (5, 4, 1)])
@pytest.mark.parametrize("k", [2, 3, 8, 17])
def test_upscale_makes_k_by_k_blocks(shape, k):
    """Pillow's NEAREST resize (uint8 grey and RGB) and numpy's repeats give the same pixels."""
    from igcli.render import _upscale

    a = np.random.default_rng(k).integers(0, 255, shape, dtype=np.uint8)
    want = np.repeat(np.repeat(a, k, axis=0), k, axis=1)
    np.testing.assert_array_equal(_upscale(a, k), want)
    np.testing.assert_array_equal(_upscale(a.astype(bool), k), want.astype(bool))


def test_the_colour_scale_is_numpy_s_percentile_to_the_bit():
    from igcli.render import _percentile

    rng = np.random.default_rng(11)
    for n in (1, 2, 3, 784, 50176):
        for percent in (0.1, 50.0, 99.5, 99.9, 100.0):
            for k in range(6):
                values = np.abs(rng.standard_normal(n)) * rng.random()
                if k % 3 == 0:
                    values = np.round(values, 1)  # ties
                assert _percentile(values, percent) == np.percentile(values, percent)


def test_a_thin_strip_is_drawn_no_longer_than_the_longest_tile_side():
    """A 1 x 2000 PNG on a model of open size was scaled up until its short side was 224
    pixels: a heatmap 1,344,200 pixels wide, and a 1 x 8000 one took 24 GB."""
    for h, w in ((1, 2000), (3, 500), (500, 3), (1, 8000)):
        img, attr = np.random.default_rng(0).random((h, w, 3)), np.ones((h, w, 3))
        out = _px(render_image(img, attr, overlay="heatmap"))
        assert max(out.shape[:2]) <= render.MAX_TILE_SIDE
        if max(h, w) <= render.MAX_TILE_SIDE:  # whole pixels, the input's shape
            assert out.shape[0] % h == 0 and out.shape[1] % w == 0
            assert out.shape[0] // h == out.shape[1] // w
        assert max(_px(render_image(img, attr)).shape[:2]) <= 5 * max(render.MAX_TILE_SIDE, w)


def test_a_large_image_is_drawn_shrunk_with_its_attributions_where_they_were():
    """A 9000 x 9000 image's panel held 730 MB of pixels: tiles over MAX_TILE_SIDE are drawn
    shrunk, each pixel the mean of a block, so a hot corner stays in its corner."""
    side = render.MAX_TILE_SIDE * 2 + 10
    img = np.full((side, side, 3), 0.5)
    attr = np.zeros((side, side, 1))
    attr[:100, :100] = 1.0
    out = _px(render_image(img, attr, overlay="heatmap"))
    assert out.shape[:2] == (-(-side // 3),) * 2
    red = out[..., 0].astype(int) - out[..., 2].astype(int)
    assert red[:20, :20].min() > 100 and abs(red[-20:, -20:]).max() < 10
    regions = np.zeros((side, side), bool)
    regions[-50:, -50:] = True
    assert _px(render_image(img, attr, regions=regions)).shape[0] > out.shape[0]


@pytest.mark.parametrize("channels", [2, 4, 5])
def test_images_of_other_channel_counts_are_drawn(channels):
    """A model whose image input has 4 channels: drawing every heatmap failed ('image must
    be (H, W, 1) or (H, W, 3)'), an internal error that stopped the run."""
    img = np.random.default_rng(0).random((16, 16, channels))
    out = _px(render_image(img, np.ones((16, 16, channels))))
    assert out.ndim == 3 and out.shape[2] == 3
    if channels == 4:  # RGB and alpha: the alpha is not drawn
        alone = _px(render_image(img[..., :3], np.ones((16, 16, 3)), overlay="masked",
                                 mask_top_percent=100))  # fmt: skip
        with_alpha = _px(render_image(img, np.ones((16, 16, 4)), overlay="masked",
                                      mask_top_percent=100))  # fmt: skip
        assert np.array_equal(alone, with_alpha)
