"""Decoding client requests: strict about what the proxy reads, lenient about the rest.

A request body is decoded twice, both times in C: once into the small typed
structs below, which check exactly the fields the proxy interprets and report
mistakes with their path (``messages[2].role``); once into plain Python
objects, which are what goes upstream, so every field the proxy does not
interpret (``logit_bias``, ``prediction``, a vendor's extension) passes
through untouched. Unknown fields are never an error: OpenAI adds fields
faster than any proxy could list them.

This is also the one place a body is checked for what later code could not
take: bytes that are not UTF-8 inside a string, and nesting deeper than
`MAX_DEPTH` (every later reader, the adapters' schema walks and the
re-encoding for the upstream among them, recurses). Either is a 400 naming
the problem here, so nothing downstream meets a `UnicodeDecodeError` or a
`RecursionError`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from .errors import InvalidRequest, param_from_validation_error

__all__ = [
    "MAX_DEPTH",
    "ChatRequest",
    "EmbeddingRequest",
    "Message",
    "decode_as",
    "decode_chat_request",
    "decode_embedding_request",
]


class _Lenient(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


class ImageURL(_Lenient):
    url: str
    detail: str | None = None


class ContentPart(_Lenient):
    type: str
    text: str | None = None
    image_url: ImageURL | None = None


class FunctionCall(_Lenient):
    name: str
    arguments: str


class ToolCall(_Lenient):
    id: str
    type: str = "function"
    function: FunctionCall | None = None


Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class Message(_Lenient):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None
    refusal: str | None = None


class FunctionDef(_Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Lenient):
    type: str
    function: FunctionDef | None = None


class NamedFunction(_Lenient):
    name: str


class ToolChoiceObject(_Lenient):
    type: str
    function: NamedFunction | None = None


class StreamOptions(_Lenient):
    include_usage: bool | None = None


class JSONSchemaFormat(_Lenient):
    name: str
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ChatRequest(_Lenient):
    model: str
    messages: list[Message]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    response_format: ResponseFormat | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    temperature: float | None = None
    top_p: float | None = None


class EmbeddingRequest(_Lenient):
    model: str
    # str | list[str] | list[int] | list[list[int]]: msgspec unions allow one
    # array type, so the elements are checked by hand.
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    user: str | None = None


_chat_decoder = msgspec.json.Decoder(ChatRequest)
_embedding_decoder = msgspec.json.Decoder(EmbeddingRequest)
_any_decoder = msgspec.json.Decoder()


# Arrays and objects inside one another, the body itself counting as 1. Real
# requests stay far below (a tool's JSON schema nested ten levels deep is about
# 25); later code recursing over the body stays far below Python's limit.
MAX_DEPTH = 128


# A \uD800-\uDBFF escape not followed by a \uDC00-\uDFFF one, or the reverse:
# JSON allows writing them, but they are no text (msgspec refuses them; we say why).
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _not_json(detail: str) -> InvalidRequest:
    return InvalidRequest(
        f"We could not parse the JSON body of your request. (HINT: {detail}.)",
        code="invalid_json")


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> tuple[Any, dict[str, Any]]:
    if not body.strip():
        raise InvalidRequest(
            "We could not parse the JSON body of your request: the body is empty. "
            "(HINT: send a JSON object with 'Content-Type: application/json'.)"
        )
    try:
        raw = _any_decoder.decode(body)
    except msgspec.DecodeError as exc:
        lone = _LONE_SURROGATE.search(body)
        if lone is not None:
            raise _not_json(
                f"the body is not valid JSON: the escape {lone.group().decode()} at offset "
                f"{lone.start()} is half of a UTF-16 surrogate pair; a string cannot hold "
                "it alone") from None
        raise _not_json(f"the body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise _not_json(_utf8_problem(body)) from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    # Each container opens with a bracket, so a body with fewer brackets (in
    # strings or not) than the limit cannot be too deep: most skip the scan.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _depth_exceeds(body, MAX_DEPTH):
        raise _too_deep()
    try:
        typed = decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, param = param_from_validation_error(exc)
        if message.startswith("Object missing required field"):
            field = message.split("`")[1] if "`" in message else param
            param = f"{param}.{field}" if param else field
            message = f"Missing required parameter: '{param}'."
        else:
            message = f"Invalid value: {message}."
        raise InvalidRequest(message, param=param, code="invalid_value") from None
    return typed, raw


def _utf8_problem(body: bytes) -> str:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (f"the body is not valid UTF-8: byte 0x{body[exc.start]:02x} at offset "
                f"{exc.start} ({exc.reason}); JSON text must be UTF-8")
    return "the body is not valid UTF-8; JSON text must be UTF-8"


def _too_deep() -> InvalidRequest:
    return _not_json(f"the body nests arrays and objects more than {MAX_DEPTH} levels deep")


# Every byte but the four brackets, for `bytes.translate(None, delete)`.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# The innermost pairs, all removed in one pass (re.sub does not rescan its output).
_INNERMOST = re.compile(rb"\[\]|\{\}")


def _depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether arrays and objects in the (valid JSON) `body` nest deeper than `limit`.

    In C-speed passes over bytes rather than a walk over the decoded objects:
    escaped backslashes and quotes go first, so the quotes left delimit the
    strings and every other piece lies outside them; of those pieces only the
    brackets are kept; then each pass removes the innermost pairs, one level.
    """
    if b"\\\\" in body or b'\\"' in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(body.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _INNERMOST.sub(b"", brackets)
    return bool(brackets)


def decode_as(decoder: msgspec.json.Decoder[Any], body: bytes) -> tuple[Any, dict[str, Any]]:
    """`body` decoded with `decoder` and as plain objects, with every 400 of the chat
    decoding (empty body, bad JSON or UTF-8, nesting, a field's type named by its path)."""
    return _decode(decoder, body)


def decode_chat_request(body: bytes) -> tuple[ChatRequest, dict[str, Any]]:
    """Validate a chat request; return it typed and as plain objects to forward."""
    request, raw = _decode(_chat_decoder, body)
    _check_chat(request)
    return request, raw


def decode_embedding_request(body: bytes) -> tuple[EmbeddingRequest, dict[str, Any]]:
    request, raw = _decode(_embedding_decoder, body)
    value = request.input
    if not _valid_embedding_input(value):
        raise InvalidRequest(
            "'$.input' is invalid. Input must be a non-empty string, an array of non-empty "
            "strings, an array of tokens (integers), or an array of token arrays.",
            param="input",
            code="invalid_value",
        )
    if request.dimensions is not None and request.dimensions < 1:
        raise InvalidRequest(
            "Invalid 'dimensions': must be at least 1.", param="dimensions", code="invalid_value"
        )
    return request, raw


def _valid_embedding_input(value: str | list[Any]) -> bool:
    if isinstance(value, str):
        return bool(value)
    if not value:
        return False
    if all(isinstance(v, str) and v for v in value):
        return True
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return True
    return all(
        isinstance(v, list) and v
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v)
        for v in value
    )


def _check_chat(request: ChatRequest) -> None:
    if not request.model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if not request.messages:
        raise InvalidRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    if request.n is not None and not 1 <= request.n <= 128:
        raise InvalidRequest(
            "Invalid 'n': must be between 1 and 128.", param="n", code="invalid_value"
        )
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(request, name)
        if value is not None and value < 1:
            raise InvalidRequest(
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1, "
                f"but got {value} instead.",
                param=name,
                code="integer_below_min_value",
            )
    for index, message in enumerate(request.messages):
        where = f"messages[{index}]"
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidRequest(
                f"Missing required parameter: '{where}.tool_call_id'.",
                param=f"{where}.tool_call_id",
                code="missing_required_parameter",
            )
        if message.role in ("user", "system", "developer", "tool") and message.content is None:
            raise InvalidRequest(
                f"Missing required parameter: '{where}.content'.",
                param=f"{where}.content",
                code="missing_required_parameter",
            )
        if isinstance(message.content, list):
            for part_index, part in enumerate(message.content):
                if part.type == "text" and part.text is None:
                    raise InvalidRequest(
                        f"Missing required parameter: '{where}.content[{part_index}].text'.",
                        param=f"{where}.content[{part_index}].text",
                        code="missing_required_parameter",
                    )
                if part.type == "image_url" and part.image_url is None:
                    raise InvalidRequest(
                        f"Missing required parameter: "
                        f"'{where}.content[{part_index}].image_url'.",
                        param=f"{where}.content[{part_index}].image_url",
                        code="missing_required_parameter",
                    )
    for index, tool in enumerate(request.tools or ()):
        if tool.type == "function" and tool.function is None:
            raise InvalidRequest(
                f"Missing required parameter: 'tools[{index}].function'.",
                param=f"tools[{index}].function",
                code="missing_required_parameter",
            )
