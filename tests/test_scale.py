"""Past one machine: shards from job-array indices, trustworthy merges, manifests."""

from __future__ import annotations

import json
import shutil

import pytest

from igcli.discovery import Shard, parse_shard
from igcli.errors import ExitCode, UsageError
from tests.scale_inputs import comparable, load, make_digits, one_process_run, output_files
from tests.test_cli import DIGITS, run

STEPS = ("--steps", "8")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits") / "in"
    make_digits(folder, 24)
    (folder / "notes.txt").write_text("not an input")  # a skipped file: every shard sees it
    return folder


@pytest.fixture(scope="module")
def single(digits, tmp_path_factory):
    return one_process_run(digits, tmp_path_factory.mktemp("single") / "out", STEPS)


# -- shards from the environment ----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "k", "source"),
    [
        ({"JOB_COMPLETION_INDEX": "0"}, 1, "JOB_COMPLETION_INDEX=0"),
        ({"JOB_COMPLETION_INDEX": "3"}, 4, "JOB_COMPLETION_INDEX=3"),
        ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "5"}, 1, "SLURM_ARRAY_TASK_ID=5"),
        ({"SLURM_ARRAY_TASK_ID": "2"}, 3, "SLURM_ARRAY_TASK_ID=2"),
        ({"IGCLI_SHARD": "1", "JOB_COMPLETION_INDEX": "0"}, 2, "IGCLI_SHARD=1"),
    ],
)
def test_shard_auto_reads_the_index_from_the_environment(env, k, source):
    assert parse_shard("auto/4", env) == Shard(k, 4, source)


@pytest.mark.parametrize(
    ("spec", "env", "problem"),
    [
        ("auto/4", {}, "none of IGCLI_SHARD"),
        ("auto/4", {"JOB_COMPLETION_INDEX": "4"}, "not in 1..4"),
        ("auto/4", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "1"}, "not in 1..4"),
        ("auto/4", {"IGCLI_SHARD": "x"}, "is not a number"),
        ("0/4", {}, "1 <= K <= N"),
        ("auto", {}, "use K/N"),
        ("1/1000000000", {}, "N is at most 100000"),  # merge-reports then ran out of memory
        ("auto/99999999999999999999", {"IGCLI_SHARD": "0"}, "N is at most 100000"),
        # int() took blanks and any script's digits; the report then said 1/3 all the same
        ("\u0661/\u0663", {}, "use K/N"),
        (" 1/3", {}, "use K/N"),
        ("auto/3", {"IGCLI_SHARD": " 1"}, "is not a number"),
        ("auto/3", {"IGCLI_SHARD": "\u0661"}, "is not a number"),
    ],
)
def test_bad_shard_specs_are_usage_errors(spec, env, problem):
    with pytest.raises(UsageError, match=problem):
        parse_shard(spec, env)


def test_k_of_n_keeps_its_meaning():
    assert parse_shard("2/4") == Shard(2, 4)
    assert str(parse_shard("2/4")) == "2/4" and parse_shard("2/4").tag == "shard-2-of-4"


def run_shards(digits, out, n, monkeypatch, *extra, indices=None):
    codes = []
    for index in range(n) if indices is None else indices:
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        result = run("explain", DIGITS, *extra, "--shard", f"auto/{n}", "--out", out, *STEPS)
        assert result.exit_code == 0, result.stderr
        assert f"(from JOB_COMPLETION_INDEX={index})" in result.stderr
        codes.append(result.exit_code)
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    return codes


def test_four_shards_into_one_out_merge_to_the_single_run(digits, single, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_shards(digits, out, 4, monkeypatch, digits)
    names = sorted(p.name for p in out.glob("report*.json"))
    assert names == [f"report.shard-{k}-of-4.json" for k in range(1, 5)]  # none overwritten
    merged = run("merge-reports", out, "--expect", "4", "--out", out)
    assert merged.exit_code == 0, merged.stderr
    report = load(out / "report.json")
    assert comparable(report) == comparable(load(single / "report.json"))
    assert report["settings"]["shard"] is None and report["settings"]["shards"] == 4
    assert [m["shard"] for m in report["settings"]["merged_from"]] == ["1/4", "2/4", "3/4", "4/4"]
    assert output_files(out) == output_files(single)
    for r in report["results"]:  # links relative to the merged report
        assert (out / r["attributions_file"]).is_file() and (out / r["heatmap_file"]).is_file()


def test_a_missing_or_doubled_shard_fails_the_merge(digits, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_shards(digits, out, 4, monkeypatch, digits, indices=[0, 1, 3])
    result = run("merge-reports", out, "--expect", "4", "--out", tmp_path / "m")
    assert result.exit_code == ExitCode.SHARDS == 8
    assert "1 of 4 shard reports missing: 3/4" in result.stderr
    assert not (tmp_path / "m" / "report.json").exists()
    again = run("merge-reports", out, out / "report.shard-1-of-4.json", "--expect", "3",
                "--out", tmp_path / "m")  # fmt: skip
    assert again.exit_code == ExitCode.SHARDS and "not a shard of 3" in again.stderr
    shutil.copy(out / "report.shard-1-of-4.json", tmp_path / "copy.json")
    doubled = run("merge-reports", out, tmp_path / "copy.json", "--expect", "4",
                  "--out", tmp_path / "m")  # fmt: skip
    assert doubled.exit_code == ExitCode.SHARDS and "shard 1/4 given 2 times" in doubled.stderr
    loose = run("merge-reports", out, "--out", tmp_path / "m")  # without --expect: as before
    assert loose.exit_code == 0, loose.stderr


def test_shards_of_different_listings_do_not_merge(digits, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_shards(digits, out, 2, monkeypatch, digits, indices=[0])
    fewer = tmp_path / "fewer"
    shutil.copytree(digits, fewer)
    next(iter(sorted(fewer.glob("*.png")))).unlink()  # the listing changed between shards
    run_shards(fewer, out, 2, monkeypatch, fewer, indices=[1])
    result = run("merge-reports", out, "--expect", "2", "--out", tmp_path / "m")
    assert result.exit_code == ExitCode.SHARDS and "planned different inputs" in result.stderr


def test_merged_links_are_relative_to_the_merged_report(digits, tmp_path):
    for k in (1, 2):
        result = run("explain", DIGITS, digits, "--shard", f"{k}/2", "--out", tmp_path / f"s{k}",
                     *STEPS, "-q")  # fmt: skip
        assert result.exit_code == 0, result.stderr
    out = tmp_path / "deeper" / "merged"
    result = run("merge-reports", tmp_path / "s1", tmp_path / "s2", "--expect", "2", "--out", out)
    assert result.exit_code == 0, result.stderr
    report = load(out / "report.json")
    assert [r["name"] for r in report["results"]] == sorted(r["name"] for r in report["results"])
    for r in report["results"]:
        assert r["heatmap_file"].startswith(("../../s1/", "../../s2/"))
        assert (out / r["attributions_file"]).is_file() and (out / r["heatmap_file"]).is_file()
    assert "../../s1/" in (out / "report.csv").read_text()


# -- manifests ---------------------------------------------------------------------------


def test_plan_then_shards_from_the_manifest(digits, single, tmp_path, monkeypatch):
    """Shards read the inputs and names the manifest fixes, in its order, and walk nothing."""
    plan = run("plan", DIGITS, digits)
    assert plan.exit_code == 0, plan.stderr
    lines = [json.loads(line) for line in plan.stdout.splitlines()]
    assert lines[0]["igcli_manifest"] == 1 and lines[0]["inputs"] == 24
    assert {"skipped": str(digits / "notes.txt"), "reason": "not a supported file type"} in lines
    # reversed: the manifest's order, not the folder's, is the run's order
    body = [line for line in lines[1:] if "input" in line][::-1]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in [lines[0], *body, lines[-1]]) + "\n")
    out = tmp_path / "run"
    run_shards(digits, out, 3, monkeypatch, "--manifest", manifest)
    merged = run("merge-reports", out, "--expect", "3", "--out", out)
    assert merged.exit_code == 0, merged.stderr
    report = load(out / "report.json")
    assert [r["name"] for r in report["results"]] == [x["name"] for x in body]
    assert report["settings"]["plan"]["manifest"]["path"] == str(manifest)

    def same(report):  # the gradient graph is checked at the plan's first input: now d0023
        data = comparable(report)
        data["settings"].pop("plan")
        data["summary"]["mean_rel_error"] = pytest.approx(data["summary"]["mean_rel_error"])
        for r in data["results"]:
            r.pop("gradient_check")
        return data

    expected = same(load(single / "report.json"))
    expected["results"] = expected["results"][::-1]
    assert same(report) == expected


def test_manifest_problems_are_one_line_usage_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    for text, problem in [
        ("", "not an igcli manifest"),
        ('{"igcli_manifest": 1}\n{"input": "a.png"}\n', "line 2: needs an \"input\" and a"),
        ('{"igcli_manifest": 1}\nnot json\n', "line 2 is not JSON"),
        ('{"igcli_manifest": 1}\n{"input": "a.png", "name": "a"}\n'
         '{"input": "b.png", "name": "A"}\n', "name 'A' appears twice"),
        ('{"igcli_manifest": 1, "inputs": 3}\n{"input": "a.png", "name": "a"}\n', "cut short"),
        # the same path as another name would share its files
        ('{"igcli_manifest": 1}\n{"input": "a.png", "name": "x/../a"}\n', "not a plain"),
        ('{"igcli_manifest": 1}\n{"input": "a.png", "name": "a//b"}\n', "not a plain"),
        ('{"igcli_manifest": 1}\n{"input": "a.png", "name": "./a"}\n', "not a plain"),
        # a raw newline or right-to-left override would go into file names and reports
        ('{"igcli_manifest": 1}\n{"input": "a.png", "name": "x\\ny"}\n', "not one igcli"),
        ('{"igcli_manifest": 1}\n{"input": "a.png", "name": "x\\u202ey"}\n', "not one igcli"),
        # a CSV 'a' writes a_row0.*: another input named a_row0 shared (and replaced) them
        ('{"igcli_manifest": 1}\n{"input": "a.csv", "name": "a"}\n'
         '{"input": "b.npy", "name": "a_row0"}\n', "names 'a', 'a_row0' would write the same"),
        # 1,000 '[' in 2 KB: Python's JSON decoder ran out of recursion, an internal error
        ('{"igcli_manifest": 1}\n' + "[" * 1000 + "]" * 1000 + "\n", "nested too deeply"),
        ("[" * 1000 + "]" * 1000 + "\n", "not an igcli manifest"),
    ]:  # fmt: skip
        bad.write_text(text)
        result = run("explain", DIGITS, "--manifest", bad, "--out", tmp_path / "o")
        assert result.exit_code == ExitCode.USAGE, (text, result.stderr)
        assert problem in result.stderr and len(result.stderr.strip().splitlines()) == 1
    both = run("explain", DIGITS, "x.png", "--manifest", bad, "--out", tmp_path / "o")
    assert both.exit_code == ExitCode.USAGE and "not both" in both.stderr
    none = run("explain", DIGITS, "--out", tmp_path / "o")
    assert none.exit_code == ExitCode.USAGE and "no INPUTS" in none.stderr


def test_library_seam_runs_batch_after_batch(digits, single, tmp_path):
    """plan / start / execute (twice, on one BatchRun) / finish, as another program would."""
    from igcli.batch import OutputSettings, discover
    from igcli.run import execute, finish, plan, start
    from igcli.session import AttributionSettings, Session

    the_plan = plan(discover([str(digits)]))
    out = tmp_path / "lib"
    batch = start(
        Session(DIGITS), the_plan, settings=AttributionSettings(steps=8),
        outputs=OutputSettings(out_dir=out), emit=lambda line: None,
    )  # fmt: skip
    half = len(the_plan.items) // 2
    execute(batch, the_plan.items[:half])
    execute(batch, the_plan.items[half:])
    assert finish(batch, the_plan) == ExitCode.OK
    assert comparable(load(out / "report.json")) == comparable(load(single / "report.json"))
    assert output_files(out) == output_files(single)


def test_plan_names_a_path_that_names_nothing_and_leaves_it_out(tmp_path):
    """A typo in plan's INPUTS was planned as an input, and only the shard given it failed."""
    from tests.test_cli import DIGIT_PNGS

    result = run("plan", DIGITS, tmp_path / "no" / "such.png", DIGIT_PNGS[0])
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert f"error: {tmp_path / 'no' / 'such.png'}: no such file" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["inputs"] == 1 and [r["input"] for r in lines[1:]] == [str(DIGIT_PNGS[0])]
