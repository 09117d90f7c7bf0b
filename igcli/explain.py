"""One explanation run: build the model sessions and gradient source once, explain many samples.

`Explainer` owns everything that is per model (sessions, preprocessing, gradient graph);
`Explainer.explain(sample)` returns one plain `Record` per target, which reports aggregate.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from igcli import baselines
from igcli.autodiff.shapes import build_gradient_model_probing
from igcli.cache import cache_key, cached_model
from igcli.errors import GradientError, IgcliError, InputError, UnsupportedOpsError, UsageError
from igcli.gradients import (
    FiniteDifferences,
    GradientGraphRunner,
    GradientSource,
    GraphGradients,
    pick,
)
from igcli.ig import IGResult, Problem, integrated_gradients_many
from igcli.inputs import Preprocessing, Sample, make_preprocessing
from igcli.model import (
    ModelRunner,
    Sidecar,
    graph_inputs,
    graph_outputs,
    load_model,
    model_hash,
    resolve_providers,
    with_softmax,
)
from igcli.quadrature import RULES as QUADRATURE_RULES


@dataclass
class ExplainOptions:
    targets: list[int] | None = None
    output: str | None = None
    softmax: bool = False
    input_name: str | None = None
    feeds: dict[str, Path] = field(default_factory=dict)
    steps: int = 50
    method: str = "gausslegendre"
    baseline: str | None = None
    batch_size: int = 64
    provider: str | None = None
    threads: int | None = None
    seed: int = 0
    gradients: str = "auto"  # auto | graph | fd
    fd_groups: str | None = None  # "1" per feature, "8x8" patches; default by input kind
    fd_step: float = 1e-3
    use_cache: bool = True
    mean: list[float] | None = None
    std: list[float] | None = None
    labels: list[str] | None = None


@dataclass
class Record:
    """One explained (input, target): everything the reports need, as plain values."""

    input: str
    name: str
    target: int
    label: str | None
    output: str
    f_input: float
    f_baseline: float
    attribution_sum: float
    delta: float
    abs_error: float
    rel_error: float
    steps: int
    method: str
    baseline: str
    gradient_source: str
    fd_step: float | None
    fd_groups: str | None
    wall_time_s: float
    attributions_file: str | None = None
    heatmap_file: str | None = None
    status: str = "ok"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Explained:
    """A record with the arrays behind it (kept only until the outputs are written)."""

    record: Record
    result: IGResult
    sample: Sample
    baseline: np.ndarray


def default_groups(sample: Sample) -> str:
    """Per-feature differences unless the input is a large image (then 4x4 patches)."""
    return "4x4" if sample.kind == "image" and sample.x.size > 4096 else "1"


def parse_groups(spec: str | None, sample: Sample, prep: Preprocessing) -> np.ndarray | None:
    """Feature groups for finite differences: None = one group per feature."""
    spec = spec or default_groups(sample)
    if spec in ("1", "1x1", "none"):
        return None
    m = re.fullmatch(r"(\d+)x(\d+)", spec)
    if not m or not prep.is_image_model:
        raise UsageError(f"--fd-groups {spec!r}: use HxW patches (e.g. 8x8) for image models or 1")
    ph, pw = int(m.group(1)), int(m.group(2))
    if prep.layout == "NCHW":
        c, h, w = sample.x.shape
    else:
        h, w, c = sample.x.shape
    rows = np.arange(h)[:, None] // ph
    cols = np.arange(w)[None, :] // pw
    patch = rows * ((w + pw - 1) // pw) + cols  # patches span all channels
    return (
        np.broadcast_to(patch[None], (c, h, w))
        if prep.layout == "NCHW"
        else (np.broadcast_to(patch[:, :, None], (h, w, c)))
    )


class Explainer:
    """Per-model state for a run; `explain` is called once per sample."""

    def __init__(self, model_path: Path, options: ExplainOptions, warn=print) -> None:
        self.model_path = model_path
        self.options = options
        self.warn = warn
        if options.method not in QUADRATURE_RULES:
            raise UsageError(f"unknown method {options.method!r}")
        if options.method == "riemann_trapezoid" and options.steps < 2:
            raise UsageError("riemann_trapezoid needs at least 2 steps")
        self.model = load_model(model_path)
        self.sha256 = model_hash(model_path)
        self.sidecar = Sidecar.load(model_path)
        inputs = graph_inputs(self.model)
        outputs = graph_outputs(self.model)
        self.input_spec = self._choose(
            inputs,
            options.input_name or self.sidecar.raw.get("input"),
            "input",
            options.input_name is not None,
        )
        out_name = options.output or self.sidecar.raw.get("output")
        self.output_spec = self._choose(outputs, out_name, "output", options.output is not None)
        self.output_name = self.output_spec.name
        self.labels = options.labels or self.sidecar.labels
        feeds = self._extra_feeds(inputs)
        model = self.model
        if options.softmax:
            model, self.output_name = with_softmax(model, self.output_spec.name)
        self.prep = make_preprocessing(self.input_spec, self.sidecar, options.mean, options.std)
        self.providers = resolve_providers(options.provider)
        self.runner = ModelRunner(
            model,
            model_path,
            self.input_spec.name,
            self.output_name,
            feeds=feeds,
            providers=self.providers,
            threads=options.threads,
            batch_size=options.batch_size,
        )
        self.gradient_source = "fd"
        self.graph_runner: GradientGraphRunner | None = None
        self.graph_blockers: list[str] = []
        if options.gradients not in ("auto", "graph", "fd"):
            raise UsageError(f"--gradients {options.gradients!r}: choose auto, graph or fd")
        if options.gradients != "fd":
            self._build_graph(feeds)

    def _choose(self, specs, name, what, explicit):
        if name is None:
            return specs[0]
        match = next((s for s in specs if s.name == name), None)
        if match is None:
            if not explicit:  # a sidecar naming a missing tensor is not fatal
                return specs[0]
            names = ", ".join(s.name for s in specs)
            raise UsageError(f"model has no {what} named {name!r} ({what}s: {names})")
        return match

    def _extra_feeds(self, inputs) -> dict[str, np.ndarray]:
        feeds = {}
        for spec in inputs:
            if spec.name == self.input_spec.name:
                continue
            path = self.options.feeds.get(spec.name)
            if path is None:
                raise UsageError(
                    f"model input {spec.name!r} needs a value: --feed {spec.name}=FILE.npy"
                )
            try:
                value = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise UsageError(f"{path}: not a readable .npy file ({exc})") from None
            if len(value.shape) == len(spec.shape) - 1:
                value = value[None]
            feeds[spec.name] = value.astype(spec.dtype)
        unknown = set(self.options.feeds) - {s.name for s in inputs}
        if unknown:
            raise UsageError(f"--feed names unknown input(s): {', '.join(sorted(unknown))}")
        return feeds

    def _build_graph(self, feeds) -> None:
        opts = self.options
        key = cache_key(
            self.sha256,
            self.input_spec.name,
            self.output_name,
            str(opts.softmax),
            str(self.runner.batch_size > 1),
        )
        try:
            grad_model, _ = cached_model(
                key,
                lambda: build_gradient_model_probing(
                    self.runner.model, self.input_spec.name, self.output_name, feeds
                ),
                opts.use_cache,
            )
        except UnsupportedOpsError as exc:
            self.graph_blockers = exc.ops
            if opts.gradients == "graph":
                raise GradientError(
                    f"no gradient graph: no rule for {', '.join(exc.ops)}", self.model_path
                ) from None
            self.warn(
                f"{self.model_path}: no gradient graph (no rule for {', '.join(exc.ops)}); "
                "using finite differences"
            )
            return
        except Exception as exc:  # a transform bug must not cost the user the run
            if opts.gradients == "graph":
                raise GradientError(
                    f"building the gradient graph failed: {exc}", self.model_path
                ) from None
            self.warn(f"{self.model_path}: gradient graph failed ({exc}); using finite differences")
            return
        runner = ModelRunner(
            grad_model,
            self.model_path,
            self.input_spec.name,
            self.output_name,
            feeds=feeds,
            providers=self.providers,
            threads=opts.threads,
            batch_size=self.runner.batch_size,
        )
        self.graph_runner = GradientGraphRunner(runner, None)
        self.gradient_source = "graph"

    # -- per sample ------------------------------------------------------------------------
    def output_size(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """The model's output at one sample x, and the per-sample output shape."""
        out = self.runner.run(x[None])
        return out, out.shape[1:]

    def label(self, target: int) -> str | None:
        if self.labels and 0 <= target < len(self.labels):
            return str(self.labels[target])
        return None

    def source_for(self, target: int, direction: np.ndarray, sample: Sample) -> GradientSource:
        if self.graph_runner is not None:
            return GraphGradients(self.runner, self.graph_runner, target)
        groups = parse_groups(self.options.fd_groups, sample, self.prep)
        return FiniteDifferences(self.runner, target, direction, groups, self.options.fd_step)

    def explain(self, sample: Sample) -> list[Explained]:
        return self.explain_many([sample])[0]

    def explain_many(self, samples: list[Sample]) -> list[list[Explained]]:
        """Explain several samples; with the gradient graph their path points share calls.

        An InputError names the first sample; callers explaining a group retry one by one
        to find the sample at fault.
        """
        opts = self.options
        where = samples[0].path
        specs = [opts.baseline or baselines.default_baseline(s) for s in samples]
        bases = [
            baselines.make_baseline(spec, s, self.prep, seed=opts.seed)
            for spec, s in zip(specs, samples, strict=True)
        ]
        rows = [a for s, b in zip(samples, bases, strict=True) for a in (s.x, b.astype(s.x.dtype))]
        try:  # one call gives the targets and both ends of every path
            ends = self.runner.run(np.stack(rows))
        except IgcliError as exc:
            raise InputError(exc.reason, where) from None
        out_shape = ends.shape[1:]
        if self.graph_runner is not None:
            self.graph_runner.output_shape = out_shape
        jobs = []  # (sample index, target, problem)
        for i, (sample, base) in enumerate(zip(samples, bases, strict=True)):
            pair = ends[2 * i : 2 * i + 2]
            for t in self._targets(pair[0], out_shape):
                direction = sample.x.astype(np.float64) - base
                source = self.source_for(t, direction, sample)
                problem = Problem(sample.x, base, source, tuple(pick(pair, t)))
                jobs.append((i, t, problem))
        start = time.perf_counter()
        try:
            results = integrated_gradients_many(
                [job[2] for job in jobs],
                steps=opts.steps,
                method=opts.method,
                batch_size=opts.batch_size,
            )
        except IgcliError as exc:
            raise InputError(exc.reason, where) from None
        share = (time.perf_counter() - start) / max(len(jobs), 1)
        explained: list[list[Explained]] = [[] for _ in samples]
        for (i, t, problem), result in zip(jobs, results, strict=True):
            record = self._record(samples[i], t, specs[i], problem.source, result, share)
            explained[i].append(Explained(record, result, samples[i], bases[i]))
        return explained

    def _targets(self, output: np.ndarray, out_shape: tuple[int, ...]) -> list[int]:
        n_out = int(np.prod(out_shape)) if out_shape else 1
        if self.options.targets is None:
            return [int(np.argmax(output.reshape(-1)))]
        for t in self.options.targets:
            if not 0 <= t < n_out:
                raise UsageError(
                    f"target {t} is out of range: output {self.output_spec.name!r} "
                    f"has {n_out} values per sample",
                    self.model_path,
                )
        return list(self.options.targets)

    def _record(self, sample, target, baseline_spec, source, result, seconds) -> Record:
        is_fd = isinstance(source, FiniteDifferences)
        return Record(
            input=str(sample.path),
            name=sample.name,
            target=target,
            label=self.label(target),
            output=self.output_name,
            f_input=result.f_input,
            f_baseline=result.f_baseline,
            attribution_sum=result.attribution_sum,
            delta=result.delta,
            abs_error=result.abs_error,
            rel_error=result.rel_error,
            steps=result.steps,
            method=result.method,
            baseline=baseline_spec,
            gradient_source=source.name,
            fd_step=source.step if is_fd else None,
            fd_groups=(self.options.fd_groups or default_groups(sample)) if is_fd else None,
            wall_time_s=seconds,
        )
