"""Reading OpenAI request shapes, for the adapters that translate them to another protocol.

Pure functions; mistakes are `InvalidRequest` with the path of the offending
field, as the client wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidRequest
from .base import JSON

__all__ = [
    "DATA_URL",
    "assistant_tool_calls",
    "conversation",
    "function_tools",
    "max_tokens",
    "plain_text",
    "reject_logprobs",
    "response_schema",
    "stop_sequences",
]

# A base64 data URL, as clients inline images, audio and files: the media type
# (absent in some clients' URLs) and the payload.
DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*;base64,(?P<data>.*)", re.S)


def conversation(raw: Any, system: list[str]) -> Iterator[tuple[int, str, Any, JSON]]:
    """The messages that are not instructions, in order, as (index, path, role, message).

    System and developer messages add their text to `system` as they come;
    a protocol with one place for instructions gathers them there. Checked
    lazily, so the first mistake in message order is the one reported.
    """
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages must be a non-empty array", param="messages")
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        role = msg.get("role")
        if role in ("system", "developer"):
            text = plain_text(msg.get("content"), where)
            if text:
                system.append(text)
        else:
            yield i, where, role, msg


def plain_text(content: Any, where: str) -> str:
    """A message's content as text: a string, or text (and refusal) parts joined by newlines."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type", "text") not in ("text", "refusal"):
                raise InvalidRequest(
                    "only text parts are allowed here", param=f"{where}.content[{j}]"
                )
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise InvalidRequest("a text part needs text", param=f"{where}.content[{j}].text")
            texts.append(text)
        return "\n".join(texts)
    raise InvalidRequest("content must be a string or an array of parts", param=f"{where}.content")


def function_tools(body: JSON) -> Iterator[tuple[JSON, dict[str, Any] | None]]:
    """Each function the request offers (`tools`, or legacy `functions`), checked.

    Yields the function object (with a string ``name``) and its JSON Schema
    ``parameters`` (None when absent).
    """
    for field, wrapped in (("tools", True), ("functions", False)):
        items = body.get(field)
        if items is None:
            continue
        if not isinstance(items, list):
            raise InvalidRequest(f"{field} must be an array", param=field)
        for k, item in enumerate(items):
            at = f"{field}[{k}]"
            if wrapped and (
                not isinstance(item, dict) or item.get("type", "function") != "function"
            ):
                raise InvalidRequest(
                    "only function tools are supported by this model's provider", param=f"{at}.type"
                )
            fn = item.get("function") if wrapped else item
            at = f"{at}.function" if wrapped else at
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise InvalidRequest("a function needs a name", param=f"{at}.name")
            schema = fn.get("parameters")
            if schema is not None and not isinstance(schema, dict):
                raise InvalidRequest(
                    "parameters must be a JSON Schema object", param=f"{at}.parameters"
                )
            yield fn, schema


def assistant_tool_calls(msg: JSON, where: str) -> Iterator[tuple[JSON, str]]:
    """Each tool call of an assistant message, checked to be a function call.

    Yields the call object and its path (``messages[i].tool_calls[j]``).
    """
    calls = msg.get("tool_calls")
    if calls is None:
        return
    if not isinstance(calls, list):
        raise InvalidRequest("tool_calls must be an array", param=f"{where}.tool_calls")
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise InvalidRequest("only function tool calls are supported", param=f"{at}.type")
        yield call, at


def reject_logprobs(body: JSON) -> None:
    """Refuse ``logprobs`` and ``top_logprobs``, which the native protocols cannot return."""
    for field in ("logprobs", "top_logprobs"):
        if body.get(field) not in (None, False):
            raise InvalidRequest("logprobs are not supported by this model's provider", param=field)


def max_tokens(body: JSON) -> int | None:
    """The output limit: ``max_completion_tokens``, else the legacy ``max_tokens``, else None."""
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"{field} must be a positive integer", param=field)
        return value
    return None


def stop_sequences(body: JSON) -> list[str] | None:
    """``stop`` as a list of strings (non-strings dropped); None when there is none."""
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and stop:
        return [s for s in stop if isinstance(s, str)]
    return None


def response_schema(fmt: Any) -> JSON:
    """The JSON Schema of a ``response_format`` of type ``json_schema``."""
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidRequest(
            "response_format.json_schema.schema must be an object",
            param="response_format.json_schema.schema",
        )
    return schema
