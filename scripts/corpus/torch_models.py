"""torchvision and Hugging Face transformers models: build small, export, reference.

Each architecture is built once with reduced widths/depths and random weights (BatchNorm
statistics calibrated on image-like inputs, zero-initialised heads re-drawn, so that outputs
depend on the input), then exported with every exporter/opset asked for. All exports of one
architecture share one input and one Captum reference computed on the same eager module.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from corpus import common
from corpus.reference import captum_ig, pearson, rel_l1

# dynamo at 18 before 17: when conversion to 17 fails the exporter writes opset 18, and the
# entry then names the opset-18 file it duplicates
EXPORTS = [("legacy", 17), ("legacy", 18), ("dynamo", 18), ("dynamo", 17)]
STEP_CHOICES = (32, 64, 128, 256, 512)


@dataclass
class Arch:
    name: str  # file stem, e.g. tv_mobilenet_v3
    family: str  # torchvision | transformers
    architecture: str  # human name
    build: Callable  # () -> torch.nn.Module returning logits
    input_name: str
    height: int
    width: int
    exports: list
    note: str = ""


# -- builders -------------------------------------------------------------------------------


def _tv_mobilenet_v3():
    from torchvision.models import mobilenetv3

    setting, last = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return mobilenetv3.MobileNetV3(setting, last, num_classes=10)


def _tv_efficientnet():
    from torchvision.models import efficientnet

    setting, last = efficientnet._efficientnet_conf(
        "efficientnet_b0", width_mult=0.25, depth_mult=0.25
    )
    return efficientnet.EfficientNet(setting, 0.2, last_channel=last, num_classes=10)


def _tv_convnext():
    from torchvision.models import convnext

    cfg = convnext.CNBlockConfig
    return convnext.ConvNeXt([cfg(16, 32, 1), cfg(32, None, 1)], num_classes=10)


def _tv_regnet():
    from torchvision.models import regnet

    params = regnet.BlockParams.from_init_params(depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=8)
    return regnet.RegNet(params, num_classes=10)


def _tv_vit():
    from torchvision.models import vision_transformer

    return vision_transformer.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip


def _tv_swin():
    from torchvision.models import swin_transformer

    return swin_transformer.SwinTransformer(
        patch_size=[2, 2], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[4, 4],
        num_classes=10,
    )  # fmt: skip


class _Logits:
    """Wrap a transformers model so forward(x) returns the logits tensor only."""

    @staticmethod
    def wrap(model):
        import torch

        class Logits(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, pixel_values):
                return self.inner(pixel_values=pixel_values).logits

        return Logits(model)


def _hf_vit():
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
        intermediate_size=64, num_labels=10, attn_implementation="eager",
    )  # fmt: skip
    return _Logits.wrap(ViTForImageClassification(cfg))


def _hf_resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10
    )
    return _Logits.wrap(ResNetForImageClassification(cfg))


ARCHS = [
    Arch("tv_mobilenet_v3", "torchvision", "MobileNetV3-Small (width 0.25)", _tv_mobilenet_v3,
         "input", 64, 64, EXPORTS),
    Arch("tv_efficientnet", "torchvision", "EfficientNet-B0 (width 0.25, depth 0.25)",
         _tv_efficientnet, "input", 64, 64, EXPORTS),
    Arch("tv_convnext", "torchvision", "ConvNeXt (2 stages, 16/32 channels)", _tv_convnext,
         "input", 64, 64, EXPORTS),
    Arch("tv_regnet", "torchvision", "RegNet (depth 4, w0 8)", _tv_regnet, "input", 64, 64,
         EXPORTS),
    Arch("tv_vit", "torchvision", "ViT (2 layers, dim 32, patch 8)", _tv_vit, "input", 32, 32,
         EXPORTS),
    Arch("tv_swin", "torchvision", "Swin-T layout (2 stages, dim 16, window 4)", _tv_swin,
         "input", 32, 32, EXPORTS),
    Arch("hf_vit", "transformers", "ViTForImageClassification (2 layers, dim 32)", _hf_vit,
         "pixel_values", 32, 32, [("legacy", 17), ("dynamo", 18)]),
    Arch("hf_resnet", "transformers", "ResNetForImageClassification (2 stages)", _hf_resnet,
         "pixel_values", 64, 64, [("legacy", 17), ("dynamo", 18)]),
]  # fmt: skip


# -- preparing random models ------------------------------------------------------------------


def prepare(model, arch: Arch, seed: int):
    """Random weights that make the output depend on the input as a trained model's does:
    Linear layers at unit gain (classifier heads start at std 0.01 or zero), all-zero
    parameters re-drawn, ConvNeXt's layer scales widened (1e-6 at init), BatchNorm statistics
    calibrated on image-like batches."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                fan_in = module.weight.shape[1]
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=gen) / np.sqrt(fan_in)
                )
                if module.bias is not None:
                    module.bias.copy_(0.02 * torch.randn(module.bias.shape, generator=gen))
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.copy_(0.2 + 0.8 * torch.rand(p.shape, generator=gen))
            elif not p.any():
                std = 0.02 if p.ndim == 1 else 1.0 / np.sqrt(max(p[0].numel(), 1))
                p.copy_(std * torch.randn(p.shape, generator=gen))
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if bns:
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the calibration batches
            model.train()
            for k in range(4):
                batch = np.concatenate(
                    [
                        common.imagenet_tensor(arch.height, arch.width, seed + 100 * k + i)
                        for i in range(8)
                    ]
                )
                model(torch.from_numpy(batch))
    return model.eval()


# -- export ----------------------------------------------------------------------------------


def _opset(path) -> int:
    m = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def _remove(path) -> None:
    for p in (path, path.with_name(path.name + ".data")):
        if p.exists():
            p.unlink()


class _Collect(logging.Handler):
    """Keeps the exceptions the exporter logs instead of raising (its opset conversion)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.errors: list[str] = []

    def emit(self, record):
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            self.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}"[:300])


def export(model, example: np.ndarray, path, exporter: str, opset: int, arch: Arch) -> dict:
    """Export with the given exporter; returns what happened (never raises)."""
    import torch

    _remove(path)
    x = torch.from_numpy(example)
    collect = _Collect()
    logging.getLogger().addHandler(collect)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "legacy":
                torch.onnx.export(
                    model, (x,), str(path), dynamo=False, opset_version=opset,
                    input_names=[arch.input_name], output_names=["logits"],
                    dynamic_axes={arch.input_name: {0: "batch"}, "logits": {0: "batch"}},
                )  # fmt: skip
            else:
                torch.onnx.export(
                    model, (x,), str(path), dynamo=True, opset_version=opset,
                    input_names=[arch.input_name], output_names=["logits"],
                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
                )  # fmt: skip
    except Exception as exc:  # an exporter failure is an outcome to record
        _remove(path)
        return {"status": "export_failed", "error": f"{type(exc).__name__}: {exc}"[:400]}
    finally:
        logging.getLogger().removeHandler(collect)
    return {"status": "ok", "opset": _opset(path), "logged": collect.errors}


def _check_export(path, x: np.ndarray, expected: np.ndarray) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float(np.abs(out - expected).max() / max(np.abs(expected).max(), 1e-12))


# -- references -------------------------------------------------------------------------------


def reference_for(model, x: np.ndarray, baseline: np.ndarray, target: int, label: str):
    """Captum IG in float64 at the fewest steps whose completeness error is <= 0.5% (else the
    best of STEP_CHOICES), plus the float32 run at those steps (how close float32 gets)."""
    m64 = copy.deepcopy(model).double().eval()
    best = None
    for steps in STEP_CHOICES:
        ref = captum_ig(m64, x, baseline, target, steps, "gausslegendre")
        if best is None or ref.rel_error < best[0].rel_error:
            best = (ref, steps)
        if ref.rel_error <= 0.005:
            break
    ref, steps = best  # convergence is not monotone on ReLU nets
    m32 = copy.deepcopy(model).float().eval()
    r32 = captum_ig(m32, x, baseline, target, steps, "gausslegendre", dtype="float32")
    print(
        f"  {label}: steps {steps}, reference completeness {ref.rel_error:.2e}, "
        f"float32 Pearson {pearson(r32.attributions, ref.attributions):.6f}"
    )
    return ref, steps, r32


def build_arch(arch: Arch, wanted: Callable[[str], bool]) -> list[dict]:
    import torch

    names = [f"{arch.name}_{e}_op{o}" for e, o in arch.exports]
    if not any(wanted(n) for n in names):
        return []
    seed = common.seed_for(arch.name)
    torch.manual_seed(seed)
    model = prepare(arch.build(), arch, seed)
    x = common.imagenet_tensor(arch.height, arch.width, seed + 1)
    baseline = np.zeros_like(x)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
        at_baseline = model(torch.from_numpy(baseline)).numpy()
    # the class that moves most between baseline and input: a well-conditioned completeness
    # check (random ReLU nets move their top class little, and converge slowly)
    target = int(np.argmax(np.abs(logits[0] - at_baseline[0])))
    ref, steps, r32 = reference_for(model, x, baseline, target, arch.name)
    input_file = common.save_npy(common.DATA / f"{arch.name}.input.npy", x)
    ref_block = common.reference_block(
        ref,
        common.DATA / f"{arch.name}.ref.npy",
        source="the eager PyTorch module the ONNX files were exported from",
        float32_pearson=common.float6(pearson(r32.attributions, ref.attributions)),
        float32_rel_l1=common.float6(rel_l1(r32.attributions, ref.attributions)),
    )
    # a batch of two distinct images: torch.export specialises a batch dim of 1
    example = np.concatenate([x, common.imagenet_tensor(arch.height, arch.width, seed + 2)])
    entries = []
    for (exporter, opset), name in zip(arch.exports, names, strict=True):
        if not wanted(name):
            continue
        path = common.MODELS / f"{name}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        outcome = export(model, example, path, exporter, opset, arch)
        entry = {
            "name": name,
            "family": arch.family,
            "architecture": arch.architecture,
            "exporter": exporter,
            "opset_requested": opset,
            "location": "committed",
            "input": input_file,
            "input_name": None,
            "output": None,
            "feeds": {},
            "target": target,
            "baseline": "zero",
            "steps": steps,
            "method": "gausslegendre",
            "gradients": "graph",
            "note": arch.note,
        }
        if outcome["status"] != "ok":
            entry.update(status="export_failed", error=outcome["error"], file=None)
            entry["note"] = f"{exporter} exporter failed at opset {opset}: {outcome['error']}"
            entries.append(entry)
            print(f"  {name}: export failed ({outcome['error'][:120]})")
            continue
        entry["opset"] = outcome["opset"]
        if outcome["opset"] != opset:
            _remove(path)
            twin = f"{arch.name}_{exporter}_op{outcome['opset']}"
            same = twin if (exporter, outcome["opset"]) in arch.exports else None
            entry.update(status="opset_fallback", file=None, same_as=same)
            why = f" ({outcome['logged'][-1]})" if outcome["logged"] else ""
            entry["note"] = (
                f"the {exporter} exporter could not convert to opset {opset}{why} and wrote "
                f"opset {outcome['opset']} instead" + (f": the model of {same}" if same else "")
            )
            entries.append(entry)
            print(f"  {name}: {entry['note']}")
            continue
        entry["file"] = common.rel(path)
        entry["status"] = "ok"
        entry["export_max_rel_diff"] = common.float6(_check_export(path, x, logits))
        entry["reference"] = ref_block
        entry["expect"] = common.expect_graph(ref)
        entries.append(entry)
        size = path.stat().st_size + (
            path.with_name(path.name + ".data").stat().st_size
            if path.with_name(path.name + ".data").exists()
            else 0
        )
        print(f"  {name}: opset {outcome['opset']}, {size / 1024:.0f} KiB")
    return entries


# -- BERT (integer input: refused today; issue 10 attributes at the embeddings) -------------


def build_bert(wanted: Callable[[str], bool]) -> list[dict]:
    name = "hf_bert_legacy_op17"
    if not wanted(name):  # (before the imports: --only of other entries needs no transformers)
        return []
    import torch
    from captum.attr import LayerIntegratedGradients
    from transformers import BertConfig, BertForSequenceClassification

    seed = common.seed_for(name)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
        attn_implementation="eager",
    )  # fmt: skip
    bert = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # a classifier head that separates inputs (init std 0.02 barely does)
        bert.classifier.weight.normal_(0, 1.0 / np.sqrt(cfg.hidden_size), generator=None)

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits

    model = Logits(bert).eval()
    rng = np.random.default_rng(seed)
    cls_id, sep_id, pad_id = 2, 3, 0
    body = rng.integers(5, cfg.vocab_size, size=10)
    ids = np.concatenate([[cls_id], body, [sep_id], [pad_id, pad_id]])[None].astype(np.int64)
    mask = (ids != pad_id).astype(np.int64)
    types = np.zeros_like(ids)
    base_ids = np.where(np.isin(ids, [cls_id, sep_id]), ids, pad_id).astype(np.int64)
    t = {k: torch.from_numpy(v) for k, v in (("ids", ids), ("mask", mask), ("types", types))}
    path = common.MODELS / f"{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    dyn = {
        k: {0: "batch", 1: "sequence"} for k in ("input_ids", "attention_mask", "token_type_ids")
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (t["ids"], t["mask"], t["types"]), str(path), dynamo=False, opset_version=17,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["logits"], dynamic_axes={**dyn, "logits": {0: "batch"}},
        )  # fmt: skip
    with torch.no_grad():
        logits = model(t["ids"], t["mask"], t["types"]).numpy()
    target = int(np.argmax(logits[0]))
    steps = 32
    m64 = copy.deepcopy(model).double().eval()
    refs = {}
    for layer_name, layer in (
        ("word_embeddings", m64.inner.bert.embeddings.word_embeddings),
        ("embeddings", m64.inner.bert.embeddings),
    ):
        lig = LayerIntegratedGradients(m64, layer)
        attr = lig.attribute(
            t["ids"], baselines=torch.from_numpy(base_ids),
            additional_forward_args=(t["mask"], t["types"]), target=target, n_steps=steps,
            method="gausslegendre",
        )  # fmt: skip
        with torch.no_grad():
            ends = m64(
                torch.cat([t["ids"], torch.from_numpy(base_ids)]),
                torch.cat([t["mask"], t["mask"]]),
                torch.cat([t["types"], t["types"]]),
            )[:, target].numpy()
        a = attr.detach().double().numpy()
        refs[layer_name] = {
            "file": common.save_npy(
                common.DATA / f"hf_bert.lig_{layer_name}.ref.npy", a.astype(np.float32)
            ),
            "kind": "captum_layer_ig_float64",
            "layer": f"bert.embeddings{'.word_embeddings' if layer_name != 'embeddings' else ''}",
            "f_input": common.float6(ends[0]),
            "f_baseline": common.float6(ends[1]),
            "rel_error": common.float6(abs(a.sum() - (ends[0] - ends[1])) / abs(ends[0] - ends[1])),
            "per_token": [common.float6(v) for v in a.sum(axis=-1)[0]],
        }
        print(f"  {name}: LIG at {layer_name}: completeness {refs[layer_name]['rel_error']:.2e}")
    gather = _embedding_gather_output(path, bert.bert.embeddings.word_embeddings.weight)
    block = _first_layernorm_output(path)
    tokenizer = _bert_tokenizer(cfg.vocab_size, path.with_suffix(".tokenizer.json"))
    return [
        {
            "name": name,
            "family": "transformers",
            "architecture": "BertForSequenceClassification (2 layers, dim 32, vocab 200)",
            "exporter": "legacy",
            "opset_requested": 17,
            "opset": _opset(path),
            "location": "committed",
            "status": "ok",
            "file": common.rel(path),
            "input": common.save_npy(common.DATA / "hf_bert.input_ids.npy", ids),
            "input_name": "input_ids",
            "output": None,
            "feeds": {
                "attention_mask": common.save_npy(common.DATA / "hf_bert.attention_mask.npy", mask),
                "token_type_ids": common.save_npy(
                    common.DATA / "hf_bert.token_type_ids.npy", types
                ),
            },
            "target": target,
            "baseline": None,
            "steps": steps,
            "method": "gausslegendre",
            "gradients": "graph",
            "expect": {
                "exit_code": 0,
                "gradient_source": ["graph"],
                "pearson_min": common.PEARSON_MIN,
                "rel_l1_max": common.REL_L1_MAX,
                "completeness_max": common.COMPLETENESS_MAX,
            },
            "reference": refs["word_embeddings"],
            "tokenizer": common.rel(tokenizer),
            "issue10": {
                "baseline_ids": common.save_npy(common.DATA / "hf_bert.baseline_ids.npy", base_ids),
                "baseline_rule": "pad token (id 0) at every position except [CLS] (2) and "
                "[SEP] (3): igcli's default pad baseline, given the tokenizer beside the model",
                "embedding_tensor": gather,
                "block_tensor": block,
                "references": refs,
                "pearson_min": common.PEARSON_MIN,
                "completeness_max": common.COMPLETENESS_MAX,
            },
            "note": "integer input_ids: igcli attributes at the embedding lookup they feed (the "
            "word-embedding Gather) with the pad baseline made in token space; the reference is "
            "Captum LayerIntegratedGradients at word_embeddings. issue10 also holds the "
            "reference at the whole embeddings block (after position/type embeddings and "
            "LayerNorm: --at block_tensor). The tokenizer beside the model is a WordLevel vocab "
            "of the 200 ids ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4)",
        }
    ]


def _first_layernorm_output(path) -> str | None:
    """The embeddings block's output: the first LayerNormalization of the graph."""
    m = onnx.load(str(path))
    return next((n.output[0] for n in m.graph.node if n.op_type == "LayerNormalization"), None)


def _bert_tokenizer(vocab_size: int, path):
    """A WordLevel tokenizer.json for the random BERT's ids, so that igcli knows its special
    tokens (the pad baseline keeps [CLS] and [SEP]) and can show tokens."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"tok{i}": i for i in range(len(specials), vocab_size)})
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.add_special_tokens(specials)
    tok.save(str(path))
    return path


def _embedding_gather_output(path, weight) -> str | None:
    """The ONNX tensor that is the word-embedding lookup (a Gather from the embedding table)."""
    from onnx import numpy_helper

    m = onnx.load(str(path))
    table = weight.detach().numpy()
    inits = {
        t.name
        for t in m.graph.initializer
        if tuple(t.dims) == table.shape and np.allclose(numpy_helper.to_array(t), table)
    }
    for node in m.graph.node:
        if node.op_type == "Gather" and node.input[0] in inits:
            return node.output[0]
    return None
