"""A run's inputs in chunks on other processes: what Dask workers (distributed.py) and local
worker processes (pool.py) share.

The plan is cut into chunks of consecutive inputs; each worker builds its own Session and
BatchRun from the run's options once (`worker_batch`), explains whole chunks with it and
writes their outputs (`explain_chunk`); the client takes each chunk's records into the
report in input order as chunks come back (`InOrder`), and after Ctrl-C takes from disk
what the workers of an unfinished chunk had written (`take_from_disk`).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from igcli.batch import BatchRun, InputItem, OutputSettings
from igcli.errors import IgcliError, UsageError
from igcli.report import RunReport
from igcli.session import AttributionSettings

CHUNKS_PER_WORKER = 4  # enough to balance uneven inputs and to lose little with a worker
MAX_CHUNK = 256  # inputs (CSV rows) per chunk at most
MIN_TAPERED = 16  # and at least, tapered (a model call's rows: fewer take longer per input)


@dataclass
class WorkerJob:
    """What every worker needs to explain chunks of one run."""

    session_args: tuple
    session_options: dict
    settings: AttributionSettings
    targets: list[int] | None
    outputs: OutputSettings
    settings_hash: str
    first: list[InputItem]  # the plan's first inputs: where the gradient graph is checked
    targets_from: object | None = None  # a discovery.TargetTable


@dataclass
class ChunkResult:
    index: int
    inputs: int
    records: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    failures_at: list[int] = field(default_factory=list)  # records of the chunk before each
    resumed: int = 0
    warnings: list[str] = field(default_factory=list)
    deferred: list = field(default_factory=list)
    targets_used: set[str] = field(default_factory=set)
    measured: dict = field(default_factory=dict)
    model_seconds: float = 0.0
    error: IgcliError | None = None  # raised by the client: Dask logged a raised one whole


def job_for(batch: BatchRun, the_plan, session_factory, targets_from=None) -> WorkerJob:
    """The job of a run whose session `session_factory` (a functools.partial of Session)
    made: workers make theirs from the same options."""
    options = {k: v for k, v in session_factory.keywords.items() if k != "warn"}
    return WorkerJob(
        session_args=tuple(session_factory.args),
        session_options=options,
        settings=batch.settings,
        targets=batch.targets,
        outputs=batch.outputs,
        settings_hash=batch.settings_hash,
        first=the_plan.first,
        targets_from=targets_from,
    )


def chunks(items: list[InputItem], workers: int, tapered: bool = False) -> list[list[InputItem]]:
    """Consecutive runs of inputs of about equal work (a CSV weighs its rows), a few per
    worker so that fast workers take more and a lost worker costs little. `tapered`: each
    chunk a share of the work still left (1 / (2 x workers)), down to MIN_TAPERED, so that
    workers that start at different times still end within a small chunk of each other."""
    from igcli.discovery import count_inputs

    weights = [count_inputs([item]) if item.is_table else 1 for item in items]
    left = sum(weights)
    even = max(1, min(MAX_CHUNK, math.ceil(left / max(1, workers * CHUNKS_PER_WORKER))))

    least = min(MIN_TAPERED, even)  # (a few inputs still make a few chunks)

    def target() -> int:
        if not tapered:
            return even
        return max(least, min(MAX_CHUNK, math.ceil(left / (2 * max(1, workers)))))

    out: list[list[InputItem]] = []
    current: list[InputItem] = []
    load, size = 0, target()
    for item, weight in zip(items, weights, strict=True):
        if current and load + weight > size:
            out.append(current)
            current, load, size = [], 0, target()
        current.append(item)
        load += weight
        left -= weight
    if current:
        out.append(current)
    return out


def one_per_cpu(
    workers: int, cpus: int, said: str, warn: Callable[[str], None] | None, unit: str = ""
) -> int:
    """At most one local worker process per CPU this process may use (`cpus`; `warn` told
    when fewer, `said` naming the option): each holds a model session (some 100 MB) and
    divides --threads with the others, so more only wait for one another (--dask local:32
    on 2 CPUs took 34 s for 12 images; --workers 40 on 40 inputs took 4.2 GB)."""
    if workers <= cpus:
        return workers
    if warn is not None:
        warn(
            f"{said}: starting {cpus}{unit}, one per CPU this process may use ({workers} "
            "would only wait for one another)"
        )
    return cpus


@contextlib.contextmanager
def sigint_ignored_by_children():
    """SIGINT ignored while local workers start, which keep it ignored (across exec, and
    Python then installs no KeyboardInterrupt of its own): Ctrl-C reaches the whole process
    group, and each worker printed its tracebacks (a pool's too, in the second its imports
    take before its initializer ran). The client stops them itself. (A Ctrl-C while they
    start is lost: an ignored signal is not kept pending.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


# -- in a worker ----------------------------------------------------------------------------------
def worker_batch(job: WorkerJob, warn: Callable[[str], None]) -> BatchRun:
    """A worker's Session and BatchRun, made from the run's options and self-checked at the
    plan's first input, as the client's was."""
    from igcli.session import Session

    session = Session(*job.session_args, **job.session_options, warn=warn)
    report = RunReport(str(session.model_path), session.sha256, {})
    targets_for = job.targets_from.for_item if job.targets_from is not None else None
    batch = BatchRun(
        session, job.settings, job.targets, job.outputs, report, lambda line: None, warn,
        targets_for,
    )  # fmt: skip
    if batch.settings_hash != job.settings_hash:
        raise UsageError(
            "a worker sees another model or options than the client "
            f"({batch.settings_hash} != {job.settings_hash}): do the workers read the same files?"
        )
    batch.check_gradients_at(job.first)
    return batch


def explain_chunk(
    batch: BatchRun,
    job: WorkerJob,
    index: int,
    items: list[InputItem],
    warnings: list[str],
    between: Callable[[], None] | None = None,
) -> ChunkResult:
    """Explain `items` with a worker's BatchRun, outputs written whole before it returns;
    the chunk's records and failures, and what the client needs of them. `between` is
    called after each group of inputs (the client, explaining a chunk itself, takes in its
    workers' chunks there)."""
    session = batch.session
    before = session.model_seconds
    report = RunReport(batch.report.model, batch.report.model_sha256, {})
    report.failures = _Placed(report.results)
    batch.report = report
    count = [0]
    batch.protect(items)  # no output replaces an input (the client checks the reports)
    k = 0
    while k < len(items):
        group = items[k : k + batch.group_size()]
        batch.process(group, lambda n: count.__setitem__(0, count[0] + n))
        k += len(group)
        if between is not None:
            between()
    batch.drain()  # a returned chunk is a written chunk
    deferred, batch.deferred = batch.deferred, []
    table = job.targets_from
    return ChunkResult(
        index=index,
        inputs=count[0],
        records=list(report.results),
        failures=list(report.failures),
        failures_at=list(report.failures.at),
        resumed=report.resumed,
        warnings=list(warnings),
        deferred=deferred,
        targets_used=set(table.used) if table is not None else set(),
        measured=_measured(session),
        model_seconds=session.model_seconds - before,
    )


class _Placed(list):
    """A chunk's failures, each with how many of its records came before it: the client
    says them between those records, in input order (they came after the chunk's records,
    so --json lines differed from a one-process run's)."""

    def __init__(self, results) -> None:
        super().__init__()
        self.results, self.at = results, []

    def append(self, entry: dict) -> None:
        self.at.append(len(self.results))
        super().append(entry)


def _measured(session) -> dict:
    """What a worker's session measured, named as a one-process run's report names it: the
    report said the memory cap as `batch_size` (512 where calls took 16 rows) and had no
    `batch_size_cap`, and the client's `memory_budget` where each worker had its share."""
    runner = session.runner
    return {
        "batch_size": runner.tuner.next_size() if runner.tuner else runner.batch_size,
        "batch_size_cap": runner.batch_size,
        "memory_budget": session.memory_budget,
        "memory_per_row": session.memory_per_row,
    }


# -- in the client --------------------------------------------------------------------------------
class InOrder:
    """Chunk results into the report in input order as they come back (--json lines with
    them), each worker warning said once, the workers' model time added up."""

    def __init__(self, batch: BatchRun, targets_from=None) -> None:
        self.batch, self.targets_from = batch, targets_from
        self.ready: dict[int, ChunkResult] = {}
        self.following = 0
        self.said: set[str] = set()
        self.seconds = 0.0

    def add(self, result: ChunkResult) -> None:
        """A chunk's result; those that now follow in input order go into the report. Each
        goes in whole, Ctrl-C or not: cut short, it went in again from disk after Ctrl-C
        (take_from_disk), and 116 inputs stood twice in the report."""
        from igcli.run import signals_held

        if result.error is not None:
            raise result.error
        self.ready[result.index] = result
        while self.following in self.ready:
            with signals_held() as held:
                self._take(self.ready.pop(self.following))
                self.following += 1
            if held.caught:
                raise KeyboardInterrupt

    def rest(self, parts: list[list[InputItem]], missing: Callable[[list[InputItem]], None]):
        """After the workers stopped: the chunks that came back, in order, and `missing` for
        each of the others."""
        for k in range(self.following, len(parts)):
            if k in self.ready:
                self._take(self.ready.pop(k))
            else:
                missing(parts[k])
        self.following = len(parts)

    def _take(self, done: ChunkResult) -> None:
        batch = self.batch
        self.seconds += done.model_seconds
        for message in done.warnings:
            if message.startswith("error: ") or message not in self.said:
                self.said.add(message)
                batch.warn(message)
        batch.report.resumed += done.resumed
        records, taken = done.records, 0
        places = done.failures_at or [len(records)] * len(done.failures)
        for entry, at in zip(done.failures, places, strict=True):
            batch._accept(records[taken:at])
            taken = max(taken, at)
            batch.report.failures.append(entry)
            batch._say(entry)
        batch._accept(records[taken:])
        batch.deferred.extend(done.deferred)
        if self.targets_from is not None:
            self.targets_from.used |= done.targets_used
        batch.workers = dict(done.measured)
        batch.report.settings.update(done.measured)


def take_from_disk(batch: BatchRun, items: list) -> None:
    """The records of a chunk cut short by Ctrl-C, as its worker left them: each input (or
    CSV row) whose files are whole, with this run's settings (after Ctrl-C the report left
    out inputs that finished on the workers, 1221 of them in a sweep)."""
    from igcli.batch import existing_records
    from igcli.discovery import count_table_rows

    if batch.remote is not None:
        return  # (object storage: the resume lists it, as --skip-existing does)
    for item in items:
        names = [item.name]
        if item.is_table:
            rows = item.rows if item.rows is not None else count_table_rows(item.path)
            names = [f"{item.name}_row{k}" for k in range(max(rows, 0))]
        for name in names:
            records = existing_records(
                batch.local_out, InputItem(item.path, name), batch.settings_hash
            )
            if records is not None:
                batch._redraw_with_the_run(records)
                batch._accept(records)
