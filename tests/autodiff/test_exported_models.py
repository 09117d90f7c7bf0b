"""Whole exported models against a PyTorch gradient stored beside them (no torch needed).

tests/autodiff/data holds a tiny torchvision ViT (32x32, two layers of width 16, random
weights) exported with the legacy TorchScript exporter at opsets 17 and 18 and with the
dynamo exporter at opset 18, and the first once more after ONNX Runtime's transformer
optimizer, which fuses SkipLayerNormalization and BiasGelu (com.microsoft ops; they fell back
to finite differences) (scripts/make_autodiff_fixtures.py). The legacy exports write
the class token's Expand and the attention reshapes as shape arithmetic; they once failed
with "'int' object is not iterable" and fell back to hours of finite differences.
vit_reference.npz holds x (batch 2), the logits and PyTorch's float64 gradient of
sum(seed * logits) w.r.t. x.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from igcli.autodiff import GRAD, SEED, build_gradient_graph

DATA = Path(__file__).parent / "data"
VITS = ["vit_legacy_opset17", "vit_legacy_opset18", "vit_dynamo_opset18", "vit_ortopt_opset17"]


def _matches_reference(sess: ort.InferenceSession, ref) -> None:
    """The graph's logits and gradient at batch 1 and 2 against the stored PyTorch ones."""
    for batch in (1, 2):
        feeds = {"x": ref["x"][:batch], SEED: ref["seed"][:batch]}
        logits, grad = sess.run(["logits", GRAD], feeds)
        np.testing.assert_allclose(logits, ref["logits"][:batch], atol=1e-5)
        want = ref["grad"][:batch]
        error = np.linalg.norm(grad - want) / np.linalg.norm(want)
        assert error < 1e-5, f"batch {batch}: relative error {error:.1e}"


@pytest.mark.parametrize("name", VITS)
def test_vit_gradient_equals_pytorch(name):
    ref = np.load(DATA / "vit_reference.npz")
    model = onnx.load(DATA / f"{name}.onnx")
    graph = build_gradient_graph(model, "x", "logits", sample_shape=(3, 32, 32))
    assert graph.batch_dynamic and not graph.uses_feed_values
    onnx.checker.check_model(graph.model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(graph.model.SerializeToString(), opts)
    _matches_reference(sess, ref)


def test_spatial_transformer_gradient_equals_pytorch():
    """A tiny spatial transformer (theta from the image, affine_grid, GridSample with border
    padding, a small CNN) as torch's dynamo exporter writes it (affine_grid as elementary
    ops): the gradient graph, at batch 1 and 2, against PyTorch's float64 gradient. Without
    the GridSample rule it fell back to finite differences."""
    ref = np.load(DATA / "stn_reference.npz")
    model = onnx.load(DATA / "stn_dynamo_opset20.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert "GridSample" in ops, ops
    graph = build_gradient_graph(model, "x", "logits", sample_shape=ref["x"].shape[1:])
    sess = ort.InferenceSession(graph.model.SerializeToString())
    _matches_reference(sess, ref)


def test_a_fully_fused_bert_is_explained_at_its_word_embeddings(tmp_path, monkeypatch):
    """The corpus's random BERT as ONNX Runtime's transformer optimizer leaves it: the word
    lookup hidden in EmbedLayerNormalization, the attention one Attention node reading its
    mask index. Before, the token model was refused ("feeds no embedding lookup"). Now it is
    attributed at the lookup through a gradient graph, and agrees with the corpus's Captum
    LayerIntegratedGradients reference for the unfused model."""
    from igcli.session import Session

    monkeypatch.setenv("IGCLI_CACHE_DIR", str(tmp_path / "cache"))
    model = onnx.load(DATA / "bert_ortopt_opset17.onnx")
    fused = {n.op_type for n in model.graph.node if n.domain == "com.microsoft"}
    assert {"EmbedLayerNormalization", "Attention", "SkipLayerNormalization"} <= fused
    corpus = Path(__file__).parent.parent / "corpus" / "data"
    feeds = {name: corpus / f"hf_bert.{name}.npy" for name in ("attention_mask", "token_type_ids")}
    session = Session(DATA / "bert_ortopt_opset17.onnx", feeds=feeds, gradients="graph")
    ids = np.load(corpus / "hf_bert.input_ids.npy")
    base = np.load(corpus / "hf_bert.baseline_ids.npy")
    ref = np.load(corpus / "hf_bert.lig_word_embeddings.ref.npy")
    a = session.attribute(ids, target=1, baseline=base, steps=32, method="gausslegendre")
    assert a.gradient_source == "graph"
    assert a.at.endswith("/word_embeddings")
    got = a.attributions.reshape(ref.shape)
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99999
    assert np.abs(got - ref).sum() / np.abs(ref).sum() < 1e-4


def test_inspect_sees_the_fused_berts_word_embeddings():
    """inspect reads the model as explain does: it said 'no float input or output to
    differentiate; explain refuses this model' of the fused BERT explain now explains."""
    from click.testing import CliRunner

    from igcli.cli import main

    result = CliRunner().invoke(main, ["inspect", str(DATA / "bert_ortopt_opset17.onnx")])
    assert result.exit_code == 0, result.output
    assert "gradient graph: yes (EmbedLayerNormalization_0_output/word_embeddings" in result.output
    assert "com.microsoft.EmbedLayerNormalization x1" in result.output  # the file's own ops
