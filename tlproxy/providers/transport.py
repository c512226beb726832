"""The one httpx client per upstream, made safe to cancel under trio.

httpx hands a request body to its transport as an async generator. When an
attempt is cancelled while that body is being sent (the race cancels losers
at any moment), the generator is left suspended and trio finalizes it later,
at garbage collection, with a `ResourceWarning`. Bodies here are always
bytes already in memory, so the transport swaps the generator for a plain
iterator object that has nothing to finalize.
"""

from __future__ import annotations

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


class _CancelSafeTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if isinstance(request.stream, httpx.ByteStream):
            # httpx has already read a bytes body (and set content-length).
            request.stream = _BytesBody(request.content)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def make_client(config: ProviderConfig) -> httpx.AsyncClient:
    """One pooled client per upstream, HTTP/2 when the upstream speaks it."""
    plain_http = (config.base_url or "").startswith("http:")
    limits = httpx.Limits(
        max_connections=config.max_connections,
        max_keepalive_connections=config.max_connections,
        keepalive_expiry=30.0,
    )
    transport = httpx.AsyncHTTPTransport(
        # Over plain http, HTTP/2 means prior knowledge (h2c): no HTTP/1.1 at all.
        http1=not (config.http2 and plain_http),
        http2=config.http2,
        limits=limits,
        # No TLS over plain http: skip loading the CA bundle (tens of ms each).
        verify=not plain_http,
    )
    return httpx.AsyncClient(
        transport=_CancelSafeTransport(transport),
        timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
        # Proxies from the environment would surprise an operator on a hot path.
        trust_env=False,
    )
