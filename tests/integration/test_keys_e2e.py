"""Keys made with `tlproxy keys create` work at once and stop working once revoked."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import httpx2
import openai
import pytest
import trio
from trio.testing import MockClock

from tests.integration.conftest import fast_config, start_proxy
from tests.openai_schema import validate
from tlproxy.keys import KeyStore


def keys_cli(db: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "tlproxy.cli", "keys", "--db", str(db), *args],
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip()


async def test_created_key_works_and_revoked_key_is_refused(
    mock_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """On a clock that stands still unless the test moves it: the server
    re-reads the store every `KeyStore.refresh` seconds, so a revoked key
    still works half a refresh later, and is refused once the refresh is due."""
    db = tmp_path / "keys.db"
    token = await trio.to_thread.run_sync(keys_cli, db, "create", "svc", "--rpm", "100")
    assert token.startswith("tlp-")
    running = await start_proxy(nursery, fast_config(keys_db=str(db)))
    assert running.app.key_store is not None
    refresh = running.app.key_store.refresh  # seconds between the server's reads of the store
    hello = [{"role": "user", "content": "hi"}]
    async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=token,
                                  max_retries=0, http_client=httpx2.AsyncClient()) as client:
        answer = await client.chat.completions.create(model="auto", messages=hello)
        assert answer.choices[0].message.content
        listing = await trio.to_thread.run_sync(keys_cli, db, "list")
        assert "svc" in listing and token.split("-", 2)[2] not in listing
        await trio.to_thread.run_sync(keys_cli, db, "revoke", "svc")
        # Half a refresh later the store has not been re-read: the key still works.
        mock_clock.jump(refresh / 2)
        assert (await client.chat.completions.create(model="auto", messages=hello)).choices
        # The refresh is due. Its read runs in a worker thread, so a request
        # or two may still find the key; the clock stands still meanwhile,
        # so the hang guard is on the machine's clock.
        mock_clock.jump(refresh / 2)
        deadline = time.monotonic() + 60
        while True:
            try:
                await client.chat.completions.create(model="auto", messages=hello)
            except openai.AuthenticationError as exc:
                assert token not in exc.response.text
                break
            assert time.monotonic() < deadline, "the revoked key works after the refresh"
    async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="tlp-00000000-nope",
                                  max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.models.list()


async def test_a_stored_key_the_config_no_longer_fits_is_403_and_logged_once(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "keys.db"
    # Made while the config had a "rag" policy; this server's config has none.
    token = KeyStore(db).create("rag-svc", policy="rag")
    running = await start_proxy(nursery, fast_config(keys_db=str(db)))
    hello = [{"role": "user", "content": "hi"}]
    async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=token,
                                  max_retries=2) as client:
        for _ in range(3):
            with pytest.raises(openai.PermissionDeniedError) as caught:
                await client.chat.completions.create(model="auto", messages=hello)
            error = caught.value.body
            assert isinstance(error, dict)
            assert error["code"] == "key_misconfigured"
            assert "'rag-svc'" in error["message"] and "no policy named 'rag'" in error["message"]
            assert token not in caught.value.response.text
            validate("ErrorResponse", caught.value.response.json())
        with pytest.raises(openai.PermissionDeniedError):
            await client.embeddings.create(model="text-embedding-3-small", input="hi")
    logged = [r for r in caplog.records if "cannot be used under this config" in r.getMessage()]
    assert len(logged) == 1
    # Three chat requests, none retried by the SDK: a 403 is final.
    async with httpx.AsyncClient(base_url=running.url) as http:
        metrics = (await http.get("/metrics")).text
    [line] = [m for m in metrics.splitlines()
              if m.startswith("tlproxy_requests_total{") and 'endpoint="chat/completions"' in m]
    assert 'status="403"' in line and line.endswith(" 3.0")
