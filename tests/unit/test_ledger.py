"""The ledger: batching, flush timing, overflow, shutdown flush, SQLite schema and WAL."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
import trio

from tlproxy import ledger as ledger_module
from tlproxy import sqlite_wal
from tlproxy.config import LedgerConfig
from tlproxy.ledger import MIGRATIONS, Ledger, LedgerError, LedgerRow, SQLiteWriter
from tlproxy.shadow import ShadowPair, ShadowResult


class Service(Protocol):
    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    async def aclose(self) -> None: ...


@contextlib.asynccontextmanager
async def running(service: Service) -> AsyncIterator[trio.Nursery]:
    """A Ledger or Shadow with its background task started; closed on the way out."""
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        yield nursery
        await service.aclose()


def row(i: int = 0, **overrides: Any) -> LedgerRow:
    fields: dict[str, Any] = dict(
        request_id=f"req_{i}", ts=1_700_000_000.0 + i, key="team-a", kind="chat",
        tier="economy", model="gpt-5-nano", provider="openai", rule="default",
        prompt_tokens=100, cached_tokens=20, completion_tokens=10, cost_usd=0.0001,
        ttft_ms=150.0, duration_ms=900.0, reference_cost_usd=0.002)
    fields.update(overrides)
    return LedgerRow(**fields)


class MemoryWriter:
    """A LedgerWriter that keeps batches with the (virtual) time they were written."""

    def __init__(self, *, failures: int = 0) -> None:
        self.batches: list[tuple[float, list[LedgerRow], list[ShadowPair]]] = []
        self.failures = failures
        self.migrated = 0
        self.closed = False

    async def migrate(self) -> None:
        self.migrated += 1

    async def write(self, rows: list[LedgerRow], pairs: Sequence[ShadowPair] = ()) -> None:
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("disk I/O error")
        self.batches.append((trio.current_time(), list(rows), list(pairs)))

    async def aclose(self) -> None:
        self.closed = True

    @property
    def rows(self) -> list[LedgerRow]:
        return [r for _, rows, _ in self.batches for r in rows]


def db_rows(path: Path, sql: str = "SELECT request_id FROM ledger ORDER BY id") -> list[Any]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_rows_are_written_in_batches(autojump_clock: trio.testing.MockClock) -> None:
    writer = MemoryWriter()
    ledger = Ledger(writer, batch_size=10, flush_interval=0.5, queue_size=100)
    async with running(ledger):
        for i in range(25):
            ledger.record(row(i))
        await trio.sleep(1)
        assert [(t, len(rows)) for t, rows, _ in writer.batches] == [(0, 10), (0, 10), (0.5, 5)]
    assert [r.request_id for r in writer.rows] == [f"req_{i}" for i in range(25)]
    stats = ledger.statistics()
    assert (stats.written, stats.batches, stats.queued, stats.overflowed) == (25, 3, 0, 0)
    assert writer.migrated == 1 and writer.closed


async def test_partial_batch_waits_flush_interval(autojump_clock: trio.testing.MockClock) -> None:
    writer = MemoryWriter()
    ledger = Ledger(writer, batch_size=100, flush_interval=0.5)
    async with running(ledger):
        ledger.record(row(1))
        await trio.sleep(0.2)
        ledger.record(row(2))  # joins the batch its predecessor opened
        await trio.sleep(0.2999)
        assert writer.batches == []
        await trio.sleep(0.0002)
        assert [(t, len(rows)) for t, rows, _ in writer.batches] == [(0.5, 2)]
        await trio.sleep(1.4999)
        assert trio.current_time() == pytest.approx(2.0)
        ledger.record(row(3))  # a new batch, a new interval
        await trio.sleep(1)
        assert [t for t, _, _ in writer.batches] == pytest.approx([0.5, 2.5])


async def test_aclose_flushes_without_waiting(autojump_clock: trio.testing.MockClock) -> None:
    writer = MemoryWriter()
    ledger = Ledger(writer, batch_size=100, flush_interval=3600)
    async with running(ledger):
        for i in range(7):
            ledger.record(row(i))
        await trio.sleep(1)
        await ledger.aclose()
        assert trio.current_time() == 1
    assert len(writer.rows) == 7 and writer.closed


async def test_aclose_flushes_to_sqlite(tmp_path: Path) -> None:
    ledger = Ledger(SQLiteWriter(tmp_path / "l.db"), batch_size=1000, flush_interval=3600)
    async with running(ledger):
        for i in range(50):
            ledger.record(row(i))
    assert db_rows(tmp_path / "l.db") == [(f"req_{i}",) for i in range(50)]


async def test_batch_of_a_cancelled_run_is_written_by_aclose(
    autojump_clock: trio.testing.MockClock,
) -> None:
    writer = MemoryWriter()
    ledger = Ledger(writer, batch_size=100, flush_interval=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        for i in range(3):
            ledger.record(row(i))
        await trio.sleep(1)  # the run task holds the three, waiting for more
        nursery.cancel_scope.cancel()
    ledger.record(row(3))
    assert writer.rows == []
    await ledger.aclose()
    assert sorted(r.request_id for r in writer.rows) == [f"req_{i}" for i in range(4)]


async def test_aclose_writes_when_run_never_started(tmp_path: Path) -> None:
    ledger = Ledger(SQLiteWriter(tmp_path / "l.db"))
    ledger.record(row(1))
    await ledger.aclose()
    assert db_rows(tmp_path / "l.db") == [("req_1",)]


async def test_overflow_is_kept_not_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = Ledger(SQLiteWriter(tmp_path / "l.db"), batch_size=64, queue_size=2)
    with caplog.at_level(logging.WARNING, logger="tlproxy.ledger"):
        async with running(ledger):
            for i in range(1000):  # no checkpoint: the writer cannot take any
                ledger.record(row(i))
            stats = ledger.statistics()
            # The first row went straight to the waiting run task; two fill
            # the channel; the other 997 overflow.
            assert (stats.queued, stats.overflowed) == (999, 997)
    assert sorted(r[0] for r in db_rows(tmp_path / "l.db")) == sorted(
        f"req_{i}" for i in range(1000))
    assert ledger.statistics().written == 1000 and ledger.statistics().lost == 0
    full = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(full) == 1  # at most one warning a second


async def test_failed_write_is_retried(autojump_clock: trio.testing.MockClock,
                                       caplog: pytest.LogCaptureFixture) -> None:
    writer = MemoryWriter(failures=2)
    ledger = Ledger(writer, batch_size=10, flush_interval=0.1)
    with caplog.at_level(logging.CRITICAL, logger="tlproxy.ledger"):
        async with running(ledger):
            ledger.record(row(1))
            await trio.sleep(1)
            assert [r.request_id for r in writer.rows] == ["req_1"]
    assert ledger.statistics().write_errors == 2


async def test_shutdown_gives_up_on_a_broken_database(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    writer = MemoryWriter(failures=10**6)
    ledger = Ledger(writer, batch_size=2)
    with caplog.at_level(logging.CRITICAL, logger="tlproxy.ledger"):
        for i in range(5):
            ledger.record(row(i))
        await ledger.aclose()
    assert ledger.statistics().lost == 5


async def test_shutdown_cuts_a_long_backoff_short(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = Ledger(MemoryWriter(failures=10**6), flush_interval=0.1)
    with caplog.at_level(logging.CRITICAL, logger="tlproxy.ledger"):
        async with running(ledger):
            ledger.record(row(1))
            await trio.sleep(60)  # backing off: 0.1, 0.2, ... 30 s between attempts
            closing = trio.current_time()
            await ledger.aclose()
            assert trio.current_time() - closing < 1
    assert ledger.statistics().lost == 1


async def test_record_after_close_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger(MemoryWriter())
    await ledger.aclose()
    with caplog.at_level(logging.CRITICAL, logger="tlproxy.ledger"):
        ledger.record(row(1))
    assert ledger.statistics().lost == 1


async def test_migrations_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    for i in range(2):
        ledger = Ledger(SQLiteWriter(path))
        async with running(ledger):
            ledger.record(row(i))
    versions = db_rows(path, "SELECT version FROM schema_migrations ORDER BY version")
    assert versions == [(v,) for v in range(1, len(MIGRATIONS) + 1)]
    assert db_rows(path) == [("req_0",), ("req_1",)]


async def test_concurrent_migrations_apply_once(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    writers = [SQLiteWriter(path) for _ in range(4)]
    async with trio.open_nursery() as nursery:
        for writer in writers:
            nursery.start_soon(writer.migrate)
    for writer in writers:
        await writer.aclose()
    assert len(db_rows(path, "SELECT version FROM schema_migrations")) == len(MIGRATIONS)


@contextlib.contextmanager
def write_locked(path: Path) -> Iterator[Callable[[], object]]:
    """A fresh rollback-journal file whose write lock another connection holds.

    Yields the function that commits and so releases the lock. While it is held,
    SQLite refuses a switch to WAL at once, without calling the busy handler:
    what a worker starting beside one that is creating the ledger runs into.
    """
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO other VALUES (1)")
    try:
        yield lambda: holder.execute("COMMIT")
    finally:
        holder.close()


def test_sqlite_refuses_the_wal_switch_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with write_locked(path), pytest.raises(sqlite3.OperationalError, match="locked"):
        sqlite3.connect(path, timeout=30).execute("PRAGMA journal_mode=WAL")


async def test_opening_waits_out_a_writer_holding_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "l.db"
    writer = SQLiteWriter(path)
    # Seen, not changed: when the writer's thread is first refused by the lock.
    refused = threading.Event()
    is_busy = sqlite_wal.is_busy

    def watched(exc: sqlite3.Error) -> bool:
        busy = is_busy(exc)
        if busy:
            refused.set()
        return busy

    monkeypatch.setattr(sqlite_wal, "is_busy", watched)
    with write_locked(path) as release:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.migrate)
            # The writer's thread has met the lock (and will retry): release it.
            assert await trio.to_thread.run_sync(refused.wait, 30.0)  # a hang guard
            release()
    await writer.aclose()
    assert db_rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert len(db_rows(path, "SELECT version FROM schema_migrations")) == len(MIGRATIONS)


async def test_opening_gives_up_after_open_timeout(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    writer = SQLiteWriter(path, open_timeout=0.05)
    with write_locked(path), pytest.raises(LedgerError, match="database is locked"):
        await writer.migrate()
    await writer.aclose()


async def test_schema_has_indexes_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    writer = SQLiteWriter(path)
    await writer.migrate()
    await writer.aclose()
    assert db_rows(path, "PRAGMA journal_mode") == [("wal",)]
    indexes = {name for (name,) in db_rows(
        path, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger'")}
    assert {"ledger_ts", "ledger_key_ts", "ledger_model_ts"} <= indexes
    columns = [c[1] for c in db_rows(path, "PRAGMA table_info(ledger)")]
    assert columns == ["id", *LedgerRow.__struct_fields__]


async def test_rows_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    original = row(7, key=None, estimated=True, ttft_ms=None, status="cut", winner=False,
                   hedge=True, wasted=True, reference_cost_usd=0.0, first_token_kind="reasoning")
    writer = SQLiteWriter(path)
    await writer.migrate()
    await writer.write([original])
    await writer.aclose()
    (stored,) = db_rows(path, f"SELECT {', '.join(LedgerRow.__struct_fields__)} FROM ledger")
    assert LedgerRow(**dict(zip(LedgerRow.__struct_fields__, stored, strict=True)),
                     ) == original


@pytest.mark.parametrize("rows_per_statement", [1, 3, 10, 1000])
async def test_a_batch_is_written_whole_whatever_the_parameter_limit(
        tmp_path: Path, rows_per_statement: int) -> None:
    # A batch goes in as few multi-row statements as the limit allows: one row
    # per statement, several, exactly the batch, or far more than it.
    path = tmp_path / "l.db"
    originals = [row(i, tier="premium" if i % 2 else "economy") for i in range(10)]
    writer = SQLiteWriter(path)
    await writer.migrate()
    assert writer._max_params >= 999  # the connection's own limit, read when it opened
    writer._max_params = rows_per_statement * len(LedgerRow.__struct_fields__)
    await writer.write(originals)
    await writer.aclose()
    stored = db_rows(path, f"SELECT {', '.join(LedgerRow.__struct_fields__)} FROM ledger "
                           "ORDER BY id")
    assert [LedgerRow(**dict(zip(LedgerRow.__struct_fields__, r, strict=True)))
            for r in stored] == originals


def version_before(column: str) -> int:
    """The last schema version without `column`."""
    return next(version for version, steps in enumerate(MIGRATIONS)
                if any(isinstance(step, str) and column in step for step in steps))


async def ledger_of_version(path: Path, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQLite ledger as a tlproxy of schema `version` left it, with one chat row."""
    with monkeypatch.context() as patch:
        patch.setattr(ledger_module, "MIGRATIONS", MIGRATIONS[:version])
        writer = SQLiteWriter(path)
        await writer.migrate()
        await writer.aclose()
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(
                "INSERT INTO ledger (request_id, ts, key, kind, tier, model, provider, rule, "
                "prompt_tokens, cached_tokens, completion_tokens, cost_usd, estimated, ttft_ms, "
                "duration_ms, status, winner, hedge, wasted, reference_cost_usd) VALUES "
                "('req_old', 1700000000.0, 'team-a', 'chat', 'economy', 'gpt-5-nano', "
                "'openai', 'default', 100, 0, 10, 0.0001, 0, 120.0, 900.0, 'ok', 1, 0, 0, 0.002)")
    finally:
        conn.close()


async def test_an_older_ledger_gains_the_first_token_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "l.db"
    await ledger_of_version(path, version_before("first_token_kind"), monkeypatch)
    ledger = Ledger(SQLiteWriter(path))
    async with running(ledger):
        ledger.record(row(1, first_token_kind="reasoning"))
    assert db_rows(path, "SELECT request_id, first_token_kind FROM ledger ORDER BY id") == [
        ("req_old", None), ("req_1", "reasoning")]
    versions = db_rows(path, "SELECT version FROM schema_migrations ORDER BY version")
    assert versions == [(v,) for v in range(1, len(MIGRATIONS) + 1)]


async def test_shadow_pairs_share_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    ledger = Ledger(SQLiteWriter(path))
    pair = ShadowPair("req_1", "first-turn",
                      ShadowResult("claude-sonnet-4-6", "Paris.", 300.0, 900.0, 0.002),
                      ShadowResult("gpt-5-nano", None, None, 50.0, 0.0, False, "boom"),
                      ts=1.0, key="team-a", prompt="Capital of France?")
    async with running(ledger):
        ledger.record(row(1))
        ledger.record_shadow(pair)
    assert db_rows(path, "SELECT request_id, rule, prompt, primary_model, primary_text, "
                   "shadow_model, shadow_ok, shadow_error FROM shadow_pairs") == [
        ("req_1", "first-turn", "Capital of France?", "claude-sonnet-4-6", "Paris.",
         "gpt-5-nano", 0, "boom")]
    stats = ledger.statistics()
    assert (stats.written, stats.shadow_written, stats.batches) == (1, 1, 1)


async def test_bad_path_fails_at_start(tmp_path: Path) -> None:
    ledger = Ledger.from_config(LedgerConfig(path=str(tmp_path / "missing" / "l.db")))
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        await ledger.run()
