"""report.html for large runs: time to write the page, its size, and (with Chromium) the time
until the page is usable and to sort it.

Two fake runs of N results: an image run (one panel link per result) and a tabular run (N CSV
rows of 30 features, one .npy per row, so the per-feature summary is drawn). Goal: a page
of a few MB for 10,000 inputs that is usable in well under a second.

    .venv/bin/python bench/bench_html_report.py [--n 10000]
"""

from __future__ import annotations

import argparse
import base64
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from igcli.html_report import render_html
from igcli.report import RunReport

FEATURES = 30


def result(k: int, **extra) -> dict:
    rng = np.random.default_rng(k)
    err = float(10 ** rng.uniform(-8, -1))
    rec = {
        "input": f"data/part{k % 4}/img{k:05d}.png",
        "name": f"part{k % 4}/img{k:05d}",
        "target": int(k % 10),
        "label": str(k % 10),
        "output": "logits",
        "f_input": float(rng.normal(5, 2)),
        "f_baseline": float(rng.normal(-3, 1)),
        "attribution_sum": 8.0,
        "delta": 8.0,
        "abs_error": 8 * err,
        "rel_error": err,
        "steps": 50,
        "method": "gausslegendre",
        "baseline": "black",
        "gradient_source": "graph",
        "wall_time_s": 0.01,
        "attributions_file": f"part{k % 4}/img{k:05d}.npy",
        "heatmap_file": f"part{k % 4}/img{k:05d}.png",
        "status": "ok",
    }
    rec.update(extra)
    return rec


def tabular_run(folder: Path, n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(n, FEATURES))
    header = ",".join(f"f{j}" for j in range(FEATURES))
    rows = "\n".join(",".join(f"{v:.4f}" for v in row) for row in values)
    (folder / "rows.csv").write_text(header + "\n" + rows + "\n")
    weights = rng.normal(size=FEATURES) * np.linspace(2, 0.1, FEATURES)
    out = []
    for k in range(n):
        np.save(folder / f"rows_row{k}.npy", (values[k] * weights)[None].astype(np.float32))
        out.append(
            result(
                k,
                input=str(folder / "rows.csv"),
                name=f"rows_row{k}",
                attributions_file=f"rows_row{k}.npy",
                heatmap_file=f"rows_row{k}.png",
            )
        )
    return out


def write(folder: Path, results: list[dict]) -> tuple[Path, float]:
    report = RunReport("models/m.onnx", "0" * 64, {"steps": 50, "wall_time_s": 100.0})
    report.results = results
    start = time.perf_counter()
    page = render_html(report.to_json(), folder)
    seconds = time.perf_counter() - start
    path = folder / "report.html"
    path.write_text(page)
    return path, seconds


def browser_times(pages: list[Path]) -> list[tuple[float, float]] | None:
    """(ms until the page's script has run, ms to sort by completeness error) per page."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    if not chromium or not driver_path:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp()
    for flag in (
        "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
        "--disable-background-networking --disable-component-update --disable-sync "
        f"--window-size=1280,900 --user-data-dir={profile}"
    ).split():
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    out = []
    try:
        for page in pages:
            driver.get(page.as_uri())
            ready = driver.execute_script(
                "return performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
            )
            sort = driver.execute_script(
                "const t = performance.now();"
                "document.querySelector('th button[data-key=rel_error]').click();"
                "return performance.now() - t"
            )
            out.append((ready, sort))
            shot = driver.get_screenshot_as_base64()
            (page.parent / "screenshot.png").write_bytes(base64.b64decode(shot))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image_dir, table_dir = Path(tmp) / "image", Path(tmp) / "tabular"
        image_dir.mkdir()
        table_dir.mkdir()
        pages = []
        for label, folder, results in (
            ("image", image_dir, [result(k) for k in range(args.n)]),
            ("tabular", table_dir, tabular_run(table_dir, args.n)),
        ):
            page, seconds = write(folder, results)
            pages.append(page)
            size = page.stat().st_size / 1e6
            print(f"{label:8s} {args.n:,} results: written in {seconds:.2f} s, {size:.2f} MB")
        times = browser_times(pages)
        if times is None:
            print("no Chromium/selenium: browser timings skipped")
            return
        for label, (ready, sort) in zip(("image", "tabular"), times, strict=True):
            print(f"{label:8s} in Chromium: usable after {ready:.0f} ms, sorted in {sort:.0f} ms")


if __name__ == "__main__":
    main()
