"""`igcli explain ... --workers N`: a folder's inputs in chunks on N local worker processes.

Why processes: a small model's calls are short, and between them one process spends its time
in Python (reading inputs, adaptive steps' bookkeeping, drawing heatmaps) under one lock,
while its model calls already use every core. On 2 cores the 1,000-image digits folder took
5.7 s on two processes where one took 7.1 (`--steps auto`; 8.5 and 11.3 s at 50 steps,
medians of interleaved runs). Large models gain nothing
(each call already fills the cores) and would hold N copies of their weights: `auto` keeps
them in this process, and runs of fewer inputs than starting workers pays back.

The client is one of the N processes: it starts N - 1 workers and explains chunks itself
while they start. Each worker builds its own Session from the same options (from the cache
the first run filled, so in a fraction of a second), explains whole chunks of consecutive
inputs and writes their outputs, as a Dask worker does (chunks.py holds what both do). The
client puts each chunk's records into the report in input order as they come.
Ctrl-C stops the workers at once; what they finished is on disk and goes into the report,
and --skip-existing picks up the rest. A worker that dies (killed for memory, say) leaves its
inputs to this process, which explains what is left.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import queue
import signal
import sys
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from igcli.batch import BatchRun, InputItem
from igcli.chunks import (
    ChunkResult,
    InOrder,
    WorkerJob,
    chunks,
    explain_chunk,
    job_for,
    one_per_cpu,
    sigint_ignored_by_children,
    take_from_disk,
    worker_batch,
)
from igcli.console import Messages
from igcli.errors import IgcliError, UsageError
from igcli.heap import keep_freed_memory
from igcli.launch import STOPS
from igcli.memory import default_budget
from igcli.model import fixed_dims, usable_cpus, weight_bytes

# A worker takes about 0.8 s to start (imports, session) while this process explains; on the
# digits model two processes were 10% faster than one from 250 inputs (--steps auto and 50
# steps alike) and 12% slower at 100.
AUTO_MIN_INPUTS = 250
# Larger models, or larger samples, fill the cores within each call already: a MobileNetV2
# at 112x112 (8.9 MB, 37,632 values a sample) ran 14% slower on two processes than on one.
AUTO_MAX_WEIGHTS = 32 * 2**20
AUTO_MAX_VALUES = 16_384  # values per sample where the path moves (a 28x28 digit: 784)


def choose_workers(requested: str | int | None, session, items: list[InputItem], warn=None) -> int:
    """How many worker processes: `requested` as given (a number, or "auto"/None), at most
    one per usable CPU (`warn` is told when that is fewer) and one per input. auto is one
    per usable CPU for a small CPU model with small samples and enough inputs, else 1 (this
    process)."""
    if requested not in (None, "auto"):
        text = str(requested)
        if not (text.isascii() and text.isdigit()):  # (int() reads ' 2' and a full-width 2)
            raise UsageError(f"--workers {requested!r}: give a number or auto")
        workers = int(text)
        if workers < 1:
            raise UsageError("--workers must be at least 1")
        wanted = min(workers, max(1, len(items)))
        return one_per_cpu(wanted, usable_cpus(), f"--workers {requested}", warn)
    cpus = usable_cpus()
    if cpus < 2 or len(items) < max(AUTO_MIN_INPUTS, 2 * cpus):
        return 1
    if session.providers[:1] != ["CPUExecutionProvider"]:
        return 1  # (one GPU is not shared better by processes)
    if weight_bytes(session.model) > AUTO_MAX_WEIGHTS:
        return 1
    dims = session.ig_shape[1:]
    if not fixed_dims(dims) or math.prod(dims) > AUTO_MAX_VALUES:
        return 1  # (an open dim: the size of a sample is not known)
    return cpus


# -- in each worker process ---------------------------------------------------------------------
class _ChunkRunner:
    """A process's BatchRun for the chunks it explains, made as a worker makes its own
    (worker_batch: --threads and the memory budget are its share) at its first chunk: each
    worker holds one, and the client one for the chunks it explains itself."""

    def __init__(self, job: WorkerJob | None) -> None:
        self.job = job
        self.batch: BatchRun | None = None
        self.warnings: list[str] = []

    def explain(self, index: int, items: list[InputItem], between=None) -> ChunkResult:
        del self.warnings[:]
        if self.batch is None:
            self.batch = worker_batch(self.job, self.warnings.append)
        return explain_chunk(self.batch, self.job, index, items, self.warnings, between)

    def close(self) -> None:
        """Its writes finished (after Ctrl-C too: take_from_disk reads them), its staging
        folders removed."""
        if self.batch is not None:
            try:
                self.batch.close()
            finally:
                self.batch.cleanup()


_runner: _ChunkRunner | None = None  # (a worker's)


def _quiet_resource_tracker() -> None:
    """multiprocessing's resource tracker, a process of its own, outlives this one when it
    is killed (kill -9) and then cleans up the pool's semaphores, printing a two-line
    UserWarning about 'leaked semaphore objects' on the run's stderr after it ended. It takes
    this process's -W options when it starts: the cleanup stays, the warning goes."""
    option = "ignore:resource_tracker:UserWarning"
    if option not in sys.warnoptions:
        sys.warnoptions.append(option)


def _start_resource_tracker() -> None:
    """The tracker (which the pool's first semaphore starts) is a process of its own, which
    Python starts with SIGINT and SIGTERM blocked but not SIGHUP: a closed terminal's SIGHUP
    to the process group killed it, and the run ended (exit 130, rightly) with its 'process
    died unexpectedly' warning and five KeyError tracebacks. Started here first, with SIGHUP
    ignored, which it keeps."""
    if not hasattr(signal, "SIGHUP"):
        return
    from multiprocessing import resource_tracker

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, previous)


def _start(job: WorkerJob) -> None:
    """Worker start: Ctrl-C is the client's to handle (each worker printed a traceback);
    SIGTERM, the client's way to stop a worker at once, ends it through its finalizers, so
    its staging folder of object-storage outputs and its fetched inputs go with it."""
    global _runner
    keep_freed_memory()
    for sig in (signal.SIGINT, *STOPS[1:]):  # (a closed terminal's SIGHUP reaches them too)
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    multiprocessing.util.Finalize(None, _close, exitpriority=10)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_end_with, args=(parent.sentinel,), daemon=True).start()
    _runner = _ChunkRunner(job)


def _end_with(sentinel: int) -> None:
    """End this worker when the client process is gone (killed with SIGKILL, say): each
    worker holds both ends of the pool's queues, so none sees the client go, and workers
    were left waiting on them for ever. Its outputs are written whole or not at all."""
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _close() -> None:
    """At the worker's exit: its pending writes, then its staging folders. A write that
    fails here (a full disk) was the client's to say: its chunk failed with it, or the
    client stopped the run; a traceback from each worker said it again."""
    if _runner is not None:
        with contextlib.suppress(IgcliError, OSError):
            _runner.close()


def _explain_chunk(index: int, items: list[InputItem]) -> ChunkResult:
    """Explain `items` in this worker (its session made on its first chunk). igcli's own
    errors come back in the result, to be said once by the client."""
    try:
        return _runner.explain(index, items)
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
    """The plan's inputs on `workers` processes: this one and `workers` - 1 started for the
    run; their records go into `batch`'s report in input order (and --json lines with them).

    This process explains chunks too, from the moment the workers are asked to start: a
    started worker took 0.8 s to import and make its session, while this process's session
    was ready and idle, and one process fewer is one import less (on 2 cores, the second
    worker's start was 6% of a 1,000-digit run). Chunks are tapered (chunks()), so that the
    processes, which start at different times, end within a small chunk of each other."""
    from igcli.discovery import count_inputs
    from igcli.run import execute, signals_held

    job = job_for(batch, the_plan, session_factory, targets_from)
    total = job.session_options.get("threads") or usable_cpus()
    job.session_options["threads"] = max(1, total // workers)  # the cores shared, not each
    budget = job.session_options.get("memory_limit") or default_budget()
    job.session_options["memory_limit"] = max(1, budget // workers)  # and the memory too
    parts = chunks(the_plan.items, workers, tapered=True)
    _quiet_resource_tracker()
    _start_resource_tracker()
    # spawn: fork copies a parent whose ONNX Runtime and writer threads exist (unsafe), and a
    # forkserver outlives the run for a moment (farm-bench found one left behind)
    pool = ProcessPoolExecutor(
        workers - 1, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
        initargs=(job,),
    )  # fmt: skip
    feeder = _Feeder(pool, parts, workers - 1)
    own = _ChunkRunner(job)  # this process's
    order = InOrder(batch, targets_from)
    interrupted = died = finished = False

    def wind_down() -> None:
        _stop(pool, at_once=not finished, broken=died)
        feeder.join()
        own.close()

    try:
        # (started in the try: a Ctrl-C between two submits left the pool to run the whole
        # plan on, unseen, before this process could exit; the submits start the workers)
        mine = feeder.take()  # the first chunk is this process's: it starts at once
        with sigint_ignored_by_children():
            feeder.start()
        with messages.progress(count_inputs(the_plan.items)) as progress:

            def take_in(block: bool = False) -> None:
                nonlocal died
                for future in feeder.finished(block):
                    try:
                        result = future.result()
                    except (BrokenProcessPool, SystemExit, KeyboardInterrupt):
                        # (a worker sent SIGTERM exits in its chunk; the pool hands that
                        # SystemExit over as the chunk's result, and it ended this process
                        # with 143, no line and no report: it is a worker gone)
                        died = True
                        continue
                    order.add(result)
                    progress.advance(result.inputs)

            try:
                while not died and mine is not None:
                    result = own.explain(*mine, between=take_in)
                    order.add(result)
                    progress.advance(result.inputs)
                    take_in()
                    mine = feeder.take()
                while not died and not feeder.over():
                    take_in(block=True)
                died = died or feeder.broken  # (a pool that broke as its workers started)
                finished = not died
            except KeyboardInterrupt:
                interrupted = True
    except BaseException:
        with signals_held():
            wind_down()
        raise
    # Ctrl-C held until what finished is in the batch: a second one while the workers
    # stopped left their finished chunks out of the report (130 results on disk,
    # 'explained 0'); the run's write-up holds it from there on (see run.signals_held)
    with signals_held():
        wind_down()
        if died:  # (chunks that came back before still go in, in order)
            for future in [*feeder.returned, *feeder.finished(block=False)]:
                if _succeeded(future) and future.result().index >= order.following:
                    order.add(future.result())
        batch.report.settings["model_time_s"] = round(order.seconds, 3)
        processes = min(workers, len(parts))
        batch.report.settings["workers"] = {"processes": processes, "chunks": len(parts)}
        if interrupted:  # the workers are gone: what they finished is on disk
            order.rest(parts, lambda items: take_from_disk(batch, items))
    if interrupted:
        raise KeyboardInterrupt
    if died:
        batch.warn(
            "a worker process ended unexpectedly (killed, or out of memory?); the inputs it "
            "had not finished are explained in this process"
        )
    order.rest(parts, lambda items: execute(batch, items, messages))  # (none, after a whole run)


class _Feeder:
    """Chunks to the worker processes, one at a time each, from a thread of the client: the
    next goes as soon as one comes back, while the client explains chunks of its own (taken
    from the same list, `take`). A worker with a second chunk queued could be left with it
    while the client, done with its own, waited."""

    def __init__(self, pool: ProcessPoolExecutor, parts: list[list[InputItem]], workers: int):
        self.pool, self.workers = pool, workers
        self.pending = deque(enumerate(parts))
        self.lock = threading.Lock()
        self.results: queue.SimpleQueue[Future | None] = queue.SimpleQueue()
        self.returned: list[Future] = []  # every future handed to the client
        self.running: set[Future] = set()  # (the feeder thread's, once started)
        self.ended = False
        self.broken = False  # a worker died, or failed to start: the pool takes no chunk
        self.thread = threading.Thread(target=self._feed, name="igcli-feeder", daemon=True)

    def start(self) -> None:
        """A chunk to each worker from this thread (the submits start the workers: under
        sigint_ignored_by_children, see there), then the rest from the feeder's."""
        try:
            self._fill()
        except (BrokenProcessPool, RuntimeError) as exc:
            self.broken = isinstance(exc, BrokenProcessPool)
            self.results.put(None)
            return
        self.thread.start()

    def take(self) -> tuple[int, list[InputItem]] | None:
        """The next chunk, for the client or a worker."""
        with self.lock:
            return self.pending.popleft() if self.pending else None

    def finished(self, block: bool) -> list[Future]:
        """The workers' chunks that came back since the last call (at least one if `block`,
        unless the feeder has ended)."""
        out = []
        while not self.ended:
            try:
                future = self.results.get(block=block and not out, timeout=0.2)
            except queue.Empty:
                if block and not out:
                    continue  # (a timeout, for Ctrl-C to be seen)
                break
            if future is None:
                self.ended = True
                break
            out.append(future)
        self.returned.extend(out)
        return out

    def over(self) -> bool:
        return self.ended

    def join(self) -> None:
        if self.thread.ident is not None:  # (not started where the first submits failed)
            self.thread.join(timeout=30)

    def _fill(self) -> None:
        while len(self.running) < self.workers and (chunk := self.take()) is not None:
            self.running.add(self.pool.submit(_explain_chunk, *chunk))

    def _feed(self) -> None:
        try:
            while self.running:
                done, self.running = wait(self.running, return_when=FIRST_COMPLETED)
                for future in done:
                    self.results.put(future)
                    if not _succeeded(future):  # a dead worker, or the run stopped
                        return
                self._fill()
        except BrokenProcessPool:
            self.broken = True
        except RuntimeError:  # (the pool was shut down)
            return
        finally:
            self.results.put(None)


def _succeeded(future: Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _stop(pool: ProcessPoolExecutor, at_once: bool, broken: bool = False) -> None:
    """End the workers: when every chunk is done, as they would end, while this process
    writes the reports (the pool's exit handler waits for them before this process ends;
    0.14 s at the end of a run); `at_once` (Ctrl-C, an error) cancels what has not started
    and stops them in their chunks. A worker that SIGTERM does not end in 10 s is killed,
    and after a worker died (`broken`) all are at once: the pool reads no more results, so a
    worker sending one (a chunk's records fill the pipe) waited for ever, SIGTERM or not,
    and this process with it when it exited."""
    if not at_once:
        pool.shutdown(wait=False)
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive() and broken:
            process.kill()
        elif process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()
