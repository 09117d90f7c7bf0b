"""Reading inputs (images, .npy tensors, CSV rows) into samples in the model's input space.

Images go through `Preprocessing`: layout (NCHW or NHWC, read from the input shape or the
sidecar), channels, resizing to a fixed H x W, scaling to [0, 1] and mean/std normalisation.
Baselines made in pixel space pass through the same steps (see baselines.py).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import functools
import io
import itertools
import math
import operator
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from igcli.errors import IgcliError, InputError, ModelError, UsageError
from igcli.files import (
    MAX_IMAGE_PIXELS,
    content_kind,
    file_size,
    first_line,
    kind_of,
    open_regular,
    os_reason,
    read_npy,
    stamp_of,
)
from igcli.model import Sidecar, TensorSpec, unusable_reason

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".bmp", ".gif", ".tif",
                  ".tiff", ".webp"}  # fmt: skip
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
    # None: squash the image to H x W; a fraction f: scale it so its shorter side covers H x W
    # divided by f, then cut out the centre (ImageNet's resize 256, centre-crop 224: f = 0.875)
    crop: float | None = None
    preset: str | None = None
    feature_names: list[str] | None = None
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    # where the model itself takes the batch (1 for a sequence-first [T, N, F] input, which
    # igcli reads batch first: input_shape is then [N, T, F])
    batch_axis: int = 0

    @property
    def is_image_model(self) -> bool:
        return self.layout is not None

    def describe(self) -> str:
        if not self.is_image_model:
            text = f"tensor input of shape {self.input_shape}"
            if self.mean is not None:
                text += "; CSV rows standardised with the sidecar's per-feature mean/std"
            return text
        size = (
            f"{self.height}x{self.width}"
            if self.height and self.width
            else "any size (each image's own; --size HxW chooses one)"
        )
        if self.crop is not None and self.height and self.width:
            size += f" (shorter side to {self.crop:g} of it, centre crop)"
        norm = ""
        if self.mean is not None:
            norm = f", then (p - {_fmt(self.mean)}) / {_fmt(self.std)}"
        preset = f" [{self.preset}]" if self.preset else ""
        return (
            f"images{preset}: {self.layout}, {self.channels} channel(s), resized to {size}, "
            f"pixels / {self.scale:g}{norm}"
        )

    @property
    def unnormalised_rgb(self) -> bool:
        """An RGB model fed plain pixels: right for some models, a silent mistake for most
        ImageNet-trained ones."""
        return self.is_image_model and self.channels == 3 and self.mean is None

    def image_to_model(self, pixels: np.ndarray, cast: bool = True) -> np.ndarray:
        """(H, W, C) pixels in [0, 1] -> one model sample (no batch axis); float64 when
        `cast` is False, so a reader can tell overflow apart from bad values."""
        x = pixels.astype(np.float64)
        if self.mean is not None:  # (in place: a large image's float64 copies add up)
            x -= self.mean
            x /= self.std
        if self.layout == "NCHW":
            x = np.transpose(x, (2, 0, 1))
        return _cast(x, self.dtype) if cast else x

    def model_to_hwc(self, sample: np.ndarray) -> np.ndarray:
        """A model-space sample (e.g. attributions) laid out as (H, W, C) for display."""
        return np.transpose(sample, (1, 2, 0)) if self.layout == "NCHW" else sample

    def rows_to_model(self, rows: np.ndarray, cast: bool = True) -> np.ndarray:
        x = rows.astype(np.float64)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return _cast(x, self.dtype) if cast else x


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast quietly (numpy warns on overflow on stderr); readers check the result."""
    with np.errstate(all="ignore"):
        return values.astype(dtype)


def _fmt(values: np.ndarray | None) -> str:
    if values is None:
        return "-"
    flat = np.ravel(values)
    return f"{flat[0]:.4g}" if flat.size == 1 else "[" + ", ".join(f"{v:.4g}" for v in flat) + "]"


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


PRESETS = {
    # torchvision's ImageNet models: resize the shorter side to 256, centre-crop 224
    "imagenet": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop": 0.875},
    # OpenAI CLIP: resize the shorter side to the input size, centre crop
    "clip": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "crop": 1.0,
    },
    "none": {},
}


def make_preprocessing(
    spec: TensorSpec,
    sidecar: Sidecar,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    scale: float | None = None,
    preset: str | None = None,
    size: tuple[int, int] | None = None,
) -> Preprocessing:
    """Decide preprocessing from the input's shape, the sidecar and the user's options.

    What is given wins over a preset: --mean/--std over --preprocess, which wins over the
    sidecar's own values and its "preset"; `size` (H, W) over the sidecar's "size". A size
    applies only where the model's own height and width are open (a detector, say)."""
    side = dict(sidecar.preprocessing or {})
    preset = preset or side.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise UsageError(
                f"unknown preprocessing preset {preset!r}; choose {', '.join(PRESETS)}"
            )
        side = (
            {**side, **PRESETS[preset]}
            if preset != "none"
            else {k: v for k, v in side.items() if k not in ("mean", "std", "crop")}
        )
    prep = Preprocessing(input_shape=list(spec.shape), dtype=spec.dtype)
    problem = unusable_reason(spec, "input")
    if problem:
        raise UsageError(f"{problem}; choose a float input with --input", sidecar.model_path)
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
        other = shape[3] if layout == "NCHW" else shape[1]  # the channels, the other way
        if side.get("layout") and _static(c) not in (None, 1, 3, 4) and _static(other) in (1, 3):
            # the sidecar's layout puts a width where the channels are: every input would
            # fail in ONNX Runtime; one error instead
            raise ModelError(
                f"the sidecar's layout {layout} does not fit the model input {list(shape)} "
                f"({_static(c)} channels?)",
                sidecar.model_path,
            )
        prep.channels = _static(c) or int(side.get("channels") or 3)
        prep.height, prep.width = _static(h), _static(w)
        if size is not None:
            _check_size_fits(size, prep.height, prep.width, spec)
            prep.height, prep.width = size
        elif side.get("size") and not (prep.height and prep.width):
            prep.height, prep.width = (int(v) for v in side["size"])
        prep.scale = float(scale or side.get("scale") or 255.0)
        prep.preset = preset
        if side.get("crop") is not None:
            prep.crop = float(side["crop"])
            if not 0 < prep.crop <= 1:
                raise UsageError(f"crop fraction {prep.crop} must be in (0, 1]")
        mean = mean if mean is not None else side.get("mean")
        std = std if std is not None else side.get("std")
        if mean is not None or std is not None:
            prep.mean = _per_channel(mean if mean is not None else [0.0], prep.channels, "--mean")
            prep.std = _per_channel(std if std is not None else [1.0], prep.channels, "--std")
    else:
        if size is not None:
            raise UsageError(
                f"--size is for image models; input {spec.name!r} {list(shape)} takes no images"
            )
        prep.feature_names = sidecar.feature_names
        mean = mean if mean is not None else side.get("mean")
        std = std if std is not None else side.get("std")
        if mean is not None or std is not None:
            n = _static(shape[-1]) if shape else None
            prep.mean = _numbers(mean if mean is not None else [0.0], "mean")
            prep.std = _numbers(std if std is not None else [1.0], "std")
            for arr, opt in ((prep.mean, "mean"), (prep.std, "std")):
                if n and arr.size not in (1, n):
                    raise UsageError(f"{opt} has {arr.size} values; the input has {n} features")
    if prep.std is not None and np.any(prep.std == 0):
        raise UsageError("std must not be zero")
    if prep.std is not None and np.any(prep.std < 0):  # the input negated, silently
        raise UsageError(f"std must be positive, not {float(prep.std.min()):g}")
    return prep


def parse_image_size(value: str | Sequence[int] | None) -> tuple[int, int] | None:
    """'HxW' (or (H, W)) as two positive whole numbers."""
    if value is None:
        return None
    try:
        parts = value.lower().split("x") if isinstance(value, str) else list(value)
        h, w = (int(p) if isinstance(p, str) else operator.index(p) for p in parts)
        if h < 1 or w < 1 or h * w > MAX_IMAGE_PIXELS:
            raise ValueError
    except (TypeError, ValueError):
        raise UsageError(f"size {value!r}: give height x width in pixels, e.g. 640x640") from None
    return h, w


def _check_size_fits(size: tuple[int, int], height, width, spec: TensorSpec) -> None:
    """A size where the model fixes one: a second way to say what the model says, or a
    mistake ONNX Runtime would report at every input."""
    for name, want, fixed in (("height", size[0], height), ("width", size[1], width)):
        if fixed and fixed != want:
            raise UsageError(
                f"--size {size[0]}x{size[1]}: input {spec.name!r} {list(spec.shape)} fixes "
                f"the {name} at {fixed}; --size is for models that take any size"
            )


def _per_channel(values, channels: int, option: str) -> np.ndarray:
    arr = _numbers(values, option)
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels:
        wanted = "1 value" if channels == 1 else f"1 or {channels} values"
        raise UsageError(
            f"{option} needs {wanted} for the model input's {channels} channel(s), got "
            f"{arr.size} (a preset for RGB images on a grey model?)"
        )
    return arr


def _numbers(values, option: str) -> np.ndarray:
    """mean or std as finite float64 numbers: NaN made every input fail later, blamed on
    the input, and an infinite std made every attribution zero, reported as fine."""
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise UsageError(f"{option} must be numbers, not {values!r}") from None
    if not np.all(np.isfinite(arr)):
        raise UsageError(f"{option} must be finite numbers, not {values!r}")
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
    # Token models (kind "tokens", x holds ids): values of the other inputs for this sample
    # (attention mask, token types: name -> model.Feed), the tokens as text, which positions
    # a baseline keeps (special tokens and padding), and the text the ids come from.
    feeds: dict | None = None
    tokens: list[str] | None = None
    special: np.ndarray | None = None
    text: str | None = None
    notes: list[str] = field(default_factory=list)  # what the user should hear about the file
    stamp: str | None = None  # its file's size:mtime_ns as read (rows of a CSV or text file)


# -- images -----------------------------------------------------------------------------------

# Formats igcli decodes, whatever the file's suffix says. Pillow knows many more (EPS runs
# Ghostscript, for one); an input folder is not trusted with them.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "GIF", "TIFF", "WEBP")  # JPEG covers MPO

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, the weights of Pillow's convert("L")
_PNG16 = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}  # raw mode -> its low-byte twin


def read_image(
    path: Path,
    prep: Preprocessing,
    size: tuple[int, int] | None = None,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Decode, turn upright (EXIF), convert to the model's channels, resize: (H, W, C) floats.

    An animation or a multi-page file gives its first frame; `notes` (when given) gets a
    line saying so, for the caller to pass on.

    Pixels are scaled by their own maximum (255, or 65535 for 16-bit PNGs) and then by
    255 / prep.scale, so a 16-bit mid-grey is 0.5 like an 8-bit one. `size` = (H, W)
    overrides the model's size (a baseline image is resized to its input's size).
    """
    channels = prep.channels or 3
    if channels not in _MODES:
        raise InputError(f"the model input has {channels} channels; an image gives 1, 3 or 4", path)
    height, width = size or (prep.height, prep.width)
    target = (width, height) if height and width else None
    with open_regular(path) as raw, warnings.catch_warnings():
        # Pillow warns (on several lines) about bombs, odd EXIF, palette transparency;
        # igcli either refuses the file in one line or reads it.
        warnings.simplefilter("ignore")
        size = file_size(raw)
        if size == 0:
            raise InputError("empty file (0 bytes), not an image", path)
        # A small file in one read: Pillow's many tell() calls on a file are each a system
        # call, and each gave up the GIL to the writer thread (a digit PNG made 11).
        fh = io.BytesIO(raw.read(size)) if size <= _READ_WHOLE else _CappedReader(raw, size)
        try:
            # (Pillow registers the plugin of each format it tries: a PNG needs no TIFF or
            # WebP, whose registering with every other plugin took 60 ms of each process)
            with Image.open(fh, formats=IMAGE_FORMATS) as img:
                _check_pixels(img.size, path)
                _check_decode_memory(img, channels, path)
                if img.format == "TIFF":
                    _quiet_libtiff()
                if _apart_from_animation(img):  # (what browsers show: the animation)
                    img.seek(1)
                    if notes is not None:
                        notes.append(
                            "an animated PNG whose default image is no frame of its animation "
                            "(viewers of animations never show it): the animation's first "
                            "frame is explained"
                        )
                elif notes is not None and _animated(img):
                    notes.append("several frames (an animation or pages); the first is explained")
                # Decoded before the stretch note reads EXIF: a PNG's getexif() decodes the
                # pixels itself, and a damaged stream's error must surface from that one decode.
                arr, max_value = _decode(img, fh, channels, target, path, prep.crop)
                if notes is not None and target and prep.crop is None:
                    notes.extend(_stretch_note(img, target))
                if notes is not None and _fully_transparent(img):
                    notes.append(
                        "fully transparent (every alpha is 0): a viewer shows nothing, but the "
                        "colours stored under it are what is explained"
                    )
        except IgcliError:
            raise
        except Image.DecompressionBombError as exc:  # Pillow refuses even bigger ones itself
            m = re.search(r"\((\d+) pixels\)", str(exc))
            count = f"{int(m.group(1)):,}" if m else "too many"
            raise InputError(
                f"image has {count} pixels, over igcli's limit of {MAX_IMAGE_PIXELS:,} "
                "(a decompression bomb?); refused",
                path,
            ) from None
        except UnidentifiedImageError:
            kind = _signature(fh)
            if kind is not None:  # (a bad header CRC, a 0x0 size: said as 'not PNG' before)
                raise InputError(
                    f"a damaged {kind} file (its header cannot be read)", path
                ) from None
            raise InputError(
                "not a readable image (not PNG, JPEG, BMP, GIF, TIFF or WebP)", path
            ) from None
        except MemoryError:
            raise InputError("image too large to decode in memory", path) from None
        except Exception as exc:  # decoders raise a zoo of exceptions on damaged files
            raise InputError(f"cannot decode image ({first_line(exc)})", path) from None
    return _scaled(arr, max_value, prep.scale)


def _scaled(arr: np.ndarray, max_value: float, scale: float | None) -> np.ndarray:
    """Pixels in their own range (up to max_value) on the model's 0-255 / scale, clipped at
    0; as they are without a scale. In place where arr is a float64 array of its own, in the
    same order as arr * a / b: no float64 copies of a large image."""
    if not scale:
        return arr
    if arr.dtype != np.float64 or not arr.flags.writeable:
        arr = arr.astype(np.float64)
    arr *= 255.0 / max_value
    arr /= scale
    return np.clip(arr, 0.0, None, out=arr)


_READ_WHOLE = 1 << 20


def _signature(fh) -> str | None:
    """The image format a file's first bytes name ("PNG"; files.kind_of's table, and BMP,
    which that table leaves out because a CSV may start "BM"), or None."""
    try:
        fh.seek(0)
        head = fh.read(12)
    except Exception:  # (a reader that cannot go back: no name, the generic message)
        return None
    if head.startswith(b"BM"):
        return "BMP"
    held = kind_of(head)
    return held[2:-6] if held and held.endswith(" image") else None  # "a PNG image" -> PNG


@functools.cache
def _quiet_libtiff() -> None:
    """Clear libtiff's error and warning handlers, which write to stderr themselves: a
    damaged TIFF printed 'ZIPDecode: Decoding error ...' beside igcli's one line (Pillow
    installs none; its decoder raises, and igcli says it once). The library is the one
    Pillow loaded (its own copy in a wheel, or the system's), found among the process's
    mapped files or beside Pillow; where none is found, libtiff keeps its lines."""
    for name in _libtiff_candidates():
        try:
            lib = ctypes.CDLL(name)
            for setter in (lib.TIFFSetErrorHandler, lib.TIFFSetWarningHandler):
                setter.argtypes, setter.restype = [ctypes.c_void_p], ctypes.c_void_p
                setter(None)
        except (OSError, AttributeError):
            continue
        return


def _libtiff_candidates() -> list[str]:
    """Paths of the libtiff this process has loaded (Linux), else those Pillow ships."""
    found: list[str] = []
    with (
        contextlib.suppress(OSError),
        open("/proc/self/maps", encoding="utf-8", errors="replace") as maps,
    ):
        for line in maps:
            path = line.split(maxsplit=5)[-1].strip()
            if "/libtiff" in path and path not in found:
                found.append(path)
    import PIL

    here = Path(PIL.__file__).parent
    for pattern in ("../pillow.libs/libtiff*", ".dylibs/libtiff*"):
        found += [str(p) for p in sorted(here.glob(pattern))]
    return found


def _apart_from_animation(img) -> bool:
    """An APNG whose default image (IDAT) is not part of its animation: Pillow's frame 0 is
    then that image, which browsers never show (a black default before a 7 and a 3 was
    explained, every attribution 0)."""
    try:
        return img.format == "PNG" and bool(img.info.get("default_image")) and img.n_frames > 1
    except Exception:  # noqa: BLE001 (a damaged frame: read as stored)
        return False


def _animated(img) -> bool:
    """An animated GIF, PNG or WebP, or a multi-page TIFF (asked without counting frames,
    which decodes them all). An MPO's later frames are previews or depth maps of its first
    (a camera's JPEG), not other pictures."""
    if img.format == "MPO":
        return False
    try:
        return bool(getattr(img, "is_animated", False))
    except Exception:  # noqa: BLE001 (a damaged second frame: the first is still read)
        return False


class _CappedReader(io.RawIOBase):
    """A file as Pillow reads it, with reads capped at what the file holds: Pillow asks
    for a PNG chunk's declared length at once (skipping the rest of IDAT), and a buffered
    read allocates all of it up front, so 400 bytes claiming a 2 GB chunk allocated 2 GB."""

    def __init__(self, fh, size: int) -> None:
        super().__init__()
        self._fh, self._size = fh, size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        left = max(self._size - self._fh.tell(), 0)
        return self._fh.read(left if n is None or n < 0 else min(n, left))

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()


def _check_pixels(size: tuple[int, int], path: Path) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise InputError(f"image has no pixels ({w}x{h})", path)
    if w * h > MAX_IMAGE_PIXELS:
        raise InputError(
            f"image has {w * h:,} pixels ({w}x{h}), over igcli's limit of "
            f"{MAX_IMAGE_PIXELS:,} (a decompression bomb?); refused",
            path,
        )


# Bytes a decoded 16-bit pixel takes at the peak of reading it (measured on 25 MP PNGs, 17
# for RGB, with some room): Pillow's pixels, their numpy copy and a second decode for the low
# bytes.
_DECODE_BYTES_16 = {"I;16": 7, "RGB": 18, "RGBA": 23}
_DECODE_CHECKED = 256 << 20  # images that take less are read unchecked (most of them)


def _check_decode_memory(img, channels: int, path: Path) -> None:
    """An image whose decoding would take more memory than the machine (or the cgroup) has
    to spare fails alone, before it is decoded: the pixel limit lets through a 0.5 MB
    16-bit PNG that decodes to 2 GB, and a run killed for memory loses every input."""
    w, h = img.size
    if img.mode.startswith("I;16"):
        per_pixel = _DECODE_BYTES_16["I;16"]
    elif img.format == "PNG" and _png16_rawmode(img):
        per_pixel = _DECODE_BYTES_16.get(img.mode, max(_DECODE_BYTES_16.values()))
    else:  # Pillow's pixels (1 byte for grey, 4 for colour; a palette's become RGB), the
        # converted image, its float64 array and the scaled copy, the model's float32 sample
        # (an 8000 x 8000 RGB image peaked at 4.3 GB where 11 bytes a pixel said 0.7)
        held = {"1": 1, "L": 1, "P": 5}.get(img.mode, 4)
        per_pixel = 2 * held + 20 * channels + 1
    need = w * h * per_pixel
    if need < _DECODE_CHECKED:
        return
    from igcli.memory import memory_to_spare, size_text

    spare = memory_to_spare()
    if need > spare:
        raise InputError(
            f"decoding it ({w}x{h} pixels) takes about {size_text(need)}, more than the "
            f"{size_text(spare)} this machine has to spare; refused",
            path,
        )


def _decode(img, fh, channels: int, target, path: Path, crop=None) -> tuple[np.ndarray, float]:
    """(H, W, C) float64 in the image's own range, and that range's maximum."""
    if img.format == "PNG" and img.tell() == 0 and _png16_rawmode(img):
        high = _upright_array(img)
        fh.seek(0)
        try:
            with Image.open(fh, formats=["PNG"]) as twin:
                tile = twin.tile[0]
                twin.tile = [tile._replace(args=_PNG16[tile[3]])]
                low = _upright_array(twin)
        except Exception:  # not decodable that way in this Pillow: keep 8-bit precision
            low = None
        if low is None or low.shape != high.shape:
            planes = [high[:, :, c] for c in range(high.shape[2])]
            return _float_channels(planes, channels, target, 255.0, crop), 255.0
        planes = [_Plane16(high[:, :, c], low[:, :, c]) for c in range(high.shape[2])]
        return _float_channels(planes, channels, target, 65535.0, crop), 65535.0
    return _pil_pixels(img, channels, target, path, crop)


def _pil_pixels(
    img,
    channels: int,
    target,
    path: Path,
    crop=None,
    error: type[IgcliError] = InputError,
    upright: bool = True,
) -> tuple[np.ndarray, float]:
    """A decoded (or given) PIL image as (H, W, C) float64 in its own range, and that
    range's maximum: 16-bit grey at full precision, 32-bit modes refused. `upright`: turn it
    as its EXIF orientation says (a file, as viewers show it); a PIL image given in Python is
    taken as its pixels are, as a notebook shows it (one turned upright by hand keeps the
    EXIF of its file, and was turned a second time)."""
    if img.mode.startswith("I;16"):
        grey = _upright_array(img, upright)[:, :, 0]
        return _float_channels([grey], channels, target, 65535.0, crop), 65535.0
    if img.mode in ("I", "F"):
        raise error(
            f"images of 32-bit or signed samples ({img.mode} mode) are not supported; use "
            "8- or 16-bit unsigned images or a .npy tensor",
            path,
        )
    img.load()
    img = _upright(img) if upright else img
    img = fit_image(img.convert(_MODES.get(channels, "RGB")), target, crop)
    arr = np.asarray(img, dtype=np.float64)
    return (arr[:, :, None] if arr.ndim == 2 else arr), 255.0


def _fully_transparent(img) -> bool:
    """Whether every pixel of a decoded image is fully transparent (alpha, or a palette's
    transparent entry): the model sees colours no viewer shows."""
    try:
        if "A" in img.getbands():
            return img.getchannel("A").getextrema() == (0, 0)
        if img.mode == "P" and "transparency" in img.info:
            return img.convert("RGBA").getchannel("A").getextrema() == (0, 0)
    except Exception:  # (an odd mode: no note)
        return False
    return False


STRETCH_NOTED = 2.0  # an aspect ratio changed by this factor or more is worth a word


def _stretch_note(img, target: tuple[int, int]) -> list[str]:
    """A line when squashing the image to the model's size changes its shape a lot (a
    20000x1 strip made 28x28 gave no sign of it); none for the usual photo to square.
    `img` must be decoded already, so the except below only meets damaged EXIF."""
    w, h = img.size
    try:
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # stored sideways (see _upright)
            w, h = h, w
    except Exception:  # damaged EXIF: read as stored
        pass
    factor = (w / h) / (target[0] / target[1])
    factor = max(factor, 1 / factor)
    if factor < STRETCH_NOTED:
        return []
    fold = f"{factor:.1f}" if factor < 10 else f"{factor:,.0f}"
    return [
        f"{h}x{w} image (HxW, as --size) squashed to the model's {target[1]}x{target[0]} "
        f"(its width:height ratio changed {fold}-fold)"
    ]


def fit_image(img: Image.Image, target: tuple[int, int] | None, crop: float | None):
    """`img` at the model's (W, H): squashed to it, or (with `crop`) scaled so its shorter
    side covers it divided by `crop` and cut out from the centre, in one resampling."""
    if not target or (img.size == target and crop is None):
        return img
    return img.resize(target, Image.Resampling.BILINEAR, box=_crop_box(img.size, target, crop))


def _crop_box(size: tuple[int, int], target: tuple[int, int], crop: float | None) -> tuple:
    """The part of an image of `size` that fit_image resamples to `target` (all of it
    without `crop`)."""
    (w, h), (tw, th) = size, target
    if crop is None:
        return (0, 0, w, h)
    s = max(tw / w, th / h) / crop  # source pixels -> target pixels
    bw, bh = tw / s, th / s
    return ((w - bw) / 2, (h - bh) / 2, (w + bw) / 2, (h + bh) / 2)


@dataclass(frozen=True)
class _Plane16:
    """A 16-bit plane from its high and low bytes, made (rows at a time) when read: float32
    holds every 16-bit value exactly."""

    high: np.ndarray
    low: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.high.shape

    def __getitem__(self, rows) -> np.ndarray:
        plane = self.high[rows].astype(np.float32)
        plane *= 256.0
        plane += self.low[rows]
        return plane


def _png16_rawmode(img) -> bool:
    """Pillow reads 16-bit RGB(A) PNGs as 8-bit images; the tile's raw mode tells the truth."""
    tiles = getattr(img, "tile", None) or []
    return len(tiles) == 1 and tiles[0][0] == "zip" and tiles[0][3] in _PNG16


def _upright(img):
    """EXIF orientation applied (phone photos are stored sideways and flagged). Called on a
    decoded image only, so the except below meets damaged EXIF, not damaged pixels."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # damaged EXIF: keep the stored orientation, as viewers do
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(img)
    return img


def _upright_array(img, upright: bool = True) -> np.ndarray:
    """The decoded samples as stored (8-bit bytes, or 16-bit grey), upright (unless not
    `upright`: see _pil_pixels), (H, W, C)."""
    img.load()
    arr = np.asarray(_upright(img) if upright else img)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _float_channels(planes: list, channels: int, target, full: float, crop=None) -> np.ndarray:
    """Full-precision planes of one image -> (H, W, channels) float64, each plane converted
    and resized on its own, a strip of rows at a time (see _fitted), so a large 16-bit image
    costs little beyond its decoded bytes. A plane may be a _Plane16, made when it is read
    (a 9400 x 9400 16-bit RGBA PNG of 0.7 MB took 5.3 GB with all four made first). `full`
    is the value of an opaque alpha."""
    height, width = planes[0].shape[:2]

    def made(plane) -> Callable[[slice], np.ndarray]:
        return lambda rows: plane[rows].astype(np.float32, copy=False)

    def grey(rows: slice) -> np.ndarray:  # (in float64, then float32 as the planes are)
        return sum(made(p)(rows) * w for w, p in zip(_LUMA, planes[:3], strict=True)).astype(
            np.float32
        )

    def fitted(rows_of: Callable[[slice], np.ndarray]) -> np.ndarray:
        return _fitted(rows_of, (width, height), target, crop)

    if channels == 1:
        return fitted(made(planes[0]) if len(planes) < 3 else grey)[:, :, None]
    out = [fitted(made(plane)) for plane in (planes[:3] if len(planes) >= 3 else planes[:1])]
    if len(out) == 1:
        out *= 3
    if channels == 4:
        out.append(fitted(made(planes[3])) if len(planes) >= 4 else np.full_like(out[0], full))
    return np.stack(out, axis=2)


_STRIP_ROWS = 256


def _fitted(rows_of: Callable[[slice], np.ndarray], size, target, crop) -> np.ndarray:
    """A float32 plane, given a strip of rows at a time by `rows_of`, resized as fit_image
    resizes it, as float64. A bilinear resize is two passes, across each row and then down
    each column: where the first narrows the plane, it runs on a strip of rows at a time,
    and only its narrow result is whole (a 9400-pixel plane at 224 wide: 8 MB, where the
    float plane took 350 MB and Pillow's copy of it 350 more). The pixels are those of one
    resize of the whole plane done across first (Pillow may go down first: a float32
    rounding apart)."""
    width, height = size
    if not target or ((width, height) == target and crop is None):
        return rows_of(slice(None)).astype(np.float64)
    (tw, th), box = target, _crop_box(size, target, crop)
    if tw > width:  # (across first would widen it: a thin strip, one resize of it whole)
        whole = Image.fromarray(np.ascontiguousarray(rows_of(slice(None)), np.float32))
        return np.asarray(fit_image(whole, target, crop), np.float32).astype(np.float64)
    across = np.empty((height, tw), np.float32)
    for top in range(0, height, _STRIP_ROWS):
        strip = np.ascontiguousarray(rows_of(slice(top, top + _STRIP_ROWS)), np.float32)
        rows = len(strip)
        first = Image.fromarray(strip).resize(
            (tw, rows), Image.Resampling.BILINEAR, box=(box[0], 0, box[2], rows)
        )
        across[top : top + rows] = np.asarray(first, np.float32)
    down = Image.fromarray(across).resize(
        (tw, th), Image.Resampling.BILINEAR, box=(0, box[1], tw, box[3])
    )
    return np.asarray(down, np.float32).astype(np.float64)


# -- files of any kind ------------------------------------------------------------------------


def load_samples(path: Path, prep: Preprocessing, name: str) -> list[Sample]:
    """Samples from one file; `name` is the output stem (a CSV adds _row<k>).

    Every problem with the file is an InputError naming it: the run goes on with the others.
    """
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        if not os.path.lexists(path):
            raise InputError("no such file", path)
        if os.path.isdir(path):
            raise InputError("a folder, not an input file (explain takes folders as INPUTS)", path)
        held = content_kind(path)  # named as an input: read by content, as a misnamed one is
        if held == _NPY:
            sample = Sample(path, name, "tensor", read_tensor(path, prep))
        elif held is not None and held.endswith(" image") and prep.is_image_model:
            sample = _image_sample(path, prep, name)
        else:
            raise InputError(f"unsupported file type {suffix or '(none)'!r}", path)
        named = f"named {suffix}" if suffix else "no file type in its name"
        sample.notes.append(f"{named}, but holds {held}; read as what it holds")
        return [sample]
    if suffix in IMAGE_SUFFIXES:
        try:
            if not prep.is_image_model:
                shape = prep.input_shape
                raise InputError(f"an image, but the model input has shape {shape}", path)
            return [_image_sample(path, prep, name)]
        except InputError:
            held = content_kind(path)
            if held != _NPY:  # (read by what it holds: a misnamed .npy)
                raise
        sample = Sample(path, name, "tensor", read_tensor(path, prep))
    elif suffix in TENSOR_SUFFIXES:
        try:
            return [Sample(path, name, "tensor", read_tensor(path, prep))]
        except InputError:
            held = content_kind(path)
            if held is None or not held.endswith(" image"):
                raise
            if not prep.is_image_model:
                raise InputError(
                    f"holds {held}, not a NumPy array, and the model input has shape "
                    f"{prep.input_shape}",
                    path,
                ) from None
        sample = _image_sample(path, prep, name)
    else:
        return read_table(path, prep, name)
    sample.notes.append(f"named {suffix} but holds {held}; read as what it holds")
    return [sample]


_NPY = "a NumPy array (.npy)"  # (files.content_kind's word for it)


def _image_sample(path: Path, prep: Preprocessing, name: str) -> Sample:
    notes: list[str] = []
    pixels = read_image(path, prep, notes=notes)
    x = _to_model_dtype(prep.image_to_model(pixels, cast=False), prep.dtype, path, InputError)
    return Sample(path, name, "image", x, pixels=pixels, notes=notes)


def _to_model_dtype(
    values: np.ndarray, dtype: np.dtype, path: Path, error: type[IgcliError]
) -> np.ndarray:
    """Cast to the model input's float type; NaN, Inf or overflow is the file's problem."""
    if not np.all(np.isfinite(values)):
        raise error("contains NaN or Inf", path)
    cast = _cast(values, dtype)
    if not np.all(np.isfinite(cast)):
        big = float(np.max(np.abs(values)))
        raise error(f"values overflow {np.dtype(dtype).name} (largest |value| {big:.3g})", path)
    return cast


# -- .npy tensors -----------------------------------------------------------------------------


def shape_matches(shape: tuple, expected: list) -> bool:
    """Whether a shape fits a declared one (a symbolic or open dim fits any size)."""
    return len(shape) == len(expected) and all(
        not isinstance(e, int) or e <= 0 or e == s for s, e in zip(shape, expected, strict=True)
    )


def dtype_problem(dtype: np.dtype) -> str | None:
    """Why an array of this dtype is not a model-space float tensor (None when it is)."""
    kind = dtype.kind
    if kind == "f":
        return None
    if kind == "c":
        return f"dtype {dtype} is complex; igcli attributes real (float) inputs"
    if kind in "US":
        return f"holds strings (dtype {dtype}), not numbers"
    if kind in "iub":
        return (
            f"dtype {dtype} is not a float type; .npy inputs are in model space: save them "
            "as float32"
        )
    return f"dtype {dtype} is not a float type (not a plain array of numbers)"


def read_tensor(
    path: Path, prep: Preprocessing, error: type[IgcliError] = InputError
) -> np.ndarray:
    """A .npy sample in model space, with or without its batch axis of 1; its dtype and shape
    are judged on the header, before the data is read."""
    arr = read_npy(path, error, check=lambda shape, dtype: _fitting(shape, dtype, prep)[0])
    return fit_tensor(arr, prep, path, error)


def _fitting(shape: tuple, dtype: np.dtype, prep: Preprocessing) -> tuple[str | None, int | None]:
    """Why an array of this shape and dtype is no sample of the model (None when it is one),
    and the batch axis of 1 to drop from it (None: it has none)."""
    problem = dtype_problem(dtype)
    if problem:
        return problem, None
    shape = tuple(int(d) for d in shape)
    expected = prep.input_shape
    ndim = len(shape)
    if not expected:  # the model declares no shape: only the batch axis can be recognised
        if ndim == 0 or shape[0] != 1:
            return (
                f"shape {list(shape)}: the model does not declare this input's shape, so "
                "save the tensor with its leading batch axis of 1"
            ), None
        drop = 0
    elif shape_matches(shape, expected) or (
        ndim == len(expected) and shape[0] == 1 and shape_matches(shape[1:], expected[1:])
    ):  # (a leading 1 also where a model was exported with a fixed batch of 8, say)
        if shape[0] != 1:
            return f"holds a batch of {shape[0]}; give one sample per file", None
        drop = 0
    elif (
        prep.batch_axis
        and ndim == len(expected)
        and shape[prep.batch_axis] == 1
        and shape_matches(_without(shape, prep.batch_axis), expected[1:])
    ):  # the model's own sequence-first layout, [T, 1, F]
        drop = prep.batch_axis
    elif not shape_matches(shape, expected[1:]):
        declared = list(expected[1:])
        declared.insert(prep.batch_axis, expected[0])
        if prep.batch_axis and shape_matches(shape, declared):  # the whole [T, N, F] input
            sample = [d if isinstance(d, int) and d > 0 else "?" for d in expected[1:]]
            one = list(sample)
            one.insert(prep.batch_axis, 1)
            return (
                f"holds a batch of {shape[prep.batch_axis]} on axis {prep.batch_axis} (the "
                f"model takes its rows there); give one sample per file, {sample} or {one}"
            ), None
        return f"shape {list(shape)} does not fit the model input {dims_text(declared)}", None
    else:
        drop = None
    left = shape if drop is None else _without(shape, drop)
    if math.prod(left) == 0:
        return f"shape {list(left)} holds no values", None
    return None, drop


def dims_text(dims) -> str:
    """[1, T, 8]: dims as the model names them, an unnamed open one as '?'."""
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in dims) + "]"


def _without(shape: tuple, axis: int) -> tuple:
    return shape[:axis] + shape[axis + 1 :]


def fit_tensor(
    arr: np.ndarray, prep: Preprocessing, path: Path, error: type[IgcliError] = InputError
) -> np.ndarray:
    """One sample (no batch axis) in the model's dtype, from an array with or without it."""
    problem, drop = _fitting(arr.shape, arr.dtype, prep)
    if problem:
        raise error(problem, path)
    if drop is not None:
        arr = np.squeeze(arr, axis=drop)
    return _to_model_dtype(arr, prep.dtype, path, error)


def sample_from_array(value, prep: Preprocessing, name: str) -> Sample:
    """A sample from a numpy array in model space (batch axis optional) or a PIL image."""
    where = Path(f"<{name}>")
    if isinstance(value, Image.Image):
        if not prep.is_image_model:
            raise UsageError(f"an image, but the model input has shape {prep.input_shape}")
        channels = prep.channels or 3
        target = (prep.width, prep.height) if prep.height and prep.width else None
        # the checks and 16-bit handling a file gets (convert("L") would clip 16-bit grey)
        _check_pixels(value.size, where)
        try:
            arr, full = _pil_pixels(
                value, channels, target, where, prep.crop, UsageError, upright=False
            )
        except ValueError as exc:  # a mode Pillow cannot convert (LAB to RGB)
            raise UsageError(f"a {value.mode} image: {first_line(exc)}", where) from None
        pixels = _scaled(arr, full, prep.scale)
        x = _to_model_dtype(prep.image_to_model(pixels, cast=False), prep.dtype, where, UsageError)
        return Sample(where, name, "image", x, pixels=pixels)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # a ragged nested list
        raise UsageError(f"not an array: {first_line(exc)}", where) from None
    x = fit_tensor(arr, prep, where, UsageError)
    kind = "tabular" if x.ndim == 1 else "tensor"
    return Sample(where, name, kind, x, feature_names=prep.feature_names)


# -- CSV tables -------------------------------------------------------------------------------


def _open_text(fh) -> io.TextIOWrapper:
    """UTF-8 (a byte-order mark, as spreadsheets write, is dropped) or UTF-16 with its mark.
    Bytes that are not UTF-8 arrive as lone surrogates (see _not_utf8), so that such a byte
    fails its own row: decoding strictly, one at row 5,000 of 6,000 ended the file there and
    the thousand good rows after it were neither explained nor reported."""
    head = fh.peek(4)[:4] if hasattr(fh, "peek") else b""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return io.TextIOWrapper(fh, encoding="utf-16", newline="")
    return io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _not_utf8(cells: list[str]) -> int | None:
    """The first byte of these cells that was not UTF-8 (a lone surrogate from
    surrogateescape), or None."""
    for cell in cells:
        if not cell.isascii():
            for ch in cell:
                if "\udc80" <= ch <= "\udcff":
                    return ord(ch) - 0xDC00
    return None


def _delimiter(first_line: str) -> str:
    """Comma, unless the header has none and is clearly separated by ';' or tabs."""
    if "," not in first_line:
        for candidate in (";", "\t"):
            if candidate in first_line:
                return candidate
    return ","


def _is_number(text: str) -> bool:
    try:
        _number(text)
    except ValueError:
        return False
    return True


def _number(text: str) -> float:
    """A CSV cell as a float, in plain ASCII only: float() also reads '1_3.68' as 13.68 and
    Arabic-Indic or fullwidth digits, which a table of features never means."""
    if not text.isascii() or "_" in text:
        raise ValueError(text)
    return float(text)


@dataclass
class RowError:
    """A CSV row that cannot be explained (short, not numbers, NaN): the other rows can."""

    name: str  # the row's output name, <name>_row<k>
    error: InputError


def read_table(path: Path, prep: Preprocessing, name: str) -> list[Sample]:
    """One sample per CSV row; the header names the features (matched to the sidecar's).

    Strict: the first bad row fails the file. iter_table streams rows and reports bad
    rows one by one instead.
    """
    samples = []
    for item in iter_table(path, prep, name):
        if isinstance(item, RowError):
            raise item.error
        samples.append(item)
    return samples


def iter_table(path: Path, prep: Preprocessing, name: str) -> Iterator[Sample | RowError]:
    """The rows of a CSV one at a time (`<name>_row<k>`, k counting data rows), so a long
    file streams in constant memory. A bad row is a RowError and the next rows follow;
    problems with the whole file (header, encoding, a cell over csv's field limit) raise
    InputError, after the rows read so far. A file without data rows raises too."""
    held = content_kind(path)
    if held is not None:
        raise InputError(f"not CSV text: it holds {held}; name it for what it holds", path)
    if len(prep.input_shape) != 2:
        raise InputError(f"CSV rows need a 2-D model input, not {prep.input_shape}", path)
    expected_n = prep.input_shape[-1]
    if not isinstance(expected_n, int) or expected_n <= 0:
        expected_n = None
    line = [0]  # where the reader is, for error messages
    with open_regular(path) as fh:
        st = os.fstat(fh.fileno())  # (the file this handle reads, whatever the name becomes)
        if st.st_size == 0:
            raise InputError("empty file (0 bytes); CSV needs a header row", path)
        stamp = stamp_of(st)
        text = _open_text(fh)
        count = 0
        block: list[tuple[str, int, list[float] | InputError]] = []
        failure: InputError | None = None
        try:
            rows = _table_rows(text, line, path, prep, expected_n)
            names = next(rows)
            for values in rows:
                block.append((f"{name}_row{count}", line[0], values))
                count += 1
                if len(block) == _ROW_BLOCK:
                    yield from stamped(_block_samples(block, names, prep, path), stamp)
                    block = []
        except UnicodeDecodeError as exc:
            failure = InputError(
                f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the CSV as UTF-8",
                path,
            )
        except csv.Error as exc:
            failure = InputError(f"CSV line {line[0]}: {_csv_reason(exc)}", path)
        except OSError as exc:
            failure = InputError(f"cannot read ({os_reason(exc)})", path)
        finally:
            text.detach()  # the binary file closes itself
        if block:  # the rows read before a failure are still explained
            yield from stamped(_block_samples(block, names, prep, path), stamp)
        if failure is not None:
            raise failure
    if count == 0:
        raise InputError("CSV needs a header row and at least one data row", path)


_ROW_BLOCK = 256  # rows converted together: numpy's per-call cost, paid once per block


def stamped(rows, stamp: str | None):
    """Rows (samples or RowErrors) with their file's stamp as it was read."""
    for row in rows:
        if isinstance(row, Sample):
            row.stamp = stamp
        yield row


def _block_samples(block, names: list[str], prep: Preprocessing, path: Path):
    """Samples (or RowErrors) for a block of parsed rows, in file order."""
    good = [i for i, (_, _, v) in enumerate(block) if not isinstance(v, InputError)]
    raw = np.array([block[i][2] for i in good], dtype=np.float64).reshape(len(good), len(names))
    x = prep.rows_to_model(raw, cast=False)
    cast = _cast(x, prep.dtype)
    finite = np.isfinite(x).all(axis=1) & np.isfinite(cast).all(axis=1)
    k = 0
    for row_name, row_line, values in block:
        if isinstance(values, InputError):
            yield RowError(row_name, values)
            continue
        j, k = k, k + 1
        if not finite[j]:
            try:
                _to_model_dtype(x[j], prep.dtype, path, InputError)
            except InputError as exc:
                yield RowError(row_name, InputError(f"line {row_line}: {exc.reason}", path))
                continue
        yield Sample(path, row_name, "tabular", cast[j], feature_names=names, raw_values=raw[j])


def _csv_reason(exc: csv.Error) -> str:
    text = first_line(exc)
    if "field larger than field limit" in text:  # mostly a quote that is never closed
        return (
            f"a cell is longer than {csv.field_size_limit():,} characters (a quote not "
            "closed?); the rows from this line on are not read"
        )
    if "NUL" in text:
        return "contains a NUL byte (not a text file?)"
    return text


MAX_CSV_LINE = 1 << 20  # characters of one CSV line (a wider header allows more, see below)
CSV_CHARS_PER_CELL = 64


def csv_line_limit(width: int) -> int:
    """The longest data line a CSV with `width` header cells may have."""
    return max(MAX_CSV_LINE, CSV_CHARS_PER_CELL * width)


def bounded_lines(text, limit: list[int], cut: set[int]) -> Iterator[str]:
    """The lines of `text`, each read at most limit[0] characters at a time: a longer line
    is skipped in pieces and given as a line of one cell, '?', its number added to `cut`
    (a row of its own, so rows keep their numbers for every reader). csv makes a
    Python string of every cell of a row before anyone can count them: a 30 MB line of
    commas took 900 MB, so a 1 GB one ran out of memory instead of being refused."""
    number = 0
    while True:
        piece = text.readline(limit[0] + 1)
        if not piece:
            return
        number += 1
        if len(piece) > limit[0] and not piece.endswith(("\n", "\r")):
            while piece and not piece.endswith(("\n", "\r")):
                piece = text.readline(1 << 16)
            cut.add(number)
            yield "?\n"
            continue
        yield piece


def _table_rows(text, line: list[int], path: Path, prep: Preprocessing, expected_n: int | None):
    """Yields the feature names, then each data row as a list of floats (in the names'
    order) or an InputError naming its line. `line` follows the reader."""
    limit = [MAX_CSV_LINE]  # raised for a wide header below
    cut: set[int] = set()
    lines = bounded_lines(text, limit, cut)
    leading = []  # blank lines before the header: the delimiter is the header's
    for first in lines:
        leading.append(first)
        if first.strip():
            break
    first = leading[-1] if leading else ""
    reader = csv.reader(itertools.chain(leading, lines), delimiter=_delimiter(first))

    def records():
        while True:
            start = line[0] = reader.line_num + 1  # the line being read, should it fail
            row = next(reader, None)
            if row is None:
                return
            line[0] = reader.line_num
            if line[0] in cut:
                cut.discard(line[0])
                yield None  # a line too long to read (its cells were never made)
            elif line[0] > start and any("\n" in c or "\r" in c for c in row):
                yield start  # a quoted cell over several lines: no numeric table has one
            elif row and any(c.strip() for c in row):
                yield row

    def too_long() -> InputError:
        return InputError(
            f"line {line[0]} is over {limit[0]:,} characters; refused before reading its cells",
            path,
        )

    rows_iter = records()
    header_row = next(rows_iter, ())
    if header_row is None:
        raise too_long()
    if isinstance(header_row, int):  # (the line it started on)
        raise InputError(
            f"header, lines {header_row}-{line[0]}: a quote opened on line {header_row} is "
            "not closed on it, so csv read these lines as one cell",
            path,
        )
    if not header_row:
        raise InputError("CSV needs a header row and at least one data row", path)
    if (byte := _not_utf8(header_row)) is not None:
        raise InputError(f"not UTF-8 text (byte 0x{byte:02x}); save the CSV as UTF-8", path)
    header = [h.strip() for h in header_row]
    while header and not header[-1]:  # a trailing separator on every line
        header.pop()
    if prep.feature_names:
        names = list(prep.feature_names)
        missing = [f for f in names if f not in header]
        if missing:
            raise InputError(f"CSV lacks feature(s) {', '.join(map(repr, missing[:3]))}", path)
    else:
        names = header
        if all(_is_number(h) for h in header) and header not in (
            [str(i) for i in range(len(header))],
            [str(i + 1) for i in range(len(header))],
        ):
            raise InputError(
                "the first row holds only numbers: CSV needs a header row naming the features",
                path,
            )
    counts = Counter(header)
    for k, h in enumerate(names):
        if not h:
            raise InputError(f"header cell {k + 1} is empty; every column needs a name", path)
        if counts[h] > 1:
            raise InputError(f"column {h!r} appears {counts[h]} times in the header", path)
    order = [header.index(f) for f in names]
    if expected_n is not None and len(order) != expected_n:
        raise InputError(f"CSV has {len(order)} columns; the model takes {expected_n}", path)
    yield names
    width = len(header)
    limit[0] = csv_line_limit(width)
    for row in rows_iter:
        if row is None:
            yield too_long()
            continue
        if isinstance(row, int):  # (the line it started on)
            yield InputError(
                f"lines {row}-{line[0]}: a quote opened on line {row} is not closed on it, so "
                "csv read these lines as one cell; none of them is read",
                path,
            )
            continue
        if (byte := _not_utf8(row)) is not None:
            yield InputError(
                f"line {line[0]} is not UTF-8 text (byte 0x{byte:02x}); save the CSV as UTF-8", path
            )
            continue
        yield _row_values(row, width, order, header, f"line {line[0]}", path)


def _row_values(row, width, order, header, where: str, path: Path) -> list[float] | InputError:
    if len(row) < width:
        return InputError(f"{where} is short: {len(row)} cell(s), the header has {width}", path)
    if len(row) > width and any(c.strip() for c in row[width:]):
        return InputError(f"{where} has {len(row)} cells; the header has {width}", path)
    values = []
    for j in order:
        cell = row[j].strip()
        try:
            value = _number(cell)
        except ValueError:
            what = "is empty" if not cell else f"holds {cell[:20]!r}"
            return InputError(f"{where} is not all numbers: column {header[j]!r} {what}", path)
        if not math.isfinite(value):
            return InputError(f"{where}: column {header[j]!r} is NaN or Inf ({cell!r})", path)
        values.append(value)
    return values
