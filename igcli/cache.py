"""On-disk cache of built gradient models, so a second run does not rebuild them.

Keyed by the model's content hash, igcli's version, and what was explained (input, output,
softmax); stored under $XDG_CACHE_HOME/igcli (default ~/.cache/igcli), or $IGCLI_CACHE_DIR.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from igcli import __version__


def cache_dir() -> Path:
    if os.environ.get("IGCLI_CACHE_DIR"):
        return Path(os.environ["IGCLI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "igcli"


def cache_key(model_sha256: str, *parts: str) -> str:
    text = "\0".join([model_sha256, __version__, *parts])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached_model(
    key: str, build: Callable[[], onnx.ModelProto], use_cache: bool = True
) -> tuple[onnx.ModelProto, bool]:
    """Return (model, was_cached). A broken or unwritable cache is never an error."""
    if not use_cache:
        return build(), False
    path = cache_dir() / f"grad-{key}.onnx"
    if path.is_file():
        try:
            return onnx.load(str(path)), True
        except Exception:
            pass
    model = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(model.SerializeToString())
        os.replace(tmp, path)
    except OSError:
        pass
    return model, False
