"""Fixtures: the real proxy on a loopback port, its simulated upstream, and clients."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator, Iterator

import httpx
import httpx2
import msgspec
import openai
import pytest
import trio

from tlproxy.catalog import default_config
from tlproxy.config import (
    ClientKey,
    Config,
    LedgerConfig,
    ProviderConfig,
    ServerConfig,
    SimModelProfile,
)
from tlproxy.server import Running, serve

CLIENT_KEY = "tlp-test-0123456789abcdef"


def fast_config(**overrides: object) -> Config:
    """The default catalog on a simulated upstream with no latency."""
    config = default_config()
    profile = SimModelProfile(ttft_ms=0.0, inter_token_ms=0.0, tokens=12)
    sim = ProviderConfig(kind="sim", sim_models={m.id: profile for m in config.models})
    fields = {"providers": {"sim": sim}, "models": config.models, **overrides}
    return Config(**fields)  # type: ignore[arg-type]


async def start_proxy(nursery: trio.Nursery, config: Config) -> Running:
    if config.ledger == LedgerConfig():
        # Tests that do not look at the ledger keep it out of the working tree.
        config = msgspec.structs.replace(config, ledger=LedgerConfig(enabled=False))
    return await nursery.start(functools.partial(serve, config, host="127.0.0.1", port=0))


@pytest.fixture
async def proxy(nursery: trio.Nursery) -> Running:
    return await start_proxy(nursery, fast_config())


@pytest.fixture
async def keyed_proxy(nursery: trio.Nursery) -> Running:
    digest = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
    config = fast_config(
        keys=[ClientKey(name="test", hash=f"sha256:{digest}")],
        server=ServerConfig(max_body_bytes=64 * 1024),
    )
    return await start_proxy(nursery, config)


@pytest.fixture(params=["http1", "http2"])
def http_version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def aclient(proxy: Running, http_version: str) -> AsyncIterator[openai.AsyncOpenAI]:
    http = httpx2.AsyncClient(http1=http_version == "http1", http2=http_version == "http2")
    client = openai.AsyncOpenAI(
        base_url=proxy.url + "/v1", api_key="unused", http_client=http, max_retries=0
    )
    async with client:
        yield client


@pytest.fixture
def client(proxy: Running) -> Iterator[openai.OpenAI]:
    """The sync SDK; call it through `trio.to_thread.run_sync` (the server shares our loop)."""
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0) as sync:
        yield sync


@pytest.fixture
async def raw(proxy: Running) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client, to look at the bytes on the wire."""
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as http:
        yield http
