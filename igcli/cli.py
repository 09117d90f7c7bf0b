"""The igcli command line. Thin: parse options, call library functions, map errors to exit codes.

Data goes to stdout (JSON Lines with --json); people get tables, progress and warnings on
stderr. Every error a user can cause ends as one line and a documented exit code.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import click
import rich_click
from rich.text import Text

from igcli import __version__
from igcli.cache import size_limit
from igcli.console import Messages, table
from igcli.errors import (
    ExitCode,
    GradientError,
    IgcliError,
    ModelError,
    OutputError,
    UsageError,
)
from igcli.files import read_labels
from igcli.launch import STOPS
from igcli.quadrature import DEFAULT_MAX_STEPS, DEFAULT_TOLERANCE, MAX_STEPS
from igcli.quadrature import RULES as QUADRATURE_RULES
from igcli.render import OVERLAYS, SIGNS

messages = Messages()
INSPECT_CANDIDATES = 15  # tensors --at can name, listed by `inspect` (all with --json)


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of numbers", param_hint=option
        ) from None


def _ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:  # ASCII digits only: int() also reads '٣' or '３' as 3, which no one types on purpose
        values = [int(v) for v in text.split(",") if v.strip()]
        if not text.isascii() or "_" in text:
            raise ValueError(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of integers", param_hint=option
        ) from None
    if not values:
        raise click.BadParameter("names no integers", param_hint=option)
    return list(dict.fromkeys(values))  # 3,3 is one target: one result, not the same one twice


class FiniteRange(click.FloatRange):
    """click's FloatRange, finite: it lets nan and inf through (every comparison with nan is
    false), and `--clip-percentile nan` failed in the heatmap writer after the model work.
    Every float option is of this type, so none is judged only after the work."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return number


def _size_option(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    from igcli.cache import parse_size

    try:
        size = parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
    if size <= 0:
        raise click.BadParameter("must be more than 0", param_hint=option)
    return size


def _feeds(values: tuple[str, ...]) -> dict[str, Path]:
    """--feed NAME=FILE.npy values by name (split at the first '='; a name that holds one is
    found again by load_feeds). One name given twice is refused, not the last one kept."""
    feeds = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{value!r}: use NAME=FILE.npy", param_hint="--feed")
        if name in feeds:
            raise click.BadParameter(
                f"{name!r} is given twice ({feeds[name]} and {path}): give each input once",
                param_hint="--feed",
            )
        feeds[name] = Path(path)
    return feeds


def _out_location(out_dir: str):
    """--out as a folder or URL; an empty one would mean the current folder, never meant."""
    from igcli.storage import location

    if not out_dir.strip():
        raise UsageError("--out is empty: name an output folder (or a storage URL)")
    return location(out_dir)


def _labels(path: Path | None) -> list[str] | None:
    return None if path is None else read_labels(path)


def _family(noise: str | None, **fields) -> dict:
    """AttributionSettings fields of the path-method family's options (methods.py)."""
    from igcli.methods import DEFAULT_NOISE_STD, parse_noise

    copies, std = 0, DEFAULT_NOISE_STD
    if noise is not None:
        try:
            copies, std = parse_noise(noise)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--noise") from None
    return dict(fields, noise=copies, noise_std=std)


def fail(exc: IgcliError) -> None:
    """Print one line and exit with the error's code."""
    messages.error(str(exc))
    sys.exit(int(exc.exit_code))


# Grouped, coloured help from rich-click: a maintained library configured declaratively, so the
# options read in sections instead of one long list.
rich_click.rich_click.OPTION_GROUPS = {
    "* explain": [
        {"name": "Target and output", "options": [
            "--target", "--targets-from", "--output", "--softmax", "--dequantize", "--input",
            "--feed"]},
        {"name": "Attribution", "options": [
            "--steps", "--method", "--tolerance", "--max-steps", "--baseline", "--seed"]},
        {"name": "Inside the model and token models", "options": [
            "--at", "--aggregate", "--tokenizer"]},
        {"name": "Path methods", "options": [
            "--path", "--groups", "--samples", "--baselines", "--baseline-data", "--noise",
            "--noise-type", "--blur-sigma", "--blur-sqrt", "--guided-fraction",
            "--guided-max-dist", "--regions"]},
        {"name": "Gradients", "options": ["--gradients", "--fd-groups", "--fd-step", "--no-cache"]},
        {"name": "Inputs and preprocessing", "options": [
            "--preprocess", "--size", "--mean", "--std", "--labels", "--recursive", "--glob"]},
        {"name": "Outputs and heatmaps", "options": [
            "--out", "--json", "--quiet", "--no-heatmaps", "--overlay", "--sign",
            "--clip-percentile", "--scale", "--channels"]},
        {"name": "Batch and CI", "options": [
            "--skip-existing", "--shard", "--max-completeness-error"]},
        {"name": "Scale out", "options": ["--manifest", "--workers", "--dask"]},
        {"name": "Resources", "options": [
            "--batch-size", "--memory-limit", "--threads", "--provider"]},
    ],
    "* gradcheck": [
        {"name": "What to check", "options": [
            "--target", "--output", "--input", "--feed", "--row", "--size"]},
        {"name": "How", "options": [
            "--directions", "--eps", "--tolerance", "--jitter", "--seed", "--threads",
            "--json"]},
    ],
}  # fmt: skip
rich_click.rich_click.MAX_WIDTH = 100
rich_click.rich_click.SHOW_ARGUMENTS = True
rich_click.rich_click.TEXT_EMOJIS = False
rich_click.rich_click.TEXT_MARKUP = "rich"

# A rich Text, which rich-click prints as it is (a string epilog has its lines run together)
EXPLAIN_EXAMPLES = Text("""\
Examples:
  igcli explain model.onnx cat.png                     top class, black baseline, 50 steps
  igcli explain model.onnx photos/ -r --out runs/1     every image under photos/
  igcli explain model.onnx rows.csv --target 1         one result per CSV row
  igcli explain model.onnx x.npy --steps auto          as many steps as completeness needs
  igcli explain model.onnx imgs/ --max-completeness-error 0.01 -q    a CI gate
  find data -name '*.png' | igcli explain model.onnx - --json > results.jsonl
  igcli explain model.onnx --manifest m.jsonl --shard auto/4 --out s3://b/run    a job array
""")


class Group(rich_click.RichGroup):
    """Turns IgcliError into one line + exit code, and anything unexpected into exit 1.

    Usage errors too are one line (`error: Invalid value for '--steps': ...`, exit 2), not
    click's or rich-click's usage block: logs and scripts read one line per problem.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **kw):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **kw)
        stdout = sys.stdout
        guard = sys.stdout = _GuardedStdout(stdout) if stdout is not None else None
        try:
            code, unhandled = 0, False
            try:
                self._standalone(args, prog_name, complete_var, **kw)
            except SystemExit as exc:
                # click answers a broken pipe with exit 1 and a sys.stdout of its own, rich
                # with exit 1 raised while handling it
                code = exc.code
                unhandled = sys.stdout is not guard or (
                    guard is not None and guard.failure is not None
                    and exc.__context__ is guard.failure
                )  # fmt: skip
            except OSError as exc:
                if guard is None or exc is not guard.failure:
                    raise
                unhandled = True
            if guard is not None:
                code = _stdout_verdict(guard, code, unhandled)
        finally:
            sys.stdout = stdout
        sys.exit(code)

    def _standalone(self, args, prog_name, complete_var, **kw):
        try:
            super().main(args, prog_name, complete_var, standalone_mode=False, **kw)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            messages.info("aborted")
            sys.exit(int(ExitCode.INTERRUPTED))
        except click.ClickException as exc:
            where = exc.ctx.command_path if getattr(exc, "ctx", None) else "igcli"
            hint = f" (see {where} --help)" if isinstance(exc, click.UsageError) else ""
            messages.error(exc.format_message() + hint)
            sys.exit(exc.exit_code)
        sys.exit(0)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None:
            _given_once(cmd, rest)
        return name, cmd, rest

    def invoke(self, ctx: click.Context):
        messages.quiet = False  # each command's own --quiet (one process may run several)
        with _sigterm_as_interrupt():
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context):
        try:
            size_limit()  # a bad IGCLI_CACHE_MAX is said before any work, not after it
            return super().invoke(ctx)
        except IgcliError as exc:
            fail(exc)
        except KeyboardInterrupt:
            messages.info("interrupted")
            sys.exit(int(ExitCode.INTERRUPTED))
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # a bug: still one line, with a hint to report it
            if isinstance(sys.stdout, _GuardedStdout) and exc is sys.stdout.failure:
                raise  # stdout cannot be written: Group.main says so (not a bug)
            if ctx.obj and ctx.obj.get("debug"):
                raise
            what = _out_of_memory(exc)
            if what is None:
                messages.internal_error(
                    f"{type(exc).__name__}: {exc} "
                    "(run igcli --debug COMMAND ... for a traceback, and please report it)"
                )
                sys.exit(int(ExitCode.INTERNAL))
        # out of memory: said here, after the except block let go of the exception and the
        # arrays its frames held (printing may need memory too)
        fail(UsageError(
            f"memory ran out ({what}); lower --memory-limit or --batch-size, or give igcli "
            "more memory (ulimit -v, the container's limit)"
        ))  # fmt: skip


def _given_once(cmd: click.Command, args: list[str]) -> None:
    """An option that takes one value, given twice, is a usage error: click keeps the last,
    and `--shard 1/2 --shard 2/2` quietly ran the other half (so did --out, --manifest,
    --target and --baseline). Options that gather values (--feed) may repeat."""
    single = {}
    for param in cmd.params:
        if isinstance(param, click.Option) and not (param.multiple or param.count or param.is_flag):
            for opt in param.opts:
                single[opt] = param
    seen: dict[str, tuple[str, str]] = {}
    k = 0
    while k < len(args) and args[k] != "--":
        token = args[k]
        name, eq, value = token.partition("=")
        param = single.get(name) if name.startswith("--") else single.get(token)
        k += 1
        if param is None:
            continue
        if not eq:
            value = args[k] if k < len(args) else ""
            k += 1
        if param.name in seen:
            first, before = seen[param.name]
            raise click.UsageError(
                f"{name} is given more than once ({first} {before}, {name} {value}); give it once"
            )
        seen[param.name] = (name, value)


class _GuardedStdout(io.TextIOBase):
    """sys.stdout while a command runs: the same stream, remembering the error that writing it
    met, so a full disk (`> /dev/full`) or a reader gone (`| head`) is told from a bug."""

    def __init__(self, stream) -> None:
        super().__init__()
        self.stream = stream
        self.failure: OSError | None = None

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as exc:
            self.failure = exc
            raise

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            self.failure = exc
            raise

    def close(self) -> None:  # the process's stdout is not this wrapper's to close
        pass

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return self.stream.encoding

    @property
    def errors(self):
        return self.stream.errors

    @property
    def buffer(self):
        return self.stream.buffer

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _stdout_verdict(guard: _GuardedStdout, code, unhandled: bool):
    """The exit code once stdout is flushed. A reader gone (`igcli plan ... | head -1`) ends
    the command quietly with 141, as a tool stopped by SIGPIPE; any other write error (a full
    disk) is one line and exit 6, the output error. Failures a command handled itself (the
    JSON lines of explain) keep its code."""
    import errno

    from igcli.files import os_reason

    failure = guard.failure if unhandled else None
    if failure is None and guard.failure is None:
        try:
            guard.flush()
        except OSError as exc:
            failure = exc
    if guard.failure is not None:
        with contextlib.suppress(OSError, ValueError):  # no more writes, nor at shutdown
            os.dup2(os.open(os.devnull, os.O_WRONLY), guard.stream.fileno())
    if failure is None:
        return code
    if failure.errno == errno.EPIPE:
        return int(ExitCode.PIPE_CLOSED)
    messages.error(f"stdout: cannot be written ({os_reason(failure)})")
    return int(ExitCode.OUTPUT)


def _out_of_memory(exc: BaseException) -> str | None:
    """What says the process ran out of memory, or None: under a tight `ulimit -v` that came
    as 'internal error: MemoryError: ' (no message), 'can't start new thread' or an OSError
    ENOMEM from wherever the allocation happened to fail."""
    import errno

    text = str(exc)
    if isinstance(exc, MemoryError):
        return "MemoryError" + (f": {text}" if text else "")
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return f"OSError: {exc.strerror or text}"
    if isinstance(exc, RuntimeError) and text.startswith("can't start new thread"):
        return "a thread could not be started"
    if type(exc).__module__.startswith("onnxruntime") and (
        "Failed to allocate memory" in text or "bad_alloc" in text
    ):
        return "ONNX Runtime could not allocate memory"
    return None


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a batch scheduler's time limit, `kill`, a container stopping) stops a command
    as Ctrl-C does: finished inputs are kept, the report is written, exit 130 (it ended the
    process at once, with no report). The caller's own handler is back afterwards."""
    import signal
    import threading

    def stop(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, stop) for sig in STOPS}  # (SIGHUP too: see launch)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="igcli")
@click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks of internal errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Explain ONNX model predictions with Integrated Gradients."""
    ctx.obj = {"debug": debug}


def run() -> None:
    """The igcli program (`igcli`, `python -m igcli`): `main`, and then the exit code it
    decided even if Ctrl-C or SIGTERM comes while the interpreter shuts down (ONNX Runtime's
    sessions and threads going away), which ended the process with 130 or 143 instead."""
    import signal

    try:
        main()
    except SystemExit:
        for sig in (signal.SIGINT, *STOPS):
            signal.signal(sig, signal.SIG_IGN)
        raise


class StepsType(click.ParamType):
    """A number of steps (1 to MAX_STEPS) or 'auto'."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            steps = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of steps nor 'auto'", param, ctx)
        if not 1 <= steps <= MAX_STEPS:
            self.fail(f"{steps} is not in the range 1 to {MAX_STEPS}", param, ctx)
        return steps


STEPS = StepsType()


class ModelPathType(click.Path):
    """The model's path, or a file:// URL of it (a local path, as INPUTS take it)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.startswith("file://"):
            from igcli.storage import location

            value = str(location(value))
        return super().convert(value, param, ctx)


MODEL = click.argument(
    "model", type=ModelPathType(path_type=Path, exists=False)
)  # existence is checked by igcli itself so the error names the file and uses exit code 3
THREADS = click.option(
    "--threads",
    type=click.IntRange(1),
    help="Threads per model call (default: the CPUs this process may use): a call's rows "
    "are split over that many single-threaded ONNX Runtime runs.",
)


@main.command(epilog=EXPLAIN_EXAMPLES)
@MODEL
@click.argument("inputs", nargs=-1)
@click.option(
    "--target",
    "targets",
    help="Class index(es) to explain, e.g. 3 or 3,5. "
    "Default: the top class at the input. Counts over each sample's flattened output.",
)
@click.option(
    "--targets-from",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE.csv",
    help="Each input's own target (its true label, say): a CSV of input,target rows.",
)
@click.option(
    "--output",
    help="Model output to explain, or any float tensor of the graph (default: the first float "
    "output).",
)
@click.option("--softmax", is_flag=True, help="Explain softmax probabilities of a logits output.")
@click.option(
    "--dequantize",
    is_flag=True,
    help="Quantized models (int8 QDQ, QLinear ops, dynamic quantization): explain their float "
    "twin, the same weights with activations not rounded (the rounding makes the gradient zero).",
)
@click.option("--input", "input_name", help="Model input to attribute (default: the first).")
@click.option(
    "--feed",
    "feeds",
    multiple=True,
    metavar="NAME=FILE.npy",
    help="Values for the other model inputs.",
)
@click.option(
    "--at",
    "at",
    metavar="TENSOR",
    help="Attribute at this float tensor of the graph instead of the input (the model is cut "
    "there). Default: the input; for token ids, the embedding lookup they feed.",
)
@click.option(
    "--aggregate",
    type=click.Choice(["sum", "l2", "none"]),
    default="sum",
    show_default=True,
    help="With --at (and token models): attributions per input position (per token), summed "
    "over the tensor's other axes, their L2 norm, or none.",
)
@click.option(
    "--tokenizer",
    type=click.Path(path_type=Path),
    help="Token models: the tokenizer.json (default: <model>.tokenizer.json or "
    "tokenizer.json beside the model).",
)
@click.option(
    "--steps",
    type=STEPS,
    default=None,
    help="Gradient evaluations along the path, or 'auto': as many as reach --tolerance. "
    "Default: 50 (--path blur 100, guided 200).",
)
@click.option(
    "--method",
    type=click.Choice(list(QUADRATURE_RULES)),
    metavar="RULE",
    help="Quadrature rule for a fixed number of steps: "
    + ", ".join(QUADRATURE_RULES)
    + " (default: gausslegendre).",
)
@click.option(
    "--tolerance",
    type=FiniteRange(0, min_open=True),
    default=DEFAULT_TOLERANCE,
    show_default=True,
    help="With --steps auto: the relative completeness error to reach.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(3, MAX_STEPS),
    default=DEFAULT_MAX_STEPS,
    show_default=True,
    help="With --steps auto: the most gradient evaluations per input (per leg of the "
    "extremal and Shapley paths, which integrate each leg to the tolerance).",
)
@click.option(
    "--path",
    "path_spec",
    default="straight",
    show_default=True,
    metavar="PATH",
    help="straight|blur|guided|extremal[:ORDER]|shapley. The path from baseline to input: "
    "straight (IG), blur (Blur IG), guided (Guided IG), "
    "extremal (one feature group at a time; ORDER: comma-separated group indices, default by "
    "descending |x - b|), shapley (random orders averaged: Shapley value sampling).",
)
@click.option(
    "--groups",
    metavar="HxW|1",
    help="Extremal and Shapley paths: image patches moved together (default: a 4x4 grid of "
    "patches), or 1 for one feature at a time (the default for other inputs).",
)
@click.option(
    "--samples",
    type=click.IntRange(1, 100000),
    help="With --baselines: expected gradients over N random (baseline, position) draws. "
    "With --path shapley: N random orders (default 25; all orders when there are fewer).",
)
@click.option(
    "--baselines",
    "baseline_set",
    metavar="FILE|DIR",
    help="K baselines (images, a .npy stack [K, ...], CSV rows, or a folder of such files): "
    "the attribution averages IG over them.",
)
@click.option(
    "--baseline-data",
    metavar="FILE|DIR",
    help="With --baseline mean: training data to average (CSV rows, a .npy stack, images).",
)
@click.option(
    "--noise",
    metavar="N[,STD]",
    help="Average over N noisy copies of the input: Gaussian noise with STD relative to the "
    "input's range (default 0.15).",
)
@click.option(
    "--noise-type",
    type=click.Choice(["smoothgrad", "smoothgrad_sq", "vargrad"]),  # methods.NOISE_TYPES
    default="smoothgrad",
    show_default=True,
    help="How the noisy copies combine, as Captum's NoiseTunnel: mean, mean of squares, variance.",
)
@click.option(
    "--blur-sigma",
    type=FiniteRange(0, min_open=True),
    default=50.0,
    show_default=True,
    help="--path blur: the largest blur, in pixels (PAIR's max_sigma).",
)
@click.option(
    "--blur-sqrt", is_flag=True, help="--path blur: PAIR's square-root spacing of blur levels."
)
@click.option(
    "--guided-fraction",
    type=FiniteRange(0, 1, min_open=True),
    default=0.25,
    show_default=True,
    help="--path guided: the share of features (smallest |gradient|) moved per step.",
)
@click.option(
    "--guided-max-dist",
    type=FiniteRange(0, 1),
    default=0.02,
    show_default=True,
    help="--path guided: how far (in path position) it may leave the straight path; 0 is IG.",
)
@click.option(
    "--regions",
    type=click.Choice(["xrai"]),
    help="Images: rank regions by attribution density (XRAI; needs scikit-image, the xrai "
    "extra) and draw the top 30% beside the heatmap. Default baselines: black and white.",
)
@click.option(
    "--baseline",
    help="zero, black, white, uniform, blur, mean (the training mean: the sidecar's "
    "baseline_mean or --baseline-data), or a .npy (model space) or "
    "image (pixel space) file. Default: black for images, zero otherwise.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    help="Path points per model call (default: as many as fit --memory-limit, at most 512).",
)
@click.option(
    "--memory-limit",
    metavar="SIZE",
    help="Memory the model calls may use, e.g. 4G (default: half of the available memory).",
)
@click.option(
    "--gradients",
    type=click.Choice(["auto", "graph", "fd"]),
    default="auto",
    show_default=True,
    help="Gradient source: the gradient graph, finite differences, "
    "or the graph when it can be built.",
)
@click.option(
    "--fd-groups",
    help="Finite differences: 1 (per feature) or HxW patches for images "
    "(e.g. 8x8). Default: 1, or 4x4 for images over 4096 values.",
)
@click.option(
    "--fd-step",
    type=FiniteRange(0, 1, min_open=True),
    default=1e-3,
    show_default=True,
    help="Finite differences: each feature group's step, relative to its own scale.",
)
@click.option("--provider", help="ONNX Runtime execution provider (CPU, CUDA, ...).")
@THREADS
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for noise and random draws."
)
@click.option(
    "--preprocess",
    type=click.Choice(["imagenet", "clip", "none"]),
    help="Image preset: imagenet (mean/std, shorter side to 256/224 of the size, centre "
    "crop), clip, or none (plain pixels, squashed to size). Default: the sidecar's, else none.",
)
@click.option(
    "--size",
    metavar="HxW",
    help="Models that take images of any size (detectors, say): resize each image to this "
    "many pixels, e.g. 640x640. Default: the sidecar's, else each image's own.",
)
@click.option("--mean", help="Per-channel mean for image normalisation, e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Per-channel std for image normalisation.")
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Class names, one per line, line k for output k (a blank line: a class without a "
    "name). Default: from the model's sidecar.",
)
@click.option(
    "--out",
    "out_dir",
    default="igcli-out",
    show_default=True,
    help="Output folder, or an object storage URL (s3://, gs://, az://; igcli\\[cloud]).",
)
@click.option(
    "--json",
    "json_lines",
    is_flag=True,
    help="Print one JSON object per input on stdout (JSON Lines), nothing else.",
)
@click.option("--quiet", "-q", is_flag=True, help="Silence stderr except errors.")
@click.option("--recursive", "-r", is_flag=True, help="Walk folders recursively.")
@click.option(
    "--glob",
    "pattern",
    multiple=True,
    help="Only files matching this pattern in folders (repeat: any of them).",
)
@click.option(
    "--skip-existing",
    is_flag=True,
    help="Skip inputs whose results are already in --out, complete, from the same model "
    "and settings (resumes a run).",
)
@click.option(
    "--shard",
    metavar="K/N|auto/N",
    help="Process shard K of N of the inputs, split by name; auto/N takes K from "
    "IGCLI_SHARD, JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID (0-based). Reports are "
    "named report.shard-K-of-N.*.",
)
@click.option(
    "--manifest",
    metavar="FILE",
    help="Read the inputs and their output names from a manifest (igcli plan) instead of "
    "INPUTS, so every shard agrees.",
)
@click.option(
    "--workers",
    metavar="N|auto",
    default="auto",
    show_default=True,
    help="Worker processes on this machine for a folder of inputs: auto uses one per CPU "
    "for a small model with small samples and 250 or more inputs (its calls are short, and "
    "one process would wait on its own Python between them), else 1: all in this process.",
)
@click.option(
    "--dask",
    metavar="ADDRESS|local:N",
    help="Spread the inputs over Dask workers: a scheduler address, or local:N for N local "
    "worker processes (igcli\\[dask]).",
)
@click.option(
    "--max-completeness-error",
    type=FiniteRange(0),
    metavar="E",
    help="Fail (exit 5) when an input's relative completeness error exceeds E.",
)
@click.option(
    "--overlay",
    type=click.Choice(OVERLAYS),
    default="panel",
    show_default=True,
    help="Heatmap style for images.",
)
@click.option(
    "--sign",
    type=click.Choice(SIGNS),
    default="all",
    show_default=True,
    help="Which attributions to draw.",
)
@click.option(
    "--clip-percentile",
    type=FiniteRange(0, 100, min_open=True),
    default=99.5,
    show_default=True,
    help="Colour scale saturates at this percentile of |map|.",
)
@click.option(
    "--scale",
    type=click.Choice(["per-input", "shared"]),
    default="per-input",
    show_default=True,
    help="One colour scale for the whole run, or one per input.",
)
@click.option(
    "--channels",
    "reduce",
    type=click.Choice(["sum", "maxabs"]),
    default="sum",
    show_default=True,
    help="How channels become one map per pixel.",
)
@click.option(
    "--no-heatmaps",
    is_flag=True,
    help="Write attributions and reports only, no pictures (faster for large runs).",
)
@click.option("--no-cache", is_flag=True, help="Rebuild the gradient graph; do not cache it.")
def explain(
    model: Path,
    inputs: tuple[str, ...],
    targets: str | None,
    targets_from: Path | None,
    output: str | None,
    softmax: bool,
    dequantize: bool,
    input_name: str | None,
    feeds: tuple[str, ...],
    at: str | None,
    aggregate: str,
    tokenizer: Path | None,
    steps: int | str,
    method: str | None,
    tolerance: float,
    max_steps: int,
    path_spec: str,
    groups: str | None,
    samples: int | None,
    baseline_set: str | None,
    baseline_data: str | None,
    noise: str | None,
    noise_type: str,
    blur_sigma: float,
    blur_sqrt: bool,
    guided_fraction: float,
    guided_max_dist: float,
    regions: str | None,
    baseline: str | None,
    batch_size: int | None,
    memory_limit: str | None,
    gradients: str,
    fd_groups: str | None,
    fd_step: float,
    provider: str | None,
    threads: int | None,
    seed: int,
    preprocess: str | None,
    size: str | None,
    mean: str | None,
    std: str | None,
    labels_file: Path | None,
    out_dir: str,
    json_lines: bool,
    quiet: bool,
    recursive: bool,
    pattern: tuple[str, ...],
    skip_existing: bool,
    shard: str | None,
    manifest: str | None,
    workers: str,
    dask: str | None,
    max_completeness_error: float | None,
    overlay: str,
    sign: str,
    clip_percentile: float,
    scale: str,
    reduce: str,
    no_heatmaps: bool,
    no_cache: bool,
) -> None:
    """Explain MODEL's prediction for each INPUT (image, .npy, .csv, folder, or - for stdin;
    for token models .npy token ids, .txt with one text per line, or .jsonl; local paths or
    object storage URLs)."""
    import functools

    from igcli.batch import OutputSettings, discover
    from igcli.discovery import TargetTable
    from igcli.run import plan, run_explain
    from igcli.session import AttributionSettings, Session
    from igcli.visualize import HeatmapStyle

    messages.quiet = quiet
    settings = AttributionSettings(
        steps=steps,
        method=method,
        baseline=baseline,
        seed=seed,
        tolerance=tolerance,
        max_steps=max_steps,
        **_family(
            noise,
            path=path_spec,
            groups=groups,
            samples=samples,
            baselines=baseline_set,
            baseline_data=baseline_data,
            noise_type=noise_type,
            max_sigma=blur_sigma,
            blur_sqrt=blur_sqrt,
            fraction=guided_fraction,
            max_dist=guided_max_dist,
            regions=regions,
        ),
    )
    settings.check()
    if manifest is not None:
        from igcli.manifest import read_manifest

        if inputs:
            raise UsageError("give INPUTS or --manifest, not both")
        read = read_manifest(manifest)
        the_plan = plan(read.found, shard, manifest=read)
    elif not inputs:
        raise UsageError("no INPUTS given (or --manifest FILE)")
    else:
        local_out = None if "://" in out_dir else Path(out_dir)
        found = discover(list(inputs), recursive, pattern, sys.stdin, out_dir=local_out)
        the_plan = plan(found, shard)
    make_session = functools.partial(  # Dask workers make their own from the same options
        Session,
        model,
        input=input_name,
        output=output,
        softmax=softmax,
        dequantize=dequantize,
        feeds=_feeds(feeds),
        gradients=gradients,
        fd_step=fd_step,
        fd_groups=fd_groups,
        provider=provider,
        threads=threads,
        batch_size=batch_size,
        memory_limit=_size_option(memory_limit, "--memory-limit"),
        preprocess=preprocess,
        size=size,
        mean=_floats(mean, "--mean"),
        std=_floats(std, "--std"),
        labels=_labels(labels_file),
        cache=not no_cache,
        warn=messages.warn,
        at=at,
        aggregate=aggregate,
        tokenizer=tokenizer,
    )
    made = time.perf_counter()
    session = make_session()
    outputs = OutputSettings(
        out_dir=_out_location(out_dir),
        style=HeatmapStyle(overlay, sign, clip_percentile, reduce),
        heatmaps=not no_heatmaps,
        shared_scale=scale == "shared",
        json_lines=json_lines,
        skip_existing=skip_existing,
        max_completeness_error=max_completeness_error,
    )
    table = None
    if targets_from is not None:
        table = TargetTable(targets_from, session.labels, session.classes)
    code = run_explain(
        session,
        the_plan,
        settings=settings,
        targets=_ints(targets, "--target"),
        outputs=outputs,
        messages=messages,
        targets_from=table,
        dask=dask,
        workers=workers,
        session_factory=make_session,
        made=made,
    )
    sys.exit(int(code))


@main.command("plan")
@MODEL
@click.argument("inputs", nargs=-1, required=True)
@click.option("--recursive", "-r", is_flag=True, help="Walk folders recursively.")
@click.option(
    "--glob",
    "pattern",
    multiple=True,
    help="Only files matching this pattern in folders (repeat: any of them).",
)
def plan_cmd(
    model: Path, inputs: tuple[str, ...], recursive: bool, pattern: tuple[str, ...]
) -> None:
    """Walk INPUTS once and print a manifest (JSON Lines) fixing each input's output name.

    Run every shard with `igcli explain MODEL --manifest FILE --shard ...`: they then agree
    on the inputs, their names and the partition, and none walks the inputs again.
    """
    from igcli.batch import discover
    from igcli.manifest import manifest_lines
    from igcli.model import model_hash

    try:
        sha = model_hash(model)
    except OSError as exc:
        raise ModelError(f"cannot read the model ({exc.strerror or exc})", model) from None
    found = discover(list(inputs), recursive, pattern, sys.stdin)
    # a path that names nothing (a typo) is said now, not by every shard that is given it
    missing = [i for i in found.items if isinstance(i.path, Path) and not os.path.lexists(i.path)]
    for item in missing:  # (or one discover could not look up: a name too long)
        messages.error(f"{item.path}: {item.problem or 'no such file'}")
    found.items = [i for i in found.items if i not in missing]
    for line in manifest_lines(found, str(model), sha):
        click.echo(line)
    messages.info(f"planned {len(found.items)} input(s), skipped {len(found.skipped)} file(s)")
    if missing:
        sys.exit(int(ExitCode.INPUTS_FAILED))


@main.command()
@MODEL
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def inspect(model: Path, as_json: bool) -> None:
    """Show MODEL's inputs, outputs, ops, preprocessing and gradient-graph support."""
    import json

    import onnxruntime as ort

    from igcli.autodiff import blocking_ops
    from igcli.autodiff.contrib import with_embeddings_exposed
    from igcli.cut import candidate_tensors, embedding_lookups, make_cut
    from igcli.dequantize import float_twin, is_quantized
    from igcli.inputs import dims_text, make_preprocessing
    from igcli.model import (
        Sidecar,
        graph_inputs,
        graph_outputs,
        load_model,
        opset_of,
        rows_first,
        with_dynamic_batch,
        without_initializer_inputs,
    )
    from igcli.tokens import find_tokenizer

    onnx_model = without_initializer_inputs(load_model(model))
    sidecar = Sidecar.load(model)
    ins, outs = graph_inputs(onnx_model), graph_outputs(onnx_model)
    ops = Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        for n in onnx_model.graph.node
    )
    onnx_model = with_embeddings_exposed(onnx_model)  # as explain reads it (see Session)
    attributed = next((s for s in ins if s.dtype.kind == "f"), None)
    explained = next((s for s in outs if s.dtype.kind == "f"), None)
    prep = "none (the model has no float input)"
    blockers: list[str] = []
    # Token ids: attributed at the embedding lookup they feed (see cut.py).
    ids = None if attributed else next((s for s in ins if s.dtype.kind in "iu"), None)
    lookups = embedding_lookups(onnx_model, ids.name) if ids is not None else []
    at = lookups[0] if lookups else None
    # rows first, as explain reads them (see rows_first): a sample [T, F...]
    read = rows_first(onnx_model, attributed) if attributed is not None else (onnx_model, 0, False)
    sequence_first = read[1] == 1
    if attributed is not None:
        if read[2]:  # (a batch axis given to an unbatched model: its input as explain reads it)
            attributed = next(s for s in graph_inputs(read[0]) if s.name == attributed.name)
        try:
            made = make_preprocessing(attributed, sidecar)
            prep = made.describe()
            if made.unnormalised_rgb:
                prep += (
                    " (note: no mean/std normalisation; ImageNet-trained models want "
                    "--preprocess imagenet)"
                )
        except IgcliError as exc:
            prep = f"none ({exc.reason})"
        if sequence_first:
            sample = [d for k, d in enumerate(attributed.shape) if k != 1]
            prep += f"; sequence first: rows on axis 1, a sample is {sample}"
    elif at is not None:
        found = find_tokenizer(model, None)
        prep = f"token ids in {ids.name!r} ({found.name if found else 'no tokenizer.json'})"
    source = attributed or (ids if at is not None else None)
    unloadable = _runtime_refusal(onnx_model, model)
    twin_blockers: list[str] | None = None  # (a quantized model's float twin's)
    refused = not ins or source is None or explained is None or bool(unloadable)  # exit 2 or 3
    needs_at = source is None and ids is not None and explained is not None and not unloadable
    if not ins:
        blockers = ["(the model has no inputs: nothing to attribute)"]
    elif unloadable:
        blockers = [f"({unloadable})"]
    elif needs_at:
        blockers = ["(no float input: name a float tensor after its integer input with --at)"]
    elif source is None or explained is None:
        blockers = ["(no float input or output to differentiate)"]
    else:

        def graph_blockers(proto) -> list[str]:
            try:
                graph_model, graph_input = with_dynamic_batch(proto), source.name
                if at is not None:
                    graph_model = make_cut(graph_model, at, ids.name, explained.name).after
                    graph_input = at
                return blocking_ops(graph_model, graph_input, explained.name)
            except Exception as exc:  # report, do not crash, on transform bugs
                return [f"(transform failed: {type(exc).__name__}: {exc})"]

        blockers = graph_blockers(read[0])
        if blockers and is_quantized(read[0]):  # what --dequantize would give
            try:
                twin_blockers = graph_blockers(float_twin(read[0], model))
            except IgcliError as exc:
                twin_blockers = [f"({exc.reason})"]

    def per_shape(found: list[str]) -> bool:
        """Whether a graph builds once per input size (every blocker wants static shapes: a
        dynamo export's Resize to a fixed size was said to leave explain without a graph)."""
        words = ("static shapes", "static sizes", "input length is known only at run time")
        return all(any(w in b for w in words) for b in found)

    candidates = []
    start = ids if needs_at else source  # (integer inputs, no lookup: --at a tensor after them)
    if start is not None and explained is not None and not sequence_first:  # (no --at there)
        specs = candidate_tensors(onnx_model, start.name, explained.name)
        first = [s for s in specs if s.name in lookups]
        candidates = first + [s for s in specs if s.name not in lookups]
    info = {
        "model": str(model),
        "opset": opset_of(onnx_model),
        "ir_version": onnx_model.ir_version,
        "producer": f"{onnx_model.producer_name} {onnx_model.producer_version}".strip(),
        "inputs": [{"name": s.name, "shape": s.shape, "dtype": str(s.dtype)} for s in ins],
        "outputs": [{"name": s.name, "shape": s.shape, "dtype": str(s.dtype)} for s in outs],
        "attributed_input": source.name if source else None,
        "attribute_at": at,
        "explained_output": explained.name if explained else None,
        "ops": dict(sorted(ops.items())),
        "preprocessing": prep,
        "labels": len(sidecar.labels) if sidecar.labels else None,
        "gradient_graph": not blockers,
        "gradient_graph_blockers": blockers,
        # a quantized model's float twin (--dequantize): None where it is not quantized
        "gradient_graph_dequantized": None if twin_blockers is None else per_shape(twin_blockers),
        # ops that need static shapes only: explain specialises a graph to each input size
        "gradient_graph_per_shape": bool(blockers) and per_shape(blockers),
        "providers": ort.get_available_providers(),
        "cut_candidates": [
            {"name": c.name, "shape": c.shape, "embedding": c.name in lookups} for c in candidates
        ],
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    out = Messages(stream=sys.stdout)
    producer = f", from {info['producer']}" if info["producer"] else ""
    out.info(f"{model}  opset {info['opset']}, IR {info['ir_version']}{producer}")
    rows = []
    for kind, specs in (("input", info["inputs"]), ("output", info["outputs"])):
        for spec in specs:
            rows.append([kind, spec["name"], dims_text(spec["shape"]), spec["dtype"]])
    out.print(table(["", "name", "shape", "dtype"], rows, box=None))
    out.info("ops: " + ", ".join(f"{k} x{v}" for k, v in info["ops"].items()))
    out.info(f"preprocessing: {prep}")
    if sidecar.labels:
        out.info(f"labels: {len(sidecar.labels)} from {model.with_suffix('.json').name}")
    if info["gradient_graph_per_shape"]:
        out.info(
            f"gradient graph: per input size ({', '.join(blockers)}); explain builds one for "
            "each size it meets"
        )
    elif needs_at and candidates:  # integer inputs: explain runs with --at
        out.info(f"gradient graph: no {blockers[0]}; explain needs --at")
    elif refused:  # nothing to differentiate at all
        out.info(f"gradient graph: no {blockers[0]}; explain refuses this model")
    elif blockers:
        out.info(
            f"gradient graph: no ({', '.join(blockers)}); explain falls back to finite differences"
        )
        if twin_blockers is not None:
            said = "yes" if not twin_blockers else f"no ({', '.join(twin_blockers)})"
            if twin_blockers and info["gradient_graph_dequantized"]:
                said = "per input size"
            out.info(f"gradient graph with --dequantize (its float twin): {said}")
    else:
        start = at or info["attributed_input"]
        out.info(f"gradient graph: yes ({start} -> {info['explained_output']})")
    if at is not None:
        out.info(f"attributed at: {at} (the embedding lookup of {ids.name!r}; --at picks another)")
    if candidates:
        shown = candidates[:INSPECT_CANDIDATES]
        more = len(candidates) - len(shown)
        rest = f" (+{more} more: --json lists all)" if more else ""
        out.info(f"tensors --at can name{rest}:")
        rows = [
            ["", c.name, dims_text(c.shape), "embedding lookup" if c.name in lookups else ""]
            for c in shown
        ]  # fmt: skip
        out.print(table(["", "tensor", "shape", ""], rows, box=None))
    out.info("execution providers: " + ", ".join(info["providers"]))


def _runtime_refusal(onnx_model, path: Path) -> str | None:
    """Why ONNX Runtime cannot load the model, as explain and gradcheck would say (exit 3),
    or None: a graph onnx reads may still hold what ONNX Runtime refuses."""
    from igcli.model import make_session

    try:
        make_session(onnx_model, path, ["CPUExecutionProvider"], 1)
    except ModelError as exc:
        return exc.reason
    return None


@main.command()
@MODEL
@click.argument("input_file", required=False)
@click.option("--target", type=int, help="Output index to check (default: the top class).")
@click.option("--output", help="Model output, or any float tensor (default: the first output).")
@click.option("--input", "input_name", help="Model input (default: the first).")
@click.option(
    "--feed",
    "feeds",
    multiple=True,
    metavar="NAME=FILE.npy",
    help="Values for the other model inputs.",
)
@click.option("--row", type=click.IntRange(0), default=0, show_default=True, help="CSV row.")
@click.option(
    "--size",
    metavar="HxW",
    help="Models that take images of any size: the size to check at (default: the image's "
    "own, or 32x32 for a random one).",
)
@click.option(
    "--directions",
    type=click.IntRange(1, 1000),
    default=8,
    show_default=True,
    help="Random directions; each costs four forward rows.",
)
@click.option(
    "--eps",
    type=FiniteRange(0, 1, min_open=True),
    default=2e-3,
    show_default=True,
    help="Step, relative to each feature's own magnitude.",
)
@click.option(
    "--tolerance",
    type=FiniteRange(0),
    default=5e-2,
    show_default=True,
    help="Largest error that passes, relative to the gradient's typical size |g * scale|.",
)
@click.option(
    "--jitter",
    type=FiniteRange(0, 1),  # (1e308 overflowed the input: a numpy warning, then NaN, exit 4)
    default=1e-2,
    show_default=True,
    help="Noise added to the input, relative to each feature's magnitude, to move off "
    "exact ties (flat backgrounds under max-pooling).",
)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--dequantize",
    is_flag=True,
    help="Quantized models: check the gradient graph of their float twin, which explain "
    "--dequantize uses.",
)
@THREADS
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def gradcheck(
    model: Path,
    input_file: str | None,
    target: int | None,
    output: str | None,
    input_name: str | None,
    feeds: tuple[str, ...],
    row: int,
    size: str | None,
    directions: int,
    eps: float,
    tolerance: float,
    jitter: float,
    seed: int,
    dequantize: bool,
    threads: int | None,
    as_json: bool,
) -> None:
    """Compare MODEL's gradient graph with finite differences (exit 0 when they agree).

    Exit 7 means a wrong gradient, or no gradient graph to check (an op without a rule):
    directions where the model is not smooth (kinks) or where the model's precision cannot
    resolve the gradient (a saturated output) are reported, not failed.
    """
    import json

    import numpy as np

    from igcli.gradcheck import check_directions
    from igcli.gradients import Bound
    from igcli.session import Session

    session = Session(
        model,
        input=input_name,
        output=output,
        dequantize=dequantize,
        feeds=_feeds(feeds),
        gradients="graph",
        size=size,
        threads=threads,
        warn=messages.warn,
    )
    rng = np.random.default_rng(seed)
    if input_file is not None:
        sample = session.load_row(Path(input_file), row)
    else:
        sample = _random_sample(session, rng)
    graph, x, context = session.check_point(sample)  # at the embeddings for token models
    if graph is None:
        raise GradientError(f"no gradient graph for inputs of shape {list(x.shape)}", model)
    runner_graph, graph = graph, Bound(graph, context)
    if target is not None:
        n_out = int(np.prod(graph.run(x[None]).shape[1:]))
        if not 0 <= target < n_out:
            raise UsageError(f"target {target} is out of range (the output has {n_out} values)")
    check = check_directions(
        graph,
        x,
        # the differences from the plain model (a float16 one's float32 copy) as the
        # self-check takes them: from a float16 graph they passed a sign-flipped gradient
        values=session.check_values(context, x),
        target=target,
        directions=directions,
        step=eps,
        tolerance=tolerance,
        jitter=jitter,
        seed=seed,
    )
    # the check looks at one row; rows of one call must get the same gradients
    rows_agree = session.gradient_rows_agree(runner_graph, x, check.target, context)
    passed = check.passed and rows_agree
    result = {
        "model": str(model),
        "input": str(input_file) if input_file else "random",
        "target": check.target,
        "step": eps,
        "jitter": jitter,
        "tolerance": tolerance,
        "directions": [
            {
                "k": k,
                "graph": d.graph,
                "fd": d.fd,
                "fd_coarse": d.fd_coarse,
                "scale": d.scale,
                "error": d.error,
                "status": d.status,
                **({"along": d.along} if d.along is not None else {}),
            }
            for k, d in enumerate(check.directions)
        ],
        "median_error": None if np.isnan(check.error) else check.error,
        "verdict": check.verdict,
        # a first point that disagreed, checked again at a second (gradcheck.check_directions)
        "first_point": check.first.summary() if check.first is not None else None,
        "rows_agree": rows_agree,
        "passed": passed,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        rows = [
            [k, f"{d.graph:.6g}", f"{d.fd:.6g}", f"{d.error:.2e}",
             f"{d.doubt / d.scale:.2e}" if d.scale > 0 else "n/a", d.status]
            for k, d in enumerate(check.directions)
        ]  # fmt: skip
        # spread: how far the differences at neighbouring steps disagree (kinks, rounding);
        # an error within it is all the differences can tell
        cols = [">direction", ">graph g.v", ">finite diff.", ">error / |g*s|",
                ">spread / |g*s|", "status"]  # fmt: skip
        out = Messages(stream=sys.stdout)
        out.print(table(cols, rows, box=None))
        verdicts = {
            "ok": "pass",
            "mismatch": "FAIL: the gradient graph disagrees with finite differences",
            "saturated": "pass (not checkable: the gradient is below float32 resolution; "
            "a saturated output? try --output with the tensor before the softmax)",
            "kinks": "pass (not checkable: the model is not smooth at this input)",
        }
        if np.dtype(x.dtype).itemsize < 4 or session.runner.output_dtype.itemsize < 4:
            verdicts["saturated"] = (  # half precision: its differences resolve 3 digits
                "pass (not checkable: differences of a float16 model's outputs cannot "
                "resolve its gradient at this input)"
            )
        median = "n/a" if np.isnan(check.error) else f"{check.error:.3e}"
        if check.verdict == "ok" and check.error > tolerance:
            verdicts["ok"] = (
                "pass (within the spread of the differences themselves: at this input they "
                "cannot check the gradient more closely)"
            )
        if any(d.status == "path" for d in check.directions):
            out.info(
                "path: the differences disagree with g.v at the point but agree with g.v "
                "averaged over the segment they span (kinks closer together than the steps); "
                "its error is that average's"
            )
        if check.first is not None:
            wrong = sum(d.status == "mismatch" for d in check.first.directions)
            out.info(
                f"at a first point nearby, {wrong} of {len(check.first.directions)} directions "
                "disagreed beyond the differences' spread; checked again at a second point:"
            )
        out.info(
            f"target {check.target}: median error {median} (tolerance {tolerance:g}) over "
            f"{len(check.voting)} of {len(check.directions)} directions: {verdicts[check.verdict]}"
        )
        if not rows_agree:
            out.info(
                "FAIL: two rows in one call get other gradients than each alone (the graph "
                "couples rows; explain sends them one per call)"
            )
    sys.exit(0 if passed else int(ExitCode.GRADIENTS))


def _random_sample(session, rng):
    """A plausible input when none is given: random pixels for images, N(0, 1) for other float
    inputs, random ordinary token ids for token models."""
    import numpy as np

    if session.tokens is not None:
        tokens = session.tokens
        length = tokens.length or 16
        size = tokens.vocab.size or 1000
        specials = sorted(set(tokens.vocab.keep_ids) | {tokens.vocab.pad_id or 0})
        ordinary = np.setdiff1d(np.arange(size), specials)
        ids = rng.choice(ordinary, size=length)
        return tokens.sample(Path("<random>"), "random", ids)
    prep = session.prep
    if prep.is_image_model:
        h, w = prep.height or 32, prep.width or 32
        x = prep.image_to_model(rng.uniform(0, 1, size=(h, w, prep.channels)))
    else:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in session.input_spec.shape[1:]]
        x = rng.standard_normal(shape).astype(prep.dtype)
    return session.load(x)[0]


@main.command("merge-reports")
@click.argument("reports", nargs=-1, required=True)
@click.option(
    "--out",
    "out_dir",
    required=True,
    help="Folder (or object storage URL) for the merged report.html/json/md/csv.",
)
@click.option(
    "--expect",
    type=click.IntRange(1),
    metavar="N",
    help="The reports must be shards 1..N of N, each exactly once, of one plan (exit 8 if not).",
)
@click.option(
    "--manifest",
    metavar="FILE",
    help="Order the records as this manifest lists the inputs (default: the shards' "
    "manifest, when readable, else by name).",
)
def merge_reports_cmd(
    reports: tuple[str, ...], out_dir: str, expect: int | None, manifest: str | None
) -> None:
    """Join the reports of shards (report.json files, or folders holding report.json or
    report.shard-K-of-N.json files) into one report of the whole run."""
    from igcli.outputs import check_writable, lock_reports, unlock_reports
    from igcli.report import check_reports_replaceable, find_reports, merge_reports
    from igcli.storage import check_writable as check_remote
    from igcli.storage import is_url, location

    paths = [p for where in reports for p in find_reports(location(where))]
    out = _out_location(out_dir)
    _check_not_a_source(paths, out)
    order = _manifest_order(manifest, paths)
    merged = merge_reports(paths, expect=expect, order=order, warn=messages.warn)
    lock = None
    if is_url(str(out)):
        check_remote(str(out))
    else:
        check_writable(out)
        lock = lock_reports(out, "report")  # as explain's: both wrote report.json, exit 0
    try:
        if not is_url(str(out)):
            check_reports_replaceable(out)
        merged.write(out)
    finally:
        if lock is not None:
            unlock_reports(out, "report", lock)
    s = merged.summary()
    where = f"{str(out).rstrip('/')}/report.json"
    messages.info(
        f"merged {len(paths)} reports: {s['explained']} explained, {s['failed']} failed -> {where}"
    )
    code, problems = merged.verdict(where)
    for line in problems:
        messages.error(line)
    if code:
        sys.exit(int(code))


def _check_not_a_source(paths: list, out) -> None:
    """`merge-reports DIR --out DIR` rewrote DIR's report.json in place: the merged report
    must not replace one being merged (shard reports, report.shard-K-of-N.json, may share
    their folder with the merged report.json)."""
    import os

    from igcli.storage import is_url

    def key(where) -> str:
        text = str(where)
        return text.rstrip("/") if is_url(text) else os.path.realpath(text)

    root = str(out).rstrip("/")
    written = {key(f"{root}/report.{kind}") for kind in ("json", "csv", "md", "html")}
    for path in paths:
        if key(path) in written:
            raise UsageError(
                "--out would replace this report, one of those being merged; "
                "write the merged report to another folder",
                path,
            )


def _manifest_order(manifest: str | None, paths: list) -> dict[str, int] | None:
    """Names in manifest order: the given manifest, else the one the shards ran from when it
    can still be read and is unchanged; None (order by name) otherwise."""
    from igcli.manifest import read_manifest
    from igcli.report import load_report

    if manifest is None:
        try:
            described = (load_report(paths[0]).get("settings") or {}).get("plan") or {}
        except IgcliError:
            return None  # merge_reports says what is wrong with it
        recorded = described.get("manifest") if isinstance(described, dict) else None
        if not isinstance(recorded, dict) or not isinstance(recorded.get("path"), str):
            return None
        try:
            read = read_manifest(recorded["path"])
        except IgcliError:
            return None
        if read.sha256 != recorded.get("sha256"):
            return None
    else:
        read = read_manifest(manifest)
    return {item.name: k for k, item in enumerate(read.found.items)}


@main.group()
def cache() -> None:
    """The cache of gradient graphs and optimised sessions (IGCLI_CACHE_DIR, IGCLI_CACHE_MAX)."""


@cache.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def cache_info(as_json: bool) -> None:
    """Where the cache is, how many entries it holds and how large it is."""
    import json

    from igcli import cache as cache_module

    info = cache_module.info()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    out = Messages(stream=sys.stdout)
    out.info(f"cache: {info['path']}")
    out.info(
        f"{info['entries']} entries ({info['gradient_graphs']} gradient graphs, "
        f"{info['optimized_graphs']} optimised sessions), {_size(info['bytes'])} of "
        f"{_size(info['limit_bytes'])} (IGCLI_CACHE_MAX)"
    )


@cache.command("clear")
def cache_clear() -> None:
    """Delete every cached graph."""
    from igcli import cache as cache_module

    gone, kept = cache_module.clear()
    messages.info(f"removed {gone} file(s) from {cache_module.cache_dir()}")
    if kept:  # (a read-only cache said "removed 0 file(s)", exit 0, with all of it there)
        more = f" and {len(kept) - 1} more" if len(kept) > 1 else ""
        raise OutputError(f"could not remove {kept[0]}{more}", cache_module.cache_dir())


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
