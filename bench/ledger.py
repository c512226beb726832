"""Ledger throughput: rows per second the SQLite writer sustains behind ``Ledger.record``.

Run it as ``python -m bench.ledger`` (``--help`` for the options).

Method
------
* A `Ledger` over a `SQLiteWriter` on a fresh file in a temporary directory (WAL,
  ``synchronous=NORMAL``, the proxy's settings), its background task started as the proxy
  starts it.
* A producer task records ``--rows`` pre-built rows as fast as it can, yielding to trio every
  ``--burst`` rows (request handlers finishing in a burst). The clock runs from the first
  ``record`` until ``Ledger.aclose`` has committed the last row: rows per second is what
  the writer sustains when it is the bottleneck, batching included.
* Separately, the cost of one ``record`` call on the request path: ``--rows`` calls into a
  queue large enough to hold them, with no writer running, timed as a whole.
* ``--contended SECONDS``: the writer's CPU per row while the event loop is busy, as in a
  proxy under load. A task keeps the loop busy with Python work (yielding to trio between
  slices of about 0.1 ms) for that long, once while rows are recorded at ``--rate`` rows per
  second and once without; the difference in the process's CPU time, divided by the rows, is
  what each row cost (the writer's thread and its contention for the GIL with the loop). The
  pair is measured ``--repeat`` times; the median is reported.
* Each ``--batch-size`` is measured ``--repeat`` times; the median run is reported, with the
  process's CPU time (both threads): rows per CPU-second moves less than rows per second when
  other processes compete for the cores.

Caveats
-------
* The writer's thread and the producer share the GIL: on a busy proxy the writer competes with
  request handling, so the proxy's own rows-per-second ceiling is lower than this figure; the
  figure says how much headroom the ledger has, not what the proxy serves.
* A file on tmpfs is faster than on a disk: ``--dir`` puts it where the ledger would live.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import trio

from tlproxy.ledger import Ledger, LedgerRow, SQLiteWriter


def make_rows(count: int) -> list[LedgerRow]:
    """Rows shaped like real ones: a winner and, every fourth request, a billed loser."""
    now = time.time()
    return [
        LedgerRow(request_id=f"req_{i // 2:032x}", ts=now + i * 1e-3, key="team-a",
                  kind="chat", tier="economy", model="gpt-5-mini", provider="openai",
                  rule="summarize-extract", prompt_tokens=1200 + i % 500, cached_tokens=256,
                  completion_tokens=180, cost_usd=0.00065, ttft_ms=240.0 + i % 97,
                  duration_ms=1900.0, status="ok" if i % 4 else "cancelled",
                  winner=bool(i % 4), hedge=not i % 4, wasted=not i % 4,
                  reference_cost_usd=0.0063 if i % 4 else 0.0)
        for i in range(count)
    ]


async def sustained(rows: list[LedgerRow], path: Path, *, batch_size: int, queue_size: int,
                    burst: int) -> dict[str, Any]:
    ledger = Ledger(SQLiteWriter(path), batch_size=batch_size, flush_interval=0.5,
                    queue_size=queue_size)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        started, cpu_started = time.perf_counter(), time.process_time()
        for index, row in enumerate(rows, start=1):
            ledger.record(row)
            if index % burst == 0:
                await trio.lowlevel.checkpoint()
        recorded = time.perf_counter()
        await ledger.aclose()  # returns once every row is committed
        flushed, cpu = time.perf_counter(), time.process_time() - cpu_started
    stats = ledger.statistics()
    assert stats.written == len(rows), stats
    elapsed = flushed - started
    return {
        "rows": len(rows),
        "batch_size": batch_size,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(len(rows) / elapsed),
        # CPU of this process, both threads: a figure less sensitive to a busy machine.
        "cpu_s": round(cpu, 3),
        "rows_per_cpu_s": round(len(rows) / cpu),
        "record_phase_s": round(recorded - started, 3),
        "batches": stats.batches,
        "mean_batch": round(stats.written / max(1, stats.batches), 1),
        "overflowed": stats.overflowed,
        "db_bytes": sum(p.stat().st_size for p in path.parent.glob(path.name + "*")),
    }


async def record_cost(rows: list[LedgerRow]) -> float:
    """Nanoseconds per `record` call: the whole of the ledger's cost on the request path."""
    ledger = Ledger(SQLiteWriter(":memory:"), queue_size=len(rows) + 1)
    started = time.perf_counter_ns()
    for row in rows:
        ledger.record(row)
    cost = (time.perf_counter_ns() - started) / len(rows)
    await ledger.aclose()
    return cost


async def _busy(until: float) -> None:
    """Python work on the event loop until `until` (perf_counter), yielding between slices."""
    value = 0
    while time.perf_counter() < until:
        for _ in range(100):
            value += len(str(value))
        await trio.lowlevel.checkpoint()


async def contended_once(rows: list[LedgerRow], path: Path | None, *, seconds: float,
                         rate: float) -> float:
    """CPU seconds of this process over `seconds` of a busy loop, recording `rows` at `rate`
    rows per second into a ledger at `path` (None: no ledger, nothing recorded)."""
    ledger = Ledger(SQLiteWriter(path)) if path is not None else None
    async with trio.open_nursery() as nursery:
        if ledger is not None:
            await nursery.start(ledger.run)
        cpu_started = time.process_time()
        started = time.perf_counter()
        nursery.start_soon(_busy, started + seconds)
        if ledger is not None:
            for index, row in enumerate(rows):
                await trio.sleep(max(0.0, started + index / rate - time.perf_counter()))
                ledger.record(row)
        await trio.sleep(max(0.0, started + seconds - time.perf_counter()))
        if ledger is not None:
            await ledger.aclose()
            assert ledger.statistics().written == len(rows)
        return time.process_time() - cpu_started


async def contended(rows: list[LedgerRow], tmp: str, *, seconds: float, rate: float,
                    repeat: int) -> dict[str, Any]:
    count = min(len(rows), int(seconds * rate * 0.9))  # all recorded well within the window
    costs = []
    for attempt in range(repeat):
        with_ledger = await contended_once(rows[:count], Path(tmp) / f"busy-{attempt}.db",
                                           seconds=seconds, rate=rate)
        without = await contended_once([], None, seconds=seconds, rate=rate)
        costs.append((with_ledger - without) / count * 1e6)
    return {"rows": count, "seconds": seconds, "rate": rate,
            "us_per_row": [round(c, 1) for c in costs],
            "median_us_per_row": round(statistics.median(costs), 1)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = make_rows(args.rows)
    results = []
    busy = None
    with tempfile.TemporaryDirectory(prefix="tlproxy-ledger-", dir=args.dir) as tmp:
        if args.contended:
            busy = await contended(rows, tmp, seconds=args.contended, rate=args.rate,
                                   repeat=args.repeat)
        for batch_size in args.batch_size:
            runs = []
            for attempt in range(args.repeat):
                path = Path(tmp) / f"ledger-{batch_size}-{attempt}.db"
                runs.append(await sustained(rows, path, batch_size=batch_size,
                                            queue_size=args.queue_size, burst=args.burst))
            median = statistics.median_low(r["rows_per_s"] for r in runs)
            results.append(next(r for r in runs if r["rows_per_s"] == median))
    return {
        "tool": "bench.ledger",
        "command": ["python", "-m", "bench.ledger", *args.argv],
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "sqlite": __import__("sqlite3").sqlite_version,
                    "platform": platform.platform()},
        "record_ns": round(await record_cost(rows)),
        "sustained": results,
        "contended": busy,
    }


def print_result(result: dict[str, Any]) -> None:
    print(f"record(): {result['record_ns']} ns per call on the request path")
    busy = result.get("contended")
    if busy:
        print(f"with a busy event loop: {busy['median_us_per_row']} us of CPU per row "
              f"(median; runs {busy['us_per_row']}; {busy['rows']} rows at {busy['rate']:g}/s "
              f"over {busy['seconds']:g} s)")
    print(f"{'batch':>6} {'rows':>8} {'seconds':>8} {'rows/s':>9} {'rows/cpu-s':>10} "
          f"{'batches':>8} {'mean batch':>10} {'overflowed':>10}")
    for r in result["sustained"]:
        print(f"{r['batch_size']:>6} {r['rows']:>8} {r['seconds']:>8} {r['rows_per_s']:>9,} "
              f"{r['rows_per_cpu_s']:>10,} {r['batches']:>8} {r['mean_batch']:>10} "
              f"{r['overflowed']:>10}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows per run (200000)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[256],
                        help="Ledger batch_size; several values run one after the other")
    parser.add_argument("--queue-size", type=int, default=10_000, help="Ledger queue_size")
    parser.add_argument("--burst", type=int, default=64,
                        help="rows recorded between two yields to trio (64)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per batch size (3)")
    parser.add_argument("--contended", type=float, default=0.0, metavar="SECONDS",
                        help="also measure the CPU per row with a busy event loop, for this "
                             "many seconds per run (0: not)")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="rows per second recorded during --contended (1000)")
    parser.add_argument("--dir", help="where the ledger file goes (default: the temp dir)")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    args.argv = argv
    result = trio.run(run, args)
    print_result(result)
    if args.out is not None:
        args.out.write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
