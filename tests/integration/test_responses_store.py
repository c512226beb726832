"""Stored responses (`ResponseStore`) on SQLite and on a real PostgreSQL server.

The same tests run on both databases the ledger may use. Times are passed in
(`now`), so retention is tested at exact instants, not by waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest
import trio

from tests.integration.conftest import fast_config, start_proxy
from tlproxy.config import LedgerConfig
from tlproxy.errors import ProxyError
from tlproxy.responses.store import ResponseStore, StoredResponse

from .postgres_server import PostgresServer, postgres_server_sync, requires_postgres

DAY = 86_400.0
T0 = 1_800_000_000.0


def stored(response_id: str, text: str = "Hello") -> StoredResponse:
    return StoredResponse(
        {"id": response_id, "object": "response", "output": [{"type": "message", "content": [
            {"type": "output_text", "text": text}]}]},
        [{"id": "msg_1", "type": "message", "role": "user",
          "content": [{"type": "input_text", "text": "Hi"}]}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": text}])


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    with postgres_server_sync() as running_server:
        yield running_server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=requires_postgres)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerConfig:
    if request.param == "sqlite":
        return LedgerConfig(path=str(tmp_path / "ledger.db"))
    server: PostgresServer = request.getfixturevalue("pg_server")
    return LedgerConfig(postgres_url=server.create_database())


@pytest.fixture
async def store(ledger: LedgerConfig) -> AsyncIterator[ResponseStore]:
    kept = ResponseStore(ledger, retention=30 * DAY)
    try:
        yield kept
    finally:
        await kept.aclose()


async def test_saved_response_reads_back_whole(store: ResponseStore) -> None:
    await store.save("alpha", stored("resp_1"), now=T0)
    assert await store.get("alpha", "resp_1", now=T0 + 1) == stored("resp_1")
    assert await store.get("alpha", "resp_unknown", now=T0 + 1) is None


async def test_another_key_finds_nothing(store: ResponseStore) -> None:
    await store.save("alpha", stored("resp_1"), now=T0)
    assert await store.get("beta", "resp_1", now=T0) is None
    assert not await store.delete("beta", "resp_1", now=T0)
    assert await store.get("alpha", "resp_1", now=T0) is not None


async def test_delete_removes_it_once(store: ResponseStore) -> None:
    await store.save("", stored("resp_1"), now=T0)
    assert await store.delete("", "resp_1", now=T0)
    assert not await store.delete("", "resp_1", now=T0)
    assert await store.get("", "resp_1", now=T0) is None


async def test_retention_ends_at_its_exact_instant(store: ResponseStore) -> None:
    await store.save("alpha", stored("resp_old"), now=T0)
    assert await store.get("alpha", "resp_old", now=T0 + 30 * DAY - 1) is not None
    assert await store.get("alpha", "resp_old", now=T0 + 30 * DAY) is None
    # A later save clears the expired rows; the new one stays.
    await store.save("alpha", stored("resp_new"), now=T0 + 30 * DAY)
    assert await store.get("alpha", "resp_new", now=T0 + 30 * DAY) is not None
    assert not await store.delete("alpha", "resp_old", now=T0)


async def test_an_unusable_database_is_a_503_that_names_no_secret(tmp_path: Path) -> None:
    broken = ResponseStore(LedgerConfig(path=str(tmp_path / "missing" / "ledger.db")),
                           retention=DAY)
    with pytest.raises(ProxyError) as caught:
        await broken.get("alpha", "resp_1", now=T0)
    assert caught.value.status == 503 and caught.value.code == "store_unavailable"
    assert str(tmp_path) not in caught.value.message


@requires_postgres
async def test_conversation_continues_through_a_postgres_ledger(
    nursery: trio.Nursery, pg_server: PostgresServer
) -> None:
    url = await trio.to_thread.run_sync(pg_server.create_database)
    config = fast_config(ledger=LedgerConfig(postgres_url=url, flush_interval=0.01))
    proxy = await start_proxy(nursery, config)
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused",
                                  max_retries=0) as sdk:
        first = await sdk.responses.create(model="auto", input="My name is Ada.")
        second = await sdk.responses.create(model="auto", input="What is my name?",
                                            previous_response_id=first.id)
        assert second.previous_response_id == first.id
        assert (await sdk.responses.retrieve(second.id)).output_text == second.output_text
