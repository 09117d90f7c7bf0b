"""ONNX-only models to PyTorch modules (onnx2torch) for float64 Captum references.

onnx2torch converts the PaddleOCR files after two faithful rewrites (the caller checks the
converted module's output against ONNX Runtime's):
- Constant nodes holding tensors become initializers (Paddle exports keep weights there, and
  onnx2torch reads weights only from initializers);
- value infos carry the shapes ONNX Runtime observes (onnx2torch needs ranks that shape
  inference cannot follow through Shape -> Concat -> Reshape chains).
It has no converter for If, LSTM, Size or Pad-18, which Silero needs: Silero's references are
float64 central differences instead (scripts/corpus/pretrained.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def const_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes holding tensors become initializers with the same values."""
    m = copy_model(model)
    keep = []
    for node in m.graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            t = TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            m.graph.initializer.append(t)
        else:
            keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def _observe(model: onnx.ModelProto, names: list[str], feeds: dict) -> list[np.ndarray]:
    """Values of top-level tensors `names` when the model runs on `feeds`."""
    probe = copy_model(model)
    del probe.graph.value_info[:]
    present = {o.name for o in probe.graph.output}
    for name in names:
        if name not in present:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    return _session(probe).run(names, feeds)


def with_observed_shapes(model: onnx.ModelProto, feeds: dict) -> onnx.ModelProto:
    """Value infos with the shapes and types ONNX Runtime observes on `feeds`."""
    outputs = {o.name for o in model.graph.output}
    names = [o for n in model.graph.node for o in n.output if o and o not in outputs]
    values = _observe(model, names, feeds)
    out = copy_model(model)
    del out.graph.value_info[:]
    for name, v in zip(names, values, strict=True):
        dtype = helper.np_dtype_to_tensor_dtype(v.dtype)
        out.graph.value_info.append(helper.make_tensor_value_info(name, dtype, v.shape))
    return out


def to_torch(model: onnx.ModelProto, feeds: dict):
    """A float64 torch module computing `model` for inputs shaped like `feeds`."""
    import warnings

    from onnx2torch import convert

    m = with_observed_shapes(const_to_initializers(model), feeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(m).eval().double()
