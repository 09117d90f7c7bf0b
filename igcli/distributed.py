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
import os
import threading
import uuid

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
from igcli.model import usable_cpus


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
                # a returned chunk's writes are done (explain_chunk drains them): what fails
                # here belongs to a chunk whose failure the client has already said (a store
                # gone mid-run), and Dask would log it with a traceback, under --quiet too
                with contextlib.suppress(Exception):
                    self.batch.close()
                self.batch.cleanup()

        def get_batch(self) -> BatchRun:
            if self.batch is None:
                self.batch = worker_batch(self.job, self._warn)
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
        return explain_chunk(batch, plugin.job, index, items, plugin.warnings)


def quiet_dask() -> None:
    """Only Dask's errors, here and in the worker processes started from here (--quiet):
    its nannies and workers log warnings of their own (a restarted worker, a slow one)."""
    import logging

    os.environ["DASK_LOGGING__DISTRIBUTED"] = "error"  # read by worker processes' imports
    logging.getLogger("distributed").setLevel(logging.ERROR)


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
        said = f"--dask {address}"
        workers = one_per_cpu(workers, usable_cpus(), said, messages.warn, " worker(s)")
        with sigint_ignored_by_children():
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
    job = job_for(batch, the_plan, session_factory, targets_from)
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

        order = InOrder(batch, targets_from)
        with messages.progress(count_inputs(the_plan.items)) as progress:
            try:
                for future in as_completed(futures):
                    result = future.result()
                    future.release()
                    order.add(result)
                    progress.advance(result.inputs)
            except KeyboardInterrupt:
                client.cancel(futures)
                interrupted = True
        batch.report.settings["model_time_s"] = round(order.seconds, 3)
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
        order.rest(parts, lambda items: take_from_disk(batch, items))
        raise KeyboardInterrupt
