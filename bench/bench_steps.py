"""Steps benchmark: adaptive steps against fixed rules at equal completeness error.

For each case, every input is explained (top class, default baseline, the gradient graph)
with:
- Gauss-Legendre at 64 points (fixed);
- the trapezoid at 50 points weighted as Captum weights it: n equally spaced points, each
  1/n with the two ends halved, so the weights sum to (n-1)/n (a 2% bias at 50); igcli's
  own trapezoid rescales them to sum to 1 (same points, shown too);
- adaptive steps at the default tolerance (0.5% relative completeness error);
- adaptive steps at the completeness error each fixed rule reached on that input (one input
  per call, so each gets its own tolerance; at least 1e-6, about where float32 gradients
  stop adding up): "same error as GL64", "same error as Captum".
The table gives gradient evaluations per input (mean and max), model calls, wall time (best
of --repeats runs; one run for ResNet-50), the
completeness error (median and max over the inputs), how many inputs converged, and, to
show what completeness does not, the error of the attributions themselves against a
reference (Gauss-Legendre at --reference points): ||A - A_ref|| / ||A_ref||, and beside it
adaptive steps' own estimate of that error (the record's feature_error).

Cases: the sample digits CNN (6 PNGs), the breast-cancer MLP (8 CSV rows), and
light_resnet50 at 224x224 from the onnx package with seeded random weights (see
tests/light_models.py) on seeded uniform-noise images from a black baseline. Its random
weights give logits of ~1e5, so its softmax is saturated (F(x) = F(b) = 1); the case
`resnet50` explains the logit (the model without its final Softmax) and `resnet50_softmax`
the softmax of the logits divided by T, with T set so the logits at the first input have a
standard deviation of 3, as a trained classifier's do.

    .venv/bin/python bench/bench_steps.py [--cases digits,breast_cancer,resnet50]
        [--threads 2] [--resnet-inputs 2] [--tolerance 0.005]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CAPTUM_STEPS = 50
GL_STEPS = 64
# Float32 gradients cannot be summed to a completeness error much below 1e-7; a fixed rule
# that lands there is matched at this floor instead.
MATCH_FLOOR = 1e-6


@dataclass
class Case:
    name: str
    model: Path
    problems: list  # igcli.ig.Problem
    batch: int
    reference: int  # Gauss-Legendre points of the reference attributions
    runner: object  # the gradient graph's ModelRunner (counts calls)
    repeats: int  # timed runs per rule (the best is shown)


def resnet_model(folder: Path, softmax: bool, x0: np.ndarray) -> Path:
    """light_resnet50 with random weights, ending at the logits, or at softmax(logits / T)."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from tests.light_models import randomized

    model = randomized("resnet50", batch_free=True)
    softmax_node = model.graph.node[-1]
    assert softmax_node.op_type == "Softmax"
    logits = softmax_node.input[0]
    del model.graph.node[-1]
    model.graph.output[0].name = logits
    if softmax:
        session = ort.InferenceSession(model.SerializeToString())
        z = session.run(None, {session.get_inputs()[0].name: x0[None]})[0]
        scale = np.array(3.0 / np.std(z), dtype=np.float32)
        model.graph.initializer.append(numpy_helper.from_array(scale, "bench/inv_t"))
        model.graph.node.extend(
            [
                helper.make_node("Mul", [logits, "bench/inv_t"], ["bench/scaled"]),
                helper.make_node("Softmax", ["bench/scaled"], ["bench/prob"], axis=1),
            ]
        )
        model.graph.output[0].name = "bench/prob"
    path = folder / f"light_resnet50_{'softmax' if softmax else 'logit'}.onnx"
    onnx.save(model, str(path))
    return path


def build_case(name: str, args, tmp: Path) -> Case:
    from igcli import baselines
    from igcli.gradients import GraphGradients, pick
    from igcli.ig import Problem
    from igcli.inputs import load_samples
    from igcli.session import Session

    if name == "digits":
        model, batch, reference = ROOT / "sample_models" / "digits_cnn.onnx", args.batch, 1024
    elif name == "breast_cancer":
        model = ROOT / "sample_models" / "breast_cancer_mlp.onnx"
        batch, reference = args.batch, 1024
    elif name.startswith("resnet50"):
        rng = np.random.default_rng(0)
        xs = [rng.uniform(0, 1, size=(3, 224, 224)).astype(np.float32)
              for _ in range(args.resnet_inputs)]  # fmt: skip
        model = resnet_model(tmp, name == "resnet50_softmax", xs[0])
        batch, reference = args.resnet_batch, args.resnet_reference
    else:
        raise SystemExit(f"unknown case {name!r}")
    ex = Session(model, threads=args.threads, batch_size=batch, cache=False)
    if name == "digits":
        paths = sorted((ROOT / "sample_inputs" / "digits").glob("*.png"))
        samples = [s for p in paths for s in load_samples(p, ex.prep, p.stem)]
    elif name == "breast_cancer":
        samples = load_samples(ROOT / "sample_inputs" / "breast_cancer.csv", ex.prep, "bc")
    pairs = (
        [(x, np.zeros_like(x)) for x in xs]
        if name.startswith("resnet50")
        else [
            (
                s.x,
                baselines.make_baseline(baselines.default_baseline(s), s, ex.prep).astype(
                    s.x.dtype
                ),
            )
            for s in samples
        ]
    )
    problems = []
    for x, base in pairs:
        ends = ex.graph.run(np.stack([x, base]))
        target = int(np.argmax(ends[0].reshape(-1)))
        source = GraphGradients(ex.graph, target)
        problems.append(Problem(x, base, source, tuple(pick(ends, target))))
    repeats = 1 if name.startswith("resnet50") else args.repeats
    return Case(name, model, problems, batch, reference, ex.graph.runner, repeats)


@dataclass
class Row:
    rule: str
    evals: list[int]
    calls: int
    seconds: float
    errors: list[float]  # relative completeness error per input
    converged: list[bool | None]
    attribution_errors: list[float]
    estimates: list[float | None]  # adaptive steps' own estimate of the attribution error


def timed(case: Case, fn):
    """Results, model calls and the best wall time of case.repeats runs."""
    runner = case.runner
    best = math.inf
    for _ in range(case.repeats):
        runner.calls = 0
        start = time.perf_counter()
        results = fn()
        best = min(best, time.perf_counter() - start)
    return results, runner.calls, best


def rel(result, attributions=None) -> float:
    a = result.attributions if attributions is None else attributions
    delta = result.delta
    err = abs(float(np.sum(a, dtype=np.float64)) - delta)
    return err / abs(delta) if delta else (0.0 if err == 0 else math.inf)


def attribution_error(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def measure(case: Case, tolerance: float) -> list[Row]:
    from igcli.ig import integrated_gradients_many

    problems, batch = case.problems, case.batch
    refs = [
        r.attributions
        for r in integrated_gradients_many(problems, steps=case.reference, batch_size=batch)
    ]

    def row(rule, results, calls, seconds, attributions=None):
        attributions = attributions or [r.attributions for r in results]
        return Row(
            rule,
            [r.steps for r in results],
            calls,
            seconds,
            [rel(r, a) for r, a in zip(results, attributions, strict=True)],
            [r.converged for r in results],
            [attribution_error(a, f) for a, f in zip(attributions, refs, strict=True)],
            [r.feature_error for r in results],
        )

    rows = []
    gl, calls, secs = timed(
        case, lambda: integrated_gradients_many(problems, steps=GL_STEPS, batch_size=batch)
    )
    rows.append(row(f"Gauss-Legendre {GL_STEPS}", gl, calls, secs))
    trap, calls, secs = timed(
        case,
        lambda: integrated_gradients_many(
            problems, steps=CAPTUM_STEPS, method="riemann_trapezoid", batch_size=batch
        ),
    )
    n = CAPTUM_STEPS
    captum = [r.attributions * (n - 1) / n for r in trap]  # Captum's weights: 1/n, ends halved
    rows.append(row(f"trapezoid {n}, Captum's weights", trap, calls, secs, captum))
    rows.append(row(f"trapezoid {n}, weights sum to 1", trap, calls, secs))
    auto, calls, secs = timed(
        case,
        lambda: integrated_gradients_many(
            problems, steps="auto", tolerance=tolerance, batch_size=batch
        ),
    )
    rows.append(row(f"adaptive, tolerance {tolerance:g}", auto, calls, secs))
    for label, fixed in (("GL64", rows[0]), ("Captum", rows[1])):
        results, calls, secs = [], 0, 0.0
        for problem, err in zip(problems, fixed.errors, strict=True):
            tol = max(err, MATCH_FLOOR)
            (r,), c, s = timed(
                case,
                lambda p=problem, e=tol: integrated_gradients_many(
                    [p], steps="auto", tolerance=e, batch_size=batch
                ),
            )
            results.append(r)
            calls += c
            secs += s
        rows.append(row(f"adaptive, same error as {label}", results, calls, secs))
    return rows


CANDIDATES = (8, 12, 16, 24, 32, 48, 64, 96, 128)


def fixed_steps_needed(case: Case, tolerance: float) -> int | None:
    """The fewest Gauss-Legendre points from CANDIDATES meeting the tolerance on every input
    (and at every larger candidate): what a fixed --steps would have to be for this set."""
    from igcli.ig import integrated_gradients_many

    ok = []
    for n in CANDIDATES:
        results = integrated_gradients_many(case.problems, steps=n, batch_size=case.batch)
        ok.append(all(r.rel_error <= tolerance for r in results))
    for i, n in enumerate(CANDIDATES):
        if all(ok[i:]):
            return n
    return None


def fmt_err(values) -> str:
    return f"{np.median(values):.1e} / {np.max(values):.1e}"


def print_table(case: Case, rows: list[Row], needed: int | None, tolerance: float) -> None:
    print(f"\n{case.name}: {len(case.problems)} inputs, batch {case.batch}, "
          f"reference Gauss-Legendre {case.reference}")  # fmt: skip
    head = (
        f"  {'rule':34} {'evals/input':>12} {'max':>5} {'calls':>6} {'wall s':>8} "
        f"{'compl. err med/max':>19} {'conv.':>6} {'attr. err med/max':>19} "
        f"{'estimated med/max':>19}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in rows:
        conv = (
            "-" if r.converged[0] is None else f"{sum(map(bool, r.converged))}/{len(r.converged)}"
        )
        known = [e for e in r.estimates if e is not None]
        estimated = fmt_err(known) if known else "-"
        print(
            f"  {r.rule:34} {np.mean(r.evals):12.1f} {max(r.evals):5d} {r.calls:6d} "
            f"{r.seconds:8.3f} {fmt_err(r.errors):>19} {conv:>6} "
            f"{fmt_err(r.attribution_errors):>19} {estimated:>19}"
        )
    if needed is not None or case.name in ("digits", "breast_cancer"):
        text = f"{needed}" if needed else "more than 128"
        print(f"  fixed Gauss-Legendre steps needed for <= {tolerance:g} on every input: {text}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="digits,breast_cancer,resnet50,resnet50_softmax")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--resnet-batch", type=int, default=16)
    parser.add_argument("--resnet-inputs", type=int, default=2)
    parser.add_argument("--resnet-reference", type=int, default=256)
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (small models)")
    args = parser.parse_args()
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            case = build_case(name, args, Path(tmp))
            rows = measure(case, args.tolerance)
            needed = (
                fixed_steps_needed(case, args.tolerance)
                if name in ("digits", "breast_cancer")
                else None
            )
            print_table(case, rows, needed, args.tolerance)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
