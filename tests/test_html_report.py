"""report.html: a self-contained, escaped, fast page; and the same page in a real browser.

The first half needs no browser: the page's structure, that it references nothing outside,
escaping, links relative to the page, the tabular summary, and a 10,000-result page. The second
half runs igcli on the sample models (an image run with a broken file, a tabular run, a merged
sharded run), opens each report.html in headless Chromium from file:// and checks it as a
person would use it; screenshots go to test-artifacts/html-report/ (ignored by git).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from igcli import html_report
from igcli.cli import main
from igcli.html_report import render_html
from igcli.report import RunReport

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "sample_models" / "digits_cnn.onnx"
CANCER = ROOT / "sample_models" / "breast_cancer_mlp.onnx"
DIGIT_DIR = ROOT / "sample_inputs" / "digits"
CANCER_CSV = ROOT / "sample_inputs" / "breast_cancer.csv"
ARTIFACTS = ROOT / "test-artifacts" / "html-report"

EVIL = '<img src=x onerror="window.pwned=1"> #1'  # also a file name: # must be quoted
VOID = {"meta", "input", "img", "br", "hr", "link", "source", "wbr", "col", "area"}


# ---------------------------------------------------------------- helpers


def record(k: int, **extra) -> dict:
    err = 10.0 ** -(1 + k % 7)
    rec = {
        "input": f"in/img{k}.png",
        "name": f"img{k}",
        "target": k % 10,
        "label": str(k % 10),
        "output": "logits",
        "f_input": 1.0 + k,
        "f_baseline": -0.5,
        "attribution_sum": 1.5 + k,
        "delta": 1.5 + k,
        "abs_error": err * (1.5 + k),
        "rel_error": err,
        "steps": 50,
        "method": "gausslegendre",
        "baseline": "black",
        "gradient_source": "graph",
        "wall_time_s": 0.01,
        "attributions_file": f"img{k}.npy",
        "heatmap_file": f"img{k}.png",
        "status": "ok",
    }
    rec.update(extra)
    return rec


def report_data(results: list[dict], failures=(), **extra) -> dict:
    report = RunReport("models/m.onnx", "ab" * 32, {"steps": 50, "wall_time_s": 2.0})
    report.results = list(results)
    report.failures = list(failures)
    data = report.to_json()
    data.update(extra)
    return data


class StrictHTML(HTMLParser):
    """Fails on what a browser would silently repair: unclosed or misnested elements."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.ids: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.doctype = None
        self.problems: list[str] = []

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.problems.append(f"self-closing <{tag}/>")

    def handle_endtag(self, tag):
        if tag in VOID:
            self.problems.append(f"end tag for void <{tag}>")
        elif not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def parse(page: str) -> StrictHTML:
    parser = StrictHTML()
    parser.feed(page)
    parser.close()
    return parser


def blob(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="igcli-data">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def static_part(page: str) -> str:
    """The page without its two scripts (the data blob and the code)."""
    return re.sub(r"<script\b.*?</script>", "", page, flags=re.S)


# ---------------------------------------------------------------- without a browser


def test_page_is_well_formed_html(tmp_path):
    results = [record(k) for k in range(12)]
    results[3]["rel_error"] = "nan"
    results[4]["rel_error"] = "inf"
    failures = [{"input": "in/bad.png", "name": "bad", "status": "error", "error": "in/bad.png: x"}]
    page = render_html(report_data(results, failures), tmp_path)
    parser = parse(page)
    assert parser.doctype.lower() == "doctype html"
    assert parser.problems == []
    assert parser.stack == []
    assert len(parser.ids) == len(set(parser.ids)), "ids must be unique"
    assert ("html", {"lang": "en"}) in parser.tags
    assert ("meta", {"charset": "utf-8"}) in parser.tags
    data = blob(page)
    assert len(data["rows"]) == 12
    # non-finite errors travel as strings and are counted in their own band
    assert data["rows"][3][data["cols"].index("rel_error")] == "nan"
    assert "not a number" in page
    assert "preparing the model" not in page  # (a blink is not said)
    first_run = report_data(results)
    first_run["settings"]["prepare_time_s"] = 113.0
    assert ">1 min 53 s preparing the model before<" in render_html(first_run, tmp_path)


def test_adaptive_runs_show_each_features_error_estimate(tmp_path):
    """--steps auto records carry feature_error: a column in the page and in report.md,
    shown only when some result has one."""
    adaptive = [record(k, steps="auto", feature_error=0.031 * (k + 1)) for k in range(3)]
    adaptive[1]["feature_error"] = None  # (a result without one shows a dash)
    data = blob(render_html(report_data(adaptive), tmp_path))
    assert data["perFeature"] is True
    assert data["rows"][0][data["cols"].index("feature_error")] == pytest.approx(0.031)
    assert blob(render_html(report_data([record(0)]), tmp_path))["perFeature"] is False
    report = RunReport("models/m.onnx", "ab" * 32, {"steps": "auto", "wall_time_s": 2.0})
    report.results = adaptive
    table = [line for line in report.to_markdown().splitlines() if line.startswith("| ")]
    assert "| rel. error | feature err. | source |" in table[0]
    assert "| ~3.1% | graph |" in table[1] and "| - | graph |" in table[2]
    report.results = [record(0)]
    assert "feature err." not in report.to_markdown()


def test_page_is_self_contained(tmp_path):
    page = render_html(report_data([record(k) for k in range(5)]), tmp_path)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page
    assert all(page[m.end()] == "#" for m in re.finditer(r"url\(", page))  # only in-page refs
    assert not re.search(r"\s(src|href)=", static_part(page)), "static parts load nothing"
    data = blob(page)
    for row in data["rows"]:
        for link in (row[data["cols"].index("heatmap")], row[data["cols"].index("npy")]):
            assert not re.match(r"^[a-z][a-z0-9+.-]*:|^/", link), link


def test_names_labels_and_errors_are_escaped(tmp_path):
    results = [
        record(0, name=EVIL, input=f"in/{EVIL}.png", label="</script><script>x=1</script>"),
        record(1, heatmap_file=f"{EVIL}.png", gradient_source="<b>fd</b>"),
    ]
    failures = [
        {"input": "in/<script>.png", "name": "<script>", "error": "in/<script>.png: </script>"}
    ]
    skipped = [{"input": "<svg onload=alert(1)>", "reason": "<i>not an input</i>"}]
    data = report_data(results, failures, skipped=skipped)
    data["settings"]["baseline"] = "<script>alert(1)</script>"
    page = render_html(data, tmp_path)
    parser = parse(page)
    assert parser.problems == []
    assert [t for t, _ in parser.tags].count("script") == 2  # the page's own, nothing else
    assert not [(t, a) for t, a in parser.tags for name in a if name.startswith("on")]
    allowed = {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "header",
        "h1",
        "h2",
        "h3",
        "p",
        "main",
        "section",
        "div",
        "ul",
        "ol",
        "li",
        "button",
        "span",
        "label",
        "input",
        "select",
        "option",
        "table",
        "thead",
        "tbody",
        "tr",
        "nav",
        "noscript",
        "code",
        "dl",
        "dt",
        "dd",
        "details",
        "summary",
        "dialog",
        "img",
        "a",
        "script",
        "figure",
        "figcaption",
    }
    assert {t for t, _ in parser.tags} <= set(allowed)
    assert "&lt;script&gt;" in page and "&lt;svg onload=alert(1)&gt;" in page
    data = blob(page)  # the names come back exactly, for the script to set as text
    rows = [dict(zip(data["cols"], r, strict=True)) for r in data["rows"]]
    assert rows[0]["name"] == EVIL and rows[0]["label"] == "</script><script>x=1</script>"
    assert rows[1]["heatmap"] == "%3Cimg%20src%3Dx%20onerror%3D%22window.pwned%3D1%22%3E%20%231.png"


def test_links_are_relative_to_the_page_and_percent_encoded(tmp_path):
    results = [
        record(0, heatmap_file="sub/a b#1?.png", attributions_file="sub/a b#1?.npy"),
        record(1, heatmap_file="javascript:alert(1).png"),
        record(2, heatmap_file="c.png"),
        record(3, heatmap_file=None),
    ]
    page_dir = tmp_path / "merged" / "out"
    roots = [tmp_path / "shard1", tmp_path / "shard2", None, None]
    data = blob(render_html(report_data(results), page_dir, roots))
    links = [r[data["cols"].index("heatmap")] for r in data["rows"]]
    assert links == [
        "../../shard1/sub/a%20b%231%3F.png",
        "../../shard2/javascript%3Aalert%281%29.png",
        "c.png",
        None,
    ]


def test_ten_thousand_results_make_a_page_that_builds_one_page_of_rows(tmp_path):
    results = [record(k, input=f"data/batch{k // 1000}/img{k}.png") for k in range(10_000)]
    page = render_html(report_data(results), tmp_path)
    size = len(page.encode())
    print(f"10,000 results: report.html is {size / 1e6:.2f} MB")
    assert size < 4_000_000  # a few hundred bytes a result, nothing per result twice
    parser = parse(page)
    assert parser.problems == []
    assert [t for t, _ in parser.tags].count("tr") == 1  # the header row; the script adds rows
    assert len(blob(page)["rows"]) == 10_000
    assert 0 < html_report.PAGE_SIZE <= 500
    # the script builds the current page of the filtered, sorted view, never all rows
    assert "view.slice(start, start + state.size).forEach" in page
    assert page.count('createElement("tr")') == 1


def write_tabular_run(out: Path, n_rows: int, weights: np.ndarray, sidecar_names=None) -> Path:
    """A fake tabular run: CSV rows, one 1x3 attribution .npy per row, optionally a sidecar."""
    model = out / "m.onnx"
    out.mkdir(parents=True, exist_ok=True)
    if sidecar_names is not None:
        model.with_suffix(".json").write_text(json.dumps({"feature_names": sidecar_names}))
    csv_path = out / "rows.csv"
    values = np.arange(n_rows * 3, dtype=float).reshape(n_rows, 3)
    lines = ["b,<c>,a"] + [f"{v[1]},{v[2]},{v[0]}" for v in values]  # header order != model's
    csv_path.write_text("\n".join(lines) + "\n")
    results = []
    for k in range(n_rows):
        np.save(out / f"rows_row{k}.npy", (weights * (k + 1))[None].astype(np.float32))
        results.append(
            record(
                k,
                input=str(csv_path),
                name=f"rows_row{k}",
                target=k % 2,
                label=["no", "yes"][k % 2],
                attributions_file=f"rows_row{k}.npy",
                heatmap_file=f"rows_row{k}.png",
            )
        )
    return model


def test_tabular_summary_orders_features_by_mean_abs_attribution(tmp_path):
    weights = np.array([0.1, -3.0, 1.0])  # features a, b, <c> in the model's order
    model = write_tabular_run(tmp_path, 6, weights, sidecar_names=["a", "b", "<c>"])
    data = report_data([record(k, **r) for k, r in enumerate(_results_of(tmp_path, 6))])
    data["model"] = str(model)
    page = render_html(data, tmp_path)
    assert parse(page).problems == []
    section = page[page.index('<section id="features"') :]
    figures = section.split("<figure")[1:]
    assert len(figures) == 3  # every row, then target 0 and target 1 with their strips
    names = re.findall(r'class="name"[^>]*><title>([^<]*)</title>', figures[0])
    assert names == ["b", "&lt;c&gt;", "a"]  # by mean |attribution|, escaped
    assert "path" not in figures[0] and 'class="dots"' in figures[1]
    assert "grad-t0" in figures[1]  # coloured by the CSV's values, read by header name
    dots = sum(p.count("h0") for p in re.findall(r'class="dots"[^>]*d="([^"]*)"', figures[1]))
    assert dots == 3 * 3  # 3 rows of target 0, 3 features


def _results_of(out: Path, n: int) -> list[dict]:
    return [
        {
            "input": str(out / "rows.csv"),
            "name": f"rows_row{k}",
            "target": k % 2,
            "label": ["no", "yes"][k % 2],
            "attributions_file": f"rows_row{k}.npy",
            "heatmap_file": f"rows_row{k}.png",
        }
        for k in range(n)
    ]


def test_tabular_names_fall_back_to_the_csv_header_and_colours_to_none(tmp_path):
    weights = np.array([1.0, 2.0, 3.0])
    model = write_tabular_run(tmp_path, 4, weights)  # no sidecar
    data = report_data([record(k, **r) for k, r in enumerate(_results_of(tmp_path, 4))])
    data["model"] = str(model)
    page = render_html(data, tmp_path)
    assert re.findall(r"<title>([^<]*)</title>", page)[1:4] == ["a", "&lt;c&gt;", "b"]
    (tmp_path / "rows.csv").unlink()
    page = render_html(data, tmp_path)
    assert re.findall(r"<title>([^<]*)</title>", page)[1:4] == [
        "feature 2",
        "feature 1",
        "feature 0",
    ]
    assert "not coloured by value" in page


def test_attribution_vectors_read_fast_or_through_numpy(tmp_path):
    path = tmp_path / "a.npy"
    for array in (
        np.arange(30, dtype=np.float32)[None],  # what igcli writes: the direct path
        np.arange(5.0)[None],
        np.ones((2, 3), np.float32),  # anything else: np.load
        np.arange(4, dtype=np.float32),
        np.ones((1, 1, 2, 2), np.float16),
    ):
        np.save(path, array)
        loaded = html_report._load_vector(path)
        assert loaded.dtype == array.dtype and loaded.shape == array.shape
        assert np.array_equal(loaded, array)


def test_image_runs_have_no_tabular_summary(tmp_path):
    page = render_html(report_data([record(k) for k in range(3)]), tmp_path)
    assert 'id="features"' not in page


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_explain_and_merge_reports_write_report_html(tmp_path):
    for k in (1, 2):
        result = run_cli(
            "explain", DIGITS, DIGIT_DIR, "--steps", "4", "--shard", f"{k}/2",
            "--out", tmp_path / f"s{k}",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert (tmp_path / f"s{k}" / f"report.shard-{k}-of-2.html").is_file()
    first = json.loads((tmp_path / "s1" / "report.shard-1-of-2.json").read_text())
    first["results"][0]["rel_error"] = "inf"  # as report.json writes a non-finite error
    first["results"][0]["delta"] = 0.0  # (the one case where a run writes it)
    (tmp_path / "s1" / "report.shard-1-of-2.json").write_text(json.dumps(first))
    out = tmp_path / "deeper" / "merged"
    result = run_cli("merge-reports", tmp_path / "s1", tmp_path / "s2", "--out", out)
    assert result.exit_code == 0, result.stderr
    merged = json.loads((out / "report.json").read_text())
    assert "_root" not in json.dumps(merged)  # the shard folders stay in memory
    shards = merged["settings"]["merged_from"]
    assert [s["shard"] for s in shards] == ["1/2", "2/2"]
    assert merged["settings"]["wall_time_s"] is None  # no one shard's time is the run's
    assert merged["summary"]["max_rel_error"] == "inf"
    data = blob((out / "report.html").read_text())
    links = [r[data["cols"].index("heatmap")] for r in data["rows"]]
    assert len(links) == len(list(DIGIT_DIR.glob("*.png")))
    for link in links:
        assert link.startswith(("../../s1/", "../../s2/"))
        assert (out / link).is_file()


# ---------------------------------------------------------------- in a real browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or f"/usr/bin/{name}"
        if os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by selenium through Debian's matching chromedriver."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')"
    )
    from selenium.webdriver.chrome.service import Service

    chromium = _find("chromium", "chromium-browser")
    driver_path = _find("chromedriver")
    if not chromium or not driver_path:
        pytest.skip(
            "headless Chromium is not installed: apt-get install chromium chromium-driver "
            "(CI's .ci/run installs them)"
        )
    profile = tempfile.mkdtemp(prefix="igcli-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium then never runs its driver downloader.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def igcli(*args, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "igcli", *[str(a) for a in args]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real runs of the sample models, as a user types them (paths relative to the clone)."""
    tmp = tmp_path_factory.mktemp("html-runs")
    env = {**os.environ, "IGCLI_CACHE_DIR": str(tmp / "cache")}
    images = tmp / "digits"
    shutil.copytree(DIGIT_DIR, images)
    (images / "broken.png").write_bytes(b"not a png at all")
    shutil.copy(DIGIT_DIR / "digit_7_idx9.png", images / f"{EVIL}.png")
    jobs = {
        "image": ["explain", DIGITS.relative_to(ROOT), images, "--out", tmp / "image"],
        "tabular": [
            "explain", CANCER.relative_to(ROOT), CANCER_CSV.relative_to(ROOT),
            "--steps", "auto", "--out", tmp / "tabular",
        ],
        "shard1": ["explain", DIGITS.relative_to(ROOT), images, "--shard", "1/2",
                   "--out", tmp / "s1"],
        "shard2": ["explain", DIGITS.relative_to(ROOT), images, "--shard", "2/2",
                   "--out", tmp / "s2"],
    }  # fmt: skip
    # Two at a time: the machine has two cores.
    for batch in (["image", "tabular"], ["shard1", "shard2"]):
        procs = {
            name: subprocess.Popen(
                [sys.executable, "-m", "igcli", *[str(a) for a in jobs[name]]],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in batch
        }
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=300)
            expected = 0 if name == "tabular" else 4  # the broken image fails alone
            if name.startswith("shard") and "broken.png" not in err:
                expected = 0  # the broken file is in the other shard
            assert proc.returncode == expected, (name, err)
    merged = tmp / "merged" / "out"
    result = igcli("merge-reports", tmp / "s1", tmp / "s2", "--out", merged, env=env)
    assert result.returncode == 4, result.stderr  # the broken image is still a failure
    return {"image": tmp / "image", "tabular": tmp / "tabular", "merged": merged}


def open_page(driver, page: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(page.resolve().as_uri())
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.body.dataset.ready === '1'")
    )


def console_problems(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def table_names(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#table tbody tr')].map(tr => tr.dataset.name)"
    )


def click(driver, selector: str) -> None:
    driver.execute_script(f"document.querySelector({json.dumps(selector)}).click()")


def worst_name(report: dict) -> str:
    def key(r):
        e = float(r["rel_error"])
        return math.inf if math.isnan(e) else e

    return max(report["results"], key=key)["name"]


def thumbnails_load(driver) -> list[tuple[str, int]]:
    """Scroll every thumbnail of the page into view and wait for it; (alt, naturalWidth)."""
    return driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        (async () => {
          const out = [];
          for (const img of document.querySelectorAll('#table tbody img')) {
            img.scrollIntoView({block: 'center'});
            if (!img.complete) {
              await new Promise((ok) => {
                img.addEventListener('load', ok, {once: true});
                img.addEventListener('error', ok, {once: true});
              });
            }
            out.push([img.alt, img.naturalWidth]);
          }
          window.scrollTo(0, 0);
          done(out);
        })();
        """
    )


def screenshot(driver, name: str, capsys) -> Path:
    """A full-page PNG kept under test-artifacts/ for a person to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": min(height, 8000), "scale": 1},
        },
    )
    path = ARTIFACTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    with capsys.disabled():
        print(f"\nscreenshot of report.html ({name}): {path}")
    return path


def check_common(driver, out: Path, filter_text: str, expect_filtered: list[str]) -> dict:
    """What every report page must do; returns report.json for the caller's own checks."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    report = json.loads((out / "report.json").read_text())
    open_page(driver, out / "report.html")
    n = len(report["results"])
    names = table_names(driver)
    assert names == [r["name"] for r in report["results"]][: html_report.PAGE_SIZE]  # input order
    # every thumbnail loads, once scrolled into view (they are lazy)
    loaded = thumbnails_load(driver)
    assert len(loaded) == min(n, html_report.PAGE_SIZE)
    assert all(width > 0 for _, width in loaded), loaded
    # sorting by completeness error puts the worst first, a second click the best
    click(driver, "th button[data-key=rel_error]")
    assert table_names(driver)[0] == worst_name(report)
    assert (
        driver.execute_script(
            "return document.querySelector('th[data-key=rel_error]').getAttribute('aria-sort')"
        )
        == "descending"
    )
    click(driver, "th button[data-key=rel_error]")
    assert table_names(driver)[-1] == worst_name(report)
    click(driver, "th button[data-key=i]")
    # a thumbnail opens the full panel
    click(driver, "#table tbody tr:first-child button.thumb")
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script(
            "const v = document.getElementById('viewer'), i = document.getElementById('v-img');"
            "return v.open && i.complete && i.naturalWidth > 0"
        )
    )
    assert driver.find_element(By.ID, "v-title").text == report["results"][0]["name"]
    click(driver, "#v-close")
    # filtering by name
    box = driver.find_element(By.ID, "f-name")
    box.send_keys(filter_text)
    WebDriverWait(driver, 5).until(lambda d: table_names(d) == expect_filtered)
    count = driver.find_element(By.ID, "count").text
    assert f"of {len(expect_filtered)} (filtered from {n})" in count
    # the summary's worst result opens even when a filter hides it, and sorts the table
    click(driver, "#summary [data-open]")
    assert driver.find_element(By.ID, "v-title").text == worst_name(report)
    assert table_names(driver)[0] == worst_name(report)
    click(driver, "#v-close")
    box.send_keys(filter_text)
    WebDriverWait(driver, 5).until(lambda d: table_names(d) == expect_filtered)
    click(driver, "#f-clear")
    WebDriverWait(driver, 5).until(lambda d: len(table_names(d)) == min(n, html_report.PAGE_SIZE))
    assert driver.execute_script("return window.pwned === undefined")  # no name ran as HTML
    return report


def test_image_report_in_browser(browser, runs, capsys):
    report = check_common(browser, runs["image"], "IDX3", ["digit_3_idx30"])
    assert any(r["name"] == EVIL for r in report["results"])
    assert browser.execute_script(
        f"return [...document.querySelectorAll('#table tbody tr')].some("
        f"tr => tr.children[2].textContent === {json.dumps(EVIL)})"
    )
    failures = browser.find_element("id", "failures").text
    assert "broken.png" in failures and "not a readable image" in failures
    assert "feature err." not in browser.find_element("id", "table").text  # fixed steps
    problems = console_problems(browser)
    screenshot(browser, "image", capsys)
    assert problems == []


def test_tabular_report_in_browser(browser, runs, capsys):
    check_common(browser, runs["tabular"], "row3", ["breast_cancer_row3"])
    figures = browser.execute_script(
        "return [...document.querySelectorAll('#features figure')].map(f => ["
        "f.querySelector('figcaption').textContent, f.querySelectorAll('path.dots').length,"
        "[...f.querySelectorAll('text.name')].map(t => t.lastChild.textContent)])"
    )
    assert figures, "a tabular run has a summary per feature"
    # (run with --steps auto: each row's estimate of its features' error, beside completeness)
    estimates = browser.execute_script(
        "const k = [...document.querySelectorAll('#table thead th')].findIndex("
        "th => th.textContent.includes('feature err.'));"
        "return k < 0 ? null : [...document.querySelectorAll('#table tbody tr')].map("
        "tr => tr.children[k].textContent)"
    )
    assert estimates and all(e.startswith("~") and e.endswith("%") for e in estimates)
    assert any(dots for _, dots, _ in figures), "the strips have dots"
    sidecar = json.loads(CANCER.with_suffix(".json").read_text())["feature_names"]
    for _, _, names in figures:
        assert len(names) == min(len(sidecar), html_report.TOP_FEATURES)
        assert set(names) <= set(sidecar)
    problems = console_problems(browser)
    screenshot(browser, "tabular", capsys)
    assert problems == []


def test_merged_sharded_report_in_browser(browser, runs, capsys):
    report = check_common(browser, runs["merged"], "digit_0", ["digit_0_idx1"])
    assert [s["shard"] for s in report["settings"]["merged_from"]] == ["1/2", "2/2"]
    assert "broken.png" in browser.find_element("id", "failures").text
    problems = console_problems(browser)
    screenshot(browser, "merged", capsys)
    assert problems == []


def test_ten_thousand_results_in_browser(browser, tmp_path, capsys):
    results = [record(k, heatmap_file=None) for k in range(10_000)]
    results[7_777]["rel_error"] = 0.5
    (tmp_path / "report.html").write_text(render_html(report_data(results), tmp_path))
    open_page(browser, tmp_path / "report.html")
    assert len(table_names(browser)) == html_report.PAGE_SIZE
    assert browser.execute_script("return document.querySelectorAll('tr').length") == 101
    click(browser, "th button[data-key=rel_error]")
    assert table_names(browser)[0] == "img7777"
    click(browser, "#p-last")
    assert (
        table_names(browser)[-1]
        == min((r for r in results), key=lambda r: (r["rel_error"], -int(r["name"][3:])))["name"]
    )
    assert console_problems(browser) == []


def test_a_long_class_name_keeps_the_table_in_the_window(browser, tmp_path, capsys):
    """A 500-character label made the table 4,868 pixels wide in a 1,265 pixel window: the
    errors and even the target header went off screen, the target filter across the page.
    The label is cut with an ellipsis; its cell's title holds all of it."""
    long = "a very long class name " * 22
    results = [record(k, heatmap_file=None, target=k % 2, label=[long, "b"][k % 2])
               for k in range(6)]  # fmt: skip
    (tmp_path / "report.html").write_text(render_html(report_data(results), tmp_path))
    open_page(browser, tmp_path / "report.html")
    widths = browser.execute_script(
        "return [document.querySelector('#table').scrollWidth, window.innerWidth,"
        " document.querySelector('#f-target').offsetWidth]"
    )
    assert widths[0] <= max(widths[1], 1400) and widths[2] <= 260, widths
    titles = browser.execute_script(
        "return [...document.querySelectorAll('#table td.tgt')].map((t) => t.title)"
    )
    assert f"0 '{long}'" in titles
    assert console_problems(browser) == []


def test_a_record_naming_a_fifo_or_a_device_does_not_hang_the_page(tmp_path):
    """The page reads the CSVs its records name again (feature names and values); a merged
    report's records are anyone's, and a FIFO there blocked the report for good."""
    import os

    from igcli import html_report

    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.csv"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        record = {"input": str(path), "name": "rows_row0"}
        assert html_report._feature_values([record], ["a", "b"]) is None
        names = html_report._feature_names(str(tmp_path / "m.onnx"), record, 2)
        assert names == ["feature 0", "feature 1"]
