"""One explained (input, target): the attributions, their completeness numbers, and how to show
and save them. What `Session.attribute` returns, in a notebook and in a batch run alike.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from igcli.cut import aggregate
from igcli.errors import OutputError, UsageError
from igcli.ig import Completeness
from igcli.inputs import Preprocessing, Sample
from igcli.outputs import (
    atomic_save_npy,
    atomic_save_png,
    atomic_write_text,
    drop_stale_heatmap,
    in_the_way,
    output_stem,
    record_of_igcli,
)
from igcli.report import percent
from igcli.visualize import (
    HeatmapStyle,
    Picture,
    as_image,
    caption,
    draw,
    draw_cut,
    magnitude_map,
    shown_tokens,
    title,
)


def _check_picture(style, vmax) -> None:
    """style="zzz" met an AttributeError deep in drawing, vmax=0 a plain ValueError: both
    are the caller's, so UsageErrors in one line."""
    from igcli.render import OVERLAYS, SIGNS

    if style is not None and not isinstance(style, HeatmapStyle):
        raise UsageError(f"style must be an igcli.visualize.HeatmapStyle, not {style!r}")
    if style is not None and (style.overlay not in OVERLAYS or style.sign not in SIGNS):
        raise UsageError(
            f"HeatmapStyle: overlay is one of {', '.join(OVERLAYS)} and sign one of "
            f"{', '.join(SIGNS)}, not {style.overlay!r} and {style.sign!r}"
        )
    if vmax is not None and (
        isinstance(vmax, bool) or not isinstance(vmax, int | float | np.number)
        or not (math.isfinite(vmax) and vmax > 0)
    ):  # fmt: skip
        raise UsageError(f"vmax must be a finite number > 0, not {vmax!r}")


@dataclass(repr=False, eq=False)  # (compared by identity: `a in results` raised on arrays)
class Attribution(Completeness):
    """Attributions for one sample and one target, with what a report needs to judge them.

    Completeness: `attributions.sum()` should equal `f_input - f_baseline` (`delta`);
    `rel_error` says how far it is. Attributed at a tensor inside the model (`at`, always for
    token models), `attributions` and `baseline` have that tensor's shape and `positions`
    gives one value per input position (per token).
    """

    attributions: np.ndarray  # the sample's shape (no batch axis), float64; or the tensor's
    sample: Sample
    baseline: np.ndarray  # model space, the sample's shape (or the tensor's)
    target: int
    label: str | None
    output: str
    f_input: float
    f_baseline: float
    steps: int | str  # as asked: a number of points, or "auto" (then see extra["steps_used"])
    method: str
    baseline_name: str
    gradient_source: str
    prep: Preprocessing = field(repr=False, default=None)  # to draw the input as it was read
    fd_step: float | None = None
    fd_groups: str | None = None
    wall_time_s: float = 0.0
    extra: dict = field(default_factory=dict)  # further record fields (self-check, ...)
    at: str | None = None  # the tensor attributed at; None: the model input
    aggregate: str = "sum"  # how `positions` are made from attributions at a tensor

    def __repr__(self) -> str:
        """One line: the full arrays made a 28x28 digit's repr 60,000 characters."""
        label = f" ({self.label})" if self.label else ""
        return (
            f"<Attribution {self.sample.name!r} target {self.target}{label}: "
            f"{'x'.join(map(str, self.attributions.shape))} values, sum "
            f"{self.attribution_sum:.6g} for F(x) - F(b) = {self.delta:.6g} "
            f"(rel. error {self.rel_error:.3g}), {self.steps} steps {self.method}, "
            f"baseline {self.baseline_name}, gradients {self.gradient_source}>"
        )

    @classmethod
    def from_record(cls, record: dict, prep: Preprocessing) -> Attribution:
        """What a record keeps of an attribution, without its arrays or its sample (to draw
        it again from its .npy: see batch's shared colour scale)."""
        own = {
            "input", "name", "target", "label", "output", "f_input", "f_baseline",
            "attribution_sum", "delta", "abs_error", "rel_error", "steps", "method",
            "baseline", "gradient_source", "fd_step", "fd_groups", "wall_time_s", "at",
            "aggregate", "attributions_file", "heatmap_file", "status", "settings_hash",
        }  # fmt: skip
        extra = {k: v for k, v in record.items() if k not in own}
        return cls(
            attributions=None, sample=None, baseline=None, target=record["target"],
            label=record.get("label"), output=record.get("output", ""),
            f_input=float(record["f_input"]), f_baseline=float(record["f_baseline"]),
            steps=record.get("steps"), method=record.get("method", ""),
            baseline_name=record.get("baseline", ""),
            gradient_source=record.get("gradient_source", ""), prep=prep,
            fd_step=record.get("fd_step"), fd_groups=record.get("fd_groups"),
            extra=extra, at=record.get("at"), aggregate=record.get("aggregate", "sum"),
            # the record's own sum, whatever the path: the .npy holds float32 attributions,
            # whose sum read back moved a resumed panel's caption (0.00061% -> 0.000611%)
            completeness_sum=float(record["attribution_sum"]),
        )  # fmt: skip

    # -- per position ---------------------------------------------------------------------
    @property
    def positions(self) -> np.ndarray | None:
        """Attributions per input position when made at a tensor (per token: summed over
        the hidden axis with the default `sum`); None when made at the input itself."""
        if self.at is None:
            return None
        image = self.prep is not None and self.prep.is_image_model
        kind = "tensor" if self.sample.kind == "tokens" and not self.per_token else self.sample.kind
        return aggregate(self.attributions, kind, image, self.aggregate)

    @property
    def per_token(self) -> bool:
        """Whether the attributions have a token axis first ([L, hidden], the embedding): a
        tensor after pooling ([hidden]), or of another layout, has none, and its entries
        are not tokens even when they happen to number as many."""
        a, tokens = self.attributions, self.sample.tokens
        return (
            self.sample.kind == "tokens"
            and bool(tokens)
            and a.ndim >= 2
            and a.shape[0] == len(tokens)
        )

    @property
    def tokens(self) -> list[tuple[str, float]] | None:
        """(token, attribution) pairs of a token model's input, padding included; None for
        other models, with aggregate "none", or at a tensor without a token axis."""
        if not self.per_token or self.aggregate == "none":
            return None
        return [(t, float(v)) for t, v in zip(self.sample.tokens, self.positions, strict=True)]

    # With --noise-type smoothgrad_sq or vargrad the map is a mean square or a variance, not
    # an attribution: completeness is then that of the mean attribution, whose sum this is.
    completeness_sum: float | None = None
    regions: object = field(repr=False, default=None)  # regions.Regions with --regions xrai

    # -- completeness -------------------------------------------------------------------
    @property
    def attribution_sum(self) -> float:
        if self.completeness_sum is not None:
            return self.completeness_sum
        return super().attribution_sum

    # -- records --------------------------------------------------------------------------
    def record(self, attributions_file: str | None = None, heatmap_file: str | None = None) -> dict:
        """The plain-value record of reports and JSON Lines (schema in README.md)."""
        return {
            "input": str(self.sample.path),
            "name": self.sample.name,
            "target": self.target,
            "label": self.label,
            "output": self.output,
            "f_input": self.f_input,
            "f_baseline": self.f_baseline,
            "attribution_sum": self.attribution_sum,
            "delta": self.delta,
            "abs_error": self.abs_error,
            "rel_error": self.rel_error,
            "steps": self.steps,
            "method": self.method,
            "baseline": self.baseline_name,
            "gradient_source": self.gradient_source,
            "fd_step": self.fd_step,
            "fd_groups": self.fd_groups,
            "wall_time_s": self.wall_time_s,
            **self._cut_fields(),
            **self.extra,
            **self._top_features(),
            "attributions_file": attributions_file,
            "heatmap_file": heatmap_file,
            "status": "ok",
        }

    def _top_features(self, k: int = 10) -> dict:
        """For a feature vector: the k features with the largest |attribution|, so a pipeline
        reading JSON Lines needs no .npy to see which features mattered."""
        if self.sample.kind != "tabular" or self.attributions.ndim != 1:
            return {}
        names = self.sample.feature_names or [f"x[{i}]" for i in range(self.attributions.size)]
        values = self.sample.raw_values if self.sample.raw_values is not None else self.sample.x
        order = np.argsort(-np.abs(self.attributions), kind="stable")[:k]
        return {
            "top_features": [
                {
                    "name": str(names[i]),
                    "value": float(values[i]),
                    "attribution": float(self.attributions[i]),
                }
                for i in order
            ]
        }

    def _cut_fields(self) -> dict:
        if self.at is None:
            return {}
        fields = {"at": self.at, "aggregate": self.aggregate}
        if self.sample.text is not None:
            fields["text"] = self.sample.text
        pairs = self.tokens
        if pairs is not None:
            fields["tokens"] = [[t, v] for t, v in pairs]
            shown = shown_tokens(self.sample)  # (its attention mask: padding after that)
            if shown < len(pairs):
                fields["tokens_shown"] = shown
        return fields

    # -- pictures -------------------------------------------------------------------------
    def image(self, style=None, vmax: float | None = None):
        """The heatmap panel (images), coloured tokens (token models) or bar chart (feature
        vectors) as a PIL image."""
        return as_image(self.picture(style, vmax))

    def picture(self, style=None, vmax: float | None = None) -> Picture:
        """What image() shows, as the PNG writer takes it (an image's panel as pixels)."""
        _check_picture(style, vmax)
        style = style or HeatmapStyle()
        if magnitude_map(self) and style.sign == "all":  # a mean square, a variance, an L2
            style = dataclasses.replace(style, sign="absolute")
        if self.at is not None:
            return draw_cut(self, style, vmax)
        return draw(
            self.sample,
            self.attributions,
            self.prep,
            style,
            title=title(self),
            caption=caption(self),
            vmax=vmax,
            regions=self.regions,
        )

    def plot(self, style=None):
        """The picture; a notebook shows the returned image."""
        return self.image(style)

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.image().save(buf, format="PNG")
        return buf.getvalue()

    def _repr_html_(self) -> str:
        label = f" ({html.escape(self.label)})" if self.label else ""
        numbers = (
            f"<p>target {self.target}{label}: sum of attributions {self.attribution_sum:.6g}, "
            f"F(x) - F(b) = {self.delta:.6g}, completeness error "
            f"{html.escape(percent(self.rel_error))}</p>"
        )
        if self.tokens is not None:
            return f"<div>{self.tokens_html()}{numbers}</div>"
        png = base64.b64encode(self._repr_png_()).decode()
        img = f'<img src="data:image/png;base64,{png}" style="max-width:100%"/>'
        return f"<div>{img}{numbers}</div>"

    def tokens_html(self, sign: str = "all") -> str:
        """The tokens as an HTML fragment, each on the background colour of its attribution
        (the colours of the PNG), the value in its tooltip."""
        from igcli.render import hex_color, ink_for, token_colors

        pairs = self.tokens or []
        pairs = pairs[: shown_tokens(self.sample)]
        colors, _ = token_colors(np.array([v for _, v in pairs]), sign=sign)
        spans = []
        for (tok, v), rgb in zip(pairs, colors, strict=True):
            bg, fg = hex_color(rgb), hex_color(ink_for(rgb))
            spans.append(
                f'<span title="{v:+.4g}" style="background:{bg};color:{fg};padding:1px 4px;'
                f'margin:1px;border-radius:3px;display:inline-block">{html.escape(tok)}</span>'
            )
        return '<p style="line-height:1.9">' + "".join(spans) + "</p>"

    def __rich__(self):
        """In a terminal (rich.print): the tokens coloured by attribution, or a summary."""
        from igcli.console import token_line

        head = f"target {self.target}" + (f" ({self.label})" if self.label else "")
        tail = f"  completeness error {percent(self.rel_error)}"
        if self.tokens is not None:
            return token_line(self.tokens[: shown_tokens(self.sample)], prefix=head + ": ",
                              suffix=tail)  # fmt: skip
        from rich.text import Text

        return Text(f"{head}: sum {self.attribution_sum:.6g}, F(x) - F(b) {self.delta:.6g},{tail}")

    # -- files ----------------------------------------------------------------------------
    def save(
        self, directory: str | Path, name: str | None = None, *, style=None, heatmap: bool = True
    ) -> dict:
        """Write `<name>.npy` (float32, batch axis of 1), `<name>.png` and `<name>.record.json`
        under `directory`, as a command-line run does; return the record."""
        if not isinstance(directory, str | os.PathLike):
            raise UsageError(f"save() takes a folder's path, not {type(directory).__name__}")
        if "://" in str(directory):
            raise UsageError(
                f"save() writes a local folder, not {str(directory)!r}: for object storage, "
                "save locally and upload, or use igcli explain --out URL"
            )
        if name is not None and not isinstance(name, str):
            raise UsageError(f"save()'s name is a string, not {type(name).__name__}")
        if style is not None and not isinstance(style, HeatmapStyle):
            raise UsageError("save()'s style is an igcli.HeatmapStyle")
        directory = Path(directory)
        name = name or self.sample.name
        marker = output_stem(directory, name + ".record.json")
        npy = output_stem(directory, name + ".npy")
        png = output_stem(directory, name + ".png") if heatmap else None
        self._may_replace(marker, npy, png)
        picture = self.picture(style) if png is not None else None  # (before any file)
        atomic_save_npy(npy, self.attributions.astype(np.float32)[None])
        try:
            if png is not None:
                atomic_save_png(png, picture)
            else:  # (an earlier save's picture stayed beside attributions it did not show,
                drop_stale_heatmap(output_stem(directory, name + ".png"))  # as in a CLI run)
        except BaseException:
            npy.unlink(missing_ok=True)  # a result is saved whole or not at all
            raise
        root = directory.resolve()
        record = self.record(
            npy.relative_to(root).as_posix(), png.relative_to(root).as_posix() if png else None
        )
        record["name"] = name  # the files' name, as in a command-line run
        atomic_write_text(marker, json.dumps({"input": record["input"], "records": [record]}))
        return record

    def _may_replace(self, marker: Path, npy: Path, png: Path | None) -> None:
        """save() replaces only igcli's own files (outputs.in_the_way), and not the saved
        result of another target: two targets of one sample saved under one name replaced
        each other."""
        for path in (marker, npy, png):
            what = in_the_way(path, marker, (1, *self.attributions.shape)) if path else None
            if what is not None:
                raise OutputError(f"save() would replace what is there ({what})", path)
        kept = record_of_igcli(marker)
        if kept and all(r.get("target") != self.target for r in kept):
            raise OutputError(
                f"holds the saved result of target {kept[0].get('target')}; save target "
                f"{self.target} under another name (name='{marker.name[:-12]}.target"
                f"{self.target}')",
                marker,
            )

    def write_to(self, npy: Path, png: Path | None, *, style=None, vmax=None) -> dict[Path, str]:
        """The files of a result, to paths output_stem has checked (png None: no picture);
        each written whole or not at all. Returns each file's digest (outputs.digest)."""
        written = {npy: atomic_save_npy(npy, self.attributions.astype(np.float32)[None])}
        if png is not None:
            written[png] = atomic_save_png(png, self.picture(style, vmax=vmax))
        return written
