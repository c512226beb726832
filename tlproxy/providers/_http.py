"""I/O pieces the adapters share: the transport they hold, readiness pings, JSON
answers, SSE translation.

Nothing here sees a third-party exception: the transport maps them to
`UpstreamError` at its boundary (`transport.map_exceptions`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import Protocol

import msgspec
import orjson

from ..errors import UpstreamError
from ..sse import SSEDecoder, SSEProtocolError
from .base import JSON, Chunk, Provider
from .transport import Endpoint, Reply, Transport

__all__ = [
    "HTTPProvider",
    "StreamTranslator",
    "encode_body",
    "event_json",
    "json_answer",
    "translate_sse",
]

# Request bodies are encoded with msgspec, not orjson: orjson's bytes keep its
# 4 KiB starting buffer whatever their length, and the transport holds a
# request's body for as long as its response streams, so each open stream kept
# 4 KiB for a body of a few hundred bytes (measured with tracemalloc,
# `bench/streams.py`).
encode_body = msgspec.json.Encoder().encode


class HTTPProvider(Provider):
    """An adapter over one upstream's pooled transport: what every adapter's
    constructor sets up.

    ``transport`` is the caller's and stays open unless ``owns_transport``.
    Every request sends JSON, with ``headers`` after the content type; a
    header without a value (no API key configured) is left out. ``ping_url``
    is any cheap URL of the upstream, asked for readiness.
    """

    def __init__(
        self,
        name: str,
        *,
        transport: Transport,
        owns_transport: bool,
        ping_url: str,
        headers: Mapping[str, str | None],
    ) -> None:
        self.name = name
        self._transport = transport
        self._owns_transport = owns_transport
        self._headers: dict[str, str | None] = {"content-type": "application/json", **headers}
        self._ping = self.endpoint(ping_url)

    def endpoint(self, url: str) -> Endpoint:
        """`url` with this adapter's headers: built once, sent many times."""
        return Endpoint(url, self._headers)

    async def ping(self) -> bool:
        return await self._transport.ping(self._ping)

    async def aclose(self) -> None:
        if self._owns_transport:
            await self._transport.aclose()


class StreamTranslator(Protocol):
    """A protocol's stream events in, OpenAI chunks out (see the adapters' translators)."""

    @property
    def finished(self) -> bool: ...

    def feed(self, event: str | None, data: JSON) -> list[Chunk]: ...

    def close(self) -> list[Chunk]: ...


def json_answer(content: bytes) -> JSON:
    """A 2xx body that must be a JSON object; anything else is the upstream's fault (502)."""
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise UpstreamError("the upstream provider sent invalid JSON", status=502) from None
    if not isinstance(answer, dict):
        raise UpstreamError("the upstream provider sent an unexpected answer", status=502)
    return answer


def event_json(data: str) -> JSON:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError("the upstream provider sent a malformed stream event", status=502)
    return value


async def translate_sse(
    reply: Reply,
    translator: StreamTranslator,
    *,
    strict_end: bool = False,
    sentinel: str | None = None,
) -> AsyncGenerator[Chunk, None]:
    """Decode an SSE body and translate each event; a stream cut short raises.

    The body is read decoded (`Reply.chunks`): upstreams may compress an
    event stream as they would any answer. The stream is complete when the
    translator says so, or at `sentinel` (OpenAI's ``[DONE]``), after which
    nothing more is read as events. `strict_end`: the protocol has no
    terminator event, so bytes left after the last complete event also mean
    the stream was cut.

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
        # the body's nested async generators, which trio reports at GC time.
        async with contextlib.aclosing(reply.chunks()) as stream:
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
    except UpstreamError as exc:
        # Only reading the body raises here (the translator's errors are held
        # in `failure`). A connection lost after the end of the answer loses
        # nothing.
        complete = ended or (translator.finished and not strict_end)
        if failure is not None or not complete:
            raise failure or exc from None
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
