"""A key's limits through the real server: OpenAI's 429, headers, and sharing through Redis."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import openai
import pytest
import trio

from tests.integration.conftest import fast_config, start_proxy
from tests.integration.redis_servers import redis_server
from tests.integration.server_process import ServerProcess
from tlproxy.config import ClientKey

KEY = "tlp-limits-test-key-0001"
DIGEST = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
HELLO = [{"role": "user", "content": "hi"}]

pytestmark = pytest.mark.filterwarnings(
    # coredis leaves anyio memory streams to the garbage collector when a
    # connection fails; harmless, and not the proxy's own doing.
    "ignore:Exception ignored in. <function MemoryObject(Send|Receive)Stream"
    r"\.__del__:pytest.PytestUnraisableExceptionWarning")


async def test_rpm_limit_gives_openai_429_with_headers(nursery: trio.Nursery) -> None:
    config = fast_config(keys=[ClientKey(name="svc", hash=DIGEST, rpm=3)])
    running = await start_proxy(nursery, config)
    async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=KEY,
                                  max_retries=0) as client:
        for remaining in (2, 1, 0):
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=HELLO)
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert raw.headers["x-ratelimit-remaining-requests"] == str(remaining)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="auto", messages=HELLO, stream=True)
    response = caught.value.response
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert caught.value.code == "rate_limit_exceeded"
    assert KEY not in response.text


CONFIG = """
[ledger]
enabled = false

[limits]
redis_url = "{redis}"
on_redis_failure = "{failure}"
redis_timeout = 0.2

[[keys]]
name = "shared"
hash = "{digest}"
rpm = {rpm}

[providers.sim]
kind = "sim"

[[models]]
id = "m-economy"
provider = "sim"
tier = "economy"

[[models]]
id = "m-premium"
provider = "sim"
tier = "premium"
"""


async def _count(url: str, n: int, out: dict[int, int]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10,
                                 headers={"authorization": f"Bearer {KEY}"}) as http:
        async def one() -> None:
            response = await http.post("/v1/chat/completions",
                                       json={"model": "economy", "messages": HELLO})
            out[response.status_code] = out.get(response.status_code, 0) + 1

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)


@pytest.mark.slow
async def test_two_proxy_processes_share_one_keys_limit_through_redis(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as redis:
        config = tmp_path / "tlproxy.toml"
        config.write_text(CONFIG.format(redis=redis.url, failure="closed", digest=DIGEST,
                                        rpm=10))
        servers = [ServerProcess(config, workers=1), ServerProcess(config, workers=1)]
        try:
            for server in servers:
                await trio.to_thread.run_sync(server.wait_ready)
            counts: dict[int, int] = {}
            async with trio.open_nursery() as nursery:
                for server in servers:
                    nursery.start_soon(_count, server.url, 15, counts)
            assert counts == {200: 10, 429: 20}
            # Redis gone: this config fails closed, with a 503 and no hang.
            await redis.kill()
            counts.clear()
            with trio.fail_after(10):
                await _count(servers[0].url, 2, counts)
            assert counts == {503: 2}
        finally:
            for server in servers:
                server.kill()


async def test_concurrent_stream_cap_per_key(nursery: trio.Nursery) -> None:
    import msgspec

    from tlproxy.config import LimitsConfig

    config = fast_config(keys=[ClientKey(name="svc", hash=DIGEST)],
                         limits=LimitsConfig(max_streams_per_key=1))
    base = config.providers["sim"]
    slow = {m: msgspec.structs.replace(p, inter_token_ms=100.0, tokens=50)
            for m, p in base.sim_models.items()}
    config = msgspec.structs.replace(
        config, providers={"sim": msgspec.structs.replace(base, sim_models=slow)})
    running = await start_proxy(nursery, config)
    async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=KEY,
                                  max_retries=0) as client:
        stream = await client.chat.completions.create(model="auto", messages=HELLO, stream=True)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="auto", messages=HELLO, stream=True)
        assert caught.value.code == "too_many_concurrent_streams"
        await stream.close()


@pytest.mark.slow
async def test_workers_without_redis_hold_a_keys_limit_as_written(tmp_path: Path) -> None:
    """Two worker processes and no Redis: rpm=3 admits 3 of 40, not 3 per worker."""
    config = tmp_path / "tlproxy.toml"
    text = CONFIG.format(redis="", failure="open", digest=DIGEST, rpm=3)
    config.write_text(text.replace('redis_url = ""\n', ""))
    server = ServerProcess(config, workers=2)
    try:
        await trio.to_thread.run_sync(server.wait_ready)
        counts: dict[int, int] = {}
        await _count(server.url, 40, counts)
        assert counts == {200: 3, 429: 37}
    finally:
        server.kill()


async def test_a_request_without_an_output_cap_reserves_its_prompt_alone(
        nursery: trio.Nursery) -> None:
    """The token reservation is the prompt plus the cap the client set, and no made-up
    output when it set none: the actual usage corrects it when the request settles."""
    capped = "tlp-limits-test-key-0002"
    config = fast_config(keys=[
        ClientKey(name="uncapped", hash=DIGEST, tpm=1000),
        ClientKey(name="capped", hash="sha256:" + hashlib.sha256(capped.encode()).hexdigest(),
                  tpm=1000)])
    running = await start_proxy(nursery, config)
    prompt = [{"role": "user", "content": "x" * 40}]  # 40 characters: 10 tokens
    remaining = {}
    for key, cap in ((KEY, None), (capped, 100)):
        async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=key,
                                      max_retries=0) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=prompt,
                **({} if cap is None else {"max_completion_tokens": cap}))
        remaining[cap] = raw.headers["x-ratelimit-remaining-tokens"]
    assert remaining == {None: "990", 100: "890"}
