"""--dequantize: a quantized model's float twin (igcli/dequantize.py).

The sample digits CNN is quantized here by ONNX Runtime's own tools, in its three forms (QDQ,
QLinear ops, dynamic), calibrated on the sample digits as the sidecar preprocesses them. Each
twin must compute the float model's function up to its int8 weights, get a gradient graph,
and give the float model's attributions.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from igcli.cli import main
from igcli.dequantize import MS, ROUNDING_OPS, _dequantize, _quantize, float_twin, is_quantized
from igcli.errors import ExitCode, ModelError, UsageError
from igcli.session import Session

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "sample_models" / "digits_cnn.onnx"
PNGS = sorted((ROOT / "sample_inputs" / "digits").glob("*.png"))
FORMS = ("qdq", "qoperator", "dynamic")


def _digit_rows() -> np.ndarray:
    prep = json.loads(DIGITS.with_suffix(".json").read_text())["preprocessing"]
    rows = [np.asarray(Image.open(p), np.float32) / prep["scale"] for p in PNGS]
    return ((np.stack(rows)[:, None] - prep["mean"][0]) / prep["std"][0]).astype(np.float32)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict[str, Path]:
    """The digits CNN quantized three ways, each with the sidecar beside it."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    class Digits(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter({"image": r[None]} for r in _digit_rows())

        def get_next(self):
            return next(self.rows, None)

    folder = tmp_path_factory.mktemp("quantized")
    paths = {form: folder / f"digits_{form}.onnx" for form in FORMS}
    for form, fmt in (("qdq", QuantFormat.QDQ), ("qoperator", QuantFormat.QOperator)):
        quantize_static(DIGITS, paths[form], Digits(), quant_format=fmt, per_channel=True)
    quantize_dynamic(DIGITS, paths["dynamic"], weight_type=QuantType.QInt8)
    for path in paths.values():
        shutil.copy(DIGITS.with_suffix(".json"), path.with_suffix(".json"))
    return paths


def _outputs(model, x: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


@pytest.mark.parametrize("form", FORMS)
def test_the_twin_computes_the_float_function_without_rounding(quantized, form):
    model = onnx.load(quantized[form])
    assert is_quantized(model)
    twin = float_twin(model, quantized[form])
    assert not is_quantized(twin)
    assert not {n.op_type for n in twin.graph.node} & {"DequantizeLinear", *ROUNDING_OPS}
    x = _digit_rows()
    scale = np.abs(_outputs(DIGITS, x)).max()
    # the float model's function up to its int8 weights: closer to it than the quantized model
    assert np.abs(_outputs(twin, x) - _outputs(DIGITS, x)).max() < 0.02 * scale
    assert np.abs(_outputs(twin, x) - _outputs(model, x)).max() < 0.15 * scale


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def float_maps(tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("float") / "out"
    assert run("explain", DIGITS, *PNGS, "--out", out, "-q").exit_code == 0
    return {p.stem: np.load(out / f"{p.stem}.npy") for p in PNGS}


@pytest.mark.parametrize("form", FORMS)
def test_dequantize_explains_the_twin_with_its_graph(quantized, float_maps, form, tmp_path):
    out = tmp_path / "out"
    result = run("explain", quantized[form], *PNGS, "--out", out, "--dequantize")
    assert result.exit_code == 0, result.stderr
    assert "float twin" in result.stderr and "Traceback" not in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["dequantize"] is True
    assert report["settings"]["gradient_source"] == "graph"
    assert report["summary"]["max_rel_error"] < 0.01
    assert all(r["dequantized"] for r in report["results"])  # (and under each heatmap)
    for stem, reference in float_maps.items():
        ours = np.load(out / f"{stem}.npy")
        assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("form", FORMS)
def test_gradcheck_dequantize_checks_the_twin_explain_uses(quantized, form):
    """gradcheck of a quantized model had no --dequantize: the graph explain --dequantize
    uses could not be checked on its own."""
    result = run("gradcheck", quantized[form], PNGS[0], "--dequantize", "--json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["verdict"] == "ok" and found["passed"] is True


def test_without_dequantize_the_quantized_model_is_said_to_need_it(quantized, tmp_path):
    result = run("explain", quantized["qdq"], PNGS[0], "--out", tmp_path / "o", "--steps", "8")
    assert result.exit_code == 0, result.stderr
    assert "--dequantize" in result.stderr


def test_dequantize_leaves_a_float_model_as_it_is(tmp_path):
    plain, twin = tmp_path / "plain", tmp_path / "twin"
    assert run("explain", DIGITS, PNGS[0], "--out", plain, "-q").exit_code == 0
    result = run("explain", DIGITS, PNGS[0], "--out", twin, "--dequantize")
    assert result.exit_code == 0 and "no quantized ops" in result.stderr
    stem = PNGS[0].stem
    np.testing.assert_array_equal(np.load(plain / f"{stem}.npy"), np.load(twin / f"{stem}.npy"))


def test_results_of_the_twin_are_not_taken_for_the_quantized_models(quantized):
    """--skip-existing resumes only results of the same fingerprint."""
    plain = Session(quantized["dynamic"], gradients="fd", cache=False).fingerprint()
    twin = Session(quantized["dynamic"], dequantize=True, cache=False, warn=print).fingerprint()
    assert twin["dequantize"] is True and "dequantize" not in plain
    assert twin != plain


def _model(nodes, inits, out_type=TensorProto.FLOAT, opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", out_type, [1, 4])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


SCALE = {"s": np.array(0.05, np.float32), "z": np.array(3, np.uint8)}


def test_an_op_that_reads_the_integers_is_refused_by_name(tmp_path):
    model = _model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("Cast", ["q"], ["i"], to=TensorProto.INT32),
            helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT),
        ],
        SCALE,
    )
    path = tmp_path / "odd.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match="Cast .* reads quantized integers"):
        float_twin(model, path)
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    result = run("explain", path, tmp_path / "x.npy", "--target", "0", "--dequantize")
    assert result.exit_code == ExitCode.MODEL
    assert len(result.stderr.strip().splitlines()) == 1 and "Cast" in result.stderr


def test_an_integer_output_is_refused(tmp_path):
    model = _model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], SCALE,
                   out_type=TensorProto.UINT8)  # fmt: skip
    with pytest.raises(ModelError, match="output 'y' holds integers"):
        float_twin(model, tmp_path / "m.onnx")


def test_quantize_then_dequantize_clips_but_does_not_round(tmp_path):
    model = _model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        SCALE,
    )
    twin = float_twin(model, tmp_path / "m.onnx")
    x = np.array([[-1.0, 0.0123, 0.5, 20.0]], np.float32)
    session = ort.InferenceSession(twin.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    # uint8 with zero point 3 holds -3 * 0.05 to 252 * 0.05: the ends saturate, the rest pass
    np.testing.assert_allclose(y, [[-0.15, 0.0123, 0.5, 12.6]], rtol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "axis", "block"),
    [(np.int8, 0, 0), (np.uint8, 1, 0), (np.int16, 1, 0), (np.int8, 1, 2), (np.uint16, 0, 0)],
)
def test_constants_fold_as_the_kernels_compute_them(dtype, axis, block):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 6)).astype(np.float32)
    shape = [4, 6]
    shape[axis] = shape[axis] // block if block else shape[axis]
    scales = rng.uniform(0.01, 0.1, size=shape if block else shape[axis]).astype(np.float32)
    zeros = rng.integers(0, 5, size=scales.shape).astype(dtype)
    opset = 21 if block or dtype in (np.int16, np.uint16) else 13
    attrs = {"axis": axis, **({"block_size": block} if block else {})}
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "s", "z"], ["q"], **attrs),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], **attrs),
    ]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    outputs = [helper.make_tensor_value_info("q", elem, [4, 6]),
               helper.make_tensor_value_info("d", TensorProto.FLOAT, [4, 6])]  # fmt: skip
    inits = [numpy_helper.from_array(v, k) for k, v in (("w", w), ("s", scales), ("z", zeros))]
    graph = helper.make_graph(nodes, "g", [], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    q, d = ort.InferenceSession(model.SerializeToString()).run(None, {})
    ours = _quantize(w, scales, zeros, axis, elem)
    np.testing.assert_array_equal(ours, q)
    np.testing.assert_array_equal(_dequantize(ours, scales, zeros, axis), d)


def test_the_session_refuses_a_dequantize_that_is_not_a_flag():
    with pytest.raises(UsageError, match="dequantize must be True or False"):
        Session(DIGITS, dequantize="yes")


def test_onnx_runtime_quantized_ops_become_their_float_ops(tmp_path):
    """A QLinearSoftmax (com.microsoft) between quantizations: the twin is the softmax."""
    s_in, s_out = np.array(0.05, np.float32), np.array(1 / 256, np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node(
            "QLinearSoftmax",
            ["q", "s", "z", "so", "z"],
            ["p"],
            domain="com.microsoft",
            axis=-1,
            opset=13,
        ),  # fmt: skip
        helper.make_node("DequantizeLinear", ["p", "so", "z"], ["y"]),
    ]
    model = _model(nodes, {"s": s_in, "so": s_out, "z": np.array(0, np.uint8)})
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    x = np.array([[0.3, 1.1, 2.0, 0.05]], np.float32)
    twin = float_twin(model, tmp_path / "m.onnx")
    assert {n.op_type for n in twin.graph.node} >= {"Softmax"}
    y = ort.InferenceSession(twin.SerializeToString()).run(None, {"x": x})[0]
    e = np.exp(x - x.max())
    np.testing.assert_allclose(y, e / e.sum(), rtol=1e-5)
    quantized = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(quantized, y, atol=0.02)  # (its rounding)


@pytest.mark.parametrize("op", ["DynamicQuantizeMatMul", "MatMulIntegerToFloat"])
def test_fused_dynamic_matmuls_become_matmuls(op, tmp_path):
    """ONNX Runtime's optimizer fuses a dynamically quantized MatMul into one of these."""
    rng = np.random.default_rng(0)
    b = rng.integers(-100, 100, size=(4, 3)).astype(np.int8)
    inits = {"b": b, "bs": np.array([0.02, 0.03, 0.01], np.float32), "bz": np.zeros(3, np.int8),
             "bias": np.array([0.1, -0.2, 0.3], np.float32)}  # fmt: skip
    if op == "DynamicQuantizeMatMul":
        nodes = [helper.make_node(op, ["x", "b", "bs", "bz", "bias"], ["y"], domain=MS)]
    else:
        nodes = [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "qs", "qz"]),
            helper.make_node(op, ["q", "b", "qs", "bs", "qz", "bz", "bias"], ["y"], domain=MS),
        ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)]
    )
    twin = float_twin(model, tmp_path / "m.onnx")
    assert not is_quantized(twin)
    x = rng.normal(size=(2, 4)).astype(np.float32)
    y = ort.InferenceSession(twin.SerializeToString()).run(None, {"x": x})[0]
    exact = x.astype(np.float64) @ (b * inits["bs"].astype(np.float64)) + inits["bias"]
    np.testing.assert_allclose(y, exact, rtol=1e-5, atol=1e-6)
    quantized = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(quantized, y, atol=0.05)  # (its rounding of x)


def test_worker_processes_do_not_repeat_what_this_one_said():
    """Each worker builds its session and says the twin note again: said once."""
    import io

    from igcli.console import Messages

    stream = io.StringIO()
    messages = Messages(stream=stream)
    for _ in range(2):
        messages.warn("model.onnx: --dequantize: explaining its float twin")
        messages.warn("error: a.png: not an image")
    lines = stream.getvalue().splitlines()
    assert lines.count("model.onnx: --dequantize: explaining its float twin") == 1
    assert lines.count("error: a.png: not an image") == 2


def test_inspect_says_what_dequantize_would_give(quantized):
    result = run("inspect", quantized["qdq"])
    assert result.exit_code == 0, result.stderr
    assert "gradient graph with --dequantize (its float twin): yes" in result.stdout
    info = json.loads(run("inspect", quantized["dynamic"], "--json").stdout)
    assert info["gradient_graph"] is False and info["gradient_graph_dequantized"] is True
    assert json.loads(run("inspect", DIGITS, "--json").stdout)["gradient_graph_dequantized"] is None


def test_integers_joined_to_quantized_values_join_as_floats(tmp_path):
    """Concat of a quantized tensor and an integer constant: the constant's numbers as floats."""
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("Concat", ["q", "c"], ["j"], axis=1),
            helper.make_node("DequantizeLinear", ["j", "s", "z"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [
            numpy_helper.from_array(v, k)
            for k, v in {**SCALE, "c": np.array([[23]], np.uint8)}.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    twin = float_twin(model, tmp_path / "m.onnx")
    x = np.array([[0.5, 1.234]], np.float32)
    y = ort.InferenceSession(twin.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, [[0.5, 1.234, (23 - 3) * 0.05]], rtol=1e-6)


def test_a_twin_that_does_not_load_is_named_as_the_twin(quantized, monkeypatch):
    """The user's quantized file loads; where the twin igcli makes of it does not (an old
    onnx.quantize layout adds an int32 bias to ConvInteger's output), the error said ONNX
    Runtime could not load the user's file."""
    import igcli.session as session_mod

    def broken(model, path):  # the twin with its output Add fed an int32 second operand
        twin = float_twin(model, path)
        graph = twin.graph
        graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.int32), "int_bias"))
        out = graph.output[0].name
        for node in graph.node:
            for k, name in enumerate(node.output):
                if name == out:
                    node.output[k] = "before_bias"
        graph.node.append(helper.make_node("Add", ["before_bias", "int_bias"], [out]))
        return twin

    monkeypatch.setattr(session_mod, "float_twin", broken)
    with pytest.raises(ModelError, match="cannot load its float twin .*without --dequantize"):
        _ = Session(quantized["qdq"], dequantize=True, cache=False).runner
