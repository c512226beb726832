"""The dashboard's questions, asked of the ledger: spend, routing, the race, shadow pairs.

The endpoints of `tlproxy.dashboard` call these; each does blocking I/O on
one read-only connection (one snapshot), so they run in a worker thread.

One source of truth: money comes from `report_sums.window_sums` and
`report_sums.money`, the very sums and rounding `tlproxy report` prints,
grouped by a time bucket as well; the CSV export *is* `tlproxy report
--format csv`. Everything is aggregated by the database: whole days and hours
from the ledger's roll-up, the window's edges from the raw rows, so a year
of rows costs the page a few thousand roll-up rows, not a million ledger
rows. TTFT percentiles (nearest rank, as `report_sums.percentile`) are exact,
with window functions both SQLite and PostgreSQL run, up to `EXACT_TTFTS`
TTFTs in a window; beyond, they are read from the roll-up's histograms,
within `ledger_rollup.RELATIVE_ERROR`. The only differences between the
databases are in `ledger_read.Dialect`; the tests hold both to the same
answers.

What is never in an answer: a client key (rows carry a key's *name*), a
prompt or an answer outside the shadow pairs that shadow mode recorded on
purpose, a database password (`ledger_read.LedgerReadError` is redacted).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from .explain import describe_condition
from .ledger_read import (
    Dialect,
    LedgerSource,
    column_or_null,
    parse_time,
    reading_ledger,
    time_window,
)
from .ledger_rollup import Hist, hist_percentiles
from .policy import DEFAULT_RULES
from .report import to_csv
from .report_sums import Sums, has_rollup, money, usage_json, window_hists, window_sums
from .shadow import shadow_report

__all__ = [
    "BY",
    "EXACT_TTFTS",
    "QUANTILES",
    "STEPS",
    "Window",
    "parse_bound",
    "race",
    "recent",
    "routing",
    "shadow_pairs",
    "spend",
    "spend_csv",
]

STEPS = {"hour": 3600, "day": 86400}
BY = ("tier", "model", "key", "rule")
QUANTILES = (50, 90, 95, 99)  # percent; p95 is the report's
# Up to this many winners with a TTFT in a window, `race` sorts them for exact
# percentiles (about 0.1 s on SQLite); beyond, it reads the roll-up's histograms.
EXACT_TTFTS = 50_000
_TOP = 10
_UNIX = re.compile(r"\d+(\.\d+)?")

# What a recent request shows: what it was, never what it said.
_RECENT_COLUMNS = ("request_id", "ts", "key", "kind", "tier", "model", "provider", "rule",
                   "ttft_ms", "client_ttft_ms", "first_token_kind", "prompt_tokens",
                   "completion_tokens", "cost_usd", "status")
_PAIR_SIDE = ("model", "text", "ttft_ms", "duration_ms", "cost_usd", "ok", "error")


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _percentiles(cursor: Any, groups: Sequence[str], column: str, where: str,
                 params: Sequence[Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Nearest-rank percentiles of `column` over the winners, per value of `groups`.

    The q-quantile of n values is the value of rank ceil(q * n), in integers:
    the smallest rank r with 100 * r >= p * n. Exactly `report.percentile`.
    """
    names = [f"g{i}" for i in range(len(groups))]
    partition = f"PARTITION BY {', '.join(groups)} " if groups else ""
    picks = ", ".join(f"MIN(CASE WHEN rn * 100 >= {p} * n THEN v END)" for p in QUANTILES)
    selected = "".join(f"{g} AS {name}, " for g, name in zip(groups, names, strict=True))
    outer = "".join(f"{name}, " for name in names)
    group_by = f" GROUP BY {', '.join(names)}" if names else ""
    cursor.execute(
        f"SELECT {outer}COUNT(*), {picks} FROM ("
        f"SELECT {selected}{column} AS v, "
        f"ROW_NUMBER() OVER ({partition}ORDER BY {column}) AS rn, "
        f"COUNT(*) OVER ({partition.strip()}) AS n "
        f"FROM ledger WHERE {where} AND winner AND {column} IS NOT NULL) AS ranked{group_by}",
        params)
    found = {}
    for row in cursor.fetchall():
        values = row[len(names):]
        if not values[0]:
            continue  # no rows at all (the ungrouped query still answers one)
        found[tuple(row[:len(names)])] = {
            "ttft_count": int(values[0]),
            **{f"p{p}": _round(v) for p, v in zip(QUANTILES, values[1:], strict=True)}}
    return found


def _ttft_columns(prefix: str, found: dict[str, Any] | None) -> dict[str, Any]:
    found = found or {}
    return {f"{prefix}_p{p}_ms": found.get(f"p{p}") for p in QUANTILES}


class Window(msgspec.Struct, frozen=True):
    """A half-open time window, fixed once so every query of an answer shares it."""

    since: float | None
    until: float | None

    @classmethod
    def parse(cls, since: Any, until: Any) -> Window:
        now = time.time()
        return cls(parse_bound(since, now), parse_bound(until, now))

    def where(self, dialect: Dialect) -> tuple[str, list[float]]:
        return time_window(self.since, self.until, dialect.param)


def parse_bound(value: Any, now: float) -> float | None:
    """A bound from a query string: unix seconds, as the answers give them back (what a
    poller has at hand), or what `report.parse_time` reads (ISO 8601, ``24h``)."""
    if isinstance(value, str) and _UNIX.fullmatch(value.strip()):
        return float(value)
    return parse_time(value, now=now)


def _step(step: str) -> int:
    if step not in STEPS:
        raise ValueError(f"step must be one of {', '.join(STEPS)}, not {step!r}")
    return STEPS[step]


def _by(by: str) -> str:
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, not {by!r}")
    return by


def _top(sums: Sums, name: str) -> list[dict[str, Any]]:
    rows = [{name: names[0], **money(values)} for names, values in sums.items()]
    return sorted(rows, key=lambda r: (-r["spend_usd"], str(r[name])))


# -- the queries (blocking; one connection each) -------------------------------------------

def spend(source: LedgerSource, *, window: Window, step: str = "hour",
          by: str = "tier") -> dict[str, Any]:
    """Spend, the all-premium counterfactual and the saving per time bucket and group.

    ``series`` has one row per (bucket, group) with rows; ``groups``, the
    window's totals per group (`tlproxy report --by` without its TTFT
    columns), most spend first; ``keys`` and ``rules``, the top spenders;
    ``total``, the window's (None when it has no rows).
    """
    seconds, by = _step(step), _by(by)
    with reading_ledger(source) as (conn, dialect):
        since, until = window.since, window.until
        series = window_sums(conn, dialect, since, until, [by], seconds)
        groups = window_sums(conn, dialect, since, until, [by])
        keys = window_sums(conn, dialect, since, until, ["key"])
        rules = window_sums(conn, dialect, since, until, ["rule"])
        total = window_sums(conn, dialect, since, until)
    return {
        "object": "tlproxy.spend", "since": window.since, "until": window.until,
        "step": step, "by": by,
        "series": sorted(({"bucket": int(names[0]), by: names[1], **money(values)}
                          for names, values in series.items()),
                         key=lambda r: (r["bucket"], str(r[by]))),
        "groups": _top(groups, by),
        "keys": _top(keys, "key")[:_TOP],
        "rules": _top(rules, "rule")[:_TOP],
        "total": money(total[()]) if total else None,
    }


def spend_csv(source: LedgerSource, *, window: Window, by: str = "tier",
              step: str = "hour") -> str:
    """`tlproxy report --by <by> --format csv` for the window, byte for byte (`step`,
    which the report has no use for, is checked and ignored)."""
    _step(step)
    return to_csv(usage_json(source, since=window.since, until=window.until,
                             by=_by(by))["groups"])


def routing(source: LedgerSource, *, window: Window, step: str = "hour",
            policies: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    """Requests per rule and tier over time, and each policy's rules in order with their hits.

    A rule's hits are the window's requests the ledger records under its
    name; the ledger does not say which policy decided, so two policies'
    rules of one name share their hits. Rules the ledger names that no
    policy has (``pinned``, ``default-embedding``, a rule since removed) are
    listed under ``other``.
    """
    seconds = _step(step)
    with reading_ledger(source) as (conn, dialect):
        since, until = window.since, window.until
        series = window_sums(conn, dialect, since, until, ["rule", "tier"], seconds,
                             columns=["requests"])
        hits = window_sums(conn, dialect, since, until, ["rule", "tier"], columns=["requests"])
    # Requests are winners: a rule and tier seen only on losing attempts decided nothing.
    answered = {names: int(values[0]) for names, values in hits.items() if values[0]}
    by_rule: dict[str, int] = {}
    for (rule, _), requests in answered.items():
        by_rule[rule] = by_rule.get(rule, 0) + requests
    listed = []
    named = set()
    for name, policy in policies:
        rules = DEFAULT_RULES if policy.rules is None else policy.rules
        entries = [{"name": r.name, "tier": r.tier, "when": describe_condition(r.when),
                    "requests": by_rule.get(r.name, 0)} for r in rules]
        entries.append({"name": "default", "tier": policy.default_tier, "when": "no rule matched",
                        "requests": by_rule.get("default", 0)})
        named |= {entry["name"] for entry in entries}
        listed.append({"policy": name, "strategy": policy.strategy, "rules": entries})
    other = sorted(({"rule": rule, "tier": tier, "requests": requests}
                    for (rule, tier), requests in answered.items() if rule not in named),
                   key=lambda r: (-r["requests"], r["rule"], r["tier"]))
    return {
        "object": "tlproxy.routing", "since": window.since, "until": window.until,
        "step": step,
        "series": sorted(({"bucket": int(b), "rule": rule, "tier": tier,
                           "requests": int(values[0])}
                          for (b, rule, tier), values in series.items() if values[0]),
                         key=lambda r: (r["bucket"], r["rule"], r["tier"])),
        "policies": listed,
        "other": other,
    }


def race(source: LedgerSource, *, window: Window, step: str = "hour",
         exact_up_to: int | None = None) -> dict[str, Any]:
    """TTFT percentiles (client-seen, and per model), hedges, waste and errors over time.

    ``series``: per bucket, the requests, their errors and error rate, race
    attempts, hedges, attempts that failed before an answer (the fallbacks'
    causes), the wasted dollars, and the client-seen TTFT p50/p90/p95/p99.
    ``models``: per bucket and model, the winning attempts' own TTFT
    percentiles. ``total``: the same for the whole window; its p50 and p95
    are `tlproxy report`'s ``client_ttft_*`` and ``upstream_ttft_*``.
    ``outcomes``: the window's attempts by status and role.

    Percentiles are exact (nearest rank, in SQL) when the window holds at most
    `exact_up_to` winners with a TTFT (`EXACT_TTFTS` by default), else read from
    the roll-up's histograms, within `ledger_rollup.RELATIVE_ERROR` of the exact
    ones; ``percentiles`` says which.
    """
    seconds = _step(step)
    limit = EXACT_TTFTS if exact_up_to is None else exact_up_to
    with reading_ledger(source) as (conn, dialect):
        since, until = window.since, window.until
        per_bucket = window_sums(conn, dialect, since, until, [], seconds, columns=_RACE)
        total = window_sums(conn, dialect, since, until, columns=_RACE)
        outcomes = window_sums(conn, dialect, since, until, ["status", "role", "kind"],
                               columns=["attempts", "cost_usd"])
        ttfts = int(total[()][-1]) if total else 0
        if ttfts <= limit or not has_rollup(conn, dialect):
            method = "exact"
            seen, models, total_seen, total_upstream = _exact_ttfts(conn, dialect, window,
                                                                     seconds)
        else:
            method = "histogram"
            seen, models, total_seen, total_upstream = _histogram_ttfts(conn, dialect, window,
                                                                         seconds)

    def row(values: Sequence[Any], seen_ttft: dict[str, Any] | None) -> dict[str, Any]:
        requests, errors, wasted, attempts, hedges, failed, _ = values
        return {
            "requests": int(requests), "errors": int(errors),
            "error_rate_pct": round(100 * errors / requests, 1) if requests else None,
            "attempts": int(attempts), "hedges": int(hedges), "failed_attempts": int(failed),
            "wasted_usd": round(wasted, 6),
            **_ttft_columns("client_ttft", seen_ttft),
        }

    return {
        "object": "tlproxy.race", "since": window.since, "until": window.until, "step": step,
        "percentiles": method,
        "series": [{"bucket": int(b), **row(per_bucket[(b,)], seen.get((b,)))}
                   for (b,) in sorted(per_bucket)],
        # Tens of thousands of rows for a year by hour: named once, sorted as tuples.
        "models": [{"bucket": int(b), "model": model, "ttft_count": found["ttft_count"],
                    **{column: found[p] for column, p in _UPSTREAM_COLUMNS}}
                   for (b, model), found in sorted(models.items())],
        "total": ({**row(total[()], total_seen),
                   **_ttft_columns("upstream_ttft", total_upstream)}
                  if total else None),
        "outcomes": sorted(({"status": status, "role": role, "kind": kind,
                             "attempts": int(values[0]), "cost_usd": round(values[1], 6)}
                            for (status, role, kind), values in outcomes.items()),
                           key=lambda r: (r["kind"], r["role"], r["status"])),
    }


# What a race answer sums: `money`'s requests, errors and waste, the race's counts, and
# the winners with a TTFT (which decide how percentiles are found).
_RACE = ("requests", "errors", "wasted_usd", "race_attempts", "hedges", "failed_attempts",
         "ttft_rows")
_Found = dict[tuple[Any, ...], dict[str, Any]]
_P_NAMES = tuple(f"p{p}" for p in QUANTILES)
_UPSTREAM_COLUMNS = tuple((f"upstream_ttft_p{p}_ms", f"p{p}") for p in QUANTILES)
_TTFTs = tuple[_Found, _Found, dict[str, Any] | None, dict[str, Any] | None]


def _exact_ttfts(conn: Any, dialect: Dialect, window: Window, seconds: int) -> _TTFTs:
    """Client TTFTs per bucket, upstream per bucket and model, both over the window: exact."""
    where, params = window.where(dialect)
    cursor = conn.cursor()
    client = column_or_null(cursor, "client_ttft_ms")
    bucket = dialect.bucket("ts", seconds)
    seen = _percentiles(cursor, [bucket], client, where, params) if client != "NULL" else {}
    models = _percentiles(cursor, [bucket, "model"], "ttft_ms", where, params)
    total_seen = (_percentiles(cursor, [], client, where, params).get(())
                  if client != "NULL" else None)
    total_upstream = _percentiles(cursor, [], "ttft_ms", where, params).get(())
    return seen, models, total_seen, total_upstream


def _histogram_ttfts(conn: Any, dialect: Dialect, window: Window, seconds: int) -> _TTFTs:
    """`_exact_ttfts` from the roll-up's histograms."""
    since, until = window.since, window.until
    seen = window_hists(conn, dialect, since, until, measure="client", bucket=seconds)
    models = window_hists(conn, dialect, since, until, measure="upstream", by_model=True,
                          bucket=seconds)
    all_seen = window_hists(conn, dialect, since, until, measure="client").get((), {})
    all_upstream = window_hists(conn, dialect, since, until, measure="upstream").get((), {})
    return (_from_hists(seen), _from_hists(models), _from_hist(all_seen),
            _from_hist(all_upstream))


def _from_hists(hists: dict[tuple[Any, ...], Hist]) -> _Found:
    return {names: found for names, hist in hists.items()
            if (found := _from_hist(hist)) is not None}


def _from_hist(hist: Hist) -> dict[str, Any] | None:
    """What `_percentiles` finds, from a histogram: a year's hours make tens of thousands."""
    if not hist:
        return None
    found: dict[str, Any] = {"ttft_count": sum(hist.values())}
    for name, value in zip(_P_NAMES, hist_percentiles(hist, QUANTILES), strict=True):
        found[name] = None if value is None else round(value, 1)
    return found


def recent(source: LedgerSource, *, limit: int = 50,
           after: float | None = None) -> dict[str, Any]:
    """The latest answered requests, newest first: what ran and how, never what was said."""
    with reading_ledger(source) as (conn, dialect):
        cursor = conn.cursor()
        columns = [column_or_null(cursor, c) for c in _RECENT_COLUMNS]
        where, params = "winner", []
        if after is not None:
            where += f" AND ts > {dialect.param}"
            params.append(after)
        cursor.execute(f"SELECT {', '.join(columns)} FROM ledger WHERE {where} "
                       f"ORDER BY ts DESC, id DESC LIMIT {int(limit)}", params)
        rows = cursor.fetchall()
    return {"object": "tlproxy.requests",
            "data": [dict(zip(_RECENT_COLUMNS, r, strict=True)) for r in rows]}


def shadow_pairs(source: LedgerSource, *, window: Window, rule: str | None = None,
                 limit: int = 20) -> dict[str, Any]:
    """`tlproxy shadow report`'s summary per rule, and the latest pairs side by side.

    The texts are what shadow mode recorded on purpose (its config decides
    whether prompts are kept); a pair's prompt is shown only if it was.
    """
    summary = [r for r in shadow_report(source, since=window.since, until=window.until,
                                        examples=0)
               if rule is None or r["rule"] == rule]
    sides = [f"{side}_{c}" for side in ("primary", "shadow") for c in _PAIR_SIDE]
    with reading_ledger(source) as (conn, dialect):
        where, bounds = window.where(dialect)
        params: list[object] = [*bounds]
        if rule is not None:
            where += f" AND rule = {dialect.param}"
            params.append(rule)
        cursor = conn.cursor()
        cursor.execute(f"SELECT request_id, ts, key, rule, prompt, {', '.join(sides)} "
                       f"FROM shadow_pairs WHERE {where} ORDER BY ts DESC, id DESC "
                       f"LIMIT {int(limit)}", params)
        rows = cursor.fetchall()
    pairs = []
    for r in rows:
        values = dict(zip(sides, r[5:], strict=True))
        pairs.append({
            "request_id": r[0], "ts": r[1], "key": r[2], "rule": r[3], "prompt": r[4],
            **{side: {c: (bool(values[f"{side}_{c}"]) if c == "ok" else values[f"{side}_{c}"])
                      for c in _PAIR_SIDE} for side in ("primary", "shadow")}})
    for summary_row in summary:
        summary_row.pop("examples", None)
    return {"object": "tlproxy.shadow", "since": window.since, "until": window.until,
            "rule": rule, "summary": summary, "pairs": pairs}
