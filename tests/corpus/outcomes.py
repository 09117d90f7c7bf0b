"""Print what igcli did on each corpus model as a Markdown table.

    IGCLI_CORPUS_OUTCOMES=/tmp/outcomes.jsonl .venv/bin/python -m pytest tests/corpus
    .venv/bin/python tests/corpus/outcomes.py /tmp/outcomes.jsonl

The test appends one JSON line per case to $IGCLI_CORPUS_OUTCOMES (exit code, gradient source,
Pearson and relative L1 against the reference, completeness error, seconds, the error line).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

MANIFEST = Path(__file__).resolve().parent / "corpus.json"


def _num(value, fmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return format(value, fmt)


def table(lines: list[dict]) -> str:
    entries = {e["name"]: e for e in json.loads(MANIFEST.read_text())["models"]}
    seen = {d["name"]: d for d in lines}  # the last run of a case wins
    rows = [
        "| model | expected | exit | source | Pearson | rel. L1 | completeness | s | error |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for name, e in entries.items():
        exp = e.get("expect", {})
        expected = (
            "/".join(exp.get("gradient_source", [])) or f"exit {exp.get('exit_code')}"
            if e["status"] == "ok"
            else e["status"]
        )
        d = seen.get(name)
        if d is None:
            rows.append(f"| {name} | {expected} | | | | | | | |")
            continue
        pearson = _num(d.get("pearson"), ".6f")
        l1 = _num(d.get("rel_l1"), ".2%")
        comp = _num(d.get("rel_error"), ".2%")
        error = re.sub(r"^error: \S+: ", "", d.get("error") or "").replace("|", "/")[:100]
        rows.append(
            f"| {name} | {expected} | {d['exit_code']} | {d.get('gradient_source', '')} | "
            f"{pearson} | {l1} | {comp} | {d['seconds']:.1f} | {error} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    path = Path(sys.argv[1])
    print(table([json.loads(line) for line in path.read_text().splitlines() if line.strip()]))
