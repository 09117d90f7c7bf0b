"""scikit-learn pipelines exported by skl2onnx, on the breast cancer data scikit-learn ships.

skl2onnx classifiers output an int64 label first and the probabilities second (through a
ZipMap, a sequence of maps, unless `zipmap` is disabled); users meet both, so both are here.
The reference is scikit-learn's own predict_proba in float64, differentiated by central
differences: it shares nothing with the ONNX file or igcli.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable

import numpy as np
import onnx

from corpus import common
from corpus.reference import Reference, fd_ig, pearson, rel_l1

STEP_CHOICES = (32, 64, 128)


def _data():
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    xtr, xte, ytr, yte = train_test_split(
        data.data, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    return data.feature_names, xtr, xte, ytr


def _models():
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "imputer": make_pipeline(
            SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=2000)
        ),
        "mlp": make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=2000, random_state=0)),
        "svc": make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)),
        "gbt": GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0),
        "rf": RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0),
    }


def _write_csv(path, names, row: np.ndarray) -> str:
    """One row, each value printed so that it parses back to the same float32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(names))
        w.writerow([f"{float(np.float32(v)):.9g}" for v in row])
    return common.rel(path)


def _export(model, n_features: int, path, zipmap: bool) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        model,
        initial_types=[("X", FloatTensorType([None, n_features]))],
        options={"zipmap": zipmap},
    )
    onx.graph.name = path.stem  # skl2onnx names the graph with a random UUID
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onx, str(path))
    return onx


def _probability_tensor(onx: onnx.ModelProto) -> str:
    """The float probabilities tensor: the ZipMap's input, or the float graph output."""
    for node in onx.graph.node:
        if node.op_type == "ZipMap":
            return node.input[0]
    return next(o.name for o in onx.graph.output if o.type.tensor_type.elem_type == 1)


# ai.onnx.ml ops that igcli writes as standard ops before differentiating (its autodiff
# contrib module): a path with only these gets a gradient graph.
WRITTEN_ML_OPS = {"Scaler", "Normalizer", "LinearClassifier", "LinearRegressor",
                  "ArrayFeatureExtractor", "Imputer"}  # fmt: skip


def path_domains(onx: onnx.ModelProto, start: str, end: str, ops: set | None = None) -> set[str]:
    """Operator domains of the nodes on any path from tensor `start` to tensor `end`
    (`ops`, when given, gets their (domain, op type) pairs)."""
    producers = {o: n for n in onx.graph.node for o in n.output}
    ancestors, stack = set(), [end]
    while stack:
        t = stack.pop()
        node = producers.get(t)
        if node is None or id(node) in ancestors:
            continue
        ancestors.add(id(node))
        stack.extend(i for i in node.input if i)
    reach, frontier = {start}, True
    domains = set()
    while frontier:
        frontier = False
        for node in onx.graph.node:
            if id(node) in ancestors and any(i in reach for i in node.input):
                new = [o for o in node.output if o not in reach]
                if new:
                    reach.update(new)
                    domains.add(node.domain or "ai.onnx")
                    if ops is not None:
                        ops.add((node.domain or "ai.onnx", node.op_type))
                    frontier = True
    return domains


def fd32_simulation(path, output: str, x, b, target, steps) -> Reference:
    """What correct float32 finite differences through ONNX Runtime can reach: steps of
    1e-3 of each feature's own |x_i - b_i| (the issue's fix), the same quadrature."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    if output not in {o.name for o in model.graph.output}:  # the tensor under a ZipMap
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)
        )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def forward(rows):
        return sess.run([output], {name: rows.astype(np.float32)})[0].astype(np.float64)

    return fd_ig(
        forward, x, b, target, steps, "gausslegendre", rel_step=1e-3, kind="fd_float32_simulated"
    )


def build(wanted: Callable[[str], bool]) -> list[dict]:
    warnings.filterwarnings("ignore", message=".*probability.*deprecated", category=FutureWarning)
    names, xtr, xte, ytr = _data()
    models = _models()
    for key, model in models.items():
        if key == "imputer":  # trained on rows with gaps, as such pipelines are
            gaps = np.random.default_rng(0).random(xtr.shape) < 0.05
            model.fit(np.where(gaps, np.nan, xtr), ytr)
        else:
            model.fit(xtr, ytr)
    # a test row the linear model is unsure about, so attributions are not all saturation
    p = models["logreg"].predict_proba(xte)[:, 1]
    row = xte[int(np.argmin(np.abs(p - 0.5)))]
    x = np.float32(row)[None].astype(np.float64)  # what igcli reads from the CSV
    baseline = np.zeros_like(x)  # igcli's default for CSV rows
    csv_raw = _write_csv(common.DATA / "breast_cancer_row.csv", names, row)
    scaler = models["logreg"][0]

    # an MLP fed standardized features: no ai.onnx.ml op between input and probabilities
    from sklearn.neural_network import MLPClassifier

    mlp_plain = MLPClassifier((16,), max_iter=2000, random_state=0)
    mlp_plain.fit(scaler.transform(xtr), ytr)
    z = np.float32(scaler.transform(row[None]))[0]
    csv_std = _write_csv(common.DATA / "breast_cancer_row_standardized.csv", names, z)
    models["mlp_plain"] = mlp_plain

    variants = [
        # name, model key, zipmap, pass --output (the float probabilities), input csv, x.
        # Two cases use the default output (it must be the probabilities, not the label);
        # the others name it, so that each case fails for one reason only.
        ("skl_logreg", "logreg", False, False, csv_raw, x),
        ("skl_logreg_zipmap", "logreg", True, False, csv_raw, x),
        ("skl_logreg_zipmap_output", "logreg", True, True, csv_raw, x),
        ("skl_mlp", "mlp", False, True, csv_raw, x),
        ("skl_imputer_logreg", "imputer", False, True, csv_raw, x),
        ("skl_mlp_standardized", "mlp_plain", False, True, csv_std, z[None].astype(np.float64)),
        ("skl_svc", "svc", False, True, csv_raw, x),
        ("skl_gbt", "gbt", False, False, csv_raw, x),
        ("skl_rf_zipmap_output", "rf", True, True, csv_raw, x),
    ]
    refs: dict[str, tuple] = {}
    entries = []
    for name, key, zipmap, output, input_file, xin in variants:
        if not wanted(name):
            continue
        model = models[key]
        stem = f"skl_{key}" + ("_zipmap" if zipmap else "")
        path = common.MODELS / f"{stem}.onnx"
        onx = _export(model, len(names), path, zipmap)
        prob = _probability_tensor(onx)
        output = prob if output else None
        target = int(np.argmax(model.predict_proba(xin)[0]))
        ops: set[tuple[str, str]] = set()
        domains = path_domains(onx, onx.graph.input[0].name, prob, ops)
        unwritten = {t for d, t in ops if d == "ai.onnx.ml"} - WRITTEN_ML_OPS
        source = "fd" if unwritten else "graph"
        trees = key in ("gbt", "rf")
        entry = {
            "name": name,
            "family": "scikit-learn",
            "architecture": _describe(model),
            "exporter": "skl2onnx",
            "opset_requested": None,
            "opset": next(o.version for o in onx.opset_import if o.domain in ("", "ai.onnx")),
            "location": "committed",
            "status": "ok",
            "file": common.rel(path),
            "input": input_file,
            "input_name": None,
            "output": output,
            "feeds": {},
            "target": target,
            "baseline": "zero",
            "method": "gausslegendre",
            "gradients": "auto",
            "ops_on_path": sorted(domains),
        }
        if zipmap and output is None:  # nothing to explain by default
            entry.update(
                steps=32,
                expect={"exit_code": 2, "stderr": ["zipmap|map|sequence"], "gradient_source": []},
                note="ZipMap output (a sequence of maps) and an int64 label: no float output to "
                "explain by default, so a one-line usage error naming the problem (exit 2); "
                f"--output {prob} (the ZipMap's input) is the way (next case)",
            )
            entries.append(entry)
            continue
        if trees:
            entry.update(
                steps=32,
                expect={
                    "exit_code": 0,
                    "gradient_source": ["fd"],
                    "stderr": ["piecewise[- ]constant"],
                    "output": prob,
                },
                reference=None,
                note="tree ensemble: piecewise constant, so the gradient is zero almost "
                "everywhere and completeness cannot converge; igcli must say so once (hint "
                "assumed to contain 'piecewise constant'). No reference: IG is not defined "
                "for a step function",
            )
            entries.append(entry)
            continue
        if key not in refs:
            refs[key] = _reference(model, xin, baseline, target, key)
        ref, steps = refs[key]
        sim = fd32_simulation(path, prob, xin, baseline, target, steps)
        ref_block = common.reference_block(
            ref,
            common.DATA / f"skl_{key}.ref.npy",
            source="scikit-learn predict_proba in float64, central differences (rel. step 1e-5)",
            fd32_simulated_pearson=common.float6(pearson(sim.attributions, ref.attributions)),
            fd32_simulated_rel_l1=common.float6(rel_l1(sim.attributions, ref.attributions)),
            fd32_simulated_rel_error=common.float6(sim.rel_error),
        )
        expect = common.expect_graph(ref, sources=(source,), fd_sim=sim, output=prob)
        entry.update(steps=steps, reference=ref_block, expect=expect)
        entry["note"] = (
            "ai.onnx.ml ops on the path: finite differences are the right source; they must "
            "use per-feature steps (the raw features span 1e-3 to 1e3) and converge"
            if source == "fd"
            else "only standard ops, or ai.onnx.ml scalers and linear models that igcli writes "
            "as standard ops, between input and probabilities: a gradient graph can be built "
            "for the probabilities output"
        )
        if output is not None and zipmap:
            entry["note"] += f"; --output {prob} names the tensor under the ZipMap"
        elif output is None:
            entry["note"] += "; the default output must be the float probabilities, not the "
            entry["note"] += "int64 label that skl2onnx puts first"
        print(
            f"  {name}: {source}, steps {steps}, ref completeness {ref.rel_error:.1e}, "
            f"fd32 sim Pearson {pearson(sim.attributions, ref.attributions):.6f} "
            f"relL1 {rel_l1(sim.attributions, ref.attributions):.2e}"
        )
        entries.append(entry)
    return entries


def _reference(model, x, baseline, target, label) -> tuple[Reference, int]:
    for steps in STEP_CHOICES:
        ref = fd_ig(
            model.predict_proba, x, baseline, target, steps, "gausslegendre",
            kind="fd_float64_sklearn",
        )  # fmt: skip
        if ref.rel_error <= 0.005:
            break
    return ref, steps


def _describe(model) -> str:
    steps = getattr(model, "steps", None)
    parts = [type(s).__name__ for _, s in steps] if steps else [type(model).__name__]
    return " + ".join(parts)
