"""ONNX Runtime's contrib ops written in standard ops (igcli/autodiff/contrib.py).

Each case is one contrib node. Its standard form must compute what ONNX Runtime's own kernel
computes, output by output; the gradient graph built from it must agree with central
differences of the model that runs the kernel (float32, directional); and the rules the
standard form leans on are checked in float64 with onnx's reference evaluator.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference.op_run import OpRun

from igcli.autodiff import GRAD, SEED, build_gradient_model
from igcli.autodiff.contrib import MS, standard_forms
from igcli.autodiff.inference import infer_shapes
from tests.autodiff.checker import reference_evaluator, to_float64

RNG = np.random.default_rng(7)
B, S, H = 2, 5, 8


def _r(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


X, SKIP = _r(B, S, H, scale=2.0), _r(B, S, H)
GAMMA, BETA, BIAS = _r(H) + 1.0, _r(H), _r(H, scale=0.5)


def case(op, inputs, outputs=("y",), opset=17, domain=MS, **attrs):
    """(model, feeds): `inputs` name -> array or None (an empty optional input); names
    starting with x are graph inputs, the others initializers."""
    feeds = {k: v for k, v in inputs.items() if k.startswith("x")}
    inits = [numpy_helper.from_array(v, k) for k, v in inputs.items()
             if v is not None and not k.startswith("x")]  # fmt: skip
    names = [k if v is not None else "" for k, v in inputs.items()]
    node = helper.make_node(op, names, list(outputs), domain=domain, **attrs)
    graph = helper.make_graph(
        [node],
        "contrib",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs if o],
        inits,
    )
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    return model, feeds


def standard(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its contrib node in standard ops."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next(o.version for o in out.opset_import if o.domain == "")
    inferred = infer_shapes(out)
    types = {vi.name: (vi.type.tensor_type.elem_type, len(vi.type.tensor_type.shape.dim))
             for vi in [*inferred.graph.input, *inferred.graph.value_info]}  # fmt: skip
    weights = {i.name: (i.data_type, list(i.dims)) for i in out.graph.initializer}
    out.graph.initializer.extend(standard_forms(out.graph, opset, types, weights))
    return out


def _session(model):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


CASES = {
    "Gelu": case("Gelu", {"x": X}),
    "BiasGelu": case("BiasGelu", {"x": X, "bias": BIAS}),
    "FastGelu": case("FastGelu", {"x": X}),
    "FastGelu-bias": case("FastGelu", {"x": X, "bias": BIAS}),
    "QuickGelu": case("QuickGelu", {"x": X}),
    "QuickGelu-alpha": case("QuickGelu", {"x": X}, alpha=0.8),
    "SkipLayerNorm": case(
        "SkipLayerNormalization", {"x": X, "xskip": SKIP, "gamma": GAMMA}, epsilon=1e-5
    ),
    "SkipLayerNorm-beta-bias-all-outputs": case(
        "SkipLayerNormalization",
        {"x": X, "xskip": SKIP, "gamma": GAMMA, "beta": BETA, "bias": BIAS},
        outputs=("y", "mean", "inv_std", "sum"),
    ),
    "SkipLayerNorm-sum-no-bias-opset13": case(
        "SkipLayerNormalization",
        {"x": X, "xskip": SKIP, "gamma": GAMMA, "beta": BETA},
        outputs=("y", "", "", "sum"),
        opset=13,
    ),
    "SkipSimplifiedLayerNorm": case(
        "SkipSimplifiedLayerNormalization", {"x": X, "xskip": SKIP, "gamma": GAMMA}, epsilon=1e-6
    ),
    "SkipSimplifiedLayerNorm-bias-opset18": case(
        "SkipSimplifiedLayerNormalization",
        {"x": X, "xskip": SKIP, "gamma": GAMMA, "bias": BIAS},
        outputs=("y", "", "inv_std", "sum"),
        opset=18,
    ),
    "SimplifiedLayerNorm": case(
        "SimplifiedLayerNormalization", {"x": X, "scale": GAMMA}, domain="", epsilon=1e-5
    ),
    "SimplifiedLayerNorm-axis1-inv-std-opset13": case(
        "SimplifiedLayerNormalization",
        {"x": X, "scale": _r(S, H) + 1.0},
        outputs=("y", "inv_std"),
        domain="",
        opset=13,
        axis=1,
    ),
}
CASES.update(
    {
        "FusedMatMul": case("FusedMatMul", {"x": X, "b": _r(H, 3)}),
        "FusedMatMul-transposed-alpha": case(
            "FusedMatMul", {"x": X, "b": _r(B, 3, S)}, transA=1, transB=1, alpha=0.7
        ),
    }
)
QKV, QKV_BIAS = _r(H, 3 * H, scale=0.5), _r(3 * H, scale=0.2)
ATTENTION = {"x": X, "weights": QKV, "bias": QKV_BIAS}
CASES.update({
    "Attention": case("Attention", ATTENTION, num_heads=2),
    "Attention-mask-2d": case(
        "Attention", {**ATTENTION, "mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)},
        num_heads=2,
    ),
    "Attention-key-lengths-unidirectional-opset13": case(
        "Attention", {**ATTENTION, "mask": np.array([4, 2], np.int32)}, num_heads=4,
        unidirectional=1, opset=13,
    ),
    "Attention-mask-3d-scale": case(
        "Attention", {**ATTENTION, "mask": (RNG.random((B, S, S)) > 0.3).astype(np.int32)},
        num_heads=2, scale=0.3,
    ),
    "Attention-bias-input": case(
        "Attention", {**ATTENTION, "mask": None, "past": None, "pos": _r(1, 2, S, S)},
        num_heads=2,
    ),
    "Attention-qkv-sizes": case(
        "Attention", {"x": X, "weights": _r(H, 20, scale=0.5), "bias": _r(20, scale=0.2)},
        num_heads=2, qkv_hidden_sizes=[8, 8, 4],
    ),
})  # fmt: skip


def self_attention(inputs, **attrs):
    """(model, feeds): MultiHeadAttention with query, key and value all x (self-attention,
    as ONNX Runtime's optimizer leaves it after separate projections)."""
    model, feeds = case("MultiHeadAttention", inputs, **attrs)
    node = model.graph.node[0]
    node.input[1] = node.input[2] = "x"
    return model, feeds


MHA_BIAS = _r(3 * H, scale=0.2)
CASES.update({
    "MultiHeadAttention-self": self_attention({"x": X, "k": None, "v": None}, num_heads=2),
    "MultiHeadAttention-self-bias-key-lengths": self_attention(
        {"x": X, "k": None, "v": None, "bias": MHA_BIAS, "mask": np.array([4, 2], np.int32)},
        num_heads=4,
    ),
    "MultiHeadAttention-self-unidirectional-scale": self_attention(
        {"x": X, "k": None, "v": None, "bias": MHA_BIAS}, num_heads=2, unidirectional=1, scale=0.4,
    ),
    "MultiHeadAttention-cross-mask-2d": case(
        "MultiHeadAttention",
        {"x": X, "k": _r(B, 3, H), "v": _r(B, 3, 4),
         "bias": _r(2 * H + 4, scale=0.2), "mask": np.array([[1, 1, 0], [1, 1, 1]], np.int32)},
        num_heads=2,
    ),
    "MultiHeadAttention-cross-mask-3d-attention-bias": case(
        "MultiHeadAttention",
        {"x": X, "k": _r(B, 3, H), "v": _r(B, 3, H), "bias": None,
         "mask": (RNG.random((B, S, 3)) > 0.3).astype(np.int32), "pos": _r(1, 2, S, 3)},
        num_heads=2, mask_filter_value=-1000.0,
    ),
})  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_standard_form_computes_what_the_kernel_does(name):
    model, feeds = CASES[name]
    rewritten = standard(model)
    assert not any(n.domain == MS or "Simplified" in n.op_type for n in rewritten.graph.node)
    outputs = [o.name for o in model.graph.output]
    ours = _session(rewritten).run(outputs, feeds)
    theirs = _session(model).run(outputs, feeds)
    for out, a, b in zip(outputs, ours, theirs, strict=True):
        assert a.shape == b.shape or a.size == b.size, (out, a.shape, b.shape)
        np.testing.assert_allclose(a.reshape(b.shape), b, rtol=2e-5, atol=2e-5, err_msg=out)


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_matches_differences_of_the_kernel(name):
    """The gradient graph (built from the contrib model) against central differences of
    ONNX Runtime running the contrib kernel, along random directions, for each output."""
    model, feeds = CASES[name]
    for out in [o.name for o in model.graph.output]:
        grad_model = build_gradient_model(model, "x", out)
        assert not any(n.domain == MS for n in grad_model.graph.node)
        kernel = _session(model)
        y = kernel.run([out], feeds)[0]
        seed = RNG.standard_normal(y.shape).astype(np.float32)
        g = _session(grad_model).run([GRAD], {**feeds, SEED: seed})[0].astype(np.float64)

        def f(x, seed=seed, kernel=kernel, out=out):
            return float(np.sum(seed * kernel.run([out], {**feeds, "x": x})[0], dtype=np.float64))

        for _ in range(3):
            v = RNG.standard_normal(X.shape)
            h = 1e-2
            fd = (f((X + h * v).astype(np.float32)) - f((X - h * v).astype(np.float32))) / (2 * h)
            assert abs(fd - float(np.sum(g * v))) <= 2e-3 * (np.linalg.norm(g) * np.linalg.norm(v))


@pytest.mark.parametrize("name", list(CASES))
def test_standard_form_gradient_in_float64(name):
    """The rules under the standard form, exactly: the float64 gradient graph against
    central differences of the float64 standard form (onnx's reference evaluator)."""
    model, feeds = CASES[name]
    model64 = to_float64(standard(model))
    out = model.graph.output[0].name
    grad_model = build_gradient_model(model64, "x", out)
    fwd = reference_evaluator(model64, extra=[Erf])
    bwd = reference_evaluator(grad_model, extra=[Erf])
    x = feeds["x"].astype(np.float64)
    others = {k: v.astype(np.float64) for k, v in feeds.items() if k != "x"}
    y = fwd.run([out], {**others, "x": x})[0]
    seed = RNG.standard_normal(y.shape)
    g = bwd.run([GRAD], {**others, "x": x, SEED: seed})[0]
    v = RNG.standard_normal(x.shape)
    h = 1e-6

    def f(z):
        return float(np.sum(seed * fwd.run([out], {**others, "x": z})[0]))

    fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
    assert abs(fd - float(np.sum(g * v))) <= 1e-6 * max(1.0, abs(fd))


class Erf(OpRun):
    """erf in the input's precision (onnx's reference evaluator computes it in float32)."""

    op_domain = ""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


def test_an_unhandled_form_is_left_for_the_driver_to_name():
    """SkipSimplifiedLayerNormalization's mean output is not defined: the node stays, and the
    driver names it among the ops without a rule."""
    model, _ = case(
        "SkipSimplifiedLayerNormalization",
        {"x": X, "xskip": SKIP, "gamma": GAMMA},
        outputs=("y", "mean"),
    )
    from igcli.errors import UnsupportedOpsError

    with pytest.raises(UnsupportedOpsError, match="com.microsoft.SkipSimplifiedLayerNormalization"):
        build_gradient_model(model, "x", "y")


def _fused_block(tmp_path):
    """A transformer MLP block as ONNX Runtime's optimizer leaves it: MatMul, BiasGelu,
    MatMul, SkipLayerNormalization, then a classifier on the first position."""
    rng = np.random.default_rng(11)
    shapes = [((H, 16), 0.5), ((16,), 0.1), ((16, H), 0.5), ((H, 3), 1.0)]
    w1, b1, w2, head = (rng.standard_normal(s).astype(np.float32) * k for s, k in shapes)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("BiasGelu", ["h", "b1"], ["a"], domain=MS),
        helper.make_node("MatMul", ["a", "w2"], ["m"]),
        helper.make_node(
            "SkipLayerNormalization", ["m", "x", "gamma", "beta"], ["n"], domain=MS, epsilon=1e-12
        ),  # fmt: skip
        helper.make_node("Gather", ["n", "zero"], ["first"], axis=1),
        helper.make_node("MatMul", ["first", "head"], ["logits"]),
    ]
    inits = {"w1": w1, "b1": b1, "w2": w2, "gamma": GAMMA, "beta": BETA, "head": head,
             "zero": np.array(0, np.int64)}  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "fused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", S, H])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    imports = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    fused = tmp_path / "fused.onnx"
    onnx.save(model, fused)
    plain = tmp_path / "plain.onnx"
    onnx.save(standard(model), plain)
    return fused, plain


def test_a_fused_model_is_explained_through_its_gradient_graph(tmp_path, monkeypatch):
    """What the issue saw: an optimised BERT fell back to finite differences. The fused block
    gets a gradient graph, and the attributions of the same block in standard ops."""
    from igcli.session import Session

    monkeypatch.setenv("IGCLI_CACHE_DIR", str(tmp_path / "cache"))
    fused, plain = _fused_block(tmp_path)
    x = X[:1]
    ours = Session(fused).attribute(x, target=1, baseline="zero", steps=64)
    same = Session(plain).attribute(x, target=1, baseline="zero", steps=64)
    assert ours.gradient_source == "graph"
    np.testing.assert_allclose(ours.attributions, same.attributions, rtol=1e-4, atol=1e-6)
    assert abs(ours.attribution_sum - ours.delta) <= 1e-2 * abs(ours.delta)


def _embed_case(mask=None, position_ids=None, segments=True, outputs=("y", "mask_index", "sum")):
    """An EmbedLayerNormalization node over int32 ids [B, S] (graph inputs)."""
    vocab, places = 11, 9
    ids = RNG.integers(0, vocab, (B, S)).astype(np.int32)
    feeds = {"ids": ids}
    if segments:
        feeds["segments"] = RNG.integers(0, 2, (B, S)).astype(np.int32)
    if mask is not None:
        feeds["mask"] = mask
    if position_ids is not None:
        feeds["positions"] = position_ids
    weights = {"words": _r(vocab, H), "places": _r(places, H), "kinds": _r(2, H),
               "gamma": GAMMA, "beta": BETA}  # fmt: skip
    names = ["ids", "segments" if segments else "", "words", "places",
             "kinds" if segments else "", "gamma", "beta", "mask" if mask is not None else "",
             "positions" if position_ids is not None else ""]  # fmt: skip
    while not names[-1]:
        names.pop()
    node = helper.make_node("EmbedLayerNormalization", names, list(outputs), domain=MS,
                            epsilon=1e-12)  # fmt: skip
    graph = helper.make_graph(
        [node],
        "embed",
        [helper.make_tensor_value_info(k, TensorProto.INT32, v.shape) for k, v in feeds.items()],
        [helper.make_empty_tensor_value_info(o) for o in outputs if o],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    imports = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    return model, feeds


HOLE = np.array([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], np.int32)


@pytest.mark.parametrize(
    "model_feeds",
    [
        _embed_case(mask=HOLE),
        _embed_case(mask=HOLE, segments=False, outputs=("y", "mask_index")),
        _embed_case(mask=HOLE, position_ids=np.array([[4, 3, 2, 1, 0]] * B, np.int32)),
        _embed_case(outputs=("y", "", "sum")),
    ],
    ids=["mask-with-a-hole", "no-segments", "position-ids", "sum-only"],
)
def test_embed_layer_norm_computes_what_the_kernel_does(model_feeds):
    from igcli.autodiff.contrib import with_embeddings_exposed

    model, feeds = model_feeds
    rewritten = with_embeddings_exposed(model)
    assert not any(n.domain == MS for n in rewritten.graph.node)
    assert "y/word_embeddings" in {o for n in rewritten.graph.node for o in n.output}
    outputs = [o.name for o in model.graph.output]
    for out, a, b in zip(
        outputs,
        _session(rewritten).run(outputs, feeds),
        _session(model).run(outputs, feeds),
        strict=True,
    ):
        assert a.dtype == b.dtype, out
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5, err_msg=out)


def test_a_mask_index_without_a_mask_is_left_to_the_kernel():
    """With no mask the kernel's mask_index is its own business: the node stays."""
    from igcli.autodiff.contrib import with_embeddings_exposed

    model, _ = _embed_case()
    model, _ = _embed_case(outputs=("y", "mask_index"))
    assert any(n.domain == MS for n in with_embeddings_exposed(model).graph.node)


# -- ai.onnx.ml: skl2onnx's scalers and linear models -------------------------------------
ML = "ai.onnx.ml"
F = 5  # features
XT = _r(4, F, scale=2.0)


def ml_case(nodes, outputs, opset=17, x=XT, elem=TensorProto.FLOAT):
    """(model, feeds): ai.onnx.ml nodes (and standard ones) on a graph input x [N, F]."""
    graph = helper.make_graph(
        nodes,
        "ml",
        [helper.make_tensor_value_info("x", elem, ["N", F])],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
    )
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(ML, 1)]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    return model, {"x": x.astype(helper.tensor_dtype_to_np_dtype(elem))}


def _ml(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, domain=ML, **attrs)


COEF = _r(3, F).reshape(-1).tolist()
SCALER = _ml("Scaler", ["x"], ["s"], offset=_r(F).tolist(), scale=(_r(F) + 2).tolist())
SCALER_OF_I = _ml("Scaler", ["i"], ["s"], offset=[0.5], scale=[2.0])
ML_CASES = {
    "Scaler": ml_case([SCALER], ["s"]),
    "Scaler-one-value-double": ml_case(
        [_ml("Scaler", ["x"], ["s"], offset=[0.5], scale=[1.5])], ["s"], elem=TensorProto.DOUBLE
    ),
    "Normalizer-L2": ml_case([_ml("Normalizer", ["x"], ["n"], norm="L2")], ["n"]),
    "Normalizer-L1": ml_case([_ml("Normalizer", ["x"], ["n"], norm="L1")], ["n"]),
    "Normalizer-MAX": ml_case([_ml("Normalizer", ["x"], ["n"], norm="MAX")], ["n"]),
    "LinearClassifier-logistic": ml_case(
        [
            SCALER,
            _ml(
                "LinearClassifier",
                ["s"],
                ["label", "p"],
                coefficients=COEF,
                intercepts=[0.1, -0.2, 0.3],
                classlabels_ints=[2, 5, 7],
                post_transform="LOGISTIC",
            ),
        ],
        ["label", "p"],
    ),  # fmt: skip
    "LinearClassifier-softmax-strings-opset9": ml_case(
        [
            _ml(
                "LinearClassifier",
                ["x"],
                ["label", "p"],
                coefficients=COEF,
                intercepts=[0.1, -0.2, 0.3],
                classlabels_strings=[b"a", b"b", b"c"],
                post_transform="SOFTMAX",
            )
        ],
        ["label", "p"],
        opset=9,
    ),  # fmt: skip
    "LinearClassifier-none": ml_case(
        [
            _ml(
                "LinearClassifier",
                ["x"],
                ["label", "p"],
                coefficients=COEF[: 2 * F],
                intercepts=[0.4, -0.4],
                classlabels_ints=[0, 1],
            )
        ],
        ["label", "p"],
    ),  # fmt: skip
    "LinearRegressor-2-targets": ml_case(
        [
            _ml(
                "LinearRegressor",
                ["x"],
                ["y"],
                coefficients=COEF[: 2 * F],
                intercepts=[0.4, -0.4],
                targets=2,
            )
        ],
        ["y"],
    ),  # fmt: skip
    "Imputer-nan-per-feature": ml_case(
        [
            _ml(
                "Imputer",
                ["x"],
                ["i"],
                imputed_value_floats=_r(F).tolist(),
                replaced_value_float=float("nan"),
            ),
            SCALER_OF_I,
        ],
        ["s"],
        x=np.where(XT > 1.0, np.nan, XT),
    ),  # fmt: skip
    "Imputer-value-one-imputed": ml_case(
        [
            _ml("Imputer", ["x"], ["i"], imputed_value_floats=[0.25], replaced_value_float=0.5),
            SCALER_OF_I,
        ],
        ["s"],
        x=np.where(XT > 1.0, 0.5, XT),
    ),  # fmt: skip
    "ArrayFeatureExtractor-after-Scaler": ml_case(
        [
            SCALER,
            _ml("ArrayFeatureExtractor", ["s", "idx"], ["z"]),
            helper.make_node("Mul", ["z", "z"], ["y"]),
        ],
        ["y"],
    ),  # fmt: skip
}
ML_CASES["ArrayFeatureExtractor-after-Scaler"][0].graph.initializer.append(
    numpy_helper.from_array(np.array([4, 0, 2, 2], np.int64), "idx")
)


def _off_jumps(name: str, feeds: dict) -> dict:
    """Feeds that differences can take: an imputer replacing a value jumps where x holds it."""
    return {"x": XT.astype(np.float32)} if name == "Imputer-value-one-imputed" else feeds


def _float_output(model):
    return next(o.name for o in model.graph.output if o.name not in ("label",))


@pytest.mark.parametrize("name", list(ML_CASES))
def test_ml_standard_form_computes_what_the_kernel_does(name):
    model, feeds = ML_CASES[name]
    rewritten = standard(model)
    assert not any(n.domain == ML for n in rewritten.graph.node)
    outputs = [o.name for o in model.graph.output]
    ours = _session(rewritten).run(outputs, feeds)
    theirs = _session(model).run(outputs, feeds)
    for out, a, b in zip(outputs, ours, theirs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, (out, a.shape, b.shape)
        if a.dtype == object:
            assert a.tolist() == b.tolist(), out
        else:
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-6, err_msg=out)


@pytest.mark.parametrize("name", list(ML_CASES))
def test_ml_gradient_matches_differences_of_the_kernel(name):
    """The gradient graph of the float output against central differences of ONNX Runtime
    running the ai.onnx.ml kernels, along random directions. (An imputer replacing a value:
    at the rows where it is moved away from that value, not across the jump.)"""
    model, feeds = ML_CASES[name]
    feeds = _off_jumps(name, feeds)
    out = _float_output(model)
    grad_model = build_gradient_model(model, "x", out)
    assert not any(n.domain == ML for n in grad_model.graph.node)
    kernel = _session(model)
    x = feeds["x"]
    y = kernel.run([out], feeds)[0]
    seed = RNG.standard_normal(y.shape).astype(np.float32)
    g = _session(grad_model).run([GRAD], {**feeds, SEED: seed})[0].astype(np.float64)

    def f(z):
        return float(
            np.sum(seed * kernel.run([out], {"x": z.astype(x.dtype)})[0], dtype=np.float64)
        )

    for _ in range(3):
        v = RNG.standard_normal(x.shape)
        h = 1e-2
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        assert abs(fd - float(np.sum(g * v))) <= 2e-3 * (np.linalg.norm(g) * np.linalg.norm(v))


@pytest.mark.parametrize("name", [k for k in ML_CASES if "double" not in k])
def test_ml_standard_form_gradient_in_float64(name):
    """The rules under the standard form, exactly: float64 gradient graph against central
    differences of the float64 standard form (onnx's reference evaluator)."""
    model, feeds = ML_CASES[name][0], _off_jumps(name, ML_CASES[name][1])
    out = _float_output(model)
    model64 = to_float64(standard(model))
    del model64.graph.output[:]
    model64.graph.output.append(helper.make_empty_tensor_value_info(out))
    grad_model = build_gradient_model(model64, "x", out)
    fwd, bwd = reference_evaluator(model64), reference_evaluator(grad_model)
    x = feeds["x"].astype(np.float64)
    y = fwd.run([out], {"x": x})[0]
    seed = RNG.standard_normal(y.shape)
    g = bwd.run([GRAD], {"x": x, SEED: seed})[0]
    v = RNG.standard_normal(x.shape)
    h = 1e-6

    def f(z):
        return float(np.sum(seed * fwd.run([out], {"x": z})[0]))

    fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
    assert abs(fd - float(np.sum(g * v))) <= 1e-6 * max(1.0, abs(fd))


def test_ml_forms_left_as_they_are_are_named():
    """A form this module does not write (PROBIT; one row of coefficients for two labels,
    where ONNX Runtime adds a second class) stays, and the driver names it."""
    from igcli.errors import UnsupportedOpsError

    one_row = ml_case(
        [_ml("LinearClassifier", ["x"], ["label", "p"], coefficients=COEF[:F], intercepts=[0.1],
             classlabels_ints=[0, 1], post_transform="LOGISTIC")],
        ["label", "p"],
    )[0]  # fmt: skip
    with pytest.raises(UnsupportedOpsError, match="ai.onnx.ml.LinearClassifier"):
        build_gradient_model(one_row, "x", "p")
