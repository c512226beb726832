"""Spend reports from the ledger: by tier, model, key, day or rule; rendered.

`tlproxy report` and `tlproxy shadow report` print what the database summed
(`tlproxy.report_sums`, from a ledger read with `tlproxy.ledger_read`) as a
table, CSV or JSON. The names of those two modules that the commands, the
dashboard and the tests use are re-exported here.
"""

from __future__ import annotations

import argparse
import csv
import io
import sqlite3
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .config import ConfigError, LedgerConfig
from .config_load import load_config
from .ledger_read import (
    POSTGRES,
    SQLITE,
    Dialect,
    LedgerReadError,
    LedgerSource,
    column_or_null,
    connect_ledger,
    connect_readonly,
    dialect_of,
    is_postgres_url,
    parse_time,
    reading_ledger,
    redact,
    time_window,
)
from .report_sums import GROUPS, money, percentile, recovery, summarize, usage_json

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "GROUPS",
    "POSTGRES",
    "SQLITE",
    "TABLE_COLUMNS",
    "Dialect",
    "LedgerReadError",
    "LedgerSource",
    "column_or_null",
    "connect_ledger",
    "connect_readonly",
    "dialect_of",
    "is_postgres_url",
    "ledger_source",
    "money",
    "parse_time",
    "percentile",
    "reading_ledger",
    "recovery",
    "redact",
    "render_table",
    "report_main",
    "summarize",
    "time_window",
    "to_csv",
    "to_json",
    "usage_json",
]


def format_value(column: str, value: Any) -> str:
    """A cell as people read it, compact: dollars, percentages, milliseconds, counts."""
    if value is None:
        return "-"
    if isinstance(value, bool | str):
        return str(value)
    if column.endswith("_usd"):
        # Cents matter on a $3 day and not on a $3,000 one.
        digits = 0 if abs(value) >= 1000 else 2 if abs(value) >= 1 else 4
        return f"{'-' if value < 0 else ''}${abs(value):,.{digits}f}"
    if column.endswith(("_pct", "_rate")):
        return f"{value:.1f}%"
    if column.endswith("_ms"):
        return f"{value:,.0f}"
    if column.endswith("_tokens") and value >= 10_000:
        return f"{value / 1e6:.1f}M" if value >= 1_000_000 else f"{value / 1e3:.0f}k"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}"


_TTFT_CAPTION = ("TTFT in ms of streamed answers: client = from the request's arrival to the "
                 "first byte sent; upstr = the winning attempt's own")

# The table shows what fits an 80-column terminal; CSV and JSON carry every
# column (tokens included).
TABLE_COLUMNS = ("requests", "spend_usd", "saving_usd", "saving_pct", "wasted_usd",
                 "classifier_usd", "client_ttft_p50_ms", "client_ttft_p95_ms",
                 "upstream_ttft_p50_ms", "upstream_ttft_p95_ms")
_LABELS = {"requests": "reqs", "prompt_tokens": "tok in", "completion_tokens": "tok out",
           "spend_usd": "spend", "saving_usd": "saved", "saving_pct": "saved %",
           "wasted_usd": "wasted", "shadow_usd": "shadow", "classifier_usd": "classif",
           # Milliseconds: what clients saw, and the winning attempt's own.
           "client_ttft_p50_ms": "client\np50", "client_ttft_p95_ms": "client\np95",
           "upstream_ttft_p50_ms": "upstr\np50", "upstream_ttft_p95_ms": "upstr\np95",
           "ttft_kinds": "1st\ntoken"}


def render_table(
    rows: Sequence[dict[str, Any]],
    *,
    title: str | None = None,
    total: dict[str, Any] | None = None,
    columns: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    width: int | None = None,
    caption: str | None = None,
) -> Table:
    """A rich Table of rows (all with the same keys), with an optional total row.

    Numbers are never cut; with a `width` (the console's), the first column,
    the names, is shortened with an ellipsis to fit. rich is imported here,
    not at module import: it is an optional dependency.
    """
    from rich import box
    from rich.table import Table

    # By default every column but the nested ones (which CSV leaves out too).
    columns = list(columns or [c for c, v in (rows[0] if rows else total or {}).items()
                               if not isinstance(v, list | dict)])
    body = [[format_value(c, row.get(c)) for c in columns] for row in rows]
    if total is not None:
        body.append(["total", *(format_value(c, total.get(c)) for c in columns[1:])])
    # The box's blank separators are the only space between columns, and
    # numbers are never cut: on a narrow terminal only the names give way.
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False,
                  padding=0)
    names = {**_LABELS, **(labels or {})}
    headers = [names.get(c, c.replace("_", " ")) for c in columns]
    # A header may take two lines ("client\np50"): its widest line counts.
    header_widths = [max(map(len, header.split("\n"))) for header in headers]
    widths = [max(header_widths[i], *(len(cells[i]) for cells in body)) if body
              else header_widths[i] for i in range(len(headers))]
    name_width = None
    if width is not None:
        name_width = max(8, width - sum(widths[1:]) - len(columns))
    for index, header in enumerate(headers):
        if index == 0:
            table.add_column(header, overflow="ellipsis", no_wrap=True, max_width=name_width)
        else:
            table.add_column(header, justify="right", no_wrap=True, min_width=widths[index])
    for number, cells in enumerate(body):
        is_total = total is not None and number == len(body) - 1
        table.add_row(*cells, style="bold" if is_total else None,
                      end_section=total is not None and number == len(body) - 2)
    return table


def to_csv(rows: Iterable[dict[str, Any]]) -> str:
    """CSV with a header row; nested values (lists, dicts) are left out."""
    rows = list(rows)
    out = io.StringIO()
    if rows:
        columns = [c for c, v in rows[0].items() if not isinstance(v, list | dict)]
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def to_json(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def print_report(
    rows: list[dict[str, Any]], fmt: str, *, title: str, total: dict[str, Any] | None = None,
    document: Any = None, columns: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None, caption: str | None = None,
) -> int:
    """Write rows to stdout as a table, CSV or JSON (`document` instead of rows when given)."""
    if fmt == "json":
        print(to_json(rows if document is None else document))
    elif fmt == "csv":
        sys.stdout.write(to_csv(rows))
    else:
        try:
            from rich.console import Console
        except ImportError:
            print("tlproxy: the table format needs rich (pip install rich); "
                  "use --format csv or json", file=sys.stderr)
            return 1
        console = Console()
        console.print(render_table(rows, title=title, total=total, columns=columns,
                                   labels=labels, width=console.width, caption=caption))
    return 0


def _kinds_column(document: dict[str, Any]) -> tuple[str, ...]:
    """The table's `ttft_kinds` column, when any first token was not plain content.

    Then the TTFT columns may mix a reasoning model's first thought with
    another's first word, and the table says so; otherwise it stays narrow.
    """
    rows = [*document["groups"], *([document["total"]] if document["total"] else [])]
    plain = all(row["ttft_kinds"] in (None, "content") for row in rows)
    return () if plain else ("ttft_kinds",)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--db/--config/--since/--until/--format, shared with ``tlproxy shadow report``."""
    parser.add_argument("--db", help="the ledger: a SQLite file or a postgresql:// URL "
                        "(default: the [ledger] of --config, else "
                        f"{LedgerConfig().path})")
    parser.add_argument("--config", help="a tlproxy config whose [ledger] to read: its "
                        "postgres_url when set, else its path")
    parser.add_argument("--since", help="ISO 8601 date or time (UTC if no zone), or a span "
                        "back from now: 90m, 24h, 7d")
    parser.add_argument("--until", help="same forms as --since (default: now)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")


def ledger_source(args: argparse.Namespace) -> str:
    """The ledger source the command line names: --db (a path or a URL), else the
    [ledger] of --config (``postgres_url`` when set, else ``path``), else the default."""
    if args.db:
        return str(args.db)
    if args.config:
        ledger = load_config(args.config).ledger
        return ledger.postgres_url or ledger.path
    return LedgerConfig().path


ledger_path = ledger_source  # its name when the ledger was always a SQLite file

# What the commands report as "tlproxy: <message>" rather than a traceback.
COMMAND_ERRORS = (OSError, ValueError, ConfigError, sqlite3.Error, LedgerReadError)


def report_main(argv: Sequence[str] | None = None) -> int:
    """``tlproxy report``: spend, savings and the cost of speed from the ledger."""
    parser = argparse.ArgumentParser(prog="tlproxy report", description=report_main.__doc__)
    add_common_arguments(parser)
    parser.add_argument("--by", choices=[g for g in GROUPS if g != "all"], default="tier")
    args = parser.parse_args(argv)
    try:
        document = usage_json(ledger_source(args), since=args.since, until=args.until,
                              by=args.by)
        recovered = recovery(ledger_source(args), since=args.since, until=args.until)
    except COMMAND_ERRORS as exc:
        print(f"tlproxy: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        document = {**document, "recovery": recovered}
    status = print_report(document["groups"], args.format, title=f"Spend by {args.by}",
                          total=document["total"], document=document,
                          columns=(args.by, *TABLE_COLUMNS, *_kinds_column(document)),
                          caption=_TTFT_CAPTION)
    if status or not recovered or args.format != "table":
        return status
    # Streams whose winner failed after its first token, finished by another model.
    return print_report(recovered, "table", title="Recovery (continued streams)")
