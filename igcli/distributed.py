"""`igcli explain ... --dask ADDRESS`: the plan's inputs in chunks on Dask workers.

Each worker holds one model session for its lifetime (a worker plugin keeps the Session and
its BatchRun, built on the worker's first chunk and reused for every later one); a chunk
writes its outputs like a local run and sends back its records, which the client puts into
the report in input order as they arrive. The outputs and the report are those of a local
run: the same names, files and records, the gradient graph self-checked at the plan's first
input on every worker. A worker that dies takes its chunk with it; Dask runs the chunk again
elsewhere, and since outputs are written whole and named by input, every input still ends
up explained once.

Needs `pip install 'igcli[dask]'`. `--dask local:N` starts N worker processes on this
machine, bound to 127.0.0.1; any other value is a scheduler address (tcp://host:8786), for
a cluster from dask-jobqueue (Slurm, PBS), dask-kubernetes or `dask scheduler`/`dask worker`.
Workers must reach the model, the inputs and --out under the same names: one machine, a
shared file system, or object storage URLs.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import uuid
from dataclasses import dataclass, field

from igcli.batch import BatchRun, InputItem, OutputSettings
from igcli.console import Messages
from igcli.errors import IgcliError, UsageError
from igcli.model import usable_cpus
from igcli.report import RunReport
from igcli.session import AttributionSettings

CHUNKS_PER_WORKER = 4  # enough to balance uneven inputs and to lose little with a worker
MAX_CHUNK = 256  # inputs (CSV rows) per chunk at most


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
    resumed: int = 0
    warnings: list[str] = field(default_factory=list)
    deferred: list = field(default_factory=list)
    targets_used: set[str] = field(default_factory=set)
    measured: dict = field(default_factory=dict)
    model_seconds: float = 0.0
    error: IgcliError | None = None  # raised by the client: Dask logged a raised one whole


def _plugin_class():
    from distributed.diagnostics.plugin import WorkerPlugin

    class IgcliWorker(WorkerPlugin):
        """One Session and BatchRun per worker, for as long as the worker lives."""

        def __init__(self, name: str, job: WorkerJob) -> None:
            self.name = name
            self.job = job
            self.batch: BatchRun | None = None
            self.lock = threading.Lock()  # a session explains one chunk at a time
            self.warnings: list[str] = []

        def __getstate__(self):
            return {"name": self.name, "job": self.job}

        def __setstate__(self, state):
            self.__init__(state["name"], state["job"])

        def setup(self, worker) -> None:
            pass  # the session is built by the first chunk, so its errors reach the client

        def teardown(self, worker) -> None:
            if self.batch is not None:
                self.batch.close()
                self.batch.cleanup()

        def get_batch(self) -> BatchRun:
            if self.batch is None:
                from igcli.session import Session

                job = self.job
                session = Session(*job.session_args, **job.session_options, warn=self._warn)
                report = RunReport(str(session.model_path), session.sha256, {})
                targets_for = job.targets_from.for_item if job.targets_from is not None else None
                batch = BatchRun(
                    session, job.settings, job.targets, job.outputs, report,
                    lambda line: None, self._warn, targets_for,
                )  # fmt: skip
                if batch.settings_hash != job.settings_hash:
                    raise UsageError(
                        "a Dask worker sees another model or options than the client "
                        f"({batch.settings_hash} != {job.settings_hash}): do the workers read "
                        "the same files?"
                    )
                batch.check_gradients_at(job.first)
                self.batch = batch
            return self.batch

        def _warn(self, message: str) -> None:
            self.warnings.append(message)

    return IgcliWorker


def _explain_chunk(plugin_name: str, index: int, items: list[InputItem]) -> ChunkResult:
    """Runs on a worker: explain `items` with the worker's session, outputs written whole.
    igcli's own errors (a model the worker cannot read) come back in the result: raised,
    Dask logged each as "Compute Failed" with a traceback, even under --quiet."""
    try:
        return _explain(plugin_name, index, items)
    except IgcliError as exc:
        return ChunkResult(index=index, inputs=0, error=exc)


def _explain(plugin_name: str, index: int, items: list[InputItem]) -> ChunkResult:
    from distributed import get_worker

    plugin = get_worker().plugins[plugin_name]
    with plugin.lock:
        plugin.warnings = []
        batch = plugin.get_batch()
        session = batch.session
        before = session.model_seconds
        report = RunReport(batch.report.model, batch.report.model_sha256, {})
        batch.report = report
        count = [0]
        k = 0
        batch.protect(items)  # no output replaces an input (the client checks the reports)
        while k < len(items):
            group = items[k : k + batch.group_size()]
            batch.process(group, lambda n: count.__setitem__(0, count[0] + n))
            k += len(group)
        batch.drain()  # a returned chunk is a written chunk
        deferred, batch.deferred = batch.deferred, []
        table = plugin.job.targets_from
        return ChunkResult(
            index=index,
            inputs=count[0],
            records=list(report.results),
            failures=list(report.failures),
            resumed=report.resumed,
            warnings=list(plugin.warnings),
            deferred=deferred,
            targets_used=set(table.used) if table is not None else set(),
            measured={
                "batch_size": session.runner.batch_size,
                "memory_per_row": session.memory_per_row,
            },
            model_seconds=session.model_seconds - before,
        )


def chunks(items: list[InputItem], workers: int) -> list[list[InputItem]]:
    """Consecutive runs of inputs of about equal work (a CSV weighs its rows), a few per
    worker so that fast workers take more and a lost worker costs little."""
    from igcli.discovery import count_inputs

    weights = [count_inputs([item]) if item.is_table else 1 for item in items]
    target = max(1, min(MAX_CHUNK, math.ceil(sum(weights) / max(1, workers * CHUNKS_PER_WORKER))))
    out: list[list[InputItem]] = []
    current: list[InputItem] = []
    load = 0
    for item, weight in zip(items, weights, strict=True):
        if current and load + weight > target:
            out.append(current)
            current, load = [], 0
        current.append(item)
        load += weight
    if current:
        out.append(current)
    return out


def quiet_dask() -> None:
    """Only Dask's errors, here and in the worker processes started from here (--quiet):
    its nannies and workers log warnings of their own (a restarted worker, a slow one)."""
    import logging

    os.environ["DASK_LOGGING__DISTRIBUTED"] = "error"  # read by worker processes' imports
    logging.getLogger("distributed").setLevel(logging.ERROR)


@contextlib.contextmanager
def _sigint_ignored_by_children():
    """SIGINT ignored while local workers start, which keep it ignored (across exec, and
    Python then installs no KeyboardInterrupt of its own): Ctrl-C reaches the whole process
    group, and each worker printed its tracebacks. The client stops them itself. (A Ctrl-C
    in the second or two this takes is lost: an ignored signal is not kept pending.)"""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def connect(address: str, messages: Messages | None = None):
    """(client, cluster or None) for --dask: "local:N" starts N worker processes here, at
    most one per CPU this process may use: each worker holds its own model session, so more
    only wait for one another (local:32 on 2 CPUs took 34 s for 12 images, and as long to
    stop)."""
    messages = messages or Messages()
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--dask needs Dask: pip install 'igcli[dask]'") from None
    if messages.quiet:
        quiet_dask()
    if address.startswith("local"):
        _, _, n = address.partition(":")
        try:
            workers = int(n) if n else 2
        except ValueError:
            raise UsageError(f"--dask {address!r}: use local:N or a scheduler address") from None
        if workers < 1:
            raise UsageError(f"--dask {address!r}: N must be at least 1")
        cpus = usable_cpus()
        if workers > cpus:
            messages.warn(
                f"--dask {address}: starting {cpus} worker(s), one per CPU this process may "
                f"use ({workers} would only wait for one another)"
            )
            workers = cpus
        with _sigint_ignored_by_children():
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
        return Client(cluster), cluster
    try:
        return Client(address, timeout="30s"), None
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"--dask {address!r}: cannot reach the scheduler ({exc})") from None


def execute_on_dask(
    batch: BatchRun,
    the_plan,
    address: str,
    messages: Messages,
    targets_from=None,
    session_factory=None,
    client=None,
) -> None:
    """The plan's inputs on Dask workers; their records go into `batch`'s report in input
    order, and --json lines are printed in that order as chunks complete. `client`: an
    already connected distributed.Client (else one is made from `address`)."""
    from igcli.storage import is_url

    if session_factory is None:
        raise UsageError("--dask needs the session's options (run_explain's session_factory)")
    if batch.outputs.shared_scale and is_url(str(batch.outputs.out_dir)):
        raise UsageError("--scale shared with --dask needs a local or shared --out folder")
    options = {k: v for k, v in session_factory.keywords.items() if k != "warn"}
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
    own = client is None
    cluster = None
    interrupted = False
    if own:
        client, cluster = connect(address, messages)
    name = f"igcli-{uuid.uuid4().hex[:12]}"
    try:
        from distributed import as_completed

        workers = max(1, len(client.scheduler_info().get("workers", {})))
        if cluster is not None and job.session_options.get("threads") is None:
            # N worker processes on this machine share its cores: left to itself, each
            # session would take all of them (2 workers on 2 cores ran 40% slower than 1)
            job.session_options["threads"] = max(1, (os.cpu_count() or 1) // workers)
        client.register_plugin(_plugin_class()(name, job), name=name)
        parts = chunks(the_plan.items, workers)
        futures = [
            client.submit(_explain_chunk, name, i, part, key=f"{name}-{i}", pure=False)
            for i, part in enumerate(parts)
        ]
        from igcli.discovery import count_inputs

        ready: dict[int, ChunkResult] = {}
        following = 0
        said: set[str] = set()
        seconds = 0.0

        def take(done: ChunkResult) -> None:
            nonlocal seconds
            seconds += done.model_seconds
            for message in done.warnings:
                if message.startswith("error: ") or message not in said:
                    said.add(message)
                    batch.warn(message)
            _accept(batch, done, targets_from)

        with messages.progress(count_inputs(the_plan.items)) as progress:
            try:
                for future in as_completed(futures):
                    result = future.result()
                    future.release()
                    if result.error is not None:
                        raise result.error
                    progress.advance(result.inputs)
                    ready[result.index] = result
                    while following in ready:  # the report stays in input order
                        take(ready.pop(following))
                        following += 1
            except KeyboardInterrupt:
                client.cancel(futures)
                interrupted = True
        batch.report.settings["model_time_s"] = round(seconds, 3)
        batch.report.settings["dask"] = {"workers": workers, "chunks": len(parts)}
    except IgcliError:
        raise
    finally:
        if own:
            client.close()
            if cluster is not None:
                import logging

                # stopping our own workers: "still alive after 4.0 seconds, killing" is no news
                logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
                cluster.close()
    if interrupted:  # our own workers are stopped (a shared cluster's cancelled tasks may
        # still finish the input at hand): what they finished is on disk now
        for k in range(following, len(parts)):
            if k in ready:
                take(ready.pop(k))
            else:
                _take_from_disk(batch, parts[k])
        raise KeyboardInterrupt


def _take_from_disk(batch: BatchRun, items: list) -> None:
    """The records of a chunk cut short by Ctrl-C, as its worker left them: each input (or
    CSV row) whose files are whole, with this run's settings (after Ctrl-C the report left
    out inputs that finished on the workers, 1221 of them in a sweep)."""
    from igcli.batch import existing_records
    from igcli.discovery import InputItem, count_table_rows

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


def _accept(batch: BatchRun, result: ChunkResult, targets_from) -> None:
    from igcli.report import json_line

    batch.report.resumed += result.resumed
    batch._accept(result.records)
    for entry in result.failures:
        batch.report.failures.append(entry)
        if batch.outputs.json_lines:
            batch.emit(json_line(entry))
    batch.deferred.extend(result.deferred)
    if targets_from is not None:
        targets_from.used |= result.targets_used
    batch.workers = dict(result.measured)
    batch.report.settings.update(result.measured)
