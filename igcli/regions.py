"""XRAI (Kapishnikov et al. 2019): attributions gathered into image regions, ranked by density.

The image is over-segmented at several scales (scikit-image's Felzenszwalb, the optional
extra `igcli[xrai]`); the overlapping segments are candidate regions. Greedily, the region
whose not-yet-covered pixels have the highest mean attribution is added next, until the
image is covered; each pixel gets the density of the region that covered it, and regions are
ranked by that density. The top regions (30% of the image by default) are what a person
should look at first.

Semantics and parameters are PAIR saliency's (`saliency.core.XRAI`, algorithm "full"):
attributions reduced over channels by their maximum; the image rescaled to [-1, 1] and
resized to 224 x 224 for segmentation at scales 50, 100, 150, 250, 500 and 1200 (sigma 0.8,
segments of at least 150 pixels), the segments resized back and dilated by a disk; regions
adding fewer than `min_pixel_diff` new pixels are dropped. PAIR's dilation radius (5) and
minimum (50 pixels) are set for 224 x 224 inputs; igcli scales them with the image (a 28 x 28
digit would otherwise be covered by a few dilated blobs); pass them explicitly for PAIR's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from igcli.errors import UsageError

SCALES = (50, 100, 150, 250, 500, 1200)
SIGMA = 0.8
MIN_SEGMENT = 150
SEGMENT_SIZE = (224, 224)
DILATION = 5  # PAIR's, at 224 x 224
MIN_PIXEL_DIFF = 50  # PAIR's, at 224 x 224
TOP_FRACTION = 0.3


@dataclass
class Regions:
    """XRAI's result for one image."""

    ranks: np.ndarray  # (H, W) unsigned: 1 for the densest region's pixels, 2 for the next, ...
    densities: list[float]  # per rank: the mean attribution over the region's pixels
    areas: list[float]  # per rank: the region's share of the image
    sums: list[float]  # per rank: the sum of the (channel-reduced) attributions over it

    @property
    def heatmap(self) -> np.ndarray:
        """(H, W): each pixel the density of the region that covered it (XRAI's map)."""
        return np.asarray(self.densities)[self.ranks.astype(np.intp) - 1]

    def top_mask(self, fraction: float = TOP_FRACTION) -> np.ndarray:
        """The pixels in the top `fraction` of the XRAI map (as PAIR's examples draw it)."""
        return self.heatmap >= np.percentile(self.heatmap, 100.0 * (1.0 - fraction))

    def summary(self, fraction: float = TOP_FRACTION, limit: int = 50) -> dict:
        """What the record says: the regions by rank (at most `limit`), and the top share."""
        ranked = [
            {"rank": k + 1, "area": a, "attribution": s, "density": d}
            for k, (a, s, d) in enumerate(zip(self.areas, self.sums, self.densities, strict=True))
        ]
        return {
            "method": "xrai",
            "count": len(ranked),
            "top_fraction": fraction,
            "top_area": float(np.mean(self.top_mask(fraction))),
            "ranked": ranked[:limit],
        }


def _skimage():
    try:
        from skimage import morphology, segmentation, transform
    except ImportError:
        raise UsageError("--regions xrai needs scikit-image: pip install 'igcli[xrai]'") from None
    return segmentation, transform, morphology


def scaled(value: float, shape: tuple[int, int], area: bool = False) -> int:
    """A PAIR parameter set for 224 x 224, scaled to an image of `shape` (at least 1)."""
    if area:
        factor = shape[0] * shape[1] / (SEGMENT_SIZE[0] * SEGMENT_SIZE[1])
    else:
        factor = min(shape) / min(SEGMENT_SIZE)
    return max(1, round(value * factor))


def segments(
    image_hwc: np.ndarray,
    *,
    dilation: int | None = None,
    scales: tuple[int, ...] = SCALES,
) -> list[np.ndarray]:
    """Candidate regions: boolean (H, W) masks from Felzenszwalb at every scale, dilated."""
    segmentation, transform, morphology = _skimage()
    im = np.asarray(image_hwc, dtype=np.float64)
    if im.ndim == 2:
        im = im[:, :, None]
    h, w = im.shape[:2]
    lo, hi = float(im.min()), float(im.max())
    im = (im - lo) / (hi - lo) if hi > lo else np.zeros_like(im)
    im = im * 2.0 - 1.0
    im = transform.resize(im, SEGMENT_SIZE, order=3, mode="constant", preserve_range=True,
                          anti_aliasing=True)  # fmt: skip
    radius = scaled(DILATION, (h, w)) if dilation is None else dilation
    footprint = morphology.disk(radius) if radius else None
    masks = []
    for scale in scales:
        seg = segmentation.felzenszwalb(im, scale=scale, sigma=SIGMA, min_size=MIN_SEGMENT)
        seg = transform.resize(seg, (h, w), order=0, preserve_range=True, mode="constant",
                               anti_aliasing=False).astype(int)  # fmt: skip
        for label in range(seg.min(), seg.max() + 1):
            mask = seg == label
            if footprint is not None:
                mask = morphology.dilation(mask, footprint=footprint)
            masks.append(mask)
    return masks


def rank_regions(
    attr: np.ndarray, masks: list[np.ndarray], min_pixel_diff: int, area_threshold: float = 1.0
) -> Regions:
    """XRAI's greedy ranking of `masks` by the density of `attr` (H, W) over new pixels."""
    h, w = attr.shape
    flat = attr.reshape(-1).astype(np.float64)
    stack = np.stack([m.reshape(-1) for m in masks]) if masks else np.zeros((0, h * w), bool)
    live = np.ones(len(stack), dtype=bool)
    covered = np.zeros(h * w, dtype=bool)
    heatmap = np.full(h * w, -np.inf)
    chosen: list[tuple[np.ndarray, float]] = []
    while np.mean(covered) <= area_threshold:
        fresh = stack & ~covered
        counts = fresh.sum(axis=1)
        live &= counts >= min_pixel_diff
        if not live.any():
            break
        with np.errstate(invalid="ignore", divide="ignore"):
            density = (fresh @ flat) / counts
        density = np.where(live & (counts > 0), density, -np.inf)
        best = int(np.argmax(density))  # the first of equals, as PAIR's loop keeps it
        gain = float(density[best])
        added = fresh[best]
        chosen.append((added, gain))
        heatmap[added] = gain
        covered |= stack[best]
        live[best] = False
    rest = heatmap == -np.inf
    if rest.any():
        gain = float(flat[rest].mean())
        heatmap[rest] = gain
    order = sorted(chosen, key=lambda c: -c[1])
    if rest.any():
        order.append((rest, gain))
    small = np.uint16 if len(order) < 2**16 else np.uint32
    ranks = np.zeros(h * w, dtype=small)  # held per image until a shared-scale redraw
    for k, (mask, _) in enumerate(order):
        ranks[mask] = k + 1
    return Regions(
        ranks=ranks.reshape(h, w),
        densities=[float(g) for _, g in order],
        areas=[float(m.mean()) for m, _ in order],
        sums=[float(flat[m].sum()) for m, _ in order],
    )


def xrai(
    attr_hwc: np.ndarray,
    image_hwc: np.ndarray,
    *,
    dilation: int | None = None,
    min_pixel_diff: int | None = None,
    area_threshold: float = 1.0,
) -> Regions:
    """XRAI regions of an image's attributions (both (H, W, C); the image as the model sees
    it). `dilation` and `min_pixel_diff` default to PAIR's scaled to the image's size."""
    attr = np.asarray(attr_hwc, dtype=np.float64)
    if attr.ndim == 3:
        attr = attr.max(axis=-1)
    h, w = attr.shape
    if min_pixel_diff is None:
        min_pixel_diff = scaled(MIN_PIXEL_DIFF, (h, w), area=True)
    if not math.isfinite(area_threshold):
        raise ValueError("area_threshold must be finite")
    masks = segments(image_hwc, dilation=dilation)
    return rank_regions(attr, masks, min_pixel_diff, area_threshold)
