"""Explaining many inputs: discovery, naming, sharding, resuming, and the run loop.

Outputs mirror the input tree under --out, so two `img.png` in different folders never
collide. Each finished input leaves `<name>.record.json` beside its .npy and .png, written
last: it marks the input complete, which is what --skip-existing checks, and lets the final
report include inputs explained by an earlier, interrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from igcli import __version__
from igcli.attribution import Attribution
from igcli.baselines import ArrayBaseline
from igcli.cache import file_sha256
from igcli.discovery import (  # noqa: F401  (re-exported for run.py and tests)
    Discovery,
    InputItem,
    discover,
    in_shard,
    parse_shard,
)
from igcli.errors import GradientError, IgcliError, InputError, OutputError
from igcli.files import open_regular, os_reason, parse_json, path_stamp, read_text
from igcli.inputs import RowError, iter_table
from igcli.outputs import (
    DIGEST_CHARS,
    MAX_RECORD_BYTES,
    atomic_save_png,
    atomic_write_text,
    drop_stale_heatmap,
    in_the_way,
    looks_whole,
    output_stem,
    plain_parts,
    real_out,
    remove_write_leftovers,
    unlock_folder,
    unlock_reports,
)
from igcli.report import REPORT_KINDS, RunReport, failure_entry, is_igcli_report, json_line
from igcli.session import AttributionSettings, Session
from igcli.storage import is_url
from igcli.tokens import TEXT_SUFFIXES
from igcli.visualize import HeatmapStyle, attribution_map, is_image_like


def _held_bytes(a: Attribution) -> int:
    """Bytes of the arrays an explanation waiting to be written keeps alive."""
    arrays = (a.attributions, a.baseline, a.sample.x, a.sample.pixels)
    return sum(x.nbytes for x in arrays if isinstance(x, np.ndarray))


def record_path(out_dir: Path, name: str, folders: dict[str, str] | None = None) -> Path:
    return output_stem(out_dir, name + ".record.json", folders)


def existing_records(out_dir: Path, item: InputItem, settings_hash: str) -> list[dict] | None:
    """Records of a complete earlier explanation of this input as it is now, made with the
    same settings, else None. Only regular files are read: a record or result that is a FIFO,
    a device or a symlink is no file igcli wrote, and its input is redone (the write then
    refuses what is in the way, as without --skip-existing)."""
    try:
        text = read_text(record_path(out_dir, item.name), MAX_RECORD_BYTES, OutputError)
    except OutputError:
        return None

    def whole(rel: str) -> bool:
        path = result_file(out_dir, rel)
        return path is not None and looks_whole(path)

    return usable_records(
        text, settings_hash, whole, input_stamp(item.path), lambda rel: content_hash(out_dir, rel)
    )


def result_file(out_dir: Path, rel: str) -> Path | None:
    """OUT/rel when it may be a result igcli wrote: a name inside OUT (a record's names are
    relative; '/dev/zero' is none) that is not a symlink (igcli writes none), else None."""
    if plain_parts(rel) is None or os.path.islink(os.path.join(out_dir, rel)):
        return None
    try:
        return output_stem(out_dir, rel)
    except OutputError:
        return None


def content_hash(out_dir: Path, rel: str) -> str | None:
    """A short SHA-256 of the bytes of result `rel` in OUT (None when it is no regular file
    of OUT, or cannot be read): what a record file keeps of each output, the same for the
    same bytes in any run. A FIFO, a device or a symlink is never read (it blocked, or read
    /dev/zero without end)."""
    path = result_file(out_dir, rel)
    if path is None:
        return None
    try:
        with open_regular(path, OutputError, follow=False) as fh:
            digest = hashlib.sha256()  # (hashlib.file_digest is Python 3.11's)
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
            return digest.hexdigest()[:DIGEST_CHARS]
    except (OSError, OutputError):
        return None


def input_stamp(path) -> str | None:
    """An input file's size and modification time: a record holds them, and a resumed run
    redoes an input that changed since (it reused the result of the file it replaced).
    None for what has no such stamp here (object storage)."""
    return None if is_url(str(path)) else path_stamp(path)


# What the report sums and judges of each record (a string there stopped the run, exit 1)
NUMBERS_OF_A_RECORD = ("f_input", "f_baseline", "attribution_sum", "rel_error", "abs_error")


def _is_number(value) -> bool:
    """A JSON number, or the strings 'nan'/'inf'/'-inf' that records write for them."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) or value in ("nan", "inf", "-inf")


def usable_records(
    text: str | None,
    settings_hash: str,
    exists: Callable[[str], bool],
    stamp: str | None = None,
    hash_of: Callable[[str], str | None] | None = None,
) -> list[dict] | None:
    """The records of a record file when they were made with these settings (and, given a
    `stamp`, of the input as it is now) and their files are all there, else None. Given
    `hash_of`, the files must also hold what the run wrote (their `file_sha256`): a .npy
    copied or linked in from another result loads as whole, and was resumed as this one."""
    try:
        data = parse_json(text)
        records = data["records"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(records, list) or not records:
        return None
    hashes = data.get("file_sha256")
    if (
        hash_of is not None
        and isinstance(hashes, dict)
        and any(hash_of(str(rel)) != written for rel, written in hashes.items())
    ):
        return None
    for r in records:
        if not isinstance(r, dict) or r.get("settings_hash") != settings_hash:
            return None
        if stamp is not None and r.get("input_stamp") != stamp:
            return None  # the input changed (or the record predates stamps): redone
        if not all(_is_number(r.get(k)) for k in NUMBERS_OF_A_RECORD):
            return None  # hand-edited or foreign: redone, not summed into the report
        for key in ("attributions_file", "heatmap_file"):
            if r.get(key) and not exists(str(r[key])):
                return None
    return records


@dataclass
class OutputSettings:
    """What a batch run writes, and what it holds the results to."""

    out_dir: Path  # or a storage.URL: written in a local staging folder, uploaded whole
    style: HeatmapStyle = field(default_factory=HeatmapStyle)
    heatmaps: bool = True
    shared_scale: bool = False
    json_lines: bool = False
    skip_existing: bool = False
    max_completeness_error: float | None = None


def settings_hash(
    session: Session,
    settings: AttributionSettings,
    targets: list[int] | None,
    outputs: OutputSettings,
) -> str:
    """A short hash of everything that shapes a result's files: --skip-existing resumes only
    results whose records carry the same one."""
    described = {
        "igcli": __version__,
        "session": session.fingerprint(),
        "settings": {**asdict(settings), "method": settings.rule},
        "baseline_files": _baseline_digests(settings),
        # --baseline mean without data takes the sidecar's numbers: changed, they are new
        # results (a rerun kept F(baseline) of the old ones)
        **(
            {"sidecar_baseline_mean": session.sidecar.raw.get("baseline_mean")}
            if settings.baseline == "mean" and not settings.baseline_data
            else {}
        ),
        "targets": targets,
        "style": asdict(outputs.style) if outputs.heatmaps else None,
        "shared_scale": outputs.shared_scale,
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _baseline_digests(settings: AttributionSettings) -> dict[str, list | None]:
    """What the baseline files hold, not only their names: a --baseline picture replaced at
    the same path was resumed with the old picture's F(baseline). Local files only (object
    storage is named by its URL); a folder by its files' names and contents."""
    found: dict[str, list | None] = {}
    for key in ("baseline", "baselines", "baseline_data"):
        value = getattr(settings, key)
        if isinstance(value, ArrayBaseline):
            found[key] = [["array", value.digest]]
            continue
        if not isinstance(value, str | Path) or is_url(str(value)):
            continue
        path = Path(value)
        try:
            files = sorted(path.iterdir()) if path.is_dir() else [path] if path.is_file() else []
            found[key] = [[f.name, file_sha256(f)] for f in files if f.is_file()]
        except OSError:
            found[key] = None  # unreadable: the run itself says so
    return found


def _nothing(n: int) -> None:
    pass


class BatchRun:
    """The loop over inputs: explain, write outputs atomically, report, never stop on one.

    `process(items)` may be called for batch after batch (a long-lived worker keeps one);
    `finish()` waits for the writes and draws heatmaps that share one colour scale.
    """

    # One writer thread. Drawing a panel is mostly Python holding the GIL: a second writer
    # mostly fought the first for it (digits, 1000 images, --steps auto: 183,000 futex calls,
    # 1.9 s of system time in the writers; 7.0-8.7 s against 6.1-7.0 s with one).
    WRITERS = 1
    # Finished explanations waiting to be written: up to one group's worth (the inputs whose
    # rows share model calls), so the writer draws one group while the next one's calls run.
    # A group's attributions are no larger than its path points, which the memory budget
    # sized; with 4 (before), each group's calls waited for its writes. Also at most
    # MAX_PENDING_BYTES of arrays, whatever the group.
    MIN_PENDING = 4
    MAX_PENDING_BYTES = 256 << 20

    def __init__(
        self,
        session: Session,
        settings: AttributionSettings,
        targets: list[int] | None,
        outputs: OutputSettings,
        report: RunReport,
        emit: Callable[[str], None],
        warn: Callable[[str], None],
        targets_for: Callable[[InputItem], list[int] | None] | None = None,
    ) -> None:
        """`targets_for(item)` gives an input its own targets (--targets-from); None: the
        run's `targets` (None: each input's top class)."""
        self.session, self.settings, self.targets = session, settings, targets
        self.targets_for = targets_for
        self.outputs, self.report = outputs, report
        self.settings_hash = settings_hash(session, settings, targets, outputs)
        self.emit, self.warn = emit, warn
        # run.start's lock on the report files: (folder, report stem, descriptor)
        self.reports_lock: tuple[Path, str, int] | None = None
        self.folder_lock: tuple[Path, str, int] | None = None  # and on the folder (its group)
        self.out_identity: tuple[int, int] | None = None  # --out's (device, inode) at start
        self.remote = None  # a storage.RemoteOutputs when --out is a URL
        self.local_out = outputs.out_dir  # where files are written (staged when remote)
        if is_url(str(outputs.out_dir)):
            from igcli.storage import RemoteOutputs

            self.remote = RemoteOutputs(str(outputs.out_dir))
            self.local_out = self.remote.staging
        self.fetcher = None  # a storage.Fetcher once a remote input is met
        self._fetched: list[Path] = []
        self.workers: dict | None = None  # a Dask run: what its workers measured
        # heatmaps awaiting a shared colour scale: only what redraws them, not their arrays
        self.deferred: list[tuple[Attribution, Path, Path]] = []
        # ONNX Runtime releases the GIL, so PNG encoding overlaps with the next input's calls.
        self.writer = ThreadPoolExecutor(self.WRITERS, thread_name_prefix="igcli-writer")
        self.pending: deque[tuple[Future, int]] = deque()  # a write and its arrays' bytes
        self.pending_bytes = 0
        # JSON lines wait for the writes queued before them: a line says "ok" only once its
        # files are whole (a full disk stopped the run with its lines already out)
        self.outbox: deque[tuple[Future | None, str]] = deque()
        self._last_write: Future | None = None
        self.started_ns = time.time_ns()  # (reports older than this are an earlier run's)
        self.inputs_in_out: set[str] = set()  # real paths of this run's inputs inside --out
        self.fresh_folders: dict[str, bool] = {}  # output folders: empty when first written
        self.writable_folders: dict[Path, tuple[int, int]] = {}  # and their name/path limits

    def protect(self, items: list[InputItem]) -> None:
        """Remember which of these inputs lie inside the output folder: an output of the run
        must never replace one (`--out .` beside the inputs made a heatmap of digit.png
        under that very name, and the next run explained the heatmap)."""
        if self.remote is not None:
            return
        root = os.path.realpath(self.local_out) + os.sep
        for item in items:
            if is_url(str(item.path)):
                continue
            real = os.path.realpath(item.path)
            if real.startswith(root):
                self.inputs_in_out.add(real)

    def _report_paths(self, stem: str) -> list[Path]:
        """The run's reports in OUT, .html first (the order the summary names them)."""
        return [Path(self.local_out) / f"{stem}.{kind}" for kind in reversed(REPORT_KINDS)]

    def check_report_names(self, stem: str) -> None:
        """The reports would replace an input of this run (a CSV named report.csv in --out):
        an OutputError, and the input is kept."""
        for report in self._report_paths(stem):
            path = Path(os.path.realpath(report))
            if str(path) in self.inputs_in_out:
                raise OutputError(
                    "the run's report would replace this input; choose an --out outside "
                    "the inputs' folder",
                    path,
                )

    def _free_to_write(
        self, item: InputItem, marker: Path, npy: Path, png: Path | None, shape: tuple
    ) -> None:
        """An input whose output would replace an input of this run, a folder, or a file
        igcli did not write (a user's photo.png in OUT), fails alone: the file is kept (see
        outputs.in_the_way). Only folders that held something when this run first wrote
        there are looked at for the last two."""
        for path in (marker, npy, png):
            if path is not None and str(path) in self.inputs_in_out:
                raise InputError(
                    f"its output {path.name} would replace an input of this run; "
                    "choose an --out outside the inputs' folder",
                    item.path,
                )
        for path in (marker, npy, png):
            if path is not None:
                self._writable(item, path)
        for path in (marker, npy, png):
            if path is None or self._empty_at_start(path.parent):
                continue
            what = in_the_way(path, marker, shape)
            if what is not None:
                raise InputError(
                    f"its output {path.name} would replace what is there ({what}); move "
                    "that, or choose another --out",
                    item.path,
                )

    def _writable(self, item: InputItem, path: Path) -> None:
        """An output this input cannot have (a name or path over the filesystem's limits, a
        folder in OUT it may not write) fails this input alone: found only when written, it
        ended the run with exit 6 and no reports, the other inputs explained and unreported.
        Folders are looked at once a run; one that changes later still stops it."""
        tmp = f".{path.name}.00000000.tmp"  # the longest name a write makes (atomic_write)
        folder = path.parent
        if folder not in self.writable_folders:
            try:
                known = folder
                while not known.exists() and known != known.parent:
                    known = known.parent  # (made when written: its nearest existing ancestor)
                writable = os.access(known, os.W_OK | os.X_OK)
            except OSError as exc:  # a path over the limits, say
                reason = f"its output folder is not usable ({os_reason(exc)})"
                raise InputError(reason, item.path) from None
            if not writable:
                raise InputError(f"its output folder {known} is not writable", item.path)
            try:
                limits = (os.pathconf(known, "PC_NAME_MAX"), os.pathconf(known, "PC_PATH_MAX"))
            except (OSError, ValueError):
                limits = (255, 4096)
            self.writable_folders[folder] = limits
        name_max, path_max = self.writable_folders[folder]
        if len(os.fsencode(tmp)) > name_max or len(os.fsencode(str(folder / tmp))) >= path_max:
            raise InputError(
                f"its output path is too long for the filesystem ({path.name}, "
                f"{len(os.fsencode(str(path)))} bytes in all)",
                item.path,
            )

    def _empty_at_start(self, folder: Path) -> bool:
        """Whether `folder` was empty (or absent) when this run first wrote there: then all
        it holds is this run's own."""
        key = str(folder)
        if key not in self.fresh_folders:
            try:
                with os.scandir(folder) as entries:
                    self.fresh_folders[key] = next(entries, None) is None
            except OSError:
                self.fresh_folders[key] = True  # absent: made by this run
        return self.fresh_folders[key]

    def process(self, items: list[InputItem], advance: Callable[[int], None] = _nothing) -> None:
        """Explain a group of inputs; with the gradient graph their points share model calls.
        A CSV goes row by row (see process_table); `advance(n)` counts finished inputs.
        Records and failures come out in input order (JSON lines promise it)."""
        todo: list[InputItem] = []
        try:
            for item in items:
                if self._row_wise(item) and not item.problem:
                    self._explain_files(todo)
                    todo = []
                    if item.is_table:  # counted by rows (see discovery.count_inputs)
                        self.process_table(item, advance)
                    else:  # a text file counts as one input
                        self.process_table(item)
                        advance(1)
                    continue
                earlier = self._resumable(item)
                if earlier is not None or item.problem:
                    self._explain_files(todo)
                    todo = []
                if earlier is not None:
                    self._resume(earlier)
                elif item.problem:
                    self._fail(item, InputError(item.problem, item.path))
                else:
                    todo.append(item)
                advance(1)
            self._explain_files(todo)
        finally:
            self._release()

    def _explain_files(self, todo: list[InputItem]) -> None:
        """Inputs read, then explained in shared calls where they can be; one by one when
        one cannot be read, to find it."""
        if len(todo) > 1:
            try:
                loaded = [(item, self.load(item)) for item in todo]
            except InputError:
                loaded = None  # one is at fault: found below, one by one
            if loaded is not None:
                self._explain_loaded(loaded)
                return
        for item in todo:
            try:
                self._explain_item(item)
            except InputError as exc:
                self._fail(item, exc)

    def load(self, item: InputItem) -> list:
        """The samples of an input; a remote one is fetched whole first, and its samples
        and errors name the URL."""
        from igcli.storage import URL

        if not isinstance(item.path, URL):
            return self.session.load(item.path, item.name)
        local = self._fetch(item.path)
        try:
            samples = self.session.load(local, item.name)
        except InputError as exc:
            raise InputError(exc.reason, item.path) from None
        for sample in samples:
            sample.path = item.path
        return samples

    def _fetch(self, url) -> Path:
        from igcli.storage import Fetcher

        if self.fetcher is None:
            self.fetcher = Fetcher(self.remote.staging / ".inputs" if self.remote else None)
        local = self.fetcher.local_copy(url)
        self._fetched.append(local)
        return local

    def _release(self) -> None:
        while self._fetched:
            self.fetcher.release(self._fetched.pop())

    def check_gradients_at(self, items: list[InputItem], tries: int = 3) -> None:
        """Run the gradient graph's self-check at the first readable of `items` (a plan's
        first inputs), so every shard and worker checks at the same input and records the
        same verdict."""
        for item in items[:tries]:
            if item.problem:
                continue
            try:
                if self._row_wise(item):
                    sample = next(
                        (r for r in self._rows(item) if not isinstance(r, RowError)), None
                    )
                else:
                    sample = self.load(item)[0]
            except (InputError, IndexError):
                continue
            finally:
                self._release()
            if sample is None:
                continue
            try:
                self.session.check_gradients(sample)
            except GradientError:
                raise  # --gradients graph and no graph that passes: the run stops (exit 7)
            except IgcliError:
                pass  # the input's own problem (a NaN output, say): its turn reports it
            return

    def _row_wise(self, item: InputItem) -> bool:
        """Inputs whose rows are inputs of their own, each failing alone: a CSV's rows, and
        the lines of a .txt or .jsonl file for a token model."""
        tokens = self.session.tokens is not None
        return item.is_table or (tokens and Path(str(item.path)).suffix.lower() in TEXT_SUFFIXES)

    def _iter_rows(self, path: Path, name: str):
        if self.session.tokens is not None and path.suffix.lower() in TEXT_SUFFIXES:
            return self.session.tokens.iter_text_file(path, name)
        return iter_table(path, self.session.prep, name)

    def _rows(self, item: InputItem):
        """The rows of a local or fetched CSV or text file; rows and errors name the input."""
        from igcli.storage import URL

        if not isinstance(item.path, URL):
            yield from self._iter_rows(item.path, item.name)
            return
        local = self._fetch(item.path)
        try:
            for row in self._iter_rows(local, item.name):
                if isinstance(row, RowError):
                    row.error = InputError(row.error.reason, item.path)
                else:
                    row.path = item.path
                yield row
        except InputError as exc:
            raise InputError(exc.reason, item.path) from None

    def process_table(self, item: InputItem, advance: Callable[[int], None] = _nothing) -> None:
        """A CSV (or a token model's text file) a block of rows at a time, each row an input
        of its own: its record (`<name>_row<k>.record.json`), its resume, its failure.
        Memory stays flat however long the file, and an interrupt loses no finished row."""
        chunk: list = []
        try:
            for row in self._rows(item):
                chunk.append(row)
                if len(chunk) >= self.group_size():
                    self._process_rows(item, chunk)
                    advance(len(chunk))
                    chunk = []
        except InputError as exc:  # the whole file, or its rest: the rows read are explained
            self._process_rows(item, chunk)
            advance(len(chunk))
            self._fail(item, exc)
            return
        finally:
            self._release()
        self._process_rows(item, chunk)
        advance(len(chunk))

    def _process_rows(self, item: InputItem, rows: list) -> None:
        """The good rows between two bad ones share calls; records and failures come out
        in row order."""
        todo = []
        for row in rows:
            unit = InputItem(item.path, row.name)
            earlier = None if isinstance(row, RowError) else self._resumable(unit)
            if earlier is not None or isinstance(row, RowError):
                self._explain_loaded(todo)
                todo = []
            if earlier is not None:
                self._resume(earlier)
            elif isinstance(row, RowError):
                self._fail(unit, row.error)
            else:
                todo.append((unit, [row]))
        self._explain_loaded(todo)

    def _explain_loaded(self, todo: list[tuple[InputItem, list]]) -> None:
        """Inputs with their samples (files read, CSV or text rows) in shared calls; one by
        one, from the samples already read, when a call fails, to find the one at fault."""
        if len(todo) > 1 and self._explain_together(todo):
            return
        for unit, samples in todo:
            try:
                self._submit_item(unit, self._attribute([(unit, samples)]))
            except InputError as exc:
                self._fail(unit, exc)

    def group_size(self) -> int:
        """How many inputs' path points fit in one model call (1 for finite differences)."""
        if self.session.graph is None:
            return 1
        per_input = self.settings.points_per_input * len(self.targets or [0])
        return max(1, self.session.runner.batch_size // per_input)

    def _resumable(self, item: InputItem) -> list[dict] | None:
        """An earlier run's records of `item` (--skip-existing), or None: also None when
        --targets-from now gives the input other targets (the settings hash holds only the
        run's --targets; a table changed from 3 to 5 resumed target 3)."""
        if not self.outputs.skip_existing:
            return None
        records = self._existing(item)
        try:
            wanted = self.targets_for(item) if self.targets_for is not None else None
        except InputError:
            return None  # the input fails when explained, alone
        if records and wanted is not None and {r.get("target") for r in records} != set(wanted):
            return None
        return records

    def _resume(self, records: list[dict]) -> None:
        self.report.resumed += 1
        self._redraw_with_the_run(records)
        self._accept(records)  # JSON lines as if computed now: a pipeline misses nothing

    def _redraw_with_the_run(self, records: list[dict]) -> None:
        """Resumed heatmaps join the run's shared colour scale: they are drawn again with it
        in `finish`, from their .npy, as this run's own are (they kept the scale of the run
        that drew them, so one folder mixed two scales)."""
        if not (self.outputs.shared_scale and self.outputs.heatmaps) or self.remote is not None:
            return
        if not self.session.prep.is_image_model:
            return
        for r in records:
            if r.get("heatmap_file") and r.get("attributions_file"):
                # through output_stem, as every output: a record edited to name
                # ../../photo.png had a user's picture outside OUT redrawn as a panel
                try:
                    npy = output_stem(self.local_out, str(r["attributions_file"]))
                    png = output_stem(self.local_out, str(r["heatmap_file"]))
                except OutputError:
                    continue
                light = Attribution.from_record(r, self.session.prep)
                self._defer(light, r["input"], r["name"], npy, png)

    def _defer(self, light: Attribution, sample_path, sample_name: str, npy: Path, png: Path):
        """A heatmap drawn in `finish` with the shared scale, from `npy`; `_reload` reads
        its input again by the path and name kept here."""
        light.extra = dict(light.extra, sample_path=sample_path, sample_name=sample_name)
        self.deferred.append((light, npy, png))

    def _existing(self, item: InputItem) -> list[dict] | None:
        if self.remote is None:
            return existing_records(self.local_out, item, self.settings_hash)
        rel = item.name + ".record.json"  # resumed from one listing of the prefix
        try:
            output_stem(self.local_out, rel)
        except OutputError:
            return None

        # (a record's files are names inside OUT, as result_file says for local ones: one
        # edited to name ../../photo.png is redone, never used)
        def exists(name: str) -> bool:
            return plain_parts(name) is not None and self.remote.exists(name)

        return usable_records(self.remote.read_text(rel), self.settings_hash, exists)

    def _accept(self, records: list[dict]) -> None:
        self.report.results.extend(records)
        for r in records:
            self._say(r)

    def _say(self, entry: dict) -> None:
        """`entry` as a JSON line (with --json), out once every write queued so far is done
        (input order kept)."""
        if self.outputs.json_lines:
            self.outbox.append((self._last_write, json_line(entry)))
            self._flush()

    def _flush(self) -> None:
        while self.outbox:
            write, line = self.outbox[0]
            if write is not None and not (write.done() and write.exception() is None):
                return  # still writing, or failed: the error surfaces from pending
            self.outbox.popleft()
            self.emit(line)

    def _fail(self, item: InputItem, exc: IgcliError | str) -> None:
        model = str(self.session.model_path)
        if isinstance(exc, IgcliError) and str(exc.path) == model:  # a model call at this input
            exc = InputError(exc.reason, item.path)
        entry = failure_entry(str(item.path), exc, item.name)
        self.report.failures.append(entry)
        self.warn(f"error: {exc}")
        self._say(entry)

    def _explain_together(self, loaded: list[tuple[InputItem, list]]) -> bool:
        """All inputs' samples in shared calls; False (nothing written) when any fails."""
        try:
            explained = self._attribute(loaded)
        except InputError:
            return False  # one is at fault: the caller explains them one by one to find it
        k = 0
        for item, samples in loaded:
            try:
                self._submit_item(item, explained[k : k + len(samples)])
            except InputError as exc:
                self._fail(item, exc)
            k += len(samples)
        return True

    def _explain_item(self, item: InputItem) -> list[dict]:
        samples = self.load(item)
        return self._submit_item(item, self._attribute([(item, samples)]))

    def _attribute(self, loaded: list[tuple[InputItem, list]]) -> list[list[Attribution]]:
        """One attribute_many call for the samples of several inputs, each input with its
        own targets when --targets-from gave them."""
        samples = [x for _, xs in loaded for x in xs]
        per_sample = None
        if self.targets_for is not None:
            per_sample = [self.targets_for(item) for item, xs in loaded for _ in xs]
        return self.session.attribute_many(
            samples, self.targets, self.settings, targets_per_sample=per_sample
        )

    def _submit_item(self, item: InputItem, explained: list[list[Attribution]]) -> list[dict]:
        """Name the outputs of one input, queue them for the writer thread and accept its
        records (see _submit)."""
        # OUT's real path: absolute, so that naming each output asks for no working folder
        out = root = real_out(self.local_out)
        jobs: list[tuple[Attribution, Path, Path | None]] = []
        records = []
        folders: dict[str, str] = {}  # resolved once for this input's outputs
        try:
            marker = record_path(out, item.name, folders)
        except OutputError as exc:  # this input's name, not the run, is at fault
            raise InputError(exc.reason, item.path) from None
        # the file as it was read: a CSV replaced during the run kept being read from the
        # old one's handle, and rows stamped afterwards with the new file's size and time
        # were resumed later as results for it (old values, exit 0)
        read = {a.sample.stamp for results in explained for a in results}
        stamp = read.pop() if len(read) == 1 and None not in read else input_stamp(item.path)
        for results in explained:
            multi = len(results) > 1
            for a in results:
                stem = a.sample.name + (f".target{a.target}" if multi else "")
                try:
                    npy = output_stem(out, stem + ".npy", folders)
                    png = None
                    if self.outputs.heatmaps:
                        png = output_stem(out, stem + ".png", folders)
                except OutputError as exc:
                    raise InputError(exc.reason, item.path) from None
                self._free_to_write(item, marker, npy, png, (1, *a.attributions.shape))
                record = a.record(
                    npy.relative_to(root).as_posix(),
                    png.relative_to(root).as_posix() if png else None,
                )
                record["settings_hash"] = self.settings_hash
                record["input_stamp"] = stamp
                records.append(record)
                jobs.append((a, npy, png))
        held = sum(_held_bytes(a) for a, _, _ in jobs)
        self._submit(lambda: self._write_item(item, jobs, records, marker), held, records)
        return records

    def _write_item(self, item: InputItem, jobs, records: list[dict], marker: Path) -> None:
        """Attributions, heatmaps, then the completion marker: the marker is always last
        (in object storage too: uploaded after the files it names). The paths are those
        _submit_item checked."""
        style = self.outputs.style
        hashes = {}  # each file as written: a resume redoes one replaced since
        for a, npy, png in jobs:
            # a heatmap on the run's shared scale is drawn by finish(), when the scale is known
            defer = (
                png is not None and self.outputs.shared_scale and is_image_like(a.sample, a.prep)
            )
            if defer:
                png = None
            written = a.write_to(npy, png, style=style)
            stale = npy.with_suffix(".png")
            if not self.outputs.heatmaps and str(stale) not in self.inputs_in_out:
                drop_stale_heatmap(stale)
            hashes.update({self._rel(p): sha for p, sha in written.items()})
            if defer:
                # with the sum the record has (float64): the .npy's float32 sum, read back,
                # moved the caption's error a digit from the report's (0.000744% -> 0.000745%)
                light = dataclasses.replace(
                    a, attributions=None, baseline=None, sample=None,
                    completeness_sum=a.attribution_sum,
                )  # fmt: skip
                self._defer(light, a.sample.path, a.sample.name, npy, npy.with_suffix(".png"))
            if self.remote is not None:
                # kept: arrays the shared scale draws from, and the vectors the report's
                # per-feature section reads (inputs that are no image)
                self.remote.upload(
                    self._rel(npy), keep=defer or not is_image_like(a.sample, a.prep)
                )
                if png is not None:
                    self.remote.upload(self._rel(png))
        marker_data = {"input": str(item.path), "records": records, "file_sha256": hashes}
        atomic_write_text(marker, json.dumps(marker_data) + "\n")
        if self.remote is not None:
            self.remote.upload(self._rel(marker))

    def _rel(self, path: Path) -> str:
        return path.relative_to(real_out(self.local_out)).as_posix()

    def _submit(self, job: Callable[[], None], held: int, records: list[dict]) -> None:
        """Run file writing beside the next model calls, which hold `held` bytes of arrays
        until written; about a group in flight at most. The `records` of the write are
        accepted as it is queued, before any wait: an interrupt during the wait left a
        result written but missing from the report."""
        self._last_write = self.writer.submit(job)
        self.pending.append((self._last_write, held))
        self.pending_bytes += held
        self._accept(records)
        try:
            limit = max(self.MIN_PENDING, self.group_size())
            while len(self.pending) > limit or (
                len(self.pending) > 1 and self.pending_bytes > self.MAX_PENDING_BYTES
            ):
                self._wait_oldest()
        finally:
            self._flush()

    def _wait_oldest(self) -> None:
        future, held = self.pending.popleft()
        self.pending_bytes -= held
        future.result()

    def drain(self) -> None:
        """Wait for every queued write; re-raises a write's error (a full disk, say), after
        the lines of the writes done before it are out."""
        try:
            while self.pending:
                self._wait_oldest()
        finally:
            self._flush()

    def withdraw_reports(self, stem: str) -> list[tuple[str, bool]]:
        """After an output error (a full disk) stopped the run once it had written results:
        an earlier run's reports in OUT no longer describe what is there, and nothing will
        write new ones; nor do this run's, where the disk filled while it wrote them.
        igcli's own are removed (another file of that name stays, as a remote --out's
        reports do); returns (name, whether this run wrote it) of each."""
        if self.remote is not None or (self._last_write is None and not self.report.results):
            return []  # (nothing written: the earlier reports still hold)
        removed = []
        for path in self._report_paths(stem):
            if os.path.realpath(path) in self.inputs_in_out:
                continue  # (an input of this run keeps its name, see check_report_names)
            if is_igcli_report(path):
                with contextlib.suppress(OSError):
                    own = os.stat(path).st_mtime_ns >= self.started_ns
                    path.unlink()
                    removed.append((path.name, own))
        return removed

    def release_reports(self) -> None:
        """Let another run write this folder's reports (see outputs.lock_reports)."""
        if self.reports_lock is not None:
            unlock_reports(*self.reports_lock)
            self.reports_lock = None
        if self.folder_lock is not None:
            unlock_folder(*self.folder_lock)
            self.folder_lock = None

    def close(self) -> None:
        """Wait for the writes, then stop the writer thread."""
        try:
            self.drain()
        finally:
            self.writer.shutdown(wait=True)

    def remove_write_leftovers(self) -> None:
        """Temporary files that a killed writer (a Dask worker process) left beside this
        run's outputs; every output is whole by now."""
        out = self.local_out

        def files():
            for r in self.report.results:
                for key in ("attributions_file", "heatmap_file"):
                    if r.get(key):
                        yield out / r[key]
                yield out / (r["name"] + ".record.json")

        remove_write_leftovers(files)

    def cleanup(self) -> None:
        """Remove the local staging and fetch folders of object storage (after the report)."""
        if self.remote is not None:
            self.remote.cleanup()
        if self.fetcher is not None:
            self.fetcher.cleanup()

    def finish(self) -> None:
        """Wait for the writer, then draw the heatmaps that share one colour scale: a second
        pass over the saved .npy files, so memory stays flat however many images there are."""
        self.close()
        if not self.deferred:
            return
        self.deferred.sort(key=lambda entry: str(entry[1]))  # writers finish in any order
        from igcli.render import SharedScale, select_sign

        style = self.outputs.style
        scale = SharedScale(style.clip_percentile)
        for see in (scale.see_peak, scale.see_values):
            for light, npy, _ in self.deferred:
                a = self._reload(light, npy)
                see(select_sign(attribution_map(a.attributions, a.sample, a.prep, style.reduce),
                                style.sign))  # fmt: skip
        vmax = scale.value()
        for light, npy, png in self.deferred:
            atomic_save_png(png, self._reload(light, npy).picture(style, vmax=vmax))
            if self.remote is not None:
                self.remote.upload(self._rel(png))
                npy.unlink(missing_ok=True)  # uploaded when written; drawn now
        self.deferred.clear()

    def _reload(self, light: Attribution, npy: Path) -> Attribution:
        """An attribution as saved: its array from the .npy, its input read again."""
        name = light.extra["sample_name"]
        item = InputItem(light.extra["sample_path"], name)
        try:
            sample = next(s for s in self.load(item) if s.name == name)
        finally:
            self._release()
        values = np.load(npy, allow_pickle=False)[0].astype(np.float64)
        return dataclasses.replace(light, attributions=values, sample=sample)

    def apply_gate(self) -> None:
        """Hold the results to --max-completeness-error in the report (its verdict says)."""
        limit = self.outputs.max_completeness_error
        if limit is not None:
            self.report.apply_gate(limit)
