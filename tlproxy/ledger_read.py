"""Reading either ledger: sources, dialects, read-only connections, time bounds.

`tlproxy.ledger` writes a SQLite file (WAL lets readers and the writer work
at once) or a PostgreSQL database; the reports and the dashboard read it,
read-only and while the proxy is running, named by a *ledger source*: a path
or a ``postgresql://`` URL (`connect_ledger`). Both run the same SQL; the
placeholder and the UTC day are the only differences (`Dialect`).

A PostgreSQL URL may hold a password: no message raised here contains it
(`LedgerReadError`, `redact`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

__all__ = [
    "POSTGRES",
    "SQLITE",
    "Dialect",
    "LedgerReadError",
    "LedgerSource",
    "TimeArg",
    "column_or_null",
    "connect_ledger",
    "connect_readonly",
    "dialect_of",
    "is_postgres_url",
    "parse_time",
    "reading_ledger",
    "redact",
    "table_exists",
    "time_window",
]

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

TimeArg = float | dt.datetime | str | None


def parse_time(value: TimeArg, *, now: float | None = None) -> float | None:
    """A time bound as unix seconds: a number, a datetime, an ISO 8601 date or
    datetime (naive means UTC), or a span back from now such as ``24h`` or ``7d``."""
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, str):
        match = _RELATIVE.fullmatch(value.strip())
        if match:
            now = time.time() if now is None else now
            return now - float(match.group(1)) * _UNITS[match.group(2)]
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is neither an ISO 8601 time nor a span like 24h") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


# -- reading either ledger ---------------------------------------------------

LedgerSource = str | os.PathLike[str]


class LedgerReadError(Exception):
    """The ledger's database cannot be reached or read. The message never holds a password."""


class Dialect(NamedTuple):
    """What the reports' SQL needs to know about the database it runs on."""

    name: str
    param: str  # the DB-API placeholder
    day: str  # the UTC date of ``ts`` as YYYY-MM-DD

    def day_of(self, column: str) -> str:
        """The UTC date of a unix-seconds `column` as YYYY-MM-DD."""
        if self.name == "postgresql":
            return f"to_char(to_timestamp({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        return f"date({column}, 'unixepoch')"

    def bucket(self, column: str, seconds: int) -> str:
        """The start (unix seconds, an integer) of the UTC hour or day `column` falls in."""
        if self.name == "postgresql":
            return f"CAST(floor({column} / {seconds}) AS BIGINT) * {seconds}"
        # Truncation: times are never negative.
        return f"CAST({column} / {seconds} AS INTEGER) * {seconds}"


SQLITE = Dialect("sqlite", "?", "date(ts, 'unixepoch')")
POSTGRES = Dialect("postgresql", "%s",
                   "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')")

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<netloc>[^/?#]*)")
_PASSWORD_PARAM = re.compile(r"[?&]([^=&#]*password[^=&#]*)=([^&#]*)", re.IGNORECASE)
_CONNECT_TIMEOUT = 10


def is_postgres_url(source: LedgerSource) -> bool:
    return isinstance(source, str) and source.lower().startswith(_POSTGRES_SCHEMES)


def dialect_of(source: LedgerSource) -> Dialect:
    """The dialect of a ledger source, without connecting; ValueError for another URL scheme."""
    if is_postgres_url(source):
        return POSTGRES
    if isinstance(source, str) and (url := _URL.match(source)):
        # Not a path: a typo'd or unsupported URL, which may hold a password.
        raise ValueError(f"a ledger is a SQLite path or a postgresql:// URL, not a "
                         f"{url.group('scheme')}:// URL")
    return SQLITE


def _secrets(url: str) -> list[str]:
    """The passwords in a URL (user info and query), as written and percent-decoded."""
    found: list[str] = []
    if match := _URL.match(url):
        userinfo = match.group("netloc").rpartition("@")[0]
        found.append(userinfo.partition(":")[2])
    found += [value for _, value in _PASSWORD_PARAM.findall(url)]
    found += [unquote(value) for value in found]
    return sorted({value for value in found if value}, key=len, reverse=True)


def redact(text: str, url: str) -> str:
    """`text` with every password of `url` replaced by ``***``."""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def connect_readonly(db_path: LedgerSource) -> sqlite3.Connection:
    """Open a SQLite ledger read-only; FileNotFoundError when there is none (never makes one)."""
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"no ledger at {path}")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _connect_postgres(url: str) -> Any:
    try:
        import psycopg
    except ImportError:
        raise LedgerReadError("a PostgreSQL ledger needs psycopg: "
                              "pip install 'psycopg[binary]'") from None
    try:
        # The writer's settings (tlproxy.ledger.PostgresWriter): a server cut off
        # by the network fails the report in about 30 s rather than hanging
        # it, and no server-side prepared statements, for PgBouncer's
        # transaction pooling.
        conn = psycopg.connect(
            url, connect_timeout=_CONNECT_TIMEOUT,
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
            tcp_user_timeout=30_000, prepare_threshold=None)
    except psycopg.Error as exc:
        # psycopg names the host and the user, not the password; mask it anyway,
        # and drop the chained exception, which a traceback would print.
        raise LedgerReadError(
            redact(f"cannot connect to the PostgreSQL ledger: {exc}".rstrip(), url)) from None
    # Every transaction psycopg begins is BEGIN READ ONLY ISOLATION LEVEL
    # REPEATABLE READ: the server refuses writes, and one report's queries
    # see one snapshot.
    conn.read_only = True
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    return conn


def connect_ledger(source: LedgerSource) -> tuple[Any, Dialect]:
    """A read-only DB-API connection to a ledger source, and the dialect to write its SQL in.

    `source` is a SQLite path or a ``postgresql://`` (``postgres://``) URL. A
    missing SQLite file raises FileNotFoundError (none is ever created); a
    PostgreSQL server that cannot be reached, LedgerReadError. The queries
    run on one connection read one snapshot of the ledger.
    """
    dialect = dialect_of(source)
    if dialect is POSTGRES:
        return _connect_postgres(str(source)), dialect
    conn = connect_readonly(source)
    try:
        conn.execute("BEGIN")  # the snapshot starts at the first read
    except sqlite3.Error as exc:
        conn.close()
        raise LedgerReadError(f"cannot read the ledger {source}: {exc}") from exc
    return conn, dialect


@contextlib.contextmanager
def reading_ledger(source: LedgerSource) -> Iterator[tuple[Any, Dialect]]:
    """`connect_ledger` for a ``with`` block: closed at its end, and the database's
    errors (a missing table, a dropped connection) raised as LedgerReadError."""
    conn, dialect = connect_ledger(source)
    try:
        yield conn, dialect
    except Exception as exc:
        if isinstance(exc, sqlite3.Error):
            raise LedgerReadError(f"cannot read the ledger {source}: {exc}") from exc
        psycopg = sys.modules.get("psycopg")
        if psycopg is not None and isinstance(exc, psycopg.Error):
            # The server's message without the SQL excerpt ("LINE 12: ...") under it.
            message = exc.diag.message_primary or str(exc).strip()
            raise LedgerReadError(
                redact(f"cannot read the PostgreSQL ledger: {message}", str(source))) from None
        raise
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()  # end the read transaction cleanly (a pooler sees it end)
        conn.close()


def time_window(since: TimeArg, until: TimeArg, param: str = "?") -> tuple[str, list[float]]:
    """A WHERE clause on ``ts`` and its parameters, half-open: since <= ts < until.

    `param` is the placeholder (`Dialect.param`)."""
    now = time.time()
    clauses, params = ["1 = 1"], []
    for op, value in ((">=", since), ("<", until)):
        bound = parse_time(value, now=now)
        if bound is not None:
            clauses.append(f"ts {op} {param}")
            params.append(bound)
    return " AND ".join(clauses), params



def column_or_null(cursor: Any, name: str) -> str:
    """`name`, or ``NULL`` in a ledger written before that column was kept.

    A report only reads: it cannot migrate an older ledger, so it asks which
    columns there are (one empty SELECT, the same SQL on both databases).
    """
    cursor.execute("SELECT * FROM ledger WHERE 1 = 0")
    names = {column[0] for column in cursor.description}
    cursor.fetchall()
    return name if name in names else "NULL"



def table_exists(cursor: Any, dialect: Dialect, name: str) -> bool:
    """Whether the ledger's database has a table `name` (a ledger of an older schema may
    not) that this connection may read (a PostgreSQL role granted only some tables)."""
    if dialect.name == "postgresql":
        cursor.execute("SELECT CASE WHEN to_regclass(%s) IS NULL THEN false "
                       "ELSE has_table_privilege(%s, 'SELECT') END", (name, name))
    else:
        cursor.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                       (name,))
    return bool(cursor.fetchone()[0])
