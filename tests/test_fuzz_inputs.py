"""Property-based fuzzing of the reading layer (issue 8): mutated images, .npy, CSV and
sidecar bytes are read or refused with an IgcliError, and nothing else happens.

Each example mutates a valid seed file (byte flips, size fields set to huge values,
truncation, insertion, duplicated slices) and reads it as igcli would. Asserted: only
IgcliError subclasses escape; numpy allocations stay under a bound that the small files do
not justify exceeding (tracemalloc; Pillow's own pixel buffers are bounded instead by the
pixel-count check on the header); no file appears or changes outside the file written;
nothing reaches stderr. Examples are few and deadlines off: a few seconds in all.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from igcli.baselines import rng_for
from igcli.discovery import parse_shard
from igcli.errors import IgcliError
from igcli.inputs import load_samples, make_preprocessing
from igcli.model import Sidecar, TensorSpec
from tests import hostile_files as hf

ALLOCATION_LIMIT = 64 << 20  # bytes of numpy memory; the seed files are under 4 KiB

IMAGE = make_preprocessing(TensorSpec("x", ["N", 3, 8, 8], np.dtype(np.float32)), Sidecar())
GREY = make_preprocessing(TensorSpec("x", ["N", 1, 8, 8], np.dtype(np.float32)), Sidecar())
TABLE = make_preprocessing(
    TensorSpec("x", ["N", 3], np.dtype(np.float32)), Sidecar(feature_names=["a", "b", "c"])
)
TENSOR = make_preprocessing(TensorSpec("x", ["N", "d"], np.dtype(np.float32)), Sidecar())


def _image_bytes(fmt: str, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 256, (10, 12, 3), np.uint8)
    buf = io.BytesIO()
    img = Image.fromarray(arr).convert(mode)
    extra = {}
    if fmt == "JPEG":
        exif = Image.Exif()
        exif[0x0112] = 6
        extra["exif"] = exif
    img.save(buf, format=fmt, **extra)
    return buf.getvalue()


def _npy_bytes() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype=np.float32).reshape(2, 3)[:1])
    return buf.getvalue()


SEEDS = {
    "png": (_image_bytes("PNG"), ".png", IMAGE),
    "png16": (
        hf.png_bytes(np.random.default_rng(1).integers(0, 65536, (6, 7, 3)), 16, 2),
        ".png",
        GREY,
    ),
    "jpeg": (_image_bytes("JPEG"), ".jpg", IMAGE),
    "bmp": (_image_bytes("BMP"), ".bmp", IMAGE),
    "gif": (_image_bytes("GIF", "P"), ".gif", IMAGE),
    "tiff": (_image_bytes("TIFF"), ".tif", IMAGE),
    "npy": (_npy_bytes(), ".npy", TENSOR),
    "csv": (b"\xef\xbb\xbfc,b,a\r\n1,2,3\r\n4.5,-6e3,7\r\n", ".csv", TABLE),
}


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """The seed with a few edits, aimed as often at headers (the first 64 bytes) as at the
    rest; 32-bit fields are set to values a size or a count could take."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        head = draw(st.booleans())
        pos = draw(st.integers(0, min(len(data), 64) - 1 if head else len(data) - 1))
        op = draw(st.sampled_from(["flip", "word", "cut", "insert", "repeat", "delete"]))
        if op == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif op == "word":
            value = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 30000]))
            data[pos : pos + 4] = struct.pack(draw(st.sampled_from([">I", "<I"])), value)
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "repeat":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
        else:
            del data[pos : pos + draw(st.integers(1, 16))]
    return bytes(data)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def read_hostile(data: bytes, suffix: str, prep, capsys) -> None:
    """Write `data`, read it as an input; only IgcliError may escape, bounded, no side effects."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / f"fuzz{suffix}"
        path.write_bytes(data)
        before = _snapshot(folder)
        tracemalloc.start()
        try:
            samples = load_samples(path, prep, "fuzz")
        except IgcliError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            samples = []
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert peak < ALLOCATION_LIMIT, f"{peak / 2**20:.0f} MiB for {len(data)} bytes"
        for sample in samples:
            assert np.all(np.isfinite(sample.x)) and sample.x.dtype == prep.dtype
        assert _snapshot(folder) == before
    assert capsys.readouterr().err == ""


# IGCLI_FUZZ_EXAMPLES=2000 runs a deeper, randomised search by hand; CI runs the same 25
# examples per test every time, so it never fails by chance.
EXAMPLES = int(os.environ.get("IGCLI_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=EXAMPLES == 25,
    database=None,
)


@pytest.mark.parametrize("kind", list(SEEDS))
def test_mutated_files_are_read_or_refused(kind, capsys):
    seed, suffix, prep = SEEDS[kind]

    @FUZZ
    @given(data=mutated(seed))
    def check(data):
        read_hostile(data, suffix, prep, capsys)

    check()


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".png", ".npy", ".csv", ".gif"]))
def test_random_bytes_under_any_suffix(data, suffix, capsys):
    prep = {".npy": TENSOR, ".csv": TABLE}.get(suffix, IMAGE)
    read_hostile(data, suffix, prep, capsys)


SIDECAR = json.dumps(
    {
        "labels": ["a", "b"],
        "feature_names": ["a", "b", "c"],
        "preprocessing": {"layout": "NCHW", "size": [8, 8], "mean": [0.5], "std": [0.25]},
    }
).encode()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
sidecar_fields = st.dictionaries(
    st.sampled_from(["labels", "feature_names", "preprocessing", "kind", "input", "output"]),
    json_values
    | st.fixed_dictionaries(
        {},
        optional={k: json_values for k in ("layout", "channels", "size", "scale", "mean", "std")},
    ),
)


def _load_and_use_sidecar(text: bytes, capsys) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "m.onnx"
        model.with_suffix(".json").write_bytes(text)
        png = Path(tmp) / "in.png"
        png.write_bytes(SEEDS["png"][0])
        csv = Path(tmp) / "in.csv"
        csv.write_bytes(SEEDS["csv"][0])
        tracemalloc.start()
        try:
            side = Sidecar.load(model)
            for shape, path in (
                (["N", 3, "h", "w"], png),
                (["N", 1, "h", "w"], png),
                (["N", 3], csv),
            ):
                try:
                    prep = make_preprocessing(TensorSpec("x", shape, np.dtype("f4")), side)
                    load_samples(path, prep, "s")
                except IgcliError:
                    pass
        except IgcliError as exc:
            assert "\n" not in str(exc)
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert peak < ALLOCATION_LIMIT
    assert capsys.readouterr().err == ""


@FUZZ
@given(data=mutated(SIDECAR))
def test_mutated_sidecar_bytes(data, capsys):
    _load_and_use_sidecar(data, capsys)


@FUZZ
@given(fields=sidecar_fields)
def test_sidecars_with_any_json_values(fields, capsys):
    _load_and_use_sidecar(json.dumps(fields).encode(), capsys)


@FUZZ
@given(spec=st.text(max_size=12), seed=st.integers())
def test_option_values_at_the_lower_layers(spec, seed):
    with contextlib.suppress(IgcliError):
        parse_shard(spec)
    assert 0.0 <= rng_for(seed).uniform() < 1.0


def test_fuzz_seeds_are_valid_inputs():
    """The mutations start from files that read fine (else the fuzzing proves little)."""
    with tempfile.TemporaryDirectory() as tmp:
        for kind, (data, suffix, prep) in SEEDS.items():
            path = Path(tmp) / f"seed{suffix}"
            path.write_bytes(data)
            assert load_samples(path, prep, "seed"), kind
            os.unlink(path)
