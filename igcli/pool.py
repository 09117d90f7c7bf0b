"""`igcli explain ... --workers N`: a folder's inputs in chunks on N local worker processes.

Why processes: a small model's calls are short, and between them one process spends its time
in Python (reading inputs, adaptive steps' bookkeeping, drawing heatmaps) under one lock,
while its model calls already use every core. Two single-threaded shards of the 1,000-image
digits folder finished in 6.3 s where one process took 7.6 (`--steps auto`); N processes
with one thread each use the cores fully. Large models gain nothing (each call already fills
the cores) and would hold N copies of their weights: `auto` keeps them in this process.

Each worker builds its own Session from the same options (from the cache the first run
filled, so in a fraction of a second), explains whole chunks of consecutive inputs and writes
their outputs, as a Dask worker does (distributed.py: the same chunks, results and report
order). The client puts each chunk's records into the report in input order as they come.
Ctrl-C stops the workers at once; what they finished is on disk and goes into the report,
and --skip-existing picks up the rest. A worker that dies (killed for memory, say) leaves its
inputs to this process, which explains what is left.
"""

from __future__ import annotations

import math
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from igcli.batch import BatchRun, InputItem
from igcli.console import Messages
from igcli.distributed import ChunkResult, WorkerJob, chunks
from igcli.distributed import _accept as accept
from igcli.distributed import _take_from_disk as take_from_disk
from igcli.errors import IgcliError, UsageError
from igcli.memory import default_budget
from igcli.model import usable_cpus, weight_bytes
from igcli.report import RunReport

AUTO_MIN_INPUTS = 64  # fewer finish before the workers would have started
# Larger models, or larger samples, fill the cores within each call already: a MobileNetV2
# at 112x112 (8.9 MB, 37,632 values a sample) ran 14% slower on two processes than on one.
AUTO_MAX_WEIGHTS = 32 * 2**20
AUTO_MAX_VALUES = 16_384  # values per sample where the path moves (a 28x28 digit: 784)


def choose_workers(requested: str | int | None, session, items: list[InputItem]) -> int:
    """How many worker processes: `requested` as given (a number, or "auto"/None). auto
    is one per usable CPU for a small CPU model with small samples and enough inputs, else 1
    (this process)."""
    if requested not in (None, "auto"):
        try:
            workers = int(requested)
        except (TypeError, ValueError):
            raise UsageError(f"--workers {requested!r}: give a number or auto") from None
        if workers < 1:
            raise UsageError("--workers must be at least 1")
        return min(workers, max(1, len(items)))
    cpus = usable_cpus()
    if cpus < 2 or len(items) < max(AUTO_MIN_INPUTS, 2 * cpus):
        return 1
    if session.providers[:1] != ["CPUExecutionProvider"]:
        return 1  # (one GPU is not shared better by processes)
    if weight_bytes(session.model) > AUTO_MAX_WEIGHTS:
        return 1
    dims = session.ig_shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in dims) or math.prod(dims) > AUTO_MAX_VALUES:
        return 1  # (an open dim: the size of a sample is not known)
    return cpus


# -- in each worker process ---------------------------------------------------------------------
_job: WorkerJob | None = None
_batch: BatchRun | None = None
_warnings: list[str] = []


def _start(job: WorkerJob) -> None:
    """Worker start: Ctrl-C is the client's to handle (each worker printed a traceback)."""
    global _job
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _job = job


def _worker_batch() -> BatchRun:
    global _batch
    if _batch is None:
        from igcli.session import Session

        job = _job
        session = Session(*job.session_args, **job.session_options, warn=_warnings.append)
        report = RunReport(str(session.model_path), session.sha256, {})
        targets_for = job.targets_from.for_item if job.targets_from is not None else None
        batch = BatchRun(
            session, job.settings, job.targets, job.outputs, report,
            lambda line: None, _warnings.append, targets_for,
        )  # fmt: skip
        batch.check_gradients_at(job.first)
        _batch = batch
    return _batch


def take_chunk(
    batch: BatchRun, job: WorkerJob, index: int, items: list[InputItem], warnings: list[str]
) -> ChunkResult:
    """Explain `items` with a worker's BatchRun; the chunk's records, failures and what the
    client needs of them, its outputs written whole."""
    session = batch.session
    before = session.model_seconds
    report = RunReport(batch.report.model, batch.report.model_sha256, {})
    batch.report = report
    count = [0]
    batch.protect(items)  # no output replaces an input (the client checks the reports)
    k = 0
    while k < len(items):
        group = items[k : k + batch.group_size()]
        batch.process(group, lambda n: count.__setitem__(0, count[0] + n))
        k += len(group)
    batch.drain()  # a returned chunk is a written chunk
    deferred, batch.deferred = batch.deferred, []
    table = job.targets_from
    return ChunkResult(
        index=index,
        inputs=count[0],
        records=list(report.results),
        failures=list(report.failures),
        resumed=report.resumed,
        warnings=warnings,
        deferred=deferred,
        targets_used=set(table.used) if table is not None else set(),
        measured={
            "batch_size": session.runner.batch_size,
            "memory_per_row": session.memory_per_row,
        },
        model_seconds=session.model_seconds - before,
    )


def _explain_chunk(index: int, items: list[InputItem]) -> ChunkResult:
    """Explain `items` in this worker; outputs written whole before the result returns.
    igcli's own errors come back in the result, to be said once by the client."""
    del _warnings[:]
    try:
        batch = _worker_batch()
        result = take_chunk(batch, _job, index, items, [])
        result.warnings = list(_warnings)
        return result
    except IgcliError as exc:
        return ChunkResult(index=index, inputs=0, error=exc)


# -- in the client --------------------------------------------------------------------------------
def execute_on_processes(
    batch: BatchRun,
    the_plan,
    workers: int,
    messages: Messages,
    targets_from=None,
    session_factory=None,
) -> None:
    """The plan's inputs on `workers` local processes; their records go into `batch`'s
    report in input order (and --json lines with them)."""
    from igcli.discovery import count_inputs
    from igcli.run import execute

    options = {k: v for k, v in session_factory.keywords.items() if k != "warn"}
    total = options.get("threads") or usable_cpus()
    options["threads"] = max(1, total // workers)  # the cores shared, not each taken whole
    budget = options.get("memory_limit") or default_budget()
    options["memory_limit"] = max(1, budget // workers)  # and the memory budget too
    job = WorkerJob(
        session_args=tuple(session_factory.args),
        session_options=options,
        settings=batch.settings,
        targets=batch.targets,
        outputs=batch.outputs,
        settings_hash=batch.settings_hash,
        first=the_plan.first,
        targets_from=targets_from,
    )
    parts = chunks(the_plan.items, workers)
    import multiprocessing

    # spawn: fork copies a parent whose ONNX Runtime and writer threads exist (unsafe), and a
    # forkserver outlives the run for a moment (a CI job saw a process left behind)
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
        initargs=(job,),
    )  # fmt: skip
    futures: dict[Future, int] = {pool.submit(_explain_chunk, i, p): i for i, p in enumerate(parts)}
    ready: dict[int, ChunkResult] = {}
    following, said, seconds = 0, set(), 0.0
    left: list[int] = []  # chunks a dead worker took with it: explained here

    def take(done: ChunkResult) -> None:
        nonlocal seconds
        seconds += done.model_seconds
        for message in done.warnings:
            if message.startswith("error: ") or message not in said:
                said.add(message)
                batch.warn(message)
        accept(batch, done, targets_from)

    interrupted = False
    try:
        with messages.progress(count_inputs(the_plan.items)) as progress:
            try:
                for future in as_completed(futures):
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        left = sorted(i for f, i in futures.items() if not _succeeded(f))
                        break
                    if result.error is not None:
                        raise result.error
                    progress.advance(result.inputs)
                    ready[result.index] = result
                    while following in ready:  # the report stays in input order
                        take(ready.pop(following))
                        following += 1
            except KeyboardInterrupt:
                interrupted = True
    finally:
        _stop(pool)
    batch.report.settings["model_time_s"] = round(seconds, 3)
    batch.report.settings["workers"] = {"processes": workers, "chunks": len(parts)}
    if interrupted:  # the workers are gone: what they finished is on disk
        for k in range(following, len(parts)):
            if k in ready:
                take(ready.pop(k))
            else:
                take_from_disk(batch, parts[k])
        raise KeyboardInterrupt
    if left:
        batch.warn(
            "a worker process ended unexpectedly (out of memory?); the inputs it had not "
            "finished are explained in this process"
        )
        for k in range(following, len(parts)):
            if k in ready:
                take(ready.pop(k))
            else:
                execute(batch, parts[k], messages)


def _succeeded(future: Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now: on Ctrl-C or an error they
    would otherwise finish their chunks first."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        process.join(timeout=10)
