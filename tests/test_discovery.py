"""Discovery and output names: hostile folders, odd file names, names that never collide."""

import io
import os
import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from igcli.discovery import (
    REPORT_FILES,
    InputItem,
    clean_name,
    discover,
    read_path_list,
    unique_names,
)
from igcli.errors import UsageError
from igcli.outputs import output_stem


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def named(found) -> dict[str, str]:
    return {str(i.path): i.name for i in found.items}


class Stdin:
    """Standard input as a pipe gives it: bytes underneath, not a terminal."""

    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)

    def isatty(self) -> bool:
        return False


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- collisions -----------------------------------------------------------------------------------


def test_same_name_in_two_folders_named_relative_to_their_common_folder(cwd):
    touch(cwd, "d1/x.png", "d2/x.png")
    assert named(discover(["d1/x.png", "d2/x.png"])) == {"d1/x.png": "d1/x", "d2/x.png": "d2/x"}
    assert named(discover(["d1", "d2"])) == {"d1/x.png": "d1/x", "d2/x.png": "d2/x"}


def test_csv_rows_beside_a_file_named_like_a_row(cwd):
    touch(cwd, "data.csv", "data_row0.npy", "data_row3.target2.npy", "other.npy")
    names = named(discover(["."]))
    assert names == {
        "data.csv": "data.csv",
        "data_row0.npy": "data_row0.npy",
        "data_row3.target2.npy": "data_row3.target2.npy",
        "other.npy": "other",
    }


def test_same_stem_other_suffix_and_multi_target_names(cwd):
    touch(cwd, "img.png", "img.jpg", "x.png", "x.target3.png")
    names = named(discover(["."]))
    assert names["img.png"] == "img.png" and names["img.jpg"] == "img.jpg"
    assert names["x.png"] == "x.png" and names["x.target3.png"] == "x.target3.png"


def test_names_differing_only_in_case_collide(cwd):
    touch(cwd, "A.png", "a.png")
    names = named(discover(["."]))
    assert re.fullmatch(r"A\.png~[0-9a-f]{8}", names["A.png"])
    assert re.fullmatch(r"a\.png~[0-9a-f]{8}", names["a.png"])


def test_a_folder_named_like_another_input_s_output_file(cwd):
    touch(cwd, "in/x.png", "in/x.npy/y.png")
    names = named(discover(["in"], recursive=True))
    outputs = {n + s for n in names.values() for s in (".npy", ".png", ".record.json")}
    folders = {n.rsplit("/", 1)[0] for n in names.values() if "/" in n}
    assert not outputs & folders


def test_loose_file_beside_the_same_name_in_a_folder(cwd):
    touch(cwd, "top.png", "in/top.png", "in/a.png")
    names = named(discover(["in", "top.png"]))
    assert names == {"in/a.png": "a", "in/top.png": "in/top", "top.png": "top"}


def test_the_same_file_twice_is_explained_once(cwd):
    touch(cwd, "in/a.png")
    found = discover(["in/a.png", "./in/a.png", "in"])
    assert named(found) == {"in/a.png": "a"}
    assert [reason for _, reason in found.skipped] == ["listed more than once"] * 2


def test_names_do_not_depend_on_argument_order(cwd):
    files = ["a/x.png", "b/x.png", "x.jpg", "x.png", "d.csv", "d_row1.npy", "Q.png", "q.png"]
    touch(cwd, *files)
    first = named(discover(files))
    for seed in range(5):
        shuffled = files[:]
        random.Random(seed).shuffle(shuffled)
        assert named(discover(shuffled)) == first
    assert len(set(first.values())) == len(files)


# -- odd names ------------------------------------------------------------------------------------


def test_newlines_markup_and_undecodable_bytes_in_names(cwd):
    weird = ["new\nline.png", "[red]x[bold].png", "tab\there.png", "bidi\u202egnp.png"]
    touch(cwd, *weird)
    bad = os.fsdecode(b"bad\xffname.png")
    touch(cwd, bad)
    names = named(discover(["."]))
    assert names["new\nline.png"] == "new%0Aline"
    assert names["[red]x[bold].png"] == "[red]x[bold]"
    assert names["tab\there.png"] == "tab%09here"
    assert names[bad] == "bad%FFname"
    assert names["bidi\u202egnp.png"] == "bidi%E2%80%AEgnp"  # (it reversed the line after it)
    for name in names.values():
        name.encode("utf-8")  # valid UTF-8: JSON, CSV and terminals take it


def test_long_and_reserved_names(cwd):
    long = "é" * 120 + ".png"  # 240 bytes of UTF-8
    touch(cwd, long, "report.json/a.png")
    names = named(discover(["."], recursive=True))
    assert len(names[long].encode()) <= 200 and re.search(r"~[0-9a-f]{8}$", names[long])
    assert names["report.json/a.png"] == "report.json_/a"
    assert clean_name("report.json") == "report.json"  # a file report.json.png is fine


def test_stdin_lists_with_nul_bytes_keep_newlines_and_raw_bytes(cwd):
    touch(cwd, "new\nline.png", os.fsdecode(b"raw\xfe.png"), " spaced.png")
    paths = read_path_list(Stdin(b"new\nline.png\0raw\xfe.png\0 spaced.png\0"))
    assert paths == [Path("new\nline.png"), Path(os.fsdecode(b"raw\xfe.png")), Path(" spaced.png")]
    assert all(p.exists() for p in paths)
    lines = read_path_list(Stdin(b"a.png\r\n\n  \r\nb.png"))
    assert lines == [Path("a.png"), Path("b.png")]


def test_stdin_lines_keep_their_blanks_unless_only_the_stripped_name_exists(cwd):
    """`find | igcli explain m -` over 'a.png' and 'a.png ' explained 'a.png' twice (once
    skipped as listed twice): every line was stripped. A line is the name as it is, but for
    its line ending; blanks around it go only where that alone names an existing file."""
    touch(cwd, "a.png", "a.png ", " lead.png", "typed.png")
    text = b"a.png\na.png \r\n lead.png\n  typed.png \t\n gone.png \n\n \t \n"
    assert read_path_list(Stdin(text)) == [
        Path("a.png"),
        Path("a.png "),
        Path(" lead.png"),
        Path("typed.png"),  # no '  typed.png \t': the typed list's name
        Path(" gone.png "),  # neither exists: as given, and its error names it so
    ]
    assert read_path_list(Stdin(b" s3://bucket/x.png \n")) == ["s3://bucket/x.png"]


def test_stdin_that_is_a_terminal_is_a_usage_error():
    class Tty(Stdin):
        def isatty(self) -> bool:
            return True

    with pytest.raises(UsageError, match="terminal"):
        read_path_list(Tty(b""))
    with pytest.raises(UsageError):
        read_path_list(None)


def test_a_file_piped_to_stdin_instead_of_its_path_is_one_usage_error():
    """`igcli explain m.onnx - < photo.png` gave one "no such file" line per binary chunk
    (14 for one PNG); it is one line saying what stdin holds."""
    root = Path(__file__).resolve().parent.parent
    png = next((root / "sample_inputs" / "digits").glob("*.png")).read_bytes()
    with pytest.raises(UsageError, match="standard input holds PNG image data"):
        read_path_list(Stdin(png))
    with pytest.raises(UsageError, match=".npy array"):
        read_path_list(Stdin(b"\x93NUMPY\x01\x00v\x00{'descr'"))
    assert read_path_list(Stdin(b"BMW/a.png\n")) == [Path("BMW/a.png")]  # a path, as ever


# -- hostile folders ------------------------------------------------------------------------------


def test_symlink_loops_fail_alone(cwd):
    touch(cwd, "in/good.png", "in/sub/deep.png")
    os.symlink("loop.png", cwd / "in" / "loop.png")
    os.symlink("..", cwd / "in" / "sub" / "up")  # a folder loop under -r
    os.symlink("nowhere.png", cwd / "in" / "broken.png")
    found = discover(["in"], recursive=True)
    problems = {i.name: i.problem for i in found.items}
    assert problems == {
        "broken": "broken symlink (its target does not exist)",
        "good": None,
        "loop": "symlink loop (a link that leads back to itself)",
        "sub/deep": None,
    }
    assert ("in/sub/up", "symlinked folder, not followed") in found.skipped
    flat = discover(["in"])
    assert {i.name for i in flat.items} == {"broken", "good", "loop"}
    assert ("in/sub", "a folder (use --recursive to explain its files)") in flat.skipped


def test_a_fifo_named_like_a_report_does_not_block_a_walk(cwd):
    """A walk looks for igcli reports in each folder (an earlier run's outputs) by reading
    their first bytes: a FIFO named report.json blocked it. It is no report: not opened."""
    touch(cwd, "in/sub/a.png")
    os.mkfifo(cwd / "in" / "sub" / "report.json")
    found = discover(["in"], recursive=True)
    assert [i.name for i in found.items] == ["sub/a"]


def test_unlistable_folder_is_a_failed_input(cwd, monkeypatch):
    touch(cwd, "in/a.png", "in/locked/b.png")
    real_scandir = os.scandir

    def deny(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", deny)
    found = discover(["in"], recursive=True)
    problems = {str(i.path): i.problem for i in found.items}
    assert problems == {
        "in/a.png": None,
        "in/locked": "cannot list folder (permission denied)",
    }
    found = discover(["in/locked"])
    assert [i.problem for i in found.items] == ["cannot list folder (permission denied)"]


def test_folder_listed_but_not_searchable_is_a_failed_input(cwd, monkeypatch):
    """A folder of mode 600 lists its names but every lstat in it fails: is_symlink() raised
    PermissionError out of the walk (exit 1) before any input. (Simulated: root ignores
    modes.)"""
    touch(cwd, "in/a.png", "in/locked/b.png", "in/locked/deeper/c.png", "in/z/d.png")

    def denied(real):
        def deny(path, *args, **kwargs):
            if "locked/" in os.fspath(path):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real(path, *args, **kwargs)

        return deny

    monkeypatch.setattr(os, "lstat", denied(os.lstat))
    monkeypatch.setattr(os, "stat", denied(os.stat))  # Path.is_symlink's
    found = discover(["in"], recursive=True)
    problems = {str(i.path): i.problem for i in found.items}
    reason = "cannot look into folder (permission denied: it can be listed, not searched)"
    assert problems == {"in/a.png": None, "in/locked": reason, "in/z/d.png": None}
    found = discover(["in/locked"])
    assert [(str(i.path), i.problem) for i in found.items] == [("in/locked", reason)]


# -- the naming rule as a property ----------------------------------------------------------------

tokens = list("aAbB_.-~%[]\n") + ["row", "_row1", ".target2", ".npy", "é", "\udcff", "report.json"]
part = (
    st.lists(st.sampled_from(tokens), min_size=1, max_size=4)
    .map("".join)
    .filter(lambda s: s not in (".", ".."))
)
suffix = st.sampled_from([".png", ".PNG", ".jpg", ".npy", ".csv"])
relpath = st.lists(part, min_size=1, max_size=3).map(lambda parts: "/".join(parts))


def output_stems(item: InputItem) -> set[str]:
    """Files an item writes for up to 3 rows and targets (case-folded, as the rule does)."""
    stems = {item.name}
    rows = [f"{item.name}_row{r}" for r in range(3)] if item.is_table else [item.name]
    for stem in rows:
        stems |= {stem} | {f"{stem}.target{t}" for t in range(3)}
    files = {s + ext for s in stems for ext in (".npy", ".png")} | {item.name + ".record.json"}
    return {f.casefold() for f in files}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(relpath, suffix), min_size=1, max_size=12))
def test_output_names_never_collide(tmp_path, entries):
    items = [InputItem(Path("in") / (rel + ext), clean_name(rel)) for rel, ext in entries]
    unique = {os.path.normpath(str(i.path)): i for i in items}  # discover drops repeats
    items = list(unique.values())
    unique_names(items)
    seen: dict[str, str] = {}
    for item in items:
        for f in output_stems(item):
            assert f not in seen, (item.path, seen.get(f))
            seen[f] = str(item.path)
    folders = {
        "/".join(i.name.casefold().split("/")[:k])
        for i in items
        for k in range(1, i.name.count("/") + 1)
    }
    assert not folders & set(seen)  # no output file where another needs a folder
    out = tmp_path / "out"
    for item in items:
        item.name.encode("utf-8")
        assert "\n" not in item.name
        assert item.name.split("/")[0].casefold() not in REPORT_FILES or "/" not in item.name
        output_stem(out, item.name + ".record.json")  # stays inside --out


def test_stdin_urls_are_urls_as_on_the_command_line():
    from igcli.storage import URL

    paths = read_path_list(Stdin(b"s3://bkt/sh/x.png\nfile:///tmp/y.png\nlocal.png\n"))
    assert paths == [URL("s3://bkt/sh/x.png"), Path("/tmp/y.png"), Path("local.png")]
    assert isinstance(paths[0], URL) and isinstance(paths[1], Path)
    found = discover(["-"], stdin=Stdin(b"s3://bkt/sh/x.png\n"))
    assert [(str(i.path), i.name) for i in found.items] == [("s3://bkt/sh/x.png", "x")]


def test_odd_object_keys_are_not_conflated_with_the_keys_they_normalise_to():
    """Given by URL, 's3://b/x/../y.png' is no repeat of 's3://b/y.png', and fails alone
    under a name of its own; names that resolve to one output path collide."""
    from igcli.discovery import InputItem, collision_groups

    found = discover(["s3://b/x/../y.png", "s3://b/y.png", "s3://b/y.png"])
    assert found.skipped == [("s3://b/y.png", "listed more than once")]
    odd, plain = found.items
    assert plain.name == "y" and plain.problem is None
    assert odd.problem and "'..' part" in odd.problem and odd.name.startswith("y~")
    items = [InputItem(Path("a.png"), "x/../y"), InputItem(Path("b.png"), "y")]
    assert collision_groups(items) == [[0, 1]]


def test_stdin_that_cannot_be_read_is_one_usage_error():
    """`igcli explain M - 0>file` opens stdin for writing only: reading it raised EBADF, an
    internal error."""
    import errno

    from igcli.discovery import read_path_list

    class WriteOnly:
        class buffer:  # noqa: N801
            @staticmethod
            def read(size=-1):
                raise OSError(errno.EBADF, "Bad file descriptor")

        @staticmethod
        def isatty():
            return False

    with pytest.raises(UsageError, match="cannot read standard input"):
        read_path_list(WriteOnly())


def test_one_path_may_be_given_alone(tmp_path, monkeypatch):
    """A str was read a character at a time: discover("/data") walked "/"."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.png").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert named(discover("d")) == named(discover(["d"])) == named(discover(Path("d")))


def test_a_path_list_entry_longer_than_any_path_is_refused_as_it_is_read():
    """A 100 MB line on stdin took 2.7 GB and 82 s, then wrote a 200 MB report.json."""
    import tracemalloc

    from igcli.discovery import MAX_LISTED_PATH, read_path_list

    class Endless(io.RawIOBase):  # far more than could ever be held
        def readable(self):
            return True

        def readinto(self, buffer):
            buffer[:] = b"a" * len(buffer)
            return len(buffer)

    tracemalloc.start()
    try:
        with pytest.raises(UsageError, match="longer than any path"):
            read_path_list(io.TextIOWrapper(io.BufferedReader(Endless())))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    fine = "x" * (MAX_LISTED_PATH - 10)
    listed = read_path_list(io.TextIOWrapper(io.BytesIO(f"a.png\n{fine}\n\0".encode()[:-2])))
    assert [str(p) for p in listed] == ["a.png", fine]
