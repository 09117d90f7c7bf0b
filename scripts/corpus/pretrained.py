"""Pretrained ONNX files shipped in pip packages: PaddleOCR (rapidocr-onnxruntime), YOLOv8n
(nudenet), Silero VAD (silero-vad). The files themselves are fetched, not committed (see
tests/corpus/pretrained.json and scripts/corpus/fetch_pretrained.py); this module writes their
inputs, extra feeds and references.

References: onnx2torch conversion + Captum in float64 where it converts (PaddleOCR after its
Constant-node weights become initializers and value infos get the observed shapes; YOLOv8n
as is); float64 central differences of the model converted to float64 where it does not
(Silero: onnx2torch has no converter for If or LSTM).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from corpus import common
from corpus.convert import to_torch
from corpus.reference import captum_ig, fd_ig, onnx_runner, onnx_to_double, pearson, rel_l1

# the fewest whose reference completeness is <= 0.5%, else the best of them (bounds test time)
TORCH_STEPS = (32, 64, 128)
CANDIDATES = 8  # targets tried for the best-converging path integral


@dataclass
class Pretrained:
    name: str
    package: str
    member: str
    architecture: str
    input_name: str
    make_input: Callable[[], np.ndarray]
    # (F at input, F at baseline) -> candidate targets, best first
    choose_target: Callable[[np.ndarray, np.ndarray], list[int]]
    feeds: dict = field(default_factory=dict)  # input name -> array (batch axis in place)
    batch_axes: dict = field(default_factory=dict)  # feed name -> its batch axis
    reference: str = "onnx2torch"  # onnx2torch | fd
    sequence_axis: bool = False  # axis 0 is time: every row changes the others
    sources: tuple = ("graph",)
    gradients: str = "graph"
    note: str = ""
    steps: int | None = None  # None: the fewest of TORCH_STEPS that converge
    output: str | None = None  # --output: a tensor inside the graph (issue 7 item 6)


def _wheel(package: str) -> dict:
    spec = json.loads(common.PRETRAINED.read_text())
    return next(w for w in spec["wheels"] if w["package"] == package)


def fetched_path(package: str, member: str):
    w = _wheel(package)
    return common.FETCHED / f"{w['package']}-{w['version']}" / member.rsplit("/", 1)[-1]


def _ocr_input(text: str, height: int, width: int) -> np.ndarray:
    img = (common.text_image(text, height, width) - 0.5) / 0.5  # PaddleOCR's normalisation
    return img.transpose(2, 0, 1)[None].astype(np.float32)


def _moving(fx: np.ndarray, fb: np.ndarray, allowed: np.ndarray | None = None) -> list[int]:
    """Outputs ranked by how much they move between baseline and input, those not saturated
    first (0.2 <= F(x) <= 0.8 for these probability outputs: a saturated Softmax or Sigmoid
    target is issue 7 item 6's warning case, not a gradient test)."""
    fx, fb = fx.reshape(-1), fb.reshape(-1)
    mask = np.ones(fx.shape, bool) if allowed is None else allowed.reshape(-1)
    moderate = mask & (fx >= 0.2) & (fx <= 0.8)
    pool = moderate if moderate.any() else mask
    score = np.where(pool, np.abs(fx - fb), -1.0)
    order = np.argsort(-score, kind="stable")
    return [int(i) for i in order[:CANDIDATES] if score[i] >= 0]


def _det_target(fx: np.ndarray, fb: np.ndarray) -> list[int]:
    """A pixel whose probability (the sigmoid of these logits) is moderate."""
    return _moving(1 / (1 + np.exp(-fx)), 1 / (1 + np.exp(-fb)))


def _rec_target(fx: np.ndarray, fb: np.ndarray) -> list[int]:
    """A non-blank character (class 0 is CTC's blank) at a moderate probability."""
    allowed = np.ones_like(fx, dtype=bool)
    allowed[..., 0] = False
    return _moving(fx, fb, allowed)


def _yolo_target(fx: np.ndarray, fb: np.ndarray) -> list[int]:
    """A class score (rows 4.. of [1, 4 + classes, anchors]; rows 0..3 are box pixels)."""
    allowed = np.zeros_like(fx, dtype=bool)
    allowed[:, 4:] = True
    return _moving(fx, fb, allowed)


def _voice(n: int = 576, seed: int = 7) -> np.ndarray:
    """A voiced-speech-like chunk at 16 kHz: harmonics of 140 Hz, amplitude-modulated, plus
    noise (Silero's 512 samples plus its 64-sample context)."""
    t = np.arange(n) / 16000
    rng = np.random.default_rng(seed)
    sig = sum((0.6 / k) * np.sin(2 * np.pi * 140 * k * t + k) for k in range(1, 12))
    sig = sig * (0.5 + 0.5 * np.sin(2 * np.pi * 5 * t)) + 0.02 * rng.standard_normal(n)
    return (0.3 * sig / np.abs(sig).max()).astype(np.float32)[None]


SILERO_FEEDS = {"state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}
SILERO_NOTE = (
    "If nodes on the sample rate with the whole network inside (the outer-scope input is read "
    "in the branches): a graph must follow outer-scope captures, else auto falls back to "
    "finite differences; never the all-zero 'graph' of today. The state input is "
    "[2, batch, 128]: --feed must use its batch axis 1"
)

MODELS = [
    Pretrained(
        "ppocr_cls_mobile_v2", "rapidocr-onnxruntime",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "PaddleOCR text-direction classifier (MobileNetV3, opset 11)", "x",
        lambda: _ocr_input("Hello", 48, 192), _moving,
        note="input [-1, 3, ?, ?]: Softmax before opset 13 on a tensor of unknown rank; "
        "needs a graph specialised to the input shape",
    ),
    Pretrained(
        "ppocr_det_v4", "rapidocr-onnxruntime",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "PaddleOCR v4 text detector (DBNet, opset 12)", "x",
        lambda: _ocr_input("igcli 42", 64, 128), _det_target, output="logits",
        note="fully dynamic NCHW input; ConvTranspose and Resize need concrete shapes. "
        "Explained at the logits under the final Sigmoid (--output names a tensor inside the "
        "graph, issue 7 item 6): from the gray baseline the probability climbs from 1e-15, a "
        "path no 128-point rule integrates; the target is a text pixel of moderate probability",
    ),
    Pretrained(
        "ppocr_rec_v4", "rapidocr-onnxruntime",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "PaddleOCR v4 text recognizer (SVTR-LCNet + CTC, opset 12)", "x",
        lambda: _ocr_input("igcli", 48, 96), _rec_target,
        note="dynamic width; output [1, T, 6625] softmax; the target is a non-blank character "
        "of moderate probability (index t * 6625 + class)",
    ),
    Pretrained(
        "yolov8n_nudenet_320", "nudenet", "nudenet/320n.onnx",
        "YOLOv8n detector (Ultralytics export, opset 17)", "images",
        lambda: common.image_like(320, 320, 11).transpose(2, 0, 1)[None].astype(np.float32),
        _yolo_target,
        note="Range/ConstantOfShape/Expand build the anchor grid from shapes only (no gradient "
        "flows through them); target = the top class score of the most confident anchor",
    ),
    Pretrained(
        "silero_vad", "silero-vad", "silero_vad/data/silero_vad.onnx",
        "Silero VAD v6 (opset 16, If on sr, LSTM inside)", "input", _voice, lambda fx, fb: [0],
        feeds=SILERO_FEEDS, batch_axes={"state": 1}, reference="fd", steps=32,
        sources=("graph", "fd"), gradients="auto",
        note=SILERO_NOTE + "; a graph also needs an LSTM rule",
    ),
    Pretrained(
        "silero_vad_16k_op15", "silero-vad", "silero_vad/data/silero_vad_16k_op15.onnx",
        "Silero VAD v6, 16 kHz, opset 15 (If nodes inside the decoder, LSTM)", "input", _voice,
        lambda fx, fb: [0], feeds=SILERO_FEEDS, batch_axes={"state": 1}, reference="fd", steps=32,
        sources=("graph", "fd"), gradients="auto",
        note="If nodes around the LSTM read outer-scope tensors; a graph needs If and LSTM "
        "rules, else finite differences; --feed state needs batch axis 1",
    ),
    Pretrained(
        "silero_vad_op18_ifless", "silero-vad", "silero_vad/data/silero_vad_op18_ifless.onnx",
        "Silero VAD v6, opset 18 (one If on sr; LSTM unrolled into Gemm/Sigmoid/Tanh)",
        "input", _voice, lambda fx, fb: [0], feeds=SILERO_FEEDS, batch_axes={"state": 1},
        reference="fd", steps=32, sources=("graph", "fd"), gradients="auto",
        note="despite its name, one If on sr holds the whole network, built from standard ops "
        "only: a graph that follows outer-scope captures can differentiate it; else finite "
        "differences. --feed state needs batch axis 1",
    ),
    Pretrained(
        "silero_vad_16k_sequence", "silero-vad", "silero_vad/data/silero_vad_16k_sequence.onnx",
        "Silero VAD v6 sequence model (frames on axis 0 run through one LSTM)", "input",
        _voice, lambda fx, fb: [0],
        feeds={"h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)},
        reference="fd", steps=32, sequence_axis=True, sources=("graph", "fd"), gradients="auto",
        note="axis 0 is time, not batch (rows feed one another through the LSTM, and h/c have "
        "batch 1): stacking path points along axis 0 gives silently wrong values. Correct "
        "attributions need one path point per call (e.g. detected by probing batch 1 vs 2); "
        "an LSTM rule would give a graph",
    ),
]  # fmt: skip


def _session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def _cut_before_last_activation(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model up to the input of the Sigmoid/Softmax that makes its first output: what
    `--output TENSOR` explains when TENSOR is that input."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    last = next(n for n in m.graph.node if m.graph.output[0].name in n.output)
    if last.op_type not in ("Sigmoid", "Softmax"):
        raise SystemExit(f"the last op is {last.op_type}, not an activation")
    logits = last.input[0]
    m.graph.node.remove(last)
    del m.graph.output[:]
    m.graph.output.append(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None))
    return m, logits


def _best_converging(sess, spec: Pretrained, x, baseline, feeds, candidates: list[int]) -> int:
    """Among candidate targets, the one whose path integral a 128-node Gauss-Legendre rule
    gets closest (float32 directional differences along the path): real ReLU/Clip-heavy nets
    converge slowly for some outputs and fast for others, and the test's completeness bound
    follows the reference's own error."""
    if len(candidates) == 1:
        return candidates[0]
    nodes, weights = np.polynomial.legendre.leggauss(128)
    nodes, weights = (nodes + 1) / 2, weights / 2
    h = 1e-3
    alphas = np.concatenate([nodes - h, nodes + h, [0.0, 1.0]])
    shape = (-1,) + (1,) * (x.ndim - 1)
    rows = (baseline[0] + alphas.reshape(shape) * (x[0] - baseline[0])).astype(np.float32)
    values = []
    for start in range(0, len(rows), 16):
        chunk = rows[start : start + 16].reshape((-1, *x.shape[1:]))
        feed = {spec.input_name: chunk}
        for name, value in feeds.items():
            axis = spec.batch_axes.get(name)
            feed[name] = np.repeat(value, len(chunk), axis=axis) if axis is not None else value
        values.append(sess.run(None, feed)[0].reshape(len(chunk), -1)[:, candidates])
    f = np.concatenate(values).astype(np.float64)
    n = len(nodes)
    integral = weights @ ((f[n : 2 * n] - f[:n]) / (2 * h))
    delta = f[-1] - f[-2]
    errors = np.abs(integral - delta) / np.maximum(np.abs(delta), 1e-12)
    return candidates[int(np.argmin(errors))]


def _torch_reference(model: onnx.ModelProto, spec: Pretrained, x, baseline, target, out):
    """onnx2torch + Captum in float64 at the fewest TORCH_STEPS whose completeness error is
    <= 0.5%; path points share calls only if the module reproduces ONNX Runtime on a batch."""
    import torch

    m64 = to_torch(model, {spec.input_name: x})
    with torch.no_grad():
        check = m64(torch.from_numpy(x).double())
        pair = m64(torch.from_numpy(np.concatenate([baseline, x])).double())
    check = check[0] if isinstance(check, (list, tuple)) else check
    pair = pair[0] if isinstance(pair, (list, tuple)) else pair
    batched = pair.shape[0] == 2 and np.allclose(pair[1].numpy(), check[0].numpy(), atol=1e-9)
    best = None
    for steps in (spec.steps,) if spec.steps else TORCH_STEPS:
        ref = captum_ig(
            m64, x, baseline, target, steps, "gausslegendre",
            internal_batch_size=16 if batched else 1,
        )  # fmt: skip
        print(f"    steps {steps}: reference completeness {ref.rel_error:.2e}")
        if best is None or ref.rel_error < best[0].rel_error:
            best = (ref, steps)
        if ref.rel_error <= 0.005:
            break
    ref, steps = best  # convergence is not monotone on ReLU/Clip-heavy nets
    ref.kind = "onnx2torch_captum_ig_float64"
    return ref, steps, check.numpy()


def _fd_reference(model: onnx.ModelProto, spec: Pretrained, x, baseline, target, steps):
    """float64 central differences of the model converted to float64."""
    run, engine = onnx_runner(onnx_to_double(model))
    inputs = [i.name for i in model.graph.input]

    def forward(rows: np.ndarray) -> np.ndarray:
        if spec.sequence_axis:  # one row per call: rows are frames of one sequence
            return np.concatenate([forward_batch(r[None]) for r in rows])
        return forward_batch(rows)

    def forward_batch(rows):
        feed = {spec.input_name: rows.astype(np.float64)}
        for name, value in spec.feeds.items():
            if name not in inputs:
                continue
            value = value.astype(np.float64) if value.dtype == np.float32 else value
            axis = spec.batch_axes.get(name)
            if axis is not None:
                value = np.repeat(value, len(rows), axis=axis)
            feed[name] = value
        return np.asarray(run(feed)[0], np.float64).reshape(len(rows), -1)

    ref = fd_ig(
        forward, x, baseline, target, steps, "gausslegendre",
        rows_per_call=256, kind=f"fd_float64_{engine.replace('.', '_')}",
    )  # fmt: skip
    return ref, forward(x.astype(np.float64))


def build(wanted: Callable[[str], bool]) -> list[dict]:
    entries = []
    for spec in MODELS:
        if not wanted(spec.name):
            continue
        path = fetched_path(spec.package, spec.member)
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `make corpus-fetch` first")
        model = onnx.load(str(path))
        output = None
        if spec.output == "logits":
            model, output = _cut_before_last_activation(model)
        inputs = [i.name for i in model.graph.input]
        feeds = {k: v for k, v in spec.feeds.items() if k in inputs}
        x = spec.make_input()
        baseline = np.zeros_like(x)
        sess = _session(model)
        out = sess.run(None, {spec.input_name: x, **feeds})[0]
        at_baseline = sess.run(None, {spec.input_name: baseline, **feeds})[0]
        candidates = spec.choose_target(out, at_baseline)
        target = _best_converging(sess, spec, x, baseline, feeds, candidates)
        if spec.reference == "onnx2torch":
            ref, steps, check = _torch_reference(model, spec, x, baseline, target, out)
        else:
            steps = spec.steps
            ref, check = _fd_reference(model, spec, x, baseline, target, steps)
        conv_diff = float(
            np.abs(check.reshape(-1) - out.reshape(-1)).max() / max(np.abs(out).max(), 1e-12)
        )
        feed_files = {
            k: common.save_npy(common.DATA / f"{spec.name}.{k}.npy", v) for k, v in feeds.items()
        }
        extra = {"converted_vs_onnxruntime_max_rel_diff": common.float6(conv_diff)}
        sim = None
        if spec.reference == "fd":
            sim = _fd32_simulation(path, spec, x, baseline, target, feeds, steps)
            extra.update(
                fd32_simulated_pearson=common.float6(pearson(sim.attributions, ref.attributions)),
                fd32_simulated_rel_l1=common.float6(rel_l1(sim.attributions, ref.attributions)),
                fd32_simulated_rel_error=common.float6(sim.rel_error),
            )
        ref_block = common.reference_block(
            ref, common.DATA / f"{spec.name}.ref.npy", source=_ref_source(spec), **extra
        )
        w = _wheel(spec.package)
        entry = {
            "name": spec.name,
            "family": "pretrained",
            "architecture": spec.architecture,
            "exporter": "pretrained",
            "package": f"{spec.package}=={w['version']}",
            "licence": w["licence"],
            "opset_requested": None,
            "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "location": "fetched",
            "status": "ok",
            "file": f"{spec.package}-{w['version']}/{path.name}",
            "input": common.save_npy(common.DATA / f"{spec.name}.input.npy", x),
            "input_name": None,
            "output": output,
            "feeds": feed_files,
            "target": target,
            "baseline": "zero",
            "steps": steps,
            "method": "gausslegendre",
            "gradients": spec.gradients,
            "reference": ref_block,
            "expect": common.expect_graph(ref, sources=spec.sources, fd_sim=sim),
            "note": spec.note,
        }
        print(
            f"  {spec.name}: target {target}, F(x) {ref.f_input:.4g} F(b) {ref.f_baseline:.4g}, "
            f"ref completeness {ref.rel_error:.1e}, conversion diff {conv_diff:.1e}"
        )
        entries.append(entry)
    return entries


def _ref_source(spec: Pretrained) -> str:
    if spec.reference == "onnx2torch":
        return (
            "onnx2torch conversion of the same file (Constant weights as initializers, value "
            "infos with observed shapes), Captum IG in float64"
        )
    how = "one row per call (axis 0 is time)" if spec.sequence_axis else "rows batched"
    return (
        "float64 central differences (rel. step 1e-5) of the same file converted to float64 "
        f"(onnx2torch has no If/LSTM converter); {how}"
    )


def _fd32_simulation(path, spec: Pretrained, x, baseline, target, feeds, steps):
    """What correct float32 finite differences can reach on this model (steps 1e-3 of each
    feature's own |x_i - b_i|, one path point per call where axis 0 is time)."""
    sess = _session(path)

    def forward(rows):
        if spec.sequence_axis:
            return np.concatenate([forward_batch(r[None]) for r in rows])
        return forward_batch(rows)

    def forward_batch(rows):
        feed = {spec.input_name: rows.astype(np.float32)}
        for name, value in feeds.items():
            axis = spec.batch_axes.get(name)
            feed[name] = np.repeat(value, len(rows), axis=axis) if axis is not None else value
        return sess.run(None, feed)[0].astype(np.float64).reshape(len(rows), -1)

    return fd_ig(
        forward, x, baseline, target, steps, "gausslegendre", rel_step=1e-3,
        rows_per_call=1024, kind="fd_float32_simulated",
    )  # fmt: skip
