"""The corpus of real ONNX models (issue 7): each model's expected outcome, through the CLI.

One case per entry of corpus.json (built by scripts/build_corpus.py, never at test time): run
`igcli explain MODEL INPUT --json` with the entry's target, baseline, steps, method, feeds and
gradient source, then check the exit code, the gradient source, the attributions against a
float64 reference made without igcli (Pearson and relative L1), completeness, and that nothing
is all-zero where F(x) != F(b). Expected outcomes are issue 7's target state; the cases main
does not meet yet are marked xfail in XFAIL below, by issue-7 item, for removal as fixes land.

Pretrained files come from `make corpus-fetch` (run by `make test`). Set
IGCLI_CORPUS_OUTCOMES=FILE to append one JSON line per case with what igcli did (see
outcomes.py for a table).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from igcli.cli import main

CORPUS = Path(__file__).resolve().parent
ROOT = CORPUS.parents[1]
MANIFEST = json.loads((CORPUS / "corpus.json").read_text())
FETCHED = Path(os.environ.get("IGCLI_CORPUS_CACHE", ROOT / ".cache" / "corpus"))

# What main does not do yet, by the issue-7 item that fixes it. Remove an entry when it passes.
ITEM1 = "issue 7 item 1: If branches read the input from the outer scope (all zeros today)"
ITEM2 = "issue 7 item 2: legacy-exported attention fails in the transform ('int' not iterable)"
ITEM3 = "issue 7 item 3: dynamic height/width gets no graph"
ITEM4 = "issue 7 item 4: no rule for shape-only ops (Range, Mod)"
ITEM5 = "issue 7 item 5: finite differences need per-feature steps"
ITEM5T = "issue 7 item 5: no hint that a tree ensemble is piecewise constant"
ITEM6 = "issue 7 item 6: the default output is the int64 label"
ITEM6Z = "issue 7 item 6: ZipMap output; --output of a tensor that is not a graph output"
ITEM6O = "issue 7 item 6: --output of a tensor inside the graph"
ITEM7 = "issue 7 item 7: --feed assumes batch axis 0"
SEQUENCE = "axis 0 is time here, rows must not share a call (no item of issue 7 detects it)"
XFAIL: dict[str, str] = {}  # every case passes; add "name": "reason" to mark one


def _cases():
    for entry in MANIFEST["models"]:
        marks = []
        if entry["name"] in XFAIL:
            marks.append(pytest.mark.xfail(strict=False, reason=XFAIL[entry["name"]]))
        yield pytest.param(entry, id=entry["name"], marks=marks)


def _model_path(entry: dict) -> Path:
    if entry["location"] == "fetched":
        path = FETCHED / entry["file"]
        if not path.exists():
            pytest.fail(f"{path} is missing: run `make corpus-fetch` (make test does it)")
        return path
    return CORPUS / entry["file"]


def _args(entry: dict, out: Path) -> list[str]:
    args = ["explain", str(_model_path(entry)), str(CORPUS / entry["input"]), "--json"]
    args += ["--out", str(out), "--steps", str(entry["steps"]), "--method", entry["method"]]
    args += ["--gradients", entry["gradients"]]
    if entry["target"] is not None:
        args += ["--target", str(entry["target"])]
    if entry["baseline"] is not None:
        args += ["--baseline", entry["baseline"]]
    if entry.get("output"):
        args += ["--output", entry["output"]]
    if entry.get("input_name"):
        args += ["--input", entry["input_name"]]
    for name, file in entry["feeds"].items():
        args += ["--feed", f"{name}={CORPUS / file}"]
    return args


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom else float("nan")


def rel_l1(a: np.ndarray, ref: np.ndarray) -> float:
    a, ref = a.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    return float(np.abs(a - ref).sum() / np.abs(ref).sum())


def _first_error(stderr: str) -> str:
    """The first `error:` line of stderr, with the line rich wrapped it onto."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.lower().startswith("error"):
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            wrapped = nxt and not nxt.lower().startswith(("error", "{", "outputs in", "│", "┃"))
            return f"{line} {nxt}" if wrapped else line
    return ""


def _record_outcome(entry: dict, **fields) -> None:
    path = os.environ.get("IGCLI_CORPUS_OUTCOMES")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"name": entry["name"], **fields}) + "\n")


@pytest.mark.parametrize("entry", list(_cases()))
def test_corpus_model(entry: dict, tmp_path: Path) -> None:
    if entry["status"] != "ok":
        pytest.skip(f"{entry['status']}: {entry['note']}")
    expect = entry["expect"]
    out = tmp_path / "out"
    start = time.perf_counter()
    result = CliRunner().invoke(main, _args(entry, out), catch_exceptions=False)
    seconds = time.perf_counter() - start
    stderr = result.stderr
    last_error = _first_error(stderr)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    rec = records[0] if records and records[0].get("status") == "ok" else None
    measured: dict = {"exit_code": result.exit_code, "seconds": round(seconds, 2)}
    attr = None
    if rec is not None:
        attr = np.load(out / rec["attributions_file"])
        measured.update(
            gradient_source=rec["gradient_source"], rel_error=rec["rel_error"],
            f_input=rec["f_input"], f_baseline=rec["f_baseline"],
        )  # fmt: skip
        ref = entry.get("reference")
        if ref is not None:
            reference = np.load(CORPUS / ref["file"])
            if attr.shape == reference.shape:
                measured.update(pearson=pearson(attr, reference), rel_l1=rel_l1(attr, reference))
    elif result.exit_code:
        measured["error"] = last_error[:300]
    _record_outcome(entry, **measured)

    assert "Traceback" not in stderr, stderr
    assert result.exit_code == expect["exit_code"], (
        f"exit {result.exit_code}, expected {expect['exit_code']}: {last_error or stderr[-500:]}"
    )
    for pattern in expect.get("stderr", []):
        assert re.search(pattern, stderr, re.IGNORECASE), f"stderr lacks /{pattern}/: {stderr}"
    if expect["exit_code"] != 0:
        assert not records or all(r.get("status") != "ok" for r in records)
        return

    assert rec is not None, f"no result record: {result.stdout[:500]} {stderr[-500:]}"
    assert rec["gradient_source"] in expect["gradient_source"], (
        f"gradient source {rec['gradient_source']}, expected {expect['gradient_source']}"
    )
    assert rec["target"] == entry["target"]
    if expect.get("output"):
        assert rec["output"] == expect["output"]
    assert np.all(np.isfinite(attr)), "non-finite attributions"
    delta = rec["f_input"] - rec["f_baseline"]
    scale = max(abs(rec["f_input"]), abs(rec["f_baseline"]), 1e-12)
    if expect.get("nonzero", True) and abs(delta) > 1e-6 * scale:
        assert np.any(attr != 0), f"all-zero attributions although F(x) - F(b) = {delta:.4g}"

    ref = entry.get("reference")
    if ref is not None:
        # the same model, input, output and target as the reference: F agrees to float32
        for key in ("f_input", "f_baseline"):
            assert rec[key] == pytest.approx(ref[key], rel=1e-3, abs=1e-5), key
        reference = np.load(CORPUS / ref["file"])
        assert attr.shape == reference.shape, f"shape {attr.shape}, reference {reference.shape}"
        r, l1 = measured["pearson"], measured["rel_l1"]
        assert r >= expect["pearson_min"], f"Pearson {r:.6f} < {expect['pearson_min']}"
        assert l1 <= expect["rel_l1_max"], f"relative L1 {l1:.3%} > {expect['rel_l1_max']:.0%}"
    bound = expect.get("completeness_max")
    if bound is not None:
        assert rec["rel_error"] <= bound, f"completeness error {rec['rel_error']:.3%} > {bound:.2%}"


def test_manifest_files_exist() -> None:
    """Every committed file the manifest names is in the repository (fetched ones are checked
    by corpus-fetch's SHA-256)."""
    missing = []
    for e in MANIFEST["models"]:
        files = [e["input"], *e["feeds"].values()]
        if e.get("location") == "committed" and e.get("file"):
            files.append(e["file"])
        if e.get("reference"):
            files.append(e["reference"]["file"])
        if e.get("tokenizer"):
            files.append(e["tokenizer"])
        for ref in (e.get("issue10") or {}).get("references", {}).values():
            files.append(ref["file"])
        missing += [f for f in files if f and not (CORPUS / f).exists()]
    assert not missing, missing


def _graph_cases():
    for entry in MANIFEST["models"]:
        expect = entry.get("expect", {})
        graph = "graph" in expect.get("gradient_source", [])
        if entry["status"] == "ok" and expect.get("exit_code") == 0 and graph:
            yield pytest.param(entry, id=entry["name"])


def _gradcheck_args(entry: dict) -> list[str]:
    args = ["gradcheck", str(_model_path(entry)), str(CORPUS / entry["input"]), "--json"]
    if entry["target"] is not None:
        args += ["--target", str(entry["target"])]
    for option, key in (("--output", "output"), ("--input", "input_name")):
        if entry.get(key):
            args += [option, entry[key]]
    for name, file in entry["feeds"].items():
        args += ["--feed", f"{name}={CORPUS / file}"]
    return args


@pytest.mark.parametrize("entry", list(_graph_cases()))
def test_gradcheck_believes_a_correct_graph(entry: dict) -> None:
    """Every graph that matches its reference passes gradcheck: no crying wolf."""
    result = CliRunner().invoke(main, _gradcheck_args(entry), catch_exceptions=False)
    if result.exit_code == 7 and "no gradient graph" in result.stderr:
        pytest.skip("the model gets no graph (finite differences are expected too)")
    assert result.exit_code == 0, result.stdout[-2000:] + result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] in ("ok", "kinks", "saturated"), report


def test_gradcheck_catches_a_rule_with_a_flipped_sign(monkeypatch) -> None:
    """The last Conv's input gradient negated (so every gradient upstream is wrong): both
    gradcheck and the self-check of explain must say so."""
    from igcli.autodiff.registry import RULES

    real = RULES["Conv"]
    flipped = []

    def flip_first(g):
        grads = real(g)
        if flipped:
            return grads
        flipped.append(g.node.name)
        return [g.op("Neg", grads[0]) if grads[0] else None, *grads[1:]]

    monkeypatch.setitem(RULES, "Conv", flip_first)
    entry = next(e for e in MANIFEST["models"] if e["name"] == "tv_mobilenet_v3_legacy_op17")
    result = CliRunner().invoke(main, _gradcheck_args(entry), catch_exceptions=False)
    assert flipped and result.exit_code == 7, result.stdout[-1500:]
    assert json.loads(result.stdout)["verdict"] == "mismatch"
    flipped.clear()
    explained = CliRunner().invoke(main, _args(entry, Path("/nonexistent-out")))
    assert explained.exit_code == 7 and "self-check" in explained.stderr


def test_a_real_detector_at_a_size_it_cannot_take_names_one_it_can(tmp_path) -> None:
    """nudenet's YOLOv8n takes any height and width that halve evenly five times: a 300x400
    picture fails alone with a size it runs at, and --size runs it there."""
    from PIL import Image

    entry = next(e for e in MANIFEST["models"] if e["file"] == "nudenet-3.4.2/320n.onnx")
    model = _model_path(entry)
    picture = tmp_path / "odd.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(picture)
    args = ["explain", str(model), str(picture), "--steps", "4", "--no-heatmaps"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 4, result.stderr
    assert "not 300x400: it runs at 320x416 (sides multiples of 32)" in result.stderr
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "--size", "320x416"])
    assert result.exit_code == 0, result.stderr
    assert np.load(tmp_path / "b" / "odd.npy").shape == (1, 3, 320, 416)
