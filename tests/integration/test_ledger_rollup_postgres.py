"""The roll-up on PostgreSQL: kept by `PostgresWriter`, equal to the raw rows' sums.

The same oracle as on SQLite (`tests/rollup_oracle.py`), on one database emptied
between examples; and a ledger of the schema before the roll-up, filled, then
migrated, sums the same from the roll-up as from its raw rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import msgspec
import psycopg
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlproxy import ledger as ledger_module
from tlproxy import ledger_rollup
from tlproxy.ledger import MIGRATIONS, LedgerRow, PostgresWriter
from tlproxy.ledger_read import reading_ledger
from tlproxy.report import usage_json
from tlproxy.report_sums import has_rollup

from ..rollup_oracle import assert_window_matches as matches
from ..rollup_oracle import ledger_rows, window_bounds
from .postgres_server import PostgresServer, postgres_server_sync, query, requires_postgres

pytestmark = requires_postgres


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with postgres_server_sync() as running_server:
        yield running_server


@pytest.fixture(scope="module")
def database(server: PostgresServer) -> str:
    url = server.create_database("rollup")
    writer = PostgresWriter(url)
    trio.run(writer.migrate)
    trio.run(writer.aclose)
    return url


def _write(url: str, rows: list[LedgerRow], batches: int) -> None:
    query(url, f"TRUNCATE ledger, {ledger_rollup.TABLE}")
    writer = PostgresWriter(url)
    size = max(1, math.ceil(len(rows) / batches))
    for start in range(0, len(rows), size):
        trio.run(writer.write, rows[start:start + size])
    trio.run(writer.aclose)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rows=ledger_rows(), batches=st.integers(1, 4),
       windows=st.lists(st.tuples(window_bounds(), window_bounds()), min_size=1, max_size=3))
def test_rollup_sums_equal_the_raw_rows(database: str, rows: list[LedgerRow], batches: int,
                                        windows: list[tuple[float | None, float | None]],
                                        ) -> None:
    _write(database, rows, batches)
    with reading_ledger(database) as (conn, dialect):
        assert has_rollup(conn, dialect)
        for since, until in [(None, None), *windows]:
            matches(conn, dialect, rows, since, until)


def test_an_older_ledger_is_rolled_up_when_it_is_migrated(
        server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url = server.create_database("old")
    version = next(v for v, steps in enumerate(MIGRATIONS, start=1)
                   if ledger_rollup.backfill in steps)
    rows = [LedgerRow(request_id=f"r{i}", ts=1_700_000_000.0 + 900 * i,
                      key=None if i % 3 else "a",
                      tier="economy", model=f"m{i % 2}", provider="sim", rule="default",
                      cost_usd=0.001 * i, reference_cost_usd=0.01, ttft_ms=100.0 + i,
                      client_ttft_ms=110.0 + i, winner=i % 4 != 3) for i in range(12)]
    with monkeypatch.context() as patch:
        patch.setattr(ledger_module, "MIGRATIONS", MIGRATIONS[:version - 1])
        _write_old(url, rows)
    with reading_ledger(url) as (conn, dialect):
        assert not has_rollup(conn, dialect)
    raw = {by: usage_json(url, by=by) for by in ("model", "key", "day")}
    writer = PostgresWriter(url)
    trio.run(writer.migrate)
    trio.run(writer.aclose)
    with reading_ledger(url) as (conn, dialect):
        assert has_rollup(conn, dialect)
        matches(conn, dialect, rows, None, None)
        matches(conn, dialect, rows, 1_700_000_000.0 + 1000, 1_700_000_000.0 + 9000)
    assert {by: usage_json(url, by=by) for by in raw} == raw


def _write_old(url: str, rows: list[LedgerRow]) -> None:
    """The schema before the roll-up, and rows as a tlproxy of that version wrote them."""
    writer = PostgresWriter(url)
    trio.run(writer.migrate)
    trio.run(writer.aclose)
    columns = LedgerRow.__struct_fields__
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            f"INSERT INTO ledger ({', '.join(columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))})",
            [msgspec.structs.astuple(row) for row in rows])


def test_writers_sharing_a_database_add_up(database: str) -> None:
    """Several instances write batches that touch the same roll-up rows at once (rows
    arriving in opposite orders): no sum and no histogram count is lost."""
    query(database, f"TRUNCATE ledger, {ledger_rollup.TABLE}")
    base = 1_767_225_600.0
    batches = [[LedgerRow(request_id=f"w{writer}b{batch}r{i}", ts=base + i * 60,
                          key=f"k{(i + writer) % 5}", tier="economy", model=f"m{i % 4}",
                          provider="sim", rule=f"r{i % 3}", cost_usd=0.001,
                          ttft_ms=100.0 + i, client_ttft_ms=120.0 + i)
                for i in (range(40) if writer % 2 else reversed(range(40)))]
               for writer in range(4) for batch in range(5)]

    async def write(rows: list[list[LedgerRow]]) -> None:
        writer = PostgresWriter(database)
        for batch in rows:
            await writer.write(batch)
        await writer.aclose()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for writer in range(4):
                nursery.start_soon(write, batches[writer * 5:(writer + 1) * 5])

    trio.run(main)
    rows = [row for batch in batches for row in batch]
    with reading_ledger(database) as (conn, dialect):
        matches(conn, dialect, rows, None, None)
