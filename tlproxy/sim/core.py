"""The simulated upstream's core: the state every protocol shares, and the pacing.

`Simulator` holds the model profiles, the counters (`SimStats`), the seeded
latency generator and the prompt cache; its `respond` plans an answer
(`tlproxy.sim.plan`), applies the scripted and random failures and the
model's habits, and sends the answer in a `Wire`'s format: whole after the
model's latency, or streamed event by event at its pace, watching for the
client leaving. Each protocol module (`openai`, `anthropic`, `gemini`)
builds on this one with its `Wire` and its ``serve``; this module knows none
of them (`tlproxy.sim.upstream` picks the protocol).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import hmac
import math
import random
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import trio

from ..config import SimModelProfile
from .plan import Answer, plan_answer, stop_by_filters

__all__ = [
    "Habits",
    "Headers",
    "PlannerTurn",
    "SimRequest",
    "SimStats",
    "Simulator",
    "Wire",
    "decode_object",
    "error_body",
    "ident",
    "send_json",
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
    """One protocol's rendering of planned answers; `Simulator.respond` drives it.

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

    def malformed_event(self) -> bytes:
        """A framed event whose data is not the protocol's JSON (the `malformed` fault)."""
        return b'data: {"choices": [{"index": 0, "delta": {"content": "trunc\n\n'


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


class Simulator:
    """What the simulated upstream knows and does whatever the protocol.

    `profiles` are the models it serves (`default` for any other name);
    `seed` fixes the latency draws; with an `api_key`, requests must present
    it (`key_ok`). `wall_clock` gives the Unix time answers carry (OpenAI's
    ``created``). `tlproxy.sim.upstream.SimUpstream` makes it an ASGI app.
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

    def draws_error(self, profile: SimModelProfile) -> bool:
        """Whether this request fails at random, by the profile's `error_rate`."""
        return bool(profile.error_rate) and self._rng.random() < profile.error_rate

    def key_ok(self, presented: str | None, *, required: bool = True) -> bool:
        """Whether a request's key is acceptable: any key when none is configured."""
        if self.api_key is None:
            return presented is not None or not required
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.api_key.encode())

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
        if status is None and self.draws_error(profile):
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
                await self._paced(request.send, wire, answer, profile, habits,
                                  (head, steps, tail), done)
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
        wire: Wire,
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
        fault = profile.fault
        for sent, data in enumerate(steps):
            if sent and itl:
                await trio.sleep(itl)
            if answer.cut_after is not None and sent >= answer.cut_after:
                # Drop the connection mid-stream: no finish, no end event.
                await emit(b"", more=False)
                return
            if fault is not None and sent >= profile.fault_after:
                await self._fault(fault, profile, emit, wire)
                return
            await emit(data)
        for data in tail[:-1]:
            await emit(data)
        done[0] = True
        self.stats.streams_completed += 1
        await emit(tail[-1] if tail else b"", more=False)

    @staticmethod
    async def _fault(fault: str, profile: SimModelProfile, emit: _Emit, wire: Wire) -> None:
        """A profile's `fault`, in place of the stream's next token: the stream ends."""
        if fault == "stall":
            await trio.sleep(profile.fault_stall_ms / 1000)
        elif fault == "malformed":
            await emit(wire.malformed_event())
        elif fault == "error_event":
            await emit(wire.error_event())
        # Whatever came before, the connection drops: no finish, no end event.
        await emit(b"", more=False)


_Emit = Callable[..., Awaitable[None]]


def error_body(message: str, kind: str) -> dict[str, Any]:
    """OpenAI's error envelope (the shape of the sim's protocol-neutral errors too)."""
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
