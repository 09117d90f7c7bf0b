"""Gradient graphs of whole models that ship inside the onnx package, against differences.

light_*.onnx are nine ImageNet classifiers at opset 9 (AlexNet, DenseNet-121, Inception v1/v2,
ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512) whose weights are ConstantOfShape fills
of one value. The fills become seeded random weights (He-scaled); then one probe pass on the
test image calibrates every pre-activation channel to mean = 3 std (BatchNormalization gets the
channel statistics of its input and beta = 3 gamma; a Conv/Gemm feeding a Relu gets the same
normalisation folded into its weights and bias) and scales the classifier to a logit spread
of 2. The gradient graph runs where igcli runs it, in ONNX Runtime float32 at batch 1 and
224x224, and its directional derivative g.v along random directions v is compared with
central differences of the forward model computed in float64.

Why so, measured on these networks:
- float32 differences are useless here: a step of 1e-5 drowns in rounding (5-30% noise) and
  a step of 1e-3 .. 1e-2 crosses hundreds of ReLU/MaxPool kinks (10-100% off).
- float64 differences (onnx's reference evaluator) with a step of 1e-7 are exact enough: the
  gradient graph itself run in float64 matches them to 1e-7.
- what remains is ORT's float32 forward putting a unit within rounding of a kink on the
  other side than float64 does. At unit-variance pre-activations ~10 of ResNet's 10 million
  units do, which moved g.v by up to 3% of |g|; at mean = 3 std almost none do.
The error is measured relative to |g| (the typical size of g.v for Gaussian v): measured from
1e-7 to 4e-3 over four seeds, required below 2e-2 in every direction. A miscounted
AveragePool or a misrouted MaxPool gradient gives 4e-2 to 3.

The reference evaluator needs a few kernels replaced to compute these models right: its
BatchNormalization-9 applies momentum to the batch statistics, its LRN sums over a window of
the batch size instead of the channels, its Softmax ignores the flatten-to-2-D semantics before
opset 13, and its pools loop in Python (much too slow at 224x224).

pytorch-converted/*/model.onnx are tiny single-layer exports (mostly opset 6, below igcli's
range): each is converted to opsets 9 and 17 and, when every op on the path has a rule,
checked in float64 (gradient graph and differences in the reference evaluator) and in
float32 (ORT gradient against the float64 gradient). Skipped, with the reason in the skip
message: Embedding (integer input), PReLU multiparam (the converter keeps PReLU-6's [C]
slope, which later opsets broadcast against the last axis: ORT refuses the model) and
MaxPool2d_stride_padding_dilation (a 60x80 window: the MaxPool rule declines windows over 256
taps).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.backend.test
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, version_converter
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from igcli.autodiff import GRAD, SEED, blocking_ops, build_gradient_model
from tests.autodiff.checker import reference_evaluator, to_float64
from tests.light_models import NAMES as LIGHT
from tests.light_models import data_input, randomize

DATA = Path(onnx.backend.test.__file__).parent / "data"
SLOW = {"vgg19"}  # over 20 s on two cores (550 MB of weights, 20 GFLOP per float64 pass)
SHIFT = 3.0  # pre-activations sit 3 std above the ReLU kink: few units near it
TOLERANCE = 2e-2  # |fd - g.v| / |g|, see the module docstring


# -- reference kernels that compute these models right ----------------------------------------
def _pool_taps(x, kernel, strides, pads, fill):
    """Each kernel tap's strided view of the padded input (explicit pads, floor mode)."""
    n = len(kernel)
    pads, strides = pads or [0] * (2 * n), strides or [1] * n
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[n + i]) for i in range(n)],
                constant_values=fill)  # fmt: skip
    outs = [(xp.shape[2 + i] - kernel[i]) // strides[i] + 1 for i in range(n)]
    for tap in itertools.product(*map(range, kernel)):
        yield xp[(..., *(slice(t, t + s * (o - 1) + 1, s) for t, s, o in
                         zip(tap, strides, outs, strict=True)))]  # fmt: skip


class MaxPool(OpRun):
    op_domain = ""

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None,
             pads=None, storage_order=None, strides=None):  # fmt: skip
        assert auto_pad in (None, "NOTSET") and not ceil_mode and not dilations
        return (np.max(list(_pool_taps(x, kernel_shape, strides, pads, -np.inf)), axis=0),)


class AveragePool(OpRun):
    op_domain = ""

    def _run(self, x, auto_pad=None, ceil_mode=None, count_include_pad=None, dilations=None,
             kernel_shape=None, pads=None, strides=None):  # fmt: skip
        assert auto_pad in (None, "NOTSET") and not ceil_mode and not dilations
        total = sum(_pool_taps(x, kernel_shape, strides, pads, 0.0))
        ones = np.ones_like(x)
        count = np.prod(kernel_shape) if count_include_pad else sum(
            _pool_taps(ones, kernel_shape, strides, pads, 0.0))  # fmt: skip
        return ((total / count).astype(x.dtype),)


def reference(model: onnx.ModelProto, fast_pools: bool = False) -> ReferenceEvaluator:
    return reference_evaluator(model, [MaxPool, AveragePool] if fast_pools else [])


# -- model plumbing ----------------------------------------------------------------------------
def opset_of(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts)


def directional_errors(grad, f, x, rng, n_dirs, step):
    """|central difference of f along v - grad.v| / |grad| for random Gaussian directions v."""
    errors = []
    for _ in range(n_dirs):
        v = rng.standard_normal(x.shape)
        fd = (f(x + step * v) - f(x - step * v)) / (2 * step)
        errors.append(abs(fd - float(np.sum(grad * v))) / float(np.linalg.norm(grad)))
    return errors


# -- light models: random weights, calibrated ---------------------------------------------------
def _set(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _stats(x: str, axes: list[int], tag: str, flat: str) -> tuple[list, str, str]:
    """Nodes computing per-channel mean and variance of x over `axes`, as flat vectors."""
    m, c, c2, v = (f"calib/{tag}/{t}" for t in ("m", "c", "c2", "v"))
    nodes = [
        helper.make_node("ReduceMean", [x], [m], axes=axes),
        helper.make_node("Sub", [x, m], [c]),
        helper.make_node("Mul", [c, c], [c2]),
        helper.make_node("ReduceMean", [c2], [v], axes=axes),
        helper.make_node("Reshape", [m, flat], [m + "1"]),
        helper.make_node("Reshape", [v, flat], [v + "1"]),
    ]
    return nodes, m + "1", v + "1"


def calibrate(model: onnx.ModelProto, feeds: dict, shift: float = SHIFT) -> None:
    """Put every pre-activation channel at mean = shift * std on `feeds`: BatchNormalization
    gets its input's statistics and beta = shift * gamma; a Conv/Gemm feeding a Relu gets the
    same folded in (weights / std per output channel, bias = shift - mean / std). Then scale
    the layer feeding the softmax to a logit spread of 2. All from one probe pass that applies
    the new values in-graph, so every layer sees its calibrated inputs."""
    graph = model.graph
    users: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node.op_type)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    flat = "calib/flat"
    inits = {i.name: i for i in graph.initializer}
    nodes, outputs, plan = [], [], []
    for k, node in enumerate(probe.graph.node):
        feeds_relu = users.get(node.output[0]) == ["Relu"]
        has_bias = len(node.input) > 2 and node.input[2] in inits
        if node.op_type == "BatchNormalization":
            found, mean, var = _stats(node.input[0], [0, 2, 3], str(k), flat)
            plan.append(("bn", list(node.input), mean, var))
            beta = f"calib/{k}/beta"
            found.append(helper.make_node("Mul", [node.input[1], "calib/shift"], [beta]))
            node.input[2], node.input[3], node.input[4] = beta, mean, var
            nodes += found
            outputs += [mean, var]
        elif node.op_type in ("Conv", "Gemm") and feeds_relu and has_bias:
            raw, zero = f"calib/{k}/raw", f"calib/{k}/zero"
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            inputs = [*node.input[:2], zero] if node.op_type == "Gemm" else node.input[:2]
            nodes.append(helper.make_node(node.op_type, inputs, [raw], **attrs))
            probe.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), zero))
            axes = [0, 2, 3] if node.op_type == "Conv" else [0, 1]  # Gemm: batch 1, no channels
            found, mean, var = _stats(raw, axes, str(k), flat)
            scale, bias = f"calib/{k}/scale", f"calib/{k}/bias"
            shape = [-1, 1, 1] if node.op_type == "Conv" else [-1]
            nodes += found + [  # out = (raw - mean) / std + shift
                helper.make_node("Sqrt", [var], [scale + "sd"]),
                helper.make_node("Reciprocal", [scale + "sd"], [scale]),
                helper.make_node("Mul", [mean, scale], [bias + "m"]),
                helper.make_node("Sub", ["calib/shift", bias + "m"], [bias]),
                helper.make_node("Reshape", [scale, f"calib/{k}/shape"], [scale + "b"]),
                helper.make_node("Reshape", [bias, f"calib/{k}/shape"], [bias + "b"]),
                helper.make_node("Mul", [raw, scale + "b"], [raw + "n"]),
                helper.make_node("Add", [raw + "n", bias + "b"], [node.output[0]]),
            ]
            probe.graph.initializer.append(
                numpy_helper.from_array(np.array(shape, np.int64), f"calib/{k}/shape"))  # fmt: skip
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            out_axis = 1 if node.op_type == "Gemm" and not trans_b else 0
            plan.append(("layer", (node.input[1], node.input[2], out_axis), scale, bias))
            outputs += [scale, bias]
            continue
        nodes.append(node)
    softmax = [n for n in graph.node if n.op_type == "Softmax"]
    if softmax:
        outputs.append(softmax[-1].input[0])
    del probe.graph.node[:]
    probe.graph.node.extend(nodes)
    probe.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1], np.int64), flat),
            numpy_helper.from_array(np.float32(shift), "calib/shift"),
        ]
    )
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                              for o in outputs)  # fmt: skip
    values = dict(zip(outputs, session(probe).run(outputs, feeds), strict=True))
    for kind, target, a, b in plan:
        if kind == "bn":
            _set(model, target[3], values[a])
            _set(model, target[4], values[b] + 1e-2)  # channels dead at this image stay tame
            _set(model, target[2], shift * numpy_helper.to_array(inits[target[1]]))
        else:  # fold the normalisation into the layer: W / std per output channel
            weight, bias, out_axis = target
            w = numpy_helper.to_array(inits[weight])
            per_channel = values[a].reshape([-1] + [1] * (w.ndim - 1))
            _set(model, weight, w * (per_channel if out_axis == 0 else per_channel.T))
            _set(model, bias, np.broadcast_to(values[b], inits[bias].dims))
    if softmax:
        _scale_layer_before(model, softmax[-1].input[0], 2.0 / values[outputs[-1]].std())


def _scale_layer_before(model: onnx.ModelProto, name: str, factor: float) -> None:
    """Scale weight and bias of the Conv/Gemm making `name` (through positively homogeneous
    ops), which scales `name` by `factor`."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    node = producer[name]
    while node.op_type in ("Relu", "GlobalAveragePool", "AveragePool", "Reshape", "Dropout"):
        node = producer[node.input[0]]
    assert node.op_type in ("Conv", "Gemm"), node.op_type
    for weight in node.input[1:3]:
        while weight not in inits:  # e.g. a Reshape of the weight
            weight = producer[weight].input[0]
        _set(model, weight, numpy_helper.to_array(inits[weight]) * factor)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in LIGHT]
)
def test_light_model(name):
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    model = onnx.load(DATA / "light" / f"light_{name}.onnx")
    randomize(model, rng)
    inp, out = data_input(model), model.graph.output[0].name
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    x = rng.standard_normal(shape).astype(np.float32)
    calibrate(model, {inp.name: x})
    blocked = blocking_ops(model, inp.name, out)
    if blocked:
        pytest.skip(f"no gradient rule for {blocked}")

    grad_session = session(build_gradient_model(model, inp.name, out))
    y_shape = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    seed = rng.standard_normal(y_shape)
    feeds = {inp.name: x, SEED: seed.astype(np.float32)}
    grad = grad_session.run([GRAD], feeds)[0].astype(np.float64)
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0

    forward64 = reference(to_float64(model), fast_pools=True)

    def f(z):
        return float(np.sum(seed * forward64.run([out], {inp.name: z})[0]))

    errors = directional_errors(grad, f, x.astype(np.float64), rng, n_dirs=2, step=1e-7)
    took = time.perf_counter() - start
    print(f"{name}: |fd - g.v| / |g| = {', '.join(f'{e:.1e}' for e in errors)} ({took:.0f} s)")
    assert max(errors) < TOLERANCE, errors


# -- pytorch-converted: tiny layer exports ------------------------------------------------------
PYTORCH = sorted(p.name for p in (DATA / "pytorch-converted").iterdir() if p.is_dir())
BIG = 20_000  # larger inputs are cut to this many elements along their one spatial axis


def _pytorch_model(name: str, opset: int):
    folder = DATA / "pytorch-converted" / name
    model = onnx.load(folder / "model.onnx")
    model = version_converter.convert_version(model, max(opset, opset_of(model)))
    model.ir_version = 8
    x = numpy_helper.to_array(onnx.load_tensor(folder / "test_data_set_0" / "input_0.pb"))
    inp = data_input(model)
    if x.size > BIG and x.ndim == 3:  # MaxPool1d over 220000 samples: the reference evaluator
        x = x[..., :BIG]  # pools in Python, keep ~2000 windows
        inp.type.tensor_type.shape.dim[2].dim_value = BIG
        for vi in model.graph.output:
            vi.type.tensor_type.ClearField("shape")
    return model, inp, x


@pytest.mark.parametrize("opset", [9, 17])
@pytest.mark.parametrize("name", PYTORCH)
def test_pytorch_converted(name, opset):
    model, inp, x = _pytorch_model(name, opset)
    out = model.graph.output[0].name
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        pytest.skip("integer input: nothing to differentiate")
    try:
        session(model).run(None, {inp.name: x})
    except Exception as exc:  # e.g. PReLU-6's per-channel slope survives conversion as [C]
        pytest.skip(f"the converted model does not run: {str(exc).splitlines()[0][:120]}")
    blocked = blocking_ops(model, inp.name, out)
    if blocked:
        pytest.skip(f"no gradient for {blocked}")

    model64 = to_float64(model)
    x64 = x.astype(np.float64)
    forward64 = reference(model64)
    y = forward64.run([out], {inp.name: x64})[0]
    rng = np.random.default_rng(0)
    seed = rng.standard_normal(y.shape)
    grad64 = reference(build_gradient_model(model64, inp.name, out)).run(
        [GRAD], {inp.name: x64, SEED: seed})[0]  # fmt: skip

    def f(z):
        return float(np.sum(seed * forward64.run([out], {inp.name: z})[0]))

    errors = directional_errors(grad64, f, x64, rng, n_dirs=3, step=1e-6)
    assert max(errors) < 1e-6, errors

    grad32 = session(build_gradient_model(model, inp.name, out)).run(
        [GRAD], {inp.name: x, SEED: seed.astype(np.float32)})[0]  # fmt: skip
    scale = np.abs(grad64).max()
    np.testing.assert_allclose(grad32, grad64, rtol=1e-3, atol=1e-4 * scale, err_msg="ORT")
