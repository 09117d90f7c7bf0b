"""Read the model file named on the command line while the CLI imports.

Importing the CLI takes about 0.35 s on one core (numpy, ONNX, ONNX Runtime, click, rich),
and reading a 100 MB model then took 0.1 s more (the copy into fresh memory), with the
second core idle. A thread started before the imports reads the file (the read gives up the
GIL), and `load_model` takes the bytes if the file is still the one read: same device,
inode, size and modification time. Only regular files are read, once, whole or not at all.
Nothing heavy is imported here (see launch.py)."""

from __future__ import annotations

import os
import stat
import threading

LIMIT = 2**31  # protobuf's largest message: a larger file is refused by load_model anyway

_pending: dict[str, tuple[threading.Thread, dict]] = {}


def start(argv: list[str]) -> None:
    """Begin reading the first argument that names a regular `.onnx` file."""
    for arg in argv:
        if arg.lower().endswith(".onnx") and not arg.startswith("-"):
            try:
                key = os.path.realpath(arg)
                if not stat.S_ISREG(os.stat(key).st_mode):
                    return
            except (OSError, ValueError):
                return
            box: dict = {}
            thread = threading.Thread(target=_read, args=(key, box), daemon=True)
            thread.start()
            _pending[key] = (thread, box)
            return


def _read(path: str, box: dict) -> None:
    try:
        # (non-blocking: a FIFO put in the file's place since start() must not hang us)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > LIMIT:
            return
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(info.st_size + 1)
        if len(data) == info.st_size:
            box["data"], box["stat"] = data, _identity(info)
    except (OSError, MemoryError):
        pass
    finally:
        os.close(fd)


def _identity(info: os.stat_result) -> tuple[int, int, int, int]:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def take(path: str, opened: os.stat_result) -> bytes | None:
    """The bytes read ahead for `path`, if the file opened now (`opened`: its fstat) is the
    file that was read; None otherwise. Each read is handed out once."""
    key = os.path.realpath(path)
    entry = _pending.pop(key, None)
    if entry is None:
        return None
    thread, box = entry
    thread.join()
    if box.get("stat") != _identity(opened):
        return None
    return box["data"]
