"""Shapes by running the model, for graphs whose shapes onnx shape inference cannot follow.

Many rules need static shapes. When inference leaves a tensor's shape open (shapes computed
at run time, old exporters), the model is run twice, on a batch of 1 and of 2, with every
intermediate tensor made an output: dimensions that change with the batch become the
symbolic batch dimension, the others are static.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from igcli.autodiff.builder import TensorInfo
from igcli.autodiff.driver import build_gradient_model
from igcli.errors import UnsupportedOpsError


def probe_shapes(
    model: onnx.ModelProto,
    input_name: str,
    sample_shape: list[int],
    feeds: dict[str, np.ndarray] | None = None,
) -> dict[str, TensorInfo]:
    """Observed type and shape of every node output; {} when the model cannot be run so.

    Only for inputs whose dimensions other than the batch are fixed: a probe at one image
    size says nothing about another.
    """
    probe = copy.deepcopy(model)
    graph = probe.graph
    spec = next(i for i in graph.input if i.name == input_name).type.tensor_type
    batch_dim = spec.shape.dim[0].dim_param if len(spec.shape.dim) else ""
    if not batch_dim:  # a fixed batch: nothing to tell apart, and the probe of 2 would fail
        return {}
    # ONNX Runtime wants each output's element type: take those shape inference found.
    try:
        typed = onnx.shape_inference.infer_shapes(model).graph.value_info
    except Exception:
        return {}
    known = {o.name for o in graph.output}
    graph.output.extend(
        helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, None)
        for vi in typed
        if vi.name not in known and vi.type.tensor_type.elem_type
    )

    dtype = helper.tensor_dtype_to_np_dtype(spec.elem_type)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(probe.SerializeToString(), opts)
        outputs = [o.name for o in session.get_outputs()]
        runs = []
        for batch in (1, 2):
            x = np.full([batch, *sample_shape], 0.5, dtype=dtype)
            extra = {k: np.repeat(v, batch, axis=0) for k, v in (feeds or {}).items()}
            runs.append(session.run(outputs, {input_name: x, **extra}))
    except Exception:  # a model that needs a fixed batch, say: no hints, no harm
        return {}
    hints = {}
    for name, one, two in zip(outputs, *runs, strict=True):
        one, two = np.asarray(one), np.asarray(two)
        if one.ndim != two.ndim:
            continue
        shape = [batch_dim if a != b else a for a, b in zip(one.shape, two.shape, strict=True)]
        elem = helper.np_dtype_to_tensor_dtype(one.dtype)
        hints[name] = TensorInfo(elem, shape)
    return hints


def build_gradient_model_probing(
    model: onnx.ModelProto,
    input_name: str,
    output_name: str,
    feeds: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """build_gradient_model, retried with probed shapes when shape inference fell short."""
    try:
        return build_gradient_model(model, input_name, output_name)
    except UnsupportedOpsError:
        spec = next(i for i in model.graph.input if i.name == input_name).type.tensor_type
        sample_shape = [d.dim_value for d in spec.shape.dim[1:]]
        if not all(d > 0 for d in sample_shape):
            raise
        hints = probe_shapes(model, input_name, sample_shape, feeds)
        if not hints:
            raise
        return build_gradient_model(model, input_name, output_name, shape_hints=hints)


def blocking_ops(model: onnx.ModelProto, input_name: str, output_name: str) -> list[str]:
    """The ops that keep a gradient graph from being built (empty when one can be)."""
    try:
        build_gradient_model_probing(model, input_name, output_name)
    except UnsupportedOpsError as exc:
        return exc.ops
    return []
