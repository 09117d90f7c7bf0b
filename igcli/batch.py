"""Explaining many inputs: discovery, naming, sharding, resuming, and the run loop.

Outputs mirror the input tree under --out, so two `img.png` in different folders never
collide. Each finished input leaves `<name>.record.json` beside its .npy and .png, written
last: it marks the input complete, which is what --skip-existing checks, and lets the final
report include inputs explained by an earlier, interrupted run.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from igcli.discovery import (  # noqa: F401  (re-exported for run.py and tests)
    Discovery,
    InputItem,
    discover,
    in_shard,
    parse_shard,
)
from igcli.errors import IgcliError, InputError
from igcli.explain import Explained, Explainer
from igcli.inputs import load_samples
from igcli.outputs import atomic_save_npy, atomic_save_png, atomic_write_text, output_stem
from igcli.report import RunReport, failure_entry, json_line, percent
from igcli.visualize import HeatmapStyle, attribution_map, draw, is_image_like


def record_path(out_dir: Path, name: str) -> Path:
    return output_stem(out_dir, name + ".record.json")


def existing_records(out_dir: Path, item: InputItem, model_path: Path) -> list[dict] | None:
    """Records of a complete earlier explanation newer than the model, else None."""
    marker = record_path(out_dir, item.name)
    try:
        if marker.stat().st_mtime < model_path.stat().st_mtime:
            return None
        records = json.loads(marker.read_text())["records"]
    except (OSError, ValueError, KeyError):
        return None
    for r in records:
        for key in ("attributions_file", "heatmap_file"):
            if r.get(key) and not (out_dir / r[key]).is_file():
                return None
    return records


@dataclass
class RunSettings:
    out_dir: Path
    style: HeatmapStyle
    shared_scale: bool = False
    json_lines: bool = False
    skip_existing: bool = False
    max_completeness_error: float | None = None


def _caption(e: Explained) -> str:
    r = e.record
    err = percent(r.rel_error)
    return (
        f"completeness error {err} (sum {r.attribution_sum:.4g}, F(x)-F(b) {r.delta:.4g})"
        f" \u00b7 {r.steps} steps {r.method} \u00b7 {r.gradient_source}"
    )


def _title(e: Explained) -> str:
    r = e.record
    label = f" '{r.label}'" if r.label else ""
    return f"{Path(r.input).name} - target {r.target}{label} (score {r.f_input:.4g})"


class BatchRun:
    """The loop over inputs: explain, write outputs atomically, report, never stop on one."""

    def __init__(
        self,
        explainer: Explainer,
        settings: RunSettings,
        report: RunReport,
        emit: Callable[[str], None],
        warn: Callable[[str], None],
    ) -> None:
        self.explainer, self.settings, self.report = explainer, settings, report
        self.emit, self.warn = emit, warn
        self.deferred: list[tuple[Explained, Path]] = []  # heatmaps waiting for a shared scale
        # ONNX Runtime releases the GIL, so PNG encoding overlaps with the next input's calls.
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="igcli-writer")
        self.pending: deque[Future] = deque()

    MAX_PENDING = 4  # bounds memory: finished explanations waiting to be written

    def process(self, items: list[InputItem]) -> None:
        """Explain a group of inputs; with the gradient graph their points share model calls."""
        todo = []
        for item in items:
            if self._resumed(item):
                continue
            if item.problem:
                self._fail(str(item.path), InputError(item.problem, item.path))
                continue
            todo.append(item)
        if len(todo) > 1 and self._explain_together(todo):
            return
        for item in todo:
            try:
                records = self._explain_item(item)
            except InputError as exc:
                self._fail(str(item.path), exc)
                continue
            self._accept(records)

    def group_size(self) -> int:
        """How many inputs' path points fit in one model call (1 for finite differences)."""
        ex = self.explainer
        if ex.graph_runner is None:
            return 1
        per_input = ex.options.steps * len(ex.options.targets or [0])
        return max(1, ex.options.batch_size // per_input)

    def _resumed(self, item: InputItem) -> bool:
        if not self.settings.skip_existing:
            return False
        records = existing_records(self.settings.out_dir, item, self.explainer.model_path)
        if records is None:
            return False
        self.report.results.extend(records)
        self.report.resumed += 1
        return True

    def _accept(self, records: list[dict]) -> None:
        self.report.results.extend(records)
        if self.settings.json_lines:
            for r in records:
                self.emit(json_line(r))

    def _fail(self, path: str, exc: IgcliError | str) -> None:
        entry = failure_entry(path, exc)
        self.report.failures.append(entry)
        self.warn(f"error: {exc}")
        if self.settings.json_lines:
            self.emit(json_line(entry))

    def _explain_together(self, items: list[InputItem]) -> bool:
        """All items in shared calls; False (nothing written) when any of them fails."""
        ex = self.explainer
        try:
            loaded = [(item, load_samples(item.path, ex.prep, item.name)) for item in items]
            explained = ex.explain_many([s for _, samples in loaded for s in samples])
        except InputError:
            return False  # one is at fault: the caller explains them one by one to find it
        k = 0
        for item, samples in loaded:
            self._accept(self._submit_item(item, samples, explained[k : k + len(samples)]))
            k += len(samples)
        return True

    def _explain_item(self, item: InputItem) -> list[dict]:
        samples = load_samples(item.path, self.explainer.prep, item.name)
        return self._submit_item(item, samples, self.explainer.explain_many(samples))

    def _submit_item(self, item: InputItem, samples, explained) -> list[dict]:
        """Name the outputs of one input and queue them for the writer thread."""
        out = self.settings.out_dir
        jobs: list[tuple[Explained, Path, Path]] = []
        for sample, results in zip(samples, explained, strict=True):
            multi = len(results) > 1
            for e in results:
                stem = sample.name + (f".target{e.record.target}" if multi else "")
                npy, png = output_stem(out, stem + ".npy"), output_stem(out, stem + ".png")
                e.record.attributions_file = npy.relative_to(out.resolve()).as_posix()
                e.record.heatmap_file = png.relative_to(out.resolve()).as_posix()
                jobs.append((e, npy, png))
        records = [e.record.to_dict() for e, _, _ in jobs]
        self._submit(lambda: self._write_item(item, jobs, records))
        return records

    def _write_item(self, item: InputItem, jobs, records: list[dict]) -> None:
        """Attributions, heatmaps, then the completion marker: the marker is always last."""
        for e, npy, png in jobs:
            atomic_save_npy(npy, e.result.attributions.astype(np.float32)[None])
            if self.settings.shared_scale and is_image_like(e.sample, self.explainer.prep):
                self.deferred.append((e, png))
            else:
                self._draw(e, png, None)
        atomic_write_text(
            record_path(self.settings.out_dir, item.name),
            json.dumps({"input": str(item.path), "records": records}) + "\n",
        )

    def _submit(self, job: Callable[[], None]) -> None:
        """Run file writing beside the next model calls; a few items in flight at most."""
        self.pending.append(self.writer.submit(job))
        while len(self.pending) > self.MAX_PENDING:
            self.pending.popleft().result()

    def drain(self) -> None:
        """Wait for every queued write; re-raises a write's error (a full disk, say)."""
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.writer.shutdown(wait=True)

    def _draw(self, e: Explained, png: Path, vmax: float | None) -> None:
        image = draw(
            e.sample,
            e.result.attributions,
            self.explainer.prep,
            self.settings.style,
            title=_title(e),
            caption=_caption(e),
            vmax=vmax,
        )
        atomic_save_png(png, image)

    def finish(self) -> None:
        """Wait for the writer, then draw heatmaps that share one colour scale."""
        self.drain()
        if not self.deferred:
            return
        from igcli.render import color_scale, select_sign

        style, prep = self.settings.style, self.explainer.prep
        maps = [
            select_sign(
                attribution_map(e.result.attributions, e.sample, prep, style.reduce), style.sign
            ).ravel()
            for e, _ in self.deferred
        ]
        vmax = color_scale(np.concatenate(maps), style.clip_percentile)
        for e, png in self.deferred:
            self._draw(e, png, vmax)
        self.deferred.clear()

    def apply_gate(self) -> list[str]:
        """Names of results over --max-completeness-error (empty when no gate or all pass)."""
        limit = self.settings.max_completeness_error
        if limit is None:
            return []
        return self.report.apply_gate(limit)
