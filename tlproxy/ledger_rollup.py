"""The ledger's roll-up: the report's sums per hour and per day, kept by the ledger's writer.

The problem. The dashboard and `tlproxy report` sum the ledger over a window.
Over a year of rows (a million) every sum reads every row: 3 to 10 s per
view. The sums are additive, so they can be kept as they are written.

The shape chosen. One table, ``ledger_rollup``: per *grouping* (``grp``),
per UTC hour and per UTC day (``span`` 3600 or 86400 seconds, from
``start``), one row per value of the grouping's dimensions (``a``, ``b``,
``c``), holding the report's counts and dollars (`COLUMNS`). The groupings
are what the readers group by (`GROUPINGS`): nothing (``all``), tier, model,
key, rule, first token kind, rule and tier (routing), and status, role and
kind (the race's outcomes). Each ledger row adds to one hour row and one day
row of each grouping, so a year holds a few hundred thousand short rows, and
a grouping's query reads only its own: a year's totals read the days (a few
thousand rows), its hourly series the hours. Options rejected: one row per
hour and every dimension at once (key x model x rule x outcome): with a
hundred requests an hour, nearly every ledger row would be a roll-up row of
its own, and nothing read less.

Who keeps it: the ledger's writer (`tlproxy.ledger`), in the transaction of
each batch (`apply`), so a committed row is always in the roll-up; the
migration that creates the table fills it from the rows already there
(`backfill`). Rows must therefore only be written through the writer.

Percentiles cannot be summed. The rows of grouping ``all`` also hold
histograms of the winners' client-seen TTFTs and of the winning attempts'
own, those of ``model`` of the latter: counts per fixed logarithmic bin
(`ttft_bin`), whose representative value (`bin_value`) is within
`RELATIVE_ERROR` (1 %) of every value in the bin, so a nearest-rank
percentile read from a merged histogram (`hist_percentile`) is within 1 %
of the exact one. A histogram is a JSON object ``{"bin": count}``, merged by
the writer (read, add, write back: the upsert before it holds the row's lock
on PostgreSQL; SQLite's writer holds the database's).

The readers (`tlproxy.report_sums`) take whole days and whole hours from
here and the partial hours at a window's edges from the raw rows.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

__all__ = [
    "COLUMNS",
    "DAY",
    "FIELDS",
    "FLOATS",
    "GROUPINGS",
    "HIST_GROUPINGS",
    "HOUR",
    "MIGRATION",
    "RACE_KINDS",
    "RELATIVE_ERROR",
    "SPANS",
    "TABLE",
    "Hist",
    "Rollup",
    "add_rows",
    "apply",
    "backfill",
    "bin_value",
    "decode_hist",
    "hist_percentile",
    "hist_percentiles",
    "merge_into",
    "rebuild",
    "rollup",
    "start_of",
    "ttft_bin",
]

# The kinds of ledger rows that are a race's attempts (a client's request, however
# it came), as opposed to shadow copies and the classifier's calls: what the
# roll-up and the reports count as race attempts.
RACE_KINDS = ("chat", "responses", "embedding")

TABLE = "ledger_rollup"
HOUR = 3600
DAY = 86400
SPANS = (HOUR, DAY)

# The ledger columns the roll-up reads, in this order (`rollup`'s tuples).
FIELDS = ("ts", "key", "kind", "tier", "model", "rule", "prompt_tokens", "cached_tokens",
          "completion_tokens", "cost_usd", "estimated", "ttft_ms", "status", "winner", "hedge",
          "wasted", "reference_cost_usd", "first_token_kind", "client_ttft_ms")

# The sums, in `tlproxy.report_sums`' order: the report's twelve, then the race's.
# requests counts winner rows: a request has exactly one winner row.
COLUMNS = ("requests", "attempts", "prompt_tokens", "cached_tokens", "completion_tokens",
           "cost_usd", "reference_usd", "wasted_usd", "shadow_usd", "classifier_usd",
           "estimated_usd", "errors", "race_attempts", "hedges", "failed_attempts",
           "ttft_rows")
FLOATS = frozenset({"cost_usd", "reference_usd", "wasted_usd", "shadow_usd",
                     "classifier_usd", "estimated_usd"})

# Grouping name -> the dimensions it holds in a, b, c (names `tlproxy.report_sums` knows).
GROUPINGS: dict[str, tuple[str, ...]] = {
    "all": (),
    "tier": ("tier",),
    "model": ("model",),
    "key": ("key",),
    "rule": ("rule",),
    "first_token": ("first_token",),
    "rule_tier": ("rule", "tier"),
    "outcome": ("status", "role", "kind"),
}
# The groupings whose rows carry TTFT histograms, and which: (client, upstream).
HIST_GROUPINGS: dict[str, tuple[bool, bool]] = {"all": (True, True), "model": (False, True)}

MIGRATION: tuple[str, ...] = (
    f"""CREATE TABLE {TABLE} (
        grp TEXT NOT NULL,
        span INTEGER NOT NULL,
        start {{bigint}} NOT NULL,
        a TEXT NOT NULL,
        b TEXT NOT NULL,
        c TEXT NOT NULL,
        """ + ",\n        ".join(
        f"{c} {{real}} NOT NULL" if c in FLOATS else f"{c} {{bigint}} NOT NULL"
        for c in COLUMNS) + """,
        client_hist TEXT,
        upstream_hist TEXT,
        PRIMARY KEY (grp, span, start, a, b, c)
    ){without_rowid}""",
)

# -- TTFT histograms ----------------------------------------------------------------------

RELATIVE_ERROR = 0.01
_GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_LOG_GAMMA = math.log(_GAMMA)
_SCALE = 2 / (_GAMMA + 1)  # bin i's value: the harmonic middle of gamma^(i-1) and gamma^i
_SMALLEST = 0.001  # ms: a TTFT under a microsecond counts as one

Hist = dict[int, int]
_encode_hist = msgspec.json.Encoder().encode
_decode_hist = msgspec.json.Decoder(dict[int, int]).decode


def ttft_bin(ms: float) -> int:
    """The bin of a TTFT: bin i holds (gamma^(i-1), gamma^i] milliseconds."""
    return math.ceil(math.log(max(ms, _SMALLEST)) / _LOG_GAMMA)


def bin_value(index: int) -> float:
    """A bin's representative value, within `RELATIVE_ERROR` of each value in it."""
    return _SCALE * _GAMMA ** index


def hist_percentile(hist: Hist, percent: int) -> float | None:
    """The nearest-rank percentile (rank ceil(p/100 * n), as `report.percentile`), from bins."""
    return hist_percentiles(hist, (percent,))[0]


def hist_percentiles(hist: Hist, percents: Sequence[int]) -> list[float | None]:
    """`hist_percentile` for each of `percents` (ascending), in one pass over the bins."""
    total = sum(hist.values())
    if not total:
        return [None] * len(percents)
    bins = sorted(hist.items())
    found: list[float | None] = []
    seen, at = 0, -1
    for percent in percents:
        while seen * 100 < percent * total:
            at += 1
            seen += bins[at][1]
        found.append(_SCALE * _GAMMA ** bins[at][0])
    return found


def merge_into(into: Hist, other: Hist) -> Hist:
    for index, count in other.items():
        into[index] = into.get(index, 0) + count
    return into


def decode_hist(text: str | None) -> Hist:
    return _decode_hist(text) if text else {}


# -- from rows to roll-up rows ----------------------------------------------------------

Key = tuple[str, int, int, str, str, str]  # grp, span, start, a, b, c


class Rollup(msgspec.Struct):
    """What a set of ledger rows adds to the roll-up, per row of it."""

    sums: dict[Key, list[Any]]
    hists: dict[Key, tuple[Hist, Hist]]  # client, upstream


def start_of(ts: float, span: int) -> int:
    """The start of the UTC hour or day (`span` seconds) `ts` falls in."""
    return int(ts // span) * span


# A row's dimensions in this order (then "" for a grouping's unused values), and for
# each grouping the positions of its a, b and c (always three: a tuple comes back).
_DIMENSIONS = ("tier", "model", "key", "rule", "first_token", "status", "role", "kind")
_PICKS = tuple(
    (grp, operator.itemgetter(*(_DIMENSIONS.index(d) for d in dims),
                              *[len(_DIMENSIONS)] * (3 - len(dims))), HIST_GROUPINGS.get(grp))
    for grp, dims in GROUPINGS.items())


def rollup(rows: Iterable[Sequence[Any]]) -> Rollup:
    """The roll-up of ledger rows given as tuples of `FIELDS` (pure).

    The writer runs it in its worker thread, holding the GIL, so it is written
    for speed: rows are first added up per hour and combination of dimensions
    (a batch of one busy hour repeats a few of them), then each combination
    into its row of every grouping, for the hour and for the day.
    """
    add = operator.add
    combos: dict[tuple[int, tuple[Any, ...]], list[Any]] = {}
    combo_hists: dict[tuple[int, tuple[Any, ...]], tuple[Hist, Hist]] = {}
    for (ts, key, kind, tier, model, rule, prompt, cached, completion, cost, estimated, ttft,
         status, winner, hedge, wasted, reference, first_token, client) in rows:
        winner, race = bool(winner), kind in RACE_KINDS
        values = (
            1 if winner else 0, 1, prompt, cached, completion, cost,
            reference if winner else 0.0, cost if wasted else 0.0,
            cost if kind == "shadow" else 0.0, cost if kind == "classifier" else 0.0,
            cost if estimated else 0.0, 1 if winner and status != "ok" else 0,
            1 if race else 0, 1 if hedge else 0,
            1 if not winner and race and status == "error" else 0,
            1 if winner and (ttft is not None or client is not None) else 0)
        role = "winner" if winner else "hedge" if hedge else "other"
        combo = (start_of(ts, HOUR), (tier, model, "-" if key is None else key, rule,
                                      "-" if first_token is None else first_token, status,
                                      role, kind, ""))
        total = combos.get(combo)
        combos[combo] = list(values) if total is None else list(map(add, total, values))
        if winner and (client is not None or ttft is not None):
            pair = combo_hists.setdefault(combo, ({}, {}))
            for value, hist in ((client, pair[0]), (ttft, pair[1])):
                if value is not None:
                    index = ttft_bin(value)
                    hist[index] = hist.get(index, 0) + 1
    sums: dict[Key, list[Any]] = {}
    hists: dict[Key, tuple[Hist, Hist]] = {}
    for (hour, dims), summed in combos.items():
        timed = combo_hists.get((hour, dims))
        for span, start in ((HOUR, hour), (DAY, start_of(hour, DAY))):
            for grp, pick, wants in _PICKS:
                at: Key = (grp, span, start, *pick(dims))
                total = sums.get(at)
                sums[at] = list(summed) if total is None else list(map(add, total, summed))
                if wants and timed:
                    pair = hists.setdefault(at, ({}, {}))
                    for wanted, new, hist in zip(wants, timed, pair, strict=True):
                        if wanted:
                            merge_into(hist, new)
    return Rollup(sums, hists)


# -- writing (inside the writer's transaction) -------------------------------------------

def _upsert(param: str) -> str:
    names = ("grp", "span", "start", "a", "b", "c", *COLUMNS)
    return (f"INSERT INTO {TABLE} ({', '.join(names)}) "
            f"VALUES ({', '.join([param] * len(names))}) "
            "ON CONFLICT (grp, span, start, a, b, c) DO UPDATE SET "
            + ", ".join(f"{c} = {TABLE}.{c} + excluded.{c}" for c in COLUMNS))


def apply(cursor: Any, param: str, delta: Rollup) -> None:
    """Add `delta` to the roll-up, inside the caller's transaction."""
    if not delta.sums:
        return
    # In key order: two PostgreSQL writers upserting the same rows lock them in the
    # same order, so they queue rather than deadlock.
    cursor.executemany(_upsert(param), [(*at, *values)
                                        for at, values in sorted(delta.sums.items())])
    where = " AND ".join(f"{c} = {param}" for c in ("grp", "span", "start", "a", "b", "c"))
    for at, (client, upstream) in sorted(delta.hists.items()):
        # The upsert above holds this row's lock until the transaction ends.
        cursor.execute(f"SELECT client_hist, upstream_hist FROM {TABLE} WHERE {where}", at)
        old_client, old_upstream = cursor.fetchone()
        cursor.execute(
            f"UPDATE {TABLE} SET client_hist = {param}, upstream_hist = {param} WHERE {where}",
            (_merged(old_client, client), _merged(old_upstream, upstream), *at))


def add_rows(cursor: Any, param: str, rows: Iterable[Any]) -> None:
    """Add ledger rows (objects with the attributes `FIELDS` names) to the roll-up."""
    apply(cursor, param, rollup([getattr(row, field) for field in FIELDS] for row in rows))


def _merged(old: str | None, new: Hist) -> str | None:
    if not new:
        return old
    return _encode_hist(merge_into(decode_hist(old), new)).decode()


def backfill(cursor: Any, param: str, *, chunk: int = 50_000) -> None:
    """Roll up every row already in the ledger (the migration that creates the table)."""
    reader = cursor.connection.cursor()
    last = -1
    while True:
        reader.execute(f"SELECT id, {', '.join(FIELDS)} FROM ledger WHERE id > {param} "
                       f"ORDER BY id LIMIT {int(chunk)}", (last,))
        rows = reader.fetchall()
        if not rows:
            return
        last = rows[-1][0]
        apply(cursor, param, rollup(row[1:] for row in rows))


def rebuild(cursor: Any, param: str) -> None:
    """Empty the roll-up and fill it again from the ledger (rows written around the writer)."""
    cursor.execute(f"DELETE FROM {TABLE}")
    backfill(cursor, param)
