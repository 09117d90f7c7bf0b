"""onnx shape inference without the weights.

`onnx.shape_inference.infer_shapes` serializes the whole model into C++ and parses the result
back: for ResNet-50 that is 100 MB each way, 0.4 s a call, and a cold run makes several. It
needs the weights' types and shapes, not their values, so large float initializers go in as
typed graph inputs instead. Small and integer initializers stay: data propagation reads the
values of shape constants.
"""

from __future__ import annotations

import onnx
from onnx import helper

# Float initializers with more elements than this go in as typed inputs.
LARGE = 1024
FLOAT_KINDS = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` for shape inference: nodes, inputs, outputs and value infos are
    copied; large float initializers become graph inputs of their type and shape."""
    light = onnx.ModelProto(
        ir_version=model.ir_version,
        opset_import=model.opset_import,
        functions=model.functions,
    )
    src, graph = model.graph, light.graph
    graph.name = src.name
    graph.node.extend(src.node)
    graph.input.extend(src.input)
    graph.output.extend(src.output)
    graph.value_info.extend(src.value_info)
    graph.sparse_initializer.extend(src.sparse_initializer)
    listed = {vi.name for vi in src.input}
    for init in src.initializer:
        count = 1
        for d in init.dims:
            count *= d
        if init.data_type not in FLOAT_KINDS or count <= LARGE:
            graph.initializer.append(init)
        elif init.name not in listed:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    return light


def infer_shapes(model: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
    """`onnx.shape_inference.infer_shapes` on `without_weights(model)`: the result describes
    the same tensors (large weights appear as graph inputs), raises the same errors."""
    return onnx.shape_inference.infer_shapes(without_weights(model), data_prop=data_prop)
