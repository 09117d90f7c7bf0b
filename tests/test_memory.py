"""The memory budget decides the rows per model call."""

import mmap
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import igcli
from igcli.memory import available_memory, default_budget, rows_within
from tests.test_cli import DIGITS, run


def _arena(held: list, row_bytes: int):
    def call(n):  # like ONNX Runtime's arena: the largest call's memory stays resident
        block = mmap.mmap(-1, n * row_bytes)  # fresh pages, never reused heap
        block.write(b"\1" * len(block))
        held[:] = [block]

    return call


def test_rows_follow_the_measured_cost_of_a_row():
    """In a fresh process: a long test session's own allocations would blur the measure."""
    code = textwrap.dedent(
        """
        from igcli.memory import current_rss, rows_within
        from tests.test_memory import _arena
        held = []
        budget = current_rss() + (60 << 20)
        print(*rows_within(budget, _arena(held, 8 << 20), cap=64))
        """
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    rows, per_row = int(out[0]), int(out[1])
    assert 6 << 20 < per_row < 10 << 20
    assert 3 <= rows <= 9


def test_rows_are_capped_and_at_least_one():
    assert rows_within(1, lambda n: None, cap=64) == (64, None)  # unmeasurable: the cap
    rows, _ = rows_within(0, _arena([], 1 << 20), cap=64)
    assert rows == 1


def test_budget_is_a_share_of_available_memory():
    assert 0 < default_budget() < available_memory()


def test_a_session_measures_its_rows_once(tmp_path):
    session = igcli.Session(DIGITS)
    session.attribute(sorted((DIGITS.parent.parent / "sample_inputs" / "digits").glob("*.png"))[0])
    assert 1 <= session.runner.batch_size <= 512
    given = igcli.Session(DIGITS, batch_size=7)
    assert given.runner.batch_size == 7


def test_memory_limit_option(tmp_path):
    png = sorted((DIGITS.parent.parent / "sample_inputs" / "digits").glob("*.png"))[0]
    ok = run("explain", DIGITS, png, "--memory-limit", "2G", "--out", tmp_path, "--steps", "4")
    assert ok.exit_code == 0
    bad = run("explain", DIGITS, png, "--memory-limit", "lots", "--out", tmp_path)
    assert bad.exit_code == 2 and "--memory-limit" in bad.stderr


def test_the_row_tuner_settles_on_the_fastest_size():
    from igcli.memory import RowTuner

    cost = {8: 1.0, 16: 0.6, 32: 0.5, 64: 0.9, 128: 1.2}  # seconds per row by call size
    tuner = RowTuner(128)
    for _ in range(40):
        size = tuner.next_size()
        tuner.record(size, cost[size] * size)
        tuner.record(3, 99.0)  # a partial call: ignored
    assert tuner.settled == 32
    assert RowTuner(5).sizes == [5]


@pytest.mark.parametrize("kept", [4096, 5])
def test_the_record_spool_leaves_no_file_and_reads_back_across_appends(tmp_path, monkeypatch, kept):
    """Records spill to an unnamed file: a worker killed without finalizers (Dask shuts
    its workers down so) must not leave igcli-records-*.jsonl behind in the temp folder.
    Reading while appending sees the records present when the read began, in order, whether
    the first records are still kept in memory or no longer are."""
    import tempfile

    from igcli import report
    from igcli.report import RecordSpool

    monkeypatch.setattr(report, "KEPT_RECORDS", kept)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spool = RecordSpool({"i": i, "name": "x" * (i % 7)} for i in range(3))
    assert list(tmp_path.iterdir()) == []
    reading = iter(spool)
    assert next(reading)["i"] == 0
    spool.extend({"i": i, "name": "\udcff" * 50_000} for i in range(3, 40))  # > 1 MiB
    assert [r["i"] for r in reading] == [1, 2]
    assert [r["i"] for r in spool] == list(range(40))
    assert spool[-1]["name"] == "\udcff" * 50_000 and len(spool[10:13]) == 3


def test_a_row_costs_at_least_its_points_and_gradients(tmp_path, monkeypatch):
    """A 12 MB row once measured 1,365 bytes (ONNX Runtime reused what the 1-row call had
    allocated): 512 rows per call then held every path point, 10.4 GB under --memory-limit
    300M. A row costs at least its input and gradient, and the float64 point and gradient
    the integration holds; a budget not even one row fits is said."""
    import numpy as np

    import igcli.session as session_module
    from igcli.memory import current_rss
    from tests import models

    monkeypatch.setattr(session_module, "rows_within", lambda budget, call, cap: (cap, 1365))
    model = models.save(models.image_model(size=128), tmp_path / "m.onnx")
    x = np.random.default_rng(0).random((3, 128, 128)).astype(np.float32)
    floor = x.size * (2 * 4 + 16)
    room = 256 << 20  # (rows take 90% of the budget less what is resident: see rows_for)
    budget = int((current_rss() + room) / 0.9)
    warned = []
    session = igcli.Session(model, memory_limit=budget, warn=warned.append, cache=False)
    session.attribute(x, steps=8)
    assert session.memory_per_row == floor
    assert 1 < session.runner.batch_size <= room // floor + 1 < 512  # 512: 1,365 bytes a row
    assert not [w for w in warned if "memory budget" in w]
    tight = igcli.Session(model, memory_limit=current_rss() // 2, warn=warned.append, cache=False)
    result = tight.attribute(x, steps=8)
    assert tight.runner.batch_size == 1 and result.rel_error < 1e-3
    (said,) = [w for w in warned if "memory budget" in w]
    assert "running one row per call" in said and "m.onnx" in said


def test_a_row_too_large_for_probes_goes_alone_and_the_check_calls_a_row_at_a_time(
    tmp_path, monkeypatch
):
    """A 2000 x 2000 image under a 1 GB budget peaked at 4.2 GB: probes of two rows and more
    (independence, rows per call) each kept their memory in ONNX Runtime's arena, and the
    self-check ran its 8 and 16 points in one call each. A row whose least cost is over a
    quarter of the budget now goes alone with no probes; the check's calls take at most
    CALL_BYTES of input points (one row at least), with the same numbers."""
    import numpy as np

    from igcli import gradcheck
    from igcli.memory import current_rss
    from tests import models
    from tests.test_gradient_sources import _Sawtooth

    model = models.save(models.image_model(size=512), tmp_path / "m.onnx")
    x = np.random.default_rng(0).random((3, 512, 512)).astype(np.float32)
    floor = x.size * (2 * 4 + 16)  # 18.9 MB
    warned = []
    budget = current_rss() + 3 * floor  # (over a quarter: one row per call, said)
    session = igcli.Session(model, memory_limit=budget, warn=warned.append, cache=False)
    result = session.attribute(x, steps=8)
    assert session.runner.batch_size == 1 and session.memory_per_row == floor
    assert result.rel_error < 1e-2
    assert any("running one row per call" in w for w in warned), warned

    class Counted(_Sawtooth):
        sizes: list = []

        def run(self, points):
            self.sizes.append(len(points))
            return super().run(points)

    point = np.random.default_rng(1).uniform(0.5, 1.5, 64)
    graph = _Sawtooth(wrong=1.3)
    whole = gradcheck.check_directions(graph, point, target=0, directions=4, values=Counted())
    assert max(Counted.sizes) == 8
    Counted.sizes = []
    monkeypatch.setattr(gradcheck, "CALL_BYTES", 3 * point.nbytes)
    parts = gradcheck.check_directions(graph, point, target=0, directions=4, values=Counted())
    assert max(Counted.sizes) == 3 and len(Counted.sizes) > 12
    assert [d.fd for d in parts.directions] == [d.fd for d in whole.directions]


def test_a_full_temporary_folder_under_the_record_spool_is_one_line_exit_6(monkeypatch):
    """A full $TMPDIR (or ulimit -f) under the spool: 'internal error: OSError: [Errno 28]
    No space left on device', exit 1, no file named."""
    import errno

    from igcli.errors import ExitCode, OutputError
    from igcli.report import RecordSpool

    spool = RecordSpool([{"a": 1}])

    class Full:
        def __getattr__(self, name):
            def fail(*args, **kwargs):
                raise OSError(errno.ENOSPC, "No space left on device")

            return fail

    monkeypatch.setattr(spool, "_file", Full())
    with pytest.raises(OutputError, match="No space left on device.*TMPDIR") as info:
        spool.append({"b": 2})
    assert info.value.exit_code == ExitCode.OUTPUT
    with pytest.raises(OutputError):  # (a read flushes what was written first)
        next(spool._lines())
