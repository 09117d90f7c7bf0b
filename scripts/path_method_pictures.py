"""The pictures of README.md's "Path methods" section: one per method, on one sample digit.

    make docs-pictures        # or: .venv/bin/python scripts/path_method_pictures.py

Writes docs/path-methods/<method>.png with the same options as the README's examples (the
panel igcli writes for each input). Needs the xrai extra (scikit-image) for the XRAI one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import igcli  # noqa: E402

OUT = ROOT / "docs" / "path-methods"
MODEL = ROOT / "sample_models" / "digits_cnn.onnx"
DIGIT = ROOT / "sample_inputs" / "digits" / "digit_3_idx30.png"
DIGITS = "sample_inputs/digits"  # as the README's commands give it (run from the root)

# name -> AttributionSettings options, as the README's command lines give them
METHODS = {
    "straight": {},
    "blur": {"path": "blur"},
    "guided": {"path": "guided"},
    "extremal": {"path": "extremal"},
    "shapley": {"path": "shapley", "samples": 8},
    "mean-baseline": {"baseline": "mean", "baseline_data": DIGITS},
    "multi-baseline": {"baselines": DIGITS},
    "expected-gradients": {"baselines": DIGITS, "samples": 200},
    "smoothgrad": {"noise": 25},
    "vargrad": {"noise": 25, "noise_type": "vargrad"},
    "xrai": {"regions": "xrai"},
}


def main() -> None:
    os.chdir(ROOT)
    OUT.mkdir(parents=True, exist_ok=True)
    session = igcli.Session(MODEL)
    for name, options in METHODS.items():
        a = session.attribute(DIGIT, **options)
        path = OUT / f"{name}.png"
        a.image().save(path, optimize=True)
        print(f"{path.relative_to(ROOT)}: completeness error {a.rel_error:.3g}, "
              f"{a.extra['steps_used']} gradient evaluations")  # fmt: skip


if __name__ == "__main__":
    main()
