"""The report's sums: spend, savings and the cost of speed over a window, by the database.

`tlproxy report` prints them (`tlproxy.report` renders), the dashboard's
endpoints serve them (`tlproxy.dashboard`): one source of truth. Whole days
and hours of a window are read from the ledger's roll-up
(`tlproxy.ledger_rollup`, kept by the writer in the transaction of each
batch), the partial hours at its edges from the raw rows, and the parts are
added (`window_sums`): the same numbers as summing the raw rows, for any
window, at the cost of a few thousand roll-up rows a year. A ledger of an
older schema (no roll-up yet: a report only reads, it cannot migrate) is
summed from the raw rows alone. The report's TTFT percentiles are exact, in
Python over the winners' TTFTs of the window; `window_hists` gives the
roll-up's TTFT histograms for long windows (`tlproxy.dashboard.race`).
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
through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Literal

from . import ledger_rollup
from .ledger_read import (
    Dialect,
    LedgerSource,
    TimeArg,
    column_or_null,
    dialect_of,
    parse_time,
    reading_ledger,
    table_exists,
    time_window,
)
from .ledger_rollup import RACE_KINDS, Hist, decode_hist, merge_into, ttft_bin

__all__ = [
    "DIMENSIONS",
    "GROUPS",
    "Bucket",
    "Sums",
    "has_rollup",
    "money",
    "percentile",
    "recovery",
    "summarize",
    "usage_json",
    "window_hists",
    "window_sums",
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

# The race's kinds as an SQL list: ('chat', 'responses', 'embedding').
_RACE_KINDS = "(" + ", ".join(f"'{kind}'" for kind in RACE_KINDS) + ")"

# Each sum of the report (`ledger_rollup.COLUMNS`) over raw rows, in SQL both
# databases run. A group has at least one row and these columns are NOT NULL,
# so no SUM is NULL (COALESCE is a guard); the ELSE 0.0 keeps a sum of dollars
# a float in SQLite even when no row of the group matches (SUM of integer 0s is
# an integer there), as TOTAL did. Token sums are ints in both. Race attempts
# are never shadow copies or classifier calls; {client} is the client-seen
# TTFT's column, or NULL in an older ledger.
_RAW_SUMS = {
    "requests": "COUNT(DISTINCT CASE WHEN winner THEN request_id END)",
    "attempts": "COUNT(*)",
    "prompt_tokens": "COALESCE(SUM(prompt_tokens), 0)",
    "cached_tokens": "COALESCE(SUM(cached_tokens), 0)",
    "completion_tokens": "COALESCE(SUM(completion_tokens), 0)",
    "cost_usd": "COALESCE(SUM(cost_usd), 0.0)",
    "reference_usd": "COALESCE(SUM(CASE WHEN winner THEN reference_cost_usd ELSE 0.0 END), 0.0)",
    "wasted_usd": "COALESCE(SUM(CASE WHEN wasted THEN cost_usd ELSE 0.0 END), 0.0)",
    "shadow_usd": "COALESCE(SUM(CASE WHEN kind = 'shadow' THEN cost_usd ELSE 0.0 END), 0.0)",
    "classifier_usd":
        "COALESCE(SUM(CASE WHEN kind = 'classifier' THEN cost_usd ELSE 0.0 END), 0.0)",
    "estimated_usd": "COALESCE(SUM(CASE WHEN estimated THEN cost_usd ELSE 0.0 END), 0.0)",
    "errors": "COALESCE(SUM(CASE WHEN winner AND status != 'ok' THEN 1 ELSE 0 END), 0)",
    "race_attempts": f"COALESCE(SUM(CASE WHEN kind IN {_RACE_KINDS} THEN 1 ELSE 0 END), 0)",
    "hedges": "COALESCE(SUM(CASE WHEN hedge THEN 1 ELSE 0 END), 0)",
    "failed_attempts": f"COALESCE(SUM(CASE WHEN NOT winner AND kind IN {_RACE_KINDS} "
                       "AND status = 'error' THEN 1 ELSE 0 END), 0)",
    "ttft_rows": "COALESCE(SUM(CASE WHEN winner AND (ttft_ms IS NOT NULL OR {client} IS NOT NULL) "
                 "THEN 1 ELSE 0 END), 0)",
}
assert tuple(_RAW_SUMS) == ledger_rollup.COLUMNS

# What a window's sums may be grouped by: the raw rows' SQL expression of each
# dimension. The roll-up holds the groupings of `ledger_rollup.GROUPINGS`.
DIMENSIONS = {
    "tier": "tier",
    "model": "model",
    "key": "COALESCE(key, '-')",
    "rule": "rule",
    "first_token": "COALESCE(first_token_kind, '-')",
    "status": "status",
    "role": "CASE WHEN winner THEN 'winner' WHEN hedge THEN 'hedge' ELSE 'other' END",
    "kind": "kind",
}
_GROUPING_OF = {dims: grp for grp, dims in ledger_rollup.GROUPINGS.items()}
_ROLLUP_COLUMNS = ("a", "b", "c")

# A time bucket: seconds (the start of each UTC hour or day, an int) or the UTC
# date as YYYY-MM-DD (`tlproxy report --by day`).
Bucket = int | Literal["date"] | None
Sums = dict[tuple[Any, ...], list[Any]]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by nearest rank (as `tlproxy.stats` does); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _bucket(dialect: Dialect, column: str, bucket: Bucket) -> list[str]:
    if bucket is None:
        return []
    if bucket == "date":
        return [dialect.day_of(column)]
    return [dialect.bucket(column, bucket)]


Span = tuple[int, float | None, float | None]  # seconds, first start, end (None: open)


def _whole(since: float | None, until: float | None,
           span: int) -> tuple[float | None, float | None] | None:
    """The whole `span`s within since <= t < until (None: open), or None when none fit."""
    low = None if since is None else math.ceil(since / span) * span
    high = None if until is None else math.floor(until / span) * span
    return None if low is not None and high is not None and low >= high else (low, high)


class _Parts:
    """A window cut where the roll-up can answer: whole days (when `days`), the whole
    hours around them, and the raw rows of the partial hours at the edges."""

    def __init__(self, cursor: Any, dialect: Dialect, since: float | None,
                 until: float | None, *, days: bool) -> None:
        self.dialect = dialect
        self.spans: list[Span] = []
        self.raw: list[tuple[float | None, float | None]] = [(since, until)]
        if not table_exists(cursor, dialect, ledger_rollup.TABLE):
            return
        hours = _whole(since, until, ledger_rollup.HOUR)
        if hours is None:
            return  # within one hour, or two partial ones: raw rows only
        low, high = hours
        self.raw = []
        if since is not None and low is not None and since < low:
            self.raw.append((since, low))
        if until is not None and high is not None and high < until:
            self.raw.append((high, until))
        whole_days = _whole(low, high, ledger_rollup.DAY) if days else None
        if whole_days is None:
            self.spans.append((ledger_rollup.HOUR, low, high))
            return
        first, last = whole_days
        self.spans.append((ledger_rollup.DAY, first, last))
        if low is not None and first is not None and low < first:
            self.spans.append((ledger_rollup.HOUR, low, first))
        if high is not None and last is not None and last < high:
            self.spans.append((ledger_rollup.HOUR, last, high))

    def raw_where(self) -> tuple[str, list[float]]:
        p = self.dialect.param
        clauses, params = [], []
        for since, until in self.raw:
            where, bounds = time_window(since, until, p)
            clauses.append(f"({where})")
            params += bounds
        return " OR ".join(clauses), params

    def span_where(self, grp: str, span: Span) -> tuple[str, list[Any]]:
        """The roll-up rows of grouping `grp` in one of `spans`."""
        p = self.dialect.param
        seconds, low, high = span
        clauses, params = [f"grp = {p} AND span = {p}"], [grp, seconds]
        for op, bound in ((">=", low), ("<", high)):
            if bound is not None:
                clauses.append(f"start {op} {p}")
                params.append(bound)
        return " AND ".join(clauses), params


def _days_serve(bucket: Bucket) -> bool:
    """Whether day rows can answer for `bucket`: not for hourly buckets."""
    return bucket is None or bucket == "date" or bucket % ledger_rollup.DAY == 0


def _add(found: Sums, rows: Sequence[Sequence[Any]], width: int) -> None:
    """Add one query's rows (distinct groups: GROUP BY) to the sums found so far."""
    if not found:
        found.update((tuple(row[:width]), list(row[width:])) for row in rows)
        return
    for row in rows:
        names, values = tuple(row[:width]), row[width:]
        total = found.get(names)
        if total is None:
            found[names] = list(values)
        else:
            for i, value in enumerate(values):
                total[i] += value


def window_sums(conn: Any, dialect: Dialect, since: float | None, until: float | None,
                dims: Sequence[str] = (), bucket: Bucket = None,
                columns: Sequence[str] = ledger_rollup.COLUMNS) -> Sums:
    """The report's sums per time bucket and value of `dims`, for since <= ts < until.

    Keys are (bucket, *dims' values) (no bucket when None); values, the sums
    named by `columns` (`ledger_rollup.COLUMNS`, all of them by default: the
    twelve `money` reads, then race attempts, hedges, failed attempts and the
    winners with a TTFT). Whole hours come from the roll-up, the edges from
    the raw rows. `dims` are `DIMENSIONS` names; with a roll-up, they must be
    one of its groupings. Only groups with rows are keys.
    """
    cursor = conn.cursor()
    parts = _Parts(cursor, dialect, since, until, days=_days_serve(bucket))
    found: Sums = {}
    names = [*_bucket(dialect, "ts", bucket), *(DIMENSIONS[d] for d in dims)]
    width = len(names)
    # Without groups the database answers one row even for no rows: not a group.
    group_by = (f" GROUP BY {', '.join(str(i + 1) for i in range(width))}" if width
                else " HAVING COUNT(*) > 0")
    if parts.raw:
        client = column_or_null(cursor, "client_ttft_ms")
        names = [n.replace("first_token_kind", column_or_null(cursor, "first_token_kind"))
                 for n in names]
        sums = ", ".join(_RAW_SUMS[c].format(client=client) for c in columns)
        where, params = parts.raw_where()
        cursor.execute(f"SELECT {''.join(n + ', ' for n in names)}{sums} FROM ledger "
                       f"WHERE {where}{group_by}", params)
        _add(found, cursor.fetchall(), width)
    grp = _GROUPING_OF[tuple(dims)] if parts.spans else ""
    names = [*_bucket(dialect, "start", bucket), *_ROLLUP_COLUMNS[:len(dims)]]
    sums = ", ".join(f"SUM({c})" if c in ledger_rollup.FLOATS else
                     f"CAST(SUM({c}) AS BIGINT)" for c in columns)
    for span in parts.spans:
        where, params = parts.span_where(grp, span)
        cursor.execute(f"SELECT {''.join(n + ', ' for n in names)}{sums} "
                       f"FROM {ledger_rollup.TABLE} WHERE {where}{group_by}", params)
        _add(found, cursor.fetchall(), width)
    return found


def window_hists(conn: Any, dialect: Dialect, since: float | None, until: float | None, *,
                 measure: Literal["client", "upstream"], by_model: bool = False,
                 bucket: Bucket = None) -> dict[tuple[Any, ...], Hist]:
    """The winners' TTFT histograms (`ledger_rollup.ttft_bin`), for since <= ts < until.

    ``client``: the client-seen TTFTs per bucket; ``upstream``: the winning
    attempts' own per bucket, and model when `by_model` (keys without the
    bucket when None). Whole days and hours from the roll-up's histograms,
    the edges' TTFTs binned here. Only for a ledger with a roll-up (`has_rollup`).
    """
    if by_model and measure == "client":
        raise ValueError("the roll-up keeps client-seen TTFTs per hour and day, not per model")
    cursor = conn.cursor()
    parts = _Parts(cursor, dialect, since, until, days=_days_serve(bucket))
    found: dict[tuple[Any, ...], Hist] = {}
    column = "client_ttft_ms" if measure == "client" else "ttft_ms"
    width = (bucket is not None) + by_model
    if parts.raw:
        names = [*_bucket(dialect, "ts", bucket), *(["model"] if by_model else [])]
        where, params = parts.raw_where()
        cursor.execute(f"SELECT {''.join(n + ', ' for n in names)}{column} FROM ledger "
                       f"WHERE ({where}) AND winner AND {column} IS NOT NULL", params)
        for row in cursor.fetchall():
            hist = found.setdefault(tuple(row[:width]), {})
            index = ttft_bin(row[width])
            hist[index] = hist.get(index, 0) + 1
    names = [*_bucket(dialect, "start", bucket), *(["a"] if by_model else [])]
    for span in parts.spans:
        where, params = parts.span_where("model" if by_model else "all", span)
        cursor.execute(f"SELECT {''.join(n + ', ' for n in names)}{measure}_hist "
                       f"FROM {ledger_rollup.TABLE} WHERE {where} AND {measure}_hist IS NOT NULL",
                       params)
        for row in cursor.fetchall():
            key, hist = tuple(row[:width]), decode_hist(row[width])
            if key in found:
                merge_into(found[key], hist)
            else:
                found[key] = hist
    return found


def has_rollup(conn: Any, dialect: Dialect) -> bool:
    return table_exists(conn.cursor(), dialect, ledger_rollup.TABLE)


def money(values: Sequence[Any]) -> dict[str, Any]:
    """The report's counts and dollars from a row of `window_sums`, rounded as it prints them."""
    (requests, attempts, prompt, cached, completion, spend, reference, wasted, shadow,
     classifier, estimated, errors) = values[:12]
    saving = reference - spend
    return {
        "requests": int(requests),
        "attempts": int(attempts),
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


# -- tlproxy report --------------------------------------------------------------------------

def _report_group(by: str) -> tuple[list[str], Bucket]:
    if by not in GROUPS:
        raise ValueError(f"by must be one of {', '.join(GROUPS)}, not {by!r}")
    if by == "day":
        return [], "date"
    return ([] if by == "all" else [by]), None


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
    _report_group(by)
    dialect_of(db_path)
    now = time.time()
    low, high = parse_time(since, now=now), parse_time(until, now=now)
    with reading_ledger(db_path) as (conn, dialect):
        return _summarize(conn, dialect, by, low, high)


def _summarize(conn: Any, dialect: Dialect, by: str, since: float | None,
               until: float | None) -> list[dict[str, Any]]:
    dims, bucket = _report_group(by)
    sums = window_sums(conn, dialect, since, until, dims, bucket)
    if by == "all":
        sums = {("all",): sums[()]} if sums else {}
    # Per group: the winners' own TTFTs with their first token's kind, and what
    # their clients saw (a ledger written before a column was kept lacks it).
    cursor = conn.cursor()
    kind = column_or_null(cursor, "first_token_kind")
    client_column = column_or_null(cursor, "client_ttft_ms")
    group = (dialect.day_of("ts") if by == "day" else
             "'all'" if by == "all" else DIMENSIONS[by])
    group = group.replace("first_token_kind", kind)
    where, params = time_window(since, until, dialect.param)
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
    rows = [_summary_row(by, names[0], values, upstream.get(names[0], []),
                         client.get(names[0], []))
            for names, values in sums.items()]
    if by == "day":
        return sorted(rows, key=lambda r: r["day"])
    return sorted(rows, key=lambda r: (-r["spend_usd"], str(r[by])))


def _summary_row(by: str, name: Any, values: Sequence[Any], ttfts: list[tuple[float, str]],
                 client: list[float]) -> dict[str, Any]:
    by_kind: dict[str, list[float]] = {}
    for ttft, kind in ttfts:
        by_kind.setdefault(kind, []).append(ttft)
    # Most frequent first; ties by name, so the order is stable.
    kinds = sorted(by_kind, key=lambda k: (-len(by_kind[k]), k))
    times = [ttft for ttft, _ in ttfts]
    return {
        by: name,
        **money(values),
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
    _report_group(by)
    dialect_of(db_path)
    # One connection, one snapshot: the groups add up to the total.
    with reading_ledger(db_path) as (conn, dialect):
        groups = _summarize(conn, dialect, by, since, until)
        total = _summarize(conn, dialect, "all", since, until)
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
