"""The dashboard: its page at ``/ui`` and its JSON endpoints under ``/v1/tlproxy/``.

Each answers a question of a team deciding on a routing policy, from the
ledger (`ledger.py`) and the running app's live statistics, for admin keys
only (the edge checks them for every ``/v1/tlproxy/`` path). The page at
``/ui`` reads them; so can anyone with an admin key and curl.

One source of truth: money comes from `report.group_sums`, the very sums
and rounding `tlproxy report` prints, grouped by a time bucket as well;
the CSV export *is* `tlproxy report --format csv`. Everything is
aggregated by the database, percentiles included (nearest rank, as
`report.percentile`, with window functions both SQLite and PostgreSQL
run), so a year of rows costs the page a few result rows, not a million
Python tuples. The only difference between the databases is the time
bucket's SQL (`bucket_sql`); the tests hold both to the same answers.

What is never in an answer: a client key (rows carry a key's *name*), a
prompt or an answer outside the shadow pairs that shadow mode recorded on
purpose, a database password (`report.LedgerReadError` is redacted).

The query functions do blocking I/O on one read-only connection (one
snapshot); `Dashboard` runs them in a worker thread.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl

import msgspec
import trio

from .errors import InvalidRequest, NotFound, ProxyError
from .explain import describe_condition, describe_plan
from .ledger_read import (
    Dialect,
    LedgerReadError,
    LedgerSource,
    column_or_null,
    parse_time,
    reading_ledger,
    time_window,
)
from .ledger_rollup import Hist, hist_percentile, merge_into
from .policy import DEFAULT_RULES
from .report import to_csv
from .report_sums import Sums, has_rollup, money, usage_json, window_hists, window_sums
from .router import Router
from .shadow import shadow_report
from .stats import StatsBook
from .wire import decode_chat_request

if TYPE_CHECKING:
    from .config import Config
    from .edge import Request
    from .engine import Engine
    from .ledger import Ledger
    from .metrics import Metrics
    from .shadow import Shadow


class ProxyState(Protocol):
    """What the dashboard reads of the running proxy (`tlproxy.app.App` is one)."""

    config: Config
    engine: Engine
    ledger: Ledger | None
    metrics: Metrics
    shadow: Shadow | None
    ready: bool

__all__ = [
    "BY",
    "EXACT_TTFTS",
    "QUANTILES",
    "ROUTES",
    "STEPS",
    "UI_FILES",
    "Dashboard",
    "Window",
    "bucket_sql",
    "race",
    "recent",
    "routing",
    "shadow_pairs",
    "spend",
    "spend_csv",
]

_encode = msgspec.json.Encoder().encode

STEPS = {"hour": 3600, "day": 86400}
BY = ("tier", "model", "key", "rule")
QUANTILES = (50, 90, 95, 99)  # percent; p95 is the report's
# Up to this many winners with a TTFT in a window, `race` sorts them for exact
# percentiles (about 0.1 s on SQLite); beyond, it reads the roll-up's histograms.
EXACT_TTFTS = 50_000
_TOP = 10
_UNIX = re.compile(r"\d+(\.\d+)?")
_MAX_LIMIT = 500

# What a recent request shows: what it was, never what it said.
_RECENT_COLUMNS = ("request_id", "ts", "key", "kind", "tier", "model", "provider", "rule",
                   "ttft_ms", "client_ttft_ms", "first_token_kind", "prompt_tokens",
                   "completion_tokens", "cost_usd", "status")
_PAIR_SIDE = ("model", "text", "ttft_ms", "duration_ms", "cost_usd", "ok", "error")


def bucket_sql(dialect: Dialect, seconds: int) -> str:
    """The start (unix seconds, an integer) of the UTC hour or day ``ts`` falls in."""
    return dialect.bucket("ts", seconds)


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
        return cls(_time(since, now), _time(until, now))

    def where(self, dialect: Dialect) -> tuple[str, list[float]]:
        return time_window(self.since, self.until, dialect.param)


def _time(value: Any, now: float) -> float | None:
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
        series = window_sums(conn, dialect, since, until, ["rule", "tier"], seconds)
        hits = window_sums(conn, dialect, since, until, ["rule", "tier"])
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
        per_bucket = window_sums(conn, dialect, since, until, [], seconds)
        total = window_sums(conn, dialect, since, until)
        outcomes = window_sums(conn, dialect, since, until, ["status", "role", "kind"])
        ttfts = int(total[()][15]) if total else 0
        if ttfts <= limit or not has_rollup(conn, dialect):
            method = "exact"
            seen, models, total_seen, total_upstream = _exact_ttfts(conn, dialect, window,
                                                                     seconds)
        else:
            method = "histogram"
            seen, models, total_seen, total_upstream = _histogram_ttfts(conn, dialect, window,
                                                                         seconds)

    def row(values: Sequence[Any], seen_ttft: dict[str, Any] | None) -> dict[str, Any]:
        spent = money(values)
        attempts, hedges, failed = (int(n) for n in values[12:15])
        requests, errors = spent["requests"], spent["errors"]
        return {
            "requests": requests, "errors": errors,
            "error_rate_pct": round(100 * errors / requests, 1) if requests else None,
            "attempts": attempts, "hedges": hedges, "failed_attempts": failed,
            "wasted_usd": spent["wasted_usd"],
            **_ttft_columns("client_ttft", seen_ttft),
        }

    return {
        "object": "tlproxy.race", "since": window.since, "until": window.until, "step": step,
        "percentiles": method,
        "series": [{"bucket": int(b), **row(per_bucket[(b,)], seen.get((b,)))}
                   for (b,) in sorted(per_bucket)],
        "models": sorted(({"bucket": int(b), "model": model, "ttft_count": found["ttft_count"],
                           **{f"upstream_ttft_p{p}_ms": found[f"p{p}"] for p in QUANTILES}}
                          for (b, model), found in models.items()),
                         key=lambda r: (r["bucket"], r["model"])),
        "total": ({**row(total[()], total_seen),
                   **_ttft_columns("upstream_ttft", total_upstream)}
                  if total else None),
        "outcomes": sorted(({"status": status, "role": role, "kind": kind,
                             "attempts": int(values[1]), "cost_usd": round(values[5], 6)}
                            for (status, role, kind), values in outcomes.items()),
                           key=lambda r: (r["kind"], r["role"], r["status"])),
    }


_Found = dict[tuple[Any, ...], dict[str, Any]]
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
    """`_exact_ttfts` from the roll-up's histograms: the totals merge the buckets'."""
    since, until = window.since, window.until
    seen = window_hists(conn, dialect, since, until, measure="client", bucket=seconds)
    models = window_hists(conn, dialect, since, until, measure="upstream", bucket=seconds)
    all_seen: Hist = {}
    for hist in seen.values():
        merge_into(all_seen, hist)
    all_upstream: Hist = {}
    for hist in models.values():
        merge_into(all_upstream, hist)
    return (_from_hists(seen), _from_hists(models), _from_hist(all_seen),
            _from_hist(all_upstream))


def _from_hists(hists: dict[tuple[Any, ...], Hist]) -> _Found:
    return {names: found for names, hist in hists.items()
            if (found := _from_hist(hist)) is not None}


def _from_hist(hist: Hist) -> dict[str, Any] | None:
    count = sum(hist.values())
    if not count:
        return None
    return {"ttft_count": count,
            **{f"p{p}": _round(hist_percentile(hist, p)) for p in QUANTILES}}


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


# -- the endpoints ---------------------------------------------------------------------------

# The page's files (tlproxy/ui, package data): path -> (file, content type). Built by hand,
# vendored, nothing to build on the user's machine and nothing fetched from elsewhere.
UI_FILES = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
    "/ui/vendor/uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "/ui/vendor/uPlot.min.css": ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
    "/ui/vendor/LICENSE": ("vendor/LICENSE", "text/plain; charset=utf-8"),
}
# The page runs only its own scripts and talks only to this proxy.
_UI_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; "
     b"img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; "
     b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]

ROUTES = (
    *(("GET", path) for path in UI_FILES),
    ("GET", "/v1/tlproxy/spend"),
    ("GET", "/v1/tlproxy/routing"),
    ("GET", "/v1/tlproxy/race"),
    ("GET", "/v1/tlproxy/requests"),
    ("GET", "/v1/tlproxy/shadow"),
    ("GET", "/v1/tlproxy/live"),
    ("POST", "/v1/tlproxy/explain"),
)


def _query(request: Request, allowed: Sequence[str]) -> dict[str, str]:
    query = dict(parse_qsl(bytes(request.scope.get("query_string", b"")).decode("latin-1")))
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise InvalidRequest(f"Unknown query parameter(s): {', '.join(unknown)}. "
                             f"This endpoint takes: {', '.join(allowed)}.",
                             param=unknown[0], code="invalid_value")
    return query


def _limit(query: dict[str, str], default: int) -> int:
    text = query.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= _MAX_LIMIT:
        raise InvalidRequest(f"limit must be a whole number from 1 to {_MAX_LIMIT}, "
                             f"not {text!r}.", param="limit", code="invalid_value")
    return int(text)


class Dashboard:
    """The endpoints of `ROUTES`, over the app's ledger, config and live statistics."""

    def __init__(self, app: ProxyState) -> None:
        self._app = app
        self._files: dict[str, bytes] = {}  # the page's files, read on first use

    async def handle(self, request: Request) -> None:
        path = request.path.rstrip("/") or "/"
        if path in UI_FILES:
            await self._ui(request, path)
            return
        handler: Callable[[Request], Any] = getattr(self, f"_{path.removeprefix('/v1/tlproxy/')}")
        await handler(request)

    async def _ui(self, request: Request, path: str) -> None:
        """A file of the page; it holds no data, so it needs no key (its requests do)."""
        name, content_type = UI_FILES[path]
        body = self._files.get(name)
        if body is None:
            resource = importlib.resources.files("tlproxy") / "ui" / name
            body = self._files[name] = await trio.to_thread.run_sync(resource.read_bytes)
        await request.start(200, [(b"content-type", content_type.encode()), *_UI_HEADERS])
        await request.send({"type": "http.response.body", "body": body})

    # -- reading the ledger --------------------------------------------------------------

    async def _read(self, fn: Callable[..., Any], **options: Any) -> Any:
        app = self._app
        if app.ledger is None:
            raise NotFound("The ledger is disabled ([ledger] enabled = false).",
                           code="ledger_disabled")
        # Rows still queued belong in the answer: give the writer a moment.
        with trio.move_on_after(2.0):
            while app.ledger.statistics().queued:  # noqa: ASYNC110 - the writer's state
                await trio.sleep(0.02)
        source = app.config.ledger.postgres_url or app.config.ledger.path
        try:
            return await trio.to_thread.run_sync(functools.partial(fn, source, **options))
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="invalid_value") from None
        except (FileNotFoundError, LedgerReadError) as exc:
            # Neither message holds the database password.
            raise ProxyError(f"The ledger cannot be read: {exc}", status=503,
                             code="ledger_unavailable") from None

    async def _windowed(self, request: Request, fn: Callable[..., Any],
                        allowed: Sequence[str], **options: Any) -> Any:
        """`fn` over the window of ``since`` and ``until``, with the other parameters."""
        query = _query(request, ("since", "until", *allowed))
        try:
            window = Window.parse(query.pop("since", None), query.pop("until", None))
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="invalid_value") from None
        if "limit" in allowed:
            query["limit"] = _limit(query, 20)  # type: ignore[assignment]
        query.pop("format", None)
        return await self._read(fn, window=window, **options, **query)

    async def _spend(self, request: Request) -> None:
        allowed = ("step", "by", "format")
        fmt = _query(request, ("since", "until", *allowed)).get("format", "json")
        if fmt not in ("json", "csv"):
            raise InvalidRequest(f"format must be json or csv, not {fmt!r}.", param="format",
                                 code="invalid_value")
        if fmt == "json":
            await request.respond(200, _encode(await self._windowed(request, spend, allowed)))
            return
        text = await self._windowed(request, spend_csv, allowed)
        await request.start(200, [(b"content-type", b"text/csv; charset=utf-8"),
                                  (b"content-disposition",
                                   b'attachment; filename="tlproxy-spend.csv"')])
        await request.send({"type": "http.response.body", "body": text.encode()})

    async def _routing(self, request: Request) -> None:
        config = self._app.config
        policies = [("default", config.policy), *config.policies.items()]
        body = await self._windowed(request, routing, ("step",), policies=policies)
        await request.respond(200, _encode(body))

    async def _race(self, request: Request) -> None:
        await request.respond(200, _encode(await self._windowed(request, race, ("step",))))

    async def _shadow(self, request: Request) -> None:
        body = await self._windowed(request, shadow_pairs, ("rule", "limit"))
        await request.respond(200, _encode(body))

    async def _requests(self, request: Request) -> None:
        query = _query(request, ("limit", "after"))
        try:
            after = _time(query["after"], time.time()) if "after" in query else None
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="after", code="invalid_value") from None
        body = await self._read(recent, limit=_limit(query, 50), after=after)
        await request.respond(200, _encode(body))

    # -- the running app -----------------------------------------------------------------

    async def _live(self, request: Request) -> None:
        _query(request, ())
        await request.respond(200, _encode(self.live()))

    def live(self) -> dict[str, Any]:
        """Circuit breakers, live TTFT and error rates, open streams, the ledger's queue."""
        app = self._app
        now = trio.current_time()
        known = dict(app.engine.stats.items())
        models = []
        for model in app.config.models:
            stats = known.get(model.id)
            p50 = stats.quantile(0.5) if stats else None
            models.append({
                "model": model.id, "tier": model.tier, "provider": model.provider,
                "breaker": stats.state(now) if stats else "closed",
                "ttft_ewma_ms": _round(stats.ttft_ewma * 1000) if stats and
                stats.ttft_ewma is not None else None,
                "ttft_p50_ms": _round(p50 * 1000) if p50 is not None else None,
                "error_rate": round(stats.error_rate, 4) if stats else 0.0,
                "attempts": stats.attempts if stats else 0,
                "failures": stats.failures if stats else 0,
            })
        registry = app.metrics.registry
        return {
            "object": "tlproxy.live",
            "ready": app.ready,
            "open_streams": int(registry.get_sample_value("tlproxy_open_streams") or 0),
            "models": models,
            "ledger": msgspec.to_builtins(app.ledger.statistics()) if app.ledger else None,
            "shadow": msgspec.to_builtins(app.shadow.statistics()) if app.shadow else None,
        }

    async def _explain(self, request: Request) -> None:
        """What `tlproxy route --explain` prints for the posted body; nothing is called."""
        _query(request, ())
        config = self._app.config
        body = await request.body(config.server.max_body_bytes, config.server.body_timeout)
        _, raw = decode_chat_request(body)
        try:
            plan = Router(config, StatsBook()).plan_chat(raw, headers={}, key=None)
        except ProxyError as exc:
            refused = msgspec.json.decode(exc.body())
            answer = {"object": "tlproxy.explain", "refused": refused,
                      "text": f"The request would be refused: {refused['error']['message']}"}
        else:
            answer = {"object": "tlproxy.explain", "tier": plan.tier, "rule": plan.rule,
                      "text": describe_plan(plan)}
        await request.respond(200, _encode(answer))
