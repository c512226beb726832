"""One upstream's connection pool, and the one place its errors become ours.

The adapters never touch the HTTP library. They build an `Endpoint` once per
URL (the parsed URL and every header as bytes), then `Transport.send` a JSON
request and get a whole `Reply`, or `Transport.stream` one and read its body
as it comes (`Reply.chunks`). Every exception of the layers below (httpcore2,
and zlib for compressed bodies) is mapped to `UpstreamError` by
`map_exceptions`, here and nowhere else, whether it is raised while
connecting, sending, or reading a streamed body.

Why httpcore2 directly, not httpx2 over it: httpx2 builds its own models
for every request (its `Request`, `Headers`, `URL`, the response's stream
wrappers) on top of httpcore2's, and on the proxy's hot path that is a
large share of the CPU a request costs, for conveniences the adapters do
not use (redirects, cookies, auth flows, environment proxies). What httpx2
did that the proxy needs is here: timeouts as request extensions, the Host,
Content-Length and Accept-Encoding headers, and gzip and deflate bodies
decoded as they come.

httpcore2's pool assigns waiting requests to connections in one pass over
the connections and the requests (httpcore's rescanned every connection for
every waiting request). That pass still asks every idle connection whether
its server has closed it (a poll of its socket), and it runs when each
request starts and ends, so a request costs a system call per idle
connection: after a burst has left hundreds of connections idle (they are
kept alive for reuse), each later request pays for all of them. Requests are
therefore still spread round-robin over several smaller pools of one
upstream (`_Shards`), each keeping its connections alive, which divides that
cost by the number of pools.

A request body is bytes already in memory; httpcore2 sends it from a
generator that it closes itself (`aclosing`) when an attempt is cancelled
mid-send, so trio has nothing left to finalize at garbage collection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import urllib.request
import zlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterator, Mapping
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import httpcore2

from ..config import ProviderConfig
from ..errors import UpstreamError
from ..tracecontext import UPSTREAM_HEADERS

__all__ = [
    "Endpoint",
    "Pool",
    "Reply",
    "Transport",
    "make_transport",
    "map_exceptions",
    "proxy_url",
    "transport_error",
]

# How long a readiness ping may take, whatever the configured timeouts.
PING_TIMEOUT = 2.0

log = logging.getLogger(__name__)

# Sent with every request; the bodies they allow are decoded by `_decoder`.
_COMMON_HEADERS = [(b"user-agent", b"tlproxy"), (b"accept-encoding", b"gzip, deflate")]

# Raised below us, and what each means for the attempt: not sent at all (the
# upstream bills nothing), or sent and then failed.
_UNSENT = (httpcore2.ConnectError, httpcore2.ConnectTimeout, httpcore2.PoolTimeout)
_FAILURES = (
    httpcore2.TimeoutException,
    httpcore2.NetworkError,
    httpcore2.ProtocolError,
    httpcore2.UnsupportedProtocol,
    httpcore2.ProxyError,
)


def transport_error(exc: Exception) -> UpstreamError:
    """An exception from below (connection, protocol, decoding) as our client's error."""
    unsent = isinstance(exc, _UNSENT)
    if isinstance(exc, httpcore2.TimeoutException):
        return UpstreamError("the upstream provider timed out", status=504, code="timeout",
                             unsent=unsent)
    if isinstance(exc, zlib.error):
        return UpstreamError("the upstream provider sent a malformed compressed body",
                             status=502)
    return UpstreamError(
        f"could not reach the upstream provider ({type(exc).__name__})", status=502,
        unsent=unsent,
    )


@contextlib.contextmanager
def map_exceptions() -> Iterator[None]:
    """The boundary: the exceptions of the layers below leave as `UpstreamError`."""
    try:
        yield
    except (*_FAILURES, zlib.error) as exc:
        raise transport_error(exc) from None


class Pool(Protocol):
    """What `Transport` needs of a connection pool: httpcore2's request interface."""

    async def handle_async_request(self, request: httpcore2.Request) -> httpcore2.Response: ...

    async def aclose(self) -> None: ...


class Endpoint:
    """A URL and the headers every request to it carries, built once per adapter.

    A header without a value (no API key configured) is left out.
    """

    __slots__ = ("headers", "url")

    def __init__(self, url: str, headers: Mapping[str, str | None]) -> None:
        self.url = httpcore2.URL(url)
        host = self.url.host
        if b":" in host:  # an IPv6 literal
            host = b"[%b]" % host
        if self.url.port is not None:
            host += b":%d" % self.url.port
        self.headers: list[tuple[bytes, bytes]] = [
            (b"host", host),
            *_COMMON_HEADERS,
            *((k.lower().encode(), v.encode()) for k, v in headers.items() if v),
        ]


class Reply:
    """An upstream's answer: its status and headers, and its body (read whole by
    `Transport.send`, read as it comes by `Transport.stream`)."""

    __slots__ = ("_raw_headers", "_stream", "content", "status")

    def __init__(
        self,
        status: int,
        raw_headers: list[tuple[bytes, bytes]],
        stream: AsyncIterable[bytes] | None = None,
        content: bytes = b"",
    ) -> None:
        self.status = status
        self._raw_headers = raw_headers
        self._stream = stream
        self.content = content

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers by lower-case name (built when asked: only errors need them)."""
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._raw_headers}

    async def aread(self) -> bytes:
        """The whole (rest of the) body, decoded."""
        async with contextlib.aclosing(self.chunks()) as chunks:
            self.content = b"".join([data async for data in chunks])
        return self.content

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it comes, decoded; any failure is an `UpstreamError`."""
        if self._stream is None:
            return
        with map_exceptions():
            decoder = _decoder(self._raw_headers)
            body = cast(AsyncGenerator[bytes, None], self._stream.__aiter__())
            async with contextlib.aclosing(body):
                async for data in body:
                    if decoder is not None:
                        data = decoder.decompress(data)
                    if data:
                        yield data
            if decoder is not None and (tail := decoder.flush()):
                yield tail


class Transport:
    """One upstream's pooled connections, closed by `aclose`.

    Timeouts apply to each request: `connect_timeout` to opening a
    connection, `read_timeout` to waiting for a free connection, to sending,
    and to each read of the answer.
    """

    def __init__(
        self, pool: Pool, *, connect_timeout: float = 10.0, read_timeout: float = 60.0
    ) -> None:
        self._pool = pool
        self._extensions: dict[str, Any] = {"timeout": {
            "connect": connect_timeout, "read": read_timeout,
            "write": read_timeout, "pool": read_timeout,
        }}
        self._ping_extensions: dict[str, Any] = {"timeout": dict.fromkeys(
            ("connect", "read", "write", "pool"), PING_TIMEOUT)}

    def _post(self, endpoint: Endpoint, body: bytes) -> httpcore2.Request:
        return httpcore2.Request(
            b"POST", endpoint.url,
            # The task's trace context (`tracecontext`: empty unless tracing is on).
            headers=[*endpoint.headers, *UPSTREAM_HEADERS.get(),
                     (b"content-length", b"%d" % len(body))],
            content=body, extensions=self._extensions,
        )

    async def send(self, endpoint: Endpoint, body: bytes) -> Reply:
        """POST `body`; the reply with its whole body read and decoded."""
        async with self.stream(endpoint, body) as reply:
            await reply.aread()
        return reply

    @contextlib.asynccontextmanager
    async def stream(self, endpoint: Endpoint, body: bytes) -> AsyncIterator[Reply]:
        """POST `body`; the reply, its body unread, its connection released on leaving."""
        with map_exceptions():
            response = await self._pool.handle_async_request(self._post(endpoint, body))
        try:
            yield Reply(response.status, response.headers,
                        cast(AsyncIterable[bytes], response.stream))
        finally:
            with map_exceptions():
                await response.aclose()

    async def ping(self, endpoint: Endpoint) -> bool:
        """Whether the upstream answers at all; any HTTP status, even 401, means it is there."""
        request = httpcore2.Request(
            b"GET", endpoint.url, headers=endpoint.headers, extensions=self._ping_extensions
        )
        try:
            with map_exceptions():
                response = await self._pool.handle_async_request(request)
                await response.aclose()
        except UpstreamError:
            return False
        return True

    async def aclose(self) -> None:
        await self._pool.aclose()


def _decoder(headers: list[tuple[bytes, bytes]]) -> Any:
    """A decompressor for the body's ``content-encoding``, or None for identity."""
    for name, value in headers:
        if name.lower() == b"content-encoding":
            coding = value.strip().lower()
            if coding in (b"gzip", b"x-gzip"):
                return zlib.decompressobj(zlib.MAX_WBITS | 16)
            if coding == b"deflate":
                # zlib-wrapped, as the RFC says, or raw, as some servers send it.
                return _Deflate()
            if coding not in (b"", b"identity"):
                raise UpstreamError(
                    "the upstream provider sent a body in an encoding it was not offered",
                    status=502,
                )
    return None


class _Deflate:
    """``deflate`` bodies, zlib-wrapped (as the RFC says) or raw (as some servers send
    them): told apart by the first two bytes, a zlib header or not."""

    def __init__(self) -> None:
        self._head = b""
        self._zlib: Any = None

    def decompress(self, data: bytes) -> bytes:
        if self._zlib is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            cmf, flg = self._head[0], self._head[1]
            wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        return bytes(self._zlib.decompress(data))

    def flush(self) -> bytes:
        if self._zlib is None:
            if self._head:
                raise zlib.error("a deflate body of one byte")
            return b""
        return bytes(self._zlib.flush())


def shard_sizes(connections: int, shards: int) -> list[int]:
    """`connections` split over at most `shards` pools of at least one each."""
    count = max(1, min(shards, connections))
    return [connections // count + (i < connections % count) for i in range(count)]


class _Shards:
    """Several pools of one upstream, taking requests in turn (see the module's essay)."""

    def __init__(self, pools: list[Pool]) -> None:
        self._pools = pools
        self._next = 0

    async def handle_async_request(self, request: httpcore2.Request) -> httpcore2.Response:
        pool = self._pools[self._next]
        self._next = (self._next + 1) % len(self._pools)
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def proxy_url(config: ProviderConfig) -> str | None:
    """The HTTP proxy this provider's requests go through, or None for none.

    The provider's own `proxy` wins (``"none"``: never); unset, the
    environment decides as curl and the SDKs read it (`HTTPS_PROXY` for an
    https upstream, `HTTP_PROXY` for http, `ALL_PROXY` for either, lower case
    first, `NO_PROXY` excepting hosts), through the standard library's
    reading of those variables. A loopback upstream (the built-in simulator,
    a model server beside the proxy) is never reached through a proxy.
    """
    if config.proxy is not None:
        return None if config.proxy == "none" else config.proxy
    parts = urlsplit(config.base_url or "")
    host = parts.hostname
    if not host or _loopback(host):
        return None
    proxies = urllib.request.getproxies_environment()
    if urllib.request.proxy_bypass(host):
        return None
    found = proxies.get(parts.scheme) or proxies.get("all")
    if found is not None and "://" not in found:
        found = "http://" + found  # ``host:port``, as curl reads it
    if found is None or urlsplit(found).scheme not in ("http", "https"):
        # A SOCKS proxy (socks5://) is not spoken: said once at start-up.
        if found is not None:
            log.warning("provider %s: the environment's %s proxy is not an http:// or "
                        "https:// proxy and is not used", config.base_url, parts.scheme)
        return None
    return found


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _proxied_pool(proxy: str, **pool: Any) -> Pool:
    """httpcore2's pool through an HTTP proxy: CONNECT tunnels to https upstreams,
    forwarded requests to http ones; credentials in the URL become Basic auth."""
    parts = urlsplit(proxy)
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    return httpcore2.AsyncHTTPProxy(
        proxy_url=urlunsplit(parts), proxy_auth=auth,
        proxy_ssl_context=httpcore2.default_ssl_context() if parts.scheme == "https" else None,
        **pool)


def make_transport(config: ProviderConfig, *, shards: int = 8) -> Transport:
    """One pooled transport per upstream, HTTP/2 when the upstream speaks it.

    Over TLS the upstream's certificate is checked against the system's trust
    store, or the bundle named by ``SSL_CERT_FILE`` (or the directory
    ``SSL_CERT_DIR``) when set (`httpcore2.default_ssl_context`). Requests go
    through the proxy `proxy_url` names, if any.
    """
    plain_http = (config.base_url or "").startswith("http:")
    # One TLS context for every connection (loading a trust store takes tens
    # of ms); none over plain http.
    ssl_context = None if plain_http else httpcore2.default_ssl_context()
    proxy = proxy_url(config)
    pools: list[Pool] = []
    for size in shard_sizes(config.max_connections, shards):
        options: dict[str, Any] = {
            "ssl_context": ssl_context,
            "max_connections": size,
            "max_keepalive_connections": size,
            "keepalive_expiry": 30.0,
            # Over plain http, HTTP/2 means prior knowledge (h2c): no HTTP/1.1 at all.
            "http1": not (config.http2 and plain_http),
            "http2": config.http2,
            "network_backend": httpcore2.TrioBackend(),
        }
        pools.append(httpcore2.AsyncConnectionPool(**options) if proxy is None
                     else _proxied_pool(proxy, **options))
    pool = _Shards(pools)
    return Transport(
        pool, connect_timeout=config.connect_timeout, read_timeout=config.read_timeout
    )
