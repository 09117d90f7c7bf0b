"""The path-method family: every method is a path, a baseline distribution and an averaging.

- Paths (`paths.py`): straight, blur (Blur IG), guided (Guided IG), extremal (one feature
  group after the other, in an order) and shapley (extremal paths in random orders,
  averaged: Shapley value sampling).
- Baselines: one point (`--baseline`, including the training mean), K points whose IGs are
  averaged (multi-baseline IG, `--baselines`), or a distribution sampled together with the
  position on the path (expected gradients, `--baselines ... --samples N`).
- Averaging over noise: N noisy copies of the input, combined as Captum's NoiseTunnel does
  (smoothgrad: mean; smoothgrad_sq: mean of squares; vargrad: variance).

`run(jobs, settings, context)` turns each (sample, target) into IG problems (one per noisy
copy, baseline, leg of an extremal path, order), runs all of them through the IG core at once
(so their points share model calls), and combines the results. Completeness holds for every
path; the combined result reports it against the matching combination of F values: F(copy) -
mean_k F(b_k), averaged over copies.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from igcli.baselines import rng_for
from igcli.errors import IgcliError, InputError, ModelError, UsageError
from igcli.files import is_folder
from igcli.ig import (
    IGResult,
    Problem,
    evaluate_many,
    integrated_gradients_many,
    sequential_many,
    values_many,
)
from igcli.inputs import (
    IMAGE_SUFFIXES,
    SUPPORTED_SUFFIXES,
    Preprocessing,
    Sample,
    _cast,
    _to_model_dtype,
    dtype_problem,
    fit_tensor,
    read_image,
    read_table,
)
from igcli.paths import (
    BlurPath,
    GuidedPath,
    PathSpec,
    StraightPath,
    complete_order,
    default_order,
    extremal_breakpoints,
    group_members,
    parse_path,
    shapley_orders,
)

NOISE_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")
DEFAULT_NOISE_STD = 0.15  # relative to the input's range (PAIR's stdev_spread)
DEFAULT_STEPS = {"blur": 100, "guided": 200}  # PAIR saliency's; every other path: 50
DEFAULT_SHAPLEY_SAMPLES = 25
GRID = 4  # images: extremal and Shapley paths move a GRID x GRID grid of patches by default
MEMORY_LIMIT = 256 * 2**20  # bytes of IG problems (legs, results) a family run holds at once
MAX_BLUR_SIGMA = 1e12  # pixels: far wider than any image (whose blur is then all one grey)


def default_steps(path: str) -> int:
    try:
        return DEFAULT_STEPS.get(parse_path(path).kind, 50)
    except ValueError:
        return 50


MAX_NOISE = 100000  # noisy copies: more held N copies of the input at once (10**9: 5.7 TiB)


def parse_noise(text: str) -> tuple[int, float]:
    """`N` or `N,STD` (STD relative to the input's range). ValueError with a reason."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:,\s*([^,\s]+)\s*)?", text or "")
    if not m:
        raise ValueError(f"{text!r}: use N or N,STD (e.g. 25 or 25,0.15)")
    n = int(m.group(1))
    try:
        std = float(m.group(2)) if m.group(2) is not None else DEFAULT_NOISE_STD
    except ValueError:
        raise ValueError(f"{text!r}: the noise level {m.group(2)!r} is not a number") from None
    if not 1 <= n <= MAX_NOISE:
        raise ValueError(f"{text!r}: the number of noisy copies must be 1 to {MAX_NOISE}")
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"{text!r}: the noise level must be a positive number")
    return n, std


def check(s) -> None:
    """Validate the family settings of an `AttributionSettings` (one-line UsageErrors)."""
    # (groups=4 raised re's TypeError, baselines=np.zeros(...) numpy's "truth value of an
    # array is ambiguous": internal errors of a call that only named its options wrongly)
    texts = {"path": (str,), "groups": (str,), "noise_type": (str,), "regions": (str,),
             "baselines": (str, os.PathLike), "baseline_data": (str, os.PathLike)}  # fmt: skip
    for name, kinds in texts.items():
        value = getattr(s, name)
        if value is not None and not isinstance(value, kinds):
            what = "a path" if os.PathLike in kinds else "a string"
            raise UsageError(f"{name} must be {what}, not {type(value).__name__}")
    try:
        spec = parse_path(s.path)
    except ValueError as exc:
        raise UsageError(f"--path: {exc}") from None
    kind = spec.kind
    if s.noise:
        if (isinstance(s.noise, bool) or not isinstance(s.noise, int)
                or not 1 <= s.noise <= MAX_NOISE):  # fmt: skip
            raise UsageError(
                f"noise must be a number of noisy copies (1 to {MAX_NOISE}), not {s.noise!r}"
            )
        if not (isinstance(s.noise_std, int | float) and math.isfinite(s.noise_std)
                and s.noise_std > 0):  # fmt: skip
            raise UsageError(f"the noise level must be a positive number, not {s.noise_std!r}")
    if s.noise_type not in NOISE_TYPES:
        raise UsageError(f"unknown noise type {s.noise_type!r}; choose {', '.join(NOISE_TYPES)}")
    if s.noise_type != "smoothgrad" and not s.noise:
        raise UsageError(f"--noise-type {s.noise_type} needs --noise N")
    if s.samples is not None and (
        isinstance(s.samples, bool) or not isinstance(s.samples, int)
        or not 1 <= s.samples <= MAX_NOISE
    ):  # fmt: skip
        raise UsageError(f"samples must be an integer from 1 to {MAX_NOISE}, not {s.samples!r}")
    if s.samples is not None and kind != "shapley" and not s.baselines:
        raise UsageError("--samples needs --baselines (expected gradients) or --path shapley")
    if s.samples is not None and s.baselines and kind not in ("straight", "shapley"):
        raise UsageError(f"expected gradients (--baselines with --samples) use the straight "
                         f"path, not --path {kind}")  # fmt: skip
    if s.baselines and s.baseline is not None:
        raise UsageError("give either --baseline or --baselines, not both")
    if s.baseline_data and s.baseline != "mean":
        raise UsageError("--baseline-data goes with --baseline mean")
    if kind == "blur":
        if s.baseline is not None or s.baselines:
            raise UsageError("the blur path starts at the blurred input; "
                             "--baseline and --baselines do not apply")  # fmt: skip
        if not (isinstance(s.max_sigma, int | float) and math.isfinite(s.max_sigma)
                and 0 < s.max_sigma <= MAX_BLUR_SIGMA):  # fmt: skip
            # (1e308: the kernel's reach overflowed, an internal error after a numpy warning)
            raise UsageError(f"--blur-sigma must be a number of pixels in (0, "
                             f"{MAX_BLUR_SIGMA:g}], not {s.max_sigma!r}")  # fmt: skip
    if kind == "guided":
        if s.adaptive:
            raise UsageError("--path guided chooses its path step by step; "
                             "give a number of --steps, not auto")  # fmt: skip
        if s.method not in (None, "gausslegendre"):
            raise UsageError(f"--path guided sums its own steps; --method {s.method} "
                             "does not apply")  # fmt: skip
        if not 0 < s.fraction <= 1:
            raise UsageError(f"--guided-fraction must be in (0, 1], not {s.fraction}")
        if not 0 <= s.max_dist <= 1:
            raise UsageError(f"--guided-max-dist must be in [0, 1], not {s.max_dist}")
    if kind != "blur" and (s.max_sigma != 50.0 or s.blur_sqrt):
        raise UsageError("--blur-sigma and --blur-sqrt apply to --path blur")
    if kind != "guided" and (s.fraction != 0.25 or s.max_dist != 0.02):
        raise UsageError("--guided-fraction and --guided-max-dist apply to --path guided")
    if s.groups is not None and kind not in ("extremal", "shapley"):
        raise UsageError("--groups applies to --path extremal and --path shapley")
    if s.groups is not None and not re.fullmatch(r"1|1x1|[1-9]\d{0,4}x[1-9]\d{0,4}", s.groups):
        raise UsageError(f"--groups {s.groups!r}: use HxW patches (e.g. 8x8), or 1 per feature")
    if s.regions not in (None, "xrai"):
        raise UsageError(f"unknown --regions {s.regions!r}; the one choice is xrai")


def is_plain(s) -> bool:
    """Plain IG (straight path, one baseline, no noise, no regions): the session's own path."""
    return (
        s.path == "straight"
        and not s.baselines
        and not s.noise
        and s.baseline != "mean"
        and s.regions is None
    )


def record_fields(s, kind: str | None = None) -> dict:
    """The record fields that say how the attributions were made (null when unused)."""
    kind = kind or parse_path(s.path).kind
    noise = None
    if s.noise:
        noise = {"samples": s.noise, "std": s.noise_std, "type": s.noise_type}
    return {
        "path": kind,
        "baselines": None,
        "samples": None,
        "noise": noise,
    }


def settings_fields(s) -> dict:
    """The family's settings as a report states them (run.py's report settings)."""
    keys = ("path", "groups", "samples", "baselines", "baseline_data", "noise", "noise_std",
            "noise_type", "max_sigma", "blur_sqrt", "fraction", "max_dist", "regions")  # fmt: skip
    return {k: getattr(s, k) for k in keys}


def describe(s) -> str:
    """One phrase for reports: 'blur path, smoothgrad over 10 noisy copies', ..."""
    spec = parse_path(s.path)
    parts = [f"{spec.kind} path"]
    if spec.kind == "blur":
        parts[0] += f" (max sigma {s.max_sigma:g}{', sqrt' if s.blur_sqrt else ''})"
    if spec.kind == "guided":
        parts[0] += f" (fraction {s.fraction:g}, max dist {s.max_dist:g})"
    if s.baselines:
        what = "expected gradients" if s.samples and spec.kind == "straight" else "average"
        parts.append(f"baselines from {s.baselines} ({what})")
    if s.baseline == "mean":
        parts.append("mean baseline")
    if s.noise:
        parts.append(f"{s.noise_type} over {s.noise} noisy copies (std {s.noise_std:g})")
    if s.regions:
        parts.append(f"{s.regions} regions")
    return ", ".join(parts)


# -- baselines as data -----------------------------------------------------------------------


def _usage(exc: InputError) -> UsageError:
    return UsageError(exc.reason, exc.path)


STACK_BLOCK_BYTES = 16 << 20  # a .npy stack is checked and averaged this much at a time


class NpyStack(Sequence):
    """The rows of a .npy stack [K, *sample shape], read from the file as they are needed:
    a 940 MB stack took 4.9 GB (its rows copied, then stacked again as float64 for a mean).
    The file is read once when opened, in blocks of STACK_BLOCK_BYTES, to check every value
    (finite, and within the model's dtype) and to sum the mean; a row is then one pread."""

    def __init__(self, path: Path, prep: Preprocessing, row_shape: tuple, error=UsageError):
        from igcli.files import npy_header, open_regular

        self.path, self.dtype = path, np.dtype(prep.dtype)
        with open_regular(path, error) as fh:
            shape, fortran, dtype = npy_header(fh, path, error)
            offset = fh.tell()
        self.count, self.row_shape, self.file_dtype = shape[0], tuple(row_shape), dtype
        self.row_bytes = math.prod(shape[1:]) * dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._offset = offset
        total = np.zeros(self.row_shape, np.float64)
        rows_per_block = max(1, STACK_BLOCK_BYTES // max(self.row_bytes, 1))
        for lo in range(0, self.count, rows_per_block):
            block = self._read(lo, min(self.count, lo + rows_per_block))
            try:
                _to_model_dtype(block, self.dtype, path, error)
            except IgcliError:  # which row: a stack may hold 300,000
                for k, row in enumerate(block):
                    try:
                        _to_model_dtype(row, self.dtype, path, error)
                    except IgcliError as exc:
                        raise error(f"row {lo + k}: {exc.reason}", path) from None
                raise
            total += block.sum(axis=0, dtype=np.float64)
        self.total = total

    def _read(self, lo: int, hi: int) -> np.ndarray:
        size = (hi - lo) * self.row_bytes
        data = os.pread(self._fd, size, self._offset + lo * self.row_bytes)
        if len(data) != size:
            raise UsageError("truncated while being read (did the file change?)", self.path)
        return np.frombuffer(data, self.file_dtype).reshape((hi - lo, *self.row_shape))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self.count))]
        if not -self.count <= k < self.count:
            raise IndexError(k)
        return _cast(self._read(k % self.count, k % self.count + 1)[0], self.dtype)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
            self._fd = None


class BaselineSet(Sequence):
    """Baselines of --baselines / --baseline-data: arrays read whole (images, CSV rows, one
    sample per .npy) and .npy stacks read row by row (NpyStack), in the files' order."""

    def __init__(self, parts: list) -> None:
        self.parts = [p for p in parts if len(p)]
        self._starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        k %= len(self)
        part = int(np.searchsorted(self._starts, k, side="right")) - 1
        return self.parts[part][k - int(self._starts[part])]

    def mean(self) -> np.ndarray:
        """The mean baseline, float64, without stacking the baselines."""
        total = None
        for part in self.parts:
            add = part.total if isinstance(part, NpyStack) else np.sum(
                [np.asarray(a, np.float64) for a in part], axis=0)  # fmt: skip
            total = add if total is None else total + add
        return total / len(self)


class AsFloat64(Sequence):
    """A baseline set's rows as float64, each made when it is used."""

    def __init__(self, rows: Sequence) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k):
        return np.asarray(self.rows[k], np.float64)

    def mean(self) -> np.ndarray:
        return self.rows.mean()


def _mean_of(rows) -> np.ndarray:
    return rows.mean() if hasattr(rows, "mean") else np.mean(rows, axis=0)


def read_baseline_file(
    path: Path, prep: Preprocessing, sample: Sample, budget: list | None = None
) -> Sequence:
    """The baselines one file holds, in model space: an image (resized to the input), a .npy
    stack [K, *input shape] (or one sample), or a CSV of rows. A stack is read row by row
    (NpyStack); what is read whole is counted against `budget` ([bytes left]) before."""
    suffix = path.suffix.lower()
    row_bytes = sample.x.size * np.dtype(prep.dtype).itemsize
    try:
        if suffix in IMAGE_SUFFIXES:
            if not prep.is_image_model:
                raise UsageError("an image baseline needs an image model", path)
            _spend(budget, row_bytes, path)
            hw = (sample.pixels.shape[:2] if sample.pixels is not None
                  else prep.model_to_hwc(sample.x).shape[:2])  # fmt: skip
            return [prep.image_to_model(read_image(path, prep, size=hw))]
        if suffix == ".npy":
            from igcli.files import npy_header, open_regular, read_npy

            with open_regular(path, UsageError) as fh:
                shape, fortran, dtype = npy_header(fh, path, UsageError)
            if len(shape) == sample.x.ndim + 1 and tuple(shape[1:]) == sample.x.shape:
                problem = dtype_problem(dtype)
                if problem:
                    raise UsageError(problem, path)
                if not fortran or len(shape) == 1:
                    return NpyStack(path, prep, sample.x.shape)
                _spend(budget, shape[0] * row_bytes, path)  # rows strided: read whole
                arr = read_npy(path, UsageError)
                return [fit_tensor(row, prep, path, UsageError) for row in arr]
            _spend(budget, math.prod(shape) * np.dtype(prep.dtype).itemsize, path)
            return [fit_tensor(read_npy(path, UsageError), prep, path, UsageError)]
        if suffix == ".csv":
            rows = [s.x for s in read_table(path, prep, path.stem)]
            _spend(budget, len(rows) * row_bytes, path)
            return rows
    except InputError as exc:
        raise _usage(exc) from None
    raise UsageError("baselines must be images, .npy or .csv files", path)


def _spend(budget: list | None, nbytes: int, path: Path) -> None:
    """Baselines held in memory (all but .npy stacks) must fit --memory-limit: refused before
    they are read."""
    if budget is None:
        return
    if nbytes > budget[0]:
        raise UsageError(
            f"the baselines held in memory would take {nbytes / 2**20:,.0f} MiB more, over "
            "--memory-limit; give them as one C-ordered .npy stack [K, *input shape] (read "
            "row by row), fewer of them, or a higher --memory-limit",
            path,
        )
    budget[0] -= nbytes


def read_baseline_set(
    spec: str, prep: Preprocessing, sample: Sample, memory_limit: int | None = None
) -> BaselineSet:
    """Every baseline under `spec` (a file, or a folder of files, not recursive), checked
    against the input's shape. Baselines held in memory count against `memory_limit`."""
    from igcli.storage import local_path

    path = local_path(spec, "--baselines (and --baseline-data)")
    budget = [memory_limit] if memory_limit else None
    if is_folder(path, UsageError):
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)  # fmt: skip
        if not files:
            raise UsageError("the folder holds no images, .npy or .csv files", path)
        parts = [read_baseline_file(f, prep, sample, budget) for f in files]
    elif path.is_file():
        parts = [read_baseline_file(path, prep, sample, budget)]
    elif path.exists():
        raise UsageError("not a file or folder (a device or FIFO?)", path)
    else:
        raise UsageError("no such file or folder", path)
    arrays = BaselineSet(parts)
    if not len(arrays):
        raise UsageError("holds no baselines", path)
    for part in arrays.parts:
        shapes = [part.row_shape] if isinstance(part, NpyStack) else [a.shape for a in part]
        for shape in shapes:
            if tuple(shape) != sample.x.shape:
                raise InputError(
                    f"the baselines in {path} have shape {list(shape)}, this input "
                    f"{list(sample.x.shape)}",
                    sample.path,
                )
    return arrays


def sidecar_mean(raw: dict, prep: Preprocessing, sample: Sample, sidecar_path) -> np.ndarray:
    """The sidecar's `baseline_mean` in model space: per feature in the CSV's units for
    tabular and tensor inputs, per channel in [0, 1] pixels for images."""
    values = raw.get("baseline_mean")
    where = sidecar_path
    if (
        not isinstance(values, list)
        or not values
        or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        )
    ):
        raise ModelError("'baseline_mean' must be a list of numbers", where)
    arr = np.asarray(values, dtype=np.float64)
    if prep.is_image_model and sample.x.ndim == 3:
        hwc = prep.model_to_hwc(sample.x)
        if arr.size not in (1, hwc.shape[2]):
            raise ModelError(f"'baseline_mean' has {arr.size} values; an image model needs one "
                             f"per channel ({hwc.shape[2]})", where)  # fmt: skip
        pixels = np.broadcast_to(arr, hwc.shape)
        return prep.image_to_model(pixels)
    if arr.size != sample.x.size:
        raise ModelError(f"'baseline_mean' has {arr.size} values; the input has "
                         f"{sample.x.size} features", where)  # fmt: skip
    return prep.rows_to_model(arr).reshape(sample.x.shape)


def mean_baseline(
    data: str | None,
    raw: dict,
    prep: Preprocessing,
    sample: Sample,
    sidecar_path,
    memory_limit: int | None = None,
) -> tuple[np.ndarray, str]:
    """The training mean as one baseline: of `--baseline-data`, else the sidecar's."""
    if data:
        arrays = read_baseline_set(data, prep, sample, memory_limit)
        mean = arrays.mean()  # streamed: the baselines are never stacked
        return mean.astype(sample.x.dtype), f"mean of {Path(data).name} ({len(arrays)})"
    if "baseline_mean" not in raw:
        raise UsageError("--baseline mean needs 'baseline_mean' in the model's sidecar "
                         "or --baseline-data FILE")  # fmt: skip
    return sidecar_mean(raw, prep, sample, sidecar_path).astype(sample.x.dtype), "mean (sidecar)"


# -- draws (module functions so tests can replay another library's draws) ---------------------


def draw_noise(rng: np.random.Generator, std: float, shape: tuple) -> np.ndarray:
    """Gaussian noise for the noisy copies."""
    return rng.normal(0.0, std, size=shape)


def draw_expected_gradients(
    rng: np.random.Generator, samples: int, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Expected gradients' draws: a baseline index and a path position for each sample."""
    return rng.integers(0, count, size=samples), rng.uniform(0.0, 1.0, size=samples)


def combine_noise(attributions: np.ndarray, kind: str) -> np.ndarray:
    """Captum NoiseTunnel's combinations over the copies (first axis)."""
    mean = attributions.mean(axis=0)
    if kind == "smoothgrad":
        return mean
    square = (attributions**2).mean(axis=0)
    if kind == "smoothgrad_sq":
        return square
    return square - mean**2  # vargrad


def path_groups(
    spec: str | None, sample: Sample, prep: Preprocessing
) -> tuple[np.ndarray | None, str]:
    """Feature groups an extremal path moves one at a time, and their description.

    Default: for images a GRID x GRID grid of patches (spanning the channels), else one
    group per feature. `HxW` gives patches of H x W pixels; `1` one group per feature.
    """
    image = prep.is_image_model and sample.x.ndim == 3
    if spec in ("1", "1x1"):
        return None, "1"
    if not image:
        if spec is not None:
            raise UsageError(f"--groups {spec}: patches need an image model; use 1")
        return None, "1"
    hwc = prep.model_to_hwc(sample.x).shape
    h, w, c = hwc
    if spec is None:
        ph, pw = math.ceil(h / GRID), math.ceil(w / GRID)
    else:
        ph, pw = (int(v) for v in spec.split("x"))
    rows = np.arange(h)[:, None] // ph
    cols = np.arange(w)[None, :] // pw
    patch = rows * ((w + pw - 1) // pw) + cols
    groups = np.broadcast_to(patch[:, :, None], hwc)
    if prep.layout == "NCHW":
        groups = np.transpose(groups, (2, 0, 1))
    return np.ascontiguousarray(groups), f"{ph}x{pw}"


# -- running the family -----------------------------------------------------------------------


@dataclass
class Job:
    """One (sample, target) to explain, with the single baseline the settings give it."""

    sample: Sample
    target: int
    baseline: np.ndarray
    baseline_name: str


@dataclass
class Context:
    """What the family needs from a session."""

    # (target, sample, point x, baseline b, per_feature) -> a gradient source for the IG of
    # F from b to x; per_feature: gradients must be true per-feature partial derivatives (for
    # paths that do not run along x - b).
    source: Callable
    batch_size: int
    prep: Preprocessing
    # (sample) -> (baselines, name) for --baselines or XRAI's black and white; None: single
    baseline_set: Callable[[Sample], tuple[list[np.ndarray], str] | None]


@dataclass
class FamilyResult(IGResult):
    """An IGResult plus what the record says about the method."""

    extra: dict = field(default_factory=dict)
    baseline_name: str | None = None
    baseline_array: np.ndarray | None = None
    completeness_sum: float | None = None  # smoothgrad_sq / vargrad: the mean map's sum
    steps_asked: int | None = None  # the record's `steps` when not the path's points (draws)


@dataclass
class _Copy:
    """One noisy copy of a sample (or the sample itself) and its baselines."""

    x: np.ndarray
    baselines: list[np.ndarray]
    orders: Sequence[list[int]] | None = None  # extremal / Shapley orders (group indices)
    exact: bool = False  # the orders are all of them (exact Shapley value)
    draws: tuple[np.ndarray, np.ndarray] | None = None  # expected gradients' draws


@dataclass
class _Unit:
    """One IG problem (or guided path) contributing weight * attributions to a job's copy."""

    job: int
    copy: int
    weight: float
    problem: Problem
    # F(x) and F(b) of the problem: indices into the job's shared values, or (extremal
    # corners) the points themselves, evaluated with their chunk
    ends: tuple[int | np.ndarray, int | np.ndarray]
    guided: GuidedPath | None = None
    attributions: np.ndarray | None = None
    steps: int = 0
    method: str | None = None
    converged: bool | None = None
    stop_reason: str | None = None

    @property
    def nbytes(self) -> int:
        """What the unit holds while its chunk runs: its ends, the core's float64 copies,
        the result (a guided path: its state)."""
        return 6 * self.problem.x.size * 8


def run(
    jobs: list[Job], settings, ctx: Context, memory_limit: int | None = None
) -> list[FamilyResult]:
    """Every job's attribution under the settings' path, baselines and noise.

    The IG problems (one per job, copy, baseline, and extremal leg and order) are made and
    run in chunks whose arrays fit `memory_limit`, each chunk's points in shared model calls;
    results are added up as chunks finish, so Shapley sampling on a large image never holds
    all its legs at once.
    """
    memory_limit = memory_limit or MEMORY_LIMIT
    spec = parse_path(settings.path)
    kind = spec.kind
    if settings.regions and not ctx.prep.is_image_model:
        raise UsageError(f"--regions {settings.regions} needs an image model")
    blur = None
    if kind == "blur":
        if not ctx.prep.is_image_model:
            raise UsageError("--path blur needs an image model (it blurs height and width)")
        axes = (1, 2) if ctx.prep.layout == "NCHW" else (0, 1)
        blur = BlurPath(axes, settings.max_sigma, settings.blur_sqrt)
    expected = bool(settings.baselines and settings.samples and kind == "straight")
    per_sample: dict[int, tuple[list[_Copy], dict]] = {}
    for job in jobs:
        if id(job.sample) not in per_sample:
            per_sample[id(job.sample)] = _copies(job, spec, settings, ctx, blur, expected)

    # F at the copies and baselines each job is measured against, in one shared pass
    points: list[list[np.ndarray]] = [[] for _ in jobs]
    layout: list[list[tuple[int, list[int]]]] = []  # per job, per copy: F(x) index, F(b_k)
    clean: list[int] = []  # per job with noise: the index of F at the clean input
    for j, job in enumerate(jobs):
        copies, _ = per_sample[id(job.sample)]
        per_copy = []
        for copy in copies:
            xi = _add(points[j], copy.x)
            if isinstance(copy.baselines, AsFloat64):  # F at each, a batch at a time
                per_copy.append((xi, _add_all(points[j], copy.baselines)))
            else:
                per_copy.append((xi, [_add(points[j], b) for b in copy.baselines]))
        layout.append(per_copy)
        clean.append(_add(points[j], job.sample.x) if settings.noise else -1)
    value_sources = [ctx.source(job.target, job.sample, job.sample.x, job.baseline, False)
                     for job in jobs]  # fmt: skip
    values = values_many(value_sources, [_Points(p) for p in points], ctx.batch_size)

    # the integrals, chunk by chunk; each chunk's attributions added to their job's copy
    attrs = [np.zeros((len(per_sample[id(job.sample)][0]), *job.sample.x.shape))
             for job in jobs]  # fmt: skip
    steps = [0] * len(jobs)
    converged: list[list[tuple[bool, str]]] = [[] for _ in jobs]
    method = {"guided": "riemann_left"}.get(kind)
    if expected:
        se = _expected_gradients(jobs, per_sample, ctx, attrs, steps, memory_limit)
        method = "monte_carlo"
    else:
        units = (
            u
            for j, job in enumerate(jobs)
            for c, copy in enumerate(per_sample[id(job.sample)][0])
            for k, b in enumerate(copy.baselines)
            for u in _units(j, c, job, copy, b, layout[j][c][0], layout[j][c][1][k], kind,
                            settings, ctx, per_sample[id(job.sample)][1])
        )  # fmt: skip
        for chunk in _chunks(units, memory_limit):
            _run_chunk(chunk, jobs, values, settings, ctx, blur)
            for u in chunk:
                attrs[u.job][u.copy] += u.weight * u.attributions
                steps[u.job] += u.steps
                if u.converged is not None:
                    converged[u.job].append((u.converged, u.stop_reason))
                method = method or u.method

    # combine over the copies (noise)
    out = []
    for j, job in enumerate(jobs):
        info = per_sample[id(job.sample)][1]
        f_in = np.array([values[j][xi] for xi, _ in layout[j]])
        f_base = np.array([np.mean([values[j][i] for i in bi]) for _, bi in layout[j]])
        extra = dict(info["record"])
        if expected:
            extra["completeness_se"] = float(math.sqrt(np.sum(se[j] ** 2)) / len(se[j]))
        if settings.noise:
            extra["noise"] = dict(extra["noise"], f_input_clean=float(values[j][clean[j]]))
        mean = attrs[j].mean(axis=0)
        result = FamilyResult(
            attributions=combine_noise(attrs[j], settings.noise_type) if settings.noise else mean,
            f_input=float(f_in.mean()),
            f_baseline=float(f_base.mean()),
            steps=steps[j],
            method=method or "none",
            extra=extra,
            baseline_name=info["baseline_name"],
            baseline_array=info["baseline_array"],
            steps_asked=settings.samples if expected else None,
        )
        if settings.noise and settings.noise_type != "smoothgrad":
            result.completeness_sum = float(np.sum(mean, dtype=np.float64))
        if converged[j]:
            bad = [why for ok, why in converged[j] if not ok]
            # a leg short of its own tolerance (a leg with little change) does not matter
            # where the whole path's completeness meets it
            delta = float(f_in.mean() - f_base.mean())
            whole = abs(float(np.sum(mean, dtype=np.float64)) - delta)
            met = delta != 0 and whole <= settings.tolerance * abs(delta)
            result.converged = not bad or met
            result.stop_reason = "tolerance" if result.converged else bad[0]
        out.append(result)
    return out


def _chunks(units, memory_limit: int):
    """Lists of units whose arrays fit memory_limit (at least one unit each)."""
    chunk, used = [], 0
    for u in units:
        if chunk and used + u.nbytes > memory_limit:
            yield chunk
            chunk, used = [], 0
        chunk.append(u)
        used += u.nbytes
    if chunk:
        yield chunk


def _run_chunk(chunk: list[_Unit], jobs, values, settings, ctx: Context, blur) -> None:
    """F at the chunk's extremal corners, then its IG problems and guided paths."""
    corners: dict[int, tuple[int, np.ndarray]] = {}  # id(array) -> (job, array)
    for u in chunk:
        for end in u.ends:
            if isinstance(end, np.ndarray):
                corners.setdefault(id(end), (u.job, end))
    if corners:
        owners = list(corners.values())
        sources = [ctx.source(jobs[j].target, jobs[j].sample, p, p, False) for j, p in owners]
        found = values_many(sources, [p[None] for _, p in owners], ctx.batch_size)
        at = {key: float(v[0]) for key, v in zip(corners, found, strict=True)}
    for u in chunk:
        u.problem.end_values = tuple(
            at[id(e)] if isinstance(e, np.ndarray) else float(values[u.job][e]) for e in u.ends
        )
    plain = [u for u in chunk if u.guided is None]
    if plain:
        results = integrated_gradients_many(
            [u.problem for u in plain],
            steps=settings.steps,
            method=settings.method,
            path=blur or StraightPath(),
            batch_size=ctx.batch_size,
            tolerance=settings.tolerance,
            max_steps=settings.max_steps,
        )
        for u, r in zip(plain, results, strict=True):
            u.attributions, u.steps, u.method = r.attributions, r.steps, r.method
            u.converged, u.stop_reason = r.converged, r.stop_reason
    guided = [u for u in chunk if u.guided is not None]
    if guided:
        used = sequential_many([u.problem.source for u in guided], [u.guided for u in guided],
                               ctx.batch_size)  # fmt: skip
        for u, n in zip(guided, used, strict=True):
            u.attributions, u.steps = u.guided.attributions, n


def _add(points: list, p: np.ndarray) -> int:
    points.append(np.asarray(p))
    return _count(points) - 1


def _add_all(points: list, rows: Sequence) -> range:
    """Every row of a baseline set as points, without stacking them: their indices."""
    start = _count(points)
    points.append(_Many(rows))
    return range(start, start + len(rows))


@dataclass
class _Many:
    rows: Sequence


def _count(points: list) -> int:
    return sum(len(p.rows) if isinstance(p, _Many) else 1 for p in points)


class _Points:
    """Points of `_add` and `_add_all` as one stack that values_many slices a batch at a
    time: a baseline set's rows are read and stacked for their batch only."""

    def __init__(self, points: list) -> None:
        self.points = points
        self._starts = np.cumsum([0] + [len(p.rows) if isinstance(p, _Many) else 1
                                        for p in points])  # fmt: skip

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, k: slice) -> np.ndarray:
        rows = []
        for i in range(*k.indices(len(self))):
            part = int(np.searchsorted(self._starts, i, side="right")) - 1
            p = self.points[part]
            rows.append(p.rows[i - int(self._starts[part])] if isinstance(p, _Many) else p)
        return np.stack(rows)


def _copies(job: Job, spec: PathSpec, settings, ctx: Context, blur, expected: bool):
    """The noisy copies of a job's sample with their baselines, orders and draws (shared by
    the sample's targets), and the record fields that describe them."""
    sample = job.sample
    rng = rng_for(settings.seed)
    x = sample.x.astype(np.float64)
    record = record_fields(settings, spec.kind)
    if settings.noise:
        spread = float(np.max(x) - np.min(x))
        std = settings.noise_std * spread
        top = float(np.finfo(sample.x.dtype).max) if sample.x.dtype.kind == "f" else math.inf
        fits = math.isfinite(std)  # and the copies within the model's float type, checked
        xs = x[None] + draw_noise(rng, std, (settings.noise, *x.shape)) if fits else x
        if not (fits and np.all(np.abs(xs) <= top)):  # here, not as a NaN on the path later
            raise InputError(
                f"--noise std {settings.noise_std:g} of this input's range ({spread:.3g}) "
                f"gives noisy copies beyond {sample.x.dtype}; use a smaller std",
                sample.path,
            )
        record["noise"] = dict(record["noise"], std_abs=std)
    else:
        xs = x[None]
    shared = ctx.baseline_set(sample)
    if blur is not None:
        top = math.sqrt(settings.max_sigma) if settings.blur_sqrt else settings.max_sigma
        name, bases = f"blur (sigma {top:.3g})", None  # the baseline's blur, sqrt or not
        record["path_options"] = {"max_sigma": settings.max_sigma, "sqrt": settings.blur_sqrt}
    elif shared is not None:
        bases, name = shared
        use = "expected_gradients" if expected else "average"
        record["baselines"] = {"source": name, "count": len(bases), "use": use}
    else:
        bases, name = [job.baseline], job.baseline_name
    if spec.kind == "guided":
        record["path_options"] = {"fraction": settings.fraction, "max_dist": settings.max_dist}
    copies = []
    groups_info = None
    for xc in xs:
        if blur is not None:
            these = [blur.start(xc)]
        elif isinstance(bases, BaselineSet):  # rows made as used: never all at once
            these = AsFloat64(bases)
        else:
            these = [b.astype(np.float64) for b in bases]
        copy = _Copy(xc, these)
        if spec.kind in ("extremal", "shapley"):
            groups, groups_text = path_groups(settings.groups, sample, ctx.prep)
            members = group_members(groups, x.size)
            groups_info = (members, groups_text)
            if spec.kind == "extremal":
                default = default_order(xc, these[0], members)
                try:
                    copy.orders = [complete_order(spec.order, default, len(members))]
                except ValueError as exc:
                    raise UsageError(f"--path: {exc}") from None
            else:
                n = settings.samples or DEFAULT_SHAPLEY_SAMPLES
                copy.orders, copy.exact = shapley_orders(len(members), n, rng)
        if expected:
            copy.draws = draw_expected_gradients(rng, settings.samples, len(these))
        copies.append(copy)
    if groups_info is not None:
        members, groups_text = groups_info
        options = {"groups": groups_text, "count": len(members)}
        if spec.kind == "extremal":
            options["order"] = copies[0].orders[0]
        else:
            options["orders"] = len(copies[0].orders)
            options["exact"] = copies[0].exact
            record["samples"] = len(copies[0].orders)
        record["path_options"] = options
    if expected:
        record["samples"] = settings.samples
    mean_base = np.mean([_mean_of(c.baselines) for c in copies], axis=0)
    info = {
        "record": record,
        "baseline_name": name,
        "baseline_array": mean_base.astype(sample.x.dtype),
        "members": groups_info[0] if groups_info else None,
    }
    return copies, info


def _units(j, c, job, copy, b, xi, bi, kind, settings, ctx, info):
    """The IG problems of one (job, copy, baseline), made as they are consumed."""
    weight = 1.0 / len(copy.baselines)
    if kind in ("straight", "blur"):
        source = ctx.source(job.target, job.sample, copy.x, b, kind == "blur")
        yield _Unit(j, c, weight, Problem(copy.x, b, source), (xi, bi))
        return
    if kind == "guided":
        source = ctx.source(job.target, job.sample, copy.x, b, True)
        path = GuidedPath(copy.x, b, settings.steps, settings.fraction, settings.max_dist)
        yield _Unit(j, c, weight, Problem(copy.x, b, source), (xi, bi), guided=path)
        return
    members = info["members"]
    per_order = weight / len(copy.orders)
    for order in copy.orders:
        corners, _ = extremal_breakpoints(copy.x, b, members, order)
        ends: list[int | np.ndarray] = [bi, *corners[1:-1], xi]
        for k in range(1, len(corners)):
            lo, hi = corners[k - 1], corners[k]
            source = ctx.source(job.target, job.sample, hi, lo, False)
            yield _Unit(j, c, per_order, Problem(hi, lo, source), (ends[k], ends[k - 1]))


def _expected_gradients(jobs, per_sample, ctx: Context, attrs, steps, memory_limit) -> list:
    """Expected gradients (Erion et al.): the mean over draws (k, alpha) of
    (x - b_k) * grad F(b_k + alpha (x - b_k)), per job and copy, added into attrs; returns
    per job the standard error of each copy's attribution sum. Draws are evaluated in
    chunks of rows that fit memory_limit, in shared model calls."""
    sums = [[np.zeros(len(c.draws[0])) for c in per_sample[id(job.sample)][0]] for job in jobs]
    rows_per_chunk = max(1, memory_limit // (4 * jobs[0].sample.x.size * 8))
    segments = []  # (job, copy, baseline k, draw indices)
    for j, job in enumerate(jobs):
        for c, copy in enumerate(per_sample[id(job.sample)][0]):
            idx, _ = copy.draws
            for k in np.unique(idx):  # the baselines drawn (not every one of K)
                take = np.flatnonzero(idx == k)
                for lo in range(0, take.size, rows_per_chunk):
                    segments.append((j, c, k, take[lo : lo + rows_per_chunk]))
    shape = (-1,) + (1,) * jobs[0].sample.x.ndim
    chunk, rows = [], 0
    for n, seg in enumerate(segments):
        chunk.append(seg)
        rows += seg[3].size
        if rows < rows_per_chunk and n + 1 < len(segments):
            continue
        sources, points = [], []
        for j, c, k, take in chunk:
            copy = per_sample[id(jobs[j].sample)][0][c]
            b = copy.baselines[k]
            points.append(b[None] + copy.draws[1][take].reshape(shape) * (copy.x - b)[None])
            sources.append(ctx.source(jobs[j].target, jobs[j].sample, copy.x, b, False))
        for (j, c, k, take), (_, grads) in zip(chunk, evaluate_many(sources, points,
                                                                    ctx.batch_size),
                                                  strict=True):  # fmt: skip
            copy = per_sample[id(jobs[j].sample)][0][c]
            per_draw = grads * (copy.x - copy.baselines[k])[None]
            attrs[j][c] += per_draw.sum(axis=0) / len(copy.draws[0])
            sums[j][c][take] = per_draw.reshape(len(take), -1).sum(axis=1)
            steps[j] += len(take)
        chunk, rows = [], 0
    return [
        np.array([s.std(ddof=1) / math.sqrt(s.size) if s.size > 1 else math.inf for s in per])
        for per in sums
    ]
