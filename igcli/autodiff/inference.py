"""onnx shape inference without the weights, and copies of a model without them.

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


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every field but its graph's initializers: for passes that
    rebuild the initializer list, so the weights are copied once, not twice."""
    out = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(out, field, value)
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            _copy_field(out.graph, field, value)
    return out


def _copy_field(message, field, value) -> None:
    if hasattr(value, "extend"):  # a repeated field (protobuf 7 drops FieldDescriptor.label)
        getattr(message, field.name).extend(value)
    elif field.type == field.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` for shape inference: large float initializers become graph inputs
    of their type and shape; the rest is copied."""
    light = without_initializers(model)
    graph = light.graph
    listed = {vi.name for vi in graph.input}
    for init in model.graph.initializer:
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
