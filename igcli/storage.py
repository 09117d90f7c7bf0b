"""Object storage (s3://, gs://, az://, memory://, ...) through fsspec, behind `igcli[cloud]`.

igcli's readers and writers work on local files: they check file types, sizes and headers
on open descriptors, and write atomically by renaming. A remote input is therefore fetched
whole into a local staging folder before it is read, and a remote output is written there
first and then uploaded as a whole object (an object store shows an upload whole or not at
all), the record last, as on disk. `--skip-existing` lists the output prefix once.

Local paths never import fsspec; `file://` URLs are local paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from igcli.errors import IgcliError, InputError, OutputError, UsageError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class URL(str):
    """A remote file or folder, e.g. "s3://bucket/runs/1". A str, so reports and messages
    show it as given; with the few Path-like properties igcli's loops use."""

    @property
    def _path(self) -> str:
        return self.split("://", 1)[1]

    @property
    def name(self) -> str:
        return posixpath.basename(self._path.rstrip("/"))

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> URL:
        scheme, path = self.split("://", 1)
        return URL(f"{scheme}://{posixpath.dirname(path.rstrip('/'))}")

    def __truediv__(self, rel: str) -> URL:
        return URL(self.rstrip("/") + "/" + str(rel).lstrip("/"))

    def relative_to_url(self, root: str) -> str:
        return self[len(root.rstrip("/")) + 1 :]


def is_url(text: object) -> bool:
    """A remote location (file:// is a local path)."""
    return isinstance(text, str) and bool(_SCHEME.match(text)) and not text.startswith("file://")


def location(text: str | os.PathLike) -> Path | URL:
    """A command line's path or URL: a Path for local files (file:// included), else a URL."""
    if isinstance(text, URL):
        return text
    if isinstance(text, os.PathLike):
        return Path(text)
    if text.startswith("file://"):
        return Path(unquote(urlsplit(text).path))
    return URL(text) if is_url(text) else Path(text)


def local_path(text: str | os.PathLike, what: str) -> Path:
    """A local path, file:// URLs included, for what reads local files only (`what`: its
    name in the message): "file:///x.png" lost a slash in Path() and was "no such file"."""
    where = location(text)
    if not isinstance(where, Path):
        raise UsageError(f"{what} reads local files and file:// URLs, not object storage", text)
    return where


def filesystem(url: str):
    """(fsspec filesystem, path within it) for a URL; a usage error when fsspec is missing."""
    try:
        import fsspec
    except ImportError:
        raise UsageError(
            f"{url}: object storage needs fsspec: pip install 'igcli[cloud]'"
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(url, **_store_options(url))
    except (ImportError, ValueError) as exc:
        raise UsageError(f"{url}: cannot open this store ({exc})") from None
    if url.startswith(_S3) and "retries" not in fsspec.config.conf.get("s3", {}):
        fs.retries = S3_ATTEMPTS  # s3fs's own tries, around botocore's (no __init__ option)
    return fs, path


# S3 calls give up after S3_ATTEMPTS tries of at most S3_TIMEOUTS seconds each, twice over
# (botocore's tries within s3fs's): a server that took connections and never answered held a
# run silently for 400 s and more (s3fs's 5 retries of botocore's 5 attempts of 15 s).
S3_TIMEOUTS = {"connect_timeout": 10, "read_timeout": 20}
S3_ATTEMPTS = 2
_S3 = ("s3://", "s3a://")


def _store_options(url: str) -> dict:
    """Bounded timeouts and retries for S3, unless fsspec's configuration (FSSPEC_S3_*)
    sets its own."""
    if not url.startswith(_S3):
        return {}
    from fsspec.config import conf

    given = conf.get("s3", {})
    options: dict = {}
    if "config_kwargs" not in given:
        options["config_kwargs"] = {**S3_TIMEOUTS, "retries": {"total_max_attempts": S3_ATTEMPTS}}
    return options


# A write's whole time is bounded too: a PUT waits for the server's "100 Continue" before
# sending its body, and aiohttp's read timeout does not cover that wait (it hung for good).
WRITE_SECONDS = 120  # and a second for each MB (from 1 MB/s: a stalled upload, not slow)


def _bounded(fs, size: int) -> dict:
    """fsspec's timeout for one write of `size` bytes, where the store is async (s3fs,
    gcsfs, adlfs): it cancels the call and raises FSTimeoutError."""
    if not getattr(fs, "async_impl", False):
        return {}
    return {"timeout": WRITE_SECONDS + size / 1e6}


def _remote_reason(exc: BaseException) -> str:
    """One line on a store's error: a missing bucket was "no such object", and botocore's
    "Parameter validation failed:" lost the line after it that says what failed."""
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if isinstance(exc, FileNotFoundError):
        said = " ".join(text).lower()
        return "no such bucket" if "bucket does not exist" in said else "no such object"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if type(exc).__name__ == "FSTimeoutError":  # (its text is empty)
        return "the store did not answer in time"
    if not text:
        return type(exc).__name__
    return f"{text[0]} {text[1]}" if text[0].endswith(":") and len(text) > 1 else text[0]


# A report or manifest is read whole: 1 GiB holds about 700,000 records of a report.json
# (some 1.5 kB each) and millions of manifest lines; beyond it, no file igcli wrote.
MAX_WHOLE_FILE_BYTES = 1 << 30


def read_bytes(
    where: str | os.PathLike,
    error: type[IgcliError] = UsageError,
    *,
    failing: str = "cannot read",
    limit: int = MAX_WHOLE_FILE_BYTES,
) -> bytes:
    """A whole (small) file or object: manifests, reports, records. A local one must be a
    regular file of at most `limit` bytes: a FIFO, a device (/dev/zero filled the memory
    until the kernel killed igcli) or a larger file is `error` "<failing> (<why>)"."""
    loc = location(where)
    try:
        if isinstance(loc, URL):
            _refuse_if_stalled(loc, failing, error, where)
            fs, path = filesystem(loc)
            return fs.cat_file(path)
        from igcli.files import file_size, open_regular

        try:
            fh = open_regular(loc, error)
        except IgcliError as exc:
            raise error(f"{failing} ({exc.reason})", where) from None
        with fh:
            size = file_size(fh)
            data = fh.read(limit + 1) if size <= limit else b""
            if size > limit or len(data) > limit:  # (grown since the fstat)
                raise error(
                    f"{failing} ({max(size, len(data)):,} bytes, over the "
                    f"{limit / (1 << 30):g} GiB igcli reads of a report or manifest)",
                    where,
                )
            return data
    except IgcliError:
        raise
    except Exception as exc:
        if not isinstance(loc, URL) and isinstance(exc, OSError):  # a local file's words
            from igcli.files import os_reason

            raise error(f"{failing} ({os_reason(exc)})", where) from None
        raise error(f"{failing} ({_failed(loc, exc)})", where) from None


def read_many(urls: list[str]) -> dict[str, bytes | Exception]:
    """Small objects fetched concurrently (fsspec's batched cat), each its bytes or the
    error reading it; never raises for one object."""
    if not urls:
        return {}
    try:
        fs, _ = filesystem(urls[0])  # (ftp:// connects here)
        paths = {fs._strip_protocol(u): u for u in urls}
        got = fs.cat(list(paths), on_error="return")
    except IgcliError:
        raise
    except Exception as exc:  # the store itself: every object unread
        return dict.fromkeys(urls, exc)
    out: dict[str, bytes | Exception] = {}
    for path, url in paths.items():
        value = got.get(path, FileNotFoundError(url))
        out[url] = value if isinstance(value, (bytes, Exception)) else OSError(url)
    return out


def write_bytes(url: str, data: bytes) -> None:
    """One whole object."""
    fs, path = filesystem(url)
    _written(url, "cannot write", lambda: fs.pipe_file(path, data, **_bounded(fs, len(data))))


def upload(local: Path, url: str) -> None:
    """A finished local file as one whole object."""
    fs, path = filesystem(url)
    size = os.path.getsize(local)
    _written(url, "cannot upload", lambda: fs.put_file(str(local), path, **_bounded(fs, size)))


# Stores (scheme://bucket) a call timed out on: the run's later calls there fail at once,
# not after a timeout each. A frozen server held a run for minutes per write (the queued
# outputs, then four reports) and some 80 s per input it was to fetch. A new run's
# check_writable tries again.
_STALLED: set[str] = set()
STALLED_REASON = "the store did not answer in time earlier in this run; not tried again"


def _store(url: str) -> str:
    scheme, _, rest = str(url).partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _stalled(url: str) -> bool:
    return _store(url) in _STALLED


def _refuse_if_stalled(url, failing: str, error: type[IgcliError], where=None) -> None:
    """`error` "<failing> (not tried again)" for a call to a store that stalled before."""
    if _stalled(url):
        raise error(f"{failing} ({STALLED_REASON})", where if where is not None else url)


def _failed(url: str, exc: BaseException) -> str:
    """The one-line reason of a store call's error; a timeout marks the store stalled."""
    if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
        _STALLED.add(_store(url))
    return _remote_reason(exc)


def _written(url: str, failing: str, write) -> None:
    """Run `write`; an OutputError "<failing> (<why>)" when it fails."""
    _refuse_if_stalled(url, failing, OutputError)
    try:
        write()
    except Exception as exc:
        raise OutputError(f"{failing} ({_failed(url, exc)})", url) from None


def isdir(url: str) -> bool:
    if _stalled(url):
        return False  # (read as an object, whose fetch then fails at once)
    try:
        fs, path = filesystem(url)  # (ftp:// connects here)
        fs.invalidate_cache(path)
        return bool(fs.isdir(path))
    except IgcliError:
        raise
    except Exception as exc:
        _failed(url, exc)
        return False


def list_files(url: str, recursive: bool) -> list[URL]:
    """The objects under a folder URL (sorted); subfolders only when recursive."""
    fs, path = filesystem(url)
    try:
        fs.invalidate_cache(path)
        if recursive:
            found = fs.find(path)
        else:
            found = [e["name"] for e in fs.ls(path, detail=True) if e.get("type") == "file"]
    except Exception as exc:
        raise UsageError(f"cannot list ({_failed(url, exc)})", url) from None
    return sorted(URL(fs.unstrip_protocol(p)) for p in found)


def check_writable(url: str) -> None:
    """Fail early when the output prefix cannot be written (one small object, removed).
    The error names the prefix, not the probe; a write that finds nothing to write into
    means the bucket (container) does not exist."""
    odd = [part for part in URL(url)._path.split("/")[1:] if part in (".", "..")]
    if odd:  # a store takes them as they are: s3://b/../x wrote the key "../x"
        raise UsageError(
            f"an output prefix in object storage cannot hold {odd[0]!r}: stores keep it "
            "literally in the key; name the prefix plainly",
            url,
        )
    probe = URL(url) / f".igcli-write-check.{os.getpid()}"
    _STALLED.discard(_store(url))
    try:
        fs, path = filesystem(probe)  # (ftp:// connects here)
        fs.pipe_file(path, b"", **_bounded(fs, 0))
    except IgcliError:
        raise
    except FileNotFoundError:
        bucket = URL(url)._path.split("/", 1)[0]
        raise OutputError(f"cannot write (bucket {bucket!r} does not exist)", url) from None
    except Exception as exc:
        raise OutputError(f"cannot write ({_remote_reason(exc)})", url) from None
    with contextlib.suppress(Exception):
        fs.rm_file(path)


class RemoteOutputs:
    """An output prefix in object storage, mirrored by a local staging folder.

    Files are written under `staging` exactly as a local run writes them (atomically), then
    uploaded whole with `upload(rel)`; the record of an input goes up last, so a record in
    the store means its files are there. `exists(rel)` answers from one listing of the
    prefix made on first use (what --skip-existing needs), kept up to date by uploads.
    """

    def __init__(self, url: str, staging: Path | None = None) -> None:
        self.url = URL(str(url).rstrip("/"))
        self.staging = staging or Path(tempfile.mkdtemp(prefix="igcli-stage-"))
        self._owns_staging = staging is None
        self._listing: set[str] | None = None

    def __reduce__(self):  # sent to Dask workers: each stages in its own folder
        return (RemoteOutputs, (self.url,))

    def upload(self, rel: str, keep: bool = False) -> None:
        """Upload a staged file, then drop the local copy unless `keep` (the run reads it
        again): a run to object storage needs local disk for the files in flight, not for
        its whole output."""
        upload(self.staging / rel, self.url / rel)
        if self._listing is not None:
            self._listing.add(rel)
        if not keep:
            (self.staging / rel).unlink(missing_ok=True)

    def listing(self) -> set[str]:
        if self._listing is None:
            fs, path = filesystem(self.url)
            try:
                fs.invalidate_cache(path)
                found = fs.find(path) if fs.exists(path) else []
            except Exception as exc:
                raise OutputError(f"cannot list ({_remote_reason(exc)})", self.url) from None
            root = path.rstrip("/") + "/"
            self._listing = {p[len(root) :] for p in found if p.startswith(root)}
        return self._listing

    def exists(self, rel: str) -> bool:
        return rel in self.listing()

    def read_text(self, rel: str) -> str | None:
        if not self.exists(rel):
            return None
        try:
            return read_bytes(self.url / rel, OutputError).decode("utf-8")
        except (IgcliError, UnicodeDecodeError):
            return None

    def cleanup(self) -> None:
        if self._owns_staging:
            shutil.rmtree(self.staging, ignore_errors=True)


class Fetcher:
    """Remote inputs (and baselines) fetched whole into a local folder, to be read by the
    same careful readers as local files."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or Path(tempfile.mkdtemp(prefix="igcli-fetch-"))

    def local_copy(self, url: str, error: type[IgcliError] = InputError) -> Path:
        """A local file holding the object; named like it, so its suffix still tells the
        reader what it is."""
        key = hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        local = self.folder / key / (URL(url).name or "object")
        if local.is_file():
            return local
        _refuse_if_stalled(url, "cannot fetch", error)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".part")
        try:
            fs, path = filesystem(url)  # (ftp:// connects here)
            fs.get_file(path, str(tmp))
            os.replace(tmp, local)
        except IgcliError:
            raise
        except Exception as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise error(f"cannot fetch ({_failed(url, exc)})", url) from None
        return local

    def release(self, local: Path) -> None:
        """Forget a fetched input once it is explained (disk stays flat)."""
        with contextlib.suppress(OSError):
            shutil.rmtree(local.parent)

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


_FETCHER: Fetcher | None = None


def cached_copy(url: str, error: type[IgcliError] = UsageError) -> Path:
    """A process-wide local copy of a small object used over and over (a baseline file)."""
    global _FETCHER
    if _FETCHER is None:
        import atexit

        _FETCHER = Fetcher()
        atexit.register(_FETCHER.cleanup)
    return _FETCHER.local_copy(url, error)


def relative_link(root: str, rel: str, out_dir: str) -> str:
    """`root/rel` as seen from `out_dir` (both folders, local paths or URLs of one store);
    absolute when no relative link reaches it: the object's URL, or a local file's absolute
    path from a report in object storage."""
    target = f"{root.rstrip('/')}/{rel}"
    if not is_url(root) and is_url(out_dir):
        return Path(os.path.abspath(target)).as_posix()
    if is_url(root) or is_url(out_dir):
        a, b = root.split("://", 1), out_dir.split("://", 1)
        if len(a) != 2 or len(b) != 2 or a[0] != b[0] or a[1].split("/")[0] != b[1].split("/")[0]:
            return target
        return posixpath.relpath("/" + target.split("://", 1)[1], "/" + b[1])
    try:
        return os.path.relpath(os.path.abspath(target), os.path.abspath(out_dir)).replace(
            os.sep, "/"
        )
    except ValueError:  # another drive (Windows)
        return Path(os.path.abspath(target)).as_posix()
