from __future__ import annotations

from pathlib import Path

import pytest

from tlproxy.config import ConfigError
from tlproxy.keys import KeyStore, parse_key


def test_create_check_revoke(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    token = store.create("rag", rpm=60, policy="rag", allowed_tiers=["economy"])
    assert store.check(token) is None  # not loaded yet
    store.load_changes()
    key = store.check(token)
    assert key is not None and (key.name, key.rpm, key.policy, key.allowed_tiers) == (
        "rag", 60, "rag", ["economy"])
    assert store.check(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.revoke("rag")
    store.load_changes()
    assert store.check(token) is None
    assert not store.revoke("rag")


def test_secret_is_never_stored(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    token = KeyStore(path).create("k")
    _, secret = parse_key(token)  # type: ignore[misc]
    assert secret.encode() not in path.read_bytes()
    assert all(secret not in str(row) for row in KeyStore(path).list())


def test_two_stores_on_one_file_see_revocation(tmp_path: Path) -> None:
    admin, server = KeyStore(tmp_path / "k.db"), KeyStore(tmp_path / "k.db")
    token = admin.create("svc")
    server.load_changes()
    assert server.check(token) is not None
    admin.revoke("svc")
    server.load_changes()
    assert server.check(token) is None


@pytest.mark.parametrize("token", ["", "sk-abc", "tlp-", "tlp-short-x", "tlp-0123456-x",
                                   "tlp-01234567-", "tlp-01234567"])
def test_malformed_tokens_are_refused(tmp_path: Path, token: str) -> None:
    store = KeyStore(tmp_path / "keys.db")
    store.create("k")
    store.load_changes()
    assert store.check(token) is None


async def test_a_key_store_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    store = KeyStore(tmp_path / "a-file" / "keys.db")
    with pytest.raises(ConfigError, match=r"keys_db: cannot open the key store '.*keys\.db'"):
        await store.run()
