"""Regenerate the pictures in README.md from the bundled samples: `make pictures`.

Runs the README's "try it" commands into a temporary folder, copies one image panel and one
tabular chart to docs/pictures/, and takes a screenshot of report.html with headless
Chromium (Debian's `chromium`; skipped with a message where it is missing).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PICTURES = ROOT / "docs" / "pictures"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def igcli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "igcli", *args, "--quiet"], cwd=ROOT, check=True)


def main() -> None:
    PICTURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        digits, rows = out / "digits", out / "rows"
        igcli(
            "explain", "sample_models/digits_cnn.onnx", "sample_inputs/digits", "--out", str(digits)
        )
        igcli(
            "explain",
            "sample_models/breast_cancer_mlp.onnx",
            "sample_inputs/breast_cancer.csv",
            "--out",
            str(rows),
        )
        shutil.copy(digits / "digit_7_idx9.png", PICTURES / "digit_panel.png")
        shutil.copy(rows / "breast_cancer_row0.png", PICTURES / "tabular_bars.png")
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            print("chromium not found: report.html screenshot skipped", file=sys.stderr)
            return
        profile = out / "profile"
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--window-size=1200,900",
                "--virtual-time-budget=3000",  # let the lazy thumbnails load
                f"--screenshot={PICTURES / 'report_html.png'}",
                (digits / "report.html").as_uri(),
            ],
            check=True,
            capture_output=True,
        )
    print(f"pictures in {PICTURES.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
