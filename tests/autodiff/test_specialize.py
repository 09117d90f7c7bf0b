"""Graphs specialised to the sample shape: the patterns real exporters write, in small models.

Each model here reproduces what kept a real model from a gradient graph (PaddleOCR's
classifier and detector, legacy transformer exports, Silero VAD): symbolic or -1 dims, shape
arithmetic feeding Reshape, Range position ids, Ifs on a dim or on a fed sample rate. The
general build refuses them; `build_gradient_graph` with the sample shape builds a graph
whose gradient, run in ONNX Runtime at batch 1 and 2, matches float64 central differences.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from igcli.autodiff import build_gradient_graph, build_gradient_model, specialize
from igcli.autodiff.shapes import probe_shapes
from igcli.errors import UnsupportedOpsError
from tests.autodiff.checker import check_model_gradient

rng = np.random.default_rng(3)


def w(*shape, scale=0.5):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def model(nodes, inputs, outputs, inits, opset):
    graph = helper.make_graph(nodes, "m", inputs, outputs, inits)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    out.ir_version = 7
    return out


def tensor(name, elem, dims):
    """A value info whose int dims may be -1 (as paddle2onnx writes them)."""
    vi = helper.make_tensor_value_info(name, elem, None)
    shape = vi.type.tensor_type.shape
    shape.SetInParent()  # a scalar has a shape with no dims
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif d:
            dim.dim_param = d
    return vi


def paddle_classifier():
    """Opset 11, input [-1, 3, ?, ?]: Conv, global pool, a Reshape to Concat(Shape[0], [-1])
    and a Softmax-11 (which flattens from axis 1 on: the rule needs the rank)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("HardSigmoid", ["c1"], ["h1"], alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["c1", "h1"], ["a1"]),
        helper.make_node("GlobalAveragePool", ["a1"], ["p"]),
        helper.make_node("Shape", ["p"], ["ps"]),
        helper.make_node("Slice", ["ps", "zero", "one"], ["n"], axes=None),
        helper.make_node("Concat", ["n", "minus1"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["p", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w2"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"]),
    ]
    inits = [init("w1", w(4, 3, 3, 3)), init("b1", w(4)), init("w2", w(4, 2, scale=0.3)),
             init("b2", w(2)), init("zero", np.array([0], np.int64)),
             init("one", np.array([1], np.int64)),
             init("minus1", np.array([-1], np.int64))]  # fmt: skip
    return model(nodes, [tensor("x", TensorProto.FLOAT, [-1, 3, "?", "?"])],
                 [tensor("prob", TensorProto.FLOAT, [-1, 2])], inits, 11)  # fmt: skip


def paddle_detector():
    """Opset 12, dims all dynamic: a stride-2 Conv, then a ConvTranspose back up plus a bias
    Add of unknown shape (what the general build cannot broadcast below opset 13)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("ConvTranspose", ["r1", "w2"], ["up"], strides=[2, 2]),
        helper.make_node("Shape", ["up"], ["us"]),
        helper.make_node("Slice", ["us", "one", "two"], ["channels"]),
        helper.make_node("Reshape", ["b2", "channels"], ["bias"]),  # [C]: computed at run time
        helper.make_node("Unsqueeze", ["bias"], ["bias3"], axes=[1, 2]),
        helper.make_node("Add", ["up", "bias3"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    inits = [init("w1", w(4, 3, 3, 3)), init("w2", w(4, 2, 2, 2)), init("b2", w(2)),
             init("one", np.array([1], np.int64)),
             init("two", np.array([2], np.int64))]  # fmt: skip
    return model(nodes, [tensor("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                 [tensor("prob", TensorProto.FLOAT, ["N", 2, "H2", "W2"])], inits, 12)  # fmt: skip


def legacy_transformer():
    """Opset 13: patches from a dynamic H x W, position ids from Range(Shape), Reshape to
    Concat(Gather(Shape)) and an If on "is the batch 1?" that squeezes, as legacy torch
    exports write them."""
    d = 4
    nodes = [
        helper.make_node("Conv", ["x", "wp"], ["patches"], strides=[2, 2]),  # [N, d, h, w]
        helper.make_node("Shape", ["patches"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["n"]),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "d1", "minus1"], ["s3"], axis=0),
        helper.make_node("Reshape", ["patches", "s3"], ["tok_t"]),  # [N, d, L]
        helper.make_node("Transpose", ["tok_t"], ["tok"], perm=[0, 2, 1]),  # [N, L, d]
        helper.make_node("Shape", ["tok"], ["ts"]),
        helper.make_node("Gather", ["ts", "i1"], ["length"]),
        helper.make_node("Range", ["zero", "length", "step"], ["pos"]),
        helper.make_node("Gather", ["pos_table", "pos"], ["pos_emb"]),
        helper.make_node("Add", ["tok", "pos_emb"], ["h0"]),
        helper.make_node("MatMul", ["h0", "wq"], ["q"]),
        helper.make_node("Transpose", ["h0"], ["h0t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "h0t"], ["att"]),
        helper.make_node("Softmax", ["att"], ["att_p"], axis=-1),
        helper.make_node("MatMul", ["att_p", "h0"], ["h1"]),
        helper.make_node("ReduceMean", ["h1"], ["pooled"], axes=[1], keepdims=1),  # [N, 1, d]
        helper.make_node("Equal", ["n", "i1_scalar"], ["is_one"]),
        helper.make_node(
            "If",
            ["is_one"],
            ["out"],
            then_branch=helper.make_graph(
                [helper.make_node("Squeeze", ["pooled", "axes1"], ["sq"])],
                "then",
                [],
                [onnx.ValueInfoProto(name="sq")],
            ),
            else_branch=helper.make_graph(
                [helper.make_node("Squeeze", ["pooled", "axes1"], ["sq2"])],
                "else",
                [],
                [onnx.ValueInfoProto(name="sq2")],
            ),
        ),  # fmt: skip
        helper.make_node("Gemm", ["out", "wh"], ["logits"], transB=1),
    ]
    inits = [init("wp", w(d, 3, 2, 2)), init("pos_table", w(64, d)), init("wq", w(d, d)),
             init("wh", w(3, d)), init("i0", np.array(0, np.int64)),
             init("i1", np.array(1, np.int64)), init("i1_scalar", np.array(1, np.int64)),
             init("axes0", np.array([0], np.int64)), init("axes1", np.array([1], np.int64)),
             init("d1", np.array([d], np.int64)), init("minus1", np.array([-1], np.int64)),
             init("zero", np.array(0, np.int64)), init("step", np.array(1, np.int64))]  # fmt: skip
    return model(nodes, [tensor("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                 [tensor("logits", TensorProto.FLOAT, ["batch", 3])], inits, 13)  # fmt: skip


def vad_like():
    """Silero-style: an If on a fed sample rate picks one of two networks; a recurrent state
    input [2, batch, 4] whose batch axis is 1."""

    def net(tag, k):
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", f"w_{tag}"], [f"h_{tag}"]),
             helper.make_node("Gather", ["state", "i0"], [f"s0_{tag}"]),
             helper.make_node("Add", [f"h_{tag}", f"s0_{tag}"], [f"z_{tag}"]),
             helper.make_node("Tanh", [f"z_{tag}"], [f"t_{tag}"]),
             helper.make_node("ReduceSum", [f"t_{tag}", "axes1"], [f"o_{tag}"], keepdims=1),
             helper.make_node("Mul", [f"o_{tag}", k], [f"out_{tag}"])],
            tag, [], [onnx.ValueInfoProto(name=f"out_{tag}")],
        )  # fmt: skip

    nodes = [
        helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
        helper.make_node(
            "If", ["is16k"], ["out"], then_branch=net("k16", "two"), else_branch=net("k8", "three")
        ),  # fmt: skip
        helper.make_node("Sigmoid", ["out"], ["prob"]),
    ]
    inits = [init("w_k16", w(6, 4)), init("w_k8", w(6, 4)), init("i0", np.array(0, np.int64)),
             init("axes1", np.array([1], np.int64)), init("sr16k", np.array(16000, np.int64)),
             init("two", np.float32(2.0)), init("three", np.float32(3.0))]  # fmt: skip
    inputs = [tensor("x", TensorProto.FLOAT, ["batch", 6]),
              tensor("state", TensorProto.FLOAT, [2, "batch", 4]),
              tensor("sr", TensorProto.INT64, [])]  # fmt: skip
    return model(nodes, inputs, [tensor("prob", TensorProto.FLOAT, ["batch", 1])], inits, 17)


def test_paddle_classifier_gets_a_graph_for_its_sample_shape():
    m = paddle_classifier()
    with pytest.raises(UnsupportedOpsError, match="unknown rank"):
        build_gradient_model(m, "x", "prob")
    graph = check_model_gradient(m, "x", "prob", rng.standard_normal((1, 3, 8, 12)))
    assert graph.sample_shape == (3, 8, 12) and graph.batch_dynamic


def test_paddle_detector_gets_a_graph_for_its_sample_shape():
    m = paddle_detector()
    with pytest.raises(UnsupportedOpsError):
        build_gradient_model(m, "x", "prob")
    check_model_gradient(m, "x", "prob", rng.standard_normal((1, 3, 6, 8)))


def test_legacy_transformer_shape_arithmetic_is_folded():
    m = legacy_transformer()
    graph = check_model_gradient(m, "x", "logits", rng.standard_normal((1, 3, 6, 4)))
    spec = specialize(m, "x", (3, 6, 4))
    ops = {n.op_type for n in spec.model.graph.node}
    assert "Range" not in ops  # position ids are constants now
    assert "If" in ops  # the If on the batch size stays: it depends on the batch
    assert graph.batch_dynamic


def test_if_on_a_fed_sample_rate_is_inlined():
    m = vad_like()
    state = rng.standard_normal((2, 1, 4)).astype(np.float32)
    for sr in (16000, 8000):
        feeds = {"state": state, "sr": np.array(sr, np.int64)}
        spec = specialize(m, "x", (6,), feeds)
        assert "If" not in {n.op_type for n in spec.model.graph.node}
        assert spec.uses_feed_values and spec.batch_dynamic
        check_model_gradient(m, "x", "prob", rng.standard_normal((1, 6)), feeds=feeds)


def test_fed_values_stay_out_when_asked():
    """A caller that caches graphs without keying on the feeds must not get them folded in."""
    m = vad_like()
    feeds = {"state": w(2, 1, 4), "sr": np.array(16000, np.int64)}
    spec = specialize(m, "x", (6,), feeds, fold_feed_values=False)
    assert "If" in {n.op_type for n in spec.model.graph.node} and not spec.uses_feed_values


def test_general_graph_when_no_specialisation_is_needed():
    """The If on a fed input is differentiated as an If when the general build can: the
    graph then serves every shape and every fed value."""
    m = vad_like()
    feeds = {"state": rng.standard_normal((2, 1, 4)).astype(np.float32),
             "sr": np.array(8000, np.int64)}  # fmt: skip
    graph = build_gradient_graph(m, "x", "prob", sample_shape=(6,), feeds=feeds)
    assert graph.sample_shape is None and not graph.uses_feed_values
    check_model_gradient(m, "x", "prob", rng.standard_normal((1, 6)), feeds=feeds)


def test_a_feed_without_batch_axis_pins_the_batch():
    """state [1, 3] is concatenated with x [batch, 3] along axis 1: only batch 1 runs, so the
    graph is built for batch 1 and says so."""
    nodes = [
        helper.make_node("Concat", ["x", "state"], ["xs"], axis=1),
        helper.make_node("Tanh", ["xs"], ["y"]),
    ]
    inputs = [tensor("x", TensorProto.FLOAT, ["batch", 3]),
              tensor("state", TensorProto.FLOAT, [1, 3])]  # fmt: skip
    m = model(nodes, inputs, [tensor("y", TensorProto.FLOAT, ["batch", 6])], [], 13)
    feeds = {"state": w(1, 3)}
    assert not specialize(m, "x", (3,), feeds).batch_dynamic
    assert specialize(m, "x", (3,)).batch_dynamic  # without feeds nothing is probed


def test_probing_runs_when_the_batch_is_written_minus_one():
    m = paddle_classifier()
    hints = probe_shapes(m, "x", [3, 8, 12])
    assert hints["flat"].shape == ["N", 4]
    assert hints["c1"].shape == ["N", 4, 4, 6]


def test_a_sample_shape_of_the_wrong_rank_is_refused():
    with pytest.raises(ValueError, match="batch axis"):
        build_gradient_graph(paddle_classifier(), "x", "prob", sample_shape=(1, 3, 8, 12))


def _group_norm_then(nodes, out_type=TensorProto.FLOAT):
    """x [N, 4, 2, 2] -> GroupNormalization-21 (onnx's inference types nothing after it)."""
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "s"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
             numpy_helper.from_array(np.zeros(1, np.float64), "like")]  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("GroupNormalization", ["x", "s", "b"], ["gn"], num_groups=2), *nodes],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 2, 2])],
        [helper.make_tensor_value_info("y", out_type, None)], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_the_probe_guesses_types_past_inference_and_falls_back_when_a_guess_is_wrong(
    monkeypatch,
):
    """Past an op onnx's inference does not follow, tensors get guessed types so the probe
    can show them (comparisons bool, Where its values'). A guess ONNX Runtime refuses leaves
    the probe to the inferred types, as before guessing, not empty."""
    from igcli.autodiff import shapes

    model = _group_norm_then([
        helper.make_node("Greater", ["gn", "zero"], ["pos"]),
        helper.make_node("Where", ["pos", "gn", "zero"], ["w"]),
        helper.make_node("Tanh", ["w"], ["y"]),
    ])  # fmt: skip
    hints = probe_shapes(model, "x", [4, 2, 2])
    assert hints["pos"].shape == ["N", 4, 2, 2] and hints["w"].shape == ["N", 4, 2, 2]
    guess = shapes._guess_types
    monkeypatch.setattr(shapes, "_guess_types", lambda graph, inferred: inferred)
    inferred_only = probe_shapes(model, "x", [4, 2, 2])
    wrong = lambda graph, inferred: {**guess(graph, inferred), "w": TensorProto.INT64}  # noqa: E731
    monkeypatch.setattr(shapes, "_guess_types", wrong)
    assert inferred_only and probe_shapes(model, "x", [4, 2, 2]) == inferred_only
