"""Everything igcli says to people: one-line messages, progress, tables. Presentation lives here.

Data goes to stdout (JSON Lines, JSON); people get stderr. Every message is one line: file
names with newlines or control characters are escaped, lines are never wrapped (a CI log or
`grep` reads whole lines), and nothing a user typed is ever read as rich markup (a path
`x[/]y.onnx` is a path).
"""

from __future__ import annotations

import contextlib
import heapq
import sys
import time
from collections.abc import Iterable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from igcli.files import printable
from igcli.report import estimated_percent, has_feature_error, method_line, percent


def _is_terminal(stream) -> bool:
    import sys

    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def one_line(text: str) -> str:
    """`text` with newlines, other control characters and undecodable bytes escaped."""
    return printable(text)


class Messages:
    """stderr for people. `quiet` leaves only errors. A warning is said once: worker
    processes build their sessions from the same options and say what this one said."""

    def __init__(self, quiet: bool = False, stream=None) -> None:
        self.quiet = quiet
        self._stream = stream
        self._said: set[str] = set()
        self.console = Console(
            file=stream,  # None: whatever sys.stderr is at print time
            stderr=stream is None,
            width=None if _is_terminal(stream) else 160,  # a log has no width to ask
            highlight=False,
            soft_wrap=True,  # never break a line: logs and grep read whole lines
            emoji=False,
            markup=False,
        )

    @property
    def is_terminal(self) -> bool:
        return self.console.is_terminal

    def error(self, message: str) -> None:
        self._line(Text("error: ", style="bold red") + Text(one_line(message)))

    def internal_error(self, message: str) -> None:
        self._line(Text("internal error: ", style="bold red") + Text(one_line(message)))

    def warn(self, message: str) -> None:
        if self.quiet or (message in self._said and not message.startswith("error: ")):
            return  # (errors name their input: each is said)
        self._said.add(message)
        self._line(Text(one_line(message)))

    def info(self, message: str) -> None:
        if not self.quiet:
            self._line(Text(one_line(message)))

    def _line(self, text: Text) -> None:
        self._out(text, soft_wrap=True)

    def print(self, renderable) -> None:
        """A table or other rich renderable (not for --quiet runs)."""
        if not self.quiet:
            self._out(renderable)

    def _out(self, renderable, **kw) -> None:
        """Print; on stderr a write that fails (2>/dev/full, a closed descriptor) is dropped:
        there is nowhere left to say it, and it must not turn a run's exit code into 1."""
        if self._stream is not None:
            self.console.print(renderable, **kw)
            return
        if sys.stderr is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.console.print(renderable, **kw)

    def print_summary(self, report, rows: int = 20, worst: int = 5) -> None:
        """The end of a run: settings shared by every result once, the results in input
        order (numbers right-aligned), the worst completeness errors, time and throughput."""
        if self.quiet:
            return
        results = report.results
        s = report.settings
        wall = s.get("wall_time_s") or 0.0
        done = len(results) + len(report.failures)
        # (a rate of failures alone said "1e+03 inputs/s" of a run that explained nothing)
        rate = f", {done / wall:.3g} inputs/s" if wall > 0 and results else ""
        prepare = s.get("prepare_time_s") or 0.0  # said when it is more than a blink
        before = f" (after {prepare:.3g} s preparing the model)" if prepare >= 1 else ""
        self.info(
            f"{len(results)} explained, {len(report.failures)} failed, {report.resumed} resumed "
            f"in {wall:.3g} s{rate}{before}"
        )
        if not results:
            return
        shared = {}
        for key, label in (
            ("steps", "steps"),
            ("method", "method"),
            ("baseline", "baseline"),
            ("gradient_source", "gradients"),
            ("output", "output"),
        ):
            values = {str(r.get(key)) for r in results}
            if len(values) == 1:
                shared[key] = f"{label} {values.pop()}"
        how = method_line(results)
        if how:
            shared["path"] = how
        if shared:
            self.info(" \u00b7 ".join(shared.values()))
        columns = ["input", "target", ">F(x)", ">F(baseline)", ">sum attr.", ">rel. error"]
        # adaptive steps estimate each feature's error too: completeness checks only the sum
        per_feature = has_feature_error(results)
        if per_feature:
            columns.append(">feature err.")
        varying = [k for k in ("steps_used", "gradient_source") if k not in shared]
        if "steps" in shared and not any(r.get("converged") is not None for r in results):
            varying.remove("steps_used")
        columns += [">steps" if k == "steps_used" else "source" for k in varying]

        def row(r: dict) -> list:
            target = str(r["target"])
            if r.get("label") and str(r["label"]) != target:
                target += f" ({r['label']})"
            cells = [
                r["name"],
                target,
                f"{r['f_input']:.5g}",
                f"{r['f_baseline']:.5g}",
                f"{r['attribution_sum']:.5g}",
                percent(r["rel_error"]),
            ]
            if per_feature:
                cells.append(estimated_percent(r.get("feature_error")))
            return cells + [str(r.get(k, r.get("steps"))) for k in varying]

        more = f"... and {len(results) - rows} more in report.json" if len(results) > rows else None
        self._results(columns, [row(r) for r in results[:rows]], more, title_justify="left")
        if len(results) > rows:
            order = heapq.nlargest(worst, results, key=lambda r: _error_value(r["rel_error"]))
            self._results(columns, [row(r) for r in order], None, title="worst completeness")
        self.print_tokens(results[:rows])

    def _results(self, columns: list[str], rows: list[list], caption: str | None, **how) -> None:
        """A table of results, or one result a line where a narrow terminal would cut
        every number to '7…'; `how`: the table's title and its place."""
        if self._fits(columns, rows):
            t = table(columns, rows, **how)
            if caption:
                t.caption = caption
            self.print(t)
            return
        if how.get("title"):
            self.info(f"{how['title']}:")
        self._lines(columns, rows)
        if caption:
            self.info(caption)

    def _fits(self, columns: list[str], rows: list[list]) -> bool:
        """Whether a table of these rows shows every number whole on this console: the
        first column (names) may wrap down to 12 characters, the others may not."""
        widths = [max([len(c.lstrip(">"))] + [len(str(r[k])) for r in rows])
                  for k, c in enumerate(columns)]  # fmt: skip
        widths[0] = min(widths[0], 12)
        return sum(widths) + 3 * len(widths) + 1 <= self.console.width

    def _lines(self, columns: list[str], rows: list[list]) -> None:
        """Results as lines: 'name: target 7 · F(x) 7.38 · ...'."""
        names = [c.lstrip(">") for c in columns]
        for r in rows:
            fields = " \u00b7 ".join(f"{n} {v}" for n, v in zip(names[1:], r[1:], strict=True))
            self.info(f"{one_line(str(r[0]))}: {fields}")

    def print_tokens(self, results: list[dict]) -> None:
        """Token models: each result's tokens on the colour of their attribution (red raises
        the score, blue lowers it), padding left out: what the attention mask leaves out
        (`tokens_shown`), else a run of one token repeated at the end with nothing on it. (A
        last real token the pad baseline keeps, RoBERTa's </s>, has nothing on it either:
        one such token stays.)"""
        for r in results:
            pairs = r.get("tokens")
            if not pairs or self.quiet:
                continue
            if "tokens_shown" in r:
                pairs = pairs[: max(1, int(r["tokens_shown"]))]
            else:
                pad = pairs[-1][0]
                run = 0
                while (
                    run < len(pairs) - 1 and pairs[-1 - run][0] == pad and pairs[-1 - run][1] == 0
                ):
                    run += 1
                if run >= 2:
                    pairs = pairs[: len(pairs) - run]
            self.console.print(token_line(pairs, prefix=f"{r['name']}: "), soft_wrap=True)

    def progress(self, total: int, label: str = "explaining") -> ProgressReporter:
        return ProgressReporter(self, total, label)


class ProgressReporter:
    """A progress bar on a terminal; a line every few seconds in a log; nothing when quiet."""

    def __init__(self, messages: Messages, total: int, label: str) -> None:
        self.messages, self.total, self.label = messages, total, label
        self.done = 0
        self.start = time.monotonic()
        self._last_line = self.start
        self._bar: Progress | None = None
        self._task = None

    def __enter__(self) -> ProgressReporter:
        if not self.messages.quiet and self.messages.is_terminal:
            self._bar = Progress(
                TextColumn(self.label),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=self.messages.console,
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, rate="")
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        elapsed = max(time.monotonic() - self.start, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{self.done / elapsed:.2f} inputs/s")
            return
        now = time.monotonic()
        if self.total > 1 and now - self._last_line > 5 and self.done < self.total:
            self.messages.info(f"{self.done}/{self.total} inputs done")
            self._last_line = now

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def cell(value) -> Text:
    """A table cell that is never read as markup."""
    return Text(one_line("" if value is None else str(value)))


def table(columns: Iterable[str], rows: Iterable[Iterable], **kwargs) -> Table:
    """A rich table whose cells are plain text; numbers (right-aligned) marked by a leading '>'."""
    t = Table(**kwargs)
    for name in columns:
        right = name.startswith(">")
        t.add_column(name.lstrip(">"), justify="right" if right else "left")
    for row in rows:
        t.add_row(*(cell(v) for v in row))
    return t


def _error_value(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return float("inf")
    return v if v == v else float("inf")


def token_line(pairs, prefix: str = "", suffix: str = "", sign: str = "all") -> Text:
    """Tokens on the background colour of their attribution (the colours of the PNG), as one
    rich Text: how a terminal shows which words raised or lowered the score."""
    import numpy as np

    from igcli.render import hex_color, ink_for, token_colors

    colors, _ = token_colors(np.array([v for _, v in pairs], dtype=np.float64), sign=sign)
    text = Text(one_line(prefix))
    for k, ((token, _), rgb) in enumerate(zip(pairs, colors, strict=True)):
        if k:
            text.append(" ")
        style = f"{hex_color(ink_for(rgb))} on {hex_color(rgb)}"
        text.append(one_line(str(token)), style=style)
    text.append(one_line(suffix))
    return text
