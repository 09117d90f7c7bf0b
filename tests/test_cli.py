"""The command line as users and CI meet it: outputs, stdout purity, exit codes, one-line errors."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from igcli.cli import main
from igcli.console import Messages
from igcli.errors import ExitCode, UsageError
from igcli.report import RunReport
from tests import models

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "sample_models" / "digits_cnn.onnx"
CANCER = ROOT / "sample_models" / "breast_cancer_mlp.onnx"
DIGIT_PNGS = sorted((ROOT / "sample_inputs" / "digits").glob("*.png"))
CANCER_CSV = ROOT / "sample_inputs" / "breast_cancer.csv"


def run(*args, input=None):
    result = CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)
    return result


def one_line_error(result):
    err = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    return err


def test_explain_image_writes_npy_png_and_report(tmp_path):
    out = tmp_path / "out"
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", out, "--steps", "16")
    assert result.exit_code == 0, result.stderr
    stem = DIGIT_PNGS[0].stem
    attributions = np.load(out / f"{stem}.npy")
    assert attributions.shape == (1, 1, 28, 28) and attributions.dtype == np.float32
    with Image.open(out / f"{stem}.png") as img:
        assert img.width > 28 and np.asarray(img.convert("L")).std() > 10
    report = json.loads((out / "report.json").read_text())
    entry = report["results"][0]
    for key in (
        "input",
        "target",
        "output",
        "f_input",
        "f_baseline",
        "attribution_sum",
        "abs_error",
        "rel_error",
        "steps",
        "method",
        "baseline",
        "gradient_source",
        "wall_time_s",
    ):
        assert key in entry
    assert entry["baseline"] == "black" and entry["steps"] == 16
    assert abs(entry["attribution_sum"] - entry["delta"]) <= entry["abs_error"] + 1e-9
    assert attributions.sum() == pytest.approx(entry["attribution_sum"], rel=1e-4)
    assert (out / "report.md").is_file() and (out / "report.csv").is_file()
    # the time before the first input (model, gradient graph, its check) is said apart: a
    # first run of Sequencer2D said "in 4 s" after 113 s preparing its gradient graph
    timing = report["settings"]
    assert timing["prepare_time_s"] > 0 and timing["wall_time_s"] > 0
    said = io.StringIO()
    first_run = RunReport("m.onnx", "", {**timing, "prepare_time_s": 113})
    Messages(stream=said).print_summary(first_run)
    assert "(after 113 s preparing the model)" in said.getvalue()
    # a narrow terminal cut every number in the table to '7…' (blank cells at 20 columns):
    # one result a line there, each number whole
    full = RunReport("m.onnx", "", timing)
    full.results.extend(report["results"])
    for width, table in ((200, True), (30, False)):
        said = io.StringIO()
        messages = Messages(stream=said)
        messages.console.width = width
        messages.print_summary(full)
        text = said.getvalue()
        assert ("┃" in text) == table and "…" not in text
        assert f"{entry['f_input']:.5g}" in text and f"{entry['f_baseline']:.5g}" in text


def test_json_lines_are_the_only_stdout(tmp_path):
    result = run("explain", CANCER, CANCER_CSV, "--out", tmp_path, "--json", "--steps", "8")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 8
    records = [json.loads(line) for line in lines]
    assert all(r["schema_version"] == 1 and r["status"] == "ok" for r in records)
    assert {r["label"] for r in records} <= {"malignant", "benign"}


@pytest.mark.parametrize("gradients", ["fd", "auto"])
def test_sample_models_complete_within_one_percent(tmp_path, gradients):
    for model, inputs in ((DIGITS, DIGIT_PNGS), (CANCER, [CANCER_CSV])):
        out = tmp_path / model.stem / gradients
        result = run("explain", model, *inputs, "--out", out, "--json", "--gradients", gradients)
        assert result.exit_code == 0, result.stderr
        for line in result.stdout.splitlines():
            rec = json.loads(line)
            assert rec["rel_error"] < 0.01, (gradients, rec["name"], rec["rel_error"])


def test_several_targets_give_one_result_each(tmp_path):
    result = run(
        "explain",
        DIGITS,
        DIGIT_PNGS[0],
        "--target",
        "1,7",
        "--out",
        tmp_path,
        "--json",
        "--steps",
        "8",
    )
    assert result.exit_code == 0, result.stderr
    targets = [json.loads(line)["target"] for line in result.stdout.splitlines()]
    assert targets == [1, 7]
    assert (tmp_path / f"{DIGIT_PNGS[0].stem}.target7.npy").is_file()


def test_softmax_explains_probabilities(tmp_path):
    result = run(
        "explain", CANCER, CANCER_CSV, "--softmax", "--out", tmp_path, "--json", "--steps", "16"
    )
    rec = json.loads(result.stdout.splitlines()[0])
    assert 0.5 < rec["f_input"] <= 1.0 and rec["output"] == "igcli_softmax"


def test_npy_input_with_and_without_batch_axis(tmp_path):
    x = np.random.default_rng(0).normal(size=(1, 30)).astype(np.float32)
    np.save(tmp_path / "with.npy", x)
    np.save(tmp_path / "without.npy", x[0])
    result = run(
        "explain",
        CANCER,
        tmp_path / "with.npy",
        tmp_path / "without.npy",
        "--out",
        tmp_path / "o",
        "--json",
        "--steps",
        "8",
    )
    assert result.exit_code == 0, result.stderr
    a, b = (json.loads(line) for line in result.stdout.splitlines())
    assert a["attribution_sum"] == pytest.approx(b["attribution_sum"])
    assert a["baseline"] == "zero"


def test_black_baseline_is_black_after_normalisation(tmp_path):
    """F(baseline) must equal the model's output on an all-black image, not on zeros."""
    import onnxruntime as ort

    result = run(
        "explain",
        DIGITS,
        DIGIT_PNGS[0],
        "--out",
        tmp_path,
        "--json",
        "--steps",
        "4",
        "--target",
        "3",
    )
    rec = json.loads(result.stdout)
    side = json.loads(DIGITS.with_suffix(".json").read_text())["preprocessing"]
    black = np.full((1, 1, 28, 28), (0 - side["mean"][0]) / side["std"][0], dtype=np.float32)
    sess = ort.InferenceSession(str(DIGITS))
    assert rec["f_baseline"] == pytest.approx(
        float(sess.run(None, {"image": black})[0][0, 3]), rel=1e-5
    )


# -- errors: one line, named file, distinct exit code, no partial outputs -------------------


def test_missing_model(tmp_path):
    result = run("explain", tmp_path / "nope.onnx", DIGIT_PNGS[0], "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.MODEL
    err = one_line_error(result)
    assert len(err) == 1 and "nope.onnx" in err[0] and "no such file" in err[0]


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not protobuf at all \x00\xff")
    result = run("explain", bad, DIGIT_PNGS[0], "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.MODEL
    assert "bad.onnx" in one_line_error(result)[0]


def test_image_that_does_not_decode_fails_alone(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "o"
    result = run("explain", DIGITS, broken, DIGIT_PNGS[0], "--out", out, "--steps", "4")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert "broken.png" in result.stderr and "cannot decode image" in result.stderr
    assert (out / f"{DIGIT_PNGS[0].stem}.npy").is_file()
    assert not list(out.glob("broken*"))
    report = json.loads((out / "report.json").read_text())
    assert len(report["results"]) == 1 and len(report["failures"]) == 1


def test_tensor_of_wrong_shape(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 3), dtype=np.float32))
    result = run("explain", CANCER, tmp_path / "x.npy", "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert "x.npy" in result.stderr and "shape" in result.stderr


def test_tensor_of_wrong_dtype(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 30), dtype=np.int64))
    result = run("explain", CANCER, tmp_path / "x.npy", "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.INPUTS_FAILED and "dtype" in result.stderr


def test_target_out_of_range(tmp_path):
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--target", "10", "--out", tmp_path)
    assert result.exit_code == ExitCode.USAGE
    err = one_line_error(result)
    assert "target 10" in err[0] and "digits_cnn.onnx" in err[0]


def test_a_default_target_among_boxes_or_pixels_is_said(tmp_path):
    """A detector's [84, 8400] output: the default, its largest value, was a box coordinate
    and nothing said so. Said once when no target is named; a class vector is not."""
    import onnx
    from onnx import helper

    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    boxes = models.xy_model(
        nodes, ["N", 24], ["N", 4, 6],
        [onnx.numpy_helper.from_array(np.array([0, 4, 6], np.int64), "shape")],
    )  # fmt: skip
    model = models.save(boxes, tmp_path / "boxes.onnx")
    np.save(tmp_path / "x.npy", np.linspace(0, 1, 24, dtype=np.float32)[None])
    result = run("explain", model, tmp_path / "x.npy", "--out", tmp_path / "a", "--steps", "8")
    assert result.exit_code == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "not one score per class" in line]
    assert len(said) == 1 and "output 'y' holds [4, 6] values per input" in said[0]
    assert "--target" in said[0]
    result = run("explain", model, tmp_path / "x.npy", "--out", tmp_path / "b", "--steps", "8",
                 "--target", "3")  # fmt: skip
    assert result.exit_code == 0 and "not one score per class" not in result.stderr
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", tmp_path / "c", "--steps", "8")
    assert result.exit_code == 0 and "not one score per class" not in result.stderr


def test_unknown_output_name(tmp_path):
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--output", "probs", "--out", tmp_path)
    assert result.exit_code == ExitCode.USAGE and "probs" in result.stderr
    # the model's input is no output of it ("not a tensor of the graph" said it was not there)
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--output", "image", "--out", tmp_path)
    assert result.exit_code == ExitCode.USAGE and "is the model's input" in result.stderr


def test_nan_output_is_an_error(tmp_path):
    model = models.save(models.nan_model(), tmp_path / "nan.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 2), dtype=np.float32))
    result = run("explain", model, tmp_path / "x.npy", "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert "NaN" in result.stderr and "x.npy" in result.stderr
    assert not (tmp_path / "o" / "x.npy").exists()


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file, not a folder")
    result = run("explain", CANCER, CANCER_CSV, "--out", blocker / "sub")
    assert result.exit_code == ExitCode.OUTPUT
    assert "sub" in one_line_error(result)[0]


def test_completeness_gate(tmp_path):
    result = run(
        "explain",
        CANCER,
        CANCER_CSV,
        "--steps",
        "1",
        "--method",
        "riemann_left",
        "--max-completeness-error",
        "1e-6",
        "--out",
        tmp_path,
    )
    assert result.exit_code == ExitCode.COMPLETENESS
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["gate"]["passed"] is False and report["gate"]["failing"]


def test_a_run_ends_by_counting_unresolved_results(tmp_path):
    """Each input's miss is warned of once per run; the end says how many missed and the
    worst, and that the gate would fail them. With the gate set, the gate says it instead."""
    common = ("--steps", "1", "--method", "riemann_left")
    result = run("explain", CANCER, CANCER_CSV, *common, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.stderr
    rows = len(json.loads((tmp_path / "a" / "report.json").read_text())["results"])
    line = [x for x in result.stderr.splitlines() if "result(s) miss F(x) - F(b)" in x]
    assert len(line) == 1 and f"of {rows} result(s) miss F(x) - F(b) by more than 5%" in line[0]
    assert "worst" in line[0] and "--max-completeness-error" in line[0]
    gated = run("explain", CANCER, CANCER_CSV, *common, "--max-completeness-error", "0.05",
                "--out", tmp_path / "b")  # fmt: skip
    assert gated.exit_code == ExitCode.COMPLETENESS
    assert "result(s) miss F(x) - F(b)" not in gated.stderr
    fine = run("explain", CANCER, CANCER_CSV, "--out", tmp_path / "c")
    assert fine.exit_code == 0 and "result(s) miss" not in fine.stderr
    assert "use --steps auto" in line[0]
    # adaptive steps stopped short by their budget: the advice is the budget, not --steps
    short = run("explain", CANCER, CANCER_CSV, "--steps", "auto", "--max-steps", "3",
                "--tolerance", "1e-9", "--out", tmp_path / "d")  # fmt: skip
    line = [x for x in short.stderr.splitlines() if "result(s) miss F(x) - F(b)" in x]
    assert short.exit_code == 0 and len(line) == 1, short.stderr
    assert "raise --max-steps" in line[0] and "--steps auto" not in line[0]


def test_adaptive_steps_stop_at_the_rounding_of_f(tmp_path):
    """F(x) and F(b) a few float32 units apart (a saturated output): what is left of the
    completeness error is F's own rounding, which no split lowers. The run stops after the
    first round (it split down to 1,023 evaluations before) and says more steps will not help."""
    model = models.save(models.nearly_one(), tmp_path / "n.onnx")
    np.save(tmp_path / "x.npy", np.array([[1.0, 2.0, 3.0]], dtype=np.float32))
    result = run("explain", model, tmp_path / "x.npy", "--steps", "auto", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.stderr
    record = json.loads((tmp_path / "o" / "report.json").read_text())["results"][0]
    assert record["steps_used"] == 9 and record["stop_reason"] == "floor"
    assert record["rel_error"] > 0.05  # (the gradients are right: F(x) - F(b) is off by 9 ulps)
    line = [x for x in result.stderr.splitlines() if "result(s) miss F(x) - F(b)" in x]
    assert len(line) == 1 and "more steps will not help" in line[0], result.stderr
    assert "rounding of F itself" in result.stderr


def test_fixed_batch_model_runs_row_by_row(tmp_path):
    model = models.save(models.fixed_batch_reshape(), tmp_path / "fixed.onnx")
    np.save(tmp_path / "x.npy", np.array([[[0.1, 0.2], [0.3, -0.4]]], dtype=np.float32))
    result = run(
        "explain", model, tmp_path / "x.npy", "--out", tmp_path / "o", "--json", "--gradients", "fd"
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["rel_error"] < 1e-3


def test_inspect_lists_inputs_outputs_ops(tmp_path):
    result = run("inspect", DIGITS, "--json")
    info = json.loads(result.stdout)
    assert info["inputs"][0]["name"] == "image" and info["outputs"][0]["name"] == "logits"
    assert "Conv" in info["ops"] and info["opset"] == 17
    assert "NCHW" in info["preprocessing"]
    text = run("inspect", DIGITS)
    assert text.exit_code == 0 and "image" in text.stdout and "gradient graph" in text.stdout


def test_feed_and_input_for_models_with_several_inputs(tmp_path):
    model = models.save(models.two_inputs(), tmp_path / "two.onnx")
    np.save(tmp_path / "x.npy", np.array([[0.5, -1.0, 2.0]], dtype=np.float32))
    np.save(tmp_path / "s.npy", np.array([0.2, 0.3, -0.1], dtype=np.float32))  # no batch axis
    missing = run("explain", model, tmp_path / "x.npy", "--out", tmp_path / "o")
    assert missing.exit_code == ExitCode.USAGE and "--feed s=" in missing.stderr
    fed = run(
        "explain",
        model,
        tmp_path / "x.npy",
        "--feed",
        f"s={tmp_path / 's.npy'}",
        "--out",
        tmp_path / "o",
        "--json",
        "--steps",
        "16",
    )
    assert fed.exit_code == 0, fed.stderr
    rec = json.loads(fed.stdout)
    assert rec["gradient_source"] == "graph" and rec["rel_error"] < 1e-3
    # attribute the scale instead, feeding x
    swapped = run(
        "explain",
        model,
        tmp_path / "s.npy",
        "--input",
        "s",
        "--feed",
        f"x={tmp_path / 'x.npy'}",
        "--out",
        tmp_path / "o2",
        "--json",
    )
    assert swapped.exit_code == 0, swapped.stderr
    assert json.loads(swapped.stdout)["f_input"] == pytest.approx(rec["f_input"], rel=1e-6)
    unknown = run(
        "explain",
        model,
        tmp_path / "x.npy",
        "--feed",
        f"q={tmp_path / 's.npy'}",
        "--feed",
        f"s={tmp_path / 's.npy'}",
        "--out",
        tmp_path / "o3",
    )
    assert unknown.exit_code == ExitCode.USAGE and "q" in unknown.stderr


def test_merge_reports_refuses_different_models(tmp_path):
    run("explain", CANCER, CANCER_CSV, "--steps", "4", "--out", tmp_path / "a")
    run("explain", DIGITS, DIGIT_PNGS[0], "--steps", "4", "--out", tmp_path / "b")
    result = run("merge-reports", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "m")
    assert result.exit_code == ExitCode.SHARDS and "different models" in result.stderr
    bad = tmp_path / "junk.json"
    bad.write_text("{}")
    result = run("merge-reports", bad, "--out", tmp_path / "m")
    assert result.exit_code == ExitCode.USAGE and "junk.json" in result.stderr


def test_help_comes_in_sections_with_examples():
    result = run("explain", "--help")
    assert result.exit_code == 0
    for section in ("Target and output", "Attribution", "Gradients", "Outputs and heatmaps"):
        assert section in result.stdout
    assert "Examples:" in result.stdout and "--steps auto" in result.stdout
    summary = run("--help").stdout
    assert "merge-reports" in summary and "gradcheck" in summary


@pytest.mark.parametrize(
    "args",
    [["explain", "m.onnx", "x.npy", "--steps", "many"], ["explain"], ["nope"], ["explain", "--x"]],
)
def test_usage_errors_are_one_line(args):
    result = run(*args)
    assert result.exit_code == ExitCode.USAGE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0]


def _float_options():
    import click

    for name, command in main.commands.items():
        for param in getattr(command, "params", []):
            if isinstance(param, click.Option) and isinstance(param.type, click.FloatRange):
                yield name, param


def test_every_float_option_refuses_nan_and_inf_before_any_work(tmp_path):
    """click's FloatRange lets nan through (every comparison with nan is false): --clip-percentile
    nan ran the model, left its .npy files and failed in the heatmap writer (exit 1)."""
    from igcli.cli import FiniteRange

    options = list(_float_options())
    assert {(c, p.opts[0]) for c, p in options} >= {("explain", "--clip-percentile"),
                                                    ("explain", "--fd-step")}  # fmt: skip
    for command, param in options:
        assert isinstance(param.type, FiniteRange), (command, param.opts)
        for value in ("nan", "inf", "-inf"):
            out = tmp_path / f"{command}{param.name}{value}"
            args = [command, DIGITS, DIGIT_PNGS[0], param.opts[0], value]
            result = run(*args, *(["--out", out] if command == "explain" else []))
            assert result.exit_code == ExitCode.USAGE, (args, result.stderr)
            err = one_line_error(result)
            assert len(err) == 1 and param.opts[0] in err[0], err
            assert not out.exists()


@pytest.mark.parametrize(
    "error,what",
    [
        (MemoryError(), "(MemoryError)"),
        (RuntimeError("can't start new thread"), "(a thread could not be started)"),
        (OSError(12, "Cannot allocate memory"), "(OSError: Cannot allocate memory)"),
    ],
)
def test_memory_running_out_is_one_line_not_an_internal_error(tmp_path, monkeypatch, error, what):
    """Under a tight `ulimit -v` a run ended with 'internal error: MemoryError: ' (no message)
    or 'can't start new thread', exit 1: a bug to report, where the machine was the cause."""
    import igcli.run

    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr(igcli.run, "run_explain", exhausted)
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", tmp_path / "o", "--steps", "4")
    assert result.exit_code == ExitCode.USAGE, result.stderr
    line = result.stderr.strip()
    assert line.startswith(f"error: memory ran out {what}; lower --memory-limit or --batch-size")
    assert "\n" not in line and "internal error" not in line
    monkeypatch.setattr(igcli.run, "run_explain", lambda *a, **k: 1 / 0)  # still a bug
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", tmp_path / "o", "--steps", "4")
    assert result.exit_code == ExitCode.INTERNAL and "internal error: ZeroDivisionError" in (
        result.stderr
    )


def test_a_negative_std_and_non_ascii_target_digits_are_usage_errors(tmp_path):
    """--std -1 negated the input before the model, silently (target 1 instead of 7), and
    --target ٣ (an Arabic-Indic 3) was taken as 3, while CSV cells refuse such digits."""
    import igcli

    out = tmp_path / "o"
    for args, what in ((["--mean", "0", "--std", "-1"], "std must be positive, not -1"),
                       (["--target", "٣"], "'٣' is not a comma-separated list of integers"),
                       (["--target", "1_0"], "not a comma-separated")):  # fmt: skip
        result = run("explain", DIGITS, DIGIT_PNGS[0], *args, "--out", out)
        assert result.exit_code == ExitCode.USAGE, result.stderr
        assert what in result.stderr and len(one_line_error(result)) == 1
    with pytest.raises(UsageError, match="std must be positive"):
        igcli.Session(DIGITS, mean=[0], std=[-1])


def _rgb(path, width, height):
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_a_model_of_open_size_that_fails_at_an_image_size_names_one_it_runs_at(tmp_path):
    model = models.save(models.even_sides(), tmp_path / "even.onnx")
    odd, fine = _rgb(tmp_path / "odd.png", 7, 5), _rgb(tmp_path / "fine.png", 8, 6)
    result = run("explain", model, odd, fine, "--out", tmp_path / "out", "--steps", "8")
    assert result.exit_code == ExitCode.INPUTS_FAILED, result.stderr
    errors = [e for e in one_line_error(result) if e.startswith("error: ") and "odd.png" in e]
    assert len(errors) == 1
    assert "any size, but not 5x7: it runs at 6x8 (sides multiples of 2)" in errors[0]
    assert "--size 6x8" in errors[0]
    assert (tmp_path / "out" / "fine.npy").exists()
    # and with --size every image is resized to a size the model takes
    result = run("explain", model, odd, "--out", tmp_path / "sized", "--steps", "8",
                 "--size", "6x8")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert np.load(tmp_path / "sized" / "odd.npy").shape == (1, 3, 6, 8)
    result = run("explain", model, fine, "--out", tmp_path / "bad", "--size", "5x7")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert "not 5x7 (the size asked for): it runs at 6x8" in result.stderr


@pytest.mark.parametrize(
    ("size", "problem"),
    [
        ("6x", "give height x width in pixels"),
        ("0x8", "give height x width in pixels"),
        ("6x8x2", "give height x width in pixels"),
        ("99999x99999", "give height x width in pixels"),
    ],
)
def test_a_bad_size_is_a_usage_error(tmp_path, size, problem):
    model = models.save(models.even_sides(), tmp_path / "even.onnx")
    image = _rgb(tmp_path / "a.png", 8, 6)
    result = run("explain", model, image, "--out", tmp_path / "out", "--size", size)
    assert result.exit_code == ExitCode.USAGE, result.stderr
    assert problem in one_line_error(result)[-1]
    assert not (tmp_path / "out").exists()


def test_size_on_a_model_of_fixed_size_or_no_images_is_a_usage_error(tmp_path):
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", tmp_path / "a", "--size", "32x32")
    assert result.exit_code == ExitCode.USAGE
    assert "fixes the height at 28; --size is for models that take any size" in result.stderr
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", tmp_path / "b", "--size", "28x28")
    assert result.exit_code == 0, result.stderr  # (the model's own size: said twice, fine)
    result = run("explain", CANCER, CANCER_CSV, "--out", tmp_path / "c", "--size", "8x8")
    assert result.exit_code == ExitCode.USAGE
    assert "--size is for image models" in result.stderr


def test_gradcheck_and_graph_only_runs_at_a_size_the_model_cannot_take_say_so(tmp_path):
    """Not 'no gradient graph' (a missing rule, exit 7): the model does not run there."""
    model = models.save(models.even_sides(), tmp_path / "even.onnx")
    odd = _rgb(tmp_path / "odd.png", 7, 5)
    result = run("gradcheck", model, odd)
    assert result.exit_code == ExitCode.INPUTS_FAILED, result.stderr
    assert "it runs at 6x8 (sides multiples of 2)" in one_line_error(result)[-1]
    assert run("gradcheck", model, odd, "--size", "6x8").exit_code == 0
    result = run("explain", model, odd, "--gradients", "graph", "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert "it runs at 6x8" in result.stderr


def test_feed_names_holding_an_equals_sign_and_a_name_given_twice(tmp_path):
    proto = models.two_inputs()
    for node in proto.graph.node:
        node.input[:] = ["s=1" if i == "s" else i for i in node.input]
    proto.graph.input[1].name = "s=1"
    model = models.save(proto, tmp_path / "two.onnx")
    np.save(tmp_path / "x.npy", np.array([[0.5, -1.0, 2.0]], dtype=np.float32))
    np.save(tmp_path / "s=v.npy", np.array([0.2, 0.3, -0.1], dtype=np.float32))
    fed = run("explain", model, tmp_path / "x.npy", "--feed", f"s=1={tmp_path / 's=v.npy'}",
              "--out", tmp_path / "o", "--steps", "8")  # fmt: skip
    assert fed.exit_code == 0, fed.stderr
    twice = run("explain", model, tmp_path / "x.npy", "--feed", "s=1=a.npy", "--feed",
                "s=1=b.npy", "--out", tmp_path / "o2")  # fmt: skip
    assert twice.exit_code == ExitCode.USAGE
    assert "is given twice" in twice.stderr and not (tmp_path / "o2").exists()


def test_inspect_says_a_resize_to_fixed_sizes_gets_a_graph_per_size(tmp_path):
    """A dynamo export's Resize to constant sizes [1, C, 8, 8] (its batch fixed at 1): inspect
    said explain fell back to finite differences, where explain built the graph."""
    import onnx
    from onnx import TensorProto, helper

    sizes = onnx.numpy_helper.from_array(np.array([1, 2, 8, 8], np.int64), "sizes")
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "", "sizes"], ["r"], mode="linear"),
         helper.make_node("ReduceMean", ["r"], ["y"], axes=[2, 3], keepdims=0)],
        "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [sizes],
    )  # fmt: skip
    path = models.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
                       tmp_path / "resize.onnx")  # fmt: skip
    said = run("inspect", path)
    assert said.exit_code == 0 and "gradient graph: per input size" in said.stdout, said.stdout
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((1, 2, 4, 4), np.float32))
    result = run("explain", path, tmp_path / "x.npy", "--out", tmp_path / "o", "--json",
                 "--steps", "8", "--gradients", "graph")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["gradient_source"] == "graph"


@pytest.mark.parametrize(
    "args",
    [("--shard", "1/2", "--shard", "2/2"), ("--target", "1", "--target=2"),
     ("--out", "a", "--out", "b"), ("--baseline", "black", "--baseline", "white")],
)  # fmt: skip
def test_an_option_of_one_value_given_twice_is_a_usage_error(tmp_path, args):
    """click keeps the last: --shard 1/2 --shard 2/2 quietly ran the other half."""
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", tmp_path, "--steps", "4", *args)
    assert result.exit_code == ExitCode.USAGE
    (line,) = one_line_error(result)
    assert f"{args[0]} is given more than once" in line


def test_options_that_gather_values_and_flags_may_repeat(tmp_path):
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", tmp_path, "--steps", "4", "-q", "-q")
    assert result.exit_code == 0, result.stderr


def test_gradcheck_jitter_past_each_feature_s_own_size_is_a_usage_error():
    """--jitter 1e308 overflowed the input: a numpy RuntimeWarning on stderr, then NaN."""
    result = run("gradcheck", CANCER, CANCER_CSV, "--jitter", "1e308")
    assert result.exit_code == ExitCode.USAGE and "Warning" not in result.stderr
    (line,) = one_line_error(result)
    assert "--jitter" in line
