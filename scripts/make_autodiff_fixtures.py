"""Build the small ONNX fixtures of tests/autodiff/data (needs torch: not an igcli dependency).

    /work/venv-ref/bin/python scripts/make_autodiff_fixtures.py [--only vit|stn]

A tiny torchvision VisionTransformer (32x32 images, 8x8 patches, 2 layers of width 16,
random weights, seeded) exported three ways: the legacy TorchScript exporter
(dynamo=False) at opsets 17 and 18, which writes shape arithmetic (Shape/Gather/Concat,
Expand of the class token) that once broke the transform, and the dynamo exporter at
opset 18; `vit_ortopt_opset17.onnx` is the first after ONNX Runtime's transformer
optimizer (fused com.microsoft ops), `bert_ortopt_opset17.onnx` the corpus's BERT fully
fused the same way. `vit_reference.npz` holds an input x (batch 2), the logits, a seed and
the PyTorch gradient of sum(seed * logits) w.r.t. x computed in float64, so the tests need
no torch.

`stn_dynamo_opset20.onnx` is a tiny spatial transformer: a localisation net computes theta
from the image, F.affine_grid and F.grid_sample (border padding) resample it, a small CNN
classifies; the dynamo exporter writes GridSample (and affine_grid as elementary ops).
`stn_reference.npz` holds the same kind of reference.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import onnx
import torch
from torchvision.models import VisionTransformer

OUT = Path(__file__).resolve().parent.parent / "tests" / "autodiff" / "data"


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                              hidden_dim=16, mlp_dim=32, num_classes=5)  # fmt: skip
    with torch.no_grad():  # torchvision zero-inits the head: give it weights
        model.heads.head.weight.normal_(0, 0.5)
        model.heads.head.bias.normal_(0, 0.1)
    return model.eval()


class TinySTN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.loc = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2), nn.Tanh(), nn.AdaptiveAvgPool2d(2),
                                 nn.Flatten(), nn.Linear(16, 6))  # fmt: skip
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(2),
                                  nn.Flatten(), nn.Linear(24, 5))  # fmt: skip

    def forward(self, x):
        theta = self.loc(x).view(-1, 2, 3)
        grid = torch.nn.functional.affine_grid(theta, [x.shape[0], 3, 12, 10], align_corners=False)
        sampled = torch.nn.functional.grid_sample(x, grid, padding_mode="border",
                                                  align_corners=False)  # fmt: skip
        return self.body(sampled)


def tiny_stn() -> torch.nn.Module:
    torch.manual_seed(0)
    model = TinySTN()
    with torch.no_grad():  # start near the identity transform, as STNs are trained to
        model.loc[-1].weight.mul_(0.1)
        model.loc[-1].bias.copy_(torch.tensor([0.9, 0.1, 0.05, -0.1, 1.1, 0.02]))
    return model.eval()


def export(model, x, name: str, opset: int, dynamo: bool) -> None:
    buffer = io.BytesIO()
    kwargs = {"dynamo": dynamo, "opset_version": opset, "input_names": ["x"],
              "output_names": ["logits"]}  # fmt: skip
    if dynamo:
        kwargs["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1, max=64)}}
        program = torch.onnx.export(model, (x,), **kwargs)
        program.save(str(OUT / f"{name}.onnx"))
    else:
        kwargs["dynamic_axes"] = {"x": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(model, (x,), buffer, **kwargs)
        (OUT / f"{name}.onnx").write_bytes(buffer.getvalue())
    onnx.checker.check_model(onnx.load(OUT / f"{name}.onnx"))


def reference(model, x: np.ndarray, seed: np.ndarray, make=tiny_vit) -> np.ndarray:
    model64 = make().double()
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (model64(xt) * torch.tensor(seed, dtype=torch.float64)).sum().backward()
    return xt.grad.numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["vit", "stn"])
    only = parser.parse_args().only
    OUT.mkdir(parents=True, exist_ok=True)
    if only != "stn":
        make_vit()
    if only != "vit":
        make_stn()


def make_stn() -> None:
    model = tiny_stn()
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (2, 3, 16, 14)).astype(np.float32)
    seed = rng.standard_normal((2, 5)).astype(np.float32)
    grad = reference(model, x, seed, tiny_stn)
    with torch.no_grad():
        logits = model(torch.tensor(x)).numpy()
    export(model, torch.tensor(x), "stn_dynamo_opset20", 20, True)
    size = (OUT / "stn_dynamo_opset20.onnx").stat().st_size
    print(f"stn_dynamo_opset20.onnx: {size / 1024:.0f} KiB")
    np.savez(OUT / "stn_reference.npz", x=x, seed=seed, grad=grad, logits=logits)


def make_vit() -> None:
    model = tiny_vit()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    seed = rng.standard_normal((2, 5)).astype(np.float32)
    grad = reference(model, x, seed)
    with torch.no_grad():
        logits = model(torch.tensor(x)).numpy()
    for name, opset, dynamo in [("vit_legacy_opset17", 17, False),
                                ("vit_legacy_opset18", 18, False),
                                ("vit_dynamo_opset18", 18, True)]:  # fmt: skip
        export(model, torch.tensor(x), name, opset, dynamo)  # batch 2: torch pins a batch of 1
        print(f"{name}.onnx: {(OUT / f'{name}.onnx').stat().st_size / 1024:.0f} KiB")
    np.savez(OUT / "vit_reference.npz", x=x, seed=seed, grad=grad, logits=logits)
    optimise_vit()


def optimise_vit() -> None:
    """vit_ortopt_opset17.onnx: the legacy opset-17 export as ONNX Runtime's transformer
    optimizer leaves it (SkipLayerNormalization, BiasGelu: com.microsoft ops); the same
    function, so the same reference."""
    from onnxruntime.transformers import optimizer

    fused = optimizer.optimize_model(
        str(OUT / "vit_legacy_opset17.onnx"), model_type="vit", num_heads=2, hidden_size=16
    )
    fused.save_model_to_file(str(OUT / "vit_ortopt_opset17.onnx"))
    size = (OUT / "vit_ortopt_opset17.onnx").stat().st_size
    print(f"vit_ortopt_opset17.onnx: {size / 1024:.0f} KiB")
    optimise_bert()


def optimise_bert() -> None:
    """bert_ortopt_opset17.onnx: the corpus's random BERT (tests/corpus, int64 token ids)
    fully fused by the optimizer: EmbedLayerNormalization, Attention with a mask index,
    SkipLayerNormalization, BiasGelu. The corpus's Captum reference is its reference too."""
    from onnxruntime.transformers import optimizer

    corpus = OUT.parent.parent / "corpus" / "models" / "hf_bert_legacy_op17.onnx"
    fused = optimizer.optimize_model(str(corpus), model_type="bert", num_heads=2, hidden_size=32)
    fused.save_model_to_file(str(OUT / "bert_ortopt_opset17.onnx"))
    size = (OUT / "bert_ortopt_opset17.onnx").stat().st_size
    print(f"bert_ortopt_opset17.onnx: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
