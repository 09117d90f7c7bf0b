"""A model loaded once, explained many times: the library's entry point.

`Session(model, ...)` pays the fixed costs (reading the model, choosing the input and output,
preprocessing, the gradient graph, one ONNX Runtime session); `session.attribute(input, ...)`
is then a pure function of its arguments that returns an `Attribution`. The command line is
one client of this class; notebooks and other programs are others.

    >>> s = Session("digits_cnn.onnx")
    >>> a = s.attribute("seven.png", steps=64)
    >>> a.rel_error, a.attributions.shape
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from igcli import baselines
from igcli.attribution import Attribution
from igcli.autodiff import build_gradient_graph
from igcli.cache import cache_key, load_graph, save_graph
from igcli.errors import GradientError, IgcliError, InputError, UnsupportedOpsError, UsageError
from igcli.gradcheck import check_directions
from igcli.gradients import (
    TARGET,
    FiniteDifferences,
    GradientSource,
    GraphGradients,
    GraphRunner,
    pick,
    with_target_seed,
)
from igcli.ig import (
    ADAPTIVE_METHOD,
    DEFAULT_MAX_STEPS,
    DEFAULT_TOLERANCE,
    STOP_REASONS,
    Problem,
    integrated_gradients_many,
)
from igcli.inputs import Preprocessing, Sample, load_samples, make_preprocessing, sample_from_array
from igcli.memory import MAX_ROWS, default_budget, rows_within
from igcli.model import (
    ModelRunner,
    Sidecar,
    TensorSpec,
    default_output,
    expose_output,
    graph_outputs,
    is_float_tensor,
    load_feeds,
    load_model,
    model_hash,
    require_inputs,
    resolve_providers,
    unusable_reason,
    with_softmax,
    without_initializer_inputs,
)
from igcli.quadrature import RULES as QUADRATURE_RULES

GRADIENT_CHOICES = ("auto", "graph", "fd")
ANY_SHAPE = None  # the key of a gradient graph that holds for every sample shape


@dataclass(frozen=True)
class AttributionSettings:
    """How one attribution is computed: the path integral's rule and the baseline.

    `steps` is a number of points of the rule `method` (default Gauss-Legendre), or "auto":
    adaptive steps per input until the relative completeness error is at most `tolerance`
    or `max_steps` gradient evaluations are spent.
    """

    steps: int | str = 50
    method: str | None = None
    baseline: str | None = None  # a name from baselines.NAMED or a file; None: by input kind
    seed: int = 0  # for noise baselines
    tolerance: float = DEFAULT_TOLERANCE
    max_steps: int = DEFAULT_MAX_STEPS

    @property
    def adaptive(self) -> bool:
        return self.steps == "auto"

    def check(self) -> None:
        if self.adaptive:
            if self.method not in (None, ADAPTIVE_METHOD):
                raise UsageError(
                    f"--steps auto chooses its own points; --method {self.method} does not apply"
                )
            if not (self.tolerance >= 0 and np.isfinite(self.tolerance)):
                raise UsageError(f"tolerance must be 0 or more, not {self.tolerance}")
            if not isinstance(self.max_steps, int) or self.max_steps < 3:
                raise UsageError(f"max_steps must be at least 3, not {self.max_steps!r}")
            return
        if self.method is not None and self.method not in QUADRATURE_RULES:
            raise UsageError(
                f"unknown method {self.method!r}; choose from {', '.join(QUADRATURE_RULES)}"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"steps must be a positive integer or 'auto', not {self.steps!r}")
        if self.method == "riemann_trapezoid" and self.steps < 2:
            raise UsageError("riemann_trapezoid needs at least 2 steps")

    @property
    def points_per_input(self) -> int:
        """Path points an input needs per round (adaptive steps start with 9)."""
        return 9 if self.adaptive else int(self.steps)


def default_groups(sample: Sample) -> str:
    """Per-feature differences unless the input is a large image (then 4x4 patches)."""
    return "4x4" if sample.kind == "image" and sample.x.size > 4096 else "1"


def parse_groups(spec: str | None, sample: Sample, prep: Preprocessing) -> np.ndarray | None:
    """Feature groups for finite differences: None = one group per feature."""
    import re

    spec = spec or default_groups(sample)
    if spec in ("1", "1x1", "none"):
        return None
    m = re.fullmatch(r"([1-9]\d{0,4})x([1-9]\d{0,4})", spec)
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
    if prep.layout == "NCHW":
        return np.broadcast_to(patch[None], (c, h, w))
    return np.broadcast_to(patch[:, :, None], (h, w, c))


class Session:
    """One model, ready to explain: sessions, preprocessing and gradient source built once.

    Options are keyword arguments named like the command line's flags:
    input/output pick the tensors (default: the first float input, the first float output;
    `output` may name any float tensor of the graph, such as pre-softmax logits); `feeds`
    gives values for other inputs; `gradients` is "auto" (the gradient graph where it builds
    and passes its self-check, else finite differences), "graph" or "fd".
    """

    def __init__(
        self,
        model: str | Path,
        *,
        input: str | None = None,
        output: str | None = None,
        softmax: bool = False,
        feeds: dict[str, str | Path | np.ndarray] | None = None,
        gradients: str = "auto",
        fd_step: float = 1e-3,
        fd_groups: str | None = None,
        provider: str | None = None,
        threads: int | None = None,
        batch_size: int | None = None,
        memory_limit: int | None = None,
        preprocess: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        labels: Sequence[str] | None = None,
        cache: bool = True,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if gradients not in GRADIENT_CHOICES:
            raise UsageError(f"gradients {gradients!r}: choose auto, graph or fd")
        if not fd_step > 0:
            raise UsageError(f"fd_step must be positive, not {fd_step}")
        self.model_path = Path(model)
        self.gradients = gradients
        self.fd_step, self.fd_groups = fd_step, fd_groups
        self.softmax = softmax
        self.use_cache = cache
        self.warn = warn or (lambda msg: None)
        self._warned: set[str] = set()
        self.model = without_initializer_inputs(load_model(self.model_path))
        self.sha256 = model_hash(self.model_path)
        self.sidecar = Sidecar.load(self.model_path)
        inputs = require_inputs(self.model, self.model_path)
        self.input_spec = self._choose_input(inputs, input)
        self.output_spec = self._choose_output(output)
        self.output_name = self.output_spec.name
        self.labels = list(labels) if labels else self.sidecar.labels
        self.feeds = load_feeds(feeds or {}, inputs, self.input_spec)
        model_for_run = self.model
        if self.output_name not in {o.name for o in self.model.graph.output}:
            model_for_run = expose_output(self.model, self.output_name)
        if softmax:
            model_for_run, self.output_name = with_softmax(model_for_run, self.output_name)
        self.run_model = model_for_run
        self.softmax_input = softmax_input(model_for_run, self.output_name)
        self.prep = make_preprocessing(self.input_spec, self.sidecar, mean, std, preset=preprocess)
        if self.prep.unnormalised_rgb and preprocess is None:
            self.warn(
                f"{self.model_path}: RGB images reach the model as pixels / "
                f"{self.prep.scale:g}, without mean/std normalisation; if it was trained on "
                "normalised images, say so: --preprocess imagenet (or --mean/--std, or the "
                "sidecar's preprocessing)"
            )
        self.providers = resolve_providers(provider)
        self.threads = threads
        # rows per model call: given, or measured against the memory budget on first use
        self.batch_size = max(1, int(batch_size)) if batch_size else MAX_ROWS
        self.memory_budget = memory_limit or default_budget()
        self.memory_per_row: int | None = None
        self._rows_given = batch_size is not None
        self.graph_blockers: list[str] = []
        # Gradient graphs by sample shape; ANY_SHAPE holds a graph valid for every shape.
        # Models with open dims (an image of any size) get one graph per shape they meet.
        self._graphs: dict[tuple | None, GraphRunner | None] = {}
        self._plain: ModelRunner | None = None
        self._current: ModelRunner | None = None
        self._measured: set[int] = set()  # runners whose rows per call are measured
        if gradients != "fd":
            graph = self._graph_for(self._declared_shape())
            self._current = graph.runner if graph is not None else None

    # -- set-up -------------------------------------------------------------------------
    def _choose_input(self, inputs: list[TensorSpec], name: str | None) -> TensorSpec:
        if name is None:
            side = self.sidecar.raw.get("input")
            match = next((s for s in inputs if s.name == side), None)
            return match or next((s for s in inputs if s.dtype.kind == "f"), inputs[0])
        match = next((s for s in inputs if s.name == name), None)
        if match is None:
            names = ", ".join(s.name for s in inputs)
            raise UsageError(f"model has no input named {name!r} (inputs: {names})")
        return match

    def _choose_output(self, name: str | None) -> TensorSpec:
        """The named output, or the first float output (never an int64 label or a map)."""
        outputs = graph_outputs(self.model)
        if name is None:
            side = self.sidecar.raw.get("output")
            match = next((s for s in outputs if s.name == side and is_float_tensor(s)), None)
            if match is not None:
                return match
            chosen = default_output(outputs)
            if chosen is None:
                why = "; ".join(unusable_reason(s) for s in outputs)
                raise UsageError(f"model has no float output to explain ({why})", self.model_path)
            if chosen is not outputs[0]:
                self.warn(
                    f"{self.model_path}: explaining output {chosen.name!r}, the first float "
                    f"output ({unusable_reason(outputs[0])})"
                )
            return chosen
        match = next((s for s in outputs if s.name == name), None)
        if match is not None:
            why = unusable_reason(match)
            if why:
                raise UsageError(why, self.model_path)
            return match
        exposed = expose_output(self.model, name)  # raises a usage error for a bad name
        return next(s for s in graph_outputs(exposed) if s.name == name)

    def _cache_key(self, kind: str, shape: tuple | None = None) -> str | None:
        """Key of this session's cached graphs: what is explained, and how."""
        if not self.use_cache:
            return None
        feeds = self.fingerprint()["feeds"]  # specialised graphs may fold fed values in
        axes = {k: f.batch_axis for k, f in self.feeds.items()}
        shape_text = "any" if shape is None else ",".join(map(str, shape))
        parts = [kind, self.input_spec.name, self.output_name, str(self.softmax)]
        parts += [json.dumps([feeds, axes], sort_keys=True), shape_text]
        return cache_key(self.sha256, *parts)

    def _runner_kw(self) -> dict:
        return dict(
            feeds=self.feeds,
            providers=self.providers,
            threads=self.threads,
            batch_size=self.batch_size,
        )

    @property
    def runner(self) -> ModelRunner:
        """The session last used (the plain model's when no graph was used yet)."""
        if self._current is None:
            self._current = self._plain_runner()
        return self._current

    @property
    def graph(self) -> GraphRunner | None:
        """The gradient graph last used, or None when gradients come from differences."""
        return next(
            (g for g in self._graphs.values() if g is not None and g.runner is self._current),
            None,
        )

    def _plain_runner(self) -> ModelRunner:
        if self._plain is not None:
            return self._plain
        key = self._cache_key("plain")
        names = (self.model_path, self.input_spec.name, self.output_name)
        runner = ModelRunner.from_cache(key, *names, **self._runner_kw()) if key else None
        if runner is None:
            runner = ModelRunner(self.run_model, *names, cache_key=key, **self._runner_kw())
        self._plain = runner
        return runner

    def _declared_shape(self) -> tuple | None:
        dims = self.input_spec.shape[1:]
        ok = all(isinstance(d, int) and d > 0 for d in dims)
        return tuple(dims) if ok and self.input_spec.shape else None

    def _graph_for(self, shape: tuple | None) -> GraphRunner | None:
        """The gradient graph for samples of `shape`, built (or loaded) once; None: use
        finite differences. With `shape` None (open dims, no sample yet) a graph is built
        only if it serves every shape; otherwise the first sample decides."""
        if self.gradients == "fd":
            return None
        if ANY_SHAPE in self._graphs:
            return self._graphs[ANY_SHAPE]
        if shape in self._graphs:
            return self._graphs[shape]
        try:
            graph, valid_for = self._load_or_build_graph(shape)
        except UnsupportedOpsError as exc:
            if shape is None:
                return None  # open dims: try again with the first sample's shape
            self.graph_blockers = exc.ops
            self._no_graph(f"no rule for {', '.join(exc.ops)}", shape)
            graph, valid_for = None, shape
        except IgcliError:
            raise
        except Exception as exc:  # a transform bug must not cost the user the run
            self._no_graph(f"building it failed: {type(exc).__name__}: {exc}", shape)
            graph, valid_for = None, shape
        self._graphs[valid_for] = graph
        return graph

    def _load_or_build_graph(self, shape: tuple | None) -> tuple[GraphRunner | None, tuple | None]:
        """(graph, the shape it holds for: ANY_SHAPE or `shape`), from the cache if there."""
        names = (self.model_path, self.input_spec.name, self.output_name)
        kw = dict(self._runner_kw(), target_input=TARGET)
        keys = [(ANY_SHAPE, self._cache_key("graph"))]
        if shape is not None:
            keys.append((shape, self._cache_key("graph", shape)))
        if self.use_cache:
            for valid_for, key in keys:  # the optimised session graph of an earlier run
                runner = ModelRunner.from_cache(key, *names, **kw)
                if runner is not None:
                    return GraphRunner(runner), valid_for
            for valid_for, key in keys:  # the gradient graph of an earlier run
                cached = load_graph(key, self.model)
                if cached is not None:
                    return self._graph_runner(cached, key), valid_for
        feeds = {name: feed.value for name, feed in self.feeds.items()}
        built = build_gradient_graph(
            self.run_model, self.input_spec.name, self.output_name, sample_shape=shape, feeds=feeds
        )
        valid_for = ANY_SHAPE if built.sample_shape is None else tuple(built.sample_shape)
        model = with_target_seed(built.model, self.output_name)
        key = self._cache_key("graph", valid_for)
        if key is not None:
            save_graph(key, model, self.model)
        return self._graph_runner(model, key), valid_for

    def _graph_runner(self, model: onnx.ModelProto, key: str | None) -> GraphRunner | None:
        names = (self.model_path, self.input_spec.name, self.output_name)
        try:
            runner = ModelRunner(
                model, *names, cache_key=key, target_input=TARGET, **self._runner_kw()
            )
        except IgcliError as exc:
            self._no_graph(f"ONNX Runtime cannot run it: {exc.reason}", None)
            return None
        return GraphRunner(runner)

    def _no_graph(self, why: str, shape: tuple | None) -> None:
        at = (
            ""
            if shape is None or shape == self._declared_shape()
            else f" for inputs of shape {list(shape)}"
        )
        if self.gradients == "graph":
            raise GradientError(f"no gradient graph{at}: {why}", self.model_path)
        self.warn(f"{self.model_path}: no gradient graph{at} ({why}); using finite differences")

    def fingerprint(self) -> dict:
        """What this session's results depend on (for resuming only identical results)."""
        feeds = {
            name: hashlib.sha256(np.ascontiguousarray(f.value).tobytes()).hexdigest()[:16]
            for name, f in sorted(self.feeds.items())
        }
        prep = self.prep
        return {
            "model_sha256": self.sha256,
            "input": self.input_spec.name,
            "output": self.output_name,
            "softmax": self.softmax,
            "feeds": feeds,
            "gradients": self.gradients,
            "fd_step": self.fd_step,
            "fd_groups": self.fd_groups,
            "preprocess": [prep.preset, prep.crop],
            "mean": None if prep.mean is None else prep.mean.tolist(),
            "std": None if prep.std is None else prep.std.tolist(),
            "labels": self.labels,
        }

    @property
    def gradient_source(self) -> str:
        """ "graph" or "fd": where this session's gradients come from."""
        return "graph" if self.graph is not None else "fd"

    # -- inputs ---------------------------------------------------------------------------
    def load(self, input, name: str | None = None) -> list[Sample]:
        """Samples from a path (image, .npy, CSV: one per row), an array or a PIL image."""
        if isinstance(input, Sample):
            return [input]
        if isinstance(input, str | Path):
            path = Path(input)
            return load_samples(path, self.prep, name or path.stem)
        return [sample_from_array(input, self.prep, name or "array")]

    # -- attribution ----------------------------------------------------------------------
    def attribute(
        self,
        input,
        target: int | None = None,
        *,
        baseline: str | None = None,
        steps: int = 50,
        method: str = "gausslegendre",
        seed: int = 0,
    ) -> Attribution:
        """Integrated Gradients of output[target] (default: the top class) at one input.

        `input`: an image or .npy path, a numpy array in the model input's shape (with or
        without the batch axis), or a PIL image for image models.
        """
        samples = self.load(input)
        if len(samples) != 1:
            raise UsageError(
                f"{input} holds {len(samples)} samples; use attribute_many for all of them"
            )
        settings = AttributionSettings(steps=steps, method=method, baseline=baseline, seed=seed)
        targets = None if target is None else [target]
        return self.attribute_many(samples, targets, settings)[0][0]

    def attribute_many(
        self,
        samples: Sequence[Sample],
        targets: Sequence[int] | None = None,
        settings: AttributionSettings | None = None,
        *,
        targets_per_sample: Sequence[Sequence[int] | None] | None = None,
    ) -> list[list[Attribution]]:
        """Attributions of several samples, one list per sample (one entry per target).

        `targets` apply to every sample (None: each sample's top class); `targets_per_sample`
        gives each sample its own (an entry of None falls back to `targets`).

        With the gradient graph the path points of all samples share model calls. An
        InputError names the first sample; callers retry one by one to find the one at fault.
        """
        settings = settings or AttributionSettings()
        settings.check()
        if not samples:
            return []
        shapes = {s.x.shape for s in samples}
        if len(shapes) > 1:  # inputs of several sizes: one group (and graph) per size
            out: list[list[Attribution] | None] = [None] * len(samples)
            for shape in shapes:
                idx = [k for k, s in enumerate(samples) if s.x.shape == shape]
                own = None if targets_per_sample is None else [targets_per_sample[k] for k in idx]
                part = self.attribute_many(
                    [samples[k] for k in idx], targets, settings, targets_per_sample=own
                )
                for k, result in zip(idx, part, strict=True):
                    out[k] = result
            return out
        where = samples[0].path
        names = [settings.baseline or baselines.default_baseline(s) for s in samples]
        bases = [
            baselines.make_baseline(name, s, self.prep, seed=settings.seed)
            for name, s in zip(names, samples, strict=True)
        ]
        graph = self._use(samples[0].x)
        runner = self.runner
        rows = [r for s, b in zip(samples, bases, strict=True) for r in (s.x, b.astype(s.x.dtype))]
        try:  # one call gives the targets and both ends of every path
            ends = runner.run(np.stack(rows))
        except IgcliError as exc:
            raise InputError(exc.reason, where) from None
        out_shape = ends.shape[1:]
        if graph is not None and graph.check is None:
            graph = self._self_check(graph, samples[0])
            runner = self.runner

        jobs = []  # (sample index, target, problem)
        for i, (sample, base) in enumerate(zip(samples, bases, strict=True)):
            pair = ends[2 * i : 2 * i + 2]
            own = targets_per_sample[i] if targets_per_sample is not None else None
            for t in self._targets(pair[0], out_shape, targets if own is None else own):
                source = self._source(graph, t, sample, base)
                problem = Problem(sample.x, base, source, tuple(pick(pair, t)))
                jobs.append((i, t, problem))
        start = time.perf_counter()
        try:
            results = integrated_gradients_many(
                [job[2] for job in jobs],
                steps=settings.steps,
                method=settings.method,
                batch_size=runner.batch_size,
                tolerance=settings.tolerance,
                max_steps=settings.max_steps,
            )
        except IgcliError as exc:
            raise InputError(exc.reason, where) from None
        share = (time.perf_counter() - start) / max(len(jobs), 1)
        out: list[list[Attribution]] = [[] for _ in samples]
        for (i, t, problem), result in zip(jobs, results, strict=True):
            source = problem.source
            is_fd = isinstance(source, FiniteDifferences)
            extra = {"steps_used": result.steps}
            if result.converged is not None:
                extra.update(converged=result.converged, stop_reason=result.stop_reason)
            if graph is not None and graph.check is not None:
                extra["gradient_check"] = graph.check.summary()
            attribution = Attribution(
                attributions=result.attributions,
                sample=samples[i],
                baseline=bases[i],
                target=t,
                label=self.label(t),
                output=self.output_name,
                f_input=result.f_input,
                f_baseline=result.f_baseline,
                steps=settings.steps,
                method=result.method,
                baseline_name=names[i],
                gradient_source=source.name,
                prep=self.prep,
                fd_step=source.step if is_fd else None,
                fd_groups=(self.fd_groups or default_groups(samples[i])) if is_fd else None,
                wall_time_s=share,
                extra=extra,
            )
            out[i].append(attribution)
            self._judge(attribution, source)
            if result.converged is False:
                hint = " (raise --max-steps)" if result.stop_reason == "max_steps" else ""
                self.warn(
                    f"{samples[i].path}: adaptive steps stopped after {result.steps} gradient "
                    f"evaluations at completeness error {attribution.rel_error:.3g}: "
                    f"{STOP_REASONS[result.stop_reason]}{hint}"
                )
        return out

    def _judge(self, a: Attribution, source: GradientSource) -> None:
        """Warn (once per kind) where the numbers cannot be what the user wants."""
        flat = isinstance(source, FiniteDifferences) and source.looks_piecewise_constant
        if a.delta != 0 and (flat or not np.any(a.attributions)):
            self._warn_once(
                "piecewise",
                f"{self.model_path}: the gradient is zero along the path although F(x) != F(b): "
                "the model looks piecewise constant (a tree ensemble, rounding or a step "
                "function), so IG cannot attribute the change and more steps will not help",
            )
        top = max(abs(a.f_input), abs(a.f_baseline))
        if top > 0 and abs(a.delta) <= 1e-3 * top and self.softmax_input is not None:
            self._warn_once(
                "saturated",
                f"{a.sample.path}: output {self.output_name!r} is a saturated softmax for target "
                f"{a.target} (F(x) = {a.f_input:.6g}, F(baseline) = {a.f_baseline:.6g}); "
                f"explain the scores before it instead: --output {self.softmax_input}",
            )

    def label(self, target: int) -> str | None:
        if self.labels and 0 <= target < len(self.labels):
            return str(self.labels[target])
        return None

    def _targets(self, output, out_shape, targets) -> list[int]:
        n_out = int(np.prod(out_shape)) if out_shape else 1
        if targets is None:
            return [int(np.argmax(output.reshape(-1)))]
        for t in targets:
            if not 0 <= t < n_out:
                raise UsageError(
                    f"target {t} is out of range: output {self.output_spec.name!r} "
                    f"has {n_out} values per sample",
                    self.model_path,
                )
        return [int(t) for t in targets]

    def _source(
        self, graph: GraphRunner | None, target: int, sample: Sample, base: np.ndarray
    ) -> GradientSource:
        if graph is not None:
            return GraphGradients(graph, target)
        groups = parse_groups(self.fd_groups, sample, self.prep)
        return FiniteDifferences(
            self.runner,
            target,
            sample.x.astype(np.float64) - base,
            groups,
            self.fd_step,
            ends=(sample.x, base),
        )

    def graph_for(self, x: np.ndarray) -> GraphRunner | None:
        """The gradient graph for samples shaped like x (None: finite differences)."""
        return self._graph_for(tuple(x.shape))

    def _use(self, x: np.ndarray) -> GraphRunner | None:
        """Make the graph (or the plain model) for samples shaped like x the current runner."""
        graph = self._graph_for(tuple(x.shape))
        self._current = graph.runner if graph is not None else self._plain_runner()
        if id(self._current) not in self._measured:  # before anything else runs on it
            self._measured.add(id(self._current))
            if not self._rows_given:
                self._measure_rows(self._current, graph, x)
            self._check_rows_independent(self._current, graph, x)
        return graph

    def check_gradients(self, sample: Sample) -> None:
        """Self-check the gradient graph at `sample` now rather than at the first sample
        explained: runs split over shards or workers then check at the same input (their
        plan's first) and their records carry the same `gradient_check`."""
        graph = self._use(sample.x)
        if graph is not None and graph.check is None:
            self._self_check(graph, sample)

    def _check_rows_independent(self, runner: ModelRunner, graph, x: np.ndarray) -> None:
        """Path points share calls as rows of the first axis; when that axis is not a batch
        (Silero's sequence model runs its rows through one LSTM), rows change each other's
        outputs and must go one per call."""
        if runner.batch_size <= 1:
            return
        other = (x.astype(np.float64) * 0.5 + 0.25).astype(x.dtype)
        targets = (lambda n: np.zeros(n, dtype=np.int64)) if graph is not None else (lambda n: None)
        try:
            name = runner.output_name
            alone = [runner.call(r[None], [name], targets(1))[0][0] for r in (x, other)]
            joint = runner.call(np.stack([x, other]), [name], targets(2))[0]
        except IgcliError:
            return  # the model call itself fails: the run reports that, not this check
        if joint.shape[:1] == (2,) and all(
            np.allclose(j, a, rtol=1e-4, atol=1e-6 * (np.abs(a).max() + 1e-30))
            for j, a in zip(joint, alone, strict=True)
        ):
            return
        runner.batch_size = 1
        self._warn_once(
            "rows",
            f"{self.model_path}: rows of input {self.input_spec.name!r} change each other's "
            "outputs (its first axis is not a batch: a sequence?), so path points go one per "
            "model call",
        )

    def _self_check(self, graph: GraphRunner, sample: Sample) -> GraphRunner | None:
        """Compare a fresh graph's directional derivatives with finite differences once.

        A wrong gradient must be caught, not shipped: on a mismatch `auto` falls back to
        finite differences (with a warning naming the model) and `graph` stops (exit 7).
        """
        check = check_directions(graph, sample.x, directions=4, seed=0)
        graph.check = check
        if check.verdict != "mismatch":
            return graph
        why = (
            f"its gradient disagrees with finite differences (error {check.error:.3g} "
            f"of the gradient's norm)"
        )
        if self.gradients == "graph":
            raise GradientError(f"gradient graph failed its self-check: {why}", self.model_path)
        self.warn(f"{self.model_path}: gradient graph failed its self-check ({why}); "
                  "using finite differences")  # fmt: skip
        for key, value in list(self._graphs.items()):
            if value is graph:
                self._graphs[key] = None
        self._current = self._plain_runner()
        return None

    def _measure_rows(self, runner: ModelRunner, graph: GraphRunner | None, x) -> None:
        """Rows per call from what one more row costs, within the memory budget."""
        if runner.batch_size <= 1:
            return  # the model takes one row per call anyway

        def call(n: int) -> None:
            rows = np.repeat(x[None], n, axis=0).astype(runner.input_dtype)
            targets = np.zeros(n, dtype=np.int64) if graph is not None else None
            runner.call(rows, [runner.output_name], targets)

        rows, per_row = rows_within(self.memory_budget, call, cap=runner.batch_size)
        runner.batch_size = rows
        self.memory_per_row = per_row

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.warn(message)

    @property
    def model_seconds(self) -> float:
        """Time spent inside ONNX Runtime (for reports and benchmarks)."""
        runners = {id(g.runner): g.runner for g in self._graphs.values() if g is not None}
        if self._plain is not None:
            runners[id(self._plain)] = self._plain
        return sum(r.seconds for r in runners.values())


def softmax_input(model: onnx.ModelProto, output: str) -> str | None:
    """The tensor a softmax output is computed from (through reshapes), else None."""
    producers = {o: n for n in model.graph.node for o in n.output}
    name = output
    for _ in range(8):
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type in ("Softmax", "LogSoftmax"):
            source = node.input[0]
            while producers.get(source) is not None and producers[source].op_type in (
                "Flatten",
                "Reshape",
            ):
                source = producers[source].input[0]
            return source
        if node.op_type not in ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            return None
        name = node.input[0]
    return None
