"""`igcli explain` end to end: options -> Explainer -> BatchRun -> reports and an exit code."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from igcli.batch import BatchRun, RunSettings, discover, in_shard, parse_shard
from igcli.errors import ExitCode
from igcli.explain import Explainer, ExplainOptions
from igcli.outputs import check_writable
from igcli.report import RunReport, percent
from igcli.visualize import HeatmapStyle

EXPLAIN_FIELDS = set(ExplainOptions.__dataclass_fields__)


def run_explain(
    model: Path,
    inputs: list[str],
    *,
    stderr: Console,
    out_dir: Path,
    json_lines: bool = False,
    quiet: bool = False,
    recursive: bool = False,
    pattern: str | None = None,
    skip_existing: bool = False,
    shard: str | None = None,
    max_completeness_error: float | None = None,
    overlay: str = "panel",
    sign: str = "all",
    clip_percentile: float = 99.5,
    scale: str = "per-input",
    reduce: str = "sum",
    no_cache: bool = False,
    stdin=None,
    **explain_kw,
) -> ExitCode:
    """Explain every input; return the exit code (documented in README.md)."""

    def warn(msg: str) -> None:
        if not quiet or msg.startswith("error"):
            stderr.print(msg, markup=False, highlight=False)

    options = ExplainOptions(use_cache=not no_cache, **explain_kw)
    shard_spec = parse_shard(shard)
    found = discover(inputs, recursive, pattern, stdin if stdin is not None else sys.stdin)
    explainer = Explainer(model, options, warn=warn)
    check_writable(out_dir)
    items = [item for item in found.items if in_shard(item.name, shard_spec)]
    settings_dict = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in options.__dict__.items()
        if k not in ("feeds", "labels")
    }
    settings_dict.update(
        gradient_source=explainer.gradient_source,
        shard=shard,
        graph_blockers=explainer.graph_blockers,
    )
    report = RunReport(str(model), explainer.sha256, settings_dict)
    report.skipped = [{"input": p, "reason": r} for p, r in found.skipped]
    for path, reason in found.skipped:
        warn(f"skipped {path}: {reason}")
    settings = RunSettings(
        out_dir=out_dir,
        style=HeatmapStyle(overlay, sign, clip_percentile, reduce),
        shared_scale=scale == "shared",
        json_lines=json_lines,
        skip_existing=skip_existing,
        max_completeness_error=max_completeness_error,
    )

    stdout_open = True

    def emit(line: str) -> None:
        """A closed pipe (`| head`) stops the JSON lines, not the run."""
        nonlocal stdout_open
        if not stdout_open:
            return
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            stdout_open = False
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    batch = BatchRun(explainer, settings, report, emit, warn)
    start = time.perf_counter()
    interrupted = False
    try:
        _loop(batch, items, stderr, quiet)
        batch.finish()
    except KeyboardInterrupt:
        interrupted = True
        batch.drain()  # inputs already explained are still written whole
    failing = batch.apply_gate()
    report.settings["wall_time_s"] = round(time.perf_counter() - start, 3)
    report.settings["model_time_s"] = round(
        explainer.runner.seconds
        + (explainer.graph_runner.runner.seconds if explainer.graph_runner else 0.0),
        3,
    )
    report.write(out_dir)
    if not quiet:
        _summary_table(report, stderr)
        stderr.print(f"outputs in {out_dir}/ (report.json, report.md, report.csv)", markup=False)
    if interrupted:
        stderr.print("interrupted: finished inputs are saved; run again with --skip-existing")
        return ExitCode.INTERRUPTED
    if report.failures:
        warn(f"error: {len(report.failures)} input(s) failed; see {out_dir}/report.json")
        return ExitCode.INPUTS_FAILED
    if not report.results and not found.items:
        warn("error: no inputs to explain")
        return ExitCode.INPUTS_FAILED
    if failing:
        warn(
            f"error: completeness error over {max_completeness_error} for: "
            + ", ".join(failing[:10])
            + (" ..." if len(failing) > 10 else "")
        )
        return ExitCode.COMPLETENESS
    return ExitCode.OK


def _loop(batch: BatchRun, items, stderr: Console, quiet: bool) -> None:
    size = batch.group_size()
    groups = [items[k : k + size] for k in range(0, len(items), size)]
    if quiet or not stderr.is_terminal:
        last, done = time.monotonic(), 0
        for group in groups:
            batch.process(group)
            done += len(group)
            if not quiet and len(items) > 1 and (time.monotonic() - last > 5 or done == len(items)):
                stderr.print(f"{done}/{len(items)} inputs done", markup=False)
                last = time.monotonic()
        return
    columns = (
        TextColumn("explaining"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task("explain", total=len(items), rate="")
        start, done = time.monotonic(), 0
        for group in groups:
            batch.process(group)
            done += len(group)
            rate = done / max(time.monotonic() - start, 1e-9)
            progress.update(task, advance=len(group), rate=f"{rate:.2f} inputs/s")


def _summary_table(report: RunReport, stderr: Console) -> None:
    if not report.results:
        return
    table = Table(
        "input",
        "target",
        "F(x)",
        "F(baseline)",
        "sum attr.",
        "rel. error",
        "steps",
        "source",
        title="Integrated Gradients",
        title_justify="left",
    )
    for r in report.results[:50]:
        target = str(r["target"]) + (f" ({r['label']})" if r.get("label") else "")
        err = r["rel_error"]
        table.add_row(
            r["name"],
            target,
            f"{r['f_input']:.5g}",
            f"{r['f_baseline']:.5g}",
            f"{r['attribution_sum']:.5g}",
            percent(err),
            str(r["steps"]),
            r["gradient_source"],
        )
    if len(report.results) > 50:
        table.caption = f"... and {len(report.results) - 50} more in report.json"
    stderr.print(table)
