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
from onnx import numpy_helper

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


def _random_weight(users: list, shape: list[int], rng) -> np.ndarray:
    """A value for a ConstantOfShape weight, by what consumes it (through Unsqueeze/Reshape)."""
    op, k, node = users[0] if users else (None, None, None)
    if op == "Conv" and k == 1:
        return rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / np.prod(shape[1:]))
    if op == "Gemm" and k == 1:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / shape[1 if trans_b else 0])
    if (op == "BatchNormalization" and k in (1, 4)) or op == "Mul":  # scales, variances
        return rng.uniform(0.5, 1.5, shape)
    return rng.normal(0.0, 0.1, shape)  # biases, means


def randomize(model: onnx.ModelProto, rng) -> None:
    """Replace every ConstantOfShape weight by a seeded random initializer of its shape."""
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    users: dict[str, list] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            users.setdefault(name, []).append((node.op_type, k, node))

    def final_users(name):
        found = users.get(name, [])
        if found and found[0][0] in ("Unsqueeze", "Reshape") and found[0][1] == 0:
            return final_users(found[0][2].output[0])
        return found

    kept = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in consts:
            shape = [int(d) for d in consts[node.input[0]]]
            value = _random_weight(final_users(node.output[0]), shape, rng).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    model.ir_version = 7  # initializers need not be graph inputs


def randomized(name: str, seed: int = 0, batch_free: bool = False) -> onnx.ModelProto:
    """The light model `name` with every ConstantOfShape weight replaced by random values.

    `batch_free` rewrites Reshape targets that hard-code a batch of 1 to copy the batch
    instead (0), so the graph runs on batches of path points.
    """
    model = onnx.load(str(path(name)))
    randomize(model, np.random.default_rng(seed))
    inits = {i.name: i for i in model.graph.initializer}
    if batch_free:
        for node in model.graph.node:
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
