"""Run reports: OUT/report.json (everything), report.md (for a pull request), report.csv.

Also the JSON Lines records printed with --json. Both carry `schema_version`; bump it when a
field changes meaning or disappears (adding fields keeps the version).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import platform
import posixpath
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import onnxruntime

from igcli import __version__
from igcli.errors import ExitCode, IgcliError, OutputError, ShardError, UsageError
from igcli.files import first_line, is_folder, open_regular, parse_json, printable
from igcli.html_report import render_html
from igcli.ig import UNRESOLVED
from igcli.outputs import atomic_write_chunks, atomic_write_text
from igcli.storage import relative_link

SCHEMA_VERSION = 1
MARKDOWN_ROWS = 1000  # report.md is for pull requests: the full table is in report.csv

CSV_FIELDS = [
    "input",
    "name",
    "status",
    "target",
    "label",
    "f_input",
    "f_baseline",
    "attribution_sum",
    "delta",
    "abs_error",
    "rel_error",
    "feature_error",
    "steps",
    "method",
    "baseline",
    "gradient_source",
    "fd_step",
    "wall_time_s",
    "attributions_file",
    "heatmap_file",
    "error",
]


def _finite(value):
    """JSON has no inf/NaN: write them as strings so every parser reads the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def json_record(entry: dict) -> dict:
    """An entry as written; keys starting with "_" stay in memory (a merged record's folder)."""
    fields = {k: _finite(v) for k, v in entry.items() if not k.startswith("_")}
    return {"schema_version": SCHEMA_VERSION, **fields}


def json_line(entry: dict) -> str:
    return json.dumps(json_record(entry), sort_keys=False)


# Records a spool also keeps decoded in memory (a few MB): the reports read the records in
# some twenty passes, which for 1,000 inputs decoded 20,000 lines (0.5 s of a 7 s run).
KEPT_RECORDS = 4096


def _spool_failed(exc: OSError):
    """A full $TMPDIR (or ulimit -f) under the spool: an internal error (exit 1) was all it
    said, and no report was written."""
    raise OutputError(
        f"cannot keep the run's records in a temporary file ({exc.strerror or exc}); set "
        "TMPDIR to a folder with room",
        tempfile.gettempdir(),
    ) from None


class RecordSpool:
    """A run's records in a temporary file instead of memory, read back in order: a
    100,000-row CSV must not keep 100,000 dicts alive. Behaves like a list for what reports
    need (append, extend, len, iteration, slices). The file has no name (unlinked at once on
    POSIX), so a killed process or a Dask worker shut down without finalizers leaves none.
    The first KEPT_RECORDS are also kept as the file has them (decoded once), and read from
    memory while there are no more."""

    def __init__(self, records: Iterable[dict] = ()) -> None:
        self._file = tempfile.TemporaryFile("w+b", prefix="igcli-records-")  # noqa: SIM115
        self._n = 0
        self._at_end = True  # where the next record goes; a read moves the file's position
        self._kept: list[dict] | None = []
        self.extend(records)

    def append(self, record: dict) -> None:
        # ASCII escapes: a file name's undecodable bytes (lone surrogates) round-trip
        if not self._at_end:  # a seek flushes the write buffer: only after a read
            self._file.seek(0, os.SEEK_END)
            self._at_end = True
        line = json.dumps(record)
        try:
            self._file.write(line.encode("ascii") + b"\n")
        except OSError as exc:
            _spool_failed(exc)
        self._n += 1
        if self._n > KEPT_RECORDS:
            self._kept = None  # from here on, only the file
        elif self._kept is not None:
            self._kept.append(json.loads(line))  # (what a read of the file would give)

    def extend(self, records: Iterable[dict]) -> None:
        for r in records:
            self.append(r)

    def _lines(self) -> Iterator[bytes]:
        """The first len(self) lines, read in blocks from explicit offsets: appends between
        two reads (which move the shared position to the end) do not disturb it."""
        remaining, offset, tail = self._n, 0, b""
        while remaining:
            try:
                self._file.seek(offset)  # (flushes what was written: a full disk says so here)
            except OSError as exc:
                _spool_failed(exc)
            self._at_end = False
            block = self._file.read(1 << 20)
            if not block:
                return
            offset += len(block)
            lines = (tail + block).split(b"\n")
            tail = lines.pop()
            for line in lines[:remaining]:
                remaining -= 1
                yield line

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def __iter__(self) -> Iterator[dict]:
        if self._kept is not None:  # copies: a reader's changes stay its own, as from the file
            return (dict(r) for r in self._kept[: self._n])  # (those present now, as below)
        return (json.loads(line) for line in self._lines())

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self._n)
            return list(itertools.islice(iter(self), start, stop, step))
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError(index)
        return next(itertools.islice(iter(self), index, None))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


class _AsWritten:
    """Records as report.json has them (json_record), made as they are read: for the page,
    which reads them more than once, without a second copy of them all in memory."""

    def __init__(self, records) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __bool__(self) -> bool:
        return len(self.records) > 0

    def __iter__(self) -> Iterator[dict]:
        return (json_record(r) for r in self.records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [json_record(r) for r in self.records[index]]
        return json_record(self.records[index])


REPORT_KINDS = ("json", "csv", "md", "html")  # a run's reports, in the order they are written

# How each report file begins, whatever the version: what tells igcli's own from another's.
_REPORT_SIGNS = {
    "json": lambda head: b'"igcli_version"' in head,
    "csv": lambda head: head.startswith(b"input,name,"),
    "md": lambda head: head.startswith(b"# igcli"),
    "html": lambda head: b"<title>igcli" in head,
}


def is_igcli_report(path: Path) -> bool:
    """Whether `path` is a report igcli wrote (of any version), by how its kind begins;
    False when it cannot be read (check_reports_replaceable lets such a file be), or is no
    regular file (a FIFO named report.json in a walked folder blocked the walk)."""
    ours = _REPORT_SIGNS.get(path.suffix.lstrip("."))
    try:
        with open_regular(path, OutputError) as fh:
            return ours is not None and ours(fh.read(4096))
    except (OSError, OutputError):
        return False


def check_reports_replaceable(out_dir: Path, stem: str = "report") -> None:
    """An OutputError, before any work, where OUT holds a file named like one of the run's
    reports that igcli did not write (a folder's own report.csv): writing the reports would
    replace it. igcli's own reports (an earlier run's) and empty files are replaced."""
    for kind, ours in _REPORT_SIGNS.items():
        path = Path(out_dir) / f"{stem}.{kind}"
        try:
            info = os.lstat(path)
        except OSError:
            continue  # absent (or unreadable: writing says so)
        if stat.S_ISREG(info.st_mode):
            if info.st_size == 0:
                continue
            try:
                with open(path, "rb") as fh:
                    if ours(fh.read(4096)):
                        continue
            except OSError:
                continue
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "not an igcli report"
        raise OutputError(
            f"{what}, and the run's report would replace it; move it, or choose another --out",
            path,
        )


@dataclass
class RunReport:
    model: str
    model_sha256: str
    settings: dict
    results: RecordSpool = field(default_factory=RecordSpool)
    # (a spool too: 300,000 failed CSV rows held 0.85 kB each in memory)
    failures: RecordSpool | list[dict] = field(default_factory=RecordSpool)
    gate: dict | None = None
    skipped: list[dict] = field(default_factory=list)  # files not explained on purpose
    resumed: int = 0  # results taken from an earlier run (--skip-existing)
    # stopped before every input was done (Ctrl-C, SIGTERM): a shard's report that looked
    # finished was merged as if it were, its missing inputs in neither results nor failures
    interrupted: bool = False
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def to_json(self) -> dict:
        return {
            **self._header(),
            "results": [json_record(r) for r in self.results],
            "failures": [json_record(f) for f in self.failures],
            "skipped": self.skipped,
        }

    def _header(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "igcli_version": __version__,
            "onnxruntime_version": onnxruntime.__version__,
            "python_version": platform.python_version(),
            "model": self.model,
            "model_sha256": self.model_sha256,
            "started": self.started,
            "settings": self.settings,
            "summary": self.summary(),
            "gate": self.gate,
        }

    def summary(self) -> dict:
        # float(): a merged report holds "inf"/"nan" as read from report.json
        count, worst, total, finite = 0, None, 0.0, 0
        family = _FamilySummary()
        for r in self.results:
            count += 1
            family.add(r)
            if r.get("rel_error") is None:
                continue
            e = float(r["rel_error"])
            worst = e if worst is None or not e <= worst else worst
            if math.isfinite(e):
                total += e
                finite += 1
        summary = {
            "explained": count,
            "failed": len(self.failures),
            "resumed": self.resumed,
            "skipped": len(self.skipped),
            "interrupted": self.interrupted,
            "max_rel_error": _finite(worst) if worst is not None else None,
            "mean_rel_error": total / finite if finite else None,
        }
        summary.update(family.result())
        return summary

    def apply_gate(self, limit: float) -> list[str]:
        """Record the completeness gate; return the results over `limit` (or not a number)."""
        failing = [r["name"] for r in self.results if _over(_gated_error(r), limit)]
        self.gate = {"max": limit, "passed": not failing, "failing": failing}
        return failing

    def unresolved(self, limit: float = UNRESOLVED, steps_help: bool = True) -> str | None:
        """Without a gate, a warning when results miss completeness by more than `limit`
        (noisy paths aside, whose sums hold only on average): how many, and the worst. Each
        input's own warning comes once per run; this says how far it went. `steps_help`
        False: the model was found piecewise constant or quantized, where more steps do
        not help (the run had said so, then told to raise --steps)."""
        if self.gate:
            return None
        errors = ((_gated_error(r), r) for r in self.results
                  if not r.get("noise") and _nonzero(r.get("delta")))  # fmt: skip
        over = [(_value(e), r) for e, r in errors if _over(e, limit)]
        if not over:
            return None
        worst, record = max(over, key=lambda e: math.inf if math.isnan(e[0]) else e[0])
        name = record["name"]
        adaptive = any(r.get("steps") == "auto" for r in self.results)
        more = "raise --max-steps" if adaptive else "raise --steps or use --steps auto"
        # adaptive steps that stopped where no refinement helps said so, input by input
        if not steps_help or all(r.get("stop_reason") == "floor" for _, r in over):
            more = "more steps will not help (see above)"
        return (
            f"{len(over)} of {len(self.results)} result(s) miss F(x) - F(b) by more than "
            f"{100 * limit:g}% (worst {100 * worst:.3g}%, {name}): their attributions do not add "
            f"up; {more}, and --max-completeness-error E makes this fail the run (exit 5)"
        )

    def verdict(self, report_file: str, listed: int = 10) -> tuple[ExitCode, list[str]]:
        """The exit code of a finished report and its error lines: the first `listed`
        failures (explain said each as it failed: 0 there), then the count, or the gate's
        failing names. explain and merge-reports both end with them."""
        if self.failures:
            lines = [str(f.get("error")) for f in self.failures[:listed]]
            if listed and len(self.failures) > listed:
                lines.append(f"... and {len(self.failures) - listed} more failure(s)")
            lines.append(f"{len(self.failures)} input(s) failed; see {report_file}")
            return ExitCode.INPUTS_FAILED, lines
        if self.gate and not self.gate["passed"]:
            failing = self.gate["failing"]
            more = " ..." if len(failing) > 10 else ""
            limit = self.gate["max"]
            return ExitCode.COMPLETENESS, [
                f"completeness error over {limit} for: {', '.join(failing[:10])}{more}"
            ]
        return ExitCode.OK, []

    def write(self, out_dir, stem: str = "report", staging: Path | None = None) -> list[str]:
        """`<stem>`.json, .csv, .md and .html, each written whole (a shard's stem is
        `report.shard-K-of-N`); report.json streams its results from the spool, so its size
        does not come on top of the run's memory. `out_dir` may be a URL: the files are
        written in `staging` (or a temporary folder) and uploaded whole. Returns the names.

        A merged result's `_root` (its shard's folder) stays in memory: its file links are
        rewritten relative to `out_dir`, and report.html is given the roots."""
        from igcli.storage import is_url, upload

        remote = is_url(str(out_dir))
        own_tmp = remote and staging is None
        local = Path(tempfile.mkdtemp(prefix="igcli-report-")) if own_tmp else (
            Path(staging) if remote else Path(out_dir)
        )  # fmt: skip
        names = [f"{stem}.{kind}" for kind in REPORT_KINDS]
        try:
            data = {
                **self._header(),
                "results": self.results,  # re-iterable: the page reads it in several passes
                "failures": _AsWritten(self.failures),
                "skipped": self.skipped,
            }
            roots = [r.get("_root") for r in self.results]  # a merged result's shard folder
            page = local if remote and not any(roots) else out_dir
            # the page and report.md first: if either cannot be made, no report is written
            # (report.json, .csv and .md were there without report.html)
            html_text, markdown = render_html(data, page, roots), self.to_markdown()
            atomic_write_chunks(local / names[0], self._json_chunks(str(out_dir)))
            atomic_write_chunks(local / names[1], self._csv_chunks(str(out_dir)))
            atomic_write_text(local / names[2], markdown)
            atomic_write_text(local / names[3], html_text)
            if remote:
                for name in names:
                    upload(local / name, f"{str(out_dir).rstrip('/')}/{name}")
        finally:
            if own_tmp:
                shutil.rmtree(local, ignore_errors=True)
        return names

    def _json_chunks(self, out_dir: str | None = None) -> Iterator[str]:
        head = json.dumps(self._header(), indent=2)
        yield head[:-2] + ",\n"  # without the closing brace: the lists follow
        for key, records in (("results", self.results), ("failures", self.failures)):
            yield f'  "{key}": ['
            for k, r in enumerate(records):
                record = json_record(relinked(r, out_dir))
                yield ("," if k else "") + "\n    " + json.dumps(record)
            yield "\n  ],\n"
        yield f'  "skipped": {json.dumps(self.skipped)}\n}}\n'

    def to_csv(self, out_dir: str | None = None) -> str:
        return "".join(self._csv_chunks(out_dir))

    def _csv_chunks(self, out_dir: str | None = None) -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in itertools.chain(self.results, self.failures):
            row = relinked(row, out_dir)
            writer.writerow({k: _cell(row.get(k)) for k in CSV_FIELDS})
            if buf.tell() > 1 << 16:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    def to_markdown(self) -> str:
        s = self.summary()
        method = self.settings.get("method")
        if method is None:  # the default rule: name the one the results used
            used = {r.get("method") for r in self.results[:MARKDOWN_ROWS]}
            method = used.pop() if len(used) == 1 else "default"
        lines = [
            f"# igcli report: {_md(Path(self.model).name)}",
            "",
            f"{s['explained']} explained, {s['failed']} failed; "
            f"steps {self.settings.get('steps')}, method {method}, "
            f"igcli {__version__}, model sha256 `{self.model_sha256[:12]}`",
            "",
        ]
        how = method_line(self.results)
        if how:
            lines += [f"Method: {how}.", ""]
        if self.gate:
            verdict = "passed" if self.gate["passed"] else "FAILED"
            lines += [
                f"Completeness gate (max relative error {self.gate['max']}): **{verdict}**",
                "",
            ]
        if self.results:
            header = ["input", "target", "F(input)", "F(baseline)", "sum of attributions"]
            header += ["rel. error", "source"]
            align = ["---", "---", "---:", "---:", "---:", "---:", "---"]
            per_feature = has_feature_error(self.results)
            if per_feature:  # adaptive steps: each feature's error, estimated
                header.insert(6, "feature err.")
                align.insert(6, "---:")
            lines += ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
            for r in self.results[:MARKDOWN_ROWS]:
                target = f"{r['target']}" + (f" ({r['label']})" if r.get("label") else "")
                cells = [
                    _md(r["name"]),
                    _md(target),
                    f"{r['f_input']:.6g}",
                    f"{r['f_baseline']:.6g}",
                ]
                cells += [f"{r['attribution_sum']:.6g}", percent(r["rel_error"])]
                if per_feature:
                    cells.append(estimated_percent(r.get("feature_error")))
                cells.append(r["gradient_source"])
                lines.append("| " + " | ".join(cells) + " |")
            if len(self.results) > MARKDOWN_ROWS:
                more = len(self.results) - MARKDOWN_ROWS
                lines.append(f"\n... and {more} more results in report.csv and report.json")
            lines.append("")
        if self.failures:
            lines += ["## Failed inputs", ""]
            listed = self.failures[:MARKDOWN_ROWS]
            lines += [f"- {_md(f['input'])}: {_md(_reason(f))}" for f in listed]
            if len(self.failures) > MARKDOWN_ROWS:
                more = len(self.failures) - MARKDOWN_ROWS
                lines.append(f"\n... and {more} more failures in report.csv and report.json")
            lines.append("")
        return "\n".join(lines)


class _FamilySummary:
    """Path methods other than plain IG (methods.py), over a run's records: which paths,
    how many results average noisy copies or baselines, and for expected gradients the
    largest Monte Carlo standard error of a completeness sum. Nothing for plain IG, so plain
    runs' summaries are as before."""

    def __init__(self) -> None:
        self.paths: dict[str, int] = {}
        self.averaged = 0
        self.se: float | None = None

    def add(self, r: dict) -> None:
        path = r.get("path") or "straight"
        self.paths[path] = self.paths.get(path, 0) + 1
        self.averaged += bool(r.get("noise") or r.get("baselines"))
        if r.get("completeness_se") is not None:
            se = float(r["completeness_se"])
            self.se = se if self.se is None or not se <= self.se else self.se

    def result(self) -> dict:
        out: dict = {}
        if set(self.paths) - {"straight"} or self.averaged:
            out["paths"] = self.paths
            out["averaged"] = self.averaged  # results over noisy copies or several baselines
        if self.se is not None:
            out["max_completeness_se"] = _finite(self.se)
        return out


def method_line(results) -> str | None:
    """'blur path', 'straight path, smoothgrad over 10 noisy copies', ... when every result
    was made the same way and not by plain IG; else None."""
    first = None
    for r in results:
        text = _method_text(r)
        if first is None:
            first = text
        elif text != first:
            return None
    return first or None


def _method_text(r: dict) -> str:
    parts = []
    path = r.get("path") or "straight"
    if path != "straight":
        parts.append(f"{path} path")
    b = r.get("baselines")
    if isinstance(b, dict):
        what = "expected gradients" if b.get("use") == "expected_gradients" else "mean IG"
        parts.append(f"{what} over {b.get('count')} baselines ({b.get('source')})")
    n = r.get("noise")
    if isinstance(n, dict):
        parts.append(f"{n.get('type')} over {n.get('samples')} noisy copies (std {n.get('std')})")
    if isinstance(r.get("regions"), dict):
        parts.append("XRAI regions")
    return ", ".join(parts)


FILE_FIELDS = ("attributions_file", "heatmap_file")


def relinked(record: dict, out_dir: str | None) -> dict:
    """A merged record with its file links relative to `out_dir` instead of its shard's
    folder (`_root`); other records as they are."""
    root = record.get("_root")
    if root is None or out_dir is None:
        return record
    out = dict(record)
    for key in FILE_FIELDS:
        if out.get(key):
            out[key] = relative_link(str(root), str(out[key]), str(out_dir))
    return out


def percent(value) -> str:
    """A relative error as a percentage with 3 significant digits ("0.0123%", "1.2e-05%")."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{value * 100:.3g}%" if math.isfinite(value) else str(value)


def has_feature_error(results) -> bool:
    """Whether any result estimates each feature's error (adaptive steps do): tables then
    show the column."""
    return any(r.get("feature_error") is not None for r in results)


def estimated_percent(value) -> str:
    """An estimated error ("~3.12%"), or "-" where a result has none (fixed steps)."""
    return "-" if value is None else f"~{percent(value)}"


def load_report(path) -> dict:
    """A report.json (a path or URL), checked record by record: a malformed one is a one-line
    UsageError naming the file and the record, never a crash while merging."""
    from igcli.storage import read_bytes

    raw = read_bytes(path, failing="not a readable report")  # (a regular file, at most 1 GiB)
    try:
        data = parse_json(raw.decode("utf-8-sig"), strict=True)  # (a bare NaN merged as one)
    except ValueError as exc:
        raise UsageError(f"not a readable report ({first_line(exc)})", path) from None
    if not isinstance(data, dict) or "results" not in data:
        raise UsageError("not an igcli report.json", path)
    _check_report(data, path)
    return data


_STEPS = "steps"  # a field's kind: a number of steps, or "auto" (adaptive steps)
_RESULT_FIELDS = {  # field -> (accepted types, required)
    "input": (str, True),
    "name": (str, True),
    "target": (int, True),
    "f_input": (float, True),
    "f_baseline": (float, True),
    "attribution_sum": (float, True),
    "rel_error": (float, True),
    "gradient_source": (str, True),
    "delta": (float, False),
    "abs_error": (float, False),
    "steps": (_STEPS, False),
    "steps_used": (int, False),
    "method": (str, False),
    "label": (str, False),
    "output": (str, False),
    "baseline": (str, False),
    "wall_time_s": (float, False),
    "attributions_file": (str, False),
    "heatmap_file": (str, False),
    "path": (str, False),
    "settings_hash": (str, False),
    "feature_error": (float, False),
}
# errors: "inf" is one (delta 0, a sum that is not)
_NON_NEGATIVE = ("rel_error", "abs_error", "feature_error")
_FAILURE_FIELDS = {"input": (str, True), "error": (str, True), "name": (str, False)}
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _field_ok(value, kind: type | str) -> bool:
    if isinstance(value, bool):
        return False
    if kind == _STEPS:
        return isinstance(value, int) or value == "auto"
    if kind is float:
        return isinstance(value, (int, float)) or (isinstance(value, str) and value in _NON_FINITE)
    return isinstance(value, kind)


_KINDS = {int: "a number", float: "a number", _STEPS: 'a number or "auto"'}


def _check_records(records, fields: dict, where: str, path: Path) -> None:
    if not isinstance(records, list):
        raise UsageError(f"{where!r} must be a list of records", path)
    for k, record in enumerate(records):
        if not isinstance(record, dict):
            raise UsageError(f"{where}[{k}] is not a record (a JSON object)", path)
        for key, (kind, required) in fields.items():
            if key not in record or record[key] is None:
                if required:
                    raise UsageError(f"{where}[{k}] lacks {key!r}", path)
                continue
            if not _field_ok(record[key], kind):
                raise UsageError(
                    f"{where}[{k}].{key} is {json.dumps(record[key])[:40]}, "
                    f"not {_KINDS.get(kind, 'a string')}",
                    path,
                )
        for key, (kind, _) in fields.items():  # "inf"/"nan" strings back to numbers
            if kind is float and isinstance(record.get(key), str):
                record[key] = _NON_FINITE[record[key]]
        for key in _NON_NEGATIVE:  # no run writes NaN or a negative error: hand-made
            if key in fields and record.get(key) is not None and not record[key] >= 0:
                value = _finite(record[key])
                raise UsageError(
                    f"{where}[{k}].{key} is {value}, not an error (a number, 0 or more)", path
                )
        for key in ("steps", "steps_used"):  # (-1 showed in the merged tables as it was)
            if key in fields and isinstance(record.get(key), int) and record[key] < 1:
                raise UsageError(f"{where}[{k}].{key} is {record[key]}, not a count of steps", path)
        delta = record.get("delta") if "delta" in fields else None
        if record.get("rel_error") == math.inf and delta and math.isfinite(delta):
            # (a run writes inf only over a delta of 0: hand-made, it showed as the merged
            # maximum while the count of large errors left it out)
            raise UsageError(
                f"{where}[{k}].rel_error is inf, but its delta is {_finite(delta)}: an error "
                "is infinite only where F(input) = F(baseline)",
                path,
            )
        _check_schema(record.get("schema_version", SCHEMA_VERSION), f"{where}[{k}]", path)


def _check_schema(version, where: str, path) -> None:
    if isinstance(version, bool) or version != SCHEMA_VERSION or not isinstance(version, int):
        raise UsageError(
            f"{where} has schema_version {json.dumps(version)[:40]}; this igcli reads "
            f"{SCHEMA_VERSION} (a report of another igcli version?)",
            path,
        )


def _check_report(data: dict, path: Path) -> None:
    """Every field merging and writing the merged reports read, checked before any is
    written: a 'skipped' that was an object crashed report.html after report.json, .csv and
    .md were written."""
    _check_schema(data.get("schema_version", SCHEMA_VERSION), "the report", path)
    _check_records(data["results"], _RESULT_FIELDS, "results", path)
    _check_records(data.get("failures", []), _FAILURE_FIELDS, "failures", path)
    for k, record in enumerate(data["results"]):  # (merged, it would count as explained)
        if record.get("status", "ok") != "ok":
            status = json.dumps(record["status"])[:40]
            where = f"results[{k}] has status {status}"
            raise UsageError(f"{where}; a failure goes in 'failures'", path)
    if not isinstance(data.get("model_sha256", ""), str) or not isinstance(
        data.get("model", ""), str
    ):
        raise UsageError("'model' and 'model_sha256' must be strings", path)
    if not isinstance(data.get("settings", {}), dict):
        raise UsageError("'settings' must be an object", path)
    gate = data.get("gate")
    if gate is not None and not (isinstance(gate, dict) and _field_ok(gate.get("max"), float)):
        raise UsageError("'gate' must be an object with a numeric 'max'", path)
    shard = (data.get("settings") or {}).get("shard")
    if shard is not None and _shard_parts(shard) is None:  # ("a/b" merged as a whole run)
        raise UsageError(f"'settings.shard' is {json.dumps(shard)[:40]}, not K/N", path)
    targets = (data.get("settings") or {}).get("targets")
    if targets is not None and not isinstance(targets, list):
        raise UsageError("'settings.targets' must be a list or null", path)
    for key in ("wall_time_s", "prepare_time_s", "model_time_s"):  # (summed when merged:
        value = (data.get("settings") or {}).get(key)  # "abc" became null, "nan" nan)
        if value is not None and not (
            isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0
        ):  # fmt: skip
            raise UsageError(f"'settings.{key}' is {json.dumps(value)[:40]}, not a time", path)
    skipped = data.get("skipped") or []
    if not isinstance(skipped, list):
        raise UsageError("'skipped' must be a list of {input, reason} entries", path)
    for k, entry in enumerate(skipped):
        if not (isinstance(entry, dict) and isinstance(entry.get("input"), str)
                and isinstance(entry.get("reason"), str)):  # fmt: skip
            raise UsageError(f"skipped[{k}] is not an entry with 'input' and 'reason'", path)
    summary = data.get("summary")
    if "summary" in data and not isinstance(summary, dict):  # (null merged as no summary)
        raise UsageError("'summary' must be an object", path)
    resumed = (summary or {}).get("resumed")
    if resumed is not None and not (
        isinstance(resumed, int) and not isinstance(resumed, bool) and resumed >= 0
    ):
        raise UsageError("'summary.resumed' must be a count (an integer, 0 or more)", path)
    if not isinstance((summary or {}).get("interrupted", False), bool):  # ("yes" read as no)
        raise UsageError("'summary.interrupted' must be true or false", path)
    if not isinstance(data.get("started", ""), str):
        raise UsageError("'started' must be a string (a time)", path)


def _shard_count(report: dict) -> int:
    """N of the report's shard K/N, 0 for a run without --shard."""
    parts = _shard_parts((report.get("settings") or {}).get("shard"))
    return parts[1] if parts else 0


def _shard_parts(text) -> tuple[int, int] | None:
    """(K, N) of a report's "K/N" shard setting, 1 <= K <= N; None for anything else."""
    k, slash, n = str(text).partition("/")
    if not (slash and k.isdecimal() and k.isascii() and n.isdecimal() and n.isascii()):
        return None
    return (int(k), int(n)) if 1 <= int(k) <= int(n) else None


SHARD_REPORT = re.compile(r"^report\.shard-(\d+)-of-(\d+)\.json$")
_PER_MACHINE = (
    "batch_size",
    "batch_size_cap",
    "memory_budget",
    "memory_per_row",
    "provider",
    "threads",
)
_ROW_NAME = re.compile(r"^(.*)_row(\d+)$", re.DOTALL)


def input_order(order: dict[str, int] | None):
    """Sort key of records by input: the manifest's order when given (CSV rows by their
    file's place, then row number), else by name (rows numerically)."""

    def key(record: dict):
        name = str(record.get("name", ""))
        m = _ROW_NAME.match(name)
        base, row = (m.group(1), int(m.group(2))) if m else (name, -1)
        if order is not None:
            if name in order:
                return (0, order[name], -1, "")
            if base in order:
                return (0, order[base], row, "")
            return (1, base, row)
        return (base, row)  # by the file's name, then its rows (rows came first: a_row0,
        # b_row0, a_row1, ... where an unsharded run lists a_row0, a_row1, ..., b_row0)

    return key


def merge_reports(
    paths: list,
    expect: int | None = None,
    order: dict[str, int] | None = None,
    warn: Callable[[str], None] | None = None,
) -> RunReport:
    """Join the reports of the shards of one run (same model) into the report of the run.

    Records are ordered by input (`order`: a manifest's names and places; else by name).
    With `expect`, the reports must be shards 1..N of N, each once, of one plan and one set
    of settings, or a ShardError (exit 8) says what is missing. Without it, shards of one N
    that are not all there (or planned different inputs) are merged with a `warn`ing."""
    if not paths:
        raise UsageError("merge-reports needs at least one report.json")
    reports = [load_report(p) for p in paths]
    check_same_run(paths, reports)
    stopped = [p for p, rep in zip(paths, reports, strict=True) if _interrupted(rep)]
    if expect is not None:
        check_shards(paths, reports, expect)
        if stopped:
            raise ShardError(
                "its run was interrupted, so some of its inputs are in no report; run that "
                "shard again with --skip-existing",
                stopped[0],
            )
    elif warn is not None:
        if stopped:
            warn(f"{stopped[0]}: its run was interrupted, so some of its inputs are in no report")
        counts = {_shard_count(rep) for rep in reports}  # (0: a run without --shard)
        if len(counts) > 1:  # shards 1/2 and 3/3 merged silently, lacking half the inputs
            kinds = ", ".join(
                f"shards of {c}" if c else "a run without --shard" for c in sorted(counts)
            )
            warn(
                f"the reports are of different splits ({kinds}), so some inputs may be "
                "missing or repeated; merged anyway (--expect N makes that an error)"
            )
        n = counts.pop() if len(counts) == 1 else 0
        if n:
            try:
                check_shards(paths, reports, n)
            except ShardError as exc:
                warn(f"{exc.reason}; merged anyway (--expect {n} makes that an error)")
    first = reports[0]
    settings = dict(first.get("settings", {}))
    shard_settings = [rep.get("settings", {}) for rep in reports]
    # One shard's elapsed time is not the merged run's: keep each shard's, as it was.
    settings["merged_from"] = [
        {
            "report": str(path),
            "shard": s.get("shard"),
            "shard_source": s.get("shard_source"),
            "explained": len(rep["results"]),
            "failed": len(rep.get("failures", [])),
            "wall_time_s": s.get("wall_time_s"),
            "prepare_time_s": s.get("prepare_time_s"),
            "model_time_s": s.get("model_time_s"),
            **{key: s.get(key) for key in _PER_MACHINE},
        }
        for path, rep, s in zip(paths, reports, shard_settings, strict=True)
    ]
    for key in ("shard", "shard_source", "wall_time_s", "prepare_time_s"):
        settings[key] = None
    times = [s.get("model_time_s") for s in shard_settings]
    ok = all(isinstance(t, (int, float)) for t in times)
    settings["model_time_s"] = round(sum(times), 3) if ok else None  # the run's compute
    for key in _PER_MACHINE:  # the run's when every shard agrees, else see merged_from
        values = {json.dumps(s.get(key)) for s in shard_settings}
        settings[key] = shard_settings[0].get(key) if len(values) == 1 else None
    settings["shards"] = len(reports)
    merged = RunReport(first.get("model", ""), first.get("model_sha256", ""), settings)
    merged.interrupted = bool(stopped)
    seen = set()
    results = []
    failures = []
    failed = set()
    repeated: list[tuple[str, object]] = []  # (an input's name, the report it came again in)
    for path, rep in zip(paths, reports, strict=True):
        for r in rep["results"]:
            key = (r["input"], r["name"], r["target"])
            if key in seen:
                repeated.append((r["name"], path))
            else:
                seen.add(key)
                record = {k: v for k, v in r.items() if k != "schema_version"}
                # heatmap_file and attributions_file are relative to the shard's folder
                record["_root"] = str(_parent(path))
                results.append(record)
        for f in rep.get("failures", []):
            key = (f["input"], f.get("name"), f["error"])
            if key not in failed:
                failed.add(key)
                failures.append({k: v for k, v in f.items() if k != "schema_version"})
        merged.resumed += int((rep.get("summary") or {}).get("resumed") or 0)
        for entry in rep.get("skipped") or []:
            if entry not in merged.skipped:  # every shard saw the same listing
                merged.skipped.append(entry)
    if repeated and warn is not None:  # a shard run twice, or the same report named twice
        name, path = repeated[0]
        more = f" and {len(repeated) - 1} more" if len(repeated) > 1 else ""
        warn(f"{path}: {name}{more} already came in an earlier report; each is kept once, "
             "from the first report that has it")  # fmt: skip
    sort_key = input_order(order)
    merged.results.extend(sorted(results, key=sort_key))
    merged.failures = sorted(failures, key=sort_key)
    merged.started = min((str(r.get("started") or "") for r in reports), default=merged.started)
    limits = [float(r["gate"]["max"]) if r.get("gate") else None for r in reports]
    gated = [x for x in limits if x is not None]
    if gated:  # the strictest: a result failing any shard's gate fails the merged run's
        merged.apply_gate(min(gated))
        if len(set(limits)) > 1 and warn is not None:
            shown = ", ".join("none" if x is None else f"{x:g}" for x in dict.fromkeys(limits))
            warn(f"the reports were gated differently (--max-completeness-error {shown}); "
                 f"the merged report is gated at the strictest, {min(gated):g}")  # fmt: skip
    return merged


def _interrupted(report: dict) -> bool:
    return (report.get("summary") or {}).get("interrupted") is True


def _parent(path):
    from igcli.storage import URL

    return path.parent if isinstance(path, (Path, URL)) else Path(path).parent


def check_shards(paths: list, reports: list[dict], expect: int) -> None:
    """Shards 1..expect, each exactly once, planned alike and run with the same settings."""
    where: dict[int, list[str]] = {}
    for path, rep in zip(paths, reports, strict=True):
        parts = _shard_parts((rep.get("settings") or {}).get("shard"))
        if parts is None:  # (load_report refused any shard setting but null and K/N)
            raise ShardError(
                f"not a shard's report (it ran without --shard); expected 1 of {expect}", path
            )
        k, n = parts
        if n != expect:
            raise ShardError(f"is shard {k}/{n}, not a shard of {expect}", path)
        where.setdefault(k, []).append(str(path))
    doubled = {k: v for k, v in where.items() if len(v) > 1}
    if doubled:
        k, v = min(doubled.items())
        raise ShardError(f"shard {k}/{expect} given {len(v)} times: {', '.join(v)}")
    if len(where) < expect:
        # the first few, found past the shards present: listing 1..N for a report of shard
        # 1/10**9 filled the memory until the kernel killed the merge
        missing: list[int] = []
        k = 1
        while k <= expect and len(missing) < 10:
            if k not in where:
                missing.append(k)
            k += 1
        names = ", ".join(f"{k}/{expect}" for k in missing)
        more = ", ..." if expect - len(where) > len(missing) else ""
        raise ShardError(
            f"{expect - len(where)} of {expect} shard reports missing: {names}{more} "
            f"(found {len(where)}; did a shard fail or write elsewhere?)"
        )
    plans = {json.dumps((rep.get("settings") or {}).get("plan"), sort_keys=True) for rep in reports}
    if len(plans) > 1:
        raise ShardError(
            "the shards planned different inputs (the input listing changed between them?); "
            "plan once with `igcli plan` and run every shard with --manifest"
        )


# What may differ between the reports of one run: where and when each part ran, and what
# it took its share of (`plan`: --expect holds shards to one plan; without it, runs over
# different inputs may be joined).
_NOT_SETTINGS = {
    "shard",
    "shard_source",
    "wall_time_s",
    "prepare_time_s",
    "model_time_s",
    "plan",
    "dask",
    "merged_from",
    "shards",
    *_PER_MACHINE,
}


def check_same_run(paths: list, reports: list[dict]) -> None:
    """One model and one set of settings across the reports, with or without --expect:
    records made differently must not be joined (nor one run's dropped as duplicates of
    another's). A ShardError names two of the files and what differs."""
    first_path, first = paths[0], reports[0]
    for path, rep in zip(paths[1:], reports[1:], strict=True):
        if rep.get("model_sha256") != first.get("model_sha256"):
            raise ShardError(
                f"{first_path} and {path} are reports of different models (model_sha256 differs)"
            )
    settings = [rep.get("settings") or {} for rep in reports]
    for path, s in zip(paths[1:], settings[1:], strict=True):
        for key in sorted((set(settings[0]) | set(s)) - _NOT_SETTINGS):
            a, b = settings[0].get(key), s.get(key)
            if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
                raise ShardError(
                    f"{first_path} and {path} ran with different settings: "
                    f"{key} {_shown(a)} and {_shown(b)}"
                )
    made: dict[str, object] = {}  # settings_hash -> the first report with it
    for path, rep in zip(paths, reports, strict=True):
        for r in rep["results"]:
            h = r.get("settings_hash")
            if h is not None and h not in made:
                made[h] = path
                if len(made) > 1:
                    other = next(iter(made.values()))
                    files = f"{other} and {path}" if other != path else str(path)
                    raise ShardError(
                        f"{files} ran with different settings: settings_hash differs "
                        "(heatmap style, targets or igcli version)"
                    )


def _shown(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def find_reports(where) -> list:
    """The report(s) a merge-reports argument names: a report.json, or a folder holding
    shard reports (report.shard-K-of-N.json, all of them) or else a report.json."""
    from igcli.storage import URL, filesystem, is_url

    if is_url(str(where)):
        url = URL(str(where))
        if url.endswith(".json"):
            return [url]
        fs, path = filesystem(url)
        try:
            names = [posixpath.basename(p) for p in fs.ls(path, detail=False)]
        except Exception:
            names = []
        shards = sorted((n for n in names if SHARD_REPORT.match(n)), key=_shard_number)
        return [url / n for n in shards] or [url / "report.json"]
    path = Path(where)
    if not is_folder(path, UsageError):
        return [path]
    shards = sorted((p.name for p in path.glob("report.shard-*-of-*.json")
                     if SHARD_REPORT.match(p.name)), key=_shard_number)  # fmt: skip
    return [path / n for n in shards] or [path / "report.json"]


def _shard_number(name: str) -> tuple[int, int]:
    m = SHARD_REPORT.match(name)
    return (int(m.group(2)), int(m.group(1))) if m else (0, 0)


def _gated_error(r: dict):
    """The relative completeness error the gate holds to its limit. Expected gradients are
    Monte Carlo: an error within 3 standard errors of the attribution sum (completeness_se)
    is what the draws give, so only what lies beyond that counts."""
    se = r.get("completeness_se")
    if se is None:
        return r["rel_error"]
    try:
        delta = abs(float(r["delta"]))
        beyond = max(0.0, float(r["abs_error"]) - 3 * float(se))
    except (TypeError, ValueError, KeyError):
        return r["rel_error"]
    return beyond / delta if delta > 0 else r["rel_error"]


def _value(value) -> float:
    """A record's number as a float ("inf" from JSON too); NaN where there is none."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _nonzero(value) -> bool:
    """A nonzero finite number (delta = 0 has no relative error to speak of)."""
    v = _value(value)
    return math.isfinite(v) and v != 0


def _over(value, limit: float) -> bool:
    """True unless value is a number <= limit: NaN, inf and "inf" (from JSON) fail the gate."""
    try:
        return not float(value) <= limit
    except (TypeError, ValueError):
        return True


def failure_entry(input_path: str, error: IgcliError | str, name: str | None = None) -> dict:
    """A failed input's record; `name` is its output name (two files may share a stem)."""
    return {
        "input": input_path,
        "name": name or Path(input_path).stem,
        "status": "error",
        "error": str(error),
    }


def _reason(failure: dict) -> str:
    """A failure's error without the input's path in front (its line names the input)."""
    error, where = str(failure.get("error", "")), f"{failure.get('input')}: "
    return error[len(where) :] if error.startswith(where) else error


def _md(text: object) -> str:
    """Text for a Markdown table cell or list item: pipes, backticks, markup and line breaks
    in file names cannot break the table or inject markup, nor other control characters (an
    ESC in a label) reach the terminal that shows the file."""
    out = printable(str(text).replace("\r", " ").replace("\n", " "))
    out = out.replace("\\", "\\\\").replace("&", "&amp;")  # ('&amp;' in a name)
    for ch in "|`*[]<>":
        out = out.replace(ch, "\\" + ch)
    return out


def _cell(value):
    """A CSV cell that a spreadsheet shows as text: a name or message starting with =, +, -,
    @ (or a tab or CR) would be read as a formula, so it gets a leading quote. Numbers stay."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
