"""Expected gradients and noise averaging against Captum, from precomputed fixtures.

scripts/make_captum_fixtures.py ran Captum's GradientShap (stdevs=0: expected gradients) and
NoiseTunnel over IntegratedGradients on the sample models (converted to PyTorch, float64)
and recorded the random draws Captum made. igcli gets the same draws here (its draw
functions are replaced) and must give the same numbers: where the definitions coincide, the
only difference left is float32 (ONNX Runtime) against float64 (PyTorch).
"""

from pathlib import Path

import numpy as np
import pytest

import igcli
from igcli import methods

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "captum"
CASES = ["breast_cancer_mlp", "digits_cnn"]


def close(mine: np.ndarray, ref: np.ndarray) -> None:
    assert np.corrcoef(mine.ravel(), ref.ravel())[0, 1] > 0.99999
    np.testing.assert_allclose(mine, ref, atol=2e-4 * np.abs(ref).max())


@pytest.fixture(params=CASES)
def case(request):
    data = dict(np.load(DATA / f"{request.param}.npz"))
    session = igcli.Session(ROOT / "sample_models" / f"{request.param}.onnx")
    return session, data


def test_expected_gradients_are_gradient_shap(case, tmp_path, monkeypatch):
    session, data = case
    np.save(tmp_path / "refs.npy", data["baselines"].astype(np.float32))
    draws = (data["eg_index"], data["eg_alphas"])
    monkeypatch.setattr(methods, "draw_expected_gradients", lambda rng, n, k: draws)
    a = session.attribute(data["x"].astype(np.float32), target=int(data["target"]),
                          baselines=str(tmp_path / "refs.npy"),
                          samples=int(data["eg_samples"]))  # fmt: skip
    close(a.attributions, data["eg_attributions"])


@pytest.mark.parametrize("kind", methods.NOISE_TYPES)
def test_noise_is_noise_tunnel(case, kind, tmp_path, monkeypatch):
    """Captum's stdevs is absolute; igcli's --noise STD is relative to the input's range.
    With the draws given, only the combination (mean, mean of squares, variance) is left."""
    session, data = case
    np.save(tmp_path / "b.npy", data["baseline"].astype(np.float32))
    noise = data["nt_noise"]
    monkeypatch.setattr(methods, "draw_noise", lambda rng, std, shape: noise)
    a = session.attribute(data["x"].astype(np.float32), target=int(data["target"]),
                          baseline=str(tmp_path / "b.npy"), noise=int(data["nt_copies"]),
                          noise_type=kind)  # fmt: skip
    close(a.attributions, data[f"nt_{kind}"])
