"""Anthropic's Messages API behind OpenAI's Chat Completions.

Clients speak OpenAI; this adapter speaks ``POST /v1/messages`` (headers
``x-api-key`` and ``anthropic-version: 2023-06-01``). The translation is a pure
core (plain dicts in and out, no I/O, no clock) and a thin `AnthropicProvider`
around it. The differences that shape the core:

* The system prompt is a top-level field, not a message: system and developer
  messages are lifted out and joined.
* Turns must alternate and tool results are *user* content blocks, so OpenAI's
  ``tool`` messages become ``tool_result`` blocks and consecutive same-role turns
  are merged (tool results first, as Anthropic requires).
* ``max_tokens`` is required; ``temperature`` stops at 1, not 2.
* A stream is a sequence of typed events (``message_start``, content blocks,
  ``message_delta``, ``message_stop``). Content blocks are numbered across text
  and tool use; OpenAI numbers tool calls alone, so the translator keeps its own
  count. A stream without ``message_stop`` was cut, and says so.

Structured outputs: Anthropic's GA form is ``output_config.format`` (type
``json_schema``, no beta header; it replaced the beta ``output_format``), see
https://platform.claude.com/docs/en/build-with-claude/structured-outputs. It is
used for ``response_format: json_schema``; models without it are kept away from
such requests by the catalog's ``json_schema`` capability. ``json_object`` has
no native form and becomes an instruction in the system prompt.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson

from ..errors import InvalidRequest, UpstreamError
from ._http import ping, translate_sse, transport_error
from ._shapes import function_tools, plain_text
from .base import JSON, Chunk, Provider

__all__ = [
    "ANTHROPIC_VERSION",
    "AnthropicProvider",
    "AnthropicStreamTranslator",
    "from_anthropic_response",
    "map_anthropic_error",
    "to_anthropic_request",
]

ANTHROPIC_VERSION = "2023-06-01"

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*;base64,(?P<data>.*)", re.S)
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_-]")
_JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no prose, no code fences."
)
# What a stream `error` event's type means for the client (HTTP statuses of
# the same types come from `map_anthropic_error`).
_STREAM_ERROR_STATUS = {"overloaded_error": 503, "rate_limit_error": 429, "api_error": 502}
_SAMPLING_REFUSED = re.compile(rb"(temperature|top_p|top_k)`? is deprecated for this model")


# ---------------------------------------------------------------- request


def to_anthropic_request(
    body: JSON,
    *,
    model: str,
    stream: bool,
    default_max_tokens: int = 4096,
    sampling: bool = True,
) -> JSON:
    """Translate an OpenAI chat request (decoded JSON) into a Messages request.

    Raises `InvalidRequest` (with ``param``) for what Anthropic cannot do: ``n``
    above 1, ``logprobs``, audio input, non-function tools, tool-call arguments
    that are not a JSON object. Fields without an equivalent (``seed``, the
    penalties, ``stream_options``) are dropped, and so are ``temperature`` and
    ``top_p`` when ``sampling`` is false (for models that refuse them).
    """
    _reject_unsupported(body)
    system, messages = _messages(body.get("messages"))
    out: JSON = {"model": model, "max_tokens": _max_tokens(body, default_max_tokens)}
    out["messages"] = messages
    tools = _tools(body)
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body)
        if choice is not None:
            out["tool_choice"] = choice
    _response_format(body.get("response_format"), out, system)
    if system:
        out["system"] = "\n\n".join(system)
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = [s for s in stop if isinstance(s, str)]
    temperature = body.get("temperature") if sampling else None
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        # OpenAI's range is 0..2, Anthropic's 0..1: clamping keeps "very random".
        out["temperature"] = min(float(temperature), 1.0)
    elif sampling and isinstance(body.get("top_p"), int | float):
        # Only without temperature: recent Claude models refuse both at once.
        out["top_p"] = body["top_p"]
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if stream:
        out["stream"] = True
    return out


def _reject_unsupported(body: JSON) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise InvalidRequest("n > 1 is not supported by this model's provider", param="n")
    for field in ("logprobs", "top_logprobs"):
        if body.get(field) not in (None, False):
            raise InvalidRequest("logprobs are not supported by this model's provider", param=field)


def _max_tokens(body: JSON, default: int) -> int:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"{field} must be a positive integer", param=field)
        return value
    return default


def _messages(raw: Any) -> tuple[list[str], list[JSON]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages must be a non-empty array", param="messages")
    system: list[str] = []
    turns: list[JSON] = []
    legacy_id: str | None = None  # the id given to the last legacy function_call
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        role = msg.get("role")
        if role in ("system", "developer"):
            text = plain_text(msg.get("content"), where)
            if text:
                system.append(text)
        elif role == "user":
            _append(turns, "user", _user_blocks(msg.get("content"), where))
        elif role == "assistant":
            blocks, legacy = _assistant_blocks(msg, where, i)
            legacy_id = legacy or legacy_id
            _append(turns, "assistant", blocks)
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest(
                    "tool messages need a tool_call_id", param=f"{where}.tool_call_id"
                )
            _append(turns, "user", [_tool_result(call_id, msg.get("content"), where)])
        elif role == "function":
            if legacy_id is None:
                raise InvalidRequest(
                    "a function message must follow an assistant function_call",
                    param=f"{where}.role",
                )
            _append(turns, "user", [_tool_result(legacy_id, msg.get("content"), where)])
        else:
            raise InvalidRequest(f"unsupported role {role!r}", param=f"{where}.role")
    if not turns:
        if not system:
            raise InvalidRequest("messages have no content", param="messages")
        # A system-only request (a warm-up) is legal for OpenAI, but Anthropic
        # needs at least one turn: the instructions become that turn.
        return [], [{"role": "user", "content": [{"type": "text", "text": "\n\n".join(system)}]}]
    return system, turns


def _append(turns: list[JSON], role: str, blocks: list[JSON]) -> None:
    if not blocks:
        return  # Anthropic rejects empty turns; an empty OpenAI message says nothing
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})
    if role == "user":
        # tool_result blocks must open their user turn; the sort is stable.
        turns[-1]["content"].sort(key=lambda block: block["type"] != "tool_result")


def _user_blocks(content: Any, where: str) -> list[JSON]:
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(
            "content must be a string or an array of parts", param=f"{where}.content"
        )
    blocks: list[JSON] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequest("a text part needs text", param=f"{at}.text")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), at))
        elif kind == "file":
            blocks.append(_document_block(part.get("file"), at))
        else:
            raise InvalidRequest(
                f"content part type {kind!r} is not supported by this model's provider",
                param=f"{at}.type",
            )
    return blocks


def _image_block(image: Any, at: str) -> JSON:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise InvalidRequest("image_url needs a url", param=f"{at}.image_url.url")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.fullmatch(url)
    if match is None or match["mime"] not in _IMAGE_TYPES:
        raise InvalidRequest(
            "images must be http(s) URLs or base64 data URLs of JPEG, PNG, GIF or WebP",
            param=f"{at}.image_url.url",
        )
    source = {"type": "base64", "media_type": match["mime"], "data": match["data"]}
    return {"type": "image", "source": source}


def _document_block(file: Any, at: str) -> JSON:
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str):
        raise InvalidRequest("only inline file_data is supported here", param=f"{at}.file")
    match = _DATA_URL.fullmatch(data)
    mime, payload = (match["mime"], match["data"]) if match else ("application/pdf", data)
    if mime != "application/pdf":
        raise InvalidRequest("only PDF files are supported here", param=f"{at}.file.file_data")
    source = {"type": "base64", "media_type": mime, "data": payload}
    return {"type": "document", "source": source}


def _assistant_blocks(msg: JSON, where: str, i: int) -> tuple[list[JSON], str | None]:
    text = plain_text(msg.get("content"), where)
    blocks: list[JSON] = [{"type": "text", "text": text}] if text else []
    calls = msg.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise InvalidRequest("tool_calls must be an array", param=f"{where}.tool_calls")
        for j, call in enumerate(calls):
            at = f"{where}.tool_calls[{j}]"
            if not isinstance(call, dict) or call.get("type", "function") != "function":
                raise InvalidRequest("only function tool calls are supported", param=f"{at}.type")
            fn = call.get("function")
            call_id = call.get("id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest("a tool call needs an id", param=f"{at}.id")
            blocks.append(_tool_use(_safe_id(call_id), fn, f"{at}.function"))
    legacy = msg.get("function_call")
    if legacy is None:
        return blocks, None
    legacy_id = f"toolu_legacy_{i}"
    blocks.append(_tool_use(legacy_id, legacy, f"{where}.function_call"))
    return blocks, legacy_id


def _tool_use(call_id: str, fn: Any, at: str) -> JSON:
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest("a function call needs a name", param=f"{at}.name")
    return {"type": "tool_use", "id": call_id, "name": fn["name"], "input": _arguments(fn, at)}


def _arguments(fn: JSON, at: str) -> JSON:
    raw = fn.get("arguments")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        value = orjson.loads(raw) if isinstance(raw, str) else None
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest("function arguments must be a JSON object", param=f"{at}.arguments")
    return value


def _tool_result(call_id: str, content: Any, where: str) -> JSON:
    block: JSON = {"type": "tool_result", "tool_use_id": _safe_id(call_id)}
    text = plain_text(content, where)
    if text:
        block["content"] = text
    return block


def _safe_id(call_id: str) -> str:
    # Anthropic wants ids matching ^[a-zA-Z0-9_-]+$; ids minted by another
    # provider earlier in the conversation may not, and both ends of a
    # tool_use/tool_result pair go through here, so they still match.
    return _UNSAFE_ID.sub("_", call_id)


def _tools(body: JSON) -> list[JSON]:
    out: list[JSON] = []
    for fn, schema in function_tools(body):
        tool: JSON = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            tool["description"] = fn["description"]
        # `strict` is dropped: Anthropic's strict tool use is model-dependent.
        tool["input_schema"] = schema or {"type": "object", "properties": {}}
        out.append(tool)
    return out


def _tool_choice(body: JSON) -> JSON | None:
    field = "tool_choice" if "tool_choice" in body else "function_call"
    choice = body.get(field)
    out: JSON | None
    if choice is None:
        out = None
    elif choice in ("auto", "none"):
        out = {"type": choice}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict):
        fn = choice.get("function") if field == "tool_choice" else choice
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest("a named tool choice needs a function name", param=field)
        out = {"type": "tool", "name": fn["name"]}
    else:
        raise InvalidRequest(f"unsupported {field}", param=field)
    if body.get("parallel_tool_calls") is False and (out is None or out["type"] != "none"):
        out = out or {"type": "auto"}
        out["disable_parallel_tool_use"] = True
    return out


def _response_format(fmt: Any, out: JSON, system: list[str]) -> None:
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "response_format.json_schema.schema must be an object",
                param="response_format.json_schema.schema",
            )
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    elif kind == "json_object":
        system.append(_JSON_OBJECT_INSTRUCTION)
    elif kind != "text":
        raise InvalidRequest("unsupported response_format", param="response_format.type")


# ---------------------------------------------------------------- response


def from_anthropic_response(resp: JSON, *, model: str, created: int) -> JSON:
    """Translate a Messages response into an OpenAI ``chat.completion``.

    Text blocks are joined; ``tool_use`` blocks become ``tool_calls`` (the key
    is omitted when there are none, and ``content`` is null when only tool
    calls came back). Thinking blocks are not forwarded. Raises
    `UpstreamError` (502) when the answer is not a Message.
    """
    content = resp.get("content") if isinstance(resp, dict) else None
    if not isinstance(content, list):
        raise UpstreamError("the upstream provider sent an unexpected answer", status=502)
    texts: list[str] = []
    calls: list[JSON] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            fn = {"name": str(block.get("name", "")), "arguments": arguments}
            calls.append({"id": str(block.get("id", "")), "type": "function", "function": fn})
    text = "".join(texts)
    message: JSON = {
        "role": "assistant",
        "content": text if text or not calls else None,
        "refusal": None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": _FINISH_REASONS.get(str(resp.get("stop_reason")), "stop"),
    }
    return {
        "id": _completion_id(resp.get("id")),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _usage(resp.get("usage")),
        "service_tier": "default",
        "system_fingerprint": None,
    }


def _completion_id(message_id: Any) -> str:
    suffix = message_id.removeprefix("msg_") if isinstance(message_id, str) else ""
    return "chatcmpl-" + (suffix or "anthropic")


def _usage(usage: Any) -> JSON:
    u = usage if isinstance(usage, dict) else {}

    def count(key: str) -> int:
        value = u.get(key)
        return value if isinstance(value, int) else 0

    cached = count("cache_read_input_tokens")
    # Anthropic's input_tokens excludes cache reads and writes; OpenAI's
    # prompt_tokens is the whole prompt, with the cached part broken out.
    prompt = count("input_tokens") + cached + count("cache_creation_input_tokens")
    completion = count("output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class AnthropicStreamTranslator:
    """Turns Messages stream events into OpenAI ``chat.completion.chunk`` dicts.

    Feed it each event's name and decoded data in order. It emits the role
    chunk at ``message_start``, one chunk per text or tool-argument delta, and
    at ``message_stop`` the chunk carrying ``finish_reason`` and, when
    ``include_usage``, a last chunk with ``choices: []`` and the usage. Tool
    calls are numbered 0, 1, ... among tool calls only. ``ping``, thinking and
    unknown events produce nothing; an ``error`` event raises `UpstreamError`.
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
        """Whether ``message_stop`` was seen: a stream ending before that was cut."""
        return self._finished

    def feed(self, event: str | None, data: JSON) -> list[Chunk]:
        """Translate one event; returns zero or more chunks."""
        kind = data.get("type") or event
        if self._finished or kind == "ping":
            return []
        if kind == "error":
            raise _stream_error(data.get("error"))
        out: list[Chunk] = []
        if kind == "message_start":
            message = data.get("message") if isinstance(data.get("message"), dict) else {}
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
            delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
            self._stop_reason = delta.get("stop_reason") or self._stop_reason
            self._merge_usage(data.get("usage"))
        elif kind == "message_stop":
            self._finished = True
            reason = _FINISH_REASONS.get(str(self._stop_reason), "stop")
            out.append(self._chunk({}, reason))
            if self._include_usage:
                last = self._chunk({})
                last["choices"], last["usage"] = [], _usage(self._usage)
                out.append(last)
        if not self._started and (out or kind == "message_start"):
            self._started = True
            out.insert(0, self._chunk({"role": "assistant", "content": "", "refusal": None}))
        return out

    def close(self) -> list[Chunk]:
        """End of input: everything was already emitted at ``message_stop``."""
        return []

    def _block_start(self, data: JSON, out: list[Chunk]) -> None:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return
        if block.get("type") == "text" and block.get("text"):
            out.append(self._chunk({"content": block["text"]}))
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
        elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
            tool = self._tools.get(data.get("index", -1))
            if tool is not None:
                out.append(self._chunk(self._arguments(tool, delta["partial_json"])))
        # thinking_delta, signature_delta and citations are not forwarded.

    def _arguments(self, tool: list[Any], fragment: str) -> JSON:
        tool[1] = True
        return {"tool_calls": [{"index": tool[0], "function": {"arguments": fragment}}]}

    def _merge_usage(self, usage: Any) -> None:
        # message_delta counts are cumulative: later values replace earlier ones.
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if isinstance(v, int)})

    def _chunk(self, delta: JSON, finish_reason: str | None = None) -> Chunk:
        chunk: Chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "service_tier": "default",
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self._include_usage:
            chunk["usage"] = None
        return chunk


def _stream_error(error: Any) -> UpstreamError:
    error = error if isinstance(error, dict) else {}
    kind = str(error.get("type", "api_error"))
    message = str(error.get("message") or "the upstream provider failed mid-stream")
    return UpstreamError(message, status=_STREAM_ERROR_STATUS.get(kind, 502), type=kind)


# ---------------------------------------------------------------- errors


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
        return UpstreamError(
            message,
            status=429,
            code="rate_limit_exceeded",
            type="rate_limit_error",
            retry_after=retry_after,
            upstream_status=status,
        )
    if status in (401, 403):
        return UpstreamError(
            "the upstream provider rejected the proxy's credentials",
            status=502,
            upstream_status=status,
        )
    if status == 404:
        return UpstreamError(
            f"the upstream provider does not know this model: {message}",
            status=502,
            upstream_status=status,
        )
    if status == 408:
        return UpstreamError(message, status=504, code="timeout", upstream_status=status)
    if 400 <= status < 500:
        return UpstreamError(
            message,
            status=413 if status == 413 else 400,
            retryable=False,
            type="invalid_request_error",
            upstream_status=status,
        )
    return UpstreamError(
        message,
        status=503,
        retry_after=retry_after,
        upstream_status=status,
        type=kind or "service_unavailable",
    )


# ---------------------------------------------------------------- I/O


class AnthropicProvider(Provider):
    """An Anthropic Messages endpoint.

    ``base_url`` may be given with or without its ``/v1``
    (``https://api.anthropic.com`` or ``https://api.anthropic.com/v1``). The
    ``client`` is the caller's and stays open unless ``owns_client``.
    """

    kind = "anthropic"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        client: httpx.AsyncClient,
        default_max_tokens: int = 4096,
        owns_client: bool = False,
    ) -> None:
        self.name = name
        self._client = client
        self._owns_client = owns_client
        base = base_url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        self._url = base + "/messages"
        self._models_url = base + "/models"
        self._headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            self._headers["x-api-key"] = api_key
        self._default_max_tokens = default_max_tokens
        self._no_sampling: set[str] = set()  # models that refused temperature / top_p

    def _payload(self, body: JSON, model: str, *, stream: bool) -> bytes:
        request = to_anthropic_request(
            body,
            model=model,
            stream=stream,
            default_max_tokens=self._default_max_tokens,
            sampling=model not in self._no_sampling,
        )
        return orjson.dumps(request)

    async def _send(
        self, stack: contextlib.AsyncExitStack, body: JSON, model: str, *, stream: bool
    ) -> tuple[httpx.Response, bytes]:
        """POST the request; a 2xx response (unread when streaming) and its body so far."""
        while True:
            payload = self._payload(body, model, stream=stream)
            try:
                response = await stack.enter_async_context(
                    self._client.stream("POST", self._url, content=payload, headers=self._headers)
                )
                ok = 200 <= response.status_code < 300
                content = b"" if ok and stream else await response.aread()
            except httpx.HTTPError as exc:
                raise transport_error(exc) from None
            if ok:
                return response, content
            if (
                response.status_code == 400
                and model not in self._no_sampling
                and _SAMPLING_REFUSED.search(content)
            ):
                # Newer models (Opus 4.7 on) refuse temperature and top_p outright.
                # Clients send them by habit; learn it once and send without.
                self._no_sampling.add(model)
                continue
            raise map_anthropic_error(response.status_code, content, response.headers)

    async def chat(self, body: JSON, *, model: str) -> JSON:
        async with contextlib.AsyncExitStack() as stack:
            _, content = await self._send(stack, body, model, stream=False)
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise UpstreamError("the upstream provider sent invalid JSON", status=502) from None
        return from_anthropic_response(answer, model=model, created=int(time.time()))

    @contextlib.asynccontextmanager
    async def stream_chat(self, body: JSON, *, model: str) -> AsyncIterator[AsyncIterator[Chunk]]:
        translator = AnthropicStreamTranslator(model=model, created=int(time.time()))
        async with contextlib.AsyncExitStack() as stack:
            response, _ = await self._send(stack, body, model, stream=True)
            chunks = translate_sse(response, translator)
            stack.push_async_callback(chunks.aclose)
            yield chunks

    async def embed(self, body: JSON, *, model: str) -> JSON:
        raise InvalidRequest("Anthropic offers no embeddings", param="model")

    async def ping(self) -> bool:
        return await ping(self._client, self._models_url, self._headers)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
