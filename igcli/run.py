"""`igcli explain` end to end: plan (discovery, names, shard) -> execute (a BatchRun over one
Session) -> finish (reports, gate, exit code). Each step is a function another program can
call; the command line calls them in this order.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from igcli import methods
from igcli.batch import BatchRun, Discovery, InputItem, OutputSettings, in_shard, parse_shard
from igcli.console import Messages
from igcli.discovery import TargetTable, count_table_rows
from igcli.errors import ExitCode
from igcli.outputs import check_writable
from igcli.report import RunReport
from igcli.session import AttributionSettings, Session


@dataclass
class Plan:
    """What a run will explain: the items of this shard, and what discovery skipped."""

    items: list[InputItem]
    skipped: list[tuple[str, str]]
    discovered: int  # inputs found before sharding (an empty shard of many is no error)
    shard: str | None = None


def plan(found: Discovery, shard: str | None = None) -> Plan:
    spec = parse_shard(shard)
    items = [item for item in found.items if in_shard(item.name, spec)]
    return Plan(items, found.skipped, len(found.items), shard)


def new_report(session: Session, settings: AttributionSettings, targets, shard) -> RunReport:
    """A report whose settings say how every result in it was made."""
    described = {
        "targets": targets,
        "output": session.output_name,
        "softmax": session.softmax,
        "input_name": session.input_spec.name,
        "steps": settings.steps,
        "method": settings.method,
        "baseline": settings.baseline,
        "seed": settings.seed,
        **methods.settings_fields(settings),  # path, baselines, noise, ... (issue 11)
        "batch_size": session.runner.batch_size,
        "memory_budget": session.memory_budget,
        "provider": session.providers[0],
        "threads": session.threads,
        "gradients": session.gradients,
        "fd_groups": session.fd_groups,
        "fd_step": session.fd_step,
        "gradient_source": session.gradient_source,
        "graph_blockers": session.graph_blockers,
        "shard": shard,
    }
    return RunReport(str(session.model_path), session.sha256, described)


def execute(batch: BatchRun, items: list[InputItem], messages: Messages) -> None:
    """Explain every item, a group of inputs per model call where they fit; CSV rows count
    as inputs of their own."""
    total = sum(count_table_rows(item.path) if item.is_table else 1 for item in items)
    with messages.progress(total) as progress:
        k = 0
        while k < len(items):
            group = items[k : k + batch.group_size()]  # rows per call are known after the first
            batch.process(group, progress.advance)
            k += len(group)


def run_explain(
    session: Session,
    the_plan: Plan,
    *,
    settings: AttributionSettings,
    targets: list[int] | None,
    outputs: OutputSettings,
    messages: Messages,
    targets_from: TargetTable | None = None,
) -> ExitCode:
    """Explain every planned input; write the reports; return the exit code (README.md)."""
    if not the_plan.discovered and not the_plan.skipped:
        messages.error("no inputs to explain")
        return ExitCode.INPUTS_FAILED
    check_writable(outputs.out_dir)
    report = new_report(session, settings, targets, the_plan.shard)
    report.skipped = [{"input": p, "reason": r} for p, r in the_plan.skipped]
    for path, reason in the_plan.skipped[:5]:
        messages.warn(f"skipped {path}: {reason}")
    if len(the_plan.skipped) > 5:
        more = len(the_plan.skipped) - 5
        messages.warn(f"skipped {more} more file(s) that are not inputs (listed in report.json)")

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

    def warn(message: str) -> None:
        if message.startswith("error: "):
            messages.error(message[len("error: ") :])
        else:
            messages.warn(message)

    targets_for = targets_from.for_item if targets_from is not None else None
    batch = BatchRun(session, settings, targets, outputs, report, emit, warn, targets_for)
    start = time.perf_counter()
    interrupted = False
    try:
        execute(batch, the_plan.items, messages)
        batch.finish()
    except KeyboardInterrupt:
        interrupted = True
        batch.close()  # inputs already explained are still written whole
    if targets_from is not None and targets_from.unused():
        unused = targets_from.unused()
        more = " ..." if len(unused) > 5 else ""
        messages.warn(
            f"{targets_from.path}: {len(unused)} row(s) name no input of this run: "
            f"{', '.join(unused[:5])}{more}"
        )
    failing = batch.apply_gate()
    report.settings["wall_time_s"] = round(time.perf_counter() - start, 3)
    report.settings["model_time_s"] = round(session.model_seconds, 3)
    runner = session.runner
    report.settings["batch_size"] = runner.tuner.next_size() if runner.tuner else runner.batch_size
    report.settings["batch_size_cap"] = runner.batch_size  # what the memory budget allows
    report.settings["memory_per_row"] = session.memory_per_row
    report.write(outputs.out_dir)
    messages.print_summary(report)
    messages.info(
        f"outputs in {outputs.out_dir}/ (report.html, report.json, report.md, report.csv)"
    )
    if interrupted:
        messages.info("interrupted: finished inputs are saved; run again with --skip-existing")
        return ExitCode.INTERRUPTED
    if report.failures:
        messages.error(f"{len(report.failures)} input(s) failed; see {outputs.out_dir}/report.json")
        return ExitCode.INPUTS_FAILED
    if not report.results and not the_plan.discovered:
        messages.error("no inputs to explain")
        return ExitCode.INPUTS_FAILED
    if failing:
        limit = outputs.max_completeness_error
        more = " ..." if len(failing) > 10 else ""
        messages.error(f"completeness error over {limit} for: {', '.join(failing[:10])}{more}")
        return ExitCode.COMPLETENESS
    return ExitCode.OK
