"""Build gradient graphs for the real model files pip packages ship, and check them.

    .venv/bin/python scripts/check_real_models.py [SITE_PACKAGES] [NAME ...]

SITE_PACKAGES is a site-packages folder holding rapidocr_onnxruntime, nudenet and silero_vad
(default: /work/venv-ref/lib/python3.11/site-packages). For each model: does a graph build
(and is it specialised to the sample shape, batch-dynamic, built with fed values folded
in); is the graph right: run in float64 (onnx's reference evaluator), its directional
derivative against float64 central differences of the model along random directions,
max |fd - g.v| / |g|; and how far the graph as igcli runs it (ONNX Runtime, float32) is
from that, |g32 - g64| / |g64|. Batch 1 and 2 when the batch is dynamic. The step is 1e-8:
with 1e-6, units of PaddleOCR's detector cross their ReLU/Clip kinks within the step and
the differences are off by 1e-3 (1e-8 gives 2e-7). One line per model; needs no torch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from igcli.autodiff import GRAD, SEED, build_gradient_graph, feed_batch_axis  # noqa: E402
from igcli.errors import UnsupportedOpsError  # noqa: E402
from tests.autodiff.checker import reference_evaluator, to_float64  # noqa: E402

SITE = Path(sys.argv[1]) if len(sys.argv) > 1 and "/" in sys.argv[1] else Path(
    "/work/venv-ref/lib/python3.11/site-packages")  # fmt: skip
OCR = "rapidocr_onnxruntime/models/"
VAD = "silero_vad/data/"
STATE = {"state": np.zeros((2, 1, 128), np.float32)}
SR = {"sr": np.array(16000, np.int64)}
HC = {"h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)}
# name: (file, sample shape, feeds, output (None: the first), input kind)
MODELS = {
    "ocr-cls": (OCR + "ch_ppocr_mobile_v2.0_cls_infer.onnx", (3, 48, 192), {}, None, "image"),
    "ocr-det": (OCR + "ch_PP-OCRv4_det_infer.onnx", (3, 96, 128), {}, None, "image"),
    "ocr-det-logits": (
        OCR + "ch_PP-OCRv4_det_infer.onnx",
        (3, 96, 128),
        {},
        "p2o.Add.281",
        "image",
    ),  # fmt: skip
    "ocr-rec": (OCR + "ch_PP-OCRv4_rec_infer.onnx", (3, 48, 160), {}, None, "image"),
    "yolov8n": ("nudenet/320n.onnx", (3, 128, 96), {}, None, "unit"),
    "silero": (VAD + "silero_vad.onnx", (512,), {**STATE, **SR}, None, "audio"),
    "silero-16k-op15": (
        VAD + "silero_vad_16k_op15.onnx",
        (512,),
        {**STATE, **SR},
        None,
        "audio",
    ),  # fmt: skip
    "silero-half": (VAD + "silero_vad_half.onnx", (512,), STATE, None, "audio"),
    "silero-op18-ifless": (
        VAD + "silero_vad_op18_ifless.onnx",
        (512,),
        {**STATE, **SR},
        None,
        "audio",
    ),  # fmt: skip
    "silero-openvino-16k": (VAD + "silero_vad_openvino_16k.onnx", (576,), STATE, None, "audio"),
    "silero-16k-sequence": (VAD + "silero_vad_16k_sequence.onnx", (576,), HC, None, "audio"),
}


def sample(kind: str, shape, batch: int, rng) -> np.ndarray:
    x = rng.standard_normal((batch, *shape))
    if kind == "unit":  # YOLO takes [0, 1] pixels
        x = rng.uniform(0, 1, (batch, *shape))
    if kind == "audio":  # speech-like amplitude: louder noise kills every unit at zero state
        x = 0.1 * np.sin(0.3 * np.arange(shape[-1])) + 0.05 * x
    return x.astype(np.float32)


def check(name: str, n_dirs: int = 3, step: float = 1e-8) -> str:
    path, shape, feeds, output, kind = MODELS[name]
    model = onnx.load(SITE / path)
    inits = {i.name for i in model.graph.initializer}
    inp = next(i.name for i in model.graph.input if i.name not in inits)
    output = output or model.graph.output[0].name
    start = time.perf_counter()
    try:
        graph = build_gradient_graph(model, inp, output, sample_shape=shape, feeds=feeds)
    except UnsupportedOpsError as exc:
        return f"{name}: no graph ({'; '.join(exc.ops)})"
    took = time.perf_counter() - start
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(graph.model.SerializeToString(), opts)
    forward64 = reference_evaluator(to_float64(model))
    backward64 = reference_evaluator(to_float64(graph.model))
    rng = np.random.default_rng(0)
    errors, offs = [], []
    for batch in (1, 2) if graph.batch_dynamic else (1,):
        x = sample(kind, shape, batch, rng)
        fb = {}
        for k, v in feeds.items():
            axis = feed_batch_axis(model, inp, k)
            fb[k] = v if axis is None else np.repeat(v, batch, axis=axis)
        fb64 = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in fb.items()}
        y = forward64.run([output], {inp: x.astype(np.float64), **fb64})[0]
        seed = rng.standard_normal(y.shape)
        grad32 = sess.run([GRAD], {inp: x, **fb, SEED: seed.astype(np.float32)})[0]
        grad = backward64.run([GRAD], {inp: x.astype(np.float64), **fb64, SEED: seed})[0]
        norm = float(np.linalg.norm(grad))
        offs.append(float(np.linalg.norm(grad32 - grad)) / max(norm, 1e-300))

        def f(z, s=seed, extra=fb64):
            return float(np.sum(s * forward64.run([output], {inp: z, **extra})[0]))

        for _ in range(n_dirs):
            v = rng.standard_normal(x.shape)
            x64 = x.astype(np.float64)
            fd = (f(x64 + step * v) - f(x64 - step * v)) / (2 * step)
            errors.append(abs(fd - float(np.sum(grad * v))) / max(norm, 1e-300))
    where = "any shape" if graph.sample_shape is None else f"shape {graph.sample_shape}"
    batch = "dynamic batch" if graph.batch_dynamic else "batch 1 only"
    fed = ", fed values folded in" if graph.uses_feed_values else ""
    return (f"{name}: graph ({where}, {batch}{fed}) built in {took:.1f} s; |g| = {norm:.2g}; "
            f"float64 graph: max |fd - g.v| / |g| = {max(errors):.1e}; "
            f"ORT float32: |g32 - g64| / |g64| = {max(offs):.1e}")  # fmt: skip


def main() -> None:
    names = [a for a in sys.argv[1:] if "/" not in a] or list(MODELS)
    for name in names:
        print(check(name), flush=True)


if __name__ == "__main__":
    main()
