"""Choose the picture for one explanation: a heatmap for images, bars for feature vectors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from igcli import render
from igcli.inputs import Preprocessing, Sample
from igcli.report import percent


@dataclass
class HeatmapStyle:
    overlay: str = "panel"
    sign: str = "all"
    clip_percentile: float = 99.5
    reduce: str = "sum"
    top_k: int = 15


def title(a) -> str:
    """The panel's title: which input, which target, its score."""
    label = f" '{a.label}'" if a.label and a.label != str(a.target) else ""
    return f"{Path(str(a.sample.path)).name} - target {a.target}{label} (score {a.f_input:.4g})"


def caption(a) -> str:
    """The completeness line under a panel: the figure that says whether to trust it."""
    se = a.extra.get("completeness_se")
    spread = f" \u00b1 {se:.2g}" if se is not None else ""
    return (
        f"completeness error {percent(a.rel_error)} (sum {a.attribution_sum:.4g}{spread}, "
        f"F(x)-F(b) {a.delta:.4g}) \u00b7 {method_text(a)}{a.steps} steps {a.method} "
        f"\u00b7 {a.gradient_source}"
    )


def method_text(a) -> str:
    """The path-method family's part of a caption ('' for plain IG), e.g. 'blur path · '."""
    e = a.extra
    parts = []
    if e.get("path") not in (None, "straight"):
        parts.append(f"{e['path']} path")
    if e.get("baselines"):
        b = e["baselines"]
        what = "expected gradients" if b.get("use") == "expected_gradients" else "mean IG"
        parts.append(f"{what} over {b['count']} baselines")
    if e.get("samples") and e.get("path") != "shapley":
        parts.append(f"{e['samples']} samples")
    if e.get("path") == "shapley" and e.get("samples"):
        parts.append(f"{e['samples']} orders")
    if e.get("noise"):
        parts.append(f"{e['noise']['type']} x{e['noise']['samples']}")
    return "".join(p + " \u00b7 " for p in parts)


def display_pixels(sample: Sample, prep: Preprocessing) -> np.ndarray:
    """(H, W, C) in [0, 1] as a person sees the input; undoes normalisation for tensors."""
    if sample.pixels is not None:
        return sample.pixels
    x = prep.model_to_hwc(sample.x).astype(np.float64)
    if prep.mean is not None:
        x = x * prep.std + prep.mean
        return np.clip(x, 0.0, 1.0)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


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
) -> Image.Image:
    if is_image_like(sample, prep):
        top = None
        if regions is not None:
            top = regions.top_mask()
        return render.render_image(
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
    names = sample.feature_names or [f"x[{i}]" for i in range(flat.size)]
    values = sample.raw_values if sample.raw_values is not None else sample.x.reshape(-1)
    return render.render_bars(
        list(names), flat, values, top_k=style.top_k, title=title, caption=caption
    )
