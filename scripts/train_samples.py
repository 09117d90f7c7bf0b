"""Train and export igcli's bundled sample models, their sidecars and the sample inputs.

Dev-only: igcli never imports this file. It needs torch (CPU), scikit-learn, onnx,
onnxruntime, numpy and pillow, and for the text model `tokenizers`, best in a venv of its own,
kept apart from igcli's:

    python3 -m venv /tmp/trainvenv
    /tmp/trainvenv/bin/pip install torch==2.13.0 scikit-learn onnx onnxruntime pillow numpy \
        tokenizers
    /tmp/trainvenv/bin/python scripts/train_samples.py           # all, from the repository root
    /tmp/trainvenv/bin/python scripts/train_samples.py text      # only the text model

The image and tabular data sets ship inside scikit-learn, the text model's sentences are
generated here (nothing is downloaded). Training is deterministic: fixed seeds, one thread,
torch.use_deterministic_algorithms. The digits and breast-cancer models were made with torch
2.13.0, the text model with torch 2.14.1 (the versions in the files' producer field); another
torch version may export different bytes for the same weights. It writes
  sample_models/digits_cnn.{onnx,json}          CNN on load_digits, upscaled to 28x28
  sample_models/breast_cancer_mlp.{onnx,json}   MLP on load_breast_cancer (standardized input)
  sample_models/sentiment.{onnx,json}           a one-layer attention text classifier, and its
  sample_models/sentiment.tokenizer.json        WordLevel tokenizer (made with `tokenizers`)
  sample_inputs/digits/digit_<label>_idx<i>.png six test images, each classified correctly
  sample_inputs/breast_cancer.csv (+ _labels.txt) eight raw test rows and their true labels
  sample_inputs/sentences.txt                   a few sentences for `make demo`
  tests/data/sentiment_heldout.jsonl            held-out sentences with their decisive words
and finally re-checks every sample input the way igcli preprocesses it, via onnxruntime.

The text task (`text`): sentences of 4 to 12 words drawn from neutral filler ("the plot was
quite long"), with 1 to 3 decisive words of one polarity ("superb", "dreadful") put at random
places; the label is their polarity. The right explanation is known: the decisive words, so a
test can check that IG puts the largest attributions on them.
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


# -- the text model -------------------------------------------------------------------------

POSITIVE = ["great", "excellent", "wonderful", "superb", "delightful", "brilliant",
            "enjoyable", "charming"]  # fmt: skip
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "dull", "horrible", "tedious", "clumsy"]
NEUTRAL = [
    "the", "a", "an", "this", "that", "movie", "film", "plot", "story", "acting", "music",
    "ending", "cast", "director", "script", "was", "is", "were", "really", "quite", "very",
    "and", "but", "with", "its", "scenes", "characters", "pace", "camera", "long", "short",
    "new", "old", "first", "second", "it", "felt", "seemed", "overall", "from", "start", "to",
    "finish", "of", "in", "on"
]  # fmt: skip
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXT_LENGTH = 16  # tokens per input, [CLS] and [SEP] included; shorter texts are padded
N_TEXT_TRAIN, N_TEXT_HELDOUT = 4000, 200
DEMO_SENTENCES = [
    "the plot was superb and the acting was really wonderful",
    "a dull film with a tedious ending",
    "the music was quite new but the story felt awful",
    "overall this movie is brilliant from start to finish",
    "the cast seemed clumsy and the script was boring",
]


def make_sentence(rng: np.random.Generator) -> tuple[list[str], int, list[int]]:
    """(words, label, positions of the decisive words): filler with 1-3 words of one polarity."""
    label = int(rng.integers(2))
    pool = POSITIVE if label == 1 else NEGATIVE
    n_decisive = int(rng.integers(1, 4))
    n_filler = int(rng.integers(max(1, 4 - n_decisive), TEXT_LENGTH - 2 - n_decisive + 1))
    words = [str(w) for w in rng.choice(NEUTRAL, size=n_filler)]
    decisive = [str(w) for w in rng.choice(pool, size=n_decisive)]
    for w in decisive:
        words.insert(int(rng.integers(len(words) + 1)), w)
    positions = [i for i, w in enumerate(words) if w in pool]
    return words, label, positions


def build_tokenizer():
    """A WordLevel tokenizer over the task's words: lower-cased, split on whitespace and
    punctuation, framed as [CLS] ... [SEP], padded to TEXT_LENGTH."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    words = sorted(set(POSITIVE + NEGATIVE + NEUTRAL))
    vocab = {t: i for i, t in enumerate(SPECIALS + words)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    frame = [(t, vocab[t]) for t in ("[CLS]", "[SEP]")]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=frame
    )
    tok.add_special_tokens(SPECIALS)
    tok.enable_padding(length=TEXT_LENGTH, pad_id=vocab["[PAD]"], pad_token="[PAD]")
    tok.enable_truncation(max_length=TEXT_LENGTH)
    return tok


class TinyText(nn.Module):
    """Word + position embeddings, one masked self-attention layer with a residual, masked
    mean pooling, a tanh MLP head: small, smooth (IG converges at default steps), and shaped
    like a transformer classifier (input_ids and attention_mask in, logits out)."""

    def __init__(self, vocab_size: int, dim: int = 16) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab_size, dim, padding_idx=0)  # [PAD] embeds to zeros
        self.position = nn.Parameter(torch.randn(TEXT_LENGTH, dim) * 0.1)
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.head = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, 2))
        self.scale = dim**-0.5

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.to(torch.float32)
        h = self.word(input_ids) + self.position[None]
        scores = self.q(h) @ self.k(h).transpose(1, 2) * self.scale
        scores = scores + (1.0 - mask[:, None, :]) * -1e4  # padding is never attended to
        h = h + torch.softmax(scores, dim=-1) @ self.v(h)
        pooled = (h * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled)


def encode_all(tok, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encodings = tok.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


def train_text() -> None:
    seed_everything(SEED)
    rng = np.random.default_rng(SEED)
    tok = build_tokenizer()
    train, seen = [], set()
    while len(train) < N_TEXT_TRAIN:
        words, label, _ = make_sentence(rng)
        train.append((" ".join(words), label))
        seen.add(" ".join(words))
    heldout = []
    while len(heldout) < N_TEXT_HELDOUT:  # sentences the model never saw
        words, label, positions = make_sentence(rng)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            heldout.append((text, label, positions))
    ids, mask = encode_all(tok, [t for t, _ in train])
    y = torch.tensor([label for _, label in train])
    model = TinyText(tok.get_vocab_size())
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    epochs = 20
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), 64):
            b = order[start : start + 64]
            opt.zero_grad()
            F.cross_entropy(model(ids_t[b], mask_t[b]), y[b]).backward()
            opt.step()
    model.eval()
    path = MODELS / "sentiment.onnx"
    torch.onnx.export(
        model, (ids_t[:2], mask_t[:2]), str(path), dynamo=False, opset_version=OPSET,
        input_names=["input_ids", "attention_mask"], output_names=["logits"],
        do_constant_folding=True,
        dynamic_axes={"input_ids": {0: "N"}, "attention_mask": {0: "N"}, "logits": {0: "N"}},
    )  # fmt: skip
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert path.stat().st_size < 100 * 1024, path.stat().st_size
    tok.save(str(MODELS / "sentiment.tokenizer.json"))
    h_ids, h_mask = encode_all(tok, [t for t, _, _ in heldout])
    h_y = np.array([label for _, label, _ in heldout])
    with torch.no_grad():
        expected = model(torch.from_numpy(h_ids), torch.from_numpy(h_mask)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input_ids": h_ids, "attention_mask": h_mask})[0]
    assert np.allclose(got, expected, atol=1e-5, rtol=1e-5), np.abs(got - expected).max()
    acc = float((got.argmax(1) == h_y).mean())
    print(f"sentiment: held-out accuracy {acc:.4f}")
    write_sidecar(
        MODELS / "sentiment.json",
        kind="text",
        description="Tiny attention classifier of synthetic sentences: neutral filler words "
        "with 1 to 3 decisive words of one polarity, which set the label (see "
        "scripts/train_samples.py).",
        input="input_ids",
        output="logits",
        labels=["negative", "positive"],
        heldout_accuracy=round(acc, 4),
        training=training_info("generated sentences", N_TEXT_TRAIN, N_TEXT_HELDOUT, epochs),
    )
    (INPUTS / "sentences.txt").write_text("".join(s + "\n" for s in DEMO_SENTENCES))
    data = ROOT / "tests" / "data"
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "sentiment_heldout.jsonl", "w") as f:
        for text, label, positions in heldout:
            words = text.split()
            record = {"text": text, "label": label, "decisive": [words[i] for i in positions],
                      "positions": positions}  # fmt: skip
            f.write(json.dumps(record) + "\n")


def verify_text() -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MODELS / "sentiment.tokenizer.json"))
    texts = (INPUTS / "sentences.txt").read_text().splitlines()
    ids, mask = encode_all(tok, texts)
    session = ort.InferenceSession(str(MODELS / "sentiment.onnx"))
    got = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0].argmax(1)
    truth = [int(any(w in POSITIVE for w in t.split())) for t in texts]
    print(f"  sentences.txt: predicted {got.tolist()}")
    assert got.tolist() == truth, (got, truth)


MODELS_TO_TRAIN = ("digits", "breast_cancer", "text")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", choices=MODELS_TO_TRAIN, help="models to train")
    wanted = parser.parse_args().only or MODELS_TO_TRAIN
    MODELS.mkdir(exist_ok=True)
    INPUTS.mkdir(exist_ok=True)
    if "digits" in wanted:
        train_digits()
    if "breast_cancer" in wanted:
        train_breast_cancer()
    if "text" in wanted:
        train_text()
    if "digits" in wanted or "breast_cancer" in wanted:
        verify_samples()
    if "text" in wanted:
        verify_text()
    print("all sample inputs are classified correctly")


if __name__ == "__main__":
    main()
