"""Finding inputs and naming their outputs: folders, stdin lists, sharding.

Kept apart from the run loop (batch.py) so a library session can discover and name inputs
without running anything.

Output names (the `name` of each input, relative to --out, without suffix):

1. A file inside a folder argument is named by its path relative to that folder
   (`photos/` holding `cats/a.png` gives `cats/a`); a file named on its own (or listed on
   stdin) by its stem (`x.png` gives `x`). A CSV's rows are `<name>_row<k>`; several
   targets add `.target<t>`.
2. Names are made safe: control characters (a newline, say) and bytes that are not UTF-8
   become `%XX`; a path part longer than 200 bytes is cut and ends in `~` and 8 hex digits
   of its SHA-256; a top-level part named like a report file (`report.json`) gets a `_`.
3. Two inputs collide when their outputs would share a file, compared without regard to
   case (`X.png` and `x.png` collide, as on macOS and Windows): equal names, `x` beside
   `x.target1` (whose outputs `x` writes with several targets), a CSV `data` beside a
   file `data_row0`, a name whose folder would be another's output file. Every input of a
   colliding group is renamed, in steps, until no collision is left:
   a. relative to the group's common folder, when that tells them apart
      (`d1/x.png` and `d2/x.png` become `d1/x` and `d2/x`);
   b. the file's suffix is kept (`img.png` and `img.jpg` become `img.png` and `img.jpg`;
      `data.csv` and `data_row0.npy` become `data.csv` and `data_row0.npy`);
   c. `~` and 8 hex digits of the SHA-256 of the path as given are added;
   d. (never met in practice) `~1`, `~2`, ... in input order.
   Names depend only on the list of inputs (not their order, except in step d), so every
   shard of a run computes the same names before taking its share.
4. The same file listed twice (by the same path) is explained once; the repeat is skipped.
   An object URL is compared as written: `s3://b/x/../y.png` is not `s3://b/y.png`.
5. An object key with an empty, `.` or `..` part (`x/../y.png`, `d//e.png`) fails alone: no
   file path can hold it apart from the key it would normalise to (`y.png`, `d/e.png`). Its
   name, which writes nothing, shows those parts as `%2F`, `%2E` and `%2E%2E`.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import os
import posixpath
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from igcli.errors import InputError, UsageError
from igcli.files import BIDI_CONTROLS, is_folder, open_regular, os_reason, read_option_text
from igcli.inputs import SUPPORTED_SUFFIXES, TABLE_SUFFIXES


@dataclass
class InputItem:
    path: Path  # or a storage.URL (object storage)
    name: str  # output stem relative to --out, no suffix
    problem: str | None = None  # set when the file is refused before reading
    rows: int | None = None  # a CSV's data rows, when a manifest says (for progress)

    @property
    def is_table(self) -> bool:
        """A CSV: its outputs are named per row (`<name>_row<k>`)."""
        return self.path.suffix.lower() in TABLE_SUFFIXES


@dataclass
class Discovery:
    items: list[InputItem] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


Report = Callable[[Path, str], None]


def _walk(
    root: Path, recursive: bool, skip: Report, fail: Report, outside: str | None = None
) -> Iterable[Path]:
    """Files under `root`, sorted; folders that cannot be listed are reported to `fail`,
    folders not entered (subfolders without -r, symlinked folders, the folder `outside`,
    where the run writes) to `skip`."""
    if outside is not None and os.path.realpath(root) == outside:
        skip(root, "the output folder (--out)")
        return
    if not recursive:
        try:
            with os.scandir(root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            fail(root, f"cannot list folder ({os_reason(exc)})")
            return
        if not _searchable(root, [e.name for e in entries], fail):
            return
        outputs = _listed_outputs(str(root), [e.name for e in entries])
        for entry in entries:
            if _is_dir(entry):
                skip(Path(entry.path), "a folder (use --recursive to explain its files)")
            elif entry.name in outputs:
                skip(Path(entry.path), outputs[entry.name])
            else:
                yield Path(entry.path)
        return

    def on_error(exc: OSError) -> None:
        fail(Path(exc.filename or root), f"cannot list folder ({os_reason(exc)})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=False):
        if not _searchable(Path(dirpath), filenames + dirnames, fail):
            dirnames.clear()
            continue
        if dirpath != str(root) and _earlier_output(dirpath, filenames):
            dirnames.clear()  # nor anything under it
            skip(Path(dirpath), "an earlier igcli run's output folder")
            continue
        for d in sorted(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                dirnames.remove(d)
                skip(Path(dirpath) / d, "symlinked folder, not followed")
            elif outside is not None and os.path.realpath(os.path.join(dirpath, d)) == outside:
                dirnames.remove(d)
                skip(Path(dirpath) / d, "the output folder (--out)")
        dirnames.sort()
        outputs = _listed_outputs(dirpath, filenames)
        for fn in sorted(filenames):
            if fn in outputs:
                skip(Path(dirpath) / fn, outputs[fn])
            else:
                yield Path(dirpath) / fn


def _searchable(folder: Path, names: list[str], fail: Report) -> bool:
    """Whether the entries of a listed folder can be looked at. A folder that can be read but
    not searched (mode 600: no x bit) lists its names, and then every lstat of a file in it
    fails: is_symlink() raised PermissionError out of the walk (exit 1, before any input).
    Such a folder is one failed entry, as a folder that cannot be listed is."""
    if not names:
        return True
    try:
        os.lstat(os.path.join(folder, names[0]))
    except FileNotFoundError:  # gone since the listing: its own check will say so
        return True
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM):
            return True
        fail(folder, f"cannot look into folder ({os_reason(exc)}: it can be listed, not searched)")
        return False
    return True


_REPORT_NAME = re.compile(r"report(\.shard-\d+-of-\d+)?\.json")


def _earlier_output(folder: str, names: list[str]) -> bool:
    """Whether a folder (holding `names`) holds an igcli report (report.json, or a shard's):
    an earlier run's outputs, whose heatmaps and .npy files a walk of their parent explained
    as inputs (and whose report.csv failed as a CSV)."""
    from igcli.report import is_igcli_report

    return any(_REPORT_NAME.fullmatch(n) and is_igcli_report(Path(folder) / n) for n in names)


def _listed_outputs(folder: str, names: list[str]) -> dict[str, str]:
    """Files of `folder` that an earlier igcli run wrote, each with the reason to skip it:
    the .npy and .png files a record file beside them lists as its outputs (an output
    folder whose reports are gone, which _earlier_output would know it by), and the
    report.csv beside an igcli report.json (a folder given as an input itself). Only folders
    holding a record or report file are read; the input a record names is never skipped."""
    from igcli.outputs import record_of_igcli

    found: dict[str, str] = {}
    if any(_REPORT_NAME.fullmatch(n) for n in names) and _earlier_output(folder, names):
        for name in names:
            if name.endswith(".csv") and _REPORT_NAME.fullmatch(name[: -len(".csv")] + ".json"):
                found[name] = "an earlier igcli run's report"
    for marker in (n for n in names if n.endswith(".record.json")):
        for record in record_of_igcli(Path(folder) / marker) or []:
            source = os.path.realpath(str(record.get("input", "")))
            for key in ("attributions_file", "heatmap_file"):
                rel = record.get(key)
                if not isinstance(rel, str):
                    continue
                name = posixpath.basename(rel)
                if os.path.realpath(os.path.join(folder, name)) != source:
                    found[name] = f"an earlier igcli run's output (its {marker} lists it)"
    return found


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop, say: the file check will name the problem
        return False


def _matches(path: Path, root: Path, pattern: str | tuple[str, ...] | None) -> bool:
    if not pattern:
        return path.suffix.lower() in SUPPORTED_SUFFIXES
    return _globbed(path.relative_to(root).as_posix(), path.name, pattern)


def _globbed(rel: str, name: str, pattern: str | tuple[str, ...]) -> bool:
    """Whether a file's path under its folder, or its name, matches any --glob pattern.
    `**/` also matches no folder at all, as in a shell's globstar ('**/*.png' skipped the
    top folder's files)."""
    patterns = (pattern,) if isinstance(pattern, str) else pattern
    patterns = {v for p in patterns for v in (p, p.replace("**/", ""))}
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _link_problem(file: Path, root: Path) -> str | None:
    """Why a file found in a folder is refused before reading (symlinks only)."""
    if not file.is_symlink():
        return None
    try:
        os.stat(file)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return "broken symlink (its target does not exist)"
        return os_reason(exc)
    real_root = os.path.realpath(root)
    target = os.path.realpath(file)
    if os.path.commonpath([real_root, target]) != real_root:
        return "symlink points outside the input folder"
    return None


_FILE_MAGIC = (  # what a file piped to '-' by mistake starts with (no path does)
    (b"\x89PNG", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (b"\x93NUMPY", ".npy array"),
    (b"PK\x03\x04", "zip (.npz)"),
    (b"\x08", "ONNX model"),
)


def read_path_list(stdin) -> list:
    """Paths from standard input: one per line, each kept as it is but for its line ending
    (\\n or \\r\\n), or separated by NUL bytes (`find -print0`) when there is any, which
    keeps newlines in names too. Blank lines are passed over. A line with blanks around it
    is the file of that name ('a.png ' is not 'a.png'; stripping them lost such a file),
    unless no such file exists and the name without them does (a list typed with spaces).
    Bytes that are not UTF-8 are kept (as os.fsdecode does), so such files can be read.
    Object storage URLs are storage.URLs, as on the command line (a Path drops a slash)."""
    from igcli.storage import is_url, location

    if stdin is None:
        raise UsageError("'-' needs a list of paths on standard input")
    isatty = getattr(stdin, "isatty", None)
    if isatty is not None and isatty():
        raise UsageError("'-' reads a list of paths from standard input, which is a terminal")
    try:
        raw = _read_list(stdin.buffer if hasattr(stdin, "buffer") else stdin)
    except OSError as exc:  # (opened for writing only, say)
        from igcli.files import os_reason

        raise UsageError(f"'-' cannot read standard input ({os_reason(exc)})") from None
    if isinstance(raw, str):
        raw = os.fsencode(raw)
    magic = next((name for head, name in _FILE_MAGIC if raw.startswith(head)), None)
    if magic is not None:  # each binary chunk became a "no such file" line of its own
        raise UsageError(
            f"'-' reads a list of paths, and standard input holds {magic} data; "
            "name the file on the command line instead"
        )
    if b"\0" in raw:
        parts = [p for p in raw.split(b"\0") if p]
    else:
        parts = [_listed(line.removesuffix(b"\r"), is_url) for line in raw.split(b"\n")]
        parts = [p for p in parts if p.strip()]
    return [location(os.fsdecode(p)) for p in parts]


MAX_LISTED_PATH = 1 << 16  # bytes: a path (4,096 at most on Linux) or a URL is far shorter


def _read_list(stream) -> bytes:
    """All of a path list, read 1 MiB at a time, refused as soon as one entry is longer than
    any path can be: a 100 MB line took 2.7 GB, 82 s and a 200 MB report.json to fail."""
    chunks, run = [], 0  # run: the length of the entry the last chunk ended in
    while chunk := stream.read(1 << 20):
        if isinstance(chunk, str):
            chunk = os.fsencode(chunk)
        pieces = re.split(rb"[\n\0]", chunk)
        if len(pieces) == 1:
            run += len(chunk)
            longest = run
        else:
            longest = max(run + len(pieces[0]), *(len(p) for p in pieces[1:]))
            run = len(pieces[-1])
        if longest > MAX_LISTED_PATH:
            raise UsageError(
                f"'-' reads a list of paths, and standard input holds an entry of more than "
                f"{MAX_LISTED_PATH:,} bytes, longer than any path; is it a list of paths?"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _listed(line: bytes, is_url: Callable[[str], bool]) -> bytes:
    """A line of a path list as the path it names: as it is, or without the blanks around
    it where only that names a file (or a URL, which has none)."""
    stripped = line.strip()
    if stripped == line or not stripped:
        return line
    if is_url(os.fsdecode(stripped)) or (not os.path.lexists(line) and os.path.lexists(stripped)):
        return stripped
    return line


def discover(
    args: list[str] | str | os.PathLike,
    recursive: bool = False,
    pattern: str | tuple[str, ...] | None = None,
    stdin=None,
    out_dir: Path | None = None,
) -> Discovery:
    """Turn the command line's INPUT... (files, folders, '-') into uniquely named items.
    A folder walk leaves `out_dir` out: a run's own outputs are no inputs of its next. One
    path may be given alone (a str was read a character at a time: "/data" walked "/")."""
    args = (
        [os.fspath(args)]
        if isinstance(args, (str, os.PathLike))
        else [os.fspath(a) if isinstance(a, os.PathLike) else a for a in args]
    )
    found = Discovery()
    outside = os.path.realpath(out_dir) if out_dir is not None else None
    given: list[tuple[InputItem, str]] = []  # items and the path as given, for hashes

    def skip(path: Path, reason: str) -> None:
        found.skipped.append((str(path), reason))

    def add(path: Path, name: str, problem: str | None = None) -> None:
        if problem is None and _is_remote(str(path)) and _odd_key(str(path)):
            name, problem = _odd_name(name), ODD_KEY
        given.append((InputItem(path, name, problem), os.path.normpath(str(path))))

    if args.count("-") > 1:
        raise UsageError("'-' (paths from stdin) is given more than once; stdin is read once")
    for arg in args:
        if arg == "-":
            for path in read_path_list(stdin):
                add(path, path.stem)
            continue
        if _is_remote(arg):
            _discover_remote(arg, recursive, pattern, add, skip)
            continue
        path = _local(arg)  # (a file:// URL names a local path)
        try:
            folder = is_folder(path)
        except InputError as exc:  # (a name too long to look up fails alone)
            add(path, path.stem, exc.reason)
            continue
        if not folder:
            add(path, path.stem)
            continue
        if outside is not None and os.path.realpath(path) == outside:
            raise UsageError(
                "--out is this input folder: the outputs would lie among the inputs (and be "
                "read as inputs by a later run); choose another --out, a folder of its own",
                path,
            )
        failed = lambda p, reason: add(p, p.name, reason)  # noqa: E731
        for file in _walk(path, recursive, skip, failed, outside):
            if not _matches(file, path, pattern):
                if not pattern:
                    skip(file, "not a supported file type")
                continue
            rel = file.relative_to(path)
            add(file, rel.with_suffix("").as_posix(), _link_problem(file, path))

    seen: set[str] = set()
    for item, text in given:
        key = str(item.path) if _is_remote(str(item.path)) else os.path.abspath(text)
        if key in seen:
            skip(item.path, "listed more than once")
            continue
        seen.add(key)
        item.name = clean_name(item.name)
        found.items.append(item)
    unique_names(found.items, {id(item): text for item, text in given})
    _apart(found.items)
    return found


ODD_KEY = (
    "object key has an empty, '.' or '..' part: its outputs could be another key's "
    "(rename the object)"
)


def _odd_key(url: str) -> bool:
    """Whether an object URL's bucket or key has an empty, '.' or '..' part (rule 5)."""
    key = url.split("://", 1)[1].strip("/")  # memory:///x lists as memory:///x/...
    return any(p in ("", ".", "..") for p in key.split("/"))


def _odd_name(name: str) -> str:
    """A name with its empty, '.' and '..' parts shown as %2F, %2E and %2E%2E (rule 5): a
    plain relative path, which a manifest accepts."""
    odd = {"": "%2F", ".": "%2E", "..": "%2E%2E"}
    return "/".join(odd.get(p, p) for p in name.split("/"))


def _apart(items: list[InputItem]) -> None:
    """Failed inputs (which write nothing) get `~` and a hash when their name is another
    input's: a plan's names must be unique for `explain --manifest` to take it."""
    taken: set[str] = set()
    for item in sorted(items, key=lambda i: i.problem is not None):
        if item.problem is not None and item.name.casefold() in taken:
            item.name += f"~{_short_hash(str(item.path))}"
        taken.add(item.name.casefold())


def _local(arg: str) -> Path:
    from igcli.storage import location

    return location(arg)


def _is_remote(arg: str) -> bool:
    from igcli.storage import is_url

    return is_url(arg)


def _discover_remote(arg: str, recursive: bool, pattern, add, skip) -> None:
    """A URL: an object, or a prefix listed like a folder (names relative to it)."""
    from igcli.storage import URL, isdir, list_files

    url = URL(arg.rstrip("/"))
    if not url.partition("://")[2].strip("/"):  # "s3://": no bucket, no key
        add(URL(arg), arg.partition(":")[0] or "url", "the URL names no bucket or object")
        return
    if not isdir(url):
        add(url, url.stem)
        return
    root = url.rstrip("/") + "/"
    for file in list_files(url, recursive):
        rel = file[len(root) :] if file.startswith(root) else file.name
        if not pattern:
            if file.suffix.lower() not in SUPPORTED_SUFFIXES:
                skip(file, "not a supported file type")
                continue
        elif not _globbed(rel, file.name, pattern):
            continue
        stem = rel[: -len(file.suffix)] if file.suffix else rel
        add(file, stem)


# -- names ------------------------------------------------------------------------------------

MAX_PART_BYTES = 200  # leaves room for ".target<t>.record.json" under the 255-byte limit
REPORT_FILES = ("report.json", "report.md", "report.csv")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _clean_part(part: str) -> str:
    out = []
    for ch in part:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of the file name
            out.append(f"%{code - 0xDC00:02X}")
        elif unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in BIDI_CONTROLS:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        else:
            out.append(ch)
    text = "".join(out)
    data = text.encode("utf-8")
    if len(data) > MAX_PART_BYTES:
        cut = data[: MAX_PART_BYTES - 9].decode("utf-8", "ignore")
        text = f"{cut}~{_short_hash(part)}"
    return text


def clean_name(name: str) -> str:
    """An output name safe in file names, JSON, CSV and terminals (rule 2 above)."""
    parts = [_clean_part(p) for p in name.split("/")]
    if parts and parts[0].casefold() in REPORT_FILES and len(parts) > 1:
        parts[0] += "_"
    return "/".join(parts)


_TARGET = re.compile(r"^(.*)\.target\d+$", re.DOTALL)
_ROW = re.compile(r"^(.*)_row\d+(?:\.target\d+)?$", re.DOTALL)
_OUTPUT_SUFFIXES = (".npy", ".png", ".record.json")


def _written(name: str) -> str:
    """The name as the output writer resolves it: 'x/../y' and 'a//b' are written at 'y'
    and 'a/b', so they collide with those names."""
    plain = all(p not in ("", ".", "..") for p in name.split("/"))
    return name if plain else posixpath.normpath(name)


def collision_groups(items: list[InputItem]) -> list[list[int]]:
    """Indices of items whose outputs would share a file, in groups (rule 3 above)."""
    plain: dict[str, list[int]] = {}
    table: dict[str, list[int]] = {}
    keys = [_written(item.name).casefold() for item in items]
    for i, key in enumerate(keys):
        (table if items[i].is_table else plain).setdefault(key, []).append(i)

    def owners(stem: str) -> list[int]:
        """Items writing outputs with this stem: its own name (a CSV writes its record
        there), `x` for `x.target<t>`, a CSV `d` for `d_row<k>[.target<t>]`."""
        found = plain.get(stem, []) + table.get(stem, [])
        m = _TARGET.match(stem)
        if m:
            found = found + plain.get(m.group(1), [])
        m = _ROW.match(stem)
        if m:
            found = found + table.get(m.group(1), [])
        return found

    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, key in enumerate(keys):
        clashes = list(owners(key))
        parts = key.split("/")
        for depth in range(1, len(parts)):  # a folder of this name that is another's file
            folder = "/".join(parts[:depth])
            for suffix in _OUTPUT_SUFFIXES:
                if folder.endswith(suffix):
                    clashes += owners(folder[: -len(suffix)])
        for j in clashes:
            if j != i:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(items)):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _relocated(items: list[InputItem], group: list[int]) -> list[str] | None:
    """Names relative to the group's common folder, if they tell its members apart."""
    paths = [os.path.abspath(items[i].path) for i in group]
    try:
        common = os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:
        return None
    names = [clean_name(Path(os.path.relpath(p, common)).with_suffix("").as_posix()) for p in paths]
    if len({n.casefold() for n in names}) != len(names):
        return None
    return names


def unique_names(items: list[InputItem], given: dict[int, str] | None = None) -> None:
    """Rename colliding items in place (rule 3 above). `given` maps id(item) to the path as
    the user gave it, for the hashes of step c (default: the item's path)."""
    active = [item for item in items if item.problem is None]  # failures write no outputs
    base = {id(item): item.name for item in active}
    level = {id(item): 0 for item in active}
    for _ in range(8):
        groups = collision_groups(active)
        if not groups:
            return
        for group in groups:
            members = [active[i] for i in group]
            stage = max(level[id(m)] for m in members) + 1
            relocated = _relocated(active, group)
            if stage == 1 and relocated is None:
                stage = 2
            for k, item in enumerate(members):
                name = relocated[k] if relocated is not None else base[id(item)]
                if stage >= 2:
                    name += clean_name(item.path.suffix)
                if stage >= 3:
                    text = (given or {}).get(id(item), os.path.normpath(str(item.path)))
                    name += f"~{_short_hash(text)}"
                if stage >= 4:
                    name += f"~{k + 1}" * (stage - 3)
                item.name = name
                level[id(item)] = stage


SHARD_VARIABLES = (
    # (variable, what it counts from) in the order they are tried; the first one set wins
    ("IGCLI_SHARD", "0-based"),
    ("JOB_COMPLETION_INDEX", "0-based"),  # a Kubernetes Indexed Job
    ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN"),  # a Slurm job array: counts from its MIN
)


@dataclass(frozen=True)
class Shard:
    """Shard `k` of `n` (k counts from 1), and where k came from (`--shard auto/N`)."""

    k: int
    n: int
    source: str | None = None  # e.g. "JOB_COMPLETION_INDEX=0"

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

    @property
    def tag(self) -> str:
        """What a shard's report files are named by: report.shard-K-of-N.json."""
        return f"shard-{self.k}-of-{self.n}"


MAX_SHARDS = 100_000  # far more than any job runs in parallel


def parse_shard(spec: str | None, environ: dict | None = None) -> Shard | None:
    """`K/N` (1 <= K <= N), or `auto/N`: K from the first of SHARD_VARIABLES that is set,
    each of them counting from 0 (Slurm's from SLURM_ARRAY_TASK_MIN)."""
    if spec is None:
        return None
    k_text, sep, n_text = str(spec).partition("/")
    try:
        n = _count(n_text)
        k = None if k_text == "auto" else _count(k_text)
    except ValueError:
        raise UsageError(f"--shard {spec!r}: use K/N (e.g. 2/4) or auto/N") from None
    if not sep or n < 1:
        raise UsageError(f"--shard {spec!r}: use K/N (e.g. 2/4) or auto/N")
    if n > MAX_SHARDS:  # merge-reports checked shards 1..N one by one: N = 10**9 ran out of memory
        raise UsageError(f"--shard {spec!r}: N is at most {MAX_SHARDS}")
    if k is not None:
        if not 1 <= k <= n:
            raise UsageError(f"--shard {spec!r}: need 1 <= K <= N")
        return Shard(k, n)
    env = os.environ if environ is None else environ
    for variable, base in SHARD_VARIABLES:
        text = env.get(variable)
        if text is None or not text.strip():
            continue
        try:
            index = _count(text)
            first = 0 if base == "0-based" else _count(env.get(base, "0") or "0")
        except ValueError:
            raise UsageError(f"--shard auto/{n}: {variable}={text!r} is not a number") from None
        k = index - first + 1
        if not 1 <= k <= n:
            raise UsageError(
                f"--shard auto/{n}: {variable}={text} gives shard {k}, not in 1..{n} "
                f"({variable} counts from {first})"
            )
        return Shard(k, n, f"{variable}={text}")
    names = ", ".join(v for v, _ in SHARD_VARIABLES)
    raise UsageError(f"--shard auto/{n}: none of {names} is set")


def _count(text: str) -> int:
    """A whole number in ASCII digits: int() also took ' 1' and '١' (Arabic-Indic one),
    which merge-reports' check of the report's 'K/N' refuses."""
    if not (text.isascii() and text.isdecimal()):
        raise ValueError(text)
    return int(text)


def in_shard(name: str, shard: Shard | tuple[int, int] | None) -> bool:
    """A stable hash of the output name decides the shard: same split on every machine."""
    if shard is None:
        return True
    k, n = (shard.k, shard.n) if isinstance(shard, Shard) else shard
    digest = int(hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12], 16)
    return digest % n == k - 1


def count_table_rows(path: Path) -> int:
    """About how many data rows a CSV holds (its lines less the header), for progress only;
    1 when it cannot be read (the run reports why, when the CSV reader gets to it). Only a
    regular file is read: a FIFO or a link to /dev/zero hung the whole run here."""
    try:
        with open_regular(path) as fh:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                lines += 1  # a last line without a newline
    except (OSError, InputError):
        return 1
    return max(1, lines - 1)


def _table_key(name: str) -> str:
    """How a targets table names an input, as for_item looks it up: './g/x.png' and
    'g//x.png' are 'g/x.png' (they named no input before, which then got the top class)."""
    if _is_remote(name):
        return name
    return os.path.normpath(name) if ("/" in name or os.sep in name) else name


class TargetTable:
    """--targets-from FILE: each input's own target(s), e.g. its true label.

    A CSV with a header; the first column names the input (the path as given, its file name,
    or its output name; a CSV row as `<name>_row<k>`), the second its target: a class index,
    a label from the model's labels, or several separated by ';'. Inputs the file does not
    name get the run's default (the top class, or --target).
    """

    def __init__(
        self, path: Path, labels: list[str] | None = None, classes: int | None = None
    ) -> None:
        """`classes`: the output's values per sample, where known: targets beyond them are
        refused by their line here (else the model was named, mid-run)."""
        import csv

        self.path = path
        self.targets: dict[str, list[int]] = {}
        self.lines: dict[str, int] = {}  # each key's line in the file
        self.used: set[str] = set()
        index = {str(label): k for k, label in enumerate(labels or [])}
        text = read_option_text(path)
        try:
            rows = list(csv.reader(io.StringIO(text, newline="")))
        except csv.Error as exc:
            raise UsageError(f"cannot read the targets file ({exc})", path) from None
        if len(rows) < 2 or len(rows[0]) != 2:
            raise UsageError("needs a header and rows of 'input,target'", path)
        for line, row in enumerate(rows[1:], start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[0].strip():
                raise UsageError(f"line {line}: needs an input and a target", path)
            if any(cell.strip() for cell in row[2:]):  # '3,5' unquoted: 5 was dropped
                raise UsageError(
                    f"line {line}: more than two cells; several targets go in one, "
                    "separated by ';'",
                    path,
                )
            picked = []
            for text in row[1].split(";"):
                text = text.strip()
                if re.fullmatch(r"-?[0-9]+", text):  # not isdigit: '²' is a digit, no int
                    picked.append(int(text))
                elif text in index:
                    picked.append(index[text])
                else:
                    known = (
                        "; the model's labels are " + ", ".join(list(index)[:5]) if index else ""
                    )
                    raise UsageError(
                        f"line {line}: target {text!r} is neither a class index nor a label{known}",
                        path,
                    )
            if len(set(picked)) < len(picked):
                raise UsageError(f"line {line}: a target appears twice", path)
            if classes is not None and any(not 0 <= t < classes for t in picked):
                bad = next(t for t in picked if not 0 <= t < classes)
                raise UsageError(
                    f"line {line}: target {bad} is out of range: the output has {classes} "
                    "values per sample",
                    path,
                )
            key = _table_key(row[0].strip())
            if key in self.targets:  # which line would win is no choice to make silently
                raise UsageError(f"line {line}: input {row[0].strip()!r} appears twice", path)
            self.targets[key] = picked
            self.lines[key] = line

    def for_item(self, item: InputItem) -> list[int] | None:
        where = str(item.path)
        keys = [where, os.path.normpath(where), item.path.name, item.name]
        if not _is_remote(where):  # a table may name it by its absolute path
            keys.append(os.path.abspath(where))
        row = re.match(r"^(.*)_row(\d+)$", item.name)
        if row:  # a CSV row may be named by its file and row number too
            keys.append(f"{item.path.name}_row{row.group(2)}")
        found = list(dict.fromkeys(k for k in keys if k in self.targets))
        self.used.update(found)
        if len({tuple(self.targets[k]) for k in found}) > 1:  # which wins is no choice to make
            lines = " and ".join(str(n) for n in sorted(self.lines[k] for k in found))
            raise InputError(
                f"--targets-from names it on lines {lines} ({self.path.name}), with different "
                "targets",
                item.path,
            )
        return self.targets[found[0]] if found else None

    def unused(self) -> list[str]:
        return [k for k in self.targets if k not in self.used]


def count_inputs(items: list[InputItem]) -> int:
    """Inputs to explain, CSV rows counted one by one (from the manifest when it says)."""
    from igcli.storage import URL

    def rows(item: InputItem) -> int:
        if item.rows is not None:
            return max(1, item.rows)
        return 1 if isinstance(item.path, URL) else count_table_rows(item.path)

    return sum(rows(item) if item.is_table else 1 for item in items)
