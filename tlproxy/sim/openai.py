"""The simulated upstream speaking OpenAI's API: Chat Completions, embeddings, the models.

``POST .../chat/completions`` and ``POST .../embeddings`` answer as OpenAI
does, ``GET .../models`` lists the sim's models; the key, when the sim has
one, comes as ``Authorization: Bearer``. This is the protocol of any path
the other protocols do not claim.

The plan is rendered as a ``chat.completion`` or as ``chat.completion.chunk``
events: a role chunk, one chunk per token or tool-call fragment, the finish
chunk, the usage chunk when ``stream_options.include_usage`` asks for it,
then ``data: [DONE]``. Errors are OpenAI's envelope.

The habits of OpenAI-compatible servers that only this protocol has are
rendered here: Azure's filter-only first chunk, DeepSeek's
``reasoning_content`` and OpenRouter's ``reasoning`` deltas, refusals, Groq's
usage in ``x_groq``, usage on the finish chunk, spoken answers (``audio``
deltas: a transcript and PCM16 data per token, then the expiry), and no
``[DONE]``.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import msgspec
import trio

from ..sse import DONE, encode_data
from . import core
from .plan import Answer, ChoicePlan, embedding_size, embedding_vector

__all__ = [
    "AZURE_FILTER_CHUNK",
    "REASONING",
    "REFUSAL",
    "OpenAIWire",
    "plan_deltas",
    "reasoning_field",
    "serve",
    "usage_of",
]

_encode = msgspec.json.Encoder().encode
_NONE: core.Habits = frozenset()

# What the reasoning habits think aloud before each answer, and what the
# refusal habit says instead of answering.
REASONING = ("Let", " me", " think", " about", " this", ".")
REFUSAL = ("I'm", " sorry", ",", " I", " can't", " help", " with", " that", ".")
# How long a spoken answer's audio may be referred to, as OpenAI says in `expires_at`.
AUDIO_LIFETIME = 3600
# Azure OpenAI's first chunk when its content filter is on: no choices.
AZURE_FILTER_CHUNK = {
    "choices": [], "created": 0, "id": "", "model": "", "object": "",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {
        kind: {"filtered": False, "severity": "safe"}
        for kind in ("hate", "self_harm", "sexual", "violence")}}],
}


def usage_of(answer: Answer, reasoning: int = 0) -> dict[str, Any]:
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


class OpenAIWire(core.Wire):
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
    def error(cls, status: int, message: str | None = None) -> tuple[Any, core.Headers]:
        if status == 401:
            message = message or "Incorrect API key provided."
            body = core.error_body(message, "invalid_request_error")
            body["error"]["code"] = "invalid_api_key"
            return body, []
        if message is not None:
            kind = "invalid_request_error" if status < 500 else "server_error"
            return core.error_body(message, kind), []
        headers = [(b"retry-after", b"1")] if status == 429 else []
        message = "Rate limit reached" if status == 429 else "The server had an error"
        return core.error_body(message, "server_error"), headers

    def error_event(self) -> bytes:
        # What OpenAI sends when a stream fails after its 200.
        message = "The server had an error while processing your request. Sorry about that!"
        return encode_data(_encode(core.error_body(message, "server_error")))

    def message(self, answer: Answer, habits: core.Habits = _NONE) -> Any:
        choices = []
        refuses = "refusal" in habits
        reasoning = reasoning_field(habits)
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
            if "audio" in habits and not plan.tool_calls:
                message["content"] = None
                message["audio"] = {
                    "id": _audio_id(self.base["id"]), "data": _pcm("".join(plan.tokens)),
                    "expires_at": self.base["created"] + AUDIO_LIFETIME,
                    "transcript": "".join(plan.tokens)}
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
        usage = usage_of(answer, reasoning_tokens(answer, habits))
        return {**base, "object": "chat.completion", "choices": choices, "usage": usage}

    def stream(
        self, answer: Answer, habits: core.Habits = _NONE
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
        audio = {"id": _audio_id(self.base["id"]),
                 "expires_at": self.base["created"] + AUDIO_LIFETIME}
        per_choice = [plan_deltas(plan, habits, audio=audio) for plan in answer.choices]
        steps = [
            chunk([choice(index, deltas[step])
                   for index, deltas in enumerate(per_choice) if step < len(deltas)])
            for step in range(max(map(len, per_choice), default=0))
        ]
        usage = usage_of(answer, reasoning_tokens(answer, habits))
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


def reasoning_field(habits: core.Habits) -> str | None:
    """Where the reasoning habits put the thinking: DeepSeek's and vLLM's field, or
    OpenRouter's and Groq's."""
    if "reasoning_content" in habits:
        return "reasoning_content"
    return "reasoning" if "reasoning" in habits else None


def reasoning_tokens(answer: Answer, habits: core.Habits) -> int:
    return len(REASONING) * len(answer.choices) if reasoning_field(habits) else 0


def plan_deltas(
    plan: ChoicePlan, habits: core.Habits = _NONE, *, audio: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The deltas OpenAI would stream for one choice, after its role chunk.

    `audio` (its ``id`` and ``expires_at``) is for the `audio` habit.
    """
    field = reasoning_field(habits)
    thinking = [{"content": None, field: token} for token in REASONING] if field else []
    if "refusal" in habits and not plan.tool_calls:
        return [*thinking, *({"refusal": token} for token in REFUSAL)]
    if "audio" in habits and audio is not None and not plan.tool_calls:
        spoken = [{"audio": {"transcript": t, "data": _pcm(t)}} for t in plan.tokens]
        if spoken:
            spoken[0]["audio"]["id"] = audio["id"]
        return [*thinking, *spoken, {"audio": {"expires_at": audio["expires_at"]}}]
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


def _audio_id(completion_id: str) -> str:
    return "audio_" + completion_id.removeprefix("chatcmpl-")


def _pcm(text: str) -> str:
    """Base64 PCM16 silence, 24 samples (1 ms at 24 kHz) per character of the transcript."""
    return base64.b64encode(bytes(48 * len(text))).decode()


async def serve(sim: core.Simulator, request: core.SimRequest) -> None:
    """Answer one OpenAI request: chat completions, embeddings or the model list."""
    send, path = request.send, request.path
    if not sim.key_ok(_bearer(request.headers), required=False):
        await core.send_json(send, 401, *OpenAIWire.error(401))
    elif path.endswith("/chat/completions"):
        await _chat(sim, request)
    elif path.endswith("/embeddings"):
        await _embeddings(sim, request.raw, send)
    elif path.endswith("/models"):
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "sim"}
            for m in sim.profiles
        ]
        await core.send_json(send, 200, {"object": "list", "data": data})
    else:
        error = core.error_body(f"Unknown path {path}", "invalid_request_error")
        await core.send_json(send, 404, error)


def _bearer(headers: dict[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


async def _chat(sim: core.Simulator, request: core.SimRequest) -> None:
    """Answer one ``POST .../chat/completions``."""
    body = core.decode_object(request.raw)
    if body is None:
        error = core.error_body("invalid JSON", "invalid_request_error")
        await core.send_json(request.send, 400, error)
        return
    sim.stats.last_body = body
    model = body.get("model", "sim")
    wire = OpenAIWire(
        model=model, ident="chatcmpl-" + core.ident(request.raw), created=int(sim.wall_clock()),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")))
    await sim.respond(request, wire, body, model, stream=bool(body.get("stream")))


async def _embeddings(sim: core.Simulator, raw: bytes, send: Any) -> None:
    """Answer one ``POST .../embeddings``: a deterministic vector per input."""
    body = core.decode_object(raw)
    if body is None:
        await core.send_json(send, 400, core.error_body("invalid JSON", "invalid_request_error"))
        return
    sim.stats.last_body = body
    model = body.get("model", "")
    profile = sim.profile(model)
    dims = embedding_size(body.get("dimensions"), profile)
    if dims is None:
        message = (f"Invalid 'dimensions': {model} has embeddings of at most "
                   f"{profile.embedding_dimensions} dimensions.")
        error = core.error_body(message, "invalid_request_error")
        error["error"].update(param="dimensions", code="invalid_value")
        await core.send_json(send, 400, error)
        return
    await trio.sleep(sim.ttft(profile))
    if sim.draws_error(profile):
        error = core.error_body("The server is overloaded.", "server_error")
        await core.send_json(send, 503, error)
        return
    inputs = body.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs
                                   and isinstance(inputs[0], int)):
        inputs = [inputs]
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
    await core.send_json(send, 200, {"object": "list", "data": data, "model": model,
                                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
