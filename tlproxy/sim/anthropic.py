"""The simulated upstream speaking Anthropic's Messages API (``POST /v1/messages``).

A request is checked as Anthropic checks it (``x-api-key``, ``anthropic-version``,
``model``, ``max_tokens``, ``messages``, tool results that answer the previous
turn's tool uses), converted into the OpenAI-shaped dict the protocol-neutral
planner reads (`to_plan_request`), and the plan is rendered as a Message or as
the typed event stream: ``message_start``, ``ping``, per content block
``content_block_start`` / ``content_block_delta`` (``text_delta`` or
``input_json_delta``) / ``content_block_stop``, ``message_delta`` (stop reason
and ``usage.output_tokens``), ``message_stop``. With the ``reasoning_content``
habit, a model that thinks (extended thinking) first: a ``thinking`` block
(``thinking_delta`` events, then a ``signature_delta``), counted in
``output_tokens`` as Anthropic counts it. Errors are
``{"type": "error", "error": {"type", "message"}}`` with Anthropic's statuses.

Automatic prompt caching (a top-level ``cache_control``) is billed as Anthropic
bills it: the longest earlier prompt this one starts with (same system, tools
and first messages) is a cache read, the rest of the prompt a cache write.
Unlike Anthropic, the sim caches prompts of any length, for as long as it runs.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..sse import encode_event
from . import core
from .plan import Answer

__all__ = ["AnthropicWire", "WireError", "handles", "serve", "to_plan_request"]

_encode = msgspec.json.Encoder().encode

# HTTP status -> (error type, default message), from Anthropic's errors page.
_ERRORS = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified "
          "resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate "
          "limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "content_filter": "refusal"}
# What a thinking model (the reasoning_content habit) thinks before each answer, and
# the signature Anthropic seals a thinking block with (opaque to the client).
THINKING = ("Let", " me", " think", " about", " this", ".")
SIGNATURE = "c2ltLXNpZ25hdHVyZQ=="


class WireError(ValueError):
    """A request the real API would refuse with 400 ``invalid_request_error``."""


def handles(path: str, headers: dict[str, str]) -> bool:
    """Whether a request is for Anthropic's API (messages, or the model list it versions)."""
    return path.endswith("/v1/messages") or (
        path.endswith("/models") and "anthropic-version" in headers)


def to_plan_request(body: dict[str, Any]) -> dict[str, Any]:
    """The minimal OpenAI-shaped request `plan_answer` reads, from a Messages request.

    ``system`` becomes a system message; text blocks become message text;
    ``tool_use`` blocks assistant ``tool_calls``; ``tool_result`` blocks
    ``tool`` messages (in block order); tools, ``tool_choice``, ``max_tokens``,
    ``stop_sequences`` and ``output_config.format`` (JSON schema) map to their
    OpenAI fields. Raises `WireError` for what Anthropic would refuse.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("model: Field required")
    limit = body.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise WireError("max_tokens: Field required (a positive integer)")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise WireError("messages: at least one message is required")
    messages: list[dict[str, Any]] = []
    system = _text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    previous_uses: set[str] = set()
    for i, message in enumerate(raw):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise WireError(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise WireError(f"messages.{i}.content: Input should be a string or a list")
        uses = _convert_turn(role, blocks, i, previous_uses, messages)
        previous_uses = uses
    out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": limit, "n": 1}
    tools = [
        {"type": "function",
         "function": {"name": t.get("name"), "parameters": t.get("input_schema") or {}}}
        for t in body.get("tools") or () if isinstance(t, dict)
    ]
    if tools:
        out["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        out["tool_choice"] = (
            {"type": "function", "function": {"name": choice.get("name")}} if kind == "tool"
            else ("required" if kind == "any" else kind)
        )
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    fmt = (body.get("output_config") or {}).get("format") or body.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        out["response_format"] = {
            "type": "json_schema", "json_schema": {"name": "output", "schema": fmt.get("schema")}}
    return out


def _convert_turn(
    role: str, blocks: list[Any], i: int, previous_uses: set[str], out: list[dict[str, Any]]
) -> set[str]:
    """Append one turn's messages to `out`; returns the ids of its tool uses."""
    turn = core.PlannerTurn(out, role)
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            turn.texts.append(str(block.get("text", "")))
        elif kind == "tool_use" and role == "assistant":
            turn.call(str(block.get("id")), block.get("name"), block.get("input") or {})
        elif kind == "tool_result" and role == "user":
            if block.get("tool_use_id") not in previous_uses:
                raise WireError(
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                    "blocks. Each `tool_result` block must have a corresponding `tool_use` "
                    "block in the previous message.")
            turn.result(block["tool_use_id"], _text(block.get("content")))
        elif kind not in ("image", "document", "thinking", "redacted_thinking"):
            raise WireError(f"messages.{i}.content.{j}.type: unexpected block type {kind!r}")
    turn.close()
    return {call["id"] for call in turn.calls}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text", "")) for b in content
            if isinstance(b, dict) and b.get("type") == "text")
    return ""


class AnthropicWire(core.Wire):
    """Anthropic's Messages format (one choice: Anthropic has no ``n``)."""

    transient = (429, 500, 529)
    overloaded = 529

    def __init__(self, *, model: str, message_id: str,
                 cache: tuple[dict[bytes, int], list[bytes]] | None = None) -> None:
        self.model = model
        self.message_id = message_id
        # With caching on: the sim's cache, and this prompt's prefixes, longest first.
        self._cache = cache
        self._cache_use: tuple[int, int] | None = None

    @classmethod
    def error(cls, status: int, message: str | None = None) -> tuple[Any, core.Headers]:
        kind, default = _ERRORS.get(status, ("api_error", "Internal server error"))
        headers = [(b"retry-after", b"1")] if status == 429 else []
        body = {"type": "error", "error": {"type": kind, "message": message or default},
                "request_id": "req_sim"}
        return body, headers

    def error_event(self) -> bytes:
        body, _ = self.error(529)
        return encode_event(_encode(body).decode(), event="error")

    def malformed_event(self) -> bytes:
        return (b'event: content_block_delta\n'
                b'data: {"type": "content_block_delta", "index": 0, "delta": {"type": "te\n\n')

    def _usage(self, answer: Answer, habits: core.Habits) -> dict[str, Any]:
        read, written = self._cache_reads_and_writes(answer.prompt_tokens)
        return {"input_tokens": answer.prompt_tokens - read - written,
                "output_tokens": answer.completion_tokens + _thought_tokens(habits),
                "cache_creation_input_tokens": written, "cache_read_input_tokens": read,
                "service_tier": "standard"}

    def _cache_reads_and_writes(self, prompt_tokens: int) -> tuple[int, int]:
        if self._cache is None:
            return 0, 0
        if self._cache_use is None:  # once per request: the usage is sent twice in a stream
            cache, prefixes = self._cache
            read = min(next((cache[p] for p in prefixes if p in cache), 0), prompt_tokens)
            cache[prefixes[0]] = prompt_tokens
            self._cache_use = read, prompt_tokens - read
        return self._cache_use

    def _envelope(self, answer: Answer, content: list[Any], stop_reason: str | None,
                  habits: core.Habits) -> Any:
        return {"id": self.message_id, "type": "message", "role": "assistant",
                "model": self.model, "content": content, "stop_reason": stop_reason,
                "stop_sequence": None, "usage": self._usage(answer, habits)}

    def message(self, answer: Answer, habits: core.Habits = frozenset()) -> Any:
        plan = answer.choices[0]
        content: list[dict[str, Any]] = []
        if _thought_tokens(habits):
            content.append({"type": "thinking", "thinking": "".join(THINKING),
                            "signature": SIGNATURE})
        if plan.tokens or not plan.tool_calls:
            content.append({"type": "text", "text": "".join(plan.tokens)})
        for call_id, name, arguments in plan.tool_calls:
            content.append({"type": "tool_use", "id": _tool_id(call_id), "name": name,
                            "input": msgspec.json.decode(arguments)})
        return self._envelope(answer, content, _STOP_REASONS[plan.finish_reason], habits)

    def stream(
        self, answer: Answer, habits: core.Habits = frozenset()
    ) -> tuple[list[bytes], list[bytes], list[bytes]]:
        plan = answer.choices[0]
        start = self._envelope(answer, [], None, habits)
        start["usage"] = {**start["usage"], "output_tokens": 1}
        head = [_event("message_start", {"message": start}), _event("ping", {})]
        steps: list[bytes] = []
        blocks = 0  # content blocks opened so far

        def open_block(block: dict[str, Any]) -> bytes:
            nonlocal blocks
            close = _event("content_block_stop", {"index": blocks - 1}) if blocks else b""
            blocks += 1
            return close + _event("content_block_start", {"index": blocks - 1,
                                                          "content_block": block})

        if _thought_tokens(habits):
            for position, thought in enumerate(THINKING):
                opened = (open_block({"type": "thinking", "thinking": "", "signature": ""})
                          if position == 0 else b"")
                steps.append(opened + _delta(blocks - 1, {"type": "thinking_delta",
                                                          "thinking": thought}))
            steps[-1] += _delta(blocks - 1, {"type": "signature_delta", "signature": SIGNATURE})
        for position, token in enumerate(plan.tokens):
            opened = open_block({"type": "text", "text": ""}) if position == 0 else b""
            steps.append(opened + _delta(blocks - 1, {"type": "text_delta", "text": token}))
        for call_id, name, arguments in plan.tool_calls:
            block = {"type": "tool_use", "id": _tool_id(call_id), "name": name, "input": {}}
            empty = {"type": "input_json_delta", "partial_json": ""}
            steps.append(open_block(block) + _delta(blocks - 1, empty))
            steps.extend(
                _delta(blocks - 1, {"type": "input_json_delta", "partial_json": piece})
                for piece in _pieces(arguments, 8))
        tail = [] if blocks else [open_block({"type": "text", "text": ""})]
        tail += [
            _event("content_block_stop", {"index": blocks - 1}),
            _event("message_delta", {
                "delta": {"stop_reason": _STOP_REASONS[plan.finish_reason], "stop_sequence": None},
                "usage": {"output_tokens": answer.completion_tokens + _thought_tokens(habits)}}),
            _event("message_stop", {}),
        ]
        if "pings" in habits:
            # Anthropic's keep-alive: a ping may come between any two events.
            steps = [step + _event("ping", {}) for step in steps]
        return head, steps, tail


def _thought_tokens(habits: core.Habits) -> int:
    return len(THINKING) if "reasoning_content" in habits else 0


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _tool_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return encode_event(_encode({"type": kind, **data}).decode(), event=kind)


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _event("content_block_delta", {"index": index, "delta": delta})


def _models(sim: core.Simulator) -> dict[str, Any]:
    data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
            for m in sim.profiles]
    return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


async def serve(sim: core.Simulator, request: core.SimRequest) -> None:
    """Answer one Anthropic request (``POST .../v1/messages`` or ``GET .../v1/models``)."""
    send = request.send
    if "x-api-key" not in request.headers:
        await core.send_json(send, 401, *AnthropicWire.error(401, "x-api-key header is required"))
        return
    if not sim.key_ok(request.headers["x-api-key"]):
        await core.send_json(send, 401, *AnthropicWire.error(401))
        return
    if "anthropic-version" not in request.headers:
        await core.send_json(send, 400, *AnthropicWire.error(
            400, "anthropic-version: header is required"))
        return
    if request.path.endswith("/models"):
        await core.send_json(send, 200, _models(sim))
        return
    body = core.decode_object(request.raw)
    if body is None:
        error = AnthropicWire.error(400, "The request body is not valid JSON.")
        await core.send_json(send, 400, *error)
        return
    sim.stats.last_body = body
    try:
        plan_request = to_plan_request(body)
    except WireError as exc:
        await core.send_json(send, 400, *AnthropicWire.error(400, str(exc)))
        return
    cache = None
    if isinstance(body.get("cache_control"), dict):
        head = [body.get("system"), body.get("tools")]
        messages = body["messages"]
        prefixes = [msgspec.json.encode([*head, messages[:k]])
                    for k in range(len(messages), 0, -1)]
        cache = sim.prompt_cache, prefixes
    wire = AnthropicWire(model=plan_request["model"], message_id="msg_" + core.ident(request.raw),
                         cache=cache)
    await sim.respond(request, wire, plan_request, plan_request["model"],
                      stream=body.get("stream") is True)
