"""Hostile and unusual files at the reading layer: each is read right or refused in one line.

The contract (issue 8): a bad input is an `IgcliError` naming the file, never another
exception, never an allocation the file's size does not justify, never a multi-line
warning on stderr. Fixtures are built here (see hostile_files.py).
"""

import contextlib
import errno
import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from igcli.baselines import make_baseline
from igcli.errors import IgcliError, InputError, ModelError, UsageError
from igcli.files import MAX_TENSOR_VALUES, printable
from igcli.inputs import load_samples, make_preprocessing, read_image
from igcli.model import Sidecar, TensorSpec
from tests import hostile_files as hf


def spec(shape, name="x", dtype=np.float32):
    return TensorSpec(name, shape, np.dtype(dtype))


ANY_SIZE_RGB = make_preprocessing(spec(["N", 3, "h", "w"]), Sidecar())
ANY_SIZE_GREY = make_preprocessing(spec(["N", 1, "h", "w"]), Sidecar())
FIXED_RGB = make_preprocessing(spec(["N", 3, 4, 4]), Sidecar())
FIXED_GREY = make_preprocessing(spec(["N", 1, 4, 4]), Sidecar())
VECTOR = make_preprocessing(spec(["N", 2]), Sidecar())


def refused(path, prep, match, name="s"):
    """load_samples refuses `path` with one line naming it."""
    with pytest.raises(InputError, match=match) as err:
        load_samples(path, prep, name)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


# -- .npy ---------------------------------------------------------------------------------------


def test_empty_npy(tmp_path):
    refused(hf.write(tmp_path / "e.npy", b""), VECTOR, "empty file")


def test_npy_header_claiming_a_huge_shape_is_refused_before_allocating(tmp_path):
    path = hf.write(tmp_path / "big.npy", hf.npy_claiming((1, 4 * 10**12)))
    assert path.stat().st_size < 200
    refused(path, make_preprocessing(spec(["N", "d"]), Sidecar()), "holds 4,000,000,000,000")
    small = hf.write(tmp_path / "trunc.npy", hf.npy_claiming((1, 1000)))
    refused(small, make_preprocessing(spec(["N", "d"]), Sidecar()), "truncated.*4,000 bytes")
    assert MAX_TENSOR_VALUES < 4 * 10**12


def test_npy_of_the_wrong_shape_or_dtype_is_refused_on_its_header(tmp_path):
    """A 1 GB .npy of shape [1, 16000, 16000] for a 28 x 28 model was read whole (1.09 GB)
    before its shape was refused: the header is judged against the model first."""
    import tracemalloc

    grey = make_preprocessing(spec(["N", 1, 28, 28]), Sidecar())
    for shape, descr, match in (
        ((1, 8192, 8192), "<f4", r"shape \[1, 8192, 8192\] does not fit the model input"),
        ((1, 1, 28, 28 * 4096), "<f4", "does not fit the model input"),
        ((1, 1, 28, 28), "<i8", "dtype int64 is not a float type"),
        ((8, 1, 28, 28), "<f4", "holds a batch of 8"),
    ):
        path = tmp_path / "big.npy"
        header = hf.npy_claiming(shape, descr)[:-16]
        with open(path, "wb") as fh:  # sparse: the data is all there, and never read
            fh.write(header)
            fh.truncate(len(header) + int(np.prod(shape)) * np.dtype(descr).itemsize)
        tracemalloc.start()
        try:
            refused(path, grey, match)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, (shape, peak)
    good = tmp_path / "good.npy"
    np.save(good, np.ones((1, 1, 28, 28), np.float32))
    (sample,) = load_samples(good, grey, "good")
    assert sample.x.shape == (1, 28, 28)


def test_npy_with_bytes_past_its_array_is_refused(tmp_path):
    """numpy's own load reads the first of two arrays saved to one file and says nothing."""
    path = tmp_path / "two.npy"
    with open(path, "wb") as fh:
        np.save(fh, np.ones((1, 2), np.float32))
        np.save(fh, np.zeros((1, 2), np.float32))
    refused(path, VECTOR, r"bytes follow its array \(shape \[1, 2\] of float32\)")
    junk = tmp_path / "junk.npy"
    np.save(junk, np.ones((1, 2), np.float32))
    with open(junk, "ab") as fh:
        fh.write(b"\n")
    refused(junk, VECTOR, "1 byte follows its array")


@pytest.mark.parametrize("shape", [(-3, 2), (2, -1), (True, 30)])
def test_npy_negative_shape(tmp_path, shape):
    """(numpy's header reader takes True for a dimension: it stopped a batch at reshape)"""
    refused(hf.write(tmp_path / "n.npy", hf.npy_claiming(shape)), VECTOR, "damaged")


def test_npy_not_a_npy_and_damaged_header(tmp_path):
    refused(hf.write(tmp_path / "a.npy", b"PK\x03\x04 a zip file"), VECTOR, "not a .npy")
    refused(hf.write(tmp_path / "b.npy", b"\x93NUMPY\x01\x00\xff\xff{'descr"), VECTOR, "damaged")
    refused(hf.write(tmp_path / "c.npy", b"\x93NUMPY\x09\x00xx"), VECTOR, "format 9.0")


def test_npy_header_that_is_not_a_python_literal(tmp_path):
    """Found by the fuzz test: numpy's tokenizer raises TokenError, not ValueError."""
    data = (
        b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'\x93NUMPY\x01\x00v\x00{'descr': '<f4', "
        b"'fortran_order': False, 'shape': (1, 3), }" + b" " * 58 + b"\n" + b"\0" * 12
    )
    message = refused(hf.write(tmp_path / "t.npy", data), VECTOR, "damaged .npy header")
    assert "EOF" not in message and "(2, 0)" not in message  # no tokenizer tuple


def test_npy_header_holding_code_is_refused_without_running_it_or_an_address(tmp_path):
    """A header dict with a call in it: refused (never evaluated), and the message named
    '<ast.Call object at 0x7fed...>', an address no user can read."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 30), 'x': print('hi')}"
    header = header.ljust(117) + "\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    message = refused(hf.write(tmp_path / "code.npy", data + bytes(120)), VECTOR, "damaged")
    assert "0x" not in message and "code?" in message


@pytest.mark.parametrize("tail", [0, 2 << 20], ids=["read-whole", "read-capped"])
def test_png_chunk_claiming_2gb_allocates_nothing_like_it(tmp_path, tail):
    """Pillow skips the rest of IDAT with one read of its declared length; a buffered read
    allocates that length up front (found by the fuzz test: 80 MiB for a 438-byte file).
    Small files are read whole, larger ones through a reader capped at the file's size."""
    import struct
    import tracemalloc

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "ok.png")
    data = bytearray((tmp_path / "ok.png").read_bytes())
    idat = data.index(b"IDAT")
    data[idat - 4 : idat] = struct.pack(">I", 0x7FFFFFF0)
    path = hf.write(tmp_path / "chunk.png", bytes(data) + bytes(tail))
    tracemalloc.start()
    try:
        with contextlib.suppress(InputError):
            load_samples(path, FIXED_RGB, "c")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_pickled_npy_is_refused_and_never_unpickled(tmp_path):
    np.save(tmp_path / "p.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    refused(tmp_path / "p.npy", VECTOR, "pickle")


@pytest.mark.parametrize(
    "values,problem",
    [
        (np.zeros((1, 2), np.complex64), "complex"),
        (np.zeros((1, 2), bool), "not a float type"),
        (np.zeros((1, 2), np.int64), "not a float type"),
        (np.zeros((1, 2), np.uint8), "not a float type"),
        (np.array([["a", "b"]]), "strings"),
        (np.zeros(1, dtype=[("a", "<f4"), ("b", "<f4")]), "not a float type"),
        (np.array([[1.0, np.nan]], np.float32), "NaN or Inf"),
        (np.array([[1.0, -np.inf]]), "NaN or Inf"),
        (np.array([[1e300, 0.0]]), "overflow float32"),
        (np.zeros((0, 2), np.float32), "no values|batch of 0"),
        (np.zeros((3, 2), np.float32), "batch of 3"),
    ],
)
def test_npy_dtypes_and_values_igcli_refuses(tmp_path, values, problem):
    np.save(tmp_path / "v.npy", values)
    refused(tmp_path / "v.npy", VECTOR, problem)


def test_npy_big_endian_and_fortran_order_read_right(tmp_path):
    prep = make_preprocessing(spec(["N", 2, 3]), Sidecar())
    x = np.arange(6, dtype=">f8").reshape(2, 3)
    np.save(tmp_path / "be.npy", x)
    np.save(tmp_path / "f.npy", np.asfortranarray(x.astype("<f4")))
    for name in ("be.npy", "f.npy"):
        sample = load_samples(tmp_path / name, prep, "s")[0]
        np.testing.assert_array_equal(sample.x, x)
        assert sample.x.dtype == np.float32


def test_zero_d_npy_for_an_input_without_declared_shape(tmp_path):
    prep = make_preprocessing(spec([]), Sidecar())
    np.save(tmp_path / "z.npy", np.float32(3.0))
    refused(tmp_path / "z.npy", prep, "leading batch axis")
    np.save(tmp_path / "b.npy", np.array([3.0, 4.0], np.float32)[None])
    assert load_samples(tmp_path / "b.npy", prep, "b")[0].x.shape == (2,)


# -- files that are not regular files -------------------------------------------------------------


def test_folder_fifo_symlink_loop_broken_link_missing(tmp_path):
    (tmp_path / "dir.png").mkdir()
    refused(tmp_path / "dir.png", FIXED_RGB, "a folder")
    os.mkfifo(tmp_path / "fifo.npy")  # opening it for reading would block without O_NONBLOCK
    refused(tmp_path / "fifo.npy", VECTOR, "a FIFO")
    os.symlink("loop.png", tmp_path / "loop.png")
    refused(tmp_path / "loop.png", FIXED_RGB, "symlink loop")
    os.symlink("nowhere.csv", tmp_path / "broken.csv")
    refused(tmp_path / "broken.csv", VECTOR, "broken symlink")
    refused(tmp_path / "gone.npy", VECTOR, "no such file")
    refused(tmp_path / "gone.txt", VECTOR, "no such file")


def test_unreadable_file(tmp_path, monkeypatch):
    np.save(tmp_path / "secret.npy", np.zeros((1, 2), np.float32))
    real_open = os.open

    def deny(path, *args, **kwargs):
        if str(path).endswith("secret.npy"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    refused(tmp_path / "secret.npy", VECTOR, "permission denied")


def test_file_that_disappears_after_listing(tmp_path):
    from igcli.discovery import discover

    for name in ("a.npy", "b.npy"):
        np.save(tmp_path / name, np.zeros((1, 2), np.float32))
    items = discover([str(tmp_path)]).items
    (tmp_path / "a.npy").unlink()
    refused(items[0].path, VECTOR, "no such file")
    assert load_samples(items[1].path, VECTOR, items[1].name)[0].x.shape == (2,)


# -- images ---------------------------------------------------------------------------------------


def test_decompression_bomb_png_is_refused_from_its_header(tmp_path, capsys):
    path = hf.write(tmp_path / "bomb.png", hf.png_claiming(30000, 30000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escaped would fail here
        message = refused(path, FIXED_RGB, "900,000,000 pixels.*decompression bomb")
    assert "limit of 89,478,485" in message
    assert capsys.readouterr().err == ""


def test_image_just_over_the_limit_warns_nothing(tmp_path, capsys):
    """Pillow only warns (on several lines) between its limit and twice it."""
    path = hf.write(tmp_path / "wide.png", hf.png_claiming(10000, 9000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refused(path, FIXED_RGB, r"90,000,000 pixels \(10000x9000\)")
    assert capsys.readouterr().err == ""


def test_bmp_header_claiming_50000_squared(tmp_path):
    path = hf.write(tmp_path / "bomb.bmp", hf.bmp_claiming(50000, 50000))
    refused(path, FIXED_RGB, "2,500,000,000 pixels")


def test_truncated_and_empty_and_disguised_images(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        tmp_path / "full.png"
    )
    data = (tmp_path / "full.png").read_bytes()
    refused(hf.write(tmp_path / "t.png", data[: len(data) // 2]), FIXED_RGB, "cannot decode")
    refused(hf.write(tmp_path / "e.png", b""), FIXED_RGB, r"empty file \(0 bytes\), not an image")
    refused(hf.write(tmp_path / "eps.png", b"%!PS-Adobe-3.0 EPSF-3.0\n"), FIXED_RGB, "not a")
    refused(hf.write(tmp_path / "zero.png", hf.png_claiming(0, 5)), FIXED_RGB, "a damaged PNG file")
    # a JPEG saved as .png is still an image: content decides, not the suffix
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "j.png", format="JPEG")
    assert load_samples(tmp_path / "j.png", FIXED_RGB, "j")[0].x.shape == (3, 4, 4)


def test_damaged_png_data_is_refused_not_read_as_black(tmp_path):
    """A flipped byte in IDAT (CRC intact) once read as zeros from there on, with no error:
    the stretch note's EXIF lookup decoded the pixels and swallowed the decoder's error."""
    samples = np.random.default_rng(0).integers(0, 256, (16, 24, 3), np.uint8)
    path = hf.write(tmp_path / "bad.png", hf.png_damaged(samples))
    refused(path, FIXED_RGB, r"cannot decode image \(broken data stream")
    with pytest.raises(InputError, match="broken data stream"):
        read_image(path, FIXED_RGB, notes=[])


def test_damaged_tiff_is_one_line_without_libtiffs_own(tmp_path, capfd):
    """libtiff wrote 'ZIPDecode: Decoding error ...' to stderr itself, beside igcli's line."""
    import io

    from igcli import inputs

    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)
    Image.fromarray(pixels).save(buf, format="TIFF", compression="tiff_adobe_deflate")
    data = bytearray(buf.getvalue())
    data[10:60] = bytes(b ^ 0x5A for b in data[10:60])  # the deflate stream of the strip
    path = hf.write(tmp_path / "bad.tiff", bytes(data))
    inputs._quiet_libtiff.cache_clear()
    refused(path, ANY_SIZE_GREY, r"cannot decode image")
    assert "Decod" not in capfd.readouterr().err


def test_sixteen_bit_colour_png_keeps_its_precision_with_notes(tmp_path):
    """The stretch note's EXIF lookup once decoded a 16-bit PNG as 8-bit before igcli could."""
    samples = np.random.default_rng(1).integers(0, 65536, (9, 11, 3)).astype(np.uint16)
    path = hf.write(tmp_path / "c16.png", hf.png_bytes(samples, 16, 2))
    sample = load_samples(path, FIXED_RGB, "c16")[0]
    assert len(np.unique(np.round(sample.pixels * 65535))) > 40


def test_sixteen_bit_grey_png_keeps_its_precision(tmp_path):
    grey = np.array([[0, 32768], [65535, 1]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode.startswith("I;16")
    pixels = read_image(tmp_path / "g16.png", ANY_SIZE_GREY)
    np.testing.assert_allclose(pixels[:, :, 0], grey / 65535.0, atol=1e-12)
    assert pixels[0, 1, 0] == pytest.approx(0.5, abs=1e-4)  # mid-grey, not white
    rgb = read_image(tmp_path / "g16.png", ANY_SIZE_RGB)
    np.testing.assert_allclose(rgb, np.repeat((grey / 65535.0)[:, :, None], 3, axis=2))


def _read_traced(path, prep):
    """read_image's pixels and the peak of the numpy memory it took (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        pixels = read_image(path, prep)
        return pixels, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_sixteen_bit_png_makes_one_float_plane_at_a_time(tmp_path):
    """A 9400 x 9400 16-bit RGBA PNG of 0.7 MB took 5.3 GB (found by a fault sweep): every
    plane was made whole in float32, then grey from them in float64. Here a 1000 x 1000 one:
    at most 20 bytes per pixel of numpy arrays (its two byte planes are 8)."""
    samples = np.random.default_rng(0).integers(0, 65536, (1000, 1000, 4)).astype(np.uint16)
    path = hf.write(tmp_path / "big16.png", hf.png_bytes(samples, 16, 6))
    grey, peak = _read_traced(path, FIXED_GREY)
    assert grey.shape[2] == 1 and peak < 20 * samples.shape[0] * samples.shape[1]


def test_a_large_sixteen_bit_grey_png_is_resized_a_strip_of_rows_at_a_time(tmp_path):
    """A 16-bit grey plane of 1200 x 1000: its float32 plane (4 bytes a pixel) and Pillow's
    copy of it (4 more) were whole; now the numpy arrays stay under its 2-byte samples and
    as much again. The pixels are those of one resize across and then down."""
    samples = np.random.default_rng(1).integers(0, 65536, (1200, 1000)).astype(np.uint16)
    path = hf.write(tmp_path / "grey16.png", hf.png_bytes(samples[:, :, None], 16, 0))
    grey, peak = _read_traced(path, FIXED_GREY)
    assert peak < 5 * samples.size
    box = Image.Resampling.BILINEAR
    across = Image.fromarray(samples.astype(np.float32)).resize((4, 1200), box)
    expected = np.asarray(Image.fromarray(np.asarray(across)).resize((4, 4), box))
    np.testing.assert_array_equal(grey[:, :, 0], expected.astype(np.float64) / 65535.0)


def test_the_strip_resize_is_one_resize_and_a_thin_image_is_resized_whole():
    from igcli.inputs import _crop_box, _fitted, fit_image

    rng = np.random.default_rng(2)
    box = Image.Resampling.BILINEAR
    cases = [((700, 300), (224, 224), None), ((257, 513), (31, 45), 0.875),
             ((3, 900), (28, 28), None), ((600, 20), (64, 48), 0.5)]  # fmt: skip
    for (h, w), target, crop in cases:
        plane = (rng.random((h, w)) * 65535).astype(np.float32)
        got = _fitted(lambda rows, p=plane: p[rows], (w, h), target, crop)
        b = _crop_box((w, h), target, crop)
        if target[0] <= w:  # across, then down
            across = Image.fromarray(plane).resize((target[0], h), box, box=(b[0], 0, b[2], h))
            down = Image.fromarray(np.asarray(across)).resize(
                target, box, box=(0, b[1], target[0], b[3])
            )
        else:  # widened: one resize of the whole plane
            down = fit_image(Image.fromarray(plane), target, crop)
        np.testing.assert_array_equal(got, np.asarray(down, np.float64))


def test_an_image_that_would_not_fit_in_memory_fails_alone_before_decoding(tmp_path, monkeypatch):
    """A 0.5 MB 16-bit RGB PNG of 88 M pixels decodes to about 2 GB: where the machine has
    less to spare, it is refused in one line (the run goes on), not decoded into the
    kernel's out-of-memory killer. Small images are not checked."""
    import igcli.memory

    asked = []
    monkeypatch.setattr(igcli.memory, "memory_to_spare", lambda: asked.append(1) or 200 << 20)
    big = hf.write(tmp_path / "big.png", hf.png_bytes(np.zeros((4000, 4000, 3), np.uint16), 16, 2))
    message = refused(big, FIXED_RGB, r"decoding it \(4000x4000 pixels\) takes about")
    assert "more than the 200 MB this machine has to spare" in message and asked
    asked.clear()
    small = hf.write(tmp_path / "small.png", hf.png_bytes(np.zeros((64, 64, 3), np.uint16), 16, 2))
    assert load_samples(small, FIXED_RGB, "small")[0].x.shape == (3, 4, 4) and not asked
    # 8-bit RGB counted 11 bytes a pixel where reading it peaked at 68 (an 8000 x 8000 image:
    # 0.66 GB said, 4.3 GB taken): 3000 x 3000 is over 200 MB now
    Image.new("RGB", (3000, 3000)).save(tmp_path / "rgb.png")
    message = refused(tmp_path / "rgb.png", FIXED_RGB, r"decoding it \(3000x3000 pixels\)")
    assert "more than the 200 MB" in message and asked  # (9 M pixels, 69 bytes each)


@pytest.mark.parametrize("color_type,channels", [(2, 3), (6, 4)])
def test_sixteen_bit_colour_png_keeps_its_precision(tmp_path, color_type, channels):
    rng = np.random.default_rng(color_type)
    samples = rng.integers(0, 65536, (9, 11, channels)).astype(np.uint16)
    path = hf.write(tmp_path / "c16.png", hf.png_bytes(samples, 16, color_type))
    pixels = read_image(path, ANY_SIZE_RGB)
    np.testing.assert_allclose(pixels, samples[:, :, :3] / 65535.0, atol=1e-12)
    grey = read_image(path, ANY_SIZE_GREY)[:, :, 0]
    luma = samples[:, :, :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 65535.0
    np.testing.assert_allclose(grey, luma, atol=1e-12)
    resized = read_image(path, FIXED_RGB)
    assert resized.shape == (4, 4, 3)
    assert len(np.unique(np.round(resized * 65535))) > 40  # more than 8 bits of levels survive


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((2, 4, 3), np.uint8)
    arr[:, :2] = 255  # left half white, stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "phone.png", exif=exif)
    pixels = read_image(tmp_path / "phone.png", ANY_SIZE_RGB)
    assert pixels.shape == (4, 2, 3)  # displayed portrait
    np.testing.assert_allclose(pixels[:2, :, 0], 1.0)  # the white half is now on top
    np.testing.assert_allclose(pixels[2:, :, 0], 0.0)
    # A PIL image given in Python is taken as its pixels are (as a notebook shows it): one
    # turned upright by hand keeps its file's EXIF, and was turned a second time.
    from igcli.inputs import sample_from_array

    with Image.open(tmp_path / "phone.png") as opened:
        by_hand = opened.transpose(Image.Transpose.ROTATE_270)
    assert by_hand.getexif().get(0x0112) == 6
    sample = sample_from_array(by_hand, ANY_SIZE_RGB, "x")
    assert sample.pixels.shape == (4, 2, 3)
    np.testing.assert_allclose(sample.pixels[:2, :, 0] / sample.pixels.max(), 1.0)


def test_rgba_palette_and_cmyk_images_read(tmp_path):
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (6, 6, 4), np.uint8), "RGBA")
    rgba.save(tmp_path / "a.png")
    rgba.convert("P").save(tmp_path / "p.gif")
    rgba.convert("CMYK").save(tmp_path / "c.tiff")
    for name in ("a.png", "p.gif", "c.tiff"):
        assert load_samples(tmp_path / name, FIXED_RGB, "x")[0].x.shape == (3, 4, 4)
    four = make_preprocessing(spec(["N", 4, 6, 6]), Sidecar())
    np.testing.assert_allclose(read_image(tmp_path / "a.png", four)[:, :, 3] * 255, rgba.split()[3])


def test_32bit_images_and_odd_channel_counts_are_refused(tmp_path):
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tiff")
    refused(tmp_path / "f.tiff", FIXED_RGB, "32-bit")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x.png")
    two = make_preprocessing(spec(["N", 2, 4, 4]), Sidecar())
    refused(tmp_path / "x.png", two, "2 channels")


# -- CSV ------------------------------------------------------------------------------------------

NAMED = make_preprocessing(spec(["N", 2]), Sidecar(feature_names=["a", "b"]))


def table(tmp_path, data, prep=NAMED):
    path = tmp_path / "t.csv"
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return load_samples(path, prep, "t")


def test_csv_with_byte_order_marks(tmp_path):
    rows = table(tmp_path, b"\xef\xbb\xbfa,b\r\n1,2\r\n")
    np.testing.assert_array_equal(rows[0].raw_values, [1, 2])
    rows = table(tmp_path, "a,b\n3,4\n".encode("utf-16"))
    np.testing.assert_array_equal(rows[0].raw_values, [3, 4])


def test_csv_semicolons_and_tabs(tmp_path):
    np.testing.assert_array_equal(table(tmp_path, "b;a\n2;1\n")[0].raw_values, [1, 2])
    # a blank line first: the separator is still the header's (it was read as ',')
    np.testing.assert_array_equal(table(tmp_path, "\n \nb;a\n2;1\n")[0].raw_values, [1, 2])
    np.testing.assert_array_equal(table(tmp_path, "a\tb\n1\t2\n")[0].raw_values, [1, 2])


def test_csv_trailing_separators_and_blank_lines_are_tolerated(tmp_path):
    rows = table(tmp_path, "a,b,\n\n1,2,\n  ,  \n3,4,,\n")
    assert [list(r.raw_values) for r in rows] == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    "data,problem",
    [
        ("a,b\n1,2,3\n", "3 cells; the header has 2"),
        ("a,b\n1\n", "short"),
        ("a,,b\n1,2,3\n", None),  # the unnamed column is not used: fine
        ("a,a,b\n1,2,3\n", "'a' appears 2 times"),
        ("a,b\n1,\n", "column 'b' is empty"),
        ("a,b\n1,x\n", "not all numbers"),
        ("a,b\n1,inf\n", "NaN or Inf"),
        ("a,b\n1,1e39\n", "overflow float32"),
        ("a,b\n", "header row and at least one data row"),
        ("", "empty file"),
        ("\n\n", "header row"),
        (b"a,b\n1,\xff\n", "not UTF-8"),
        ("a,b\n1,2\x00\n", "not all numbers"),
        ('a,b\n"1,2\n', "line"),
    ],
)
def test_bad_csv_is_one_line(tmp_path, data, problem):
    if problem is None:
        assert len(table(tmp_path, data)) == 1
        return
    with pytest.raises(InputError, match=problem) as err:
        table(tmp_path, data)
    assert "\n" not in str(err.value) and "t.csv" in str(err.value)


def test_a_row_that_is_not_utf8_fails_alone(tmp_path):
    """One byte 0xff at row 5,000 of 6,000 ended the file there: the thousand good rows
    after it were neither explained nor reported. It fails its own row, naming the line;
    in the header it fails the file."""
    from igcli.inputs import RowError, iter_table

    rows = [f"{k},{k + 1}\n".encode() for k in range(60)]
    rows[40] = b"40,\xff1\n"
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n" + b"".join(rows))
    found = list(iter_table(path, NAMED, "t"))
    bad = [r for r in found if isinstance(r, RowError)]
    assert len(found) == 60 and [r.name for r in bad] == ["t_row40"]
    assert "line 42 is not UTF-8 text (byte 0xff)" in str(bad[0].error)
    path.write_bytes(b"a,\xffb\n1,2\n")
    with pytest.raises(InputError, match="not UTF-8 text"):
        list(iter_table(path, NAMED, "t"))


def test_a_quote_left_open_names_the_lines_it_swallowed(tmp_path):
    """A quote opened on line 3 of a short file swallowed lines 4 and 5 into one cell, and
    the one error said 'line 5 is short' (found by a hostile-input sweep)."""
    from igcli.inputs import RowError, iter_table

    path = tmp_path / "t.csv"
    path.write_text('a,b\n1,2\n"3,4\n5,6\n7,8\n')
    found = list(iter_table(path, NAMED, "t"))
    bad = [r for r in found if isinstance(r, RowError)]
    assert len(found) == 2 and len(bad) == 1
    assert "lines 3-5: a quote opened on line 3 is not closed" in str(bad[0].error)


def test_csv_cell_over_the_field_limit(tmp_path):
    with pytest.raises(InputError, match="line 2: a cell is longer than 131,072") as err:
        table(tmp_path, "a,b\n1," + "9" * 200_000 + "\n")
    assert "\n" not in str(err.value) and "a quote not closed?" in str(err.value)


def test_a_csv_line_of_millions_of_cells_is_refused_before_csv_makes_them(tmp_path):
    """csv built a Python string for every cell of a row before its width was compared with
    the header's: ~27 times the line's size, so a 1 GB line of commas ran out of memory.
    The line fails alone, in one line naming it; the page reading the rows again is bounded
    too and keeps the rows' numbers."""
    import tracemalloc

    from igcli import html_report
    from igcli.inputs import MAX_CSV_LINE, iter_table

    path = tmp_path / "wide.csv"
    path.write_text("a,b\n1,2\n" + "1," * (2 * MAX_CSV_LINE) + "1\n3,4\n")
    tracemalloc.start()
    try:
        found = list(iter_table(path, NAMED, "wide"))
        records = [{"input": str(path), "name": f"wide_row{k}"} for k in (0, 2)]
        values = html_report._feature_values(records, ["a", "b"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [type(f).__name__ for f in found] == ["Sample", "RowError", "Sample"]
    assert str(found[1].error) == (
        f"{path}: line 3 is over {MAX_CSV_LINE:,} characters; refused before reading its cells"
    )
    assert found[2].name == "wide_row2" and list(found[2].raw_values) == [3, 4]
    np.testing.assert_array_equal(values, [[1, 2], [3, 4]])
    assert peak < 16 << 20  # a 4 MiB line; its cells took over 100 MiB


def test_csv_without_sidecar_names(tmp_path):
    prep = make_preprocessing(spec(["N", 3]), Sidecar())
    with pytest.raises(InputError, match="header cell 2 is empty"):
        table(tmp_path, "a,,c\n1,2,3\n", prep)
    with pytest.raises(InputError, match="only numbers"):
        table(tmp_path, "1.5,2,3\n4,5,6\n", prep)  # the header is missing
    assert table(tmp_path, "0,1,2\n4,5,6\n", prep)[0].feature_names == ["0", "1", "2"]


# -- sidecars -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sidecar,field",
    [
        ({"labels": 5}, "'labels' must be a list"),
        ({"labels": ["a", {"b": 1}]}, r"'labels\[1\]'"),
        ({"preprocessing": "oops"}, "'preprocessing' must be an object"),
        ({"preprocessing": {"mean": "abc"}}, "'preprocessing.mean'"),
        ({"preprocessing": {"mean": [0.5, None]}}, "'preprocessing.mean'"),
        ({"preprocessing": {"std": [0.5, 0]}}, "'preprocessing.std'"),
        ({"preprocessing": {"std": -1}}, "'preprocessing.std'"),
        ({"preprocessing": {"size": [28]}}, "'preprocessing.size'"),
        ({"preprocessing": {"size": [100000, 100000]}}, "'preprocessing.size'"),
        ({"preprocessing": {"size": [9000, 20000]}}, "over 89,478,485 pixels"),
        ({"preprocessing": {"channels": 2}}, "'preprocessing.channels'"),
        ({"preprocessing": {"channels": True}}, "'preprocessing.channels'"),
        ({"preprocessing": {"layout": "CHW"}}, "'preprocessing.layout'"),
        ({"preprocessing": {"scale": 0}}, "'preprocessing.scale'"),
        ({"feature_names": {}}, "'feature_names' must be a non-empty list"),
        ({"feature_names": ["a", "a"]}, "names 'a' twice"),
        ({"feature_names": ["a", 3]}, r"'feature_names\[1\]'"),
        ({"input": ["x"]}, "'input' must be a string"),
        ({"kind": {"nested": {"garbage": [1, [2, [3]]]}}}, "'kind' must be a string"),
    ],
)
def test_sidecar_with_wrong_types(tmp_path, sidecar, field):
    (tmp_path / "m.json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelError, match=field) as err:
        Sidecar.load(tmp_path / "m.onnx")
    assert "m.json" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text,problem",
    [
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ("[1, 2]", "must be a JSON object, not a list"),
        ('{"preprocessing": {"mean": NaN}}', "'preprocessing.mean'"),
        ("\xff{}", "not valid JSON"),
    ],
)
def test_sidecar_that_is_not_an_object(tmp_path, text, problem):
    (tmp_path / "m.json").write_bytes(text.encode("latin1"))
    with pytest.raises(ModelError, match=problem):
        Sidecar.load(tmp_path / "m.onnx")


def test_sidecar_nulls_mean_not_given(tmp_path):
    """Found by the fuzz test: "scale": null crashed make_preprocessing."""
    (tmp_path / "m.json").write_text(json.dumps({"preprocessing": {"scale": None, "size": None}}))
    side = Sidecar.load(tmp_path / "m.onnx")
    prep = make_preprocessing(spec(["N", 3, "h", "w"]), side)
    assert prep.scale == 255.0 and prep.height is None


def test_sidecar_with_bom_and_the_samples_load(tmp_path):
    from tests.test_cli import CANCER, DIGITS

    (tmp_path / "m.json").write_bytes(b'\xef\xbb\xbf{"labels": ["a", 1]}')
    assert Sidecar.load(tmp_path / "m.onnx").labels == ["a", "1"]
    assert Sidecar.load(DIGITS).preprocessing["size"] == [28, 28]
    assert len(Sidecar.load(CANCER).feature_names) == 30


def test_integer_input_message_names_the_model(tmp_path):
    side = Sidecar(model_path=tmp_path / "bert.onnx")
    with pytest.raises(UsageError, match="bert.onnx: input 'ids' is tensor.int64.*--input"):
        make_preprocessing(spec(["N", 8], name="ids", dtype=np.int64), side)


# -- baselines ------------------------------------------------------------------------------------


def rgb(path, h, w, value=None, seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
    if value is not None:
        arr[:] = value
    Image.fromarray(arr).save(path)
    return path


def test_baseline_image_of_another_size_is_resized_for_any_size_models(tmp_path):
    sample = load_samples(rgb(tmp_path / "in.png", 12, 20), ANY_SIZE_RGB, "in")[0]
    base = make_baseline(str(rgb(tmp_path / "b.png", 5, 7, 128)), sample, ANY_SIZE_RGB)
    assert base.shape == sample.x.shape == (3, 12, 20)
    np.testing.assert_allclose(base, 128 / 255, rtol=1e-6)


def test_baseline_file_problems_are_usage_errors_naming_the_baseline(tmp_path):
    sample = load_samples(rgb(tmp_path / "in.png", 4, 4), FIXED_RGB, "in")[0]
    np.save(tmp_path / "int.npy", np.zeros((3, 4, 4), np.int64))
    np.save(tmp_path / "shape.npy", np.zeros((3, 5, 5), np.float32))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG junk")
    for name, problem in (
        ("int.npy", "not a float type"),
        ("shape.npy", "does not fit"),
        ("bad.png", "baseline: not a readable image"),
        ("missing.npy", "no such file"),
    ):
        with pytest.raises(UsageError, match=problem) as err:
            make_baseline(str(tmp_path / name), sample, FIXED_RGB)
        assert name in str(err.value)
    with pytest.raises(UsageError, match="neither one of"):
        make_baseline("purple", sample, FIXED_RGB)


def test_an_image_baseline_for_a_model_that_takes_no_images_is_a_usage_error(tmp_path):
    """--baseline black (or blur, or an image file) on a tabular model failed every input
    alone (exit 4); it is the option's problem, said once (exit 2)."""
    prep = make_preprocessing(spec(["N", 3]), Sidecar())
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    sample = load_samples(tmp_path / "x.npy", prep, "x")[0]
    for name in ("black", "blur", str(rgb(tmp_path / "b.png", 4, 4))):
        with pytest.raises(UsageError, match=r"needs a model that takes images; .* \[N, 3\]"):
            make_baseline(name, sample, prep)


def test_npy_baseline_that_fits_the_model_but_not_this_input(tmp_path):
    prep = make_preprocessing(spec(["N", "d"]), Sidecar())
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((1, 4), np.float32))
    sample = load_samples(tmp_path / "x.npy", prep, "x")[0]
    with pytest.raises(InputError, match=r"baseline .*b.npy has shape \[4\], this input \[3\]"):
        make_baseline(str(tmp_path / "b.npy"), sample, prep)


def test_negative_seeds_give_their_own_reproducible_noise(tmp_path):
    sample = load_samples(rgb(tmp_path / "in.png", 4, 4), FIXED_RGB, "in")[0]
    minus = make_baseline("uniform", sample, FIXED_RGB, seed=-5)
    np.testing.assert_array_equal(minus, make_baseline("uniform", sample, FIXED_RGB, seed=-5))
    assert not np.array_equal(minus, make_baseline("uniform", sample, FIXED_RGB, seed=5))
    np.save(tmp_path / "v.npy", np.array([[1.0, 3.0]], np.float32))
    row = load_samples(tmp_path / "v.npy", VECTOR, "v")[0]
    assert make_baseline("uniform", row, VECTOR, seed=-(2**70)).shape == (2,)


# -- small helpers --------------------------------------------------------------------------------


def test_printable_keeps_one_line():
    assert printable("a\nb\x1b[31m\udcffc") == "a\\nb\\x1b[31m\\xffc"
    assert printable("ünïcode [red]") == "ünïcode [red]"
    # a right-to-left override would reverse the rest of the line; a ZWJ emoji stays whole
    assert printable("a\u202eb\u2066c") == "a\\u202eb\\u2066c"
    assert printable("\U0001f468\u200d\U0001f469") == "\U0001f468\u200d\U0001f469"


def test_every_reading_error_is_an_igcli_error():
    for cls in (InputError, ModelError, UsageError):
        assert issubclass(cls, IgcliError)


# -- models ---------------------------------------------------------------------------------------


def linear_with_external_data(folder):
    """A MatMul model whose weight lives in w.bin beside it."""
    import onnx

    from tests import models

    model = models.tanh_linear(features=2, classes=2)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(
        model,
        str(folder / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    return folder / "m.onnx"


def relocate_external(path, location):
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "location,problem",
    [
        ("../secret.bin", "points outside the model's folder"),
        ("/etc/passwd", "must be a file name relative to the model"),
        ("missing.bin", "no such file beside the model"),
    ],
)
def test_refused_external_data_says_why(tmp_path, location, problem):
    from igcli.model import load_model

    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    path = relocate_external(linear_with_external_data(tmp_path / "m"), location)
    with pytest.raises(ModelError, match=problem) as err:
        load_model(path)
    assert "cannot parse" not in str(err.value) and "m.onnx" in str(err.value)


def test_external_data_inside_the_folder_loads(tmp_path):
    from igcli.model import load_model

    model = load_model(linear_with_external_data(tmp_path / "m"))
    assert model.graph.initializer[0].raw_data


def test_symlinked_external_data_leaving_the_folder_is_refused(tmp_path):
    from igcli.model import load_model

    path = linear_with_external_data(tmp_path / "m")
    (tmp_path / "elsewhere.bin").write_bytes((tmp_path / "m" / "w.bin").read_bytes())
    (tmp_path / "m" / "w.bin").unlink()
    os.symlink(tmp_path / "elsewhere.bin", tmp_path / "m" / "w.bin")
    with pytest.raises(ModelError, match="outside the model's folder"):
        load_model(path)


def test_models_that_are_not_files(tmp_path):
    from igcli.model import load_model

    os.mkfifo(tmp_path / "fifo.onnx")
    os.symlink("loop.onnx", tmp_path / "loop.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name, problem in (
        ("fifo.onnx", "FIFO"),
        ("loop.onnx", "symlink loop"),
        ("empty.onnx", "empty file"),
        ("none.onnx", "no such file"),
    ):
        with pytest.raises(ModelError, match=problem):
            load_model(tmp_path / name)


def odd_outputs_model():
    """A model like skl2onnx's classifiers: an int64 label, a ZipMap, and a string output."""
    import onnx
    from onnx import TensorProto, helper

    zipmap = helper.make_sequence_type_proto(
        helper.make_map_type_proto(
            TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
        )
    )
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["probs"])],
        "odd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_value_info("output_probability", zipmap),
            helper.make_tensor_value_info("names", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2]),
        ],
    )
    return onnx.helper.make_model(graph)


def test_string_sequence_and_map_outputs_have_reasons():
    from igcli.model import default_output, graph_outputs, is_float_tensor, unusable_reason

    outs = {s.name: s for s in graph_outputs(odd_outputs_model())}
    assert outs["output_probability"].kind == "sequence"
    assert outs["output_probability"].type_text == "seq(map(int64, tensor(float)))"
    assert "ZipMap" in unusable_reason(outs["output_probability"])
    assert "strings" in unusable_reason(outs["names"])
    assert "int64" in unusable_reason(outs["label"])
    assert unusable_reason(outs["probs"]) is None and is_float_tensor(outs["probs"])
    assert default_output(list(outs.values())).name == "probs"
    assert default_output([outs["label"], outs["names"]]) is None


def test_a_bfloat16_output_is_named_as_such():
    """bfloat16 is a float type: 'igcli explains float outputs' read as a contradiction."""
    from onnx import TensorProto, helper

    from igcli.model import graph_outputs, unusable_reason

    vi = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N", 2])
    graph = helper.make_graph([], "bf16", [], [vi])
    (spec,) = graph_outputs(helper.make_model(graph))
    assert "bfloat16, which igcli does not support" in unusable_reason(spec)


def test_model_without_inputs(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from igcli.model import graph_inputs, require_inputs

    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value_float=1.0)],
        "no_inputs",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    model = onnx.helper.make_model(graph)
    assert graph_inputs(model) == []
    with pytest.raises(ModelError, match="no inputs") as err:
        require_inputs(model, tmp_path / "c.onnx")
    assert "c.onnx" in str(err.value)


def test_model_without_outputs_says_so(tmp_path):
    """Nodes but no declared output was called "not an ONNX model (no graph)"."""
    import onnx
    from onnx import TensorProto, helper

    from igcli.model import load_model

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "no_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [],
    )
    path = tmp_path / "n.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(ModelError, match="declares no outputs") as err:
        load_model(path)
    assert "n.onnx" in str(err.value)


def test_feeds_are_checked_once_naming_the_feed_file(tmp_path):
    from igcli.model import graph_inputs, load_feeds
    from tests import models

    inputs = graph_inputs(models.two_inputs())  # x [N, 3] attributed, s [N, 3] fed
    x = inputs[0]
    np.save(tmp_path / "ok.npy", np.ones(3, np.float32))
    assert load_feeds({"s": tmp_path / "ok.npy"}, inputs, x)["s"].value.shape == (1, 3)
    np.save(tmp_path / "ints.npy", np.array([[1, 2, 3]]))
    assert load_feeds({"s": tmp_path / "ints.npy"}, inputs, x)["s"].value.dtype == np.float32
    bad = {
        "str.npy": (np.array(["a", "b", "c"]), "strings"),
        "shape.npy": (np.ones((1, 4), np.float32), r"shape \[1, 4\] does not fit"),
        "batch.npy": (np.ones((5, 3), np.float32), "batch of 5"),
        "nan.npy": (np.array([1.0, np.nan, 0.0]), "NaN"),
        "complex.npy": (np.ones(3, np.complex64), "cannot feed"),
    }
    for name, (value, problem) in bad.items():
        np.save(tmp_path / name, value)
        with pytest.raises(UsageError, match=problem) as err:
            load_feeds({"s": tmp_path / name}, inputs, x)
        assert name in str(err.value)
    with pytest.raises(UsageError, match="attributed input"):
        load_feeds({"s": tmp_path / "ok.npy", "x": tmp_path / "ok.npy"}, inputs, x)
    with pytest.raises(UsageError, match="unknown input.*'t'"):
        load_feeds({"t": tmp_path / "ok.npy"}, inputs, x)
    with pytest.raises(UsageError, match="needs a value: --feed s="):
        load_feeds({}, inputs, x)


# -- reports and outputs --------------------------------------------------------------------------

GOOD_RESULT = {
    "input": "a.png",
    "name": "a",
    "target": 3,
    "f_input": 0.9,
    "f_baseline": 0.1,
    "attribution_sum": 0.8,
    "rel_error": 0.001,
    "gradient_source": "graph",
}


def report_file(tmp_path, results, failures=None, name="report.json", **extra):
    path = tmp_path / name
    doc = {"model": "m.onnx", "model_sha256": "ab", "settings": {}, "results": results}
    doc.update(failures=[] if failures is None else failures, **extra)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    "results,failures,extra,problem",
    [
        (["not a record"], [], {}, r"results\[0\] is not a record"),
        ([{**GOOD_RESULT, "name": None}], [], {}, r"results\[0\] lacks 'name'"),
        ([{k: v for k, v in GOOD_RESULT.items() if k != "target"}], [], {}, "lacks 'target'"),
        ([{**GOOD_RESULT, "target": "3"}], [], {}, r"results\[0\].target is \"3\""),
        ([{**GOOD_RESULT, "target": True}], [], {}, "not a number"),
        ([{**GOOD_RESULT, "rel_error": [1]}], [], {}, r"rel_error is \[1\]"),
        ([{**GOOD_RESULT, "input": {"a": 1}}], [], {}, "input is"),
        ([GOOD_RESULT], [5], {}, r"failures\[0\] is not a record"),
        ([GOOD_RESULT], [{"input": "b.png"}], {}, "lacks 'error'"),
        ([GOOD_RESULT], {"x": 1}, {}, "'failures' must be a list"),
        ({"x": 1}, [], {}, "'results' must be a list"),
        ([GOOD_RESULT], [], {"gate": {"max": "high"}}, "'gate'"),
        ([GOOD_RESULT], [], {"settings": []}, "'settings'"),
        # no run writes these; merged, they were summed and shown as they were
        ([{**GOOD_RESULT, "rel_error": "nan"}], [], {}, r"results\[0\].rel_error is nan"),
        ([{**GOOD_RESULT, "rel_error": -1}], [], {}, r"rel_error is -1, not an error"),
        ([{**GOOD_RESULT, "abs_error": -0.5}], [], {}, r"abs_error is -0.5"),
        ([GOOD_RESULT], [], {"schema_version": 99}, "schema_version 99; this igcli reads 1"),
        ([GOOD_RESULT], [], {"schema_version": "1"}, 'schema_version "1"'),
        ([{**GOOD_RESULT, "schema_version": 2}], [], {}, r"results\[0\] has schema_version 2"),
        # fields merging and report.html read: crashes after report.json/.csv/.md were written
        ([GOOD_RESULT], [], {"skipped": {"a": 1}}, "'skipped' must be a list"),
        ([GOOD_RESULT], [], {"skipped": ["a.png"]}, r"skipped\[0\] is not an entry"),
        ([GOOD_RESULT], [], {"summary": [1]}, "'summary' must be an object"),
        ([GOOD_RESULT], [], {"summary": {"resumed": "x"}}, "'summary.resumed'"),
        # json.dumps writes a bare NaN; merged, it was written again: report.json not JSON
        ([GOOD_RESULT], [], {"settings": {"model_time_s": float("nan")}}, "NaN is not JSON"),
        ([GOOD_RESULT], [], {"settings": {"model_time_s": "abc"}}, "'settings.model_time_s'"),
        ([GOOD_RESULT], [], {"settings": {"wall_time_s": "nan"}}, "not a time"),
        # a hand-edited "yes" was read as not interrupted, and the shard's gaps went unsaid
        ([GOOD_RESULT], [], {"summary": {"interrupted": "yes"}}, "'summary.interrupted'"),
        ([GOOD_RESULT], [], {"settings": {"targets": 5}}, "'settings.targets'"),
        ([{**GOOD_RESULT, "path": [1]}], [], {}, r"results\[0\].path is \[1\]"),
        ([{**GOOD_RESULT, "settings_hash": {}}], [], {}, "settings_hash is"),
    ],
)
def test_merge_reports_over_malformed_records(tmp_path, results, failures, extra, problem):
    from igcli.report import merge_reports

    good = report_file(tmp_path, [GOOD_RESULT], name="good.json")
    bad = report_file(tmp_path, results, failures, name="bad.json", **extra)
    with pytest.raises(UsageError, match=problem) as err:
        merge_reports([good, bad])
    assert "bad.json" in str(err.value) and "\n" not in str(err.value)


def test_merge_reports_reads_non_finite_numbers_back(tmp_path):
    from igcli.report import merge_reports

    inf = {**GOOD_RESULT, "f_input": "inf", "rel_error": "inf", "delta": "-inf"}
    path = report_file(tmp_path, [inf], gate={"max": 0.01, "passed": False})
    merged = merge_reports([path])
    assert merged.results[0]["f_input"] == float("inf")
    assert merged.gate["passed"] is False and merged.gate["failing"] == ["a"]
    merged.write(tmp_path / "out")  # markdown formats numbers: "inf" strings used to crash it
    assert "inf" in (tmp_path / "out" / "report.md").read_text()
    again = json.loads((tmp_path / "out" / "report.json").read_text())
    assert again["results"][0]["rel_error"] == "inf"


def test_merge_reports_unreadable_files(tmp_path):
    from igcli.report import merge_reports

    (tmp_path / "deep.json").write_text("[" * 100_000)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    for name, problem in (("deep.json", "not a readable report"), ("bin.json", "not a read")):
        with pytest.raises(UsageError, match=problem):
            merge_reports([tmp_path / name])
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(UsageError, match="not a readable report"):
        merge_reports([tmp_path / "dir.json"])


def test_text_outputs_with_undecodable_names_stay_utf8(tmp_path):
    from igcli.outputs import atomic_write_text

    atomic_write_text(tmp_path / "r.md", "- `bad\udcffname.png`: error\n")
    assert (tmp_path / "r.md").read_bytes().decode("utf-8") == "- `bad\\udcffname.png`: error\n"


def test_output_names_through_symlinks_and_loops_inside_out(tmp_path):
    from igcli.errors import OutputError
    from igcli.outputs import output_stem

    out = tmp_path / "out"
    out.mkdir()
    os.symlink(tmp_path, out / "escape")
    os.symlink("loop", out / "loop")
    with pytest.raises(OutputError, match="escape"):
        output_stem(out, "escape/x.npy")
    assert output_stem(out, "loop/x.npy").parent.name == "loop"  # writing it fails, in one line
    with pytest.raises(OutputError):
        output_stem(out, ".")
    with pytest.raises(OutputError):
        output_stem(out, "a\0b.npy")


def test_csv_rows_stream_with_bad_rows_reported_one_by_one(tmp_path):
    import tracemalloc

    from igcli.inputs import RowError, iter_table

    lines = ["a,b"] + [f"{i},{i % 7}" for i in range(5_000)]
    lines[5] = "4,oops"  # data row 4
    lines[9] = "8"  # data row 8: short
    lines[12] = "11,1e39"  # data row 11: overflows float32
    path = tmp_path / "long.csv"
    path.write_text("\n".join(lines) + "\n")
    tracemalloc.start()
    errors, count = {}, 0
    try:
        for item in iter_table(path, NAMED, "long"):
            if isinstance(item, RowError):
                errors[item.name] = str(item.error)
            else:
                count += 1
                assert item.name == f"long_row{int(item.raw_values[0])}"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 5_000 - 3 and set(errors) == {"long_row4", "long_row8", "long_row11"}
    assert "line 6 is not all numbers" in errors["long_row4"]
    assert "line 10 is short" in errors["long_row8"] and "overflow" in errors["long_row11"]
    assert all("long.csv" in e and "\n" not in e for e in errors.values())
    assert peak < 512 << 10  # about 170 KiB: one block of 256 rows, not the 5,000
    with pytest.raises(InputError, match="line 6 is not all numbers"):
        load_samples(path, NAMED, "long")  # the strict reader fails the file on its first bad row


def test_an_output_folder_swapped_for_a_symlink_is_refused_on_its_next_use(tmp_path):
    """A long-lived process (a Dask worker) must not trust what it found inside OUT before."""
    from igcli.errors import OutputError
    from igcli.outputs import output_stem

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    assert output_stem(out, "sub/x.npy") == (out / "sub" / "x.npy").resolve()
    (out / "sub").rmdir()
    os.symlink(tmp_path, out / "sub")
    with pytest.raises(OutputError, match="escape"):
        output_stem(out, "sub/x.npy")


def test_a_header_cell_quoted_over_several_lines_fails_its_file_alone(tmp_path):
    """A header whose quoted cell spans lines (or whose quote never closes) ended the run
    with an internal error (the reader gave the line it started on, where the header's cells
    were expected), the other inputs unexplained."""
    prep = make_preprocessing(spec(["N", 2]), Sidecar(feature_names=["a", "b"]))
    for text in ('"a\nx",b\n1,2\n', '"a,b\n1,2\n3,4\n'):
        path = hf.write(tmp_path / "h.csv", text.encode())
        refused(path, prep, r"header, lines 1-\d: a quote opened on line 1 is not closed")
