"""Reading OpenAI request shapes, for the adapters that translate them to another protocol.

Pure functions; mistakes are `InvalidRequest` with the path of the offending
field, as the client wrote it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import InvalidRequest
from .base import JSON

__all__ = ["function_tools", "plain_text"]


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
