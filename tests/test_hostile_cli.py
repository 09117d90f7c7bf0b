"""Hostile inputs through the command line: one bad file fails alone, in one line.

Tests marked xfail("lead: session redesign") describe what the explain flow (cli.py, run.py,
explain.py, BatchRun) must still do; the layers below already provide what they need (see
the helper each names). They are strict, so the one that starts passing says so.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from igcli.errors import ExitCode
from tests import hostile_files as hf
from tests import models
from tests.test_cli import CANCER, CANCER_CSV, DIGIT_PNGS, DIGITS, one_line_error, run

lead = pytest.mark.xfail(reason="lead: session redesign", strict=True)


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error")]


def flat(result) -> str:
    """stderr with rich's wrapping at 140 columns undone (the wrapping is the lead's)."""
    return " ".join(result.stderr.split())


def records(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def vector_model(tmp_path):
    return models.save(models.tanh_linear(features=2, classes=2), tmp_path / "m.onnx")


# -- what works today -------------------------------------------------------------------------


def test_a_folder_of_hostile_files_beside_a_good_one(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DIGIT_PNGS[0], folder / "good.png")
    hf.write(folder / "bomb.png", hf.png_claiming(30000, 30000))
    hf.write(folder / "bomb.bmp", hf.bmp_claiming(50000, 50000))
    hf.write(folder / "empty.npy", b"")
    hf.write(folder / "huge.npy", hf.npy_claiming((1, 4 * 10**12)))
    os.symlink("loop.png", folder / "loop.png")
    os.mkfifo(folder / "fifo.png")
    (folder / "dir.png").mkdir()
    (folder / "big.csv").write_text("a,b\n1," + "9" * 200_000 + "\n")
    out = tmp_path / "o"
    result = run("explain", DIGITS, folder, "--out", out, "--steps", "4", "--json", "--quiet")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    errors = error_lines(result)
    failed = sorted(os.path.basename(r["input"]) for r in records(result) if r["status"] != "ok")
    assert failed == [
        "big.csv",
        "bomb.bmp",
        "bomb.png",
        "empty.npy",
        "fifo.png",
        "huge.npy",
        "loop.png",
    ]
    assert len(errors) == len(failed) + 1  # one line each, and the closing count
    assert "DecompressionBomb" not in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["results"]] == ["good"]
    assert (out / "good.npy").is_file() and not list(out.rglob("*.tmp"))


def test_outputs_of_colliding_names_are_all_kept(tmp_path):
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    d1.mkdir()
    d2.mkdir()
    shutil.copy(DIGIT_PNGS[0], d1 / "x.png")
    shutil.copy(DIGIT_PNGS[1], d2 / "x.png")
    out = tmp_path / "o"
    result = run("explain", DIGITS, d1, d2, "--out", out, "--steps", "4", "--json")
    assert result.exit_code == 0, result.stderr
    assert sorted(r["name"] for r in records(result)) == ["d1/x", "d2/x"]
    assert not np.allclose(np.load(out / "d1" / "x.npy"), np.load(out / "d2" / "x.npy"))


def test_csv_rows_beside_a_file_named_like_a_row(tmp_path):
    rows = CANCER_CSV.read_text().splitlines()[:3]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    values = np.array([[float(v) for v in rows[2].split(",")]], np.float32)
    np.save(tmp_path / "data_row0.npy", values)
    out = tmp_path / "o"
    args = ["--out", out, "--steps", "4", "--json", "--gradients", "fd"]
    result = run("explain", CANCER, tmp_path / "data.csv", tmp_path / "data_row0.npy", *args)
    assert result.exit_code == 0, result.stderr
    names = sorted(r["name"] for r in records(result))
    assert names == ["data.csv_row0", "data.csv_row1", "data_row0.npy"]
    assert len(list(out.glob("*.record.json"))) == 3 and len(list(out.glob("*.npy"))) == 3


def test_sixteen_bit_png_reaches_the_model_as_mid_grey(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((28, 28), 32768, np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(tmp_path / "grey8.png")
    result = run("explain", DIGITS, tmp_path, "--out", tmp_path / "o", "--steps", "4", "--json")
    assert result.exit_code == 0, result.stderr
    f = {r["name"]: r["f_input"] for r in records(result)}
    assert f["grey16"] == pytest.approx(f["grey8"], rel=0.02)


def test_integer_input_message_names_the_model(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT)],
        "ids",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = models.save(model, tmp_path / "ids.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    result = run("explain", path, tmp_path / "x.npy", "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.USAGE and "Traceback" not in result.stderr
    assert flat(result) == (
        f"error: {path}: input 'ids' is tensor(int64) and feeds no embedding lookup igcli can "
        "find: choose a float input with --input, or a float tensor to attribute at with --at "
        "(`igcli inspect` lists candidates)"
    )


def test_negative_seed_with_uniform_baseline(tmp_path):
    model = vector_model(tmp_path)
    np.save(tmp_path / "x.npy", np.array([[0.5, -1.0]], np.float32))
    args = ["--baseline", "uniform", "--steps", "4", "--json", "--out", tmp_path / "o"]
    result = run("explain", model, tmp_path / "x.npy", "--seed", "-5", *args)
    assert result.exit_code == 0, result.stderr


def test_sidecar_with_wrong_types_is_exit_3(tmp_path):
    model = vector_model(tmp_path)
    (tmp_path / "m.json").write_text('{"labels": 5}')
    np.save(tmp_path / "x.npy", np.array([[0.5, -1.0]], np.float32))
    result = run("explain", model, tmp_path / "x.npy", "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.MODEL and "Traceback" not in result.stderr
    assert flat(result) == (
        f"error: {tmp_path / 'm.json'}: sidecar field 'labels' must be a list of class "
        "names, not a number (5)"
    )


def test_a_sidecar_that_is_no_regular_file_is_exit_3_not_ignored(tmp_path):
    """A sidecar that was a folder, a link to /dev/zero or a dangling link was taken for no
    sidecar: its normalisation and labels dropped, exit 0. It is one line, exit 3; only a
    sidecar that is not there at all means none."""
    side = tmp_path / "digits_cnn.json"
    shutil.copy(DIGITS, tmp_path / "digits_cnn.onnx")
    for kind, make, why in (
        ("folder", lambda: side.mkdir(), "a folder, not a file"),
        ("device", lambda: side.symlink_to("/dev/zero"), "a device, not a file"),
        ("dangling", lambda: side.symlink_to("gone.json"), "broken symlink"),
    ):
        if side.is_dir() and not side.is_symlink():
            side.rmdir()
        elif os.path.lexists(side):
            side.unlink()
        make()
        result = run("explain", tmp_path / "digits_cnn.onnx", DIGIT_PNGS[0], "--out",
                     tmp_path / "o", "--no-heatmaps")  # fmt: skip
        assert result.exit_code == ExitCode.MODEL, (kind, result.stderr)
        (line,) = error_lines(result)
        assert line.startswith(f"error: {side}: sidecar cannot be read ({why}"), kind
    side.unlink()
    result = run("explain", tmp_path / "digits_cnn.onnx", DIGIT_PNGS[0], "--out", tmp_path / "o")
    assert result.exit_code == 0, result.stderr  # no sidecar: fine


# -- what the explain flow must still do (lead: session redesign) -----------------------------


def test_rich_markup_in_names_is_printed_not_parsed(tmp_path):
    """cli.fail() and the summary table print names as markup: escape them
    (rich.markup.escape) or print Text objects; inspect's header too."""
    (tmp_path / "in" / "a[").mkdir(parents=True)
    shutil.copy(DIGIT_PNGS[0], tmp_path / "in" / "a[" / "]b.png")
    shutil.copy(DIGIT_PNGS[1], tmp_path / "in" / "[red]x.png")
    result = run("explain", DIGITS, tmp_path / "in", "-r", "--out", tmp_path / "o", "--steps", "4")
    assert result.exit_code == 0 and "[red]x" in result.stderr and "a[/]b" in result.stderr
    missing = run("explain", tmp_path / "x[" / "]y.onnx", DIGIT_PNGS[0], "--out", tmp_path / "o")
    assert missing.exit_code == ExitCode.MODEL and len(error_lines(missing)) == 1


def test_error_lines_are_not_wrapped(tmp_path):
    """The stderr Console wraps at 140 columns when not a terminal: print errors with
    soft_wrap=True (or width=None/no_wrap) so a long path stays on one line."""
    deep = tmp_path / ("d" * 150)
    deep.mkdir()
    hf.write(deep / "x.npy", b"")
    result = run("explain", vector_model(tmp_path), deep / "x.npy", "--out", tmp_path / "o")
    lines = result.stderr.splitlines()
    assert any(line.startswith("error: ") and line.endswith("not a .npy array") for line in lines)


def test_newlines_and_raw_bytes_in_failing_names_stay_on_one_line(tmp_path):
    """IgcliError formats the path with str(); use igcli.files.printable(path) for stderr
    (and keep the raw path in JSON)."""
    folder = tmp_path / "in"
    folder.mkdir()
    hf.write(folder / "new\nline.npy", b"")
    hf.write(folder / os.fsdecode(b"raw\xffbyte.npy"), b"")
    result = run("explain", vector_model(tmp_path), folder, "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert len(error_lines(result)) == 3 and "new\\nline.npy" in result.stderr
    assert "raw\\xffbyte.npy" in result.stderr


def test_a_good_input_with_raw_bytes_in_its_name_is_explained_and_reported(tmp_path):
    """The run's records pass through a spool file: a name's undecodable bytes (lone
    surrogates in Python) must round-trip, not stop the run with an internal error."""
    folder = tmp_path / "in"
    folder.mkdir()
    raw = folder / os.fsdecode(b"raw\xffbyte.png")
    raw.write_bytes(Path(DIGIT_PNGS[0]).read_bytes())
    (folder / "plain.png").write_bytes(Path(DIGIT_PNGS[0]).read_bytes())
    result = run("explain", DIGITS, folder, "--out", tmp_path / "o", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert sorted(r["name"] for r in records) == ["plain", "raw%FFbyte"]
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert len(report["results"]) == 2
    assert (tmp_path / "o" / "raw%FFbyte.png").is_file()


def test_fd_groups_0x0_is_a_usage_error(tmp_path):
    """explain.parse_groups divides by the patch size: require H, W >= 1."""
    result = run(
        "explain", DIGITS, DIGIT_PNGS[0], "--gradients", "fd", "--fd-groups", "0x0",
        "--out", tmp_path / "o",
    )  # fmt: skip
    assert result.exit_code == ExitCode.USAGE and len(error_lines(result)) == 1


@pytest.mark.parametrize(
    "feed,problem",
    [
        (np.array(["a", "b", "c"]), "strings"),
        (np.ones((1, 4), np.float32), "does not fit"),
    ],
)
def test_bad_feed_is_one_usage_error_naming_the_feed(tmp_path, feed, problem):
    """Call igcli.model.load_feeds(options.feeds, inputs, attributed) instead of
    Explainer._extra_feeds: a string feed is an internal error today, a wrong shape fails
    every input with ONNX Runtime's message."""
    model = models.save(models.two_inputs(), tmp_path / "two.onnx")
    for i in range(3):
        np.save(tmp_path / f"x{i}.npy", np.ones((1, 3), np.float32) * i)
    np.save(tmp_path / "s.npy", feed)
    inputs = [tmp_path / f"x{i}.npy" for i in range(3)]
    result = run("explain", model, *inputs, "--feed", f"s={tmp_path / 's.npy'}", "--out", tmp_path)
    assert result.exit_code == ExitCode.USAGE
    assert error_lines(result) == [error_lines(result)[0]] and problem in result.stderr
    assert "s.npy" in result.stderr


def test_feed_naming_the_attributed_input_is_refused(tmp_path):
    model = models.save(models.two_inputs(), tmp_path / "two.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    feeds = ["--feed", f"s={tmp_path / 'x.npy'}", "--feed", f"x={tmp_path / 'x.npy'}"]
    result = run("explain", model, tmp_path / "x.npy", *feeds, "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.USAGE and "attributed input" in result.stderr


def zipmap_classifier(tmp_path):
    """What skl2onnx makes of a logistic regression: an int64 label first, then a ZipMap."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node(
            "LinearClassifier",
            ["x"],
            ["label", "scores"],
            domain="ai.onnx.ml",
            classlabels_ints=[0, 1],
            coefficients=[1.0, -1.0, -1.0, 1.0],
            intercepts=[0.0, 0.0],
            post_transform="SOFTMAX",
        ),
        helper.make_node(
            "ZipMap", ["scores"], ["probs"], domain="ai.onnx.ml", classlabels_int64s=[0, 1]
        ),
    ]
    zipmap = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(1, []))
    )
    graph = helper.make_graph(
        nodes,
        "clf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_value_info("probs", zipmap),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
    )
    model.ir_version = 8
    return models.save(model, tmp_path / "clf.onnx")


def test_classifier_with_int_label_and_zipmap_outputs(tmp_path):
    """Today the int64 label output is 'explained' (all zeros, exit 0: a silent wrong
    answer) and --output probs is an internal error. Use model.default_output() for the
    default and model.unusable_reason() for an explicit --output."""
    path = zipmap_classifier(tmp_path)
    np.save(tmp_path / "x.npy", np.array([[0.5, -1.0]], np.float32))
    default = run("explain", path, tmp_path / "x.npy", "--out", tmp_path / "o")
    assert default.exit_code == ExitCode.USAGE and "ZipMap" in default.stderr
    chosen = run("explain", path, tmp_path / "x.npy", "--output", "probs", "--out", tmp_path)
    assert chosen.exit_code == ExitCode.USAGE and "ZipMap" in chosen.stderr
    # both name the tensor the ZipMap reads, which can be explained as it is
    assert "--output scores" in default.stderr and "--output scores" in chosen.stderr
    scores = run("explain", path, tmp_path / "x.npy", "--output", "scores", "--out", tmp_path / "s")
    assert scores.exit_code == 0, scores.stderr


@pytest.mark.parametrize("command", ["explain", "inspect"])
def test_model_without_inputs(tmp_path, command):
    """Use model.require_inputs() in explain; inspect can list the outputs and say so."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value_float=1.0)],
        "const",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = models.save(model, tmp_path / "const.onnx")
    args = [tmp_path / "x.npy", "--out", tmp_path / "o"] if command == "explain" else []
    result = run(command, path, *args)
    assert result.exit_code in (ExitCode.OK, ExitCode.MODEL) and "no inputs" in result.output


def test_names_of_failed_inputs_are_their_output_names(tmp_path):
    """report.failure_entry(path, exc) names a failure by its stem; pass the item's name
    (bomb.png and bomb.bmp are both "bomb" in report.json today)."""
    hf.write(tmp_path / "bomb.png", hf.png_claiming(30000, 30000))
    hf.write(tmp_path / "bomb.bmp", hf.bmp_claiming(50000, 50000))
    result = run("explain", DIGITS, tmp_path, "--out", tmp_path / "o", "--json")
    assert sorted(r["name"] for r in records(result)) == ["bomb.bmp", "bomb.png"]


def test_output_escaping_through_a_symlink_fails_that_input_only(tmp_path):
    """output_stem raises OutputError (exit 6) for a name that escapes --out through a
    symlink inside it; that is one input's problem: fail it, go on."""
    out = tmp_path / "o"
    (out).mkdir()
    os.symlink(tmp_path, out / "sub")
    (tmp_path / "in" / "sub").mkdir(parents=True)
    shutil.copy(DIGIT_PNGS[0], tmp_path / "in" / "sub" / "a.png")
    shutil.copy(DIGIT_PNGS[1], tmp_path / "in" / "b.png")
    result = run("explain", DIGITS, tmp_path / "in", "-r", "--out", out, "--steps", "4")
    assert result.exit_code == ExitCode.INPUTS_FAILED and (out / "b.npy").is_file()


def test_skip_existing_redoes_results_made_with_other_settings(tmp_path):
    """A settings hash in each record; --skip-existing keeps only matching results and
    prints their JSON lines as if computed."""
    out = tmp_path / "o"
    first = run("explain", DIGITS, DIGIT_PNGS[0], "--out", out, "--steps", "4")
    assert first.exit_code == 0
    again = run(
        "explain", DIGITS, DIGIT_PNGS[0], "--out", out, "--steps", "8", "--skip-existing",
        "--json",
    )  # fmt: skip
    assert [r["steps"] for r in records(again)] == [8]
    resumed = run(
        "explain", DIGITS, DIGIT_PNGS[0], "--out", out, "--steps", "8", "--skip-existing",
        "--json",
    )  # fmt: skip
    assert [r["steps"] for r in records(resumed)] == [8]


def test_cancer_csv_still_explains(tmp_path):
    """The CSV reader rewrite keeps the sample data working end to end."""
    result = run(
        "explain", CANCER, CANCER_CSV, "--out", tmp_path / "o", "--steps", "4", "--json",
        "--gradients", "fd",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert len(records(result)) == len(CANCER_CSV.read_text().strip().splitlines()) - 1


@pytest.mark.parametrize("option", ["--labels", "--targets-from"])
def test_option_files_that_are_devices_or_fifos_are_refused_not_read(tmp_path, option):
    """--labels /dev/zero used to read until memory ran out, and a FIFO hung the run."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in (("/dev/zero", "a device"), (fifo, "a FIFO")):
        result = run("explain", DIGITS, DIGIT_PNGS[0], option, path, "--out", tmp_path / "o")
        assert result.exit_code == ExitCode.USAGE, result.stderr
        assert len(error_lines(result)) == 1 and f"{kind}, not a file" in result.stderr
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9\n")
    result = run("explain", DIGITS, DIGIT_PNGS[0], option, bad, "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.USAGE and "not UTF-8" in result.stderr
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    result = run("explain", DIGITS, DIGIT_PNGS[0], option, empty, "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.USAGE  # not silently the sidecar's labels


def test_a_csv_that_is_a_fifo_or_a_device_fails_alone(tmp_path):
    """The rows of each CSV were counted (for progress) with a plain open() before any
    input: a .csv FIFO or link to /dev/zero hung the run, a folder walk and `igcli plan`.
    Each fails alone in the CSV reader's line; the good file's rows are explained."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(CANCER_CSV, folder / "a_good.csv")
    os.mkfifo(folder / "c_fifo.csv")
    zero = tmp_path / "b_zero.csv"
    zero.symlink_to("/dev/zero")
    args = (CANCER, folder / "a_good.csv", zero, folder / "c_fifo.csv")
    result = run("explain", *args, "--out", tmp_path / "o", "--no-heatmaps", "--json", "-q")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert error_lines(result)[:2] == [
        f"error: {zero}: a device, not a file",
        f"error: {folder / 'c_fifo.csv'}: a FIFO, not a file",
    ]
    ok = [r for r in records(result) if r["status"] == "ok"]
    assert len(ok) == len(CANCER_CSV.read_text().strip().splitlines()) - 1
    walk = run("explain", CANCER, folder, "--out", tmp_path / "w", "--no-heatmaps", "-q")
    assert walk.exit_code == ExitCode.INPUTS_FAILED
    assert error_lines(walk)[0] == f"error: {folder / 'c_fifo.csv'}: a FIFO, not a file"
    assert run("plan", *args).exit_code == 0


def test_a_blank_line_in_labels_keeps_the_classes_after_it_in_place(tmp_path):
    """A blank line used to be dropped, shifting every later class name by one (a 7 was
    named 'eight'); a count that does not match the outputs is said."""
    seven = next(p for p in DIGIT_PNGS if p.name.startswith("digit_7"))
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\ntwo\n\nfour\nfive\nsix\nseven\neight\nnine\n\n")
    result = run("explain", DIGITS, seven, "--labels", labels, "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.stderr
    assert [(r["target"], r["label"]) for r in records(result)] == [(7, "seven")]
    labels.write_text("zero\none\n")
    result = run("explain", DIGITS, seven, "--labels", labels, "--out", tmp_path / "p")
    assert "2 labels for 10 outputs" in result.stderr
    # a name holding U+2028, a form feed, U+0085 or \x1c: splitlines broke there too,
    # and 7 was named 'six'; lines end at \n, \r\n and \r only
    names = ["zero", "one\u2028uno", "two\x0c", "three\x85", "four\x1c", "five", "six",
             "seven", "eight", "nine"]  # fmt: skip
    labels.write_bytes(("\r\n".join(names[:5]) + "\r" + "\n".join(names[5:])).encode())
    result = run("explain", DIGITS, seven, "--labels", labels, "--out", tmp_path / "q", "--json")
    assert result.exit_code == 0 and "labels for" not in result.stderr, result.stderr
    assert [(r["target"], r["label"]) for r in records(result)] == [(7, "seven")]


def test_a_model_declaring_a_huge_input_is_refused_in_one_line(tmp_path):
    """[1, 2**40]: the dynamic-batch probe (and gradcheck's random input) used to allocate it
    and die with an internal MemoryError."""
    import onnx
    from onnx import TensorProto, helper

    big = [1, 2**40]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, big)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, big)],
    )  # fmt: skip
    model = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    for args in (
        ["explain", model, tmp_path / "x.npy", "--out", tmp_path / "o"],
        ["gradcheck", model],
    ):
        result = run(*args)
        assert result.exit_code == ExitCode.MODEL, result.stderr
        assert len(error_lines(result)) == 1 and "declares" in result.stderr


@pytest.mark.parametrize("channels", [2, 4, 8])
def test_image_tensors_with_other_channel_counts_get_a_heatmap(tmp_path, channels):
    """[1, C, H, W] with C not 1 or 3 (RGBA, depth, bands): the input is drawn as the mean of
    its channels; it used to stop the run with an internal error (exit 1)."""
    import onnx
    from onnx import TensorProto, helper

    w = onnx.numpy_helper.from_array(np.ones((2, channels, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]),
         helper.make_node("ReduceMean", ["c"], ["y"], axes=[2, 3], keepdims=0)],
        "chan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [w],
    )  # fmt: skip
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    x = np.random.default_rng(0).uniform(size=(1, channels, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run("explain", model, tmp_path / "x.npy", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "o" / "x.png").is_file()


def test_json_lines_keep_the_order_of_csv_rows_and_files_good_or_bad(tmp_path):
    """Failed rows used to come out first, then the good ones; --json promises input order."""
    lines = Path(CANCER_CSV).read_text().splitlines()
    header, good = lines[0], lines[1:4]
    bad = "1,2,3"
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("\n".join([header, good[0], bad, good[1], bad, bad, good[2]]) + "\n")
    result = run("explain", CANCER, mixed, "--json", "-q", "--out", tmp_path / "o")
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [r["name"] for r in records] == [f"mixed_row{k}" for k in range(6)]
    assert [r["status"] for r in records] == ["ok", "error", "ok", "error", "error", "ok"]


def test_names_cannot_break_the_markdown_table_or_become_csv_formulas(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a|b.png", "=cmd.png", "-1.png"):
        (folder / name).write_bytes(Path(DIGIT_PNGS[0]).read_bytes())
    out = tmp_path / "o"
    assert run("explain", DIGITS, folder, "--out", out, "-q").exit_code == 0
    markdown = (out / "report.md").read_text()
    assert "a\\|b" in markdown and "method gausslegendre" in markdown
    table = (out / "report.csv").read_text()
    assert ",'=cmd," in table and ",'-1," in table  # the name column
    assert run("explain", DIGITS, DIGIT_PNGS[0], "--out", "").exit_code == ExitCode.USAGE


def test_nan_at_the_baseline_only_names_the_baseline(tmp_path):
    """F(x) fine, F(zero) NaN (a std over a constant): the error said the input's output was
    NaN. It now names the baseline and what to do."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),
         helper.make_node("Sub", ["x", "m"], ["d"]),
         helper.make_node("Div", ["d", "d"], ["y"])],  # 0/0 where x is constant
        "nanbase",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )  # fmt: skip
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    np.save(tmp_path / "x.npy", np.array([[0.1, 0.4, -0.3, 0.9]], np.float32))
    result = run(
        "explain", model, tmp_path / "x.npy", "--baseline", "zero", "--out", tmp_path / "o"
    )
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert "F at the baseline (zero) is NaN or Inf" in result.stderr


def test_odd_targets_gates_and_a_folder_for_a_model_are_refused_in_one_line(tmp_path):
    """--target '' explained nothing with exit 0, 3,3 wrote the same result twice, a gate of
    nan or inf crashed after the run (exit 1), and a folder as MODEL was click's exit 2."""
    out = ("--out", tmp_path / "o")
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--target", "", *out)
    assert result.exit_code == ExitCode.USAGE and "--target" in result.stderr
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--target", "3,3", "--json", *out)
    assert result.exit_code == 0 and [r["target"] for r in records(result)] == [3]
    for gate in ("nan", "inf"):
        result = run("explain", DIGITS, DIGIT_PNGS[0], "--max-completeness-error", gate, *out)
        assert result.exit_code == ExitCode.USAGE and len(error_lines(result)) == 1
    for command in ("explain", "inspect"):
        result = run(command, tmp_path, *([DIGIT_PNGS[0]] if command == "explain" else []))
        assert result.exit_code == ExitCode.MODEL and "a folder, not a file" in result.stderr


def test_an_output_never_replaces_an_input_of_the_run(tmp_path, monkeypatch):
    """--out . beside the inputs: digit.png's heatmap would be digit.png, x.npy's
    attributions x.npy, the run's report.csv a CSV input named report.csv. Each such input
    fails alone in one line and keeps its bytes; other inputs are explained."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(DIGIT_PNGS[0], tmp_path / "digit.png")
    before = (tmp_path / "digit.png").read_bytes()
    result = run("explain", DIGITS, "digit.png", DIGIT_PNGS[1], "--steps", "4", "--out", ".")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    (line,) = error_lines(result)[:1]
    assert "digit.png" in line and "would replace an input" in line
    assert (tmp_path / "digit.png").read_bytes() == before
    assert (tmp_path / f"{Path(DIGIT_PNGS[1]).stem}.npy").is_file()

    shutil.copy(CANCER_CSV, tmp_path / "report.csv")
    before = (tmp_path / "report.csv").read_bytes()
    result = run("explain", CANCER, "report.csv", "--steps", "4", "--out", ".")
    assert result.exit_code == ExitCode.OUTPUT
    assert "not an igcli report, and the run's report would replace it" in flat(result)
    assert (tmp_path / "report.csv").read_bytes() == before


def test_a_file_named_like_a_report_that_igcli_did_not_write_is_kept(tmp_path):
    """OUT's own report.csv (or a folder report.md) stops the run before any work, exit 6;
    igcli's own reports of an earlier run, and empty files, are replaced; merge-reports
    checks the same."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.csv").write_text("a,b\n1,2\n")
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--steps", "4", "--out", out)
    assert result.exit_code == ExitCode.OUTPUT
    assert "report.csv: not an igcli report" in flat(result)
    assert (out / "report.csv").read_text() == "a,b\n1,2\n"
    assert not list(out.glob("*.npy"))  # before any work
    (out / "report.csv").write_bytes(b"")
    for _ in range(2):  # an earlier run's reports are igcli's own
        result = run("explain", DIGITS, DIGIT_PNGS[0], "--steps", "4", "--out", out)
        assert result.exit_code == 0, result.stderr
    merged = tmp_path / "merged"
    (merged / "report.md").mkdir(parents=True)
    result = run("merge-reports", out, "--out", merged)
    assert result.exit_code == ExitCode.OUTPUT and "report.md: a folder" in flat(result)
    (merged / "report.md").rmdir()
    assert run("merge-reports", out, "--out", merged).exit_code == 0


def test_a_recursive_walk_leaves_the_output_folder_out(tmp_path):
    """--out inside a folder walked with -r: the second run explained the first run's own
    attributions and heatmaps as inputs."""
    shutil.copy(DIGIT_PNGS[0], tmp_path / "digit.png")
    for _ in range(2):
        result = run("explain", DIGITS, tmp_path, "-r", "--steps", "4", "--out", tmp_path / "o",
                     "--json")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert [r["name"] for r in records(result)] == ["digit"]
    assert not (tmp_path / "o" / "o").exists()


def test_a_model_call_failing_at_an_input_names_the_input(tmp_path, monkeypatch):
    """A model call that fails at one input (a 1x1 image into a 3x3 Conv) is that input's
    failure, named by it, not by the model file (the first input's line named the model)."""
    from igcli.errors import InputError
    from igcli.session import Session

    def fails(self, samples, *args, **kwargs):
        raise InputError("model call failed: Invalid input shape: {1,1}", self.model_path)

    monkeypatch.setattr(Session, "attribute_many", fails)
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--steps", "4", "--out", tmp_path, "--json")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    (line,) = [x for x in error_lines(result) if "model call failed" in x]
    assert Path(DIGIT_PNGS[0]).name in line and "digits_cnn" not in line
    assert records(result)[0]["input"] == str(DIGIT_PNGS[0])


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGHUP"])
def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path, stop):
    """A batch scheduler's time limit sends SIGTERM, a closed terminal or dropped ssh
    connection SIGHUP: the run stops with its finished inputs kept whole, the report written
    and exit 130 (it died at once, with no report; SIGHUP left its lock files too)."""
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(40):
        shutil.copy(DIGIT_PNGS[k % len(DIGIT_PNGS)], folder / f"d{k:02d}.png")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "igcli", "explain", str(DIGITS), str(folder), "--steps", "400",
           "--batch-size", "400", "--out", str(out), "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.record.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(getattr(signal, stop))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "Traceback" not in err and (out / "report.json").is_file()
    assert not list(out.glob(".igcli-*.lock"))
    report = json.loads((out / "report.json").read_text())
    assert 1 <= len(report["results"]) < 40
    assert not list(out.rglob("*.tmp"))
    for r in report["results"]:
        assert (out / r["attributions_file"]).is_file()


def test_the_program_keeps_its_exit_code_through_a_late_signal(monkeypatch):
    """Once a command has decided its exit code, a SIGTERM or Ctrl-C during the
    interpreter's shutdown no longer turns it into 143 or 130: `run` (the program's entry
    point) ignores both as it exits."""
    import signal
    import subprocess
    import sys

    from igcli import cli

    def decided():
        raise SystemExit(4)

    set_to = {}
    monkeypatch.setattr(cli, "main", decided)
    monkeypatch.setattr(signal, "signal", lambda sig, handler: set_to.setdefault(sig, handler))
    with pytest.raises(SystemExit) as info:
        cli.run()
    assert info.value.code == 4
    assert set_to == {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN,
                      signal.SIGHUP: signal.SIG_IGN}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "igcli", "--version"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and "igcli" in proc.stdout


def test_gradcheck_and_inspect_say_what_explain_says_of_a_model(tmp_path):
    """A model ONNX Runtime cannot load (a node reads a tensor nobody makes, a future opset)
    is exit 3 for gradcheck as for explain (it was 7, 'no gradient graph'); inspect says
    explain refuses a model with nothing to differentiate (it said 'falls back')."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    broken = helper.make_graph([helper.make_node("MatMul", ["x", "W_missing"], ["y"])],
                               "broken", [x], [y])  # fmt: skip
    onnx.save(helper.make_model(broken, opset_imports=[helper.make_opsetid("", 13)]),
              tmp_path / "broken.onnx")  # fmt: skip
    result = run("gradcheck", tmp_path / "broken.onnx")
    assert result.exit_code == ExitCode.MODEL, result.stderr
    assert "ONNX Runtime cannot load it" in result.stderr
    assert "/onnxruntime_src/" not in result.stderr  # (no C++ file, signature, assertion)
    said = run("inspect", tmp_path / "broken.onnx")  # it said "gradient graph: yes"
    assert said.exit_code == 0, said.stderr
    assert "gradient graph: no (ONNX Runtime cannot load it" in said.stdout
    assert "explain refuses this model" in said.stdout
    as_json = json.loads(run("inspect", tmp_path / "broken.onnx", "--json").stdout)
    assert as_json["gradient_graph"] is False
    cls = helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"])
    ints = helper.make_graph([helper.make_node("ArgMax", ["x"], ["cls"], axis=1, keepdims=0)],
                             "ints", [x], [cls])  # fmt: skip
    onnx.save(helper.make_model(ints, opset_imports=[helper.make_opsetid("", 13)]),
              tmp_path / "ints.onnx")  # fmt: skip
    said = run("inspect", tmp_path / "ints.onnx").stdout
    assert "explain refuses this model" in said and "((" not in said
    # an op no rule knows and ONNX Runtime cannot load: explain said it would use finite
    # differences, then that the model cannot load
    fixed = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [10, 4]) for n in "xy"]
    odd = helper.make_graph([helper.make_node("Mystery", ["x"], ["y"], domain="my.ops")],
                            "odd", fixed[:1], fixed[1:])  # fmt: skip
    onnx.save(helper.make_model(odd, opset_imports=[helper.make_opsetid("", 17),
              helper.make_opsetid("my.ops", 1)]), tmp_path / "odd.onnx")  # fmt: skip
    np.save(tmp_path / "x.npy", np.ones([10, 4], np.float32))
    result = run("explain", tmp_path / "odd.onnx", tmp_path / "x.npy", "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.MODEL
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'odd.onnx'}: ONNX Runtime cannot load it: Fatal error: "
        "my.ops:Mystery(-1) is not a registered function/op"
    ]


def test_an_interrupt_while_the_program_starts_is_exit_130_in_one_line(monkeypatch, capsys):
    """Importing the CLI takes about 0.3 s; Ctrl-C then printed a Python traceback and
    SIGTERM ended with 143. The entry point (igcli.launch) turns both into exit 130."""
    import signal
    import sys
    import types

    from igcli import launch

    class Interrupted(types.ModuleType):
        def __getattr__(self, name):
            raise KeyboardInterrupt  # as if Ctrl-C came in the middle of the import

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setitem(sys.modules, "igcli.cli", Interrupted("igcli.cli"))
    monkeypatch.setattr(launch.gc, "freeze", lambda: None)  # (not this test process's objects)
    with pytest.raises(SystemExit) as info:
        launch.main()
    assert info.value.code == ExitCode.INTERRUPTED
    assert capsys.readouterr().err.strip() == "interrupted before starting"
    assert signal.getsignal(signal.SIGTERM) == before  # restored for the command's own
    assert launch.gc.isenabled()  # (resting only while the CLI imports)


def test_memory_that_runs_out_while_loading_or_starting_threads_is_exit_2(
    tmp_path, monkeypatch, capsys
):
    """Under a small ulimit -v: a Python traceback (ImportError: failed to map segment from
    shared object, exit 1) while the CLI loaded; a model call that could not start a thread
    failed every input (exit 4) where the machine, not the input, was at fault."""
    import sys
    import types

    from igcli import launch
    from igcli.model import ModelRunner

    class Unmappable(types.ModuleType):
        def __getattr__(self, name):
            raise ImportError("libx.so: failed to map segment from shared object")

    monkeypatch.setitem(sys.modules, "igcli.cli", Unmappable("igcli.cli"))
    monkeypatch.setattr(launch.gc, "freeze", lambda: None)
    with pytest.raises(SystemExit) as info:
        launch.main()
    assert info.value.code == ExitCode.USAGE
    said = capsys.readouterr().err.strip()
    assert said.startswith("error: memory ran out while loading igcli (libx.so")
    assert "\n" not in said
    monkeypatch.undo()

    def no_thread(self, *args, **kwargs):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(ModelRunner, "_run_in_parts", no_thread)
    monkeypatch.setattr(ModelRunner, "_feeds_for", no_thread)
    result = run("explain", DIGITS, *DIGIT_PNGS[:2], "--out", tmp_path / "o", "--no-cache")
    assert result.exit_code == ExitCode.USAGE
    assert "memory ran out (a thread could not be started)" in result.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_stdout_or_stderr_that_cannot_be_written_is_no_internal_error(tmp_path):
    """--json into a full disk (> /dev/full) or a closed stdout stopped the run with an
    internal error (exit 1) and no report; a full stderr turned exit 4 into 1. The JSON
    lines stop, the run goes on, report.json has every result, and the exit is 6 (4 when
    an input failed, whatever stderr does)."""
    import subprocess
    import sys

    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        shutil.copy(DIGIT_PNGS[k], folder / f"d{k}.png")
    base = [sys.executable, "-m", "igcli", "explain", str(DIGITS), str(folder), "--steps", "2"]

    def explain(out, **how):
        proc = subprocess.run([*base, "--json", "--out", str(tmp_path / out)], timeout=120,
                              stderr=subprocess.PIPE, text=True, **how)  # fmt: skip
        report = json.loads((tmp_path / out / "report.json").read_text())
        return proc, report

    with open("/dev/full", "w") as full:
        proc, report = explain("full", stdout=full)
    assert proc.returncode == ExitCode.OUTPUT and "Traceback" not in proc.stderr
    assert "JSON lines stopped (No space left on device)" in proc.stderr
    assert len(report["results"]) == 3
    proc, report = explain("closed", stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(1))
    assert proc.returncode == ExitCode.OUTPUT and len(report["results"]) == 3
    (folder / "bad.png").write_bytes(b"not a png")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([*base, "--out", str(tmp_path / "err")], stdout=subprocess.DEVNULL,
                              stderr=full, timeout=120)  # fmt: skip
    assert proc.returncode == ExitCode.INPUTS_FAILED


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_commands_writing_stdout_say_a_full_disk_and_stop_quietly_at_a_closed_pipe(tmp_path):
    """plan, inspect, gradcheck, cache info and --help called a full stdout or a reader gone
    (`| head -1`) an 'internal error' (exit 1, please report it). A full disk is one line
    and exit 6, as for explain --json; a closed pipe ends quietly with 141 (128 + SIGPIPE)."""
    import subprocess
    import sys

    igcli = [sys.executable, "-m", "igcli"]
    commands = [
        ["plan", str(DIGITS), str(DIGIT_PNGS[0])],
        ["inspect", str(DIGITS)],
        ["gradcheck", str(DIGITS), str(DIGIT_PNGS[0])],
        ["cache", "info"],
        ["explain", "--help"],
        ["--help"],
    ]
    env = dict(os.environ, IGCLI_CACHE_DIR=str(tmp_path / "cache"))
    for command in commands:
        with open("/dev/full", "w") as full:
            proc = subprocess.run([*igcli, *command], stdout=full, stderr=subprocess.PIPE,
                                  text=True, timeout=120, env=env)  # fmt: skip
        assert proc.returncode == ExitCode.OUTPUT, (command, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1] == (
            "error: stdout: cannot be written (No space left on device)"
        ), command
        if command[0] in ("plan", "gradcheck"):
            continue  # these say what they did on stderr
        proc = subprocess.Popen([*igcli, *command], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        proc.stdout.close()  # before the program has written anything
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == ExitCode.PIPE_CLOSED and err == "", (command, err)


def test_a_rerun_without_heatmaps_removes_its_own_old_heatmap_only(tmp_path):
    """A heatmap left from a run with heatmaps no longer matched the attributions beside it;
    a user's picture of that name stays."""
    out = tmp_path / "o"
    first = run("explain", DIGITS, DIGIT_PNGS[0], DIGIT_PNGS[1], "--out", out, "--steps", "4")
    assert first.exit_code == 0, first.stderr
    ours, theirs = out / f"{DIGIT_PNGS[0].stem}.png", out / f"{DIGIT_PNGS[1].stem}.png"
    shutil.copy(DIGIT_PNGS[1], theirs)  # (an unsigned PNG: not igcli's)
    kept = tmp_path / "kept.png"  # a user's link to a heatmap igcli drew stays a link
    shutil.copy(ours, kept)
    linked = out / f"{DIGIT_PNGS[2].stem}.png"
    linked.symlink_to(kept)
    again = run("explain", DIGITS, *DIGIT_PNGS[:3], "--out", out, "--steps", "4", "--no-heatmaps")
    assert again.exit_code == 0, again.stderr
    assert not ours.exists() and (out / f"{DIGIT_PNGS[0].stem}.npy").exists()
    assert linked.is_symlink() and kept.exists()
    assert theirs.read_bytes() == DIGIT_PNGS[1].read_bytes()


def test_a_cache_size_that_is_no_size_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("IGCLI_CACHE_MAX", "lots")
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", tmp_path / "o", "--steps", "4")
    assert result.exit_code == ExitCode.USAGE
    said = "error: IGCLI_CACHE_MAX: 'lots' is not a size (e.g. 500M, 2G)"
    assert one_line_error(result) == [said]
    assert not (tmp_path / "o").exists()


def test_an_out_that_is_a_broken_symlink_says_so(tmp_path):
    """It said 'output folder is not writable (File exists)'."""
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", tmp_path / "out", "--steps", "2")
    assert result.exit_code == ExitCode.OUTPUT
    [line] = one_line_error(result)
    assert line.endswith(f"--out is a broken symlink (to {tmp_path}/nowhere)")


def test_out_as_the_input_folder_and_stdin_twice_are_usage_errors(tmp_path):
    """--out DIR with DIR as the input folder explained nothing ('no inputs', exit 4) and
    wrote its reports among the inputs, whose report.csv a later run read as an input; '-'
    twice said 'no inputs to explain'."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DIGIT_PNGS[0], folder / "a.png")
    same = run("explain", DIGITS, folder, "--out", folder)
    assert same.exit_code == ExitCode.USAGE and "--out is this input folder" in same.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]
    twice = run("explain", DIGITS, "-", "-", "--out", tmp_path / "o", input=f"{folder}/a.png\n")
    assert twice.exit_code == ExitCode.USAGE and "given more than once" in twice.stderr


def test_a_name_too_long_to_look_up_is_one_line_where_it_is_given(tmp_path, monkeypatch):
    """A name over 255 bytes made pathlib raise ENAMETOOLONG: an internal error (exit 1)
    that stopped the run before its good input, for an input, --out, plan, merge-reports,
    --baselines and --baseline-data alike."""
    monkeypatch.chdir(tmp_path)
    long = "x" * 300
    result = run("explain", DIGITS, DIGIT_PNGS[0], f"{long}.png", "--out", "a", "--steps", "4")
    assert result.exit_code == ExitCode.INPUTS_FAILED, result.stderr
    assert "file name too long" in result.stderr and (tmp_path / "a" / "report.json").is_file()
    assert len(json.loads((tmp_path / "a" / "report.json").read_text())["results"]) == 1
    cases = [
        (("explain", DIGITS, DIGIT_PNGS[0], "--out", long), ExitCode.OUTPUT),
        (("plan", DIGITS, long), ExitCode.INPUTS_FAILED),
        (("merge-reports", long, "--out", "m"), ExitCode.USAGE),
        (("merge-reports", "a", "--out", long), ExitCode.OUTPUT),
        (("explain", DIGITS, DIGIT_PNGS[0], "--baselines", long, "--out", "b"), ExitCode.USAGE),
        (("explain", DIGITS, DIGIT_PNGS[0], "--baseline", "mean", "--baseline-data", long,
          "--out", "c"), ExitCode.USAGE),
    ]  # fmt: skip
    for args, code in cases:
        result = run(*args)
        assert result.exit_code == code, (args[0], result.stderr)
        assert "file name too long" in result.stderr and "internal error" not in result.stderr


def test_a_run_that_explained_nothing_states_no_throughput(tmp_path):
    """Two broken files: '0 explained, 2 failed ... in 0.002 s, 1e+03 inputs/s'."""
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"not an image")
    result = run("explain", DIGITS, tmp_path / "a.png", tmp_path / "b.png", "--out",
                 tmp_path / "o")  # fmt: skip
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert "0 explained, 2 failed" in result.stderr and "inputs/s" not in result.stderr


def test_an_input_without_a_known_file_type_is_read_by_what_it_holds(tmp_path):
    """A PNG named without a suffix was 'unsupported file type (none)' although images are
    judged by content, and .jfif or .jpe files were left out of folders."""
    import shutil

    seven = next(p for p in DIGIT_PNGS if p.name.startswith("digit_7"))
    shutil.copy(seven, tmp_path / "plain")
    shutil.copy(seven, tmp_path / "photo.jfif")
    (tmp_path / "notes").write_text("not an image")
    result = run("explain", DIGITS, tmp_path / "plain", tmp_path / "notes", "--out",
                 tmp_path / "o", "--json")  # fmt: skip
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert [r["target"] for r in records(result) if "target" in r] == [7]
    assert "no file type in its name, but holds a PNG image" in result.stderr
    assert "notes: unsupported file type '(none)'" in result.stderr
    folder = run("explain", DIGITS, tmp_path, "--out", tmp_path / "f", "--json")
    assert sorted(r["name"] for r in records(folder) if "target" in r) == ["photo"]
