"""The whole command line under fuzzing: damaged models and inputs, odd option values.

Whatever hypothesis throws at `igcli explain`, it must end with a documented exit code other
than 1 (an internal error), print no traceback, write nothing outside --out and leave no
partial file. The reading layer has its own, faster fuzz test (test_fuzz_inputs.py); this one
goes through model loading, the session, the batch loop and the reports.
"""

from __future__ import annotations

import io
import os

import numpy as np
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from igcli.cli import main
from tests import models

EXAMPLES = int(os.environ.get("IGCLI_FUZZ_EXAMPLES", "30"))
DOCUMENTED = {0, 2, 3, 4, 5, 6, 7}

MODEL_BYTES = models.tanh_linear(features=4, classes=3).SerializeToString()
NPY = io.BytesIO()
np.save(NPY, np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32))
NPY_BYTES = NPY.getvalue()
CSV_BYTES = b"a,b,c,d\n0.1,0.2,0.3,0.4\n1,2,3,4\n"


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """The bytes unchanged (half the time, so later stages get exercised too), truncated,
    with bytes flipped, or with junk inserted."""
    kind = draw(st.sampled_from(["same", "same", "same", "truncate", "flip", "insert"]))
    if kind == "same" or not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        n = draw(st.integers(1, 8))
        chunk = bytes(b ^ draw(st.integers(1, 255)) for b in data[at : at + n])
        return data[:at] + chunk + data[at + n :]
    return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]


OPTION_VALUES = {
    "--steps": st.sampled_from(["1", "2", "7", "auto", "0", "-3", "x", "100000", "1e3"]),
    "--method": st.sampled_from(["gausslegendre", "riemann_trapezoid", "riemann_left", "nope"]),
    "--baseline": st.sampled_from(["zero", "black", "uniform", "blur", "missing.npy", "white"]),
    "--target": st.sampled_from(["0", "2", "3", "-1", "1,2", "a", "99999999999999999999"]),
    "--batch-size": st.sampled_from(["1", "3", "0", "-2", "big"]),
    "--seed": st.sampled_from(["0", "-5", "7", "1.5"]),
    "--fd-groups": st.sampled_from(["1", "0x0", "2x2", "x", "4x"]),
    "--fd-step": st.sampled_from(["1e-3", "0", "2", "nan"]),
    "--gradients": st.sampled_from(["auto", "graph", "fd", "both"]),
    "--memory-limit": st.sampled_from(["1G", "1", "0", "lots", "-1M"]),
    "--tolerance": st.sampled_from(["0.005", "0", "-1", "inf"]),
    "--max-steps": st.sampled_from(["3", "2", "50"]),
    "--output": st.sampled_from(["y", "z", "h", "W", "nope", ""]),
    "--shard": st.sampled_from(["1/2", "2/2", "0/2", "3/2", "a/b"]),
    "--clip-percentile": st.sampled_from(["99.5", "0", "100", "101"]),
    "--max-completeness-error": st.sampled_from(["0.01", "0", "-1"]),
    # the path-method family (issue 11); no shapley here: --steps 100000 times 24 orders is slow
    "--path": st.sampled_from(["blur", "guided", "extremal", "extremal:3,1", "extremal:9", "x"]),
    "--noise": st.sampled_from(["2", "2,0.1", "0", "x", "3,-1", "2,nan"]),
    "--noise-type": st.sampled_from(["smoothgrad", "vargrad", "smoothgrad_sq", "nope"]),
    "--samples": st.sampled_from(["1", "3", "0", "x"]),
    "--baselines": st.sampled_from(["x.npy", "rows.csv", "missing/"]),
    "--regions": st.sampled_from(["xrai", "other"]),
}
FLAGS = ["--softmax", "--no-heatmaps", "--skip-existing", "--json", "--quiet", "--no-cache"]


@st.composite
def options(draw) -> list[str]:
    names = draw(st.lists(st.sampled_from(sorted(OPTION_VALUES)), max_size=3, unique=True))
    args = []
    for name in names:
        args += [name, draw(OPTION_VALUES[name])]
    return args + draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))


def _files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


def _explain(root, model: bytes, npy: bytes, csv: bytes, args: list[str]):
    (root / "m.onnx").write_bytes(model)
    (root / "x.npy").write_bytes(npy)
    (root / "rows.csv").write_bytes(csv)
    before = _files(root)
    out = root / "out"
    argv = ["explain", str(root / "m.onnx"), str(root / "x.npy"), str(root / "rows.csv")]
    argv += ["--out", str(out), *args]
    result = CliRunner().invoke(main, argv, catch_exceptions=True)
    stderr = result.stderr
    event(f"exit {result.exit_code}")
    assert result.exit_code in DOCUMENTED, (argv, result.exit_code, stderr[-2000:])
    assert "Traceback" not in stderr, stderr
    created = {f for f in _files(root) - before if not f.startswith("out" + os.sep)}
    assert not created, created  # nothing outside --out
    partial = [f for f in _files(root) if f.endswith(".tmp")]
    assert not partial, partial
    for line in stderr.splitlines():
        assert line.strip() == "" or not line.startswith(" "), stderr  # no wrapped lines


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


@FUZZ
@given(npy=mutated(NPY_BYTES), csv=mutated(CSV_BYTES), args=options())
def test_explain_never_crashes_on_inputs_and_options(tmp_path_factory, npy, csv, args):
    _explain(tmp_path_factory.mktemp("fuzz"), MODEL_BYTES, npy, csv, args)


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 5))
@given(model=mutated(MODEL_BYTES), args=options())
def test_explain_never_crashes_on_damaged_models(tmp_path_factory, model, args):
    _explain(tmp_path_factory.mktemp("fuzz"), model, NPY_BYTES, CSV_BYTES, args)
