"""The one httpx client per upstream: made safe to cancel under trio, and sharded.

httpx hands a request body to its transport as an async generator. When an
attempt is cancelled while that body is being sent (the race cancels losers
at any moment), the generator is left suspended and trio finalizes it later,
at garbage collection, with a `ResourceWarning`. Bodies here are always
bytes already in memory, so the transport swaps the generator for a plain
iterator object that has nothing to finalize.

httpcore's pool re-examines every connection for every waiting request each
time a request starts or ends, so its cost grows with the square of the
requests in flight; profiles of the proxy at 64 streams put a quarter of its
CPU there. The transport therefore spreads requests round-robin over several
smaller pools of one upstream (each still keeps its connections alive), which
divides that cost by the square of the number of pools.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import httpx

from ..config import ProviderConfig

__all__ = ["make_client"]


class _Once:
    """Yields one bytes object, then stops; an iterator object, not a generator."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data


class _BytesBody(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Once(self._data)


class _UpstreamTransport(httpx.AsyncBaseTransport):
    def __init__(self, shards: list[httpx.AsyncBaseTransport]) -> None:
        self._shards = shards
        self._next = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if isinstance(request.stream, httpx.ByteStream):
            # httpx has already read a bytes body (and set content-length).
            request.stream = _BytesBody(request.content)
        shard = self._shards[self._next]
        self._next = (self._next + 1) % len(self._shards)
        return await shard.handle_async_request(request)

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def make_client(config: ProviderConfig, *, shards: int = 8) -> httpx.AsyncClient:
    """One pooled client per upstream, HTTP/2 when the upstream speaks it."""
    plain_http = (config.base_url or "").startswith("http:")
    per_shard = max(1, -(-config.max_connections // shards))
    limits = httpx.Limits(
        max_connections=per_shard,
        max_keepalive_connections=per_shard,
        keepalive_expiry=30.0,
    )
    # No TLS over plain http: skip loading the CA bundle (tens of ms each).
    verify: ssl.SSLContext | bool = False if plain_http else httpx.create_ssl_context()
    transports: list[httpx.AsyncBaseTransport] = [
        httpx.AsyncHTTPTransport(
            # Over plain http, HTTP/2 means prior knowledge (h2c): no HTTP/1.1 at all.
            http1=not (config.http2 and plain_http),
            http2=config.http2,
            limits=limits,
            verify=verify,  # one TLS context shared by the shards
        )
        for _ in range(shards)
    ]
    return httpx.AsyncClient(
        transport=_UpstreamTransport(transports),
        timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
        # Proxies from the environment would surprise an operator on a hot path.
        trust_env=False,
    )
