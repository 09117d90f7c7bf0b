"""Blur IG, Guided IG, SmoothGrad and XRAI against PAIR saliency's own implementations.

PAIR's `saliency` package (a dev dependency; igcli never imports it) is framework-agnostic:
it calls back for gradients, and here the callback returns igcli's gradient-graph gradients
for the same model, input and target. PAIR works on (H, W, C) arrays in model space; the
callback moves them to the model's layout and back. Acceptance (issue 11): Pearson >= 0.99
at the same parameters; XRAI: the same top-30% mask on >= 90% of the pixels. Two models: the
sample digits CNN (1 x 28 x 28) and a random-weight ResNet from the model corpus
(3 x 64 x 64).
"""

from pathlib import Path

import numpy as np
import pytest

import igcli
from igcli import methods, regions
from igcli.gradients import GraphGradients

saliency = pytest.importorskip("saliency.core")
pytest.importorskip("skimage")
from saliency.core import guided_ig as pair_guided  # noqa: E402
from saliency.core import xrai as pair_xrai  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DIGIT = ROOT / "sample_inputs" / "digits" / "digit_3_idx30.png"
MODELS = {
    "digits": ROOT / "sample_models" / "digits_cnn.onnx",
    "resnet": ROOT / "tests" / "corpus" / "models" / "hf_resnet_legacy_op17.onnx",
}
GRADIENTS = saliency.INPUT_OUTPUT_GRADIENTS


@pytest.fixture(autouse=True)
def numpy2_quantile(monkeypatch):
    """saliency 0.2.1 calls np.quantile(..., interpolation=), which numpy 2 removed."""
    quantile = np.quantile
    monkeypatch.setattr(pair_guided.np, "quantile",
                        lambda a, q, interpolation=None, **kw: quantile(a, q, **kw, **(
                            {"method": interpolation} if interpolation else {})))  # fmt: skip


def pearson(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


class Case:
    """A model, the digit as its input, the top class, and PAIR's callback for them."""

    def __init__(self, name: str):
        self.session = igcli.Session(MODELS[name])
        self.sample = self.session.load(DIGIT)[0]
        self.prep = self.session.prep
        self.target = int(np.argmax(self.session.runner.run(self.sample.x[None])[0]))
        self.source = GraphGradients(self.session.graph_for(self.sample.x), self.target)
        self.x = self.hwc(self.sample.x)
        self.chw = self.prep.layout == "NCHW"

    def hwc(self, a: np.ndarray) -> np.ndarray:
        return self.prep.model_to_hwc(a).astype(np.float64)

    def call(self, batch, call_model_args=None, expected_keys=None):
        batch = np.asarray(batch, dtype=np.float64)
        rows = np.transpose(batch, (0, 3, 1, 2)) if self.chw else batch
        _, grads = self.source.values_and_gradients(rows.astype(np.float32))
        return {GRADIENTS: np.transpose(grads, (0, 2, 3, 1)) if self.chw else grads}

    def attribute(self, **options):
        return self.session.attribute(self.sample, target=self.target, **options)

    def baseline(self, name: str) -> np.ndarray:
        return self.hwc(self.attribute(steps=1, baseline=name).baseline)


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("IGCLI_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield Case(request.param)
    mp.undo()


@pytest.mark.parametrize("sqrt", [False, True])
def test_blur_ig(case, sqrt):
    """PAIR's defaults (max_sigma 50, 100 steps, grad_step 0.01, batch_size 1). PAIR's left
    sum in sigma converges to igcli's (exact derivative, Gauss-Legendre) as steps grow."""
    ref = saliency.BlurIG().GetMask(case.x, case.call, sqrt=sqrt)
    mine = case.attribute(path="blur", blur_sqrt=sqrt)
    assert mine.extra["steps_used"] == 100
    assert pearson(ref, case.hwc(mine.attributions)) >= 0.99
    assert mine.rel_error < 0.02


def test_guided_ig(case):
    """PAIR's defaults (200 steps, fraction 0.25, max_dist 0.02), from the black image."""
    black = case.baseline("black")
    ref = saliency.GuidedIG().GetMask(case.x, case.call, x_baseline=black)
    mine = case.attribute(path="guided", baseline="black")
    assert pearson(ref, case.hwc(mine.attributions)) >= 0.99
    np.testing.assert_allclose(case.hwc(mine.attributions), ref, rtol=1e-3,
                               atol=1e-6 * np.abs(ref).max())  # fmt: skip


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq"])
def test_smoothgrad_ig(case, kind, monkeypatch):
    """SmoothGrad over IG: PAIR's GetSmoothedMask (stdev_spread 0.15 of the input's range,
    magnitude=True squares) with the same noise draws (numpy's global generator, replayed)."""
    black = case.baseline("black")
    np.random.seed(11)
    ref = saliency.IntegratedGradients().GetSmoothedMask(
        case.x, case.call, x_baseline=black, x_steps=50, batch_size=50, nsamples=8,
        magnitude=kind == "smoothgrad_sq",
    )  # fmt: skip

    def pair_noise(rng, std, shape):  # PAIR draws (H, W, C) noise, one copy at a time
        hwc = np.stack([np.random.normal(0, std, case.x.shape) for _ in range(shape[0])])
        return np.transpose(hwc, (0, 3, 1, 2)) if case.chw else hwc

    monkeypatch.setattr(methods, "draw_noise", pair_noise)
    np.random.seed(11)
    mine = case.attribute(baseline="black", noise=8, noise_type=kind)
    assert pearson(ref, case.hwc(mine.attributions)) >= 0.99
    assert mine.rel_error < 0.01


def test_xrai_at_pair_parameters(case):
    """XRAI 'full' with PAIR's defaults: IG from black and white, dilation 5, at least 50
    new pixels per region. Both draw the top 30% of their XRAI maps."""
    black, white = case.baseline("black"), case.baseline("white")
    ref = saliency.XRAI().GetMaskWithDetails(
        case.x, case.call, baselines=[black, white], batch_size=50,
        extra_parameters=pair_xrai.XRAIParameters(steps=50),
    )  # fmt: skip
    mine = case.attribute(regions="xrai")  # default baselines: black and white
    assert mine.baseline_name == "black+white"
    found = regions.xrai(case.hwc(mine.attributions), case.x, dilation=5, min_pixel_diff=50)
    ref_top = ref.attribution_mask >= np.percentile(ref.attribution_mask, 70)
    assert np.mean(ref_top == found.top_mask(0.3)) >= 0.9
    assert pearson(ref.attribution_mask, found.heatmap) >= 0.99


def test_xrai_at_igcli_defaults(case):
    """igcli scales PAIR's dilation and minimum region to the image; PAIR given the same."""
    black, white = case.baseline("black"), case.baseline("white")
    h, w = case.x.shape[:2]
    radius = regions.scaled(regions.DILATION, (h, w))
    least = regions.scaled(regions.MIN_PIXEL_DIFF, (h, w), area=True)
    params = pair_xrai.XRAIParameters(steps=50)
    params.experimental_params["min_pixel_diff"] = least
    segments = pair_xrai._get_segments_felzenszwalb(case.x, dilation_rad=radius)
    ref = saliency.XRAI().GetMaskWithDetails(case.x, case.call, baselines=[black, white],
                                             batch_size=50, segments=segments,
                                             extra_parameters=params)  # fmt: skip
    mine = case.attribute(regions="xrai")
    ref_top = ref.attribution_mask >= np.percentile(ref.attribution_mask, 70)
    assert np.mean(ref_top == mine.regions.top_mask(0.3)) >= 0.9
    summary = mine.extra["regions"]
    assert summary["count"] == len(mine.regions.areas) and summary["ranked"][0]["rank"] == 1
    assert sum(mine.regions.areas) == pytest.approx(1.0)  # the ranked regions tile the image
    assert len(summary["ranked"]) == min(summary["count"], 50)
