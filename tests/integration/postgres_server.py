"""Throwaway PostgreSQL servers for integration tests.

Each server is a `postgres` child process on a loopback port of its own,
its cluster made by `initdb` (trust authentication, one superuser) in a
fresh temporary directory that also holds its unix socket and its log; it
is stopped (a fast shutdown, then SIGKILL) and the directory removed when
the context exits, whatever happened inside. Durability is off (``fsync``,
``synchronous_commit``, ``full_page_writes``): nothing here must survive a
power loss, and it makes starting and writing faster.

The binaries are found in ``$PG_BINDIR``, on PATH, at ``pg_config --bindir``
or in the newest ``/usr/lib/postgresql/*/bin`` (where Debian puts them, off
PATH): the places `scripts/ensure-postgres` (which `scripts/test` runs)
checks before installing Debian's ``postgresql`` package.

initdb and postgres refuse to run as root. As root (CI runs so), they run as
the unprivileged ``postgres`` user Debian's package creates (``nobody``
without one), and the directory is theirs; it lives under /tmp, not pytest's
``tmp_path``, which is private to root (and long: a unix socket's path must
fit in about 100 bytes).

Tests that use these mark themselves with `requires_postgres`: without the
binaries they are skipped, saying how to get them; under CI (``CI`` set)
they run and fail instead, so a broken install cannot hide behind a skip.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from .redis_servers import free_port

__all__ = [
    "BINDIR",
    "PostgresServer",
    "find_bindir",
    "postgres_server",
    "postgres_server_sync",
    "query",
    "requires_postgres",
]

_SUPERUSER = "tlproxy"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0


def _has_server(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in ("initdb", "postgres"))


def _version_key(directory: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: 9.6 < 10 < 15.
    return tuple(int(n) for n in re.findall(r"\d+", directory.parent.name))


def find_bindir() -> Path | None:
    """The directory holding initdb and postgres, looked for as scripts/ensure-postgres does."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                  timeout=10, check=True)
            candidates.append(Path(done.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key,
                         reverse=True)
    return next((c for c in candidates if _has_server(c)), None)


BINDIR = find_bindir()
MISSING = (
    "the PostgreSQL server binaries (initdb, postgres) are not installed: not in $PG_BINDIR, "
    "on PATH, at `pg_config --bindir` or in /usr/lib/postgresql/*/bin; scripts/ensure-postgres "
    "installs them (Debian: apt-get install postgresql)"
)
_UNDER_CI = bool(os.environ.get("CI"))

# Without CI a missing server skips; under CI the tests run and `PostgresServer`
# fails them, so that a broken install cannot pass as a skip.
requires_postgres = pytest.mark.skipif(BINDIR is None and not _UNDER_CI, reason=MISSING)


def _server_user() -> pwd.struct_passwd | None:
    """Whom to run initdb and postgres as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.fail("running as root, and there is neither a postgres nor a nobody user "
                "to run PostgreSQL as (initdb and postgres refuse root)")


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        return "(no log)"


class PostgresServer:
    """One initdb'd cluster; `start` and `stop` it (again: a restart keeps its port and data)."""

    _databases = itertools.count(1)

    def __init__(self, directory: Path, bindir: Path) -> None:
        self.directory = directory
        self.bindir = bindir
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._user = _server_user()

    @property
    def url(self) -> str:
        """The superuser's URL to the ``postgres`` database."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def _run_as(self) -> dict[str, Any]:
        """Popen's arguments that drop root for the server user (none when not root)."""
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": [],
                "env": {**os.environ, "HOME": str(self.directory), "USER": self._user.pw_name,
                        "LOGNAME": self._user.pw_name}}

    def initdb(self) -> None:
        if self._user is not None:
            os.chown(self.directory, self._user.pw_uid, self._user.pw_gid)
        done = subprocess.run(
            [str(self.bindir / "initdb"), "--pgdata", str(self.data), "--username", _SUPERUSER,
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            cwd=self.directory, capture_output=True, text=True, timeout=120, check=False,
            **self._run_as())
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> None:
        """Start the server and return once it accepts connections."""
        assert self.process is None, "already running"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-h", "127.0.0.1", "-k", str(self.directory),
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                **self._run_as())
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise RuntimeError(f"postgres exited at start ({code}):\n{_tail(self.log)}")
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postgres did not start within {_START_TIMEOUT:.0f} s:\n"
                                       f"{_tail(self.log)}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """A fast shutdown (SIGINT: sessions are terminated), then SIGKILL if it hangs."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; its URL."""
        name = f"{prefix}_{next(self._databases)}"
        query(self.url, f'CREATE DATABASE "{name}"')
        return self.database_url(name)


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on its own autocommit connection; its rows, if it returns any."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


@contextlib.contextmanager
def postgres_server_sync() -> Iterator[PostgresServer]:
    """A running PostgreSQL server until the context exits (for module-scoped fixtures)."""
    if BINDIR is None:
        pytest.fail(f"CI is set and {MISSING}")
    # /tmp rather than $TMPDIR: short (the socket's path) and open to the server user.
    directory = Path(tempfile.mkdtemp(prefix="tlproxy-pg-",
                                      dir="/tmp" if os.path.isdir("/tmp") else None))
    try:
        server = PostgresServer(directory, BINDIR)
        server.initdb()
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def postgres_server() -> AsyncIterator[PostgresServer]:
    """The same from trio: starting and stopping run in a worker thread."""
    manager = postgres_server_sync()
    server = await trio.to_thread.run_sync(manager.__enter__)
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(manager.__exit__, None, None, None)
