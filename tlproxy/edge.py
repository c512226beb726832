"""The edge's bytes: one HTTP request over ASGI, and replies rendered as Chat Completions.

The engine returns values (`engine.Answer`, `engine.Stream`); this module is
the one place they become bytes on the wire: JSON bodies, SSE framing and
batching, the error envelope before the first byte and the error event after
it, the caps on concurrent streams, and the listener that turns a client's
``http.disconnect`` into the cancellation of everything the request started
(starlette's `listen_for_disconnect` pattern: the upstream work and the
listener in one nursery, whichever ends first cancels the other).

Chat Completions' exact shape is applied here, chunk by chunk, from the pure
repairs in `shapes.py`; a second renderer (the Responses API) would read the
same reply and write other events.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from .asgi import Receive, Send
from .config import ClientKey, LimitsConfig
from .engine import Engine
from .errors import PayloadTooLarge, ProxyError, UpstreamError, error_body, lone_errors
from .metrics import Metrics
from .reply import Answer, Reply
from .router import Route
from .shapes import repair_chunk, repair_completion
from .sse import DONE, encode_data

if TYPE_CHECKING:
    from .accounting import Tab
    from .call import ChatCall, EmbeddingCall
    from .tracecontext import Timeline

__all__ = ["CUT_MID_STREAM", "ClientGone", "Request", "StreamSlots", "cancelled_on_disconnect",
           "render_chat", "render_embeddings", "render_error", "route_headers", "serve_chat"]

_encode = msgspec.json.Encoder().encode

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]

# `Request.error` for a stream cut after its first byte: the access log's ``cut``.
CUT_MID_STREAM = "upstream_failed_mid_stream"


class Request:
    """One HTTP request: scope, body reader, and the response's progress."""

    __slots__ = (
        "answered", "arrived", "call", "client_gone", "error", "headers", "id", "key", "method",
        "path", "receive", "route", "scope", "send", "started", "status", "tab", "trace", "ttft",
    )

    def __init__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        self.id = "req_" + uuid.uuid4().hex
        self.started = False
        # The client key that authenticated this request, when keys are configured.
        self.key: ClientKey | None = None
        # Filled in as the request goes, for metrics and the access log. Times
        # are on trio's clock, the race's: `ttft` is from `arrived` to the
        # first byte of a streamed answer sent (None for a JSON answer).
        self.arrived = trio.current_time()
        self.status = 0
        self.route: Route | None = None
        self.ttft: float | None = None
        self.error: str | None = None
        # The client left before it had the whole answer.
        self.client_gone = False
        # The whole answer was handed over: a client that leaves now left satisfied.
        self.answered = False
        # A request the engine serves: its value and its account (`accounting.Tab`).
        self.call: ChatCall | EmbeddingCall | None = None
        self.tab: Tab | None = None
        # Its trace, when tracing is on (`tracing.Tracing.begin`).
        self.trace: Timeline | None = None

    def text_headers(self) -> dict[str, str]:
        return {k: v.decode("latin-1") for k, v in self.headers.items()}

    async def body(self, limit: int, read_timeout: float = 30.0) -> bytes:
        try:
            with trio.fail_after(read_timeout):
                return await self._read_body(limit)
        except trio.TooSlowError:
            raise ProxyError(
                f"Timed out reading the request body (limit {read_timeout:g} s).",
                status=408, type="invalid_request_error", code="request_timeout") from None

    async def _read_body(self, limit: int) -> bytes:
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _too_large(limit)
        chunks = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        self.status = status
        # Headers every response to this request carries (a key's x-ratelimit-*).
        extra = [(k.encode(), v.encode()) for k, v in self.tab.limit_headers.items()] if (
            self.tab is not None) else []
        await self.send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"x-request-id", self.id.encode()), *_merge(extra, headers)],
        })

    async def respond(
        self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await self.start(status, [(b"content-type", b"application/json"),
                                  (b"content-length", b"%d" % len(body)), *(headers or ())])
        await self.send({"type": "http.response.body", "body": body})


class ClientGone(Exception):
    """The client disconnected while we were still reading its request."""


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Request body too large: the limit is {limit} bytes.", code="request_too_large"
    )


def _merge(
    base: list[tuple[bytes, bytes]], override: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """`base` headers, except those `override` sets again (an error's own retry-after)."""
    if not base:
        return override
    names = {name.lower() for name, _ in override}
    return [*(h for h in base if h[0].lower() not in names), *override]


def route_headers(route: Route) -> list[tuple[bytes, bytes]]:
    """The headers that say what happened: tier, model, provider, rule, attempts."""
    return [
        (b"x-tlproxy-tier", route.tier.encode()),
        (b"x-tlproxy-model", route.model.id.encode()),
        (b"x-tlproxy-provider", route.model.provider.encode()),
        (b"x-tlproxy-rule", route.rule.encode()),
        (b"x-tlproxy-attempts", str(route.attempts).encode()),
    ]


# -- rendering -------------------------------------------------------------

async def serve_chat(request: Request, engine: Engine, call: ChatCall, tab: Tab, *,
                     slots: StreamSlots, metrics: Metrics) -> None:
    """Answer a chat request: the engine's reply, rendered while the client stays.

    A stream holds a slot of the caps for as long as it runs; a client that
    leaves cancels everything the request started, upstream included.
    """
    with slots.hold(call.key) if call.stream else contextlib.nullcontext():
        async with cancelled_on_disconnect(request), engine.chat(call, tab) as reply:
            await render_chat(request, reply, include_usage=call.include_usage,
                              metrics=metrics)


async def render_chat(request: Request, reply: Reply, *, include_usage: bool,
                      metrics: Metrics) -> None:
    """Write `reply` to the client as a Chat Completions answer.

    A complete answer is one JSON body, repaired to OpenAI's shape. A stream is
    SSE: the first batch when the winner has its first token (the client's
    TTFT), every later batch in one write, ``[DONE]`` joined to the last; a
    failure after the first byte is an OpenAI error event and no ``[DONE]``.
    """
    request.route = reply.route
    if isinstance(reply, Answer):
        repair_completion(reply.body)
        await _answer(request, reply)
        return
    await request.start(200, [*_SSE_HEADERS, *route_headers(reply.route)])
    metrics.open_streams.inc()
    try:
        batches = reply.batches
        first, last = True, b""
        try:
            async for batch in batches:
                data = _frames(batch, include_usage)
                if batches.ended:
                    last = data  # the stream ended whole: [DONE] joins it
                    break
                if data or first:
                    await _send(request, data)
                if first:
                    request.ttft = trio.current_time() - request.arrived
                    first = False
        except UpstreamError as exc:
            request.error = CUT_MID_STREAM
            await _send(request, encode_data(exc.body()), more=False)
            return
        # Complete once [DONE] is handed over: a client that hangs up as soon as
        # it reads it may cancel this task during the send.
        request.answered = True
        await _send(request, last + DONE, more=False)
    finally:
        metrics.open_streams.dec()


async def render_embeddings(request: Request, answer: Answer) -> None:
    """Write an embeddings answer: the upstream's list, as it came."""
    request.route = answer.route
    await _answer(request, answer)


async def _answer(request: Request, answer: Answer) -> None:
    body = _encode(answer.body)
    # With its length the answer is framed by Content-Length, as OpenAI's are,
    # not chunked: no terminating chunk, one write fewer for the server.
    await request.start(200, [(b"content-type", b"application/json"),
                              (b"content-length", b"%d" % len(body)),
                              *route_headers(answer.route)])
    # Answered once the body is handed over: the server may tell the disconnect
    # listener the exchange is over before the send returns.
    request.answered = True
    await request.send({"type": "http.response.body", "body": body})


def _frames(chunks: list[dict[str, Any]], include_usage: bool) -> bytes:
    """Chunks as the SSE bytes the client gets, repaired; the dropped ones left out."""
    return b"".join(encode_data(_encode(c)) for c in chunks if repair_chunk(c, include_usage))


async def _send(request: Request, data: bytes, *, more: bool = True) -> None:
    await request.send({"type": "http.response.body", "body": data, "more_body": more})


async def render_error(request: Request, exc: ProxyError | None) -> None:
    """An error before the first byte: its OpenAI envelope (None: our own bug, a
    500 that names the request and nothing else). After the first byte nothing
    can be sent: the stream already ended with its error event."""
    if request.started:
        return
    if exc is None:
        await request.respond(500, error_body(
            f"The server had an error while processing your request. "
            f"Request id: {request.id}", type="server_error"))
        return
    headers = [(k.encode(), v.encode()) for k, v in exc.headers.items()]
    await request.respond(exc.status, exc.body(), headers)


# -- the client's side -------------------------------------------------------

class StreamSlots:
    """Open streams counted against the worker's cap and each key's."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self.open = 0
        self.by_key: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, key: ClientKey | None) -> Iterator[None]:
        """One stream's slot while it runs; a 503 or 429 when there is none."""
        limits = self.limits
        name = key.name if key else None
        if self.open >= limits.max_streams_per_worker:
            raise ProxyError(
                "This server is at its limit of concurrent streams; retry shortly.",
                status=503, type="service_unavailable", code="too_many_streams",
                headers={"retry-after": "1"})
        per_key = self.by_key.get(name, 0) if name else 0
        if name and limits.max_streams_per_key is not None and (
                per_key >= limits.max_streams_per_key):
            raise ProxyError(
                f"This API key has {per_key} streams open, its limit; close one or retry "
                "shortly.", status=429, type="requests", code="too_many_concurrent_streams",
                headers={"retry-after": "1"})
        self.open += 1
        if name:
            self.by_key[name] = per_key + 1
        try:
            yield
        finally:
            self.open -= 1
            if name:
                self.by_key[name] -= 1
                if not self.by_key[name]:
                    del self.by_key[name]


@contextlib.asynccontextmanager
async def cancelled_on_disconnect(request: Request) -> AsyncIterator[None]:
    """Run the body while listening for the client to leave; if it does, cancel the body.

    The body's own exception leaves as itself, not wrapped in a group, so the
    edge renders it like any other error.
    """
    with lone_errors():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_listen_for_disconnect, request, nursery.cancel_scope)
            yield
            nursery.cancel_scope.cancel()



async def _listen_for_disconnect(request: Request, scope: trio.CancelScope) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            if request.answered:
                # The exchange is over: the server says so while our last send is
                # still inside it (a client that hangs up once it has [DONE] had the
                # whole answer too). Cancelling now would cut the server's own
                # bookkeeping short: hypercorn would never mark the keep-alive
                # connection idle, and a drain would wait its whole grace period.
                return
            request.client_gone = True  # before the cancellation: the ledger reads it
            scope.cancel()
            return
