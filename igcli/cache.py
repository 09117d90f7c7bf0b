"""On-disk cache of what is costly to make once per model: gradient graphs, and the graphs ONNX
Runtime has optimised for this machine, so that a second run of the same model starts at once.

Keys hold the model's content hash, what was explained (input, output, softmax, shapes),
igcli's version and a hash of the gradient transform's own code: a changed rule invalidates
every graph it built. A graph entry stores only what the transform added; weights the model
already holds are written as references by name and restored from the model when loaded, so
an entry costs the size of the backward pass's own constants, not another copy of the model.
The whole cache is bounded: least recently used entries go first once it exceeds
IGCLI_CACHE_MAX (default 2G). Location: $IGCLI_CACHE_DIR, else $XDG_CACHE_HOME/igcli, else
~/.cache/igcli. A broken or unwritable cache is never an error: it is rebuilt or skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from igcli import __version__
from igcli.errors import IgcliError, UsageError

BASE_REF = "igcli:model"  # external-data location meaning "this weight is in the model itself"
DEFAULT_LIMIT = 2 << 30


def cache_dir() -> Path:
    if os.environ.get("IGCLI_CACHE_DIR"):
        return Path(os.environ["IGCLI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "igcli"


def problem() -> str | None:
    """Why the cache folder cannot be read, or None where it can: absent (made at the first
    save) or a folder this process may read and enter. A root-owned mode-700 one failed a
    run with an internal error (PermissionError); a read-only one is usable (saves fail
    quietly)."""
    unreadable = "the cache folder cannot be read (permission denied?)"
    root = cache_dir()
    try:
        if not root.exists():
            return None
        if not root.is_dir():
            return "the cache's path is no folder (a file or a device)"
        return None if os.access(root, os.R_OK | os.X_OK) else unreadable
    except OSError:
        return unreadable


def usable() -> bool:
    return problem() is None


def parse_size(text: str) -> int:
    """'500M', '2G', '1.5GB', '123456' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[iI]?[bB]?\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 500M, 2G)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def size_limit() -> int:
    """IGCLI_CACHE_MAX in bytes (default 2G). A value that is no size is a usage error, not
    the default in silence: a cache the user meant to keep small grew to 2G."""
    text = os.environ.get("IGCLI_CACHE_MAX")
    if not text:
        return DEFAULT_LIMIT
    try:
        return parse_size(text)
    except ValueError as exc:
        raise UsageError(f"IGCLI_CACHE_MAX: {exc}") from None


@lru_cache(maxsize=1)
def transform_hash() -> str:
    """A hash of the code that builds gradient graphs: any change to a rule invalidates them."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted([*(here / "autodiff").glob("*.py"), here / "gradients.py"]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(model_sha256: str, *parts: str) -> str:
    text = "\0".join([model_sha256, __version__, transform_hash(), *parts])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# -- gradient graphs ------------------------------------------------------------------------


def _strip_model_weights(model: onnx.ModelProto, base: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose initializers equal to `base`'s are references by name."""
    known = {init.name: init for init in base.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        ref = known.get(init.name)
        if ref is None or list(ref.dims) != list(init.dims) or ref.data_type != init.data_type:
            continue
        if not np.array_equal(numpy_helper.to_array(ref), numpy_helper.to_array(init)):
            continue
        name = init.name
        init.Clear()
        init.name, init.data_type = name, ref.data_type
        init.dims.extend(ref.dims)
        init.data_location = onnx.TensorProto.EXTERNAL
        entry = init.external_data.add()
        entry.key, entry.value = "location", BASE_REF
    return out


def _restore_model_weights(model: onnx.ModelProto, base: onnx.ModelProto) -> bool:
    """Fill the references of `_strip_model_weights` from `base`; False if one is missing."""
    known = {init.name: init for init in base.graph.initializer}
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in init.external_data if e.key == "location"), None)
        ref = known.get(init.name)
        if location != BASE_REF or ref is None:
            return False
        init.CopyFrom(ref)
    return True


def load_graph(key: str, base: onnx.ModelProto) -> onnx.ModelProto | None:
    """The gradient graph cached under `key`, its weights restored from `base`; else None."""
    path = cache_dir() / f"grad-{key}.onnx"
    if not path.is_file():
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None
    if not _restore_model_weights(model, base):
        return None
    _touch(path)
    return model


def save_graph(key: str, model: onnx.ModelProto, base: onnx.ModelProto) -> None:
    """Cache a gradient graph under `key`; weights `base` holds are stored as references.
    A cache that cannot be written is no error, but a bad IGCLI_CACHE_MAX is the user's."""
    limit = size_limit()
    with contextlib.suppress(Exception):
        path = cache_dir() / f"grad-{key}.onnx"
        _write_atomic(path, _strip_model_weights(model, base).SerializeToString())
        enforce_limit(limit)


MAX_ENTRY_TEXT = 1 << 20  # a JSON entry igcli writes: a few hundred bytes


def _entry_text(path: Path) -> str:
    """A small JSON entry's text, from a regular file only: a FIFO put in its place hung
    every run in open() (never answered), a device would be read for ever."""
    from igcli.files import open_regular

    with open_regular(path, UsageError, follow=False) as fh:
        return fh.read(MAX_ENTRY_TEXT).decode("utf-8")


# -- self-check verdicts ---------------------------------------------------------------------
def load_check(key: str) -> dict | None:
    """What a run found about the gradient graph cached under `key`: {"check": the self-check
    summary (a passing one), "rows_independent": bool or absent, "bytes_per_row": the memory
    one more row of a call costs, or absent}."""
    try:
        found = json.loads(_entry_text(cache_dir() / f"check-{key}.json"))
    except (OSError, ValueError, IgcliError):
        return None
    check = found.get("check") if isinstance(found, dict) else None
    ok = isinstance(check, dict) and check.get("verdict") in ("ok", "kinks", "saturated")
    return found if ok else None


def save_check(key: str, found: dict) -> None:
    """Record that the graph cached under `key` passed its self-check (a later run that loads
    that graph need not check it again: same model bytes, same transform code)."""
    with contextlib.suppress(Exception):
        _write_atomic(cache_dir() / f"check-{key}.json", json.dumps(found).encode())


def load_fact(key: str) -> object | None:
    """A small fact an earlier run measured about a model (JSON), or None."""
    try:
        return json.loads(_entry_text(cache_dir() / f"fact-{key}.json"))
    except (OSError, ValueError, IgcliError):
        return None


def save_fact(key: str, value: object) -> None:
    with contextlib.suppress(Exception):
        _write_atomic(cache_dir() / f"fact-{key}.json", json.dumps(value).encode())


def cached_model(
    key: str,
    build: Callable[[], onnx.ModelProto],
    base: onnx.ModelProto,
    use_cache: bool = True,
) -> tuple[onnx.ModelProto, bool]:
    """Return (model, was_cached); `base` is the model whose weights entries refer to."""
    if not use_cache:
        return build(), False
    model = load_graph(key, base)
    if model is not None:
        return model, True
    model = build()
    save_graph(key, model, base)
    return model, False


# -- ONNX Runtime's optimised graphs ----------------------------------------------------------


@lru_cache(maxsize=1)
def machine_tag() -> str:
    """ONNX Runtime's optimised graphs fit one runtime version and one kind of CPU."""
    import onnxruntime

    flags = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
        flags = m.group(1) if m else ""
    raw = "\0".join([onnxruntime.__version__, platform.machine(), platform.processor(), flags])
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def optimized_path(key: str, providers: list[str]) -> Path:
    tag = hashlib.sha256("\0".join([key, machine_tag(), *providers]).encode()).hexdigest()[:32]
    return cache_dir() / f"ort-{tag}.onnx"


# -- housekeeping -------------------------------------------------------------------------


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: kept longest


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".igcli-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_sha256(path: Path, remember: bool = True) -> str:
    """The sha256 of a file's bytes, remembered by the file's identity (device, inode, size,
    mtime and ctime, as git's index does): a second run on a 100 MB model need not read it all
    again to find its cache entries. A file changed within 2 s of being hashed is hashed
    again every time (its mtime cannot tell a later change apart)."""
    st = os.stat(path)
    identity = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    if remember:
        where = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:32]
        memo = cache_dir() / f"sha256-{where}.json"
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError, IgcliError):
            known = json.loads(_entry_text(memo))
            settled = max(st.st_mtime_ns, st.st_ctime_ns) < known["hashed_ns"] - 2_000_000_000
            if known["identity"] == identity and settled:
                return str(known["sha256"])
    started = time.time_ns()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    if remember:
        found = {"identity": identity, "hashed_ns": started, "sha256": sha}
        with contextlib.suppress(OSError):
            _write_atomic(memo, json.dumps(found).encode())
    return sha


# What igcli writes here, by name: only these are counted, evicted and cleared. By suffix
# alone, IGCLI_CACHE_DIR=~/models had a run evict the user's own .onnx files (the oldest
# first, until the folder fit IGCLI_CACHE_MAX) and `cache clear` delete every .json.
OWN_ENTRY = re.compile(
    r"(grad|ort|check|fact|sha256)-[0-9a-f]{8,}(\.[A-Za-z0-9_]+)?\.(onnx|data|json)"
)
OWN_TEMP = re.compile(r"(\.igcli-|tmp)[A-Za-z0-9_]{8}\.tmp")  # _write_atomic's (older: tmp*)


def entries() -> list[Path]:
    """igcli's graphs and their weights in the cache folder (OWN_ENTRY's .onnx and .data)."""
    root = cache_dir()
    if not usable() or not root.is_dir():
        return []
    try:
        return [
            p for p in root.iterdir()
            if p.suffix in (".onnx", ".data") and OWN_ENTRY.fullmatch(p.name) and p.is_file()
        ]  # fmt: skip
    except OSError:
        return []


def enforce_limit(limit: int | None = None) -> int:
    """Delete least recently used entries until the cache fits; return bytes freed."""
    limit = size_limit() if limit is None else limit
    files = []
    for p in entries():
        with contextlib.suppress(OSError):
            st = p.stat()
            files.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in files)
    freed = 0
    for _, size, p in sorted(files):
        if total <= limit:
            break
        with contextlib.suppress(OSError):
            p.unlink()
            total -= size
            freed += size
    return freed


def info() -> dict:
    files = entries()
    sizes = []
    for p in files:
        with contextlib.suppress(OSError):
            sizes.append(p.stat().st_size)
    return {
        "path": str(cache_dir()),
        "entries": len(sizes),
        "bytes": sum(sizes),
        "limit_bytes": size_limit(),
        "gradient_graphs": sum(p.name.startswith("grad-") for p in files),
        "optimized_graphs": sum(p.name.startswith("ort-") and p.suffix == ".onnx" for p in files),
    }


def clear() -> tuple[int, list[str]]:
    """Delete every entry of igcli's (and its stray temporary files; nothing else in the
    folder): (how many went, why the others could not). Whatever holds an entry's name
    goes, a FIFO or a symlink too (a FIFO there hung runs), but never a folder."""
    root = cache_dir()
    if not root.is_dir():
        return 0, []
    gone, kept = 0, []
    for p in root.iterdir():
        if p.is_dir() and not p.is_symlink() and p.name.startswith(".staging-"):
            shutil.rmtree(p, ignore_errors=True)  # left by a run that was killed
        ours = OWN_ENTRY.fullmatch(p.name) or OWN_TEMP.fullmatch(p.name)
        if ours and (p.is_symlink() or not p.is_dir()):
            try:
                p.unlink()
                gone += 1
            except FileNotFoundError:
                pass  # (another run evicted it)
            except OSError as exc:
                kept.append(f"{p.name}: {exc.strerror or exc}")
    return gone, kept
