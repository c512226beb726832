"""The simulated upstream: a fake OpenAI server with realistic, controllable latency.

It serves when no provider is configured (so a new user sees the proxy work at
once), in tests (as the upstream every integration test talks to over real
sockets) and in benchmarks (``tlproxy sim --port``).

Answers are deterministic functions of the request (same prompt, same text),
so tests can assert on them. Latency is not: each model has a profile (TTFT,
optionally lognormal from a median and a p99, inter-token delay, token count,
error rate) drawn from a seeded generator.

The planner (`plan_answer`) is protocol-neutral; `SimUpstream` renders its
plans in OpenAI's wire format. A request can script a failure with a marker
in its last user message, so the proxy's error paths can be driven through
the real server:

* ``[sim:status=429]`` (or any status): answer with that HTTP error;
* ``[sim:cut=N]``: stream N content chunks, then drop the stream without its end;
* ``[sim:stall]``: never send a first token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import struct
import time
from typing import Any

import msgspec
import trio

from .config import SimModelProfile
from .sse import DONE, encode_data

__all__ = ["Answer", "ChoicePlan", "SimStats", "SimUpstream", "example_from_schema", "plan_answer"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

_WORDS = (
    "the proxy routes each request to a model that fits its task and budget while streaming "
    "tokens as soon as the fastest eligible upstream produces them so users see answers sooner "
    "and teams pay for quality only where it matters"
).split()

_MARKER = re.compile(r"\[sim:(status=(?P<status>\d{3})|cut=(?P<cut>\d+)|stall)\]")


class ChoicePlan(msgspec.Struct):
    tokens: list[str]
    tool_calls: list[tuple[str, str, str]]  # (id, name, arguments JSON)
    finish_reason: str


class Answer(msgspec.Struct):
    choices: list[ChoicePlan]
    prompt_tokens: int
    completion_tokens: int
    fail_status: int | None = None
    cut_after: int | None = None
    stall: bool = False


class SimStats:
    """Counters a test can read to see what the upstream saw."""

    def __init__(self) -> None:
        self.requests = 0
        self.streams_started = 0
        self.streams_completed = 0
        self.cancelled = 0
        self.last_body: dict[str, Any] | None = None
        self.cancelled_event = trio.Event()


def example_from_schema(schema: Any, depth: int = 0) -> Any:
    """A plausible value that satisfies a (simple) JSON schema."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_from_schema(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: example_from_schema(sub, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [example_from_schema(schema.get("items", {}), depth + 1)]
    if kind == "string":
        return {"date": "2026-01-01", "date-time": "2026-01-01T00:00:00Z"}.get(
            schema.get("format", ""), "example"
        )
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    return None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _prompt_tokens(body: dict[str, Any]) -> int:
    chars = sum(len(_text_of(m.get("content"))) for m in body.get("messages", ()))
    chars += len(json.dumps(body.get("tools", []))) if body.get("tools") else 0
    return max(1, math.ceil(chars / 4) + 3 * len(body.get("messages", ())))


def plan_answer(body: dict[str, Any], profile: SimModelProfile) -> Answer:
    """Decide what to answer, deterministically from the request."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    prompt = _text_of(last_user.get("content"))
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    n = body.get("n") or 1

    marker = _MARKER.search(prompt)
    fail = int(marker.group("status")) if marker and marker.group("status") else None
    cut = int(marker.group("cut")) if marker and marker.group("cut") else None
    stall = bool(marker and marker.group(0) == "[sim:stall]")

    tools = body.get("tools") or []
    choice = body.get("tool_choice", "auto")
    wants_tools = bool(tools) and choice != "none" and last.get("role") != "tool"
    fmt = (body.get("response_format") or {}).get("type")

    choices = []
    for index in range(n):
        if wants_tools:
            chosen = tools[:1]
            if isinstance(choice, dict):
                name = (choice.get("function") or {}).get("name")
                chosen = [t for t in tools if t.get("function", {}).get("name") == name][:1]
            elif body.get("parallel_tool_calls", True) and len(tools) > 1:
                chosen = tools[:2]
            calls = []
            for position, tool in enumerate(chosen):
                function = tool.get("function") or {}
                args = example_from_schema(function.get("parameters") or {}) or {}
                call_id = f"call_{seed % 10**12:012d}{index}{position}"
                calls.append((call_id, function.get("name", "tool"), _encode(args).decode()))
            choices.append(ChoicePlan(tokens=[], tool_calls=calls, finish_reason="tool_calls"))
            continue
        if fmt in ("json_object", "json_schema"):
            schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
            value = example_from_schema(schema) if schema else {"answer": _WORDS[seed % 9]}
            text = _encode(value).decode()
            tokens = [text[i : i + 4] for i in range(0, len(text), 4)]
        else:
            count = profile.tokens
            words = [_WORDS[(rng.randrange(len(_WORDS)) + index) % len(_WORDS)] for _ in range(count)]
            tokens = [words[0].capitalize()] + [" " + w for w in words[1:]]
            if last.get("role") == "tool":
                tokens = ["The", " tool", " returned", ":"] + [" " + _text_of(last.get("content"))]
        finish = "stop"
        stops = body.get("stop")
        stops = [stops] if isinstance(stops, str) else (stops or [])
        if stops:
            text = "".join(tokens)
            cut_at = min((text.find(s) for s in stops if s and s in text), default=-1)
            if cut_at >= 0:
                tokens = _retokenize(text[:cut_at])
        if limit is not None and len(tokens) > limit:
            tokens, finish = tokens[:limit], "length"
        choices.append(ChoicePlan(tokens=tokens, tool_calls=[], finish_reason=finish))
    completion = sum(len(c.tokens) + sum(len(a) // 4 + 1 for _, _, a in c.tool_calls) for c in choices)
    return Answer(
        choices=choices,
        prompt_tokens=_prompt_tokens(body),
        completion_tokens=completion,
        fail_status=fail,
        cut_after=cut,
        stall=stall,
    )


def _retokenize(text: str) -> list[str]:
    parts = re.findall(r"\s*\S+", text)
    return parts


def _usage(answer: Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for a text (similar texts are not similar)."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class SimUpstream:
    """An ASGI app that answers like OpenAI's API, with simulated latency."""

    def __init__(
        self,
        profiles: dict[str, SimModelProfile] | None = None,
        *,
        seed: int = 0,
        default: SimModelProfile | None = None,
    ) -> None:
        self.profiles = dict(profiles or {})
        self.default = default or SimModelProfile()
        self.stats = SimStats()
        self._rng = random.Random(seed)

    def profile(self, model: str) -> SimModelProfile:
        return self.profiles.get(model, self.default)

    def ttft(self, profile: SimModelProfile) -> float:
        median = profile.ttft_ms / 1000
        if profile.ttft_p99_ms is None or median <= 0:
            return median
        sigma = math.log(profile.ttft_p99_ms / profile.ttft_ms) / 2.3263
        return median * math.exp(self._rng.gauss(0.0, sigma))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
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
        self.stats.requests += 1
        if path.endswith("/chat/completions"):
            await self._chat(body, receive, send)
        elif path.endswith("/embeddings"):
            await self._embeddings(body, send)
        elif path.endswith("/models"):
            data = [
                {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "sim"}
                for m in self.profiles
            ]
            await _json(send, 200, {"object": "list", "data": data})
        else:
            await _json(send, 404, _error(f"Unknown path {path}", "invalid_request_error"))

    async def _chat(self, raw: bytes, receive: Any, send: Any) -> None:
        try:
            body = _decode(raw)
        except msgspec.DecodeError:
            await _json(send, 400, _error("invalid JSON", "invalid_request_error"))
            return
        self.stats.last_body = body
        profile = self.profile(body.get("model", ""))
        answer = plan_answer(body, profile)
        status = answer.fail_status
        if status is None and profile.error_rate and self._rng.random() < profile.error_rate:
            status = self._rng.choice((429, 500, 503))
        if status is not None:
            headers = [(b"retry-after", b"1")] if status == 429 else []
            message = "Rate limit reached" if status == 429 else "The server had an error"
            await _json(send, status, _error(message, "server_error"), headers)
            return
        ident = "chatcmpl-" + hashlib.sha256(raw).hexdigest()[:24]
        created = int(time.time())
        model = body.get("model", "sim")
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self.stats.streams_started += 1
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
                await self._stream(send, answer, profile, ident, created, model, include_usage)
                nursery.cancel_scope.cancel()
            return
        delay = self.ttft(profile) + profile.inter_token_ms / 1000 * answer.completion_tokens
        if answer.stall:
            delay = 3600.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
            await trio.sleep(delay)
            nursery.cancel_scope.cancel()
        choices = []
        for index, plan in enumerate(answer.choices):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(plan.tokens) if plan.tokens or not plan.tool_calls else None,
                "refusal": None,
                "annotations": [],
            }
            if plan.tool_calls:
                message["tool_calls"] = [
                    {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                    for i, n, a in plan.tool_calls
                ]
            choices.append(
                {"index": index, "message": message, "logprobs": None,
                 "finish_reason": plan.finish_reason}
            )
        await _json(send, 200, {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": _usage(answer),
            "service_tier": "default",
            "system_fingerprint": "fp_sim",
        })

    async def _watch_disconnect(self, receive: Any, scope: trio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.stats.cancelled += 1
                self.stats.cancelled_event.set()
                scope.cancel()
                return

    async def _stream(
        self,
        send: Any,
        answer: Answer,
        profile: SimModelProfile,
        ident: str,
        created: int,
        model: str,
        include_usage: bool,
    ) -> None:
        base = {"id": ident, "object": "chat.completion.chunk", "created": created,
                "model": model, "service_tier": "default", "system_fingerprint": "fp_sim"}
        if include_usage:
            base["usage"] = None

        def chunk(choices: list[dict[str, Any]]) -> bytes:
            return encode_data(_encode({**base, "choices": choices}))

        def choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache")],
        })

        async def emit(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        role = {"role": "assistant", "content": "", "refusal": None}
        await emit(chunk([choice(i, role) for i in range(len(answer.choices))]))
        await trio.sleep(3600.0 if answer.stall else self.ttft(profile))
        itl = profile.inter_token_ms / 1000
        sent = 0
        per_choice = [_deltas(plan) for plan in answer.choices]
        for step in range(max(map(len, per_choice))):
            parts = [
                choice(index, deltas[step])
                for index, deltas in enumerate(per_choice)
                if step < len(deltas)
            ]
            if step and itl:
                await trio.sleep(itl)
            if answer.cut_after is not None and sent >= answer.cut_after:
                # Drop the connection mid-stream: no finish, no [DONE].
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await emit(chunk(parts))
            sent += 1
        await emit(chunk([choice(i, {}, c.finish_reason) for i, c in enumerate(answer.choices)]))
        if include_usage:
            await emit(encode_data(_encode({**base, "choices": [], "usage": _usage(answer)})))
        await send({"type": "http.response.body", "body": DONE, "more_body": False})
        self.stats.streams_completed += 1

    async def _embeddings(self, raw: bytes, send: Any) -> None:
        try:
            body = _decode(raw)
        except msgspec.DecodeError:
            await _json(send, 400, _error("invalid JSON", "invalid_request_error"))
            return
        self.stats.last_body = body
        model = body.get("model", "")
        profile = self.profile(model)
        await trio.sleep(self.ttft(profile))
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
        await _json(send, 200, {"object": "list", "data": data, "model": model,
                                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _deltas(plan: ChoicePlan) -> list[dict[str, Any]]:
    """The deltas OpenAI would stream for one choice, after its role chunk."""
    if not plan.tool_calls:
        return [{"content": token} for token in plan.tokens]
    deltas: list[dict[str, Any]] = []
    # Each call: a first fragment with id, type and name, then argument pieces.
    for index, (call_id, name, arguments) in enumerate(plan.tool_calls):
        head = {"index": index, "id": call_id, "type": "function",
                "function": {"name": name, "arguments": ""}}
        deltas.append({"tool_calls": [head]})
        for start in range(0, len(arguments), 8):
            piece = arguments[start : start + 8]
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    return deltas


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


async def _json(
    send: Any, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": _encode(payload)})
