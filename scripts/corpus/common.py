"""Paths, deterministic inputs and manifest entries shared by the corpus builders."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
MODELS = CORPUS / "models"
DATA = CORPUS / "data"
MANIFEST = CORPUS / "corpus.json"
PRETRAINED = CORPUS / "pretrained.json"
FETCHED = Path(os.environ.get("IGCLI_CORPUS_CACHE", ROOT / ".cache" / "corpus"))

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])

# The acceptance numbers of issue 7 for a graph against a float64 reference.
PEARSON_MIN = 0.999
REL_L1_MAX = 0.01
COMPLETENESS_MAX = 0.01


def seed_for(name: str) -> int:
    """A stable seed per name (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode())


def image_like(height: int, width: int, seed: int) -> np.ndarray:
    """An HxWx3 picture in [0, 1] with structure at several scales (blobs, an edge, stripes,
    noise), so attributions have something to find."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    img = np.full((height, width, 3), 0.15) + 0.1 * rng.random(3)
    for _ in range(3):
        cy, cx = rng.random(2)
        r = 0.1 + 0.25 * rng.random()
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.random(3)
    angle = rng.random() * np.pi
    edge = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) > 0
    img += 0.2 * edge[..., None] * rng.random(3)
    img += 0.08 * np.sin(2 * np.pi * 6 * (xx + yy))[..., None]
    img += 0.04 * rng.standard_normal(img.shape)
    return np.clip(img, 0.0, 1.0)


def imagenet_tensor(height: int, width: int, seed: int) -> np.ndarray:
    """image_like, ImageNet-normalised, as a float32 NCHW batch of 1."""
    img = (image_like(height, width, seed) - IMAGENET_MEAN) / IMAGENET_STD
    return img.transpose(2, 0, 1)[None].astype(np.float32)


def text_image(text: str, height: int, width: int) -> np.ndarray:
    """Dark text on a light background, HxWx3 in [0, 1]: what the OCR models expect."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.new("RGB", (width * 4, height * 4), (235, 232, 225))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=height * 2)
    draw.text((width * 0.2, height * 0.6), text, fill=(20, 20, 30), font=font)
    img = canvas.resize((width, height), Image.LANCZOS)
    return np.asarray(img, dtype=np.float64) / 255.0


def save_npy(path: Path, array: np.ndarray) -> str:
    """Write under tests/corpus and return the path relative to it (what the manifest holds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return path.relative_to(CORPUS).as_posix()


def rel(path: Path) -> str:
    return path.relative_to(CORPUS).as_posix()


def load_manifest() -> dict:
    if MANIFEST.exists():
        return json.loads(MANIFEST.read_text())
    return {"models": []}


def float6(value: float) -> float:
    return float(f"{value:.6g}")


def completeness_bound(ref_rel_error: float) -> float:
    """igcli's completeness bound for a case: 1% when the float64 reference itself meets
    0.5% at these steps, else twice the reference's own error plus 0.5% (kinks, saturation)."""
    if ref_rel_error <= 0.005:
        return COMPLETENESS_MAX
    return float6(2 * ref_rel_error + 0.005)


def reference_block(ref, path: Path, **extra) -> dict:
    """The manifest's description of a stored reference."""
    return {
        "file": save_npy(path, ref.attributions.astype(np.float32)),
        "kind": ref.kind,
        "dtype_computed": "float64",
        "f_input": float6(ref.f_input),
        "f_baseline": float6(ref.f_baseline),
        "rel_error": float6(ref.rel_error),
        **extra,
    }


def expect_graph(ref, *, sources=("graph",), fd_sim=None, **extra) -> dict:
    """Exit 0 with one of `sources`, the reference met within issue 7's tolerances. Where
    finite differences are an accepted source, the relative L1 bound is at least three times
    what a correct float32 finite-difference run reaches (`fd_sim`, simulated at build time),
    so that a right answer is never failed for float32 rounding."""
    rel_l1_max = REL_L1_MAX
    if fd_sim is not None and "fd" in sources:
        from corpus.reference import rel_l1

        rel_l1_max = max(REL_L1_MAX, float6(3 * rel_l1(fd_sim.attributions, ref.attributions)))
    return {
        "exit_code": 0,
        "gradient_source": list(sources),
        "pearson_min": PEARSON_MIN,
        "rel_l1_max": rel_l1_max,
        "completeness_max": completeness_bound(ref.rel_error),
        "nonzero": True,
        **extra,
    }
