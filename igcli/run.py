"""`igcli explain` end to end, as three steps another program can call (the CLI does):

    from igcli.run import plan, start, execute, finish

    the_plan = plan(discover(["photos/"], recursive=True), shard="auto/4")  # names, shard
    batch = start(session, the_plan, settings=settings, outputs=outputs)    # one per process
    execute(batch, the_plan.items)          # any number of times: a batch of inputs each
    code = finish(batch, the_plan)          # reports, completeness gate, the exit code

`plan` decides what a run explains and how each output is named (from a walk of the inputs
or from a manifest, so every shard agrees); `execute` explains inputs on one model session
and may be called for batch after batch (a long-lived worker keeps one BatchRun);
`finish` writes report.json/csv/md/html (`report.shard-K-of-N.*` for a shard) and returns
the documented exit code. `run_explain` is the three in a row, with Ctrl-C handled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from igcli import methods
from igcli.batch import BatchRun, Discovery, InputItem, OutputSettings
from igcli.console import Messages
from igcli.discovery import Shard, TargetTable, count_inputs, in_shard, parse_shard
from igcli.errors import ExitCode, OutputError, UsageError
from igcli.files import os_reason
from igcli.launch import STOPS
from igcli.report import RunReport, check_reports_replaceable
from igcli.session import AttributionSettings, Session


@dataclass
class Plan:
    """What a run will explain: the items of this shard, and what discovery skipped."""

    items: list[InputItem]
    skipped: list[tuple[str, str]]
    discovered: int  # inputs found before sharding (an empty shard of many is no error)
    shard: Shard | None = None
    digest: str = ""  # of every input's path and name: shards of one run agree on it
    manifest: dict | None = None  # {"path", "sha256"} when the plan came from a manifest
    first: list[InputItem] = field(default_factory=list)  # the whole plan's first inputs

    @property
    def report_stem(self) -> str:
        """Shards sharing one --out name their reports apart: report.shard-K-of-N.json."""
        return f"report.{self.shard.tag}" if self.shard else "report"

    def describe(self) -> dict:
        """The plan as a report's settings say it (merge-reports compares shards by it)."""
        return {"inputs": self.discovered, "sha256": self.digest, "manifest": self.manifest}


def plan(found: Discovery, shard: str | Shard | None = None, manifest=None) -> Plan:
    """This shard's share of `found` (every input when `shard` is None). `shard` is "K/N",
    "auto/N" (K from the environment: see discovery.parse_shard) or a Shard; `manifest` the
    manifest.Manifest `found` was read from, if any."""
    spec = shard if isinstance(shard, Shard) or shard is None else parse_shard(shard)
    digest = hashlib.sha256()
    for item in found.items:
        digest.update(json.dumps([str(item.path), item.name]).encode("utf-8", "surrogateescape"))
    items = [item for item in found.items if in_shard(item.name, spec)]
    described = {"path": manifest.source, "sha256": manifest.sha256} if manifest else None
    first = [item for item in found.items[:8] if not item.problem]
    return Plan(
        items, found.skipped, len(found.items), spec, digest.hexdigest()[:16], described, first
    )


def new_report(session: Session, settings: AttributionSettings, targets, shard) -> RunReport:
    """A report whose settings say how every result in it was made."""
    described = {
        "targets": targets,
        "output": session.output_name,
        "softmax": session.softmax,
        "dequantize": session.dequantize,
        "input_name": session.input_spec.name,
        "at": session.at,  # None: attributed at the input itself
        "aggregate": session.aggregate if session.at else None,
        "tokenizer": str(session.tokens.tokenizer_path)
        if session.tokens and session.tokens.tokenizer_path
        else None,
        "steps": settings.steps,
        "method": settings.method,
        # (an array's name, "array": the object stopped report.json being written)
        "baseline": str(settings.baseline) if settings.baseline is not None else None,
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
        "shard": str(shard) if shard else None,
    }
    return RunReport(str(session.model_path), session.sha256, described)


class _StdoutLines:
    """The JSON lines on stdout. A closed pipe (`| head`) stops them, not the run. So does a
    stdout that cannot be written (a full disk, a closed descriptor), and `failed` says why:
    the run ends with exit 6, its results all in report.json."""

    def __init__(self) -> None:
        self.open = True
        self.failed: str | None = None

    def __call__(self, line: str) -> None:
        if not self.open:
            return
        try:
            if sys.stdout is None:  # started with stdout closed
                raise OSError("stdout is closed")
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            self.open = False
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError) as exc:  # ValueError: written after being closed
            self.open = False
            self.failed = os_reason(exc) if isinstance(exc, OSError) else str(exc)


def start(
    session: Session,
    the_plan: Plan,
    *,
    settings: AttributionSettings,
    outputs: OutputSettings,
    targets: list[int] | None = None,
    messages: Messages | None = None,
    targets_from: TargetTable | None = None,
    emit=None,
) -> BatchRun:
    """The BatchRun that explains this plan's inputs: output folder checked, report begun
    (settings, skipped files), the gradient graph self-checked at the plan's first input."""
    from igcli.outputs import check_writable, lock_folder, lock_reports
    from igcli.storage import check_writable as check_remote
    from igcli.storage import is_url, location

    messages = messages or Messages()
    outputs.out_dir = location(outputs.out_dir)
    lock = folder = None
    if is_url(str(outputs.out_dir)):
        check_remote(str(outputs.out_dir))
    else:
        check_writable(outputs.out_dir)
        group = f"shards-of-{the_plan.shard.n}" if the_plan.shard else "all"
        fd = lock_folder(outputs.out_dir, group)
        folder = (outputs.out_dir, group, fd) if fd is not None else None
        try:
            fd = lock_reports(outputs.out_dir, the_plan.report_stem)
        except BaseException:
            _unlock(None, folder)
            raise
        lock = (outputs.out_dir, the_plan.report_stem, fd) if fd is not None else None
    try:
        batch = _begin(session, the_plan, settings, outputs, targets, messages, targets_from, emit)
    except BaseException:
        _unlock(lock, folder)
        raise
    batch.reports_lock = lock  # held until finish() has written the reports
    batch.folder_lock = folder
    if not is_url(str(outputs.out_dir)):
        batch.out_identity = _identity(outputs.out_dir)
    return batch


def _identity(folder: Path) -> tuple[int, int] | None:
    """A folder's (device, inode), None where it is gone: see _write_up."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _unlock(reports: tuple | None, folder: tuple | None) -> None:
    from igcli.outputs import unlock_folder, unlock_reports

    if reports is not None:
        unlock_reports(*reports)
    if folder is not None:
        unlock_folder(*folder)


def _begin(session, the_plan, settings, outputs, targets, messages, targets_from, emit):
    """start's work once the output folder is checked and its reports are ours."""
    from igcli.storage import is_url

    if not is_url(str(outputs.out_dir)):
        check_reports_replaceable(outputs.out_dir, the_plan.report_stem)
    report = new_report(session, settings, targets, the_plan.shard)
    report.settings["plan"] = the_plan.describe()
    if the_plan.shard and the_plan.shard.source:
        report.settings["shard_source"] = the_plan.shard.source
    report.skipped = [{"input": p, "reason": r} for p, r in the_plan.skipped]
    for path, reason in the_plan.skipped[:5]:
        messages.warn(f"skipped {path}: {reason}")
    if len(the_plan.skipped) > 5:
        more = len(the_plan.skipped) - 5
        messages.warn(f"skipped {more} more file(s) that are not inputs (listed in report.json)")

    def warn(message: str) -> None:
        if message.startswith("error: "):
            messages.error(message[len("error: ") :])
        else:
            messages.warn(message)

    targets_for = targets_from.for_item if targets_from is not None else None
    if targets is None and targets_for is None:
        note = session.default_target_note()
        if note:
            messages.warn(note)
    batch = BatchRun(
        session, settings, targets, outputs, report, emit or _StdoutLines(), warn, targets_for
    )
    batch.check_gradients_at(the_plan.first)
    # the self-check may have rejected the graph: the report's settings say what is used
    report.settings["gradient_source"] = session.gradient_source
    return batch


def execute(batch: BatchRun, items: list[InputItem], messages: Messages | None = None) -> None:
    """Explain every item, a group of inputs per model call where they fit; CSV rows count
    as inputs of their own. May be called again with more items on the same batch."""
    messages = messages or Messages(quiet=True)
    batch.protect(items)
    with messages.progress(count_inputs(items)) as progress:
        k = 0
        while k < len(items):
            group = items[k : k + batch.group_size()]  # rows per call are known after the first
            batch.process(group, progress.advance)
            k += len(group)


def finish(
    batch: BatchRun,
    the_plan: Plan,
    messages: Messages | None = None,
    *,
    targets_from: TargetTable | None = None,
    interrupted: bool = False,
    started: float | None = None,
    prepare_s: float | None = None,
) -> ExitCode:
    """Wait for the writes, write the reports, apply the completeness gate and return the
    exit code (docs/reference.md). `interrupted`: the run was stopped (exit 130);
    `started`: time.perf_counter() when it began, for the report's wall time; `prepare_s`:
    what making the session and checking its gradients took before that. Signals
    wait until this is done (signals_held). One that comes while a run whose every input
    was done writes up does not make it interrupted: it exited 130 with "run again with
    --skip-existing" while report.json said interrupted: false, and hid an exit 4 or 5."""
    messages = messages or Messages()
    with signals_held() as held:
        try:
            try:
                names = _write_up(
                    batch, the_plan, messages, targets_from, started, interrupted, prepare_s
                )
            except OutputError as exc:  # (a write still queued met a full disk, say)
                raise _withdrawn(batch, the_plan, exc) from None
            if held.caught and not interrupted:
                messages.info("interrupted after every input was done: the run is complete")
            return _verdict(batch, the_plan, messages, names, interrupted)
        finally:
            batch.release_reports()


def _withdrawn(batch: BatchRun, the_plan: Plan, exc: OutputError) -> OutputError:
    """The output error that stopped a run, once an earlier run's reports that no longer
    describe OUT are removed (see BatchRun.withdraw_reports), saying so."""
    removed = batch.withdraw_reports(the_plan.report_stem)
    if not removed:
        return exc
    mine = [name for name, own in removed if own]
    theirs = [name for name, own in removed if not own]
    said = []  # (a fresh --out that filled up as this run wrote its reports was told of an
    if theirs:  # earlier run's)
        said.append(f"the earlier run's {', '.join(theirs)} no longer described the results")
    if mine:
        said.append(f"this run's {', '.join(mine)}, written before the disk filled, were not whole")
    return OutputError(
        f"{exc.reason}; {' and '.join(said)}; they were removed: make room, then run again "
        "with --skip-existing",
        exc.path,
    )


def _verdict(batch, the_plan, messages, names: list[str], interrupted: bool) -> ExitCode:
    """The summary, where the outputs are, and the exit code."""
    report, outputs = batch.report, batch.outputs
    messages.print_summary(report)
    unresolved = report.unresolved(steps_help=not batch.session.looks_piecewise)
    if unresolved:
        messages.warn(unresolved)
    out = str(outputs.out_dir).rstrip("/")
    messages.info(f"outputs in {out}/ ({', '.join(names[::-1])})")
    if interrupted:
        messages.info("interrupted: finished inputs are saved; run again with --skip-existing")
        return ExitCode.INTERRUPTED
    if not report.failures and not report.results and not the_plan.discovered:
        messages.error("no inputs to explain")
        return ExitCode.INPUTS_FAILED
    code, problems = report.verdict(f"{out}/{names[0]}", listed=0)  # failures said already
    for line in problems:
        messages.error(line)
    failed = getattr(batch.emit, "failed", None)
    if failed:
        messages.error(f"stdout: the JSON lines stopped ({failed}); report.json holds every result")
        code = code or ExitCode.OUTPUT
    return code


class _Held:
    caught = False


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM are noted, not acted on, while a run writes up: the finished
    inputs' files, their heatmaps on the shared colour scale and the four reports are then
    all written (a second Ctrl-C left report.json new and the others of the run before, and
    shared-scale heatmaps that the records named were never drawn). `caught` says whether
    one came; the run then ends as it would have (see finish)."""
    held = _Held()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def note(signum, frame):
        held.caught = True

    before = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, *STOPS)}
    try:
        yield held
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _write_up(
    batch, the_plan, messages, targets_from, started, interrupted, prepare_s=None
) -> list[str]:
    """Wait for the writes, draw the shared-scale heatmaps (of the finished inputs, when
    interrupted too), write the reports; returns the reports' names."""
    session, report, outputs = batch.session, batch.report, batch.outputs
    batch.finish()
    # --out removed or moved mid-run: the writes made it again (or wrote into the moved
    # one), and a report naming files that were not there said exit 0
    if batch.out_identity is not None and _identity(outputs.out_dir) != batch.out_identity:
        raise OutputError(
            "the output folder was removed or moved during the run, so outputs of this run "
            "may be missing from it; run again",
            outputs.out_dir,
        )
    if targets_from is not None and targets_from.unused():
        unused = targets_from.unused()
        more = " ..." if len(unused) > 5 else ""
        messages.warn(
            f"{targets_from.path}: {len(unused)} row(s) name no input of this run: "
            f"{', '.join(unused[:5])}{more}"
        )
    batch.apply_gate()
    if started is not None:
        report.settings["wall_time_s"] = round(time.perf_counter() - started, 3)
    if prepare_s is not None:  # (a first run's gradient graph: Sequencer2D's took 113 s)
        report.settings["prepare_time_s"] = round(prepare_s, 3)
    report.settings.setdefault("model_time_s", round(session.model_seconds, 3))
    if batch.workers is None:  # a Dask run's workers measured these (see distributed.py)
        runner = session.runner
        tuned = runner.tuner.next_size() if runner.tuner else runner.batch_size
        report.settings["batch_size"] = tuned
        report.settings["batch_size_cap"] = runner.batch_size  # what the memory budget allows
        report.settings["memory_per_row"] = session.memory_per_row
    batch.check_report_names(the_plan.report_stem)
    report.interrupted = interrupted
    names = report.write(outputs.out_dir, the_plan.report_stem, staging=batch.local_out)
    if not interrupted:
        batch.remove_write_leftovers()
    batch.cleanup()
    return names


def run_explain(
    session: Session,
    the_plan: Plan,
    *,
    settings: AttributionSettings,
    targets: list[int] | None,
    outputs: OutputSettings,
    messages: Messages,
    targets_from: TargetTable | None = None,
    dask: str | None = None,
    workers: str | int | None = 1,
    session_factory=None,
    made: float | None = None,
) -> ExitCode:
    """Explain every planned input; write the reports; return the exit code (README.md).
    `dask`: a scheduler address or "local:N" to spread the inputs over Dask workers, each
    building its own session with `session_factory` (a functools.partial of Session);
    `workers`: local worker processes, a number or "auto" (see pool.choose_workers);
    `made`: time.perf_counter() before `session` was made, for the report's prepare time."""
    if not the_plan.discovered and not the_plan.skipped:
        messages.error("no inputs to explain")
        return ExitCode.INPUTS_FAILED
    if the_plan.shard and the_plan.shard.source:
        messages.info(f"shard {the_plan.shard} (from {the_plan.shard.source})")
    if the_plan.shard and the_plan.shard.n > 1 and outputs.shared_scale and outputs.heatmaps:
        messages.warn(
            f"--scale shared with --shard {the_plan.shard}: this shard's heatmaps share one "
            "colour scale, not the whole run's (merge-reports does not draw them again); "
            "one process, or --dask, shares it over every input"
        )
    processes = 1
    if dask is None and session_factory is not None:
        from igcli.pool import choose_workers

        processes = choose_workers(workers, session, the_plan.items, messages.warn)
    elif dask is not None and workers not in (None, "auto", 1, "1"):
        raise UsageError("--workers and --dask both spread the inputs: give one of them")
    batch = start(
        session,
        the_plan,
        settings=settings,
        outputs=outputs,
        targets=targets,
        messages=messages,
        targets_from=targets_from,
    )
    begun = time.perf_counter()
    interrupted = False
    try:
        if processes > 1:
            from igcli.pool import execute_on_processes

            batch.protect(the_plan.items)  # for the reports; each worker checks its chunk
            execute_on_processes(batch, the_plan, processes, messages, targets_from,
                                 session_factory)  # fmt: skip
        elif dask is not None:
            from igcli.distributed import execute_on_dask

            batch.protect(the_plan.items)  # for the reports; each worker checks its chunk
            execute_on_dask(batch, the_plan, dask, messages, targets_from, session_factory)
        else:
            execute(batch, the_plan.items, messages)
    except KeyboardInterrupt:
        interrupted = True
    except OutputError as exc:
        try:
            raise _withdrawn(batch, the_plan, exc) from None
        finally:
            batch.release_reports()
    except BaseException:
        batch.release_reports()
        raise
    return finish(
        batch,
        the_plan,
        messages,
        targets_from=targets_from,
        interrupted=interrupted,
        started=begun,
        prepare_s=None if made is None else begun - made,
    )
