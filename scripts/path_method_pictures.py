"""The pictures of README.md's "Path methods" section: one per method, on one sample digit.

    make docs-pictures        # or: .venv/bin/python scripts/path_method_pictures.py

Writes docs/path-methods/<method>.png with the same options as the README's examples (the
panel igcli writes for each input), and gallery.png: every method's attribution tile side by
side, for README.md. Needs the xrai extra (scikit-image) for the XRAI one.
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
    gallery()


# The attribution tile inside a panel of a 28x28 digit (scaled 8x), as render.py lays it out.
TILE = (263, 83, 485, 305)


def gallery(columns: int = 6) -> None:
    """gallery.png: each method's attribution tile under its name, in METHODS order."""
    from PIL import Image, ImageDraw

    from igcli.render import _font

    font = _font(20)
    tile_w, tile_h = TILE[2] - TILE[0], TILE[3] - TILE[1]
    pad, label_h = 12, 30
    rows = -(-len(METHODS) // columns)
    sheet = Image.new(
        "RGB",
        (columns * (tile_w + pad) + pad, rows * (tile_h + label_h + pad) + pad),
        "white",
    )
    draw = ImageDraw.Draw(sheet)
    for k, name in enumerate(METHODS):
        x = pad + (k % columns) * (tile_w + pad)
        y = pad + (k // columns) * (tile_h + label_h + pad)
        draw.text((x, y), name, fill="black", font=font)
        with Image.open(OUT / f"{name}.png") as panel:
            sheet.paste(panel.convert("RGB").crop(TILE), (x, y + label_h))
    sheet.save(OUT / "gallery.png", optimize=True)
    print(f"{(OUT / 'gallery.png').relative_to(ROOT)}")


if __name__ == "__main__":
    gallery() if sys.argv[1:] == ["--gallery"] else main()
