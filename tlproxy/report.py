"""Spend reports from the ledger: by tier, model, key, day or rule.

Reads the SQLite ledger that `tlproxy.ledger.SQLiteWriter` writes, read-only
and while the proxy is running (WAL lets readers and the writer work at
once). Sums are done by SQLite; TTFT percentiles in Python over the
winners' TTFTs of the window, which is cheap next to reading them.

What the columns mean (docs/accounting.md has the long form):

* ``requests``: distinct requests served (winner rows); ``attempts``: every
  row, losers and shadow calls included;
* tokens and ``spend_usd``: every row, since losers are billed too;
* ``reference_usd``: the winners' usage priced on the premium reference
  model; ``saving_usd`` = reference - spend: what routing saved against
  sending everything to premium, after paying for the race's losers and
  for shadow traffic;
* ``wasted_usd``: spend of attempts that were billed but not used (race
  losers, hedges, cancelled speculation): the price of speed;
* ``shadow_usd``: spend of shadow calls; ``estimated_usd``: spend priced
  from estimated usage rather than reported usage.

The admin endpoint serves `usage_json`; it does blocking file I/O, so call
it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import io
import math
import re
import sqlite3
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from .config import ConfigError, LedgerConfig, load_config

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "GROUPS",
    "TABLE_COLUMNS",
    "connect_readonly",
    "parse_time",
    "percentile",
    "render_table",
    "report_main",
    "summarize",
    "to_csv",
    "to_json",
    "usage_json",
]

# What `by` may be, and the SQL expression each groups on. Days are UTC.
GROUPS = {
    "tier": "tier",
    "model": "model",
    "key": "COALESCE(key, '-')",
    "rule": "rule",
    "day": "date(ts, 'unixepoch')",
    "all": "'all'",
}

_SUMS = """
    COUNT(DISTINCT CASE WHEN winner THEN request_id END),
    COUNT(*),
    TOTAL(prompt_tokens), TOTAL(cached_tokens), TOTAL(completion_tokens),
    TOTAL(cost_usd),
    TOTAL(CASE WHEN winner THEN reference_cost_usd ELSE 0 END),
    TOTAL(CASE WHEN wasted THEN cost_usd ELSE 0 END),
    TOTAL(CASE WHEN kind = 'shadow' THEN cost_usd ELSE 0 END),
    TOTAL(CASE WHEN estimated THEN cost_usd ELSE 0 END),
    TOTAL(CASE WHEN winner AND status != 'ok' THEN 1 ELSE 0 END)
"""

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

TimeArg = float | dt.datetime | str | None


def parse_time(value: TimeArg, *, now: float | None = None) -> float | None:
    """A time bound as unix seconds: a number, a datetime, an ISO 8601 date or
    datetime (naive means UTC), or a span back from now such as ``24h`` or ``7d``."""
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, str):
        match = _RELATIVE.fullmatch(value.strip())
        if match:
            now = time.time() if now is None else now
            return now - float(match.group(1)) * _UNITS[match.group(2)]
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is neither an ISO 8601 time nor a span like 24h") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by nearest rank (as `tlproxy.stats` does); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def connect_readonly(db_path: str | Path) -> sqlite3.Connection:
    """Open a ledger for reading; FileNotFoundError when there is none (never creates one)."""
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"no ledger at {path}")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def time_window(since: TimeArg, until: TimeArg) -> tuple[str, list[float]]:
    """A WHERE clause on ``ts`` and its parameters, half-open: since <= ts < until."""
    now = time.time()
    clauses, params = ["1"], []
    for op, value in ((">=", since), ("<", until)):
        bound = parse_time(value, now=now)
        if bound is not None:
            clauses.append(f"ts {op} ?")
            params.append(bound)
    return " AND ".join(clauses), params


def summarize(
    db_path: str | Path,
    *,
    since: TimeArg = None,
    until: TimeArg = None,
    by: str = "tier",
) -> list[dict[str, Any]]:
    """Spend and savings per group (`GROUPS`); by day in date order, else most spend first."""
    if by not in GROUPS:
        raise ValueError(f"by must be one of {', '.join(GROUPS)}, not {by!r}")
    group = GROUPS[by]
    where, params = time_window(since, until)
    with contextlib.closing(connect_readonly(db_path)) as conn:
        sums = conn.execute(
            f"SELECT {group} AS g, {_SUMS} FROM ledger WHERE {where} GROUP BY g", params
        ).fetchall()
        ttfts: dict[str, list[float]] = {}
        for name, ttft in conn.execute(
            f"SELECT {group}, ttft_ms FROM ledger WHERE {where} AND winner "
            "AND ttft_ms IS NOT NULL", params):
            ttfts.setdefault(name, []).append(ttft)
    rows = [_summary_row(by, values, ttfts.get(values[0], [])) for values in sums]
    if by == "day":
        return sorted(rows, key=lambda r: r["day"])
    return sorted(rows, key=lambda r: (-r["spend_usd"], str(r[by])))


def _summary_row(by: str, values: Sequence[Any], ttfts: list[float]) -> dict[str, Any]:
    (name, requests, attempts, prompt, cached, completion, spend, reference, wasted, shadow,
     estimated, errors) = values
    saving = reference - spend
    return {
        by: name,
        "requests": requests,
        "attempts": attempts,
        "prompt_tokens": int(prompt),
        "cached_tokens": int(cached),
        "completion_tokens": int(completion),
        "spend_usd": round(spend, 6),
        "reference_usd": round(reference, 6),
        "saving_usd": round(saving, 6),
        "saving_pct": round(100 * saving / reference, 1) if reference > 0 else None,
        "wasted_usd": round(wasted, 6),
        "shadow_usd": round(shadow, 6),
        "estimated_usd": round(estimated, 6),
        "errors": int(errors),
        "ttft_p50_ms": _round(percentile(ttfts, 0.50)),
        "ttft_p95_ms": _round(percentile(ttfts, 0.95)),
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def usage_json(db_path: str | Path, **filters: Any) -> dict[str, Any]:
    """The ``GET /v1/tlproxy/usage`` body: the groups and the total for the same window.

    `filters` are `summarize`'s (``since``, ``until``, ``by``). Raises
    FileNotFoundError with no ledger and ValueError on a bad filter.
    """
    by = filters.pop("by", "tier") or "tier"
    now = time.time()
    # Relative bounds ("24h") are fixed once, so groups and total share a window.
    since = parse_time(filters.pop("since", None), now=now)
    until = parse_time(filters.pop("until", None), now=now)
    if filters:
        raise ValueError(f"unknown filter(s): {', '.join(sorted(filters))}")
    groups = summarize(db_path, since=since, until=until, by=by)
    total = summarize(db_path, since=since, until=until, by="all")
    return {
        "object": "tlproxy.usage",
        "by": by,
        "since": since,
        "until": until,
        "groups": groups,
        "total": total[0] if total else None,
    }


# -- rendering -------------------------------------------------------------

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


# The table shows what fits a terminal; CSV and JSON carry every column.
TABLE_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "spend_usd", "saving_usd",
                 "saving_pct", "wasted_usd", "ttft_p50_ms", "ttft_p95_ms")
_LABELS = {"requests": "reqs", "prompt_tokens": "tok in", "completion_tokens": "tok out",
           "spend_usd": "spend", "saving_usd": "saved", "saving_pct": "saved %",
           "wasted_usd": "wasted", "shadow_usd": "shadow", "ttft_p50_ms": "p50 ms",
           "ttft_p95_ms": "p95 ms"}


def render_table(
    rows: Sequence[dict[str, Any]],
    *,
    title: str | None = None,
    total: dict[str, Any] | None = None,
    columns: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    width: int | None = None,
) -> Table:
    """A rich Table of rows (all with the same keys), with an optional total row.

    Numbers are never cut; with a `width` (the console's), the first column,
    the names, is shortened with an ellipsis to fit. rich is imported here,
    not at module import: it is an optional dependency.
    """
    from rich import box
    from rich.table import Table

    columns = list(columns or (rows[0] if rows else total or {}))
    body = [[format_value(c, row.get(c)) for c in columns] for row in rows]
    if total is not None:
        body.append(["total", *(format_value(c, total.get(c)) for c in columns[1:])])
    # The box's blank separators are the only space between columns, and
    # numbers are never cut: on a narrow terminal only the names give way.
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=0)
    names = {**_LABELS, **(labels or {})}
    headers = [names.get(c, c.replace("_", " ")) for c in columns]
    widths = [max(len(header), *(len(cells[i]) for cells in body)) if body else len(header)
              for i, header in enumerate(headers)]
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
    labels: Mapping[str, str] | None = None,
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
                                   labels=labels, width=console.width))
    return 0


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--db/--config/--since/--until/--format, shared with ``tlproxy shadow report``."""
    parser.add_argument("--db", help="the SQLite ledger (default: [ledger] path of --config, "
                        f"else {LedgerConfig().path})")
    parser.add_argument("--config", help="a tlproxy config whose [ledger] path to read")
    parser.add_argument("--since", help="ISO 8601 date or time (UTC if no zone), or a span "
                        "back from now: 90m, 24h, 7d")
    parser.add_argument("--until", help="same forms as --since (default: now)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")


def ledger_path(args: argparse.Namespace) -> str:
    if args.db:
        return str(args.db)
    if args.config:
        return load_config(args.config).ledger.path
    return LedgerConfig().path


def report_main(argv: Sequence[str] | None = None) -> int:
    """``tlproxy report``: spend, savings and the cost of speed from the ledger."""
    parser = argparse.ArgumentParser(prog="tlproxy report", description=report_main.__doc__)
    add_common_arguments(parser)
    parser.add_argument("--by", choices=[g for g in GROUPS if g != "all"], default="tier")
    args = parser.parse_args(argv)
    try:
        document = usage_json(ledger_path(args), since=args.since, until=args.until, by=args.by)
    except (OSError, ValueError, ConfigError, sqlite3.Error) as exc:
        print(f"tlproxy: {exc}", file=sys.stderr)
        return 1
    return print_report(document["groups"], args.format, title=f"Spend by {args.by}",
                        total=document["total"], document=document,
                        columns=(args.by, *TABLE_COLUMNS))
