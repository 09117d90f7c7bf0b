"""The pre-pass (optimize.prepare) and the shape annotation (optimize.annotate).

A folded model must compute what the original computes (float64 through onnx's reference
evaluator, to 1e-12) and its gradient graph must still match finite differences; what must
not fold (shared tensors, outputs, training-mode or runtime statistics, constants that are
not per channel) stays as it was.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from igcli.autodiff import GRAD, SEED, build_gradient_model
from igcli.autodiff.optimize import prepare
from tests.autodiff.checker import check_graph, make_model

rng = np.random.default_rng(3)


def r(*shape, low=-1.0, high=1.0):
    return rng.uniform(low, high, size=shape)


def bn_params(c: int, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}_s": r(c, low=0.5, high=1.5), f"{prefix}_b": r(c),
            f"{prefix}_m": r(c), f"{prefix}_v": r(c, low=0.5, high=2.0)}  # fmt: skip


def bn(x: str, y: str, prefix: str, **attrs) -> onnx.NodeProto:
    names = [f"{prefix}_{k}" for k in "sbmv"]
    return helper.make_node("BatchNormalization", [x, *names], [y], epsilon=1e-3, **attrs)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def same_function(model: onnx.ModelProto, feeds: dict, output: str = "y") -> onnx.ModelProto:
    """prepare(model) and model agree in float64; returns the prepared model."""
    prepared = prepare(model, next(iter(feeds)), output)
    onnx.checker.check_model(prepared)
    want = ReferenceEvaluator(model).run([output], feeds)[0]
    got = ReferenceEvaluator(prepared).run([output], feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    return prepared


def conv_chain(opset: int = 17):
    """Conv -> BN -> Mul -> Add -> Sub -> Div (per-channel constants of several spellings)."""
    consts = {"w": r(4, 3, 3, 3), "cb": r(4), **bn_params(4, "bn"), "m": r(1, 4, 1, 1),
              "a": r(4, 1, 1), "s": r(4, 1, 1), "d": r(1, 4, 1, 1, low=0.5, high=2.0)}  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w", "cb"], ["c"], pads=[1, 1, 1, 1]),
        bn("c", "n", "bn"),
        helper.make_node("Mul", ["m", "n"], ["p"]),  # constant first
        helper.make_node("Add", ["p", "a"], ["q"]),
        helper.make_node("Sub", ["q", "s"], ["t"]),
        helper.make_node("Div", ["t", "d"], ["y"]),
    ]
    return make_model(nodes, {"x": r(2, 3, 5, 5)}, "y", opset, consts), {"x": r(2, 3, 5, 5)}


@pytest.mark.parametrize("opset", [9, 17])
def test_conv_and_affine_chain_fold_into_one_conv(opset):
    model, feeds = conv_chain(opset)
    if opset < 15:  # the reference BatchNormalization-9 applies momentum: compare in ORT
        prepared = prepare(model, "x", "y")
        x = feeds["x"].astype(np.float32)
        want = _ort(to_float32(model)).run(["y"], {"x": x})[0]
        got = _ort(to_float32(prepared)).run(["y"], {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:
        prepared = same_function(model, feeds)
    assert ops(prepared) == ["Conv"]


def test_conv_without_bias_and_batchnorm_fold():
    consts = {"w": r(4, 3, 1, 1), **bn_params(4, "bn")}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), bn("c", "y", "bn")]
    feeds = {"x": r(2, 3, 4, 4)}
    assert ops(same_function(make_model(nodes, feeds, "y", 17, consts), feeds)) == ["Conv"]


def test_grouped_and_1d_convs_fold():
    consts = {"w": r(4, 2, 3), **bn_params(4, "bn")}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=2), bn("c", "y", "bn")]
    feeds = {"x": r(2, 4, 6)}
    assert ops(same_function(make_model(nodes, feeds, "y", 17, consts), feeds)) == ["Conv"]


def test_shared_weights_fold_separately():
    consts = {"w": r(4, 3, 3, 3), **bn_params(4, "b1"), **bn_params(4, "b2")}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"]),
        helper.make_node("Conv", ["x", "w"], ["c2"]),
        bn("c1", "n1", "b1"),
        bn("c2", "n2", "b2"),
        helper.make_node("Add", ["n1", "n2"], ["y"]),
    ]
    feeds = {"x": r(2, 3, 5, 5)}
    assert ops(same_function(make_model(nodes, feeds, "y", 17, consts), feeds)) == [
        "Conv", "Conv", "Add"]  # fmt: skip


@pytest.mark.parametrize(
    "channels, shape, want",
    [(16, (2, 16, 3, 3), "Conv"), (4, (2, 4, 3, 3), "BatchNormalization"),
     (16, (2, 16), "BatchNormalization"), (16, (2, 16, 5), "BatchNormalization")],
)  # fmt: skip
def test_standalone_batchnorm_and_its_products_become_one_affine(channels, shape, want):
    """A depthwise Conv for float32 images of 16k channels, else one BatchNormalization;
    float64 always keeps a BatchNormalization (ONNX Runtime has no double Conv)."""
    consts = {**bn_params(channels, "bn"), "m": r(channels, *[1] * (len(shape) - 2)),
              "a": r(1, channels, *[1] * (len(shape) - 2))}  # fmt: skip
    nodes = [
        helper.make_node("Relu", ["x"], ["h"]),
        bn("h", "n", "bn"),
        helper.make_node("Mul", ["n", "m"], ["p"]),
        helper.make_node("Add", ["a", "p"], ["y"]),
    ]
    feeds = {"x": r(*shape)}
    model64 = make_model(nodes, feeds, "y", 17, consts)
    assert ops(same_function(model64, feeds)) == ["Relu", "BatchNormalization"]
    model32 = to_float32(model64)
    prepared = prepare(model32, "x", "y")
    assert ops(prepared) == ["Relu", want]
    x = feeds["x"].astype(np.float32)
    want_y = _ort(model32).run(["y"], {"x": x})[0]
    got = _ort(prepared).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(got, want_y, rtol=1e-5, atol=1e-6)


def test_a_lone_batchnorm_that_gains_nothing_stays():
    feeds = {"x": r(2, 4, 3, 3)}
    model = make_model([bn("x", "y", "bn")], feeds, "y", 17, bn_params(4, "bn"))
    assert ops(prepare(to_float32(model), "x", "y")) == ["BatchNormalization"]
    assert prepare(model, "x", "y").graph.node[0].input[1] == "bn_s"  # untouched


def test_what_must_not_fold_stays():
    consts = {"w": r(4, 3, 3, 3), **bn_params(4, "bn"), "row": r(5), "full": r(1, 4, 3, 3),
              "s": r(4, 1, 1)}  # fmt: skip
    feeds = {"x": r(2, 3, 5, 5)}
    cases = {  # conv output used twice; a constant per column or per position; c - x
        "fanout": [helper.make_node("Conv", ["x", "w"], ["c"]), bn("c", "n", "bn"),
                   helper.make_node("Add", ["c", "n"], ["y"])],
        "per-column": [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                       helper.make_node("Mul", ["c", "row"], ["y"])],
        "per-position": [helper.make_node("Conv", ["x", "w"], ["c"]),
                         helper.make_node("Mul", ["c", "full"], ["y"])],
        "constant-minus": [helper.make_node("Conv", ["x", "w"], ["c"]),
                           helper.make_node("Sub", ["s", "c"], ["y"])],
    }  # fmt: skip
    for name, nodes in cases.items():
        model = make_model(nodes, feeds, "y", 17, consts)
        assert ops(same_function(model, feeds)) == ops(model), name


def test_explained_output_and_graph_outputs_are_kept():
    consts = {"w": r(4, 3, 3, 3), **bn_params(4, "bn")}
    feeds = {"x": r(2, 3, 5, 5)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), bn("c", "y", "bn")]
    model = make_model(nodes, feeds, "y", 17, consts)
    assert ops(prepare(model, "x", "c")) == ["Conv"]  # the Conv output is explained itself
    model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.DOUBLE, None))
    assert ops(prepare(model, "x", "y")) == ["Conv", "BatchNormalization"]


def test_batchnorm_with_runtime_statistics_or_training_mode_stays():
    consts = {"w": r(4, 3, 3, 3), **bn_params(4, "bn")}
    del consts["bn_v"]
    feeds = {"x": r(2, 3, 5, 5), "bn_v": r(4, low=0.5, high=1.0)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), bn("c", "y", "bn")]
    model = make_model(nodes, feeds, "y", 17, consts)
    assert ops(prepare(model, "x", "y")) == ["Conv", "BatchNormalization"]
    consts["bn_v"] = feeds.pop("bn_v")
    node = bn("c", "y", "bn", training_mode=1)
    node.output.extend(["rm", "rv"])
    model = make_model([helper.make_node("Conv", ["x", "w"], ["c"]), node], feeds, "y", 17,
                       consts)  # fmt: skip
    assert ops(prepare(model, "x", "y")) == ["Conv", "BatchNormalization"]


def test_dead_nodes_and_initializer_inputs_go_real_inputs_stay():
    consts = {"w": r(4, 3, 3, 3), "unused": r(3)}
    feeds = {"x": r(2, 3, 5, 5), "z": r(2, 3)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Neg", ["z"], ["nz"])]
    model = make_model(nodes, feeds, "y", 17, consts)
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.DOUBLE, [4, 3, 3, 3]))
    prepared = prepare(model, "x", "y")
    assert ops(prepared) == ["Conv"]
    assert [i.name for i in prepared.graph.input] == ["x", "z"]  # w is a constant now
    assert [i.name for i in prepared.graph.initializer] == ["w"]


def test_constants_made_by_shape_ops_fold():
    """light_densenet121 spells its BN scale as Unsqueeze(initializer), opset 9 style."""
    consts = {"w": r(4, 3, 1, 1), "m": r(4), "a": r(4)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Unsqueeze", ["m"], ["m3"], axes=[1, 2]),
        helper.make_node("Unsqueeze", ["a"], ["a3"], axes=[1, 2]),
        helper.make_node("Mul", ["c", "m3"], ["p"]),
        helper.make_node("Add", ["p", "a3"], ["y"]),
    ]
    feeds = {"x": r(2, 3, 4, 4)}
    model = make_model(nodes, feeds, "y", 11, consts)
    assert ops(same_function(model, feeds)) == ["Conv"]


# -- gradients through folded graphs (the driver runs the pre-pass) ------------------------------
def test_gradient_through_folded_conv_batchnorm_relu():
    check_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
         bn("c", "n", "bn"), helper.make_node("Relu", ["n"], ["y"])],
        {"x": r(2, 3, 6, 6)}, "y",
        constants={"w": r(16, 3, 3, 3), **bn_params(16, "bn")},
    )  # fmt: skip


def test_gradient_through_standalone_affine_and_relu():
    """float32 in ONNX Runtime takes the depthwise-Conv affine and the Conv-based ReLU mask."""
    check_graph(
        [helper.make_node("Concat", ["x", "x"], ["h"], axis=1), bn("h", "n", "bn"),
         helper.make_node("Relu", ["n"], ["y"])],
        {"x": r(2, 8, 4, 4)}, "y", constants=bn_params(16, "bn"),
    )  # fmt: skip


# -- helpers -------------------------------------------------------------------------------------
def to_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.data_type == TensorProto.DOUBLE:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32),
                                                  init.name))  # fmt: skip
    for vi in [*out.graph.input, *out.graph.output, *out.graph.value_info]:
        if vi.type.tensor_type.elem_type == TensorProto.DOUBLE:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    return out


def _ort(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, ["CPUExecutionProvider"])


# -- annotate -----------------------------------------------------------------------------------
def test_gradient_tensors_carry_their_shapes():
    """Reverse-pass tensors get value_info with the symbolic batch of their forward tensor,
    also across Reshape(x, Shape(y)), where ONNX Runtime's own inference loses it."""
    consts = {"w": r(16, 3, 3, 3), "shape": np.array([0, -1], np.int64)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["y"]),
    ]
    model = to_float32(make_model(nodes, {"x": r(2, 3, 4, 4)}, "y", 13, consts, dynamic=True))
    grad = build_gradient_model(model, "x", "y")
    shapes = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in grad.graph.value_info}  # fmt: skip
    reshaped = next(n.output[0] for n in grad.graph.node
                    if n.op_type == "Reshape" and n.output[0].startswith("igcli_grad"))  # fmt: skip
    assert shapes[reshaped] == ["N", 16, 4, 4]
    x = r(3, 3, 4, 4).astype(np.float32)
    y = _ort(model).run(["y"], {"x": x})[0]
    seed = r(*y.shape).astype(np.float32)
    got = _ort(grad).run([GRAD], {"x": x, SEED: seed})[0]
    assert got.shape == x.shape and np.isfinite(got).all()


# -- Gather of one constant index ---------------------------------------------------------------
@pytest.mark.parametrize("opset", [9, 11, 13, 17])
@pytest.mark.parametrize("index", [0, 2, -1, -2])
def test_gather_of_one_index_becomes_slice_and_squeeze(opset, index):
    consts = {"i": np.array(index, np.int64)}
    nodes = [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)]
    feeds = {"x": r(2, 3, 4)}
    prepared = same_function(make_model(nodes, feeds, "y", opset, consts), feeds)
    assert ops(prepared) == ["Slice", "Squeeze"]


def test_other_gathers_stay():
    feeds = {"x": r(2, 3, 4)}
    for name, index in {"list": np.array([0, 2], np.int64), "matrix": np.zeros((2, 2), np.int64)
                        }.items():  # fmt: skip
        model = make_model([helper.make_node("Gather", ["x", "i"], ["y"])], feeds, "y", 13,
                           {"i": index})  # fmt: skip
        assert ops(prepare(model, "x", "y")) == ["Gather"], name
    # integer data (shape arithmetic) is left to shape inference as it is
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i"], ["n"]),
             helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.DOUBLE),
             helper.make_node("Mul", ["x", "nf"], ["y"])]  # fmt: skip
    model = make_model(nodes, feeds, "y", 13, {"i": np.array(1, np.int64)})
    assert "Gather" in ops(prepare(model, "x", "y"))


@pytest.mark.parametrize("opset", [9, 17])
def test_gradient_through_gather_of_one_index(opset):
    check_graph([helper.make_node("Gather", ["x", "i"], ["y"], axis=0)], {"x": r(3, 2, 4)}, "y",
                opset=opset, constants={"i": np.array(1, np.int64)})  # fmt: skip


def test_unnamed_gathers_get_slices_of_their_own_names():
    """Exporters may leave nodes unnamed: two such Gathers once both became '/slice', and ONNX
    Runtime refused the model (two nodes with the same name)."""
    consts = {"i": np.array(0, np.int64), "j": np.array(2, np.int64)}
    nodes = [helper.make_node("Gather", ["x", "i"], ["a"], axis=1),
             helper.make_node("Gather", ["x", "j"], ["b"], axis=1),
             helper.make_node("Mul", ["a", "b"], ["y"])]  # fmt: skip
    feeds = {"x": r(2, 3, 4)}
    prepared = same_function(make_model(nodes, feeds, "y", 13, consts), feeds)
    names = [n.name for n in prepared.graph.node if n.name]
    assert len(names) == len(set(names)) == 4
    check_graph(nodes, feeds, "y", opset=13, constants=consts)


# -- Gather through a Transpose ----------------------------------------------------------------
def packed_qkv(opset: int, extra_reader: bool = False, perm=(3, 1, 2, 0, 4)):
    """torch's MultiheadAttention cutting q, k, v out of one projection [L, N, 3E]."""
    squeeze_axes = [3]
    consts = {"shape": np.array([0, 0, 3, 4], np.int64), "zero": np.array([0], np.int64),
              **{f"i{k}": np.array(k, np.int64) for k in range(3)}}  # fmt: skip
    if opset >= 13:
        consts["sq"] = np.array(squeeze_axes, np.int64)
        unsqueeze = helper.make_node("Unsqueeze", ["r", "zero"], ["u"])
        squeeze = helper.make_node("Squeeze", ["t", "sq"], ["s"])
    else:
        unsqueeze = helper.make_node("Unsqueeze", ["r"], ["u"], axes=[0])
        squeeze = helper.make_node("Squeeze", ["t"], ["s"], axes=squeeze_axes)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        unsqueeze,
        helper.make_node("Transpose", ["u"], ["t"], perm=list(perm)),
        squeeze,
        *[helper.make_node("Gather", ["s", f"i{k}"], [f"g{k}"], axis=0) for k in range(3)],
        helper.make_node("Mul", ["g0", "g1"], ["m"]),
        helper.make_node("Add", ["m", "g2"], ["y0"]),
    ]
    if extra_reader:
        nodes.append(helper.make_node("ReduceSum", ["t"], ["total"], keepdims=0))
        nodes.append(helper.make_node("Add", ["y0", "total"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["y0"], ["y"]))
    return nodes, consts


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_gathers_through_a_transpose_read_its_input(opset):
    nodes, consts = packed_qkv(opset)
    feeds = {"x": r(5, 2, 12)}
    prepared = same_function(make_model(nodes, feeds, "y", opset, consts), feeds)
    assert "Transpose" not in ops(prepared)
    check_graph(nodes, feeds, "y", opset=opset, constants=consts)


def test_a_transpose_with_other_readers_stays():
    nodes, consts = packed_qkv(17, extra_reader=True)
    feeds = {"x": r(5, 2, 12)}
    prepared = same_function(make_model(nodes, feeds, "y", 17, consts), feeds)
    assert ops(prepared).count("Transpose") == 1


def test_a_transpose_that_still_reorders_after_the_gather_stays():
    # (3, 2, 1, 0, 4): after taking one of the 3, N and L would still swap places
    nodes, consts = packed_qkv(17, perm=(3, 2, 1, 0, 4))
    feeds = {"x": r(5, 2, 12)}
    prepared = same_function(make_model(nodes, feeds, "y", 17, consts), feeds)
    assert ops(prepared).count("Transpose") == 1
    check_graph(nodes, feeds, "y", opset=17, constants=consts)


@pytest.mark.parametrize(("perm", "axis"), [((2, 0, 1), 0), ((1, 0, 2), 0), ((0, 2, 1), 2)])
def test_a_gather_straight_off_a_transpose(perm, axis):
    consts = {"i": np.array(-1, np.int64)}
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=list(perm)),
             helper.make_node("Gather", ["t", "i"], ["y"], axis=axis)]  # fmt: skip
    feeds = {"x": r(3, 4, 5)}
    left = [v - (v > perm[axis]) for v in perm if v != perm[axis]]
    prepared = same_function(make_model(nodes, feeds, "y", 17, consts), feeds)
    assert ("Transpose" in ops(prepared)) == (left != sorted(left))


# -- a never-decreasing activation before a max-pool ---------------------------------------------
def act_pool(act: str, pool: str = "MaxPool", act_attrs=None, **pool_attrs):
    if pool == "MaxPool":
        pool_attrs = {"kernel_shape": [2, 2], "strides": [2, 2], **pool_attrs}
    return [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node(act, ["c"], ["h"], **(act_attrs or {})),
            helper.make_node(pool, ["h"], ["y"], **pool_attrs)]  # fmt: skip


@pytest.mark.parametrize(
    ("act", "attrs"),
    [("Softplus", {}), ("Sigmoid", {}), ("Tanh", {}), ("Elu", {"alpha": 0.5}),
     ("Selu", {}), ("HardSigmoid", {}), ("Softsign", {}), ("Celu", {"alpha": 2.0}),
     ("Relu", {}), ("LeakyRelu", {"alpha": 0.1})],
)  # fmt: skip
@pytest.mark.parametrize("pool", ["MaxPool", "GlobalMaxPool"])
def test_an_activation_before_a_max_pool_runs_after_it(act, attrs, pool):
    opset = 13 if act == "Celu" else 11
    feeds = {"x": r(2, 3, 6, 6)}
    model = make_model(act_pool(act, pool, attrs), feeds, "y", opset, {"w": r(4, 3, 3, 3)})
    assert ops(same_function(model, feeds)) == ["Conv", pool, act]


def test_pools_with_padding_overlap_and_dilation_move_too():
    feeds = {"x": r(2, 3, 7, 7)}
    padded = act_pool("Softplus", kernel_shape=[3, 3], strides=[2, 1], pads=[1, 0, 1, 2])
    dilated = act_pool("Softplus", kernel_shape=[2, 3], dilations=[2, 2])
    for nodes in (padded, dilated):
        model = make_model(nodes, feeds, "y", 11, {"w": r(4, 3, 3, 3)})
        assert ops(same_function(model, feeds)) == ["Conv", "MaxPool", "Softplus"]


def test_activations_and_pools_that_must_not_swap_stay():
    feeds = {"x": r(2, 3, 6, 6)}
    w = {"w": r(4, 3, 3, 3)}
    cases = {
        "leaky relu with a negative slope": act_pool("LeakyRelu", act_attrs={"alpha": -0.5}),
        "hard swish dips below zero": act_pool("HardSwish"),
        "elu with a negative alpha": act_pool("Elu", act_attrs={"alpha": -0.5}),
        "ceil mode": act_pool("Softplus", ceil_mode=1),
        "same padding": act_pool("Softplus", auto_pad="SAME_UPPER"),
        "dilated over padding": act_pool("Sigmoid", dilations=[2, 2], pads=[1, 1, 1, 1]),
        "a pad as wide as the kernel": act_pool("Sigmoid", pads=[0, 2, 0, 0]),
        "an average": act_pool("Softplus", "AveragePool", kernel_shape=[2, 2]),
    }
    for why, nodes in cases.items():
        model = make_model(nodes, feeds, "y", 14, w)
        assert ops(prepare(model, "x", "y")) == [n.op_type for n in nodes], why
    # the activation's output also read elsewhere, or explained itself
    nodes = [*act_pool("Softplus"), helper.make_node("ReduceSum", ["h"], ["s"]),
             helper.make_node("Add", ["y", "s"], ["z"])]  # fmt: skip
    model = make_model(nodes, feeds, "z", 11, w)
    assert ops(prepare(model, "x", "z"))[:3] == ["Conv", "Softplus", "MaxPool"]
    model = make_model(act_pool("Softplus"), feeds, "y", 11, w)
    assert ops(prepare(model, "x", "h")) == ["Conv", "Softplus"]
    # a pool that also gives its indices
    nodes = act_pool("Softplus")
    nodes[-1].output.append("i")
    model = make_model(nodes, feeds, "y", 11, w)
    assert ops(prepare(model, "x", "y")) == ["Conv", "Softplus", "MaxPool"]


@pytest.mark.parametrize("act", ["Softplus", "Tanh", "Selu"])
def test_gradient_through_an_activation_moved_after_its_pool(act):
    check_graph(act_pool(act, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                {"x": r(2, 3, 7, 7)}, "y", opset=11, constants={"w": r(4, 3, 3, 3)})  # fmt: skip


def test_the_sample_digits_cnn_pools_before_its_softplus():
    """Its two Softplus run on the pooled tensors (a quarter of the values), which made its
    gradient calls a third cheaper (bench/bench_batch.py)."""
    from tests.test_cli import DIGITS

    model = onnx.load(DIGITS)
    names = (model.graph.input[0].name, model.graph.output[0].name)
    assert ops(prepare(model, *names)) == ["Conv", "MaxPool", "Softplus", "Conv", "MaxPool",
                                           "Softplus", "Flatten", "Gemm"]  # fmt: skip
