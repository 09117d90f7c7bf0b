"""Opening files igcli did not write, without trusting them.

Inputs, baselines, feeds and sidecars come from folders of thousands of files, some of them
broken or hostile. Everything here fails with one line naming the file (an `IgcliError` of
the class the caller chooses) and checks sizes before allocating: a FIFO is refused before
it can block, a `.npy` header is checked against the file's size before its data is read.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from igcli.errors import IgcliError, InputError, UsageError

# 2**28 values (1 GiB of float32): far beyond any input IG can integrate in memory, small
# enough that a header or sidecar cannot make igcli allocate without bound.
MAX_TENSOR_VALUES = 1 << 28

# Pillow's own default. Images are checked on their header, before a pixel is decoded, so a
# 1 MB PNG claiming 30000 x 30000 pixels (a decompression bomb) is refused without
# allocating 900 MB; a sidecar's "size" is held to the same limit.
MAX_IMAGE_PIXELS = 89_478_485


def os_reason(exc: OSError) -> str:
    """A short reason for an OSError, in words a user acts on."""
    reasons = {
        errno.ENOENT: "no such file",
        errno.ELOOP: "symlink loop (a link that leads back to itself)",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENAMETOOLONG: "file name too long",
        errno.ENOTDIR: "a part of the path is not a folder",
        errno.EISDIR: "a folder, not a file",
    }
    return reasons.get(exc.errno, exc.strerror or str(exc))


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def is_folder(path: Path, error: type[IgcliError] = InputError) -> bool:
    """path.is_dir(), where a path the system will not look up (a name over 255 bytes) is
    `error` naming it: pathlib passes such an OSError on, an internal error (exit 1)."""
    try:
        return path.is_dir()
    except OSError as exc:
        raise error(os_reason(exc), path) from None


def open_regular(
    path: Path, error: type[IgcliError] = InputError, *, follow: bool = True
) -> BinaryIO:
    """Open `path` for reading in binary; refuse what is not a regular file.

    O_NONBLOCK keeps a FIFO from blocking the open (it is refused right after); it changes
    nothing for regular files. The type is checked on the open descriptor, so a file swapped
    between the check and the read cannot slip through. `follow` False refuses a symlink
    (O_NOFOLLOW): for files igcli wrote itself, which are never symlinks.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        if not follow and os.path.islink(path):  # (where O_NOFOLLOW is missing)
            raise error("a symlink, not a file", path)
        fd = os.open(path, flags)
    except OSError as exc:
        reason = os_reason(exc)
        if exc.errno == errno.ENOENT and os.path.islink(path):
            reason = "broken symlink (its target does not exist)"
        elif exc.errno == errno.ELOOP and not follow and os.path.islink(path):
            reason = "a symlink, not a file"
        raise error(reason, path) from None
    except ValueError:  # an embedded NUL byte
        raise error("invalid file name", path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{_file_kind(mode)}, not a file", path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# Small text files given as options (labels, a targets table): beyond this, not such a file.
MAX_OPTION_FILE_BYTES = 64 << 20


def read_text(path: Path, limit: int, error: type[IgcliError] = InputError) -> str:
    """A UTF-8 text file (a byte-order mark dropped) of at most `limit` bytes, read whole: a
    device, a FIFO, a larger or undecodable file is one `error` naming the file, never an
    unbounded read."""
    with open_regular(path, error) as fh:
        if file_size(fh) > limit:
            raise error(f"over {limit >> 20} MiB of text", path)
        data = fh.read(limit + 1)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x})", path) from None


def read_option_text(path: Path) -> str:
    """A text file named by an option (labels, a targets table): problems are UsageErrors."""
    return read_text(path, MAX_OPTION_FILE_BYTES, UsageError)


def text_lines(content: str) -> list[str]:
    """A text file's lines, ending at \n, \r\n or (an old Mac file) \r only: str.splitlines
    also breaks at U+2028, U+0085, a form feed and \x1c-\x1e, which may stand inside a line
    (a class name, a sentence, a JSON string)."""
    return content.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_labels(path: Path) -> list[str]:
    """Class names, one a line (--labels, Session(labels=FILE)): trailing blank lines are
    dropped, a blank line inside is a class without a name. (Split with splitlines, a name
    holding U+2028 counted as two classes and shifted every name after it.)"""
    labels = [line.strip() for line in text_lines(read_option_text(path))]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise UsageError("holds no labels (one class name per line)", path)
    return labels


def file_size(fh: BinaryIO) -> int:
    return os.fstat(fh.fileno()).st_size


def stamp_of(st: os.stat_result) -> str:
    """A file's size and modification time, as records keep them ('size:mtime_ns')."""
    return f"{st.st_size}:{st.st_mtime_ns}"


def path_stamp(path) -> str | None:
    """stamp_of the file at `path` now; None where it cannot be read."""
    try:
        return stamp_of(os.stat(path))
    except OSError:
        return None


# What a file holds, by signatures no text file starts with (a CSV may well start "BM").
_SIGNATURES = (
    (b"\x93NUMPY", "a NumPy array (.npy)"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"PK\x03\x04", "a ZIP archive (an .npz?)"),
)


def content_kind(path: Path) -> str | None:
    """What the file's first bytes say it holds ("a PNG image", "a NumPy array (.npy)"),
    or None: for telling a file misnamed from one damaged. Never raises."""
    try:
        with open_regular(path) as fh:
            head = fh.read(12)
    except (IgcliError, OSError):
        return None
    return kind_of(head)


def kind_of(head: bytes) -> str | None:
    """What a file's first 12 bytes say it holds (see content_kind), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    return next((kind for magic, kind in _SIGNATURES if head.startswith(magic)), None)


def read_npy(
    path: Path,
    error: type[IgcliError] = InputError,
    check: Callable[[tuple, np.dtype], str | None] | None = None,
) -> np.ndarray:
    """A .npy array, its header checked against the file before any data is allocated.

    Refuses pickled (object) arrays, truncated data or bytes past it, negative or huge
    shapes and formats other than 1.0/2.0. The dtype is not judged here; callers decide what
    they accept, and may do so on the header: `check(shape, dtype)` returns why such an
    array will not do (None: it will), said before the data is read (a 1 GB file of the
    wrong shape was read whole to be refused).
    """
    with open_regular(path, error) as fh:
        shape, fortran, dtype = npy_header(fh, path, error)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        problem = check(tuple(shape), dtype) if check is not None else None
        if problem:
            raise error(problem, path)
        try:
            data = fh.read(nbytes)
        except OSError as exc:
            raise error(f"cannot read ({os_reason(exc)})", path) from None
        if len(data) != nbytes:  # the file shrank while being read
            raise error("truncated while being read", path)
    arr = np.frombuffer(data, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C")


def npy_header(fh: BinaryIO, path: Path, error: type[IgcliError]) -> tuple[tuple, bool, np.dtype]:
    """A .npy file's shape, Fortran order and dtype, checked as read_npy says; `fh` is left
    at the start of the data, which the file is known to hold whole."""
    size = file_size(fh)
    if size == 0:
        raise error("empty file (0 bytes), not a .npy array", path)
    try:
        version = np.lib.format.read_magic(fh)
    except ValueError:
        raise error("not a .npy file (no NumPy header)", path) from None
    if version not in ((1, 0), (2, 0)):
        raise error(f".npy format {version[0]}.{version[1]} is not supported", path)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    try:
        shape, fortran, dtype = read_header(fh)
    except ValueError as exc:  # numpy's own words: no header end, keys missing, ...
        said = first_line(exc)
        if "malformed node" in said:  # (ast's words, with an object's address in them)
            said = "it holds more than Python literals: code?"
        raise error(f"damaged .npy header ({said})", path) from None
    except Exception:  # its parser's (a TokenError's tuple): nothing a user can read
        raise error("damaged .npy header (its text is not a NumPy header)", path) from None
    if dtype.hasobject:
        raise error("holds Python objects (a pickle); igcli does not unpickle files", path)
    # (numpy takes any int there: a bool, as True, reached reshape and stopped a batch)
    if any(type(d) is not int or d < 0 for d in shape):
        raise error(f"damaged .npy header (shape {list(shape)})", path)
    count = math.prod(shape)
    if count > MAX_TENSOR_VALUES:
        raise error(
            f"shape {list(shape)} holds {count:,} values; igcli reads at most "
            f"{MAX_TENSOR_VALUES:,}",
            path,
        )
    nbytes = count * dtype.itemsize
    available = size - fh.tell()
    if nbytes > available:
        raise error(
            f"truncated: shape {list(shape)} of {dtype} needs {nbytes:,} bytes of data, "
            f"the file holds {max(available, 0):,}",
            path,
        )
    if nbytes < available:  # np.save twice to one file: numpy's load takes the first quietly
        extra = available - nbytes
        said = "1 byte follows" if extra == 1 else f"{extra:,} bytes follow"
        raise error(
            f"{said} its array (shape {list(shape)} of {dtype}); a .npy file holds one array",
            path,
        )
    return shape, fortran, dtype


def parse_json(text: str | bytes, strict: bool = False):
    """json.loads for what users and other programs hand over: JSON nested too deeply (1,000
    '[' in a 2 KB line) is a ValueError like any other bad JSON, where Python's decoder
    raises RecursionError, an internal error that stopped whole runs. `strict`: NaN and
    Infinity, which JSON has not (Python's decoder takes them), are bad JSON too."""
    try:
        if strict:
            return json.loads(text, parse_constant=_no_constant)
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON (igcli writes non-finite numbers as strings)")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries write several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def printable(text: object) -> str:
    """`text` on one line, safe for any terminal: control characters, bidi overrides and
    bytes that are not UTF-8 (file names may hold all three) become escapes like \\n,
    \\u202e and \\xff."""
    text = str(text)
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, kept by os.fsdecode
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in BIDI_CONTROLS:
            # (a right-to-left override in a file name reverses the rest of the line)
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)
