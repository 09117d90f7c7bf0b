"""Check a gradient graph against central finite differences.

`check_op` builds a one-node model, derives its gradient graph with the driver, and compares
the analytic gradient of sum(seed * output) with central differences of the forward model:
in float64 with onnx's reference evaluator (exact math), and in float32 with ONNX Runtime
(proves the emitted graph loads and runs where igcli runs it).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from igcli.autodiff import GRAD, SEED, build_gradient_model


class GatherElements(OpRun):
    """As ONNX Runtime runs it: indices may be shorter than the data on the other axes (the
    reference evaluator refuses that)."""

    op_domain = ""

    def _run(self, data, indices, axis=None):
        axis = (axis or 0) % data.ndim
        view = data[tuple(slice(0, n) if a != axis else slice(None)
                          for a, n in enumerate(indices.shape))]  # fmt: skip
        index = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(view, index, axis=axis),)


REFERENCE_KERNELS = [GatherElements]

NP_TO_ONNX = {
    np.dtype(np.float32): onnx.TensorProto.FLOAT,
    np.dtype(np.float64): onnx.TensorProto.DOUBLE,
}


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    output: str,
    opset: int,
    constants: dict[str, np.ndarray] | None = None,
    dynamic: bool = False,
) -> onnx.ModelProto:
    """A model whose graph inputs are `inputs` and whose `constants` are initializers."""
    graph_inputs = []
    for name, value in inputs.items():
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        shape = ["N", *value.shape[1:]] if dynamic and value.ndim else list(value.shape)
        graph_inputs.append(helper.make_tensor_value_info(name, elem, shape))
    inits = [numpy_helper.from_array(v, k) for k, v in (constants or {}).items()]
    graph = helper.make_graph(
        nodes,
        "check",
        graph_inputs,
        [helper.make_tensor_value_info(output, onnx.TensorProto.UNDEFINED, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    inferred = onnx.shape_inference.infer_shapes(model)
    found = [*inferred.graph.value_info, *inferred.graph.output]
    out_vi = next((v for v in found if v.name == output), None)
    if out_vi is not None:
        del model.graph.output[:]
        model.graph.output.append(out_vi)
    return model


class Runner:
    """Run forward and gradient models with one backend."""

    def __init__(self, model: onnx.ModelProto, wrt: str, output: str, backend: str) -> None:
        self.wrt, self.output, self.backend = wrt, output, backend
        grad_model = build_gradient_model(model, wrt, output)
        onnx.checker.check_model(grad_model)
        if backend == "reference":
            self.fwd = ReferenceEvaluator(model, new_ops=REFERENCE_KERNELS)
            self.bwd = ReferenceEvaluator(grad_model, new_ops=REFERENCE_KERNELS)
        else:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self.fwd = ort.InferenceSession(model.SerializeToString(), opts)
            self.bwd = ort.InferenceSession(grad_model.SerializeToString(), opts)

    def forward(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.fwd.run([self.output], feeds)[0])

    def gradient(self, feeds: dict[str, np.ndarray], seed: np.ndarray) -> np.ndarray:
        out = self.bwd.run([self.output, GRAD], {**feeds, SEED: seed})
        return np.asarray(out[1])


def _as_float(value: np.ndarray, dtype) -> np.ndarray:
    return value.astype(dtype) if value.dtype.kind == "f" else value


def numeric_gradient(run: Runner, feeds, seed, eps: float) -> np.ndarray:
    x = feeds[run.wrt]
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = grad.reshape(-1)
    for i in range(x.size):
        plus, minus = x.copy(), x.copy()
        plus.reshape(-1)[i] += eps
        minus.reshape(-1)[i] -= eps
        f_plus = np.sum(seed * run.forward({**feeds, run.wrt: plus}))
        f_minus = np.sum(seed * run.forward({**feeds, run.wrt: minus}))
        flat[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def check_op(
    op_type: str,
    inputs: dict[str, np.ndarray],
    attrs: dict | None = None,
    *,
    constants: dict[str, np.ndarray] | None = None,
    n_outputs: int = 1,
    output_index: int = 0,
    **options,
) -> None:
    """Gradient of one op w.r.t. each input in `wrt` (default: every input) vs. central FD.

    `inputs` are graph inputs (float ones made float64; others, such as a bool condition, kept
    and not differentiated); `constants` become initializers (no gradient);
    `options` are check_graph's.
    """
    outputs = [f"y{k}" for k in range(n_outputs)]
    node = helper.make_node(op_type, list(inputs) + list(constants or {}), outputs, **(attrs or {}))
    check_graph([node], inputs, outputs[output_index], constants=constants, **options)


def check_graph(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    output: str,
    *,
    opset: int = 17,
    wrt: list[str] | None = None,
    constants: dict[str, np.ndarray] | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-7,
    ort_rtol: float = 2e-3,
    check_ort: bool = True,
    dynamic: bool = False,
    eps: float = 1e-6,
    seed: int = 0,
) -> None:
    """Like check_op for a small graph of several nodes."""
    rng = np.random.default_rng(seed)
    inputs64 = {k: _as_float(np.asarray(v), np.float64) for k, v in inputs.items()}
    consts64 = {
        k: (v.astype(np.float64) if v.dtype.kind == "f" else v)
        for k, v in (constants or {}).items()
    }
    model64 = make_model(nodes, inputs64, output, opset, consts64, dynamic)
    for name in wrt or [k for k, v in inputs64.items() if v.dtype.kind == "f"]:
        run = Runner(model64, name, output, "reference")
        y = run.forward(inputs64)
        seed_arr = rng.standard_normal(y.shape)
        analytic = run.gradient(inputs64, seed_arr)
        numeric = numeric_gradient(run, inputs64, seed_arr, eps)
        assert analytic.shape == inputs64[name].shape, (analytic.shape, inputs64[name].shape)
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol, err_msg=f"d/d{name}")
        if check_ort:
            inputs32 = {k: _as_float(v, np.float32) for k, v in inputs64.items()}
            consts32 = {k: _as_float(v, np.float32) for k, v in consts64.items()}
            model32 = make_model(nodes, inputs32, output, opset, consts32, dynamic)
            run32 = Runner(model32, name, output, "ort")
            got = run32.gradient(inputs32, seed_arr.astype(np.float32))
            scale = np.abs(analytic).max() + 1e-12
            np.testing.assert_allclose(got, analytic, rtol=ort_rtol, atol=ort_rtol * scale,
                                       err_msg=f"ORT float32 d/d{name}")  # fmt: skip


class Case:
    """One rule check: an op, its float64 inputs, attributes and check_op options.

    Each rule test module lists its cases in a module-level CASES list; test_coverage.py
    asserts that every registered rule appears in some CASES, so no rule goes unchecked.
    """

    def __init__(self, op: str, inputs: dict[str, np.ndarray], attrs: dict | None = None,
                 id: str = "", **options) -> None:  # fmt: skip
        self.op, self.inputs, self.attrs, self.options = op, inputs, attrs or {}, options
        self.id = id or f"{op}-opset{options.get('opset', 17)}"

    def run(self) -> None:
        check_op(self.op, self.inputs, self.attrs, **self.options)

    def __repr__(self) -> str:
        return self.id
