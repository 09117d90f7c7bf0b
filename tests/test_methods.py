"""The path-method family through the library and the command line: closed forms, axioms,
baseline distributions, noise, records and usage errors (issue 11)."""

import json
import math

import numpy as np
import pytest

import igcli
from igcli import methods
from igcli.baselines import rng_for
from igcli.errors import ExitCode, UsageError
from tests import models
from tests.test_cli import CANCER, CANCER_CSV, DIGIT_PNGS, DIGITS, one_line_error, run

MIN_X = np.array([1.2, 0.6], dtype=np.float32)


@pytest.fixture
def min_session(tmp_path):
    return igcli.Session(models.save(models.min_one_sum(), tmp_path / "min.onnx"))


@pytest.fixture
def sym_session(tmp_path):
    return igcli.Session(models.save(models.symmetric_with_dummy(), tmp_path / "sym.onnx"))


# -- the seed's example: F = min(1, x1 + x2) at (1.2, 0.6) from 0 ---------------------------


@pytest.mark.parametrize(
    "path, expected",
    [
        ("straight", (2 / 3, 1 / 3)),
        ("extremal:0,1", (1.0, 0.0)),
        ("extremal:1,0", (0.4, 0.6)),
        ("extremal", (1.0, 0.0)),  # default order: the larger |x - b| first
        ("shapley", (0.7, 0.3)),  # both orders (2! <= 25 samples): the exact Shapley value
    ],
)
def test_min_example(min_session, path, expected):
    # the kink at x1 + x2 = 1 needs adaptive steps to reach 1e-4
    a = min_session.attribute(MIN_X, baseline="zero", path=path, steps="auto", tolerance=1e-5)
    np.testing.assert_allclose(a.attributions, expected, atol=2e-4)
    assert a.rel_error <= 1e-4 and a.delta == pytest.approx(1.0)
    assert a.extra["path"] == path.split(":")[0]
    if path == "shapley":
        assert a.extra["path_options"]["exact"] and a.extra["samples"] == 2


def test_min_example_with_fixed_steps_and_orders_recorded(min_session):
    a = min_session.attribute(MIN_X, baseline="zero", path="extremal:1", steps=400)
    assert a.extra["path_options"]["order"] == [1, 0]  # the rest in the default order
    assert a.extra["steps_used"] == 800  # two legs of 400 points
    np.testing.assert_allclose(a.attributions, [0.4, 0.6], atol=2e-3)


# -- axioms ----------------------------------------------------------------------------------

X_SYM = np.array([0.8, 0.8, -0.6, 1.5], dtype=np.float32)
PATH_CASES = [
    dict(path="straight"),
    dict(path="guided", steps=400),
    dict(path="shapley"),  # 4 features: all 24 orders, the exact Shapley value
    dict(path="extremal"),
]


@pytest.mark.parametrize("options", PATH_CASES, ids=lambda o: o["path"])
def test_completeness_symmetry_and_dummy(sym_session, options):
    a = sym_session.attribute(X_SYM, baseline="zero", **options)
    guided = options["path"] == "guided"
    assert a.rel_error < (1e-2 if guided else 1e-5)  # guided: a left Riemann sum
    assert a.attributions[3] == 0.0  # the dummy feature
    if options["path"] != "extremal":  # an extremal path favours whoever moves first
        assert a.attributions[0] == pytest.approx(a.attributions[1], rel=1e-9, abs=1e-12)
    else:
        assert a.attributions[0] != pytest.approx(a.attributions[1], rel=1e-3)


@pytest.mark.parametrize(
    "options",
    [
        dict(noise=8),
        dict(noise=8, noise_type="vargrad"),
        dict(path="shapley", samples=5, noise=3),
    ],
    ids=["smoothgrad", "vargrad", "shapley+noise"],
)
def test_dummy_features_stay_zero_under_averaging(sym_session, options):
    a = sym_session.attribute(X_SYM, baseline="zero", **options)
    assert a.attributions[3] == 0.0
    assert a.rel_error < 1e-5


def test_every_path_is_complete_on_an_image_model(tmp_path):
    session = igcli.Session(models.save(models.image_model(), tmp_path / "img.onnx"))
    x = np.random.default_rng(0).uniform(size=(3, 8, 8)).astype(np.float32)
    for options in [dict(path="blur"), dict(path="blur", blur_sqrt=True, steps="auto"),
                    dict(path="guided"), dict(path="extremal", groups="4x4"),
                    dict(path="shapley", samples=3)]:  # fmt: skip
        base = {} if options["path"] == "blur" else {"baseline": "zero"}
        a = session.attribute(x, target=1, **base, **options)
        assert a.rel_error < 2e-3, options
    blur = session.attribute(x, target=1, path="blur", max_sigma=2.0)
    assert blur.baseline_name == "blur (sigma 2)"
    assert blur.extra["path_options"] == {"max_sigma": 2.0, "sqrt": False}
    assert blur.extra["steps_used"] == 100  # PAIR's default steps for Blur IG


# -- baselines as distributions --------------------------------------------------------------


def _tanh_session(tmp_path):
    return igcli.Session(models.save(models.tanh_linear(), tmp_path / "tanh.onnx"))


def test_multi_baseline_ig_is_the_mean_of_single_baseline_igs(tmp_path):
    session = _tanh_session(tmp_path)
    rng = np.random.default_rng(1)
    x = rng.normal(size=4).astype(np.float32)
    stack = rng.normal(size=(3, 4)).astype(np.float32)
    np.save(tmp_path / "stack.npy", stack)
    many = session.attribute(x, target=0, baselines=str(tmp_path / "stack.npy"))
    singles = []
    for k, b in enumerate(stack):
        np.save(tmp_path / f"b{k}.npy", b)
        singles.append(session.attribute(x, target=0, baseline=str(tmp_path / f"b{k}.npy")))
    np.testing.assert_allclose(
        many.attributions, np.mean([s.attributions for s in singles], axis=0), rtol=1e-6
    )
    assert many.f_baseline == pytest.approx(np.mean([s.f_baseline for s in singles]))
    assert many.rel_error < 1e-6
    assert many.extra["baselines"] == {"source": str(tmp_path / "stack.npy"), "count": 3,
                                       "use": "average"}  # fmt: skip


def test_expected_gradients_converge_to_multi_baseline_ig_and_are_seeded(tmp_path):
    """E over (b_k, alpha) of (x - b_k) grad F(b_k + alpha (x - b_k)) is the mean IG."""
    session = _tanh_session(tmp_path)
    rng = np.random.default_rng(2)
    x = rng.normal(size=4).astype(np.float32)
    np.save(tmp_path / "stack.npy", rng.normal(size=(3, 4)).astype(np.float32))
    spec = str(tmp_path / "stack.npy")
    ig = session.attribute(x, target=1, baselines=spec, steps=64)
    eg = session.attribute(x, target=1, baselines=spec, samples=20000, seed=3)
    se = eg.extra["completeness_se"]
    assert 0 < se < 0.02 * abs(eg.delta)
    assert eg.abs_error < 5 * se  # completeness within the Monte Carlo error
    np.testing.assert_allclose(eg.attributions, ig.attributions, atol=0.03 * abs(ig.delta))
    assert eg.extra["samples"] == 20000 and eg.method == "monte_carlo" and eg.steps == 20000
    assert eg.extra["baselines"]["use"] == "expected_gradients"
    again = session.attribute(x, target=1, baselines=spec, samples=50, seed=3)
    same = session.attribute(x, target=1, baselines=spec, samples=50, seed=3)
    other = session.attribute(x, target=1, baselines=spec, samples=50, seed=4)
    assert np.array_equal(again.attributions, same.attributions)
    assert not np.array_equal(again.attributions, other.attributions)


def test_draws_do_not_depend_on_which_inputs_share_calls(tmp_path):
    session = _tanh_session(tmp_path)
    rng = np.random.default_rng(5)
    xs = [session.load(rng.normal(size=4).astype(np.float32))[0] for _ in range(3)]
    np.save(tmp_path / "stack.npy", rng.normal(size=(4, 4)).astype(np.float32))
    settings = igcli.AttributionSettings(baselines=str(tmp_path / "stack.npy"), samples=30,
                                         noise=3)  # fmt: skip
    together = session.attribute_many(xs, [0, 2], settings)
    for sample, results in zip(xs, together, strict=True):
        alone = session.attribute_many([sample], [0, 2], settings)[0]
        for t, a in zip(results, alone, strict=True):
            np.testing.assert_allclose(t.attributions, a.attributions, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "options",
    [
        dict(path="shapley", samples=3, steps=12),
        dict(baselines=str(DIGIT_PNGS[0].parent), samples=40, noise=2),
    ],  # fmt: skip
    ids=["shapley", "expected gradients"],
)
def test_small_memory_chunks_change_nothing(monkeypatch, options):
    """Legs and draws run in chunks that fit methods.MEMORY_LIMIT; the results are the same."""
    session = igcli.Session(DIGITS)
    sample = session.load(DIGIT_PNGS[1])[0]
    settings = igcli.AttributionSettings(**options)
    whole = session.attribute_many([sample], None, settings)[0][0]
    monkeypatch.setattr(methods, "MEMORY_LIMIT", 60_000)  # a few legs or draws at a time
    chunked = session.attribute_many([sample], None, settings)[0][0]
    # the same points; only ONNX Runtime's float32 sums differ with the rows per call
    np.testing.assert_allclose(chunked.attributions, whole.attributions, rtol=1e-6, atol=1e-9)
    assert chunked.extra["steps_used"] == whole.extra["steps_used"]
    if "completeness_se" in whole.extra:
        se = whole.extra["completeness_se"]
        assert chunked.extra["completeness_se"] == pytest.approx(se, rel=1e-6)


def test_cli_baselines_from_csv_rows(tmp_path):
    result = run("explain", CANCER, CANCER_CSV, "--baselines", CANCER_CSV, "--samples", "30",
                 "--json", "--no-heatmaps", "--out", tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    rows = len(records)
    for r in records:
        assert r["baselines"] == {"source": str(CANCER_CSV), "count": rows,
                                  "use": "expected_gradients"}  # fmt: skip
        assert r["steps"] == r["samples"] == r["steps_used"] == 30
        assert r["abs_error"] < 6 * r["completeness_se"] + 1e-6


def test_mean_baseline_from_the_sidecar_and_from_data(tmp_path):
    """The cancer model standardises rows with the sidecar's mean: a baseline_mean equal to
    that mean is the zero tensor in model space."""
    model = tmp_path / "cancer.onnx"
    model.write_bytes(CANCER.read_bytes())
    side = json.loads(CANCER.with_suffix(".json").read_text())
    side["baseline_mean"] = side["preprocessing"]["mean"]
    model.with_suffix(".json").write_text(json.dumps(side))
    session = igcli.Session(model)
    row = session.load(CANCER_CSV)[0]
    mean = session.attribute(row, baseline="mean")
    zero = session.attribute(row, baseline="zero")
    np.testing.assert_allclose(mean.attributions, zero.attributions, rtol=1e-5, atol=1e-7)
    assert mean.baseline_name == "mean (sidecar)"
    # --baseline-data: the mean of the CSV's rows, in model space
    rows = session.load(CANCER_CSV)
    np.save(tmp_path / "m.npy", np.mean([r.x for r in rows], axis=0).astype(np.float32))
    data = session.attribute(row, baseline="mean", baseline_data=str(CANCER_CSV))
    ref = session.attribute(row, baseline=str(tmp_path / "m.npy"))
    np.testing.assert_allclose(data.attributions, ref.attributions, rtol=1e-5, atol=1e-7)
    assert data.baseline_name == f"mean of {CANCER_CSV.name} ({len(rows)})"


def test_mean_baseline_of_an_image_folder(tmp_path):
    session = igcli.Session(DIGITS)
    a = session.attribute(DIGIT_PNGS[0], baseline="mean", baseline_data=str(DIGIT_PNGS[0].parent))
    images = [session.load(p)[0].x for p in DIGIT_PNGS]
    np.testing.assert_allclose(a.baseline, np.mean(images, axis=0), rtol=1e-5, atol=1e-6)
    assert a.rel_error < 0.01


# -- noise -----------------------------------------------------------------------------------


def test_smoothgrad_is_the_mean_ig_over_the_noisy_copies(tmp_path):
    session = _tanh_session(tmp_path)
    x = np.array([0.3, -1.2, 0.8, 2.0], dtype=np.float32)
    runs = {
        kind: session.attribute(
            x, target=2, baseline="zero", noise=6, noise_std=0.2, noise_type=kind, seed=9
        )  # fmt: skip
        for kind in methods.NOISE_TYPES
    }
    std = 0.2 * float(x.max() - x.min())
    copies = x[None] + methods.draw_noise(rng_for(9), std, (6, 4))
    each = [session.attribute(c.astype(np.float32), target=2, baseline="zero") for c in copies]
    per_copy = np.array([a.attributions for a in each])
    sg = runs["smoothgrad"]
    np.testing.assert_allclose(sg.attributions, per_copy.mean(axis=0), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(runs["smoothgrad_sq"].attributions, (per_copy**2).mean(axis=0),
                               rtol=2e-5, atol=1e-7)  # fmt: skip
    np.testing.assert_allclose(runs["vargrad"].attributions, per_copy.var(axis=0), rtol=1e-4,
                               atol=1e-7)  # fmt: skip
    # completeness of the average: the mean of the copies' deltas
    assert sg.f_input == pytest.approx(np.mean([a.f_input for a in each]), rel=1e-6)
    assert sg.rel_error < 1e-5
    for kind in ("smoothgrad_sq", "vargrad"):  # the map is not an attribution: the mean's sum
        assert runs[kind].attribution_sum == pytest.approx(sg.attribution_sum, rel=1e-9)
    assert sg.extra["noise"]["std_abs"] == pytest.approx(std)
    assert sg.extra["noise"]["f_input_clean"] == pytest.approx(
        session.attribute(x, target=2).f_input
    )


# -- the command line --------------------------------------------------------------------------


def test_cli_records_carry_the_method_without_a_schema_bump(tmp_path):
    out = tmp_path / "out"
    plain = run("explain", DIGITS, DIGIT_PNGS[0], "--steps", "8", "--json", "--out", out / "p")
    record = json.loads(plain.stdout.splitlines()[0])
    assert record["schema_version"] == 1
    assert (record["path"], record["baselines"], record["samples"], record["noise"]) == (
        "straight", None, None, None)  # fmt: skip
    assert record["steps"] == 8 and record["method"] == "gausslegendre"
    noisy = run("explain", DIGITS, DIGIT_PNGS[0], "--steps", "8", "--noise", "3,0.1",
                "--noise-type", "smoothgrad_sq", "--json", "--out", out / "n")  # fmt: skip
    assert noisy.exit_code == 0, noisy.stderr
    record = json.loads(noisy.stdout.splitlines()[0])
    assert record["schema_version"] == 1 and record["steps_used"] == 24
    assert record["noise"]["samples"] == 3 and record["noise"]["type"] == "smoothgrad_sq"
    report = json.loads((out / "n" / "report.json").read_text())
    assert report["settings"]["noise"] == 3 and report["summary"]["averaged"] == 1
    assert "smoothgrad_sq over 3 noisy copies" in (out / "n" / "report.md").read_text()


def test_cli_blur_and_guided_defaults_follow_pair(tmp_path):
    result = run("explain", DIGITS, DIGIT_PNGS[1], "--path", "guided", "--json", "--no-heatmaps",
                 "--out", tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["steps"] == 200 and record["method"] == "riemann_left"
    assert record["path_options"] == {"fraction": 0.25, "max_dist": 0.02}
    assert record["rel_error"] < 0.02


@pytest.mark.parametrize(
    "args, words",
    [
        (["--path", "wiggly"], "unknown path"),
        (["--path", "guided", "--steps", "auto"], "not auto"),
        (["--path", "guided", "--method", "riemann_middle"], "does not apply"),
        (["--path", "blur", "--baseline", "white"], "blurred input"),
        (["--samples", "5"], "--samples needs --baselines"),
        (["--noise", "many"], "N or N,STD"),
        (["--noise", "4,-1"], "positive"),
        (["--noise-type", "vargrad"], "needs --noise"),
        (["--groups", "8x8"], "--groups applies"),
        (["--path", "extremal", "--groups", "8by8"], "HxW"),
        (["--baseline-data", "x.csv"], "goes with --baseline mean"),
        (["--baselines", "nowhere/"], "no such file or folder"),
        (["--baselines", "a", "--baseline", "zero"], "not both"),
        (["--path", "extremal:99"], "there are 16 groups"),
        (["--path", "blur", "--blur-sigma", "0"], "blur-sigma"),
        (["--path", "blur", "--blur-sigma", "1e308"], "pixels in (0, 1e+12], not 1e+308"),
    ],
)
def test_cli_usage_errors_are_one_line(tmp_path, args, words):
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", tmp_path, *args)
    assert result.exit_code == ExitCode.USAGE, (result.exit_code, result.stderr)
    err = one_line_error(result)
    assert any(words in line for line in err), err


@pytest.mark.parametrize(
    ("std", "words"),
    [("1e308", "gives noisy copies beyond float32"), ("1e37", "at a noisy copy of the input")],
)
def test_a_noise_too_large_is_blamed_not_the_baseline(tmp_path, std, words):
    """Noisy copies beyond float32, or far enough out that F overflows, fail the input with
    a line that names --noise: it said 'try another --baseline', which cannot help."""
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--noise", f"2,{std}", "--steps", "4",
                 "--no-heatmaps", "--out", tmp_path)  # fmt: skip
    assert result.exit_code == ExitCode.INPUTS_FAILED, result.stderr
    err = one_line_error(result)
    assert words in err[0] and "--noise std" in err[0] and "--baseline" not in err[0], err


def test_mean_baseline_needs_a_sidecar_mean_or_data(tmp_path):
    model = models.save(models.tanh_linear(), tmp_path / "t.onnx")
    np.save(tmp_path / "x.npy", np.ones(4, dtype=np.float32))
    result = run("explain", model, tmp_path / "x.npy", "--baseline", "mean", "--out", tmp_path)
    assert result.exit_code == ExitCode.USAGE
    assert "'baseline_mean' in the model's sidecar or --baseline-data" in result.stderr
    # the sample models' sidecars give their training means
    out = tmp_path / "digits"
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--baseline", "mean", "--json", "--out", out)
    assert result.exit_code == 0 and json.loads(result.stdout)["baseline"] == "mean (sidecar)"


def test_blur_needs_an_image_model(tmp_path):
    result = run("explain", CANCER, CANCER_CSV, "--path", "blur", "--out", tmp_path)
    assert result.exit_code == ExitCode.USAGE
    assert "needs an image model" in result.stderr


def test_library_rejects_bad_settings():
    with pytest.raises(UsageError, match="noise"):
        igcli.AttributionSettings(noise=-2).check()
    with pytest.raises(UsageError, match="fraction"):
        igcli.AttributionSettings(path="guided", fraction=0.0).check()
    assert igcli.AttributionSettings(path="blur").steps == 100
    assert igcli.AttributionSettings(path="guided", steps=None).steps == 200
    assert igcli.AttributionSettings(path="shapley", steps=None).steps == 50
    assert math.isclose(igcli.AttributionSettings().noise_std, 0.15)


@pytest.mark.parametrize(
    "options",
    [
        dict(path="blur", max_sigma=3.0, steps=32),
        dict(path="guided", steps=40, baseline="zero"),
        dict(path="extremal", groups="4x4", steps=16, baseline="zero"),
        dict(noise=2, steps=16, baseline="zero"),
    ],  # fmt: skip
    ids=["blur", "guided", "extremal", "noise"],
)
def test_finite_differences_agree_with_the_graph(tmp_path, options):
    """Curved paths need every partial derivative: finite differences then go per feature
    (and ignore --fd-groups); straight legs keep moving along x - b."""
    path = models.save(models.image_model(), tmp_path / "img.onnx")
    x = np.random.default_rng(4).uniform(size=(3, 8, 8)).astype(np.float32)
    graph = igcli.Session(path).attribute(x, target=0, **options)
    warnings = []
    fd = igcli.Session(path, gradients="fd", fd_groups="2x2", warn=warnings.append).attribute(
        x, target=0, **options
    )
    assert fd.gradient_source == "fd" and graph.gradient_source == "graph"
    curved = options.get("path") in ("blur", "guided")

    def patches(a):  # finite differences are exact per 2x2 patch (all channels), not within
        return a if curved else a.reshape(3, 4, 2, 4, 2).sum(axis=(0, 2, 4))

    want = patches(graph.attributions)
    np.testing.assert_allclose(patches(fd.attributions), want, rtol=2e-3,
                               atol=2e-3 * np.abs(want).max())  # fmt: skip
    assert any("ignore --fd-groups 2x2" in w for w in warnings) == curved


@pytest.mark.parametrize(
    "options",
    [
        ["--blur-sigma", "3"],
        ["--blur-sqrt"],
        ["--guided-fraction", "0.5"],
        ["--guided-max-dist", "0.1"],
        ["--tolerance", "0.1"],
        ["--max-steps", "10"],
        ["--aggregate", "l2"],
    ],
)
def test_options_of_another_method_are_refused_not_ignored(tmp_path, options):
    """Each gave plain IG, exit 0, without a word."""
    from tests.test_cli import DIGIT_PNGS, DIGITS, run

    result = run("explain", DIGITS, DIGIT_PNGS[0], *options, "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.USAGE, result.stderr
    assert "apply to" in result.stderr or "applies to" in result.stderr


def test_extremal_auto_converges_when_the_whole_path_does():
    """A leg with little change may miss its own tolerance; the input has converged when
    the whole path's completeness meets it (it was reported as stopped short)."""
    from tests.test_cli import DIGIT_PNGS, DIGITS

    warnings = []
    session = igcli.Session(DIGITS, cache=False, warn=warnings.append)
    a = session.attribute(DIGIT_PNGS[1], steps="auto", max_steps=20, path="extremal")
    assert a.rel_error <= 0.005
    assert a.extra["converged"] and not any("stopped" in w for w in warnings)


def test_the_completeness_gate_allows_expected_gradients_their_monte_carlo_error(tmp_path):
    from igcli.report import _gated_error

    record = {"rel_error": 0.18, "abs_error": 1.73, "delta": 9.68, "completeness_se": 1.17}
    assert _gated_error(record) == 0.0  # within 3 standard errors
    record["abs_error"] = 4.51
    assert _gated_error(record) == pytest.approx((4.51 - 3.51) / 9.68)
    assert _gated_error({"rel_error": 0.2, "abs_error": 2.0, "delta": 10.0}) == 0.2


def test_a_baseline_stack_is_read_row_by_row_never_whole(tmp_path, monkeypatch):
    """A 940 MB --baselines stack took 4.9 GB with --memory-limit 200M: every row copied,
    then all stacked as float64 (for the mean, and F at every baseline in one array). A C
    stack is now read in blocks to check and average, and a row at a time after."""
    rng = np.random.default_rng(0)
    stack = rng.uniform(0, 1, (40, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "stack.npy", stack)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(stack))
    session = igcli.Session(DIGITS)
    x = session.load(DIGIT_PNGS[0])[0]
    ref = {}
    for name in ("fortran.npy", "stack.npy"):
        if name == "stack.npy":  # from here on, nothing may read the stack whole
            monkeypatch.setattr("igcli.files.read_npy", lambda *a, **k: 1 / 0)
        spec = str(tmp_path / name)
        ref[name] = (
            session.attribute(x, target=3, baselines=spec, steps=8),
            session.attribute(x, target=3, baselines=spec, samples=30, seed=1),
            session.attribute(x, target=3, baseline="mean", baseline_data=spec),
        )
    for a, b in zip(ref["fortran.npy"], ref["stack.npy"], strict=True):
        np.testing.assert_allclose(a.attributions, b.attributions, rtol=1e-5, atol=1e-7)
        assert a.f_baseline == pytest.approx(b.f_baseline)
    monkeypatch.undo()
    np.save(tmp_path / "mean.npy", np.mean(stack.astype(np.float64), axis=0).astype(np.float32))
    at_mean = session.attribute(x, target=3, baseline=str(tmp_path / "mean.npy"))
    np.testing.assert_allclose(at_mean.attributions, ref["stack.npy"][2].attributions,
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    # what is read whole (a Fortran-ordered stack) must fit --memory-limit: refused before
    small = igcli.Session(DIGITS, memory_limit=40 * 784 * 4 - 1)
    with pytest.raises(UsageError, match="over --memory-limit") as err:
        small.attribute(x, target=3, baselines=str(tmp_path / "fortran.npy"), steps=4)
    assert "fortran.npy" in str(err.value) and "\n" not in str(err.value)
    small.attribute(x, target=3, baselines=str(tmp_path / "stack.npy"), steps=4)  # streamed
    bad = stack.copy()
    bad[33, 0, 5, 5] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(UsageError, match="row 33: contains NaN or Inf"):
        session.attribute(x, target=3, baselines=str(tmp_path / "bad.npy"), steps=4)


def test_baselines_given_as_file_urls_are_local_folders(tmp_path):
    """--baselines file:///dir was "file:/dir: no such file or folder" (exit 2)."""
    folder = DIGIT_PNGS[0].parent.resolve().as_uri()
    for args in (["--baselines", folder, "--samples", "2"],
                 ["--baseline", "mean", "--baseline-data", folder]):  # fmt: skip
        result = run("explain", DIGITS, DIGIT_PNGS[0], "--steps", "4", "--out", tmp_path, *args)
        assert result.exit_code == 0, result.stderr
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--baselines", "s3://b/x", "--out", tmp_path)
    assert result.exit_code == ExitCode.USAGE and "not object storage" in result.stderr


@pytest.mark.parametrize(
    ("options", "words"),
    [({"path": "extremal", "groups": 4}, "groups must be a string, not int"),
     ({"baselines": np.zeros((1, 28, 28))}, "baselines must be a path, not ndarray"),
     ({"baseline": "mean", "baseline_data": np.zeros((2, 1, 28, 28))},
      "baseline_data must be a path, not ndarray")],
)  # fmt: skip
def test_options_of_the_wrong_kind_are_usage_errors_in_the_library(options, words):
    """groups=4 raised re's TypeError, baselines=np.zeros(...) numpy's ambiguous truth
    value: internal errors where a neighbouring option's mistake is one UsageError."""
    import igcli
    from igcli.errors import UsageError

    session = igcli.Session(DIGITS, cache=False)
    with pytest.raises(UsageError, match=words):
        session.attribute(DIGIT_PNGS[0], steps=4, **options)
    with pytest.raises(UsageError, match="fd_groups must be a string"):
        igcli.Session(DIGITS, gradients="fd", fd_groups=4)
