"""The Responses API's renderer: the engine's reply written as a ``response`` or its events.

The second reader of the reply `edge.render_chat` reads: the same engine
context (race, admission, accounting), the same stream slots and the same
disconnect listener (`edge.cancelled_on_disconnect`), the same routing
headers; only the bytes differ. A complete answer is one JSON ``response``
object. A stream is SSE in OpenAI's framing for this API (``event: <type>``
then ``data: <json>``): ``response.created`` and ``response.in_progress``
written with the winner's first token (nothing reaches the client before the
decision is final and a model of the decided tier produced one), every later
batch of chunks in one write, and exactly one terminal event: a failure after
the first byte is ``response.failed`` with the error, never
``response.completed``. There is no ``[DONE]`` in this API.

A response to keep (``store``) is handed to `keep` before its last bytes
are sent, so a client that continues the conversation as soon as it has the
answer finds it stored.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from ..edge import CUT_MID_STREAM, Request, StreamSlots, cancelled_on_disconnect, route_headers
from ..engine import Engine
from ..errors import UpstreamError
from ..metrics import Metrics
from ..reply import Answer, Reply
from .events import ResponseEvents, completion_chunk, response_base
from .request import Turn, new_id

if TYPE_CHECKING:
    from ..accounting import Tab
    from ..call import ChatCall

__all__ = ["Keep", "encode_events", "serve_responses"]

log = logging.getLogger("tlproxy")
_encode = msgspec.json.Encoder().encode

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]

# Where a finished response goes when it is to be kept (`store`): awaited
# before its last bytes are sent.
Keep = Callable[[dict[str, Any]], Awaitable[None]]


def encode_events(events: list[dict[str, Any]]) -> bytes:
    """Events as SSE bytes: ``event: <type>`` and one ``data:`` line each."""
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + _encode(e) + b"\n\n"
                    for e in events)


async def serve_responses(request: Request, engine: Engine, call: ChatCall, tab: Tab,
                          turn: Turn, *, slots: StreamSlots, metrics: Metrics,
                          keep: Keep | None) -> None:
    """Answer a Responses request with the engine's reply, while the client stays."""
    with slots.hold(call.key) if call.stream else contextlib.nullcontext():
        async with cancelled_on_disconnect(request), engine.chat(call, tab) as reply:
            await render_responses(request, reply, turn, metrics=metrics, keep=keep)


async def render_responses(request: Request, reply: Reply, turn: Turn, *, metrics: Metrics,
                           keep: Keep | None) -> None:
    """Write `reply` as a ``response`` object (JSON) or as its event stream."""
    request.route = reply.route
    builder = ResponseEvents(response_base(
        turn, response_id=new_id("resp"), created_at=int(time.time()),
        model=reply.route.model.id, store=keep is not None))
    if isinstance(reply, Answer):
        builder.start()
        builder.feed(completion_chunk(reply.body))
        builder.finish(int(time.time()))
        response = builder.response()
        if keep is not None:
            await keep(response)
        await request.start(200, [(b"content-type", b"application/json"),
                                  *route_headers(reply.route)])
        request.answered = True
        await request.send({"type": "http.response.body", "body": _encode(response)})
        return
    await request.start(200, [*_SSE_HEADERS, *route_headers(reply.route)])
    metrics.open_streams.inc()
    try:
        batches = reply.batches
        events = builder.start()
        first = True
        try:
            async for batch in batches:
                for chunk in batch:
                    events.extend(builder.feed(chunk))
                if batches.ended:
                    break
                if events or first:
                    await _send(request, encode_events(events))
                    events = []
                if first:
                    request.ttft = trio.current_time() - request.arrived
                    first = False
        except UpstreamError as exc:
            request.error = CUT_MID_STREAM
            code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
            events.extend(builder.fail(exc.message, code=code))
            await _send(request, encode_events(events), more=False)
            return
        events.extend(builder.finish(int(time.time())))
        if keep is not None:
            await keep(builder.response())
        request.answered = True
        await _send(request, encode_events(events), more=False)
    finally:
        metrics.open_streams.dec()


async def _send(request: Request, data: bytes, *, more: bool = True) -> None:
    await request.send({"type": "http.response.body", "body": data, "more_body": more})
