"""Every elementwise rule against central finite differences."""

import numpy as np
import pytest

from tests.autodiff.checker import Case

rng = np.random.default_rng(42)


def r(*shape, low=-2.0, high=2.0):
    return rng.uniform(low, high, size=shape)


def away_from_zero(x, margin=0.05):
    """Move values off a kink at zero so central differences do not straddle it."""
    return np.where(np.abs(x) < margin, np.sign(x + 1e-12) * margin * 2, x)


CASES: list[Case] = []
for opset in (9, 13, 17):
    for sa, sb in [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1))]:
        for op in ("Add", "Sub", "Mul", "Div"):
            b = r(*sb)
            if op == "Div":
                b = np.sign(b) * (np.abs(b) + 0.5)
            CASES.append(Case(op, {"a": r(*sa), "b": b}, opset=opset, id=f"{op}-{sa}-{sb}-{opset}"))
for op in ("Identity", "Neg", "Relu", "Sigmoid", "Tanh", "Exp"):
    CASES.append(Case(op, {"x": away_from_zero(r(3, 5))}))
CASES.append(Case("Log", {"x": r(3, 4, low=0.2, high=3.0)}))


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_rule(case):
    case.run()
