"""The DFT and STFT rules against central finite differences: real and complex signals,
forward and inverse, one-sided, dft_length padding or cutting the signal, the axis as an
attribute (opset 17) or an input (opset 20); frames that overlap, windows."""

import numpy as np
import pytest

from tests.autodiff.checker import Case
from tests.autodiff.test_rules_shape import NodeCase

rng = np.random.default_rng(11)


def r(*shape):
    return rng.uniform(-2.0, 2.0, size=shape)


def n(value):
    return np.asarray(value, dtype=np.int64)


CASES: list[Case] = []
for onesided in (0, 1):
    for length in (None, 11, 6):  # the signal's own 8, padded to 11, cut to 6
        consts = {"n": n(length)} if length else {}
        tag = f"onesided{onesided}-n{length}"
        CASES.append(Case("DFT", {"x": r(2, 8, 1)}, {"onesided": onesided}, opset=17,
                          constants=consts, id=f"DFT-real-{tag}-17"))  # fmt: skip
for inverse in (0, 1):
    CASES.append(Case("DFT", {"x": r(2, 7, 2)}, {"inverse": inverse}, opset=17,
                      id=f"DFT-complex-inverse{inverse}-17"))  # fmt: skip
    CASES.append(
        Case(
            "DFT",
            {"x": r(2, 3, 5, 2)},
            {"inverse": inverse},
            opset=20,
            constants={"n": n(4), "axis": n(1)},
            id=f"DFT-axis1-cut-inverse{inverse}-20",
        )
    )
CASES.append(Case("DFT", {"x": r(2, 3, 6, 1)}, {"onesided": 1}, opset=20, id="DFT-default-axis-20"))
CASES.append(
    Case(
        "DFT",
        {"x": r(2, 4, 6, 1)},
        {"onesided": 1},
        opset=20,
        dynamic=True,
        constants={"n": n(9), "axis": n(-2)},
        id="DFT-padded-negative-axis-20-dyn",
    )
)
CASES.append(Case("DFT", {"x": r(3, 8, 1)}, opset=17, dynamic=True, id="DFT-dynamic-17"))


# STFT (17+): a real or complex signal, frames that overlap or not (the last samples unread),
# a window or none, the frame length given or read off the window, one- or two-sided
HANN = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(8) / 8)
for onesided in (1, 0):
    CASES.append(Case("STFT", {"x": r(2, 22, 1)}, {"onesided": onesided}, opset=17,
                      constants={"step": n(3), "window": HANN},
                      id=f"STFT-real-hann-overlap-onesided{onesided}"))  # fmt: skip
CASES.append(Case("STFT", {"x": r(1, 17, 2)}, {"onesided": 0}, opset=17,
                  constants={"step": n(6), "window": r(6), "length": n(6)},
                  id="STFT-complex-apart-window-and-length"))  # fmt: skip
CASES.append(Case("STFT", {"x": r(2, 16, 1)}, {"onesided": 1}, opset=20, dynamic=True,
                  constants={"step": n(2), "window": HANN}, id="STFT-opset20-dyn"))  # fmt: skip
# a signal [N, L] (no parts axis: ONNX Runtime reads it as [N, L, 1]) had no rule; onnx's
# reference takes none, so ONNX Runtime's Jacobian alone checks it (STFT is linear in x)
CASES.append(NodeCase("STFT", {"x": r(2, 16)}, {"onesided": 1}, opset=17, ort_only=True,
                      constants={"step": n(4), "window": HANN}, id="STFT-rank2"))  # fmt: skip
# no onesided: one-sided by default, where onnx's shape inference gave every bin (the seed
# was shaped [N, 5, 8, 2] for an output of [N, 5, 5, 2]; ONNX Runtime refused it)
CASES.append(
    Case(
        "STFT",
        {"x": r(2, 16, 1)},
        opset=17,
        dynamic=True,
        constants={"step": n(2), "window": HANN},
        id="STFT-default-onesided-dyn",
    )
)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_rule(case):
    case.run()
