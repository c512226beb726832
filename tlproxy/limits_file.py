"""Limits shared by the worker processes of one server, through a SQLite file.

`tlproxy serve --workers N` runs N processes. Limits kept in each one's memory
would each allow a key its full rpm, so N times what the key says. Without a
Redis to share them, the workers share one small SQLite file that the parent
process makes for the run and removes after it: each admission is one write
transaction (``BEGIN IMMEDIATE``: read the key's state, apply the same
arithmetic as `MemoryLimiter`, write it back), so the workers of one machine
see one count and a key's limit holds exactly as written. Several machines
still need Redis (`[limits] redis_url`).

The file holds nothing worth keeping across a restart (the buckets drain in a
minute; budgets are counted again from the ledger's point of view at the next
period), so it is written with ``synchronous=OFF``: a transaction costs a few
tens of microseconds. It runs in a worker thread, one at a time per process,
so a lock held by another process never blocks the event loop. Keys without
limits never touch it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable

import msgspec
import trio

from .limits import KeyLimits, KeyState, Verdict, _Counting, admit_state, settle_state
from .sqlite_wal import immediate, open_wal

__all__ = ["SharedFileLimiter"]

_SCHEMA = "CREATE TABLE IF NOT EXISTS key_state (key TEXT PRIMARY KEY, state BLOB NOT NULL)"
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(KeyState).decode


class SharedFileLimiter(_Counting):
    """Exact limits for every process that opens the same `path`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self._conn: sqlite3.Connection | None = None
        # One transaction at a time per process; the file's lock orders the processes.
        self._thread = trio.CapacityLimiter(1)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = open_wal(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute(_SCHEMA)
            self._conn = conn
        return self._conn

    def _update(self, key: str, change: Callable[[KeyState], Verdict | None]) -> Verdict | None:
        conn = self._connection()
        with immediate(conn):
            row = conn.execute("SELECT state FROM key_state WHERE key = ?", (key,)).fetchone()
            state = _decode(row[0]) if row else KeyState()
            result = change(state)
            conn.execute("INSERT OR REPLACE INTO key_state (key, state) VALUES (?, ?)",
                         (key, _encode(state)))
        return result

    async def admit(
        self, key: str, limits: KeyLimits, *, estimated_tokens: int, now: float
    ) -> Verdict:
        if limits.unlimited:
            return await self._unlimited()

        def change(state: KeyState) -> Verdict:
            return admit_state(state, limits, estimated_tokens=estimated_tokens, now=now)

        verdict = await trio.to_thread.run_sync(self._update, key, change, limiter=self._thread)
        assert verdict is not None
        return self._count(verdict)

    async def settle(
        self, key: str, limits: KeyLimits, *, tokens: int, estimated_tokens: int,
        cost_usd: float, now: float,
    ) -> None:
        if limits.tpm is None and (limits.budget_usd is None or not cost_usd):
            await trio.lowlevel.checkpoint()
            return

        def change(state: KeyState) -> None:
            settle_state(state, limits, tokens=tokens, estimated_tokens=estimated_tokens,
                         cost_usd=cost_usd, now=now)

        await trio.to_thread.run_sync(self._update, key, change, limiter=self._thread)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Opened before the server accepts, so a file that cannot be used stops the start.
        await trio.to_thread.run_sync(self._connection, limiter=self._thread)
        task_status.started()

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._close, limiter=self._thread)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
