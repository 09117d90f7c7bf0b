"""Train and export igcli's bundled sample models, their sidecars and the sample inputs.

Dev-only: igcli never imports this file. It needs torch 2.13.0 (CPU), scikit-learn, onnx,
onnxruntime, numpy and pillow, best in a venv of its own, kept apart from igcli's:

    python3 -m venv /tmp/trainvenv
    /tmp/trainvenv/bin/pip install torch==2.13.0 scikit-learn onnx onnxruntime pillow numpy
    /tmp/trainvenv/bin/python scripts/train_samples.py      # from the repository root

Both data sets ship inside scikit-learn (nothing is downloaded). Training is deterministic:
fixed seeds, one thread, torch.use_deterministic_algorithms. It writes
  sample_models/digits_cnn.{onnx,json}          CNN on load_digits, upscaled to 28x28
  sample_models/breast_cancer_mlp.{onnx,json}   MLP on load_breast_cancer (standardized input)
  sample_inputs/digits/digit_<label>_idx<i>.png six test images, each classified correctly
  sample_inputs/breast_cancer.csv (+ _labels.txt) eight raw test rows and their true labels
and finally re-checks every sample input the way igcli preprocesses it, via onnxruntime.
"""

import csv
import json
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
MODELS, INPUTS = ROOT / "sample_models", ROOT / "sample_inputs"
SEED, TEST_SIZE, OPSET = 0, 0.25, 17
ALLOWED_OPS = {"Conv", "Softplus", "MaxPool", "Flatten", "Reshape", "Gemm", "MatMul", "Add", "Tanh"}
DIGIT_SAMPLES = (0, 2, 3, 5, 7, 8)  # which digits get a sample PNG
N_TABULAR_SAMPLES = 4  # rows per class in breast_cancer.csv


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def sig6(values: np.ndarray) -> list[float]:
    """Round to 6 significant digits: the sidecar holds exactly what training used."""
    return [float(f"{v:.6g}") for v in np.atleast_1d(values)]


def split(x: np.ndarray, y: np.ndarray):
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=TEST_SIZE, random_state=SEED, stratify=y)
    return x[tr], x[te], y[tr], y[te]


def fit(model, x, y, epochs, lr, batch, weight_decay=0.0, augment=None) -> None:
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch):
            b = order[start : start + batch]
            xb = augment(x[b], gen) if augment else x[b]
            opt.zero_grad()
            F.cross_entropy(model(xb), y[b]).backward()
            opt.step()
    model.eval()


def random_shift(images: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift each (already normalized) image by up to max_shift pixels, filling with background."""
    n, _, h, w = images.shape
    background = images.amin().item()  # every digit image has black (0) pixels
    padded = F.pad(images, (max_shift,) * 4, value=background)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen).tolist()
    crops = [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)]
    return torch.stack(crops)


def export(model, example, path: Path, input_name: str) -> None:
    torch.onnx.export(
        model, (example,), str(path), dynamo=False, opset_version=OPSET,
        input_names=[input_name], output_names=["logits"], do_constant_folding=True,
        dynamic_axes={input_name: {0: "N"}, "logits": {0: "N"}},
    )  # fmt: skip
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    assert ops <= ALLOWED_OPS, f"unexpected ops {ops - ALLOWED_OPS}"
    inits = proto.graph.initializer
    external = [t.name for t in inits if t.data_location == onnx.TensorProto.EXTERNAL]
    n_weights = sum(int(np.prod(t.dims)) for t in inits)
    n_params = sum(p.numel() for p in model.parameters())
    assert not external and n_weights == n_params, (external, n_weights, n_params)
    assert path.stat().st_size < 2 * 1024 * 1024, path.stat().st_size


def ort_logits(path: Path, input_name: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {input_name: x.astype(np.float32)})[0]


def check_and_score(model, path: Path, input_name: str, x: torch.Tensor, y: np.ndarray) -> float:
    """Compare onnxruntime with torch on the test set; return onnxruntime's test accuracy."""
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort_logits(path, input_name, x.numpy())
    assert np.allclose(got, expected, atol=1e-5, rtol=1e-5), np.abs(got - expected).max()
    return float((got.argmax(1) == y).mean())


def write_sidecar(path: Path, **fields) -> None:
    path.write_text(json.dumps(fields, indent=2) + "\n")


def digits_to_pixels(data: np.ndarray) -> np.ndarray:
    """8x8 images valued 0..16 -> 28x28 uint8 (white strokes on black), bilinear upscaling."""
    small = torch.from_numpy(data.reshape(-1, 1, 8, 8) / 16.0)
    big = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    return (big.clamp(0, 1) * 255).round().to(torch.uint8).numpy()[:, 0]


def train_digits() -> None:
    seed_everything(SEED)
    digits = load_digits()
    px_tr, px_te, y_tr, y_te = split(digits_to_pixels(digits.data), digits.target)
    mean, std = sig6(px_tr.mean() / 255.0), sig6(px_tr.std() / 255.0)

    def to_input(pixels: np.ndarray) -> torch.Tensor:  # exactly what igcli does with a PNG
        return ((torch.from_numpy(pixels).float() / 255.0 - mean[0]) / std[0]).unsqueeze(1)

    # Softplus rather than ReLU: a smooth integrand lets the default 50-step Gauss-Legendre
    # rule meet 1% completeness (ReLU kinks left one sample at 1.6%).
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.Softplus(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.Softplus(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
    )  # fmt: skip
    epochs = 30
    fit(model, to_input(px_tr), torch.from_numpy(y_tr), epochs, 2e-3, 32, 1e-4, random_shift)
    path = MODELS / "digits_cnn.onnx"
    export(model, to_input(px_te[:2]), path, "image")
    acc = check_and_score(model, path, "image", to_input(px_te), y_te)
    print(f"digits_cnn: test accuracy {acc:.4f}")
    pre = dict(layout="NCHW", channels=1, size=[28, 28], scale=255.0, mean=mean, std=std)
    write_sidecar(
        MODELS / "digits_cnn.json",
        kind="image",
        description="Small CNN classifying handwritten digits 0-9 (sklearn load_digits, "
        "upscaled from 8x8 to 28x28 grayscale, white strokes on black).",
        input="image",
        output="logits",
        labels=[str(c) for c in digits.target_names],
        feature_names=None,
        preprocessing=pre,
        baseline_mean=mean,  # the training pixel mean (--baseline mean)
        test_accuracy=round(acc, 4),
        training=training_info("sklearn load_digits", len(y_tr), len(y_te), epochs),
    )
    pred = ort_logits(path, "image", to_input(px_te).numpy()).argmax(1)
    out = INPUTS / "digits"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("digit_*.png"):
        old.unlink()
    for label in DIGIT_SAMPLES:
        i = int(np.flatnonzero((y_te == label) & (pred == label))[0])
        Image.fromarray(px_te[i], mode="L").save(out / f"digit_{label}_idx{i}.png")


def train_breast_cancer() -> None:
    seed_everything(SEED)
    data = load_breast_cancer()
    x_tr, x_te, y_tr, y_te = split(data.data, data.target)
    mean, std = sig6(x_tr.mean(0)), sig6(x_tr.std(0))

    def to_input(raw: np.ndarray) -> torch.Tensor:  # exactly what igcli does with a CSV row
        return torch.from_numpy(((raw - mean) / std).astype(np.float32))

    model = nn.Sequential(
        nn.Linear(30, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)
    )  # fmt: skip
    epochs = 50
    fit(model, to_input(x_tr), torch.from_numpy(y_tr), epochs, 1e-3, 32, 1e-3)
    path = MODELS / "breast_cancer_mlp.onnx"
    export(model, to_input(x_te[:2]), path, "features")
    acc = check_and_score(model, path, "features", to_input(x_te), y_te)
    print(f"breast_cancer_mlp: test accuracy {acc:.4f}")
    write_sidecar(
        MODELS / "breast_cancer_mlp.json",
        kind="tabular",
        description="Small MLP classifying breast tumours as malignant or benign from 30 "
        "cell-nucleus measurements (sklearn load_breast_cancer).",
        input="features",
        output="logits",
        labels=[str(c) for c in data.target_names],
        feature_names=[str(f) for f in data.feature_names],
        preprocessing={"mean": mean, "std": std},
        baseline_mean=mean,  # the training mean of each feature (--baseline mean)
        test_accuracy=round(acc, 4),
        training=training_info("sklearn load_breast_cancer", len(y_tr), len(y_te), epochs),
    )
    pred = ort_logits(path, "features", to_input(x_te).numpy()).argmax(1)
    correct = [np.flatnonzero((y_te == c) & (pred == c))[:N_TABULAR_SAMPLES] for c in (0, 1)]
    rows = sorted(int(i) for i in np.concatenate(correct))
    with open(INPUTS / "breast_cancer.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(data.feature_names)
        writer.writerows([[repr(float(v)) for v in x_te[i]] for i in rows])
    labels = "".join(f"{data.target_names[y_te[i]]}\n" for i in rows)
    (INPUTS / "breast_cancer_labels.txt").write_text(labels)


def training_info(dataset: str, n_train: int, n_test: int, epochs: int) -> dict:
    return {
        "dataset": dataset, "n_train": n_train, "n_test": n_test, "seed": SEED,
        "epochs": epochs, "script": "scripts/train_samples.py",
    }  # fmt: skip


def verify_samples() -> None:
    """Re-read the written files and preprocess them as igcli does, from the sidecars alone."""
    side = json.loads((MODELS / "digits_cnn.json").read_text())
    pre = side["preprocessing"]
    for png in sorted((INPUTS / "digits").glob("digit_*.png")):
        pixels = np.asarray(Image.open(png), dtype=np.float32) / pre["scale"]
        x = ((pixels - pre["mean"][0]) / pre["std"][0]).reshape(1, 1, 28, 28)
        got = side["labels"][int(ort_logits(MODELS / "digits_cnn.onnx", side["input"], x).argmax())]
        print(f"  {png.name}: predicted {got}")
        assert got == png.name.split("_")[1], png.name
    side = json.loads((MODELS / "breast_cancer_mlp.json").read_text())
    pre = side["preprocessing"]
    with open(INPUTS / "breast_cancer.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == side["feature_names"]
    raw = np.array(rows, dtype=np.float64)
    x = ((raw - pre["mean"]) / pre["std"]).astype(np.float32)
    logits = ort_logits(MODELS / "breast_cancer_mlp.onnx", side["input"], x)
    got = [side["labels"][k] for k in logits.argmax(1)]
    truth = (INPUTS / "breast_cancer_labels.txt").read_text().split()
    print(f"  breast_cancer.csv: predicted {got}")
    assert got == truth, (got, truth)


def main() -> None:
    MODELS.mkdir(exist_ok=True)
    INPUTS.mkdir(exist_ok=True)
    train_digits()
    train_breast_cancer()
    verify_samples()
    print("all sample inputs are classified correctly")


if __name__ == "__main__":
    main()
