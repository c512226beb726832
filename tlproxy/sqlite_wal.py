"""Opening a SQLite file in WAL mode when other processes may be opening it too.

Several worker processes start at once and open the same ledger (or key
store). ``sqlite3.connect(timeout=...)`` installs a busy handler, but SQLite
does not call it in one case that start-up hits: switching a fresh file to
WAL (``PRAGMA journal_mode=WAL``) while another connection holds the write
lock. The switch starts under a read lock, and a reader waiting for a writer
could deadlock, so SQLite answers ``database is locked`` at once instead of
waiting. `open_wal` waits for it: it retries that answer with a short backoff
until ``open_timeout`` has passed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Literal

log = logging.getLogger(__name__)

_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused because another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _BUSY


def open_wal(path: str | os.PathLike[str], *, busy_timeout: float = 5.0,
             open_timeout: float = 30.0,
             isolation_level: Literal["DEFERRED", "EXCLUSIVE", "IMMEDIATE"] | None = "DEFERRED",
             check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection to `path` in WAL mode (or whatever mode the file allows).

    ``busy_timeout`` is each statement's wait for a lock; ``open_timeout`` bounds
    the retries of the WAL switch. Other `sqlite3.Error`s are raised at once.
    ``isolation_level`` and ``check_same_thread`` are `sqlite3.connect`'s, with
    its defaults.
    """
    deadline = time.monotonic() + open_timeout
    delay = 0.005
    while True:
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=isolation_level,
                               check_same_thread=check_same_thread)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.Error as exc:
            conn.close()
            if not is_busy(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
            continue
        if str(mode).lower() != "wal" and os.fspath(path) != ":memory:":
            log.warning("%s: WAL mode refused (journal_mode=%s)", os.fspath(path), mode)
        return conn


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on a connection in autocommit mode, its lock taken up front.

    ``BEGIN IMMEDIATE`` takes the write lock before the first read, so two
    processes that read then write (a migration's version, a key's counter)
    queue for the lock instead of both reading the old value; the busy
    timeout makes the second wait. Rolled back if the body raises.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
