"""igcli as a library: Session and Attribution, and the choices a session makes for the user."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import igcli
from igcli.errors import ExitCode, InputError, UsageError
from tests import models
from tests.test_cli import CANCER, CANCER_CSV, DIGIT_PNGS, DIGITS, run


def test_attribute_an_image_from_python(tmp_path):
    session = igcli.Session(DIGITS)
    a = session.attribute(DIGIT_PNGS[0], steps=32)
    assert isinstance(a, igcli.Attribution)
    assert a.attributions.shape == (1, 28, 28) and a.gradient_source == "graph"
    assert a.rel_error < 0.01
    assert a.target == int(np.argmax(session.runner.run(a.sample.x[None])[0]))
    png = a._repr_png_()
    assert png.startswith(b"\x89PNG")
    assert "completeness error" in a._repr_html_()
    record = a.save(tmp_path)
    assert (tmp_path / record["attributions_file"]).is_file()
    assert (tmp_path / record["heatmap_file"]).is_file()
    assert json.loads((tmp_path / f"{a.sample.name}.record.json").read_text())["records"]


def test_save_replaces_only_what_igcli_wrote(tmp_path):
    """save() kept no file it found (a user's own digit.png was replaced), let two targets
    of one sample replace each other, and left the .npy of a result whose picture failed."""
    from igcli.errors import OutputError, UsageError

    session = igcli.Session(DIGITS)
    settings = igcli.AttributionSettings(steps=8)
    a3, a5 = session.attribute_many(session.load(DIGIT_PNGS[0]), [3, 5], settings)[0]
    stem = a3.sample.name
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / f"{stem}.png").write_text("my own picture")
    with pytest.raises(OutputError, match="not igcli|no record of igcli"):
        a3.save(mine)
    assert (mine / f"{stem}.png").read_text() == "my own picture"
    assert sorted(p.name for p in mine.iterdir()) == [f"{stem}.png"]  # nothing else written
    ours = tmp_path / "ours"
    a3.save(ours)
    a3.save(ours)  # its own files: replaced
    a3.save(ours, heatmap=False)  # its old picture goes, as --no-heatmaps does
    assert not (ours / f"{stem}.png").exists() and (ours / f"{stem}.npy").is_file()
    a3.save(ours)
    with pytest.raises(OutputError, match="target 3.*name='.*target5'"):
        a5.save(ours)
    assert a5.save(ours, name=f"{stem}.target5")["target"] == 5
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / f"{stem}.png").mkdir()
    with pytest.raises(OutputError, match="a folder"):
        a3.save(tmp_path / "half")
    assert sorted(p.name for p in (tmp_path / "half").iterdir()) == [f"{stem}.png"]
    for bad in ({"directory": None}, {"directory": tmp_path, "name": 5},
                {"directory": tmp_path, "style": "heatmap"}):  # fmt: skip
        with pytest.raises(UsageError):
            a3.save(**bad)


def test_library_and_cli_write_identical_npy(tmp_path):
    out = tmp_path / "cli"
    result = run("explain", DIGITS, DIGIT_PNGS[1], "--out", out, "--steps", "24")
    assert result.exit_code == 0, result.stderr
    a = igcli.Session(DIGITS).attribute(DIGIT_PNGS[1], steps=24)
    a.save(tmp_path / "lib")
    name = DIGIT_PNGS[1].stem + ".npy"
    assert (out / name).read_bytes() == (tmp_path / "lib" / name).read_bytes()


def test_arrays_and_pil_images_are_inputs():
    session = igcli.Session(DIGITS)
    with Image.open(DIGIT_PNGS[2]) as img:
        from_pil = session.attribute(img.copy(), steps=8, target=3)
    from_path = session.attribute(DIGIT_PNGS[2], steps=8, target=3)
    np.testing.assert_allclose(from_pil.attributions, from_path.attributions, rtol=1e-6)
    x = from_path.sample.x
    from_array = session.attribute(x[None], steps=8, target=3, baseline="zero")
    assert from_array.attributions.shape == x.shape


def test_attribute_many_shares_calls_and_matches_one_by_one():
    session = igcli.Session(CANCER)
    rows = session.load(CANCER_CSV)
    together = session.attribute_many(rows[:4])
    calls = session.runner.calls
    alone = [session.attribute(r.x, steps=50) for r in rows[:4]]
    assert session.runner.calls - calls >= 4
    for t, a in zip(together, alone, strict=True):
        np.testing.assert_allclose(t[0].attributions, a.attributions, rtol=1e-5, atol=1e-9)


def test_a_csv_path_needs_attribute_many():
    with pytest.raises(UsageError, match="attribute_many"):
        igcli.Session(CANCER).attribute(CANCER_CSV)


def test_first_float_output_is_explained_not_the_label(tmp_path):
    model = models.save(models.label_then_scores(), tmp_path / "clf.onnx")
    np.save(tmp_path / "x.npy", np.array([[0.5, -1.0, 2.0, 0.1]], dtype=np.float32))
    warnings = []
    session = igcli.Session(model, warn=warnings.append)
    assert session.output_name == "p"
    assert any("'p'" in w and "label" in w for w in warnings)
    a = session.attribute(tmp_path / "x.npy")
    assert a.output == "p" and a.rel_error < 0.01


def test_a_sequence_output_is_a_usage_error(tmp_path):
    model = models.save(models.label_then_scores(zipmap=True), tmp_path / "zm.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 4), dtype=np.float32))
    result = run("explain", model, tmp_path / "x.npy", "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.USAGE
    assert len(result.stderr.strip().splitlines()) == 1 and "float output" in result.stderr
    assert "with --output" in result.stderr  # the way out
    named = run("explain", model, tmp_path / "x.npy", "--output", "maps", "--out", tmp_path)
    assert named.exit_code == ExitCode.USAGE and "not a tensor" in named.stderr


def test_output_may_name_an_intermediate_tensor(tmp_path):
    model = models.save(models.label_then_scores(), tmp_path / "clf.onnx")
    np.save(tmp_path / "x.npy", np.array([[0.5, -1.0, 2.0, 0.1]], dtype=np.float32))
    a = igcli.Session(model, output="z").attribute(tmp_path / "x.npy")
    assert a.output == "z" and a.rel_error < 1e-4
    with pytest.raises(UsageError, match="not a tensor of the graph"):
        igcli.Session(model, output="nope")


def test_saturated_softmax_names_the_logits(tmp_path):
    model = models.save(models.label_then_scores(), tmp_path / "clf.onnx")
    np.save(tmp_path / "x.npy", np.array([[40.0, -40.0, 40.0, 10.0]], dtype=np.float32))
    warnings = []
    igcli.Session(model, warn=warnings.append).attribute(
        tmp_path / "x.npy", baseline=str(tmp_path / "x.npy")
    )
    assert any("saturated softmax" in w and "--output z" in w for w in warnings), warnings


def test_feed_keeps_its_declared_batch_axis(tmp_path):
    model = models.save(models.with_state(), tmp_path / "state.onnx")
    state = np.random.default_rng(0).normal(size=(2, 1, 3)).astype(np.float32)
    np.save(tmp_path / "state.npy", state)
    np.save(tmp_path / "x.npy", np.array([[0.3, -0.2, 0.5, 1.0]], dtype=np.float32))
    session = igcli.Session(model, feeds={"state": tmp_path / "state.npy"})
    assert session.feeds["state"].batch_axis == 1
    a = session.attribute(tmp_path / "x.npy", steps=32)
    assert a.rel_error < 1e-3
    result = run(
        "explain", model, tmp_path / "x.npy", "--feed", f"state={tmp_path / 'state.npy'}",
        "--out", tmp_path / "o", "--json", "--gradients", "fd",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr


def test_feeding_the_attributed_input_is_refused(tmp_path):
    model = models.save(models.two_inputs(), tmp_path / "two.onnx")
    np.save(tmp_path / "s.npy", np.ones((1, 3), dtype=np.float32))
    with pytest.raises(UsageError, match="attributed input"):
        igcli.Session(model, feeds={"x": tmp_path / "s.npy", "s": tmp_path / "s.npy"})


def test_finite_differences_converge_on_unscaled_features(tmp_path):
    """Each feature is stepped on its own scale: 0.01 beside 1000 still converges."""
    model = models.save(models.unscaled_logistic(), tmp_path / "lr.onnx")
    np.save(tmp_path / "x.npy", np.array([[0.02, 1.3, 1500.0]], dtype=np.float32))
    fd = igcli.Session(model, gradients="fd").attribute(tmp_path / "x.npy", steps=64)
    graph = igcli.Session(model).attribute(tmp_path / "x.npy", steps=64)
    assert fd.rel_error < 1e-3, fd.rel_error
    np.testing.assert_allclose(fd.attributions, graph.attributions, rtol=2e-2, atol=1e-6)


def test_a_piecewise_constant_model_is_called_out(tmp_path):
    model = models.save(models.staircase(), tmp_path / "stairs.onnx")
    np.save(tmp_path / "x.npy", np.array([[0.9, 0.5, 0.7]], dtype=np.float32))
    for gradients in ("auto", "fd"):
        warnings = []
        igcli.Session(model, gradients=gradients, warn=warnings.append).attribute(
            tmp_path / "x.npy", steps=8
        )
        assert any("piecewise constant" in w for w in warnings), (gradients, warnings)


def test_a_quantized_model_is_called_out_as_such(tmp_path):
    """A QDQ model is a step function of its input: igcli says so, and points at its float
    twin, --dequantize (it said 'a tree ensemble, rounding or a step function')."""
    model = models.save(models.quantized_sum(), tmp_path / "q.onnx")
    np.save(tmp_path / "x.npy", np.array([[0.93, 0.52, 0.71]], dtype=np.float32))
    warnings = []
    igcli.Session(model, warn=warnings.append).attribute(tmp_path / "x.npy", steps=8)
    said = [w for w in warnings if "piecewise constant" in w]
    assert said and "quantized: --dequantize explains its float twin" in said[0], warnings
    assert not any("raise --steps" in w for w in warnings)  # (it said that too)
    result = run("explain", model, tmp_path / "x.npy", "--steps", "8", "--out", tmp_path / "o")
    assert "raise --steps" not in result.stderr and "will not help" in result.stderr
    # its float twin is the plain sum: each value is its own attribution
    twin = igcli.Session(model, dequantize=True, warn=warnings.append)
    np.testing.assert_allclose(twin.attribute(tmp_path / "x.npy", steps=8).attributions,
                               [0.93, 0.52, 0.71], rtol=1e-5)  # fmt: skip


def test_a_dynamically_quantized_model_is_called_out_too(tmp_path):
    """DynamicQuantizeLinear scales by the whole batch, and finite differences see its steps
    as a gradient: the completeness miss was blamed on too few steps."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = rng.integers(-60, 60, (6, 3)).astype(np.int8)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
        helper.make_node("MatMulInteger", ["q", "w", "z"], ["i"]),
        helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor("w", TensorProto.INT8, [6, 3], w.ravel().tolist())],
    )  # fmt: skip
    model = models.save(models._model(nodes, graph.input, graph.output, graph.initializer, 13),
                        tmp_path / "dq.onnx")  # fmt: skip
    warnings = []
    session = igcli.Session(model, warn=warnings.append)
    session.attribute(rng.normal(size=(1, 6)).astype(np.float32), steps=16)
    assert not any("raise --steps" in w for w in warnings), warnings
    assert any("model is quantized" in w or "it is quantized" in w for w in warnings), warnings
    rows = [w for w in warnings if "change each other's" in w]
    assert not rows or "quantized over the whole batch" in rows[0]


def test_a_wrong_gradient_graph_fails_its_self_check(tmp_path, monkeypatch):
    """A rule with a flipped sign must not ship: auto falls back, graph stops with exit 7."""
    from igcli.autodiff import rules_math
    from igcli.autodiff.registry import RULES

    real = RULES["Tanh"]

    def flipped(g):
        return [g.op("Neg", grad) if grad else grad for grad in real(g)]

    monkeypatch.setitem(RULES, "Tanh", flipped)
    assert rules_math.Tanh is real
    model = models.save(models.tanh_linear(), tmp_path / "tl.onnx")
    np.save(tmp_path / "x.npy", np.array([[0.3, -0.2, 0.5, 1.0]], dtype=np.float32))
    warnings = []
    session = igcli.Session(model, warn=warnings.append)
    a = session.attribute(tmp_path / "x.npy", steps=32)
    assert a.gradient_source == "fd" and a.rel_error < 1e-3
    assert any("self-check" in w for w in warnings)
    strict = run("explain", model, tmp_path / "x.npy", "--gradients", "graph", "--out", tmp_path)
    assert strict.exit_code == ExitCode.GRADIENTS and "self-check" in strict.stderr
    check = run("gradcheck", model, tmp_path / "x.npy", "--json")
    assert check.exit_code == ExitCode.GRADIENTS
    assert json.loads(check.stdout)["verdict"] == "mismatch"


@pytest.fixture
def check_values(monkeypatch):
    """What each self-check computed its finite differences with (its `values`), in order."""
    from igcli import session as session_module

    seen = []
    real = session_module.check_directions

    def spy(graph, x, **kw):
        seen.append(kw["values"])
        return real(graph, x, **kw)

    monkeypatch.setattr(session_module, "check_directions", spy)
    return seen


def test_self_check_differences_come_from_the_plain_model(check_values):
    """The self-check's forward rows run through the model itself (cheaper than gradient
    rows, and they hold the graph to the model it came from), in a session not kept after."""
    from igcli.model import ModelRunner

    session = igcli.Session(DIGITS, cache=False)
    a = session.attribute(DIGIT_PNGS[0], steps=8)
    assert a.gradient_source == "graph" and a.extra["gradient_check"]["verdict"] == "ok"
    (values,) = check_values
    assert isinstance(values.runner, ModelRunner) and values.runner.target_input is None
    assert values.runner.calls >= 2 and values.runner is not session.runner


def test_self_check_keeps_to_the_graph_when_weights_are_large_for_the_budget(check_values):
    """A second copy of the weights must not take a tight memory budget: then the graph
    computes the differences itself."""
    session = igcli.Session(DIGITS, cache=False, memory_limit=100_000)  # weights: 37 kB
    a = session.attribute(DIGIT_PNGS[0], steps=8)
    assert check_values == [None] and a.extra["gradient_check"]["verdict"] == "ok"


def test_a_shared_baseline_is_evaluated_once(monkeypatch):
    from igcli.model import ModelRunner

    session = igcli.Session(DIGITS)
    samples = [session.load(p)[0] for p in DIGIT_PNGS[:3]]
    rows = []
    real = ModelRunner.run

    def counting(self, points, context=None):
        rows.append(len(points))
        return real(self, points, context)

    monkeypatch.setattr(ModelRunner, "run", counting)
    together = session.attribute_many(samples, settings=igcli.AttributionSettings(steps=8))
    assert 4 in rows and 6 not in rows  # three inputs and their one black baseline
    monkeypatch.setattr(ModelRunner, "run", real)
    for path, [t] in zip(DIGIT_PNGS[:3], together, strict=True):
        alone = session.attribute(path, steps=8, target=t.target)
        assert t.f_baseline == pytest.approx(alone.f_baseline, rel=1e-6)
        assert t.f_input == pytest.approx(alone.f_input, rel=1e-6)


def test_records_say_which_self_check_ran(tmp_path):
    result = run("explain", CANCER, CANCER_CSV, "--out", tmp_path, "--json", "--steps", "8")
    record = json.loads(result.stdout.splitlines()[0])
    assert record["gradient_check"]["verdict"] == "ok"
    assert record["gradient_check"]["error"] < 1e-2


def test_adaptive_steps_from_the_command_line(tmp_path):
    result = run(
        "explain", DIGITS, *DIGIT_PNGS[:3], "--steps", "auto", "--tolerance", "0.002",
        "--out", tmp_path, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    for line in result.stdout.splitlines():
        r = json.loads(line)
        assert r["steps"] == "auto" and r["converged"] and r["rel_error"] <= 0.002
        assert 3 <= r["steps_used"] <= 1024 and r["method"] == "adaptive_simpson"
        assert 0 < r["feature_error"] < 0.2  # (the digits CNN's: a few percent, see docs)
    fixed = run("explain", DIGITS, DIGIT_PNGS[0], "--steps", "8", "--out", tmp_path, "--json")
    assert "feature_error" not in json.loads(fixed.stdout.splitlines()[0])
    shown = run("explain", DIGITS, DIGIT_PNGS[0], "--steps", "auto", "--out", tmp_path / "t")
    assert "feature err." in shown.stdout + shown.stderr
    wrong = run("explain", DIGITS, DIGIT_PNGS[0], "--steps", "auto", "--method", "riemann_left")
    assert wrong.exit_code == ExitCode.USAGE and "--method" in wrong.stderr
    bad = run("explain", DIGITS, DIGIT_PNGS[0], "--steps", "many", "--out", tmp_path)
    assert bad.exit_code == ExitCode.USAGE


def test_adaptive_steps_warn_when_capped(tmp_path):
    warnings = []
    session = igcli.Session(DIGITS, warn=warnings.append)
    a = session.attribute_many(
        session.load(DIGIT_PNGS[0]),
        settings=igcli.AttributionSettings(steps="auto", tolerance=1e-12, max_steps=5),
    )[0][0]
    assert a.extra["converged"] is False and a.extra["steps_used"] <= 5
    assert any("--max-steps" in w and DIGIT_PNGS[0].name in w for w in warnings)


def test_bad_api_arguments_are_usage_errors_not_raw_exceptions(tmp_path):
    """A hostile sweep met numpy's 'truth value of an array is ambiguous', a TypeError on a
    str target, an AttributeError on None samples, and steps=10**7 running for minutes."""
    from igcli.errors import UsageError

    session = igcli.Session(DIGITS, cache=False)
    png = DIGIT_PNGS[0]
    bad = [
        lambda: session.attribute(png, steps=10**7),
        lambda: session.attribute(png, steps="auto", max_steps=10**6),
        lambda: session.attribute(png, baseline=np.zeros((28, 28))),
        lambda: session.attribute(png, target="seven"),
        lambda: session.attribute_many([None]),
        lambda: igcli.Session(None),
        # a second library sweep: each was a bare exception, a silent reinterpretation, or
        # a wrong answer (tolerance 0 stopped at once; fd_step inf gave zeros; std inf too)
        lambda: session.attribute(png, steps="auto", tolerance=0),
        lambda: session.attribute(png, steps="auto", tolerance="0.1"),
        lambda: session.attribute(png, path=5),
        lambda: session.attribute(png, baseline="uniform", seed="x"),
        lambda: session.attribute(png, baseline=""),
        lambda: session.attribute([[1, 2], [3]]),
        lambda: session.attribute(Image.new("LAB", (28, 28))),
        lambda: session.attribute_many(None),
        lambda: session.attribute_many(session.load(png), []),
        lambda: session.attribute_many(session.load(png), [3, 3]),
        lambda: igcli.Session(DIGITS, threads=0),
        lambda: igcli.Session(DIGITS, threads=2.5),
        lambda: igcli.Session(DIGITS, batch_size=-3),
        lambda: igcli.Session(DIGITS, memory_limit=-1),
        lambda: igcli.Session(DIGITS, fd_step=float("inf")),
        lambda: igcli.Session(DIGITS, std=[float("inf")]),
        lambda: igcli.Session(DIGITS, mean=["abc"]),
        lambda: igcli.Session(DIGITS, warn=5),
        lambda: igcli.Session(DIGITS, softmax="no"),  # truthy: a softmax was added
    ]
    for call in bad:
        with pytest.raises(UsageError):
            call()
    assert session.attribute(png, steps=8, target=np.int64(3)).target == 3


def test_labels_may_be_a_file_or_a_list_never_the_characters_of_a_name(tmp_path, monkeypatch):
    """labels="labels.txt" took its ten characters as the ten class names, silently."""
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n\n")
    monkeypatch.chdir(tmp_path)
    for given in ("labels.txt", tmp_path / "labels.txt", names, tuple(names)):
        assert igcli.Session(DIGITS, labels=given).labels == names
    with pytest.raises(UsageError, match="labels must be a labels file"):
        igcli.Session(DIGITS, labels={"a": 1})
    with pytest.raises(UsageError, match="missing.txt"):
        igcli.Session(DIGITS, labels="missing.txt")


def test_library_mistakes_that_reached_numpy_or_pickle_are_usage_errors(tmp_path):
    """A sample of another Session met np.stack's 'same shape', noise=10**9 and a huge
    max_sigma allocated terabytes (MemoryError), image(style="zzz") an AttributeError,
    vmax=0 a plain ValueError, pickling a Session a TypeError about a SimpleQueue."""
    import pickle

    from igcli.visualize import HeatmapStyle

    digits, rows = igcli.Session(DIGITS), igcli.Session(CANCER)
    sample = digits.load(DIGIT_PNGS[0])[0]
    with pytest.raises(UsageError, match=r"sample digit_\S+ has shape \[1, 28, 28\]; this mo"):
        rows.attribute(sample)
    with pytest.raises(UsageError, match="another Session"):
        rows.attribute_many([sample])
    with pytest.raises(UsageError, match="1 to 100000"):
        digits.attribute(sample, noise=10**9)
    with pytest.raises(UsageError, match="1 to 100000"):
        digits.attribute(sample, path="shapley", samples=10**9)
    blurred = digits.attribute(sample, path="blur", max_sigma=1e9, steps=4)
    assert np.isfinite(blurred.attributions).all()
    a = digits.attribute(sample, steps=4)
    for style, vmax in (("zzz", None), (HeatmapStyle(overlay="x"), None), (None, 0),
                        (None, float("nan")), (None, True)):  # fmt: skip
        with pytest.raises(UsageError) as err:
            a.image(style=style, vmax=vmax)
        assert "\n" not in str(err.value)
    assert a.image(vmax=2.5).size[0] > 28
    with pytest.raises(UsageError, match="a Session cannot be pickled; pass the model path"):
        pickle.dumps(digits)
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--path", "blur", "--blur-sigma", "1e9",
                 "--steps", "4", "--out", tmp_path / "o")  # fmt: skip
    assert result.exit_code == 0 and "memory" not in result.stderr, result.stderr


def test_pil_images_get_what_files_get(tmp_path):
    """16-bit grey PIL images were clipped by convert('L'); 32-bit and empty ones passed."""
    from PIL import Image

    from igcli.errors import IgcliError

    session = igcli.Session(DIGITS, cache=False)
    from_file = session.attribute(DIGIT_PNGS[0], steps=8)
    grey = np.asarray(Image.open(DIGIT_PNGS[0]).convert("L")).astype(np.uint16) * 257
    from_pil = session.attribute(Image.fromarray(grey), steps=8)
    assert from_pil.target == from_file.target
    assert from_pil.f_input == pytest.approx(from_file.f_input, rel=1e-5)
    for image in (Image.fromarray(grey.astype(np.float32) / 65535), Image.new("L", (0, 0))):
        with pytest.raises(IgcliError):
            session.attribute(image, steps=8)


def test_an_unresolved_path_integral_is_said_per_attribute_call_once_per_batch():
    """Each attribute() call says its own miss (a notebook's second one went unsaid); a
    batch says it once."""
    warnings = []
    session = igcli.Session(DIGITS, cache=False, warn=warnings.append)
    for png in DIGIT_PNGS[:2]:
        session.attribute(png, steps=1)
    assert len([w for w in warnings if "path integral is not resolved" in w]) == 2
    warnings.clear()
    batch = igcli.Session(DIGITS, cache=False, warn=warnings.append)
    samples = [s for png in DIGIT_PNGS[:3] for s in batch.load(png)]
    batch.attribute_many(samples, settings=igcli.AttributionSettings(steps=1))
    assert len([w for w in warnings if "path integral is not resolved" in w]) == 1
    assert not any("jumps inside the path" in w for w in warnings)  # (no threshold here)
    warnings.clear()
    session.attribute(DIGIT_PNGS[0], steps=32)
    assert not warnings


def test_a_threshold_on_the_input_is_named_when_the_path_integral_misses(tmp_path):
    """masked_fill(x > 0.5): F jumps where the mask flips inside the path, which no gradient
    sees, and 'raise --steps' was all a miss of 458% was told. A threshold on the shape
    (integers) is no such jump."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Shape", ["x"], ["dims"]),  # (first: it must not be the one named)
        helper.make_node("Equal", ["dims", "dims"], ["same"], name="shape_check"),
        helper.make_node("Greater", ["x", "half"], ["mask"], name="threshold"),
        helper.make_node("Where", ["mask", "zero", "x"], ["kept"]),
        helper.make_node("ReduceSum", ["kept"], ["y"], keepdims=0),
    ]
    inits = [numpy_helper.from_array(np.array(v, np.float32), k)
             for k, v in (("half", 0.5), ("zero", 0.0))]  # fmt: skip
    graph = helper.make_graph(
        nodes, "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])], inits,
    )  # fmt: skip
    path = tmp_path / "masked.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    warnings = []
    session = igcli.Session(path, cache=False, warn=warnings.append)
    session.attribute(np.array([0.2, 0.9, 0.7, 0.4], np.float32), baseline="zero", steps=16)
    said = [w for w in warnings if "path integral is not resolved" in w]
    assert len(said) == 1 and "node 'threshold' compares values computed from the input" in said[0]
    # a staircase (Round) beside a smooth part: told only 'raise --steps', naming no node
    stairs = helper.make_graph(
        [helper.make_node("Mul", ["x", "four"], ["x4"]),
         helper.make_node("Round", ["x4"], ["r"], name="stairs"),
         helper.make_node("Add", ["r", "x"], ["s"]),
         helper.make_node("ReduceSum", ["s"], ["y"], keepdims=0)], "stairs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(np.array(4.0, np.float32), "four")],
    )  # fmt: skip
    path = tmp_path / "stairs.onnx"
    onnx.save(helper.make_model(stairs, opset_imports=[helper.make_opsetid("", 13)]), path)
    warnings.clear()
    session = igcli.Session(path, cache=False, warn=warnings.append)
    session.attribute(np.array([0.2, 0.9, 0.7, 0.4], np.float32), baseline="zero", steps=16)
    said = [w for w in warnings if "path integral is not resolved" in w]
    assert len(said) == 1 and "node 'stairs' rounds values computed from the input" in said[0]


def test_finite_differences_take_patches_of_a_large_image_tensor_too(tmp_path):
    """A 3x64x64 .npy for an image model is differenced in 4x4 patches as a picture is:
    per feature it took 24,576 model rows per path point (minutes on a small net)."""
    model = models.save(models.image_model(channels=3, size=64), tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.uniform(0, 1, (3, 64, 64)).astype(np.float32))
    session = igcli.Session(model, gradients="fd")
    a = session.attribute(tmp_path / "x.npy", steps=8)
    assert a.fd_groups == "4x4" and session.runner.rows < 8 * 2 * 16 * 16 * 2
    small = models.save(models.image_model(channels=3, size=8), tmp_path / "s.onnx")
    np.save(tmp_path / "s.npy", np.zeros((3, 8, 8), np.float32))
    assert igcli.Session(small, gradients="fd").attribute(tmp_path / "s.npy").fd_groups == "1"


def test_the_library_takes_what_a_notebook_passes_and_refuses_the_rest_in_one_line(tmp_path):
    """Found by a hostile sweep: generators, numpy integers, a lone sample and miscounted
    targets raised raw TypeError/IndexError or were refused; warnings were dropped unless
    `warn` was given; a URL given to save() wrote a local folder named 's3:'."""
    session = igcli.Session(CANCER)
    samples = session.load(CANCER_CSV)[:3]
    settings = igcli.AttributionSettings(steps=np.int64(8))
    assert len(session.attribute_many((s for s in samples), settings=settings)) == 3
    assert session.attribute_many(iter([]), settings=settings) == []
    assert len(session.attribute_many(samples[0], settings=settings)) == 1
    for bad in (
        dict(targets_per_sample=[[1]]),
        dict(targets="a"),
        dict(settings={"steps": 4}),
    ):
        with pytest.raises(UsageError):
            session.attribute_many(samples, **({"settings": settings} | bad))
    one = session.attribute_many(samples, targets=np.int64(1), settings=settings)
    assert [a[0].target for a in one] == [1, 1, 1]
    with pytest.warns(igcli.IgcliWarning, match="saturates within a sliver"):  # (1e30: flat)
        session.attribute(np.full(30, 1e30, np.float32), steps=4)
    a = one[0][0]
    assert len(repr(a)) < 400 and "target 1" in repr(a)
    with pytest.raises(UsageError, match="local folder"):
        a.save("s3://bucket/run")
    assert not (tmp_path / "s3:").exists()
    assert a.save(tmp_path, name="sub/x")["name"] == "sub/x"


def _gru_model(path, sequence_first: bool, batch=("N", "N")):
    """A GRU over 6 steps of 3 features and a linear head: the input [6, N, 3] (sequence
    first, as PyTorch's RNNs are by default) or [N, 6, 3] with a Transpose in front."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    hidden = 4
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, 3 * hidden, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(
            rng.standard_normal((1, 3 * hidden, hidden)).astype(np.float32), "r"
        ),
        numpy_helper.from_array(rng.standard_normal((1, 6 * hidden)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((hidden, 2)).astype(np.float32), "head"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("GRU", ["seq", "w", "r", "b"], ["", "h"], hidden_size=hidden,
                         linear_before_reset=1),
        helper.make_node("Squeeze", ["h", "axis0"], ["h2"]),
        helper.make_node("MatMul", ["h2", "head"], ["y"]),
    ]  # fmt: skip
    if sequence_first:
        x = helper.make_tensor_value_info("seq", TensorProto.FLOAT, [6, batch[0], 3])
    else:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 3])
        nodes.insert(0, helper.make_node("Transpose", ["x"], ["seq"], perm=[1, 0, 2]))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch[1], 2])
    graph = helper.make_graph(nodes, "gru", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    return path


def test_a_sequence_first_input_takes_its_rows_on_the_batch_axis(tmp_path):
    """[T, N, F]: a sample is [T, F], and its attributions equal those of the same model
    taking [N, T, F] (before, its T steps were read as T rows of one step each)."""
    sample = np.random.default_rng(4).standard_normal((6, 3)).astype(np.float32)
    first = igcli.Session(_gru_model(tmp_path / "seq_first.onnx", True), cache=False)
    batch = igcli.Session(_gru_model(tmp_path / "batch_first.onnx", False), cache=False)
    a = first.attribute(sample, target=1, steps=32, baseline="zero")
    b = batch.attribute(sample, target=1, steps=32, baseline="zero")
    assert a.gradient_source == "graph" and a.rel_error < 1e-4
    np.testing.assert_allclose(a.attributions, b.attributions, rtol=1e-5, atol=1e-7)
    assert a.f_input == pytest.approx(b.f_input, rel=1e-6)


@pytest.mark.parametrize(
    "shape, dtype, out, axis",
    [([6, "N", 3], np.float32, ["N", 2], 1), ([6, "N", 3, 2], np.float32, ["N"], 1),
     ([6, "S", 3], np.float32, [6, 2], None),  # a dummy batch of 6, a dynamic sequence
     ([6, "S", 3], np.float32, [6, "S", 2], None),
     ([6, None, 3], np.float32, [None, 2], None),  # an open dim with no name: not told
     ([1, "N", 3], np.float32, ["N", 2], None),  # a fixed batch of 1
     (["N", 6, 3], np.float32, ["N", 2], None), ([6, "N"], np.float32, ["N"], None),  # rank 2
     ([6, "N", 3], np.int64, ["N", 2], None),  # token ids
     ([6, "N", "F"], np.float32, ["N", 2], None), ([6, 3, "W"], np.float32, ["W"], None),
     ([6, 1, 3], np.float32, [1, 2], 1),  # exported at batch 1 (torch.export fixes it)
     ([6, 1, 3], np.float32, [6, 2], None), ([6, 1, 3], np.float32, [6, 1, 2], None)],
)  # fmt: skip
def test_which_inputs_count_as_sequence_first(shape, dtype, out, axis):
    from igcli.model import TensorSpec, sequence_first_axis

    outputs = [TensorSpec("y", out, np.dtype(np.float32))]
    assert sequence_first_axis(TensorSpec("x", shape, np.dtype(dtype)), outputs) == axis


def _gru_steps_model(path, x_shape, y_shape, layout=0, through=None, transpose=False):
    """A GRU over 6 steps of 3 features whose output is every step's hidden state: X read
    as the input itself, or through `through` (Identity, Cast) or a Transpose from [N, T, F];
    Y [T, N, 4] (layout 0) or [N, T, 4] (layout 1, or the Transpose's twin)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, 12, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((1, 12, 4)).astype(np.float32), "r"),
        numpy_helper.from_array(np.array([1 + layout], np.int64), "dir_axis"),
    ]
    nodes, x = [], "x"
    if through == "Cast":
        nodes.append(helper.make_node("Cast", [x], ["xc"], to=TensorProto.FLOAT))
        x = "xc"
    elif through == "Identity":
        nodes.append(helper.make_node("Identity", [x], ["xc"]))
        x = "xc"
    if transpose:
        nodes.append(helper.make_node("Transpose", [x], ["xt"], perm=[1, 0, 2]))
        x = "xt"
    nodes += [
        helper.make_node("GRU", [x, "w", "r"], ["Y"], hidden_size=4, layout=layout),
        helper.make_node("Squeeze", ["Y", "dir_axis"], ["ys"]),
    ]
    out = "ys"
    if transpose:
        nodes.append(helper.make_node("Transpose", ["ys"], ["y"], perm=[1, 0, 2]))
        out = "y"
    graph = helper.make_graph(
        nodes, "gru_steps", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, y_shape)], inits,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    return path


@pytest.mark.parametrize(
    "x_shape, y_shape, layout, through, transpose, axis",
    [([6, "N", 3], [6, "N", 4], 0, None, False, 1),  # looks like a dummy batch of 6
     (["T", "N", 3], ["T", "N", 4], 0, None, False, 1),  # T open too
     ([6, "N", 3], [6, "N", 4], 0, "Cast", False, 1),
     ([6, "N", 3], [6, "N", 4], 0, "Identity", False, 1),
     (["N", 6, 3], ["N", 6, 4], 1, None, False, None),  # layout 1: batch first
     (["N", 6, 3], ["N", 6, 4], 0, None, True, None)],  # batch first, moved by a Transpose
)  # fmt: skip
def test_a_recurrent_op_says_which_axis_is_the_batch(
    tmp_path, x_shape, y_shape, layout, through, transpose, axis
):
    import onnx

    from igcli.model import require_inputs, sequence_axis

    path = _gru_steps_model(tmp_path / "m.onnx", x_shape, y_shape, layout, through, transpose)
    model = onnx.load(path)
    (spec,) = require_inputs(model, path)
    assert sequence_axis(model, spec) == axis


def test_a_sequence_first_model_with_an_output_per_step(tmp_path):
    """[6, N, 3] -> [6, N, 4]: its dims alone read as a dummy batch of 6 over a dynamic
    sequence, so the 6 steps went in as 6 one-step sequences, a silently wrong F. The GRU
    reading the input says [T, N, F]: F and the attributions are now those of its batch
    first twin, and of ONNX Runtime's own run of the model."""
    import onnxruntime as ort

    sample = np.random.default_rng(8).standard_normal((6, 3)).astype(np.float32)
    first = _gru_steps_model(tmp_path / "first.onnx", [6, "N", 3], [6, "N", 4])
    twin = _gru_steps_model(tmp_path / "twin.onnx", ["N", 6, 3], ["N", 6, 4], transpose=True)
    y = ort.InferenceSession(str(first)).run(None, {"x": sample[:, None]})[0][:, 0]  # [6, 4]
    a = igcli.Session(first, cache=False).attribute(sample, steps=32, baseline="zero")
    b = igcli.Session(twin, cache=False).attribute(sample, steps=32, baseline="zero")
    assert a.target == int(np.argmax(y)) and a.f_input == pytest.approx(float(y.max()), rel=1e-6)
    assert a.gradient_source == "graph" and a.rel_error < 1e-4
    np.testing.assert_allclose(a.attributions, b.attributions, rtol=1e-5, atol=1e-7)
    step = a.target // 4
    assert not a.attributions.reshape(6, 3)[step + 1 :].any()  # later steps cannot matter


def _mix_model(path, x_shape, y_shape, mixes: list[int], pool: int | None = None,
               perm: list[int] | None = None):  # fmt: skip
    """tanh(x @ W + the mean of x @ W over each axis in `mixes`), then the mean over `pool`
    or a Transpose by `perm`: sequences that mix along an axis, or not at all."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(12)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "w")]
    nodes, h = [helper.make_node("MatMul", ["x", "w"], ["h0"])], "h0"
    for k, axis in enumerate(mixes):
        inits.append(numpy_helper.from_array(np.array([axis], np.int64), f"ax{k}"))
        nodes += [helper.make_node("ReduceMean", [h, f"ax{k}"], [f"m{k}"], keepdims=1),
                  helper.make_node("Add", [h, f"m{k}"], [f"h{k + 1}"])]  # fmt: skip
        h = f"h{k + 1}"
    nodes.append(helper.make_node("Tanh", [h], ["t"]))
    if pool is not None:
        inits.append(numpy_helper.from_array(np.array([pool], np.int64), "pool"))
        nodes.append(helper.make_node("ReduceMean", ["t", "pool"], ["y"], keepdims=0))
    elif perm is not None:
        nodes.append(helper.make_node("Transpose", ["t"], ["y"], perm=perm))
    else:
        nodes.append(helper.make_node("Identity", ["t"], ["y"]))
    return models.save(models.xy_model(nodes, x_shape, y_shape, inits, opset=18), path)


def test_dims_that_leave_the_batch_axis_open_are_settled_by_running_the_model(tmp_path):
    """[6, S, 3] -> [6, S, 4] with no recurrent op to tell: a model whose axis-0 positions
    mix (a sequence-first encoder with an output per step) takes its rows on axis 1, and F
    is its own output for the sample as [6, 1, 3]; one whose axis-1 positions mix keeps
    axis 0 as a (dummy) batch. The verdict is cached with the model's hash."""
    import onnxruntime as ort

    from igcli.cache import cache_dir

    sample = np.random.default_rng(10).standard_normal((6, 3)).astype(np.float32)
    first = _mix_model(tmp_path / "first.onnx", [6, "S", 3], [6, "S", 4], [0])
    y = ort.InferenceSession(str(first)).run(None, {"x": sample[:, None]})[0][:, 0]
    session = igcli.Session(first)
    assert session.prep.batch_axis == 1
    a = session.attribute(sample, steps=32, baseline="zero")
    assert a.f_input == pytest.approx(float(y.max()), rel=1e-6) and a.target == int(y.argmax())
    assert a.gradient_source == "graph" and a.rel_error < 1e-4
    assert list(cache_dir().glob("fact-*.json"))
    assert igcli.Session(first).prep.batch_axis == 1  # from the cache this time

    dummy = _mix_model(tmp_path / "dummy.onnx", [6, "S", 3], [6, "S", 4], [1])
    assert igcli.Session(dummy, cache=False).prep.batch_axis == 0
    seq = np.random.default_rng(11).standard_normal((5, 3)).astype(np.float32)  # [S, F]
    b = igcli.Session(dummy, cache=False).attribute(seq, steps=16, baseline="zero")
    z = ort.InferenceSession(str(dummy)).run(None, {"x": np.repeat(seq[None], 6, axis=0)})[0]
    assert b.f_input == pytest.approx(float(z[0].max()), rel=1e-6)


def test_the_cli_explains_a_sequence_first_model_and_inspect_says_so(tmp_path):
    from tests.test_cli import run

    model = _gru_model(tmp_path / "seq_first.onnx", True)
    np.save(tmp_path / "s.npy", np.random.default_rng(5).standard_normal((6, 3)).astype("f4"))
    result = run("explain", model, tmp_path / "s.npy", "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["gradient_source"] == "graph" and record["rel_error"] < 1e-3
    assert np.load(tmp_path / "o" / "s.npy").shape[-2:] == (6, 3)
    info = json.loads(run("inspect", model, "--json").stdout)
    assert "sequence first" in info["preprocessing"] and "[6, 3]" in info["preprocessing"]
    assert info["gradient_graph"] is True


def test_at_on_a_sequence_first_model_is_refused_in_one_line(tmp_path):
    """--at cuts the graph at a tensor whose rows igcli would read on axis 0; on a sequence-
    first input they are not there (it failed inside ONNX Runtime). Refused, exit 2, and
    inspect lists no --at tensors for it."""
    from tests.test_cli import run

    model = _gru_model(tmp_path / "seq_first.onnx", True)
    np.save(tmp_path / "s.npy", np.random.default_rng(5).standard_normal((6, 3)).astype("f4"))
    result = run("explain", model, tmp_path / "s.npy", "--at", "h2", "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.USAGE
    assert "--at on a sequence-first input" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert json.loads(run("inspect", model, "--json").stdout)["cut_candidates"] == []


def test_a_sequence_first_model_exported_at_batch_1(tmp_path):
    """[6, 1, 3] -> [1, 2] (torch.export fixes a batch of 1): read as sequence first too."""
    sample = np.random.default_rng(7).standard_normal((6, 3)).astype(np.float32)
    fixed = igcli.Session(_gru_model(tmp_path / "fixed.onnx", True, (1, 1)), cache=False)
    batch = igcli.Session(_gru_model(tmp_path / "batch_first.onnx", False), cache=False)
    a = fixed.attribute(sample, target=1, steps=32, baseline="zero")
    b = batch.attribute(sample, target=1, steps=32, baseline="zero")
    np.testing.assert_allclose(a.attributions, b.attributions, rtol=1e-5, atol=1e-7)


def test_a_sequence_first_sample_may_come_in_the_models_own_layout(tmp_path):
    """[T, 1, F] (the model's layout with a batch of 1) is the same sample as [T, F]; a
    sample that fits neither is refused naming the layout the model declares."""
    session = igcli.Session(_gru_model(tmp_path / "seq_first.onnx", True), cache=False)
    sample = np.random.default_rng(6).standard_normal((6, 3)).astype(np.float32)
    plain = session.attribute(sample, target=0, steps=16, baseline="zero")
    own = session.attribute(sample[:, None], target=0, steps=16, baseline="zero")
    np.testing.assert_array_equal(plain.attributions, own.attributions)
    with pytest.raises(igcli.IgcliError, match=r"does not fit the model input \[6, N, 3\]"):
        session.attribute(sample[:4], target=0, steps=16)


def test_a_whole_sequence_first_batch_is_refused_saying_what_a_sample_is(tmp_path, monkeypatch):
    """A .npy of the fixed [T, N, F] input itself said 'shape [7, 3, 5] does not fit the model
    input [7, 3, 5]': it holds N samples, and the message says which shapes one takes."""
    monkeypatch.setenv("IGCLI_CACHE_DIR", str(tmp_path / "cache"))
    session = igcli.Session(_gru_model(tmp_path / "fixed.onnx", True, (3, 3)), cache=False)
    whole = tmp_path / "whole.npy"
    np.save(whole, np.zeros((6, 3, 3), np.float32))
    with pytest.raises(
        igcli.IgcliError, match=r"holds a batch of 3 on axis 1 .*\[6, 3\] or \[6, 1, 3\]"
    ):
        session.attribute(whole, target=0, steps=16)


@pytest.mark.parametrize("steps", [16, "auto"])
def test_a_nan_gradient_where_f_is_finite_falls_back_to_finite_differences(tmp_path, steps):
    """y = Where(x > 0, Sqrt(x), 0) @ w: F is finite everywhere, but the graph's gradient is
    0 * inf at x < 0 (the branch Where masks), and such an input failed ('gradient contains
    NaN'). With gradients auto it now gets finite differences, with a warning; an input the
    graph handles keeps the graph, and gradients="graph" still refuses. (With adaptive steps
    the call that reads F(x) asks for the gradient at x too, and meets the NaN first: it then
    reads F alone, and the path's calls decide as before: the baseline's infinite slope is
    an end's integrable singularity, which the graph's adaptive steps take.)"""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[1.0, -1.0], [2.0, 0.5], [-1.0, 1.0], [0.5, 2.0]], np.float32)
    nodes = [
        helper.make_node("Greater", ["x", "zero"], ["pos"]),
        helper.make_node("Sqrt", ["x"], ["r"]),
        helper.make_node("Where", ["pos", "r", "zero"], ["m"]),
        helper.make_node("MatMul", ["m", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "wherenan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero"),
         numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    path = tmp_path / "wherenan.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    warnings = []
    session = igcli.Session(path, cache=False, warn=warnings.append)
    good = session.attribute(np.array([0.9, 0.5, 2.0, 1.0], np.float32), target=0, steps=steps)
    mixed = session.attribute(np.array([0.9, -0.5, 2.0, -1.0], np.float32), target=0, steps=steps)
    assert good.gradient_source == "graph"
    assert mixed.gradient_source == "fd"
    assert any("finite differences instead" in w for w in warnings)
    fd = igcli.Session(path, cache=False, gradients="fd")
    ref = fd.attribute(np.array([0.9, -0.5, 2.0, -1.0], np.float32), target=0, steps=steps)
    np.testing.assert_allclose(mixed.attributions, ref.attributions)
    strict = igcli.Session(path, cache=False, gradients="graph")
    with pytest.raises(igcli.IgcliError, match="gradient contains NaN"):
        strict.attribute(np.array([0.9, -0.5, 2.0, -1.0], np.float32), target=0, steps=steps)


def test_f_nan_inside_the_path_is_said_so(tmp_path):
    """F = sqrt((x - 1)(x - 2)) is finite at 0 and at 3, NaN between 1 and 2: the error says
    where (it read as if F at the input were NaN)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Sub", ["x", "one"], ["a"]),
        helper.make_node("Sub", ["x", "two"], ["b"]),
        helper.make_node("Mul", ["a", "b"], ["m"]),
        helper.make_node("Sqrt", ["m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "nanpath", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(np.array(1, np.float32), "one"),
         numpy_helper.from_array(np.array(2, np.float32), "two")],
    )  # fmt: skip
    path = tmp_path / "nanpath.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    session = igcli.Session(path, cache=False)
    with pytest.raises(igcli.IgcliError, match="at a point on the path between the baseline"):
        session.attribute(np.array([3.0], np.float32), target=0, steps=16, baseline="zero")


@pytest.mark.parametrize(
    "x_shape, y_shape, mixes, pool, perm, axis",
    [([8, "T", 3], ["T", 8, 4], [1], None, [1, 0, 2], 0),  # CTC-style: time-major output
     (["S", "N", 3], ["S", "N", 4], [0], None, None, 1),  # both open, steps mix on axis 0
     (["S", "N", 3], ["S", "N", 4], [1], None, None, 0),  # both open, batch first
     ([8, "T", 3], [8, "T", 4], [], None, None, 0),  # mixes nothing: as declared
     ([8, "P", 3], [8, 4], [], 1, None, 0),  # a point set pooled over P: no row per sample
     ([6, "N", 3], ["N", 4], [], 0, None, 1)],  # pooled over the steps: sequence first
)  # fmt: skip
def test_which_axis_is_the_batch_when_the_dims_allow_both(
    tmp_path, x_shape, y_shape, mixes, pool, perm, axis
):
    """The dims misled both ways: a CTC-style [8, T, F] -> [T, 8, C] was read sequence first
    (its time taken for the batch), a fully open [S, N, F] batch first. Running the model on
    two samples side by side on axis 1 settles it; a model that mixes neither axis keeps
    the declared batch (axis 0), so its open axis takes samples of any length."""
    import onnx

    from igcli.model import require_inputs, sequence_axis

    path = _mix_model(tmp_path / "m.onnx", x_shape, y_shape, mixes, pool, perm)
    model = onnx.load(path)
    (spec,) = require_inputs(model, path)
    assert (sequence_axis(model, spec) or 0) == axis


def test_a_mask_input_with_the_open_dim_first_says_it_is_the_batch(tmp_path):
    """[10, N, 3] beside a padding mask [N, 10]: the mask has N first, so N is the batch
    (a Transformer encoder with an output per step was read batch first, F wrong)."""
    import onnx
    from onnx import TensorProto, helper

    from igcli.model import require_inputs, sequence_axis

    path = _mix_model(tmp_path / "m.onnx", [10, "N", 3], [10, "N", 4], [0])
    model = onnx.load(path)
    model.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 10]))
    spec = next(s for s in require_inputs(model, path) if s.name == "x")
    assert sequence_axis(model, spec) == 1
    model.graph.input[-1].type.tensor_type.shape.dim[0].dim_value = 10  # [10, 10]: no word
    assert sequence_axis(model, spec) is None


@pytest.mark.parametrize("batch", [1, 8])
def test_a_fixed_batch_sequence_first_model_with_an_output_per_step(tmp_path, batch):
    """GRU [6, B, 3] -> [6, B, 4] with B fixed (exported at 1, or a dummy 8): the output's
    batch is on axis 1 too, and moves with the input's (the call failed in a Reshape)."""
    import onnxruntime as ort

    sample = np.random.default_rng(13).standard_normal((6, 3)).astype(np.float32)
    path = _gru_steps_model(tmp_path / "m.onnx", [6, batch, 3], [6, batch, 4])
    rows = np.repeat(sample[:, None], batch, axis=1)
    y = ort.InferenceSession(str(path)).run(None, {"x": rows})[0][:, 0]  # [6, 4]
    a = igcli.Session(path, cache=False).attribute(sample, steps=32, baseline="zero")
    assert a.target == int(np.argmax(y)) and a.f_input == pytest.approx(float(y.max()), rel=1e-6)
    assert a.gradient_source == "graph" and a.rel_error < 1e-4


@pytest.mark.parametrize("dims", [("N", "T"), (1, 5)])
def test_an_output_with_the_batch_on_a_later_axis_is_read_by_its_rows(tmp_path, dims):
    """CTC-style [N, T, F] -> [T, N, C]: igcli reads an output's rows on axis 0, which was
    the time here (refused, or the wrong rows); the output is now moved, and F is the
    model's own output for the sample. Exported at a fixed batch of 1 ([1, 5, F] -> [5, 1,
    C], torch's nn.Transformer without batch_first), the gradient graph failed in a Reshape
    and finite differences read F at the baseline from the input's second position."""
    import onnxruntime as ort

    sample = np.random.default_rng(14).standard_normal((5, 3)).astype(np.float32)
    n, t = dims
    path = _mix_model(tmp_path / "ctc.onnx", [n, t, 3], [t, n, 4], [1], perm=[1, 0, 2])
    y = ort.InferenceSession(str(path)).run(None, {"x": sample[None]})[0][:, 0]  # [T, C]
    a = igcli.Session(path, cache=False).attribute(sample, steps=32, baseline="zero")
    assert a.target == int(np.argmax(y)) and a.f_input == pytest.approx(float(y.max()), rel=1e-6)
    assert a.gradient_source == "graph" and a.rel_error < 1e-3
    zero = ort.InferenceSession(str(path)).run(None, {"x": 0 * sample[None]})[0][:, 0]
    fd = igcli.Session(path, cache=False, gradients="fd")
    b = fd.attribute(sample, steps=32, baseline="zero", target=a.target)
    assert b.f_baseline == pytest.approx(float(zero.reshape(-1)[a.target]), rel=1e-6, abs=1e-7)
    assert b.rel_error < 1e-2


def test_an_animation_or_a_multi_page_file_says_its_first_frame_is_explained(tmp_path):
    """GIF, PNG and WebP animations and multi-page TIFFs: the first frame, and one line
    saying so; a single frame, or an MPO (a camera JPEG with previews), says nothing."""
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)) for _ in range(3)]
    for name in ("a.gif", "a.png", "a.webp", "a.tif"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
    rgb = [f.convert("RGB") for f in frames]
    rgb[0].save(tmp_path / "mpo.jpg", format="MPO", save_all=True, append_images=rgb[1:])
    assert Image.open(tmp_path / "mpo.jpg").format == "MPO"
    frames[0].save(tmp_path / "one.gif")
    said = []
    session = igcli.Session(DIGITS, warn=said.append)
    for name in ("a.gif", "a.png", "a.webp", "a.tif", "mpo.jpg", "one.gif", "a.gif"):
        (sample,) = session.load(tmp_path / name)
        first = np.asarray(frames[0].convert("L"), np.float64) / 255
        if name not in ("a.webp", "mpo.jpg"):  # (lossy)
            np.testing.assert_allclose(sample.pixels[:, :, 0], first, atol=1e-6)
    notes = [m for m in said if "frames" in m]
    named = sorted(m.split(":")[0].rsplit("/", 1)[-1] for m in notes)
    assert named == ["a.gif", "a.png", "a.tif", "a.webp"]
    # an APNG whose default image is no frame of its animation: Pillow's frame 0 is that
    # image, which viewers of the animation never show; the animation's first is explained
    frames[0].save(tmp_path / "apart.png", save_all=True, append_images=frames[1:],
                   default_image=True)  # fmt: skip
    said.clear()
    (sample,) = session.load(tmp_path / "apart.png")
    second = np.asarray(frames[1].convert("L"), np.float64) / 255
    np.testing.assert_allclose(sample.pixels[:, :, 0], second, atol=1e-6)
    assert any("the animation's first frame is explained" in m for m in said), said


def test_tiff_and_webp_open_as_a_process_first_image(tmp_path):
    """Pillow's plugins beyond PNG, JPEG, BMP and GIF are registered only when a file is
    none of those: a fresh process's first image can be a TIFF or a WebP, and a text file
    named .png after them is still refused in one line."""
    pixels = np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)
    for name in ("a.tif", "a.webp"):
        Image.fromarray(pixels).save(tmp_path / name)
    (tmp_path / "b.png").write_text("not an image")
    script = (
        "import sys, igcli\n"
        f"session = igcli.Session({str(DIGITS)!r})\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        print(session.load(name)[0].pixels.shape)\n"
        "    except igcli.IgcliError as exc:\n"
        "        print(exc)\n"
    )
    for name in ("a.tif", "a.webp"):
        names = [str(tmp_path / n) for n in (name, "b.png")]
        out = subprocess.run(
            [sys.executable, "-c", script, *names], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        assert out[0] == "(28, 28, 1)"
        assert out[1].endswith("not a readable image (not PNG, JPEG, BMP, GIF, TIFF or WebP)")


def test_an_input_equal_to_its_baseline_is_said_to_be(tmp_path):
    """An all-black image with the black baseline gets all-zero attributions and a relative
    error of 0: a blank heatmap that said nothing of why. One line says it."""
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(black)
    said: list[str] = []
    session = igcli.Session(DIGITS, warn=said.append)
    a = session.attribute(black, steps=4)
    assert not np.any(a.attributions)
    assert any("the input equals the baseline (black)" in line for line in said)
    said.clear()
    session.attribute(DIGIT_PNGS[0], steps=4)
    assert not any("equals the baseline" in line for line in said)


def test_an_array_baseline_is_the_same_as_its_npy_file(tmp_path):
    """baseline=array gives what the same numbers saved as a .npy give, named 'array' in the
    record; the caller's array may change afterwards; bad arrays are one usage error."""
    session = igcli.Session(DIGITS)
    x = session.load(DIGIT_PNGS[0])[0].x
    base = np.full_like(x, 0.25)
    np.save(tmp_path / "b.npy", base)
    by_array = session.attribute(DIGIT_PNGS[0], baseline=base)
    base[...] = 0.75  # kept as given: a copy
    by_file = session.attribute(DIGIT_PNGS[0], baseline=tmp_path / "b.npy")
    np.testing.assert_array_equal(by_array.attributions, by_file.attributions)
    assert by_array.f_baseline == by_file.f_baseline
    assert by_array.record()["baseline"] == "array"
    both = session.attribute_many(
        session.load(DIGIT_PNGS[0]) * 2, settings=igcli.AttributionSettings(baseline=base[None])
    )  # (with the batch axis, as a .npy may hold it)
    assert [r[0].baseline_name for r in both] == ["array", "array"]
    for bad, problem in [
        (np.zeros((3, 3), np.float32), "does not fit"),
        (np.full(x.shape, np.nan, np.float32), "NaN"),
        (np.zeros(x.shape, np.int64), "pass floats"),
        ([0.0] * 784, "or a numpy array, not list"),
    ]:
        with pytest.raises(UsageError, match=problem):
            session.attribute(DIGIT_PNGS[0], baseline=bad)


def test_a_token_model_takes_an_array_of_ids_as_its_baseline():
    from igcli.tokens import token_baseline
    from tests.test_tokens import SENTIMENT

    session = igcli.Session(SENTIMENT)
    text = "the plot was superb"
    pad_ids = token_baseline("pad", session.load(text)[0], session.tokens.vocab)
    padded = session.attribute(text, baseline="pad")
    mine = session.attribute(text, baseline=pad_ids.copy())  # the same ids, given as an array
    np.testing.assert_allclose(mine.attributions, padded.attributions, rtol=1e-6, atol=1e-9)
    assert mine.f_baseline == pytest.approx(padded.f_baseline, rel=1e-6)
    assert mine.record()["baseline"] == "array"
    with pytest.raises(UsageError, match="token ids"):
        session.attribute(text, baseline=pad_ids.astype(np.float32))


def test_an_output_that_does_not_depend_on_the_input_is_a_usage_error(tmp_path):
    """Two inputs, one output computed from `a` only (nodes out of file order, as ONNX
    Runtime accepts them): explaining it by `b` said 'F(x) = F(baseline): choose another
    target or --baseline'; the message now says what is wrong. By `a` it is explained."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Relu", ["h"], ["emb"]),  # reads h before the node making it
        helper.make_node("Mul", ["a", "a"], ["h"]),
        helper.make_node("Add", ["emb", "b"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3])
                       for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("emb", "score")],
    )  # fmt: skip
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    a = tmp_path / "a.npy"
    np.save(a, np.ones((1, 3), np.float32))
    with pytest.raises(igcli.IgcliError, match="'emb' does not depend on the values of input 'b'"):
        igcli.Session(path, input="b", output="emb", feeds={"a": a}, cache=False)
    session = igcli.Session(path, input="a", output="emb", feeds={"b": a}, cache=False)
    assert session.output_name == "emb"
    igcli.Session(path, input="b", output="score", feeds={"a": a}, cache=False)


def test_a_model_that_jumps_at_the_baseline_is_not_told_to_raise_steps(tmp_path):
    """LpNormalization is x / |x|, and 0 at 0: from a zero baseline F jumps at once, every
    gradient along the path misses the jump, and completeness fails by 100% at any number of
    steps. It was told 'raise --steps'; the warning now says where F jumps and what to do."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("LpNormalization", ["x"], ["y"], axis=1, p=2)], "lpn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )  # fmt: skip
    path = tmp_path / "lpn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    said = []
    session = igcli.Session(path, cache=False, warn=said.append)
    x = np.array([0.3, -0.2, 0.5, 0.1], np.float32)
    a = session.attribute(x, target=2, baseline="zero", steps=32)
    assert abs(a.rel_error) > 0.5
    assert any("F jumps at the baseline" in m for m in said), said
    assert not any("raise --steps" in m for m in said), said
    assert session.looks_piecewise  # the run's closing line does not advise steps either
    # a second input that jumps too: once the jump was said, it fell through to 'raise --steps'
    again = session.attribute(x[::-1].copy(), target=2, baseline="zero", steps=32)
    assert abs(again.rel_error) > 0.5 and not any("raise --steps" in m for m in said), said
    smooth = igcli.Session(path, cache=False, warn=said.append)
    off = np.array([0.2, 0.1, 0.4, 0.3], np.float32)  # a path that never meets 0
    b = smooth.attribute(x, target=2, baseline=off, steps=32)
    assert abs(b.rel_error) < 1e-3 and not smooth.looks_piecewise


@pytest.mark.parametrize(("tau", "jumps"), [(1e-9, True), (3e-5, False)])
def test_a_steep_rise_at_the_baseline_is_a_jump_only_below_what_steps_resolve(tmp_path, tau, jumps):
    """F = -0.1 (1 - exp(-s / tau)) + 1.1 s along s in [0, 1]: HuBERT's stacked norms at a
    zero baseline move F by 9% of F(x) - F(b) within 1e-9, which no number of steps resolves,
    and were told 'raise --steps' (a move of half the way within 1e-4 was the test). A rise
    of width 3e-5 is for more steps (or --steps auto), and is still told so."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    consts = {"w": np.array([0.25, 0.25], np.float32), "k": np.array(-1 / tau, np.float32),
              "one": np.array(1.0, np.float32), "step": np.array(-0.1, np.float32),
              "slope": np.array(1.1, np.float32), "axes": np.array([1], np.int64)}  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["xw"]),
         helper.make_node("ReduceSum", ["xw", "axes"], ["s"], keepdims=0),
         helper.make_node("Mul", ["s", "k"], ["e0"]), helper.make_node("Exp", ["e0"], ["e"]),
         helper.make_node("Sub", ["one", "e"], ["rise"]),
         helper.make_node("Mul", ["rise", "step"], ["r"]),
         helper.make_node("Mul", ["s", "slope"], ["line"]),
         helper.make_node("Add", ["r", "line"], ["y1"]),
         helper.make_node("Unsqueeze", ["y1", "axes"], ["y"])], "steep",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )  # fmt: skip
    path = tmp_path / "steep.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    said = []
    session = igcli.Session(path, cache=False, warn=said.append)
    a = session.attribute(np.array([2.0, 2.0], np.float32), baseline="zero", steps=16)
    assert abs(a.rel_error) > 0.05
    assert any("F jumps at the baseline" in m for m in said) == jumps, said
    assert any("raise --steps" in m for m in said) != jumps, said
    if not jumps:  # a later input's miss, said too (once per Session, it went unsaid)
        said.clear()
        b = session.attribute(np.array([1.5, 2.5], np.float32), baseline="zero", steps=16)
        assert abs(b.rel_error) > 0.05 and any("raise --steps" in m for m in said), said


def test_a_model_that_jumps_at_a_zero_baseline_at_a_cut_is_told_so(tmp_path):
    """With --at (and so token models, Funnel and ESM: a LayerNorm right after the word
    embeddings), the path runs in the cut tensor's space, and a zero baseline there jumps as
    LpNormalization does at a zero input. The probe looked only at input-space paths, so
    such a model missed completeness by 100% and was told 'raise --steps'."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([1.5, -0.5, 2.0, 1.0], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["h"]),
         helper.make_node("LpNormalization", ["h"], ["y"], axis=1, p=2)], "cut_lpn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w],
    )  # fmt: skip
    path = tmp_path / "cut_lpn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    said = []
    session = igcli.Session(path, at="h", cache=False, warn=said.append)
    x = np.array([0.3, -0.2, 0.5, 0.1], np.float32)
    a = session.attribute(x, target=2, baseline="zero", steps=32)
    assert abs(a.rel_error) > 0.5
    assert any("F jumps at the baseline" in m for m in said), said
    assert not any("raise --steps" in m for m in said), said
    assert session.looks_piecewise
    smooth = igcli.Session(path, at="h", cache=False, warn=said.append)
    off = np.array([0.2, 0.1, 0.4, 0.3], np.float32)  # its image at h never meets 0
    b = smooth.attribute(x, target=2, baseline=off, steps=32)
    assert abs(b.rel_error) < 1e-3 and not smooth.looks_piecewise


def _unbatched_model(path, x_shape, y_shape, mix: bool):
    """x [T, 4] or [4] (no batch axis) -> x @ W, plus the mean over the positions when `mix`
    (what attention does: a position's output depends on the others), tanh; y [T, 3] or [3]
    (ReduceMean over the positions when y has no T)."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(21)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0], np.int64), "ax")]  # fmt: skip
    nodes, h = [helper.make_node("MatMul", ["x", "w"], ["h"])], "h"
    if mix:
        nodes += [helper.make_node("ReduceMean", ["h", "ax"], ["m"], keepdims=1),
                  helper.make_node("Add", ["h", "m"], ["hm"])]  # fmt: skip
        h = "hm"
    if len(y_shape) < len(x_shape):
        nodes.append(helper.make_node("ReduceMean", [h, "ax"], ["p"], keepdims=0))
        h = "p"
    nodes.append(helper.make_node("Tanh", [h], ["y"]))
    return models.save(models.xy_model(nodes, x_shape, y_shape, inits, opset=18), path)


@pytest.mark.parametrize(
    "x_shape, y_shape, mix",
    [([4], [3], False),  # a vector model: [4] 'held a batch of 4', [1, 4] did not fit
     ([6, 4], [3], True),  # a pooled sequence
     ([6, 4], [6, 3], True)],  # positions that mix: one row was explained as a sequence of 1
)  # fmt: skip
def test_a_model_without_a_batch_axis_takes_its_whole_input_as_one_sample(
    tmp_path, x_shape, y_shape, mix
):
    """Exported on one unbatched sample (every dim fixed, no batch axis), a model's first
    axis was read as a batch; it now gets a batch axis of 1, and F is its own output."""
    import onnxruntime as ort

    path = _unbatched_model(tmp_path / "m.onnx", x_shape, y_shape, mix)
    x = np.random.default_rng(22).standard_normal(x_shape).astype(np.float32)
    run = ort.InferenceSession(str(path)).run
    y, y0 = (run(None, {"x": v})[0].reshape(-1) for v in (x, 0 * x))
    session = igcli.Session(path, cache=False)
    for given in (x, x[None]):
        a = session.attribute(given, target=1, steps=32, baseline="zero")
        assert a.attributions.shape == tuple(x_shape)
        assert a.f_input == pytest.approx(float(y[1]), rel=1e-6)
        assert a.f_baseline == pytest.approx(float(y0[1]), abs=1e-7)
        assert a.gradient_source == "graph" and a.rel_error < 1e-4


def test_a_fixed_first_axis_whose_rows_do_not_mix_stays_a_batch(tmp_path):
    """[6, 4] -> [6, 3] row by row: a (dummy) batch of 6, one row a sample, as before."""
    path = _unbatched_model(tmp_path / "m.onnx", [6, 4], [6, 3], mix=False)
    session = igcli.Session(path, cache=False)
    assert session.input_spec.shape == [6, 4]
    a = session.attribute(np.ones(4, np.float32), target=1, steps=16, baseline="zero")
    assert a.attributions.shape == (4,)


@pytest.mark.parametrize("batch", [1, "N"])
def test_a_batch_of_1_squeezed_out_of_the_output_is_put_back(tmp_path, batch):
    """[1, 4] -> [3] (torch's squeeze(0)): the output's 3 values were read as 3 rows, so
    target 2 was 'out of range', the graph failed in a Reshape, and finite differences took
    F at the baseline from the input's own row (completeness 1e6% off, 'F jumps'). Exported
    with a dynamic batch ([N, 4] -> [3]), it crashed in the gradient self-check (an unseen-
    model sweep's find)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(23)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
         helper.make_node("Squeeze", ["t", "ax"], ["y"])], "squeezed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(np.array([0], np.int64), "ax")],
    )  # fmt: skip
    path = tmp_path / "squeezed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = rng.standard_normal((1, 4)).astype(np.float32)
    run = ort.InferenceSession(str(path)).run
    y, y0 = (run(None, {"x": v})[0] for v in (x, 0 * x))
    for gradients in ("auto", "fd"):
        said = []
        a = igcli.Session(path, cache=False, gradients=gradients, warn=said.append).attribute(
            x, target=2, steps=32, baseline="zero"
        )
        assert not any("each other" in w for w in said), said  # (it is a batch of 1)
        assert a.f_input == pytest.approx(float(y[2]), rel=1e-6)
        assert a.f_baseline == pytest.approx(float(y0[2]), abs=1e-7)
        assert a.rel_error < 1e-3


def test_a_sequence_first_model_squeezing_its_batch_of_1_out_of_the_output(tmp_path):
    """GRU [6, 1, 3] -> its final state [1, 1, 4] squeezed to [4] (torch's h_n.squeeze()):
    the input's batch was moved first, but the output's 4 values were still read as 4 rows
    (the gradient graph failed in a Reshape)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(24)
    graph = helper.make_graph(
        [helper.make_node("GRU", ["x", "w", "r"], ["", "h"], hidden_size=4),
         helper.make_node("Squeeze", ["h", "ax"], ["y"])], "gru_state",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(rng.standard_normal((1, 12, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((1, 12, 4)).astype(np.float32), "r"),
         numpy_helper.from_array(np.array([0, 1], np.int64), "ax")],
    )  # fmt: skip
    path = tmp_path / "gru_state.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    sample = rng.standard_normal((6, 3)).astype(np.float32)
    y = ort.InferenceSession(str(path)).run(None, {"x": sample[:, None]})[0]
    a = igcli.Session(path, cache=False).attribute(sample, target=2, steps=32, baseline="zero")
    assert a.f_input == pytest.approx(float(y[2]), rel=1e-6)
    assert a.gradient_source == "graph" and a.rel_error < 1e-3


@pytest.mark.parametrize("steps", [8, "auto"])
def test_an_output_with_no_values_at_an_input_is_that_inputs_failure(tmp_path, steps):
    """A detector that finds nothing, say: an output of shape [N, 0] has nothing to attribute.
    It was an internal error (the arg-max and the rows probe of an empty array); it is the
    input's failure now, in one line. (The gradient graph's seed has no row to set; its
    failure is then looked at on the model itself, which says what it is.)"""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 0])],
        [numpy_helper.from_array(np.zeros((4, 0), np.float32), "w")],
    )  # fmt: skip
    path = tmp_path / "empty.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    for gradients in ("fd", "auto"):
        said = "output 'y' has no values at this input"
        session = igcli.Session(path, cache=False, gradients=gradients)
        with pytest.raises(igcli.IgcliError, match=said):
            session.attribute(np.ones(4, np.float32), steps=steps)


def test_size_resizes_images_for_a_model_of_open_size_and_a_failure_names_one(tmp_path):
    from igcli.errors import InputError
    from igcli.session import Session

    model = models.save(models.even_sides(), tmp_path / "even.onnx")
    image = tmp_path / "odd.png"
    Image.fromarray(np.full((5, 7, 3), 90, np.uint8)).save(image)
    sized = Session(model, size=(6, 8), warn=lambda _: None)
    assert sized.load(image)[0].x.shape == (3, 6, 8)
    assert Session(model, size="6x8", warn=lambda _: None).prep.height == 6
    with pytest.raises(InputError, match="it runs at 6x8"):
        Session(model, warn=lambda _: None).attribute(image, steps=4)
    with pytest.raises(UsageError, match="give height x width"):
        Session(model, size=(6.5, 8))


def _pooled_model(path, declared_out, pool=True):
    """x [P, 3] -> relu(x W1), max over the points (pool) or per row, -> [.., 4]; the output
    declared `declared_out`."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(24)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["b"])]
    if pool:
        nodes.append(helper.make_node("ReduceMax", ["b"], ["m"], axes=[0], keepdims=1))
    nodes.append(helper.make_node("MatMul", ["m" if pool else "b", "w2"], ["y"]))
    graph = helper.make_graph(
        nodes, "points",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["P", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, declared_out)],
        [numpy_helper.from_array(rng.standard_normal((3, 16)).astype(np.float32), "w1"),
         numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return models.save(model, path)


def test_a_set_of_points_of_open_size_is_one_sample(tmp_path):
    """[P, 3] -> [1, 4], pooled over the points (a PointNet): its open first axis was read
    as a batch ('holds a batch of 50'); the outputs stay [1, 4] at any P, so the whole
    input is one sample, of any number of points."""
    import onnxruntime as ort

    path = _pooled_model(tmp_path / "set.onnx", [1, 4])
    run = ort.InferenceSession(str(path)).run
    session = igcli.Session(path, cache=False)
    for points in (50, 7):
        x = np.random.default_rng(points).standard_normal((points, 3)).astype(np.float32)
        a = session.attribute(x, target=2, steps=32, baseline="zero")
        assert a.attributions.shape == (points, 3)
        assert a.f_input == pytest.approx(float(run(None, {"x": x})[0][0, 2]), rel=1e-6)
        assert a.gradient_source == "graph" and a.rel_error < 1e-4


def test_rows_whose_output_was_declared_at_batch_1_stay_a_batch(tmp_path):
    """[N, 3] -> declared [1, 4] (dynamic axes given for the input only) but row by row: at
    2 rows it gives [2, 4], so the first axis is a batch, one row a sample, as before."""
    path = _pooled_model(tmp_path / "rows.onnx", [1, 4], pool=False)
    session = igcli.Session(path, cache=False)
    a = session.attribute(np.ones(3, np.float32), target=1, steps=16, baseline="zero")
    assert a.attributions.shape == (3,)


def _mixing_rows(path, first):
    """x [first, 4] -> softmax(x Wq (x Wk)^T) x Wo: [first, 3], each row's output reading
    every row (self-attention over a sequence with no batch axis)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(9)
    weights = {n: rng.normal(0, 0.7, shape).astype(np.float32)
               for n, shape in [("wq", (4, 4)), ("wk", (4, 4)), ("wo", (4, 3))]}  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "x"], ["a"]),
        helper.make_node("MatMul", ["a", "wo"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [first, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [first, 3])],
        [numpy_helper.from_array(w, n) for n, w in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return models.save(model, path)


def test_a_sequence_of_open_length_with_no_batch_axis_is_one_sample(tmp_path):
    """[T, 4] -> [T, 3] through attention, T open: a file of 5 rows 'held a batch of 5'
    and could not be explained at all. Its rows change each other's outputs (no batch
    does), so the whole file is one sample, of any length, as with T fixed; a first axis
    named as a batch (N) keeps the batch reading (tests/test_rows.py)."""
    import onnxruntime as ort

    path = _mixing_rows(tmp_path / "seq.onnx", "T")
    fixed = igcli.Session(_mixing_rows(tmp_path / "fixed.onnx", 5), cache=False)
    session = igcli.Session(path, cache=False)
    run = ort.InferenceSession(str(path)).run
    for rows in (5, 8):
        x = np.random.default_rng(rows).standard_normal((rows, 4)).astype(np.float32)
        a = session.attribute(x, target=7, steps=32, baseline="zero")
        assert a.attributions.shape == (rows, 4)
        assert a.f_input == pytest.approx(float(run(None, {"x": x})[0].flat[7]), rel=1e-6)
        assert a.gradient_source == "graph" and a.rel_error < 1e-4
        if rows == 5:
            same = fixed.attribute(x, target=7, steps=32, baseline="zero")
            np.testing.assert_allclose(a.attributions, same.attributions, rtol=1e-5, atol=1e-7)
    with pytest.raises(igcli.IgcliError, match=r"does not fit the model input \[1, T, 4\]"):
        session.attribute(np.ones(4, np.float32), steps=4)
    batch = igcli.Session(_mixing_rows(tmp_path / "batch.onnx", "batch"), cache=False)
    with pytest.raises(igcli.IgcliError, match="holds a batch of 5"):
        batch.attribute(np.ones((5, 4), np.float32), steps=4)


def test_a_zero_gradient_from_an_input_far_out_names_the_input_not_the_model(tmp_path):
    """A feature at 1e38 saturates a tanh model within a sliver of the path: every gradient
    is 0 and F(x) != F(b). It warned that the model looks piecewise constant (a tree
    ensemble, rounding...); it is this input's doing."""
    path = models.save(models.tanh_linear(), tmp_path / "tl.onnx")
    said = []
    session = igcli.Session(path, cache=False, warn=said.append)
    result = session.attribute(np.array([0.5, 1e38, -0.2, 0.1], np.float32), steps=8)
    assert result.delta != 0 and not np.any(result.attributions)
    assert any("so far from the baseline (|x - b| up to 1e+38)" in w for w in said)
    assert not any("piecewise constant" in w for w in said)


def _chw_model(path, x_shape):
    """x [3, H, W] (one RGB image, no batch axis, as torchvision's detectors take it) ->
    Unsqueeze -> Conv 3->4 -> Tanh -> mean over the image: y [4]."""
    from onnx import helper

    rng = np.random.default_rng(3)
    inits = [models.const("w", rng.normal(0, 0.5, (4, 3, 3, 3))), models.const("b", [0.1] * 4)]
    nodes = [
        helper.make_node("Unsqueeze", ["x", "zero"], ["x4"]),
        helper.make_node("Conv", ["x4", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["c"], ["t"]),
        helper.make_node("ReduceMean", ["t", "hw"], ["m"], keepdims=0),
        helper.make_node("Squeeze", ["m", "zero"], ["y"]),
    ]
    from onnx import numpy_helper

    inits += [numpy_helper.from_array(np.array([0], np.int64), "zero"),
              numpy_helper.from_array(np.array([2, 3], np.int64), "hw")]  # fmt: skip
    return models.save(models.xy_model(nodes, x_shape, [4], inits, opset=18), path)


@pytest.mark.parametrize("x_shape", [[3, 12, 10], [3, "height", "width"]])
def test_one_rgb_image_without_a_batch_axis_is_an_image_model(tmp_path, x_shape):
    """[3, H, W] was read as a batch of 3 [H, W] planes: a PNG was 'an image, but the model
    input has shape [3, 12, 10]' and a [3, 12, 10] .npy 'held a batch of 3'. It is one image."""
    import onnxruntime as ort

    path = _chw_model(tmp_path / "chw.onnx", x_shape)
    png = tmp_path / "in.png"
    pixels = np.random.default_rng(4).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(png)
    session = igcli.Session(path, cache=False)
    assert session.prep.is_image_model and session.prep.layout == "NCHW"
    run = ort.InferenceSession(str(path)).run
    for sample in (*session.load(png), np.transpose(pixels, (2, 0, 1)).astype(np.float32) / 255):
        a = session.attribute(sample, target=2, steps=32, baseline="zero")
        x = np.transpose(pixels, (2, 0, 1)).astype(np.float32) / 255
        assert a.attributions.shape == (3, 12, 10)
        assert a.f_input == pytest.approx(float(run(None, {"x": x})[0][2]), rel=1e-5)
        assert a.gradient_source == "graph" and a.rel_error < 1e-3


def test_three_sequences_without_a_convolution_stay_a_batch(tmp_path):
    """[3, T, 4] -> [3, T, 3] with no 2-D Conv: a batch of 3 sequences, not an image."""
    path = _unbatched_model(tmp_path / "m.onnx", [3, "T", 4], [3, "T", 3], mix=False)
    session = igcli.Session(path, cache=False)
    assert not session.prep.is_image_model
    a = session.attribute(np.ones((5, 4), np.float32), target=0, steps=8, baseline="zero")
    assert a.attributions.shape == (5, 4)


def test_an_output_that_only_claims_the_batch_fails_its_input_with_one_line(tmp_path):
    """y declared [N] but [2] for one row (a flattened [N, 2], as speechmos' AECMOS gives
    its two scores): reading it per row ended in an internal error (an index past the end)
    in the gradient self-check, under --gradients fd too."""
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2) / 8, "w")
    flat = numpy_helper.from_array(np.array([-1], np.int64), "flat")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Reshape", ["h", "flat"], ["y"])]  # fmt: skip
    path = models.save(models.xy_model(nodes, ["N", 4], ["N"], [w, flat], opset=17),
                       tmp_path / "flat.onnx")  # fmt: skip
    for gradients in ("auto", "fd"):
        session = igcli.Session(path, cache=False, gradients=gradients)
        with pytest.raises(igcli.IgcliError, match=r"gives \d+ entries on its first axis for"):
            session.attribute(np.ones(4, np.float32), steps=4)


def test_a_staircase_whose_differences_are_rounding_noise_is_called_out(tmp_path):
    """A tree export may give differences of an ulp or two where the true one is 0 (ONNX
    Runtime rounds a hummingbird tree one ulp apart by the rows sharing a call): counted only
    when exactly 0, such a model was advised to raise --steps. Here a tiny slope (4e-3 on a
    value of 44: a central difference of about one ulp) beside the jumps stands in for it."""
    from onnx import helper, numpy_helper

    model = models.staircase()
    graph = model.graph
    graph.node[-1].output[0] = "steps"
    graph.initializer.extend([numpy_helper.from_array(np.float32(44.0), "base"),
                              numpy_helper.from_array(np.float32(4e-3), "slope")])  # fmt: skip
    graph.node.extend([
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
        helper.make_node("Mul", ["s", "slope"], ["tilt"]),
        helper.make_node("Add", ["steps", "base"], ["raised"]),
        helper.make_node("Add", ["raised", "tilt"], ["y"]),
    ])  # fmt: skip
    path = models.save(model, tmp_path / "tilted.onnx")
    warnings = []
    session = igcli.Session(path, gradients="fd", warn=warnings.append, cache=False)
    session.attribute(np.array([0.9, 0.5, 0.7], np.float32), steps=8, baseline="zero")
    assert any("piecewise constant" in w for w in warnings), warnings


def test_adaptive_steps_on_a_staircase_do_not_ask_for_more_steps(tmp_path):
    """The run says a piecewise constant model cannot be helped by more steps; adaptive steps
    that then ran out of evaluations added '(raise --max-steps)'."""
    model = models.save(models.staircase(), tmp_path / "stairs.onnx")
    warnings = []
    session = igcli.Session(model, gradients="fd", warn=warnings.append, cache=False)
    session.attribute(np.array([0.9, 0.5, 0.7], np.float32), steps="auto", max_steps=16,
                      baseline="zero")  # fmt: skip
    assert any("piecewise constant" in w for w in warnings), warnings
    assert any("adaptive steps stopped" in w for w in warnings), warnings
    assert not any("raise --max-steps" in w for w in warnings), warnings


def test_a_detector_whose_count_of_detections_changes_fails_its_input_in_one_line():
    """Rows of a detector's scores, 3 detections at the input and 10 on black: joining them
    ended in numpy's ValueError, an internal error (exit 1; torchvision's Faster R-CNN with a
    score threshold). One InputError naming the output now."""
    from pathlib import Path

    from igcli.errors import InputError
    from igcli.model import join_rows

    rows = [np.zeros((1, 3), np.float32), np.zeros((1, 10), np.float32)]
    with pytest.raises(InputError, match=r"'scores' changes shape .*\[10\] and \[3\] per row"):
        join_rows(rows, "scores", Path("det.onnx"))
    same = join_rows([np.zeros((1, 3)), np.ones((2, 3))], "scores", Path("det.onnx"))
    assert same.shape == (3, 3)


def test_a_gradient_graph_too_large_to_prepare_quickly_is_said_before_the_wait(monkeypatch):
    """timm's sequencer2d_s (36 LSTMs unrolled: 76,083 nodes) sat silent for 113 s while
    ONNX Runtime prepared its gradient graph; the run now says so first, once."""
    import igcli.session as session_mod

    monkeypatch.setattr(session_mod, "LARGE_GRAPH_NODES", 5)
    said = []
    session = igcli.Session(DIGITS, cache=False, warn=said.append)
    session.attribute(DIGIT_PNGS[0], steps=4)
    large = [m for m in said if "ONNX Runtime prepares it once" in m]
    assert len(large) == 1 and "nodes" in large[0], said


def test_one_session_shared_by_threads_on_an_open_size_model(tmp_path):
    """Eight threads on one Session of a model whose height and width are open, each at a
    size it had not seen: a thread's self-check ran at another's size, and that size's
    graph was rejected (finite differences from then on) or the call failed."""
    import functools
    from concurrent.futures import ThreadPoolExecutor

    import onnx
    from onnx import TensorProto, helper

    import igcli

    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.normal(size=(2, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Tanh", ["c"], ["t"]),
         helper.make_node("ReduceMean", ["t"], ["y"], axes=[2, 3], keepdims=0)],
        "open", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [w],
    )  # fmt: skip
    path = tmp_path / "open.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    sizes = [(8, 8), (9, 7), (16, 16), (5, 31), (12, 12), (7, 9), (20, 3), (3, 20)]
    xs = [rng.random((3, h, w)).astype(np.float32) for h, w in sizes]
    for _ in range(3):
        session = igcli.Session(path, threads=1, cache=False, warn=lambda m: None)
        with ThreadPoolExecutor(8) as pool:
            found = list(pool.map(functools.partial(session.attribute, steps=16), xs))
        assert all(a.gradient_source == "graph" and a.rel_error < 1e-3 for a in found)


def test_a_session_reads_file_and_object_storage_urls_as_the_command_does(tmp_path):
    """session.attribute("file:///...png") lost a slash in Path() and was "no such file", as
    were memory:// and s3:// inputs the command line fetches."""
    import fsspec

    import igcli

    session = igcli.Session(DIGITS, cache=False)
    local = session.attribute(DIGIT_PNGS[0], steps=4)
    by_url = session.attribute(DIGIT_PNGS[0].resolve().as_uri(), steps=4)
    fsspec.filesystem("memory").pipe("/igcli-test/d.png", DIGIT_PNGS[0].read_bytes())
    fetched = session.attribute("memory://igcli-test/d.png", steps=4)
    assert np.array_equal(local.attributions, by_url.attributions)
    assert np.array_equal(local.attributions, fetched.attributions) and fetched.sample.name == "d"
    with pytest.raises(InputError, match="cannot fetch"):
        session.attribute("memory://igcli-test/none.png")


def test_default_warnings_escape_control_characters_in_names(tmp_path):
    """Library warnings printed a file name's ESC sequences raw (clearing the terminal or
    a notebook's output) and its newline split the message."""
    import shutil

    odd = tmp_path / "a\x1b[2J\nb.png"
    shutil.copy(DIGIT_PNGS[0], odd)
    session = igcli.Session(DIGITS, cache=False)
    with pytest.warns(igcli.IgcliWarning) as said:
        session.attribute(odd, steps=1)
    text = " ".join(str(w.message) for w in said)
    assert "\\x1b[2J\\nb.png" in text and "\x1b" not in text and "\n" not in text
