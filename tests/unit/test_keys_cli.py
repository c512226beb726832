"""`tlproxy keys create` refuses unusable keys; `route --explain --key` finds stored keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlproxy import cli
from tlproxy.keys import KeyStore

CONFIG = """\
[providers.sim]
kind = "sim"

[[models]]
id = "big"
provider = "sim"
tier = "premium"

[[models]]
id = "small"
provider = "sim"
tier = "economy"

[ledger]
enabled = false

[policies.rag]
default_tier = "economy"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tlproxy.toml"
    # keys_db is a top-level key: it goes before the first table.
    path.write_text(f'keys_db = "{tmp_path / "keys.db"}"\n' + CONFIG)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(("options", "words"), [
    (["--policy", "codegen"], "--policy: no policy named 'codegen' (there are: 'rag')"),
    (["--rpm", "0"], "--rpm: must be at least 1 (leave it out for no limit), not 0"),
    (["--rpm", "-5"], "--rpm: must be at least 1"),
    (["--tpm", "0"], "--tpm: must be at least 1"),
    (["--budget-usd", "0"], "--budget-usd: must be more than 0"),
    (["--budget-usd", "-1.5"], "--budget-usd: must be more than 0"),
    (["--allowed-tiers", "economy,gold"], "--allowed-tiers: 'gold' is not a tier"),
    (["--allowed-tiers", "embedding"], "--allowed-tiers: 'embedding' is not a tier"),
    (["--allowed-tiers", "premium,"], "--allowed-tiers: '' is not a tier"),
])
def test_create_refuses_a_key_that_cannot_work(
    capsys: pytest.CaptureFixture[str], config: Path, options: list[str], words: str
) -> None:
    status, out, err = run(capsys, "keys", "--config", str(config), "create", "svc", *options)
    assert status == 2
    assert words in err, err
    assert "not created" in err and out == ""
    assert KeyStore(config.parent / "keys.db").list() == []


def test_create_accepts_what_the_config_knows(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    status, out, _ = run(capsys, "keys", "--config", str(config), "create", "svc", "--policy",
                         "rag", "--rpm", "10", "--budget-usd", "5", "--allowed-tiers",
                         "economy, premium")
    assert status == 0 and out.startswith("tlp-")
    [row] = KeyStore(config.parent / "keys.db").list()
    assert (row["policy"], row["rpm"], row["allowed_tiers"]) == ("rag", 10, "economy,premium")


def test_route_explain_knows_stored_keys(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    store = KeyStore(tmp_path / "keys.db")
    store.create("rag-svc", policy="rag", allowed_tiers=["economy"])
    store.create("old", policy="retired")  # made when the config had that policy
    store.create("gone")
    store.revoke("gone")
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"model": "premium",
                                   "messages": [{"role": "user", "content": "hi"}]}))
    base = ["route", "--config", str(config), "--explain", str(request)]
    status, out, _ = run(capsys, *base, "--key", "rag-svc")
    assert status == 0
    assert "Decision: tier=economy rule=intent:premium (capped by key)" in out
    status, _, err = run(capsys, *base, "--key", "old")
    assert status == 1
    assert "the key 'old' cannot be used" in err and "no policy named 'retired'" in err
    status, _, err = run(capsys, *base, "--key", "gone")
    assert (status, "the key 'gone' is revoked" in err) == (1, True)
    status, _, err = run(capsys, *base, "--key", "nobody")
    assert "no client key named 'nobody' in the config or the key store" in err
