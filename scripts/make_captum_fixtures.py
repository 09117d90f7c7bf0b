"""Captum references for igcli's expected gradients and noise averaging (tests/data/captum).

    /work/venv-ref/bin/python scripts/make_captum_fixtures.py

Needs torch, captum and onnx2torch (never igcli dependencies); the test that reads the
fixtures (tests/test_captum.py) needs none of them. For each sample model (the breast-cancer
MLP and the digits CNN, converted to PyTorch by onnx2torch and run in float64):

- GradientShap with stdevs=0 (expected gradients over K baselines, n_samples draws). Captum
  draws the baseline indices and the path positions from numpy's global generator
  (np.random.choice, then np.random.uniform); the script replays that generator to record
  the draws, and checks them by recomputing the attributions by hand.
- NoiseTunnel over IntegratedGradients (n_steps 50, Gauss-Legendre: igcli's defaults) for
  nt_type smoothgrad, smoothgrad_sq and vargrad. Captum draws the noise with torch.normal;
  the script replays torch's generator to record it, and checks it the same way.

The test then feeds igcli the same draws (monkeypatching igcli.methods' draw functions) and
compares. Each fixture is a small .npz (inputs in model space, baselines, draws, results).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import torch
from captum.attr import GradientShap, IntegratedGradients, NoiseTunnel
from onnx2torch import convert
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "captum"
SEED = 20260


def cancer_case() -> dict:
    side = json.loads((ROOT / "sample_models" / "breast_cancer_mlp.json").read_text())
    mean = np.array(side["preprocessing"]["mean"])
    std = np.array(side["preprocessing"]["std"])
    with open(ROOT / "sample_inputs" / "breast_cancer.csv") as fh:
        rows = np.array([[float(v) for v in row] for row in list(csv.reader(fh))[1:]])
    model_space = (rows - mean) / std
    return {
        "name": "breast_cancer_mlp",
        "x": model_space[0],
        "baselines": model_space[1:9],  # 8 other patients as the baseline distribution
        "baseline": np.zeros_like(model_space[0]),  # IG's baseline under noise: zero
        "stdev": 0.3,
    }


def digits_case() -> dict:
    side = json.loads((ROOT / "sample_models" / "digits_cnn.json").read_text())
    mean, std = side["preprocessing"]["mean"][0], side["preprocessing"]["std"][0]
    images = []
    for path in sorted((ROOT / "sample_inputs" / "digits").glob("*.png")):
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("L").resize((28, 28)), dtype=np.float64) / 255.0
        images.append(((pixels - mean) / std)[None])
    black = np.full((1, 28, 28), (0.0 - mean) / std)
    return {
        "name": "digits_cnn",
        "x": images[2],
        "baselines": np.stack(images[:2] + images[3:]),
        "baseline": black,
        "stdev": 0.4,
    }


def torch_model(name: str) -> torch.nn.Module:
    model = convert(onnx.load(str(ROOT / "sample_models" / f"{name}.onnx")))
    return model.double().eval()


def expected_gradients(model, case: dict, target: int, samples: int) -> dict:
    x = torch.tensor(case["x"][None])
    refs = torch.tensor(case["baselines"])
    np.random.seed(SEED)
    attr = GradientShap(model).attribute(x, baselines=refs, target=target, n_samples=samples,
                                         stdevs=0.0)  # fmt: skip
    np.random.seed(SEED)  # replay: the draws Captum just made
    index = np.random.choice(len(refs), samples)
    alphas = np.random.uniform(0.0, 1.0, samples)
    by_hand = np.zeros_like(case["x"])
    for k, a in zip(index, alphas, strict=True):
        b = case["baselines"][k]
        point = torch.tensor((b + a * (case["x"] - b))[None], requires_grad=True)
        model(point)[0, target].backward()
        by_hand += (case["x"] - b) * point.grad[0].numpy()
    by_hand /= samples
    got = attr[0].detach().numpy()
    assert np.allclose(got, by_hand, rtol=1e-9, atol=1e-12), "Captum's draws were not replayed"
    return {"eg_index": index, "eg_alphas": alphas, "eg_attributions": got}


def noise_tunnel(model, case: dict, target: int, copies: int) -> dict:
    x = torch.tensor(case["x"][None])
    b = torch.tensor(case["baseline"][None])
    tunnel = NoiseTunnel(IntegratedGradients(model))
    out = {}
    for kind in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        torch.manual_seed(SEED)
        attr = tunnel.attribute(x, nt_type=kind, nt_samples=copies, stdevs=case["stdev"],
                                baselines=b, target=target)  # fmt: skip
        out[f"nt_{kind}"] = attr[0].detach().numpy()
    torch.manual_seed(SEED)  # replay Captum's noise (one draw of the expanded input's shape)
    size = (copies, *case["x"].shape)
    noise = torch.normal(0, torch.tensor(case["stdev"]).repeat(size)).numpy().astype(np.float64)
    ig = IntegratedGradients(model)
    each = np.stack([
        ig.attribute(torch.tensor((case["x"] + n)[None]), baselines=b, target=target)[0].numpy()
        for n in noise
    ])  # fmt: skip
    assert np.allclose(out["nt_smoothgrad"], each.mean(axis=0), rtol=1e-9, atol=1e-12)
    assert np.allclose(out["nt_vargrad"], each.var(axis=0), rtol=1e-7, atol=1e-12)
    out["nt_noise"] = noise
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for case in (cancer_case(), digits_case()):
        model = torch_model(case["name"])
        with torch.no_grad():
            target = int(model(torch.tensor(case["x"][None])).argmax())
        data = {k: v for k, v in case.items() if isinstance(v, np.ndarray)}
        data.update(target=target, stdev=case["stdev"], eg_samples=64, nt_copies=6)
        data.update(expected_gradients(model, case, target, 64))
        data.update(noise_tunnel(model, case, target, 6))
        np.savez_compressed(OUT / f"{case['name']}.npz", **data)
        print(f"{case['name']}: target {target}, wrote {OUT / (case['name'] + '.npz')}")


if __name__ == "__main__":
    main()
