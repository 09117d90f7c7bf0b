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

import contextlib
import functools
import hashlib
import json
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from igcli import baselines, methods
from igcli.attribution import Attribution
from igcli.autodiff import GradientGraph, build_gradient_graph, build_gradient_model
from igcli.autodiff.contrib import with_embeddings_exposed
from igcli.cache import (
    cache_dir,
    cache_key,
    file_sha256,
    load_check,
    load_graph,
    save_check,
    save_graph,
    size_limit,
)
from igcli.cache import problem as cache_problem
from igcli.cut import AGGREGATES, Cut, depends_on, embedding_lookups, make_cut
from igcli.dequantize import float_twin, is_quantized
from igcli.errors import (
    GradientError,
    IgcliError,
    IgcliWarning,
    InputError,
    ModelError,
    NonFiniteGradient,
    UnsupportedOpsError,
    UsageError,
)
from igcli.files import MAX_TENSOR_VALUES, printable, read_labels
from igcli.gradcheck import StoredCheck, check_directions
from igcli.gradients import (
    TARGET,
    Bound,
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
    DEFAULT_METHOD,
    DEFAULT_TOLERANCE,
    STOP_REASONS,
    UNRESOLVED,
    Problem,
    integrated_gradients_many,
)
from igcli.inputs import (
    TABLE_SUFFIXES,
    Preprocessing,
    RowError,
    Sample,
    iter_table,
    load_samples,
    make_preprocessing,
    parse_image_size,
    sample_from_array,
    shape_matches,
)
from igcli.memory import (
    MAX_ROWS,
    RowTuner,
    current_rss,
    default_budget,
    rows_for,
    rows_within,
    size_text,
)
from igcli.model import (
    TOP_CLASS,
    Context,
    Feed,
    ModelRunner,
    Sidecar,
    TensorSpec,
    as_float32,
    declared_batch,
    default_output,
    expose_output,
    fixed_dims,
    graph_inputs,
    graph_outputs,
    is_float_tensor,
    load_feeds,
    load_model,
    model_hash,
    require_inputs,
    resolve_providers,
    rows_first,
    stack_contexts,
    unusable_reason,
    weight_bytes,
    with_dynamic_batch,
    with_softmax,
    without_initializer_inputs,
)
from igcli.quadrature import MAX_STEPS
from igcli.quadrature import RULES as QUADRATURE_RULES
from igcli.tokens import TEXT_SUFFIXES, TokenInputs, token_baseline, token_inputs

GRADIENT_CHOICES = ("auto", "graph", "fd")
ANY_SHAPE = None  # the key of a gradient graph that holds for every sample shape


@dataclass(frozen=True)
class AttributionSettings:
    """How one attribution is computed: the path integral's rule and the baseline.

    `steps` is a number of points of the rule `method` (default Gauss-Legendre), or "auto":
    adaptive steps per input until the relative completeness error is at most `tolerance`
    or `max_steps` gradient evaluations are spent.
    """

    steps: int | str | None = None  # None: the path's default (50; blur 100, guided 200)
    method: str | None = None
    # a name from baselines.NAMED, a file, or an array in the model input's space (kept as
    # a baselines.ArrayBaseline); None: by input kind
    baseline: str | Path | np.ndarray | baselines.ArrayBaseline | None = None
    seed: int = 0  # for noise baselines, noisy copies, expected gradients, Shapley orders
    tolerance: float = DEFAULT_TOLERANCE
    max_steps: int = DEFAULT_MAX_STEPS
    # The path-method family (igcli/methods.py): a path, a baseline distribution, an averaging.
    path: str = "straight"  # straight, blur, guided, extremal[:ORDER], shapley
    groups: str | None = None  # extremal/shapley: HxW patches of an image, or 1 per feature
    samples: int | None = None  # expected gradients' draws, or Shapley orders
    baselines: str | None = None  # a file or folder of K baselines (multi-baseline IG)
    baseline_data: str | None = None  # with baseline="mean": the data to average
    noise: int = 0  # noisy copies of the input to average over (0: none)
    noise_std: float = methods.DEFAULT_NOISE_STD  # relative to the input's range
    noise_type: str = "smoothgrad"  # smoothgrad, smoothgrad_sq, vargrad (Captum's NoiseTunnel)
    max_sigma: float = 50.0  # blur path: the largest blur (PAIR's max_sigma)
    blur_sqrt: bool = False  # blur path: PAIR's sqrt spacing of the blur
    fraction: float = 0.25  # guided path: features moved per step
    max_dist: float = 0.02  # guided path: how far (in alpha) it may leave the straight path
    regions: str | None = None  # "xrai": rank image regions by attribution density

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            raise UsageError(f"path must be a path name (straight, blur, ...), not {self.path!r}")
        if self.steps is None:
            object.__setattr__(self, "steps", methods.default_steps(self.path))
        if isinstance(self.baseline, np.ndarray):
            object.__setattr__(self, "baseline", baselines.ArrayBaseline(self.baseline))

    @property
    def adaptive(self) -> bool:
        return self.steps == "auto"

    @property
    def rule(self) -> str:
        """The quadrature rule these settings use, named or not (--skip-existing compares
        this: a run that names the default rule made the same results)."""
        return self.method or (ADAPTIVE_METHOD if self.adaptive else DEFAULT_METHOD)

    def check(self) -> None:
        for name in ("steps", "max_steps"):  # numpy integers (np.int64(16)) are integers too
            value = getattr(self, name)
            if isinstance(value, np.integer):
                object.__setattr__(self, name, int(value))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise UsageError(f"seed must be a whole number, not {self.seed!r}")
        if isinstance(self.baseline, str) and not self.baseline.strip():
            raise UsageError("baseline must name a baseline or a file, not ''")
        if self.baseline is not None and not isinstance(
            self.baseline, str | Path | baselines.ArrayBaseline
        ):
            raise UsageError(
                "baseline must be a name (black, zero, blur, ...), a file path or a numpy "
                f"array, not {type(self.baseline).__name__}"
            )
        methods.check(self)
        if self.adaptive:
            if self.method not in (None, ADAPTIVE_METHOD):
                raise UsageError(
                    f"--steps auto chooses its own points; --method {self.method} does not apply"
                )
            tol = self.tolerance
            if isinstance(tol, bool) or not isinstance(tol, int | float | np.floating):
                raise UsageError(f"tolerance must be a number, not {type(tol).__name__}")
            if not (tol > 0 and np.isfinite(tol)):  # (0: rounding alone stopped it at once)
                raise UsageError(f"tolerance must be above 0, not {tol}")
            if not isinstance(self.max_steps, int) or not 3 <= self.max_steps <= MAX_STEPS:
                raise UsageError(f"max_steps must be 3 to {MAX_STEPS}, not {self.max_steps!r}")
            return
        if self.tolerance != DEFAULT_TOLERANCE or self.max_steps != DEFAULT_MAX_STEPS:
            raise UsageError("--tolerance and --max-steps apply to --steps auto")
        if self.method is not None and self.method not in QUADRATURE_RULES:
            raise UsageError(
                f"unknown method {self.method!r}; choose from {', '.join(QUADRATURE_RULES)}"
            )
        if (
            isinstance(self.steps, bool)
            or not isinstance(self.steps, int)
            or not 1 <= self.steps <= MAX_STEPS
        ):
            raise UsageError(f"steps must be 1 to {MAX_STEPS} or 'auto', not {self.steps!r}")
        if self.method == "riemann_trapezoid" and self.steps < 2:
            raise UsageError("riemann_trapezoid needs at least 2 steps")

    @property
    def points_per_input(self) -> int:
        """Path points an input needs per round, which sizes the groups of inputs that share
        calls. Adaptive steps start with 9 and then add 2 to 8 a round: sized by 9, a group's
        later calls ran a third full (digits, 1,000 inputs, --steps auto --no-heatmaps:
        4.8 s, 4.5 s sized by 4)."""
        points = 4 if self.adaptive else int(self.steps)
        if self.path.startswith("guided"):
            points = 1  # one gradient per round
        return points * max(1, self.noise) * (2 if self.baselines or self.regions else 1)


def _a_count(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_fd_step(fd_step: float, dtype) -> None:
    """A step below the input's float precision moves no value by even one unit in the last
    place: with --fd-step 1e-30 every difference came out 0, and the run blamed the model
    ('looks piecewise constant'). Token ids are differenced at their float32 embedding."""
    dtype = np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.dtype(np.float32)
    eps = float(np.finfo(dtype).eps)
    if fd_step < eps:
        raise UsageError(
            f"fd_step (--fd-step) {fd_step:g} is below the input's {dtype.name} precision "
            f"({eps:.3g}): a step that small moves no value; give at least {eps:.3g} "
            "(default 0.001)"
        )


def _labels(labels: object) -> list[str] | None:
    """Class names from a labels file (a str or Path, read like --labels) or a list or tuple
    of names; list() of a file name made its characters the class names."""
    if isinstance(labels, str | Path):
        return read_labels(Path(labels))
    if isinstance(labels, list | tuple):
        return list(labels) or None
    raise UsageError(
        f"labels must be a labels file (one class name per line) or a list of names, "
        f"not {type(labels).__name__}"
    )


FAR_OUT = 1e4  # |x - b| from which a gradient zero all along the path is the input's doing


def _distance_out(a: Attribution, x: np.ndarray | None) -> float:
    """The largest |x - b| of a result (0 where its arrays are gone or not numbers)."""
    end = a.sample.x if x is None else x
    if a.baseline is None or end is None or np.shape(end) != np.shape(a.baseline):
        return 0.0
    with np.errstate(all="ignore"):
        far = np.max(np.abs(np.asarray(end, np.float64) - a.baseline), initial=0.0)
    return float(far) if np.isfinite(far) else 0.0


def _local_path(model: str | Path) -> Path:
    """A model named as a path, or as a file:// URL (a local path, as INPUTS take it)."""
    from igcli.storage import location

    where = location(model)
    return where if isinstance(where, Path) else Path(model)


def _check_resources(fd_step, threads, batch_size, memory_limit, warn) -> None:
    """Session's numeric options, refused as the command line refuses them: threads=0,
    batch_size=-3 or memory_limit=-1 were reinterpreted silently, threads=2.5 failed
    later blamed on the model, and fd_step=inf gave all-zero attributions."""
    if isinstance(fd_step, bool) or not isinstance(fd_step, int | float | np.floating):
        raise UsageError(f"fd_step must be a number, not {type(fd_step).__name__}")
    if not 0 < fd_step <= 1:
        raise UsageError(f"fd_step must be above 0 and at most 1, not {fd_step}")
    for name, value in (("threads", threads), ("batch_size", batch_size)):
        if value is not None and not (_a_count(value) and value >= 1):
            raise UsageError(f"{name} must be a whole number of 1 or more, not {value!r}")
    if memory_limit is not None and not (_a_count(memory_limit) and memory_limit > 0):
        raise UsageError(f"memory_limit must be a number of bytes above 0, not {memory_limit!r}")
    if warn is not None and not callable(warn):
        raise UsageError(f"warn must be a function taking a message, not {warn!r}")


def _row_floor(x: np.ndarray, runner) -> int:
    """What a row costs at least, whatever resident memory shows: its input and gradient in
    the call, and the point and gradient the integration holds in float64. A 12 MB row
    measured 1,365 bytes (ONNX Runtime reused what the 1-row call had allocated): 512 rows
    per call, 10.4 GB under --memory-limit 300M."""
    width = max(np.dtype(runner.input_dtype).itemsize, 4)
    return int(np.size(x)) * (2 * width + 16)


def _python_warning(message: str) -> None:
    """Session's default `warn`: one line, its file names' control characters escaped as
    the command line's are (an ESC in a name reached the terminal and cleared it)."""
    import warnings

    warnings.warn(printable(message), IgcliWarning, stacklevel=3)


def _end_rows(runner, xs, bs, contexts, wants) -> tuple[np.ndarray, list | None, list | None]:
    """Session._ends' call. A baseline shared by the samples (black, say) is evaluated once:
    at 50 steps the ends are 2 of each input's 52 rows, and half of them would be the same
    row. With `wants`, `runner` is the gradient graph, and each baseline row is seeded like
    its input (a shared one like most inputs): the reverse pass runs for every row anyway,
    and where a baseline's row comes out seeded at its input's target, adaptive steps take it
    for alpha = 0. Returns the ends' values, then, with `wants`, each input's gradient and
    each baseline's (the output index it was seeded at, its gradient)."""
    n = len(xs)
    same = all(b is bs[0] or np.array_equal(b, bs[0]) for b in bs[1:])
    shared = same and all(c is None for c in contexts)  # (other inputs may differ per sample)
    if shared:
        rows, context, x_rows = np.stack([*xs, bs[0]]), None, slice(0, n)
        b_rows = [n] * n
    else:
        rows = np.stack([r for x, b in zip(xs, bs, strict=True) for r in (x, b)])
        context = stack_contexts([c for c in contexts for _ in (0, 1)])
        x_rows = slice(0, 2 * n, 2)
        b_rows = list(range(1, 2 * n, 2))
    if wants is None:
        values = runner.run(rows, context)
        x_grads = b_grads = None
    else:
        targets = np.empty(len(rows), dtype=np.int64)
        targets[x_rows] = wants
        targets[b_rows] = Counter(wants).most_common(1)[0][0] if shared else wants
        values, grads = runner.run_with_gradients(rows, targets, context)
        flat = values.reshape(len(values), -1)
        x_grads = list(grads[x_rows])
        b_grads = [(_top_class(flat[r]) if targets[r] == TOP_CLASS else int(targets[r]), grads[r])
                   for r in b_rows]  # fmt: skip
    if shared:
        values = np.stack([v for i in range(n) for v in (values[i], values[n])])
    return values, x_grads, b_grads


def _top_class(output: np.ndarray) -> int:
    """A sample's default target: the index of its first largest output value, flattened (the
    class a TOP_CLASS seed picks in the gradient graph: _end_rows relies on the two agreeing)."""
    return int(np.argmax(output.reshape(-1)))


def _first_target(targets: list[int] | None) -> int:
    """What `Session._ends` seeds for a sample whose targets are these (None: its top class,
    as `Session._targets` picks it): the first of those that `_targets` gives."""
    return targets[0] if targets else TOP_CLASS


def _target_list(targets, name: str) -> list[int] | None:
    """None, or output indices as a list of ints: one int (or numpy integer) is one target."""
    if targets is None:
        return None
    if isinstance(targets, int | np.integer) and not isinstance(targets, bool):
        return [int(targets)]
    try:
        values = list(targets)
    except TypeError:
        raise UsageError(f"{name} must be output indices, not {type(targets).__name__}") from None
    if not all(isinstance(t, int | np.integer) and not isinstance(t, bool) for t in values):
        raise UsageError(f"{name} must be output indices (integers), not {values!r}")
    if not values:  # (no result came back, and no word)
        raise UsageError(f"{name} is empty; None means each sample's top class")
    if len(set(values)) < len(values):  # (their results would share files)
        raise UsageError(f"{name} names a target twice: {values}")
    return [int(t) for t in values]


def default_groups(sample: Sample, prep: Preprocessing) -> str:
    """Per-feature differences unless the input is a large image (then 4x4 patches): a
    picture, or a tensor laid out as the image model's input (a 3x64x64 .npy per feature
    is 24,576 model rows per path point)."""
    image = sample.kind == "image" or (prep.is_image_model and sample.x.ndim == 3)
    return "4x4" if image and sample.x.size > 4096 else "1"


def parse_groups(spec: str | None, sample: Sample, prep: Preprocessing) -> np.ndarray | None:
    """Feature groups for finite differences: None = one group per feature."""
    import re

    spec = spec or default_groups(sample, prep)
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


# A gradient graph this large takes ONNX Runtime minutes to prepare on its first run (timm's
# sequencer2d_s: 76,083 nodes from 36 LSTMs unrolled, 113 s): the run says so before it waits.
LARGE_GRAPH_NODES = 20_000

# How a refused --at ends (a tensor whose first axis is not the batch, by its dims or its rows).
_BATCH_FIRST_ONLY = (
    "igcli attributes at tensors whose first axis is the batch: choose such a tensor, or "
    "attribute at the input"
)

# Ops whose results carry no gradient, beyond those that round: comparisons (a threshold on
# the input makes F jump where it flips) and those giving integers (shapes, indices).
_COMPARISONS = {"Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"}
_STEPS = {"Round": "rounds", "Floor": "rounds", "Ceil": "rounds", "Sign": "takes the sign of"}
_INTEGER_RESULTS = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin"}


def _half(runner: ModelRunner) -> bool:
    """Whether a model takes or gives float16."""
    return np.float16 in (runner.input_dtype, runner.output_dtype)


# Images up to this size are tried at nearby sizes when a model of open size fails at theirs
# (see Session.size_hint): each try is one forward call.
MAX_PROBE_PIXELS = 4096 * 4096


def _one_at_a_time(method):
    """A Session shared by threads runs one such call at a time: its graphs are built and
    self-checked per input shape, and eight threads on an open-size model checked one
    shape's graph with another's rows (a failed check: finite differences from then on)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._calls:
            return method(self, *args, **kwargs)

    return locked


# What _judge says of one input's numbers, once per kind in a batch; attribute() of a
# single input says them for each call.
PER_INPUT_WARNINGS = frozenset({"completeness", "saturated", "no change"})


class Session:
    """One model, ready to explain: sessions, preprocessing and gradient source built once.

    Options are keyword arguments named like the command line's flags:
    input/output pick the tensors (default: the first float input, the first float output;
    `output` may name any float tensor of the graph, such as pre-softmax logits); `feeds`
    gives values for other inputs; `gradients` is "auto" (the gradient graph where it builds
    and passes its self-check, else finite differences), "graph" or "fd".

    `at` names a float tensor of the graph to attribute at instead of the input (the model is
    cut there, see cut.py); for inputs of integer token ids it defaults to the embedding lookup
    they feed. `aggregate` (sum, l2, none) turns attributions at such a tensor into one value
    per input position (per token). `tokenizer` is a tokenizer.json for token models (default:
    `<model>.tokenizer.json` or `tokenizer.json` beside the model). `size` ("HxW" or (H, W))
    is the size images are resized to for a model that takes any (default: the sidecar's,
    else each image's own).

    What the session finds worth saying (a fallback to finite differences, a completeness
    miss, rows that are no batch) goes to `warn`, a function of one string; by default it
    is a Python warning of category igcli.IgcliWarning, which notebooks and scripts show.
    Of an input's numbers (a completeness miss, a saturated softmax, no change to attribute)
    each `attribute` call says its own; `attribute_many`, a batch, says each kind once.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        input: str | None = None,
        output: str | None = None,
        softmax: bool = False,
        dequantize: bool = False,
        feeds: dict[str, str | Path | np.ndarray] | None = None,
        gradients: str = "auto",
        fd_step: float = 1e-3,
        fd_groups: str | None = None,
        provider: str | None = None,
        threads: int | None = None,
        batch_size: int | None = None,
        memory_limit: int | None = None,
        preprocess: str | None = None,
        size: str | tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        labels: Sequence[str] | str | Path | None = None,
        cache: bool = True,
        warn: Callable[[str], None] | None = None,
        at: str | None = None,
        aggregate: str = "sum",
        tokenizer: str | Path | None = None,
    ) -> None:
        options = dict(locals())  # for sessions cut at other tensors (see `cut`)
        if not isinstance(model, str | Path):
            raise UsageError(f"model must be the path of an .onnx file, not {model!r}")
        self._options = {k: v for k, v in options.items() if k not in ("self", "model", "at")}
        self._siblings: dict[str, Session] = {}
        if aggregate not in AGGREGATES:
            raise UsageError(f"aggregate {aggregate!r}: choose {', '.join(AGGREGATES)}")
        self.aggregate = aggregate
        if gradients not in GRADIENT_CHOICES:
            raise UsageError(f"gradients {gradients!r}: choose auto, graph or fd")
        _check_resources(fd_step, threads, batch_size, memory_limit, warn)
        self.model_path = _local_path(model)
        self.gradients = gradients
        if fd_groups is not None and not isinstance(fd_groups, str):  # (re's TypeError)
            raise UsageError(f"fd_groups must be a string (HxW), not {type(fd_groups).__name__}")
        self.fd_step, self.fd_groups = fd_step, fd_groups
        if not isinstance(softmax, bool | np.bool_):  # ("no" is truthy: a softmax was added)
            raise UsageError(f"softmax must be True or False, not {softmax!r}")
        self.softmax = bool(softmax)
        if not isinstance(dequantize, bool | np.bool_):
            raise UsageError(f"dequantize must be True or False, not {dequantize!r}")
        self.dequantize = bool(dequantize)
        self.twinned = False  # the model explained is a quantized model's float twin
        self.use_cache = cache
        self.warn = warn or _python_warning
        if cache:
            size_limit()  # a bad IGCLI_CACHE_MAX: said now, not after the first graph is built
            why = cache_problem()
            if why is not None:
                self.use_cache = False
                self.warn(f"{cache_dir()}: {why}: running without the cache")
        self._warned: set[str] = set()
        self._size_hints: dict[tuple[int, int], str] = {}  # see size_hint
        self._size_multiple: int | None = None  # (the sides' multiple a size hint found)
        self.model = without_initializer_inputs(load_model(self.model_path))
        # (an ONNX Runtime-fused embedding block hides the lookup token models start at)
        self.model = with_embeddings_exposed(self.model)
        if self.dequantize:
            self.model = self._float_twin(self.model)
        self.sha256 = model_hash(self.model_path, remember=self.use_cache)
        self.sidecar = Sidecar.load(self.model_path)
        inputs = require_inputs(self.model, self.model_path)
        self.input_spec = self._choose_input(inputs, input)
        # a sequence-first input ([T, N, F]) takes its rows on axis 0 from here on, and so
        # does every output (batch_axis is kept in self.prep below)
        sha = self.sha256 if self.use_cache else None
        self.model, batch_axis, self._outputs_moved = rows_first(self.model, self.input_spec, sha)
        if batch_axis or self._outputs_moved:
            inputs = require_inputs(self.model, self.model_path)
            self.input_spec = next(s for s in inputs if s.name == self.input_spec.name)
        first = self.input_spec.shape[0] if self.input_spec.shape else None
        self._fixed_batch = first if isinstance(first, int) and first > 1 else None  # a dummy 8
        values = math.prod(d for d in self.input_spec.shape if isinstance(d, int) and d > 0)
        if values > MAX_TENSOR_VALUES:  # a row could never be read, nor a probe allocated
            raise ModelError(
                f"input {self.input_spec.name!r} declares {values:,} values "
                f"{list(self.input_spec.shape)}; igcli handles at most {MAX_TENSOR_VALUES:,}",
                self.model_path,
            )
        self.output_spec = self._choose_output(output)
        self.output_name = self.output_spec.name
        # labels=[]: none shown (it fell back to the sidecar's); None: the sidecar's
        self.labels = _labels(labels) if labels is not None else self.sidecar.labels
        dims = self.output_spec.shape[1:]
        classes = int(np.prod(dims)) if dims and all(isinstance(d, int) for d in dims) else None
        self.classes = classes  # values per sample of the explained output, where declared
        if self.labels and classes is not None and classes != len(self.labels):
            self.warn(
                f"{self.model_path}: {len(self.labels)} labels for {classes} outputs of "
                f"{self.output_name!r}: class names may be off"
            )
        # Integer ids (token models): other inputs such as the attention mask are derived
        # per sample unless fed.
        self.tokens: TokenInputs | None = None
        if self.input_spec.kind == "tensor" and self.input_spec.dtype.kind in "iu":
            self.tokens = token_inputs(
                self.model_path, self.input_spec, inputs, set(feeds or {}), tokenizer
            )
        elif tokenizer is not None:  # (it was ignored: an image explained as if it were used)
            raise UsageError(
                f"--tokenizer is for token models, whose input takes integer token ids; "
                f"input {self.input_spec.name!r} takes {self.input_spec.dtype} values",
                self.model_path,
            )
        derived = set(self.tokens.derived) if self.tokens else set()
        usable = [s for s in inputs if s.name not in derived]
        self.feeds = load_feeds(feeds or {}, usable, self.input_spec, self.model_path)
        model_for_run = self.model
        if self.output_name not in {o.name for o in self.model.graph.output}:
            model_for_run = expose_output(self.model, self.output_name)
        if softmax:
            model_for_run, self.output_name = with_softmax(model_for_run, self.output_name)
        self.run_model = model_for_run
        if not depends_on(model_for_run, self.output_name, self.input_spec.name):
            raise UsageError(
                f"output {self.output_name!r} does not depend on the values of input "
                f"{self.input_spec.name!r}: there is nothing to attribute; choose another "
                "--output or --input",
                self.model_path,
            )
        self.softmax_input = softmax_input(model_for_run, self.output_name)
        if self.tokens is not None:
            if size is not None:
                raise UsageError("--size is for image models; this one takes token ids")
            self.prep = Preprocessing(list(self.input_spec.shape), dtype=self.input_spec.dtype)
        else:
            self.prep = make_preprocessing(
                self.input_spec,
                self.sidecar,
                mean,
                std,
                preset=preprocess,
                size=parse_image_size(size),
            )
        self.prep.batch_axis = batch_axis
        _check_fd_step(fd_step, self.prep.dtype)
        # said when the first picture is read: arrays and .npy tensors are model inputs already
        self._note_pixels = self.prep.unnormalised_rgb and preprocess is None
        self.at, self._cut = self._choose_cut(at)
        if self._cut is None and aggregate != "sum":
            raise UsageError("--aggregate applies to attributions at a tensor (--at)")
        # IG runs on `ig_model`, whose input `ig_input` is what the path moves: the model
        # input itself, or the tensor the model is cut at.
        if self._cut is not None:
            self.ig_model, self.ig_input = self._cut.after, self._cut.tensor
            self.ig_shape = list(self._cut.spec.shape)
        else:
            self.ig_model, self.ig_input = self.run_model, self.input_spec.name
            self.ig_shape = list(self.input_spec.shape)
        self._before: ModelRunner | None = None
        self._example_context: Context | None = None  # shapes for specialising graphs
        if self.tokens is not None and self.tokens.vocab.path is None:
            # (a mask given with --feed is not derived, so not all ones: it went unsaid)
            mask = any("mask" in name.lower() for name in self.tokens.derived)
            self.warn(
                f"{self.model_path}: no tokenizer.json beside the model (or --tokenizer): "
                "tokens are shown as ids, "
                + ("the attention mask is all ones, " if mask else "")
                + "and the pad baseline (the default) puts id 0 at every position (special "
                "tokens unknown)"
            )
        self.providers = resolve_providers(provider)
        self.threads = threads
        # rows per model call: given, or measured against the memory budget on first use
        self.batch_size = max(1, int(batch_size)) if batch_size else MAX_ROWS
        self._calls = threading.RLock()  # see _one_at_a_time
        self.memory_budget = memory_limit or default_budget()
        self.memory_per_row: int | None = None
        self._rows_given = batch_size is not None
        self.graph_blockers: list[str] = []
        self._rejected: dict[tuple | None, dict] = {}  # failed self-checks, by graph key
        # Gradient graphs by sample shape; ANY_SHAPE holds a graph valid for every shape.
        # Models with open dims (an image of any size) get one graph per shape they meet.
        self._graphs: dict[tuple | None, GraphRunner | None] = {}
        self._plain: ModelRunner | None = None
        # The plain model for a fresh graph's self-check (and the rows probe before it):
        # made for them alone, dropped after the check.
        self._check_plain: ModelRunner | None = None
        self._no_check_plain = False  # the plain model cannot be made (or must not be)
        # Whether rows of a call are independent (None: not probed yet). It holds for the
        # model, so every runner made from it takes one row per call once it is False.
        self._rows_independent: bool | None = None
        self._current: ModelRunner | None = None
        self._measured: set[int] = set()  # runners whose rows per call are measured
        # A cut model gets only a graph for every shape here: specialising one to a shape
        # may need the values the part after the cut reads (a mask, the ids), which come
        # with the first sample.
        self._baseline_data: dict = {}  # baseline sets and means read from files, by shape
        if gradients != "fd":
            graph = self._graph_for(None if self._cut else self._declared_shape())
            self._current = graph.runner if graph is not None else None

    def _choose_cut(self, at: str | None) -> tuple[str | None, Cut | None]:
        """The tensor to attribute at (None: the input itself) and the model cut there."""
        name = self.input_spec.name
        if self.tokens is None and (at is None or at == name):
            return None, None
        if at is None or at == name:
            lookups = embedding_lookups(self.run_model, name)
            if not lookups:
                raise UsageError(
                    f"input {name!r} is {self.input_spec.type_text} and feeds no embedding "
                    "lookup igcli can find: choose a float input with --input, or a float "
                    "tensor to attribute at with --at (`igcli inspect` lists candidates)",
                    self.model_path,
                )
            if len(lookups) > 1:
                self.warn(
                    f"{self.model_path}: input {name!r} feeds {len(lookups)} embedding lookups; "
                    f"attributing at the first, {lookups[0]!r} (--at picks another)"
                )
            at = lookups[0]
        if self.prep.batch_axis:
            raise UsageError(
                f"--at on a sequence-first input ({name!r}: rows on axis "
                f"{self.prep.batch_axis}) is not supported; attribute at the input itself",
                self.model_path,
            )
        try:
            cut = make_cut(self.run_model, at, name, self.output_name)
        except UsageError as exc:
            raise UsageError(exc.reason, self.model_path) from None
        batch = self.input_spec.shape[0] if self.input_spec.shape else None
        shape = list(cut.spec.shape or [])
        if isinstance(batch, str) and batch in shape[1:] and shape[0] != batch:
            raise UsageError(
                f"--at {at!r} has the input's batch ({batch}) on axis {shape.index(batch)} "
                f"(shape {shape}: sequence first, as torch's nn.Transformer lays out without "
                f"batch_first); {_BATCH_FIRST_ONLY}",
                self.model_path,
            )
        return at, cut

    def cut(self, tensor: str | None) -> Session:
        """This model with the same options, attributed at `tensor` (None: the default);
        made once and kept, so each cut builds its gradient graph once."""
        if tensor == self.at:
            return self
        key = tensor or ""
        if key not in self._siblings:
            self._siblings[key] = Session(self.model_path, **self._options, at=tensor)
        return self._siblings[key]

    # -- set-up -------------------------------------------------------------------------
    def _float_twin(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The model without rounding (dequantize.py), said once; a float model as it is."""
        if not is_quantized(model):
            self.warn(f"{self.model_path}: --dequantize: the model has no quantized ops; "
                      "explaining it as it is")  # fmt: skip
            return model
        twin = float_twin(model, self.model_path)
        self.twinned = True
        self.warn(
            f"{self.model_path}: --dequantize: explaining its float twin (the same weights, "
            "activations not rounded): F(x) is the twin's, which differs from the quantized "
            "model's by its rounding"
        )
        return twin

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
                hint = next(filter(None, map(self._zipmap_input, outputs)), None)
                raise UsageError(
                    f"model has no float output to explain ({why}); name a float tensor "
                    "inside it with --output"
                    + (f" (the ZipMap's probabilities: --output {hint})" if hint else ""),
                    self.model_path,
                )
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
                hint = self._zipmap_input(match)
                if hint:
                    why += f", or explain the probabilities the ZipMap reads: --output {hint}"
                raise UsageError(why, self.model_path)
            return match
        exposed = expose_output(self.model, name)  # raises a usage error for a bad name
        return next(s for s in graph_outputs(exposed) if s.name == name)

    def default_target_note(self) -> str | None:
        """What to say when no target is named and the output is not one score per class (a
        detector's [84, 8400], a segmenter's [21, H, W], a language model's [seq, vocab]):
        the default, the largest value of them all, may be a box coordinate or one pixel's
        score, a choice no user made."""
        dims = self.output_spec.shape[1:]
        if sum(1 for d in dims if d != 1) < 2:
            return None
        shown = ", ".join("?" if d is None else str(d) for d in dims)
        return (
            f"{self.model_path}: output {self.output_name!r} holds [{shown}] values per input, "
            "not one score per class; each input is explained for the largest of them (its "
            "flat index is the target), which may be a box coordinate or one position's "
            "score: name the value to explain with --target or --targets-from"
        )

    def _zipmap_input(self, spec: TensorSpec) -> str | None:
        """The float tensor a ZipMap output is made from (skl2onnx's probabilities), if any."""
        for node in self.model.graph.node:
            if node.op_type == "ZipMap" and spec.name in node.output and node.input:
                return node.input[0]
        return None

    def _cache_key(self, kind: str, shape: tuple | None = None) -> str | None:
        """Key of this session's cached graphs: what is explained, and how."""
        if not self.use_cache:
            return None
        feeds = self.fingerprint()["feeds"]  # specialised graphs may fold fed values in
        axes = {k: f.batch_axis for k, f in self.feeds.items()}
        shape_text = "any" if shape is None else ",".join(map(str, shape))
        parts = [kind, self.input_spec.name, self.output_name, str(self.softmax)]
        if self.dequantize:
            parts.append("dequantized")
        parts += [json.dumps([feeds, axes], sort_keys=True), shape_text]
        if self.prep.batch_axis:
            parts.append(f"batch_axis={self.prep.batch_axis}")
        if self._outputs_moved:
            parts.append("outputs_batch_first")
        if self._cut is not None:
            parts.append(f"at={self.at}")
        return cache_key(self.sha256, *parts)

    @property
    def _ig_names(self) -> tuple[Path, str, str]:
        """ModelRunner's model path, input and output for the model IG runs on."""
        return (self.model_path, self.ig_input, self.output_name)

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
        names = self._ig_names
        runner = ModelRunner.from_cache(key, *names, **self._runner_kw()) if key else None
        if runner is None:
            try:
                runner = ModelRunner(self.ig_model, *names, cache_key=key, **self._runner_kw())
            except ModelError as exc:
                if not self.twinned:
                    raise
                raise ModelError(  # (the user's file loads: it is the twin igcli made that fails)
                    f"--dequantize: ONNX Runtime cannot load its float twin "
                    f"({exc.reason.removeprefix('ONNX Runtime cannot load it: ')}); explain it "
                    "without --dequantize",
                    self.model_path,
                ) from None
        if self._rows_independent is False:
            runner.one_row_per_call()
        self._plain = runner
        return runner

    def _before_runner(self) -> ModelRunner:
        """The part of a cut model before the cut: the input -> the tensor attributed at."""
        if self._before is None:
            names = (self.model_path, self.input_spec.name, self._cut.tensor)
            self._before = ModelRunner(self._cut.before, *names, **self._runner_kw())
        return self._before

    def _declared_shape(self) -> tuple | None:
        dims = self.ig_shape[1:]
        return tuple(dims) if fixed_dims(dims) and self.ig_shape else None

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
        names = self._ig_names
        kw = dict(self._runner_kw(), target_input=TARGET)
        keys = [(ANY_SHAPE, self._cache_key("graph"))]
        if shape is not None:
            keys.append((shape, self._cache_key("graph", shape)))
        if self.use_cache:
            for valid_for, key in keys:  # the optimised session graph of an earlier run
                runner = ModelRunner.from_cache(key, *names, **kw)
                if runner is not None:
                    return GraphRunner(runner, key), valid_for
            for valid_for, key in keys:  # the gradient graph of an earlier run
                cached = load_graph(key, self.model)
                if cached is not None:
                    return self._graph_runner(cached, key), valid_for
        feeds = {name: feed.value for name, feed in self.feeds.items()}
        # Values that change from sample to sample (a mask, the ids a cut model still reads)
        # give their shapes only: the graph must hold for all of them.
        per_sample = {k: f.value for k, f in (self._example_context or {}).items()}
        read = {s.name for s in graph_inputs(self.ig_model)}
        feeds = {k: v for k, v in {**feeds, **per_sample}.items() if k in read}

        def build(source: onnx.ModelProto) -> GradientGraph:
            if shape is None and self._cut is not None:  # no sample yet: see __init__
                return GradientGraph(build_gradient_model(source, self.ig_input, self.output_name))
            return build_gradient_graph(
                source, self.ig_input, self.output_name, sample_shape=shape,
                feeds=feeds, fold_feed_values=not per_sample,
            )  # fmt: skip

        # A model exported at a fixed batch is differentiated with that batch made symbolic:
        # the shapes recorded for the reverse pass then hold for any batch, so ONNX Runtime
        # keeps a gradient's product with its ReLU mask in the Convs' blocked layout (made
        # symbolic only later, they were dropped: ResNet-50 ran 152 layout reorders, not 17).
        # Should that form fail to build or to load, the model as exported is used.
        fixed = declared_batch(self.ig_model, self.ig_input)
        if fixed:
            graph = None
            with contextlib.suppress(Exception):
                built = build(with_dynamic_batch(self.ig_model, fixed))
                valid_for, model, key = self._seeded(built)
                graph = self._graph_runner(model, key, quiet=True)
            if graph is not None:
                return self._saved_graph(graph, model, key), valid_for
        valid_for, model, key = self._seeded(build(self.ig_model))
        graph = self._graph_runner(model, key)
        return self._saved_graph(graph, model, key), valid_for

    def _seeded(self, built: GradientGraph) -> tuple[tuple | None, onnx.ModelProto, str | None]:
        """(the sample shape it holds for, the graph fed a target per row, its cache key)."""
        valid_for = ANY_SHAPE if built.sample_shape is None else tuple(built.sample_shape)
        key = self._cache_key("graph", valid_for)
        return valid_for, with_target_seed(built.model, self.output_name), key

    def _saved_graph(self, graph, model: onnx.ModelProto, key: str | None):
        """`graph`, its gradient graph cached where ONNX Runtime's optimised one is not: the
        next run opens that (saving the gradient graph too cost ResNet-50 1.25 s of a cold
        run and 164 MB of cache, where rebuilding it costs 1.9 s)."""
        if key is not None and (graph is None or not graph.runner.has_saved(key)):
            save_graph(key, model, self.model)
        return graph

    def _graph_runner(
        self, model: onnx.ModelProto, key: str | None, quiet: bool = False
    ) -> GraphRunner | None:
        """A runner on `model`, or None (said, unless `quiet`) when ONNX Runtime cannot
        load or run it."""
        nodes = len(model.graph.node)
        if nodes >= LARGE_GRAPH_NODES:  # (minutes of silence otherwise)
            self._warn_once(
                "large graph",
                f"{self.model_path}: its gradient graph has {nodes:,} nodes: ONNX Runtime "
                "prepares it once, which can take minutes; later runs load it from the cache",
            )
        try:
            runner = ModelRunner(
                model, *self._ig_names, cache_key=key, target_input=TARGET,
                exported_batch=declared_batch(self.ig_model, self.ig_input), **self._runner_kw(),
            )  # fmt: skip
        except IgcliError as exc:
            if quiet:
                return None
            self._plain_runner()  # the model itself cannot load: a ModelError (exit 3) says so
            self._no_graph(f"ONNX Runtime cannot run its gradient graph: {exc.reason}", None)
            return None
        return GraphRunner(runner, key)

    def _no_graph(self, why: str, shape: tuple | None) -> None:
        at = (
            ""
            if shape is None or shape == self._declared_shape()
            else f" for inputs of shape {list(shape)}"
        )
        if self.gradients == "graph":
            plain = self._plain_runner()  # (one ONNX Runtime cannot load: exit 3, as in explain)
            # an image size the model cannot run at (a detector's odd side) is no missing rule
            if at and self._cut is None and self.prep.is_image_model:
                x, context = np.zeros(shape, self.prep.dtype), self._example_context
                try:
                    plain.run(x[None], context)
                except InputError as exc:
                    reason = self._with_size_hint(exc.reason, x, context)
                    raise InputError(reason, exc.path) from None
            raise GradientError(f"no gradient graph{at}: {why}", self.model_path)
        self._plain_runner()  # finite differences run the model: one ONNX Runtime cannot load
        # is said alone (exit 3), not after a line promising finite differences
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
            **({"dequantize": True} if self.dequantize else {}),  # (older results lack it)
            "feeds": feeds,
            "gradients": self.gradients,
            "fd_step": self.fd_step,
            "fd_groups": self.fd_groups,
            "preprocess": [prep.preset, prep.crop],
            "mean": None if prep.mean is None else prep.mean.tolist(),
            "std": None if prep.std is None else prep.std.tolist(),
            # the rest of what turns a file into the model's input: a sidecar's scale changed
            # from 255 to 128 and --skip-existing kept the results made at 255
            "pixels": [prep.scale, prep.layout, prep.channels, prep.height, prep.width],
            "feature_names": prep.feature_names,
            "labels": self.labels,
            **self._cut_fingerprint(),
        }

    def _cut_fingerprint(self) -> dict:
        if self._cut is None and self.tokens is None:
            return {}
        if not hasattr(self, "_tokenizer_sha"):
            path = self.tokens.tokenizer_path if self.tokens is not None else None
            self._tokenizer_sha = file_sha256(path, self.use_cache) if path is not None else None
        # which of the tokenizer's ids igcli reads as special (the pad baseline keeps them):
        # the same file once read fewer, and its results must not be resumed
        specials = sorted(self.tokens.vocab.keep_ids) if self.tokens is not None else None
        return {"at": self.at, "aggregate": self.aggregate, "tokenizer": self._tokenizer_sha,
                "specials": specials}  # fmt: skip

    @property
    def gradient_source(self) -> str:
        """ "graph" or "fd": where this session's gradients come from."""
        return "graph" if self.graph is not None else "fd"

    def __reduce__(self):
        """Pickling met a raw TypeError about a SimpleQueue (multiprocessing pickles what a
        worker gets); a Session holds ONNX Runtime sessions and threads, so say what to do."""
        raise UsageError(
            "a Session cannot be pickled; pass the model path and options instead, and make "
            "a Session in each process"
        )

    # -- inputs ---------------------------------------------------------------------------
    def _check_fit(self, samples: Sequence[Sample]) -> None:
        """A sample another Session loaded, of another shape, met numpy's 'all input arrays
        must have the same shape' deep inside; it is the caller's mistake, said in one line."""
        expected = self.prep.input_shape
        for s in samples:
            if expected and not shape_matches(s.x.shape, expected[1:]):
                raise UsageError(
                    f"sample {s.name} has shape {list(s.x.shape)}; this model's input "
                    f"{self.input_spec.name!r} is {list(expected)} (a sample loaded by "
                    "another Session?)"
                )

    def load(self, input, name: str | None = None) -> list[Sample]:
        """Samples from a path (image, .npy, CSV: one per row; for token models .npy ids,
        .txt or .jsonl: one per line), an array, a PIL image, or (token models) a string."""
        if isinstance(input, Sample):
            self._check_fit([input])
            return [input]
        if self.tokens is not None:
            return self._load_tokens(input, name)
        if isinstance(input, str | Path):
            from igcli.storage import URL, cached_copy, location

            where = location(input)  # ("file:///x.png" lost a slash in Path(): no such file)
            path = cached_copy(where, InputError) if isinstance(where, URL) else where
            samples = load_samples(path, self.prep, name or Path(str(where)).stem)
        else:
            samples = [sample_from_array(input, self.prep, name or "array")]
        for note in {n: None for s in samples for n in s.notes}:  # (a run may load one twice)
            self._warn_once(f"note:{samples[0].path}:{note}", f"{samples[0].path}: {note}")
        if self._note_pixels and any(s.kind == "image" for s in samples):
            self._note_pixels = False
            self.warn(
                f"{self.model_path}: RGB images reach the model as pixels / "
                f"{self.prep.scale:g}, without mean/std normalisation; if it was trained on "
                "normalised images, say so: --preprocess imagenet (or --mean/--std, or the "
                "sidecar's preprocessing)"
            )
        return samples

    def load_row(self, path: Path, row: int) -> Sample:
        """Sample `row` of a file (a CSV's data row; a text file's line), read no further
        than it: a bad row before it is not its problem (gradcheck --row 1 failed on row 0's
        cells). Past the last row is a usage error naming how many there are."""
        rows = None  # the file's rows one at a time, where each may fail alone
        if self.tokens is None and path.suffix.lower() in TABLE_SUFFIXES:
            rows = iter_table(path, self.prep, path.stem)
        elif self.tokens is not None and path.suffix.lower() in TEXT_SUFFIXES:
            rows = self.tokens.iter_text_file(path, path.stem)
        if rows is not None:
            count = 0
            for count, item in enumerate(rows, 1):
                if count - 1 == row:
                    if isinstance(item, RowError):
                        raise item.error
                    return item
        else:
            samples = self.load(path)
            count = len(samples)
            if row < count:
                return samples[row]
        raise UsageError(f"--row {row}: the input has {count} row(s)", path)

    def _load_tokens(self, input, name: str | None) -> list[Sample]:
        tokens = self.tokens
        if isinstance(input, str) and not _names_a_file(input):
            if not input.strip():
                raise UsageError("the text is empty: it holds no text to explain")
            return [tokens.from_text(input, Path("<text>"), name or "text")]
        if isinstance(input, str | Path):
            path = Path(input)
            suffix = path.suffix.lower()
            if suffix == ".npy":
                return [tokens.from_npy(path, name or path.stem)]
            if suffix in TEXT_SUFFIXES:
                return tokens.from_text_file(path, name or path.stem)
            if not os.path.lexists(path):
                raise InputError("no such file", path)
            raise InputError(
                f"unsupported file type {suffix or '(none)'!r}: a token model takes .npy token "
                "ids, .txt (one text per line) or .jsonl",
                path,
            )
        where = Path(f"<{name or 'array'}>")
        ids = tokens.fit_ids(np.asarray(input), where, UsageError)
        return [tokens.sample(where, name or "array", ids)]

    # -- attribution ----------------------------------------------------------------------
    def attribute(
        self,
        input,
        target: int | None = None,
        *,
        baseline: str | np.ndarray | None = None,
        steps: int | str | None = None,
        method: str | None = None,
        seed: int = 0,
        at: str | None = None,
        **options,
    ) -> Attribution:
        """Integrated Gradients of output[target] (default: the top class) at one input.

        `input`: an image or .npy path, a numpy array in the model input's shape (with or
        without the batch axis), or a PIL image for image models; for token models also a
        string (the text) or an array of token ids. `baseline`: a name (black, zero, blur,
        ...), an image or .npy file, or an array like `input` (token ids for token models).
        `at` attributes at that tensor instead
        (see `cut`). `options` are further `AttributionSettings` fields: path="blur",
        noise=25, baselines="dir/", ... (steps=None: the path's default).
        """
        if at is not None and at != self.at:
            return self.cut(at).attribute(
                input,
                target,
                baseline=baseline,
                steps=steps,
                method=method,
                seed=seed,
                **options,
            )
        samples = self.load(input)
        if len(samples) != 1:
            raise UsageError(
                f"{input} holds {len(samples)} samples; use attribute_many for all of them"
            )
        unknown = sorted(set(options) - set(AttributionSettings.__dataclass_fields__))
        if unknown:
            where = " (a Session option: Session(model, ...))" if "aggregate" in unknown else ""
            raise UsageError(f"attribute() has no option {', '.join(unknown)}{where}")
        settings = AttributionSettings(
            steps=steps, method=method, baseline=baseline, seed=seed, **options
        )
        if target is not None and (
            isinstance(target, bool) or not isinstance(target, int | np.integer)
        ):
            raise UsageError(f"target must be an output index (an integer), not {target!r}")
        targets = None if target is None else [target]
        # one input asked for: what is wrong with its numbers is said for it, even when an
        # earlier call said the same of another (a notebook's later misses went unsaid)
        self._warned -= PER_INPUT_WARNINGS
        return self.attribute_many(samples, targets, settings)[0][0]

    @_one_at_a_time
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
        InputError of several samples names no one of them; callers retry one by one to find
        the one at fault.
        """
        if settings is not None and not isinstance(settings, AttributionSettings):
            raise UsageError(f"settings must be AttributionSettings, not {type(settings).__name__}")
        settings = settings or AttributionSettings()
        settings.check()
        if isinstance(samples, Sample):
            samples = [samples]
        try:
            samples = list(samples)  # a generator or any iterable of samples
        except TypeError:
            raise UsageError(
                f"attribute_many takes samples (from Session.load), not {samples!r}"
            ) from None
        if not samples:
            return []
        if not all(isinstance(s, Sample) for s in samples):
            raise UsageError("attribute_many takes samples (from Session.load), not paths")
        self._check_fit(samples)
        targets = _target_list(targets, "targets")
        if targets_per_sample is not None:
            targets_per_sample = list(targets_per_sample)
            if len(targets_per_sample) != len(samples):
                raise UsageError(
                    f"targets_per_sample has {len(targets_per_sample)} entries for "
                    f"{len(samples)} samples"
                )
            targets_per_sample = [_target_list(t, "targets_per_sample") for t in targets_per_sample]
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
        where = samples[0].path  # a failure of a call with several: no one sample to blame
        if len(samples) > 1:
            where = Path(f"one of {len(samples)} samples ({samples[0].path}, ...)")
        specs = [settings.baseline or self._default_baseline(s) for s in samples]
        names = [str(spec) for spec in specs]  # (an array baseline is named "array")
        if self._cut is not None and not methods.is_plain(settings):
            raise UsageError(
                "paths, baseline sets, noise and regions attribute a model's float input; "
                f"not at a tensor inside it ({self.at}): use straight IG there",
                self.model_path,
            )
        if settings.baseline == "mean":
            means = [self._mean_baseline(s, settings) for s in samples]
            bases, names = [m[0] for m in means], [m[1] for m in means]
        else:
            bases = [
                self._make_baseline(spec, s, settings.seed)
                for spec, s in zip(specs, samples, strict=True)
            ]
        # The path's ends in the space IG walks: the input's (or the cut tensor's) values,
        # and each sample's values of the other inputs (None: the session's feeds only).
        if self._cut is not None:
            xs, bs, contexts = self._through_cut(samples, bases)
        else:
            xs = [s.x for s in samples]
            bs = [b.astype(s.x.dtype) for s, b in zip(samples, bases, strict=True)]
            contexts = [s.feeds for s in samples]
        self._example_context = contexts[0]
        try:
            graph = self._use(xs[0], contexts[0])
        except InputError as exc:  # (the first call at this input's size)
            reason = self._with_size_hint(exc.reason, xs[0], contexts[0])
            raise InputError(reason, exc.path) from None
        if graph is not None and graph.check is None:  # before any call of several rows
            try:
                graph = self._self_check(graph, xs[0], contexts[0])
            except InputError as exc:  # NaN at this input, say: the input's failure
                raise InputError(exc.reason, where) from None
        runner = self.runner
        # Adaptive steps evaluate x itself in their first round: the call that gives F(x)
        # gives its gradient for the sample's first target too (its arg-max by default).
        asked = [targets if own is None else own
                 for own in targets_per_sample or [None] * len(samples)]  # fmt: skip
        wants = None
        if graph is not None and settings.adaptive and methods.is_plain(settings):
            wants = [_first_target(mine) for mine in asked]
        try:  # one call gives the targets and both ends of every path
            ends, x_grads, b_grads = self._ends(graph, xs, bs, contexts, wants)
        except IgcliError as exc:
            reason = exc.reason
            if "NaN" in reason or "Inf" in reason:  # at the input, or only at the baseline?
                try:
                    runner.run(np.stack(xs), stack_contexts(contexts))
                    reason = (
                        f"F at the baseline ({names[0]}) is NaN or Inf; choose another --baseline"
                    )
                except IgcliError:
                    pass
            else:
                reason = self._with_size_hint(reason, xs[0], contexts[0])
            raise InputError(reason, where) from None
        out_shape = ends.shape[1:]

        jobs = []  # (sample index, target, problem)
        for i, (x, base, context) in enumerate(zip(xs, bs, contexts, strict=True)):
            pair = ends[2 * i : 2 * i + 2]
            chosen = self._targets(pair[0], out_shape, asked[i])
            for t in chosen:
                source = self._source(graph, t, samples[i], x, base, context)
                problem = Problem(x, base, source, tuple(pick(pair, t)))
                if x_grads is not None and t == chosen[0]:  # (the target the ends seeded)
                    problem.end_gradient = x_grads[i]
                if b_grads is not None and b_grads[i][0] == t:
                    problem.baseline_gradient = b_grads[i][1]
                jobs.append((i, t, problem))
        if isinstance(jobs[0][2].source, FiniteDifferences) and methods.is_plain(settings):
            self._warn_of_slow_differences(jobs[0][2].source, settings, runner)
        start = time.perf_counter()

        def integrate(jobs):
            return integrated_gradients_many(
                [job[2] for job in jobs],
                steps=settings.steps,
                method=settings.method,
                batch_size=runner.batch_size,
                tolerance=settings.tolerance,
                max_steps=settings.max_steps,
            )

        try:
            if methods.is_plain(settings):
                try:
                    results = integrate(jobs)
                except InputError as exc:
                    if not (exc.reason.startswith("gradient contains") and graph is not None
                            and self.gradients == "auto" and len(samples) == 1):  # fmt: skip
                        raise  # (several inputs: the batch retries them one by one)
                    # F is finite and the graph's gradient is not: 0 * inf where a Where
                    # masks a branch (Sqrt of a negative), say. Finite differences need F only.
                    self.warn(
                        f"{where}: the gradient graph gives a NaN or infinite gradient where F "
                        "is finite (a branch a Where masks, say); finite differences instead"
                    )
                    jobs = [
                        (i, t, Problem(p.x, p.baseline, self._source(
                            None, t, samples[i], p.x, p.baseline, contexts[i]), p.end_values))
                        for i, t, p in jobs
                    ]  # fmt: skip
                    results = integrate(jobs)
            else:  # another path, baseline distribution or averaging (methods.py)
                results = self._attribute_family(jobs, samples, bases, names, graph, settings)
        except IgcliError as exc:
            if isinstance(exc, UsageError):
                raise
            reason = exc.reason
            if reason.startswith(f"output {self.output_name!r} contains"):
                if settings.noise:  # (the noisy copies' ends are not checked first)
                    reason += (
                        f" at a noisy copy of the input or on its path (--noise std "
                        f"{settings.noise_std:g}: too large?)"
                    )
                else:  # (F at both ends was finite, checked first: inside the path)
                    reason += (
                        " at a point on the path between the baseline and the input (F is "
                        "finite at both); try another --baseline"
                    )
            raise InputError(reason, where) from None
        share = (time.perf_counter() - start) / max(len(jobs), 1)
        out: list[list[Attribution]] = [[] for _ in samples]
        for (i, t, problem), result in zip(jobs, results, strict=True):
            source = problem.source
            is_fd = isinstance(source, FiniteDifferences)
            extra = {"steps_used": result.steps, **methods.record_fields(settings)}
            extra.update(getattr(result, "extra", {}))
            if result.converged is not None:
                extra.update(converged=result.converged, stop_reason=result.stop_reason)
            if result.feature_error is not None:
                extra["feature_error"] = result.feature_error
            if self.twinned:
                extra["dequantized"] = True  # (F is the twin's: said under the heatmap too)
            if graph is not None and graph.check is not None:
                extra["gradient_check"] = graph.check.summary()
            elif is_fd and self._rejected:  # why finite differences: the graph's failed check
                key = ANY_SHAPE if ANY_SHAPE in self._rejected else tuple(xs[0].shape)
                if key in self._rejected:
                    extra["gradient_check"] = self._rejected[key]
            family = isinstance(result, methods.FamilyResult)
            attribution = Attribution(
                attributions=result.attributions,
                sample=samples[i],
                baseline=result.baseline_array if family else bs[i],
                target=t,
                label=self.label(t),
                output=self.output_name,
                f_input=result.f_input,
                f_baseline=result.f_baseline,
                steps=(result.steps_asked or settings.steps) if family else settings.steps,
                method=result.method,
                baseline_name=result.baseline_name if family else names[i],
                gradient_source=source.name,
                prep=self.prep,
                fd_step=source.step if is_fd else None,
                fd_groups=(self.fd_groups or default_groups(samples[i], self.prep))
                if is_fd
                else None,
                wall_time_s=share,
                extra=extra,
                at=self.at,
                aggregate=self.aggregate,
                completeness_sum=result.completeness_sum if family else None,
            )
            if settings.regions:
                self._regions(attribution, settings)
            out[i].append(attribution)
            # completeness holds up to the quadrature on every path, without noise or
            # Monte Carlo draws (expected gradients)
            exact = not settings.noise and not (settings.baselines and settings.samples)
            self._judge(attribution, source, exact=exact, x=problem.x)
            if result.converged is False:
                # (where the run said more steps cannot help, it does not now advise more)
                more = result.stop_reason == "max_steps" and not self.looks_piecewise
                hint = " (raise --max-steps)" if more else ""
                self.warn(
                    f"{samples[i].path}: adaptive steps stopped after {result.steps} gradient "
                    f"evaluations at completeness error {attribution.rel_error:.3g}: "
                    f"{STOP_REASONS[result.stop_reason]}{hint}"
                )
        return out

    SLOW_DIFFERENCES_S = 60.0  # per input: past this, say what finite differences cost

    def _warn_of_slow_differences(self, source: FiniteDifferences, settings, runner) -> None:
        """Once a run, when finite differences will take minutes per input: their cost is two
        model rows per feature group and path point (a 3x128x128 image in 4x4 patches: 2,048
        rows a point, 43 s on two cores), and nothing else said so before the wait."""
        points = 9 if settings.adaptive else int(settings.steps)  # (auto: its first round)
        rows = 2 * len(source.index_sets) * points
        seconds = runner.seconds / runner.rows * rows if runner.rows else None
        if seconds is not None and seconds < self.SLOW_DIFFERENCES_S:
            return
        if seconds is None and rows < 100_000:
            return
        eta = f", about {seconds / 60:.0f} min" if seconds is not None else ""
        some = "at least " if settings.adaptive else ""
        cheaper = "fewer --steps"
        if self.prep.is_image_model:
            cheaper = f"larger --fd-groups patches (16x16: 1/16 the rows of 4x4) or {cheaper}"
        self._warn_once(
            "slow-differences",
            f"{self.model_path}: finite differences take {some}{rows:,} model rows per input "
            f"({len(source.index_sets):,} feature groups x 2 x {points} path points{eta}); "
            f"{cheaper} make them faster",
        )

    def _ends(self, graph, xs, bs, contexts, wants):
        """F at each sample's input and baseline, as rows x0, b0, x1, b1, ..., and, with
        `wants` (a target per sample: an index, or TOP_CLASS for its arg-max), dF/dx at each
        input for that target and at each baseline (see _end_rows) from the same call of the
        gradient graph; else None, None. Where that call fails (a gradient that is not
        finite, say), F alone: the path's own calls meet it and handle it (finite differences
        under --gradients auto)."""
        if wants is not None:
            with contextlib.suppress(InputError):  # (the plain call says what is wrong)
                return _end_rows(graph, xs, bs, contexts, wants)
        return _end_rows(self.runner, xs, bs, contexts, None)

    # -- the path-method family (methods.py, regions.py) ---------------------------------
    def _attribute_family(self, jobs, samples, bases, names, graph, settings):
        """Other paths, baseline distributions and noise: methods.run over the same jobs."""

        def source(target, sample, x, b, per_feature):
            return self._source_between(graph, target, sample, x, b, per_feature)

        def baseline_set(sample):
            if settings.baselines:
                return self._baseline_set(settings.baselines, sample), settings.baselines
            if settings.regions == "xrai" and settings.baseline is None:
                pair = [baselines.make_baseline(n, sample, self.prep) for n in ("black", "white")]
                return pair, "black+white"
            return None

        family_jobs = [methods.Job(samples[i], t, bases[i], names[i]) for i, t, _ in jobs]
        context = methods.Context(source, self.runner.batch_size, self.prep, baseline_set)
        return methods.run(family_jobs, settings, context)

    def _source_between(self, graph, target, sample, x, b, per_feature=False):
        """A gradient source for the IG of F from b to x (finite differences move along
        x - b; with per_feature they give every partial derivative, for curved paths)."""
        if graph is not None:
            return GraphGradients(graph, target)
        if per_feature:
            if self.fd_groups not in (None, "1", "1x1", "none"):
                self._warn_once(
                    "fd-groups-path",
                    f"{self.model_path}: blur and guided paths need every partial derivative; "
                    f"finite differences ignore --fd-groups {self.fd_groups} for them",
                )
            direction = np.where(x != b, np.asarray(x, np.float64) - b, 1.0)
            return FiniteDifferences(self.runner, target, direction, None, self.fd_step,
                                     ends=(x, b))  # fmt: skip
        groups = parse_groups(self.fd_groups, sample, self.prep)
        direction = np.asarray(x, np.float64) - np.asarray(b, np.float64)
        return FiniteDifferences(self.runner, target, direction, groups, self.fd_step,
                                 ends=(x, b))  # fmt: skip

    def _baseline_set(self, spec: str, sample: Sample) -> methods.BaselineSet:
        key = ("set", spec, sample.x.shape)
        if key not in self._baseline_data:
            self._baseline_data[key] = methods.read_baseline_set(
                spec, self.prep, sample, self.memory_budget
            )
        return self._baseline_data[key]

    def _mean_baseline(self, sample: Sample, settings) -> tuple[np.ndarray, str]:
        key = ("mean", settings.baseline_data, sample.x.shape)
        if key not in self._baseline_data:
            self._baseline_data[key] = methods.mean_baseline(
                settings.baseline_data,
                self.sidecar.raw,
                self.prep,
                sample,
                self.model_path.with_suffix(".json"),
                self.memory_budget,
            )
        return self._baseline_data[key]

    def _regions(self, a: Attribution, settings) -> None:
        """XRAI regions of an image attribution (needs the xrai extra: scikit-image)."""
        from igcli import regions

        if not (self.prep.is_image_model and a.sample.x.ndim == 3):
            raise UsageError("--regions xrai needs an image model")
        # segmented as PAIR saliency does: the model-space input, rescaled to [-1, 1]
        found = regions.xrai(
            self.prep.model_to_hwc(a.attributions), self.prep.model_to_hwc(a.sample.x)
        )
        a.regions = found
        a.extra["regions"] = found.summary()

    def _judge(
        self,
        a: Attribution,
        source: GradientSource,
        exact: bool = True,
        x: np.ndarray | None = None,
    ) -> None:
        """Warn (once per kind) where the numbers cannot be what the user wants. `x`: the
        path's input end in the space IG walks (the cut tensor's value with a cut)."""
        by_differences = isinstance(source, FiniteDifferences)
        flat = by_differences and source.looks_piecewise_constant
        piecewise = a.delta != 0 and (flat or not np.any(a.attributions))
        unresolved = exact and a.delta != 0 and abs(a.rel_error) > UNRESOLVED
        far = _distance_out(a, x)
        if piecewise and not flat and far >= FAR_OUT:  # this input's values, not the model
            self._warn_once(
                f"far:{a.sample.path}",
                f"{a.sample.path}: F(x) != F(b), but the gradient is zero at every path point: "
                f"the input lies so far from the baseline (|x - b| up to {far:.3g}) that the "
                "model saturates within a sliver of the path, so IG cannot attribute the "
                "change and more steps will not help",
            )
        elif piecewise:
            why = (
                "it is quantized: --dequantize explains its float twin"
                if self._quantized
                else "a tree ensemble, rounding or a step function"
            )
            seen = ", finite differences see only the jumps they straddle" if flat else ""
            self._warn_once(
                "piecewise",
                f"{self.model_path}: F(x) != F(b), but the model looks piecewise constant "
                f"({why}): its gradient is zero almost everywhere along the path{seen}, so IG "
                "cannot attribute the change and more steps will not help",
            )
        elif by_differences and self._quantized:  # dynamic quantization: not flat to them
            # (a miss is then no matter of steps: "raise --steps" sent users the wrong way)
            miss = (
                f"{a.sample.path}: the attributions miss F(x) - F(b) by "
                f"{100 * abs(a.rel_error):.3g}% and more steps will not help: "
                if unresolved
                else f"{self.model_path}: "
            )
            self._warn_once(
                "piecewise",
                f"{miss}the model is quantized, so its gradient is zero or undefined almost "
                "everywhere (finite differences measure its rounding steps); --dequantize "
                "explains its float twin",
            )
        elif unresolved and (end := self._jumps(a, source, x)):
            # said once; a later input that jumps too is not told to raise --steps instead
            self._warn_once(  # (more steps were advised, where none could help)
                "jump",
                f"{a.sample.path}: F jumps at the {end} (target {a.target}): F(baseline) = "
                f"{a.f_baseline:.6g} and F(input) = {a.f_input:.6g}, but a step of 1e-4 along "
                f"the path from the {end} already moves F by a share of that no number of "
                "steps resolves, so the attributions "
                f"miss F(x) - F(b) by {100 * abs(a.rel_error):.3g}% and more steps will not help;"
                " choose another --baseline (a model normalising its input is undefined at 0)",
            )
        elif unresolved and a.extra.get("converged") is None:
            self._warn_once(  # adaptive steps warn on their own when they stop short
                "completeness",
                f"{a.sample.path}: the attributions miss F(x) - F(b) by "
                f"{100 * abs(a.rel_error):.3g}% (target {a.target}, steps {a.steps}): the path "
                "integral is not resolved; raise --steps, or let --steps auto choose"
                + (
                    f" (if the miss stays as steps grow, F jumps inside the path: node "
                    f"{self._threshold[0]!r} {self._threshold[1]} values computed from the "
                    "input)"
                    if self._threshold
                    else ""
                ),
            )
        same_point = a.baseline is not None and np.array_equal(a.sample.x, a.baseline)
        if same_point:
            self.warn(  # a blank heatmap and rel_error 0 said nothing of why
                f"{a.sample.path}: the input equals the baseline ({a.baseline_name}), so every "
                "attribution is 0; choose another --baseline"
            )
        top = max(abs(a.f_input), abs(a.f_baseline))
        if top > 0 and abs(a.delta) <= 1e-3 * top and self.softmax_input is not None:
            self._warn_once(
                "saturated",
                f"{a.sample.path}: output {self.output_name!r} is a saturated softmax for target "
                f"{a.target} (F(x) = {a.f_input:.6g}, F(baseline) = {a.f_baseline:.6g}); "
                f"explain the scores before it instead: --output {self.softmax_input}",
            )
        elif a.delta == 0 and not same_point and not piecewise:
            self._warn_once(  # (a detector's map over an image without text: 0 at both ends)
                "no change",
                f"{a.sample.path}: F(x) = F(baseline) = {a.f_input:.6g} exactly (target "
                f"{a.target}), so there is no change to attribute; choose another target or "
                "--baseline",
            )

    def _with_size_hint(self, reason: str, x: np.ndarray, context: Context | None) -> str:
        """A failure at x, with a size the model runs at where a model call failed."""
        if reason.startswith("model call failed"):
            return reason + self.size_hint(x, context)
        return reason

    def size_hint(self, x: np.ndarray, context: Context | None = None) -> str:
        """For an image model of open height and width that failed at this size (a detector
        whose feature maps must halve evenly, say): a size it runs at, found by rounding both
        sides up to multiples of 2, 4, ... 128 and trying each once. Nothing where none of
        them runs either, or the image is too large to try again in passing."""
        prep = self.prep
        if not prep.is_image_model or self._cut is not None:
            return ""
        axes = (1, 2) if prep.layout == "NCHW" else (0, 1)
        declared = self.input_spec.shape[1:]
        if all(isinstance(declared[a], int) and declared[a] > 0 for a in axes):
            return ""  # (the model's own size: the failure is not about the size)
        h, w = (x.shape[a] for a in axes)
        if h * w > MAX_PROBE_PIXELS:
            return ""
        if (h, w) not in self._size_hints:  # (a folder of such images: probed once)
            self._size_hints[h, w] = self._find_size(x, context, axes)
        return self._size_hints[h, w]

    def _find_size(self, x: np.ndarray, context: Context | None, axes: tuple[int, int]) -> str:
        h, w = (x.shape[a] for a in axes)
        asked = " (the size asked for)" if self.prep.height and self.prep.width else ""
        # the multiple one size needed is tried first at the next (a folder of photos of many
        # sizes on one detector: one probe each, not five)
        learned = [self._size_multiple] if self._size_multiple else []
        for m in [*learned, *(m for m in (2, 4, 8, 16, 32, 64, 128) if m not in learned)]:
            size = (-(-h // m) * m, -(-w // m) * m)
            if size == (h, w):
                continue
            shape = list(x.shape)
            shape[axes[0]], shape[axes[1]] = size
            try:
                self._plain_runner().run(np.zeros([1, *shape], x.dtype), context)
            except IgcliError:
                continue
            self._size_multiple = m
            return (
                f"; the model takes images of any size, but not {h}x{w}{asked}: it runs at "
                f"{size[0]}x{size[1]} (sides multiples of {m}), so pass --size "
                f"{size[0]}x{size[1]} (or another such size)"
            )
        return ""  # no size helped: the failure is not about the size

    def label(self, target: int) -> str | None:
        if self.labels and 0 <= target < len(self.labels) and self.labels[target] != "":
            return str(self.labels[target])
        return None  # no labels, too few, or a blank line for this class

    def _targets(self, output, out_shape, targets) -> list[int]:
        n_out = int(np.prod(out_shape)) if out_shape else 1
        if targets is None:
            return [_top_class(output)]
        for t in targets:  # ints: attribute_many's _target_list made them so
            if not 0 <= t < n_out:
                raise UsageError(
                    f"target {t} is out of range: output {self.output_spec.name!r} "
                    f"has {n_out} values per sample",
                    self.model_path,
                )
        return [int(t) for t in targets]

    def _source(
        self,
        graph: GraphRunner | None,
        target: int,
        sample: Sample,
        x: np.ndarray,
        base: np.ndarray,
        context: Context | None = None,
    ) -> GradientSource:
        if graph is not None:
            return GraphGradients(graph, target, context)
        if self._cut is not None and self.fd_groups not in (None, "1", "1x1", "none"):
            raise UsageError("--fd-groups patches apply to image inputs, not to --at tensors")
        groups = None if self._cut is not None else parse_groups(self.fd_groups, sample, self.prep)
        return FiniteDifferences(
            Bound(self.runner, context),
            target,
            x.astype(np.float64) - base,
            groups,
            self.fd_step,
            ends=(x, base),
        )

    # -- baselines and cuts -------------------------------------------------------------
    def _default_baseline(self, sample: Sample) -> str:
        return "pad" if sample.kind == "tokens" else baselines.default_baseline(sample)

    def _make_baseline(
        self, spec: str | baselines.ArrayBaseline, sample: Sample, seed: int
    ) -> np.ndarray | None:
        """The baseline in the input's space (token ids for token models); None: zeros at
        the tensor attributed at (`zero` with a cut)."""
        if sample.kind == "tokens":
            return token_baseline(spec, sample, self.tokens.vocab)
        if self._cut is not None and spec == "zero":
            return None
        return baselines.make_baseline(spec, sample, self.prep, seed=seed)

    def _through_cut(self, samples: Sequence[Sample], bases: list[np.ndarray | None]):
        """The cut tensor's values at each input and baseline (the part before the cut runs
        on both, with the input's other values), and each sample's context for the part
        after it: its own feeds and the input itself where that part still reads it."""
        rows, row_contexts = [], []
        for s, b in zip(samples, bases, strict=True):
            rows.append(s.x)
            row_contexts.append(s.feeds)
            if b is not None:
                rows.append(b.astype(s.x.dtype))
                row_contexts.append(s.feeds)
        try:
            values = self._before_runner().run(
                np.stack(rows), stack_contexts(row_contexts), rows_first=False
            )
        except IgcliError as exc:
            raise InputError(exc.reason, samples[0].path) from None
        if len(values) != len(rows):  # its rows are not the samples': row 0 was one position
            raise UsageError(
                f"--at {self.at!r}: the model gives it the shape {list(values.shape)} for "
                f"{len(rows)} row(s), so its first axis is not the batch (sequence first, as "
                "torch's nn.Transformer lays out without batch_first, or the batch merged into "
                f"another axis or dropped); {_BATCH_FIRST_ONLY}",
                self.model_path,
            )
        xs, bs, contexts = [], [], []
        k = 0
        name = self.input_spec.name
        for s, b in zip(samples, bases, strict=True):
            xs.append(values[k])
            bs.append(values[k + 1] if b is not None else np.zeros_like(values[k]))
            k += 1 if b is None else 2
            context = dict(s.feeds or {})
            if name in self._cut.after_inputs:
                context[name] = Feed(s.x[None], 0)
            contexts.append(context or None)
        return xs, bs, contexts

    @_one_at_a_time
    def graph_for(self, x: np.ndarray) -> GraphRunner | None:
        """The gradient graph for samples shaped like x (None: finite differences)."""
        return self._graph_for(tuple(x.shape))

    @_one_at_a_time
    def check_point(self, sample: Sample) -> tuple[GraphRunner | None, np.ndarray, Context]:
        """Where a gradient check of `sample` happens: the graph that IG would use, the point
        in the space IG walks (the input, or the cut tensor's value there) and the sample's
        other inputs."""
        if self._cut is not None:
            xs, _, contexts = self._through_cut([sample], [None])
            x, context = xs[0], contexts[0]
        else:
            x, context = sample.x, sample.feeds
        self._example_context = context
        return self._use(x, context), x, context  # rows per call and their independence set

    def _use(self, x: np.ndarray, context: Context | None = None) -> GraphRunner | None:
        """Make the graph (or the plain model) for samples shaped like x the current runner."""
        graph = self._graph_for(tuple(x.shape))
        self._current = graph.runner if graph is not None else self._plain_runner()
        if id(self._current) not in self._measured:  # before anything else runs on it
            self._measured.add(id(self._current))
            if not self._rows_given and 4 * _row_floor(x, self._current) > self.memory_budget:
                # a row this large goes alone from the start, with no probes of several rows:
                # a 2000 x 2000 image's probes kept 2.4 GB of ONNX Runtime's memory under a
                # 1 GB budget (and independence means nothing at one row per call)
                self._set_rows(self._current, 1, _row_floor(x, self._current), current_rss())
                return graph
            # independence first: rows that change each other's outputs (or share one scalar
            # output) go one per call, and then there is nothing to measure
            try:
                self._check_rows_independent(self._current, graph, x, context)
                if not self._rows_given:
                    self._measure_rows(self._current, graph, x, context)
            except InputError as exc:
                if graph is None:
                    raise
                self._graph_cannot_run(graph, exc, x, context)
                return self._use(x, context)  # (the plain model's runner now)
        return graph

    def _graph_cannot_run(
        self, graph: GraphRunner, exc: InputError, x: np.ndarray, context: Context | None
    ) -> None:
        """A call of the gradient graph failed at x. If the model itself runs there, the
        graph is at fault (a kernel ONNX Runtime lacks for its type: float16 ScatterND with
        add, in the reverse of GatherND and GridSample): `auto` turns to finite differences
        and `graph` stops (exit 7). Those inputs failed one by one, as if they were bad."""
        if isinstance(exc, NonFiniteGradient) or not exc.reason.startswith("model call failed"):
            raise exc
        # (fails too, or has no values there: the input's problem, said so)
        self._plain_runner().run(x[None], context)
        why = f"ONNX Runtime cannot run it: {exc.reason.removeprefix('model call failed: ')}"
        if self.gradients == "graph":
            raise GradientError(f"gradient graph failed: {why}", self.model_path) from None
        self._reject(graph, why, {"verdict": "error", "why": why})

    @_one_at_a_time
    def check_gradients(self, sample: Sample) -> None:
        """Self-check the gradient graph at `sample` now rather than at the first sample
        explained: runs split over shards or workers then check at the same input (their
        plan's first) and their records carry the same `gradient_check`."""
        graph, x, context = self.check_point(sample)
        if graph is not None and graph.check is None:
            self._self_check(graph, x, context)

    def _check_rows_independent(
        self, runner: ModelRunner, graph, x: np.ndarray, context: Context | None = None
    ) -> None:
        """Path points share calls as rows of the first axis; when that axis is not a batch
        (Silero's sequence model runs its rows through one LSTM), rows change each other's
        outputs and must go one per call, in every runner of the model: the self-check's
        differences and finite differences too.

        Before a fresh graph's self-check the probe runs on the plain model the check is
        about to use (forward rows: on ResNet-50 a gradient row costs 2.6 of them)."""
        if self._rows_independent is not None:
            if not self._rows_independent:
                runner.one_row_per_call()
            return
        stored = self._stored_check(graph) if graph is not None else None
        if stored is not None and stored.get("gradient_rows") is False:
            self._refuse_a_fixed_axis_that_is_no_batch("gradients")
            runner.one_row_per_call()  # an earlier run found this graph's rows coupled
        if stored is not None and stored.get("rows_independent") is True:
            self._rows_independent = True  # found by an earlier run on this very graph
            return
        plain = self._check_runner() if graph is not None and stored is None else None
        probe = plain if plain is not None and plain.batch_size > 1 else runner
        if probe.batch_size <= 1:
            return
        # (a gradient graph's forward values come with no target: a zero seed)
        found = _rows_alone_and_together(probe, x, [probe.output_name], None, context)
        if found is None or found[0][0].size == 0:
            return  # the model call fails, gives NaN or no values: the run says which
        alone, joint = found
        # rows that run alone but not together (joint None) go one per call too
        self._rows_independent = joint is not None and _rows_match(joint[0], alone[0], 1e-6)
        if self._rows_independent:
            return
        self._refuse_a_fixed_axis_that_is_no_batch("outputs")
        for each in {id(r): r for r in (runner, plain, self._plain) if r is not None}.values():
            each.one_row_per_call()
        why = "quantized over the whole batch?" if self._quantized else "a sequence?"
        self._warn_once(
            "rows",
            f"{self.model_path}: rows of input {self.input_spec.name!r} change each other's "
            f"outputs (its first axis is not a batch: {why}), so path points go one per model "
            "call",
        )

    def _stored_check(self, graph: GraphRunner) -> dict | None:
        """What an earlier run recorded about this graph, read once per graph (rows per
        call, rows independence and the self-check each ask)."""
        if graph.cache_key is None or not self.use_cache:
            return None
        if graph.stored is None:
            graph.stored = load_check(graph.cache_key) or {}
        return graph.stored or None

    def _self_check(
        self, graph: GraphRunner, x: np.ndarray, context: Context | None = None
    ) -> GraphRunner | None:
        """Compare a fresh graph's directional derivatives with finite differences once.

        A wrong gradient must be caught, not shipped: on a mismatch `auto` falls back to
        finite differences (with a warning naming the model) and `graph` stops (exit 7).
        """
        stored = self._stored_check(graph)
        if stored is not None:  # this very graph passed before: see cache.save_check
            graph.check = StoredCheck(stored["check"])
            return graph
        values = self.check_values(context, x)
        try:
            check = check_directions(Bound(graph, context), x, directions=4, seed=0, values=values)
        except NonFiniteGradient as exc:
            if self.gradients == "graph":
                raise
            self._check_plain = None
            return self._reject(graph, f"{exc.reason} where F is finite", None)
        except InputError as exc:
            self._graph_cannot_run(graph, exc, x, context)
            return None
        self._check_plain = None  # made for the check alone
        graph.check = check
        if check.verdict != "mismatch":
            gradient_rows = self.gradient_rows_agree(graph, x, check.target, context)
            if not gradient_rows:
                self._refuse_a_fixed_axis_that_is_no_batch("gradients")
                graph.runner.one_row_per_call()
                self._warn_once(
                    "gradient-rows",
                    f"{self.model_path}: the gradient graph's rows change each other's "
                    "gradients (a batch of 1 fixed inside the model, say): path points go one "
                    "per model call, where its gradient passed the self-check",
                )
            if graph.cache_key and self.use_cache:
                rows = self._rows_independent is True
                found = {"check": check.summary(), "rows_independent": rows,
                         "gradient_rows": gradient_rows}  # fmt: skip
                if graph.bytes_per_row:
                    found["bytes_per_row"] = graph.bytes_per_row
                save_check(graph.cache_key, found)
            return graph
        # Rows of a first axis fixed above 1 that mix (a Softmax over it) make differences
        # and gradient disagree too: that model is refused, not explained by finite
        # differences (which gave F(x) = F(b) 'exactly' there)
        if self._fixed_batch and not self.gradient_rows_agree(graph, x, check.target, context):
            self._refuse_a_fixed_axis_that_is_no_batch("gradients")
        why = (
            f"its gradient disagrees with finite differences (error {check.error:.3g} "
            f"of the gradient's norm)"
        )
        if self.gradients == "graph":
            raise GradientError(f"gradient graph failed its self-check: {why}", self.model_path)
        return self._reject(graph, why, check.summary())

    def _reject(self, graph: GraphRunner, why: str, summary: dict | None) -> None:
        """Finite differences from here on, for this graph's inputs: said once."""
        self.warn(f"{self.model_path}: gradient graph failed its self-check ({why}); "
                  "using finite differences")  # fmt: skip
        for key, value in list(self._graphs.items()):
            if value is graph:
                self._graphs[key] = None
                self._rejected[key] = summary or {"verdict": "mismatch", "why": why}
        self._current = self._plain_runner()
        return None

    def _refuse_a_fixed_axis_that_is_no_batch(self, what: str) -> None:
        """Rows that change each other's `what` go one per call, unless the model fixes
        its first axis above 1 (a dummy batch of 8): then that axis is no batch (a fully
        fixed sequence-first [T, 8, F], a CTC-style [8, T, F] -> [T, 8, C]), no call gives
        one sample's values alone, and the answer came out wrong with a warning. Refused."""
        if self._fixed_batch:
            raise ModelError(
                f"rows of input {self.input_spec.name!r} change each other's {what}, so its "
                f"first axis (fixed at {self._fixed_batch}) is not a batch, and a sample "
                f"{list(self.input_spec.shape[1:])} cannot be explained alone; export the "
                "model with an open batch axis",
                self.model_path,
            )

    def gradient_rows_agree(
        self, graph: GraphRunner, x: np.ndarray, target: int, context: Context | None = None
    ) -> bool:
        """Whether two rows in one call get the gradients each gets alone. The self-check
        looks at one row; a graph built where the model fixes its batch at 1 can still sum
        gradients over rows (an Expand to a constant [1, 4, H, W] shape, say), which only a
        call of several rows shows. True when there is nothing to compare."""
        runner = graph.runner
        if runner.batch_size <= 1:
            return True
        from igcli.autodiff import GRAD

        names = [runner.output_name, GRAD]  # F and the gradient of each row
        found = _rows_alone_and_together(runner, x, names, target, context)
        if found is None:
            return True  # the calls themselves fail, or give NaN: the run reports that
        alone, joint = found
        if joint is None:  # rows that run alone but not together, or come back as fewer
            return False  # rows (a graph built for a batch of 1): one per call, as for F
        return all(_rows_match(j, a, 1e-5) for j, a in zip(joint, alone, strict=True))

    def check_values(self, context: Context | None, x: np.ndarray | None = None) -> Bound | None:
        """The plain model, for a gradient check's 33 forward rows: through the gradient graph
        each costs a whole gradient row (ONNX Runtime runs the reverse part even when only F
        is asked for), three forward rows on ResNet-50, so a cold run there saves 2-3 s. The
        differences then also hold the graph to the model it was built from. None (the
        graph computes them) where `_check_runner` has no plain model.

        A float16 model is checked with a float32 copy of itself (model.as_float32) where the
        copy gives the model's F at x within float16's rounding: its differences resolve what
        float16's cannot (a conv + attention model's check said 'saturated' and its graph went
        unchecked)."""
        runner = self._check_runner()
        if runner is None:
            return None
        if x is not None and _half(runner):
            wide = self._float32_copy(runner, x, context)
            if wide is not None:
                return Bound(wide, context)
        return Bound(runner, context)

    def _float32_copy(self, runner: ModelRunner, x: np.ndarray, context) -> ModelRunner | None:
        """The float32 copy of a float16 model, if it loads and agrees with it at x."""
        try:
            wide = ModelRunner(as_float32(self.ig_model), *self._ig_names, **self._runner_kw())
            ours = runner.run(x[None], context).astype(np.float64)
            theirs = wide.run(x[None].astype(np.float32), context).astype(np.float64)
        except IgcliError:
            return None
        scale = max(float(np.abs(ours).max()), 1e-6)
        if not np.all(np.abs(ours - theirs) <= 1e-2 * scale):
            return None  # not the same function (an op that behaves otherwise in float32)
        if self._rows_independent is False:
            wide.one_row_per_call()
        return wide

    def _check_runner(self) -> ModelRunner | None:
        """The plain model for a fresh graph's self-check: the one finite differences use if
        there is one, else one made for the check alone (not cached, dropped after it);
        None when the model does not load on its own, or when a second copy of its weights
        would take over a quarter of the memory budget."""
        if self._plain is not None:
            return self._plain
        if self._check_plain is None and not self._no_check_plain:
            self._no_check_plain = weight_bytes(self.ig_model) > self.memory_budget // 4
            if self._no_check_plain:
                return None
            try:
                self._check_plain = ModelRunner(self.ig_model, *self._ig_names, **self._runner_kw())
            except IgcliError:
                self._no_check_plain = True
                return None
            if self._rows_independent is False:
                self._check_plain.one_row_per_call()
        return self._check_plain

    def _set_rows(self, runner: ModelRunner, rows: int, per_row: int, resident: int) -> None:
        """Calls of `rows` rows on `runner` (one a call at 1), each costing about `per_row`
        bytes beside `resident`; said where even one row is over the memory budget."""
        if resident + per_row > self.memory_budget:
            self._warn_once(
                "over budget",
                f"{self.model_path}: {size_text(resident)} in use and about "
                f"{size_text(per_row)} per row of this input are more than the memory budget "
                f"of {size_text(self.memory_budget)} (--memory-limit): running one row per "
                "call, which still needs more",
            )
        if rows <= 1:
            runner.one_row_per_call()  # ONNX Runtime's threads then serve each call
        else:
            runner.batch_size = rows  # the memory cap; the tuner finds the fastest size below
        runner.tuner = RowTuner(rows)
        self.memory_per_row = per_row

    def _measure_rows(
        self, runner: ModelRunner, graph: GraphRunner | None, x, context: Context | None = None
    ) -> None:
        """Rows per call from what one more row costs, within the memory budget."""
        if runner.batch_size <= 1:
            return  # the model takes one row per call anyway

        def call(n: int) -> None:
            rows = np.repeat(x[None], n, axis=0).astype(runner.input_dtype)
            targets = np.zeros(n, dtype=np.int64) if graph is not None else None
            runner.call(rows, [runner.output_name], targets, context)

        stored = self._stored_check(graph) if graph is not None else None
        per_row = stored.get("bytes_per_row") if stored is not None else None
        if not (isinstance(per_row, int) and per_row > 0):  # else measured by an earlier run
            _, per_row = rows_within(self.memory_budget, call, cap=runner.batch_size)
            if stored is not None and per_row:  # checked by a run that was given its rows
                stored["bytes_per_row"] = per_row  # (--batch-size): keep the measure too
                save_check(graph.cache_key, stored)
        if graph is not None:
            graph.bytes_per_row = per_row
        per_row = max(per_row or 0, _row_floor(x, runner))  # (see _row_floor)
        resident = current_rss()
        rows = rows_for(self.memory_budget, per_row, resident, runner.batch_size)
        self._set_rows(runner, rows, per_row, resident)

    @property
    def looks_piecewise(self) -> bool:
        """Whether more steps cannot help a result: it was found piecewise constant or
        quantized, or F jumps at an end of the path (and the run said so)."""
        return bool({"piecewise", "jump"} & self._warned)

    def _jumps(
        self, a: Attribution, source: GradientSource, x: np.ndarray | None = None
    ) -> str | None:
        """Which end of a straight path F jumps at ('baseline' or 'input'), or None: F a step
        of 1e-4 from the end already over 5% of F(x) - F(b) away from F there, and half of
        that within 1e-6. LpNormalization at a zero baseline is x / |x| for every x but 0,
        where it is 0: 'raise --steps' was advised, which can never help. With a cut (token
        models too) the path runs in the cut tensor's space, from `x` there: a LayerNorm
        right after a zero embedding baseline (Funnel, ESM) jumps the same way. One 4-row
        call, only for an unresolved result."""
        if a.baseline is None:
            return None
        if a.extra.get("path", "straight") != "straight" or a.extra.get("baselines"):
            return None  # (several baselines: no one straight path)
        if x is None:
            if self._cut is not None:
                return None  # (the sample holds the input, not the cut tensor's value)
            x = a.sample.x
        dtype = x.dtype
        x, b = x.astype(np.float64), np.asarray(a.baseline, np.float64)
        if x.shape != b.shape:
            return None
        steps = (1e-4, 1e-6)
        near = np.stack([p for t in steps for p in (b + t * (x - b), x - t * (x - b))])
        try:
            f_near = source.values(near.astype(dtype))
        except IgcliError:
            return None
        moves = {
            "baseline": [abs(float(f_near[k]) - a.f_baseline) for k in (0, 2)],
            "input": [abs(a.f_input - float(f_near[k])) for k in (1, 3)],
        }
        # A move of UNRESOLVED's share of F(x) - F(b) within 1e-4 of an end is a slope 500
        # times the mean there, and where most of it is made within 1e-6 already, it lies
        # below what adaptive steps split down to (about 1e-6 in float32): no number of steps
        # resolves it. HuBERT at a zero baseline: 8.6% within 1e-4, as much within 1e-6, and
        # an adaptive run missed by 10.8%. (A step of 1e-4's width is for more steps.)
        end = max(moves, key=lambda k: moves[k][0])
        far, close = moves[end]
        return end if far > UNRESOLVED * abs(a.delta) and close >= 0.5 * far else None

    @functools.cached_property
    def _quantized(self) -> bool:
        """Whether the model rounds activations to integers (read once, not per input)."""
        return is_quantized(self.model)

    @functools.cached_property
    def _threshold(self) -> tuple[str, str] | None:
        """(name, what it does) of a node comparing values computed from the input
        (masked_fill(x > 0.5), say) or rounding them (a staircase), or None: F may jump
        where it flips inside the path, which no gradient sees, so a miss there does not
        shrink with more steps (a masked_fill missed by 458%). Integer paths (shapes,
        indices) are not followed. Read once, for the completeness warning."""
        kinds = onnx.TensorProto
        floats = (kinds.FLOAT, kinds.DOUBLE, kinds.FLOAT16, kinds.BFLOAT16)
        reached = {self.at or self.input_spec.name}  # (a token model's ids: from the lookup)
        for node in self.model.graph.node:  # (nodes come in topological order)
            if not reached.intersection(node.input) or node.op_type in _INTEGER_RESULTS:
                continue
            if node.op_type in _COMPARISONS:
                return node.name or node.output[0], "compares"
            if node.op_type in _STEPS:
                return node.name or node.output[0], _STEPS[node.op_type]
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if node.op_type == "Cast" and to not in floats:
                continue
            outputs = node.output[:1] if node.op_type == "TopK" else node.output
            reached.update(o for o in outputs if o)
        return None

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


def _rows_alone_and_together(runner: ModelRunner, x, outputs, target, context):
    """`outputs` at x and a second point (x / 2 + 1/4), each alone and both in one Run
    (never split over workers): (alone, joint), one [2, ...] array per output in each;
    joint None when the two rows fail together; None when a row fails, or is not finite,
    alone."""
    other = (x.astype(np.float64) * 0.5 + 0.25).astype(x.dtype)
    one = None if target is None else np.array([target], dtype=np.int64)
    try:
        each = [runner.call(r[None], outputs, one, context) for r in (x, other)]
    except IgcliError:
        return None
    alone = [np.concatenate([each[0][k], each[1][k]]) for k in range(len(outputs))]
    if not all(np.isfinite(a).all() for a in alone):
        return None
    both = np.stack([x, other]).astype(runner.input_dtype)
    two = None if one is None else np.repeat(one, 2)
    try:
        joint = runner.call(both, outputs, two, context, split=False)
    except IgcliError:
        return alone, None
    if any(j.shape[:1] != (2,) for j in joint):
        return alone, None
    return alone, joint


def _rows_match(joint: np.ndarray, alone: np.ndarray, atol: float) -> bool:
    """Each row of `joint` close to the same row of `alone` (`atol` relative to its peak)."""
    return all(
        np.allclose(j, a, rtol=1e-4, atol=atol * (np.abs(a).max() + 1e-30))
        for j, a in zip(joint, alone, strict=True)
    )


def _names_a_file(text: str) -> bool:
    """Whether a string given to a token model is a file rather than the text itself: an
    existing file, or one word ending in a suffix igcli reads."""
    if os.path.isfile(text):
        return True
    suffix = Path(text).suffix.lower()
    return not any(c.isspace() for c in text) and suffix in TEXT_SUFFIXES | {".npy"}


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
