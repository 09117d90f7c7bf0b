"""Attribution at a tensor inside the model (--at, issue 10): the model cut in two, IG in that
tensor's space, completeness there."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import igcli
from igcli.cut import aggregate, embedding_lookups, make_cut
from igcli.errors import ExitCode, UsageError
from tests import models
from tests.test_cli import CANCER, CANCER_CSV, DIGIT_PNGS, DIGITS, run

BLOCKS = ("/0/Conv_output_0", "/2/MaxPool_output_0", "/4/Softplus_output_0")


@pytest.mark.parametrize("at", BLOCKS)
def test_image_model_at_a_block_keeps_completeness(tmp_path, at):
    out = tmp_path / "out"
    result = run("explain", DIGITS, *DIGIT_PNGS, "--at", at, "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == len(DIGIT_PNGS)
    session = igcli.Session(DIGITS)
    for r, png in zip(records, DIGIT_PNGS, strict=True):
        assert r["at"] == at and r["gradient_source"] == "graph"
        assert r["rel_error"] <= 0.01, (png.name, r["rel_error"])
        attr = np.load(out / r["attributions_file"])
        assert attr.shape[:2] in ((1, 8), (1, 16)) and attr.ndim == 4
        # F(x) is the model's own output: the cut changes the space, not the function
        f = session.runner.run(session.load(png)[0].x[None])[0, r["target"]]
        assert r["f_input"] == pytest.approx(float(f), rel=1e-5)
        assert (out / r["heatmap_file"]).is_file()


def test_positions_sum_over_channels_and_keep_completeness():
    session = igcli.Session(DIGITS, at="/2/MaxPool_output_0")
    a = session.attribute(DIGIT_PNGS[0])
    assert a.attributions.shape == (8, 14, 14) and a.positions.shape == (14, 14)
    assert a.positions.sum() == pytest.approx(a.attribution_sum, rel=1e-9)
    assert a.image().size[0] > 0
    np.testing.assert_allclose(
        aggregate(a.attributions, "image", True, "l2"), np.sqrt((a.attributions**2).sum(0))
    )


def test_zero_baseline_is_zero_at_the_tensor():
    session = igcli.Session(DIGITS, at="/4/Softplus_output_0")
    a = session.attribute(DIGIT_PNGS[1], baseline="zero")
    assert np.all(a.baseline == 0) and a.rel_error <= 0.01
    black = session.attribute(DIGIT_PNGS[1], target=a.target)
    assert black.f_input == a.f_input and black.f_baseline != a.f_baseline


def test_finite_differences_at_a_tensor_agree_with_the_graph(tmp_path):
    at = "/1/Tanh_output_0"
    rows = igcli.Session(CANCER).load(CANCER_CSV)[:2]
    graph = igcli.Session(CANCER, at=at)
    fd = igcli.Session(CANCER, at=at, gradients="fd")
    for row in rows:
        g = graph.attribute(row, steps=32)
        f = fd.attribute(row, steps=32, target=g.target)
        assert f.gradient_source == "fd" and f.rel_error < 1e-3
        np.testing.assert_allclose(f.attributions, g.attributions, rtol=2e-2, atol=1e-5)
    with pytest.raises(UsageError, match="fd-groups"):
        igcli.Session(CANCER, at=at, gradients="fd", fd_groups="2x2").attribute(rows[0])


def _skip_model() -> onnx.ModelProto:
    """y = w2 . tanh(W1 x) + v . x: the part after the tanh still reads x itself."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("MatMul", ["t", "w2"], ["a"]),
        helper.make_node("MatMul", ["x", "v"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    return models._model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [
            models.const("w1", rng.normal(size=(3, 4))),
            models.const("w2", rng.normal(size=(4, 1))),
            models.const("v", rng.normal(size=(3, 1))),
        ],
    )


def test_paths_around_the_tensor_are_held_at_the_input(tmp_path):
    """As Captum's LayerIntegratedGradients: only the tensor moves; completeness holds for
    the after part at the input's other values, not for F(baseline)."""
    model = _skip_model()
    path = models.save(model, tmp_path / "skip.onnx")
    x = np.array([[0.5, -1.0, 2.0]], dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    a = igcli.Session(path, at="t").attribute(tmp_path / "x.npy", steps=64)
    assert a.rel_error < 1e-4
    w = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    tb = np.tanh(np.zeros((1, 3)) @ w["w1"])  # the baseline (zero input) at the cut
    expected = (tb @ w["w2"] + x @ w["v"]).item()  # the skip path keeps x
    assert a.f_baseline == pytest.approx(expected, rel=1e-5)
    cut = make_cut(model, "t", "x", "y")
    assert cut.after_inputs == ["x"] and cut.before_inputs == ["x"]


def test_bad_tensors_are_one_line_usage_errors(tmp_path):
    png = DIGIT_PNGS[0]
    cases = {
        "nope": "not a tensor of the graph",
        "logits": "explained output itself",
    }
    for at, what in cases.items():
        result = run("explain", DIGITS, png, "--at", at, "--out", tmp_path / "o")
        assert result.exit_code == ExitCode.USAGE, (at, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and what in lines[0], (at, lines)
    assert igcli.Session(DIGITS, at="image").at is None  # the input itself: no cut


def test_integer_tensors_and_dead_ends_are_refused():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["x", "axes"], ["r"], keepdims=1),
        helper.make_node("Tanh", ["r"], ["side"]),
        helper.make_node("Mul", ["r", "two"], ["y"]),
    ]
    model = models._model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("side", TensorProto.FLOAT, ["N", 1]),
        ],
        [onnx.numpy_helper.from_array(np.array([1]), "axes"), models.const("two", [2.0])],
    )
    with pytest.raises(UsageError, match="not a float tensor"):
        make_cut(model, "s", "x", "y")
    with pytest.raises(UsageError, match="does not depend on input"):
        make_cut(model, "sf", "x", "y")  # a function of the input's shape only
    with pytest.raises(UsageError, match="does not depend on --at"):
        make_cut(model, "side", "x", "y")
    assert embedding_lookups(model, "x") == []


def _sequence_first(tmp_path, batch):
    """x [batch, 6, 4] -> Transpose -> MatMul: h [6, batch, 5] (the layout of torch's
    nn.Transformer without batch_first) -> mean over the sequence -> y [batch, 5]."""
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(3).standard_normal((4, 5)).astype("f"), "w")
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
         helper.make_node("MatMul", ["t", "w"], ["h"]),
         helper.make_node("Tanh", ["h"], ["a"]),
         helper.make_node("ReduceMean", ["a"], ["y"], axes=[0], keepdims=0)], "seq_first",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 6, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])], [w],
    )  # fmt: skip
    path = tmp_path / f"seq_first_{batch}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("batch", ["N", 1])
def test_a_tensor_with_its_batch_on_axis_1_is_refused(tmp_path, batch):
    """--at a sequence-first activation [L, N, H]: its axis 0 was taken for the batch, so the
    path moved only the first position (attributions [1, 1, H], completeness 270% off and
    'raise --steps'), or the gradient graph failed in ONNX Runtime. One usage error now."""
    path = _sequence_first(tmp_path, batch)
    x = np.random.default_rng(4).standard_normal((1, 6, 4)).astype(np.float32)
    with pytest.raises(UsageError, match="first axis is the batch"):
        igcli.Session(path, at="h", cache=False, gradients="fd").attribute(x, target=1, steps=8)


def test_inspect_points_an_integer_input_model_without_a_lookup_at_its_float_tensors(tmp_path):
    """bytes [N, 6] int32 -> Cast -> tanh(. W): no float input and no embedding lookup.
    inspect said 'no float input or output to differentiate; explain refuses this model' and
    listed no tensor, where explain asked the user to pick one from inspect's list."""
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(6, 2), "W")
    nodes = [helper.make_node("Cast", ["bytes"], ["as_float"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["as_float", "W"], ["h"]),
             helper.make_node("Tanh", ["h"], ["y"])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "bytes",
        [helper.make_tensor_value_info("bytes", TensorProto.INT32, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [w],
    )  # fmt: skip
    path = models.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                       tmp_path / "bytes.onnx")  # fmt: skip
    said = run("inspect", path)
    assert said.exit_code == 0, said.stdout
    assert "explain needs --at" in said.stdout and "   h " in said.stdout
    np.save(tmp_path / "x.npy", np.array([[3, 1, 4, 1, 5, 9]], np.int32) % 3)
    result = run("explain", path, tmp_path / "x.npy", "--at", "h", "--steps", "16",
                 "--out", tmp_path / "o")  # fmt: skip
    assert result.exit_code == 0, result.stderr


def test_inspect_lists_only_tensors_whose_first_axis_may_be_the_batch(tmp_path):
    """A GPT-2's Gemm reads [12*batch, 96] (the batch merged into the positions) and a
    sequence-first tensor has its batch on axis 1: inspect listed both for --at, and explain
    then refused them ('its first axis is not the batch')."""
    from igcli.cut import _batch_first, candidate_tensors

    assert _batch_first(["batch", 12, 32], "batch") and _batch_first([None, 4], "batch")
    assert _batch_first(["unk__3", 96], "batch")  # unknown: explain finds out from the rows
    assert not _batch_first(["12*batch", 96], "batch")
    assert not _batch_first([12, "batch", 32], "batch") and not _batch_first([12, 4], 1)
    w = onnx.numpy_helper.from_array(np.ones((3, 5), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Transpose", ["h"], ["t"], perm=[1, 0, 2]),
         helper.make_node("Relu", ["t"], ["r"]),
         helper.make_node("ReduceMean", ["r"], ["y"], axes=[0, 2], keepdims=0)], "seqfirst",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])], [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert [s.name for s in candidate_tensors(model, "x", "y")] == ["h"]
