"""merge-reports joins one run's reports only: the same model and settings, and says why
it fails (exit 4 or 5) as explain does."""

from __future__ import annotations

import json
import os

import pytest

from igcli.errors import ExitCode
from tests.test_cli import DIGIT_PNGS, DIGITS, run

INPUTS = DIGIT_PNGS[:4]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Shard 1/2 at 16 steps and 2/2 at 8 into one folder; two whole runs at 8 and 16."""
    root = tmp_path_factory.mktemp("merge")
    for k, steps in ((1, "16"), (2, "8")):
        result = run("explain", DIGITS, *INPUTS, "--steps", steps, "--shard", f"{k}/2",
                     "--out", root / "mixed", "-q", "--no-heatmaps")  # fmt: skip
        assert result.exit_code == 0, result.stderr
    for steps in ("8", "16"):
        result = run("explain", DIGITS, *INPUTS, "--steps", steps, "--out", root / f"s{steps}",
                     "-q", "--no-heatmaps")  # fmt: skip
        assert result.exit_code == 0, result.stderr
    return root


def test_reports_of_different_settings_do_not_merge(shards, tmp_path):
    mixed = shards / "mixed"
    for extra in ((), ("--expect", "2")):
        result = run("merge-reports", mixed, "--out", tmp_path / "m", *extra)
        assert result.exit_code == ExitCode.SHARDS, result.stderr
        line = result.stderr.strip()
        assert "\n" not in line and "Traceback" not in line
        assert "report.shard-1-of-2.json and " in line and "report.shard-2-of-2.json" in line
        assert "different settings: steps 16 and 8" in line
        assert not (tmp_path / "m" / "report.json").exists()
    # two whole runs: one's records were dropped as duplicates of the other's
    result = run("merge-reports", shards / "s8", shards / "s16", "--out", tmp_path / "m2")
    assert result.exit_code == ExitCode.SHARDS
    assert "s8/report.json and " in result.stderr and "steps 8 and 16" in result.stderr


def test_a_heatmap_style_that_differs_is_named_by_settings_hash(shards, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    data = json.loads((shards / "s8" / "report.json").read_text())
    for r in data["results"]:
        r["settings_hash"] = "0" * 16
    (other / "report.json").write_text(json.dumps(data))
    result = run("merge-reports", shards / "s8", other, "--out", tmp_path / "m")
    assert result.exit_code == ExitCode.SHARDS
    assert "other/report.json ran with different settings: settings_hash" in result.stderr


def test_per_shard_values_do_not_count_as_settings(shards, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    data = json.loads((shards / "s8" / "report.json").read_text())
    data["settings"].update(wall_time_s=99.0, prepare_time_s=12.5, threads=7, batch_size=3,
                            dask={"workers": 2})  # fmt: skip
    (other / "report.json").write_text(json.dumps(data))
    result = run("merge-reports", shards / "s8", other, "--out", tmp_path / "m")
    assert result.exit_code == 0, result.stderr
    merged = json.loads((tmp_path / "m" / "report.json").read_text())["settings"]
    assert merged["prepare_time_s"] is None  # each shard's is its own, in merged_from
    assert [s["prepare_time_s"] for s in merged["merged_from"]][-1] == 12.5


def test_different_models_name_both_files(shards, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    data = json.loads((shards / "s8" / "report.json").read_text())
    data["model_sha256"] = "f" * 64
    (other / "report.json").write_text(json.dumps(data))
    result = run("merge-reports", shards / "s8", other, "--out", tmp_path / "m")
    assert result.exit_code == ExitCode.SHARDS
    assert (
        f"{shards / 's8' / 'report.json'} and {other / 'report.json'} are reports of "
        "different models" in result.stderr
    )


def test_a_failing_merge_says_why_as_explain_does(shards, tmp_path):
    data = json.loads((shards / "s8" / "report.json").read_text())
    names = [r["name"] for r in data["results"]]
    gated = tmp_path / "gated"
    gated.mkdir()
    data["gate"] = {"max": 1e-12, "passed": False, "failing": names}
    (gated / "report.json").write_text(json.dumps(data))
    result = run("merge-reports", gated, "--out", tmp_path / "m")
    assert result.exit_code == ExitCode.COMPLETENESS
    assert f"error: completeness error over 1e-12 for: {', '.join(names)}" in result.stderr
    failed = tmp_path / "failed"
    failed.mkdir()
    data["gate"] = None
    data["failures"] = [{"input": "bad.png", "name": "bad", "status": "error",
                         "error": "bad.png: not an image"}]  # fmt: skip
    (failed / "report.json").write_text(json.dumps(data))
    result = run("merge-reports", failed, "--out", tmp_path / "m3")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert "error: bad.png: not an image" in result.stderr
    assert f"error: 1 input(s) failed; see {tmp_path / 'm3'}/report.json" in result.stderr


def test_merged_rows_are_ordered_by_file_then_row():
    """Without a manifest, rows of several files were ordered row number first: a_row0,
    b_row0, a_row1, ... where an unsharded run lists a_row0, a_row1, ..., b_row0."""
    from igcli.report import input_order

    names = ["b_row1", "a_row10", "a_row2", "b_row0", "a", "a_row0", "c"]
    key = input_order(None)
    got = [n for n in sorted(names, key=lambda n: key({"name": n}))]
    assert got == ["a", "a_row0", "a_row2", "a_row10", "b_row0", "b_row1", "c"]
    key = input_order({"b": 0, "a": 1})  # a manifest's order, then the rest by name
    got = [n for n in sorted(names + ["zz"], key=lambda n: key({"name": n}))]
    assert got == ["b_row0", "b_row1", "a", "a_row0", "a_row2", "a_row10", "c", "zz"]


def test_an_incomplete_set_of_shards_merges_with_a_warning(tmp_path):
    """Without --expect, shard 1 of 2 alone merged into a 'whole run' report silently."""
    result = run("explain", DIGITS, *INPUTS, "--steps", "4", "--shard", "1/2", "--out",
                 tmp_path / "s1", "-q", "--no-heatmaps")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    merged = run("merge-reports", tmp_path / "s1", "--out", tmp_path / "m")
    assert merged.exit_code == 0, merged.stderr
    assert "1 of 2 shard reports missing: 2/2" in merged.stderr and "--expect 2" in merged.stderr
    strict = run("merge-reports", tmp_path / "s1", "--out", tmp_path / "m2", "--expect", "2")
    assert strict.exit_code == ExitCode.SHARDS


def test_markdown_cells_keep_names_as_they_are():
    """A name holding '&amp;' rendered as '&' in report.md; pipes and markup as ever."""
    from igcli.report import _md

    assert _md("q&amp;|x*") == "q&amp;amp;\\|x\\*"
    # a label or name holding ESC reached the terminal that showed report.md raw
    assert _md("a\x1b[2Jb\nc") == "a\\\\x1b\\[2Jb c"


def test_an_interrupted_shard_is_refused_with_expect_and_flagged_without(tmp_path):
    """A shard stopped by SIGTERM after one input wrote a report like a finished one, and
    merge-reports --expect 2 said '5 explained, 0 failed' with exit 0: one input was in
    neither results nor failures."""
    from igcli.report import merge_reports

    paths = []
    for k, stopped in ((1, True), (2, False)):
        out = tmp_path / f"s{k}"
        result = run("explain", DIGITS, *DIGIT_PNGS[:4], "--steps", "4", "--shard", f"{k}/2",
                     "--out", out, "--no-heatmaps")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        path = next(out.glob("report*.json"))
        data = json.loads(path.read_text())
        assert data["summary"]["interrupted"] is False
        data["summary"]["interrupted"] = stopped  # (as a run stopped by a signal writes it)
        path.write_text(json.dumps(data))
        paths.append(path)
    refused = run("merge-reports", *paths, "--expect", "2", "--out", tmp_path / "m")
    assert refused.exit_code == ExitCode.SHARDS and "interrupted" in refused.stderr
    assert not (tmp_path / "m" / "report.json").exists()
    warned = []
    merged = merge_reports(paths, warn=warned.append)
    assert merged.summary()["interrupted"] is True and any("interrupted" in w for w in warned)
    warned = []  # the stopped shard alone: both said (the first once hid the second)
    merge_reports(paths[:1], warn=warned.append)
    assert len(warned) == 2 and "interrupted" in warned[0] and "--expect 2" in warned[1]


def test_reports_and_manifests_that_are_devices_fifos_or_huge_are_refused_unread(shards, tmp_path):
    """merge-reports /dev/zero read until the kernel killed it (24 GB), a FIFO hung it, and
    --manifest read any path whole: each is now one line, exit 2, before a byte is read."""
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "report.json").symlink_to("/dev/zero")
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as fh:  # sparse: no disk used
        fh.truncate((1 << 30) + 1)
    cases = {
        "/dev/zero": "/dev/zero: not a readable report (a device, not a file)",
        tmp_path / "folder": "report.json: not a readable report (a device, not a file)",
        tmp_path / "fifo.json": "fifo.json: not a readable report (a FIFO, not a file)",
        huge: "huge.json: not a readable report (1,073,741,825 bytes, over the 1 GiB",
    }
    for path, message in cases.items():
        result = run("merge-reports", path, "--out", tmp_path / "m")
        assert result.exit_code == ExitCode.USAGE, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    for manifest, why in (("/dev/zero", "a device"), (tmp_path / "fifo.json", "a FIFO")):
        merge = run("merge-reports", shards / "s8", "--manifest", manifest, "--out", tmp_path)
        explain = run("explain", DIGITS, "--manifest", manifest, "--out", tmp_path / "e")
        for result in (merge, explain):
            assert result.exit_code == ExitCode.USAGE, result.stderr
            assert f"{manifest}: cannot read ({why}, not a file)" in result.stderr
    result = run("explain", DIGITS, "--manifest", huge, "--out", tmp_path / "e")
    assert result.exit_code == ExitCode.USAGE and "over the 1 GiB" in result.stderr


def test_a_malformed_report_is_refused_before_anything_is_written(tmp_path):
    """A shard report whose 'skipped' was an object crashed report.html (exit 1) after the
    merged report.json, .csv and .md were written; merge-reports DIR --out DIR rewrote DIR's
    own report.json in place."""
    for k in (1, 2):
        result = run("explain", DIGITS, *INPUTS, "--steps", "4", "--shard", f"{k}/2",
                     "--out", tmp_path / f"s{k}", "-q", "--no-heatmaps")  # fmt: skip
        assert result.exit_code == 0, result.stderr
    shard = tmp_path / "s1" / "report.shard-1-of-2.json"
    data = json.loads(shard.read_text())
    failed_result = [{**data["results"][0], "status": "error"}, *data["results"][1:]]
    negative_steps = [{**data["results"][0], "steps_used": -1}, *data["results"][1:]]
    odd_shard = {**data["settings"], "shard": "a/b"}
    for field, value, problem in (
        ("summary", None, "'summary' must be an object"),
        ("results", negative_steps, "results[0].steps_used is -1, not a count of steps"),
        ("settings", odd_shard, "'settings.shard' is \"a/b\", not K/N"),
        ("skipped", {"a": 1}, "'skipped' must be a list"),
        ("schema_version", 99, "schema_version 99; this igcli reads 1"),
        ("results", failed_result, 'results[0] has status "error"; a failure goes in'),
    ):
        shard.write_text(json.dumps({**data, field: value}))
        result = run("merge-reports", tmp_path / "s1", tmp_path / "s2", "--expect", "2",
                     "--out", tmp_path / "m")  # fmt: skip
        assert result.exit_code == ExitCode.USAGE, result.stderr
        line = result.stderr.strip()
        assert line.startswith(f"error: {shard}: ") and problem in line and "\n" not in line
        assert not (tmp_path / "m").exists()
    shard.write_text(json.dumps(data))
    merged = tmp_path / "m"
    assert run("merge-reports", tmp_path / "s1", tmp_path / "s2", "--out", merged).exit_code == 0
    before = (merged / "report.json").read_bytes()
    for out in (merged, f"{merged}/"):
        result = run("merge-reports", merged, "--out", out)
        assert result.exit_code == ExitCode.USAGE, result.stderr
        assert f"{merged / 'report.json'}: --out would replace this report" in result.stderr
        assert (merged / "report.json").read_bytes() == before
    # shards merged into their own folder still are (their report.json is not a source)
    both = tmp_path / "both"
    both.mkdir()
    for k in (1, 2):
        for p in (tmp_path / f"s{k}").glob("report.shard-*.json"):
            (both / p.name).write_bytes(p.read_bytes())
    assert run("merge-reports", both, "--expect", "2", "--out", both).exit_code == 0
    assert run("merge-reports", both, "--expect", "2", "--out", both).exit_code == 0


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_merge_into_a_folder_whose_report_a_run_is_writing_is_refused(shards, tmp_path):
    """merge-reports took no lock: it and an explain run on one --out both wrote report.json
    and both exited 0, the later report replacing the other. It now takes explain's lock."""
    from igcli.outputs import lock_reports, unlock_reports

    out = tmp_path / "m"
    out.mkdir()
    held = lock_reports(out, "report")  # an explain run writing out/report.json
    try:
        merged = run("merge-reports", shards / "s8", "--out", out)
        assert merged.exit_code == ExitCode.OUTPUT, merged.stderr
        assert "another igcli run is writing report.json" in merged.stderr
        assert not (out / "report.json").exists()
    finally:
        unlock_reports(out, "report", held)
    merged = run("merge-reports", shards / "s8", "--out", out)
    assert merged.exit_code == 0, merged.stderr
    assert not list(out.glob(".igcli-*.lock"))


def test_a_report_of_a_huge_shard_count_merges_without_listing_every_shard(tmp_path):
    """A report of shard 1/10**9 (hand-edited, or from an igcli that took any N): the merge
    listed shards 1..N, filling the memory until the kernel killed it."""
    result = run("explain", DIGITS, *INPUTS, "--steps", "4", "--shard", "1/2", "--out",
                 tmp_path / "s", "-q", "--no-heatmaps")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    path = tmp_path / "s" / "report.shard-1-of-2.json"
    data = json.loads(path.read_text())
    data["settings"]["shard"] = "1/1000000000"
    path.write_text(json.dumps(data))
    merged = run("merge-reports", path, "--out", tmp_path / "m")
    assert merged.exit_code == 0, merged.stderr
    assert "999999999 of 1000000000 shard reports missing: 2/1000000000, " in merged.stderr
    assert "/1000000000, ... (found 1;" in merged.stderr
    strict = run("merge-reports", path, "--expect", "1000000000", "--out", tmp_path / "m2")
    assert strict.exit_code == ExitCode.SHARDS


def test_shards_of_different_n_merge_with_a_warning(tmp_path):
    """Shard 1/2 and shard 3/3 merged without a word, lacking some inputs (exit 0); shards
    of one N that are not all there were warned about, these now are too."""
    for shard in ("1/2", "3/3"):
        result = run("explain", DIGITS, *INPUTS, "--steps", "4", "--shard", shard, "--out",
                     tmp_path / shard[-1], "-q", "--no-heatmaps")  # fmt: skip
        assert result.exit_code == 0, result.stderr
    merged = run("merge-reports", tmp_path / "2", tmp_path / "3", "--out", tmp_path / "m")
    assert merged.exit_code == 0, merged.stderr
    assert "different splits (shards of 2, shards of 3)" in merged.stderr
    assert "--expect N makes that an error" in merged.stderr


def test_shards_of_adaptive_steps_merge(tmp_path):
    """Records of --steps auto say steps "auto": merge-reports refused them as not a number.
    A hand-made record is still refused: steps neither a number nor "auto", a negative
    feature_error, or an infinite rel_error over a finite delta that is not 0 (no run writes one:
    it showed as the merged maximum, and the count of large errors left it out)."""
    for k in (1, 2):
        result = run("explain", DIGITS, *INPUTS, "--steps", "auto", "--shard", f"{k}/2",
                     "--out", tmp_path / "s", "-q", "--no-heatmaps")  # fmt: skip
        assert result.exit_code == 0, result.stderr
    result = run("merge-reports", tmp_path / "s", "--expect", "2", "--out", tmp_path / "m")
    assert result.exit_code == 0, result.stderr
    merged = json.loads((tmp_path / "m" / "report.json").read_text())["results"]
    assert len(merged) == len(INPUTS)
    assert all(r["steps"] == "auto" and r["feature_error"] > 0 for r in merged)
    shard = next((tmp_path / "s").glob("report.shard-1-of-2.json"))
    data = json.loads(shard.read_text())
    for field, value, problem in (("steps", "many", 'not a number or "auto"'),
                                  ("feature_error", -1, "not an error"),
                                  ("rel_error", "inf", "infinite only where")):  # fmt: skip
        bad = json.loads(json.dumps(data))
        bad["results"][0][field] = value
        shard.write_text(json.dumps(bad))
        result = run("merge-reports", tmp_path / "s", "--out", tmp_path / "m2")
        assert result.exit_code == ExitCode.USAGE and problem in result.stderr
        assert not (tmp_path / "m2").exists()


def test_a_report_named_twice_merges_each_input_once_with_a_warning(shards, tmp_path):
    """The second copy's records were dropped in silence."""
    merged = run("merge-reports", shards / "s8", shards / "s8" / "report.json",
                 "--out", tmp_path / "m")  # fmt: skip
    assert merged.exit_code == 0, merged.stderr
    assert "3 more already came in an earlier report; each is kept once" in merged.stderr
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert len(report["results"]) == len(INPUTS)


def test_shards_gated_differently_merge_at_the_strictest_gate_with_a_warning(tmp_path):
    """Shards run with different --max-completeness-error merged under the first one's
    gate without a word: the order of the arguments decided whether the run passed."""
    from igcli.report import merge_reports

    paths = []
    for k, gate in ((1, "0.5"), (2, "1e-9")):
        out = tmp_path / f"s{k}"
        result = run("explain", DIGITS, *INPUTS, "--steps", "4", "--shard", f"{k}/2", "--out",
                     out, "-q", "--no-heatmaps", "--max-completeness-error", gate)  # fmt: skip
        assert result.exit_code in (0, ExitCode.COMPLETENESS), result.stderr
        paths.append(next(out.glob("report*.json")))
    for order in (paths, paths[::-1]):
        warned = []
        merged = merge_reports(order, warn=warned.append)
        assert merged.gate["max"] == 1e-9 and merged.gate["passed"] is False
        assert any("gated differently" in w and "strictest, 1e-09" in w for w in warned)
    warned = []
    merge_reports(paths[:1], warn=warned.append)
    assert not any("gated" in w for w in warned)
