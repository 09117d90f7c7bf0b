"""--dask: chunks of the plan on Dask workers (a LocalCluster on 127.0.0.1 only) give the
outputs and the report of a one-process run, and survive losing a worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.scale_inputs import comparable, load, make_digits, one_process_run, output_files
from tests.test_cli import DIGITS, ROOT, run

distributed = pytest.importorskip("distributed")
STEPS = ("--steps", "16")


def cluster(processes: bool):
    """Two workers: threads of this process (in-process transport, no sockets at all), or
    processes talking over 127.0.0.1."""
    where = {"host": "127.0.0.1"} if processes else {}
    return distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=processes, dashboard_address=None, **where
    )


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask") / "in"
    make_digits(folder, 100)
    return folder


@pytest.fixture(scope="module")
def single(digits, tmp_path_factory):
    return one_process_run(digits, tmp_path_factory.mktemp("one") / "out", STEPS)


def test_dask_equals_one_process(digits, single, tmp_path):
    with cluster(processes=False) as c:
        result = run("explain", DIGITS, digits, "--out", tmp_path / "out", *STEPS, "--json",
                     "--dask", c.scheduler_address)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "out"
    assert output_files(out) == output_files(single)  # .npy, .png, records: byte for byte
    report = load(out / "report.json")
    assert comparable(report) == comparable(load(single / "report.json"))
    assert report["settings"]["dask"]["workers"] == 2 and report["settings"]["dask"]["chunks"] > 2
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # in input order
    assert [x["name"] for x in lines] == [r["name"] for r in report["results"]]


def test_a_killed_worker_process_loses_nothing(digits, single, tmp_path):
    """Worker processes (a nanny restarts the killed one); its chunk runs again elsewhere."""
    out = tmp_path / "out"
    with cluster(processes=True) as c, distributed.Client(c) as client:
        pids = client.run(os.getpid)
        proc = subprocess.Popen(
            [sys.executable, "-m", "igcli", "explain", str(DIGITS), str(digits), "--out",
             str(out), *STEPS, "-q", "--dask", c.scheduler_address],
            cwd=ROOT, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not any(out.glob("*.record.json")) and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.05)
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)  # mid-run: at most a few records were written
            _, stderr = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, stderr
    report = load(out / "report.json")
    names = [r["name"] for r in report["results"]]
    assert len(names) == len(set(names)) == 100 and not report["failures"]
    assert comparable(report) == comparable(load(single / "report.json"))
    assert output_files(out) == output_files(single)


def test_local_n_and_bad_addresses(tmp_path):
    bad = run("explain", DIGITS, str(ROOT / "sample_inputs" / "digits"), "--out", tmp_path,
              "--dask", "local:x")  # fmt: skip
    assert bad.exit_code == 2 and "use local:N or a scheduler address" in bad.stderr


def test_local_n_above_the_cpus_starts_one_worker_per_cpu(tmp_path, monkeypatch):
    from igcli import distributed as igcli_distributed

    folder = tmp_path / "in"
    make_digits(folder, 6)
    monkeypatch.setattr(igcli_distributed, "usable_cpus", lambda: 1)
    result = run("explain", DIGITS, folder, "--out", tmp_path / "out", *STEPS,
                 "--dask", "local:3")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "--dask local:3: starting 1 worker(s), one per CPU" in result.stderr
    assert load(tmp_path / "out" / "report.json")["settings"]["dask"]["workers"] == 1


def test_quiet_leaves_only_dask_errors(monkeypatch):
    import logging

    from igcli.distributed import quiet_dask

    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "warning")  # restored afterwards
    level = logging.getLogger("distributed").level
    try:
        quiet_dask()
        assert logging.getLogger("distributed.nanny").getEffectiveLevel() == logging.ERROR
        assert os.environ["DASK_LOGGING__DISTRIBUTED"] == "error"  # worker processes' level
    finally:
        logging.getLogger("distributed").setLevel(level)


def test_dask_workers_never_replace_an_input(tmp_path, monkeypatch):
    """--out . beside the inputs on Dask workers: each worker checks its chunk, so an input
    whose output would replace it fails alone and keeps its bytes."""
    import shutil

    from tests.test_cli import DIGIT_PNGS

    monkeypatch.chdir(tmp_path)
    shutil.copy(DIGIT_PNGS[0], tmp_path / "digit.png")
    before = (tmp_path / "digit.png").read_bytes()
    with cluster(processes=False) as c:
        result = run("explain", DIGITS, "digit.png", *STEPS, "--out", ".",
                     "--dask", c.scheduler_address)  # fmt: skip
    assert result.exit_code == 4, result.stderr
    assert "would replace an input" in result.stderr
    assert (tmp_path / "digit.png").read_bytes() == before


def test_an_interrupted_dask_run_reports_what_its_workers_finished(digits, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    """Ctrl-C while the client waits: chunks that finished out of turn, and what the other
    chunks' workers wrote whole, went missing from the report (1,221 records on disk, none
    reported, in a sweep). Here every chunk finishes before the interrupt: all are reported."""
    real = distributed.as_completed

    def interrupted_after_the_first(futures, *args, **kwargs):
        distributed.wait(futures)
        yield next(iter(real(futures, *args, **kwargs)))
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed, "as_completed", interrupted_after_the_first)
    out = tmp_path / "out"
    with cluster(processes=False) as c:
        result = run("explain", DIGITS, digits, "--out", out, *STEPS, "--json",
                     "--dask", c.scheduler_address)  # fmt: skip
    assert result.exit_code == 130, result.stderr
    on_disk = sorted(p.name.removesuffix(".record.json") for p in out.rglob("*.record.json"))
    reported = sorted(r["name"] for r in load(out / "report.json")["results"])
    printed = sorted(json.loads(line)["name"] for line in result.stdout.splitlines())
    assert len(on_disk) == 100 and on_disk == reported == printed


def _model_error(*args):
    from igcli.errors import ModelError

    raise ModelError("no such file", "gone.onnx")


def test_an_igcli_error_on_a_worker_is_one_line_without_a_dask_dump(tmp_path, monkeypatch):
    """Workers that could not read the model raised, and Dask logged each chunk's failure
    ("Compute Failed ... Traceback:"), under --quiet too, before igcli's one line."""
    import io
    import logging

    import igcli.chunks
    from igcli.errors import ExitCode
    from tests.test_cli import DIGIT_PNGS

    monkeypatch.setattr(igcli.chunks, "BatchRun", _model_error)  # a worker's session fails
    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    logging.getLogger("distributed").addHandler(handler)
    try:
        with cluster(processes=False) as c:
            result = run("explain", DIGITS, *DIGIT_PNGS[:3], *STEPS, "--out", tmp_path / "o",
                         "-q", "--dask", c.scheduler_address)  # fmt: skip
    finally:
        logging.getLogger("distributed").removeHandler(handler)
    assert result.exit_code == ExitCode.MODEL, result.stderr
    assert result.stderr.strip() == "error: gone.onnx: no such file"
    assert "Compute Failed" not in logged.getvalue()


def test_a_write_failing_as_a_worker_stops_is_left_to_the_client():
    """A store gone mid-run: the client said it (exit 6), then each worker's plugin teardown
    drained the failed chunk's writes and Dask logged the same error with a traceback, under
    --quiet too. The teardown keeps quiet and still removes the staging folder."""
    from igcli.distributed import _plugin_class
    from igcli.errors import OutputError

    done = []

    class Failing:
        def close(self):
            raise OutputError("cannot upload (Could not connect)", "s3://b/out/x.npy")

        def cleanup(self):
            done.append("cleanup")

    plugin = _plugin_class()("igcli-test", None)
    plugin.batch = Failing()
    plugin.teardown(worker=None)
    assert done == ["cleanup"]


def _sigint_disposition() -> bool:
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_local_workers_leave_ctrl_c_to_the_client():
    """Ctrl-C reaches the whole process group: each local:N worker printed tracebacks of its
    own (KeyboardInterrupt in asyncio), under --quiet too. They ignore it; the client stops
    them, and keeps its own Ctrl-C."""
    from igcli.distributed import connect

    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN where the tests run in the background)
    client, local = connect("local:1")
    try:
        assert set(client.run(_sigint_disposition).values()) == {True}
    finally:
        client.close()
        local.close()
    assert signal.getsignal(signal.SIGINT) is before
