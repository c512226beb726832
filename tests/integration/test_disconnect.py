"""A client that goes away cancels the upstream request at once, and is recorded so.

The proxy and its simulated upstream share the test's trio run: under the
autojumping MockClock, "at once" is exact, the upstream sees the client leave
at the same virtual instant. The ledger's tests run on the real clock (the
ledger writes in a worker thread, which virtual time cannot wait for), so
their client leaves once the upstream has its request, never after a sleep.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
import trio
from trio.testing import MockClock

from tests.integration.conftest import start_proxy
from tests.integration.test_ledger_e2e import wait_rows
from tlproxy.catalog import default_config
from tlproxy.config import Config, LedgerConfig, ProviderConfig, SimModelProfile
from tlproxy.server import Running
from tlproxy.sim import SimUpstream

# The whole slow answer takes 400 tokens x 50 ms = 20 s; a client leaves long before.
LEAVE_AFTER = 0.25  # seconds a client waits for a JSON answer before it leaves
HANG_GUARD = 10.0


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


async def dropped_at(sim: SimUpstream) -> float:
    """When the upstream saw the proxy drop its request (virtual time)."""
    with trio.fail_after(HANG_GUARD):
        await sim.stats.cancelled_event.wait()
    return trio.current_time()


async def leave_once_upstream_has_it(sim: SimUpstream, request: Any) -> None:
    """Send `request()`, and leave (cancel it) once the upstream has received it."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(request)
        with trio.fail_after(HANG_GUARD):
            while not sim.stats.requests:  # noqa: ASYNC110 - a counter, no event
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def access_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The one access-log line, once the server has written it."""
    with trio.fail_after(HANG_GUARD):
        # The line is written once the server is done with the request.
        while not (lines := [r for r in caplog.records  # noqa: ASYNC110 - a log, no event
                             if r.name == "tlproxy.access"]):
            await trio.sleep(0.01)
    (line,) = lines
    return line.fields  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("http2", [False, True])
async def test_client_disconnect_mid_stream_cancels_upstream(
    autojump_clock: MockClock, slow_proxy: Running, http2: bool
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
        left = trio.current_time()
    assert leave.cancelled_caught
    # The client is gone; the proxy drops its upstream request at that very
    # instant, not when the 20 s answer would end.
    assert await dropped_at(sim) == left
    assert sim.stats.streams_completed == 0


async def test_sdk_client_closing_stream_cancels_upstream(
    autojump_clock: MockClock, slow_proxy: Running,
) -> None:
    sim = slow_proxy.sims["sim"]
    async with openai.AsyncOpenAI(base_url=slow_proxy.url + "/v1", api_key="x",
                                  http_client=httpx2.AsyncClient()) as client:
        stream = await client.chat.completions.create(
            model="economy", stream=True, messages=[{"role": "user", "content": "long"}])
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await stream.close()
        left = trio.current_time()
    assert await dropped_at(sim) == left
    assert sim.stats.streams_completed == 0


async def test_client_disconnect_while_waiting_for_json_cancels_upstream(
    autojump_clock: MockClock, slow_proxy: Running,
) -> None:
    sim = slow_proxy.sims["sim"]
    body = {"model": "auto", "messages": [{"role": "user", "content": "long"}]}
    async with httpx.AsyncClient(base_url=slow_proxy.url) as http:
        start = trio.current_time()
        with trio.move_on_after(LEAVE_AFTER) as leave:
            await http.post("/v1/chat/completions", json=body)
    assert leave.cancelled_caught
    assert await dropped_at(sim) == start + LEAVE_AFTER


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
            await leave_once_upstream_has_it(recorded_proxy.sims["sim"], functools.partial(
                http.post, "/v1/chat/completions", json=body))
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
