"""Baselines: the reference point IG integrates from.

Image baselines are made in pixel space and then pass through the same preprocessing as the
input, so "black" stays black under mean/std normalisation (a black image is not the zero
tensor once pixels are normalised). `zero` is the all-zeros tensor in model space.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from igcli.errors import InputError, UsageError
from igcli.inputs import (
    IMAGE_SUFFIXES,
    Preprocessing,
    Sample,
    dims_text,
    fit_tensor,
    read_image,
    read_tensor,
)

NAMED = ("zero", "black", "white", "uniform", "blur")


class ArrayBaseline:
    """A baseline given as numbers (the library's baseline=array), in the model's input
    space as a .npy baseline is. Records name it 'array'. It equals only itself, so the
    checks that compare a baseline with a name ('mean') stay plain comparisons."""

    name = "array"

    def __init__(self, values) -> None:
        self.values = np.array(values)  # a copy: the caller may change theirs afterwards
        self.values.flags.writeable = False

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"ArrayBaseline(shape={list(self.values.shape)}, dtype={self.values.dtype})"

    @property
    def digest(self) -> str:
        """What the numbers are, for --skip-existing's settings hash: by its name alone, a
        run with baseline=ones resumed the results of one with zeros."""
        v = np.ascontiguousarray(self.values)
        text = f"{v.dtype.str}{list(v.shape)}".encode()
        return hashlib.sha256(text + v.tobytes()).hexdigest()


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


def rng_for(seed: int) -> np.random.Generator:
    """A generator for any integer seed. numpy refuses negative seeds; they get streams of
    their own (a spawn key keeps -5 apart from 5), non-negative seeds numpy's usual ones."""
    if seed >= 0:
        return np.random.default_rng(seed)
    return np.random.default_rng(np.random.SeedSequence(-seed, spawn_key=(1,)))


def _sample_hw(sample: Sample, prep: Preprocessing) -> tuple[int, int] | None:
    """The input's height and width in pixels (images, and tensors of image models)."""
    if sample.pixels is not None:
        return sample.pixels.shape[0], sample.pixels.shape[1]
    if prep.is_image_model and sample.x.ndim == 3:
        hwc = prep.model_to_hwc(sample.x)
        return hwc.shape[0], hwc.shape[1]
    return None


def _takes(prep: Preprocessing) -> str:
    return f"this one takes {dims_text(prep.input_shape)}"


def make_baseline(
    spec: str | ArrayBaseline,
    sample: Sample,
    prep: Preprocessing,
    seed: int = 0,
    blur_sigma: float | None = None,
) -> np.ndarray:
    """The baseline for one sample, in model space (same shape as sample.x).

    A baseline image is resized to the input's size, as every image is resized to a
    fixed-size model's: for models that take any size, each input gets the baseline at its
    own size. Problems with a baseline file are UsageErrors naming that file (they concern
    every input); a .npy baseline that fits the model but not this input is this input's
    InputError.
    """
    if isinstance(spec, ArrayBaseline):
        return _array_baseline(spec, sample, prep)
    if spec == "zero":
        return np.zeros_like(sample.x)
    if spec in NAMED:
        rng = rng_for(seed)
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
        if not prep.is_image_model:  # (every input: the option's problem)
            raise UsageError(f"baseline {spec!r} needs a model that takes images; {_takes(prep)}")
        raise InputError(f"baseline {spec!r} needs an image input", sample.path)
    path = _baseline_file(spec)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        size = _sample_hw(sample, prep)
        if size is None and not prep.is_image_model:
            raise UsageError(
                f"an image baseline needs a model that takes images; {_takes(prep)}", path
            )
        if size is None:
            raise InputError(f"an image baseline needs an image input ({path})", sample.path)
        return prep.image_to_model(_read_image_baseline(path, prep, size))
    base = read_tensor(path, prep, error=UsageError)
    if base.shape != sample.x.shape:
        raise InputError(
            f"baseline {path} has shape {list(base.shape)}, this input {list(sample.x.shape)}",
            sample.path,
        )
    return base


def _array_baseline(spec: ArrayBaseline, sample: Sample, prep: Preprocessing) -> np.ndarray:
    """An array baseline as the sample's tensor: the model's shape (batch axis of 1 or none)
    and dtype, finite; one that fits the model but not this sample is this sample's error."""
    where = Path("<baseline array>")
    if spec.values.dtype.kind in "iub":
        raise UsageError(
            f"dtype {spec.values.dtype} is not a float type; an array baseline is in the model "
            "input's space: pass floats",
            where,
        )
    base = fit_tensor(spec.values, prep, where, UsageError)
    if not np.isfinite(base).all():
        raise UsageError("contains NaN or Inf", where)
    if base.shape != sample.x.shape:
        raise InputError(
            f"the baseline array has shape {list(base.shape)}, this input {list(sample.x.shape)}",
            sample.path,
        )
    return base


def _baseline_file(spec: str) -> Path:
    """The baseline file `spec` names; one in object storage (a URL) is fetched once."""
    from igcli.storage import URL, cached_copy, location

    path = location(spec)
    if isinstance(path, URL):
        if path.suffix.lower() not in IMAGE_SUFFIXES | {".npy"}:
            raise UsageError(f"baseline file {spec!r} must be an image or a .npy file")
        return cached_copy(path, UsageError)
    if path.suffix.lower() not in IMAGE_SUFFIXES | {".npy"}:
        if not os.path.lexists(path):
            raise UsageError(
                f"baseline {spec!r} is neither one of {', '.join(NAMED)} nor an existing file"
            )
        raise UsageError(f"baseline file {spec!r} must be an image or a .npy file")
    return path


def _read_image_baseline(path: Path, prep: Preprocessing, size) -> np.ndarray:
    try:
        return read_image(path, prep, size=size)
    except InputError as exc:
        raise UsageError(f"baseline: {exc.reason}", path) from None
