"""An OpenAI upstream reached at its own ``/v1/responses``, for chat and Responses clients.

A provider declared with ``responses_api = true`` (kind ``openai``) serves
its models through OpenAI's Responses API rather than Chat Completions: some
models and features are only offered there. The engine still speaks chat to
every adapter (one race, one accounting, one renderer per client API), so
this adapter translates at its edge, as the Anthropic and Gemini ones do:

* `responses_request`: an OpenAI chat body -> a Responses request (messages
  to input items, function tools flattened, ``response_format`` to
  ``text.format``, ``max_completion_tokens`` to ``max_output_tokens``,
  ``reasoning_effort`` to ``reasoning.effort``; ``store`` false: the proxy
  keeps conversations itself, so nothing is left at the upstream);
* `chat_completion`: a ``response`` object -> a ``chat.completion``;
* `ResponsesStreamTranslator`: the typed events -> ``chat.completion.chunk``
  dicts (text, refusal and reasoning deltas, function calls by output
  index), the finish reason and the usage from the terminal event; a
  ``response.failed`` or ``error`` event is an `UpstreamError`, so a failure
  before the first token hands over to the next candidate, as for chat.

The translations are pure; the I/O is `OpenAIProvider`'s (one transport,
its error mapping).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ..errors import UpstreamError
from ._http import encode_body, json_answer, translate_sse
from .base import JSON, Chunk
from .openai import OpenAIProvider, map_openai_error, map_openai_stream_error
from .transport import Transport

__all__ = ["OpenAIResponsesProvider", "ResponsesStreamTranslator", "chat_completion",
           "responses_request"]


# -- chat -> Responses --------------------------------------------------------------------

def _parts(content: Any) -> Any:
    """A chat message's content as Responses content: text stays text, parts are typed."""
    if not isinstance(content, list):
        return content if content is not None else ""
    parts: list[JSON] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            parts.append({"type": "input_text", "text": part.get("text") or ""})
        elif part.get("type") == "image_url":
            image = part.get("image_url") or {}
            parts.append({"type": "input_image", "image_url": image.get("url"),
                          "detail": image.get("detail") or "auto"})
    return parts


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return str(content or "")


def _input(messages: list[Any]) -> list[JSON]:
    items: list[JSON] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "tool":
            items.append({"type": "function_call_output", "call_id": message.get("tool_call_id"),
                          "output": _text(message.get("content"))})
        elif role == "assistant":
            text = _text(message.get("content"))
            if text:
                items.append({"role": "assistant", "content": text})
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                items.append({"type": "function_call", "call_id": call.get("id"),
                              "name": function.get("name"),
                              "arguments": function.get("arguments") or ""})
        elif role in ("user", "system", "developer"):
            items.append({"role": role, "content": _parts(message.get("content"))})
    return items


def responses_request(body: JSON, model: str, *, stream: bool) -> JSON:
    """The Responses request for a chat `body`, for the upstream's `model`."""
    out: JSON = {"model": model, "input": _input(body.get("messages") or []),
                 "store": False, "stream": stream}
    tools = []
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict):
            tools.append({"type": "function", **function})
    if tools:
        out["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        choice = {"type": "function", "name": (choice.get("function") or {}).get("name")}
    if choice is not None:
        out["tool_choice"] = choice
    for name in ("parallel_tool_calls", "temperature", "top_p", "user", "metadata"):
        if body.get(name) is not None:
            out[name] = body[name]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit:
        out["max_output_tokens"] = limit
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        out["text"] = {"format": {"type": "json_object"}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        out["text"] = {"format": {"type": "json_schema", **(fmt.get("json_schema") or {})}}
    if body.get("reasoning_effort"):
        out["reasoning"] = {"effort": body["reasoning_effort"]}
    return out


# -- Responses -> chat --------------------------------------------------------------------

def _usage(usage: Any) -> JSON | None:
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(usage.get("total_tokens") or prompt + completion),
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


def _finish(response: JSON, calls: bool) -> str:
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if calls else "stop"


def _failed(response: JSON) -> UpstreamError:
    error = response.get("error") or {}
    message = str(error.get("message") or "the upstream response failed")
    if error.get("code") == "rate_limit_exceeded":
        return UpstreamError(message, status=429, code="rate_limit_exceeded")
    return UpstreamError(message, status=502)


def chat_completion(response: JSON) -> JSON:
    """A ``response`` object as a ``chat.completion`` (choice 0)."""
    if response.get("status") == "failed":
        raise _failed(response)
    text: list[str] = []
    refusal: list[str] = []
    reasoning: list[str] = []
    calls: list[JSON] = []
    for item in response.get("output") or ():
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    text.append(part.get("text") or "")
                elif part.get("type") == "refusal":
                    refusal.append(part.get("refusal") or "")
        elif kind == "function_call":
            calls.append({"id": item.get("call_id"), "type": "function",
                          "function": {"name": item.get("name"),
                                       "arguments": item.get("arguments") or ""}})
        elif kind == "reasoning":
            for part in [*(item.get("content") or ()), *(item.get("summary") or ())]:
                reasoning.append(part.get("text") or "")
    message: JSON = {"role": "assistant", "content": "".join(text) or None,
                     "refusal": "".join(refusal) or None}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    answer: JSON = {"id": response.get("id"), "object": "chat.completion",
                    "created": int(response.get("created_at") or 0),
                    "model": response.get("model"),
                    "choices": [{"index": 0, "message": message, "logprobs": None,
                                 "finish_reason": _finish(response, bool(calls))}]}
    usage = _usage(response.get("usage"))
    if usage is not None:
        answer["usage"] = usage
    return answer


class ResponsesStreamTranslator:
    """The Responses API's stream events in, chat chunks out (`_http.StreamTranslator`)."""

    def __init__(self) -> None:
        self._head: JSON = {"object": "chat.completion.chunk"}
        self._calls: dict[int, int] = {}  # output_index -> tool call index
        self._role_sent = False
        self._finished = False
        self._usage: JSON | None = None

    @property
    def finished(self) -> bool:
        return self._finished

    def _chunk(self, delta: JSON, finish: str | None = None) -> Chunk:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        return {**self._head, "choices": [{"index": 0, "delta": delta,
                                           "finish_reason": finish}]}

    def feed(self, event: str | None, data: JSON) -> list[Chunk]:
        kind = data.get("type") or event
        if kind == "error":
            raise map_openai_stream_error(data.get("error") or data)
        response = data.get("response")
        if kind == "response.created" and isinstance(response, dict):
            self._head = {"id": response.get("id"), "object": "chat.completion.chunk",
                          "created": int(response.get("created_at") or 0),
                          "model": response.get("model")}
        elif kind == "response.output_text.delta":
            return [self._chunk({"content": data.get("delta") or ""})]
        elif kind == "response.refusal.delta":
            return [self._chunk({"refusal": data.get("delta") or ""})]
        elif kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
            return [self._chunk({"reasoning_content": data.get("delta") or ""})]
        elif kind == "response.output_item.added":
            item = data.get("item") or {}
            if item.get("type") == "function_call":
                index = self._calls[data.get("output_index", 0)] = len(self._calls)
                return [self._chunk({"tool_calls": [{
                    "index": index, "id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"),
                                 "arguments": item.get("arguments") or ""}}]})]
        elif kind == "response.function_call_arguments.delta":
            index = self._calls.get(data.get("output_index", 0), 0)
            return [self._chunk({"tool_calls": [{
                "index": index, "function": {"arguments": data.get("delta") or ""}}]})]
        elif kind == "response.failed" and isinstance(response, dict):
            raise _failed(response)
        elif kind in ("response.completed", "response.incomplete") and isinstance(
                response, dict):
            self._finished = True
            usage = _usage(response.get("usage"))
            if usage is not None:
                self._usage = {**self._head, "choices": [], "usage": usage}
            return [self._chunk({}, _finish(response, bool(self._calls)))]
        return []

    def close(self) -> list[Chunk]:
        return [self._usage] if self._usage is not None else []


class OpenAIResponsesProvider(OpenAIProvider):
    """An OpenAI upstream whose chat goes to its ``/v1/responses``; embeddings as before."""

    def __init__(self, name: str, *, base_url: str, api_key: str | None,
                 transport: Transport, owns_transport: bool = False) -> None:
        super().__init__(name, base_url=base_url, api_key=api_key, transport=transport,
                         owns_transport=owns_transport)
        self._responses = self.endpoint(base_url.rstrip("/") + "/responses")

    async def chat(self, body: JSON, *, model: str) -> JSON:
        payload = encode_body(responses_request(body, model, stream=False))
        reply = await self._transport.send(self._responses, payload)
        if reply.status != 200:
            raise map_openai_error(reply.status, reply.content, reply.headers)
        return chat_completion(json_answer(reply.content))

    @contextlib.asynccontextmanager
    async def stream_chat(self, body: JSON, *, model: str) -> AsyncIterator[AsyncIterator[Chunk]]:
        payload = encode_body(responses_request(body, model, stream=True))
        async with self._transport.stream(self._responses, payload) as reply:
            if reply.status != 200:
                raise map_openai_error(reply.status, await reply.aread(), reply.headers)
            chunks = translate_sse(reply, ResponsesStreamTranslator())
            try:
                yield chunks
            finally:
                await chunks.aclose()
