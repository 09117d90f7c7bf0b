"""Finding inputs and naming their outputs: folders, stdin lists, sharding.

Kept apart from the run loop (batch.py) so a library session can discover and name inputs
without running anything.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from igcli.errors import UsageError
from igcli.inputs import SUPPORTED_SUFFIXES


@dataclass
class InputItem:
    path: Path
    name: str  # output stem relative to --out, no suffix
    problem: str | None = None  # set when the file is refused before reading


@dataclass
class Discovery:
    items: list[InputItem] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _walk(root: Path, recursive: bool, pattern: str | None) -> Iterable[Path]:
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for fn in sorted(filenames):
                yield Path(dirpath) / fn
    else:
        yield from sorted(p for p in root.iterdir() if not p.is_dir())


def _matches(path: Path, root: Path, pattern: str | None) -> bool:
    if pattern is None:
        return path.suffix.lower() in SUPPORTED_SUFFIXES
    rel = path.relative_to(root).as_posix()
    return fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(path.name, pattern)


def discover(
    args: list[str], recursive: bool = False, pattern: str | None = None, stdin=None
) -> Discovery:
    """Turn the command line's INPUT... (files, folders, '-') into named items."""
    found = Discovery()
    loose: list[Path] = []
    for arg in args:
        if arg == "-":
            if stdin is None:
                raise UsageError("'-' needs a list of paths on standard input")
            loose += [Path(line.strip()) for line in stdin if line.strip()]
            continue
        path = Path(arg)
        if path.is_dir():
            root = path.resolve()
            for file in _walk(path, recursive, pattern):
                if not _matches(file, path, pattern):
                    if pattern is None:
                        found.skipped.append((str(file), "not a supported file type"))
                    continue
                rel = file.relative_to(path)
                item = InputItem(file, rel.with_suffix("").as_posix())
                if file.is_symlink() and root not in file.resolve().parents:
                    item.problem = "symlink points outside the input folder"
                found.items.append(item)
        else:
            loose.append(path)
    found.items += _name_loose(loose)
    _disambiguate(found.items)
    return found


def _name_loose(paths: list[Path]) -> list[InputItem]:
    """Files named on their own: by stem, or relative to their common folder on a clash."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return [InputItem(p, s) for p, s in zip(paths, stems, strict=True)]
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    return [
        InputItem(p, r.relative_to(common).with_suffix("").as_posix())
        for p, r in zip(paths, resolved, strict=True)
    ]


def _disambiguate(items: list[InputItem]) -> None:
    """img.png and img.jpg side by side keep their suffix in the output name."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item.name] = counts.get(item.name, 0) + 1
    for item in items:
        if counts[item.name] > 1:
            item.name = f"{item.name}{item.path.suffix}"


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    try:
        k, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise UsageError(f"--shard {spec!r}: use K/N, e.g. 2/4") from None
    if not (n >= 1 and 1 <= k <= n):
        raise UsageError(f"--shard {spec!r}: need 1 <= K <= N")
    return k, n


def in_shard(name: str, shard: tuple[int, int] | None) -> bool:
    """A stable hash of the output name decides the shard: same split on every machine."""
    if shard is None:
        return True
    k, n = shard
    digest = int(hashlib.sha256(name.encode()).hexdigest()[:12], 16)
    return digest % n == k - 1
