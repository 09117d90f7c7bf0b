"""Inputs and comparisons for the scale-out tests (shards, object storage, Dask)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.test_cli import DIGIT_PNGS

# Per-machine or per-run numbers: equal runs may differ in these and nothing else (the memory
# budget is half of what is available at the start, the cost of a row measured).
# what differs between equal runs: timings, and the input file's size and mtime (a copy of
# the inputs, or the same files in object storage, where there is none)
TIMINGS = {"wall_time_s", "prepare_time_s", "model_time_s", "started", "input_stamp"}
MEASURED = {"memory_budget", "memory_per_row", "batch_size", "batch_size_cap"}  # tuned per run
RUN_SETTINGS = (
    TIMINGS | MEASURED | {"shard", "shard_source", "merged_from", "shards", "dask", "workers"}
)


def make_digits(folder: Path, n: int) -> list[Path]:
    """`n` distinct digit images: the samples, shifted and with seeded noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = [np.asarray(Image.open(p).convert("L"), dtype=np.float64) for p in DIGIT_PNGS]
    out = []
    for k in range(n):
        img = np.roll(base[k % len(base)], (k // len(base)) % 5 - 2, axis=1)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        path = folder / f"d{k:04d}.png"
        Image.fromarray(img).save(path)
        out.append(path)
    return out


def record_without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMINGS}


def comparable(report: dict, inputs_root: str | None = None) -> dict:
    """A report.json without what legitimately differs between equal runs (timings, how the
    run was split); `inputs_root` is cut from input paths (local vs object storage)."""

    def fix(r: dict) -> dict:
        r = record_without_timing(r)
        if inputs_root is not None and isinstance(r.get("input"), str):
            r["input"] = r["input"].replace(inputs_root, "<in>")
        return r

    settings = {k: v for k, v in report["settings"].items() if k not in RUN_SETTINGS}
    if inputs_root is not None:
        settings.pop("plan", None)  # a hash of the input paths
    return {
        "settings": settings,
        "summary": report["summary"],
        "gate": report["gate"],
        "results": [fix(r) for r in report["results"]],
        "failures": [fix(r) for r in report["failures"]],
        "skipped": report["skipped"],
        "model_sha256": report["model_sha256"],
    }


def output_files(out: Path, inputs_root: str | None = None) -> dict[str, bytes]:
    """Every output file's bytes by name, records without their timings (and with
    `inputs_root` cut from their input paths)."""
    files = {}
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.name.startswith("report"):
            continue
        rel = path.relative_to(out).as_posix()
        data = path.read_bytes()
        if rel.endswith(".record.json"):
            rec = json.loads(data)
            rec["records"] = [record_without_timing(r) for r in rec["records"]]
            data = json.dumps(rec, sort_keys=True)
            if inputs_root is not None:
                data = data.replace(inputs_root, "<in>")
            data = data.encode()
        files[rel] = data
    return files


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def one_process_run(inputs: Path, out: Path, steps: tuple[str, ...]) -> Path:
    """The reference every split run is compared with: one `igcli explain` over `inputs`."""
    from tests.test_cli import DIGITS, run

    result = run("explain", DIGITS, inputs, "--out", out, *steps, "-q", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    return out
