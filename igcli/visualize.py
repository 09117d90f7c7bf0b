"""Choose the picture for one explanation: a heatmap for images, bars for feature vectors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from igcli import render
from igcli.inputs import Preprocessing, Sample
from igcli.report import percent

Picture = Image.Image | np.ndarray  # a PIL image, or RGB pixels (H, W, 3) uint8 ready to encode


def as_image(picture: Picture) -> Image.Image:
    """A picture as a PIL image (pixels drawn in numpy are converted)."""
    return Image.fromarray(picture) if isinstance(picture, np.ndarray) else picture


@dataclass
class HeatmapStyle:
    overlay: str = "panel"
    sign: str = "all"
    clip_percentile: float = 99.5
    reduce: str = "sum"
    top_k: int = 15


def title(a) -> str:
    """The panel's title: which input (and row), which target, its score (at the input
    itself, also when noisy copies were averaged)."""
    label = f" '{a.label}'" if a.label and a.label != str(a.target) else ""
    where = Path(str(a.sample.path)).name
    m = re.search(r"_row(\d+)$", a.sample.name)
    if a.sample.text is not None and where.startswith("<"):  # a string given in Python
        where = repr(a.sample.text)
    elif a.sample.text is not None:  # a line of a text file
        where = f"{where} {a.sample.name.rsplit('_', 1)[-1]}"
    elif a.sample.kind == "tabular" and m:
        where += f" row {m.group(1)}"
    score = (a.extra.get("noise") or {}).get("f_input_clean", a.f_input)
    return f"{where} - target {a.target}{label} (score {score:.4g})"


def caption(a) -> str:
    """The completeness line under a panel: the figure that says whether to trust it, and the
    baseline that "raises" and "lowers" are measured against."""
    steps = a.extra.get("steps_used", a.steps)
    at = f" \u00b7 at {a.at}" if getattr(a, "at", None) else ""
    se = a.extra.get("completeness_se")
    spread = f" \u00b1 {se:.2g}" if se is not None else ""
    base = f"baseline {a.baseline_name}"
    if a.extra.get("baselines"):
        b = a.extra["baselines"]
        base = f"{b['count']} baselines ({Path(str(b['source'])).name})"
    how = method_text(a) or f"{steps} {a.method} steps"
    twin = " \u00b7 float twin" if a.extra.get("dequantized") else ""  # (--dequantize)
    return (
        f"{base} \u00b7 completeness error {percent(a.rel_error)} "
        f"({a.attribution_sum:.4g}{spread} of {a.delta:.4g}) \u00b7 {how} "
        f"\u00b7 {a.gradient_source}{at}{twin}"
    )


def method_text(a) -> str:
    """How a path-method family result was made, briefly ('' for plain IG): e.g. 'shapley
    path, 8 orders, 6400 gradients'."""
    e = a.extra
    path = e.get("path") or "straight"
    parts = []
    if path != "straight":
        parts.append(f"{path} path")
    if path == "shapley" and e.get("samples"):
        parts.append(f"{e['samples']} orders")
    b = e.get("baselines")
    expected = bool(b) and b.get("use") == "expected_gradients"
    if b and not expected:
        parts.append("mean IG")
    if e.get("noise"):
        parts.append(f"{e['noise']['type']} x{e['noise']['samples']}")
    n = e.get("steps_used", a.steps)
    if expected:
        return ", ".join([*parts, f"{n} EG draws"])
    return ", ".join(parts) + f", {n} gradients" if parts else ""


def magnitude_map(a) -> bool:
    """smoothgrad_sq and vargrad maps, and --aggregate l2 at a tensor, are magnitudes
    (>= 0), not signed attributions."""
    if a.at is not None and a.aggregate == "l2":
        return True
    return (a.extra.get("noise") or {}).get("type") in ("smoothgrad_sq", "vargrad")


def display_pixels(sample: Sample, prep: Preprocessing) -> np.ndarray:
    """(H, W, C) in [0, 1] as a person sees the input; undoes normalisation for tensors.
    Channels other than grey or RGB (RGBA, depth, multispectral bands, stacked frames) are
    shown as their mean: a grey picture under the map."""
    if sample.pixels is not None:
        return sample.pixels
    x = prep.model_to_hwc(sample.x).astype(np.float64)
    if prep.mean is not None:
        x = np.clip(x * prep.std + prep.mean, 0.0, 1.0)
    else:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return x if x.shape[-1] in (1, 3) else x.mean(axis=-1, keepdims=True)


def attribution_map(attributions: np.ndarray, sample: Sample, prep: Preprocessing, reduce: str):
    """The per-pixel map drawn for an image-like input (used for shared colour scales)."""
    return render.attribution_map(prep.model_to_hwc(attributions), reduce)


def is_image_like(sample: Sample, prep: Preprocessing) -> bool:
    return prep.is_image_model and sample.x.ndim == 3


def draw(
    sample: Sample,
    attributions: np.ndarray,
    prep: Preprocessing,
    style: HeatmapStyle,
    *,
    title: str,
    caption: str,
    vmax: float | None = None,
    regions=None,
) -> Picture:
    """Image inputs' panels come as pixels (a PIL image would only be converted back to
    encode them), the rest as PIL images."""
    if is_image_like(sample, prep):
        top = None
        if regions is not None:
            top = regions.top_mask()
        return render.image_pixels(
            display_pixels(sample, prep),
            prep.model_to_hwc(attributions),
            overlay=style.overlay,
            sign=style.sign,
            clip_percentile=style.clip_percentile,
            vmax=vmax,
            reduce=style.reduce,
            title=title,
            caption=caption,
            regions=top,
            regions_label="XRAI top 30%",
        )
    flat = attributions.reshape(-1)
    # (a sequence's [T, F] sample: x[t, f], where a flat x[40] left the row to be worked out)
    names = sample.feature_names or [
        f"x[{', '.join(map(str, i))}]" for i in np.ndindex(attributions.shape or (1,))
    ]
    values = sample.raw_values if sample.raw_values is not None else sample.x.reshape(-1)
    return render.render_bars(
        list(names), flat, values, top_k=style.top_k, title=title, caption=caption
    )


def shown_tokens(sample: Sample) -> int:
    """How many leading positions of a token sample to draw: up to its last real token (the
    padding after it has no attribution to show)."""
    n = sample.x.shape[0]
    for name, feed in (sample.feeds or {}).items():
        if "mask" in name.lower():
            mask = np.asarray(feed.value).reshape(-1)
            if mask.size == n and np.any(mask):
                return int(np.flatnonzero(mask)[-1]) + 1
    return n


def draw_cut(a, style: HeatmapStyle, vmax: float | None = None) -> Picture:
    """The picture of an attribution made at a tensor inside the model (`a.at`): tokens
    coloured by their value for token models, the per-position map over the image for image
    models, else bars (of positions, or with --aggregate none of the tensor's entries)."""
    sample, prep = a.sample, a.prep
    how = a.aggregate
    if how == "none":
        flat = a.attributions.reshape(-1)
        names = [_entry_name(a, idx) for idx in np.ndindex(a.attributions.shape)]
        return render.render_bars(names, flat, None, top_k=style.top_k, title=title(a),
                                  caption=caption(a))  # fmt: skip
    values = a.positions
    if a.per_token and values.ndim == 1:
        n = shown_tokens(sample)
        return render.render_tokens(
            list(sample.tokens[:n]), values[:n], sign=style.sign, vmax=vmax, title=title(a),
            caption=caption(a),
        )  # fmt: skip
    if is_image_like(sample, prep) and values.ndim == 2:
        pixels = display_pixels(sample, prep)
        h, w = pixels.shape[:2]
        # each position's value over the pixels it covers (the colour scale reads per position)
        up = np.asarray(
            Image.fromarray(values.astype(np.float32), mode="F").resize(
                (w, h), Image.Resampling.NEAREST
            ),
            dtype=np.float64,
        )
        return render.image_pixels(
            pixels, up[..., None], overlay=style.overlay, sign=style.sign,
            clip_percentile=style.clip_percentile, vmax=vmax, title=title(a), caption=caption(a),
        )  # fmt: skip
    flat = values.reshape(-1)
    names = [f"{a.at}[{i}]" for i in range(flat.size)]
    return render.render_bars(names, flat, None, top_k=style.top_k, title=title(a),
                              caption=caption(a))  # fmt: skip


def _entry_name(a, index: tuple[int, ...]) -> str:
    if a.per_token:
        rest = ",".join(map(str, index[1:]))
        return f"{a.sample.tokens[index[0]]} (#{index[0]}) [{rest}]"
    return "[" + ",".join(map(str, index)) + "]"
