"""The model file read ahead while the CLI imports (igcli/prefetch.py): used only when the
file opened later is the file that was read."""

from __future__ import annotations

import os
import shutil

import onnx
import pytest

from igcli import prefetch
from igcli.errors import ModelError
from igcli.model import load_model
from tests.test_cli import DIGITS


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.onnx"
    shutil.copy(DIGITS, path)
    yield path
    prefetch._pending.clear()


def test_the_model_read_ahead_is_the_one_loaded(model, monkeypatch):
    prefetch.start(["explain", "--steps", "5", str(model), "x.png"])
    taken, take = [], prefetch.take
    monkeypatch.setattr(prefetch, "take", lambda *a: taken.append(take(*a)) or taken[-1])
    loaded = load_model(model)
    assert taken[0] == model.read_bytes()
    assert loaded.SerializeToString() == onnx.load(model).SerializeToString()
    assert not prefetch._pending  # handed out once


def test_a_model_changed_since_it_was_read_is_read_again(model):
    prefetch.start([str(model)])
    prefetch._pending[os.path.realpath(model)][0].join()
    other = onnx.load(model)
    other.graph.name = "changed after the read ahead"
    onnx.save(other, model)
    assert load_model(model).graph.name == "changed after the read ahead"
    prefetch.start([str(model)])
    prefetch._pending[os.path.realpath(model)][0].join()
    model.write_bytes(b"")  # emptied: the usual one-line error, not the old bytes
    with pytest.raises(ModelError, match="empty file"):
        load_model(model)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_only_regular_onnx_files_are_read_ahead(tmp_path, model):
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    for argv in ([str(fifo)], [str(folder)], [str(tmp_path / "missing.onnx")],
                 ["--out=x.onnx"], [str(model).removesuffix(".onnx")], ["a\0b.onnx"]):  # fmt: skip
        prefetch.start(argv)
        assert not prefetch._pending, argv
