"""The reverse walk's path analysis: only float values reached from the input carry gradient.

Shape arithmetic (Shape, Gather on shapes, Range for anchor grids or position ids, Cast to
integers) never blocks a graph, whatever ops it uses: nothing differentiable flows through an
integer tensor.
"""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from igcli.autodiff import blocking_ops
from tests.autodiff.checker import check_graph, make_model

rng = np.random.default_rng(5)


def const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))


def anchor_grid():
    """YOLOv8-style: a Range over the input's width, cast to float, added to x."""
    return [
        helper.make_node("Shape", ["x"], ["shape"]),
        const("w_axis", np.asarray(2, np.int64)),
        helper.make_node("Gather", ["shape", "w_axis"], ["w"]),
        const("zero", np.asarray(0, np.int64)),
        const("one", np.asarray(1, np.int64)),
        helper.make_node("Range", ["zero", "w", "one"], ["cols"]),
        helper.make_node("CastLike", ["cols", "x"], ["grid"]),
        helper.make_node("Add", ["x", "grid"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "x"], ["y"]),
    ]


def test_range_on_shapes_does_not_block_and_gradients_are_right():
    check_graph(anchor_grid(), {"x": rng.uniform(-1, 1, (2, 3, 4))}, "y", opset=15, dynamic=True)


def test_ops_without_rules_on_integer_tensors_do_not_block():
    """An integer-only op without a rule (BitShift) between Shape and Reshape: off the path."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        const("by", np.asarray([0, 0], np.uint64)),
        helper.make_node("Cast", ["shape"], ["shape_u"], to=TensorProto.UINT64),
        helper.make_node("BitShift", ["shape_u", "by"], ["same_u"], direction="LEFT"),
        helper.make_node("Cast", ["same_u"], ["same"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "same"], ["y0"]),
        const("known", np.asarray([2, 3], np.int64)),  # shape inference cannot see through
        helper.make_node("Reshape", ["y0", "known"], ["y1"]),
        helper.make_node("Tanh", ["y1"], ["y"]),
    ]
    model = make_model(nodes, {"x": np.zeros((2, 3), np.float32)}, "y", 13)
    assert blocking_ops(model, "x", "y") == []
    check_graph(nodes, {"x": rng.uniform(-1, 1, (2, 3))}, "y", opset=13)


def test_cast_to_integer_cuts_the_path():
    """y = x * float(int(x)): the step factor carries no gradient, the other factor does; an
    op without a rule behind the cut (Unique on the integer side's float copy) still blocks,
    since it sits on a float path from x."""
    x = rng.uniform(0.2, 0.8, (2, 3)) + np.arange(6).reshape(2, 3)
    nodes = [
        helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
        helper.make_node("CastLike", ["xi", "x"], ["xf"]),
        helper.make_node("Mul", ["x", "xf"], ["y"]),
    ]
    check_graph(nodes, {"x": x}, "y", opset=15)
    blocked = [*nodes[:2], helper.make_node("Unique", ["x"], ["s"]),
               helper.make_node("Mul", ["s", "xf"], ["y"])]  # fmt: skip
    model = make_model(blocked, {"x": x.astype(np.float32)}, "y", 15)
    assert blocking_ops(model, "x", "y") == ["Unique"]


def test_unused_float_output_of_an_op_without_rule_does_not_block():
    """TopK's values output is float, but only its indices are used: not on the path."""
    nodes = [
        const("k", np.asarray([2], np.int64)),
        helper.make_node("TopK", ["x", "k"], ["vals", "idx"], axis=1),
        helper.make_node("GatherElements", ["x", "idx"], ["top"], axis=1),
        helper.make_node("Mul", ["top", "top"], ["y"]),
    ]
    x = rng.permutation(12).reshape(3, 4).astype(np.float64) / 7.0
    model = make_model(nodes, {"x": x.astype(np.float32)}, "y", 13)
    assert blocking_ops(model, "x", "y") == []
    check_graph(nodes, {"x": x}, "y", opset=13)


def test_float_output_reached_only_through_steps_refuses():
    """y = float(argmax(x)) * 1.5: zero gradient almost everywhere, yet F(x) != F(b). The
    graph would attribute nothing; refuse, naming the op that cuts the path."""
    nodes = [
        helper.make_node("ArgMax", ["x"], ["idx"], axis=1, keepdims=0),
        helper.make_node("Cast", ["idx"], ["idx_f"], to=TensorProto.FLOAT),
        const("k", np.asarray(1.5, np.float32)),
        helper.make_node("Mul", ["idx_f", "k"], ["y"]),
    ]
    model = make_model(nodes, {"x": np.zeros((2, 3), np.float32)}, "y", 13)
    assert blocking_ops(model, "x", "y") == [
        "ArgMax (the input reaches the output only through it, and it gives steps or integers)"
    ]


def test_the_grid_of_a_nearest_grid_sample_is_a_step_input():
    """y = GridSample(image, grid(x)) in nearest mode: each output is the pixel the grid
    rounds to, a step function of x. The graph gave zeros (100% completeness error); it
    refuses as for ArgMax. The same with bilinear sampling is differentiable."""
    image = rng.uniform(-1, 1, (1, 1, 4, 4)).astype(np.float32)
    nodes = [
        const("image", image),
        helper.make_node("Tanh", ["x"], ["grid"]),
        helper.make_node("GridSample", ["image", "grid"], ["y"], mode="nearest"),
    ]
    model = make_model(nodes, {"x": np.zeros((1, 2, 2, 2), np.float32)}, "y", 20)
    assert blocking_ops(model, "x", "y") == [
        "GridSample (the input reaches the output only through it, and it gives steps or integers)"
    ]
    nodes[-1] = helper.make_node("GridSample", ["image", "grid"], ["y"], mode="linear")
    linear = make_model(nodes, {"x": np.zeros((1, 2, 2, 2), np.float32)}, "y", 20)
    assert blocking_ops(linear, "x", "y") == []


def test_output_independent_of_the_input_has_a_zero_gradient():
    nodes = [helper.make_node("Neg", ["k"], ["y"])]
    check_graph(nodes, {"x": rng.uniform(-1, 1, (2, 3))}, "y", opset=13,
                constants={"k": np.ones((2, 3))})  # fmt: skip


# -- dims proven equal get one symbol (driver._same_batch_symbols) ------------------------------
def _heads_graph():
    """A ViT's attention shapes: [N, 4, 6] viewed as [-1, 6] rows, as heads [-1, 2, 3] by a
    shape read from Shape/Slice/Concat, a MatMul of two such, and back to [N, 4, 6]."""
    n = helper.make_node
    return [
        const("rows", np.array([-1, 6], np.int64)),
        n("Reshape", ["x", "rows"], ["flat"]),  # [N*4, 6]
        n("Shape", ["flat"], ["fshape"]),
        const("minus1", np.array([-1], np.int64)),
        const("last", np.array([-1], np.int64)),
        const("end", np.array([2**62], np.int64)),
        n("Slice", ["fshape", "last", "end"], ["width"]),  # [6]
        const("split", np.array([2, 3], np.int64)),
        n("Concat", ["minus1", "split"], ["heads_shape"], axis=0),  # [-1, 2, 3]: 6 / 6
        n("Reshape", ["flat", "heads_shape"], ["heads"]),  # [N*4, 2, 3]
        n("Transpose", ["heads"], ["heads_t"], perm=[0, 2, 1]),
        n("MatMul", ["heads", "heads_t"], ["scores"]),  # [N*4, 2, 2]
        n("MatMul", ["scores", "heads"], ["mixed"]),  # [N*4, 2, 3]
        const("back", np.array([-1, 4, 6], np.int64)),
        n("Reshape", ["mixed", "back"], ["y0"]),  # [N, 4, 6]
        n("Add", ["y0", "x"], ["y"]),
    ]


def test_reshaped_batch_dims_get_the_batch_symbol():
    from igcli.autodiff.driver import _tensor_infos

    model = make_model(_heads_graph(), {"x": rng.uniform(-1, 1, (2, 4, 6))}, "y", 17, dynamic=True)
    infos = _tensor_infos(model)
    assert infos["flat"].shape == ["N*4", 6]
    assert infos["heads"].shape == ["N*4", 2, 3]
    assert infos["scores"].shape == ["N*4", 2, 2]
    assert infos["y0"].shape == ["N", 4, 6]
    assert infos["y"].shape == ["N", 4, 6]


def test_with_the_batch_symbol_no_shapes_are_summed_at_run_time():
    """Equal shapes seen at build time: no runtime reduction (its Compress of axes) in the
    reverse pass, and the gradient is still right."""
    from igcli.autodiff import build_gradient_model

    x = rng.uniform(-1, 1, (2, 4, 6))
    model = make_model(_heads_graph(), {"x": x}, "y", 17, dynamic=True)
    grad = build_gradient_model(model, "x", "y")
    assert "Compress" not in {node.op_type for node in grad.graph.node}
    check_graph(_heads_graph(), {"x": x}, "y", opset=17, dynamic=True)


def test_symbols_not_proven_equal_stay_apart():
    """Two inputs of their own batch symbols: an Add of them may broadcast (one of them 1 at
    run time), so its output's dim is not named after either, and a Reshape of a tensor with
    two symbolic dims is not worked out."""
    from igcli.autodiff.driver import _tensor_infos

    n = helper.make_node
    nodes = [
        const("rows", np.array([-1, 3], np.int64)),
        n("Reshape", ["a", "rows"], ["ra"]),  # a: [A, B, 3] -> [A*B?, 3]: two symbols
        n("Add", ["a", "b"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["A", "B", 3]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, ["C", "B", 3])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, None)])  # fmt: skip
    infos = _tensor_infos(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert infos["ra"].shape[0] not in ("A", "B")
    assert infos["y"].shape[0] not in ("A", "C")
    assert infos["y"].shape[1] == "B"


def test_a_reshape_that_keeps_the_batch_symbol_gets_a_size_for_its_minus_one():
    """[N, 8, 2, 2] to [Shape(x)[0], 8, -1] (the legacy export of a patch embedding): the
    symbols cancel, so the -1 is 4; a ReLU after it keeps both."""
    from igcli.autodiff.driver import _tensor_infos

    n = helper.make_node
    nodes = [
        n("Shape", ["x"], ["shape"]),
        const("zero", np.array([0], np.int64)),
        n("Gather", ["shape", "zero"], ["batch"]),
        const("rest", np.array([8, -1], np.int64)),
        n("Concat", ["batch", "rest"], ["target"], axis=0),
        n("Reshape", ["x", "target"], ["patches"]),
        n("Relu", ["patches"], ["y"]),
    ]
    model = make_model(nodes, {"x": rng.uniform(-1, 1, (2, 8, 2, 2))}, "y", 17, dynamic=True)
    infos = _tensor_infos(model)
    assert infos["patches"].shape == ["N", 8, 4]
    assert infos["y"].shape == ["N", 8, 4]


def _three_slices(x: str, width: int) -> list:
    """q, k and v cut from one tensor (as a ViT's projection or a GRU step's gates are), each
    through its own op, then joined again."""
    nodes = []
    for k, op in enumerate(("Tanh", "Sigmoid", "Exp")):
        nodes += [
            const(f"s{k}", np.asarray([k * width], np.int64)),
            const(f"e{k}", np.asarray([(k + 1) * width], np.int64)),
            const(f"a{k}", np.asarray([1], np.int64)),
            helper.make_node("Slice", [x, f"s{k}", f"e{k}", f"a{k}"], [f"p{k}"]),
            helper.make_node(op, [f"p{k}"], [f"q{k}"]),
        ]
    return nodes


def _tiled_steps(steps: int) -> list:
    """`steps` times: x cut into three slices, each through its op, joined again (y: the last)."""
    nodes, last = [], "x"
    for step in range(steps):
        body = _three_slices(last, 2)
        for n in body:  # each step's own names
            n.output[0] = f"t{step}_{n.output[0]}"
            n.input[:] = [i if i == last else f"t{step}_{i}" for i in n.input]
        nodes += body + [
            helper.make_node("Concat", [f"t{step}_q{k}" for k in range(3)], [f"h{step}"], axis=1)
        ]
        last = f"h{step}"
    return [*nodes, helper.make_node("Identity", [last], ["y"])]


def test_slices_that_tile_a_tensor_get_one_concat_and_no_pads():
    """Their gradients are zero-padded pieces: one Concat of the pieces, where a Pad each and
    a Sum over full-size tensors would do, and the Pads are gone from the graph."""
    from igcli.autodiff.driver import build_gradient_model

    nodes = _three_slices("x", 2) + [
        helper.make_node("Mul", ["q0", "q1"], ["m"]),
        helper.make_node("Add", ["m", "q2"], ["y"]),
    ]
    x = rng.uniform(-1, 1, (3, 6))
    check_graph(nodes, {"x": x}, "y", opset=13)
    graph = build_gradient_model(make_model(nodes, {"x": x.astype(np.float32)}, "y", 13), "x", "y")
    ops = [n.op_type for n in graph.graph.node if n.name.startswith("igcli_grad")]
    assert ops.count("Concat") == 1 and "Pad" not in ops and "Sum" not in ops


def test_many_tiled_slices_each_get_a_concat_and_leave_no_pads():
    """A GRU unrolled over 800 steps cuts each step's gates from one tensor: each step's
    Concat once scanned every node emitted so far (a 12 s build for a model of 15 KB). The
    emitter now knows which Pads a node reads, so 200 such steps emit as many Concats and
    leave no Pad behind."""
    from igcli.autodiff.driver import build_gradient_model

    nodes = _tiled_steps(200)
    model = make_model(nodes, {"x": np.zeros((2, 6), np.float32)}, "y", 13)
    graph = build_gradient_model(model, "x", "y")
    ops = [n.op_type for n in graph.graph.node if n.name.startswith("igcli_grad")]
    assert ops.count("Concat") >= 200 and "Pad" not in ops


def test_small_constants_are_made_once_and_every_constant_is_read():
    """An unrolled LSTM's gradient asked for 57,673 small constants of 89 values, and 11,264
    constants of nodes dropped since were left in the graph: ONNX Runtime loaded each, warned
    about the unread ones and spent seconds finding the rest were shared. Each small value is
    one initializer now, and the graph keeps only those its nodes read (the dropped Pads of
    tiled slices leave their pads behind otherwise)."""
    from igcli.autodiff.driver import build_gradient_model

    x = rng.uniform(-1, 1, (2, 6))
    model = make_model(_tiled_steps(30), {"x": x.astype(np.float32)}, "y", 13)
    graph = build_gradient_model(model, "x", "y").graph
    ours = [i for i in graph.initializer if i.name.startswith("igcli_grad")]
    values = [(i.data_type, tuple(i.dims), i.raw_data) for i in ours if np.prod(i.dims) <= 16]
    assert len(values) == len(set(values)) and len(values) < 20
    read = {i for n in graph.node for i in n.input}
    assert not [i.name for i in graph.initializer if i.name not in read]
    check_graph(_tiled_steps(3), {"x": x}, "y", opset=13)  # (30 Exps in a row overflow)


def test_reverse_nodes_nothing_reads_are_left_out():
    """LayerNormalization's rule counts elements for its Mean and InvStdDev outputs'
    gradients; with only Y read, that count is emitted and left unread: not in the graph
    (ONNX Runtime would run it every call: 125 such nodes in a ViT-S/16's gradient graph)."""
    from igcli.autodiff import build_gradient_model

    x = rng.standard_normal((2, 5, 8))
    node = helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=-1)
    model = make_model([node], {"x": x}, "y", 17, {"s": rng.standard_normal(8)})
    ops = [n.op_type for n in build_gradient_model(model, "x", "y").graph.node]
    assert "Size" not in ops and "Div" not in ops
    check_graph([node], {"x": x}, "y", constants={"s": rng.standard_normal(8)})
