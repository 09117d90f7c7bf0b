"""report.html: one self-contained page per run, for a person to click through.

The page has no outside references at all (no fonts, scripts or styles from a network): it must
open from a CI artifact or a file:// link on a machine with no network. Everything from the run
(file names, labels, errors) is escaped: static parts with html.escape, the results table is
rendered by the page's script from one inline JSON blob (with <, > and & escaped so no name can
close the script element) and only ever through textContent and attributes, never innerHTML.

The table shows one page of rows at a time (PAGE_SIZE) with lazy thumbnails, so a run of
10,000 inputs gives a page of a few MB that opens at once. Heatmap links are relative to the
page: a merged report may live in another folder than the shards' PNGs. Files in object
storage that no relative link reaches (a local page, another bucket) are linked by their URL.

For tabular runs (CSV rows, whose attributions are vectors of features) the page adds a summary
over all rows: mean |attribution| per feature as bars and each row's attribution per feature as
a beeswarm-like strip, coloured by the feature's value where the CSV can still be read. Both
are inline SVG drawn here, so the page needs no plotting library.
"""

from __future__ import annotations

import csv
import functools
import heapq
import html
import io
import json
import math
import os
import re
import statistics
from pathlib import Path
from urllib.parse import quote

import numpy as np

from igcli.errors import IgcliError
from igcli.files import open_regular, read_text
from igcli.inputs import MAX_CSV_LINE, bounded_lines, csv_line_limit

PAGE_SIZE = 100  # rows the script builds at a time; the page never builds all rows
# Results the page's table and feature figures hold: a 100,000-row CSV run must not hold
# 100,000 records in memory to write its page (nor make a 20 MB page). The summary, the
# histogram and the worst cases still cover every result; report.csv has them all.
HTML_ROWS = 10_000
LISTED = 500  # failures and skipped files listed in full before "... and N more"
TOP_FEATURES = 20  # features drawn in the tabular summary
STRIP_POINTS = 400  # rows drawn per feature in the strip (evenly sampled beyond that)
WORST = 5  # worst completeness errors named in the summary
# Completeness-error bands (relative error, as fractions): decades from 1e-6 to 10%.
BAND_EDGES = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
_ROW_NAME = re.compile(r"_row(\d+)(?:\.target\d+)?$")
_VARYING = ("steps", "method", "baseline", "gradient_source")  # shown once when constant
_COLS = [
    "name",
    "input",
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
    "wall_time_s",
    "heatmap",
    "npy",
]


def render_html(data: dict, page_dir, roots: list | None = None) -> str:
    """The page for `data` (report.json's content), to be written into `page_dir`.

    `roots[k]` is the folder that results[k]'s heatmap_file and attributions_file are relative
    to (a merged report's shard folders); None or missing means `page_dir`, as in a run.
    Either may be an object storage URL.
    """
    page_dir = _place(page_dir)
    results = data.get("results") or []
    if not hasattr(results, "__len__"):
        results = list(results)  # several passes below: a re-iterable (a spool) or a list
    roots = list(roots or [])
    roots += [None] * (len(results) - len(roots))
    record_dirs = [_place(r) if r else page_dir for r in roots]
    model = str(data.get("model") or "")
    title = f"igcli report: {Path(model).name or 'run'}"
    gate = data.get("gate") or None

    links = _Links(page_dir)
    errors, rows, constants = [], [], _Constants()
    worst: list[tuple[float, int, dict]] = []  # a heap of the WORST largest errors
    per_feature = False  # any adaptive result's estimate of each feature's error
    for k, (r, d) in enumerate(zip(results, record_dirs, strict=True)):  # one pass
        err = _number(r.get("rel_error"))
        errors.append(err)
        constants.add(r)
        per_feature = per_feature or r.get("feature_error") is not None
        if k < HTML_ROWS:
            rows.append(_row(r, d, links))
        item = (math.inf if math.isnan(err) else err, -k, r)
        if len(worst) < WORST:
            heapq.heappush(worst, item)
        elif item[:2] > worst[0][:2]:
            heapq.heapreplace(worst, item)
    worst_records = {-k: r for _, k, r in worst}
    blob = {
        "cols": _COLS,
        "rows": rows,
        "constant": constants.result(),
        "perFeature": per_feature,
        "gate": _number(gate["max"]) if gate else None,
        "bands": _band_list(),
        "pageSize": PAGE_SIZE,
    }
    parts = [
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(_subtitle(data))}</p>',
        "</header>",
        "<main>",
        _summary_section(data, results, errors, worst_records),
        _table_section(len(results), len(rows)),
        _failures_section(data.get("failures") or []),
        _skipped_section(data.get("skipped") or []),
        _tabular_section(results, record_dirs, model),
        _settings_section(data),
        "</main>",
        _VIEWER,
        f'<script type="application/json" id="igcli-data">{_script_json(blob)}</script>',
        f"<script>{_JS}</script>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------- data for the script


def _place(where):
    """A folder as a Path, or a storage.URL (a URL made a Path loses a slash: "s3:/b")."""
    from igcli.storage import is_url, location

    return location(where) if is_url(str(where)) else Path(where)


def _row(r: dict, root: Path, links: _Links) -> list:
    """One result as the compact list the script reads (columns in _COLS order)."""
    out = []
    for col in _COLS:
        if col == "heatmap":
            out.append(links.href(root, r.get("heatmap_file")))
        elif col == "npy":
            out.append(links.href(root, r.get("attributions_file")))
        else:
            out.append(_compact(r.get(col)))
    return out


class _Links:
    """Links from the page to files under a run's folder, relative to the page.

    Percent-encoded, so a name with # or ? still names a file and a name like "javascript:x"
    is never read as a scheme. The folder's own relative path is worked out once per folder.
    """

    def __init__(self, page_dir: Path) -> None:
        self.page_dir = page_dir
        self.prefixes: dict[Path, str | None] = {}

    def href(self, root: Path, rel: str | None) -> str | None:
        if not rel:
            return None
        from igcli.storage import is_url

        if is_url(str(root)) or is_url(str(self.page_dir)):
            return self._stored(root, str(rel))
        if root not in self.prefixes:
            try:
                prefix = os.path.relpath(root, self.page_dir).replace(os.sep, "/")
            except ValueError:  # another drive (Windows): only an absolute URL reaches it
                prefix = None
            self.prefixes[root] = prefix
        prefix = self.prefixes[root]
        if prefix is None:
            return Path(os.path.abspath(Path(root) / rel)).as_uri()
        path = str(rel).replace(os.sep, "/")
        return quote(path if prefix == "." else f"{prefix}/{path}", safe="/")

    def _stored(self, root, rel: str) -> str:
        """A page or file in object storage: relative within one bucket (as report.json
        links), else the object's URL, or a local file's file:// URL from a stored page."""
        from igcli.storage import is_url, relative_link

        link = relative_link(str(root), rel, str(self.page_dir))
        if is_url(link):
            scheme, rest = link.split("://", 1)
            return f"{scheme}://{quote(rest, safe='/')}"
        if os.path.isabs(link):
            return Path(link).as_uri()
        return quote(link, safe="/")


def _compact(value):
    """Floats to 6 significant digits (the page shows at most 5); everything else as is."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else str(value)
    return value


class _Constants:
    """Settings that are the same for every result: said once above the table, not per row.
    Fed one result at a time, so the results need not be in memory together."""

    def __init__(self) -> None:
        self.first: dict | None = None
        self.seen: dict[str, str] = {}
        self.varying: set[str] = set()

    def add(self, r: dict) -> None:
        if self.first is None:
            self.first = {key: r.get(key) for key in _VARYING}
            self.seen = {key: json.dumps(r.get(key)) for key in _VARYING}
            return
        for key in _VARYING:
            if key not in self.varying and json.dumps(r.get(key)) != self.seen[key]:
                self.varying.add(key)

    def result(self) -> dict:
        if self.first is None:
            return {}
        return {key: v for key, v in self.first.items() if key not in self.varying}


def _band_list() -> list[dict]:
    edges = [0.0, *BAND_EDGES, math.inf]
    bands = [{"lo": lo, "hi": hi} for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    for band in bands:
        band["label"] = _band_label(band["lo"], band["hi"])
        if band["hi"] == math.inf:
            band["hi"] = None  # JSON has no infinity: open-ended
    bands.append({"lo": None, "hi": None, "label": "not a number"})
    return bands


def _band_label(lo: float, hi: float) -> str:
    if lo == 0:
        return f"< {_pct(hi)}"
    if hi == math.inf:
        return f"≥ {_pct(lo)}"
    return f"{_pct(lo)} – {_pct(hi)}"


def _band_of(err: float) -> int:
    """Index into _band_list(): decades of the relative error, the last for NaN or inf."""
    if not math.isfinite(err):
        return len(BAND_EDGES) + 1
    return sum(err >= edge for edge in BAND_EDGES)


def _script_json(blob) -> str:
    """JSON safe inside <script>: no <, > or & (so no "</script>" or "<!--" can appear)."""
    text = json.dumps(blob, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---------------------------------------------------------------- static sections


def _subtitle(data: dict) -> str:
    bits = [
        str(data.get("model") or ""),
        f"sha256 {str(data.get('model_sha256') or '')[:12]}",
        f"igcli {data.get('igcli_version', '?')}",
        f"ONNX Runtime {data.get('onnxruntime_version', '?')}",
        f"started {data.get('started', '?')}",
    ]
    return " · ".join(b for b in bits if b)


def _summary_section(
    data: dict, results, errors: list[float], worst_records: dict[int, dict]
) -> str:
    settings = data.get("settings") or {}
    summary = data.get("summary") or {}
    failures = data.get("failures") or []
    cards = [
        ("results", f"{len(results):,}", _results_note(summary, settings)),
        ("failed", f"{len(failures):,}", "inputs that could not be explained"),
    ]
    if data.get("skipped"):
        cards.append(("skipped", f"{len(data['skipped']):,}", "files not explained on purpose"))
    cards += _time_cards(results, failures, summary, settings)
    finite = [e for e in errors if math.isfinite(e)]
    if errors:
        worst = max(errors, key=lambda e: math.inf if math.isnan(e) else e)
        median = statistics.median(finite) if finite else math.nan
        mean = sum(finite) / len(finite) if finite else math.nan
        note = f"median {_pct(median)}, mean {_pct(mean)}"
        cards.append(("worst completeness error", _pct(worst), note))
    gate = data.get("gate")
    if gate:
        verdict = "passed" if gate.get("passed") else "FAILED"
        failing = len(gate.get("failing") or [])
        cards.append(
            (
                "completeness gate",
                verdict,
                f"max {_pct(_number(gate.get('max')))}; {failing} over",
            )
        )
    html_cards = "".join(
        f'<div class="card{" bad" if label == "completeness gate" and value == "FAILED" else ""}">'
        f'<div class="label">{_e(label)}</div><div class="value">{_e(value)}</div>'
        f'<div class="note">{_e(note)}</div></div>'
        for label, value, note in cards
    )
    out = ['<section id="summary" aria-labelledby="summary-h">', '<h2 id="summary-h">Summary</h2>']
    out.append(f'<div class="cards">{html_cards}</div>')
    if errors:
        out.append('<div class="cols">')
        out.append(_histogram(errors, _number((gate or {}).get("max"))))
        out.append(_worst_list(worst_records, errors))
        out.append("</div>")
    out.append("</section>")
    return "\n".join(out)


def _results_note(summary: dict, settings: dict) -> str:
    bits = ["one per (input, target)"]
    if summary.get("resumed"):
        bits.append(f"{summary['resumed']} inputs resumed from an earlier run")
    return "; ".join(bits)


def _time_cards(results, failures, summary, settings) -> list[tuple[str, str, str]]:
    """Elapsed time and throughput; a merged report adds up its shards' times."""
    shards = settings.get("merged_from") or []
    wall = _number(settings.get("wall_time_s"))
    model_time = _number(settings.get("model_time_s"))
    note_prefix = ""
    if shards:
        walls = [_number(s.get("wall_time_s")) for s in shards]
        models = [_number(s.get("model_time_s")) for s in shards]
        if all(math.isfinite(w) for w in walls):
            wall = sum(walls)
            note_prefix = f"sum over {len(shards)} shards (longest {_secs(max(walls))}); "
        if all(math.isfinite(m) for m in models):
            model_time = sum(models)
    if not math.isfinite(wall):
        return []
    in_model = ""
    if math.isfinite(model_time) and wall > 0:
        in_model = f"{_secs(model_time)} in ONNX Runtime ({model_time / wall:.0%})"
    prepare = _number(settings.get("prepare_time_s"))  # one process's, not a merged run's
    if math.isfinite(prepare) and prepare >= 1:
        before = f"{_secs(prepare)} preparing the model before"
        in_model = f"{in_model}; {before}" if in_model else before
    cards = [("time", _secs(wall), note_prefix + in_model)]
    per_input = len(settings.get("targets") or [0])
    fresh = len(results) - (summary.get("resumed") or 0) * per_input
    if wall > 0 and fresh > 0:
        rate = fresh / wall
        cards.append(("throughput", f"{rate:.3g} /s", "results explained per second"))
    return cards


def _histogram(errors: list[float], gate_max: float) -> str:
    """Counts per completeness-error band; each bar filters the table to its band."""
    counts = [0] * (len(BAND_EDGES) + 2)
    for e in errors:
        counts[_band_of(e)] += 1
    top = max(counts) or 1
    rows = []
    for k, (band, n) in enumerate(zip(_band_list(), counts, strict=True)):
        if band["lo"] is None and not n:
            continue  # the "not a number" band only when there is one
        over = math.isfinite(gate_max) and (band["lo"] is None or band["lo"] >= gate_max)
        width = 100 * n / top
        rows.append(
            f'<li><button type="button" class="band" data-band="{k}" {"" if n else "disabled"}'
            f' title="show only these in the table">'
            f'<span class="blabel">{_e(band["label"])}</span>'
            f'<span class="bbar"><span class="bfill{" over" if over else ""}"'
            f' style="width:{width:.1f}%"></span></span>'
            f'<span class="bcount">{n:,}</span></button></li>'
        )
    return (
        '<div class="histogram"><h3>Completeness error (relative)</h3>'
        f'<ul class="bands">{"".join(rows)}</ul></div>'
    )


def _worst_list(worst: dict[int, dict], errors: list[float]) -> str:
    """`worst`: the records of the largest errors by index (gathered in render_html's one
    pass: a spool of 100,000 records is not read again per name)."""
    order = sorted(worst, key=lambda k: (-(math.inf if math.isnan(errors[k]) else errors[k]), k))
    items = []
    for k in order[:WORST]:
        r = worst[k]
        name = _e(r.get("name"))
        if k < HTML_ROWS:  # in the table: a button opens its panel
            name = f'<button type="button" class="linkish" data-open="{k}">{name}</button>'
        items.append(
            f'<li>{name} <span class="num">{_e(_pct(errors[k]))}</span>'
            f' <span class="muted">target {_e(_target_text(r))}</span></li>'
        )
    return (
        f'<div class="worst"><h3>Worst completeness errors</h3><ol>{"".join(items)}</ol>'
        '<p class="muted">Click a name to see its panel; click "rel. error" in the table to '
        "sort by it.</p></div>"
    )


def _table_section(n: int, shown: int) -> str:
    more = (
        f'<p class="muted">The table holds the first {shown:,} of {n:,} results; '
        "report.csv and report.json have all of them.</p>"
        if shown < n
        else ""
    )
    return f"""<section id="results" aria-labelledby="results-h">
<h2 id="results-h">Results</h2>
<p id="constants" class="muted"></p>
<div class="filters" role="search">
<label>file name
<input type="search" id="f-name" placeholder="contains…" autocomplete="off"></label>
<label>target <select id="f-target"><option value="">all</option></select></label>
<label>rel. error ≥ <input type="number" id="f-min" min="0" step="any" placeholder="0"> %</label>
<span id="f-band" class="chip" hidden></span>
<button type="button" id="f-clear">clear filters</button>
</div>
{more}<p id="count" class="muted" aria-live="polite">{shown:,} results</p>
<div class="tablewrap"><table id="table">
<thead><tr></tr></thead>
<tbody></tbody>
</table></div>
<nav class="pager" aria-label="pages">
<button type="button" id="p-first">« first</button>
<button type="button" id="p-prev">‹ previous</button>
<span id="p-info"></span>
<button type="button" id="p-next">next ›</button>
<button type="button" id="p-last">last »</button>
<label>rows per page <select id="p-size"><option>50</option><option selected>100</option>
<option>250</option><option>500</option></select></label>
</nav>
<noscript><p>The table needs JavaScript; report.csv has the same rows.</p></noscript>
</section>"""


def _failures_section(failures: list[dict]) -> str:
    if not failures:
        return ""
    items = []
    for f in failures[:LISTED]:
        source = str(f.get("input") or f.get("name") or "")
        error = str(f.get("error") or "")
        if error.startswith(source + ": "):
            error = error[len(source) + 2 :]  # the error names the file already
        items.append(f"<li><code>{_e(source)}</code>: {_e(error)}</li>")
    more = len(failures) - LISTED
    tail = f'<p class="muted">… and {more:,} more in report.json</p>' if more > 0 else ""
    return (
        '<section id="failures" aria-labelledby="failures-h">'
        f'<h2 id="failures-h">Failed inputs ({len(failures):,})</h2>'
        f'<ul class="failures">{"".join(items)}</ul>{tail}</section>'
    )


def _skipped_section(skipped: list[dict]) -> str:
    if not skipped:
        return ""
    items = [
        f"<li><code>{_e(s.get('input'))}</code>: {_e(s.get('reason'))}</li>"
        for s in skipped[:LISTED]
    ]
    more = len(skipped) - LISTED
    tail = f'<p class="muted">… and {more:,} more in report.json</p>' if more > 0 else ""
    return (
        '<section id="skipped" aria-labelledby="skipped-h">'
        f'<h2 id="skipped-h">Skipped files ({len(skipped):,})</h2>'
        f"<details><summary>show</summary><ul>{''.join(items)}</ul>{tail}</details></section>"
    )


def _settings_section(data: dict) -> str:
    settings = data.get("settings") or {}
    rows = [(k, v) for k, v in settings.items() if k != "merged_from" and _applies(k, settings)]
    rows += [
        ("model", data.get("model")),
        ("model sha256", data.get("model_sha256")),
        ("igcli", data.get("igcli_version")),
        ("ONNX Runtime", data.get("onnxruntime_version")),
        ("Python", data.get("python_version")),
        ("started", data.get("started")),
    ]
    shown = {"targets": lambda v: "top class" if v is None else _setting(v)}
    items = "".join(
        f"<div><dt>{_e(k)}</dt><dd>{_e(shown.get(k, _setting)(v))}</dd></div>" for k, v in rows
    )
    shards = ""
    if settings.get("merged_from"):
        lines = "".join(
            f"<li><code>{_e(s.get('report'))}</code>: shard {_e(_setting(s.get('shard')))}, "
            f"{_e(s.get('explained'))} results, {_e(s.get('failed'))} failed, "
            f"{_e(_secs(_number(s.get('wall_time_s'))))}</li>"
            for s in settings["merged_from"]
        )
        shards = f"<h3>Merged from</h3><ul>{lines}</ul>"
    return (
        '<section id="settings" aria-labelledby="settings-h">'
        f'<h2 id="settings-h">Settings</h2><dl class="settings">{items}</dl>{shards}</section>'
    )


def _applies(key: str, settings: dict) -> bool:
    """Whether a path-method option means anything for this run: the blur path's sigma on a
    straight-path run is noise in the settings list, not information."""
    path = str(settings.get("path") or "straight").split(":")[0]
    noisy = bool(settings.get("noise"))
    needs = {
        "groups": path in ("extremal", "shapley"),
        "max_sigma": path == "blur",
        "blur_sqrt": path == "blur",
        "fraction": path == "guided",
        "max_dist": path == "guided",
        "noise_std": noisy,
        "noise_type": noisy,
        "baseline_data": settings.get("baseline") == "mean",
    }
    optional = ("at", "aggregate", "tokenizer", "samples", "baselines", "regions", "method")
    if key in optional and settings.get(key) is None:
        return False  # not used by this run (method None: each result's record names it)
    return needs.get(key, True)


def _setting(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_setting(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


# ---------------------------------------------------------------- tabular summary


def _tabular_section(results: list[dict], dirs: list[Path], model: str) -> str:
    """Attributions per feature over all CSV rows, one figure per explained target."""
    rows = []  # (the few fields used below, vector)
    unreadable = 0
    wanted = []  # (record, where its attributions are)
    for k, (r, d) in enumerate(zip(results, dirs, strict=True)):
        if k >= HTML_ROWS:
            break
        if not str(r.get("input", "")).lower().endswith(".csv") or not r.get("attributions_file"):
            continue
        if r.get("at"):  # attributed at a tensor inside the model: not the CSV's features
            continue
        wanted.append((r, d / r["attributions_file"]))
    stored = _read_stored([where for _, where in wanted])
    for r, where in wanted:
        try:
            a = _load_vector(stored.get(str(where), where))
        except (OSError, ValueError):
            unreadable += 1
            continue
        if a.ndim == 2 and a.shape[0] == 1:
            a = a[0]
        if a.ndim == 1 and a.size:
            keep = ("input", "name", "output", "target", "label")
            rows.append(({key: r.get(key) for key in keep}, a.astype(np.float64)))
    if not rows:
        return ""
    width = rows[0][1].size
    rows = [(r, a) for r, a in rows if a.size == width]
    names = _feature_names(model, rows[0][0], width)
    values = _feature_values([r for r, _ in rows], names)
    groups: dict[tuple, list[int]] = {}
    for k, (r, _) in enumerate(rows):
        groups.setdefault((r.get("output"), r.get("target"), r.get("label")), []).append(k)
    attrs = np.stack([a for _, a in rows])
    figures = []
    if len(groups) > 1:
        figures.append(
            _feature_figure(
                names, attrs, None, f"all {len(rows):,} rows, every target", "all", strip=False
            )
        )
    for g, ((_, target, label), idx) in enumerate(sorted(groups.items(), key=_group_order)):
        what = f"target {_target_text({'target': target, 'label': label})}, {len(idx):,} rows"
        vals = values[idx] if values is not None else None
        figures.append(_feature_figure(names, attrs[idx], vals, what, f"t{g}", strip=True))
    notes = []
    if unreadable:
        notes.append(f"{unreadable} attribution files could not be read and are left out.")
    if values is None:
        notes.append("The CSV could not be read again, so the dots are not coloured by value.")
    note = "".join(f'<p class="muted">{_e(n)}</p>' for n in notes)
    return (
        '<section id="features" aria-labelledby="features-h">'
        '<h2 id="features-h">Attributions per feature</h2>'
        '<p class="muted">Left: mean |attribution| over the rows. Right: each row\'s '
        "attribution (a dot per row; right of 0 raises the explained score, left lowers it), "
        "coloured by the feature's value in that row.</p>"
        f"{''.join(figures)}{note}</section>"
    )


_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|]?[fi][248])', 'fortran_order': False, 'shape': \((\d+), (\d+)\), \}"
)


def _read_stored(places: list) -> dict[str, bytes | Exception]:
    """The objects among `places` (URLs), fetched together: one request at a time would
    take minutes for 10,000 rows. Local paths are left out (read as they come)."""
    from igcli.storage import is_url, read_many

    urls = [str(p) for p in places if is_url(str(p))]
    return read_many(urls) if urls else {}


def _load_vector(path) -> np.ndarray:
    """An attributions .npy (a local path, or an object's bytes or the error reading it).
    The (1, F) float files igcli writes are read directly: for 10,000 rows np.load's header
    parsing took most of the page's time; anything else goes to np.load.
    """
    if isinstance(path, Exception):
        raise OSError(str(path))
    data = path if isinstance(path, bytes) else path.read_bytes()
    if data[:8] == b"\x93NUMPY\x01\x00":
        end = 10 + int.from_bytes(data[8:10], "little")
        match = _NPY_HEADER.match(data[10:end])
        if match and int(match.group(2)) == 1:
            n = int(match.group(3))
            dtype = np.dtype(match.group(1).decode())
            if len(data) - end == n * dtype.itemsize:
                return np.frombuffer(data, dtype=dtype, offset=end).reshape(1, n)
    return np.load(io.BytesIO(data), allow_pickle=False)


def _group_order(item):
    (output, target, _), _ = item
    return (str(output), target if isinstance(target, int) else -1)


def _feature_names(model: str, first: dict, width: int) -> list[str]:
    """The sidecar's names where they fit, else the CSV header's, else feature k."""
    sidecar = Path(model).with_suffix(".json")
    try:
        names = json.loads(read_text(sidecar, 1 << 24)).get("feature_names")
        if isinstance(names, list) and len(names) == width:
            return [str(n) for n in names]
    except (IgcliError, ValueError, AttributeError):
        pass
    try:
        with _csv_text(first["input"]) as fh:
            header = [h.strip() for h in next(csv.reader(bounded_lines(fh, [MAX_CSV_LINE], set())))]
        if len(header) == width:
            return header
    except (OSError, IgcliError, StopIteration, UnicodeDecodeError, csv.Error):
        pass
    return [f"feature {k}" for k in range(width)]


def _feature_values(results: list[dict], names: list[str]) -> np.ndarray | None:
    """(rows, features) raw CSV values of each result's row, or None if any cannot be had.
    Each CSV is read once, row by row, keeping only the rows asked for."""
    wanted: dict[str, dict[int, list[int]]] = {}  # path -> CSV row -> result indices
    for i, r in enumerate(results):
        match = _ROW_NAME.search(str(r.get("name", "")))
        if not match:
            return None
        wanted.setdefault(str(r["input"]), {}).setdefault(int(match.group(1)), []).append(i)
    out = np.full((len(results), len(names)), np.nan)
    for path, rows in wanted.items():
        last = max(rows)
        try:
            with _csv_text(path) as fh:
                limit = [MAX_CSV_LINE]  # a row too long is refused unread, as explain does
                lines = bounded_lines(fh, limit, set())
                body = (row for row in csv.reader(lines) if row and any(c.strip() for c in row))
                header = [h.strip() for h in next(body)]
                limit[0] = csv_line_limit(len(header))
                cols = [header.index(n) for n in names]
                for k, row in enumerate(body):
                    if k in rows:
                        values = [float(row[c]) for c in cols]
                        for i in rows[k]:
                            out[i] = values
                    if k >= last:
                        break
        except (OSError, IgcliError, UnicodeDecodeError, csv.Error, StopIteration, ValueError,
                IndexError):  # fmt: skip
            return None
    return None if np.isnan(out).all(axis=1).any() else out


def _csv_text(path) -> io.TextIOWrapper:
    """A CSV a record names, opened again for the report: a regular file only (a merged
    report's records are anyone's, and a FIFO or /dev/zero there hung the report)."""
    return io.TextIOWrapper(open_regular(Path(path)), encoding="utf-8-sig", newline="")


def _feature_figure(
    names: list[str],
    attrs: np.ndarray,
    values: np.ndarray | None,
    what: str,
    uid: str,
    strip: bool,
) -> str:
    """Bars of mean |attribution| and (strip=True) a beeswarm-like strip, as one inline SVG."""
    mean_abs = np.mean(np.abs(attrs), axis=0)
    order = [int(k) for k in np.argsort(-mean_abs, kind="stable")[:TOP_FEATURES]]
    rest = len(names) - len(order)
    row_h, top, label_w, bar_w = 20, 28, 210, 170
    strip_x0 = label_w + bar_w + 70
    strip_w = 480 if strip else 0
    width = strip_x0 + strip_w + 20 if strip else label_w + bar_w + 80
    height = top + row_h * len(order) + (52 if strip else 24)
    vmax = float(mean_abs[order[0]]) or 1.0
    svg = [
        f'<svg class="features" id="features-{uid}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="attributions per feature, {_e(what)}">',
        f'<text class="h" x="{label_w + 5}" y="16">mean |attribution|</text>',
    ]
    for j, k in enumerate(order):
        y = top + j * row_h
        if j % 2 == 0:
            svg.append(
                f'<rect class="zebra" x="0" y="{y}" width="{width}" height="{row_h}"></rect>'
            )
        name = names[k]
        short = name if len(name) <= 32 else name[:31] + "…"
        svg.append(
            f'<text class="name" x="{label_w - 6}" y="{y + 14}"><title>{_e(name)}</title>'
            f"{_e(short)}</text>"
        )
        w = bar_w * float(mean_abs[k]) / vmax
        svg.append(
            f'<rect class="bar" x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}">'
            f"</rect>"
        )
        svg.append(
            f'<text class="val" x="{label_w + w + 4:.1f}" y="{y + 14}">'
            f"{_e(_short(float(mean_abs[k])))}</text>"
        )
    if strip:
        svg += _strip(attrs[:, order], values[:, order] if values is not None else None,
                      strip_x0, strip_w, top, row_h, uid)  # fmt: skip
    if rest > 0:
        foot = f"the {len(order)} features of largest mean |attribution|; {rest} more not shown"
        svg.append(f'<text class="muted" x="0" y="{height - 6}">{_e(foot)}</text>')
    svg.append("</svg>")
    caption = f"<figcaption>{_e(what[:1].upper() + what[1:])}</figcaption>"
    return f'<figure class="features">{caption}{"".join(svg)}</figure>'


def _strip(attrs, values, x0, w, top, row_h, uid) -> list[str]:
    """A dot per row and feature at its attribution; dots of a column spread out vertically."""
    n, m = attrs.shape
    if n > STRIP_POINTS:
        pick = np.linspace(0, n - 1, STRIP_POINTS).astype(int)
        attrs = attrs[pick]
        values = values[pick] if values is not None else None
    lo, hi = float(np.min(attrs)), float(np.max(attrs))
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        hi = lo + 1.0
    pad = 0.04 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def px(v):
        return x0 + w * (v - lo) / (hi - lo)

    out = [
        f'<text class="h" x="{x0}" y="16">attribution per row'
        f"{' (colour: feature value)' if values is not None else ''}</text>"
    ]
    bottom = top + row_h * m
    zero = px(0.0)
    out.append(f'<path class="zero" d="M{zero:.1f} {top}V{bottom}"></path>')
    for t in _ticks(lo, hi):
        x = px(t)
        out.append(f'<path class="tick" d="M{x:.1f} {bottom}v4"></path>')
        out.append(f'<text class="tickl" x="{x:.1f}" y="{bottom + 15}">{_e(_short(t))}</text>')
    dot = 5.0
    colours = _legend_stops()
    paths: dict[int, list[str]] = {}
    for j in range(m):
        xs = px(attrs[:, j])
        if values is not None:
            col = values[:, j]
            a, b = np.percentile(col, 5), np.percentile(col, 95)
            t = np.clip((col - a) / (b - a), 0, 1) if b > a else np.full(col.shape, 0.5)
            bins = np.rint(t * (len(colours) - 1)).astype(int)
        else:
            bins = np.full(xs.shape, -1)
        centre = top + j * row_h + row_h / 2
        slots = max(1, int((row_h - dot) // (dot * 0.8)))
        k = _rank_in_column(np.floor(xs / dot).astype(np.int64)) % slots
        ys = centre + ((k + 1) // 2) * (dot * 0.8) * np.where(k % 2 == 1, 1, -1)
        for x, y, c in zip(xs.tolist(), ys.tolist(), bins.tolist(), strict=True):
            paths.setdefault(c, []).append(f"M{x:.1f} {y:.1f}h0")
    for c, segs in sorted(paths.items()):
        colour = "#444" if c < 0 else colours[c]
        out.append(
            f'<path class="dots" stroke="{colour}" stroke-width="{dot}" d="{"".join(segs)}"></path>'
        )
    if values is not None:
        lx, ly = x0 + w - 130, bottom + 24
        stops = "".join(
            f'<stop offset="{k / (len(colours) - 1):.3f}" stop-color="{c}"></stop>'
            for k, c in enumerate(colours)
        )
        out.append(f'<defs><linearGradient id="grad-{uid}">{stops}</linearGradient></defs>')
        out.append(f'<text class="tickl" x="{lx - 22}" y="{ly + 9}">low</text>')
        out.append(
            f'<rect x="{lx}" y="{ly}" width="100" height="10" fill="url(#grad-{uid})"></rect>'
        )
        out.append(f'<text class="tickl" x="{lx + 122}" y="{ly + 9}">high</text>')
    return out


def _rank_in_column(cols: np.ndarray) -> np.ndarray:
    """For each dot, how many dots before it (in row order) fell in the same pixel column."""
    order = np.argsort(cols, kind="stable")
    ordered = cols[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, cols.size]))
    rank = np.empty_like(cols)
    rank[order] = np.arange(cols.size) - first
    return rank


def _ticks(lo: float, hi: float) -> list[float]:
    """About five round numbers between lo and hi, always with 0 when it is in range."""
    span = hi - lo
    raw = span / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 5, 10) if s * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks = []
    v = start
    while v <= hi + 1e-12 * span:
        ticks.append(0.0 if abs(v) < 1e-9 * step else v)
        v += step
    return ticks


@functools.cache
def _legend_stops() -> list[str]:
    """Viridis without its palest yellow (too faint on white): low values purple, high green."""
    from cmap import Colormap

    lut = np.asarray(Colormap("viridis").lut(256))[:, :3]
    picks = np.linspace(0, 0.85 * 255, 9).round().astype(int)
    return ["#" + "".join(f"{round(c * 255):02x}" for c in lut[p]) for p in picks]


# ---------------------------------------------------------------- small formatters


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _number(value) -> float:
    """A report number (float, int, or "inf"/"nan" from JSON) as a float; NaN when missing."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _pct(value: float) -> str:
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf"
    return f"{value * 100:.3g}%"


def _secs(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    if value < 60:
        return f"{value:.3g} s"
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)} min {seconds:.0f} s"


def _short(value: float) -> str:
    return f"{value:.3g}"


def _target_text(r: dict) -> str:
    target, label = r.get("target"), r.get("label")
    if label is None or str(label) == str(target):
        return str(target)
    return f"{target} '{label}'"


# ---------------------------------------------------------------- page furniture

_VIEWER = """<dialog id="viewer" aria-labelledby="v-title">
<div class="vhead"><h2 id="v-title"></h2>
<span class="vnav"><button type="button" id="v-prev" aria-label="previous">‹</button>
<span id="v-pos"></span>
<button type="button" id="v-next" aria-label="next">›</button>
<button type="button" id="v-close" aria-label="close">✕</button></span></div>
<img id="v-img" alt="">
<p id="v-missing" class="muted" hidden>No panel was drawn for this result.</p>
<dl id="v-facts" class="facts"></dl>
<p class="vlinks"><a id="v-open">open the PNG</a> <a id="v-npy">attributions (.npy)</a></p>
</dialog>"""

_CSS = """
:root{--ink:#1d2330;--muted:#5f6878;--line:#d9dde4;--zebra:#f5f6f8;--accent:#2453c7;
--bad:#b3261e;--badbg:#fde8e6;--warn:#8a5a00;--warnbg:#fff4d6;--bar:#6b7ea6}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);
background:#fff}
header,main{max-width:1280px;margin:0 auto;padding:0 20px}
header{padding-top:18px}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:17px;margin:26px 0 10px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:14px;margin:0 0 8px}
.sub,.muted{color:var(--muted)}
.sub{margin:0;font-size:12.5px;overflow-wrap:anywhere}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid var(--line);border-radius:8px;padding:8px 12px;min-width:150px}
.card .label{color:var(--muted);font-size:12px}
.card .value{font-size:21px;font-weight:600;font-variant-numeric:tabular-nums}
.card .note{color:var(--muted);font-size:11.5px;max-width:260px}
.card.bad{border-color:var(--bad);background:var(--badbg)}
.cols{display:flex;flex-wrap:wrap;gap:28px;margin-top:16px}
.histogram{flex:1 1 420px;max-width:560px}.worst{flex:1 1 320px}
.bands{list-style:none;margin:0;padding:0}
.band{display:flex;align-items:center;gap:8px;width:100%;border:0;background:none;padding:2px 0;
font:inherit;color:inherit;cursor:pointer;text-align:left}
.band:disabled{cursor:default;opacity:.55}
.band:not(:disabled):hover .blabel{text-decoration:underline}
.blabel{flex:0 0 120px;text-align:right;font-size:12.5px;font-variant-numeric:tabular-nums}
.bbar{flex:1;height:14px;background:var(--zebra);border-radius:2px}
.bfill{display:block;height:100%;background:var(--bar);border-radius:2px;min-width:1px}
.bfill.over{background:var(--bad)}
.bcount{flex:0 0 60px;text-align:right;font-variant-numeric:tabular-nums}
.worst ol{margin:0;padding-left:22px}
.linkish{border:0;background:none;padding:0;font:inherit;color:var(--accent);cursor:pointer;
text-decoration:underline;overflow-wrap:anywhere;text-align:left}
.filters{display:flex;flex-wrap:wrap;gap:12px;align-items:center;margin:6px 0}
.filters input[type=search]{width:220px}.filters input[type=number]{width:90px}
input,select,button{font:inherit}
.chip{background:#e8eefc;border-radius:12px;padding:1px 10px}
.tablewrap{overflow-x:auto;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:middle;white-space:nowrap}
th{position:sticky;top:0;background:#eef0f4;text-align:left;z-index:1}
th.num,td.num{text-align:right}
th button{border:0;background:none;font:inherit;font-weight:600;cursor:pointer;padding:0;
color:inherit}
th[aria-sort=ascending] button::after{content:" ▲"}
th[aria-sort=descending] button::after{content:" ▼"}
tbody tr:nth-child(even){background:var(--zebra)}
tbody tr:hover{background:#e8eefc}
td.name{white-space:normal;overflow-wrap:anywhere;min-width:160px;max-width:360px}
td.tgt{max-width:240px;overflow:hidden;text-overflow:ellipsis}
#f-target{max-width:240px}
td.err.warn{background:var(--warnbg);color:var(--warn)}
td.err.bad,td.err.over{background:var(--badbg);color:var(--bad);font-weight:600}
.thumb{border:1px solid var(--line);background:#fff;padding:0;cursor:zoom-in;display:block;
height:58px;min-width:40px}
.thumb img{height:56px;width:auto;display:block}
.pager{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:8px 0}
#p-info{font-variant-numeric:tabular-nums}
.failures li{margin:2px 0}
.settings{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:2px 20px;
margin:0}
.settings div{display:flex;gap:10px;border-bottom:1px solid var(--zebra)}
.settings dt{color:var(--muted);flex:0 0 120px}.settings dd{margin:0;overflow-wrap:anywhere}
figure.features{margin:10px 0 22px;overflow-x:auto}
figure.features figcaption{font-weight:600;margin-bottom:4px}
svg.features text{font-size:12px;fill:var(--ink)}
svg.features .name{text-anchor:end}
svg.features .h{font-weight:600}
svg.features .val,svg.features .tickl,svg.features .muted{fill:var(--muted);font-size:11px}
svg.features .tickl{text-anchor:middle}
svg.features .zebra{fill:var(--zebra)}
svg.features .bar{fill:var(--bar)}
svg.features .zero{stroke:#888;stroke-width:1;fill:none}
svg.features .tick{stroke:#888}
svg.features .dots{fill:none;stroke-linecap:round;stroke-opacity:.85}
dialog{border:1px solid var(--line);border-radius:8px;max-width:min(96vw,1100px);padding:12px 16px}
dialog::backdrop{background:rgba(20,24,32,.55)}
.vhead{display:flex;justify-content:space-between;gap:12px;align-items:center}
.vhead h2{border:0;margin:0;font-size:16px;overflow-wrap:anywhere}
.vnav{white-space:nowrap}
#v-img{display:block;max-width:100%;max-height:70vh;margin:10px auto}
.facts{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:2px 14px;margin:0}
.facts dt{color:var(--muted)}.facts dd{margin:0;font-variant-numeric:tabular-nums;
overflow-wrap:anywhere}
.vlinks a{margin-right:16px;color:var(--accent)}
"""

_JS = r"""
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("igcli-data").textContent);
  const $ = (id) => document.getElementById(id);
  const num = (v) => typeof v === "number" ? v :
    v === "inf" ? Infinity : v === "-inf" ? -Infinity : NaN;
  const errKey = (v) => Number.isNaN(v) ? Infinity : v;  // NaN is as bad as it gets
  const rows = D.rows.map((r, i) => {
    const o = {i: i};
    D.cols.forEach((c, k) => { o[c] = r[k]; });
    o.err = num(o.rel_error);
    return o;
  });

  const sig = (v, d) => {
    if (v === null || v === undefined) return "—";
    if (typeof v === "string") return v;
    return String(Number(v.toPrecision(d)));
  };
  const pct = (v) => {
    if (!Number.isFinite(v)) return Number.isNaN(v) ? "nan" : "inf";
    const p = v * 100;
    const text = p !== 0 && Math.abs(p) < 1e-4 ? p.toExponential(2) :
      String(Number(p.toPrecision(3)));
    return text + "%";
  };
  const targetText = (r) => r.label === null || r.label === undefined ||
    String(r.label) === String(r.target) ? String(r.target) : r.target + " '" + r.label + "'";

  const COLUMNS = [
    {key: "i", label: "#", num: true, first: 1, text: (r) => String(r.i + 1)},
    {key: "heatmap", label: "panel", sortable: false},
    {key: "name", label: "input", first: 1, cls: "name"},
    {key: "target", label: "target", num: true, first: 1, text: targetText, cls: "tgt"},
    {key: "f_input", label: "F(x)", num: true, first: -1},
    {key: "f_baseline", label: "F(baseline)", num: true, first: -1},
    {key: "attribution_sum", label: "sum of attributions", num: true, first: -1},
    {key: "abs_error", label: "abs. error", num: true, first: -1},
    {key: "rel_error", label: "rel. error", num: true, first: -1, text: (r) => pct(r.err)},
    {key: "feature_error", label: "feature err.", num: true, first: -1,
     text: (r) => r.feature_error === null || r.feature_error === undefined ? "—" :
       "~" + pct(num(r.feature_error))},
    {key: "baseline", label: "baseline", first: 1},
    {key: "steps", label: "steps", num: true, first: 1},
    {key: "method", label: "method", first: 1},
    {key: "gradient_source", label: "gradients", first: 1},
    {key: "wall_time_s", label: "time (s)", num: true, first: -1,
     text: (r) => sig(r.wall_time_s, 3)},
  ].filter((c) => !(c.key in D.constant) && (c.key !== "feature_error" || D.perFeature));

  const state = {key: "i", dir: 1, name: "", target: "", min: NaN, band: null, page: 0,
                 size: D.pageSize};
  let view = [];

  // The constant settings, once, above the table.
  const said = {steps: "steps", method: "method", baseline: "baseline",
                gradient_source: "gradients"};
  $("constants").textContent = Object.keys(D.constant).map(
    (k) => said[k] + " " + (D.constant[k] === null ? "—" : D.constant[k])).join(" · ");

  // Header: one sort button per sortable column.
  const headRow = document.querySelector("#table thead tr");
  for (const c of COLUMNS) {
    const th = document.createElement("th");
    th.scope = "col";
    th.dataset.key = c.key;
    if (c.num) th.className = "num";
    if (c.sortable === false) {
      th.textContent = c.label;
    } else {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.key = c.key;
      b.textContent = c.label;
      b.title = "sort by " + c.label;
      b.addEventListener("click", () => sortBy(c));
      th.appendChild(b);
    }
    headRow.appendChild(th);
  }

  // Target filter: one option per (target, label) in the run.
  const seen = new Map();
  for (const r of rows) if (!seen.has(String(r.target))) seen.set(String(r.target), r);
  [...seen.values()].sort((a, b) => a.target - b.target).forEach((r) => {
    const o = document.createElement("option");
    o.value = String(r.target);
    o.textContent = targetText(r);
    $("f-target").appendChild(o);
  });

  const collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
  const byKey = new Map(COLUMNS.map((c) => [c.key, c]));
  function compare(a, b, c) {
    if (c.key === "rel_error") return errKey(a.err) - errKey(b.err) || 0;
    const x = a[c.key], y = b[c.key];
    if (c.num) return errKey(num(x)) - errKey(num(y)) || 0;  // missing and NaN sort last
    if (x === null || x === undefined || y === null || y === undefined)
      return (x === null || x === undefined) - (y === null || y === undefined);
    return collator.compare(String(x), String(y));
  }

  function sortBy(c) {
    if (state.key === c.key) state.dir = -state.dir;
    else { state.key = c.key; state.dir = c.first; }
    state.page = 0;
    render();
  }

  function passes(r) {
    if (state.name) {
      const n = state.name;
      if (String(r.name).toLowerCase().indexOf(n) < 0 &&
          String(r.input).toLowerCase().indexOf(n) < 0) return false;
    }
    if (state.target !== "" && String(r.target) !== state.target) return false;
    const e = errKey(r.err);
    if (!Number.isNaN(state.min) && !(e >= state.min)) return false;
    if (state.band !== null) {
      const b = D.bands[state.band];
      if (b.lo === null) return Number.isNaN(r.err);
      if (Number.isNaN(r.err)) return false;
      if (!(r.err >= b.lo && (b.hi === null || r.err < b.hi))) return false;
    }
    return true;
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function errClass(r) {
    if (D.gate !== null && !(r.err <= D.gate)) return "err over";
    if (!(r.err < 0.01)) return "err bad";
    if (r.err >= 0.001) return "err warn";
    return "err";
  }

  function rowElement(r, pos) {
    const tr = document.createElement("tr");
    tr.dataset.i = String(r.i);
    tr.dataset.name = String(r.name);
    for (const c of COLUMNS) {
      if (c.key === "heatmap") {
        const td = cell(tr, "", "");
        if (r.heatmap) {
          const b = document.createElement("button");
          b.type = "button";
          b.className = "thumb";
          b.title = "open the panel";
          const img = document.createElement("img");
          img.loading = "lazy";
          img.decoding = "async";
          img.alt = "panel of " + r.name;
          img.src = r.heatmap;
          b.appendChild(img);
          b.addEventListener("click", () => openViewer(pos));
          td.appendChild(b);
        } else {
          td.textContent = "—";
        }
        continue;
      }
      const text = c.text ? c.text(r) : sig(r[c.key], 5);
      let cls = c.num ? "num" : "";
      if (c.key === "rel_error") cls += " " + errClass(r);
      if (c.cls) cls += " " + c.cls;
      const td = cell(tr, text, cls.trim());
      if (c.key === "name") td.title = String(r.input);
      if (c.key === "target") td.title = text;  // (a long class name is cut: all of it)
    }
    return tr;
  }

  function render() {
    view = rows.filter(passes);
    const key = state.key, dir = state.dir, col = byKey.get(key) || byKey.get("i");
    view.sort((a, b) => dir * compare(a, b, col) || a.i - b.i);
    const pages = Math.max(1, Math.ceil(view.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * state.size;
    const frag = document.createDocumentFragment();
    view.slice(start, start + state.size).forEach((r, k) => {
      frag.appendChild(rowElement(r, start + k));
    });
    document.querySelector("#table tbody").replaceChildren(frag);
    for (const th of headRow.children) {
      if (th.dataset.key !== key) th.removeAttribute("aria-sort");
      else th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    }
    const shown = view.length ? (start + 1) + "–" + Math.min(start + state.size, view.length) : "0";
    const all = rows.length.toLocaleString("en");
    $("count").textContent = "rows " + shown + " of " + view.length.toLocaleString("en") +
      (view.length === rows.length ? "" : " (filtered from " + all + ")");
    $("p-info").textContent = "page " + (state.page + 1) + " of " + pages;
    $("p-first").disabled = $("p-prev").disabled = state.page === 0;
    $("p-next").disabled = $("p-last").disabled = state.page >= pages - 1;
    if (state.band === null) $("f-band").hidden = true;
    else {
      $("f-band").hidden = false;
      $("f-band").textContent = "rel. error " + D.bands[state.band].label;
    }
  }

  // Filters.
  let typing = null;
  $("f-name").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.name = $("f-name").value.trim().toLowerCase();
      state.page = 0;
      render();
    }, 120);
  });
  $("f-target").addEventListener("change", () => {
    state.target = $("f-target").value; state.page = 0; render();
  });
  $("f-min").addEventListener("input", () => {
    const v = parseFloat($("f-min").value);
    state.min = Number.isFinite(v) ? v / 100 : NaN; state.page = 0; render();
  });
  function clearFilters() {
    $("f-name").value = ""; $("f-target").value = ""; $("f-min").value = "";
    Object.assign(state, {name: "", target: "", min: NaN, band: null, page: 0});
  }
  $("f-clear").addEventListener("click", () => { clearFilters(); render(); });
  for (const b of document.querySelectorAll("button.band")) {
    b.addEventListener("click", () => {
      state.band = Number(b.dataset.band);
      state.key = "rel_error"; state.dir = -1; state.page = 0;
      render();
      $("results").scrollIntoView();
    });
  }

  // Pages.
  const go = (p) => { state.page = p; render(); $("results").scrollIntoView(); };
  $("p-first").addEventListener("click", () => go(0));
  $("p-prev").addEventListener("click", () => go(state.page - 1));
  $("p-next").addEventListener("click", () => go(state.page + 1));
  $("p-last").addEventListener("click", () => go(Math.ceil(view.length / state.size) - 1));
  $("p-size").addEventListener("change", () => {
    state.size = Number($("p-size").value); state.page = 0; render();
  });

  // The panel viewer: the full PNG and the record's numbers, previous/next in table order.
  const viewer = $("viewer");
  let at = 0;
  function fact(dl, term, value) {
    const dt = document.createElement("dt"); dt.textContent = term;
    const dd = document.createElement("dd"); dd.textContent = value;
    dl.append(dt, dd);
  }
  function openViewer(pos) {
    if (!view.length) return;
    at = (pos + view.length) % view.length;
    const r = view[at];
    $("v-title").textContent = r.name;
    $("v-pos").textContent = (at + 1) + " / " + view.length;
    $("v-missing").hidden = !!r.heatmap;
    const img = $("v-img");
    img.hidden = !r.heatmap;
    if (r.heatmap) { img.src = r.heatmap; img.alt = "panel of " + r.name; }
    else img.removeAttribute("src");
    for (const [el, href] of [[$("v-open"), r.heatmap], [$("v-npy"), r.npy]]) {
      if (href) el.href = href;
      else el.removeAttribute("href");
      el.hidden = !href;
    }
    const dl = $("v-facts");
    dl.replaceChildren();
    fact(dl, "input", String(r.input));
    fact(dl, "target", targetText(r));
    fact(dl, "F(input)", sig(r.f_input, 6));
    fact(dl, "F(baseline)", sig(r.f_baseline, 6));
    fact(dl, "sum of attributions", sig(r.attribution_sum, 6));
    fact(dl, "F(input) − F(baseline)", sig(r.delta, 6));
    fact(dl, "completeness error", pct(r.err) + " (abs. " + sig(r.abs_error, 3) + ")");
    fact(dl, "baseline", String(r.baseline));
    fact(dl, "quadrature", r.steps + " steps " + r.method);
    fact(dl, "gradients", String(r.gradient_source));
    if (!viewer.open) viewer.showModal();
  }
  $("v-prev").addEventListener("click", () => openViewer(at - 1));
  $("v-next").addEventListener("click", () => openViewer(at + 1));
  $("v-close").addEventListener("click", () => viewer.close());
  viewer.addEventListener("click", (ev) => { if (ev.target === viewer) viewer.close(); });
  viewer.addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowLeft") openViewer(at - 1);
    else if (ev.key === "ArrowRight") openViewer(at + 1);
  });

  // "Worst" links: show every result worst first and open that one.
  for (const b of document.querySelectorAll("[data-open]")) {
    b.addEventListener("click", () => {
      clearFilters();
      Object.assign(state, {key: "rel_error", dir: -1, page: 0});
      render();
      const pos = view.findIndex((r) => r.i === Number(b.dataset.open));
      if (pos >= 0) openViewer(pos);
    });
  }

  render();
  document.body.dataset.ready = "1";
})();
"""
