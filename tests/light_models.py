"""The onnx package's light_*.onnx model-zoo graphs, with real-looking random weights.

They generate every weight with ConstantOfShape of one value (0.02), which saturates the
softmax and makes gradients degenerate. `randomized` swaps each such weight for a seeded
random initializer of the same shape, scaled so activations stay in a sane range.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
NAMES = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
]


def path(name: str) -> Path:
    return LIGHT_DIR / f"light_{name}.onnx"


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    uses: dict[str, list] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, k))
    return uses


def _weight(shape: tuple[int, ...], uses, rng: np.random.Generator) -> np.ndarray:
    """A value suited to the consumer: He-scaled kernels, positive BN variances, small biases."""
    node, k = uses[0] if uses else (None, -1)
    op = node.op_type if node is not None else ""
    if op in ("Conv", "Gemm", "MatMul") and k == 1 and len(shape) >= 2:
        fan_in = (
            int(np.prod(shape[1:])) if op == "Conv" else shape[0] if op == "MatMul" else shape[1]
        )
        if op == "Gemm" and any(a.name == "transB" and a.i == 0 for a in node.attribute):
            fan_in = shape[0]
        return rng.normal(0, np.sqrt(2.0 / max(fan_in, 1)), size=shape)
    if op == "BatchNormalization":
        if k == 1:  # scale
            return rng.uniform(0.5, 1.5, size=shape)
        if k == 4:  # variance
            return rng.uniform(0.5, 1.5, size=shape)
        return rng.normal(0, 0.1, size=shape)
    if op == "Mul":  # the densenet/inception_v2 style BN written as Mul/Add
        return rng.uniform(0.5, 1.5, size=shape)
    return rng.normal(0, 0.05, size=shape)


def randomized(name: str, seed: int = 0, batch_free: bool = False) -> onnx.ModelProto:
    """The light model `name` with every ConstantOfShape weight replaced by random values.

    `batch_free` rewrites Reshape targets that hard-code a batch of 1 to copy the batch
    instead (0), so the graph runs on batches of path points.
    """
    model = onnx.load(str(path(name)))
    graph = model.graph
    rng = np.random.default_rng(seed)
    inits = {i.name: i for i in graph.initializer}
    uses = _consumers(graph)
    keep = []
    for node in graph.node:
        shape_init = inits.get(node.input[0]) if node.op_type == "ConstantOfShape" else None
        if shape_init is None:
            keep.append(node)
            continue
        shape = tuple(int(v) for v in numpy_helper.to_array(shape_init))
        value = _weight(shape, uses.get(node.output[0], []), rng).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        # IR version 3 wants every initializer listed as a graph input too
        graph.input.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, shape))
    del graph.node[:]
    graph.node.extend(keep)
    if batch_free:
        for node in graph.node:
            target = inits.get(node.input[1]) if node.op_type == "Reshape" else None
            if target is not None:
                shape = numpy_helper.to_array(target).copy()
                if shape.size and shape[0] == 1:
                    shape[0] = 0
                    target.CopyFrom(numpy_helper.from_array(shape, target.name))
    return model


def data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {i.name for i in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in inits)


if __name__ == "__main__":  # write randomized copies for manual runs of igcli
    out = Path(os.environ.get("OUT", "/tmp/light"))
    out.mkdir(parents=True, exist_ok=True)
    for n in NAMES:
        onnx.save(randomized(n), str(out / f"light_{n}.onnx"))
        print(out / f"light_{n}.onnx")
