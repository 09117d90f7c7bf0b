"""Object storage: inputs, outputs, manifests and baselines as URLs.

A real S3 API (moto's server) on a free 127.0.0.1 port, and fsspec's memory filesystem;
nothing leaves this machine.
"""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from igcli.errors import ExitCode, OutputError
from tests.scale_inputs import comparable, make_digits, output_files
from tests.test_cli import DIGIT_PNGS, DIGITS, run

fsspec = pytest.importorskip("fsspec")
pytest.importorskip("s3fs")
STEPS = ("--steps", "8")
N = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 API on 127.0.0.1 with a bucket holding in/ (the digits); yields (fs, bucket)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "NO_PROXY": "127.0.0.1",
    }
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("igcli-test")
    local = tmp_path_factory.mktemp("s3in") / "in"
    make_digits(local, N)
    fs.put(str(local) + "/", "igcli-test/in/", recursive=True)
    yield fs, local
    mp.undo()
    server.stop()


@pytest.fixture(scope="module")
def local_run(s3, tmp_path_factory):
    _, local = s3
    out = tmp_path_factory.mktemp("local") / "out"
    result = run("explain", DIGITS, local, "--out", out, *STEPS, "-q")
    assert result.exit_code == 0, result.stderr
    return out


def fetch(fs, prefix: str, to):
    fs.invalidate_cache()
    fs.get(prefix.rstrip("/") + "/", str(to) + "/", recursive=True)
    return to


def test_s3_inputs_and_outputs_equal_local_files(s3, local_run, tmp_path):
    fs, local = s3
    result = run("explain", DIGITS, "s3://igcli-test/in", "--out", "s3://igcli-test/run1", *STEPS)
    assert result.exit_code == 0, result.stderr
    got = fetch(fs, "igcli-test/run1", tmp_path / "got")
    assert output_files(got, "s3://igcli-test/in") == output_files(local_run, str(local))
    report = json.loads((got / "report.json").read_text())
    assert report["results"][0]["input"] == "s3://igcli-test/in/d0000.png"
    assert comparable(report, "s3://igcli-test/in") == comparable(
        json.loads((local_run / "report.json").read_text()), str(local)
    )
    assert (got / "report.html").stat().st_size > 1000 and not any(
        fs.find("igcli-test/run1/.igcli-write-check")
    )


def test_interrupted_s3_run_resumes_with_skip_existing(s3, local_run, tmp_path, monkeypatch):
    fs, local = s3
    from igcli.session import Session

    calls = {"n": 0}
    real = Session.attribute_many

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Session, "attribute_many", interrupted)
    out = "s3://igcli-test/run2"
    first = run("explain", DIGITS, "s3://igcli-test/in", "--out", out, *STEPS, "--batch-size", "16")
    assert first.exit_code == ExitCode.INTERRUPTED, first.stderr
    monkeypatch.setattr(Session, "attribute_many", real)
    fs.invalidate_cache()
    done = [p for p in fs.find("igcli-test/run2") if p.endswith(".record.json")]
    assert 0 < len(done) < N  # records of the finished inputs only
    again = run("explain", DIGITS, "s3://igcli-test/in", "--out", out, *STEPS, "--skip-existing")
    assert again.exit_code == 0, again.stderr
    got = fetch(fs, "igcli-test/run2", tmp_path / "got")
    report = json.loads((got / "report.json").read_text())
    assert report["summary"]["resumed"] == len(done) and report["summary"]["explained"] == N
    assert output_files(got, "s3://igcli-test/in") == output_files(local_run, str(local))


def test_s3_shards_and_merge(s3, local_run, tmp_path, monkeypatch):
    fs, local = s3
    plan = run("plan", DIGITS, "s3://igcli-test/in")
    assert plan.exit_code == 0, plan.stderr
    fs.pipe("igcli-test/manifest.jsonl", plan.stdout.encode())
    out = "s3://igcli-test/run3"
    for index in range(3):
        monkeypatch.setenv("IGCLI_SHARD", str(index))
        result = run("explain", DIGITS, "--manifest", "s3://igcli-test/manifest.jsonl",
                     "--shard", "auto/3", "--out", out, *STEPS, "-q")  # fmt: skip
        assert result.exit_code == 0, result.stderr
    merged = run("merge-reports", out, "--expect", "3", "--out", out)
    assert merged.exit_code == 0, merged.stderr
    got = fetch(fs, "igcli-test/run3", tmp_path / "got")
    report = json.loads((got / "report.json").read_text())
    assert comparable(report, "s3://igcli-test/in") == comparable(
        json.loads((local_run / "report.json").read_text()), str(local)
    )
    for r in report["results"]:
        assert (got / r["heatmap_file"]).is_file()


def test_memory_filesystem_inputs_baseline_manifest(tmp_path):
    mem = fsspec.filesystem("memory")
    for p in DIGIT_PNGS[:3]:
        mem.pipe(f"/mem-in/{p.name}", p.read_bytes())
    mem.pipe("/base.png", DIGIT_PNGS[3].read_bytes())
    local = run("explain", DIGITS, *DIGIT_PNGS[:3], "--baseline", DIGIT_PNGS[3], "--out",
                tmp_path / "local", *STEPS, "-q")  # fmt: skip
    assert local.exit_code == 0, local.stderr
    result = run("explain", DIGITS, "memory://mem-in", "--baseline", "memory://base.png",
                 "--out", "memory://mem-out", *STEPS, "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    got = tmp_path / "got"
    mem.get("/mem-out/", str(got) + "/", recursive=True)
    report = json.loads((got / "report.json").read_text())
    assert report["results"][0]["baseline"] == "memory://base.png"
    for name in ("digit_0_idx1", "digit_2_idx0", "digit_3_idx30"):
        assert (got / f"{name}.npy").read_bytes() == (
            tmp_path / "local" / f"{name}.npy"
        ).read_bytes()


def test_missing_objects_and_stores_are_one_line_errors(tmp_path):
    result = run("explain", DIGITS, "memory://nowhere/x.png", "--out", tmp_path / "o", *STEPS)
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert "memory://nowhere/x.png: cannot fetch (no such object)" in result.stderr
    result = run("explain", DIGITS, "--manifest", "memory://nowhere.jsonl", "--out", tmp_path)
    assert result.exit_code == ExitCode.USAGE and "cannot read (no such object)" in result.stderr
    result = run("explain", DIGITS, "nosuchproto://b/x.png", "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.USAGE and "cannot open this store" in result.stderr


def test_an_output_prefix_with_dot_parts_is_refused(tmp_path):
    """--out s3://b/../x wrote keys starting "../" (stores keep them literally)."""
    mem = fsspec.filesystem("memory")
    local = run("explain", DIGITS, DIGIT_PNGS[0], "--out", tmp_path / "r", *STEPS, "-q")
    assert local.exit_code == 0, local.stderr
    for out in ("memory://b/../x", "memory://b/runs/./1", "memory://b/x/.."):
        result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", out, *STEPS, "-q")
        assert result.exit_code == ExitCode.USAGE, result.stderr
        assert f"{out}: an output prefix in object storage cannot hold" in result.stderr
        assert not mem.exists("/b")
        result = run("merge-reports", tmp_path / "r", "--out", out)
        assert result.exit_code == ExitCode.USAGE and "cannot hold" in result.stderr


def test_merged_reports_link_stored_files_by_url_and_local_files_absolutely(tmp_path):
    """CSV shards in storage merged here: the page has its per-feature section (read from
    the store) and links the objects by URL; local shards merged into storage link the
    local files by absolute path (not relative to the working directory)."""
    from tests.test_cli import CANCER, CANCER_CSV
    from tests.test_html_report import blob

    mem = fsspec.filesystem("memory")
    for k in (1, 2):
        for out in ("memory://merge-sh", tmp_path / "loc"):
            result = run("explain", CANCER, CANCER_CSV, "--shard", f"{k}/2", "--out", out,
                         *STEPS, "-q")  # fmt: skip
            assert result.exit_code == 0, result.stderr
    here = tmp_path / "fromstore"
    result = run("merge-reports", "memory://merge-sh", "--expect", "2", "--out", here)
    assert result.exit_code == 0, result.stderr
    page = (here / "report.html").read_text()
    assert "Attributions per feature" in page
    report = json.loads((here / "report.json").read_text())
    data = blob(page)
    links = [r[data["cols"].index("heatmap")] for r in data["rows"]]
    assert links == [r["heatmap_file"] for r in report["results"]]
    assert all(link.startswith("memory://merge-sh/") for link in links)
    assert mem.exists(links[0][len("memory://") :])
    result = run("merge-reports", tmp_path / "loc", "--expect", "2", "--out", "memory://merged")
    assert result.exit_code == 0, result.stderr
    stored = json.loads(mem.cat("/merged/report.json"))
    first = stored["results"][0]["heatmap_file"]
    assert first == str(tmp_path / "loc" / stored["results"][0]["name"]) + ".png"
    page = mem.cat("/merged/report.html").decode()
    assert "Attributions per feature" in page
    assert blob(page)["rows"][0][data["cols"].index("heatmap")] == (
        (tmp_path / "loc" / stored["results"][0]["name"]).as_uri() + ".png"
    )


def test_urls_read_from_stdin_are_fetched(tmp_path):
    fsspec.filesystem("memory").pipe("/stdin-in/d.png", DIGIT_PNGS[0].read_bytes())
    result = run("explain", DIGITS, "-", "--out", tmp_path / "o", *STEPS, "-q",
                 input="memory://stdin-in/d.png\n")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["results"][0]["input"] == "memory://stdin-in/d.png"


def test_a_missing_bucket_or_local_manifest_is_said_so(s3, tmp_path):
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", "s3://igcli-nobucket/r", *STEPS)
    assert result.exit_code == ExitCode.OUTPUT
    line = result.stderr.strip().splitlines()[-1]
    assert (
        line
        == "error: s3://igcli-nobucket/r: cannot write (bucket 'igcli-nobucket' does not exist)"
    )
    result = run("explain", DIGITS, "--manifest", tmp_path / "nope.jsonl", "--out", tmp_path)
    assert result.exit_code == ExitCode.USAGE
    assert f"{tmp_path / 'nope.jsonl'}: cannot read (no such file)" in result.stderr


def test_a_missing_input_bucket_and_a_bad_bucket_name_are_said_so(s3, tmp_path):
    """A missing input bucket read "no such object"; a bad bucket name "cannot write
    (Parameter validation failed:)", botocore's next line, which says why, cut off."""
    result = run("explain", DIGITS, "s3://igcli-nobucket/x.png", "--out", tmp_path, *STEPS)
    assert result.exit_code == ExitCode.INPUTS_FAILED
    assert "s3://igcli-nobucket/x.png: cannot fetch (no such bucket)" in result.stderr
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", "s3://Bad_Bucket!/r", *STEPS)
    assert result.exit_code == ExitCode.OUTPUT
    assert 'Parameter validation failed: Invalid bucket name "Bad_Bucket!"' in result.stderr


def test_staged_files_go_once_uploaded_unless_the_run_reads_them_again(tmp_path, monkeypatch):
    """A run to object storage kept every staged file until it ended, so it needed local disk
    for its whole output. Image runs now keep none; --scale shared keeps the arrays it draws
    from until it has drawn them, and a CSV run the vectors its report reads."""
    from igcli import storage
    from tests.test_cli import CANCER, CANCER_CSV

    staged = []
    monkeypatch.setattr(storage.RemoteOutputs, "cleanup", lambda self: staged.append(self))

    def left(run_args) -> list[str]:
        staged.clear()
        result = run("explain", *run_args, *STEPS, "-q")
        assert result.exit_code == 0, result.stderr
        found = sorted(p.suffix for p in staged[0].staging.rglob("*") if p.is_file())
        shutil.rmtree(staged[0].staging)
        return found

    mem = fsspec.filesystem("memory")
    assert ".npy" not in left([DIGITS, *DIGIT_PNGS[:2], "--out", "memory://st-a"])
    assert ".png" not in left([DIGITS, *DIGIT_PNGS[:2], "--out", "memory://st-b"])
    shared = left([DIGITS, *DIGIT_PNGS[:2], "--out", "memory://st-c", "--scale", "shared"])
    assert ".npy" not in shared and ".png" not in shared
    assert mem.exists("/st-c/" + DIGIT_PNGS[0].stem + ".png")
    left([CANCER, CANCER_CSV, "--out", "memory://st-d"])
    assert "Attributions per feature" in mem.cat("/st-d/report.html").decode()


def test_object_keys_with_dot_or_empty_parts_fail_alone_and_clash_with_no_one(s3, tmp_path):
    """'x/../y.png', './dot.png' and 'd//e.png' are objects of their own: they were taken for
    'y.png' &c. ("listed more than once") or wrote over their outputs. They fail alone, and
    the plan listing them is a manifest `explain` takes."""
    fs, _ = s3
    odd = {"y.png": 0, "x/../y.png": 1, "dot.png": 2, "./dot.png": 3, "d/e.png": 4, "d//e.png": 5}
    for key, k in odd.items():
        fs.pipe(f"igcli-test/odd/{key}", DIGIT_PNGS[k].read_bytes())
    plan = run("plan", DIGITS, "s3://igcli-test/odd", "-r")
    assert plan.exit_code == 0, plan.stderr
    manifest = tmp_path / "plan.jsonl"
    manifest.write_text(plan.stdout)
    result = run("explain", DIGITS, "--manifest", manifest, "--out", tmp_path / "o", *STEPS, "-q")
    assert result.exit_code == ExitCode.INPUTS_FAILED, result.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    done = {r["input"]: r["name"] for r in report["results"]}
    assert done == {f"s3://igcli-test/odd/{k}": k[:-4] for k in ("y.png", "dot.png", "d/e.png")}
    failed = {f["input"] for f in report["failures"]}
    assert failed == {f"s3://igcli-test/odd/{k}" for k in ("x/../y.png", "./dot.png", "d//e.png")}
    assert all("'..' part" in f["error"] for f in report["failures"])
    assert not report.get("skipped")


@pytest.fixture
def frozen_store(monkeypatch):
    """An S3 endpoint that takes connections and never answers, with 1-second timeouts;
    forgets the stores the test saw stall."""
    import threading

    pytest.importorskip("s3fs")
    import igcli.storage as storage

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []
    stop = threading.Event()

    def accept_and_say_nothing() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("NO_PROXY", "127.0.0.1"),
                       ("AWS_ENDPOINT_URL", endpoint)):  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(storage, "S3_TIMEOUTS", {"connect_timeout": 1, "read_timeout": 1})
    monkeypatch.setattr(storage, "WRITE_SECONDS", 2)
    try:
        yield storage
    finally:
        storage._STALLED.clear()
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_a_store_that_never_answers_fails_in_one_line_within_bounded_time(tmp_path, frozen_store):
    """An S3 endpoint that took connections and never answered held a run for 400 s and
    more, silently (s3fs's retries of botocore's retries of 15-second reads)."""
    import time

    storage = frozen_store
    began = time.monotonic()
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", "s3://frozen/r", *STEPS)
    took = time.monotonic() - began
    with pytest.raises(OutputError, match="did not answer in time"):
        storage.write_bytes("s3://frozen/r/a", b"x")  # (2 s)
    began = time.monotonic()  # the run's later writes there fail at once: the queued
    with pytest.raises(OutputError, match="did not answer in time"):  # outputs and its
        storage.write_bytes("s3://frozen/r/b", b"x")  # reports took 2 minutes each
    assert time.monotonic() - began < 1
    assert result.exit_code == ExitCode.OUTPUT, result.stderr
    assert result.stderr.strip().startswith("error: s3://frozen/r: cannot write (")
    assert len(result.stderr.strip().splitlines()) == 1
    assert took < 30  # (2 s here, 2 minutes in a run)


def test_inputs_on_a_store_that_never_answers_fail_after_one_timeout(
    tmp_path, frozen_store, monkeypatch
):
    """Each input on a frozen store waited out its own timeouts (some 80 s apiece): after
    the first, the store is not tried again in this run, and each input says so."""
    import time

    monkeypatch.setattr(frozen_store, "S3_ATTEMPTS", 1)
    urls = [f"s3://frozen/in/{k}.png" for k in "abcd"]
    began = time.monotonic()
    result = run("explain", DIGITS, *urls, "--out", tmp_path / "o", *STEPS, "-q")
    took = time.monotonic() - began
    assert result.exit_code == ExitCode.INPUTS_FAILED, result.stderr
    lines = result.stderr.strip().splitlines()
    for url in urls:
        said = [line for line in lines if line.startswith(f"error: {url}: cannot fetch (")]
        assert len(said) == 1, lines
    assert sum("not tried again" in line for line in lines) >= len(urls) - 1
    assert took < 30  # (some 7 s here, where each input took about 6 before)


def test_urls_that_fail_as_they_open_or_name_nothing_fail_alone(tmp_path):
    """An ftp:// store connects as fsspec opens it: a refused connection was an internal
    error that stopped the run, as was a bare 's3://' (no bucket). Each now fails alone."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ftp = f"ftp://127.0.0.1:{port}/x.png"
    result = run("explain", DIGITS, ftp, "s3://", DIGIT_PNGS[0], "--out", tmp_path / "o", *STEPS)
    assert result.exit_code == ExitCode.INPUTS_FAILED, result.stderr
    assert f"{ftp}: cannot fetch (" in result.stderr and "internal error" not in result.stderr
    assert "s3://: the URL names no bucket or object" in result.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert len(report["results"]) == 1 and len(report["failures"]) == 2
    result = run("explain", DIGITS, DIGIT_PNGS[0], "--out", f"ftp://127.0.0.1:{port}/o", *STEPS)
    assert result.exit_code == ExitCode.OUTPUT and "cannot write (" in result.stderr


def test_file_urls_are_local_paths_for_the_model_and_inputs(tmp_path):
    model, png, folder = (
        p.resolve().as_uri() for p in (DIGITS, DIGIT_PNGS[0], DIGIT_PNGS[1].parent)
    )
    result = run("explain", model, png, folder, "--out", tmp_path / "o", *STEPS)
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert len(report["results"]) == len(DIGIT_PNGS) and not report["failures"]  # (one twice)
