"""What a person watches: the live progress bar and the percentile tables (rich).

Progress goes to stderr and tables to stdout, so ``python -m bench.ttft ... > table.txt`` keeps
the tables only.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console, Group
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .recorder import Sample
from .runner import LevelResult
from .stats import EndpointSummary, summarize

__all__ = [
    "RichProgress",
    "errors_caption",
    "format_ms",
    "format_rate",
    "level_table",
    "level_title",
    "render",
    "summaries",
    "table_rows",
    "warnings_for",
]

# Above these the client itself may have shaped the numbers; said out loud under the table.
_CPU_WARNING = 0.7
_LAG_FLOOR = 0.002
_LAG_SHARE = 0.1


def format_ms(seconds: float | None) -> str:
    """Seconds as milliseconds with the precision a reader can use: ``0.4``, ``12.3``, ``480``."""
    if seconds is None:
        return "-"
    ms = seconds * 1000
    if ms >= 100:
        return f"{ms:.0f}"
    return f"{ms:.1f}"


def format_rate(value: float | None) -> str:
    """Tokens per second, no decimals past 10."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def summaries(level: LevelResult) -> dict[str, EndpointSummary]:
    """Each endpoint's summary at this level, in endpoint order."""
    return {name: summarize(samples, level.wall) for name, samples in level.samples.items()}


def level_title(level: LevelResult) -> str:
    """``c=8 · 10.2 s · client CPU 14% of a core · loop lag p99 0.3 ms``."""
    lag = level.loop_lag.p99
    return f"{level.label} · {level.wall:.1f} s · client CPU {level.cpu_share:.0%} of a core" + (
        f" · loop lag p99 {format_ms(lag)} ms" if lag is not None else ""
    )


def table_rows(
    level: LevelResult, *, from_schedule: bool | None = None
) -> tuple[list[str], list[list[str]], list[bool]]:
    """Headers, rows and which rows had errors, of a level's table; times in milliseconds.

    ``from_schedule`` adds TTFT* (counted from the scheduled send time); by default it is shown
    for open-loop levels, where it differs from TTFT. A header ``p90`` belongs to the metric
    named last before it.
    """
    if from_schedule is None:
        from_schedule = level.kind == "open"
    # Open loop trades TTFT p90 for TTFT* so that the table still fits 80 columns.
    headers = ["endpoint", "n", "TTFT p50"]
    headers += ["p99", "TTFT* p50", "p99"] if from_schedule else ["p90", "p99"]
    headers += ["TTFB p50", "ITL p50", "p99", "E2E p50", "p99", "tok/s p50", "err", "done"]
    rows: list[list[str]] = []
    failed: list[bool] = []
    for name, s in summaries(level).items():
        row = [name, str(s.requests)]
        if from_schedule:
            sched = s.ttft_from_schedule
            row += _ms(s.ttft.p50, s.ttft.p99, sched.p50, sched.p99)
        else:
            row += _ms(s.ttft.p50, s.ttft.p90, s.ttft.p99)
        row += [
            *_ms(s.ttfb.p50, s.itl.p50, s.itl.p99, s.e2e.p50, s.e2e.p99),
            format_rate(s.decode_rate.p50),
            str(s.error_count),
            f"{s.done_ratio:.0%}",
        ]
        rows.append(row)
        failed.append(s.error_count > 0)
    return headers, rows, failed


def level_table(level: LevelResult) -> Table:
    """The percentile table of one level as a rich `Table`, a row per endpoint."""
    headers, rows, failed = table_rows(level)
    table = Table(
        title=level_title(level),
        box=box.SIMPLE_HEAD,
        title_justify="left",
        collapse_padding=True,
        pad_edge=False,
    )
    for i, header in enumerate(headers):
        # Two header lines keep the columns as narrow as their numbers: "TTFT" over "p50".
        metric, _, stat = header.rpartition(" ")
        table.add_column(
            f"{metric}\n{stat}" if i else header,
            justify="left" if i == 0 else "right",
            overflow="fold",  # a narrow terminal wraps digits rather than hiding them
        )
    for row, bad in zip(rows, failed, strict=True):
        table.add_row(*row, style="red" if bad else None)
    table.caption = errors_caption(level)
    table.caption_justify = "left"
    return table


def render(levels: Sequence[LevelResult]) -> Group:
    """All level tables, then the warnings about the client, if any."""
    parts: list[Table | Text] = [level_table(level) for level in levels]
    parts += [Text(w, style="yellow") for w in warnings_for(levels)]
    return Group(*parts)


def warnings_for(levels: Sequence[LevelResult]) -> list[str]:
    """Sentences about levels where the client may have been the bottleneck."""
    out = []
    for level in levels:
        if level.cpu_share > _CPU_WARNING:
            out.append(
                f"warning: at {level.label} the client used {level.cpu_share:.0%} of a core; "
                "it may have limited the results (fewer endpoints or a lower load would tell)."
            )
        lag = level.loop_lag.p99
        medians = [m for st in summaries(level).values() if (m := st.ttft.p50) is not None]
        # Lateness matters relative to what is measured: 10 ms is noise on a 2 s TTFT and
        # larger than the whole answer of a local server.
        limit = max(_LAG_FLOOR, _LAG_SHARE * min(medians, default=0.0))
        if lag is not None and lag > limit:
            out.append(
                f"warning: at {level.label} the client's event loop ran up to "
                f"{format_ms(lag)} ms late (p99): timestamps may be late by as much."
            )
    return out


def _ms(*values: float | None) -> list[str]:
    return [format_ms(v) for v in values]


def errors_caption(level: LevelResult) -> str | None:
    """``errors: b: 2 http_429, 1 timeout`` or None when there were none."""
    parts = []
    for name, s in summaries(level).items():
        if s.errors:
            kinds = ", ".join(f"{count} {kind}" for kind, count in s.errors.items())
            parts.append(f"{name}: {kinds}")
    return "errors: " + "; ".join(parts) if parts else None


class RichProgress:
    """A bar per measured level: by requests when ``--requests`` bounds it, else by time."""

    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            TextColumn("{task.fields[done]} requests, {task.fields[errors]} errors"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )
        self._task: TaskID | None = None
        self._by_time = False
        self._total: float | None = None
        self._done = 0
        self._errors = 0

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def level_started(self, label: str, *, requests: int | None, duration: float | None) -> None:
        self._by_time = requests is None
        self._total = duration if requests is None else requests
        self._done = self._errors = 0
        self._task = self._progress.add_task(label, total=self._total, done=0, errors=0)

    def request_done(self, sample: Sample) -> None:
        if self._task is None:
            return
        self._done += 1
        self._errors += not sample.ok
        self._progress.update(
            self._task,
            advance=0 if self._by_time else 1,
            done=self._done,
            errors=self._errors,
        )

    def tick(self, elapsed: float) -> None:
        if self._task is not None and self._by_time:
            self._progress.update(self._task, completed=elapsed)

    def level_finished(self) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=self._total)
        self._task = None
