"""A client that goes away cancels the upstream request at once, and is recorded so."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from tests.integration.conftest import start_proxy
from tests.integration.test_ledger_e2e import wait_rows
from tlproxy.catalog import default_config
from tlproxy.config import Config, LedgerConfig, ProviderConfig, SimModelProfile
from tlproxy.server import Running


def slow_config(**fields: Any) -> Config:
    base = default_config()
    slow = SimModelProfile(ttft_ms=0.0, inter_token_ms=50.0, tokens=400)
    sim = ProviderConfig(kind="sim", sim_models={m.id: slow for m in base.models})
    return Config(providers={"sim": sim}, models=base.models, **fields)


@pytest.fixture
async def slow_proxy(nursery: trio.Nursery) -> Running:
    return await start_proxy(nursery, slow_config())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
async def recorded_proxy(nursery: trio.Nursery, db: Path) -> Running:
    """The slow proxy with its ledger on."""
    config = slow_config(ledger=LedgerConfig(path=str(db), flush_interval=0.05))
    return await start_proxy(nursery, config)


async def access_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The one access-log line, once the server has written it."""
    with trio.fail_after(5):
        # The line is written once the server is done with the request.
        while not (lines := [r for r in caplog.records  # noqa: ASYNC110 - a log, no event
                             if r.name == "tlproxy.access"]):
            await trio.sleep(0.01)
    (line,) = lines
    return line.fields  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("http2", [False, True])
async def test_client_disconnect_mid_stream_cancels_upstream(
    slow_proxy: Running, http2: bool
) -> None:
    sim = slow_proxy.sims["sim"]
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "long"}]}
    async with httpx.AsyncClient(base_url=slow_proxy.url, http1=not http2, http2=http2) as http:
        # Leave by cancellation, as a real client task would be torn down:
        # httpx's generators then unwind now rather than at garbage collection.
        with trio.CancelScope() as leave:
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                received = b""
                async for data in response.aiter_raw():
                    received += data
                    if received.count(b"data: ") >= 3:
                        leave.cancel()
    assert leave.cancelled_caught
    # The client is gone; the proxy must drop its upstream request right away,
    # long before the 20 s the full answer would take.
    with trio.fail_after(2):
        await sim.stats.cancelled_event.wait()
    assert sim.stats.streams_completed == 0


async def test_sdk_client_closing_stream_cancels_upstream(slow_proxy: Running) -> None:
    sim = slow_proxy.sims["sim"]
    async with openai.AsyncOpenAI(base_url=slow_proxy.url + "/v1", api_key="x") as client:
        stream = await client.chat.completions.create(
            model="economy", stream=True, messages=[{"role": "user", "content": "long"}])
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await stream.close()
    with trio.fail_after(2):
        await sim.stats.cancelled_event.wait()


async def test_client_disconnect_while_waiting_for_json_cancels_upstream(
    slow_proxy: Running,
) -> None:
    sim = slow_proxy.sims["sim"]
    body = {"model": "auto", "messages": [{"role": "user", "content": "long"}]}
    async with httpx.AsyncClient(base_url=slow_proxy.url) as http:
        with trio.move_on_after(0.3):
            await http.post("/v1/chat/completions", json=body)
    with trio.fail_after(2):
        await sim.stats.cancelled_event.wait()


@pytest.mark.parametrize("http2", [False, True])
async def test_a_client_leaving_mid_stream_is_logged_and_recorded_as_cancelled(
    recorded_proxy: Running, db: Path, caplog: pytest.LogCaptureFixture, http2: bool
) -> None:
    body = {"model": "economy", "stream": True,
            "messages": [{"role": "user", "content": "long"}]}
    with caplog.at_level(logging.INFO, logger="tlproxy.access"):
        async with httpx.AsyncClient(base_url=recorded_proxy.url, http1=not http2,
                                     http2=http2) as http:
            with trio.CancelScope() as leave:
                async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    request_id = response.headers["x-request-id"]
                    async for data in response.aiter_raw():
                        if b'"content":"' in data:
                            leave.cancel()  # gone after the first token
        fields = await access_line(caplog)
    assert fields["request_id"] == request_id
    # The answer had started (200 sent), but the client did not get it whole.
    assert (fields["status"], fields["outcome"]) == (200, "cancelled")
    (winner,) = [r for r in await wait_rows(db, 1) if r["winner"]]
    assert (winner["request_id"], winner["status"]) == (request_id, "cancelled")
    assert winner["completion_tokens"] < 400  # priced for what was generated, not the whole


async def test_a_client_leaving_before_a_json_answer_is_logged_and_recorded_as_cancelled(
    recorded_proxy: Running, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"model": "economy", "messages": [{"role": "user", "content": "long"}]}
    with caplog.at_level(logging.INFO, logger="tlproxy.access"):
        async with httpx.AsyncClient(base_url=recorded_proxy.url) as http:
            with trio.move_on_after(0.3):
                await http.post("/v1/chat/completions", json=body)
        fields = await access_line(caplog)
    # Nothing was sent: 499, nginx's "client closed request".
    assert (fields["status"], fields["outcome"]) == (499, "cancelled")
    rows = await wait_rows(db, 1)
    assert {r["request_id"] for r in rows} == {fields["request_id"]}
    assert not any(r["winner"] for r in rows)
    assert {r["status"] for r in rows} == {"cancelled"}


async def test_a_client_that_stays_is_ok(
    recorded_proxy: Running, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with openai.AsyncOpenAI(base_url=recorded_proxy.url + "/v1", api_key="x",
                                  max_retries=0) as client:
        with caplog.at_level(logging.INFO, logger="tlproxy.access"):
            stream = await client.chat.completions.create(
                model="economy", stream=True, max_tokens=3,
                messages=[{"role": "user", "content": "short"}])
            async for _ in stream:
                pass
            fields = await access_line(caplog)
    assert (fields["status"], fields["outcome"]) == (200, "ok")
    (winner,) = [r for r in await wait_rows(db, 1) if r["winner"]]
    assert winner["status"] == "ok"
