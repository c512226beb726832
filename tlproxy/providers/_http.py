"""I/O pieces the adapters share: the client they hold, transport and status errors,
readiness pings, JSON answers, SSE translation.

Third-party exceptions become `UpstreamError` here, at the boundary, and
nowhere else.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import Protocol, cast

import httpx
import msgspec
import orjson

from ..errors import UpstreamError
from ..sse import SSEDecoder, SSEProtocolError
from .base import JSON, Chunk, Provider

__all__ = [
    "HTTPProvider",
    "StreamTranslator",
    "credentials_rejected",
    "encode_body",
    "event_json",
    "json_answer",
    "ping",
    "rate_limited",
    "request_refused",
    "translate_sse",
    "transport_error",
    "unavailable",
    "upstream_timeout",
]

# Request bodies are encoded with msgspec, not orjson: orjson's bytes keep its
# 4 KiB starting buffer whatever their length, and httpx holds a request's body
# for as long as its response streams, so each open stream kept 4 KiB for a
# body of a few hundred bytes (measured with tracemalloc, `bench/streams.py`).
encode_body = msgspec.json.Encoder().encode


class HTTPProvider(Provider):
    """An adapter over one pooled httpx client: what every adapter's constructor sets up.

    ``client`` is the caller's and stays open unless ``owns_client``. Every
    request sends JSON, with ``headers`` after the content type; a header
    without a value (no API key configured) is left out. ``ping_url`` is any
    cheap URL of the upstream, asked for readiness.
    """

    def __init__(
        self,
        name: str,
        *,
        client: httpx.AsyncClient,
        owns_client: bool,
        ping_url: str,
        headers: Mapping[str, str | None],
    ) -> None:
        self.name = name
        self._client = client
        self._owns_client = owns_client
        self._ping_url = ping_url
        self._headers = {"content-type": "application/json"}
        self._headers.update({k: v for k, v in headers.items() if v})

    async def ping(self) -> bool:
        return await ping(self._client, self._ping_url, self._headers)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


class StreamTranslator(Protocol):
    """A protocol's stream events in, OpenAI chunks out (see the adapters' translators)."""

    @property
    def finished(self) -> bool: ...

    def feed(self, event: str | None, data: JSON) -> list[Chunk]: ...

    def close(self) -> list[Chunk]: ...


def transport_error(exc: httpx.HTTPError) -> UpstreamError:
    # No connection (refused, unresolvable, none free in the pool in time): the
    # request was never sent, so the upstream bills nothing for it.
    unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError("the upstream provider timed out", status=504, code="timeout",
                             unsent=unsent)
    return UpstreamError(
        f"could not reach the upstream provider ({type(exc).__name__})", status=502,
        unsent=unsent,
    )


# What an upstream's HTTP status means for our client, where the adapters agree.


def rate_limited(message: str, status: int, retry_after: str | None) -> UpstreamError:
    """The upstream rate-limited us: 429, keeping its ``retry-after``."""
    return UpstreamError(
        message,
        status=429,
        code="rate_limit_exceeded",
        type="rate_limit_error",
        retry_after=retry_after,
        upstream_status=status,
    )


def credentials_rejected(status: int) -> UpstreamError:
    """The upstream refused *our* credentials: the client did nothing wrong.

    502 and retryable, so another candidate can serve.
    """
    return UpstreamError(
        "the upstream provider rejected the proxy's credentials",
        status=502,
        upstream_status=status,
    )


def request_refused(message: str, status: int) -> UpstreamError:
    """The request itself is wrong for this model: 400 (or 413), not retried."""
    return UpstreamError(
        message,
        status=413 if status == 413 else 400,
        retryable=False,
        type="invalid_request_error",
        upstream_status=status,
    )


def upstream_timeout(message: str, status: int) -> UpstreamError:
    """The upstream gave up waiting (408, 504): 504."""
    return UpstreamError(message, status=504, code="timeout", upstream_status=status)


def unavailable(
    message: str, status: int, retry_after: str | None, kind: str = "service_unavailable"
) -> UpstreamError:
    """The upstream is overloaded or down: 503, keeping its ``retry-after``."""
    return UpstreamError(
        message, status=503, retry_after=retry_after, upstream_status=status, type=kind
    )


def json_answer(content: bytes) -> JSON:
    """A 2xx body that must be a JSON object; anything else is the upstream's fault (502)."""
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise UpstreamError("the upstream provider sent invalid JSON", status=502) from None
    if not isinstance(answer, dict):
        raise UpstreamError("the upstream provider sent an unexpected answer", status=502)
    return answer


async def ping(client: httpx.AsyncClient, url: str, headers: Mapping[str, str]) -> bool:
    """Whether the upstream answers at all; any HTTP status, even 401, means it is there."""
    try:
        await client.get(url, headers=headers, timeout=2.0)
    except httpx.HTTPError:
        return False
    return True


def event_json(data: str) -> JSON:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError("the upstream provider sent a malformed stream event", status=502)
    return value


async def translate_sse(
    response: httpx.Response,
    translator: StreamTranslator,
    *,
    strict_end: bool = False,
    sentinel: str | None = None,
) -> AsyncGenerator[Chunk, None]:
    """Decode an SSE body and translate each event; a stream cut short raises.

    The body is read decoded (``aiter_bytes``): upstreams may compress an
    event stream as they would any answer (httpx asks for gzip and deflate).
    The stream is complete when the translator says so, or at `sentinel`
    (OpenAI's ``[DONE]``), after which nothing more is read as events.
    `strict_end`: the protocol has no terminator event, so bytes left after
    the last complete event also mean the stream was cut.

    Every failure of the upstream's making (an error event, a malformed
    event, a cut) is retryable: before a first token another candidate may
    answer. Only an error event that blames the request says otherwise.
    """
    decoder = SSEDecoder()
    failure: UpstreamError | None = None
    ended = False
    try:
        # Read to the end, even after the final or an error event (the
        # upstream closes right after either): leaving early would abandon
        # httpx's nested async generators, which trio reports at GC time.
        # httpx declares an AsyncIterator; it is an async generator, closable.
        body = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
        async with contextlib.aclosing(body) as stream:
            async for data in stream:
                for event in [] if failure or ended else decoder.feed(data):
                    if event.data == sentinel:
                        ended = True
                        break
                    try:
                        chunks = translator.feed(event.event, event_json(event.data))
                    except UpstreamError as exc:
                        failure = exc
                        break
                    for chunk in chunks:
                        yield chunk
    except httpx.HTTPError as exc:
        # A connection lost after the end of the answer loses nothing.
        complete = ended or (translator.finished and not strict_end)
        if failure is not None or not complete:
            raise failure or transport_error(exc) from None
    except SSEProtocolError:
        raise UpstreamError(
            "the upstream provider sent a malformed event stream", status=502
        ) from None
    if failure is not None:
        raise failure
    if not (ended or translator.finished) or (strict_end and decoder.has_partial):
        raise UpstreamError("upstream stream ended before its final event", status=502)
    for chunk in translator.close():
        yield chunk
