"""--workers: a folder's inputs on local worker processes (igcli/pool.py), against one process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from igcli.errors import UsageError
from igcli.model import usable_cpus
from igcli.pool import AUTO_MAX_WEIGHTS, AUTO_MIN_INPUTS, choose_workers
from tests.test_cli import DIGIT_PNGS

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "sample_models" / "digits_cnn.onnx"


def _folder(tmp_path: Path, bad: bool = False) -> Path:
    """Twelve digit pictures in two subfolders (and one that is no picture, if `bad`)."""
    src = sorted((ROOT / "sample_inputs" / "digits").glob("*.png"))
    folder = tmp_path / "in"
    for k in range(12):
        sub = folder / f"part{k % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(src[k % len(src)], sub / f"img{k:02d}.png")
    if bad:
        # first of its chunk (inputs 8 and 9): its line came after the chunk's records
        (folder / "part1" / "img04b.png").write_bytes(b"not a picture")
    return folder


def _explain(folder: Path, out: Path, *extra: str) -> tuple[int, list[dict], str]:
    cmd = [sys.executable, "-m", "igcli", "explain", str(DIGITS), str(folder), "-r",
           "--out", str(out), "--json", "--quiet", "--steps", "auto", *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines, proc.stderr


@pytest.mark.skipif(usable_cpus() < 2, reason="--workers 2 takes one process per CPU")
def test_two_workers_give_the_records_of_one_process(tmp_path):
    """The same inputs, names, targets, numbers and files, and JSON lines in input order; a
    bad file fails alone there too (exit 4)."""
    folder = _folder(tmp_path, bad=True)
    code1, one, err1 = _explain(folder, tmp_path / "one", "--workers", "1")
    code2, two, err2 = _explain(folder, tmp_path / "two", "--workers", "2")
    assert code1 == code2 == 4, (err1, err2)
    assert [r["input"] for r in one] == [r["input"] for r in two]  # input order, failure too
    for a, b in zip(one, two, strict=True):
        assert a.get("status") == b.get("status") and a.get("target") == b.get("target")
        if a.get("status") != "ok":
            continue
        assert a["f_input"] == pytest.approx(b["f_input"], rel=1e-5)
        assert a["attribution_sum"] == pytest.approx(b["attribution_sum"], rel=1e-4, abs=1e-6)
        np.testing.assert_allclose(
            np.load(tmp_path / "two" / b["attributions_file"]),
            np.load(tmp_path / "one" / a["attributions_file"]),
            rtol=1e-4, atol=1e-6,
        )  # fmt: skip
        assert (tmp_path / "two" / b["heatmap_file"]).is_file()
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["settings"]["workers"]["processes"] == 2
    assert len(report["results"]) == 12 and len(report["failures"]) == 1
    first = json.loads((tmp_path / "one" / "report.json").read_text())
    assert [r["name"] for r in report["results"]] == [r["name"] for r in first["results"]]
    assert report["results"][0]["settings_hash"] == first["results"][0]["settings_hash"]
    assert set(report["settings"]) == set(first["settings"]) | {"workers"}  # named alike
    assert report["settings"]["batch_size"] <= report["settings"]["batch_size_cap"]


def test_a_resumed_pool_run_takes_what_one_process_wrote(tmp_path):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    assert _explain(folder, out, "--workers", "1")[0] == 0
    code, lines, err = _explain(folder, out, "--workers", "2", "--skip-existing")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["resumed"] == 12 and len(lines) == 12


def _session(weights: int, provider: str = "CPUExecutionProvider", shape=("N", 1, 28, 28)):
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph([], "g", [], [])
    graph.initializer.append(numpy_helper.from_array(np.zeros(weights // 4, np.float32), "w"))
    model = onnx.helper.make_model(graph)
    return SimpleNamespace(model=model, providers=[provider], ig_shape=list(shape))


def test_auto_takes_processes_for_a_small_model_and_many_inputs(monkeypatch):
    monkeypatch.setattr("igcli.pool.usable_cpus", lambda: 4)
    many, few = [object()] * AUTO_MIN_INPUTS, [object()] * (AUTO_MIN_INPUTS - 1)
    small, big = _session(1024), _session(AUTO_MAX_WEIGHTS + 1024)
    assert choose_workers("auto", small, many) == 4
    assert choose_workers(None, small, many) == 4
    assert choose_workers("auto", small, few) == 1  # done before workers would have started
    assert choose_workers("auto", big, many) == 1  # each call fills the cores already
    assert choose_workers("auto", _session(1024, "CUDAExecutionProvider"), many) == 1
    assert choose_workers("auto", _session(1024, shape=("N", 3, 112, 112)), many) == 1
    assert choose_workers("auto", _session(1024, shape=("N", "S", 64)), many) == 1
    assert choose_workers("3", big, many) == 3  # asked for: given
    assert choose_workers("8", small, [object()] * 2) == 2  # no more than inputs
    monkeypatch.setattr("igcli.pool.usable_cpus", lambda: 1)
    assert choose_workers("auto", small, many) == 1


def test_no_more_workers_than_cpus(monkeypatch):
    """Each worker holds a model session: --workers 10000 on 1,000 inputs started 1,000
    processes on 2 cores (40 on 40 inputs took 4.2 GB). As --dask local:N, capped, said."""
    monkeypatch.setattr("igcli.pool.usable_cpus", lambda: 2)
    said = []
    assert choose_workers("10000", _session(1024), [object()] * 1000, said.append) == 2
    assert len(said) == 1 and "--workers 10000: starting 2" in said[0]
    assert choose_workers("2", _session(1024), [object()] * 1000, said.append) == 2
    assert len(said) == 1


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", " 2", "\uff12", "2_0"])
def test_a_bad_workers_value_is_a_usage_error(value):
    with pytest.raises(UsageError):
        choose_workers(value, _session(1024), [object()] * 100)


def test_workers_with_dask_is_a_usage_error(tmp_path):
    folder = _folder(tmp_path)
    code, _, err = _explain(folder, tmp_path / "out", "--workers", "2", "--dask", "local:2")
    assert code == 2 and "--workers and --dask" in err, err


def test_a_worker_that_cannot_make_its_session_sends_the_error_back(tmp_path, monkeypatch):
    """As for Dask: the error comes back in the chunk's result, for the client to say once
    (raised in a worker, a process pool prints the worker's traceback)."""
    import igcli.pool as pool
    from igcli.chunks import WorkerJob
    from igcli.errors import ModelError
    from igcli.session import AttributionSettings

    job = WorkerJob((tmp_path / "gone.onnx",), {}, AttributionSettings(), None, None, "h", [])
    monkeypatch.setattr(pool, "_runner", pool._ChunkRunner(job))
    result = pool._explain_chunk(3, [])
    assert result.index == 3 and isinstance(result.error, ModelError)


# What the workers run in the tests below: importable by a spawned worker (PYTHONPATH).
_TASKS = """
import os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
import multiprocessing
import igcli.pool as pool

def die():
    os._exit(9)

def big_after_death(flag):
    # as a worker caught in its send: SIGTERM is caught there and the send tried again
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while not os.path.exists(flag):
        time.sleep(0.01)
    return b"x" * (4 << 20)  # more than a pipe holds, sent when the pool reads no more

def make_pool(n):
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(n, mp_context=context, initializer=pool._start, initargs=(None,))
"""


def _python(tmp_path: Path, script: str, **kwargs) -> subprocess.Popen:
    (tmp_path / "igcli_test_tasks.py").write_text(_TASKS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    return subprocess.Popen(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, start_new_session=True, **kwargs
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_dead_worker_does_not_hold_the_run_at_exit(tmp_path):
    """One worker dies while the other sends a chunk's records: the pool reads no more, so
    that worker waited for ever in its send (SIGTERM or not), and the run with it at exit.
    (Both workers are started first: a worker that a submit starts can die unseen by the
    pool, which woke up for that submit before the worker was in its list.)"""
    script = f"""
from igcli_test_tasks import *
flag = {str(tmp_path / "died")!r}
p = make_pool(2)
[f.result() for f in [p.submit(os.getpid) for _ in range(2)]]  # both started (see below)
futures = [p.submit(big_after_death, flag), p.submit(die)]
try:
    for f in as_completed(futures):
        f.result()
except BrokenProcessPool:
    open(flag, "w").close()
    time.sleep(1)  # (the survivor is in its send)
finally:
    pool._stop(p, at_once=True, broken=True)
print("stopped", flush=True)
"""
    proc = _python(tmp_path, script, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=120)  # (a guard against a hang, not a measure)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # (its workers too)
        raise AssertionError("the run did not end after a worker died") from None
    assert proc.returncode == 0 and "stopped" in out


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_workers_end_when_the_run_is_killed(tmp_path):
    """Each worker holds both ends of the pool's queues, so none saw a client killed with
    SIGKILL go: they waited for ever. Each now watches the client's process."""
    script = """
import time
from igcli_test_tasks import *
p = make_pool(1)
futures = [p.submit(time.sleep, 600)]
while not p._processes or not futures[0].running():
    time.sleep(0.05)
print(*p._processes, flush=True)
time.sleep(600)
"""
    proc = _python(tmp_path, script, stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in proc.stdout.readline().split()]
    assert len(workers) == 1
    proc.kill()
    proc.wait()
    for _ in range(1200):  # (a guard against waiting for ever, not a measure)
        if all(_gone(pid) for pid in workers):
            break
        time.sleep(0.1)
    alive = [pid for pid in workers if not _gone(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "workers outlived the run"


def test_a_failed_write_at_a_workers_exit_is_no_traceback(monkeypatch):
    """A full disk: the chunk (or the client) says it once; the worker's exit drained the
    same failed write again and printed a traceback from each worker."""
    import igcli.pool as pool
    from igcli.errors import OutputError

    cleaned = []

    class Full:
        def close(self):
            raise OutputError("cannot write (No space left on device)", "out/x.npy")

        def cleanup(self):
            cleaned.append(True)

    runner = pool._ChunkRunner(None)
    runner.batch = Full()
    monkeypatch.setattr(pool, "_runner", runner)
    pool._close()
    assert cleaned == [True]


def test_workers_start_with_ctrl_c_ignored():
    """Ctrl-C reaches the whole process group: a worker still importing (a second or so
    before its initializer ignores it) printed a KeyboardInterrupt traceback. The chunks
    are submitted, which starts the workers, with SIGINT ignored, as Dask's are."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from igcli.chunks import sigint_ignored_by_children

    context = multiprocessing.get_context("spawn")
    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN where the tests run in the background)
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        with sigint_ignored_by_children():
            started = pool.submit(signal.getsignal, signal.SIGINT)
        assert started.result() == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_while_a_chunk_goes_into_the_report_takes_it_whole():
    """Cut short, the chunk went in again from disk after Ctrl-C (take_from_disk): 116
    inputs stood twice in a report. The chunk goes in whole, then the interrupt is raised."""
    from igcli.chunks import ChunkResult, InOrder

    accepted: list[dict] = []

    def accept(records):
        if records and not accepted:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the first records go in
        accepted.extend(records)

    report = SimpleNamespace(resumed=0, failures=[], settings={})
    batch = SimpleNamespace(report=report, _accept=accept, deferred=[], warn=print, workers=None)
    order = InOrder(batch)
    records = [{"name": f"r{k}"} for k in range(5)]
    with pytest.raises(KeyboardInterrupt):
        order.add(ChunkResult(index=0, inputs=5, records=records))
    assert order.following == 1 and accepted == records


@pytest.mark.skipif(usable_cpus() < 2 or os.name != "posix", reason="--workers 2; SIGINT")
def test_a_second_ctrl_c_while_the_workers_stop_loses_no_finished_result(tmp_path):
    """Two Ctrl-C 0.2 s apart: the second came while the workers were stopped, and the
    report said 0 explained with up to 130 results on disk (found by a fault sweep). Here
    the first comes after this process's first chunk, the second from inside the stop."""
    folder, out = _folder(tmp_path), tmp_path / "out"
    script = f"""
import os, signal, sys
from igcli import pool
from igcli.cli import main

explain, stop, chunks = pool._ChunkRunner.explain, pool._stop, []

def explain_then_interrupt(self, *args, **kwargs):
    if chunks:
        raise KeyboardInterrupt  # Ctrl-C as this process starts its second chunk
    chunks.append(1)
    return explain(self, *args, **kwargs)

def stop_with_a_second_ctrl_c(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return stop(*args, **kwargs)

pool._ChunkRunner.explain, pool._stop = explain_then_interrupt, stop_with_a_second_ctrl_c
sys.argv = ["igcli", "explain", {str(DIGITS)!r}, {str(folder)!r}, "-r", "--out", {str(out)!r},
            "-q", "--steps", "8", "--workers", "2"]
main()
"""
    proc = _python(tmp_path, script)
    assert proc.wait(timeout=300) == 130
    report = json.loads((out / "report.json").read_text())
    on_disk = sorted(p.name[: -len(".record.json")] for p in out.rglob("*.record.json"))
    assert report["summary"]["interrupted"] and on_disk
    assert sorted(Path(r["input"]).stem for r in report["results"]) == on_disk


def test_tapered_chunks_shrink_to_a_few_inputs_and_keep_the_order():
    """Processes that start at different times (this one at once, the workers about a
    second later) end within a small chunk of each other: each chunk a share of what is
    left, down to MIN_TAPERED inputs (fewer where the run has few)."""
    from igcli.batch import InputItem
    from igcli.chunks import MIN_TAPERED, chunks

    items = [InputItem(Path(f"/in/{k}.png"), str(k)) for k in range(1000)]
    parts = chunks(items, 2, tapered=True)
    sizes = [len(p) for p in parts]
    assert [i for p in parts for i in p] == items
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 250
    assert max(sizes[-4:]) == MIN_TAPERED
    assert len(chunks(items[:13], 2, tapered=True)) > 2  # a few inputs: still shared


def test_the_feeder_gives_each_chunk_once_to_a_worker_or_the_client():
    """Each worker one chunk at a time, the next as one comes back, while the client takes
    its own from the same list; every chunk is explained once, and the feeder says when its
    workers are done."""
    import threading
    from concurrent.futures import Future

    from igcli.chunks import ChunkResult
    from igcli.pool import _Feeder

    class Pool:  # a worker that answers each chunk at once, from another thread
        def __init__(self):
            self.running = 0
            self.most = 0
            self.lock = threading.Lock()

        def submit(self, fn, index, items):
            future = Future()
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)

            def answer():
                time.sleep(0.01)
                with self.lock:
                    self.running -= 1
                future.set_result(ChunkResult(index=index, inputs=len(items)))

            threading.Thread(target=answer).start()
            return future

    parts = [[k] for k in range(40)]
    pool = Pool()
    feeder = _Feeder(pool, parts, 1)
    mine = [feeder.take()[0]]
    feeder.start()
    while (chunk := feeder.take()) is not None:
        mine.append(chunk[0])
        time.sleep(0.02)  # (the client's own chunk)
    theirs = []
    while not feeder.over():
        theirs += [f.result().index for f in feeder.finished(block=True)]
    feeder.join()
    assert sorted(mine + theirs) == list(range(40)) and theirs and len(mine) > 1
    assert pool.most == 1  # one chunk at a time


def test_the_resource_tracker_starts_without_its_leaked_semaphore_warning(monkeypatch):
    """Killed with SIGKILL, a run with --workers left the resource tracker to clean up the
    pool's semaphores, and it printed two lines of UserWarning on the run's stderr after
    the run was gone. The tracker (a process started with this one's -W options) now starts
    told to keep quiet about it; it still cleans up."""
    import multiprocessing.util

    import igcli.pool as pool

    monkeypatch.setattr(sys, "warnoptions", [])
    pool._quiet_resource_tracker()
    pool._quiet_resource_tracker()  # (once only)
    args = multiprocessing.util._args_from_interpreter_flags()
    assert args.count("-Wignore:resource_tracker:UserWarning") == 1


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of each child of `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append((int(entry.name), cmd))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_worker_sent_sigterm_is_a_worker_gone_not_the_end_of_the_run(tmp_path):
    """SIGTERM to one worker: it exits in its chunk, the pool hands that SystemExit over as
    the chunk's result, and it ended the whole run with exit 143, no line and no report.
    The client now explains what the worker left, as for a worker killed any other way."""
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(300):
        shutil.copy(DIGIT_PNGS[k % len(DIGIT_PNGS)], folder / f"d{k:03d}.png")
    out = tmp_path / "out"
    args = ["explain", DIGITS, folder, "--steps", "200", "--workers", "2", "--threads", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "igcli", *map(str, args), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    worker = None
    for _ in range(600):  # (a guard against waiting for ever, not a measure)
        worker = next((p for p, cmd in _children(proc.pid) if "spawn_main" in cmd), None)
        if worker is not None and len(list(out.glob("*.record.json"))) >= 60:
            break  # (past its start-up: in a chunk)
        time.sleep(0.05)
    assert worker is not None, "no worker started"
    os.kill(worker, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "a worker process ended unexpectedly" in err
    assert len(list(out.glob("*.record.json"))) == 300 and (out / "report.json").is_file()


def test_a_pool_that_breaks_as_its_workers_start_leaves_every_input_to_this_process(
    tmp_path, monkeypatch, capsys
):
    """A worker that dies while starting breaks the pool at the first submit: the feeder's
    thread never started, and joining it at the end was an internal error (exit 1) after
    every input had been explained, with no report."""
    from concurrent.futures.process import BrokenProcessPool

    from igcli import pool
    from igcli.cli import main

    class Broken:
        def __init__(self, *args, **kwargs):
            pass

        def submit(self, *args, **kwargs):
            raise BrokenProcessPool("a worker died while starting")

        def shutdown(self, *args, **kwargs):
            pass

    monkeypatch.setattr(pool, "ProcessPoolExecutor", Broken)
    folder, out = _folder(tmp_path), tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["explain", str(DIGITS), str(folder), "-r", "--workers", "2", "--out", str(out),
              "--steps", "4"], prog_name="igcli")  # fmt: skip
    assert info.value.code == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["results"]) == 12
    assert "a worker process ended unexpectedly" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_the_resource_tracker_keeps_running_through_a_closed_terminals_sighup():
    """SIGHUP to a --workers run's process group (a closed terminal) killed multiprocessing's
    resource tracker, which Python starts with SIGINT and SIGTERM blocked only: exit 130 came
    with its 'process died unexpectedly' warning and KeyError tracebacks. It is started with
    SIGHUP ignored."""
    code = (
        "from multiprocessing import resource_tracker\n"
        "from igcli.pool import _start_resource_tracker\n"
        "_start_resource_tracker()\n"
        "pid = resource_tracker._resource_tracker._pid\n"
        "print(open(f'/proc/{pid}/status').read())\n"
    )  # (a process of its own: this one's tracker may have started before, without it)
    status = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60).stdout  # fmt: skip
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:"))
                  .split()[1], 16)  # fmt: skip
    assert ignored & (1 << (signal.SIGHUP - 1))
