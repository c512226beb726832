"""Spend reports from the ledger: by tier, model, key, day or rule.

Reads either ledger `tlproxy.ledger` writes, read-only and while the proxy
is running: a SQLite file (WAL lets readers and the writer work at once) or
a PostgreSQL database, named by a *ledger source*, a path or a
``postgresql://`` URL (`connect_ledger`). Both run the same SQL; the
placeholder and the UTC day are the only differences (`Dialect`). Sums are
done by the database; TTFT percentiles in Python over the winners' TTFTs of
the window, which is cheap next to reading them.

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
* ``shadow_usd``: spend of shadow calls; ``classifier_usd``: spend of the
  task classifier's embedding calls; ``estimated_usd``: spend priced from
  estimated usage rather than reported usage;
* ``client_ttft_*``: from a streamed request's arrival at the proxy to the
  first byte of its answer sent, what clients saw; ``upstream_ttft_*``: the
  winning attempt's own time to first token, from its start. The difference
  is the routing decision and the race. JSON answers have no first token and
  are in neither.
* ``ttft_kinds``: what the first tokens behind the TTFT columns carried
  (``content``, ``reasoning``, ...; several joined by ``+``, most frequent
  first), since a reasoning model's first thought comes long before its
  first word; ``ttft_by_kind`` has the upstream percentiles of each kind
  (JSON only), and ``by="first_token"`` groups by the kind.

The admin endpoint serves `usage_json`; it does blocking I/O, so call it
through ``trio.to_thread.run_sync``. A PostgreSQL URL may hold a password:
no message raised here contains it (`LedgerReadError`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import io
import math
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

import msgspec

from .config import ConfigError, LedgerConfig
from .config_load import load_config

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
    "group_sums",
    "is_postgres_url",
    "ledger_source",
    "money",
    "parse_time",
    "percentile",
    "reading_ledger",
    "redact",
    "render_table",
    "report_main",
    "summarize",
    "time_window",
    "to_csv",
    "to_json",
    "usage_json",
]

# What `by` may be, and the SQL expression each groups on. Days are UTC; the
# day's expression is SQLite's, `Dialect.day` is each database's (`_group_sql`).
GROUPS = {
    "tier": "tier",
    "model": "model",
    "key": "COALESCE(key, '-')",
    "rule": "rule",
    "day": "date(ts, 'unixepoch')",
    "first_token": "COALESCE(first_token_kind, '-')",
    "all": "'all'",
}

# SQL both databases run. A group has at least one row and these columns are
# NOT NULL, so no SUM is NULL (COALESCE is a guard); the ELSE 0.0 keeps a sum
# of dollars a float in SQLite even when no row of the group matches (SUM of
# integer 0s is an integer there), as TOTAL did. Token sums are ints in both.
_SUMS = """
    COUNT(DISTINCT CASE WHEN winner THEN request_id END),
    COUNT(*),
    COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(cached_tokens), 0),
    COALESCE(SUM(completion_tokens), 0),
    COALESCE(SUM(cost_usd), 0.0),
    COALESCE(SUM(CASE WHEN winner THEN reference_cost_usd ELSE 0.0 END), 0.0),
    COALESCE(SUM(CASE WHEN wasted THEN cost_usd ELSE 0.0 END), 0.0),
    COALESCE(SUM(CASE WHEN kind = 'shadow' THEN cost_usd ELSE 0.0 END), 0.0),
    COALESCE(SUM(CASE WHEN kind = 'classifier' THEN cost_usd ELSE 0.0 END), 0.0),
    COALESCE(SUM(CASE WHEN estimated THEN cost_usd ELSE 0.0 END), 0.0),
    COALESCE(SUM(CASE WHEN winner AND status != 'ok' THEN 1 ELSE 0 END), 0)
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


# -- reading either ledger ---------------------------------------------------

LedgerSource = str | os.PathLike[str]


class LedgerReadError(Exception):
    """The ledger's database cannot be reached or read. The message never holds a password."""


class Dialect(NamedTuple):
    """What the reports' SQL needs to know about the database it runs on."""

    name: str
    param: str  # the DB-API placeholder
    day: str  # the UTC date of ``ts`` as YYYY-MM-DD


SQLITE = Dialect("sqlite", "?", "date(ts, 'unixepoch')")
POSTGRES = Dialect("postgresql", "%s",
                   "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')")

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<netloc>[^/?#]*)")
_PASSWORD_PARAM = re.compile(r"[?&]([^=&#]*password[^=&#]*)=([^&#]*)", re.IGNORECASE)
_CONNECT_TIMEOUT = 10


def is_postgres_url(source: LedgerSource) -> bool:
    return isinstance(source, str) and source.lower().startswith(_POSTGRES_SCHEMES)


def dialect_of(source: LedgerSource) -> Dialect:
    """The dialect of a ledger source, without connecting; ValueError for another URL scheme."""
    if is_postgres_url(source):
        return POSTGRES
    if isinstance(source, str) and (url := _URL.match(source)):
        # Not a path: a typo'd or unsupported URL, which may hold a password.
        raise ValueError(f"a ledger is a SQLite path or a postgresql:// URL, not a "
                         f"{url.group('scheme')}:// URL")
    return SQLITE


def _secrets(url: str) -> list[str]:
    """The passwords in a URL (user info and query), as written and percent-decoded."""
    found: list[str] = []
    if match := _URL.match(url):
        userinfo = match.group("netloc").rpartition("@")[0]
        found.append(userinfo.partition(":")[2])
    found += [value for _, value in _PASSWORD_PARAM.findall(url)]
    found += [unquote(value) for value in found]
    return sorted({value for value in found if value}, key=len, reverse=True)


def redact(text: str, url: str) -> str:
    """`text` with every password of `url` replaced by ``***``."""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def connect_readonly(db_path: LedgerSource) -> sqlite3.Connection:
    """Open a SQLite ledger read-only; FileNotFoundError when there is none (never makes one)."""
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"no ledger at {path}")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _connect_postgres(url: str) -> Any:
    try:
        import psycopg
    except ImportError:
        raise LedgerReadError("a PostgreSQL ledger needs psycopg: "
                              "pip install 'psycopg[binary]'") from None
    try:
        # The writer's settings (tlproxy.ledger.PostgresWriter): a server cut off
        # by the network fails the report in about 30 s rather than hanging
        # it, and no server-side prepared statements, for PgBouncer's
        # transaction pooling.
        conn = psycopg.connect(
            url, connect_timeout=_CONNECT_TIMEOUT,
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
            tcp_user_timeout=30_000, prepare_threshold=None)
    except psycopg.Error as exc:
        # psycopg names the host and the user, not the password; mask it anyway,
        # and drop the chained exception, which a traceback would print.
        raise LedgerReadError(
            redact(f"cannot connect to the PostgreSQL ledger: {exc}".rstrip(), url)) from None
    # Every transaction psycopg begins is BEGIN READ ONLY ISOLATION LEVEL
    # REPEATABLE READ: the server refuses writes, and one report's queries
    # see one snapshot.
    conn.read_only = True
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    return conn


def connect_ledger(source: LedgerSource) -> tuple[Any, Dialect]:
    """A read-only DB-API connection to a ledger source, and the dialect to write its SQL in.

    `source` is a SQLite path or a ``postgresql://`` (``postgres://``) URL. A
    missing SQLite file raises FileNotFoundError (none is ever created); a
    PostgreSQL server that cannot be reached, LedgerReadError. The queries
    run on one connection read one snapshot of the ledger.
    """
    dialect = dialect_of(source)
    if dialect is POSTGRES:
        return _connect_postgres(str(source)), dialect
    conn = connect_readonly(source)
    try:
        conn.execute("BEGIN")  # the snapshot starts at the first read
    except sqlite3.Error as exc:
        conn.close()
        raise LedgerReadError(f"cannot read the ledger {source}: {exc}") from exc
    return conn, dialect


@contextlib.contextmanager
def reading_ledger(source: LedgerSource) -> Iterator[tuple[Any, Dialect]]:
    """`connect_ledger` for a ``with`` block: closed at its end, and the database's
    errors (a missing table, a dropped connection) raised as LedgerReadError."""
    conn, dialect = connect_ledger(source)
    try:
        yield conn, dialect
    except Exception as exc:
        if isinstance(exc, sqlite3.Error):
            raise LedgerReadError(f"cannot read the ledger {source}: {exc}") from exc
        psycopg = sys.modules.get("psycopg")
        if psycopg is not None and isinstance(exc, psycopg.Error):
            # The server's message without the SQL excerpt ("LINE 12: ...") under it.
            message = exc.diag.message_primary or str(exc).strip()
            raise LedgerReadError(
                redact(f"cannot read the PostgreSQL ledger: {message}", str(source))) from None
        raise
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()  # end the read transaction cleanly (a pooler sees it end)
        conn.close()


def time_window(since: TimeArg, until: TimeArg, param: str = "?") -> tuple[str, list[float]]:
    """A WHERE clause on ``ts`` and its parameters, half-open: since <= ts < until.

    `param` is the placeholder (`Dialect.param`)."""
    now = time.time()
    clauses, params = ["1 = 1"], []
    for op, value in ((">=", since), ("<", until)):
        bound = parse_time(value, now=now)
        if bound is not None:
            clauses.append(f"ts {op} {param}")
            params.append(bound)
    return " AND ".join(clauses), params


def _group_sql(by: str, dialect: Dialect) -> str:
    if by not in GROUPS:
        raise ValueError(f"by must be one of {', '.join(GROUPS)}, not {by!r}")
    return dialect.day if by == "day" else GROUPS[by]


def summarize(
    db_path: LedgerSource,
    *,
    since: TimeArg = None,
    until: TimeArg = None,
    by: str = "tier",
) -> list[dict[str, Any]]:
    """Spend and savings per group (`GROUPS`); by day in date order, else most spend first.

    `db_path` is a ledger source: a SQLite path or a PostgreSQL URL (`connect_ledger`).
    """
    dialect = dialect_of(db_path)
    group = _group_sql(by, dialect)
    where, params = time_window(since, until, dialect.param)
    with reading_ledger(db_path) as (conn, _):
        return _summarize(conn, by, group, where, params)


def column_or_null(cursor: Any, name: str) -> str:
    """`name`, or ``NULL`` in a ledger written before that column was kept.

    A report only reads: it cannot migrate an older ledger, so it asks which
    columns there are (one empty SELECT, the same SQL on both databases).
    """
    cursor.execute("SELECT * FROM ledger WHERE 1 = 0")
    names = {column[0] for column in cursor.description}
    cursor.fetchall()
    return name if name in names else "NULL"


def _summarize(conn: Any, by: str, group: str, where: str,
               params: list[float]) -> list[dict[str, Any]]:
    cursor = conn.cursor()
    kind = column_or_null(cursor, "first_token_kind")
    group = group.replace("first_token_kind", kind)
    sums = [(*names, *values) for names, values in _sums(cursor, [group], where, params)]
    # Per group: the winners' own TTFTs with their first token's kind, and what
    # their clients saw (a ledger written before a column was kept lacks it).
    client_column = column_or_null(cursor, "client_ttft_ms")
    upstream: dict[str, list[tuple[float, str]]] = {}
    client: dict[str, list[float]] = {}
    cursor.execute(f"SELECT {group}, ttft_ms, COALESCE({kind}, '-'), {client_column} "
                   f"FROM ledger WHERE {where} AND winner "
                   f"AND (ttft_ms IS NOT NULL OR {client_column} IS NOT NULL)", params)
    for name, ttft, first_token, client_ttft in cursor.fetchall():
        if ttft is not None:
            upstream.setdefault(name, []).append((ttft, first_token))
        if client_ttft is not None:
            client.setdefault(name, []).append(client_ttft)
    rows = [_summary_row(by, values, upstream.get(values[0], []), client.get(values[0], []))
            for values in sums]
    if by == "day":
        return sorted(rows, key=lambda r: r["day"])
    return sorted(rows, key=lambda r: (-r["spend_usd"], str(r[by])))


def _sums(cursor: Any, groups: Sequence[str], where: str,
          params: Sequence[Any]) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """`_SUMS` per distinct value of the `groups` (SQL expressions): (names, sums) pairs."""
    names = ", ".join(groups)
    positions = ", ".join(str(i + 1) for i in range(len(groups)))
    cursor.execute(f"SELECT {names}, {_SUMS} FROM ledger WHERE {where} GROUP BY {positions}",
                   params)
    return [(tuple(row[:len(groups)]), tuple(row[len(groups):])) for row in cursor.fetchall()]


def group_sums(conn: Any, groups: Sequence[str], where: str,
               params: Sequence[Any]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The spend columns of `tlproxy report` (`money`) per distinct value of `groups`.

    `groups` are SQL expressions (`GROUPS`' values, a time bucket); `where`
    and `params` come from `time_window`. Everything is summed by the
    database; no TTFT columns, which need the rows. Unordered.
    """
    return [(names, money(values)) for names, values in _sums(conn.cursor(), groups, where,
                                                               params)]


def money(values: Sequence[Any]) -> dict[str, Any]:
    """The report's counts and dollars from one row of `_SUMS`, rounded as it prints them."""
    (requests, attempts, prompt, cached, completion, spend, reference, wasted, shadow,
     classifier, estimated, errors) = values
    saving = reference - spend
    return {
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
        "classifier_usd": round(classifier, 6),
        "estimated_usd": round(estimated, 6),
        "errors": int(errors),
    }


def _summary_row(by: str, values: Sequence[Any], ttfts: list[tuple[float, str]],
                 client: list[float]) -> dict[str, Any]:
    by_kind: dict[str, list[float]] = {}
    for ttft, kind in ttfts:
        by_kind.setdefault(kind, []).append(ttft)
    # Most frequent first; ties by name, so the order is stable.
    kinds = sorted(by_kind, key=lambda k: (-len(by_kind[k]), k))
    times = [ttft for ttft, _ in ttfts]
    return {
        by: values[0],
        **money(values[1:]),
        "client_ttft_p50_ms": _round(percentile(client, 0.50)),
        "client_ttft_p95_ms": _round(percentile(client, 0.95)),
        "upstream_ttft_p50_ms": _round(percentile(times, 0.50)),
        "upstream_ttft_p95_ms": _round(percentile(times, 0.95)),
        "ttft_kinds": "+".join(kinds) or None,
        "ttft_by_kind": {
            kind: {"requests": len(by_kind[kind]),
                   "upstream_ttft_p50_ms": _round(percentile(by_kind[kind], 0.50)),
                   "upstream_ttft_p95_ms": _round(percentile(by_kind[kind], 0.95))}
            for kind in kinds},
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def usage_json(db_path: LedgerSource, **filters: Any) -> dict[str, Any]:
    """The ``GET /v1/tlproxy/usage`` body: the groups and the total for the same window.

    `db_path` is a ledger source: a SQLite path or a PostgreSQL URL. `filters`
    are `summarize`'s (``since``, ``until``, ``by``). Raises ValueError on a
    bad filter, FileNotFoundError with no SQLite ledger, LedgerReadError when
    the database cannot be reached or read.
    """
    by = filters.pop("by", "tier") or "tier"
    now = time.time()
    # Relative bounds ("24h") are fixed once, so groups and total share a window.
    since = parse_time(filters.pop("since", None), now=now)
    until = parse_time(filters.pop("until", None), now=now)
    if filters:
        raise ValueError(f"unknown filter(s): {', '.join(sorted(filters))}")
    dialect = dialect_of(db_path)
    group = _group_sql(by, dialect)
    where, params = time_window(since, until, dialect.param)
    # One connection, one snapshot: the groups add up to the total.
    with reading_ledger(db_path) as (conn, _):
        groups = _summarize(conn, by, group, where, params)
        total = _summarize(conn, "all", GROUPS["all"], where, params)
    return {
        "object": "tlproxy.usage",
        "by": by,
        "since": since,
        "until": until,
        "groups": groups,
        "total": total[0] if total else None,
    }


def recovery(db_path: LedgerSource, *, since: TimeArg = None,
             until: TimeArg = None) -> list[dict[str, Any]]:
    """What finishing broken streams cost: continuations by the reason the first
    attempt failed (cut, stall, malformed, error-event), how many ended whole,
    and their spend. Empty for a ledger without continuations (or the column)."""
    dialect = dialect_of(db_path)
    now = time.time()
    where, params = time_window(parse_time(since, now=now), parse_time(until, now=now),
                                dialect.param)
    with reading_ledger(db_path) as (conn, _):
        cursor = conn.cursor()
        column = column_or_null(cursor, "continuation")
        if column == "NULL":
            return []
        cursor.execute(
            f"SELECT continuation, COUNT(*), SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END), "
            f"SUM(completion_tokens), SUM(cost_usd) FROM ledger "
            f"WHERE {where} AND continuation IS NOT NULL GROUP BY continuation "
            f"ORDER BY continuation", params)
        return [{"reason": reason, "continuations": count, "recovered": int(whole or 0),
                 "completion_tokens": int(tokens or 0), "spend_usd": round(spend or 0.0, 6)}
                for reason, count, whole, tokens, spend in cursor.fetchall()]


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
