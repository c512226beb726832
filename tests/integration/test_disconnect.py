"""A client that goes away cancels the upstream request at once."""

from __future__ import annotations

import httpx
import openai
import pytest
import trio

from tests.integration.conftest import start_proxy
from tlproxy.catalog import default_config
from tlproxy.config import Config, ProviderConfig, SimModelProfile
from tlproxy.server import Running


@pytest.fixture
async def slow_proxy(nursery: trio.Nursery) -> Running:
    base = default_config()
    slow = SimModelProfile(ttft_ms=0.0, inter_token_ms=50.0, tokens=400)
    sim = ProviderConfig(kind="sim", sim_models={m.id: slow for m in base.models})
    return await start_proxy(nursery, Config(providers={"sim": sim}, models=base.models))


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
