"""One upstream's connection pool, and the one place its errors become ours.

The adapters never touch the HTTP library: they build an `Endpoint` once per
URL (its headers included), then `send` a JSON request and get a whole
`Reply`, or `stream` one and read its body as it comes. Every exception of
the HTTP library is mapped to `UpstreamError` by `map_exceptions`, here and
nowhere else, whether it is raised while connecting, sending, or reading a
streamed body; bodies are read decoded (upstreams may gzip an event stream as
they would any answer).

httpx2 hands a request body to its transport as an async generator. When an
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

import contextlib
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping

import httpx2

from ..config import ProviderConfig
from ..errors import UpstreamError

__all__ = [
    "Endpoint",
    "Reply",
    "Transport",
    "make_transport",
    "map_exceptions",
    "transport_error",
]

# How long a readiness ping may take, whatever the configured timeouts.
PING_TIMEOUT = 2.0


def transport_error(exc: httpx2.HTTPError) -> UpstreamError:
    """An HTTP library's exception, as the error our client should see."""
    # No connection (refused, unresolvable, none free in the pool in time): the
    # request was never sent, so the upstream bills nothing for it.
    unsent = isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout | httpx2.PoolTimeout)
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamError("the upstream provider timed out", status=504, code="timeout",
                             unsent=unsent)
    return UpstreamError(
        f"could not reach the upstream provider ({type(exc).__name__})", status=502,
        unsent=unsent,
    )


@contextlib.contextmanager
def map_exceptions() -> Iterator[None]:
    """The boundary: the HTTP library's exceptions leave as `UpstreamError`."""
    try:
        yield
    except httpx2.HTTPError as exc:
        raise transport_error(exc) from None


class Endpoint:
    """A URL and the headers every request to it carries, built once per adapter.

    A header without a value (no API key configured) is left out.
    """

    __slots__ = ("headers", "url")

    def __init__(self, url: str, headers: Mapping[str, str | None]) -> None:
        self.url = url
        self.headers = {k: v for k, v in headers.items() if v}


class Reply:
    """An upstream's answer: its status and headers, and its body (read by `send`,
    read as it comes by `stream`)."""

    __slots__ = ("_response", "content", "status")

    def __init__(self, response: httpx2.Response, content: bytes = b"") -> None:
        self._response = response
        self.status = response.status_code
        self.content = content

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def aread(self) -> bytes:
        """The whole (rest of the) body, decoded."""
        with map_exceptions():
            self.content = await self._response.aread()
        return self.content

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it comes, decoded; a failure is an `UpstreamError`."""
        with map_exceptions():
            async with contextlib.aclosing(self._response.aiter_bytes()) as stream:
                async for data in stream:
                    yield data


class Transport:
    """One upstream's pooled connections. ``client`` is closed by `aclose`."""

    def __init__(self, client: httpx2.AsyncClient) -> None:
        self._client = client

    @property
    def is_closed(self) -> bool:
        return self._client.is_closed

    async def send(self, endpoint: Endpoint, body: bytes) -> Reply:
        """POST `body`; the reply with its whole body read."""
        with map_exceptions():
            response = await self._client.post(
                endpoint.url, content=body, headers=endpoint.headers
            )
        return Reply(response, response.content)

    @contextlib.asynccontextmanager
    async def stream(self, endpoint: Endpoint, body: bytes) -> AsyncIterator[Reply]:
        """POST `body`; the reply, its body unread, closed on leaving."""
        with map_exceptions():
            response = await self._client.send(
                self._client.build_request(
                    "POST", endpoint.url, content=body, headers=endpoint.headers
                ),
                stream=True,
            )
        try:
            yield Reply(response)
        finally:
            with map_exceptions():
                await response.aclose()

    async def ping(self, endpoint: Endpoint) -> bool:
        """Whether the upstream answers at all; any HTTP status, even 401, means it is there."""
        try:
            with map_exceptions():
                await self._client.get(
                    endpoint.url, headers=endpoint.headers, timeout=PING_TIMEOUT
                )
        except UpstreamError:
            return False
        return True

    async def aclose(self) -> None:
        await self._client.aclose()


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


class _BytesBody(httpx2.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Once(self._data)


class _UpstreamTransport(httpx2.AsyncBaseTransport):
    def __init__(self, shards: list[httpx2.AsyncBaseTransport]) -> None:
        self._shards = shards
        self._next = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if isinstance(request.stream, httpx2.ByteStream):
            # httpx2 has already read a bytes body (and set content-length).
            request.stream = _BytesBody(request.content)
        shard = self._shards[self._next]
        self._next = (self._next + 1) % len(self._shards)
        return await shard.handle_async_request(request)

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def make_transport(config: ProviderConfig, *, shards: int = 8) -> Transport:
    """One pooled transport per upstream, HTTP/2 when the upstream speaks it."""
    plain_http = (config.base_url or "").startswith("http:")
    per_shard = max(1, -(-config.max_connections // shards))
    limits = httpx2.Limits(
        max_connections=per_shard,
        max_keepalive_connections=per_shard,
        keepalive_expiry=30.0,
    )
    # No TLS over plain http: skip loading the CA bundle (tens of ms each).
    verify: ssl.SSLContext | bool = False if plain_http else httpx2.create_ssl_context()
    transports: list[httpx2.AsyncBaseTransport] = [
        httpx2.AsyncHTTPTransport(
            # Over plain http, HTTP/2 means prior knowledge (h2c): no HTTP/1.1 at all.
            http1=not (config.http2 and plain_http),
            http2=config.http2,
            limits=limits,
            verify=verify,  # one TLS context shared by the shards
        )
        for _ in range(shards)
    ]
    return Transport(httpx2.AsyncClient(
        transport=_UpstreamTransport(transports),
        timeout=httpx2.Timeout(config.read_timeout, connect=config.connect_timeout),
        # Proxies from the environment would surprise an operator on a hot path.
        trust_env=False,
    ))
