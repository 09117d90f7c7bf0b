"""Baselines: the reference point IG integrates from.

Image baselines are made in pixel space and then pass through the same preprocessing as the
input, so "black" stays black under mean/std normalisation (a black image is not the zero
tensor once pixels are normalised). `zero` is the all-zeros tensor in model space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from igcli.errors import InputError, UsageError
from igcli.inputs import IMAGE_SUFFIXES, Preprocessing, Sample, read_image, read_tensor

NAMED = ("zero", "black", "white", "uniform", "blur")


def default_baseline(sample: Sample) -> str:
    return "black" if sample.kind == "image" else "zero"


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def blur_pixels(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of (H, W, C) floats: separable, edges reflected (Pillow's blur is 8-bit)."""
    out = pixels.astype(np.float64)
    for axis in (0, 1):
        kernel = _gaussian_kernel(min(sigma, out.shape[axis]))
        radius = len(kernel) // 2
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > 1 else "edge")
        moved = np.moveaxis(padded, axis, -1)
        windows = np.lib.stride_tricks.sliding_window_view(moved, len(kernel), axis=-1)
        out = np.moveaxis(windows @ kernel, -1, axis)
    return out


def make_baseline(
    spec: str, sample: Sample, prep: Preprocessing, seed: int = 0, blur_sigma: float | None = None
) -> np.ndarray:
    """The baseline for one sample, in model space (same shape as sample.x)."""
    if spec == "zero":
        return np.zeros_like(sample.x)
    if spec in NAMED:
        rng = np.random.default_rng(seed)
        if sample.kind == "image":
            shape = sample.pixels.shape
            if spec == "black":
                pixels = np.zeros(shape)
            elif spec == "white":
                pixels = np.ones(shape)
            elif spec == "uniform":
                pixels = rng.uniform(0.0, 1.0, size=shape)
            else:
                sigma = blur_sigma or max(shape[0], shape[1]) / 8
                pixels = blur_pixels(sample.pixels, sigma)
            return prep.image_to_model(pixels)
        if spec == "uniform":
            lo, hi = float(np.min(sample.x)), float(np.max(sample.x))
            return rng.uniform(lo, hi, size=sample.x.shape).astype(sample.x.dtype)
        raise InputError(f"baseline {spec!r} needs an image input", sample.path)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(
            f"baseline {spec!r} is neither one of {', '.join(NAMED)} nor an existing file"
        )
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if sample.kind != "image":
            raise InputError("an image baseline needs an image input", sample.path)
        return prep.image_to_model(read_image(path, prep))
    if path.suffix.lower() == ".npy":
        base = read_tensor(path, prep)
        if base.shape != sample.x.shape:
            raise InputError(f"baseline {path} has shape {list(base.shape)}", sample.path)
        return base
    raise UsageError(f"baseline file {spec!r} must be an image or a .npy file")
