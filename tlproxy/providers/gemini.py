"""Google's Gemini API behind OpenAI's Chat Completions and Embeddings.

Clients speak OpenAI; this adapter speaks the Gemini API's
``models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``,
``:embedContent`` and ``:batchEmbedContents`` (key in ``x-goog-api-key``, never
in the URL, where it would end up in logs and httpx error texts). As with the
Anthropic adapter, a pure core (plain dicts in and out, no I/O, no clock) does
the translation and `GeminiProvider` only moves bytes. What shapes the core:

* Turns are ``contents`` with roles ``user`` and ``model``; the system prompt
  is ``systemInstruction``; a tool result is a ``functionResponse`` part that
  names its function, so the names of earlier tool calls are remembered by id.
* Function calls come back whole, without ids: the translator mints
  deterministic ids (``call_`` + hex) from the response id and position.
* Gemini 3 models refuse a replayed ``functionCall`` part without its
  ``thoughtSignature``. OpenAI clients cannot carry it back, so replayed calls
  get the sentinel Google documents for that case
  (https://ai.google.dev/gemini-api/docs/thought-signatures).
* A stream is a series of whole ``GenerateContentResponse`` objects with no
  terminator event. Older models put ``finishReason`` on *every* chunk, so the
  finish chunk is emitted by `GeminiStreamTranslator.close` at end of input;
  a stream that ends before any finish reason was cut.
* ``n`` maps to ``candidateCount``: choices are tracked per candidate index.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import re
import struct
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import orjson

from ..errors import InvalidRequest, UpstreamError
from ._http import ping, translate_sse, transport_error
from ._shapes import function_tools, plain_text
from .base import JSON, Chunk, Provider

__all__ = [
    "GeminiProvider",
    "GeminiStreamTranslator",
    "from_gemini_embed_response",
    "from_gemini_response",
    "map_gemini_error",
    "to_gemini_embed_request",
    "to_gemini_request",
]

_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII")
_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(_FILTERED, "content_filter"),
    **dict.fromkeys(
        ("IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"), "content_filter"
    ),
}
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*;base64,(?P<data>.*)", re.S)
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
_ROLE_DELTA = {"role": "assistant", "content": "", "refusal": None}


# ---------------------------------------------------------------- request


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
    for field in ("logprobs", "top_logprobs"):
        if body.get(field) not in (None, False):
            raise InvalidRequest("logprobs are not supported by this model's provider", param=field)
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
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages must be a non-empty array", param="messages")
    system: list[str] = []
    contents: list[JSON] = []
    names: dict[str, str] = {}  # tool call id -> function name, for functionResponse
    legacy_name: str | None = None
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
    match = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None or not match["mime"]:
        raise InvalidRequest("media must be an http(s) URL or a base64 data URL", param=at)
    return {"inlineData": {"mimeType": match["mime"], "data": match["data"]}}


def _model_parts(msg: JSON, where: str, names: dict[str, str]) -> tuple[list[JSON], str | None]:
    text = plain_text(msg.get("content"), where)
    parts: list[JSON] = [{"text": text}] if text else []
    calls = msg.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise InvalidRequest("tool_calls must be an array", param=f"{where}.tool_calls")
        for j, call in enumerate(calls):
            at = f"{where}.tool_calls[{j}]"
            if not isinstance(call, dict) or call.get("type", "function") != "function":
                raise InvalidRequest("only function tool calls are supported", param=f"{at}.type")
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
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidRequest(f"{field} must be a positive integer", param=field)
            out["maxOutputTokens"] = value
            break
    for field, key in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed")):
        if isinstance(body.get(field), int | float) and not isinstance(body[field], bool):
            out[key] = body[field]
    n = body.get("n")
    if n is not None and n != 1:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InvalidRequest("n must be a positive integer", param="n")
        out["candidateCount"] = n
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stopSequences"] = [s for s in stop if isinstance(s, str)]
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "response_format.json_schema.schema must be an object",
                param="response_format.json_schema.schema",
            )
        out["responseMimeType"] = "application/json"
        out["responseJsonSchema"] = schema
    elif kind == "json_object":
        out["responseMimeType"] = "application/json"
    elif kind not in (None, "text"):
        raise InvalidRequest("unsupported response_format", param="response_format.type")
    return out


# ---------------------------------------------------------------- response


def from_gemini_response(resp: JSON, *, model: str, created: int) -> JSON:
    """Translate a GenerateContentResponse into an OpenAI ``chat.completion``.

    One choice per candidate. Thought parts are not forwarded. A prompt
    blocked before any candidate gives one empty choice with finish reason
    ``content_filter``. Raises `UpstreamError` (502) for a non-object answer.
    """
    if not isinstance(resp, dict):
        raise UpstreamError("the upstream provider sent an unexpected answer", status=502)
    completion_id = _completion_id(resp)
    choices = []
    for position, candidate in _candidates(resp):
        index = _index(candidate, position)
        texts: list[str] = []
        calls: list[JSON] = []
        for part in _parts(candidate):
            if isinstance(part.get("text"), str) and not part.get("thought"):
                texts.append(part["text"])
            elif isinstance(part.get("functionCall"), dict):
                calls.append(_tool_call(part["functionCall"], completion_id, index, len(calls)))
        text = "".join(texts)
        message: JSON = {
            "role": "assistant",
            "content": text if text or not calls else None,
            "refusal": None,
            "annotations": [],
        }
        if calls:
            message["tool_calls"] = calls
        finish = _finish_reason(candidate.get("finishReason"), bool(calls))
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
        )
    if not choices:
        empty = {"role": "assistant", "content": "", "refusal": None, "annotations": []}
        finish = "content_filter" if _blocked(resp) else "stop"
        choices.append({"index": 0, "message": empty, "logprobs": None, "finish_reason": finish})
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": sorted(choices, key=lambda c: c["index"]),
        "usage": _usage(resp.get("usageMetadata")),
        "service_tier": "default",
        "system_fingerprint": None,
    }


def _candidates(resp: JSON) -> list[tuple[int, JSON]]:
    raw = resp.get("candidates")
    items = raw if isinstance(raw, list) else []
    return [(i, c) for i, c in enumerate(items) if isinstance(c, dict)]


def _index(candidate: JSON, position: int) -> int:
    index = candidate.get("index")
    return index if isinstance(index, int) else position


def _parts(candidate: JSON) -> list[JSON]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _blocked(resp: JSON) -> bool:
    feedback = resp.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _finish_reason(reason: Any, called: bool) -> str:
    if reason == "STOP" and called:
        return "tool_calls"
    # LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL, ...: OpenAI has no better word.
    return _FINISH_REASONS.get(str(reason), "stop")


def _completion_id(resp: JSON) -> str:
    response_id = resp.get("responseId")
    if isinstance(response_id, str) and response_id:
        return "chatcmpl-" + response_id
    digest = hashlib.sha256(orjson.dumps(resp, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return "chatcmpl-" + digest[:24]


def _tool_call(call: JSON, completion_id: str, index: int, n: int) -> JSON:
    name = str(call.get("name", ""))
    arguments = orjson.dumps(call.get("args") or {}).decode()
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        # Deterministic, so one answer always names its calls the same way.
        seed = f"{completion_id}:{index}:{n}:{name}:{arguments}".encode()
        call_id = "call_" + hashlib.sha256(seed).hexdigest()[:24]
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _usage(usage: Any) -> JSON:
    u = usage if isinstance(usage, dict) else {}

    def count(key: str) -> int:
        value = u.get(key)
        return value if isinstance(value, int) else 0

    # promptTokenCount already includes cached tokens; tool-use prompt tokens
    # (results of server-side tools) are input too. Thoughts are billed as
    # output, which OpenAI counts in completion_tokens as reasoning_tokens.
    prompt = count("promptTokenCount") + count("toolUsePromptTokenCount")
    reasoning = count("thoughtsTokenCount")
    completion = count("candidatesTokenCount") + reasoning
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": count("cachedContentTokenCount"),
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class GeminiStreamTranslator:
    """Turns ``streamGenerateContent?alt=sse`` events into ``chat.completion.chunk`` dicts.

    Each event is a whole GenerateContentResponse (``event`` names are unused).
    `feed` emits a role chunk when a candidate first appears, a chunk per text
    part, and for each function call one chunk carrying its id, name and full
    arguments. `close`, at end of input, emits the finish chunk of each choice
    and (with ``include_usage``) the ``choices: []`` usage chunk. `finished`
    says whether every candidate has reported a finish reason (or the prompt
    was blocked); an ``error`` object in the stream raises `UpstreamError`.
    """

    def __init__(self, *, model: str, created: int, include_usage: bool = True) -> None:
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._id: str | None = None
        # candidate index -> [tool calls emitted, last finishReason]
        self._choices: dict[int, list[Any]] = {}
        self._blocked = False
        self._usage: Any = None
        self._closed = False

    @property
    def finished(self) -> bool:
        """Whether the stream reached its end: a finish reason for every candidate."""
        if self._blocked:
            return True
        return bool(self._choices) and all(c[1] for c in self._choices.values())

    def feed(self, event: str | None, data: JSON) -> list[Chunk]:
        """Translate one streamed response; returns zero or more chunks."""
        if isinstance(data.get("error"), dict):
            error = data["error"]
            status = error.get("code") if isinstance(error.get("code"), int) else 500
            raise map_gemini_error(status, orjson.dumps(data), {})
        if self._id is None:
            self._id = _completion_id(data)
        if isinstance(data.get("usageMetadata"), dict):
            self._usage = data["usageMetadata"]  # counts are running totals
        self._blocked = self._blocked or _blocked(data)
        out: list[Chunk] = []
        for position, candidate in _candidates(data):
            index = _index(candidate, position)
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = [0, None]
                out.append(self._chunk(index, dict(_ROLE_DELTA)))
            for part in _parts(candidate):
                if isinstance(part.get("text"), str) and part["text"] and not part.get("thought"):
                    out.append(self._chunk(index, {"content": part["text"]}))
                elif isinstance(part.get("functionCall"), dict):
                    call = _tool_call(part["functionCall"], self._id, index, state[0])
                    out.append(self._chunk(index, {"tool_calls": [{"index": state[0], **call}]}))
                    state[0] += 1
            if candidate.get("finishReason"):
                state[1] = candidate["finishReason"]
        return out

    def close(self) -> list[Chunk]:
        """End of input: the finish chunk of each choice, then usage."""
        if self._closed:
            return []
        self._closed = True
        out: list[Chunk] = []
        if not self._choices:
            out.append(self._chunk(0, dict(_ROLE_DELTA)))
            reason = "content_filter" if self._blocked else "stop"
            out.append(self._chunk(0, {}, reason))
        for index in sorted(self._choices):
            calls, reason = self._choices[index]
            out.append(self._chunk(index, {}, _finish_reason(reason, calls > 0)))
        if self._include_usage:
            last = self._chunk(0, {})
            last["choices"], last["usage"] = [], _usage(self._usage)
            out.append(last)
        return out

    def _chunk(self, index: int, delta: JSON, finish_reason: str | None = None) -> Chunk:
        chunk: Chunk = {
            "id": self._id or "chatcmpl-gemini",
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "service_tier": "default",
            "system_fingerprint": None,
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self._include_usage:
            chunk["usage"] = None
        return chunk


# ---------------------------------------------------------------- embeddings


def to_gemini_embed_request(body: JSON, *, model: str) -> tuple[str, JSON]:
    """Translate an OpenAI embeddings request; returns (method, body).

    A string input uses ``embedContent``, a list of strings
    ``batchEmbedContents``. Token arrays, empty inputs and unknown
    ``encoding_format`` values raise `InvalidRequest`; ``dimensions`` becomes
    ``outputDimensionality``.
    """
    texts = _embed_texts(body)
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


def _embed_texts(body: JSON) -> list[str]:
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


def from_gemini_embed_response(
    resp: JSON, *, model: str, encoding_format: str | None = "float", texts: Sequence[str] = ()
) -> JSON:
    """Translate an ``embedContent`` or ``batchEmbedContents`` answer into OpenAI's list.

    With ``encoding_format="base64"`` each vector is the base64 of its
    little-endian float32 values, as OpenAI sends it. Gemini reports no token
    usage for embeddings, so ``usage`` is an estimate from ``texts`` (the
    inputs): about four characters per token, rounded up per input.
    """
    if isinstance(resp, dict) and isinstance(resp.get("embedding"), dict):
        raw = [resp["embedding"]]
    else:
        raw = resp.get("embeddings") if isinstance(resp, dict) else None
        raw = raw if isinstance(raw, list) else None
    vectors = [e.get("values") if isinstance(e, dict) else None for e in raw or ()]
    if not vectors or not all(isinstance(v, list) for v in vectors):
        raise UpstreamError("the upstream provider sent an unexpected answer", status=502)
    data = []
    for i, values in enumerate(vectors):
        embedding: Any = values
        if encoding_format == "base64":
            packed = struct.pack(f"<{len(values)}f", *values)
            embedding = base64.b64encode(packed).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = sum(math.ceil(len(text) / 4) for text in texts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# ---------------------------------------------------------------- errors


def map_gemini_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """A Gemini non-2xx answer (``{"error": {code, message, status}}``), as our client sees it.

    Credential problems are the proxy's, not the client's: 401/403, and the 400
    Gemini sends for an invalid key (reason ``API_KEY_INVALID``), become 502
    and retryable, as do 404 (unknown model id) and ``FAILED_PRECONDITION``
    (billing or region). Other 4xx are the request's fault: 400, not retried.
    429 keeps ``retry-after``, or derives it from ``RetryInfo.retryDelay``;
    504 stays 504; other 5xx become 503.
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]  # non-SSE streams wrap everything in an array
    error = parsed.get("error") if isinstance(parsed, dict) else None
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or f"upstream answered HTTP {status}")
    grpc = error.get("status")
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    reasons = {d.get("reason") for d in details}
    if status == 429 or grpc == "RESOURCE_EXHAUSTED":
        delay = next((d.get("retryDelay") for d in details if "retryDelay" in d), None)
        retry_after = headers.get("retry-after") or _seconds(delay)
        return UpstreamError(
            message,
            status=429,
            code="rate_limit_exceeded",
            type="rate_limit_error",
            retry_after=retry_after,
            upstream_status=status,
        )
    if (
        status in (401, 403)
        or grpc in ("UNAUTHENTICATED", "PERMISSION_DENIED")
        or ("API_KEY_INVALID" in reasons)
    ):
        return UpstreamError(
            "the upstream provider rejected the proxy's credentials",
            status=502,
            upstream_status=status,
        )
    if status == 404 or grpc == "FAILED_PRECONDITION":
        return UpstreamError(
            f"the upstream provider cannot serve this model: {message}",
            status=502,
            upstream_status=status,
        )
    if 400 <= status < 500:
        return UpstreamError(
            message,
            status=413 if status == 413 else 400,
            retryable=False,
            type="invalid_request_error",
            upstream_status=status,
        )
    if status == 504 or grpc == "DEADLINE_EXCEEDED":
        return UpstreamError(message, status=504, code="timeout", upstream_status=status)
    return UpstreamError(
        message,
        status=503,
        retry_after=headers.get("retry-after"),
        upstream_status=status,
        type="service_unavailable",
    )


def _seconds(delay: Any) -> str | None:
    # google.protobuf.Duration in JSON: "27.4s"; Retry-After wants whole seconds.
    if isinstance(delay, str) and delay.endswith("s"):
        try:
            return str(math.ceil(float(delay[:-1])))
        except ValueError:
            return None
    return None


# ---------------------------------------------------------------- I/O


class GeminiProvider(Provider):
    """A Gemini API endpoint.

    ``base_url`` may name the API version (``.../v1beta``) or not
    (``https://generativelanguage.googleapis.com``, then ``v1beta`` is used).
    ``client`` is the caller's and stays open unless ``owns_client``.
    """

    kind = "gemini"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        client: httpx.AsyncClient,
        owns_client: bool = False,
    ) -> None:
        self.name = name
        self._client = client
        self._owns_client = owns_client
        base = base_url.rstrip("/")
        if not re.search(r"/v\d+(alpha|beta)?\d*$", base):
            base += "/v1beta"
        self._base = base
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["x-goog-api-key"] = api_key

    def _url(self, model: str, method: str) -> str:
        return f"{self._base}/models/{model.removeprefix('models/')}:{method}"

    async def _post(self, url: str, payload: JSON) -> JSON:
        try:
            response = await self._client.post(
                url, content=orjson.dumps(payload), headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc) from None
        if not 200 <= response.status_code < 300:
            raise map_gemini_error(response.status_code, response.content, response.headers)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise UpstreamError("the upstream provider sent invalid JSON", status=502) from None

    async def chat(self, body: JSON, *, model: str) -> JSON:
        payload = to_gemini_request(body, model=model)
        answer = await self._post(self._url(model, "generateContent"), payload)
        return from_gemini_response(answer, model=model, created=int(time.time()))

    @contextlib.asynccontextmanager
    async def stream_chat(self, body: JSON, *, model: str) -> AsyncIterator[AsyncIterator[Chunk]]:
        payload = orjson.dumps(to_gemini_request(body, model=model))
        url = self._url(model, "streamGenerateContent") + "?alt=sse"
        translator = GeminiStreamTranslator(model=model, created=int(time.time()))
        async with contextlib.AsyncExitStack() as stack:
            try:
                response = await stack.enter_async_context(
                    self._client.stream("POST", url, content=payload, headers=self._headers)
                )
                failed = not 200 <= response.status_code < 300
                content = await response.aread() if failed else b""
            except httpx.HTTPError as exc:
                raise transport_error(exc) from None
            if failed:
                raise map_gemini_error(response.status_code, content, response.headers)
            chunks = translate_sse(response, translator, strict_end=True)
            stack.push_async_callback(chunks.aclose)
            yield chunks

    async def embed(self, body: JSON, *, model: str) -> JSON:
        method, payload = to_gemini_embed_request(body, model=model)
        answer = await self._post(self._url(model, method), payload)
        return from_gemini_embed_response(
            answer,
            model=model,
            encoding_format=body.get("encoding_format"),
            texts=_embed_texts(body),
        )

    async def ping(self) -> bool:
        return await ping(self._client, self._base + "/models", self._headers)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
