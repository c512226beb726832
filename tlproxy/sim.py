"""The simulated upstream: a fake OpenAI server with realistic, controllable latency.

It serves when no provider is configured (so a new user sees the proxy work at
once), in tests (as the upstream every integration test talks to over real
sockets) and in benchmarks (``tlproxy sim --port``).

Answers are deterministic functions of the request (same prompt, same text),
so tests can assert on them. Latency is not: each model has a profile (TTFT,
optionally lognormal from a median and a p99, inter-token delay, token count,
error rate) drawn from a seeded generator.

The planner (`plan_answer`) is protocol-neutral; `SimUpstream` renders its
plans in OpenAI's wire format (`tlproxy.sim_openai`), Anthropic's and
Gemini's (`tlproxy.sim_anthropic` and `tlproxy.sim_gemini`, which convert
their requests into the OpenAI-shaped dict the planner reads), chosen by
path, and paces them here (latency, cuts, compression, comments). A
request can script a failure with a marker in its last user message, so the
proxy's error paths can be driven through the real server, whatever the
protocol:

* ``[sim:status=429]`` (or any status): answer with that HTTP error;
* ``[sim:cut=N]``: stream N content chunks, then drop the stream without its end;
* ``[sim:stall]``: never send a first token.

Each model's profile may also turn on habits of real upstreams (``habits``,
none by default), so the proxy's adapters, race and engine meet them in
tests: Azure's filter-only first chunk, SSE comments, reasoning and refusal
deltas, usage in a vendor field or on the finish chunk, gzip, an error event
in place of the first chunk, no ``[DONE]``, Anthropic's pings and 529s,
Gemini's SAFETY and RECITATION stops, headers long before the first event.
docs/configuration.md says what each one sends.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import hashlib
import hmac
import math
import random
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import trio

from .asgi import lifespan
from .config import SimModelProfile
from .sim_plan import (
    Answer,
    ChoicePlan,
    embedding_vector,
    example_from_schema,
    plan_answer,
    stop_by_filters,
)

__all__ = [
    "Answer",
    "ChoicePlan",
    "PlannerTurn",
    "SimRequest",
    "SimStats",
    "SimUpstream",
    "Wire",
    "embedding_vector",
    "error_body",
    "example_from_schema",
    "plan_answer",
]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

class SimStats:
    """Counters a test can read to see what the upstream saw."""

    def __init__(self) -> None:
        self.requests = 0
        self.streams_started = 0
        self.streams_completed = 0
        self.cancelled = 0
        # The last request as received: its decoded body (in its own
        # protocol), path and headers (names lower-cased).
        self.last_body: dict[str, Any] | None = None
        self.last_path: str | None = None
        self.last_query: str = ""
        self.last_headers: dict[str, str] = {}
        self.cancelled_event = trio.Event()


class SimRequest(msgspec.Struct, frozen=True):
    """One HTTP request to the sim, read whole, with its ASGI channels."""

    path: str
    query: str
    headers: dict[str, str]
    raw: bytes
    receive: Any
    send: Any


# OpenRouter's keep-alive comment.
SSE_COMMENT = b": OPENROUTER PROCESSING\n\n"


Headers = list[tuple[bytes, bytes]]
Habits = frozenset[str]
_NONE: Habits = frozenset()
_SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class Wire(abc.ABC):
    """One protocol's rendering of planned answers; `SimUpstream.respond` drives it.

    A stream is rendered as three lists of framed events: ``head``, sent at
    once; ``steps``, one per token (what ``[sim:cut=N]`` counts), paced by the
    model's latency profile; ``tail``, the end of a complete answer.
    """

    # The statuses a profile's `error_rate` draws from.
    transient: tuple[int, ...] = (429, 500, 503)
    # The status of the `overloaded` habit.
    overloaded: int = 503

    @classmethod
    @abc.abstractmethod
    def error(cls, status: int, message: str | None = None) -> tuple[Any, Headers]:
        """The body (JSON-able) and extra headers of an HTTP error."""

    @abc.abstractmethod
    def message(self, answer: Answer, habits: Habits = _NONE) -> Any:
        """The whole answer as one JSON body."""

    @abc.abstractmethod
    def stream(
        self, answer: Answer, habits: Habits = _NONE
    ) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """The answer as (head, steps, tail) framed events."""

    @abc.abstractmethod
    def error_event(self) -> bytes:
        """The framed event that reports an overloaded upstream inside a 200 stream."""


class PlannerTurn:
    """One native turn converted for the planner, in order: text, tool calls, tool results.

    Text before a tool result is flushed as a user message, so the messages
    keep the native order; `close` appends the turn's last message.
    """

    def __init__(self, out: list[dict[str, Any]], role: str) -> None:
        self.out = out
        self.role = role  # "user" or "assistant"
        self.texts: list[str] = []
        self.calls: list[dict[str, Any]] = []

    def call(self, call_id: str, name: Any, arguments: Any) -> None:
        self.calls.append({"id": call_id, "type": "function",
                           "function": {"name": name, "arguments": _encode(arguments).decode()}})

    def result(self, call_id: str, content: str) -> None:
        self._flush()
        self.out.append({"role": "tool", "tool_call_id": call_id, "content": content})

    def close(self) -> None:
        if self.role == "assistant":
            message: dict[str, Any] = {"role": "assistant",
                                       "content": " ".join(self.texts) or None}
            if self.calls:
                message["tool_calls"] = self.calls
            self.out.append(message)
        else:
            self._flush()

    def _flush(self) -> None:
        if self.texts:
            self.out.append({"role": "user", "content": " ".join(self.texts)})
            self.texts = []


def decode_object(raw: bytes) -> dict[str, Any] | None:
    """A request body that is a JSON object, or None."""
    try:
        body = _decode(raw)
    except msgspec.DecodeError:
        return None
    return body if isinstance(body, dict) else None


def ident(raw: bytes) -> str:
    """A deterministic id suffix for an answer to this request."""
    return hashlib.sha256(raw).hexdigest()[:24]


class SimUpstream:
    """An ASGI app that answers like OpenAI's, Anthropic's and Gemini's APIs, with latency.

    The protocol is chosen by path: ``.../chat/completions`` and
    ``.../embeddings`` speak OpenAI, ``.../v1/messages`` Anthropic
    (`tlproxy.sim_anthropic`), ``.../models/{model}:{method}`` Gemini
    (`tlproxy.sim_gemini`). With an `api_key`, requests must present it the way
    their protocol does, or get that protocol's authentication error.
    `wall_clock` gives the Unix time answers carry (OpenAI's ``created``).
    """

    def __init__(
        self,
        profiles: dict[str, SimModelProfile] | None = None,
        *,
        seed: int = 0,
        default: SimModelProfile | None = None,
        api_key: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.wall_clock = wall_clock
        self.profiles = dict(profiles or {})
        self.default = default or SimModelProfile()
        self.stats = SimStats()
        self.api_key = api_key
        self._rng = random.Random(seed)
        # Prompts cached by protocols that bill for it (Anthropic): their
        # encoded prefix, and its prompt tokens.
        self.prompt_cache: dict[bytes, int] = {}

    def profile(self, model: str) -> SimModelProfile:
        return self.profiles.get(model, self.default)

    def ttft(self, profile: SimModelProfile) -> float:
        median = profile.ttft_ms / 1000
        if profile.ttft_p99_ms is None or median <= 0:
            return median
        sigma = math.log(profile.ttft_p99_ms / profile.ttft_ms) / 2.3263
        return median * math.exp(self._rng.gauss(0.0, sigma))

    def key_ok(self, presented: str | None, *, required: bool = True) -> bool:
        """Whether a request's key is acceptable: any key when none is configured."""
        if self.api_key is None:
            return presented is not None or not required
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.api_key.encode())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.stats.requests += 1
        self.stats.last_path = path
        self.stats.last_query = scope.get("query_string", b"").decode("latin-1")
        self.stats.last_headers = headers
        request = SimRequest(path=path, query=self.stats.last_query, headers=headers, raw=body,
                             receive=receive, send=send)
        # Imported here: the protocol modules build on this one.
        from . import sim_anthropic, sim_gemini, sim_openai

        if path.endswith("/v1/messages") or (
            path.endswith("/models") and "anthropic-version" in headers
        ):
            await sim_anthropic.serve(self, request)
        elif sim_gemini.handles(path, headers):
            await sim_gemini.serve(self, request)
        elif not self.key_ok(_bearer(headers), required=False):
            await send_json(send, 401, *sim_openai.OpenAIWire.error(401))
        elif path.endswith("/chat/completions"):
            await sim_openai.serve(self, request)
        elif path.endswith("/embeddings"):
            await self._embeddings(body, send)
        elif path.endswith("/models"):
            data = [
                {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "sim"}
                for m in self.profiles
            ]
            await send_json(send, 200, {"object": "list", "data": data})
        else:
            await send_json(send, 404, error_body(f"Unknown path {path}", "invalid_request_error"))

    async def respond(
        self, request: SimRequest, wire: Wire, body: dict[str, Any], model: str, *, stream: bool
    ) -> None:
        """Plan the answer to `body` (OpenAI-shaped) and send it in `wire`'s format.

        Scripted and random failures, TTFT and inter-token delays, cuts and
        stalls apply whatever the protocol; a client that leaves cancels the
        answer and is counted in `SimStats.cancelled`.
        """
        profile = self.profile(model)
        habits = frozenset(profile.habits)
        answer = plan_answer(body, profile)
        if habits & {"safety_stop", "recitation_stop"}:
            stop_by_filters(answer)
        status = answer.fail_status
        if status is None and "overloaded" in habits:
            status = wire.overloaded
        if status is None and profile.error_rate and self._rng.random() < profile.error_rate:
            status = self._rng.choice(wire.transient)
        gzip = "gzip" in habits
        if status is not None:
            await send_json(request.send, status, *wire.error(status), gzip=gzip)
            return
        if stream:
            self.stats.streams_started += 1
            head: list[bytes]
            steps: list[bytes]
            if "error_first" in habits:
                head, steps, tail = [], [], [wire.error_event()]
            else:
                head, steps, tail = wire.stream(answer, habits)
            async with self._watching(request.receive) as done:
                await self._paced(request.send, answer, profile, habits, (head, steps, tail),
                                  done)
            return
        delay = self.ttft(profile) + profile.inter_token_ms / 1000 * answer.completion_tokens
        async with self._watching(request.receive):
            await trio.sleep(3600.0 if answer.stall else delay)
        await send_json(request.send, 200, wire.message(answer, habits), gzip=gzip)

    @contextlib.asynccontextmanager
    async def _watching(self, receive: Any) -> AsyncIterator[list[bool]]:
        """Run the body until done or until the client disconnects.

        Yields a flag the body sets once its answer is complete: a client that
        hangs up after reading the whole answer did not cancel anything.
        """
        done = [False]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope, done)
            yield done
            nursery.cancel_scope.cancel()

    async def _watch_disconnect(
        self, receive: Any, scope: trio.CancelScope, done: list[bool] | None = None
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if done is not None and done[0]:
                    return
                self.stats.cancelled += 1
                self.stats.cancelled_event.set()
                scope.cancel()
                return

    async def _paced(
        self,
        send: Any,
        answer: Answer,
        profile: SimModelProfile,
        habits: Habits,
        events: tuple[list[bytes], list[bytes], list[bytes]],
        done: list[bool],
    ) -> None:
        head, steps, tail = events
        headers = _SSE_HEADERS
        compressor = None
        if "gzip" in habits:
            headers = [*headers, (b"content-encoding", b"gzip")]
            compressor = zlib.compressobj(wbits=31)  # 31: the gzip container
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        comments = "sse_comments" in habits

        async def write(data: bytes, more: bool = True) -> None:
            if compressor is not None:
                # A sync flush per write: each event leaves at once, as a
                # streaming server's compressor sends it.
                data = compressor.compress(data) + compressor.flush(
                    zlib.Z_SYNC_FLUSH if more else zlib.Z_FINISH)
            await send({"type": "http.response.body", "body": data, "more_body": more})

        async def emit(data: bytes, more: bool = True) -> None:
            # With `sse_comments`, a keep-alive comment before every event.
            await write(SSE_COMMENT + data if comments and data else data, more)

        late = "late_first_event" in habits
        if comments:
            await write(SSE_COMMENT)
        for data in [] if late else head:
            await emit(data)
        await trio.sleep(3600.0 if answer.stall else self.ttft(profile))
        for data in head if late else []:
            await emit(data)
        itl = profile.inter_token_ms / 1000
        for sent, data in enumerate(steps):
            if sent and itl:
                await trio.sleep(itl)
            if answer.cut_after is not None and sent >= answer.cut_after:
                # Drop the connection mid-stream: no finish, no end event.
                await emit(b"", more=False)
                return
            await emit(data)
        for data in tail[:-1]:
            await emit(data)
        done[0] = True
        self.stats.streams_completed += 1
        await emit(tail[-1] if tail else b"", more=False)

    async def _embeddings(self, raw: bytes, send: Any) -> None:
        body = decode_object(raw)
        if body is None:
            await send_json(send, 400, error_body("invalid JSON", "invalid_request_error"))
            return
        self.stats.last_body = body
        model = body.get("model", "")
        profile = self.profile(model)
        await trio.sleep(self.ttft(profile))
        if profile.error_rate and self._rng.random() < profile.error_rate:
            await send_json(send, 503, error_body("The server is overloaded.", "server_error"))
            return
        inputs = body.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs
                                       and isinstance(inputs[0], int)):
            inputs = [inputs]
        dims = body.get("dimensions") or profile.embedding_dimensions
        data = []
        tokens = 0
        for index, item in enumerate(inputs or []):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += len(item) if isinstance(item, list) else max(1, math.ceil(len(item) / 4))
            vector = embedding_vector(text, dims)
            value: Any = vector
            if body.get("encoding_format") == "base64":
                value = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": value})
        await send_json(send, 200, {"object": "list", "data": data, "model": model,
                                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _bearer(headers: dict[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


async def send_json(
    send: Any, status: int, payload: Any, headers: Headers | None = None, *, gzip: bool = False
) -> None:
    """Send a whole JSON response (gzip-encoded with `gzip`)."""
    body = _encode(payload)
    extra = list(headers or [])
    if gzip:
        compressor = zlib.compressobj(wbits=31)
        body = compressor.compress(body) + compressor.flush()
        extra.append((b"content-encoding", b"gzip"))
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), *extra],
    })
    await send({"type": "http.response.body", "body": body})
