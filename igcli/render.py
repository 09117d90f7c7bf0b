"""Turn attributions into PNGs a person wants to look at.

Pure functions from numpy arrays to RGB ``PIL`` images, plus one atomic save helper.

Colours: signed maps use colorcet's CET-D1 (blue - near-white - red). It is perceptually
uniform, so equal steps in attribution look like equal steps in colour, and its two ends are
matched in lightness and chroma, so a negative pixel is exactly as loud as a positive one of the
same size. Magnitude maps use inferno: perceptually uniform, 0 is black, large is bright.
"""

from __future__ import annotations

import functools
import math
import threading
import unicodedata
from dataclasses import dataclass

import numpy as np
from cmap import Colormap
from PIL import Image, ImageDraw, ImageFont

OVERLAYS = ("heatmap", "blend", "masked", "panel")
SIGNS = ("all", "positive", "negative", "absolute")
REDUCTIONS = ("sum", "maxabs")

DIVERGING = "colorcet:cet_d1"
SEQUENTIAL = "bids:inferno"
# Odd, so that attribution 0 falls exactly on the middle (near-white) entry of the diverging map.
_LUT_SIZE = 511

_BLEND_DIM = 0.5  # brightness kept of the grayscale input under a blend, so colours stand out
_BLEND_ALPHA = 0.85  # opacity of the heat colour at |value| >= vmax; a trace of input shows through
_MASK_DIM = 0.15  # brightness kept outside the top pixels in 'masked'
# A tile's longest side: small inputs are scaled up only as far as this (a 1 x 2000 strip
# was drawn 1,344,200 pixels wide, and a 1 x 8000 one took 24 GB), and larger inputs are
# drawn shrunk to it (a 9000 x 9000 image's panel held 730 MB of pixels).
MAX_TILE_SIDE = 2048

_WHITE = (255, 255, 255)
_INK = (34, 34, 34)
_MUTED = (105, 105, 105)
_RULE = (200, 200, 200)
_STRIPE = (246, 246, 246)

_SIGN_LEGEND = {
    "all": ("red: raises the score", "blue: lowers the score"),
    "positive": ("bright: raises the score", "(positive part only)"),
    "negative": ("bright: lowers the score", "(negative part only)"),
    "absolute": ("bright: large |attribution|", "(either direction)"),
}
_SIGN_LABEL = {
    "all": "attribution",
    "positive": "attribution (positive)",
    "negative": "attribution (negative)",
    "absolute": "|attribution|",
}
# ASCII stand-ins for common characters the bundled font cannot draw (it would draw a box).
_ASCII = {"\u2014": "-", "\u2013": "-", "\u2212": "-", "\u2192": "->", "\u2190": "<-"}
_ASCII |= {"\u2265": ">=", "\u2264": "<=", "\u00d7": "x", "\u2248": "~", "\u00b5": "u"}


def attribution_map(attr_hwc: np.ndarray, reduce: str = "sum") -> np.ndarray:
    """(H, W, C) attributions -> (H, W) map, since one colour per pixel needs one number.

    'sum' (default) is the signed sum over channels, which keeps IG's completeness: the map
    still adds up to the score difference. 'maxabs' keeps the signed channel value with the
    largest magnitude, so one strong channel is not cancelled by the others. An (H, W) input
    is returned as float unchanged.
    """
    a = np.asarray(attr_hwc, dtype=np.float64)
    if a.ndim == 2:
        return a.copy()
    if a.ndim != 3:
        raise ValueError(f"attributions must be (H, W, C), got shape {a.shape}")
    if reduce == "sum":
        return a.sum(axis=2)
    if reduce == "maxabs":
        idx = np.argmax(np.abs(a), axis=2)[..., None]
        return np.take_along_axis(a, idx, axis=2)[..., 0]
    raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")


def select_sign(m: np.ndarray, sign: str) -> np.ndarray:
    """Pick what to show: 'all' keeps the sign, the others give a magnitude (>= 0).

    'positive' is max(m, 0); 'negative' is max(-m, 0), so evidence against the target is shown
    as a magnitude on the same bright-is-more scale; 'absolute' is |m|.
    """
    m = np.asarray(m, dtype=np.float64)
    if sign == "all":
        return m.copy()
    if sign == "positive":
        return np.maximum(m, 0.0)
    if sign == "negative":
        return np.maximum(-m, 0.0)
    if sign == "absolute":
        return np.abs(m)
    raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")


def color_scale(m: np.ndarray, clip_percentile: float = 99.5) -> float:
    """The value mapped to full colour: the clip_percentile-th percentile of |m|.

    A percentile rather than the maximum, so one outlier pixel does not wash out the map.
    Always > 0: falls back to max|m|, then 1.0 (all-zero map). Non-finite values are ignored.
    For a scale shared across a run, call it on all the maps concatenated.
    """
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    mag = np.abs(np.asarray(m, dtype=np.float64)).ravel()
    mag = mag[np.isfinite(mag)]
    if mag.size == 0:
        return 1.0
    for v in (_percentile(mag, clip_percentile), mag.max()):
        if v > 0:
            return float(v)
    return 1.0


def _percentile(values: np.ndarray, percent: float) -> float:
    """np.percentile(values, percent) to the bit (its linear method: the same index, the same
    interpolation), from a partition at the two neighbours: 8 us for a digit's map, 75 by
    np.percentile, whose general machinery is most of its time at this size."""
    q = percent / 100
    virtual = (values.size - 1) * q
    lo = math.floor(virtual)
    hi = min(lo + 1, values.size - 1)
    part = np.partition(values, [lo, hi])
    a, b = float(part[lo]), float(part[hi])
    t = virtual - lo
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


class SharedScale:
    """`color_scale` over many maps without holding them in memory: a first pass finds the
    largest |m|, a second fills a histogram below it, and the percentile is read off that
    (within max/65536 of the exact value, invisible in a colour scale)."""

    BINS = 1 << 16

    def __init__(self, clip_percentile: float = 99.5) -> None:
        if not 0 < clip_percentile <= 100:
            raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
        self.clip_percentile = clip_percentile
        self.peak = 0.0
        self.counts = np.zeros(self.BINS, dtype=np.int64)

    @staticmethod
    def _magnitudes(m: np.ndarray) -> np.ndarray:
        mag = np.abs(np.asarray(m, dtype=np.float64)).ravel()
        return mag[np.isfinite(mag)]

    def see_peak(self, m: np.ndarray) -> None:
        """First pass."""
        mag = self._magnitudes(m)
        if mag.size:
            self.peak = max(self.peak, float(mag.max()))

    def see_values(self, m: np.ndarray) -> None:
        """Second pass."""
        if self.peak <= 0:
            return
        mag = self._magnitudes(m)
        idx = np.minimum((mag / self.peak * self.BINS).astype(np.int64), self.BINS - 1)
        self.counts += np.bincount(idx, minlength=self.BINS)

    def value(self) -> float:
        total = int(self.counts.sum())
        if self.peak <= 0 or total == 0:
            return 1.0
        rank = np.searchsorted(np.cumsum(self.counts), self.clip_percentile / 100 * total)
        v = (min(int(rank), self.BINS - 1) + 1) / self.BINS * self.peak
        return float(v) if v > 0 else self.peak


def render_image(image_hwc: np.ndarray, attr_hwc: np.ndarray, **options) -> Image.Image:
    """`image_pixels` as a PIL image (options: see there)."""
    return Image.fromarray(image_pixels(image_hwc, attr_hwc, **options), mode="RGB")


def image_pixels(
    image_hwc: np.ndarray,
    attr_hwc: np.ndarray,
    *,
    overlay: str = "panel",
    sign: str = "all",
    clip_percentile: float = 99.5,
    vmax: float | None = None,
    reduce: str = "sum",
    mask_top_percent: float = 10.0,
    title: str | None = None,
    caption: str | None = None,
    min_size: int = 224,
    regions: np.ndarray | None = None,
    regions_label: str = "top regions",
) -> np.ndarray:
    """Draw attributions for one image input: RGB pixels, (H, W, 3) uint8.

    image_hwc: the input as a person sees it, floats in [0, 1], (H, W, 1) or (H, W, 3).
    attr_hwc: attributions with the same H, W and any number of channels.
    vmax: the value drawn at full colour; pass one for a scale shared across a run, else
    ``color_scale`` of this image's map is used.

    'heatmap', 'blend' and 'masked' return the input's size, scaled up by an integer factor for
    small inputs: NEAREST, by the factor that brings the shorter side closest to min_size
    (28x28 -> 224x224 by default); inputs about min_size or larger keep their size. 'panel'
    shows input | heatmap | blend at that tile size with a colorbar, title and caption; the
    single modes carry no text, so their pixels line up with the input's. `regions`, an
    (H, W) boolean mask (XRAI's top regions), adds a fourth panel tile: the input with
    everything outside the regions dimmed and their outline drawn.
    """
    if overlay not in OVERLAYS:
        raise ValueError(f"overlay must be one of {OVERLAYS}, got {overlay!r}")
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")
    if vmax is not None and not (math.isfinite(vmax) and vmax > 0):
        raise ValueError(f"vmax must be a finite number > 0, got {vmax}")
    if not 0 < mask_top_percent <= 100:
        raise ValueError(f"mask_top_percent must be in (0, 100], got {mask_top_percent}")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    img = _to_rgb_u8(image_hwc)
    m = select_sign(attribution_map(attr_hwc, reduce), sign)
    if m.shape != img.shape[:2]:
        raise ValueError(
            f"attributions are {m.shape[0]}x{m.shape[1]} (H x W), image is "
            f"{img.shape[0]}x{img.shape[1]}"
        )
    m = np.nan_to_num(m, nan=0.0)
    shrink = -(-max(img.shape[:2]) // MAX_TILE_SIDE)
    if shrink > 1:  # drawn smaller: each tile pixel the mean of a shrink x shrink block
        img, m = _shrunk(img, shrink), _shrunk(m, shrink)
        if regions is not None:
            regions = _shrunk(np.asarray(regions, np.float32), shrink) >= 0.5
    scale = float(vmax) if vmax is not None else color_scale(m, clip_percentile)
    signed = sign == "all"
    k = _scale_factor(*img.shape[:2], min_size)

    if overlay == "heatmap":
        out = _colorize(m, scale, signed)
    elif overlay == "blend":
        out = _blend(img, m, scale, signed)
    elif overlay == "masked":
        keep = _top_pixels(np.abs(m), mask_top_percent)[..., None]
        out = np.where(keep, img, np.rint(img * _MASK_DIM).astype(np.uint8))
    else:
        tiles = [img, _colorize(m, scale, signed), _blend(img, m, scale, signed)]
        labels = ["input", _SIGN_LABEL[sign], "overlay"]
        if regions is not None:
            if regions.shape != img.shape[:2]:
                raise ValueError(f"regions are {regions.shape}, the image {img.shape[:2]}")
            tiles.append(_region_tile(img, np.asarray(regions, dtype=bool), k))
            labels.append(regions_label)
        return _panel(tiles, k, scale=scale, sign=sign, title=title, caption=caption,
                      labels=labels)  # fmt: skip
    return _upscale(out, k)


def render_bars(
    names: list[str],
    attributions: np.ndarray,
    values: np.ndarray | None = None,
    *,
    top_k: int = 15,
    title: str | None = None,
    caption: str | None = None,
) -> Image.Image:
    """Horizontal bar chart of the top_k features by |attribution|, for tabular inputs.

    Largest at top, zero axis in the middle, positive bars red and negative blue (the ends of
    the diverging map, so images and tables read alike). Rows read "name = value" when values
    are given; the attribution is printed at each bar's end; a note counts the features cut.
    """
    a = np.asarray(attributions, dtype=np.float64).ravel()
    if len(names) != a.size:
        raise ValueError(f"{len(names)} names but {a.size} attributions")
    vals = None if values is None else np.asarray(values).ravel()
    if vals is not None and vals.size != a.size:
        raise ValueError(f"{vals.size} values but {a.size} attributions")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")

    mag = np.nan_to_num(np.abs(a), nan=-1.0)
    order = np.argsort(-mag, kind="stable")[:top_k]
    shown = np.nan_to_num(a[order], nan=0.0)
    amax = float(np.max(np.abs(shown), initial=0.0)) or 1.0
    lut = _lut(DIVERGING)
    pos, neg = tuple(int(c) for c in lut[-1]), tuple(int(c) for c in lut[0])

    width, margin, fs = 900, 24, 16
    font, small, big = _font(fs), _font(fs - 2), _font(fs + 4)
    row_h = round(fs * 1.75)
    label_right = margin + 330
    ax0, ax1 = label_right + 18, width - margin
    cx = (ax0 + ax1) // 2
    ends = [_fmt_signed(v, 3) for v in shown]
    reserve = max((_textlen(small, s) for s in ends), default=0) + 8
    half = max(20, (ax1 - ax0) // 2 - reserve)

    title_h = round((fs + 4) * 1.6) if title else 0
    head_h = round(fs * 1.5)
    more = a.size - order.size
    note_h = round(fs * 1.6) if more else 0
    cap_h = round(fs * 1.6) if caption else 0
    rows_h = max(1, order.size) * row_h
    height = margin + title_h + head_h + rows_h + note_h + cap_h + margin // 2 + 4

    im = Image.new("RGB", (width, height), _WHITE)
    d = ImageDraw.Draw(im)
    y = margin
    if title:
        _text(im, (margin, y + title_h // 2 - 4), title, big, _INK, width - 2 * margin)
        y += title_h
    _text(im, (cx - 10, y + head_h // 2), "lowers the score", small, neg, half, align="right")
    _text(im, (cx + 10, y + head_h // 2), "raises the score", small, pos, half)
    y += head_h
    top = y
    for i, (j, v) in enumerate(zip(order, shown, strict=True)):
        y0 = top + i * row_h
        cy = y0 + row_h // 2
        if i % 2 == 0:
            d.rectangle((margin, y0, width - margin, y0 + row_h - 1), fill=_STRIPE)
        label = str(names[j]) if vals is None else f"{names[j]} = {_fmt_value(vals[j])}"
        _text(im, (label_right, cy), label, font, _INK, label_right - margin, align="right")
        length = round(abs(v) / amax * half)
        bh = round(row_h * 0.32)
        if v >= 0:
            if length:
                d.rectangle((cx, cy - bh, cx + length, cy + bh), fill=pos)
            _text(im, (cx + length + 5, cy), ends[i], small, _INK, reserve)
        else:
            d.rectangle((cx - length, cy - bh, cx, cy + bh), fill=neg)
            _text(im, (cx - length - 5, cy), ends[i], small, _INK, reserve, align="right")
    if order.size == 0:
        _text(im, (cx, top + row_h // 2), "no features", font, _MUTED, half, align="center")
    y = top + rows_h
    d.line((cx, top - 2, cx, y + 1), fill=_MUTED, width=1)
    if more:
        rest = float(np.nansum(a[np.argsort(-mag, kind="stable")[top_k:]]))
        note = f"+{more} more feature{'s' if more > 1 else ''} (together {_fmt_signed(rest, 3)})"
        _text(
            im,
            (label_right, y + note_h // 2),
            note,
            small,
            _MUTED,
            label_right - margin,
            align="right",
        )
        y += note_h
    if caption:
        _text(im, (margin, y + cap_h // 2), caption, small, _MUTED, width - 2 * margin)
    return im


def token_colors(
    values: np.ndarray, *, sign: str = "all", vmax: float | None = None
) -> tuple[list[tuple[int, int, int]], float]:
    """Background colour of each token (the heatmaps' colours) and the scale used: signed
    values on the diverging map over [-vmax, vmax], magnitudes on inferno over [0, vmax].
    vmax defaults to the largest |value| (a sentence has few tokens: no percentile clip)."""
    m = np.nan_to_num(select_sign(np.asarray(values, dtype=np.float64).ravel(), sign), nan=0.0)
    scale = float(vmax) if vmax else float(np.max(np.abs(m), initial=0.0)) or 1.0
    rgb = _colorize(m, scale, sign == "all")
    return [tuple(int(c) for c in row) for row in rgb], scale


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def ink_for(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Dark text on light backgrounds, white on dark ones (ITU-R 601 luma)."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return _INK if luma > 140 else _WHITE


def render_tokens(
    tokens: list[str],
    values: np.ndarray,
    *,
    sign: str = "all",
    vmax: float | None = None,
    title: str | None = None,
    caption: str | None = None,
    width: int = 900,
) -> Image.Image:
    """Tokens coloured by their attribution, in reading order, wrapped to `width`, each with
    its value beneath it; a colorbar and the legend under them (red raises the score, blue
    lowers it, as in the heatmaps)."""
    vals = np.asarray(values, dtype=np.float64).ravel()
    if len(tokens) != vals.size:
        raise ValueError(f"{len(tokens)} tokens but {vals.size} values")
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")
    colors, scale = token_colors(vals, sign=sign, vmax=vmax)
    signed = sign == "all"
    fs, margin, gap = 20, 24, 6
    font, small, big = _font(fs), _font(fs - 6), _font(fs)
    pad_x, box_h, value_h = 7, round(fs * 1.6), round(fs * 0.95)
    line_h = box_h + value_h + gap
    boxes = []  # (x, line, box width, token text, value text)
    x, line = margin, 0
    for tok, v in zip(tokens, vals, strict=True):
        text = _fit(_drawable(str(tok), font), font, width - 2 * margin - 2 * pad_x)
        label = _fmt_signed(float(v), 2) if signed else f"{float(v):.2g}"
        w = max(_textlen(font, text), _textlen(small, label)) + 2 * pad_x
        if x + w > width - margin and x > margin:
            x, line = margin, line + 1
        boxes.append((x, line, w, text, label))
        x += w + gap
    title_h = round(fs * 1.7) if title else 0
    rows_h = (line + 1) * line_h if boxes else line_h
    bar_h, below_h = 12, round(fs * 2.6)
    cap_h = round(fs * 1.5) if caption else 0
    height = margin + title_h + rows_h + gap + below_h + cap_h + margin // 2
    im = Image.new("RGB", (width, height), _WHITE)
    d = ImageDraw.Draw(im)
    y = margin
    if title:
        _text(im, (margin, y + title_h // 2 - 4), title, big, _INK, width - 2 * margin)
        y += title_h
    for (bx, bl, w, text, label), col in zip(boxes, colors, strict=True):
        by = y + bl * line_h
        d.rectangle((bx, by, bx + w, by + box_h), fill=col, outline=_RULE)
        _text(im, (bx + w / 2, by + box_h / 2), text, font, ink_for(col), w, align="center")
        _text(im, (bx + w / 2, by + box_h + value_h / 2 + 1), label, small, _MUTED, w,
              align="center")  # fmt: skip
    if not boxes:
        _text(im, (margin, y + line_h // 2), "no tokens", font, _MUTED, width - 2 * margin)
    y += rows_h + gap
    x0, x1 = margin, margin + (width - 2 * margin) // 2
    _colorbar(im, d, (x0, x1, y, bar_h), scale, signed, small, fs * 0.4, x1 - x0)
    first, second = _SIGN_LEGEND[sign]
    legend = (_lut(DIVERGING)[-1], _lut(DIVERGING)[0]) if signed else (_INK, _MUTED)
    for i, (text, col) in enumerate(zip((first, second), legend, strict=True)):
        cy = y + round(bar_h / 2) + i * round(fs * 1.1)
        _text(im, (x1 + 24, cy), text, small, tuple(int(c) for c in col), width - x1 - 24 - margin)
    y += below_h
    if caption:
        _text(im, (margin, y + cap_h // 2), caption, small, _MUTED, width - 2 * margin)
    return im


# ---------------------------------------------------------------- pixels


@functools.cache
def _lut(name: str) -> np.ndarray:
    """(_LUT_SIZE, 3) uint8 colours of a cmap colormap, computed once."""
    rgba = np.asarray(Colormap(name).lut(_LUT_SIZE))
    return np.rint(rgba[:, :3] * 255).astype(np.uint8)


def _colorize(m: np.ndarray, vmax: float, signed: bool) -> np.ndarray:
    """Map values to colours: [-vmax, vmax] diverging if signed, else [0, vmax] sequential."""
    t = np.nan_to_num(np.asarray(m, dtype=np.float64) / vmax, nan=0.0, posinf=1.0, neginf=-1.0)
    t = (np.clip(t, -1.0, 1.0) + 1.0) / 2.0 if signed else np.clip(t, 0.0, 1.0)
    idx = np.rint(t * (_LUT_SIZE - 1)).astype(np.intp)
    return _lut(DIVERGING if signed else SEQUENTIAL)[idx]


def _blend(img: np.ndarray, m: np.ndarray, vmax: float, signed: bool) -> np.ndarray:
    """Heat colours over a dimmed grayscale input, opacity proportional to |value| / vmax."""
    gray = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as PIL's L
    base = (gray * _BLEND_DIM)[..., None]
    alpha = (np.clip(np.abs(m) / vmax, 0.0, 1.0) * _BLEND_ALPHA)[..., None]
    out = base * (1.0 - alpha) + _colorize(m, vmax, signed) * alpha
    return np.rint(out).astype(np.uint8)


def _top_pixels(mag: np.ndarray, percent: float) -> np.ndarray:
    """Boolean mask of the ceil(percent% of pixels) largest magnitudes, never a zero pixel."""
    flat = mag.ravel()
    k = math.ceil(flat.size * percent / 100)
    keep = np.zeros(flat.size, dtype=bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True
    return (keep & (flat > 0)).reshape(mag.shape)


def _to_rgb_u8(image_hwc: np.ndarray) -> np.ndarray:
    """[0, 1] floats, (H, W) or (H, W, C) -> (H, W, 3) uint8: 3 channels as RGB, 4 as RGB
    and alpha (not drawn), 1 or 2 as gray (and alpha), others as the mean of the channels."""
    img = np.asarray(image_hwc, dtype=np.float64)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] < 1:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")
    channels = img.shape[2]
    if channels == 4:
        img = img[..., :3]
    elif channels == 2:
        img = img[..., :1]
    elif channels != 3:
        img = img.mean(axis=2, keepdims=True)
    img = np.clip(np.nan_to_num(img, nan=0.0), 0.0, 1.0)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.rint(img * 255).astype(np.uint8)


def _scale_factor(h: int, w: int, min_size: int) -> int:
    """Integer factor bringing the shorter side closest to min_size, with the longer side
    at most MAX_TILE_SIDE; 1 for large inputs."""
    return max(1, min(round(min_size / min(h, w)), MAX_TILE_SIDE // max(h, w)))


def _shrunk(a: np.ndarray, r: int) -> np.ndarray:
    """(H, W) floats or (H, W, 3) uint8 to ceil(H / r) x ceil(W / r), each pixel the mean of
    an r x r block (Pillow's reduce: no float64 copy of a 9000 x 9000 image)."""
    if a.ndim == 3:
        return np.asarray(Image.fromarray(a).reduce(r))
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").reduce(r), np.float64)


def _upscale(a: np.ndarray, k: int) -> np.ndarray:
    """NEAREST upscaling by an integer factor: each pixel becomes a k x k block. Pillow's
    NEAREST resize by a whole factor gives the same pixels, in half the time of two repeats
    (a 28x28 tile: 69 against 128 us)."""
    if k == 1:
        return a
    h, w = a.shape[:2]
    if a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        image = Image.fromarray(a)
        return np.asarray(image.resize((w * k, h * k), Image.Resampling.NEAREST))
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1)


# ---------------------------------------------------------------- layout


def _region_tile(img: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """The input, dimmed outside `mask`, with the mask's outline in the diverging map's red."""
    inside = _upscale(mask.astype(np.uint8), k).astype(bool)
    tile = _upscale(img, k)
    out = np.where(inside[..., None], tile, np.rint(tile * _MASK_DIM).astype(np.uint8))
    edge = np.zeros_like(inside)
    edge[:-1] |= inside[:-1] != inside[1:]
    edge[1:] |= inside[:-1] != inside[1:]
    edge[:, :-1] |= inside[:, :-1] != inside[:, 1:]
    edge[:, 1:] |= inside[:, :-1] != inside[:, 1:]
    out[edge & inside] = _lut(DIVERGING)[-1]
    return out


def _panel(
    tiles: list[np.ndarray],
    k: int,
    *,
    scale: float,
    sign: str,
    title: str | None,
    caption: str | None,
    labels: list[str] | None = None,
) -> np.ndarray:
    """input | heatmap | blend (| regions) side by side, each tile at the input's size (the
    regions tile already scaled up), a colorbar under the heatmap and blend, title, caption.
    The frame (labels, legend, ramp, outlines) is drawn once per layout
    and copied: a batch of same-sized inputs draws only the tiles, each scaled up by k as it
    is put in place, and the changing text. All in numpy: a digits panel took 2.5 ms through
    Pillow's images (each converted to and from numpy) and takes about 1 here."""
    th, tw = tiles[0].shape[0] * k, tiles[0].shape[1] * k
    labels = tuple(labels or ["input", _SIGN_LABEL[sign], "overlay"])
    frame, lay = _panel_frame(th, tw, len(tiles), sign, bool(title), bool(caption), labels)
    im = frame.copy()
    for x, tile in zip(lay.xs, tiles, strict=True):  # (a regions tile comes scaled up)
        _put_upscaled(im, tile, x, lay.tiles_y, th // tile.shape[0])
    small, big = _font(lay.small), _font(lay.big)
    if title:
        _text(im, (lay.margin, lay.title_y), title, big, _INK, im.shape[1] - 2 * lay.margin)
    _colorbar_values(im, lay.bar, scale, sign == "all", small, lay.fs * 0.6, tw)
    if caption:
        width = im.shape[1] - 2 * lay.margin
        _text(im, (lay.margin, lay.caption_y), caption, small, _MUTED, width)
    return im


def _put_upscaled(im: np.ndarray, tile: np.ndarray, x: int, y: int, k: int) -> None:
    """tile, each pixel a k x k block, into im at (x, y): its rows widened once, then each
    copied k times (72 us for a digit's tile; a broadcast of every pixel into its block moves
    3 bytes at a time, 840 us)."""
    h, w = tile.shape[:2]
    block = im[y : y + h * k, x : x + w * k]
    rows = np.repeat(tile, k, axis=1)
    block.reshape(h, k, *rows.shape[1:])[...] = rows[:, None]


@dataclass(frozen=True)
class _PanelLayout:
    """Where _panel draws the parts that change from one image to the next."""

    fs: int
    small: int
    big: int
    margin: int
    xs: tuple[int, ...]
    tiles_y: int
    title_y: float
    bar: tuple[int, int, int, int]
    caption_y: float


@functools.lru_cache(maxsize=8)
def _panel_frame(
    th: int, tw: int, n: int, sign: str, title: bool, caption: bool, labels: tuple[str, ...]
) -> tuple[np.ndarray, _PanelLayout]:
    """The parts of a panel that depend on its layout alone (read-only pixels), and where the
    rest goes."""
    fs = int(np.clip(round(0.075 * math.sqrt(th * tw)), 13, 48))
    small_size, big_size = max(11, fs - 2), round(fs * 1.25)
    small = _font(small_size)
    margin, gap = fs + 4, max(8, fs)
    width = 2 * margin + n * tw + (n - 1) * gap
    xs = tuple(margin + i * (tw + gap) for i in range(n))
    title_h = round(fs * 1.25 * 1.7) if title else 0
    label_h = round(fs * 1.5)
    bar_h = max(10, round(fs * 0.75))
    below_h = round(bar_h + 6 + fs * 1.9)  # colorbar, tick labels; the legend fits beside them
    cap_h = round(fs * 1.7) if caption else 0
    height = margin + title_h + label_h + th + gap + below_h + cap_h + margin // 2

    im = Image.new("RGB", (width, height), _WHITE)
    d = ImageDraw.Draw(im)
    title_y = margin + title_h // 2 - fs // 4
    y = margin + title_h
    for x, label in zip(xs, labels, strict=True):
        _text(im, (x + tw // 2, y + label_h // 2), label, small, _MUTED, tw, align="center")
        d.rectangle((x - 1, y + label_h - 1, x + tw, y + label_h + th), outline=_RULE)
    tiles_y = y + label_h
    y += label_h + th + gap

    # Colorbar spanning the heatmap and overlay tiles, which share its scale.
    signed = sign == "all"
    bar = (xs[1], xs[2] + tw - 1, y, bar_h)
    _colorbar_ramp(im, d, bar, signed)

    first, second = _SIGN_LEGEND[sign]
    colors = (_lut(DIVERGING)[-1], _lut(DIVERGING)[0]) if signed else (_INK, _MUTED)
    for i, (line, col) in enumerate(zip((first, second), colors, strict=True)):
        cy = y + round(bar_h / 2) + i * round(fs * 1.4)
        _text(im, (xs[0], cy), line, small, tuple(int(c) for c in col), tw)
    caption_y = y + below_h + cap_h // 2
    layout = _PanelLayout(fs, small_size, big_size, margin, xs, tiles_y, title_y, bar, caption_y)
    pixels = np.asarray(im)
    pixels.flags.writeable = False
    return pixels, layout


def _colorbar(im, d, box, scale: float, signed: bool, font, label_dy: float, label_w) -> None:
    """The colour ramp from -scale (or 0) to scale in box (x0, x1, y, height), outlined, with
    three ticks and their values under it (`label_dy` below the tick, `label_w` wide)."""
    _colorbar_ramp(im, d, box, signed)
    _colorbar_values(im, box, scale, signed, font, label_dy, label_w)


def _colorbar_ramp(im, d, box, signed: bool) -> None:
    """The ramp, its outline and tick marks: the same for every scale."""
    x0, x1, y, bar_h = box
    ramp = np.linspace(-1.0 if signed else 0.0, 1.0, x1 - x0 + 1)[None, :].repeat(bar_h, axis=0)
    im.paste(Image.fromarray(_colorize(ramp, 1.0, signed), mode="RGB"), (x0, y))
    d.rectangle((x0 - 1, y - 1, x1 + 1, y + bar_h), outline=_RULE)
    for i in range(3):
        tx = x0 + round(i * (x1 - x0) / 2)
        d.line((tx, y + bar_h, tx, y + bar_h + 4), fill=_MUTED)


def _colorbar_values(im, box, scale: float, signed: bool, font, label_dy: float, label_w) -> None:
    """The three tick values under a ramp drawn by _colorbar_ramp."""
    x0, x1, y, bar_h = box
    ticks = [-scale, 0.0, scale] if signed else [0.0, scale / 2, scale]
    for i, v in enumerate(ticks):
        tx = x0 + round(i * (x1 - x0) / 2)
        text = "0" if v == 0 else (_fmt_signed(v, 3) if signed else f"{v:.3g}")
        align = ("left", "center", "right")[i]
        _text(im, (tx, y + bar_h + 6 + label_dy), text, font, _INK, label_w, align=align)


_fonts = threading.local()  # FreeType faces are not safe to share between threads


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font (Pillow >= 10.1); the fixed bitmap font before that.
    Loaded once per size and thread (loading decodes the bundled font)."""
    loaded = _fonts.__dict__.setdefault("by_size", {})
    if size not in loaded:
        try:
            loaded[size] = ImageFont.load_default(size=size)
        except (TypeError, OSError, ImportError, ValueError):
            loaded[size] = ImageFont.load_default()
    return loaded[size]


def _text(
    im: Image.Image | np.ndarray,
    xy: tuple[float, float],
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    fill: tuple[int, ...],
    max_width: float,
    align: str = "left",
) -> None:
    """One line of text vertically centred on xy[1], anchored left/center/right at xy[0].

    Characters the font lacks are transliterated and the line is shortened with an ellipsis
    to fit max_width, so a long file name never spills over the image. `im`: a PIL image, or
    RGB pixels (H, W, 3) uint8 drawn on in place.
    """
    text = _fit(_drawable(text, font), font, max_width)
    w = _textlen(font, text)
    x = round(xy[0] - {"left": 0, "center": w / 2, "right": w}[align])
    y = round(xy[1] - _mid_line(font))
    if not _glyph_by_glyph(font):
        picture = Image.fromarray(im) if isinstance(im, np.ndarray) else im
        ImageDraw.Draw(picture).text((x, y), text, font=font, fill=fill)
        if picture is not im:
            im[...] = np.asarray(picture)
        return
    line = _line_mask(font, text)
    if line is None:
        return
    mask, dx, dy = line
    if isinstance(im, np.ndarray):
        _fill_through(im, mask, x + dx, y + dy, fill)
    else:
        im.paste(fill, (x + dx, y + dy), Image.fromarray(mask, mode="L"))


def _fill_through(im: np.ndarray, mask: np.ndarray, x: int, y: int, fill: tuple[int, ...]) -> None:
    """Colour `fill` into im through a coverage mask whose top left is at (x, y), as Pillow's
    paste(fill, box, mask) does it, rounding included: (in * (255 - m) + fill * m) / 255.
    What falls outside im is left out."""
    h, w = mask.shape
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + h, im.shape[0]), min(x + w, im.shape[1])
    if bottom <= top or right <= left:
        return
    region = im[top:bottom, left:right]
    cut = mask[top - y : bottom - y, left - x : right - x]
    ground = region[0, 0]
    if _plain(region, ground):  # text on a plain ground (every panel's text): a lookup
        table = _blend_table(tuple(int(c) for c in ground), tuple(int(c) for c in fill[:3]))
        np.take(table, cut, axis=0, out=region, mode="clip")
        return
    m = cut[..., None].astype(np.uint16)
    v = region * (255 - m)  # uint16 holds it all: the sum is at most 255 * 255 + 128
    v += np.asarray(fill[:3], dtype=np.uint16) * m
    v += 128
    v += v >> 8
    region[...] = v >> 8


def _plain(region: np.ndarray, ground: np.ndarray) -> bool:
    """Whether every pixel of region is `ground`. A grey ground (white: every panel's text)
    is one min and one max over the bytes, 0.01 ms for a caption's box, where comparing
    pixels to a colour took 0.3."""
    if (ground == ground[0]).all():
        return bool(region.min() == region.max() == ground[0])
    return bool((region == ground).all())


@functools.lru_cache(maxsize=64)
def _blend_table(ground: tuple[int, ...], fill: tuple[int, ...]) -> np.ndarray:
    """[256, channels]: what _fill_through makes of `ground` under each coverage value, so
    that text on a plain ground is one lookup per pixel (0.07 ms for a caption, 0.5 by the
    arithmetic)."""
    m = np.arange(256, dtype=np.uint16)[:, None]
    v = np.asarray(ground, dtype=np.uint16) * (255 - m) + np.asarray(fill, dtype=np.uint16) * m
    v += 128
    v += v >> 8
    return (v >> 8).astype(np.uint8)


def _line_mask(font: ImageFont.FreeTypeFont, text: str) -> tuple[np.ndarray, int, int] | None:
    """A line's coverage mask and its offset from the pen, from glyphs rasterised once each:
    glyph i sits at the sum of the advances before it, and where two glyphs' boxes meet their
    coverages combine as Pillow combines them (a over b: a + b - ab), so the pixels are
    Pillow's own. One paste per line: a paste per glyph released and took back the GIL each
    time, which on a busy run (model calls and a second writer) cost 19 us a glyph, not 2.
    Words are composed once each (a caption's words recur from panel to panel: a third of
    the time per line), and laid side by side where no two words' boxes meet."""
    words, pen = [], 0
    space = _glyph(font, " ")[3]
    for k, word in enumerate(text.split(" ")):
        pen += space if k else 0
        if word:
            cover, dx, dy, advance = _word(font, word)
            if cover is not None:
                words.append((pen + dx, dy, cover))
            pen += advance
    line = _composed(words, meet=False) or _composed(_glyphs(font, text), meet=True)
    if line is None:
        return None
    out, left, top = line
    return out.astype(np.uint8), left, top


@functools.lru_cache(maxsize=4096)
def _word(font: ImageFont.FreeTypeFont, word: str) -> tuple[np.ndarray | None, int, int, int]:
    """A word's coverage (as _glyph's), its offset from the pen and its advance."""
    line = _composed(_glyphs(font, word), meet=True)
    advance = _advance(font, word)
    return (None, 0, 0, advance) if line is None else (*line, advance)


def _glyphs(font: ImageFont.FreeTypeFont, text: str) -> list[tuple[int, int, np.ndarray]]:
    """(x, y, coverage) of each drawn glyph of a line, x from the pen."""
    placed, pen = [], 0
    for ch in text:
        cover, dx, dy, advance = _glyph(font, ch)
        if cover is not None:
            placed.append((pen + dx, dy, cover))
        pen += advance
    return placed


def _composed(
    placed: list[tuple[int, int, np.ndarray]], meet: bool
) -> tuple[np.ndarray, int, int] | None:
    """Coverages laid left to right into one uint16 mask, and its offset: where boxes meet,
    combined a over b if `meet`, else None (as for nothing placed)."""
    if not placed:
        return None
    left = min(p[0] for p in placed)
    top = min(p[1] for p in placed)
    right = max(p[0] + p[2].shape[1] for p in placed)
    bottom = max(p[1] + p[2].shape[0] for p in placed)
    out = np.zeros((bottom - top, right - left), dtype=np.uint16)
    reached = left  # boxes go left to right: one starting at or past this meets no other
    for gx, gy, cover in placed:
        h, w = cover.shape
        region = out[gy - top : gy - top + h, gx - left : gx - left + w]
        if gx >= reached:
            region[...] = cover
        elif meet:
            region += cover - (region * cover + 127) // 255
        else:
            return None
        reached = max(reached, gx + w)
    return out, left, top


@functools.lru_cache(maxsize=16)
def _glyph_by_glyph(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> bool:
    """Whether a line can be drawn from its glyphs, each rasterised once (a digits panel's
    five lines: 0.3 ms instead of 1.8, where Pillow lays out and rasterises every string
    anew): a FreeType font with basic layout, whole-pixel advances and no kerning, where
    Pillow itself places each glyph at the sum of the advances before it."""
    if not isinstance(font, ImageFont.FreeTypeFont) or font.layout_engine != ImageFont.Layout.BASIC:
        return False
    probe = "AVTo.Wa,LTYoP.r,f1%0"
    if any(font.getlength(ch) != int(font.getlength(ch)) for ch in probe):
        return False
    return all(
        font.getlength(a + b) == font.getlength(a) + font.getlength(b)
        for a, b in zip(probe, probe[1:], strict=False)
    )


@functools.lru_cache(maxsize=4096)
def _glyph(font: ImageFont.FreeTypeFont, ch: str) -> tuple[np.ndarray | None, int, int, int]:
    """One character's coverage (0..255, as uint16 for combining), its offset from the pen
    and its advance."""
    mask, (dx, dy) = font.getmask2(ch, "L")
    w, h = mask.size
    cover = np.frombuffer(bytes(mask), dtype=np.uint8).reshape(h, w).astype(np.uint16)
    return (cover if w and h else None), dx, dy, int(font.getlength(ch))


@functools.lru_cache(maxsize=16)
def _mid_line(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> float:
    """The height of the middle of a line of text, from its top: the same for every string."""
    _, top, _, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "0Ag", font=font)
    return (top + bottom) / 2


def _fit(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_width: float) -> str:
    """text, or its longest prefix plus an ellipsis that fits max_width."""
    if _textlen(font, text) <= max_width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _textlen(font, text[:mid] + "...") <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "..."


def _textlen(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> float:
    if _glyph_by_glyph(font):
        return float(_advance(font, text))
    return float(font.getlength(text))


def _advance(font: ImageFont.FreeTypeFont, text: str) -> int:
    """How far the pen moves over `text`, drawn glyph by glyph."""
    return sum(_glyph(font, ch)[3] for ch in text)


def _drawable(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> str:
    """Replace characters the font would draw as a box: accents dropped, dashes as '-', etc.;
    control and format characters (a tab or newline in a file name, a bidi override) as a
    space."""
    if text.isascii() and text.isprintable():  # (each character stays as it is)
        return text
    return "".join([_drawable_char(font, ch) for ch in text])


@functools.lru_cache(maxsize=4096)
def _drawable_char(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, ch: str) -> str:
    if unicodedata.category(ch)[0] == "C":
        return " "
    if ch.isascii() or _has_glyph(font, ch):
        return ch
    sub = _ASCII.get(ch)
    if sub is None:
        base = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
        sub = base or "?"
    return sub


@functools.lru_cache(maxsize=4096)
def _has_glyph(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, ch: str) -> bool:
    """Whether ch draws as something other than the font's 'missing glyph' box."""
    try:
        missing = font.getmask("\uffff")
        mask = font.getmask(ch)
        return mask.size != missing.size or not np.array_equal(
            np.asarray(mask), np.asarray(missing)
        )
    except Exception:  # a font we cannot probe: trust it
        return True


def _fmt_signed(v: float, digits: int) -> str:
    return "0" if v == 0 else f"{v:+.{digits}g}"


def _fmt_value(v: object) -> str:
    """A feature value, compactly: 4 significant digits for numbers, str() for the rest."""
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(v)
    return f"{f:.4g}"
