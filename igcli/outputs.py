"""Writing results: atomic files (temporary name, then rename) and safe output paths."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import math
import os
import posixpath
import secrets
import stat
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from igcli.errors import OutputError
from igcli.files import open_regular, os_reason, parse_json

try:  # zlib-ng deflates a heatmap panel 3x as fast as zlib, its output a little smaller
    from zlib_ng import zlib_ng as _deflate

    _LEVEL = 1  # a digits panel: 0.84 ms and 39 kB, against 1.24 ms and 29 kB at level 2
except ImportError:  # a platform without its wheel
    _deflate, _LEVEL = zlib, 3


_CREATE = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL
    | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
)  # fmt: skip


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write all of `data` or nothing: a crash or a full disk never leaves half a file."""
    atomic_write_parts(path, [data])


def atomic_write_parts(path: Path, parts: Iterable[bytes]) -> None:
    """Write the parts one after the other, all or nothing (a long report need not be one
    string in memory): an unnamed file in path's folder, then a link to its name (Linux), or
    a temporary file beside `path`, then a rename over it.

    The unnamed file (O_TMPFILE) changes the folder once, where a named one changes it
    twice (create, rename), each under the folder's lock: two workers writing into one
    folder spun on it for 6% of a 1,000-digit run's CPU, and a write took 220 to 380 us of
    CPU instead of 580 to 660 on this machine's ext4. A crash leaves nothing behind. The
    folder is made only when the open says it is missing; the mode is open()'s (0666 less
    the umask), not mkstemp's 0600, with no chmod."""
    try:
        fd, tmp = _create_beside(path)
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror or exc})", path.parent) from None
    made = tmp  # the name this write gave its file: removed if the write fails
    try:
        try:
            for part in parts:
                _write_all(fd, part)
            if tmp is None:
                tmp = _link_unnamed(fd, path)
                made = tmp or str(path)  # (a failed close must not leave it named)
        finally:
            os.close(fd)
        if tmp is not None:
            os.replace(tmp, path)
    except BaseException as exc:
        if made is not None:
            with contextlib.suppress(OSError):
                os.unlink(made)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write ({exc.strerror or exc})", path) from None
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# O_TMPFILE, where the platform has it and /proc can name the open file to link it (turned
# off for the process when a link through /proc is refused)
_UNNAMED = getattr(os, "O_TMPFILE", 0) and os.path.isdir("/proc/self/fd")
_UNNAMED_REFUSED = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP)
_LINK_REFUSED = (*_UNNAMED_REFUSED, errno.EPERM, errno.EACCES, errno.ENOENT, errno.EXDEV)


def _create_beside(path: Path) -> tuple[int, str | None]:
    """A new file in path's folder (made if missing), open for writing: unnamed (None) where
    the filesystem makes one, else .NAME.XXXXXXXX.tmp."""
    if _UNNAMED:
        flags = os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC  # (read back if no link is allowed)
        try:
            return _opened(path, path.parent, flags), None
        except OSError as exc:
            if exc.errno not in _UNNAMED_REFUSED:  # (a filesystem without O_TMPFILE)
                raise
    return _create_named(path)


def _create_named(path: Path) -> tuple[int, str]:
    return _at_free_name(path, lambda tmp: _opened(path, tmp, _CREATE))


def _opened(path: Path, target, flags: int) -> int:
    """os.open(target, flags, 0o666), path's folder made where the open says it is missing."""
    try:
        return os.open(target, flags, 0o666)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(target, flags, 0o666)


def _at_free_name(path: Path, claim):
    """(claim(name), name) for the first .NAME.XXXXXXXX.tmp beside path that `claim` does
    not find taken (FileExistsError)."""
    for _ in range(100):
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return claim(tmp), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


def _link_unnamed(fd: int, path: Path) -> str | None:
    """Give the unnamed file `fd` the name `path`: None when done, or the temporary name it
    got where `path` exists (it is then renamed over it, as a rename replaces atomically
    and a link does not)."""
    global _UNNAMED
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def link(name: str) -> None:  # (by its name in the folder: path may be relative)
        # (a folder descriptor makes os.link call linkat, which follows /proc's link)
        os.link(f"/proc/self/fd/{fd}", os.path.basename(name), dst_dir_fd=folder,
                follow_symlinks=True)  # fmt: skip

    try:
        try:
            link(path.name)
            return None
        except FileExistsError:
            return _at_free_name(path, link)[1]
        except OSError as exc:
            if exc.errno not in _LINK_REFUSED:
                raise
            _UNNAMED = False  # (a /proc that names no file, say: named files from now on)
            return _copied_to_named(fd, path)
    finally:
        with contextlib.suppress(OSError):  # (a folder opened to read: nothing to lose)
            os.close(folder)


def _copied_to_named(fd: int, path: Path) -> str:
    """The unnamed file's bytes in a new .NAME.XXXXXXXX.tmp (closed): its name."""
    out, tmp = _create_named(path)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        while block := os.read(fd, 1 << 20):
            _write_all(out, block)
    except BaseException:
        os.close(out)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(out)
    return tmp


def remove_write_leftovers(files: Callable[[], Iterable[Path]]) -> None:
    """Remove the temporary files of atomic writes that a killed writer left (a Dask worker
    killed mid-write, say): `.NAME.XXXXXXXX.tmp` beside a file NAME of `files()`, which this
    run has written whole, so no writer of its can still be at work. `files()` is walked
    once for their folders and, only where such leftovers lie, once more: memory holds the
    folders and the leftovers, not every name."""
    folders = {f.parent for f in files()}
    leftovers: dict[Path, dict[str, list[str]]] = {}
    for folder in folders:
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            if entry.startswith(".") and entry.endswith(".tmp"):
                target = entry[1:-4].rpartition(".")[0]  # .NAME.XXXXXXXX.tmp -> NAME
                leftovers.setdefault(folder, {}).setdefault(target, []).append(entry)
    if not leftovers:
        return
    for f in files():
        for entry in leftovers.get(f.parent, {}).pop(f.name, []):
            with contextlib.suppress(OSError):
                os.unlink(f.parent / entry)


def atomic_write_chunks(path: Path, chunks: Iterable[str]) -> None:
    """Text chunks, UTF-8 as atomic_write_text writes it."""
    atomic_write_parts(path, (c.encode("utf-8", errors="backslashreplace") for c in chunks))


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8 always: characters that cannot be encoded (the undecodable bytes of a file name,
    kept by Python as lone surrogates) are written as \\udcXX escapes, not a crash."""
    atomic_write_bytes(path, text.encode("utf-8", errors="backslashreplace"))


DIGEST_CHARS = 32  # of a SHA-256 in hex: what a record file keeps of each output


def digest(data: bytes) -> str:
    """The short SHA-256 a record keeps of an output's bytes (see batch.content_hash)."""
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def atomic_save_npy(path: Path, array: np.ndarray) -> str:
    """Save; return the digest of the bytes written (no second read to find it)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return digest(data)


def atomic_save_png(path: Path, image) -> str:
    """Save; return the digest of the bytes written."""
    data = png_bytes(image)
    atomic_write_bytes(path, data)
    return digest(data)


# A text chunk in every PNG igcli encodes (Software: igcli), right after the header: a later
# run tells its own heatmaps from a user's picture of the same name in OUT by it.
PNG_SIGNATURE = b"tEXtSoftware\x00igcli"


def png_bytes(image) -> bytes:
    """A PIL image, or 8-bit RGB (H, W, 3) or grey (H, W) pixels, as PNG. 8-bit RGB and
    grayscale (every heatmap) are encoded here: one 'Up' filter for all rows (nearest-upscaled
    tiles repeat rows, which it turns into zeros) and zlib-ng level 1, where Pillow tries five
    filters on every row and zlib: a 748x414 panel in 0.8 ms instead of 4.5 (zlib level 3:
    2.0 ms). Pixels need no PIL image at all (its RGB to numpy conversion alone took 0.5 ms).
    Other modes go through Pillow."""
    if isinstance(image, np.ndarray):
        pixels = image
    elif image.mode in ("RGB", "L"):
        pixels = np.asarray(image, dtype=np.uint8)
    else:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Software", "igcli")
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=3, pnginfo=info)  # 3: 30% faster than 6
        return buf.getvalue()
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or pixels.shape[2:] == (3,)):
        raise ValueError(f"pixels must be uint8 (H, W) or (H, W, 3), got {pixels.shape}")
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    raw = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type Up: each byte minus the one above it (mod 256)
    raw[:1, 1:] = rows[:1]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    color_type = 2 if pixels.ndim == 3 else 0
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join([
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", header),
        _png_chunk(PNG_SIGNATURE[:4], PNG_SIGNATURE[4:]),
        _png_chunk(b"IDAT", _deflate.compress(raw, _LEVEL)),  # (no copy: a buffer will do)
        _png_chunk(b"IEND", b""),
    ])  # fmt: skip


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def check_writable(out_dir: Path) -> None:
    """Fail early, before any work, when the output folder cannot be written."""
    try:  # (a name too long to look up was an internal error)
        if out_dir.exists() and not out_dir.is_dir():
            raise OutputError("--out names a file, not a folder", out_dir)
        if out_dir.is_symlink() and not out_dir.exists():
            raise OutputError(f"--out is a broken symlink (to {os.readlink(out_dir)})", out_dir)
    except OSError as exc:
        raise OutputError(f"cannot write it ({os_reason(exc)})", out_dir) from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".igcli-write-check.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(
            f"output folder is not writable ({exc.strerror or exc})", out_dir
        ) from None


def lock_reports(out_dir: Path, stem: str) -> int | None:
    """Hold `<out_dir>/.igcli-<stem>.lock` for this run (released when the descriptor is
    closed, or the process ends however it ends): two runs writing one folder's reports at
    once left report.json naming 109 .npy files the other run had written, both with exit
    0. Shards (their own report stems) and Dask workers (no lock of their own) still share a
    folder. None where there is no flock (Windows) or the filesystem refuses it."""
    try:
        import fcntl
    except ImportError:
        return None
    path = out_dir / f".igcli-{stem}.lock"
    try:  # (the file a run that just finished unlinked, see unlock_reports, locks nothing)
        return _flocked(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputError(
            f"another igcli run is writing {stem}.json in this folder; wait for it to finish or "
            "choose another --out",
            out_dir,
        ) from None


def lock_folder(out_dir: Path, group: str) -> int | None:
    """Hold `<out_dir>/.igcli-run.<group>.lock` shared for this run, and refuse to start
    while a run of another group writes the folder. The report lock covers one report's
    name only: a shard 1/2 and a plain run (or a shard 1/3) on one --out both exited 0,
    each report naming .npy files the other had written. Shards of one N are one group (a
    job's shards share a folder); a plain run is the group "all". None where there is no
    flock (Windows) or the filesystem refuses it."""
    try:
        import fcntl
    except ImportError:
        return None
    own = out_dir / f".igcli-run.{group}.lock"
    fd = _flocked(own, fcntl.LOCK_SH)  # waits only for a check or an ending run (below)
    if fd is None:
        return None
    for other in sorted(out_dir.glob(".igcli-run.*.lock")):
        if other.name == own.name:
            continue
        try:
            held = os.open(other, os.O_RDWR)
        except OSError:  # gone meanwhile: that run ended
            continue
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(held)
            unlock_folder(out_dir, group, fd)
            what = other.name[len(".igcli-run.") : -len(".lock")].replace("-", " ")
            what = "a run of every input" if what == "all" else what
            raise OutputError(
                f"another igcli run ({what}) is writing in this folder; only shards of one N "
                "may share an --out: wait for it to finish or choose another --out",
                out_dir,
            ) from None
        except OSError:
            os.close(held)
            continue
        with contextlib.suppress(OSError):  # left by a run that was killed: nobody holds it
            os.unlink(other)
        os.close(held)
    return fd


def _flocked(path: Path, how: int) -> int | None:
    """A descriptor of `path` (created if need be) holding flock `how`, on the file that has
    that name once locked; None where the filesystem has no locks. BlockingIOError where
    `how` does not wait (LOCK_NB) and another holds the lock."""
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(
                f"cannot create {path.name} ({exc.strerror or exc})", path.parent
            ) from None
        try:
            fcntl.flock(fd, how)
        except BlockingIOError:
            os.close(fd)
            raise
        except OSError:  # no locks on this filesystem (some network mounts): run unlocked
            os.close(fd)
            return None
        try:  # unlinked meanwhile by a run that ended: it locks nothing
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except OSError:
            pass
        os.close(fd)


def unlock_folder(out_dir: Path, group: str, fd: int) -> None:
    """Release a lock_folder lock; the last run of its group removes the file."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # another run of the group still holds it
    else:
        with contextlib.suppress(OSError):
            os.unlink(out_dir / f".igcli-run.{group}.lock")
    os.close(fd)


def unlock_reports(out_dir: Path, stem: str, fd: int) -> None:
    """Remove the lock file and release it (in that order: a run that opened it meanwhile
    finds it unlinked and takes a new one), so a finished run leaves no file behind."""
    with contextlib.suppress(OSError):
        os.unlink(out_dir / f".igcli-{stem}.lock")
    os.close(fd)


@functools.lru_cache(maxsize=64)
def _resolved(out_dir: str) -> str:
    """OUT's real path, remembered: resolving every output's full path walked each of its
    components with lstat, three files per input (on a slow filesystem, 1 ms each). Only OUT
    itself: what lies inside it is looked at every time."""
    return os.path.realpath(out_dir)


def real_out(out_dir: Path) -> Path:
    """OUT's real path (remembered per absolute path), under which output_stem's paths lie."""
    return Path(_resolved(os.path.abspath(out_dir)))  # (absolute: '.' differs after a chdir)


def plain_parts(name: str) -> list[str] | None:
    """The folders and file of a relative output name, or None where it is absolute or has
    an empty, '.' or '..' part (then two names can be one path: 'a', 'x/../a', 'a//b')."""
    parts = name.replace(os.sep, "/").split("/")
    if os.path.isabs(name) or any(p in ("", ".", "..") for p in parts):
        return None
    return parts


def output_stem(out_dir: Path, relative: str, folders: dict[str, str] | None = None) -> Path:
    """OUT/relative, refusing names that would land outside OUT (through "..", an absolute
    name or a symlink inside OUT). Symlink loops and over-long names are refused too.
    `folders` remembers the folders resolved on the way, for the other outputs of one input
    (a caller's dict, kept no longer: a folder may become a symlink between inputs)."""
    try:
        root = str(real_out(out_dir))
        if "\0" in relative:
            raise ValueError("embedded null byte")
        parts = plain_parts(relative)
        if parts is None:
            target = os.path.realpath(os.path.join(root, relative))
        else:  # realpath below OUT: one lstat per component of the name
            target = root
            for k, part in enumerate(parts):
                folder = "/".join(parts[: k + 1]) if k < len(parts) - 1 else None
                if folders is not None and folder in folders:
                    target = folders[folder]
                    continue
                target = os.path.join(target, part)
                if os.path.islink(target):
                    target = os.path.realpath(target)
                if folders is not None and folder is not None:
                    folders[folder] = target
    except (OSError, ValueError) as exc:
        raise OutputError(f"output name {relative!r} is not usable ({exc})", out_dir) from None
    if target == root or os.path.commonpath([root, target]) != root:
        linked = parts is not None and target != os.path.normpath(os.path.join(root, *parts))
        how = " through a symlink there (left as it is)" if linked else ""
        raise OutputError(f"output name {relative!r} would escape the output folder{how}", out_dir)
    return Path(target)


# -- what in OUT is igcli's, and whole ------------------------------------------------------


def signed_heatmap(path: Path) -> bool:
    """A PNG igcli drew: igcli's Software text comes right after the header."""
    try:
        with open_regular(path, OutputError) as fh:
            head = fh.read(256)
    except (OSError, OutputError):
        return False
    return head.startswith(RESULT_MAGIC[".png"]) and PNG_SIGNATURE in head


def drop_stale_heatmap(path: Path) -> None:
    """Remove the heatmap an earlier run drew at `path` (igcli's signature in it; anything
    else stays): a rerun without heatmaps left it beside attributions it no longer showed."""
    if not os.path.islink(path) and signed_heatmap(path):  # (igcli writes no symlinks)
        with contextlib.suppress(OSError):
            os.unlink(path)


def attributions_like(path: Path, shape: tuple) -> bool:
    """A .npy of float32 values in `shape`, as igcli saves attributions."""
    try:
        with open_regular(path, OutputError) as fh:
            header = _npy_header(fh)
    except (OSError, ValueError, OutputError):
        return False
    return header is not None and header[0] == tuple(shape) and header[1] == np.float32


def _npy_header(fh) -> tuple[tuple, np.dtype] | None:
    """The shape and dtype a .npy file's header declares (the file left just after it)."""
    version = np.lib.format.read_magic(fh)
    read = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}.get(version)  # fmt: skip
    if read is None:
        return None
    shape, _, dtype = read(fh)
    return tuple(shape), dtype


# What a result file starts with; one that does not (emptied, overwritten) is made again.
RESULT_MAGIC = {".npy": b"\x93NUMPY", ".png": b"\x89PNG\r\n\x1a\n"}


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def looks_whole(path: Path) -> bool:
    """A result file as igcli writes it, whole: a .npy as long as its header says, a PNG
    ending in its IEND chunk (a truncated .npy was resumed as ok: only the magic was read).
    A symlink, a FIFO or a device is none: never opened to be read (a FIFO blocked the
    resume, a link to /dev/zero read forever)."""
    suffix = path.suffix.lower()
    try:
        with open_regular(path, OutputError, follow=False) as fh:
            head = fh.read(8)
            if not head or not head.startswith(RESULT_MAGIC.get(suffix, b"")):
                return False
            size = os.fstat(fh.fileno()).st_size
            if suffix == ".png":
                fh.seek(max(0, size - len(_PNG_END)))
                return fh.read() == _PNG_END
            if suffix == ".npy":
                fh.seek(0)
                header = _npy_header(fh)
                return (
                    header is not None
                    and size == fh.tell() + math.prod(header[0]) * header[1].itemsize
                )
    except (OSError, ValueError, OutputError):
        return False
    return True


def record_of_igcli(marker: Path) -> list[dict] | None:
    """The records of a record file igcli wrote ({"input": ..., "records": [...]}), else
    None (absent, unreadable, or someone else's file of that name: a FIFO or a device is
    not opened to be read, it blocked or never ended)."""
    try:
        with open_regular(marker, OutputError) as fh:
            data = parse_json(fh.read(MAX_RECORD_BYTES + 1)[:MAX_RECORD_BYTES])
    except (OSError, ValueError, OutputError):
        return None
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        return None
    return records


MAX_RECORD_BYTES = 16 << 20
RECORD_START = b'{"input": '  # how every record file igcli writes begins (json.dumps)


def damaged_record(marker: Path, size: int) -> bool:
    """Whether a record file that does not parse is igcli's own, cut short (a copy of the
    output folder stopped halfway, say: igcli itself writes records whole, by renaming):
    empty, or beginning as igcli's do. Its input is explained again and the record
    replaced, where it was refused until the file was moved away."""
    if size == 0:
        return True
    try:
        with open_regular(marker, OutputError) as fh:
            return fh.read(len(RECORD_START)) == RECORD_START
    except (OSError, OutputError):
        return False


def _named_by(marker: Path) -> set[str]:
    """The file names an igcli record file lists for its results."""
    names = set()
    for r in record_of_igcli(marker) or []:
        for key in ("attributions_file", "heatmap_file"):
            if isinstance(r.get(key), str):
                names.add(posixpath.basename(r[key]))
    return names


def in_the_way(path: Path, marker: Path, shape: tuple) -> str | None:
    """What writing an output at `path` would replace that igcli did not write ("a folder",
    "a file no record of igcli names"), or None: nothing there, or igcli's own. igcli's own
    are what the record `marker` names, and what a run killed before that record leaves: a
    heatmap igcli signed, attributions of this `shape` (float32 .npy)."""
    try:
        info = os.stat(path)
    except OSError:
        return None  # nothing there (or unreadable: the write will say so)
    if not stat.S_ISREG(info.st_mode):
        return "a folder" if stat.S_ISDIR(info.st_mode) else "not a file"
    if path == marker:
        ours = record_of_igcli(marker) is not None or damaged_record(marker, info.st_size)
        return None if ours else "not igcli's record"
    if path.name in _named_by(marker):
        return None
    if signed_heatmap(path) if path.suffix == ".png" else attributions_like(path, shape):
        return None
    return "a file no record of igcli names"
