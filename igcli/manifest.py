"""Manifests: a run's inputs walked once and named once, so every shard or worker agrees.

`igcli plan MODEL INPUTS...` writes one (JSON Lines) on stdout; `igcli explain MODEL
--manifest FILE` reads it instead of walking the inputs again. Listing millions of objects
is often the slowest part of a run, and a listing that changes between shards breaks the
partition; a manifest does neither.

    {"igcli_manifest": 1, "inputs": 3, "skipped": 1, "model": "m.onnx", "model_sha256": ...}
    {"input": "photos/a/cat.png", "name": "a/cat"}
    {"input": "rows.csv", "name": "rows", "rows": 569}
    {"input": "photos/broken.png", "name": "broken", "problem": "broken symlink ..."}
    {"skipped": "photos/notes.txt", "reason": "not a supported file type"}

Input paths are written as given: relative paths are relative to the folder the run starts
in. A CSV's `rows` (about how many data rows it holds) sizes progress and Dask's chunks
without reading the file again; its rows' names stay `<name>_row<k>`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

from igcli.discovery import (
    Discovery,
    InputItem,
    clean_name,
    collision_groups,
    count_table_rows,
)
from igcli.errors import UsageError
from igcli.files import first_line, parse_json
from igcli.outputs import plain_parts

MANIFEST_VERSION = 1


def manifest_lines(found: Discovery, model: str, model_sha256: str) -> Iterator[str]:
    """The manifest of `found`, line by line."""
    header = {
        "igcli_manifest": MANIFEST_VERSION,
        "inputs": len(found.items),
        "skipped": len(found.skipped),
        "model": model,
        "model_sha256": model_sha256,
    }
    yield json.dumps(header)
    for item in found.items:
        line = {"input": str(item.path), "name": item.name}
        if item.problem:
            line["problem"] = item.problem
        elif item.is_table:
            line["rows"] = item.rows if item.rows is not None else _rows(item)
        yield json.dumps(line)
    for path, reason in found.skipped:
        yield json.dumps({"skipped": path, "reason": reason})


def _rows(item: InputItem) -> int:
    from igcli.storage import URL

    return 1 if isinstance(item.path, URL) else count_table_rows(item.path)


@dataclass
class Manifest:
    found: Discovery
    source: str  # as given
    sha256: str  # of its bytes: shards compare it
    header: dict


def read_manifest(source: str) -> Manifest:
    """A manifest from a path or URL; every problem is one usage error naming the line."""
    from igcli.storage import location, read_bytes

    data = read_bytes(source)
    sha = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError("not a manifest (not UTF-8 text)", source) from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]  # (not U+2028 &c.)
    try:
        header = parse_json(lines[0]) if lines else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("igcli_manifest") != MANIFEST_VERSION:
        raise UsageError(
            'not an igcli manifest (its first line lacks "igcli_manifest": 1); '
            "make one with `igcli plan MODEL INPUTS... > manifest.jsonl`",
            source,
        )
    found = Discovery()
    names: set[str] = set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        entry = _parse(line, number, source)
        if "skipped" in entry:
            found.skipped.append((str(entry["skipped"]), str(entry.get("reason", ""))))
            continue
        path, name = entry.get("input"), entry.get("name")
        if not isinstance(path, str) or not path or not isinstance(name, str) or not name:
            raise UsageError(f'line {number}: needs an "input" and a "name"', source)
        problem = entry.get("problem")
        rows = entry.get("rows")
        if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 0):
            raise UsageError(f'line {number}: "rows" must be a count', source)
        # 'x/../a' or 'a//b' would share a's files (backslashes as separators too)
        if plain_parts(name.replace("\\", "/")) is None:
            raise UsageError(
                f"line {number}: name {name!r} is not a plain relative path "
                "(no '.', '..' or empty parts)",
                source,
            )
        if clean_name(name) != name:  # igcli plan writes names already clean
            raise UsageError(
                f"line {number}: name {name!r} is not one igcli makes (control or bidi "
                "characters, an over-long part, or a report's name as its folder)",
                source,
            )
        key = name.casefold()
        if key in names:
            raise UsageError(f"line {number}: name {name!r} appears twice", source)
        names.add(key)
        item = InputItem(location(path), name, problem if isinstance(problem, str) else None)
        item.rows = rows
        found.items.append(item)
    active = [item for item in found.items if item.problem is None]
    for group in collision_groups(active):  # 'a_row0' beside a CSV 'a' shared its row's files
        names = ", ".join(repr(active[k].name) for k in group)
        raise UsageError(f"names {names} would write the same files", source)
    expected = header.get("inputs")
    if isinstance(expected, int) and expected != len(found.items):
        raise UsageError(
            f"holds {len(found.items)} inputs, its header says {expected} (cut short?)", source
        )
    return Manifest(found, str(source), sha, header)


def _parse(line: str, number: int, source: str) -> dict:
    try:
        entry = parse_json(line)
    except ValueError as exc:
        raise UsageError(f"line {number} is not JSON ({first_line(exc)})", source) from None
    if not isinstance(entry, dict):
        raise UsageError(f"line {number} is not a JSON object", source)
    return entry
