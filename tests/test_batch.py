"""Batch runs: folders, stdin lists, tree-shaped outputs, resuming, shards, bad files."""

import errno
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from igcli.attribution import Attribution
from igcli.batch import discover, in_shard
from igcli.errors import ExitCode
from tests.test_cli import CANCER, CANCER_CSV, DIGIT_PNGS, DIGITS, ROOT, one_line_error, run


@pytest.fixture
def tree(tmp_path):
    """in/a/img.png, in/b/img.png, in/top.png, in/notes.txt."""
    root = tmp_path / "in"
    for sub, src in (("a", DIGIT_PNGS[0]), ("b", DIGIT_PNGS[1])):
        (root / sub).mkdir(parents=True)
        shutil.copy(src, root / sub / "img.png")
    shutil.copy(DIGIT_PNGS[2], root / "top.png")
    (root / "notes.txt").write_text("not an input")
    return root


def names(result):
    return sorted(json.loads(line)["name"] for line in result.stdout.splitlines())


def test_folder_is_flat_unless_recursive(tree, tmp_path):
    flat = run("explain", DIGITS, tree, "--out", tmp_path / "o1", "--json", "--steps", "4")
    assert flat.exit_code == 0, flat.stderr
    assert names(flat) == ["top"]
    deep = run("explain", DIGITS, tree, "-r", "--out", tmp_path / "o2", "--json", "--steps", "4")
    assert names(deep) == ["a/img", "b/img", "top"]
    # same file name in two folders: two outputs, nothing overwritten
    a = np.load(tmp_path / "o2" / "a" / "img.npy")
    b = np.load(tmp_path / "o2" / "b" / "img.npy")
    assert not np.allclose(a, b)


def test_glob_selects_files(tree, tmp_path):
    result = run(
        "explain",
        DIGITS,
        tree,
        "-r",
        "--glob",
        "a/*",
        "--out",
        tmp_path / "o",
        "--json",
        "--steps",
        "4",
    )
    assert names(result) == ["a/img"]
    both = run("explain", DIGITS, tree, "-r", "--glob", "a/*", "--glob", "top*", "--out",
               tmp_path / "o2", "--json", "--steps", "4")  # fmt: skip
    assert names(both) == ["a/img", "top"]  # a second --glob adds (it replaced the first)
    every = run("explain", DIGITS, tree, "-r", "--glob", "**/*.png", "--out", tmp_path / "o3",
                "--json", "--steps", "4")  # fmt: skip
    assert names(every) == ["a/img", "b/img", "top"]  # '**/' matches no folder too


def test_stdin_list(tree, tmp_path):
    listing = "\n".join(str(p) for p in sorted(tree.rglob("*.png"))) + "\n"
    result = run(
        "explain", DIGITS, "-", "--out", tmp_path / "o", "--json", "--steps", "4", input=listing
    )
    assert result.exit_code == 0, result.stderr
    # two files called img.png: named relative to their common folder
    assert names(result) == ["a/img", "b/img", "top"]


def test_a_listed_name_with_a_trailing_blank_is_not_another_file(tmp_path):
    """'a.png ' listed on stdin became 'a.png', skipped as listed twice: it vanished from
    the run, exit 0. It is its own input now ('.png ' is no suffix igcli knows: it is read
    as what it holds, a PNG, with a note)."""
    shutil.copy(DIGIT_PNGS[0], tmp_path / "a.png")
    shutil.copy(DIGIT_PNGS[1], tmp_path / "a.png ")
    listing = f"{tmp_path / 'a.png'}\n{tmp_path / 'a.png '}\n"
    result = run("explain", DIGITS, "-", "--out", tmp_path / "o", "--steps", "4", "--json",
                 input=listing)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert f"{tmp_path / 'a.png '}: named .png , but holds a PNG image" in result.stderr
    assert "listed more than once" not in result.stderr
    assert len(result.stdout.splitlines()) == 2


def test_names_escaping_out_are_refused(tmp_path):
    from igcli.errors import OutputError
    from igcli.outputs import output_stem

    with pytest.raises(OutputError):
        output_stem(tmp_path / "out", "../../etc/passwd")
    assert output_stem(tmp_path / "out", "a/b") == (tmp_path / "out" / "a" / "b").resolve()


def test_an_output_name_escaping_through_a_symlink_fails_that_input_only(tree, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "a")  # outputs of in/a/img.png would land outside --out
    result = run("explain", DIGITS, tree, "-r", "--out", out, "--json", "--steps", "4")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert "escape" in result.stderr and "Traceback" not in result.stderr
    assert names(result) == ["a/img", "b/img", "top"]  # failures carry their output name
    assert not list(elsewhere.iterdir())
    assert (out / "b" / "img.npy").is_file() and (out / "top.npy").is_file()


def test_no_heatmaps_writes_attributions_and_reports_only(tree, tmp_path):
    out = tmp_path / "o"
    result = run("explain", DIGITS, tree, "--out", out, "--steps", "4", "--no-heatmaps", "--json")
    assert result.exit_code == 0
    record = json.loads(result.stdout.splitlines()[0])
    assert record["heatmap_file"] is None and (out / record["attributions_file"]).is_file()
    assert not list(out.rglob("*.png")) and (out / "report.json").is_file()


def test_symlink_outside_tree_is_refused(tree, tmp_path):
    outside = tmp_path / "secret.png"
    shutil.copy(DIGIT_PNGS[3], outside)
    os.symlink(outside, tree / "link.png")
    result = run("explain", DIGITS, tree, "--out", tmp_path / "o", "--json", "--steps", "4")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert "link.png" in result.stderr and "outside" in result.stderr
    assert names(result) == ["link", "top"]  # failures are JSON lines too
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [f["input"].endswith("link.png") for f in report["failures"]] == [True]


def test_bad_files_in_a_folder_do_not_stop_the_rest(tree, tmp_path):
    (tree / "broken.png").write_bytes(b"garbage")
    (tree / "empty.jpg").write_bytes(b"")
    np.save(tree / "wrong.npy", np.zeros((5, 5), dtype=np.float32))
    out = tmp_path / "o"
    result = run("explain", DIGITS, tree, "--out", out, "--steps", "4")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    report = json.loads((out / "report.json").read_text())
    failed = sorted(os.path.basename(f["input"]) for f in report["failures"])
    assert failed == ["broken.png", "empty.jpg", "wrong.npy"]
    assert [r["name"] for r in report["results"]] == ["top"]
    assert any(s["input"].endswith("notes.txt") for s in report["skipped"])
    assert not list(out.glob("broken*")) and not list(out.glob("*.tmp"))
    failures = (out / "report.md").read_text().split("## Failed inputs")[1]
    line = next(x for x in failures.splitlines() if "broken.png" in x)
    assert line.count("broken.png") == 1 and "not a readable image" in line  # path once


def test_an_earlier_runs_output_folder_under_the_inputs_is_no_input(tree, tmp_path):
    """A second run over a tree that holds the first run's --out explained its heatmaps and
    .npy files as digits (18 results instead of 6) and failed on its report.csv. A folder
    with an igcli report in it is left out and listed as skipped."""
    first = run("explain", DIGITS, tree, "-r", "--out", tree / "out1", "--steps", "2")
    assert first.exit_code == 0
    second = run("explain", DIGITS, tree, "-r", "--out", tree / "out2", "--steps", "2")
    assert second.exit_code == 0, second.stderr
    report = json.loads((tree / "out2" / "report.json").read_text())
    assert sorted(r["name"] for r in report["results"]) == ["a/img", "b/img", "top"]
    assert any(s["input"].endswith("out1") and "earlier igcli run" in s["reason"]
               for s in report["skipped"])  # fmt: skip


def test_an_earlier_runs_outputs_whose_reports_are_gone_are_no_inputs(tree, tmp_path):
    """Without its report.json, an old output folder is still known by the record files
    beside its outputs: the .npy and .png files they list are skipped, named, not explained
    (as digits, or refused for their shape); a record's own input beside it still is."""
    first = run("explain", DIGITS, tree, "-r", "--out", tree / "out1", "--steps", "2")
    assert first.exit_code == 0
    for report in (tree / "out1").glob("report.*"):
        report.unlink()
    shutil.copy(DIGIT_PNGS[0], tree / "out1" / "a" / "mine.png")  # a user's file in there
    second = run("explain", DIGITS, tree, "-r", "--out", tmp_path / "out2", "--steps", "2")
    assert second.exit_code == 0, second.stderr
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert sorted(r["name"] for r in report["results"]) == ["a/img", "b/img", "out1/a/mine", "top"]
    listed = [s for s in report["skipped"] if "earlier igcli run's output" in s["reason"]]
    assert sorted(os.path.relpath(s["input"], tree) for s in listed) == [
        f"out1/{name}/img.{ext}" for name in "ab" for ext in ("npy", "png")
    ] + ["out1/top.npy", "out1/top.png"]
    assert all(s["reason"].endswith(f"(its {Path(s['input']).stem}.record.json lists it)")
               for s in listed)  # fmt: skip
    # an old output folder given as the input folder itself: its report.csv is no table
    third = run("explain", DIGITS, tmp_path / "out2", "--out", tmp_path / "out3", "--steps", "2")
    assert third.exit_code == ExitCode.INPUTS_FAILED and "no inputs to explain" in third.stderr
    skipped = json.loads((tmp_path / "out3" / "report.json").read_text())["skipped"]
    assert {"input": str(tmp_path / "out2" / "report.csv"),
            "reason": "an earlier igcli run's report"} in skipped  # fmt: skip


def test_skip_existing_resumes(tree, tmp_path):
    out = tmp_path / "o"
    first = run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4")
    assert first.exit_code == 0
    (out / "b" / "img.record.json").unlink()  # as if the run had been killed during b/img
    stamp = (out / "a" / "img.npy").stat().st_mtime_ns
    second = run(
        "explain", DIGITS, tree, "-r", "--out", out, "--steps", "4", "--skip-existing", "--json"
    )
    assert second.exit_code == 0
    # resumed inputs still print their JSON lines: a pipeline reading stdout misses nothing
    assert names(second) == ["a/img", "b/img", "top"]
    assert (out / "a" / "img.npy").stat().st_mtime_ns == stamp  # not redone
    report = json.loads((out / "report.json").read_text())
    assert len(report["results"]) == 3 and report["summary"]["resumed"] == 2


def test_skip_existing_redoes_results_whose_files_were_emptied_or_overwritten(tree, tmp_path):
    out = tmp_path / "o"
    run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4")
    (out / "a" / "img.npy").write_bytes(b"garbage!")
    (out / "b" / "img.png").write_bytes(b"")
    again = run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4", "--skip-existing")
    report = json.loads((out / "report.json").read_text())
    assert again.exit_code == 0 and report["summary"]["resumed"] == 1  # top only
    assert np.load(out / "a" / "img.npy").shape[-2:] == (28, 28)
    assert (out / "b" / "img.png").read_bytes().startswith(b"\x89PNG")


def test_skip_existing_redoes_results_whose_files_were_cut_short(tree, tmp_path):
    """A .npy shorter than its header says, or a PNG without its end, is redone (only the
    first 8 bytes were read: a truncated .npy was resumed as ok)."""
    out = tmp_path / "o"
    run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4")
    npy, png = out / "a" / "img.npy", out / "b" / "img.png"
    npy.write_bytes(npy.read_bytes()[:150])
    png.write_bytes(png.read_bytes()[:-1])
    again = run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4", "--skip-existing")
    report = json.loads((out / "report.json").read_text())
    assert again.exit_code == 0 and report["summary"]["resumed"] == 1  # top only
    assert np.load(npy).shape[-2:] == (28, 28) and png.read_bytes().endswith(b"IEND\xaeB`\x82")


def test_skip_existing_redoes_results_whose_files_were_replaced(tree, tmp_path):
    """A whole .npy from another result, copied or linked in, loaded as whole and was resumed
    as this input's: its record said one sum, the file held another. The record file keeps
    a hash of each output as written: a copy is redone, and a link (which igcli never
    writes through) fails that input in one line, as writing it would."""
    out = tmp_path / "o"
    run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4")
    other = tmp_path / "other.npy"
    shutil.copy(out / "top.npy", other)
    (out / "a" / "img.npy").unlink()
    (out / "a" / "img.npy").symlink_to(other)
    time.sleep(0.01)
    shutil.copy(other, out / "b" / "img.npy")
    again = run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4", "--skip-existing")
    report = json.loads((out / "report.json").read_text())
    assert again.exit_code == ExitCode.INPUTS_FAILED
    assert "a/img.npy' would escape the output folder through a symlink there" in again.stderr
    assert report["summary"]["resumed"] == 1  # top only: b/img redone, a/img refused
    (b,) = [r for r in report["results"] if r["name"] == "b/img"]
    assert np.isclose(np.load(out / "b" / "img.npy").sum(), b["attribution_sum"], rtol=1e-5)


def test_skip_existing_never_reads_a_fifo_or_device_in_out(tree, tmp_path):
    """A result replaced by a FIFO or a link to /dev/zero, a record that is a FIFO, and a
    record whose file_sha256 names /dev/zero hung --skip-existing (the hash read them to
    the end). None is read: each input is redone, and where something is in the way the
    write refuses it in one line, as without --skip-existing; the others are resumed."""
    out = tmp_path / "o"
    run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4")
    (out / "a" / "img.npy").unlink()
    (out / "a" / "img.npy").symlink_to("/dev/zero")
    (out / "b" / "img.png").unlink()
    os.mkfifo(out / "b" / "img.png")
    record = out / "top.record.json"
    data = json.loads(record.read_text())
    data["file_sha256"]["/dev/zero"] = "x"
    record.write_text(json.dumps(data))
    again = run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4", "--skip-existing")
    assert again.exit_code == ExitCode.INPUTS_FAILED and "Traceback" not in again.stderr
    assert "a/img.npy' would escape the output folder" in again.stderr
    (line,) = [x for x in again.stderr.splitlines() if "b/img" in x]
    assert "b/img.png: its output img.png would replace what is there (not a file)" in line
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["resumed"] == 0  # top redone: its record named /dev/zero
    assert [r["name"] for r in report["results"]] == ["top"]

    (out / "a" / "img.npy").unlink()
    (out / "b" / "img.png").unlink()
    run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4")
    (out / "a" / "img.record.json").unlink()
    os.mkfifo(out / "a" / "img.record.json")
    again = run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4", "--skip-existing")
    assert again.exit_code == ExitCode.INPUTS_FAILED
    (line,) = [x for x in again.stderr.splitlines() if "a/img" in x]
    assert "its output img.record.json would replace what is there (not a file)" in line
    assert json.loads((out / "report.json").read_text())["summary"]["resumed"] == 2


def test_skip_existing_redoes_results_made_with_other_settings(tree, tmp_path):
    out = tmp_path / "o"
    run("explain", DIGITS, tree, "--out", out, "--steps", "4")
    stamp = (out / "top.npy").stat().st_mtime_ns
    again = run("explain", DIGITS, tree, "--out", out, "--steps", "8", "--skip-existing")
    report = json.loads((out / "report.json").read_text())
    assert again.exit_code == 0 and report["summary"]["resumed"] == 0
    assert report["results"][0]["steps"] == 8 and (out / "top.npy").stat().st_mtime_ns != stamp
    same = run("explain", DIGITS, tree, "--out", out, "--steps", "8", "--skip-existing")
    assert same.exit_code == 0
    assert json.loads((out / "report.json").read_text())["summary"]["resumed"] == 1


def test_skip_existing_resumes_when_the_default_rule_is_then_named(tree, tmp_path):
    """--method gausslegendre names the rule a run without --method used: the same
    results, resumed, not made again (it was redone)."""
    out = tmp_path / "o"
    run("explain", DIGITS, tree, "--out", out, "--steps", "4")
    again = run("explain", DIGITS, tree, "--out", out, "--steps", "4",
                "--method", "gausslegendre", "--skip-existing")  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert json.loads((out / "report.json").read_text())["summary"]["resumed"] == 1


def test_skip_existing_redoes_results_of_a_changed_model(tree, tmp_path):
    out = tmp_path / "o"
    model = tmp_path / "m.onnx"
    shutil.copy(DIGITS, model)
    shutil.copy(DIGITS.with_suffix(".json"), tmp_path / "m.json")
    run("explain", model, tree, "--out", out, "--steps", "4")
    changed = onnx.load(str(model))
    changed.doc_string = "retrained"
    onnx.save(changed, str(model))
    again = run("explain", model, tree, "--out", out, "--steps", "4", "--skip-existing")
    assert json.loads((out / "report.json").read_text())["summary"]["resumed"] == 0
    assert again.exit_code == 0


def test_shards_partition_inputs_and_merge(tree, tmp_path):
    outs = []
    seen = []
    for k in (1, 2, 3):
        out = tmp_path / f"shard{k}"
        result = run(
            "explain",
            DIGITS,
            tree,
            "-r",
            "--shard",
            f"{k}/3",
            "--out",
            out,
            "--json",
            "--steps",
            "4",
        )
        assert result.exit_code == 0
        seen += names(result)
        outs.append(out)
    assert sorted(seen) == ["a/img", "b/img", "top"]  # each input in exactly one shard
    merged = run("merge-reports", *outs, "--out", tmp_path / "merged")
    assert merged.exit_code == 0, merged.stderr
    report = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert sorted(r["name"] for r in report["results"]) == ["a/img", "b/img", "top"]


def test_shard_assignment_is_stable():
    assert [in_shard(f"img{i}", (1, 4)) for i in range(20)] == [
        in_shard(f"img{i}", (1, 4)) for i in range(20)
    ]
    assert sum(in_shard(f"img{i}", (k, 4)) for i in range(100) for k in range(1, 5)) == 100


def test_bad_shard_spec(tmp_path):
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--shard", "5/4", "--out", tmp_path)
    assert result.exit_code == ExitCode.USAGE


def test_quiet_leaves_stderr_empty(tmp_path):
    result = run(
        "explain",
        CANCER,
        CANCER.parent.parent / "sample_inputs" / "breast_cancer.csv",
        "--out",
        tmp_path,
        "--quiet",
        "--steps",
        "4",
        "--gradients",
        "fd",
    )
    assert result.exit_code == 0 and result.stderr == ""


def test_read_only_output_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", out)
        assert result.exit_code == ExitCode.OUTPUT
    finally:
        out.chmod(0o700)


def test_atomic_writes_replace_a_file_named_from_the_working_folder(
    tmp_path, monkeypatch, write_route
):
    """A relative name (`--out igcli-out/digits`, a second `make demo`): replacing its
    report linked the temporary name relative to the folder twice, and every report failed."""
    from igcli import outputs

    monkeypatch.chdir(tmp_path)
    target = Path("out") / "sub" / "report.json"
    outputs.atomic_write_bytes(target, b"first")
    outputs.atomic_write_bytes(target, b"second")
    assert (tmp_path / target).read_bytes() == b"second"
    assert [p.name for p in (tmp_path / target).parent.iterdir()] == ["report.json"]


def test_a_refused_link_takes_the_named_route_from_then_on(tmp_path, monkeypatch):
    """A /proc that cannot name the unnamed file (a sandbox, say): the bytes go to a named
    file, renamed into place, and the process stops trying O_TMPFILE."""
    from igcli import outputs

    if not outputs._UNNAMED:
        pytest.skip("no O_TMPFILE here")
    monkeypatch.setattr(outputs, "_UNNAMED", outputs._UNNAMED)  # (restored after)
    tried = []

    def refused(*args, **kwargs):
        tried.append(args)
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(outputs.os, "link", refused)
    data = bytes(range(256)) * 5000  # more than one read back
    outputs.atomic_write_parts(tmp_path / "x.npy", [data[:7], data[7:]])
    outputs.atomic_write_bytes(tmp_path / "y.npy", b"second")
    assert (tmp_path / "x.npy").read_bytes() == data
    assert (tmp_path / "y.npy").read_bytes() == b"second"
    assert len(tried) == 1 and not outputs._UNNAMED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "y.npy"]


def test_a_failed_link_leaves_nothing(tmp_path, monkeypatch, write_route):
    from igcli import outputs
    from igcli.errors import OutputError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "link", full)
    monkeypatch.setattr(outputs.os, "replace", full)
    with pytest.raises(OutputError, match="No space left"):
        outputs.atomic_write_bytes(tmp_path / "x.npy", b"data")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_leaves_no_partial_file(tmp_path, monkeypatch, write_route):
    """A write that fails half-way removes its temporary file and names the file."""
    from igcli import outputs
    from igcli.errors import OutputError

    real_write = os.write

    def full(fd, data):  # ten bytes go out, then the disk is full
        real_write(fd, bytes(data[:10]))
        raise OSError(28, "No space left on device")

    outputs.atomic_write_bytes(tmp_path / "old.npy", b"old")
    monkeypatch.setattr(outputs.os, "write", full)
    with pytest.raises(OutputError, match="No space left"):
        outputs.atomic_write_bytes(tmp_path / "x.npy", b"0123456789" * 100)
    with pytest.raises(OutputError, match="No space left"):
        outputs.atomic_write_bytes(tmp_path / "old.npy", b"0123456789" * 100)
    assert [p.name for p in tmp_path.iterdir()] == ["old.npy"]
    assert (tmp_path / "old.npy").read_bytes() == b"old"


def test_discover_disambiguates_same_stem(tmp_path):
    for name in ("img.png", "img.jpg"):
        shutil.copy(DIGIT_PNGS[0], tmp_path / name)
    found = discover([str(tmp_path)])
    assert sorted(i.name for i in found.items) == ["img.jpg", "img.png"]


def _interrupt_at(monkeypatch, n: int):
    """Ctrl-C as the n-th input starts; returns the real _explain_item, to put back."""
    from igcli import batch

    real = batch.BatchRun._explain_item
    calls = []

    def interrupted(self, item):
        calls.append(item.name)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(self, item)

    monkeypatch.setattr(batch.BatchRun, "_explain_item", interrupted)
    return real


def test_interrupted_run_keeps_finished_inputs_and_resumes(tree, tmp_path, monkeypatch):
    from igcli import batch

    out = tmp_path / "o"
    real = _interrupt_at(monkeypatch, 2)
    # --batch-size 4 with 4 steps: one input per model call, so inputs go one at a time
    first = run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4", "--batch-size", "4")
    assert first.exit_code == ExitCode.INTERRUPTED
    assert len(list(out.rglob("*.record.json"))) == 1
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))
    assert json.loads((out / "report.json").read_text())["summary"]["interrupted"] is True
    monkeypatch.setattr(batch.BatchRun, "_explain_item", real)
    second = run(
        "explain", DIGITS, tree, "-r", "--out", out, "--steps", "4", "--skip-existing", "--json"
    )
    assert second.exit_code == 0 and len(names(second)) == 3
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert summary["resumed"] == 1 and summary["interrupted"] is False


def test_grouped_inputs_match_one_at_a_time(tree, tmp_path):
    """Path points of several inputs in one model call give the same attributions."""
    args = ["explain", DIGITS, tree, "-r", "--steps", "16", "--json"]
    alone = run(*args, "--batch-size", "16", "--out", tmp_path / "alone")
    together = run(*args, "--batch-size", "64", "--out", tmp_path / "together")
    assert alone.exit_code == together.exit_code == 0
    for a, b in zip(alone.stdout.splitlines(), together.stdout.splitlines(), strict=True):
        ra, rb = json.loads(a), json.loads(b)
        assert ra["name"] == rb["name"] and ra["target"] == rb["target"]
        np.testing.assert_allclose(
            np.load(tmp_path / "alone" / ra["attributions_file"]),
            np.load(tmp_path / "together" / rb["attributions_file"]),
            rtol=1e-5,
            atol=1e-7,
        )


def test_a_failing_input_in_a_group_is_found(tmp_path):
    from tests import models

    model = models.save(models.nan_model(), tmp_path / "nan.onnx")
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "a_good.npy", np.array([[20.0, 30.0]], dtype=np.float32))
    np.save(folder / "b_bad.npy", np.array([[1.0, 1.0]], dtype=np.float32))
    np.save(folder / "c_good.npy", np.array([[40.0, 12.0]], dtype=np.float32))
    result = run(
        "explain",
        model,
        folder,
        "--baseline",
        str(folder / "a_good.npy"),
        "--steps",
        "8",
        "--batch-size",
        "64",
        "--out",
        tmp_path / "o",
        "--json",
    )
    assert result.exit_code == ExitCode.INPUTS_FAILED
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["name"], r["status"]) for r in records] == [
        ("a_good", "ok"),
        ("b_bad", "error"),
        ("c_good", "ok"),
    ]


def test_read_only_file_system_is_a_clear_error(tmp_path, monkeypatch):
    """As root the permission test above is skipped; a read-only mount answers EROFS."""
    import errno

    from igcli import outputs

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(outputs.tempfile, "mkstemp", read_only)
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.OUTPUT
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0] and "o" in err[0]
    assert not any(p.is_file() for p in (tmp_path / "o").rglob("*"))


def test_csv_rows_are_inputs_of_their_own(tmp_path, monkeypatch):
    """Each row gets its record when done, fails alone, and resumes alone."""
    from igcli import batch

    lines = CANCER_CSV.read_text().splitlines()
    bad = lines[3].split(",")
    bad[2] = "oops"
    table = [lines[0], lines[1], lines[2], ",".join(bad), *lines[4:8]]
    (tmp_path / "rows.csv").write_text("\n".join(table) + "\n")
    out = tmp_path / "o"
    args = ["explain", CANCER, tmp_path / "rows.csv", "--out", out, "--steps", "4", "--json"]
    real = batch.BatchRun._process_rows
    seen = []

    def stop_after_two_blocks(self, item, rows):
        seen.append(len(rows))
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(self, item, rows)

    monkeypatch.setattr(batch.BatchRun, "group_size", lambda self: 2)
    monkeypatch.setattr(batch.BatchRun, "_process_rows", stop_after_two_blocks)
    first = run(*args)
    assert first.exit_code == ExitCode.INTERRUPTED
    done = sorted(p.name for p in out.glob("*.record.json"))
    assert done == ["rows_row0.record.json", "rows_row1.record.json", "rows_row3.record.json"]
    monkeypatch.setattr(batch.BatchRun, "_process_rows", real)
    second = run(*args, "--skip-existing")
    assert second.exit_code == ExitCode.INPUTS_FAILED  # row 2 is not all numbers
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["resumed"] == 3 and len(report["results"]) == 6
    assert [f["name"] for f in report["failures"]] == ["rows_row2"]
    assert "row" in report["failures"][0]["error"]
    assert names(second) == sorted(f"rows_row{k}" for k in range(7))


def test_targets_from_a_file_give_each_input_its_own(tree, tmp_path):
    table = tmp_path / "truth.csv"
    table.write_text("input,target\ntop.png,4\na/img,2;7\nnowhere.png,1\n")
    out = tmp_path / "o"
    result = run(
        "explain", DIGITS, tree, "-r", "--out", out, "--steps", "4", "--json",
        "--targets-from", table,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    got = sorted(
        (json.loads(line)["name"], json.loads(line)["target"])
        for line in result.stdout.splitlines()
    )
    by_name = {}
    for name, target in got:
        by_name.setdefault(name, []).append(target)
    assert by_name["top"] == [4] and by_name["a/img"] == [2, 7] and len(by_name["b/img"]) == 1
    assert "nowhere.png" in result.stderr  # a row that names no input is reported
    labels = tmp_path / "labels.csv"
    labels.write_text("input,target\ntop.png,seven\n")
    bad = run("explain", DIGITS, tree, "--out", out, "--targets-from", labels)
    assert bad.exit_code == ExitCode.USAGE and "seven" in bad.stderr
    labels.write_text("input,target\ntop.png,\u00b2\n")  # a digit to isdigit, not to int
    bad = run("explain", DIGITS, tree, "--out", out, "--targets-from", labels)
    assert bad.exit_code == ExitCode.USAGE and "neither a class index" in bad.stderr
    labels.write_text("input,target\ntop.png,1\ntop.png,2\n")  # which one? not ours to pick
    bad = run("explain", DIGITS, tree, "--out", out, "--targets-from", labels)
    assert bad.exit_code == ExitCode.USAGE and "appears twice" in bad.stderr
    labels.write_text("input,target\ntop.png,3,5\n")  # '3;5' meant, or 3: not ours to guess
    bad = run("explain", DIGITS, tree, "--out", out, "--targets-from", labels)
    assert bad.exit_code == ExitCode.USAGE and "more than two cells" in bad.stderr
    labels.write_text("input,target\ntop.png,3;3\n")  # the two results would share files
    bad = run("explain", DIGITS, tree, "--out", out, "--targets-from", labels)
    assert bad.exit_code == ExitCode.USAGE and "line 2: a target appears twice" in bad.stderr
    labels.write_text("input,target\ntop.png,1;10\n")  # digits has 10 classes
    bad = run("explain", DIGITS, tree, "--out", out, "--targets-from", labels)
    assert bad.exit_code == ExitCode.USAGE and "line 2: target 10 is out of range" in bad.stderr
    labels.write_text("a,b,c\ntop.png,3,\n")
    bad = run("explain", DIGITS, tree, "--out", out, "--targets-from", labels)
    assert bad.exit_code == ExitCode.USAGE and "needs a header" in bad.stderr


def test_targets_from_may_name_an_input_by_dot_slash_or_absolute_path(tree, tmp_path, monkeypatch):
    """'./t/top.png' or '/abs/t/top.png' for the input t/top.png: they named no input, which
    then quietly got the top class."""
    monkeypatch.chdir(tree.parent)
    rel = os.path.relpath(tree, tree.parent)
    table = tmp_path / "truth.csv"
    table.write_text(f"input,target\n./{rel}/top.png,4\n{tree}/a//img.png,2\n")
    result = run("explain", DIGITS, rel, "-r", "--out", tmp_path / "o", "--steps", "4",
                 "--json", "--targets-from", table)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    got = {r["name"]: r["target"] for r in lines}
    assert got["top"] == 4 and got["a/img"] == 2 and "name no input" not in result.stderr


def test_a_finished_run_removes_what_killed_writers_left_beside_its_outputs(tree, tmp_path):
    """A SIGKILLed writer (a Dask worker) leaves .NAME.XXXX.tmp; a run that has written NAME
    whole removes it, and leaves other hidden files alone."""
    out = tmp_path / "o"
    run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4")
    left = [out / "a" / ".img.png.k1ll3d.tmp", out / ".top.record.json.x.tmp"]
    other = out / ".someone-elses.png.y.tmp"
    for path in (*left, other):
        path.write_bytes(b"")
    assert run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4").exit_code == 0
    assert not any(p.exists() for p in left) and other.exists()


def test_a_record_with_a_non_number_where_a_number_goes_is_redone_on_resume(tmp_path):
    """A hand-edited record ('rel_error': 'oops') stopped --skip-existing with exit 1."""
    out = tmp_path / "o"
    assert run("explain", DIGITS, DIGIT_PNGS[0], "--out", out, "-q").exit_code == 0
    marker = next(out.glob("*.record.json"))
    data = json.loads(marker.read_text())
    data["records"][0]["rel_error"] = "oops"
    marker.write_text(json.dumps(data))
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", out, "--skip-existing", "--json")
    assert result.exit_code == 0, result.stderr
    assert isinstance(json.loads(result.stdout.splitlines()[-1])["rel_error"], float)


def _second_write_fails(monkeypatch):
    """A full disk at the second input's files; returns the real writer."""
    from igcli.errors import OutputError

    real = Attribution.write_to
    calls = []

    def second_fails(self, npy, png, **kw):
        calls.append(npy)
        if len(calls) == 2:
            raise OutputError("cannot write (No space left on device)", npy)
        return real(self, npy, png, **kw)

    monkeypatch.setattr(Attribution, "write_to", second_fails)
    return real


def test_json_lines_say_ok_only_once_the_files_are_written(tmp_path, monkeypatch):
    """A full disk at the second input's files: the run stops (exit 6) and stdout holds the
    first input's line only, never an "ok" for files that do not exist."""
    _second_write_fails(monkeypatch)
    args = ["explain", DIGITS, *DIGIT_PNGS[:3], "--steps", "4", "--json", "--out", tmp_path]
    result = run(*args)
    assert result.exit_code == ExitCode.OUTPUT, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    written = {p.name.removesuffix(".record.json") for p in tmp_path.glob("*.record.json")}
    assert lines and all(r["status"] == "ok" and r["name"] in written for r in lines)
    assert len(lines) < 3


def test_skip_existing_redoes_an_input_that_changed(tmp_path):
    """--skip-existing reused the result of the file an input replaced (a 7 swapped for a 0
    kept target 7): a record holds its input's size and mtime, and a changed input is
    explained again; an unchanged one is still resumed."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DIGIT_PNGS[0], folder / "a.png")
    shutil.copy(DIGIT_PNGS[1], folder / "b.png")
    args = ["explain", DIGITS, folder, "--steps", "4", "--json", "--out", tmp_path / "o"]
    first = {r["name"]: r for r in map(json.loads, run(*args).stdout.splitlines())}
    shutil.copy(DIGIT_PNGS[2], folder / "a.png")
    os.utime(folder / "a.png", ns=(1, 1))  # whatever the clock: another stamp
    again = run(*args, "--skip-existing")
    assert again.exit_code == 0, again.stderr
    second = {r["name"]: r for r in map(json.loads, again.stdout.splitlines())}
    assert second["a"]["f_input"] != first["a"]["f_input"]
    assert second["b"] == first["b"]
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["summary"]["resumed"] == 1


def test_a_relative_out_follows_the_working_folder(tmp_path, monkeypatch):
    """The real path of --out is remembered per absolute path: '.' remembered in one folder
    sent a later run's outputs (a library caller that changed folder) to the first."""
    from igcli.outputs import output_stem

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        assert output_stem(tmp_path / name / ".." / name, "x.npy").parent == tmp_path / name
        assert str(output_stem(type(tmp_path)("."), "x.npy")) == str(tmp_path / name / "x.npy")


def test_writes_in_flight_hold_at_most_the_byte_bound(tmp_path, monkeypatch):
    """Up to a group's explanations wait for the writer, unless their arrays pass
    MAX_PENDING_BYTES: then one at a time."""
    from igcli.batch import BatchRun

    monkeypatch.setattr(BatchRun, "MAX_PENDING_BYTES", 1)
    seen = []
    real = BatchRun._submit

    def watch(self, job, held, records):
        assert held > 0
        real(self, job, held, records)
        seen.append(len(self.pending))

    monkeypatch.setattr(BatchRun, "_submit", watch)
    result = run("explain", DIGITS, *DIGIT_PNGS, "--steps", "4", "--out", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert len(seen) == len(DIGIT_PNGS) > 1 and max(seen) == 1


def test_an_output_never_replaces_a_file_igcli_did_not_write(tmp_path):
    """A user's photo.png (or photo.npy) in OUT, or a folder where an output goes: that input
    fails alone in one line, the file is kept, the others are explained and reported. igcli's
    own outputs of an earlier run are replaced, and so are those of a run killed before its
    record (its heatmap is signed)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(DIGIT_PNGS[0], inputs / "photo.png")
    shutil.copy(DIGIT_PNGS[1], inputs / "other.png")
    shutil.copy(DIGIT_PNGS[1], inputs / "third.png")
    out = tmp_path / "out"
    (out / "third.npy").mkdir(parents=True)
    (out / "photo.png").write_text("my notes")
    result = run("explain", DIGITS, inputs, "--steps", "4", "--out", out, "--json")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert any("photo.png: its output photo.png would replace" in e for e in errors)
    assert any("third.png: its output third.npy would replace what is there (a folder)" in e
               for e in errors)  # fmt: skip
    assert (out / "photo.png").read_text() == "my notes" and (out / "third.npy").is_dir()
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted((r["name"], r["status"]) for r in lines) == [
        ("other", "ok"), ("photo", "error"), ("third", "error")]  # fmt: skip
    assert json.loads((out / "report.json").read_text())["summary"]["failed"] == 2

    (out / "photo.png").unlink()
    (out / "third.npy").rmdir()
    assert run("explain", DIGITS, inputs, "--steps", "4", "--out", out).exit_code == 0
    assert run("explain", DIGITS, inputs, "--steps", "4", "--out", out).exit_code == 0
    (out / "photo.record.json").unlink()  # as a run killed before writing it leaves them
    assert run("explain", DIGITS, inputs, "--steps", "4", "--out", out).exit_code == 0
    (out / "photo.record.json").unlink()
    (out / "photo.png").unlink()  # killed after the attributions: they are igcli's too
    assert run("explain", DIGITS, inputs, "--steps", "4", "--out", out).exit_code == 0
    (out / "photo.record.json").unlink()
    np.save(out / "photo.npy", np.zeros((28, 28)))  # someone else's array
    result = run("explain", DIGITS, inputs, "--steps", "4", "--out", out)
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert "photo.npy would replace what is there (a file no record of igcli names)" in (
        result.stderr
    )
    np.testing.assert_array_equal(np.load(out / "photo.npy"), np.zeros((28, 28)))


def test_an_interrupted_shared_scale_run_draws_its_heatmaps(tree, tmp_path, monkeypatch):
    """--scale shared draws heatmaps at the end; an interrupted run left "ok" records naming
    heatmaps that were never drawn (and a resume redid them all)."""
    from igcli import batch

    out = tmp_path / "o"
    real = _interrupt_at(monkeypatch, 3)
    result = run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4", "--batch-size", "4",
                 "--scale", "shared", "--json")  # fmt: skip
    assert result.exit_code == ExitCode.INTERRUPTED
    done = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(done) == 2 and all((out / r["heatmap_file"]).is_file() for r in done)
    monkeypatch.setattr(batch.BatchRun, "_explain_item", real)
    again = run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4", "--scale", "shared",
                "--skip-existing")  # fmt: skip
    assert again.exit_code == 0
    assert json.loads((out / "report.json").read_text())["summary"]["resumed"] == 2


def test_a_signal_while_the_reports_are_written_leaves_them_whole(tree, tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM) while a run writes up is noted, not acted on: all four reports are
    this run's (a second Ctrl-C left report.json new and the others stale). Every input was
    done, so the run ends with its own code, as report.json says: it was 130 with
    'interrupted: false' there, hiding an exit 4 or 5."""
    import signal

    from igcli import report

    out = tmp_path / "o"
    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN where the tests run in the background)
    assert run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4").exit_code == 0
    real = report.atomic_write_text

    def signal_midway(path, text):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        real(path, text)

    monkeypatch.setattr(report, "atomic_write_text", signal_midway)
    result = run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "8")
    assert result.exit_code == 0, result.stderr
    assert "the run is complete" in result.stderr and "--skip-existing" not in result.stderr
    import csv

    written = json.loads((out / "report.json").read_text())
    assert written["settings"]["steps"] == 8 and written["summary"]["interrupted"] is False
    (tree / "bad.png").write_bytes(b"not a png")
    result = run("explain", DIGITS, tree, "-r", "--out", tmp_path / "o2", "--steps", "8")
    assert result.exit_code == ExitCode.INPUTS_FAILED, result.stderr
    (tree / "bad.png").unlink()
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert rows and all(r["steps"] == "8" for r in rows)
    assert "steps 8" in (out / "report.md").read_text()
    assert "steps 4" not in (out / "report.html").read_text()
    assert signal.getsignal(signal.SIGINT) is before


def test_an_interrupt_waiting_for_the_writer_keeps_the_report_whole(tree, tmp_path, monkeypatch):
    """Ctrl-C while the main thread waits for the writer (the likeliest place for it): the
    write already queued finished in the write-up, but its record was missing from the
    report and from stdout (a hostile sweep: 473 records reported, 474 on disk)."""
    from igcli import batch

    monkeypatch.setattr(batch.BatchRun, "MIN_PENDING", 0)
    real = batch.BatchRun._wait_oldest
    calls = []

    def interrupted_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(batch.BatchRun, "_wait_oldest", interrupted_once)
    out = tmp_path / "o"
    result = run("explain", DIGITS, tree, "-r", "--out", out, "--steps", "4", "--batch-size",
                 "4", "--json")  # fmt: skip
    assert result.exit_code == ExitCode.INTERRUPTED
    on_disk = sorted(p.name.removesuffix(".record.json") for p in out.rglob("*.record.json"))
    reported = sorted(r["name"].rsplit("/", 1)[-1] for r in json.loads(
        (out / "report.json").read_text())["results"])  # fmt: skip
    printed = sorted(json.loads(line)["name"].rsplit("/", 1)[-1]
                     for line in result.stdout.splitlines())  # fmt: skip
    assert on_disk and on_disk == reported == printed


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_second_run_on_the_same_reports_is_refused(tree, tmp_path):
    """Two runs writing one --out at once left report.json naming files the other run had
    written, both with exit 0. The second now stops before any work (exit 6); shards, whose
    reports have names of their own, still share a folder; the lock ends with the run."""
    from igcli.outputs import lock_reports, unlock_reports

    out = tmp_path / "o"
    out.mkdir()
    held = lock_reports(out, "report")  # as a run in another process would
    try:
        second = run("explain", DIGITS, tree, "--out", out, "--steps", "2")
        assert second.exit_code == ExitCode.OUTPUT
        assert "another igcli run is writing report.json" in second.stderr
        shard = run("explain", DIGITS, tree, "--out", out, "--steps", "2", "--shard", "1/2")
        assert shard.exit_code == 0, shard.stderr
    finally:
        unlock_reports(out, "report", held)
    assert run("explain", DIGITS, tree, "--out", out, "--steps", "2").exit_code == 0
    assert run("explain", DIGITS, tree, "--out", out, "--steps", "2").exit_code == 0
    assert not list(out.glob(".igcli-*.lock"))  # a finished run leaves none behind


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_plain_run_and_shards_or_shards_of_another_n_do_not_share_a_folder(tree, tmp_path):
    """A shard 1/2 and a plain run (or a shard 1/3) on one --out at once both exited 0, each
    report naming .npy files the other had written: the report lock covered report names
    only. Whoever comes second now stops (exit 6); shards of one N still share the folder."""
    from igcli.outputs import lock_folder, unlock_folder

    out = tmp_path / "o"
    out.mkdir()
    args = ("explain", DIGITS, tree, "--out", out, "--steps", "2")
    held = lock_folder(out, "shards-of-2")  # shard 1/2 running in another process
    try:
        for extra in ((), ("--shard", "1/3")):
            second = run(*args, *extra)
            assert second.exit_code == ExitCode.OUTPUT, second.stderr
            assert "another igcli run (shards of 2) is writing in this folder" in second.stderr
        shard = run(*args, "--shard", "2/2")
        assert shard.exit_code == 0, shard.stderr
    finally:
        unlock_folder(out, "shards-of-2", held)
    held = lock_folder(out, "all")  # a plain run
    try:
        second = run(*args, "--shard", "1/2")
        assert second.exit_code == ExitCode.OUTPUT
        assert "another igcli run (a run of every input)" in second.stderr
    finally:
        unlock_folder(out, "all", held)
    assert run(*args, "--shard", "1/3").exit_code == 0
    assert run(*args).exit_code == 0
    assert not list(out.glob(".igcli-*.lock"))  # a finished run leaves none behind


def _resumed(out) -> int:
    return json.loads((out / "report.json").read_text())["summary"]["resumed"]


def test_skip_existing_redoes_what_changed_behind_the_same_settings(tree, tmp_path):
    """Found by fault sweeps, each resumed with exit 0: a --targets-from row changed from 3
    to 5, a --baseline picture replaced at the same path, a sidecar's scale changed, its
    baseline_mean changed under --baseline mean."""
    out, table = tmp_path / "o", tmp_path / "t.csv"
    top = tree / "top.png"
    table.write_text(f"input,target\n{top},3\n")
    run("explain", DIGITS, top, "--out", out, "--steps", "4", "--targets-from", table)
    table.write_text(f"input,target\n{top},5\n")
    again = run("explain", DIGITS, top, "--out", out, "--steps", "4", "--targets-from", table,
                "--skip-existing", "--json")  # fmt: skip
    assert _resumed(out) == 0 and json.loads(again.stdout)["target"] == 5
    again = run("explain", DIGITS, top, "--out", out, "--steps", "4", "--targets-from", table,
                "--skip-existing")  # fmt: skip
    assert _resumed(out) == 1  # (the same table: resumed)

    base = tmp_path / "b.png"
    shutil.copy(DIGIT_PNGS[3], base)
    run("explain", DIGITS, top, "--out", out, "--steps", "4", "--baseline", base)
    shutil.copy(DIGIT_PNGS[4], base)
    run("explain", DIGITS, top, "--out", out, "--steps", "4", "--baseline", base,
        "--skip-existing")  # fmt: skip
    assert _resumed(out) == 0

    model, sidecar = tmp_path / "m.onnx", json.loads(DIGITS.with_suffix(".json").read_text())
    shutil.copy(DIGITS, model)
    (tmp_path / "m.json").write_text(json.dumps(sidecar))
    run("explain", model, top, "--out", out, "--steps", "4")
    sidecar.setdefault("preprocessing", {})["scale"] = 128
    (tmp_path / "m.json").write_text(json.dumps(sidecar))
    run("explain", model, top, "--out", out, "--steps", "4", "--skip-existing")
    assert _resumed(out) == 0

    # --baseline mean reads the sidecar's baseline_mean (a second sweep)
    run("explain", model, top, "--out", out, "--steps", "4", "--baseline", "mean")
    sidecar["baseline_mean"] = [0.9]
    (tmp_path / "m.json").write_text(json.dumps(sidecar))
    run("explain", model, top, "--out", out, "--steps", "4", "--baseline", "mean",
        "--skip-existing")  # fmt: skip
    assert _resumed(out) == 0


def test_a_record_naming_a_file_outside_out_is_never_resumed_nor_written(tree, tmp_path):
    """A record edited to name ../victim/photo.png: --skip-existing --scale shared redrew
    the user's picture there as a panel (exit 0)."""
    out, victim = tmp_path / "o", tmp_path / "victim.png"
    shutil.copy(DIGIT_PNGS[5], victim)
    before = victim.read_bytes()
    run("explain", DIGITS, tree, "--out", out, "--steps", "4", "--scale", "shared")
    marker = out / "top.record.json"
    data = json.loads(marker.read_text())
    data["records"][0]["heatmap_file"] = "../victim.png"
    marker.write_text(json.dumps(data))
    again = run("explain", DIGITS, tree, "--out", out, "--steps", "4", "--scale", "shared",
                "--skip-existing")  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert victim.read_bytes() == before and _resumed(out) == 0
    assert json.loads((out / "report.json").read_text())["results"][0]["heatmap_file"] == "top.png"


def test_an_output_the_filesystem_refuses_fails_its_input_alone(tmp_path, monkeypatch):
    """An input deep enough that its output path is over the system's limit, and one whose
    output folder may not be written: each ended the run with exit 6 and no reports, the
    other inputs explained and unreported. Now each fails alone (exit 4)."""
    from igcli import batch

    inputs = tmp_path / "in"
    deep = inputs.joinpath(*["d" * 200] * ((3900 - len(str(inputs))) // 201))
    deep.mkdir(parents=True)
    (inputs / "sub").mkdir()
    shutil.copy(DIGIT_PNGS[0], deep / "leaf.png")
    shutil.copy(DIGIT_PNGS[1], inputs / "sub" / "x.png")
    shutil.copy(DIGIT_PNGS[2], inputs / "ok.png")
    out = tmp_path / ("o" * 200)  # (the deep input's outputs go past 4096 bytes)
    (out / "sub").mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(
        batch.os, "access", lambda p, mode: real_access(p, mode) and os.path.basename(p) != "sub"
    )  # fmt: skip  (root may write all)
    result = run("explain", DIGITS, inputs, "-r", "--out", out, "--steps", "4")
    assert result.exit_code == ExitCode.INPUTS_FAILED, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["results"]] == ["ok"]
    reasons = sorted(f["error"] for f in report["failures"])
    assert "sub is not writable" in reasons[1], reasons
    assert "too long" in reasons[0] or "not usable" in reasons[0], reasons


def test_targets_from_naming_one_input_twice_differently_fails_that_input_alone(tree, tmp_path):
    """'a/img' -> 2 and its path 'in/a/img.png' -> 5: the first key looked up won in silence."""
    table = tmp_path / "truth.csv"
    table.write_text(f"input,target\na/img,2\n{tree / 'a' / 'img.png'},5\ntop.png,4\n")
    result = run("explain", DIGITS, tree, "-r", "--out", tmp_path / "o", "--steps", "4",
                 "--json", "--targets-from", table)  # fmt: skip
    assert result.exit_code == ExitCode.INPUTS_FAILED, result.stderr
    assert "on lines 2 and 3 (truth.csv), with different targets" in result.stderr
    lines = {json.loads(line)["name"]: json.loads(line) for line in result.stdout.splitlines()}
    assert lines["top"]["target"] == 4 and "error" not in lines["b/img"]
    assert "different targets" in lines["a/img"]["error"]
    same = tmp_path / "same.csv"  # two names of one input agreeing: no conflict
    same.write_text(f"input,target\na/img,2\n{tree / 'a' / 'img.png'},2\n")
    ok = run("explain", DIGITS, tree, "-r", "--out", tmp_path / "o2", "--steps", "4", "--json",
             "--targets-from", same)  # fmt: skip
    assert ok.exit_code == 0, ok.stderr


def test_a_full_disk_removes_the_earlier_runs_reports_that_no_longer_hold(tmp_path, monkeypatch):
    """A second run into OUT stopped by a full disk (exit 6) after writing results: the first
    run's reports would describe a folder that is no longer so, and are removed;
    --skip-existing afterwards writes them whole. (A user's file of such a name stops a run
    before it starts.)"""
    out = tmp_path / "o"
    assert run("explain", DIGITS, DIGIT_PNGS[0], "--steps", "4", "--out", out).exit_code == 0
    real = _second_write_fails(monkeypatch)
    args = ["explain", DIGITS, *DIGIT_PNGS[1:4], "--steps", "4", "--out", out]
    result = run(*args, "--batch-size", "4")
    assert result.exit_code == ExitCode.OUTPUT, result.stderr
    said = one_line_error(result)[-1]
    removed = "report.html, report.md, report.csv, report.json no longer described the results"
    assert "(No space left on device); the earlier run's " + removed in said
    assert "run again with --skip-existing" in said
    assert not list(out.glob("report.*"))
    monkeypatch.setattr(Attribution, "write_to", real)
    again = run(*args, "--skip-existing")
    assert again.exit_code == 0, again.stderr
    assert len(json.loads((out / "report.json").read_text())["results"]) == 3


def test_a_disk_that_fills_as_a_fresh_run_writes_its_reports_says_they_were_its_own(
    tmp_path, monkeypatch
):
    """A fresh --out whose disk filled while the run wrote its reports said 'the earlier
    run's report.json, ... no longer described the results': there was no earlier run."""
    import igcli.report as report_module
    from igcli.errors import OutputError

    real = report_module.atomic_write_chunks
    calls = []

    def fills_up(path, chunks):
        calls.append(path)
        if len(calls) > 1:
            raise OutputError("cannot write (No space left on device)", path)
        return real(path, chunks)

    monkeypatch.setattr(report_module, "atomic_write_chunks", fills_up)
    out = tmp_path / "o"
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--steps", "4", "--out", out)
    assert result.exit_code == ExitCode.OUTPUT, result.stderr
    said = one_line_error(result)[-1]
    assert "earlier run" not in said and "this run's report.json" in said
    assert not list(out.glob("report.*"))


@pytest.mark.parametrize("keep", [0, 100])
def test_a_record_cut_short_is_replaced_not_refused(tmp_path, keep):
    """A copy of the output folder stopped halfway leaves a record cut short (igcli writes
    its own whole): it was 'not igcli's record' and its input failed until the file was
    moved; it is now explained again. A file of that name that is not igcli's still stops it."""
    out = tmp_path / "o"
    args = ["explain", DIGITS, DIGIT_PNGS[0], "--steps", "4", "--out", out]
    assert run(*args).exit_code == 0
    marker = out / f"{DIGIT_PNGS[0].stem}.record.json"
    marker.write_bytes(marker.read_bytes()[:keep])
    for extra in (["--skip-existing"], []):
        again = run(*args, *extra)
        assert again.exit_code == 0, again.stderr
        assert json.loads(marker.read_text())["records"][0]["status"] == "ok"
        marker.write_bytes(marker.read_bytes()[:keep])
    marker.write_text("my notes, not JSON")
    refused = run(*args)
    assert refused.exit_code == ExitCode.INPUTS_FAILED
    assert "not igcli's record" in refused.stderr


def test_failures_are_spooled_and_report_md_lists_the_first_thousand():
    """300,000 failed CSV rows held 0.85 kB each in memory (results were already spooled to
    a file); report.md listed every one of them."""
    from igcli.report import MARKDOWN_ROWS, RecordSpool, RunReport, failure_entry

    report = RunReport("m.onnx", "0" * 64, {})
    assert isinstance(report.failures, RecordSpool)
    for k in range(MARKDOWN_ROWS + 200):
        report.failures.append(failure_entry(f"rows.csv:row{k}", f"rows.csv:row{k}: bad cell"))
    md = report.to_markdown()
    assert "rows.csv:row999" in md and "rows.csv:row1000" not in md
    assert "... and 200 more failures in report.csv and report.json" in md
    assert len(report.to_json()["failures"]) == MARKDOWN_ROWS + 200


def test_an_array_baseline_runs_through_the_run_api_and_resumes_only_itself(tmp_path):
    """An array baseline stopped finish() (the object in report.json's settings), and its
    settings hash held only its name, 'array': a run with ones resumed the zeros' results."""
    from igcli.batch import OutputSettings
    from igcli.run import execute, finish, plan, start
    from igcli.session import AttributionSettings, Session

    session = Session(DIGITS, cache=False)

    def f_baseline(values, skip: bool) -> float:
        the_plan = plan(discover([str(DIGIT_PNGS[0])]))
        settings = AttributionSettings(steps=8, baseline=values)
        outputs = OutputSettings(out_dir=tmp_path / "o", skip_existing=skip, heatmaps=False)
        batch = start(session, the_plan, settings=settings, outputs=outputs)
        execute(batch, the_plan.items)
        assert finish(batch, the_plan) == ExitCode.OK
        report = json.loads((tmp_path / "o" / "report.json").read_text())
        assert report["settings"]["baseline"] == "array"
        return report["results"][0]["f_baseline"]

    zeros = f_baseline(np.zeros((1, 28, 28), np.float32), skip=False)
    ones = f_baseline(np.ones((1, 28, 28), np.float32), skip=True)
    assert ones != zeros
    assert f_baseline(np.ones((1, 28, 28), np.float32), skip=True) == ones


@pytest.mark.parametrize("how", ["removed", "moved"])
def test_an_out_folder_removed_or_moved_mid_run_is_an_output_error(tmp_path, how):
    """rm -rf OUT mid-run: the writes made it again, and exit 0 came with a report naming
    files that were not there; moved, part of the run went with it, locks and all."""
    from igcli.batch import OutputSettings
    from igcli.errors import OutputError
    from igcli.run import execute, finish, plan, start
    from igcli.session import AttributionSettings, Session

    the_plan = plan(discover([str(p) for p in DIGIT_PNGS[:2]]))
    out = tmp_path / "o"
    batch = start(Session(DIGITS, cache=False), the_plan, settings=AttributionSettings(steps=4),
                  outputs=OutputSettings(out_dir=out))  # fmt: skip
    execute(batch, the_plan.items[:1])
    batch.drain()  # (its files written)
    if how == "removed":
        shutil.rmtree(out)
    else:
        out.rename(tmp_path / "elsewhere")
    execute(batch, the_plan.items[1:])
    with pytest.raises(OutputError, match="removed or moved during the run|cannot write"):
        finish(batch, the_plan)
    assert not (out / "report.json").exists()


@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_a_table_replaced_during_a_run_is_not_resumed_from_its_old_rows(tmp_path, monkeypatch,
                                                                       suffix):  # fmt: skip
    """A CSV (or a token model's .txt) replaced while a run read it: rows read from the old
    file's handle were stamped with the new file's size and time when written, and a run
    with --skip-existing kept them as results for the new file (old values, exit 0). Rows
    carry the stamp of the file as read: the resumed run redoes every one."""
    import igcli.batch as batch_module
    import igcli.inputs as inputs_module

    if suffix == ".csv":
        model = CANCER
        lines = CANCER_CSV.read_text().splitlines()
        old_text = "\n".join(lines[:7]) + "\n"
        new_text = "\n".join([lines[0], *lines[7:13]]) + "\n"
    else:
        model = ROOT / "sample_models" / "sentiment.onnx"
        old_text = "".join(f"a fine film number {k}\n" for k in range(6))
        new_text = "".join(f"a dull film, take {k}\n" for k in range(6))
    table = tmp_path / f"rows{suffix}"
    table.write_text(old_text)
    monkeypatch.setattr(inputs_module, "_ROW_BLOCK", 2)
    real = batch_module.BatchRun._process_rows
    swapped = []

    def process_then_swap(self, item, chunk):
        real(self, item, chunk)
        if not swapped:  # after the first rows: replaced whole, as editors and rsync do
            (tmp_path / "new").write_text(new_text)
            os.replace(tmp_path / "new", table)
            swapped.append(1)

    monkeypatch.setattr(batch_module.BatchRun, "_process_rows", process_then_swap)
    monkeypatch.setattr(batch_module.BatchRun, "group_size", lambda self: 2)
    out = tmp_path / "o"
    first = run("explain", model, table, "--out", out, "--steps", "4", "--no-heatmaps")
    assert first.exit_code == 0 and swapped, first.stderr
    monkeypatch.setattr(batch_module.BatchRun, "_process_rows", real)
    again = run("explain", model, table, "--out", out, "--steps", "4", "--no-heatmaps",
                "--skip-existing", "--json")  # fmt: skip
    assert again.exit_code == 0, again.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["resumed"] == 0
    fresh = run("explain", model, table, "--out", tmp_path / "f", "--steps", "4",
                "--no-heatmaps", "--json")  # fmt: skip
    f_of = lambda result: [json.loads(x)["f_input"] for x in result.stdout.splitlines()]  # noqa: E731
    assert f_of(again) == f_of(fresh)


def test_a_shared_scale_panel_states_the_records_error_fresh_or_resumed(tmp_path, monkeypatch):
    """Panels on a shared colour scale are drawn at the end from their .npy: a fresh run's
    caption took the float32 array's sum (0.000745% where the report said 0.000744%), a
    resumed one's too, so a resumed folder's PNGs differed from a clean run's. Both take the
    record's sum now."""
    import igcli.batch as batch_module

    drawn = []
    real = batch_module.BatchRun._defer

    def seen(self, light, *args):
        drawn.append(light)
        return real(self, light, *args)

    monkeypatch.setattr(batch_module.BatchRun, "_defer", seen)
    out = tmp_path / "o"
    args = ("explain", DIGITS, *DIGIT_PNGS[:3], "--out", out, "--steps", "64",
            "--scale", "shared")  # fmt: skip
    assert run(*args).exit_code == 0
    assert run(*args, "--skip-existing").exit_code == 0
    report = json.loads((out / "report.json").read_text())
    errors = {r["name"]: r["rel_error"] for r in report["results"]}
    assert len(drawn) == 6 and report["summary"]["resumed"] == 3
    for light in drawn:
        assert light.rel_error == errors[light.extra["sample_name"]]
