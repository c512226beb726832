"""The ledger: one durable row per upstream attempt, written off the request path.

The problem. Every attempt the proxy makes is billed by its upstream,
winners and losers of the race alike, and a team must be able to answer
"what did we spend, on what, and what did the routing save" from data that
survives a restart. Writing to a database inside the request would put disk
latency (an fsync, a lock held by a report) into every response.

The shape chosen. `Ledger.record` is synchronous and never blocks: it puts
the row on a bounded trio memory channel. One background task
(`Ledger.run`) takes rows off it in batches (up to ``batch_size`` rows, or
whatever arrived within ``flush_interval`` of a batch's first row) and hands
each batch to a `LedgerWriter`, one transaction per batch. The writers run a
blocking DB-API connection in a worker thread, one call at a time.

Options rejected: one transaction per row (an fsync per request); an
unbounded queue (a stalled disk grows memory silently); dropping rows when
the queue is full (the ledger is money: a silent hole in it is worse than a
spike in memory). So when the channel is full, rows go to an overflow list
that the writer drains first, the overflow is counted and a warning is
logged (at most once a second): the bound is where we start shouting, not
where we start losing.

The guarantee: a row passed to `record` before `aclose` returns is written,
unless the database keeps failing during shutdown (then the rows are
counted as ``lost`` and logged, since shutdown cannot wait forever). A write
that fails while serving is retried with backoff, the batch kept in memory.
A batch in the background task's hands when it is cancelled goes back to
the overflow, so `aclose` still writes it.

The schema is versioned: `schema_migrations` holds the versions applied, and
`MIGRATIONS` lists the SQL of each version in order. Opening a ledger applies
the missing ones in one transaction, under a lock (SQLite's ``BEGIN
IMMEDIATE``, a PostgreSQL advisory lock), so several workers starting at
once migrate exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import msgspec
import trio

from . import ledger_rollup
from .config import LedgerConfig
from .ledger_rows import LedgerError, LedgerRow, LedgerStatistics, LedgerWriter
from .shadow import ShadowPair, ShadowResult
from .sqlite_wal import immediate, open_wal

__all__ = [
    "MIGRATIONS",
    "Ledger",
    "LedgerError",
    "LedgerRow",
    "LedgerStatistics",
    "LedgerWriter",
    "PostgresWriter",
    "SQLiteWriter",
    "writer_for",
]

log = logging.getLogger("tlproxy.ledger")


# -- schema ----------------------------------------------------------------

# Each entry is one schema version: its statements, applied in order, in one
# transaction. Append, never edit: a deployed ledger has run the old ones.
# {id}, {real}, {bool} and {bigint} are the dialect's column types; {without_rowid},
# SQLite's clause for a table stored in its primary key's order.
MigrationStep = str | Callable[[Any, str], None]
MIGRATIONS: tuple[tuple[MigrationStep, ...], ...] = (
    (
        """CREATE TABLE ledger (
            id {id},
            request_id TEXT NOT NULL,
            ts {real} NOT NULL,
            key TEXT,
            kind TEXT NOT NULL,
            tier TEXT NOT NULL,
            model TEXT NOT NULL,
            provider TEXT NOT NULL,
            rule TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost_usd {real} NOT NULL,
            estimated {bool} NOT NULL,
            ttft_ms {real},
            duration_ms {real} NOT NULL,
            status TEXT NOT NULL,
            winner {bool} NOT NULL,
            hedge {bool} NOT NULL,
            wasted {bool} NOT NULL,
            reference_cost_usd {real} NOT NULL
        )""",
        "CREATE INDEX ledger_ts ON ledger (ts)",
        "CREATE INDEX ledger_key_ts ON ledger (key, ts)",
        "CREATE INDEX ledger_model_ts ON ledger (model, ts)",
    ),
    (
        """CREATE TABLE shadow_pairs (
            id {id},
            request_id TEXT NOT NULL,
            ts {real} NOT NULL,
            key TEXT,
            rule TEXT NOT NULL,
            prompt TEXT,
            {primary},
            {shadow}
        )""",
        "CREATE INDEX shadow_pairs_rule_ts ON shadow_pairs (rule, ts)",
    ),
    (
        "ALTER TABLE ledger ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "ALTER TABLE ledger ADD COLUMN first_token_kind TEXT",
    ),
    # The client-seen time to first token, beside the winning attempt's own.
    (
        "ALTER TABLE ledger ADD COLUMN client_ttft_ms {real}",
    ),
    # Continuations of answers cut after their first token, and why.
    (
        "ALTER TABLE ledger ADD COLUMN continuation TEXT",
    ),
    # The roll-up the reports read whole days and hours from, filled from the rows
    # already there (a callable step runs with the cursor and the placeholder).
    (*ledger_rollup.MIGRATION, ledger_rollup.backfill),
)

_ROW_COLUMNS = LedgerRow.__struct_fields__
_RESULT_COLUMNS = ShadowResult.__struct_fields__
_PAIR_COLUMNS = ("request_id", "ts", "key", "rule", "prompt",
                 *(f"{side}_{c}" for side in ("primary", "shadow") for c in _RESULT_COLUMNS))


def _result_columns(side: str, types: dict[str, str]) -> str:
    sql = {"model": "TEXT NOT NULL", "text": "TEXT", "ttft_ms": types["real"],
           "duration_ms": f"{types['real']} NOT NULL", "cost_usd": f"{types['real']} NOT NULL",
           "ok": f"{types['bool']} NOT NULL", "error": "TEXT"}
    return ",\n            ".join(f"{side}_{column} {sql[column]}" for column in _RESULT_COLUMNS)


def _pair_values(pair: ShadowPair) -> tuple[Any, ...]:
    return (pair.request_id, pair.ts, pair.key, pair.rule, pair.prompt,
            *msgspec.structs.astuple(pair.primary), *msgspec.structs.astuple(pair.shadow))


def _insert(table: str, columns: Sequence[str], param: str, rows: int = 1) -> str:
    values = f"({', '.join([param] * len(columns))})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([values] * rows)}"


class _ThreadWriter:
    """A blocking DB-API connection driven from trio, one worker-thread call at a time.

    The limiter of one makes the calls strictly sequential, so a connection
    that is not thread-safe (sqlite3) is safe to use from whichever cached
    worker thread trio picks. A call in progress is never abandoned on
    cancellation: a batch is either committed or not started.
    """

    _param: ClassVar[str] = "?"
    _types: ClassVar[Mapping[str, str]] = {
        "id": "INTEGER PRIMARY KEY", "real": "REAL", "bool": "INTEGER", "bigint": "INTEGER",
        "without_rowid": " WITHOUT ROWID"}
    # Parameters one statement may bind: SQLite's compile-time default before
    # 3.32 (the connection's own limit replaces it); PostgreSQL's is 65,535.
    _max_params: int = 999

    def __init__(self) -> None:
        self._limiter = trio.CapacityLimiter(1)
        self._conn: Any = None
        self._insert_pair = _insert("shadow_pairs", _PAIR_COLUMNS, self._param)

    # -- subclass hooks ----------------------------------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _transaction(self, conn: Any) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def _lock_schema(self, cursor: Any) -> None:
        """Serialize migrations across processes (inside the transaction)."""

    def _broken(self, conn: Any) -> bool:
        return False

    # -- the LedgerWriter protocol ----------------------------------------

    async def migrate(self) -> None:
        await self._call(self._migrate_sync)

    async def write(self, rows: list[LedgerRow], pairs: Sequence[ShadowPair] = ()) -> None:
        if rows or pairs:
            await self._call(self._write_sync, rows, pairs)

    async def aclose(self) -> None:
        await self._call(self._close_sync)

    # -- in the worker thread ---------------------------------------------

    async def _call(self, fn: Callable[..., None], *args: Any) -> None:
        await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        conn = self._connection()
        try:
            with self._transaction(conn):
                yield conn.cursor()
        except Exception:
            # A dropped server connection: reconnect on the next call.
            if self._broken(conn):
                self._close_sync()
            raise

    def _migrate_sync(self) -> None:
        types = dict(self._types)
        types["primary"] = _result_columns("primary", types)
        types["shadow"] = _result_columns("shadow", types)
        p = self._param
        with self._cursor() as cursor:
            self._lock_schema(cursor)
            cursor.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                           f"version INTEGER PRIMARY KEY, applied_at {types['real']} NOT NULL)")
            cursor.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            current = int(cursor.fetchone()[0])
            if current > len(MIGRATIONS):
                log.warning("ledger schema version %d is newer than this tlproxy's (%d); "
                            "writing anyway", current, len(MIGRATIONS))
            for version, steps in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                for step in steps:
                    if callable(step):
                        step(cursor, p)
                    else:
                        cursor.execute(step.format(**types))
                cursor.execute(f"INSERT INTO schema_migrations VALUES ({p}, {p})",
                               (version, time.time()))

    def _write_sync(self, rows: list[LedgerRow], pairs: Sequence[ShadowPair]) -> None:
        with self._cursor() as cursor:
            if rows:
                self._insert_rows(cursor, [msgspec.structs.astuple(row) for row in rows])
                # The roll-up in the same transaction: a committed row is in both.
                ledger_rollup.add_rows(cursor, self._param, rows)
            if pairs:
                cursor.executemany(self._insert_pair, [_pair_values(pair) for pair in pairs])

    def _insert_rows(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        """Ledger rows in as few statements as the parameter limit allows.

        Not `executemany`: sqlite3 releases and takes back the GIL for every
        row it steps, and while the event loop keeps the GIL busy each take
        waits for it and switches threads. With a busy loop
        (`python -m bench.ledger --contended 5`) rows written one by one cost
        47 us of CPU each, in one statement per batch 18.
        """
        per = max(1, self._max_params // len(_ROW_COLUMNS))
        for start in range(0, len(rows), per):
            part = rows[start:start + per]
            cursor.execute(_insert("ledger", _ROW_COLUMNS, self._param, len(part)),
                           [value for row in part for value in row])

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class SQLiteWriter(_ThreadWriter):
    """The default ledger: a local SQLite file in WAL mode.

    WAL lets reports read while the proxy writes, and lets several worker
    processes share the file (writers take turns; ``busy_timeout`` makes a
    blocked one wait instead of failing). ``synchronous=NORMAL`` is WAL's
    recommended setting: a committed batch survives the process being
    killed; only a power loss can take the last few batches.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0,
                 open_timeout: float = 30.0, migrate_timeout: float = 600.0) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self.open_timeout = open_timeout
        self.migrate_timeout = migrate_timeout

    def _migrate_sync(self) -> None:
        # Another worker may hold the lock for long, filling the roll-up of a large ledger.
        self._connection().execute(f"PRAGMA busy_timeout = {round(self.migrate_timeout * 1000)}")
        try:
            super()._migrate_sync()
        finally:
            if self._conn is not None:
                self._conn.execute(f"PRAGMA busy_timeout = {round(self.busy_timeout * 1000)}")

    def _connect(self) -> sqlite3.Connection:
        try:
            # Autocommit mode: transactions are explicit (`_transaction`).
            conn = open_wal(self.path, busy_timeout=self.busy_timeout,
                            open_timeout=self.open_timeout, isolation_level=None,
                            check_same_thread=False)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {self.path!r}: {exc}") from exc
        conn.execute("PRAGMA synchronous=NORMAL")
        self._max_params = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        return conn

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        # Two processes migrating at once queue instead of both reading version 0.
        with immediate(conn):
            yield


class PostgresWriter(_ThreadWriter):
    """A PostgreSQL ledger shared by several instances, through psycopg 3.

    psycopg's async API needs asyncio, so its synchronous connection runs in
    a worker thread like SQLite's. psycopg is optional: install
    ``psycopg[binary]`` to use this writer.
    """

    _param: ClassVar[str] = "%s"
    _types: ClassVar[Mapping[str, str]] = {
        "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "real": "DOUBLE PRECISION",
        "bool": "BOOLEAN", "bigint": "BIGINT", "without_rowid": ""}
    _max_params = 65_535
    # Any constant shared by every tlproxy: the advisory lock around migrations.
    _MIGRATION_LOCK = 0x746C70726F7879

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        super().__init__()
        self.url = url
        self.connect_timeout = connect_timeout

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError as exc:
            raise LedgerError("a PostgreSQL ledger needs psycopg: "
                              "pip install 'psycopg[binary]'") from exc
        try:
            return psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout)),
                # A server cut off by the network fails the write within about
                # 30 s (then it is retried) instead of leaving it hanging.
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                tcp_user_timeout=30_000,
                # No server-side prepared statements: they break PgBouncer's
                # transaction pooling, and a batch insert gains little from them.
                prepare_threshold=None)
        except psycopg.Error as exc:
            raise LedgerError(f"cannot connect to the PostgreSQL ledger: {exc}") from exc

    def _transaction(self, conn: Any) -> contextlib.AbstractContextManager[None]:
        return conn.transaction()  # type: ignore[no-any-return]

    def _lock_schema(self, cursor: Any) -> None:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (self._MIGRATION_LOCK,))

    def _broken(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)


def writer_for(config: LedgerConfig) -> LedgerWriter:
    """The writer a `[ledger]` section asks for: PostgreSQL when a URL is set, else SQLite."""
    if config.postgres_url:
        return PostgresWriter(config.postgres_url)
    return SQLiteWriter(config.path)


# -- the queue in front of the writer ---------------------------------------

_Item = LedgerRow | ShadowPair


class Ledger:
    """Rows in, batches out: the bounded, never-lossy queue in front of a writer.

    Run `run` as a background task (``await nursery.start(ledger.run)``,
    which applies migrations first, so a bad ledger path fails at startup),
    call `record` from request handlers, and `aclose` at shutdown, shielded
    from cancellation, after the last request has finished.
    """

    def __init__(
        self,
        writer: LedgerWriter,
        *,
        batch_size: int = 256,
        flush_interval: float = 0.5,
        queue_size: int = 10_000,
    ) -> None:
        self._writer = writer
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self._send, self._receive = trio.open_memory_channel[_Item](max(1, queue_size))
        self._overflow: deque[_Item] = deque()
        self.stats = LedgerStatistics()
        self._migrated = False
        self._running = False
        self._stopped = trio.Event()
        self._closing = False
        self._close_requested = trio.Event()
        self._closed = False
        self._last_warning = -math.inf

    @classmethod
    def from_config(cls, config: LedgerConfig) -> Ledger:
        return cls(writer_for(config), batch_size=config.batch_size,
                   flush_interval=config.flush_interval, queue_size=config.queue_size)

    # -- producers ---------------------------------------------------------

    def record(self, row: LedgerRow) -> None:
        """Queue one attempt's row. Never blocks, never raises, never drops while open."""
        self._put(row)

    def record_shadow(self, pair: ShadowPair) -> None:
        """Queue one shadow comparison; same guarantees as `record`. Fits `Shadow(record=...)`."""
        self._put(pair)

    def _put(self, item: _Item) -> None:
        try:
            if self._closed:
                self.stats.lost += 1
                log.error("ledger: a row arrived after the ledger closed; not written: %s",
                          msgspec.json.encode(item).decode())
                return
            try:
                self._send.send_nowait(item)
                return
            except trio.WouldBlock:
                self.stats.overflowed += 1
                self._warn_overflow()
            except trio.ClosedResourceError:
                pass  # closing: the final flush drains the overflow as well
            self._overflow.append(item)
        except Exception:
            self.stats.lost += 1
            log.exception("ledger: could not queue a row")

    def _warn_overflow(self) -> None:
        # Wall-clock monotonic time, not trio's: this is only log throttling.
        now = time.monotonic()
        if now - self._last_warning >= 1.0:
            self._last_warning = now
            log.warning("ledger: queue full (%d rows): the writer is not keeping up; rows wait "
                        "in memory (%d overflowed so far)", self._receive.statistics().
                        max_buffer_size, self.stats.overflowed)

    # -- the consumer ------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background task: migrate, then write batches until `aclose`."""
        if self._running:
            raise RuntimeError("Ledger.run is already running")
        if self._closing:
            task_status.started()
            return
        await self._migrate()
        self._running = True
        task_status.started()
        try:
            while batch := await self._next_batch():
                await self._write(batch)
        finally:
            self._running = False
            self._stopped.set()

    async def aclose(self) -> None:
        """Stop accepting, write everything still queued, close the writer.

        Call it shielded (``with trio.CancelScope(shield=True)``) at shutdown.
        Works whether or not `run` is still running.
        """
        if self._closing:
            return
        self._closing = True
        self._close_requested.set()
        self._send.close()
        if self._running:
            await self._stopped.wait()
        # Whatever `run` did not get to (it may have been cancelled).
        if self._overflow or self._receive.statistics().current_buffer_used:
            await self._migrate()
            while batch := self._take(self.batch_size):
                await self._write(batch)
        self._closed = True
        await self._writer.aclose()

    def statistics(self) -> LedgerStatistics:
        """A snapshot of the counters, with ``queued`` as of now."""
        snapshot = msgspec.structs.replace(self.stats)
        snapshot.queued = self._receive.statistics().current_buffer_used + len(self._overflow)
        return snapshot

    async def _migrate(self) -> None:
        if not self._migrated:
            await self._writer.migrate()
            self._migrated = True

    def _take(self, limit: int) -> list[_Item]:
        batch: list[_Item] = []
        while self._overflow and len(batch) < limit:
            batch.append(self._overflow.popleft())
        while len(batch) < limit:
            try:
                batch.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return batch

    async def _next_batch(self) -> list[_Item]:
        """The next batch; empty once the ledger is closing and everything is taken."""
        batch = self._take(self.batch_size)
        if not batch:
            try:
                batch.append(await self._receive.receive())
            except trio.EndOfChannel:
                return self._take(self.batch_size)
        try:
            # Rows that arrive within flush_interval of the batch's first row join it.
            with trio.move_on_after(self.flush_interval):
                while len(batch) < self.batch_size:
                    more = self._take(self.batch_size - len(batch))
                    batch.extend(more)
                    if not more:
                        batch.append(await self._receive.receive())
        except trio.EndOfChannel:
            pass
        except BaseException:
            self._overflow.extendleft(reversed(batch))
            raise
        return batch

    async def _write(self, batch: list[_Item]) -> None:
        rows = [item for item in batch if isinstance(item, LedgerRow)]
        pairs = [item for item in batch if not isinstance(item, LedgerRow)]
        delay, failures = 0.1, 0
        try:
            while True:
                try:
                    await self._writer.write(rows, pairs)
                    break
                except Exception:
                    failures += 1
                    self.stats.write_errors += 1
                    if self._closing and failures >= 3:
                        self._give_up(batch)
                        return
                    log.exception("ledger: writing %d rows failed; retrying", len(batch))
                    if self._closing:
                        await trio.sleep(0.1)
                    else:
                        # Closing cuts a long backoff short: shutdown cannot wait 30 s.
                        with trio.move_on_after(delay):
                            await self._close_requested.wait()
                        delay = min(delay * 2, 30.0)
        except BaseException:
            self._overflow.extendleft(reversed(batch))
            raise
        self.stats.written += len(rows)
        self.stats.shadow_written += len(pairs)
        self.stats.batches += 1

    def _give_up(self, batch: list[_Item]) -> None:
        # Shutdown cannot wait for a database that keeps failing. The rows go
        # to the log, one JSON line each, so they can still be replayed.
        lost = [*batch, *self._take(sys.maxsize)]
        self.stats.lost += len(lost)
        log.error("ledger: the database kept failing at shutdown; %d rows not written, "
                  "logged below", len(lost))
        for item in lost:
            log.error("ledger: unwritten %s %s", type(item).__name__,
                      msgspec.json.encode(item).decode())
