"""The igcli command line. Thin: parse options, call library functions, map errors to exit codes.

Data goes to stdout (JSON Lines with --json); people get tables, progress and warnings on
stderr. Every error a user can cause ends as one line and a documented exit code.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from igcli import __version__
from igcli.errors import ExitCode, IgcliError, UsageError
from igcli.quadrature import RULES as QUADRATURE_RULES
from igcli.render import OVERLAYS, SIGNS

# A pipe or CI log has no width to ask; 140 columns keep the summary table readable there.
stderr = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)


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
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of integers", param_hint=option
        ) from None


def _feeds(values: tuple[str, ...]) -> dict[str, Path]:
    feeds = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{value!r}: use NAME=FILE.npy", param_hint="--feed")
        feeds[name] = Path(path)
    return feeds


def _labels(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read labels ({exc})", path) from None


def fail(exc: IgcliError) -> None:
    """Print one line and exit with the error's code."""
    stderr.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    sys.exit(int(exc.exit_code))


class Group(click.Group):
    """Turns IgcliError into one line + exit code, and anything unexpected into exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except IgcliError as exc:
            fail(exc)
        except KeyboardInterrupt:
            stderr.print("interrupted")
            sys.exit(int(ExitCode.INTERRUPTED))
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # a bug: still one line, with a hint to report it
            if ctx.obj and ctx.obj.get("debug"):
                raise
            stderr.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {exc} "
                "(run with --debug for a traceback, and please report it)"
            )
            sys.exit(int(ExitCode.INTERNAL))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="igcli")
@click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks of internal errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Explain ONNX model predictions with Integrated Gradients."""
    ctx.obj = {"debug": debug}


MODEL = click.argument(
    "model", type=click.Path(path_type=Path, dir_okay=False, exists=False)
)  # existence is checked by igcli itself so the error names the file and uses exit code 3


@main.command()
@MODEL
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--target",
    "targets",
    help="Class index(es) to explain, e.g. 3 or 3,5. "
    "Default: the top class at the input. Counts over each sample's flattened output.",
)
@click.option("--output", help="Model output to explain (default: the first).")
@click.option("--softmax", is_flag=True, help="Explain softmax probabilities of a logits output.")
@click.option("--input", "input_name", help="Model input to attribute (default: the first).")
@click.option(
    "--feed",
    "feeds",
    multiple=True,
    metavar="NAME=FILE.npy",
    help="Values for the other model inputs.",
)
@click.option(
    "--steps",
    type=click.IntRange(1, 100000),
    default=50,
    show_default=True,
    help="Gradient evaluations along the path.",
)
@click.option(
    "--method",
    type=click.Choice(list(QUADRATURE_RULES)),
    default="gausslegendre",
    show_default=True,
    help="Quadrature rule.",
)
@click.option(
    "--baseline",
    help="zero, black, white, uniform, blur, or a .npy (model space) or "
    "image (pixel space) file. Default: black for images, zero otherwise.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Path points per model call; bounds memory.",
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
@click.option("--provider", help="ONNX Runtime execution provider (CPU, CUDA, ...).")
@click.option("--threads", type=click.IntRange(1), help="ONNX Runtime intra-op threads.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for noise baselines.")
@click.option("--mean", help="Per-channel mean for image normalisation, e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Per-channel std for image normalisation.")
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Class names, one per line (default: from the model's sidecar).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("igcli-out"),
    show_default=True,
    help="Output folder.",
)
@click.option(
    "--json",
    "json_lines",
    is_flag=True,
    help="Print one JSON object per input on stdout (JSON Lines), nothing else.",
)
@click.option("--quiet", "-q", is_flag=True, help="Silence stderr except errors.")
@click.option("--recursive", "-r", is_flag=True, help="Walk folders recursively.")
@click.option("--glob", "pattern", help="Only files matching this pattern in folders.")
@click.option(
    "--skip-existing",
    is_flag=True,
    help="Skip inputs whose outputs are complete and newer than the model.",
)
@click.option("--shard", help="Process shard K of N (K/N) of the inputs, split by name.")
@click.option(
    "--max-completeness-error",
    type=click.FloatRange(0),
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
    type=click.FloatRange(0, 100, min_open=True),
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
@click.option("--no-cache", is_flag=True, help="Rebuild the gradient graph; do not cache it.")
def explain(model: Path, inputs: tuple[str, ...], **kw) -> None:
    """Explain MODEL's prediction for each INPUT (image, .npy, .csv, folder, or - for stdin)."""
    from igcli.run import run_explain

    kw["targets"] = _ints(kw["targets"], "--target")
    kw["mean"] = _floats(kw["mean"], "--mean")
    kw["std"] = _floats(kw["std"], "--std")
    kw["feeds"] = _feeds(kw["feeds"])
    kw["labels"] = _labels(kw.pop("labels_file"))
    code = run_explain(model, list(inputs), stderr=stderr, **kw)
    sys.exit(int(code))


@main.command()
@MODEL
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def inspect(model: Path, as_json: bool) -> None:
    """Show MODEL's inputs, outputs, ops, preprocessing and gradient-graph support."""
    import json

    import onnxruntime as ort

    from igcli.autodiff import blocking_ops
    from igcli.inputs import make_preprocessing
    from igcli.model import (
        Sidecar,
        graph_inputs,
        graph_outputs,
        load_model,
        opset_of,
        with_dynamic_batch,
    )

    onnx_model = load_model(model)
    sidecar = Sidecar.load(model)
    ins, outs = graph_inputs(onnx_model), graph_outputs(onnx_model)
    ops = Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        for n in onnx_model.graph.node
    )
    try:
        prep = make_preprocessing(ins[0], sidecar).describe()
    except IgcliError as exc:
        prep = f"none ({exc})"
    try:
        blockers = blocking_ops(with_dynamic_batch(onnx_model), ins[0].name, outs[0].name)
    except Exception as exc:  # report, do not crash, on transform bugs
        blockers = [f"(transform failed: {exc})"]
    info = {
        "model": str(model),
        "opset": opset_of(onnx_model),
        "ir_version": onnx_model.ir_version,
        "producer": f"{onnx_model.producer_name} {onnx_model.producer_version}".strip(),
        "inputs": [{"name": s.name, "shape": s.shape, "dtype": str(s.dtype)} for s in ins],
        "outputs": [{"name": s.name, "shape": s.shape, "dtype": str(s.dtype)} for s in outs],
        "ops": dict(sorted(ops.items())),
        "preprocessing": prep,
        "labels": len(sidecar.labels) if sidecar.labels else None,
        "gradient_graph": not blockers,
        "gradient_graph_blockers": blockers,
        "providers": ort.get_available_providers(),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    out = Console(highlight=False)
    out.print(
        f"[bold]{model}[/]  opset {info['opset']}, IR {info['ir_version']}"
        + (f", from {info['producer']}" if info["producer"] else "")
    )
    table = Table("", "name", "shape", "dtype", box=None)
    for kind, specs in (("input", info["inputs"]), ("output", info["outputs"])):
        for s in specs:
            shape = "[" + ", ".join("?" if d is None else str(d) for d in s["shape"]) + "]"
            table.add_row(kind, s["name"], shape, s["dtype"])
    out.print(table)
    out.print("ops: " + ", ".join(f"{k} x{v}" for k, v in info["ops"].items()))
    out.print(f"preprocessing: {prep}")
    if sidecar.labels:
        out.print(f"labels: {len(sidecar.labels)} from {model.with_suffix('.json').name}")
    if blockers:
        out.print(
            f"gradient graph: [red]no[/] (no rule for {', '.join(blockers)}); "
            "explain falls back to finite differences"
        )
    else:
        out.print("gradient graph: [green]yes[/]")
    out.print("execution providers: " + ", ".join(info["providers"]))


@main.command()
@MODEL
@click.argument("input_file", required=False)
@click.option("--target", type=int, help="Output index to check (default: the top class).")
@click.option("--output", help="Model output (default: the first).")
@click.option("--input", "input_name", help="Model input (default: the first).")
@click.option(
    "--directions",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Random directions; each costs two forward calls.",
)
@click.option(
    "--eps",
    type=click.FloatRange(0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Step relative to the input's largest magnitude.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(0),
    default=1e-2,
    show_default=True,
    help="Largest relative error that passes.",
)
@click.option(
    "--jitter",
    type=click.FloatRange(0),
    default=1e-2,
    show_default=True,
    help="Noise added to the input, relative to its largest magnitude, to move off "
    "exact ties (flat backgrounds under max-pooling).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def gradcheck(model: Path, input_file: str | None, **kw) -> None:
    """Compare MODEL's gradient graph with central finite differences (exit 0 when they agree)."""
    import json

    from igcli.gradcheck import run_gradcheck

    as_json = kw.pop("as_json")
    result = run_gradcheck(model, Path(input_file) if input_file else None, **kw)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        table = Table("direction", "graph", "finite diff.", "rel. error", box=None)
        for row in result["directions"]:
            table.add_row(
                str(row["k"]), f"{row['graph']:.6g}", f"{row['fd']:.6g}", f"{row['rel_error']:.2e}"
            )
        stderr.print(table)
        verdict = "[green]pass[/]" if result["passed"] else "[red]FAIL[/]"
        stderr.print(
            f"median relative error {result['median_rel_error']:.3e} (tolerance "
            f"{result['tolerance']:g}): {verdict}; worst {result['worst_rel_error']:.3e}"
        )
    sys.exit(0 if result["passed"] else int(ExitCode.GRADIENTS))


@main.command("merge-reports")
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=True))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder for the merged report.json/md/csv.",
)
def merge_reports_cmd(reports: tuple[Path, ...], out_dir: Path) -> None:
    """Join report.json files of shards (or folders holding them) into one report."""
    from igcli.outputs import check_writable
    from igcli.report import merge_reports

    paths = [p / "report.json" if p.is_dir() else p for p in reports]
    merged = merge_reports(paths)
    check_writable(out_dir)
    merged.write(out_dir)
    s = merged.summary()
    stderr.print(
        f"merged {len(paths)} reports: {s['explained']} explained, {s['failed']} failed "
        f"-> {out_dir}/report.json"
    )
    if s["failed"]:
        sys.exit(int(ExitCode.INPUTS_FAILED))
    if merged.gate and not merged.gate["passed"]:
        sys.exit(int(ExitCode.COMPLETENESS))
