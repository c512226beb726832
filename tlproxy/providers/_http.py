"""I/O pieces the adapters share: transport errors, readiness pings, SSE translation.

Third-party exceptions become `UpstreamError` here, at the boundary, and
nowhere else.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import Protocol

import httpx
import orjson

from ..errors import UpstreamError
from ..sse import SSEDecoder, SSEProtocolError
from .base import JSON, Chunk

__all__ = ["StreamTranslator", "event_json", "ping", "translate_sse", "transport_error"]


class StreamTranslator(Protocol):
    """A protocol's stream events in, OpenAI chunks out (see the adapters' translators)."""

    @property
    def finished(self) -> bool: ...

    def feed(self, event: str | None, data: JSON) -> list[Chunk]: ...

    def close(self) -> list[Chunk]: ...


def transport_error(exc: httpx.HTTPError) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError("the upstream provider timed out", status=504, code="timeout")
    return UpstreamError(
        f"could not reach the upstream provider ({type(exc).__name__})", status=502
    )


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
        raise UpstreamError(
            "the upstream provider sent a malformed stream event", status=502, retryable=False
        )
    return value


async def translate_sse(
    response: httpx.Response, translator: StreamTranslator, *, strict_end: bool = False
) -> AsyncGenerator[Chunk, None]:
    """Decode an SSE body and translate each event; a stream cut short raises.

    `strict_end`: the protocol has no terminator event, so bytes left after
    the last complete event also mean the stream was cut.
    """
    decoder = SSEDecoder()
    failure: UpstreamError | None = None
    try:
        # Read to the end, even after the final or an error event (the
        # upstream closes right after either): leaving early would abandon
        # httpx's nested async generators, which trio reports at GC time.
        async with contextlib.aclosing(response.aiter_bytes()) as stream:
            async for data in stream:
                for event in [] if failure else decoder.feed(data):
                    try:
                        chunks = translator.feed(event.event, event_json(event.data))
                    except UpstreamError as exc:
                        failure = exc
                        break
                    for chunk in chunks:
                        yield chunk
    except httpx.HTTPError as exc:
        raise failure or transport_error(exc) from None
    except SSEProtocolError:
        raise UpstreamError(
            "the upstream provider sent a malformed event stream", status=502, retryable=False
        ) from None
    if failure is not None:
        raise failure
    if not translator.finished or (strict_end and decoder.has_partial):
        raise UpstreamError(
            "upstream stream ended before its final event", status=502, retryable=False
        )
    for chunk in translator.close():
        yield chunk
