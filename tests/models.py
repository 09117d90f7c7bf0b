"""Tiny ONNX models built with onnx.helper for tests, and a writer for them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def xy_model(nodes, x_shape, y_shape, inits=(), opset=17) -> onnx.ModelProto:
    """`nodes` from one float input x to one float output y."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)
    return _model(nodes, [x], [y], inits, opset)


def const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def min_one_sum(batch: str | int = "N") -> onnx.ModelProto:
    """F(x) = min(1, x1 + x2): the seed blog post's example; IG at (1.2, 0.6) is (2/3, 1/3)."""
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
        helper.make_node("Min", ["s", "one"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"), const("one", [1.0])],
    )


def root_sum(features: int = 8) -> onnx.ModelProto:
    """F(x) = sum w_i sqrt(|x_i|), w from 0.5 to 1.5: from a zero baseline its slope along the
    path is infinite at alpha 0 (an integrable singularity); IG is exactly w_i sqrt(|x_i|)."""
    nodes = [
        helper.make_node("Abs", ["x"], ["a"]),
        helper.make_node("Sqrt", ["a"], ["s"]),
        helper.make_node("MatMul", ["s", "w"], ["y"]),
    ]
    w = np.linspace(0.5, 1.5, features).reshape(features, 1)
    return xy_model(nodes, ["N", features], ["N", 1], [const("w", w)])


def one_minus_relu() -> onnx.ModelProto:
    """f(x) = 1 - ReLU(1 - x): flat at x = 2 (gradient 0), yet IG from 0 attributes 1."""
    nodes = [
        helper.make_node("Sub", ["one", "x"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Sub", ["one", "r"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [const("one", [1.0])],
    )


def tanh_linear(features: int = 4, classes: int = 3, batch: str | int = "N", seed: int = 0):
    """y = tanh(x W + b): smooth, so every quadrature rule converges fast."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["z"]),
        helper.make_node("Tanh", ["z"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])],
        [const("W", rng.normal(size=(features, classes))), const("b", rng.normal(size=classes))],
    )


def image_model(channels: int = 3, size: int = 8, layout: str = "NCHW", batch="N"):
    """A smooth image 'classifier': y = tanh(mean over pixels of x * w) for 2 classes."""
    rng = np.random.default_rng(1)
    shape = [batch, channels, size, size] if layout == "NCHW" else [batch, size, size, channels]
    w_shape = [2, *shape[1:]]
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "W"], ["z"]),
        helper.make_node("Tanh", ["z"], ["y"]),
    ]
    w = rng.normal(size=(int(np.prod(w_shape[1:])), 2)) / 20
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])],
        [const("W", w)],
    )


def nan_model() -> onnx.ModelProto:
    """log(x - 10): NaN for ordinary inputs."""
    nodes = [
        helper.make_node("Sub", ["x", "ten"], ["a"]),
        helper.make_node("Log", ["a"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [const("ten", [10.0])],
    )


def fixed_batch_reshape() -> onnx.ModelProto:
    """A graph that hard-codes batch 1 in a Reshape: must be called one row at a time."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Tanh", ["r"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "shape")],
    )


def with_no_rule() -> onnx.ModelProto:
    """y = the softmax cross-entropy of x W against class 0: SoftmaxCrossEntropyLoss has no
    gradient rule, so igcli must fall back to finite differences. (Det, then CumProd, were
    this model's op until each got a rule.)"""
    rng = np.random.default_rng(2)
    zero = numpy_helper.from_array(np.zeros(1, np.int64))
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["s"]),
        helper.make_node("Shape", ["x"], ["dims"], end=1),
        helper.make_node("ConstantOfShape", ["dims"], ["label"], value=zero),
        helper.make_node("SoftmaxCrossEntropyLoss", ["s", "label"], ["loss"], reduction="none"),
        helper.make_node("Unsqueeze", ["loss", "axis"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [
            const("W", rng.normal(size=(4, 3))),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
        ],
        opset=17,
    )


def two_inputs() -> onnx.ModelProto:
    """y = tanh((x * s) W): attribute x with the scale s fed from a file, or the other way."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Mul", ["x", "s"], ["xs"]),
        helper.make_node("MatMul", ["xs", "W"], ["z"]),
        helper.make_node("Tanh", ["z"], ["y"]),
    ]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [const("W", rng.normal(size=(3, 2)))],
    )


def runtime_shaped() -> onnx.ModelProto:
    """A Reshape whose target goes through float arithmetic, so shape inference loses track
    of everything after it; the Conv rule needs static shapes, which only a probe can give."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sf", "quarter"], ["nf"]),
        helper.make_node("Cast", ["nf"], ["n1"], to=TensorProto.INT64),
        helper.make_node("Concat", ["n1", "hw"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["img"]),
        helper.make_node("Conv", ["img", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["c"], ["t"]),
        helper.make_node("Flatten", ["t"], ["y"], axis=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 18])],
        [
            const("quarter", [1.0, 0.25]),
            numpy_helper.from_array(np.array([2, 2], dtype=np.int64), "hw"),
            const("W", rng.normal(size=(2, 1, 2, 2))),
        ],
    )


def label_then_scores(zipmap: bool = False) -> onnx.ModelProto:
    """A classifier shaped like skl2onnx's: an int64 label first, float scores second (or a
    sequence of maps, like ZipMap, when `zipmap`)."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["z"]),
        helper.make_node("Softmax", ["z"], ["p"], axis=1),
        helper.make_node("ArgMax", ["p"], ["label"], axis=1, keepdims=0),
    ]
    outputs = [
        helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 3]),
    ]
    if zipmap:
        nodes.append(helper.make_node("SequenceConstruct", ["p"], ["maps"]))
        seq = helper.make_tensor_sequence_value_info("maps", TensorProto.FLOAT, None)
        outputs = [outputs[0], seq]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        outputs,
        [const("W", rng.normal(size=(4, 3)) * 4)],
    )


def with_state() -> onnx.ModelProto:
    """y = tanh(x W + sum over the state's first axis), state shaped [2, batch, 3] as Silero's:
    the batch axis of the fed state is axis 1."""
    rng = np.random.default_rng(6)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("ReduceSum", ["state", "axes"], ["s"], keepdims=0),
        helper.make_node("Add", ["xw", "s"], ["z"]),
        helper.make_node("Tanh", ["z"], ["y"]),
    ]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [
            const("W", rng.normal(size=(4, 3))),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
        ],
    )


def unscaled_logistic(scales=(0.01, 1.0, 1000.0)) -> onnx.ModelProto:
    """sigmoid(sum_i (x_i - m_i) / s_i): features on very different scales, as a scaler
    followed by a logistic regression gives them."""
    s = np.asarray(scales, dtype=np.float32)
    nodes = [
        helper.make_node("Sub", ["x", "m"], ["c"]),
        helper.make_node("Div", ["c", "s"], ["z"]),
        helper.make_node("ReduceSum", ["z", "axes"], ["t"], keepdims=1),
        helper.make_node("Sigmoid", ["t"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", len(s)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [
            const("m", s * 0.5),
            const("s", s),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )


def nearly_one(k: float = 1e-6) -> onnx.ModelProto:
    """y = 1 - k sigmoid(x1 + x2 + x3): with k = 1e-6, F(x) and F(0) are a few float32 units
    in the last place apart, as a saturated softmax's top class is."""
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["t"], keepdims=1),
        helper.make_node("Sigmoid", ["t"], ["s"]),
        helper.make_node("Mul", ["s", "k"], ["ks"]),
        helper.make_node("Sub", ["one", "ks"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [
            const("k", [k]),
            const("one", [1.0]),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )


def staircase() -> onnx.ModelProto:
    """y = floor(3 x) summed: piecewise constant, its gradient is zero almost everywhere."""
    nodes = [
        helper.make_node("Mul", ["x", "three"], ["t"]),
        helper.make_node("Floor", ["t"], ["f"]),
        helper.make_node("ReduceSum", ["f", "axes"], ["y"], keepdims=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [const("three", [3.0]), numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )


def quantized_sum() -> onnx.ModelProto:
    """y = sum of x quantized to uint8 steps of 0.1 and back (QuantizeLinear, then
    DequantizeLinear), as a QDQ model quantizes activations: a step function of x."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["d"]),
        helper.make_node("ReduceSum", ["d", "axes"], ["y"], keepdims=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [
            numpy_helper.from_array(np.array(0.1, dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array(0, dtype=np.uint8), "zero"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )


def symmetric_with_dummy() -> onnx.ModelProto:
    """y = tanh(x0 x1 + 0.5 (x0 + x1) + 0.3 x2^2 + 0 x3): x0 and x1 play the same role (the
    symmetry axiom), x3 none at all (dummy), and the interaction makes paths differ."""
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("MatMul", ["x", "w"], ["lin"]),
        helper.make_node("MatMul", ["sq", "v"], ["quad"]),
        helper.make_node("Gather", ["x", "i0"], ["x0"], axis=1),
        helper.make_node("Gather", ["x", "i1"], ["x1"], axis=1),
        helper.make_node("Mul", ["x0", "x1"], ["cross"]),
        helper.make_node("Add", ["lin", "quad"], ["a"]),
        helper.make_node("Add", ["a", "cross"], ["z"]),
        helper.make_node("Tanh", ["z"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [
            const("w", [[0.5], [0.5], [0.0], [0.0]]),
            const("v", [[0.0], [0.0], [0.3], [0.0]]),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "i0"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "i1"),
        ],
    )


def even_sides() -> onnx.ModelProto:
    """An image model of open height and width that runs only where both are even, like a
    detector's feature pyramid: x, pooled 2x2 and scaled back up, is concatenated with x
    (an odd side loses a row in the pool), then averaged per channel into 6 scores."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["p", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Concat", ["x", "up"], ["both"], axis=1),
        helper.make_node("Tanh", ["both"], ["t"]),
        helper.make_node("GlobalAveragePool", ["t"], ["g"]),
        helper.make_node("Flatten", ["g"], ["y"], axis=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        [const("scales", [1.0, 1.0, 2.0, 2.0])],
    )
