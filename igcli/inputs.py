"""Reading inputs (images, .npy tensors, CSV rows) into samples in the model's input space.

Images go through `Preprocessing`: layout (NCHW or NHWC, read from the input shape or the
sidecar), channels, resizing to a fixed H x W, scaling to [0, 1] and mean/std normalisation.
Baselines made in pixel space pass through the same steps (see baselines.py).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from igcli.errors import InputError, UsageError
from igcli.model import Sidecar, TensorSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
TENSOR_SUFFIXES = {".npy"}
TABLE_SUFFIXES = {".csv"}
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES | TENSOR_SUFFIXES | TABLE_SUFFIXES


@dataclass
class Preprocessing:
    """How a picture becomes a model input, and how a CSV row does."""

    input_shape: list  # the model input's shape, batch axis included
    layout: str | None = None  # "NCHW" / "NHWC" for image models
    channels: int | None = None
    height: int | None = None
    width: int | None = None
    scale: float = 255.0
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    feature_names: list[str] | None = None
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))

    @property
    def is_image_model(self) -> bool:
        return self.layout is not None

    def describe(self) -> str:
        if not self.is_image_model:
            text = f"tensor input of shape {self.input_shape}"
            if self.mean is not None:
                text += "; CSV rows standardised with the sidecar's per-feature mean/std"
            return text
        size = f"{self.height}x{self.width}" if self.height and self.width else "any size"
        norm = ""
        if self.mean is not None:
            norm = f", then (p - {_fmt(self.mean)}) / {_fmt(self.std)}"
        return (
            f"images: {self.layout}, {self.channels} channel(s), resized to {size}, "
            f"pixels / {self.scale:g}{norm}"
        )

    def image_to_model(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, C) pixels in [0, 1] -> one model sample (no batch axis)."""
        x = pixels.astype(np.float64)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if self.layout == "NCHW":
            x = np.transpose(x, (2, 0, 1))
        return x.astype(self.dtype)

    def model_to_hwc(self, sample: np.ndarray) -> np.ndarray:
        """A model-space sample (e.g. attributions) laid out as (H, W, C) for display."""
        return np.transpose(sample, (1, 2, 0)) if self.layout == "NCHW" else sample

    def rows_to_model(self, rows: np.ndarray) -> np.ndarray:
        x = rows.astype(np.float64)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.astype(self.dtype)


def _fmt(values: np.ndarray | None) -> str:
    if values is None:
        return "-"
    flat = np.ravel(values)
    return f"{flat[0]:.4g}" if flat.size == 1 else "[" + ", ".join(f"{v:.4g}" for v in flat) + "]"


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def make_preprocessing(
    spec: TensorSpec,
    sidecar: Sidecar,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    scale: float | None = None,
) -> Preprocessing:
    """Decide preprocessing from the input's shape, the sidecar and the user's options."""
    side = sidecar.preprocessing or {}
    prep = Preprocessing(input_shape=list(spec.shape), dtype=spec.dtype)
    if spec.dtype.kind != "f":
        raise UsageError(f"input {spec.name!r} has dtype {spec.dtype}; igcli attributes floats")
    shape = spec.shape
    layout = side.get("layout")
    if layout is None and len(shape) == 4:
        if _static(shape[1]) in (1, 3):
            layout = "NCHW"
        elif _static(shape[3]) in (1, 3):
            layout = "NHWC"
        else:
            layout = "NCHW"
    if layout in ("NCHW", "NHWC") and len(shape) == 4:
        prep.layout = layout
        c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], *shape[1:3])
        prep.channels = _static(c) or int(side.get("channels", 3))
        prep.height, prep.width = _static(h), _static(w)
        if side.get("size") and not (prep.height and prep.width):
            prep.height, prep.width = (int(v) for v in side["size"])
        prep.scale = float(scale or side.get("scale", 255.0))
        mean = mean if mean is not None else side.get("mean")
        std = std if std is not None else side.get("std")
        if mean is not None or std is not None:
            prep.mean = _per_channel(mean if mean is not None else [0.0], prep.channels, "--mean")
            prep.std = _per_channel(std if std is not None else [1.0], prep.channels, "--std")
    else:
        prep.feature_names = sidecar.feature_names
        mean = mean if mean is not None else side.get("mean")
        std = std if std is not None else side.get("std")
        if mean is not None or std is not None:
            n = _static(shape[-1]) if shape else None
            prep.mean = np.asarray(mean if mean is not None else [0.0], dtype=np.float64)
            prep.std = np.asarray(std if std is not None else [1.0], dtype=np.float64)
            for arr, opt in ((prep.mean, "mean"), (prep.std, "std")):
                if n and arr.size not in (1, n):
                    raise UsageError(f"{opt} has {arr.size} values; the input has {n} features")
    if prep.std is not None and np.any(prep.std == 0):
        raise UsageError("std must not be zero")
    return prep


def _per_channel(values, channels: int, option: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels:
        raise UsageError(f"{option} needs 1 or {channels} values, got {arr.size}")
    return arr


@dataclass
class Sample:
    """One thing to explain, already in model space (x has no batch axis)."""

    path: Path
    name: str  # output stem, relative to --out (no suffix)
    kind: str  # "image", "tensor" or "tabular"
    x: np.ndarray
    pixels: np.ndarray | None = None  # (H, W, C) in [0, 1], for images
    feature_names: list[str] | None = None
    raw_values: np.ndarray | None = None  # tabular rows before standardisation


def read_image(path: Path, prep: Preprocessing) -> np.ndarray:
    """Decode, convert to the model's channel count, resize; (H, W, C) floats in [0, 1]."""
    try:
        with Image.open(path) as img:
            img.load()
            return image_pixels(img, prep)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = "not a readable image" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise InputError(f"cannot decode image ({reason})", path) from None


def image_pixels(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """A decoded image in the model's channels and size; (H, W, C) floats in [0, 1]."""
    mode = "L" if prep.channels == 1 else "RGB"
    img = img.convert(mode)
    if prep.height and prep.width and img.size != (prep.width, prep.height):
        img = img.resize((prep.width, prep.height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.clip(arr / prep.scale, 0.0, None) if prep.scale else arr


def load_samples(path: Path, prep: Preprocessing, name: str) -> list[Sample]:
    """Samples from one file; `name` is the output stem (a CSV adds _row<k>)."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise InputError("no such file", path)
    if not path.is_file():
        raise InputError("not a file", path)
    if suffix in IMAGE_SUFFIXES:
        if not prep.is_image_model:
            raise InputError(f"an image, but the model input has shape {prep.input_shape}", path)
        pixels = read_image(path, prep)
        return [Sample(path, name, "image", prep.image_to_model(pixels), pixels=pixels)]
    if suffix in TENSOR_SUFFIXES:
        return [Sample(path, name, "tensor", read_tensor(path, prep))]
    if suffix in TABLE_SUFFIXES:
        return read_table(path, prep, name)
    raise InputError(f"unsupported file type {suffix or '(none)'!r}", path)


def sample_from_array(value, prep: Preprocessing, name: str) -> Sample:
    """A sample from a numpy array in model space (batch axis optional) or a PIL image."""
    if isinstance(value, Image.Image):
        if not prep.is_image_model:
            raise UsageError(f"an image, but the model input has shape {prep.input_shape}")
        pixels = image_pixels(value, prep)
        return Sample(Path(f"<{name}>"), name, "image", prep.image_to_model(pixels), pixels=pixels)
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise UsageError(f"an array of dtype {arr.dtype}; give numbers")
    x = _fit_tensor(arr, prep, Path(f"<{name}>"))
    kind = "tabular" if x.ndim == 1 else "tensor"
    return Sample(Path(f"<{name}>"), name, kind, x, feature_names=prep.feature_names)


def _shape_matches(shape: tuple, expected: list) -> bool:
    return len(shape) == len(expected) and all(
        not isinstance(e, int) or e <= 0 or e == s for s, e in zip(shape, expected, strict=True)
    )


def read_tensor(path: Path, prep: Preprocessing) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"not a readable .npy file ({exc})", path) from None
    if arr.dtype.kind != "f":
        raise InputError(f"dtype {arr.dtype} is not a float type", path)
    return _fit_tensor(arr, prep, path)


def _fit_tensor(arr: np.ndarray, prep: Preprocessing, path: Path) -> np.ndarray:
    """One sample (no batch axis) in the model's dtype, from an array with or without it."""
    expected = prep.input_shape
    if _shape_matches(arr.shape, expected):
        if arr.shape[0] != 1:
            raise InputError(f"holds a batch of {arr.shape[0]}; give one sample per file", path)
        arr = arr[0]
    elif not _shape_matches(arr.shape, expected[1:]):
        raise InputError(f"shape {list(arr.shape)} does not fit the model input {expected}", path)
    if not np.all(np.isfinite(arr)):
        raise InputError("contains NaN or Inf", path)
    return arr.astype(prep.dtype)


def read_table(path: Path, prep: Preprocessing, name: str) -> list[Sample]:
    """One sample per CSV row; the header names the features (matched to the sidecar's)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read CSV ({exc})", path) from None
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise InputError("CSV needs a header row and at least one data row", path)
    header = [h.strip() for h in rows[0]]
    expected_n = prep.input_shape[-1] if len(prep.input_shape) == 2 else None
    if not isinstance(expected_n, int) or expected_n <= 0:
        expected_n = None
    if len(prep.input_shape) != 2:
        raise InputError(f"CSV rows need a 2-D model input, not {prep.input_shape}", path)
    order = list(range(len(header)))
    names = header
    if prep.feature_names:
        missing = [f for f in prep.feature_names if f not in header]
        if missing:
            raise InputError(f"CSV lacks feature(s) {', '.join(missing[:3])}", path)
        order = [header.index(f) for f in prep.feature_names]
        names = list(prep.feature_names)
    if expected_n is not None and len(order) != expected_n:
        raise InputError(f"CSV has {len(order)} columns; the model takes {expected_n}", path)
    values = np.empty((len(rows) - 1, len(order)))
    for i, row in enumerate(rows[1:]):
        try:
            values[i] = [float(row[j]) for j in order]
        except (ValueError, IndexError):
            raise InputError(f"row {i + 1} is not all numbers or is short", path) from None
    if not np.all(np.isfinite(values)):
        raise InputError("contains NaN or Inf", path)
    model_rows = prep.rows_to_model(values)
    return [
        Sample(
            path,
            f"{name}_row{i}",
            "tabular",
            model_rows[i],
            feature_names=names,
            raw_values=values[i],
        )
        for i in range(len(values))
    ]
