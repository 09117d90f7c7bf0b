"""igcli against PyTorch + Captum: whole-process Integrated Gradients, same models, same run.

Each model is explained at one 224x224 input with 64 Gauss-Legendre steps from a zero
baseline, 2 threads, 16 path points per model call:

- igcli: `igcli explain MODEL INPUT.npy --steps 64 --method gausslegendre --baseline zero
  --batch-size 16 --threads 2` (each call's rows split over 2 single-threaded runs),
  timed as a whole process started fresh, with a warm gradient-graph cache (built by an
  untimed run before) and cold (an empty cache folder);
- Captum: a fresh process that loads the PyTorch model, picks the top class with one forward
  call, and runs `IntegratedGradients(model).attribute(x, baselines=0, target=t,
  method="gausslegendre", n_steps=64, internal_batch_size=16)` under
  torch.set_num_threads(2). Its attribute() time alone is shown too.

Models: the onnx package's light_resnet50 and light_densenet121 graphs with seeded random
weights (tests/light_models.py; the classifier is scaled so the softmax is not saturated),
given to Captum as the same graph converted with onnx2torch; and a ViT-S/16 (torchvision's
VisionTransformer, 12 layers, width 384, 6 heads, seeded weights), exported to ONNX (dynamo
exporter, opset 18) for igcli and given to Captum as the torchvision module itself.

Runs are interleaved (igcli warm, Captum, igcli cold, rotating the order every round) and the
table shows medians with the spread (min-max) over --rounds. Then, per model, the per-call
figures: one forward call of the model as given, one of the model after igcli's pre-pass
(BatchNormalization folded), and one gradient-graph call, all at batch 16 (goal: gradient
call <= 2.2x forward). Both tools' completeness (attribution sum against F(x) - F(0)) is
printed as a sanity check: they explain the same function.

--adaptive adds igcli's `--steps auto` against Captum at its default 50 steps. Completeness
is one sum, so the table also gives each tool's per-feature error: the relative L2 distance
of its attribution map from igcli's at 256 Gauss-Legendre steps (which matches Captum's own
256 steps to a Pearson correlation of 0.9999999). On these ReLU networks the gradient is
piecewise constant along the path, and per-feature error falls only as 1/steps whatever the
rule: at equal completeness error, fewer steps means a less exact map.

Torch, torchvision, captum and onnx2torch are bench-only; run with the reference venv and
igcli's worktree on PYTHONPATH (the igcli CLI itself runs from the worktree's .venv, which
`make test` or `make bench` creates):

    PYTHONPATH=. /work/venv-ref/bin/python bench/bench_vs_captum.py
        [--models resnet50,densenet121,vit] [--rounds 3] [--steps 64] [--batch 16]
        [--threads 2] [--workdir /tmp/igcli-bench] [--igcli .venv/bin/igcli]
        [--calls 7] [--skip-calls] [--skip-ig] [--adaptive [--tolerance 0.005]]
        [--captum-python CMD]

--captum-python runs Captum under another Python: torchvision's wheels on x86_64 come with
torch's CUDA build, which imports and attributes more slowly on the CPU than its CPU build.
ResNet-50 at 50 steps, 2 threads, on one machine (2026-12-01): torch 2.14.1+cu130 imported
in 2.5 s (14 s cold) and attributed in 10.4-11.5 s; 2.13.0+cpu in 2.0 s and 9.2-9.4 s. On
another (an AMD EPYC, 2026-12-02) the CPU build attributed in 12-16 s: a ratio against
Captum holds for one machine and one run. The onnx2torch models (resnet50, densenet121)
build and load under a CPU-only torch without torchvision: onnx2torch imports
torchvision.ops only for NMS and RoiAlign, which these graphs lack, and this script gives
it a stub where torchvision is missing. So, in a venv of its own (`pip install
torch==2.13.0 captum numpy`, then `pip install --no-deps onnx2torch onnx 'ml_dtypes<0.7'
protobuf typing_extensions` and `pip install -e .`), the whole bench runs with --models
resnet50,densenet121 --captum-python /venv-cpu/bin/python. The ViT is torchvision's own
module: `pip install --no-deps torchvision==0.28.0` and `pip install onnxscript` (for the
export) into that venv, and all three run. (PyPI's torchvision wheel is built for the CUDA
build; its C operators do not load beside the CPU build, and this script then skips their
registration, which the ViT does not use.)

--igcli is a command line: to time another checkout of igcli with the same venv, pass e.g.
--igcli "env PYTHONPATH=/path/to/checkout .venv/bin/python -m igcli" (and run the script
with that checkout on PYTHONPATH for its per-call figures).

Model files, inputs and caches live in --workdir and are reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VIT = {"num_layers": 12, "num_heads": 6, "hidden_dim": 384, "mlp_dim": 1536}


# -- model files --------------------------------------------------------------------------------
def _scale_classifier(model: onnx.ModelProto, x: np.ndarray) -> None:
    """Scale the last Conv/Gemm before a final Softmax so the logits spread about 2: random
    weights saturate the softmax, and then both tools' attributions are all zeros."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    producer = {o: n for n in model.graph.node for o in n.output}
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    if not softmax:  # logits out (light_densenet121): nothing saturates
        return
    softmax = softmax[-1]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    logits = softmax.input[0]
    probe.graph.output.append(helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    spread = float(np.std(sess.run([logits], {inp: x[None]})[0]))
    node = producer[logits]
    while node.op_type not in ("Conv", "Gemm"):
        node = producer[node.input[0]]
    inits = {i.name: i for i in model.graph.initializer}
    for name in node.input[1:3]:
        while name not in inits:  # a Reshape/Unsqueeze of the weight
            name = producer[name].input[0]
        value = numpy_helper.to_array(inits[name]) * (2.0 / spread)
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def prepare_models(names: list[str], workdir: Path) -> dict[str, dict]:
    """Write each model (ONNX for igcli, a pickled torch module for Captum) and the input."""
    import torch

    workdir.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).uniform(0, 1, size=(3, 224, 224)).astype(np.float32)
    np.save(workdir / "input.npy", x)
    cases = {}
    for name in names:
        onnx_path, torch_path = workdir / f"{name}.onnx", workdir / f"{name}.pt"
        if not (onnx_path.exists() and torch_path.exists()):
            if name == "vit":
                _torchvision_stub()
                if not hasattr(sys.modules["torchvision"], "models"):  # the stand-in
                    raise SystemExit(
                        "the ViT is torchvision's: pip install --no-deps "
                        "torchvision==0.28.0 (or run --models without vit)"
                    )
                from torchvision.models.vision_transformer import VisionTransformer

                torch.manual_seed(0)
                module = VisionTransformer(image_size=224, patch_size=16, **VIT).eval()
                torch.nn.init.normal_(module.heads.head.weight, std=0.1)  # torchvision: zeros
                example = torch.from_numpy(np.stack([x, x]))  # batch 1 would be baked in
                program = torch.onnx.export(
                    module,
                    (example,),
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=4096)}},
                    opset_version=18,
                    dynamo=True,
                )
                program.save(str(onnx_path))
            else:
                _torchvision_stub()
                from onnx2torch import convert

                from tests.light_models import randomized

                model = randomized(name, batch_free=True)
                _scale_classifier(model, x)
                onnx.save(model, str(onnx_path))
                module = convert(model).eval()
            torch.save(module, str(torch_path))
        cases[name] = {"onnx": onnx_path, "torch": torch_path}
    return cases


# -- one timed process each ---------------------------------------------------------------------
def run_igcli(
    igcli: str, model: Path, x: Path, cache: Path, out: Path, args, steps: list[str] | None = None
) -> dict:
    """One igcli process; `steps` replaces `--steps N --method gausslegendre` (adaptive runs)."""
    steps = steps or ["--steps", str(args.steps), "--method", "gausslegendre"]
    cmd = [*shlex.split(igcli), "explain", str(model), str(x), *steps,
           "--baseline", "zero", "--batch-size", str(args.batch),
           "--threads", str(args.threads), "--out", str(out), "--json", "--quiet"]  # fmt: skip
    env = {**os.environ, "IGCLI_CACHE_DIR": str(cache)}
    env.pop("PYTHONPATH", None)  # the CLI runs from its own venv (or says so: env PYTHONPATH=..)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"igcli failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"total": took, "record": record}


def run_captum(
    case: dict, x: Path, args, steps: int | None = None, save: Path | None = None
) -> dict:
    """One Captum process; `save`: where it writes its attributions (.npy)."""
    python = shlex.split(args.captum_python) if args.captum_python else [sys.executable]
    cmd = [*python, __file__, "--captum-child", str(case["torch"]), str(x), str(save or "-"),
           "--steps", str(steps or args.steps), "--batch", str(args.batch), "--threads",
           str(args.threads)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"captum failed: {proc.stderr.strip()[-800:]}")
    return {"total": took, **json.loads(proc.stdout.strip().splitlines()[-1])}


def _torchvision_stub() -> None:
    """Make torchvision importable beside torch's CPU build.

    Missing (a venv with the CPU build alone): a stand-in for the torchvision.ops names
    onnx2torch imports, its NMS and RoiAlign modules, never run here. Installed but built for
    torch's CUDA build (PyPI's wheel, `pip install --no-deps torchvision`): its C operators do
    not load, and its meta registrations for them fail ("operator torchvision::nms does not
    exist"); without those, its pure-Python models (the ViT) work."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        import types

        def missing(*args, **kwargs):
            raise NotImplementedError("torchvision is not installed")

        ops = types.ModuleType("torchvision.ops")
        ops.nms = ops.roi_align = ops.box_convert = missing
        stub = types.ModuleType("torchvision")
        stub.ops = ops
        sys.modules.update({"torchvision": stub, "torchvision.ops": ops})
    except RuntimeError:
        import types

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("meta registrations")
        import torchvision  # noqa: F401


def captum_child(
    torch_path: str, x_path: str, save: str, steps: int, batch: int, threads: int
) -> None:
    """The Captum process: load, pick the top class, attribute; report phases as JSON (and
    save the attributions, unless `save` is -)."""
    t0 = time.perf_counter()
    import torch
    from captum.attr import IntegratedGradients

    torch.set_num_threads(threads)
    t1 = time.perf_counter()
    _torchvision_stub()
    model = torch.load(torch_path, weights_only=False).eval()
    x = torch.from_numpy(np.load(x_path))[None]
    t2 = time.perf_counter()
    with torch.no_grad():
        out = model(x).reshape(1, -1)
        base = model(torch.zeros_like(x)).reshape(1, -1)
    target = int(out.argmax())
    t3 = time.perf_counter()

    def forward(z):
        return model(z).reshape(len(z), -1)

    attr = IntegratedGradients(forward).attribute(
        x, baselines=0, target=target, method="gausslegendre", n_steps=steps,
        internal_batch_size=batch,
    )  # fmt: skip
    t4 = time.perf_counter()
    if save != "-":
        np.save(save, attr[0].detach().numpy())
    delta = float(out[0, target] - base[0, target])
    total = float(attr.sum())
    print(json.dumps({"import": t1 - t0, "load": t2 - t1, "forward": t3 - t2,
                      "attribute": t4 - t3, "target": target, "delta": delta,
                      "attribution_sum": total}))  # fmt: skip


# -- per-call figures ---------------------------------------------------------------------------
def per_call(case: dict, args) -> dict:
    """Forward (as given and after the pre-pass) and gradient-graph calls at one batch,
    interleaved, medians over args.calls."""
    import onnxruntime as ort

    from igcli.autodiff import GRAD, SEED
    from igcli.autodiff.shapes import build_gradient_model_probing

    try:
        from igcli.autodiff.optimize import prepare
    except ImportError:  # an igcli from before the pre-pass
        prepare = None
    from igcli.model import graph_inputs, session_options, with_dynamic_batch

    model = onnx.load(str(case["onnx"]))
    spec = graph_inputs(model)[0]
    out = model.graph.output[0].name
    model = with_dynamic_batch(model)
    start = time.perf_counter()
    grad = build_gradient_model_probing(model, spec.name, out)
    build = time.perf_counter() - start
    prepared = prepare(model, spec.name, out) if prepare else model

    def session(m, defaults: bool = False):
        """igcli's own session options (model.session_options: no memory pattern, no
        spinning), or ONNX Runtime's defaults, which time some kernels differently."""
        if defaults:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
        else:
            opts = session_options(args.threads)
        return ort.InferenceSession(m.SerializeToString(), opts, ["CPUExecutionProvider"])

    x = np.random.default_rng(1).uniform(0, 1, (args.batch, 3, 224, 224)).astype(np.float32)
    runs = {"forward_ort": (session(model, defaults=True), [out], {spec.name: x}),
            "forward": (session(model), [out], {spec.name: x}),
            "forward_prepared": (session(prepared), [out], {spec.name: x})}  # fmt: skip
    y = runs["forward"][0].run([out], {spec.name: x})[0]
    seed = np.zeros_like(y)
    seed.reshape(len(y), -1)[:, 0] = 1
    runs["gradient"] = (session(grad), [out, GRAD], {spec.name: x, SEED: seed})
    calls = {key: (lambda s=sess, n=names, f=feeds: s.run(n, f))
             for key, (sess, names, feeds) in runs.items()}  # fmt: skip
    # as igcli makes them: ModelRunner.call, the rows split over single-threaded Runs
    from igcli.gradients import with_target_seed
    from igcli.model import ModelRunner

    kw = dict(threads=args.threads, batch_size=args.batch)
    plain = ModelRunner(model, case["onnx"], spec.name, out, **kw)
    graph = ModelRunner(with_target_seed(grad, out), case["onnx"], spec.name, out,
                        target_input="igcli_target", **kw)  # fmt: skip
    targets = np.zeros(args.batch, np.int64)
    calls["igcli_forward"] = lambda: plain.call(x, [out])
    calls["igcli_gradient"] = lambda: graph.call(x, [out, GRAD], targets)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for call in calls.values():
        call()  # warm-up
    for _ in range(args.calls):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
    return {"build_s": build, **{k: v for k, v in times.items()}}


REFERENCE_STEPS = 256  # the per-feature reference: Gauss-Legendre, igcli's graph


def feature_error(attributions: np.ndarray, reference: np.ndarray) -> float:
    """Relative L2 distance of an attribution map from the reference, feature by feature:
    what completeness (one sum) cannot show."""
    a, r = attributions.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    return float(np.linalg.norm(a - r) / np.linalg.norm(r))


def adaptive(names: list[str], cases: dict, x: Path, args) -> None:
    """igcli with adaptive steps (warm cache) against Captum at its defaults (50
    Gauss-Legendre steps), interleaved rounds; both completeness errors shown, and both
    tools' per-feature error against a 256-step reference."""
    print(f"\nAdaptive steps (--steps auto --tolerance {args.tolerance}) against Captum's "
          f"default 50 Gauss-Legendre steps; median (min-max) of {args.rounds} rounds, "
          f"seconds. Per-feature error: relative L2 distance from igcli's attributions at "
          f"{REFERENCE_STEPS} Gauss-Legendre steps")  # fmt: skip
    print("| model | igcli auto | evaluations | completeness error | per-feature error | "
          "Captum n_steps=50 | Captum's error | Captum's per-feature error | igcli / Captum |"
          "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    auto = ["--steps", "auto", "--tolerance", str(args.tolerance)]
    for name in names:
        case, cache = cases[name], args.workdir / f"cache-{name}"
        ref_out = args.workdir / f"reference-{name}"
        reference = ["--steps", str(REFERENCE_STEPS), "--method", "gausslegendre"]
        run_igcli(args.igcli, case["onnx"], x, cache, ref_out, args, reference)
        ref = np.load(ref_out / "input.npy")
        ours, theirs = [], []
        out, saved = args.workdir / "out", args.workdir / f"captum-{name}.npy"
        run_igcli(args.igcli, case["onnx"], x, cache, out, args, auto)
        for k in range(args.rounds):
            for tool in ("igcli", "captum") if k % 2 == 0 else ("captum", "igcli"):
                if tool == "igcli":
                    ours.append(run_igcli(args.igcli, case["onnx"], x, cache, out, args, auto))
                else:
                    theirs.append(run_captum(case, x, args, steps=50, save=saved))
        rec, cap = ours[-1]["record"], theirs[-1]
        ours_err = abs(rec["attribution_sum"] - rec["delta"]) / abs(rec["delta"])
        cap_err = abs(cap["attribution_sum"] - cap["delta"]) / abs(cap["delta"])
        ours_feat = feature_error(np.load(out / "input.npy"), ref)
        cap_feat = feature_error(np.load(saved), ref)
        a, c = [r["total"] for r in ours], [r["total"] for r in theirs]
        print(f"| {name} | {med(a):.2f} ({spread(a)}) | {rec.get('steps_used')} | "
              f"{100 * ours_err:.3f}% | {100 * ours_feat:.2f}% | {med(c):.2f} ({spread(c)}) | "
              f"{100 * cap_err:.3f}% | {100 * cap_feat:.2f}% | {med(a) / med(c):.2f} |",
              flush=True)  # fmt: skip


# -- report -------------------------------------------------------------------------------------
def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet50,densenet121,vit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/igcli-bench"))
    parser.add_argument("--igcli", default=str(ROOT / ".venv" / "bin" / "igcli"))
    parser.add_argument("--skip-calls", action="store_true", help="no per-call figures")
    parser.add_argument("--skip-ig", action="store_true", help="only the per-call figures")
    parser.add_argument(
        "--adaptive",
        action="store_true",
        help="also: adaptive steps against Captum's default 50 steps",
    )
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument(
        "--captum-python",
        help="the command line of the Python that runs Captum (default: this one), e.g. a venv "
        "with torch's CPU build",
    )
    parser.add_argument("--captum-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.captum_child:
        captum_child(*args.captum_child, args.steps, args.batch, args.threads)
        return
    names = args.models.split(",")
    cases = prepare_models(names, args.workdir)
    x = args.workdir / "input.npy"
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)

    results: dict[str, dict[str, list]] = {n: {"warm": [], "cold": [], "captum": []} for n in names}
    if not args.skip_ig:
        for name in names:  # an untimed run fills the warm cache
            run_igcli(args.igcli, cases[name]["onnx"], x, args.workdir / f"cache-{name}",
                      args.workdir / "out", args)  # fmt: skip
        out = args.workdir / "out"
        for k in range(args.rounds):
            for name in names:
                case = cases[name]
                order = ["warm", "captum", "cold"]
                order = order[k % 3 :] + order[: k % 3]
                for kind in order:
                    cache = args.workdir / f"cache-{name}"
                    if kind == "cold":
                        cache = args.workdir / f"cache-cold-{name}"
                        shutil.rmtree(cache, ignore_errors=True)
                    if kind == "captum":
                        r = run_captum(case, x, args)
                    else:
                        r = run_igcli(args.igcli, case["onnx"], x, cache, out, args)
                    results[name][kind].append(r)
                    print(f"  round {k + 1} {name:12s} {kind:6s} {r['total']:7.2f} s", flush=True)
        print(f"\nWhole-process IG, {args.steps} Gauss-Legendre steps, zero baseline, one 224x224 "
              f"input, batch {args.batch}, {args.threads} threads; median (min-max) of "
              f"{args.rounds} interleaved rounds, seconds")  # fmt: skip
        print("| model | igcli warm | igcli cold | Captum | Captum import + load | Captum "
              "attribute() | warm / Captum | cold / Captum |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
        for name in names:
            r = results[name]
            warm = [v["total"] for v in r["warm"]]
            cold = [v["total"] for v in r["cold"]]
            cap = [v["total"] for v in r["captum"]]
            attr = [v["attribute"] for v in r["captum"]]
            setup = [v["import"] + v["load"] for v in r["captum"]]
            print(f"| {name} | {med(warm):.2f} ({spread(warm)}) | {med(cold):.2f} "
                  f"({spread(cold)}) | {med(cap):.2f} ({spread(cap)}) | {med(setup):.2f} | "
                  f"{med(attr):.2f} | {med(warm) / med(cap):.2f} | "
                  f"{med(cold) / med(cap):.2f} |")  # fmt: skip
        print("\nSanity: both explain the same function (attribution sum vs F(x) - F(0))")
        for name in names:
            rec = results[name]["warm"][-1]["record"]
            cap = results[name]["captum"][-1]
            print(f"  {name:12s} igcli target {rec['target']} sum {rec['attribution_sum']:+.5f} "
                  f"delta {rec['delta']:+.5f} | Captum target {cap['target']} sum "
                  f"{cap['attribution_sum']:+.5f} delta {cap['delta']:+.5f}")  # fmt: skip

    if args.adaptive:
        adaptive(names, cases, x, args)

    if not args.skip_calls:
        print(f"\nPer call at batch {args.batch}, {args.threads} threads, median (min-max) of "
              f"{args.calls} interleaved calls, ms")  # fmt: skip
        print("Sessions with igcli's options, and the forward also with ONNX Runtime's defaults; "
              "ratios against the faster forward")  # fmt: skip
        print(
            "| model | forward, ORT defaults | forward | forward, BN folded | gradient graph "
            "| gradient / forward | gradient / folded forward | same, fastest calls |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|"
        )
        keys = ("forward_ort", "forward", "forward_prepared", "gradient")
        results = {}
        for name in names:
            c = per_call(cases[name], args)
            fo, f, fp, g = (1000 * med(c[k]) for k in keys)

            def ms(key, c=c):
                low, high = 1000 * min(c[key]), 1000 * max(c[key])
                return f"{1000 * med(c[key]):.0f} ({low:.0f}-{high:.0f})"

            fastest = [min(c[k]) for k in keys]
            print(f"| {name} | {ms('forward_ort')} | {ms('forward')} | {ms('forward_prepared')} "
                  f"| {ms('gradient')} | {g / min(f, fo):.2f} | {g / fp:.2f} | "
                  f"{fastest[3] / min(fastest[:2]):.2f}, {fastest[3] / fastest[2]:.2f} |",
                  flush=True)  # fmt: skip
            results[name] = c
        print("\nAs igcli calls them (ModelRunner.call: the rows split over single-threaded "
              "Runs), ms; ratio against the fastest forward of either table")  # fmt: skip
        print("| model | forward | gradient | gradient / forward | fastest calls |\n"
              "|---|---:|---:|---:|---:|")  # fmt: skip
        for name, c in results.items():
            best = min(med(c[k]) for k in ("forward_ort", "forward", "igcli_forward"))
            low = min(min(c[k]) for k in ("forward_ort", "forward", "igcli_forward"))
            f, g = 1000 * med(c["igcli_forward"]), 1000 * med(c["igcli_gradient"])
            print(f"| {name} | {f:.0f} | {g:.0f} | {g / 1000 / best:.2f} | "
                  f"{min(c['igcli_gradient']) / low:.2f} |", flush=True)  # fmt: skip
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
