"""The dashboard's aggregation endpoints over a year of ledger rows, on SQLite and PostgreSQL.

Run it as ``python -m bench.dashboard`` (``--help`` for the options) from the repository.

Method
------
* One ledger of ``--rows`` rows (default 1,000,000) spread evenly over the year before now,
  shaped like real traffic: 20 keys, 8 models in two tiers and an embedding model, 6 rules,
  a request in four with a billed losing attempt (hedge or speculation), streamed answers
  with an upstream and a client-seen TTFT, a few errors and cut streams. The rows are made
  by a seeded generator and written with the ledger's own schema (`SQLiteWriter` and
  `PostgresWriter` migrations, so its indexes), in bulk (``executemany`` in SQLite,
  ``COPY`` in PostgreSQL); then the roll-up is built from them as the migration
  that creates it does (`tlproxy.ledger_rollup.rebuild`), its time printed: the writing
  is set-up, not measured. What the roll-up costs the writer is measured apart: the CPU
  time of `ledger_rollup.rollup` per row, over 50,000 of these rows moved into one busy hour
  and rolled up in batches of 256 (printed, and ``rollup_us_per_row`` in the JSON).
* Each query function the endpoints run (`tlproxy.dashboard`: spend, routing, race,
  requests, shadow) is timed on a fresh read-only connection, as an endpoint opens one,
  over two windows: the whole year and the last 7 days (the page's default). ``--repeat``
  runs each; the median and the slowest are reported. `tlproxy report`'s `usage_json`
  (whose TTFT percentiles are computed in Python) is timed beside them for comparison.
* A page load is the view's one or two requests: spend, routing, race (the three charts
  views) or requests and live; "page" rows add up the medians of what a view asks for,
  at the page's hour step and at its day step.
* Beside the wall-clock times, the CPU time of the benchmark's own process (the median of
  ``time.process_time``): for SQLite, which runs in the process, that is all the work, and
  it does not grow when other processes compete for the cores; for PostgreSQL it leaves out
  the server's share.
* PostgreSQL: ``--postgres-url`` names an empty database to fill (its ``ledger`` table is
  dropped and made again); ``--start-postgres`` starts a throwaway server with
  ``tests/integration/postgres_server.py`` (the tests' helper: run from the repository).
  Without either, only SQLite is measured.

Caveats
-------
* Times are wall-clock on whatever else the machine is doing; the report prints the load
  average beside them. The database's caches are warm after the first repeat (the median
  is of warm runs; the slowest is usually the cold one).
* The shadow table is empty here (shadow pairs are a sample, not every request): the shadow
  query is timed for completeness only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec
import trio

from tlproxy.config import Config
from tlproxy.dashboard import Window, race, recent, routing, shadow_pairs, spend
from tlproxy.ledger import LedgerRow, PostgresWriter, SQLiteWriter
from tlproxy.ledger_rollup import FIELDS, TABLE, rebuild, rollup
from tlproxy.report import usage_json

YEAR = 365 * 86400
COLUMNS = LedgerRow.__struct_fields__
MODELS = [("claude-sonnet-4-6", "premium", 3e-3), ("gpt-5.4", "premium", 2.5e-3),
          ("gemini-3-pro-preview", "premium", 2e-3), ("gpt-5-mini", "economy", 4e-4),
          ("gpt-5-nano", "economy", 1e-4), ("claude-haiku-4-5", "economy", 8e-4),
          ("gemini-2.5-flash", "economy", 3e-4)]
RULES = ["first-turn", "tools", "summarize-extract", "structured-output", "default",
         "system-only-warmup"]


def make_rows(count: int, *, now: float, seed: int = 2026) -> Iterator[tuple[Any, ...]]:
    """`count` ledger rows as tuples in `LedgerRow` field order, oldest first."""
    rng = random.Random(seed)
    keys = [f"team-{i:02d}" for i in range(20)]
    start = now - YEAR
    request = 0
    i = 0
    while i < count:
        ts = start + YEAR * i / count
        key = rng.choice(keys)
        rule = rng.choice(RULES)
        if rng.random() < 0.05:
            model, tier, price = "text-embedding-3-small", "embedding", 2e-5
            kind: Literal["chat", "embedding"] = "embedding"
        else:
            model, tier, price = rng.choice(MODELS)
            kind = "chat"
        streamed = kind == "chat" and rng.random() < 0.7
        ttft = rng.lognormvariate(5.5, 0.5) if streamed else None
        status: Literal["ok", "error", "cut"] = (
            "ok" if rng.random() < 0.98 else rng.choice(["error", "cut"]))
        cost = price * rng.uniform(0.5, 2.0)
        row = LedgerRow(
            request_id=f"req_{request:032x}", ts=ts, key=key, kind=kind, tier=tier,
            model=model, provider="sim", rule=rule, prompt_tokens=rng.randint(50, 4000),
            cached_tokens=rng.randint(0, 50), completion_tokens=rng.randint(0, 800),
            cost_usd=cost, ttft_ms=ttft, duration_ms=rng.uniform(200, 4000), status=status,
            winner=True, reference_cost_usd=cost * (1 if tier == "premium" else 6),
            first_token_kind="content" if streamed else None,
            client_ttft_ms=ttft + rng.uniform(2, 40) if ttft is not None else None)
        yield msgspec.structs.astuple(row)
        i += 1
        if i < count and rng.random() < 0.25:  # a billed loser: a hedge or speculation
            loser = msgspec.structs.replace(
                row, model=rng.choice(MODELS)[0], winner=False, hedge=rng.random() < 0.5,
                wasted=True, status="cancelled", reference_cost_usd=0.0, ttft_ms=None,
                client_ttft_ms=None, first_token_kind=None, cost_usd=cost / 3)
            yield msgspec.structs.astuple(loser)
            i += 1
        request += 1


def rollup_cost(now: float, count: int = 50_000) -> float:
    """The writer's CPU time for the roll-up, in µs per ledger row: `count` of the rows
    above, moved into one busy hour (a row every 30 ms), rolled up in batches of 256."""
    rows = [msgspec.structs.replace(LedgerRow(**dict(zip(COLUMNS, values, strict=True))),
                                    ts=now + i * 0.03)
            for i, values in enumerate(make_rows(count, now=now))]
    started = time.process_time()
    for first in range(0, count, 256):
        rollup([getattr(row, field) for field in FIELDS] for row in rows[first:first + 256])
    return (time.process_time() - started) / count * 1e6


def fill_sqlite(path: Path, count: int, now: float) -> None:
    writer = SQLiteWriter(path)
    trio.run(writer.migrate)
    trio.run(writer.aclose)
    import sqlite3

    placeholders = ", ".join("?" * len(COLUMNS))
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(f"INSERT INTO ledger ({', '.join(COLUMNS)}) "
                         f"VALUES ({placeholders})", make_rows(count, now=now))
    rollup_sqlite(path)


def rollup_sqlite(path: Path) -> None:
    """The roll-up of the rows written around the writer, as the migration builds it."""
    import sqlite3

    started = time.perf_counter()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        rebuild(conn.cursor(), "?")
        conn.execute("ANALYZE")
    print(f"sqlite: roll-up built in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def fill_postgres(url: str, count: int, now: float) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS ledger, shadow_pairs, {TABLE}, schema_migrations")
    writer = PostgresWriter(url)
    trio.run(writer.migrate)
    trio.run(writer.aclose)
    with psycopg.connect(url) as conn, conn.cursor() as cursor, cursor.copy(
            f"COPY ledger ({', '.join(COLUMNS)}) FROM STDIN") as copy:
        for row in make_rows(count, now=now):
            copy.write_row(row)
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        rebuild(conn.cursor(), "%s")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ANALYZE ledger; ANALYZE {TABLE}")
    print(f"postgresql: roll-up built in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def queries(config: Config) -> dict[str, Callable[[str, Window], Any]]:
    policies = [("default", config.policy)]
    return {
        "spend (hour, by tier)": lambda s, w: spend(s, window=w, step="hour", by="tier"),
        "spend (day, by tier)": lambda s, w: spend(s, window=w, step="day", by="tier"),
        "spend (day, by model)": lambda s, w: spend(s, window=w, step="day", by="model"),
        "routing (hour)": lambda s, w: routing(s, window=w, step="hour", policies=policies),
        "routing (day)": lambda s, w: routing(s, window=w, step="day", policies=policies),
        "race (hour)": lambda s, w: race(s, window=w, step="hour"),
        "race (day)": lambda s, w: race(s, window=w, step="day"),
        "requests (50 latest)": lambda s, w: recent(s, limit=50),
        "shadow (empty table)": lambda s, w: shadow_pairs(s, window=w),
        "report usage_json (by tier)": lambda s, w: usage_json(
            s, since=w.since, until=w.until, by="tier"),
    }


# What each view of the page asks for on a load (the live view also asks /live, no SQL),
# with the page's step at hour (its default) and at day.
PAGES = {"spend view, hour step": ["spend (hour, by tier)"],
         "routing view, hour step": ["routing (hour)"],
         "race view, hour step": ["race (hour)"],
         "spend view, day step": ["spend (day, by tier)"],
         "routing view, day step": ["routing (day)"],
         "race view, day step": ["race (day)"],
         "live view": ["requests (50 latest)"]}


def measure(source: str, now: float, repeat: int) -> dict[str, dict[str, Any]]:
    windows = {"year": Window(now - YEAR, now + 1), "7 days": Window(now - 7 * 86400, now + 1)}
    results: dict[str, dict[str, Any]] = {}
    for window_name, window in windows.items():
        for name, fn in queries(Config()).items():
            times, cpu = [], []
            for _ in range(repeat):
                started, started_cpu = time.perf_counter(), time.process_time()
                fn(source, window)
                times.append(time.perf_counter() - started)
                cpu.append(time.process_time() - started_cpu)
            results[f"{window_name} | {name}"] = {
                "median_s": statistics.median(times), "max_s": max(times),
                "cpu_s": statistics.median(cpu)}
        for page, parts in PAGES.items():
            results[f"{window_name} | page: {page}"] = {
                "median_s": sum(results[f"{window_name} | {p}"]["median_s"] for p in parts),
                "max_s": None,
                "cpu_s": sum(results[f"{window_name} | {p}"]["cpu_s"] for p in parts)}
    return results


def print_markdown(result: dict[str, Any]) -> None:
    databases = list(result["databases"])
    print(f"rows: {result['rows']:,}; repeat: {result['repeat']}; load average before: "
          f"{result['loadavg_before']}, after: {result['loadavg_after']}")
    print()
    print("| window | query | " + " | ".join(f"{d} median s | {d} max s | {d} CPU s"
                                            for d in databases) + " |")
    print("|---|---|" + "---:|---:|---:|" * len(databases))
    for key in result["databases"][databases[0]]:
        window, name = key.split(" | ", 1)
        cells = []
        for database in databases:
            timing = result["databases"][database][key]
            cells.append(f"{timing['median_s']:.3f}")
            cells.append("-" if timing["max_s"] is None else f"{timing['max_s']:.3f}")
            cells.append(f"{timing['cpu_s']:.3f}")
        print(f"| {window} | {name} | " + " | ".join(cells) + " |")


@contextlib.contextmanager
def _postgres(args: argparse.Namespace) -> Iterator[str | None]:
    if args.postgres_url:
        yield args.postgres_url
    elif args.start_postgres:
        sys.path.insert(0, os.getcwd())
        from tests.integration.postgres_server import postgres_server_sync

        with postgres_server_sync() as server:
            yield server.create_database("bench")
    else:
        yield None


def main(argv: list[str] | None = None) -> int:
    """Time the dashboard's queries over a year of ledger rows."""
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="ledger rows (1000000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per query (5)")
    parser.add_argument("--dir", help="where the SQLite ledger goes (default: the temp dir)")
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database to fill and read")
    parser.add_argument("--start-postgres", action="store_true",
                        help="start a throwaway PostgreSQL server (tests' helper)")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    now = time.time()
    result: dict[str, Any] = {
        "rows": args.rows, "repeat": args.repeat, "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "loadavg_before": os.getloadavg(), "databases": {}}
    result["rollup_us_per_row"] = rollup_cost(now)
    print(f"roll-up: {result['rollup_us_per_row']:.1f} µs of CPU per row", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory, _postgres(args) as url:
        path = Path(directory) / "ledger.db"
        started = time.perf_counter()
        fill_sqlite(path, args.rows, now)
        print(f"sqlite: {args.rows:,} rows written in {time.perf_counter() - started:.1f} s, "
              f"{path.stat().st_size / 1e6:.0f} MB", file=sys.stderr)
        result["databases"]["SQLite"] = measure(str(path), now, args.repeat)
        if url is not None:
            started = time.perf_counter()
            fill_postgres(url, args.rows, now)
            print(f"postgresql: {args.rows:,} rows written in "
                  f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
            result["databases"]["PostgreSQL"] = measure(url, now, args.repeat)
    result["loadavg_after"] = os.getloadavg()
    print_markdown(result)
    if args.out:
        args.out.write_bytes(msgspec.json.format(msgspec.json.encode(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
