"""The simulated upstream speaking the Gemini API (``/v1beta/models/{model}:{method}``).

``generateContent`` answers a GenerateContentResponse;
``streamGenerateContent?alt=sse`` streams whole GenerateContentResponse objects
(events separated by CRLF CRLF, as Google's servers do), text a token per
event and each ``functionCall`` part whole, the last event with
``finishReason`` and the full ``usageMetadata`` (with the ``reasoning_content``
habit, a thinking model: ``thought: true`` parts first, counted in
``thoughtsTokenCount``); ``embedContent`` and
``batchEmbedContents`` answer vectors. The key comes in ``x-goog-api-key`` (or
``?key=``). Errors are ``{"error": {"code", "message", "status"}}``; a missing
key is 403 ``PERMISSION_DENIED`` and a wrong one 400 ``INVALID_ARGUMENT`` with
reason ``API_KEY_INVALID``, as the real API answers.

Requests are converted into the OpenAI-shaped dict the planner reads
(`to_plan_request`); ``candidateCount`` is not simulated (one candidate).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import msgspec
import trio

from . import core
from .plan import Answer, embedding_size, embedding_vector

__all__ = ["GeminiWire", "WireError", "handles", "serve", "to_plan_request"]

_encode = msgspec.json.Encoder().encode

_METHOD = re.compile(r"/v1[a-z0-9]*/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$")
_LIST = re.compile(r"/v1[a-z0-9]*/models$")
# HTTP status -> (google.rpc status, default message).
_ERRORS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without "
          "established identity). Please use API Key or other form of API consumer identity "
          "to call this API."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and "
          "billing details."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report in "
          "https://developers.generativeai.google/guide/troubleshooting"),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}
_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
# What a thinking model (the reasoning_content habit) thinks before each answer: thought
# summaries, as Gemini sends them with thinkingConfig.includeThoughts.
THINKING = ("Let", " me", " think", " about", " this", ".")
# What a candidate stopped by the `safety_stop` habit carries instead of content.
_SAFETY_RATINGS = [
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
]
_KEY_INVALID = {
    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
    "reason": "API_KEY_INVALID",
    "domain": "googleapis.com",
    "metadata": {"service": "generativelanguage.googleapis.com"},
}


class WireError(ValueError):
    """A request the real API would refuse with 400 ``INVALID_ARGUMENT``."""


def handles(path: str, headers: dict[str, str]) -> bool:
    """Whether a request is for the Gemini API (a model method, or the model list)."""
    if _METHOD.search(path):
        return True
    return bool(_LIST.search(path)) and ("x-goog-api-key" in headers or "/v1beta" in path)


def to_plan_request(body: dict[str, Any], *, model: str) -> dict[str, Any]:
    """The minimal OpenAI-shaped request `plan_answer` reads, from a GenerateContent body.

    ``systemInstruction`` becomes a system message; ``user`` / ``model`` turns
    user / assistant messages (``functionCall`` parts ``tool_calls``,
    ``functionResponse`` parts ``tool`` messages); ``functionDeclarations``,
    ``functionCallingConfig`` and ``generationConfig`` (``maxOutputTokens``,
    ``stopSequences``, JSON output) map to their OpenAI fields. Raises
    `WireError` for what Gemini would refuse.
    """
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise WireError("* GenerateContentRequest.contents: contents is not specified")
    messages: list[dict[str, Any]] = []
    system = _texts((body.get("systemInstruction") or {}).get("parts"))
    if system:
        messages.append({"role": "system", "content": system})
    called: list[str] = []  # function names called by the previous turn
    for i, content in enumerate(contents):
        role = content.get("role", "user") if isinstance(content, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        if role not in ("user", "model") or not isinstance(parts, list) or not parts:
            raise WireError(f"* GenerateContentRequest.contents[{i}]: a content needs a role "
                            "(user or model) and parts")
        called = _convert_turn(role, parts, i, called, messages)
    out: dict[str, Any] = {"model": model, "messages": messages, "n": 1}
    tools: list[dict[str, Any]] = [
        {"type": "function", "function": {
            "name": d.get("name"),
            "parameters": d.get("parametersJsonSchema") or d.get("parameters") or {}}}
        for tool in body.get("tools") or () if isinstance(tool, dict)
        for d in tool.get("functionDeclarations") or () if isinstance(d, dict)
    ]
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    allowed = calling.get("allowedFunctionNames")
    if allowed:
        tools = [t for t in tools if t["function"]["name"] in allowed]
    if tools:
        out["tools"] = tools
    mode = calling.get("mode")
    if mode in ("AUTO", "NONE", "ANY"):
        out["tool_choice"] = {"AUTO": "auto", "NONE": "none", "ANY": "required"}[mode]
    generation = body.get("generationConfig") or {}
    if generation.get("maxOutputTokens") is not None:
        out["max_tokens"] = generation["maxOutputTokens"]
    if generation.get("stopSequences"):
        out["stop"] = list(generation["stopSequences"])
    schema = generation.get("responseJsonSchema") or generation.get("responseSchema")
    if schema:
        out["response_format"] = {
            "type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    elif generation.get("responseMimeType") == "application/json":
        out["response_format"] = {"type": "json_object"}
    return out


def _convert_turn(
    role: str, parts: list[Any], i: int, called: list[str], out: list[dict[str, Any]]
) -> list[str]:
    """Append one turn's messages to `out`; returns the functions it called."""
    turn = core.PlannerTurn(out, "assistant" if role == "model" else "user")
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise WireError(f"* GenerateContentRequest.contents[{i}].parts[{j}]: not an object")
        if isinstance(part.get("text"), str) and not part.get("thought"):
            turn.texts.append(part["text"])
        elif isinstance(part.get("functionCall"), dict) and role == "model":
            call = part["functionCall"]
            turn.call(f"call_{i}_{j}", call.get("name"), call.get("args") or {})
        elif isinstance(part.get("functionResponse"), dict) and role == "user":
            response = part["functionResponse"]
            if response.get("name") not in called:
                raise WireError(
                    "Please ensure that function response turn comes immediately after a "
                    "function call turn.")
            result = response.get("response")
            text = (result["output"] if isinstance(result, dict) and set(result) == {"output"}
                    else _encode(result).decode())
            turn.result(f"call_{response.get('name')}", str(text))
    turn.close()
    return [call["function"]["name"] for call in turn.calls]


def _texts(parts: Any) -> str:
    if not isinstance(parts, list):
        return ""
    return "\n".join(str(p["text"]) for p in parts if isinstance(p, dict) and "text" in p)


class GeminiWire(core.Wire):
    """The Gemini API's GenerateContentResponse format (one candidate)."""

    def __init__(self, *, model: str, response_id: str) -> None:
        self.model = model
        self.response_id = response_id

    @classmethod
    def error(cls, status: int, message: str | None = None) -> tuple[Any, core.Headers]:
        grpc, default = _ERRORS.get(status, ("INTERNAL", _ERRORS[500][1]))
        error: dict[str, Any] = {"code": status, "message": message or default, "status": grpc}
        if status == 429:
            error["details"] = [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
        return {"error": error}, []

    def error_event(self) -> bytes:
        body, _ = self.error(503)
        return _event(body)

    def malformed_event(self) -> bytes:
        return b'data: {"candidates": [{"content": {"parts": [{"text": "trunc\r\n\r\n'

    def _finish(self, answer: Answer, habits: core.Habits) -> str:
        reason = answer.choices[0].finish_reason
        if reason == "content_filter":
            return "RECITATION" if "recitation_stop" in habits else "SAFETY"
        return _FINISH[reason]

    def _stopped(self, answer: Answer, finish: str, habits: core.Habits) -> dict[str, Any]:
        """The last event of a candidate the filters stopped: no content, the reason why."""
        response = self._response(answer, [], finish, habits)
        candidate = response["candidates"][0]
        del candidate["content"]
        if finish == "SAFETY":
            candidate["safetyRatings"] = _SAFETY_RATINGS
        else:
            candidate["citationMetadata"] = {"citationSources": [
                {"startIndex": 0, "endIndex": 64, "uri": "https://example.com/source"}]}
        return response

    def _response(
        self, answer: Answer, parts: list[dict[str, Any]], finish: str | None,
        habits: core.Habits,
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        usage: dict[str, Any] = {"promptTokenCount": answer.prompt_tokens}
        if finish is not None:
            candidate["finishReason"] = finish
            usage["candidatesTokenCount"] = answer.completion_tokens
            if _thinks(habits):
                # Counted apart from the candidates' tokens, and in the total.
                usage["thoughtsTokenCount"] = len(THINKING)
        usage["totalTokenCount"] = (answer.prompt_tokens + usage.get("candidatesTokenCount", 0)
                                    + usage.get("thoughtsTokenCount", 0))
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": answer.prompt_tokens}]
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": self.model,
                "responseId": self.response_id}

    def _parts(self, answer: Answer, habits: core.Habits) -> list[dict[str, Any]]:
        """One part per streamed event: thoughts, text tokens, then whole function calls."""
        plan = answer.choices[0]
        parts: list[dict[str, Any]] = [
            {"text": thought, "thought": True} for thought in THINKING if _thinks(habits)]
        parts += [{"text": token} for token in plan.tokens]
        parts += [{"functionCall": {"name": name, "args": msgspec.json.decode(arguments)}}
                  for _, name, arguments in plan.tool_calls]
        return parts

    def message(self, answer: Answer, habits: core.Habits = frozenset()) -> Any:
        plan = answer.choices[0]
        parts = self._parts(answer, frozenset())
        if plan.tokens:
            parts = [{"text": "".join(plan.tokens)}, *parts[len(plan.tokens):]]
        if _thinks(habits):
            parts.insert(0, {"text": "".join(THINKING), "thought": True})
        finish = self._finish(answer, habits)
        response = self._response(answer, parts or [{"text": ""}], finish, habits)
        if finish in ("SAFETY", "RECITATION"):
            stopped = self._stopped(answer, finish, habits)["candidates"][0]
            response["candidates"][0].update({k: v for k, v in stopped.items()})
        return response

    def stream(
        self, answer: Answer, habits: core.Habits = frozenset()
    ) -> tuple[list[bytes], list[bytes], list[bytes]]:
        parts = self._parts(answer, habits) or [{"text": ""}]
        finish = self._finish(answer, habits)
        if finish in ("SAFETY", "RECITATION"):
            # The text so far, then an event with the reason and no content.
            steps = [_event(self._response(answer, [part], None, habits)) for part in parts]
            return [], steps, [_event(self._stopped(answer, finish, habits))]
        steps = [
            _event(self._response(answer, [part], finish if last else None, habits))
            for last, part in ((k == len(parts) - 1, p) for k, p in enumerate(parts))
        ]
        return [], steps, []


def _thinks(habits: core.Habits) -> bool:
    return "reasoning_content" in habits


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + _encode(payload) + b"\r\n\r\n"


async def serve(sim: core.Simulator, request: core.SimRequest) -> None:
    """Answer one Gemini API request."""
    send = request.send
    query = urllib.parse.parse_qs(request.query)
    key = request.headers.get("x-goog-api-key") or next(iter(query.get("key", [])), None)
    if key is None:
        await core.send_json(send, 403, *GeminiWire.error(403))
        return
    if not sim.key_ok(key):
        body, headers = GeminiWire.error(400, "API key not valid. Please pass a valid API key.")
        body["error"]["details"] = [_KEY_INVALID]
        await core.send_json(send, 400, body, headers)
        return
    match = _METHOD.search(request.path)
    if match is None:
        models = [{"name": f"models/{m}", "displayName": m,
                   "supportedGenerationMethods": ["generateContent", "countTokens"]}
                  for m in sim.profiles]
        await core.send_json(send, 200, {"models": models})
        return
    model, method = match["model"], match["method"]
    body = core.decode_object(request.raw)
    if body is None:
        await core.send_json(send, 400, *GeminiWire.error(400, "Invalid JSON payload received."))
        return
    sim.stats.last_body = body
    try:
        if method in ("embedContent", "batchEmbedContents"):
            await _embed(sim, request, body, model, method)
            return
        if method not in ("generateContent", "streamGenerateContent"):
            await core.send_json(send, 404, *GeminiWire.error(404, f"Method {method} not found."))
            return
        stream = method == "streamGenerateContent"
        if stream and query.get("alt") != ["sse"]:
            raise WireError("this simulator streams only with alt=sse")
        plan_request = to_plan_request(body, model=model)
    except WireError as exc:
        await core.send_json(send, 400, *GeminiWire.error(400, str(exc)))
        return
    wire = GeminiWire(model=model, response_id=core.ident(request.raw))
    await sim.respond(request, wire, plan_request, model, stream=stream)


async def _embed(
    sim: core.Simulator, request: core.SimRequest, body: dict[str, Any], model: str, method: str
) -> None:
    requests = body.get("requests") if method == "batchEmbedContents" else [body]
    if not isinstance(requests, list) or not requests:
        raise WireError("* BatchEmbedContentsRequest.requests: requests is not specified")
    profile = sim.profile(model)
    vectors = []
    for k, one in enumerate(requests):
        named = one.get("model") if isinstance(one, dict) else None
        if method == "batchEmbedContents" and named != f"models/{model}":
            raise WireError(f"* BatchEmbedContentsRequest.requests[{k}].model: the model must "
                            f"be models/{model}")
        text = _texts(((one or {}).get("content") or {}).get("parts"))
        if not text:
            raise WireError("* EmbedContentRequest.content: content is not specified")
        dimensions = embedding_size(one.get("outputDimensionality"), profile)
        if dimensions is None:
            raise WireError(f"* EmbedContentRequest.outputDimensionality: at most "
                            f"{profile.embedding_dimensions} for models/{model}")
        vectors.append({"values": embedding_vector(text, dimensions)})
    await trio.sleep(sim.ttft(profile))
    answer = {"embedding": vectors[0]} if method == "embedContent" else {"embeddings": vectors}
    await core.send_json(request.send, 200, answer)
