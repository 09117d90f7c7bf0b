"""The graph cache: small entries, invalidated by rule changes, bounded in size, inspectable."""

import json
import os

import numpy as np
import onnx
import pytest

import igcli
from igcli import cache
from igcli.cache import parse_size
from tests import models
from tests.test_cli import DIGIT_PNGS, DIGITS, run


def _big_model(tmp_path):
    """tanh(x W) with a 1 MB weight: an entry that copied it would show."""
    model = models.tanh_linear(features=512, classes=512)
    return models.save(model, tmp_path / "big.onnx")


def test_entries_do_not_copy_the_model_weights(tmp_path, monkeypatch):
    from igcli.model import ModelRunner

    monkeypatch.setattr(ModelRunner, "has_saved", lambda *a: False)  # as if none was saved
    path = _big_model(tmp_path)
    igcli.Session(path)
    graphs = [p for p in cache.entries() if p.name.startswith("grad-")]
    assert len(graphs) == 1
    assert graphs[0].stat().st_size < path.stat().st_size / 4
    loaded, hit = cache.cached_model(
        graphs[0].name[5:-5], lambda: pytest.fail("rebuilt"), onnx.load(str(path))
    )
    assert hit and {i.name for i in loaded.graph.initializer} >= {"W", "b"}


def test_second_session_reuses_the_optimised_graph(tmp_path, monkeypatch):
    from igcli import session as session_module

    x = np.array([[0.1, 0.2, -0.3, 0.4]], dtype=np.float32)
    path = models.save(models.tanh_linear(), tmp_path / "tl.onnx")
    first = igcli.Session(path).attribute(x, steps=16)
    monkeypatch.setattr(
        session_module, "build_gradient_graph", lambda *a, **k: pytest.fail("rebuilt")
    )
    second = igcli.Session(path).attribute(x, steps=16)
    assert second.gradient_source == "graph"
    np.testing.assert_array_equal(first.attributions, second.attributions)


def test_a_cached_graph_that_passed_its_self_check_is_not_checked_again(tmp_path, monkeypatch):
    """The self-check costs about 30 model rows (3.7 s of a 15 s ResNet-50 run): a graph
    loaded from the cache that passed it before is trusted, and its records say the same."""
    from igcli import session as session_module

    x = np.array([[0.1, 0.2, -0.3, 0.4]], dtype=np.float32)
    path = models.save(models.tanh_linear(), tmp_path / "tl.onnx")
    first = igcli.Session(path).attribute(x, steps=16)
    assert first.extra["gradient_check"]["verdict"] == "ok"
    monkeypatch.setattr(session_module, "check_directions", lambda *a, **k: pytest.fail("checked"))
    second = igcli.Session(path).attribute(x, steps=16)
    assert second.extra["gradient_check"] == first.extra["gradient_check"]
    third = igcli.Session(path, cache=False)  # no cache: always checked
    with pytest.raises(pytest.fail.Exception):
        third.attribute(x, steps=16)


def test_a_graph_that_failed_its_self_check_is_checked_every_time(tmp_path, monkeypatch):
    from igcli import gradients

    x = np.array([[0.1, 0.2, -0.3, 0.4]], dtype=np.float32)
    path = models.save(models.tanh_linear(), tmp_path / "tl.onnx")
    real = gradients.GraphRunner.run_with_gradients

    def off(self, points, target, *context):
        out, grad = real(self, points, target, *context)
        return out, grad * 1.5

    monkeypatch.setattr(gradients.GraphRunner, "run_with_gradients", off)
    for _ in range(2):
        a = igcli.Session(path).attribute(x, steps=16)
        assert a.gradient_source == "fd"  # fell back both times
    assert not list(cache.cache_dir().glob("check-*.json"))


def test_a_changed_transform_invalidates_entries(tmp_path, monkeypatch):
    path = models.save(models.tanh_linear(), tmp_path / "tl.onnx")
    igcli.Session(path)
    builds = []
    from igcli import session as session_module

    real = session_module.build_gradient_graph
    monkeypatch.setattr(
        session_module,
        "build_gradient_graph",
        lambda *a, **k: builds.append(1) or real(*a, **k),
    )
    igcli.Session(path)
    assert builds == []
    monkeypatch.setattr(cache, "transform_hash", lambda: "a rule changed")
    igcli.Session(path)
    assert builds == [1]


def test_the_cache_stays_under_its_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("IGCLI_CACHE_MAX", "1")
    path = models.save(models.tanh_linear(), tmp_path / "tl.onnx")
    igcli.Session(path).attribute(np.zeros((1, 4), np.float32) + 0.5, steps=4)
    assert cache.info()["bytes"] <= 1


def test_least_recently_used_entries_go_first(tmp_path):
    root = cache.cache_dir()
    root.mkdir(parents=True)
    for k, name in enumerate(["grad-00a1d000.onnx", "grad-00b1d000.onnx", "ort-00c1e000.onnx"]):
        (root / name).write_bytes(b"x" * 100)
        os.utime(root / name, (1000 + k, 1000 + k))
    cache.enforce_limit(250)
    assert sorted(p.name for p in cache.entries()) == ["grad-00b1d000.onnx", "ort-00c1e000.onnx"]


def test_files_igcli_did_not_write_are_never_evicted_or_cleared(tmp_path):
    """IGCLI_CACHE_DIR=~/models: a run evicted the user's own models, oldest first, until
    the folder fit IGCLI_CACHE_MAX, and `cache clear` removed every .onnx and .json."""
    root = cache.cache_dir()
    root.mkdir(parents=True)
    theirs = ["resnet.onnx", "resnet.onnx.data", "model.json", "grad-notes.onnx", "tmp.tmp"]
    for name in theirs:
        (root / name).write_bytes(b"x" * 1000)
        os.utime(root / name, (1000, 1000))
    (root / "grad-00a1d000.onnx").write_bytes(b"x" * 1000)
    cache.enforce_limit(10)
    assert cache.info()["entries"] == 0
    igcli.Session(DIGITS)
    assert run("cache", "clear").exit_code == 0
    assert sorted(p.name for p in root.iterdir()) == sorted(theirs)


def test_cache_info_and_clear_commands(tmp_path):
    igcli.Session(DIGITS)
    info = json.loads(run("cache", "info", "--json").stdout)
    assert info["entries"] >= 2 and info["optimized_graphs"] == 1 and info["bytes"] > 0
    assert "entries" in run("cache", "info").stdout
    cleared = run("cache", "clear")
    assert cleared.exit_code == 0 and not cache.entries()


def test_a_fifo_in_place_of_a_json_entry_neither_hangs_a_run_nor_survives_clear(tmp_path):
    """A FIFO named like a sha256- or check- entry hung explain in open() for ever, and
    `cache clear` said 'removed 3 file(s)' and left it. A clear that cannot remove an entry
    (a read-only cache) said 'removed 0 file(s)', exit 0: now exit 6, naming one."""
    import stat
    import subprocess
    import sys

    igcli.Session(DIGITS)  # fills the cache: sha256-, grad-, ort-, check- entries
    root = cache.cache_dir()
    swapped = [p for p in root.iterdir() if p.name.startswith(("sha256-", "check-"))]
    assert swapped
    for p in swapped:
        p.unlink()
        os.mkfifo(p)
    env = {**os.environ, "IGCLI_CACHE_DIR": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "igcli", "explain", str(DIGITS), str(DIGIT_PNGS[0]), "--out",
         str(tmp_path / "o"), "--steps", "4", "-q"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert run("cache", "clear").exit_code == 0
    assert not [p for p in root.iterdir() if stat.S_ISFIFO(os.lstat(p).st_mode)]
    igcli.Session(DIGITS)
    if os.geteuid() != 0:  # (root writes anywhere)
        root.chmod(0o555)
        try:
            refused = run("cache", "clear")
        finally:
            root.chmod(0o755)
        assert refused.exit_code == 6 and "could not remove" in refused.stderr


@pytest.mark.parametrize(
    "text,value", [("500M", 500 << 20), ("2G", 2 << 30), ("1.5GB", int(1.5 * (1 << 30))), ("7", 7)]
)
def test_sizes(text, value):
    assert parse_size(text) == value


def test_a_broken_entry_is_rebuilt(tmp_path):
    path = models.save(models.tanh_linear(), tmp_path / "tl.onnx")
    igcli.Session(path)
    for entry in cache.entries():
        entry.write_bytes(b"not onnx")
    a = igcli.Session(path).attribute(np.full((1, 4), 0.5, np.float32), steps=8)
    assert a.gradient_source == "graph"


def test_file_hashes_are_remembered_until_the_file_changes(tmp_path, monkeypatch):
    """A second run need not read a large model again to find its entries, but a model
    rewritten in place (even same size, same mtime) is hashed again."""
    import hashlib

    path = tmp_path / "model.bin"
    path.write_bytes(b"a" * 1000)
    # hashed "10 s after" the write: the file has settled, so its memo is trusted
    later = cache.time.time_ns() + 10_000_000_000
    monkeypatch.setattr(cache.time, "time_ns", lambda: later)
    assert cache.file_sha256(path) == hashlib.sha256(b"a" * 1000).hexdigest()
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a[0]) or real_open(*a, **k))
    assert cache.file_sha256(path) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert path not in reads  # answered from the memo
    monkeypatch.setattr("builtins.open", real_open)
    st = path.stat()
    path.write_bytes(b"b" * 1000)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime; ctime moves
    assert cache.file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_a_file_hashed_right_after_a_change_is_hashed_again(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"a" * 1000)
    cache.file_sha256(path)  # the memo cannot tell a change within the same moment
    with open(path, "r+b") as fh:
        fh.write(b"b")
    assert cache.file_sha256(path) == cache.file_sha256(path, remember=False)


def test_the_memory_a_row_costs_is_measured_once_per_graph(tmp_path, monkeypatch):
    """Measuring it takes two model calls (0.7 s on ResNet-50): a graph that passed its
    self-check keeps the figure beside its verdict, and the next run sizes its calls from it."""
    from igcli import session as session_module

    x = np.array([[0.1, 0.2, -0.3, 0.4]], dtype=np.float32)
    path = models.save(models.tanh_linear(), tmp_path / "tl.onnx")
    monkeypatch.setattr(session_module, "rows_within", lambda budget, call, cap: (7, 10**6))
    first = igcli.Session(path, memory_limit=10**9)
    first.attribute(x, steps=16)
    monkeypatch.setattr(session_module, "rows_within", lambda *a, **k: pytest.fail("measured"))
    second = igcli.Session(path, memory_limit=10**9)
    second.attribute(x, steps=16)
    assert second.memory_per_row == 10**6


def test_a_graph_checked_with_its_rows_given_still_keeps_the_measure(tmp_path, monkeypatch):
    """A first run given --batch-size measures nothing; the next run without it measures
    once and adds the figure to the stored check, so the run after that makes no calls."""
    from igcli import session as session_module

    x = np.array([[0.1, 0.2, -0.3, 0.4]], dtype=np.float32)
    path = models.save(models.tanh_linear(), tmp_path / "tl.onnx")
    monkeypatch.setattr(session_module, "rows_within", lambda *a, **k: pytest.fail("measured"))
    igcli.Session(path, memory_limit=10**9, batch_size=4).attribute(x, steps=16)
    monkeypatch.setattr(session_module, "rows_within", lambda budget, call, cap: (7, 10**6))
    igcli.Session(path, memory_limit=10**9).attribute(x, steps=16)
    monkeypatch.setattr(session_module, "rows_within", lambda *a, **k: pytest.fail("measured"))
    third = igcli.Session(path, memory_limit=10**9)
    third.attribute(x, steps=16)
    assert third.memory_per_row == 10**6


def test_optimised_graphs_keep_their_weights_in_a_mapped_file(tmp_path):
    """ONNX Runtime maps the weights file into memory instead of parsing them out of the
    graph; an entry whose weights went missing is rebuilt, never an error."""
    from igcli.model import optimized_data

    x = np.zeros((1, 512), dtype=np.float32)
    path = _big_model(tmp_path)
    first = igcli.Session(path).attribute(x, steps=4)
    graphs = [p for p in cache.entries() if p.name.startswith("ort-") and p.suffix == ".onnx"]
    assert graphs and all(len(optimized_data(p)) == 1 for p in graphs)
    assert all(p.stat().st_size < 100_000 for p in graphs)  # the weights are elsewhere
    assert not list(cache.cache_dir().glob(".staging-*"))
    for p in graphs:
        optimized_data(p)[0].unlink()
    again = igcli.Session(path).attribute(x, steps=4)
    np.testing.assert_array_equal(first.attributions, again.attributions)
    assert all(len(optimized_data(p)) == 1 for p in graphs)


def test_an_optimised_graph_that_cannot_be_written_is_not_an_error(tmp_path, monkeypatch):
    """ONNX Runtime fails the whole session when it cannot write the optimised graph (a full
    disk): a model that loads was refused with exit 3. It is now made without saving it."""
    import tempfile

    x = np.zeros((1, 512), dtype=np.float32)
    path = _big_model(tmp_path)
    expected = igcli.Session(path, cache=False).attribute(x, steps=4)
    gone = tmp_path / "no-such-folder" / ".staging-x"  # (where no file can be written)
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: str(gone))
    got = igcli.Session(path).attribute(x, steps=4)
    np.testing.assert_array_equal(got.attributions, expected.attributions)
    assert got.gradient_source == "graph"
    assert not [p for p in cache.entries() if p.name.startswith("ort-")]


def test_a_graph_saved_again_takes_its_own_weights_and_drops_the_old(tmp_path):
    """Each save names its weights file itself (two runs saving one entry at once must not
    pair one's graph with the other's weights); the replaced weights are removed."""
    from igcli.model import optimized_data

    x = np.zeros((1, 512), dtype=np.float32)
    path = _big_model(tmp_path)
    first = igcli.Session(path).attribute(x, steps=4)
    graphs = [p for p in cache.entries() if p.name.startswith("ort-") and p.suffix == ".onnx"]
    before = {p: optimized_data(p) for p in graphs}
    for p in graphs:
        p.unlink()  # the graph goes, its weights stay: the next run saves both anew
    again = igcli.Session(path).attribute(x, steps=4)
    np.testing.assert_array_equal(first.attributions, again.attributions)
    for p in graphs:
        now = optimized_data(p)
        assert len(now) == 1 and now != before[p]


def test_the_gradient_graph_is_kept_only_where_no_optimised_graph_was_saved(tmp_path):
    """A second run on this machine opens ONNX Runtime's optimised graph, so the gradient
    graph is not saved beside it; with the optimised graph gone, it is rebuilt, not lost."""
    x = np.array([[0.1, 0.2, -0.3, 0.4]], dtype=np.float32)
    path = models.save(models.tanh_linear(), tmp_path / "tl.onnx")
    first = igcli.Session(path).attribute(x, steps=8)
    names = [p.name for p in cache.entries()]
    assert any(n.startswith("ort-") for n in names)
    assert not any(n.startswith("grad-") for n in names)
    for p in cache.entries():
        p.unlink()
    again = igcli.Session(path).attribute(x, steps=8)
    np.testing.assert_array_equal(first.attributions, again.attributions)


def test_weights_changed_in_external_data_are_a_new_model(tmp_path):
    """The hash covers a model's .data file: weights halved there (the .onnx unchanged)
    kept serving the old graph from the cache, and --skip-existing the old results."""
    from igcli.model import model_hash

    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save(onnx.load(str(DIGITS)), str(path), save_as_external_data=True,
              location="m.data", size_threshold=0)  # fmt: skip
    x = np.ones((1, 28, 28), np.float32)
    before = igcli.Session(path).attribute(x, target=3)
    sha = model_hash(path)
    weights = np.fromfile(folder / "m.data", "<f4")
    (weights * 0.5).astype("<f4").tofile(folder / "m.data")
    os.utime(folder / "m.data", ns=(1, 1))  # (even with its old times)
    after = igcli.Session(path).attribute(x, target=3)
    assert model_hash(path) != sha
    assert abs(after.f_input - before.f_input) > 1e-3
    fresh = igcli.Session(path, cache=False).attribute(x, target=3)
    assert after.f_input == pytest.approx(fresh.f_input, rel=1e-6)


def test_a_bad_cache_size_in_a_program_is_said_and_leaves_no_staging(tmp_path, monkeypatch):
    """A library has no command to check IGCLI_CACHE_MAX first: a Session says it when made;
    a graph saved after the value went bad says it too (where only the gradient graph is
    cached as well), and the folder an optimised session was staged in goes all the same."""
    from igcli.cache import save_graph
    from igcli.errors import UsageError
    from igcli.model import _publish_optimized
    from igcli.session import Session

    monkeypatch.setenv("IGCLI_CACHE_MAX", "lots")
    said = "IGCLI_CACHE_MAX: 'lots' is not a size"
    with pytest.raises(UsageError, match=said):
        Session(DIGITS)
    assert Session(DIGITS, cache=False).classes == 10  # no cache, nothing to bound
    model = onnx.load(str(DIGITS))
    with pytest.raises(UsageError, match=said):
        save_graph("k", model, model)
    staging = tmp_path / "cache" / ".staging-1"
    staging.mkdir(parents=True)
    (staging / "opt-k.onnx").write_bytes(b"graph")
    with pytest.raises(UsageError, match=said):
        _publish_optimized(staging, tmp_path / "cache" / "opt-k.onnx")
    assert not staging.exists() and (tmp_path / "cache" / "opt-k.onnx").exists()


def test_a_cache_folder_this_user_cannot_enter_is_passed_over(tmp_path, monkeypatch):
    """A root-owned mode-700 cache folder, for another user: the first look into it raised
    PermissionError, an internal error (exit 1) that stopped the run. The run now goes on
    without the cache and says so once. (Faked: root may enter any folder.)"""
    folder = tmp_path / "cache"
    folder.mkdir()
    monkeypatch.setenv("IGCLI_CACHE_DIR", str(folder))
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)
    said = []
    session = igcli.Session(DIGITS, warn=said.append)
    assert not session.use_cache and any("cannot be read" in w for w in said)
    assert session.attribute(np.zeros((1, 28, 28), np.float32), steps=4).gradient_source
    assert cache.entries() == [] and not list(folder.iterdir())
    result = run("cache", "info")
    assert result.exit_code == 0, result.stderr


def test_a_cache_path_that_is_no_folder_says_so(tmp_path, monkeypatch):
    """IGCLI_CACHE_DIR=/dev/null (or a file) said "cannot be read (permission denied?)"."""
    monkeypatch.setenv("IGCLI_CACHE_DIR", str(tmp_path / "file"))
    (tmp_path / "file").write_text("x")
    said = []
    session = igcli.Session(DIGITS, warn=said.append)
    assert not session.use_cache
    assert any("the cache's path is no folder (a file or a device)" in w for w in said)
