"""LSTM, GRU and RNN: unrolled into checked primitive ops over a static sequence length, else
refused.

The unrolled graph is checked end to end: its gradient (float64, reference evaluator) against
central differences of onnx's reference LSTM, and in ONNX Runtime float32, w.r.t. the
sequence, the initial states and the weights, for every output.
"""

import numpy as np
import pytest
from onnx import helper

from igcli.autodiff import blocking_ops
from tests.autodiff.checker import check_graph, make_model

rng = np.random.default_rng(2)
H, I, T, N = 3, 2, 3, 2


def lstm_case(direction, with_states=True, with_bias=True, with_peepholes=True, steps=T):
    d = 2 if direction == "bidirectional" else 1
    inputs = {"x": rng.standard_normal((steps, N, I))}
    consts = {"w": rng.standard_normal((d, 4 * H, I)), "r": rng.standard_normal((d, 4 * H, H))}
    names = ["x", "w", "r", "", "", "", "", ""]
    if with_bias:
        consts["b"] = rng.standard_normal((d, 8 * H))
        names[3] = "b"
    if with_states:
        inputs |= {"h0": rng.standard_normal((d, N, H)), "c0": rng.standard_normal((d, N, H))}
        names[5:7] = ["h0", "c0"]
    if with_peepholes:
        consts["p"] = rng.standard_normal((d, 3 * H))
        names[7] = "p"
    while names[-1] == "":
        names.pop()
    node = helper.make_node("LSTM", names, ["y", "yh", "yc"], hidden_size=H, direction=direction)
    return node, inputs, consts


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("output", ["y", "yh", "yc"])
def test_lstm_gradient(direction, output):
    node, inputs, consts = lstm_case(direction)
    check_graph([node], inputs, output, constants=consts, opset=14)


@pytest.mark.parametrize("opset", [9, 13, 22])
def test_lstm_without_states_bias_or_peepholes(opset):
    node, inputs, consts = lstm_case("forward", False, False, False)
    check_graph([node], inputs, "y", constants=consts, opset=opset)


def test_lstm_weights_get_gradients_too():
    node, inputs, consts = lstm_case("forward")
    inputs |= {"w": consts.pop("w"), "r": consts.pop("r")}
    node.input[1], node.input[2] = "w", "r"
    check_graph([node], inputs, "yh", constants=consts, opset=14)


def test_step_inputs_are_slices_whose_gradients_join_in_one_concat():
    """Each step's input was a Gather from the projected sequence [T, N, 4H], whose gradient
    is a ScatterElements into a zero tensor of that whole size, T of them then summed:
    quadratic in T (timm's sequencer2d_s: 27% of its gradient call, and 9% more in the
    Sum). As Slices that tile it, their gradients join in one Concat, and the gate
    activation of i, o and f is one node a step."""
    from igcli.autodiff.driver import build_gradient_model

    node, inputs, consts = lstm_case("bidirectional", with_peepholes=False, steps=12)
    check_graph([node], inputs, "y", constants=consts, opset=17)
    f32 = {k: v.astype(np.float32) for k, v in inputs.items()}
    model = make_model([node], f32, "y", 17, {k: v.astype(np.float32) for k, v in consts.items()})
    ops = [n.op_type for n in build_gradient_model(model, "x", "y").graph.node]
    assert "ScatterElements" not in ops and "Pad" not in ops
    assert ops.count("Sigmoid") == 2 * 12  # one per step and direction, for i, o and f


@pytest.mark.parametrize(
    "attrs, dynamic, reason",
    [
        ({"clip": 3.0}, False, "clip"),
        ({"activations": ["Gelu", "Tanh", "Tanh"]}, False, "activations"),  # not in the spec
        ({}, True, "unknown length"),
    ],
)
def test_lstm_configurations_that_are_not_unrolled_block(attrs, dynamic, reason):
    node, inputs, consts = lstm_case("forward", with_states=False)
    for k, v in attrs.items():
        node.attribute.append(helper.make_attribute(k, v))
    x = inputs["x"].astype(np.float32)
    consts32 = {k: v.astype(np.float32) for k, v in consts.items()}
    model = make_model([node], {"x": x}, "y", 14, consts32, dynamic=dynamic)
    blocked = blocking_ops(model, "x", "y")
    assert len(blocked) == 1 and blocked[0].startswith("LSTM") and reason in blocked[0], blocked


# -- GRU and RNN: unrolled the same way -------------------------------------------------------
def gru_or_rnn_case(op, direction, with_state=True, with_bias=True, **attrs):
    d = 2 if direction == "bidirectional" else 1
    gates = 3 if op == "GRU" else 1
    inputs = {"x": rng.standard_normal((T, N, I))}
    consts = {"w": rng.standard_normal((d, gates * H, I)),
              "r": rng.standard_normal((d, gates * H, H))}  # fmt: skip
    names = ["x", "w", "r", "", "", ""]
    if with_bias:
        consts["b"] = rng.standard_normal((d, 2 * gates * H))
        names[3] = "b"
    if with_state:
        inputs["h0"] = rng.standard_normal((d, N, H))
        names[5] = "h0"
    while names[-1] == "":
        names.pop()
    node = helper.make_node(op, names, ["y", "yh"], hidden_size=H, direction=direction, **attrs)
    return node, inputs, consts


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("output", ["y", "yh"])
@pytest.mark.parametrize("op, attrs", [("GRU", {}), ("GRU", {"linear_before_reset": 1}),
                                       ("RNN", {})])  # fmt: skip
def test_gru_and_rnn_gradient(op, attrs, direction, output):
    node, inputs, consts = gru_or_rnn_case(op, direction, **attrs)
    check_graph([node], inputs, output, constants=consts, opset=14)


@pytest.mark.parametrize("op", ["GRU", "RNN"])
@pytest.mark.parametrize("opset", [9, 22])
def test_gru_and_rnn_without_state_or_bias(op, opset):
    node, inputs, consts = gru_or_rnn_case(op, "forward", False, False)
    check_graph([node], inputs, "y", constants=consts, opset=opset)


def test_gru_weights_get_gradients_too():
    node, inputs, consts = gru_or_rnn_case("GRU", "forward", linear_before_reset=1)
    inputs |= {"w": consts.pop("w"), "r": consts.pop("r"), "b": consts.pop("b")}
    node.input[1], node.input[2], node.input[3] = "w", "r", "b"
    check_graph([node], inputs, "yh", constants=consts, opset=14)


@pytest.mark.parametrize("op", ["GRU", "RNN"])
def test_gru_and_rnn_configurations_that_are_not_unrolled_block(op):
    node, inputs, consts = gru_or_rnn_case(op, "forward", with_state=False)
    node.attribute.append(helper.make_attribute("clip", 3.0))
    x = inputs["x"].astype(np.float32)
    consts32 = {k: v.astype(np.float32) for k, v in consts.items()}
    model = make_model([node], {"x": x}, "y", 14, consts32)
    blocked = blocking_ops(model, "x", "y")
    assert len(blocked) == 1 and blocked[0].startswith(op) and "clip" in blocked[0], blocked


# -- activations other than the defaults (torch's nn.RNN(nonlinearity="relu") writes Relu) --------
def _kernel_check(node, inputs, consts, output):
    """The unrolled graph's output against ONNX Runtime's own LSTM/GRU/RNN kernel, and its
    gradient against central differences of that kernel (float32, random directions): the
    reference evaluator knows no activation but Tanh."""
    import onnxruntime as ort

    from igcli.autodiff import GRAD, SEED, build_gradient_model

    x = {k: v.astype(np.float32) for k, v in inputs.items()}
    model = make_model([node], x, output, 14, {k: v.astype(np.float32) for k, v in consts.items()})
    kernel = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    graph = build_gradient_model(model, "x", output)
    assert not any(n.op_type == node.op_type for n in graph.graph.node)
    unrolled = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    y = kernel.run([output], x)[0]
    seed = rng.standard_normal(y.shape).astype(np.float32)
    mine, g = unrolled.run([output, GRAD], {**x, SEED: seed})
    np.testing.assert_allclose(mine, y, rtol=1e-5, atol=1e-5)

    def f(z):
        return float(np.sum(seed * kernel.run([output], {**x, "x": z})[0], dtype=np.float64))

    for _ in range(3):
        v = rng.standard_normal(x["x"].shape)
        h = 1e-3
        fd = (f((x["x"] + h * v).astype(np.float32)) - f((x["x"] - h * v).astype(np.float32))) / (
            2 * h
        )
        assert abs(fd - float(np.sum(g * v))) <= 2e-3 * np.linalg.norm(g) * np.linalg.norm(v)


@pytest.mark.parametrize(
    "op, direction, activations, alpha, beta",
    [
        ("RNN", "forward", ["Relu"], [], []),
        ("RNN", "bidirectional", ["LeakyRelu", "Relu"], [0.2], []),
        ("GRU", "forward", ["HardSigmoid", "Softsign"], [0.3], [0.4]),
        ("GRU", "reverse", ["Sigmoid", "ScaledTanh"], [1.5], [0.7]),
        ("LSTM", "bidirectional", ["HardSigmoid", "Elu", "Softplus", "Sigmoid", "Affine", "Tanh"],
         [0.25, 0.8, 0.9], [0.45, 0.1]),
        ("RNN", "forward", ["ThresholdedRelu"], [0.1], []),
    ],
)  # fmt: skip
def test_other_activations_are_unrolled(op, direction, activations, alpha, beta):
    attrs = {"activations": activations}
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    if op == "LSTM":
        node, inputs, consts = lstm_case(direction, with_peepholes=False)
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    else:
        node, inputs, consts = gru_or_rnn_case(op, direction, **attrs)
    _kernel_check(node, inputs, consts, "y")


def test_a_float16_lstm_gradient_graph_loads_without_crashing_onnx_runtime(tmp_path):
    """A float16 bidirectional LSTM's gradient graph holds an outer product as
    Transpose(perm=[1, 2, 0]) and MatMul with a 2-D constant: ONNX Runtime's
    MatmulTransposeFusion left the graph stale and NchwcTransformer segfaulted on it, so
    `igcli explain` died with exit 139, no line and no report (model.make_session now
    leaves that fusion out on float16 graphs). Run in a child: a crash must fail the test,
    not end the suite."""
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, numpy_helper

    half = np.float16
    consts = {
        "s": np.array([4, 1, 4], np.int64), "s2": np.array([1, 24], np.int64),
        "w": rng.standard_normal((2, 12, 4)).astype(half),
        "r": rng.standard_normal((2, 12, 3)).astype(half),
        "b": rng.standard_normal((2, 24)).astype(half),
        "w2": rng.standard_normal((24, 4)).astype(half),
    }  # fmt: skip
    nodes = [
        helper.make_node("Reshape", ["x", "s"], ["xs"]),
        helper.make_node(
            "LSTM", ["xs", "w", "r", "b"], ["y", "yh"], direction="bidirectional", hidden_size=3
        ),  # fmt: skip
        helper.make_node("Reshape", ["y", "s2"], ["f"]),
        helper.make_node("MatMul", ["f", "w2"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "lstm16", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT16, [1, 4])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "lstm16.onnx")
    np.save(tmp_path / "x.npy", rng.standard_normal((1, 16)).astype(half))
    run = subprocess.run(
        [sys.executable, "-m", "igcli", "explain", str(tmp_path / "lstm16.onnx"),
         str(tmp_path / "x.npy"), "--gradients", "graph", "--no-cache", "--steps", "8",
         "--no-heatmaps", "--out", str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
