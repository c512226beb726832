"""Anthropic Messages answers as OpenAI ones (pure: dicts in, dicts out).

A whole Message becomes a ``chat.completion``; a stream is a sequence of typed
events (``message_start``, content blocks, ``message_delta``,
``message_stop``) that becomes ``chat.completion.chunk`` dicts. Content blocks
are numbered across text and tool use; OpenAI numbers tool calls alone, so the
translator keeps its own count. A stream that ends before its stop reason
(``message_delta``) was cut, and says so; one that ends after it, without
``message_stop``, lost nothing. Non-2xx answers and stream ``error`` events become `UpstreamError`.

Extended thinking (``thinking`` blocks, ``thinking_delta`` events) is
forwarded as OpenAI-compatible servers (vLLM, DeepSeek) forward reasoning:
``reasoning_content`` in a chunk's delta, ``message.reasoning_content`` in a
completion. Signatures and ``redacted_thinking`` blocks (encrypted) are not:
an OpenAI client has nowhere to send them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ...errors import UpstreamError
from ...pricing import CACHE_WRITE_TOKENS
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

__all__ = ["AnthropicStreamTranslator", "from_anthropic_response", "map_anthropic_error"]

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# The HTTP status Anthropic answers each error type with (its errors page):
# a stream `error` event of that type means what that status means.
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def from_anthropic_response(resp: JSON, *, model: str, created: int) -> JSON:
    """Translate a Messages response into an OpenAI ``chat.completion``.

    Text blocks are joined; ``tool_use`` blocks become ``tool_calls`` (the key
    is omitted when there are none, and ``content`` is null when only tool
    calls came back). The text of ``thinking`` blocks, joined, becomes
    ``message.reasoning_content`` (absent when there is none). Raises
    `UpstreamError` (502) when the answer is not a Message.
    """
    content = resp.get("content")
    if not isinstance(content, list):
        raise UpstreamError("the upstream provider sent an unexpected answer", status=502)
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[JSON] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "thinking" and isinstance(block.get("thinking"), str):
            thoughts.append(block["thinking"])
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            fn = {"name": str(block.get("name", "")), "arguments": arguments}
            calls.append({"id": str(block.get("id", "")), "type": "function", "function": fn})
    message = assistant_message("".join(texts), calls)
    if any(thoughts):
        message["reasoning_content"] = "".join(thoughts)
    finish = finish_reason(_FINISH_REASONS, resp.get("stop_reason"))
    return chat_completion(
        _completion_id(resp.get("id")),
        created=created,
        model=model,
        choices=[choice(0, message, finish)],
        usage=_usage(resp.get("usage")),
    )


def _completion_id(message_id: Any) -> str:
    suffix = message_id.removeprefix("msg_") if isinstance(message_id, str) else ""
    return "chatcmpl-" + (suffix or "anthropic")


def _usage(usage: Any) -> JSON:
    cached = count(usage, "cache_read_input_tokens")
    written = count(usage, "cache_creation_input_tokens")
    # Anthropic's input_tokens excludes cache reads and writes; OpenAI's
    # prompt_tokens is the whole prompt, with the cached part broken out.
    prompt = count(usage, "input_tokens") + cached + written
    out = openai_usage(prompt=prompt, completion=count(usage, "output_tokens"), cached=cached)
    if written:
        # Billed above the input price; for the pricing only (see CACHE_WRITE_TOKENS).
        out[CACHE_WRITE_TOKENS] = written
    return out


class AnthropicStreamTranslator:
    """Turns Messages stream events into OpenAI ``chat.completion.chunk`` dicts.

    Feed it each event's name and decoded data in order. It emits the role
    chunk at ``message_start``, one chunk per text, thinking (as
    ``reasoning_content``) or tool-argument delta, and
    at ``message_stop`` (or at `close`, after the stop reason) the chunk
    carrying ``finish_reason`` and, when
    ``include_usage``, a last chunk with ``choices: []`` and the usage. Tool
    calls are numbered 0, 1, ... among tool calls only. ``ping``, signatures,
    redacted thinking and unknown events produce nothing; an ``error`` event
    raises `UpstreamError`.
    """

    def __init__(self, *, model: str, created: int, include_usage: bool = True) -> None:
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._id = "chatcmpl-anthropic"
        self._started = False
        self._finished = False
        self._stop_reason: str | None = None
        self._usage: JSON = {}
        # content block index -> [tool call index, whether arguments were sent]
        self._tools: dict[int, list[Any]] = {}

    @property
    def finished(self) -> bool:
        """Whether the answer is whole: its stop reason came (``message_delta``).

        ``message_stop`` only closes the stream; one that ends after the stop
        reason and the final usage lost nothing (`close` then ends the answer).
        """
        return self._finished or self._stop_reason is not None

    def feed(self, event: str | None, data: JSON) -> list[Chunk]:
        """Translate one event; returns zero or more chunks."""
        kind = data.get("type") or event
        if self._finished or kind == "ping":
            return []
        if kind == "error":
            raise _stream_error(data.get("error"))
        out: list[Chunk] = []
        if kind == "message_start":
            message = m if isinstance(m := data.get("message"), dict) else {}
            self._id = _completion_id(message.get("id"))
            self._merge_usage(message.get("usage"))
        elif kind == "content_block_start":
            self._block_start(data, out)
        elif kind == "content_block_delta":
            self._block_delta(data, out)
        elif kind == "content_block_stop":
            tool = self._tools.get(data.get("index", -1))
            if tool is not None and not tool[1]:
                # A call without arguments still needs valid JSON for the client.
                out.append(self._chunk(self._arguments(tool, "{}")))
        elif kind == "message_delta":
            delta = d if isinstance(d := data.get("delta"), dict) else {}
            self._stop_reason = delta.get("stop_reason") or self._stop_reason
            self._merge_usage(data.get("usage"))
        elif kind == "message_stop":
            out.extend(self._end())
        if not self._started and (out or kind == "message_start"):
            self._started = True
            out.insert(0, self._chunk(dict(ROLE_DELTA)))
        return out

    def close(self) -> list[Chunk]:
        """End of input: the end of the answer, when ``message_stop`` did not bring it."""
        return [] if self._finished or self._stop_reason is None else self._end()

    def _end(self) -> list[Chunk]:
        """The finish chunk and (with ``include_usage``) the usage chunk, once."""
        self._finished = True
        out = [self._chunk({}, finish_reason(_FINISH_REASONS, self._stop_reason))]
        if self._include_usage:
            out.append(
                usage_chunk(
                    self._id,
                    created=self._created,
                    model=self._model,
                    usage=_usage(self._usage),
                )
            )
        return out

    def _block_start(self, data: JSON, out: list[Chunk]) -> None:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return
        if block.get("type") == "text" and block.get("text"):
            out.append(self._chunk({"content": block["text"]}))
        elif block.get("type") == "thinking" and isinstance(block.get("thinking"), str):
            if block["thinking"]:
                out.append(self._chunk({"reasoning_content": block["thinking"]}))
        elif block.get("type") == "tool_use":
            tool = [len(self._tools), False]
            self._tools[data.get("index", -1)] = tool
            fn = {"name": str(block.get("name", "")), "arguments": ""}
            call = {"index": tool[0], "id": str(block.get("id", "")), "type": "function"}
            out.append(self._chunk({"tool_calls": [{**call, "function": fn}]}))
            if block.get("input"):
                out.append(
                    self._chunk(self._arguments(tool, orjson.dumps(block["input"]).decode()))
                )

    def _block_delta(self, data: JSON, out: list[Chunk]) -> None:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return
        if delta.get("type") == "text_delta" and delta.get("text"):
            out.append(self._chunk({"content": delta["text"]}))
        elif delta.get("type") == "thinking_delta" and isinstance(delta.get("thinking"), str):
            if delta["thinking"]:
                out.append(self._chunk({"reasoning_content": delta["thinking"]}))
        elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
            tool = self._tools.get(data.get("index", -1))
            if tool is not None:
                out.append(self._chunk(self._arguments(tool, delta["partial_json"])))
        # signature_delta and citations are not forwarded.

    def _arguments(self, tool: list[Any], fragment: str) -> JSON:
        tool[1] = True
        return {"tool_calls": [{"index": tool[0], "function": {"arguments": fragment}}]}

    def _merge_usage(self, usage: Any) -> None:
        # message_delta counts are cumulative: later values replace earlier ones.
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if isinstance(v, int)})

    def _chunk(self, delta: JSON, finish: str | None = None) -> Chunk:
        return completion_chunk(
            self._id,
            created=self._created,
            model=self._model,
            delta=delta,
            finish=finish,
            include_usage=self._include_usage,
        )


def _stream_error(error: Any) -> UpstreamError:
    """A stream ``error`` event, mapped as the HTTP error of its type.

    ``overloaded_error`` is a retryable 503 (upstream status 529),
    ``rate_limit_error`` a 429, a request's fault a 400 that is not retried;
    a server error, or a type Anthropic does not document, a retryable 502:
    the stream broke, the upstream is not known to be down.
    """
    error = error if isinstance(error, dict) else {}
    kind = str(error.get("type", "api_error"))
    status = _ERROR_TYPE_STATUS.get(kind)
    if status is None or status == 500:
        message = str(error.get("message") or "the upstream provider failed mid-stream")
        return UpstreamError(message, status=502, type=kind, upstream_status=status)
    return map_anthropic_error(status, orjson.dumps({"type": "error", "error": error}), {})


def map_anthropic_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """An Anthropic non-2xx answer, as the error our client should see.

    Upstream 401/403 (and 404, an unknown model id) are the proxy's
    configuration problem, not the client's: 502 and retryable, so another
    candidate can serve. Other 4xx are the request's fault: 400 (or 413),
    not retried. 429 keeps ``retry-after``; 5xx and 529 become 503.
    """
    message, kind = f"upstream answered HTTP {status}", None
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        kind = error.get("type") if isinstance(error.get("type"), str) else None
    retry_after = headers.get("retry-after")
    if status == 429:
        return rate_limited(message, status, retry_after)
    if status in (401, 403):
        return credentials_rejected(status)
    if status == 404:
        return UpstreamError(
            f"the upstream provider does not know this model: {message}",
            status=502,
            upstream_status=status,
        )
    if status == 408:
        return upstream_timeout(message, status)
    if 400 <= status < 500:
        return request_refused(message, status)
    return unavailable(message, status, retry_after, kind or "service_unavailable")
