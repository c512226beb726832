"""Stored responses: what ``previous_response_id`` continues, and what GET and DELETE read.

A response made with ``store`` (the API's default) is kept in the ledger's
database (the `[ledger]` section's SQLite file, or its PostgreSQL URL), in a
table of its own, ``tlproxy_responses``: the ``response`` object as sent,
this request's input items (``GET /v1/responses/{id}/input_items``) and the
conversation so far as chat messages (input and answer, instructions left
out, as OpenAI does), so a next turn continues it on whatever model the
policy picks for it. Each row belongs to the client key that made it (its
name; "" when the proxy has no keys): a look-up by another key finds
nothing, exactly as an id that never existed, so ids leak nothing.

Rows live `retention` seconds (``[responses] retention_days``); an expired
row is never read, and each save deletes the expired ones (an index on
``expires_at`` keeps that cheap).

The connection is a blocking DB-API one used from trio's worker threads,
one call at a time (a `trio.Lock`), opened on first use; a save is awaited
before the response's last bytes are sent (see `render.py`), which costs a
local SQLite commit. Times are passed in (``now``), never read here.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec
import trio

from ..config import LedgerConfig
from ..errors import ProxyError
from ..sqlite_wal import immediate, open_wal

__all__ = ["ResponseStore", "StoredResponse"]

_T = TypeVar("_T")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

_TABLE = (
    "CREATE TABLE IF NOT EXISTS tlproxy_responses ("
    "id TEXT PRIMARY KEY, key TEXT NOT NULL, created_at {real} NOT NULL, "
    "expires_at {real} NOT NULL, response TEXT NOT NULL, input_items TEXT NOT NULL, "
    "history TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS tlproxy_responses_expires ON tlproxy_responses (expires_at)",
)
# Any constant shared by every tlproxy: the advisory lock around creating the table.
_PG_LOCK = 0x746C7072657370


class StoredResponse(msgspec.Struct, frozen=True):
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]


class ResponseStore:
    """Responses kept in the ledger's database, scoped by client key name."""

    def __init__(self, ledger: LedgerConfig, *, retention: float) -> None:
        self._postgres = ledger.postgres_url
        self._path = ledger.path
        self.retention = retention
        self._conn: Any = None
        self._lock = trio.Lock()

    # -- the public surface -------------------------------------------------------------

    async def save(self, key: str, stored: StoredResponse, *, now: float) -> None:
        response = stored.response
        row = (response["id"], key, now, now + self.retention, _encode(response).decode(),
               _encode(stored.input_items).decode(), _encode(stored.history).decode())
        await self._run(functools.partial(self._save, row, now))

    async def get(self, key: str, response_id: str, *, now: float) -> StoredResponse | None:
        """The response `response_id` of `key`, or None (unknown, expired or another key's)."""
        row = await self._run(functools.partial(self._get, key, response_id, now))
        if row is None:
            return None
        return StoredResponse(_decode(row[0]), _decode(row[1]), _decode(row[2]))

    async def delete(self, key: str, response_id: str, *, now: float) -> bool:
        """Delete `key`'s response `response_id`; whether there was one to delete."""
        return await self._run(functools.partial(self._delete, key, response_id, now))

    async def aclose(self) -> None:
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await trio.to_thread.run_sync(conn.close)

    # -- in the worker thread ------------------------------------------------------------

    async def _run(self, work: Callable[[Any], _T]) -> _T:
        async with self._lock:
            try:
                return await trio.to_thread.run_sync(self._with_connection, work)
            except (sqlite3.Error, OSError) as exc:
                raise _unavailable(exc) from None
            except Exception as exc:
                if type(exc).__module__.startswith("psycopg"):
                    # A broken connection is dropped; the next call opens another.
                    conn, self._conn = self._conn, None
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await trio.to_thread.run_sync(conn.close)
                    raise _unavailable(exc) from None
                raise

    def _with_connection(self, work: Callable[[Any], _T]) -> _T:
        if self._conn is None:
            self._conn = self._connect()
        return work(self._conn)

    def _connect(self) -> Any:
        if self._postgres:
            import psycopg

            pg: Any = psycopg.connect(self._postgres, autocommit=True, connect_timeout=10,
                                   prepare_threshold=None)
            with pg.transaction():
                pg.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))
                for statement in _TABLE:
                    pg.execute(statement.format(real="DOUBLE PRECISION"))
            return pg
        conn = open_wal(self._path, isolation_level=None, check_same_thread=False)
        for statement in _TABLE:
            conn.execute(statement.format(real="REAL"))
        return conn

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self._postgres else statement

    @contextlib.contextmanager
    def _transaction(self, conn: Any) -> Iterator[None]:
        if self._postgres:
            with conn.transaction():
                yield
            return
        with immediate(conn):
            yield

    def _save(self, row: tuple[Any, ...], now: float, conn: Any) -> None:
        with self._transaction(conn):
            conn.execute(self._sql("DELETE FROM tlproxy_responses WHERE expires_at <= ?"),
                         (now,))
            conn.execute(self._sql(
                "INSERT INTO tlproxy_responses (id, key, created_at, expires_at, response, "
                "input_items, history) VALUES (?, ?, ?, ?, ?, ?, ?)"), row)

    def _get(self, key: str, response_id: str, now: float, conn: Any) -> Any:
        cursor = conn.execute(self._sql(
            "SELECT response, input_items, history FROM tlproxy_responses "
            "WHERE id = ? AND key = ? AND expires_at > ?"), (response_id, key, now))
        return cursor.fetchone()

    def _delete(self, key: str, response_id: str, now: float, conn: Any) -> bool:
        cursor = conn.execute(self._sql(
            "DELETE FROM tlproxy_responses WHERE id = ? AND key = ? AND expires_at > ?"),
            (response_id, key, now))
        return bool(cursor.rowcount)


def _unavailable(exc: BaseException) -> ProxyError:
    # The message names the failure's class only: a database URL may hold a password.
    return ProxyError(f"The response store cannot be used ({type(exc).__name__}).",
                      status=503, type="service_unavailable", code="store_unavailable")
