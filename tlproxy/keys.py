"""Client API keys: made once, stored salted and hashed, checked in constant time.

A key looks like ``tlp-<id>-<secret>``. The id (8 hex digits) is public and
finds the record; the secret (32 url-safe characters) is never stored: the
record holds a random salt and HMAC-SHA256(salt, secret). Checking a key is
one dictionary look-up by id and one `hmac.compare_digest`, so the time
taken does not depend on how much of a guess was right.

Records live in SQLite (``keys.db`` beside the ledger, WAL mode) so that
`tlproxy keys create` / `revoke` work while servers run. Every server keeps
the records in memory and re-reads the rows changed since its last look
every `refresh` seconds (one indexed query), so a revoked key is refused by
every instance sharing the file within that interval; nothing on the
request path touches the disk. Keys written in the config (``[[keys]]``,
``sha256:`` of the whole key) keep working beside these.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import trio

from .config import ClientKey, ConfigError
from .sqlite_wal import open_wal

__all__ = ["KeyRecord", "KeyStore", "generate_key", "parse_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS client_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    salt BLOB NOT NULL,
    digest BLOB NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    budget_usd REAL,
    budget_period TEXT NOT NULL DEFAULT 'month',
    policy TEXT,
    allowed_tiers TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS client_keys_updated ON client_keys (updated_at);
"""


class KeyRecord(msgspec.Struct, frozen=True):
    id: str
    salt: bytes
    digest: bytes
    key: ClientKey
    revoked: bool


def generate_key() -> tuple[str, str, str]:
    """A new key: (full key, id, secret)."""
    key_id = secrets.token_hex(4)
    secret = secrets.token_urlsafe(24)
    return f"tlp-{key_id}-{secret}", key_id, secret


def parse_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a ``tlp-<id>-<secret>`` key, or None for any other shape."""
    if not token.startswith("tlp-") or len(token) < 14:
        return None
    key_id, dash, secret = token[4:].partition("-")
    if not dash or len(key_id) != 8 or not secret:
        return None
    return key_id, secret


def _digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def _client_key(name: str, rpm: int | None, tpm: int | None, budget: float | None,
                period: str, policy: str | None, tiers: str | None) -> ClientKey:
    # The hash field is for config keys; a stored key is checked by its record.
    return ClientKey(
        name=name, hash="sha256:" + "0" * 64, policy=policy,
        allowed_tiers=tiers.split(",") if tiers else None,  # type: ignore[arg-type]
        rpm=rpm, tpm=tpm, budget_usd=budget, budget_period=period)  # type: ignore[arg-type]


class KeyStore:
    """The SQLite file of keys, and the in-memory view a server checks against."""

    def __init__(self, path: str | Path, *, refresh: float = 1.0) -> None:
        self.path = Path(path)
        self.refresh = refresh
        self._records: dict[str, KeyRecord] = {}
        self._seen_until = 0.0

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection for one transaction (committed on success), then closed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(open_wal(self.path)) as db, db:
            db.executescript(_SCHEMA)
            yield db

    # -- administration (the CLI) ------------------------------------------

    def create(self, name: str, *, rpm: int | None = None, tpm: int | None = None,
               budget_usd: float | None = None, budget_period: str = "month",
               policy: str | None = None, allowed_tiers: list[str] | None = None) -> str:
        """Store a new key and return it; this is the only time it is seen."""
        token, key_id, secret = generate_key()
        salt = secrets.token_bytes(16)
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO client_keys (id, name, salt, digest, rpm, tpm, budget_usd, "
                "budget_period, policy, allowed_tiers, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key_id, name, salt, _digest(salt, secret), rpm, tpm, budget_usd,
                 budget_period, policy, ",".join(allowed_tiers) if allowed_tiers else None,
                 now, now))
        return token

    def revoke(self, name: str) -> bool:
        now = time.time()
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE client_keys SET revoked_at = ?, updated_at = ? "
                "WHERE name = ? AND revoked_at IS NULL", (now, now, name))
        return cursor.rowcount > 0

    def list(self) -> list[dict[str, object]]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, name, rpm, tpm, budget_usd, budget_period, policy, allowed_tiers, "
                "created_at, revoked_at FROM client_keys ORDER BY created_at").fetchall()
        fields = ("id", "name", "rpm", "tpm", "budget_usd", "budget_period", "policy",
                  "allowed_tiers", "created_at", "revoked_at")
        return [dict(zip(fields, row, strict=True)) for row in rows]

    def lookup(self, name: str) -> tuple[ClientKey, bool] | None:
        """The key named `name` as a server would see it, and whether it is revoked."""
        with self._connect() as db:
            row = db.execute(
                "SELECT rpm, tpm, budget_usd, budget_period, policy, allowed_tiers, revoked_at "
                "FROM client_keys WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        rpm, tpm, budget, period, policy, tiers, revoked = row
        return _client_key(name, rpm, tpm, budget, period, policy, tiers), revoked is not None

    # -- serving ---------------------------------------------------------

    def load_changes(self) -> int:
        """Read rows changed since the last call into memory; returns how many."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, name, salt, digest, rpm, tpm, budget_usd, budget_period, policy, "
                "allowed_tiers, revoked_at, updated_at FROM client_keys WHERE updated_at >= ?",
                (self._seen_until,)).fetchall()
        for (key_id, name, salt, digest, rpm, tpm, budget, period, policy, tiers, revoked,
             updated) in rows:
            key = _client_key(name, rpm, tpm, budget, period, policy, tiers)
            self._records[key_id] = KeyRecord(key_id, salt, digest, key, revoked is not None)
            self._seen_until = max(self._seen_until, updated)
        return len(rows)

    def check(self, token: str) -> ClientKey | None:
        """The key's record if the token is a live key of this store, else None."""
        parsed = parse_key(token)
        if parsed is None:
            return None
        record = self._records.get(parsed[0])
        if record is None:
            # Compare anyway, so an unknown id costs the same as a wrong secret.
            hmac.compare_digest(_digest(b"\0" * 16, parsed[1]), b"\0" * 32)
            return None
        if not hmac.compare_digest(_digest(record.salt, parsed[1]), record.digest):
            return None
        return None if record.revoked else record.key

    @property
    def active(self) -> bool:
        return bool(self._records)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the in-memory view fresh until cancelled.

        A store that cannot be opened at start is the config's mistake
        (`keys_db`): a `ConfigError` that names it, not a traceback.
        """
        try:
            await trio.to_thread.run_sync(self.load_changes)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"keys_db: cannot open the key store {str(self.path)!r}: "
                              f"{exc}") from None
        task_status.started()
        while True:
            await trio.sleep(self.refresh)
            await trio.to_thread.run_sync(self.load_changes)
