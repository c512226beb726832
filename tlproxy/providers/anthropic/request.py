"""OpenAI chat requests as Anthropic Messages requests (pure: dicts in, dicts out).

The differences that shape the translation:

* The system prompt is a top-level field, not a message: system and developer
  messages are lifted out and joined.
* Turns must alternate and tool results are *user* content blocks, so OpenAI's
  ``tool`` messages become ``tool_result`` blocks and consecutive same-role turns
  are merged (tool results first, as Anthropic requires).
* ``max_tokens`` is required; ``temperature`` stops at 1, not 2.

Structured outputs: Anthropic's GA form is ``output_config.format`` (type
``json_schema``, no beta header; it replaced the beta ``output_format``), see
https://platform.claude.com/docs/en/build-with-claude/structured-outputs. It is
used for ``response_format: json_schema``; models without it are kept away from
such requests by the catalog's ``json_schema`` capability. ``json_object`` has
no native form and becomes an instruction in the system prompt.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ...errors import InvalidRequest
from .._shapes import (
    DATA_URL,
    assistant_tool_calls,
    conversation,
    function_tools,
    max_tokens,
    plain_text,
    reject_logprobs,
    response_schema,
    stop_sequences,
)
from ..base import JSON

__all__ = ["to_anthropic_request"]

_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_-]")
_JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no prose, no code fences."
)


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
    out: JSON = {"model": model, "max_tokens": max_tokens(body) or default_max_tokens}
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
    stop = stop_sequences(body)
    if stop is not None:
        out["stop_sequences"] = stop
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
    reject_logprobs(body)


def _messages(raw: Any) -> tuple[list[str], list[JSON]]:
    system: list[str] = []
    turns: list[JSON] = []
    legacy_id: str | None = None  # the id given to the last legacy function_call
    for i, where, role, msg in conversation(raw, system):
        if role == "user":
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
    match = DATA_URL.fullmatch(url)
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
    match = DATA_URL.fullmatch(data)
    mime, payload = (match["mime"], match["data"]) if match else ("application/pdf", data)
    if mime != "application/pdf":
        raise InvalidRequest("only PDF files are supported here", param=f"{at}.file.file_data")
    source = {"type": "base64", "media_type": mime, "data": payload}
    return {"type": "document", "source": source}


def _assistant_blocks(msg: JSON, where: str, i: int) -> tuple[list[JSON], str | None]:
    text = plain_text(msg.get("content"), where)
    blocks: list[JSON] = [{"type": "text", "text": text}] if text else []
    for call, at in assistant_tool_calls(msg, where):
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidRequest("a tool call needs an id", param=f"{at}.id")
        blocks.append(_tool_use(_safe_id(call_id), call.get("function"), f"{at}.function"))
    legacy = msg.get("function_call")
    if legacy is None:
        return blocks, None
    legacy_id = f"toolu_legacy_{i}"
    blocks.append(_tool_use(legacy_id, legacy, f"{where}.function_call"))
    return blocks, legacy_id


def _tool_use(call_id: str, fn: Any, at: str) -> JSON:
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest("a function call needs a name", param=f"{at}.name")
    return {
        "type": "tool_use",
        "id": call_id,
        "name": fn["name"],
        "input": _arguments(fn, at),
    }


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
        schema = response_schema(fmt)
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    elif kind == "json_object":
        system.append(_JSON_OBJECT_INSTRUCTION)
    elif kind != "text":
        raise InvalidRequest("unsupported response_format", param="response_format.type")
