"""The simulated upstream: a fake OpenAI server with realistic, controllable latency.

It serves when no provider is configured (so a new user sees the proxy work at
once), in tests (as the upstream every integration test talks to over real
sockets) and in benchmarks (``tlproxy sim --port``).

Answers are deterministic functions of the request (same prompt, same text),
so tests can assert on them. Latency is not: each model has a profile (TTFT,
optionally lognormal from a median and a p99, inter-token delay, token count,
error rate) drawn from a seeded generator.

The planner (`plan_answer`) is protocol-neutral; `SimUpstream` renders its
plans in OpenAI's wire format here, and in Anthropic's and Gemini's in
`tlproxy.sim_anthropic` and `tlproxy.sim_gemini` (which convert their
requests into the OpenAI-shaped dict the planner reads), chosen by path. A
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
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import trio

from .asgi import lifespan
from .config import SimModelProfile
from .sim_plan import Answer, ChoicePlan, embedding_vector, example_from_schema, plan_answer
from .sse import DONE, encode_data

__all__ = [
    "Answer",
    "ChoicePlan",
    "OpenAIWire",
    "PlannerTurn",
    "SimRequest",
    "SimStats",
    "SimUpstream",
    "Wire",
    "embedding_vector",
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


# What the reasoning habits think aloud before each answer, and what the
# refusal habit says instead of answering.
REASONING = ("Let", " me", " think", " about", " this", ".")
REFUSAL = ("I'm", " sorry", ",", " I", " can't", " help", " with", " that", ".")
# Azure OpenAI's first chunk when its content filter is on: no choices.
AZURE_FILTER_CHUNK = {
    "choices": [], "created": 0, "id": "", "model": "", "object": "",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {
        kind: {"filtered": False, "severity": "safe"}
        for kind in ("hate", "self_harm", "sexual", "violence")}}],
}
# OpenRouter's keep-alive comment.
SSE_COMMENT = b": OPENROUTER PROCESSING\n\n"


def _usage(answer: Answer, reasoning: int = 0) -> dict[str, Any]:
    completion = answer.completion_tokens + reasoning
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": answer.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


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


class OpenAIWire(Wire):
    """OpenAI's Chat Completions format."""

    def __init__(self, *, model: str, ident: str, created: int, include_usage: bool) -> None:
        self.model = model
        self.base: dict[str, Any] = {
            "id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": "fp_sim"}
        self.include_usage = include_usage
        if include_usage:
            self.base["usage"] = None

    @classmethod
    def error(cls, status: int, message: str | None = None) -> tuple[Any, Headers]:
        if status == 401:
            body = _error(message or "Incorrect API key provided.", "invalid_request_error")
            body["error"]["code"] = "invalid_api_key"
            return body, []
        if message is not None:
            return _error(message, "invalid_request_error" if status < 500 else "server_error"), []
        headers = [(b"retry-after", b"1")] if status == 429 else []
        message = "Rate limit reached" if status == 429 else "The server had an error"
        return _error(message, "server_error"), headers

    def error_event(self) -> bytes:
        # What OpenAI sends when a stream fails after its 200.
        message = "The server had an error while processing your request. Sorry about that!"
        return encode_data(_encode(_error(message, "server_error")))

    def message(self, answer: Answer, habits: Habits = _NONE) -> Any:
        choices = []
        refuses = "refusal" in habits
        reasoning = _reasoning_field(habits)
        for index, plan in enumerate(answer.choices):
            text = "".join(plan.tokens) if plan.tokens or not plan.tool_calls else None
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None if refuses else text,
                "refusal": "".join(REFUSAL) if refuses else None,
                "annotations": [],
            }
            if reasoning:
                message[reasoning] = "".join(REASONING)
            if plan.tool_calls:
                message["tool_calls"] = [
                    {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                    for i, n, a in plan.tool_calls
                ]
            choices.append(
                {"index": index, "message": message, "logprobs": None,
                 "finish_reason": plan.finish_reason}
            )
        base = {k: v for k, v in self.base.items() if k != "usage"}
        usage = _usage(answer, _reasoning_tokens(answer, habits))
        return {**base, "object": "chat.completion", "choices": choices, "usage": usage}

    def stream(
        self, answer: Answer, habits: Habits = _NONE
    ) -> tuple[list[bytes], list[bytes], list[bytes]]:
        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return encode_data(_encode({**self.base, "choices": choices, **extra}))

        def choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

        refuses = "refusal" in habits
        role = {"role": "assistant", "content": None if refuses else "", "refusal": None}
        if refuses:
            role["refusal"] = ""
        head = [chunk([choice(i, role) for i in range(len(answer.choices))])]
        if "azure_filter_chunk" in habits:
            head.insert(0, encode_data(_encode(AZURE_FILTER_CHUNK)))
        per_choice = [_deltas(plan, habits) for plan in answer.choices]
        steps = [
            chunk([choice(index, deltas[step])
                   for index, deltas in enumerate(per_choice) if step < len(deltas)])
            for step in range(max(map(len, per_choice), default=0))
        ]
        usage = _usage(answer, _reasoning_tokens(answer, habits))
        finishes = [choice(i, {}, c.finish_reason) for i, c in enumerate(answer.choices)]
        if "usage_in_x_groq" in habits:
            # Groq's older streams: usage only in its own field of the finish chunk.
            groq = {**usage, "queue_time": 0.01, "prompt_time": 0.002,
                    "completion_time": 0.05, "total_time": 0.062}
            tail = [chunk(finishes, x_groq={"id": "req_sim", "usage": groq})]
        elif "usage_on_finish_chunk" in habits:
            tail = [chunk(finishes, usage=usage)]
        else:
            tail = [chunk(finishes)]
            if self.include_usage:
                tail.append(chunk([], usage=usage))
        if "no_done" not in habits:
            tail.append(DONE)
        return head, steps, tail


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
    """

    def __init__(
        self,
        profiles: dict[str, SimModelProfile] | None = None,
        *,
        seed: int = 0,
        default: SimModelProfile | None = None,
        api_key: str | None = None,
    ) -> None:
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
        from . import sim_anthropic, sim_gemini

        if path.endswith("/v1/messages") or (
            path.endswith("/models") and "anthropic-version" in headers
        ):
            await sim_anthropic.serve(self, request)
        elif sim_gemini.handles(path, headers):
            await sim_gemini.serve(self, request)
        elif not self.key_ok(_bearer(headers), required=False):
            await send_json(send, 401, *OpenAIWire.error(401))
        elif path.endswith("/chat/completions"):
            await self._chat(request)
        elif path.endswith("/embeddings"):
            await self._embeddings(body, send)
        elif path.endswith("/models"):
            data = [
                {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "sim"}
                for m in self.profiles
            ]
            await send_json(send, 200, {"object": "list", "data": data})
        else:
            await send_json(send, 404, _error(f"Unknown path {path}", "invalid_request_error"))

    async def _chat(self, request: SimRequest) -> None:
        body = decode_object(request.raw)
        if body is None:
            await send_json(request.send, 400, _error("invalid JSON", "invalid_request_error"))
            return
        self.stats.last_body = body
        model = body.get("model", "sim")
        wire = OpenAIWire(
            model=model, ident="chatcmpl-" + ident(request.raw), created=int(time.time()),
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")))
        await self.respond(request, wire, body, model, stream=bool(body.get("stream")))

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
            _filtered(answer)
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
            await send_json(send, 400, _error("invalid JSON", "invalid_request_error"))
            return
        self.stats.last_body = body
        model = body.get("model", "")
        profile = self.profile(model)
        await trio.sleep(self.ttft(profile))
        if profile.error_rate and self._rng.random() < profile.error_rate:
            await send_json(send, 503, _error("The server is overloaded.", "server_error"))
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


def _reasoning_field(habits: Habits) -> str | None:
    """Where the reasoning habits put the thinking: DeepSeek's and vLLM's field, or
    OpenRouter's and Groq's."""
    if "reasoning_content" in habits:
        return "reasoning_content"
    return "reasoning" if "reasoning" in habits else None


def _reasoning_tokens(answer: Answer, habits: Habits) -> int:
    return len(REASONING) * len(answer.choices) if _reasoning_field(habits) else 0


def _filtered(answer: Answer) -> None:
    """The `safety_stop` and `recitation_stop` habits: the answer is stopped half-way."""
    for plan in answer.choices:
        if not plan.tool_calls:
            kept = plan.tokens[: max(1, len(plan.tokens) // 2)]
            answer.completion_tokens -= len(plan.tokens) - len(kept)
            plan.tokens = kept
            plan.finish_reason = "content_filter"


def _deltas(plan: ChoicePlan, habits: Habits = _NONE) -> list[dict[str, Any]]:
    """The deltas OpenAI would stream for one choice, after its role chunk."""
    field = _reasoning_field(habits)
    thinking = [{"content": None, field: token} for token in REASONING] if field else []
    if "refusal" in habits and not plan.tool_calls:
        return [*thinking, *({"refusal": token} for token in REFUSAL)]
    if not plan.tool_calls:
        return [*thinking, *({"content": token} for token in plan.tokens)]
    deltas: list[dict[str, Any]] = thinking
    # Each call: a first fragment with id, type and name, then argument pieces.
    for index, (call_id, name, arguments) in enumerate(plan.tool_calls):
        head = {"index": index, "id": call_id, "type": "function",
                "function": {"name": name, "arguments": ""}}
        deltas.append({"tool_calls": [head]})
        for start in range(0, len(arguments), 8):
            piece = arguments[start : start + 8]
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    return deltas


def _bearer(headers: dict[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def _error(message: str, kind: str) -> dict[str, Any]:
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
