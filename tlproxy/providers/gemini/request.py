"""OpenAI chat and embeddings requests as Gemini API requests (pure: dicts in, dicts out).

What shapes the translation:

* Turns are ``contents`` with roles ``user`` and ``model``; the system prompt
  is ``systemInstruction``; a tool result is a ``functionResponse`` part that
  names its function, so the names of earlier tool calls are remembered by id.
* Gemini 3 models refuse a replayed ``functionCall`` part without its
  ``thoughtSignature``. OpenAI clients cannot carry it back, so replayed calls
  get the sentinel Google documents for that case
  (https://ai.google.dev/gemini-api/docs/thought-signatures).
* ``n`` maps to ``candidateCount`` (the answer has one choice per candidate).
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

__all__ = ["embed_texts", "to_gemini_embed_request", "to_gemini_request"]

_GEMINI_MAJOR = re.compile(r"gemini-(\d+)")
_SKIP_SIGNATURE = "skip_thought_signature_validator"
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}
# A fixed table, not `mimetypes`, which reads the system's files on first use.
_MIME_TYPES = {
    **_AUDIO_TYPES,
    **{ext: f"image/{ext}" for ext in ("png", "gif", "webp", "heic", "heif")},
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "pdf": "application/pdf",
    "mp4": "video/mp4",
    "txt": "text/plain",
}


def to_gemini_request(body: JSON, *, model: str) -> JSON:
    """Translate an OpenAI chat request (decoded JSON) into a GenerateContent body.

    ``model`` is the upstream model id; it goes in the URL, not the body, and
    decides whether replayed function calls need a thought signature. Raises
    `InvalidRequest` (with ``param``) for what cannot be translated:
    ``logprobs``, non-function tools, tool results for unknown calls, tool-call
    arguments that are not a JSON object. ``seed``, ``n``, ``stop``,
    ``temperature``, ``top_p`` and ``response_format`` map to
    ``generationConfig``; ``user``, the penalties (refused by some Gemini
    models) and ``parallel_tool_calls`` (no equivalent) are dropped.
    """
    reject_logprobs(body)
    system, contents = _contents(body.get("messages"))
    if _needs_signatures(model):
        for content in contents:
            calls = [p for p in content["parts"] if "functionCall" in p]
            if content["role"] == "model" and calls:
                # Only the first call of a step carries a signature (parallel calls).
                calls[0]["thoughtSignature"] = _SKIP_SIGNATURE
    out: JSON = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    declarations = _declarations(body)
    if declarations:
        out["tools"] = [{"functionDeclarations": declarations}]
        config = _function_calling_config(body)
        if config:
            out["toolConfig"] = {"functionCallingConfig": config}
    generation = _generation_config(body)
    if generation:
        out["generationConfig"] = generation
    return out


def _needs_signatures(model: str) -> bool:
    match = _GEMINI_MAJOR.search(model)
    return match is not None and int(match.group(1)) >= 3


def _contents(raw: Any) -> tuple[list[str], list[JSON]]:
    system: list[str] = []
    contents: list[JSON] = []
    names: dict[str, str] = {}  # tool call id -> function name, for functionResponse
    legacy_name: str | None = None
    for _, where, role, msg in conversation(raw, system):
        if role == "user":
            _append(contents, "user", _user_parts(msg.get("content"), where))
        elif role == "assistant":
            parts, legacy = _model_parts(msg, where, names)
            legacy_name = legacy or legacy_name
            _append(contents, "model", parts)
        elif role in ("tool", "function"):
            name = _result_name(msg, where, names, legacy_name)
            response = _function_response(plain_text(msg.get("content"), where))
            _append(contents, "user", [{"functionResponse": {"name": name, "response": response}}])
        else:
            raise InvalidRequest(f"unsupported role {role!r}", param=f"{where}.role")
    if not contents:
        if not system:
            raise InvalidRequest("messages have no content", param="messages")
        # A system-only request (a warm-up) is legal for OpenAI; Gemini needs
        # contents, so the instructions become the one user turn.
        return [], [{"role": "user", "parts": [{"text": "\n\n".join(system)}]}]
    return system, contents


def _append(contents: list[JSON], role: str, parts: list[JSON]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _user_parts(content: Any, where: str) -> list[JSON]:
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(
            "content must be a string or an array of parts", param=f"{where}.content"
        )
    parts: list[JSON] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise InvalidRequest("a text part needs text", param=f"{at}.text")
            if part["text"]:
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            parts.append(
                _media(
                    image.get("url") if isinstance(image, dict) else image, f"{at}.image_url.url"
                )
            )
        elif kind == "input_audio":
            audio = part.get("input_audio") if isinstance(part.get("input_audio"), dict) else {}
            mime = _AUDIO_TYPES.get(str(audio.get("format")))
            if mime is None or not isinstance(audio.get("data"), str):
                raise InvalidRequest("input_audio needs wav or mp3 data", param=f"{at}.input_audio")
            parts.append({"inlineData": {"mimeType": mime, "data": audio["data"]}})
        elif kind == "file":
            file = part.get("file") if isinstance(part.get("file"), dict) else {}
            parts.append(_media(file.get("file_data"), f"{at}.file.file_data"))
        else:
            raise InvalidRequest(
                f"content part type {kind!r} is not supported by this model's provider",
                param=f"{at}.type",
            )
    return parts


def _media(url: Any, at: str) -> JSON:
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        data: JSON = {"fileUri": url}
        extension = url.split("?", 1)[0].rsplit(".", 1)[-1].lower()
        if extension in _MIME_TYPES:
            data["mimeType"] = _MIME_TYPES[extension]
        return {"fileData": data}
    match = DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None or not match["mime"]:
        raise InvalidRequest("media must be an http(s) URL or a base64 data URL", param=at)
    return {"inlineData": {"mimeType": match["mime"], "data": match["data"]}}


def _model_parts(msg: JSON, where: str, names: dict[str, str]) -> tuple[list[JSON], str | None]:
    text = plain_text(msg.get("content"), where)
    parts: list[JSON] = [{"text": text}] if text else []
    for call, at in assistant_tool_calls(msg, where):
        part = _function_call(call.get("function"), f"{at}.function")
        if isinstance(call.get("id"), str):
            names[call["id"]] = part["functionCall"]["name"]
        parts.append(part)
    legacy = msg.get("function_call")
    if legacy is None:
        return parts, None
    part = _function_call(legacy, f"{where}.function_call")
    parts.append(part)
    return parts, part["functionCall"]["name"]


def _function_call(fn: Any, at: str) -> JSON:
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest("a function call needs a name", param=f"{at}.name")
    raw = fn.get("arguments")
    args: Any = {}
    if isinstance(raw, str) and raw.strip():
        try:
            args = orjson.loads(raw)
        except orjson.JSONDecodeError:
            args = None
    elif raw is not None and raw != "":
        args = None
    if not isinstance(args, dict):
        raise InvalidRequest("function arguments must be a JSON object", param=f"{at}.arguments")
    return {"functionCall": {"name": fn["name"], "args": args}}


def _result_name(msg: JSON, where: str, names: dict[str, str], legacy: str | None) -> str:
    if msg.get("role") == "function":
        name = msg.get("name") or legacy
        if not isinstance(name, str):
            raise InvalidRequest("a function message needs a name", param=f"{where}.name")
        return name
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or call_id not in names:
        # Gemini pairs a result with its call by function name, which only the
        # assistant message that made the call knows (OpenAI refuses this too).
        raise InvalidRequest(
            "a tool message must answer a tool call of an earlier assistant message",
            param=f"{where}.tool_call_id",
        )
    return names[call_id]


def _function_response(text: str) -> JSON:
    # `response` must be an object; Gemini reads an "output" key as the result.
    try:
        value = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {"output": text}


def _declarations(body: JSON) -> list[JSON]:
    out: list[JSON] = []
    for fn, schema in function_tools(body):
        declaration: JSON = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            declaration["description"] = fn["description"]
        if schema:
            # parametersJsonSchema takes JSON Schema as OpenAI clients write
            # it; `parameters` takes an OpenAPI subset and rejects e.g.
            # additionalProperties.
            declaration["parametersJsonSchema"] = schema
        out.append(declaration)
    return out


def _function_calling_config(body: JSON) -> JSON | None:
    field = "tool_choice" if "tool_choice" in body else "function_call"
    choice = body.get(field)
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}
    fn = choice.get("function") if isinstance(choice, dict) and field == "tool_choice" else choice
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"unsupported {field}", param=field)
    return {"mode": "ANY", "allowedFunctionNames": [fn["name"]]}


def _generation_config(body: JSON) -> JSON:
    out: JSON = {}
    limit = max_tokens(body)
    if limit is not None:
        out["maxOutputTokens"] = limit
    for field, key in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed")):
        if isinstance(body.get(field), int | float) and not isinstance(body[field], bool):
            out[key] = body[field]
    n = body.get("n")
    if n is not None and n != 1:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InvalidRequest("n must be a positive integer", param="n")
        out["candidateCount"] = n
    stop = stop_sequences(body)
    if stop is not None:
        out["stopSequences"] = stop
    fmt = body.get("response_format")
    if fmt is not None and not isinstance(fmt, dict):
        raise InvalidRequest("'response_format' must be an object", param="response_format")
    kind = fmt.get("type") if fmt is not None else None
    if kind == "json_schema":
        schema = response_schema(fmt)
        out["responseMimeType"] = "application/json"
        out["responseJsonSchema"] = schema
    elif kind == "json_object":
        out["responseMimeType"] = "application/json"
    elif kind not in (None, "text"):
        raise InvalidRequest("unsupported response_format", param="response_format.type")
    return out


# ---------------------------------------------------------------- embeddings


def to_gemini_embed_request(body: JSON, *, model: str) -> tuple[str, JSON]:
    """Translate an OpenAI embeddings request; returns (method, body).

    A string input uses ``embedContent``, a list of strings
    ``batchEmbedContents``. Token arrays, empty inputs and unknown
    ``encoding_format`` values raise `InvalidRequest`; ``dimensions`` becomes
    ``outputDimensionality``.
    """
    texts = embed_texts(body)
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise InvalidRequest("encoding_format must be float or base64", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise InvalidRequest("dimensions must be a positive integer", param="dimensions")
    name = "models/" + model.removeprefix("models/")

    def request(text: str) -> JSON:
        one: JSON = {"model": name, "content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            one["outputDimensionality"] = dimensions
        return one

    if isinstance(body.get("input"), str):
        return "embedContent", request(texts[0])
    return "batchEmbedContents", {"requests": [request(t) for t in texts]}


def embed_texts(body: JSON) -> list[str]:
    """The inputs of an embeddings request, checked: strings only, none empty."""
    raw = body.get("input")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise InvalidRequest(
            "input must be a string or a non-empty array of strings", param="input"
        )
    if any(isinstance(i, int | list) for i in items):
        raise InvalidRequest(
            "token arrays are not supported by this model's provider; send text", param="input"
        )
    if not all(isinstance(i, str) and i for i in items):
        raise InvalidRequest("input must contain non-empty strings", param="input")
    return items
