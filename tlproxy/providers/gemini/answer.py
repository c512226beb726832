"""Gemini API answers as OpenAI ones (pure: dicts in, dicts out).

What shapes the translation:

* Function calls come back whole, without ids: the translator mints
  deterministic ids (``call_`` + hex) from the response id and position.
* A stream is a series of whole ``GenerateContentResponse`` objects with no
  terminator event. Older models put ``finishReason`` on *every* chunk, so the
  finish chunk is emitted by `GeminiStreamTranslator.close` at end of input;
  a stream that ends before any finish reason was cut.
* ``n`` maps to ``candidateCount``: choices are tracked per candidate index.
* Errors are ``{"error": {code, message, status}}`` with gRPC status names and
  typed details, in non-2xx answers and inside streams alike.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ...errors import UpstreamError
from .._envelopes import (
    ROLE_DELTA,
    assistant_message,
    chat_completion,
    choice,
    completion_chunk,
    count,
    finish_reason,
    openai_usage,
    usage_chunk,
)
from .._status import (
    credentials_rejected,
    rate_limited,
    request_refused,
    unavailable,
    upstream_timeout,
)
from ..base import JSON, Chunk

__all__ = [
    "GeminiStreamTranslator",
    "from_gemini_embed_response",
    "from_gemini_response",
    "map_gemini_error",
]

_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII")
_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(_FILTERED, "content_filter"),
    **dict.fromkeys(
        ("IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"), "content_filter"
    ),
}


def from_gemini_response(resp: JSON, *, model: str, created: int) -> JSON:
    """Translate a GenerateContentResponse into an OpenAI ``chat.completion``.

    One choice per candidate. Thought parts (``thought: true``, sent with
    ``includeThoughts``) become ``message.reasoning_content``, joined. A prompt
    blocked before any candidate gives one empty choice with finish reason
    ``content_filter``. Raises `UpstreamError` (502) for a non-object answer.
    """
    if not isinstance(resp, dict):
        raise UpstreamError("the upstream provider sent an unexpected answer", status=502)
    completion_id = _completion_id(resp)
    choices = []
    for position, candidate in _candidates(resp):
        index = _index(candidate, position)
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[JSON] = []
        for part in _parts(candidate):
            if isinstance(part.get("text"), str):
                (thoughts if part.get("thought") else texts).append(part["text"])
            elif isinstance(part.get("functionCall"), dict):
                calls.append(_tool_call(part["functionCall"], completion_id, index, len(calls)))
        message = assistant_message("".join(texts), calls)
        if any(thoughts):
            message["reasoning_content"] = "".join(thoughts)
        finish = _finish_reason(candidate.get("finishReason"), bool(calls))
        choices.append(choice(index, message, finish))
    if not choices:
        finish = "content_filter" if _blocked(resp) else "stop"
        choices.append(choice(0, assistant_message("", []), finish))
    return chat_completion(
        completion_id,
        created=created,
        model=model,
        choices=sorted(choices, key=lambda c: c["index"]),
        usage=_usage(resp.get("usageMetadata")),
    )


def _candidates(resp: JSON) -> list[tuple[int, JSON]]:
    raw = resp.get("candidates")
    items = raw if isinstance(raw, list) else []
    return [(i, c) for i, c in enumerate(items) if isinstance(c, dict)]


def _index(candidate: JSON, position: int) -> int:
    index = candidate.get("index")
    return index if isinstance(index, int) else position


def _parts(candidate: JSON) -> list[JSON]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _blocked(resp: JSON) -> bool:
    feedback = resp.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _finish_reason(reason: Any, called: bool) -> str:
    if reason == "STOP" and called:
        return "tool_calls"
    # LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL, ...: OpenAI has no better word.
    return finish_reason(_FINISH_REASONS, reason)


def _completion_id(resp: JSON) -> str:
    response_id = resp.get("responseId")
    if isinstance(response_id, str) and response_id:
        return "chatcmpl-" + response_id
    digest = hashlib.sha256(orjson.dumps(resp, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return "chatcmpl-" + digest[:24]


def _tool_call(call: JSON, completion_id: str, index: int, n: int) -> JSON:
    name = str(call.get("name", ""))
    arguments = orjson.dumps(call.get("args") or {}).decode()
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        # Deterministic, so one answer always names its calls the same way.
        seed = f"{completion_id}:{index}:{n}:{name}:{arguments}".encode()
        call_id = "call_" + hashlib.sha256(seed).hexdigest()[:24]
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _usage(usage: Any) -> JSON:
    # promptTokenCount already includes cached tokens; tool-use prompt tokens
    # (results of server-side tools) are input too. Thoughts are billed as
    # output, which OpenAI counts in completion_tokens as reasoning_tokens.
    prompt = count(usage, "promptTokenCount") + count(usage, "toolUsePromptTokenCount")
    reasoning = count(usage, "thoughtsTokenCount")
    return openai_usage(
        prompt=prompt,
        completion=count(usage, "candidatesTokenCount") + reasoning,
        cached=count(usage, "cachedContentTokenCount"),
        reasoning=reasoning,
    )


class GeminiStreamTranslator:
    """Turns ``streamGenerateContent?alt=sse`` events into ``chat.completion.chunk`` dicts.

    Each event is a whole GenerateContentResponse (``event`` names are unused).
    `feed` emits a role chunk when a candidate first appears, a chunk per text
    part (``reasoning_content`` for a thought part, ``content`` otherwise),
    and for each function call one chunk carrying its id, name and full
    arguments. `close`, at end of input, emits the finish chunk of each choice
    and (with ``include_usage``) the ``choices: []`` usage chunk. `finished`
    says whether every candidate has reported a finish reason (or the prompt
    was blocked); an ``error`` object in the stream raises `UpstreamError`.
    """

    def __init__(self, *, model: str, created: int, include_usage: bool = True) -> None:
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._id: str | None = None
        # candidate index -> [tool calls emitted, last finishReason]
        self._choices: dict[int, list[Any]] = {}
        self._blocked = False
        self._usage: Any = None
        self._closed = False

    @property
    def finished(self) -> bool:
        """Whether the stream reached its end: a finish reason for every candidate."""
        if self._blocked:
            return True
        return bool(self._choices) and all(c[1] for c in self._choices.values())

    def feed(self, event: str | None, data: JSON) -> list[Chunk]:
        """Translate one streamed response; returns zero or more chunks."""
        if isinstance(data.get("error"), dict):
            error = data["error"]
            status = error.get("code") if isinstance(error.get("code"), int) else 500
            raise map_gemini_error(status, orjson.dumps(data), {})
        if self._id is None:
            self._id = _completion_id(data)
        if isinstance(data.get("usageMetadata"), dict):
            self._usage = data["usageMetadata"]  # counts are running totals
        self._blocked = self._blocked or _blocked(data)
        out: list[Chunk] = []
        for position, candidate in _candidates(data):
            index = _index(candidate, position)
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = [0, None]
                out.append(self._chunk(index, dict(ROLE_DELTA)))
            for part in _parts(candidate):
                if isinstance(part.get("text"), str) and part["text"]:
                    # A thought summary is reasoning, as OpenAI-compatible servers send it.
                    field = "reasoning_content" if part.get("thought") else "content"
                    out.append(self._chunk(index, {field: part["text"]}))
                elif isinstance(part.get("functionCall"), dict):
                    call = _tool_call(part["functionCall"], self._id, index, state[0])
                    out.append(self._chunk(index, {"tool_calls": [{"index": state[0], **call}]}))
                    state[0] += 1
            if candidate.get("finishReason"):
                state[1] = candidate["finishReason"]
        return out

    def close(self) -> list[Chunk]:
        """End of input: the finish chunk of each choice, then usage."""
        if self._closed:
            return []
        self._closed = True
        out: list[Chunk] = []
        if not self._choices:
            out.append(self._chunk(0, dict(ROLE_DELTA)))
            reason = "content_filter" if self._blocked else "stop"
            out.append(self._chunk(0, {}, reason))
        for index in sorted(self._choices):
            calls, reason = self._choices[index]
            out.append(self._chunk(index, {}, _finish_reason(reason, calls > 0)))
        if self._include_usage:
            out.append(
                usage_chunk(
                    self._chunk_id(),
                    created=self._created,
                    model=self._model,
                    usage=_usage(self._usage),
                )
            )
        return out

    def _chunk_id(self) -> str:
        return self._id or "chatcmpl-gemini"

    def _chunk(self, index: int, delta: JSON, finish: str | None = None) -> Chunk:
        return completion_chunk(
            self._chunk_id(),
            created=self._created,
            model=self._model,
            delta=delta,
            index=index,
            finish=finish,
            include_usage=self._include_usage,
        )


def from_gemini_embed_response(
    resp: JSON, *, model: str, encoding_format: str | None = "float", texts: Sequence[str] = ()
) -> JSON:
    """Translate an ``embedContent`` or ``batchEmbedContents`` answer into OpenAI's list.

    With ``encoding_format="base64"`` each vector is the base64 of its
    little-endian float32 values, as OpenAI sends it. Gemini reports no token
    usage for embeddings, so ``usage`` is an estimate from ``texts`` (the
    inputs): about four characters per token, rounded up per input.
    """
    if isinstance(resp.get("embedding"), dict):
        raw = [resp["embedding"]]
    else:
        raw = found if isinstance(found := resp.get("embeddings"), list) else []
    vectors: list[Any] = [e.get("values") if isinstance(e, dict) else None for e in raw]
    if not vectors or not all(isinstance(v, list) for v in vectors):
        raise UpstreamError("the upstream provider sent an unexpected answer", status=502)
    data = []
    for i, values in enumerate(vectors):
        embedding: Any = values
        if encoding_format == "base64":
            packed = struct.pack(f"<{len(values)}f", *values)
            embedding = base64.b64encode(packed).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = sum(math.ceil(len(text) / 4) for text in texts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def map_gemini_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """A Gemini non-2xx answer (``{"error": {code, message, status}}``), as our client sees it.

    Credential problems are the proxy's, not the client's: 401/403, and the 400
    Gemini sends for an invalid key (reason ``API_KEY_INVALID``), become 502
    and retryable, as do 404 (unknown model id) and ``FAILED_PRECONDITION``
    (billing or region). Other 4xx are the request's fault: 400, not retried.
    429 keeps ``retry-after``, or derives it from ``RetryInfo.retryDelay``;
    504 stays 504; other 5xx become 503.
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]  # non-SSE streams wrap everything in an array
    error = parsed.get("error") if isinstance(parsed, dict) else None
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or f"upstream answered HTTP {status}")
    grpc = error.get("status")
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    reasons = {d.get("reason") for d in details}
    if status == 429 or grpc == "RESOURCE_EXHAUSTED":
        delay = next((d.get("retryDelay") for d in details if "retryDelay" in d), None)
        return rate_limited(message, status, headers.get("retry-after") or _seconds(delay))
    if (
        status in (401, 403)
        or grpc in ("UNAUTHENTICATED", "PERMISSION_DENIED")
        or ("API_KEY_INVALID" in reasons)
    ):
        return credentials_rejected(status)
    if status == 404 or grpc == "FAILED_PRECONDITION":
        return UpstreamError(
            f"the upstream provider cannot serve this model: {message}",
            status=502,
            upstream_status=status,
        )
    if 400 <= status < 500:
        return request_refused(message, status)
    if status == 504 or grpc == "DEADLINE_EXCEEDED":
        return upstream_timeout(message, status)
    return unavailable(message, status, headers.get("retry-after"))


def _seconds(delay: Any) -> str | None:
    # google.protobuf.Duration in JSON: "27.4s"; Retry-After wants whole seconds.
    if isinstance(delay, str) and delay.endswith("s"):
        try:
            return str(math.ceil(float(delay[:-1])))
        except ValueError:
            return None
    return None
