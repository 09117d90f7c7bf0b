"""Shape inference without the weights gives what onnx's own gives."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from igcli.autodiff.inference import infer_shapes, without_weights


def _model(weights_as_inputs: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(16, 3, 3, 3)).astype(np.float32), "w")
    big = numpy_helper.from_array(rng.normal(size=(16 * 30 * 30, 10)).astype(np.float32), "fc")
    shape = numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[0, 0, 0, 0]),
        helper.make_node("Shape", ["c"], ["dims"]),
        helper.make_node("Reshape", ["c", "flat"], ["r"]),
        helper.make_node("MatMul", ["r", "fc"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])]
    if weights_as_inputs:  # old exporters list every weight as a graph input too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in (w, big)]
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w, big, shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _types(model: onnx.ModelProto) -> dict[str, str]:
    g = model.graph
    return {vi.name: str(vi.type) for vi in [*g.value_info, *g.output]}


def test_same_shapes_as_onnx_without_the_weights():
    for listed in (False, True):
        model = _model(listed)
        light = without_weights(model)
        assert {i.name for i in light.graph.initializer} == {"w", "flat"}  # fc is large
        assert len({i.name for i in light.graph.input}) == len(light.graph.input)
        for data_prop in (False, True):
            ours = _types(infer_shapes(model, data_prop=data_prop))
            theirs = _types(onnx.shape_inference.infer_shapes(model, data_prop=data_prop))
            assert ours == theirs
            assert "dim_value: 10" in ours["y"]
