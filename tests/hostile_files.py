"""Builders of hostile and unusual input files, for the tests that refuse or read them.

Every fixture is made by the tests themselves (nothing binary is committed): a PNG is a few
chunks written with zlib, a bomb only needs a header that claims too many pixels.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def png_bytes(samples: np.ndarray, bit_depth: int, color_type: int) -> bytes:
    """A PNG of (H, W, C) samples, each row with another of the five filters, so a decoder's
    unfiltering is exercised with the real bytes per pixel (6 for 16-bit RGB)."""
    h, w = samples.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = samples.astype(dtype).reshape(h, -1).view(np.uint8).astype(np.int64)
    bpp = samples.shape[2] * bit_depth // 8
    raw = bytearray()
    prior = np.zeros(rows.shape[1], dtype=np.int64)
    for y in range(h):
        line = rows[y]
        left = np.concatenate([np.zeros(bpp, np.int64), line[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prior[:-bpp]])
        kind = y % 5
        predictor = [
            np.zeros_like(line),
            left,
            prior,
            (left + prior) // 2,
            _paeth(left, prior, upleft),
        ][kind]
        raw.append(kind)
        raw += ((line - predictor) % 256).astype(np.uint8).tobytes()
        prior = line
    header = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(raw)))
        + _chunk(b"IEND", b"")
    )


def png_claiming(width: int, height: int) -> bytes:
    """An 8-bit grey PNG whose header claims width x height pixels; the data is one row."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (width + 1))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def bmp_claiming(width: int, height: int) -> bytes:
    """A 24-bit BMP header claiming width x height pixels, followed by 16 bytes of data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    head = b"BM" + struct.pack("<IHHI", 14 + len(info) + 16, 0, 0, 14 + len(info))
    return head + info + b"\0" * 16


def npy_claiming(shape: tuple, descr: str = "<f4") -> bytes:
    """A .npy header declaring `shape`, with 16 bytes of data after it."""
    text = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    pad = 64 - (10 + len(text) + 1) % 64
    header = (text + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 16


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def png_damaged(samples: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of (H, W, 3) samples with one byte flipped in the middle of its
    IDAT data and the chunk's CRC made right again, so only decoding the pixels finds it."""
    data = bytearray(png_bytes(samples, 8, 2))
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4 : start])[0]
    data[start + 4 + length // 2] ^= 0xFF
    body = bytes(data[start : start + 4 + length])
    data[start + 4 + length : start + 8 + length] = struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return bytes(data)
