"""Control flow: gradients through If branches that read outer tensors, and refusals.

A branch reads `x` from the enclosing graph without naming it as an input of the If node; the
reverse walk must follow that edge (it once did not, and returned zeros). An If whose
condition is a constant is replaced by the branch it takes; any other If is differentiated by
an If on the same condition whose branches recompute their forward values. Loop and Scan on a
differentiable path refuse, so igcli falls back to finite differences.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from igcli.autodiff import blocking_ops, build_gradient_model
from igcli.errors import UnsupportedOpsError
from tests.autodiff.checker import check_graph, make_model

rng = np.random.default_rng(11)

# Ops checked here rather than in a rule module's CASES (test_coverage reads this).
GRAPH_CHECKED_OPS = ("If",)


def r(*shape):
    return rng.uniform(-2.0, 2.0, size=shape)


def const(name, value):
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(np.asarray(value))
    )


def branch(name, nodes, outputs):
    """A branch body with no inputs and untyped outputs (ONNX Runtime takes them; the same
    test graph then serves float64 and float32)."""
    return helper.make_graph(nodes, name, [], [onnx.ValueInfoProto(name=o) for o in outputs])


# Float constants the branches read from outside: initializers, made float32 for ORT's check.
CONSTS = {"two": np.asarray(2.0), "zero": np.asarray(0.0), "k": np.full((2, 3), 0.5)}


def mul_or_neg(cond="cond", x="x", out="b"):
    """The issue's example: If(cond, then: x * 2, else: -x), x read from the outer scope."""
    then = branch("then", [helper.make_node("Mul", [x, "two"], ["t"])], ["t"])
    other = branch("else", [helper.make_node("Neg", [x], ["n"])], ["n"])
    return helper.make_node("If", [cond], [out], then_branch=then, else_branch=other)


def sum_positive(x="x", cond="cond"):
    """cond = sum(x) > 0: a condition that depends on x's values (no gradient of its own)."""
    return [
        helper.make_node("ReduceSum", [x], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], [cond]),
    ]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_if_reading_x_from_outside_data_dependent_condition(sign):
    """The 3-node model of issue 7 with a condition computed from x: both branches."""
    x = np.abs(r(2, 3)) * sign
    nodes = [*sum_positive(), mul_or_neg(), helper.make_node("Tanh", ["b"], ["y"])]
    check_graph(nodes, {"x": x}, "y", opset=13, constants=CONSTS)


@pytest.mark.parametrize("flag", [True, False])
def test_if_on_a_fed_boolean(flag):
    nodes = [mul_or_neg(), helper.make_node("Tanh", ["b"], ["y"])]
    check_graph(nodes, {"x": r(2, 3), "cond": np.asarray(flag)}, "y", opset=17, constants=CONSTS)


def test_if_gradient_is_never_silent_zeros():
    """What issue 7 saw: all-zero gradients. Now the gradient is 2 (1 - tanh(2x)^2)."""
    x = np.full((1, 3), 0.3, np.float32)
    nodes = [mul_or_neg(), helper.make_node("Tanh", ["b"], ["y"])]
    model = make_model(nodes, {"x": x, "cond": np.asarray(True)}, "y", 17,
                       {"two": np.float32(2.0)})  # fmt: skip
    assert blocking_ops(model, "x", "y") == []
    grad_model = build_gradient_model(model, "x", "y")
    import onnxruntime as ort

    sess = ort.InferenceSession(grad_model.SerializeToString())
    feeds = {"x": x, "cond": np.asarray(True), "igcli_seed": np.ones((1, 3), np.float32)}
    grad = sess.run(["igcli_grad"], feeds)[0]
    np.testing.assert_allclose(grad, 2 * (1 - np.tanh(0.6) ** 2), rtol=1e-5)


@pytest.mark.parametrize("flag", [True, False])
def test_if_on_a_constant_is_inlined(flag):
    """A constant condition: the taken branch replaces the If; no If is left to run."""
    nodes = [const("cond", np.asarray(flag)), mul_or_neg(),
             helper.make_node("Tanh", ["b"], ["y"])]  # fmt: skip
    check_graph(nodes, {"x": r(2, 3)}, "y", opset=11, constants=CONSTS)
    consts32 = {k: v.astype(np.float32) for k, v in CONSTS.items()}
    model = make_model(nodes, {"x": r(2, 3).astype(np.float32)}, "y", 11, consts32)
    grad_model = build_gradient_model(model, "x", "y")
    assert "If" not in {n.op_type for n in grad_model.graph.node}


def test_nested_if_with_captures_two_levels_out():
    """The inner If reads x (two scopes out) and w (from the outer branch); the outer else
    branch ignores x: its gradient is zeros."""
    inner = mul_or_neg(cond="c2", x="w", out="inner")
    then = branch("outer_then", [helper.make_node("Mul", ["x", "x"], ["w"]),
                                 helper.make_node("Not", ["cond"], ["c2"]), inner,
                                 helper.make_node("Add", ["inner", "x"], ["o1"])],
                  ["o1"])  # fmt: skip
    other = branch("outer_else", [helper.make_node("Identity", ["k"], ["kk"])], ["kk"])
    nodes = [
        helper.make_node("If", ["cond"], ["b"], then_branch=then, else_branch=other),
        helper.make_node("Mul", ["b", "x"], ["y"]),
    ]
    for flag in (True, False):
        inputs = {"x": r(2, 3), "cond": np.asarray(flag)}
        check_graph(nodes, inputs, "y", opset=13, constants=CONSTS)


def test_if_with_two_outputs_one_without_gradient():
    """The then branch passes x through and computes its second output from `a` alone (with
    an op that has no rule: off the path, it must not block)."""
    then = branch("then", [helper.make_node("Identity", ["x"], ["x_copy"]),
                           helper.make_node("Sin", ["a"], ["sin_a"])],
                  ["x_copy", "sin_a"])  # fmt: skip
    other = branch("else", [helper.make_node("Sigmoid", ["x"], ["s"]),
                            helper.make_node("Mul", ["x", "a"], ["xa"])], ["s", "xa"])  # fmt: skip
    nodes = [
        helper.make_node("If", ["cond"], ["p", "q"], then_branch=then, else_branch=other),
        helper.make_node("Mul", ["p", "p"], ["y0"]),
        helper.make_node("Add", ["y0", "q"], ["y1"]),
        # shape inference cannot follow untyped branches: restate type and shape
        helper.make_node("CastLike", ["y1", "x"], ["y2"]),
        helper.make_node("Reshape", ["y2", "shape"], ["y"]),
    ]
    for flag in (True, False):
        inputs = {"x": r(2, 3), "a": r(2, 3), "cond": np.asarray(flag)}
        consts = {"shape": np.asarray([2, 3], np.int64)}
        check_graph(nodes, inputs, "y", opset=15, wrt=["x"], constants=consts)


def test_op_without_rule_inside_a_branch_blocks_naming_it():
    then = branch("then", [helper.make_node("Unique", ["x"], ["t"])], ["t"])
    other = branch("else", [helper.make_node("Neg", ["x"], ["n"])], ["n"])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    model = make_model(nodes, {"x": r(3).astype(np.float32), "cond": np.asarray(True)}, "y", 13)
    with pytest.raises(UnsupportedOpsError) as info:
        build_gradient_model(model, "x", "y")
    assert info.value.ops == ["Unique (in If then_branch)"]


def _loop(body_nodes, carried="x"):
    """y = Loop(3 times) over a body carrying one float tensor, reading `w` from outside."""
    body = helper.make_graph(
        body_nodes,
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    return [
        const("trips", np.int64(3)),
        const("go", np.asarray(True)),
        helper.make_node("Loop", ["trips", "go", carried], ["y"], body=body),
    ]


def _blockers(nodes, inputs, output="y", opset=13):
    return blocking_ops(make_model(nodes, inputs, output, opset), "x", output)


def test_loop_carrying_x_refuses():
    body = [helper.make_node("Identity", ["c_in"], ["c_out"]),
            helper.make_node("Mul", ["v_in", "v_in"], ["v_out"])]  # fmt: skip
    assert _blockers(_loop(body), {"x": r(3).astype(np.float32)}) == [
        "Loop (control flow with a differentiable value inside)"
    ]


def test_loop_reading_x_from_outside_refuses():
    """x enters the body only as a capture (the carried value starts as a constant): still a
    differentiable path."""
    body = [helper.make_node("Identity", ["c_in"], ["c_out"]),
            helper.make_node("Add", ["v_in", "x"], ["v_out"])]  # fmt: skip
    nodes = [const("w0", np.zeros(3, np.float32)), *_loop(body, carried="w0")]
    assert _blockers(nodes, {"x": r(3).astype(np.float32)}) == [
        "Loop (control flow with a differentiable value inside)"
    ]


def test_scan_on_the_path_refuses():
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "row"], ["acc_out"]),
         helper.make_node("Identity", ["acc_out"], ["row_out"])],
        "scan_body",
        [helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("row", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("row_out", TensorProto.FLOAT, [3])],
    )  # fmt: skip
    nodes = [
        const("acc0", np.zeros(3, np.float32)),
        helper.make_node("Scan", ["acc0", "x"], ["y", "rows"], body=body, num_scan_inputs=1),
    ]
    assert _blockers(nodes, {"x": r(2, 3).astype(np.float32)}) == [
        "Scan (control flow with a differentiable value inside)"
    ]


def test_integer_loop_off_the_path_does_not_block():
    """A Loop that computes only integers (a shape, say) carries no gradient."""
    body = [helper.make_node("Identity", ["c_in"], ["c_out"]),
            const("one", np.int64(1)),
            helper.make_node("Add", ["v_in", "one"], ["v_out"])]  # fmt: skip
    body_graph = _loop(body)[-1].attribute[0].g
    for vi in [*body_graph.input[2:], *body_graph.output[1:]]:
        vi.type.tensor_type.elem_type = TensorProto.INT64
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        const("trips", np.int64(3)),
        const("go", np.asarray(True)),
        helper.make_node("Loop", ["trips", "go", "shape"], ["new_shape"], body=body_graph),
        helper.make_node("ReduceProd", ["new_shape"], ["count"], keepdims=0),
        helper.make_node("CastLike", ["count", "x"], ["total"]),
        helper.make_node("Mul", ["x", "total"], ["y1"]),
        helper.make_node("Reshape", ["y1", "shape23"], ["y"]),  # a known output shape
    ]
    check_graph(nodes, {"x": r(2, 3)}, "y", opset=15,
                constants={"shape23": np.asarray([2, 3], np.int64)})  # fmt: skip


def test_capture_analysis_sees_the_if_as_reading_x():
    from igcli.autodiff.subgraphs import node_inputs

    assert node_inputs(mul_or_neg()) == ["cond", "two", "x"]
