"""A Responses API request, decoded and translated to the chat request the engine runs.

The proxy serves ``POST /v1/responses`` with the engine it serves chat with:
the same policy, race, limits and accounting. So the request is translated
once, here, into a Chat Completions body (``messages``, ``tools``,
``response_format``...), and everything downstream (the router's signals,
the adapters for OpenAI, Anthropic and Gemini upstreams) reads that body as
it reads a chat request. Pure: no I/O, no clock.

What is translated: ``input`` (a string, or message items with
``input_text``/``input_image``/``output_text`` parts, ``function_call`` and
``function_call_output`` items; ``reasoning`` items given back are dropped,
as a chat model takes no reasoning input), ``instructions`` (a system message
first, never carried to the next turn, as OpenAI does), function ``tools``,
``tool_choice``, ``parallel_tool_calls``, ``temperature``, ``top_p``,
``max_output_tokens``, ``text.format``, ``reasoning.effort`` and ``user``.
``metadata`` and ``store`` stay with the proxy (a response is stored here,
never upstream). A conversation continued with ``previous_response_id``
starts from the stored turn's messages (`history`).

What is refused, each with a 400 naming the parameter: built-in tools
(``web_search``, ``file_search``, ``computer_use``, MCP...), background mode,
``conversation`` objects, stored prompts, file inputs and item references.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

from ..errors import InvalidRequest
from ..wire import ChatRequest, decode_as

__all__ = ["ResponsesRequest", "Turn", "answer_messages", "decode_responses_request", "new_id",
           "translate"]


class _Lenient(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


class ContentPart(_Lenient):
    type: str
    text: str | None = None
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None
    refusal: str | None = None


class InputItem(_Lenient):
    # Absent on the short form of a message (``{"role": "user", "content": "Hi"}``).
    type: str | None = None
    id: str | None = None
    role: str | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None


class ToolParam(_Lenient):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceObject(_Lenient):
    type: str
    name: str | None = None


class TextFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class TextParam(_Lenient):
    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningParam(_Lenient):
    # OpenAI's values, refused here as there: a response echoes them.
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(_Lenient):
    model: str
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[ToolParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    # OpenAI's ranges, refused here as there: a response echoes them.
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_output_tokens: int | None = None
    text: TextParam | None = None
    reasoning: ReasoningParam | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    stream: bool | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None


_decoder = msgspec.json.Decoder(ResponsesRequest)


def decode_responses_request(body: bytes) -> tuple[ResponsesRequest, dict[str, Any]]:
    """Validate a Responses request (400s name the path); typed and as plain objects."""
    request, raw = decode_as(_decoder, body)
    if not request.model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    for name in ("background", "conversation", "prompt"):
        if getattr(request, name):
            raise InvalidRequest(_UNSUPPORTED[name], param=name, code="unsupported_parameter")
    if request.input is None or request.input == []:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input",
                             code="missing_required_parameter")
    if request.max_output_tokens is not None and request.max_output_tokens < 1:
        raise InvalidRequest(
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 1, "
            f"but got {request.max_output_tokens} instead.", param="max_output_tokens",
            code="integer_below_min_value")
    return request, raw


_UNSUPPORTED = {
    "background": "Background mode is not supported by this proxy: send the request without "
                  "'background' (streaming gives the answer as it is made).",
    "conversation": "Conversation objects are not supported by this proxy: continue a "
                    "conversation with 'previous_response_id', or send the whole input.",
    "prompt": "Stored prompt templates are not supported by this proxy: send 'instructions' "
              "and 'input' instead.",
}


def new_id(prefix: str) -> str:
    """A fresh object id in OpenAI's style (``resp_...``, ``msg_...``, ``fc_...``)."""
    return f"{prefix}_{uuid.uuid4().hex}"


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    """What one Responses request became.

    `chat` is the Chat Completions body the engine runs (and sends upstream);
    `typed` its validated struct; `signals_body` what the policy reads (the
    chat body and the request's ``metadata``, whose ``task`` is a routing
    hint); `input_items` this request's input as stored items with ids
    (``GET /v1/responses/{id}/input_items``); `history` the conversation so
    far in chat messages, instructions left out: what a next turn continues.
    """

    request: ResponsesRequest
    chat: dict[str, Any]
    typed: ChatRequest
    signals_body: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]


def translate(request: ResponsesRequest, *, previous: list[dict[str, Any]] | None = None,
              ids: Callable[[str], str] = new_id) -> Turn:
    """The chat request of `request`, continuing `previous` (a stored turn's messages).

    Raises `InvalidRequest` naming the parameter for anything not translatable.
    """
    items = [InputItem(role="user", content=request.input)] if isinstance(
        request.input, str) else list(request.input or ())
    current = _messages(items)
    history = [*(previous or ()), *current]
    messages = ([{"role": "system", "content": request.instructions}]
                if request.instructions else []) + history
    chat: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    if request.tools:
        chat["tools"] = [_tool(tool, index) for index, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        chat["tool_choice"] = _tool_choice(request.tool_choice)
    for name in ("parallel_tool_calls", "temperature", "top_p", "user"):
        value = getattr(request, name)
        if value is not None:
            chat[name] = value
    if request.max_output_tokens is not None:
        chat["max_completion_tokens"] = request.max_output_tokens
    fmt = request.text.format if request.text else None
    if fmt is not None and fmt.type != "text":
        chat["response_format"] = _response_format(fmt)
    if request.reasoning is not None and request.reasoning.effort is not None:
        chat["reasoning_effort"] = request.reasoning.effort
    try:
        typed = msgspec.convert(chat, ChatRequest)
    except msgspec.ValidationError as exc:  # a value only the chat shape constrains
        raise InvalidRequest(f"Invalid value: {exc}.", code="invalid_value") from None
    signals = {**chat, "metadata": request.metadata} if request.metadata else chat
    return Turn(request=request, chat=chat, typed=typed, signals_body=signals,
                input_items=[_stored_item(item, ids) for item in items], history=history)


def answer_messages(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A response's output as the chat messages a next turn continues from.

    Text and refusals of its message items, and its function calls, in one
    assistant message (reasoning stays behind, as for any chat model).
    """
    text: list[str] = []
    refusal: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or ():
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    text.append(part.get("text") or "")
                elif part.get("type") == "refusal":
                    refusal.append(part.get("refusal") or "")
        elif item.get("type") == "function_call":
            calls.append({"id": item["call_id"], "type": "function",
                          "function": {"name": item["name"], "arguments": item["arguments"]}})
    if not (text or refusal or calls):
        return []
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if refusal:
        message["refusal"] = "".join(refusal)
    if calls:
        message["tool_calls"] = calls
    return [message]


# -- input -------------------------------------------------------------------------------

_ROLES = ("user", "system", "developer", "assistant")


def _messages(items: list[InputItem]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"input[{index}]"
        kind = item.type or "message"
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            _require(item, ("call_id", "name"), where)
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments or ""}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            _require(item, ("call_id", "output"), where)
            messages.append({"role": "tool", "tool_call_id": item.call_id,
                             "content": _text_of(item.output, f"{where}.output")})
        elif kind == "reasoning":
            continue  # the model's own thoughts, given back: no chat model takes them
        else:
            raise InvalidRequest(
                f"Invalid '{where}.type': the item type '{kind}' is not supported by this "
                "proxy. It takes messages, 'function_call', 'function_call_output' and "
                "'reasoning' items.", param=f"{where}.type", code="unsupported_value")
    return messages


def _require(item: InputItem, names: tuple[str, ...], where: str) -> None:
    for name in names:
        if getattr(item, name) is None:
            raise InvalidRequest(f"Missing required parameter: '{where}.{name}'.",
                                 param=f"{where}.{name}", code="missing_required_parameter")


def _message(item: InputItem, where: str) -> dict[str, Any]:
    if item.role not in _ROLES:
        raise InvalidRequest(
            f"Invalid '{where}.role': expected one of {', '.join(_ROLES)}, but got "
            f"{item.role!r}.", param=f"{where}.role", code="invalid_value")
    _require(item, ("content",), where)
    content = item.content
    if isinstance(content, str):
        return {"role": item.role, "content": content}
    assert content is not None
    if item.role == "assistant":
        text = "".join(p.text or "" for p in content if p.type in ("output_text", "input_text"))
        refusal = "".join(p.refusal or "" for p in content if p.type == "refusal")
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if refusal:
            message["refusal"] = refusal
        return message
    parts = [_part(part, f"{where}.content[{i}]") for i, part in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        return {"role": item.role, "content": "".join(p["text"] for p in parts)}
    return {"role": item.role, "content": parts}


def _part(part: ContentPart, where: str) -> dict[str, Any]:
    if part.type in ("input_text", "output_text"):
        if part.text is None:
            raise InvalidRequest(f"Missing required parameter: '{where}.text'.",
                                 param=f"{where}.text", code="missing_required_parameter")
        return {"type": "text", "text": part.text}
    if part.type == "input_image":
        if part.image_url is None:
            raise InvalidRequest(
                f"Invalid '{where}': this proxy takes images by 'image_url' (a URL or a data "
                "URL); uploaded files ('file_id') are not supported.", param=f"{where}.image_url",
                code="unsupported_value")
        image: dict[str, Any] = {"url": part.image_url}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    raise InvalidRequest(
        f"Invalid '{where}.type': the content type '{part.type}' is not supported by this "
        "proxy. It takes 'input_text' and 'input_image' parts.", param=f"{where}.type",
        code="unsupported_value")


def _text_of(value: str | list[ContentPart] | None, where: str) -> str:
    if isinstance(value, str):
        return value
    return "".join(_part(p, f"{where}[{i}]")["text"] for i, p in enumerate(value or ())
                   if p.type in ("input_text", "output_text"))


def _stored_item(item: InputItem, ids: Callable[[str], str]) -> dict[str, Any]:
    """An input item as ``input_items`` lists it: with an id, messages' text as parts."""
    kind = item.type or "message"
    if kind == "function_call":
        return {"id": item.id or ids("fc"), "type": "function_call", "status": "completed",
                "call_id": item.call_id, "name": item.name, "arguments": item.arguments or ""}
    if kind == "function_call_output":
        output = item.output if isinstance(item.output, str) else [
            msgspec.to_builtins(p) for p in item.output or ()]
        return {"id": item.id or ids("fco"), "type": "function_call_output",
                "status": "completed", "call_id": item.call_id, "output": output}
    if kind == "reasoning":
        return {"id": item.id or ids("rs"), "type": "reasoning", "summary": []}
    content = item.content
    if item.role == "assistant":
        text = content if isinstance(content, str) else "".join(
            p.text or "" for p in content or () if p.type in ("output_text", "input_text"))
        return {"id": item.id or ids("msg"), "type": "message", "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": [],
                             "logprobs": []}]}
    parts = [{"type": "input_text", "text": content}] if isinstance(content, str) else [
        {"detail": "auto", **msgspec.to_builtins(p)} if p.type == "input_image" else
        msgspec.to_builtins(p) for p in content or ()]
    return {"id": item.id or ids("msg"), "type": "message", "role": item.role,
            "status": "completed", "content": parts}


# -- tools and formats -------------------------------------------------------------------

def _tool(tool: ToolParam, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    if tool.type != "function":
        raise InvalidRequest(
            f"Invalid '{where}.type': the built-in tool '{tool.type}' is not supported by this "
            "proxy. It serves function tools ('type': 'function') only.",
            param=f"{where}.type", code="unsupported_value")
    if not tool.name:
        raise InvalidRequest(f"Missing required parameter: '{where}.name'.",
                             param=f"{where}.name", code="missing_required_parameter")
    function: dict[str, Any] = {"name": tool.name}
    for name in ("description", "parameters", "strict"):
        value = getattr(tool, name)
        if value is not None:
            function[name] = value
    return {"type": "function", "function": function}


def _tool_choice(choice: str | ToolChoiceObject) -> Any:
    if isinstance(choice, str):
        return choice
    if choice.type != "function":
        raise InvalidRequest(
            f"Invalid 'tool_choice.type': '{choice.type}' is not supported by this proxy. It "
            "takes 'none', 'auto', 'required' or a function ({'type': 'function', 'name': ...}).",
            param="tool_choice.type", code="unsupported_value")
    if not choice.name:
        raise InvalidRequest("Missing required parameter: 'tool_choice.name'.",
                             param="tool_choice.name", code="missing_required_parameter")
    return {"type": "function", "function": {"name": choice.name}}


def _response_format(fmt: TextFormat) -> dict[str, Any]:
    if fmt.type == "json_object":
        return {"type": "json_object"}
    for name in ("name", "schema"):
        if getattr(fmt, name) is None:
            raise InvalidRequest(f"Missing required parameter: 'text.format.{name}'.",
                                 param=f"text.format.{name}", code="missing_required_parameter")
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema}
    for name in ("strict", "description"):
        value = getattr(fmt, name)
        if value is not None:
            schema[name] = value
    return {"type": "json_schema", "json_schema": schema}
