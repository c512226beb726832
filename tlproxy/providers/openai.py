"""OpenAI-compatible upstreams: OpenAI, Azure-style base URLs, vLLM, Groq, Gemini's
OpenAI endpoint, and the built-in simulated upstream.

The request goes through nearly untouched: only the fields the proxy owns are
rewritten (`model` to the upstream's id; `stream_options.include_usage`
forced on, because every token is priced). Answers come back already in
OpenAI's shape, so the translation is error mapping, plus smoothing the
habits of OpenAI-compatible servers out of their streams
(`OpenAIStreamTranslator`): Azure's choice-less filter chunks, usage on the
wrong chunk or in a vendor field, error objects inside a 200 stream, and
streams that end after every choice finished but without ``[DONE]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from ..errors import UpstreamError
from ._http import HTTPProvider, encode_body, json_answer, translate_sse
from ._status import credentials_rejected, unavailable
from .base import JSON, Chunk
from .transport import Transport

__all__ = [
    "OpenAIProvider",
    "OpenAIStreamTranslator",
    "map_openai_error",
    "map_openai_stream_error",
]


def map_openai_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """An upstream's non-2xx answer, as the error our client should see."""
    message = f"upstream answered HTTP {status}"
    code = None
    kind = None
    param = None
    try:
        error = orjson.loads(body).get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            code = error.get("code") if isinstance(error.get("code"), str) else None
            kind = error.get("type") if isinstance(error.get("type"), str) else None
            param = error.get("param") if isinstance(error.get("param"), str) else None
        elif isinstance(error, str):
            message = error
    except (orjson.JSONDecodeError, AttributeError):
        pass
    retry_after = headers.get("retry-after")
    if status == 429:
        return UpstreamError(message, status=429, code=code or "rate_limit_exceeded",
                             retry_after=retry_after, upstream_status=status,
                             type=kind or "rate_limit_error")
    if status in (401, 403):
        return credentials_rejected(status)
    if 400 <= status < 500 and status != 408:
        # The request itself is wrong for this model; another candidate would
        # refuse it too, so it is not retried and keeps OpenAI's status.
        return UpstreamError(message, status=status if status in (400, 404, 413, 422) else 400,
                             code=code, retryable=False, upstream_status=status,
                             type=kind or "invalid_request_error", param=param)
    if status in (503, 529):
        return unavailable(message, status, retry_after)
    return UpstreamError(message, status=502, upstream_status=status)


# The HTTP status an error object in a stream stands for, by its `type` or
# string `code`, when it carries no numeric `code` (OpenRouter and vLLM do).
_STREAM_ERROR_STATUS = {
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "overloaded_error": 529,
    "service_unavailable": 503,
}


def map_openai_stream_error(error: Any) -> UpstreamError:
    """An error object sent inside a 200 stream, as the error our client should see.

    Mapped as the HTTP error it stands for (`map_openai_error`), so that one
    saying the upstream is overloaded or rate-limited, or naming no cause
    (502), is retryable: before a first token another candidate answers.
    One that blames the request (a 4xx) is not, as over HTTP.
    """
    error = error if isinstance(error, dict) else {"message": error}
    code, kind = error.get("code"), error.get("type")
    status = code if isinstance(code, int) and 400 <= code < 600 else None
    status = status or _STREAM_ERROR_STATUS.get(str(kind)) or _STREAM_ERROR_STATUS.get(str(code))
    if status is None:
        message = str(error.get("message") or "the upstream provider failed mid-stream")
        return UpstreamError(message, status=502)
    return map_openai_error(status, orjson.dumps({"error": error}), {})


def _is_error(chunk: JSON) -> bool:
    # OpenAI, OpenRouter, SGLang: {"error": {...}}; vLLM: {"object": "error", ...}.
    return bool(chunk.get("error")) or chunk.get("object") == "error"


# The fields of a usage object that OpenAI defines; a vendor's own (Groq's
# queue and compute times) stay in its vendor field.
_USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
)
_CHUNK_FIELDS = ("id", "object", "created", "model", "system_fingerprint", "service_tier")


class OpenAIStreamTranslator:
    """An OpenAI-compatible server's chunks in, OpenAI's chunks out.

    Most chunks pass untouched. What changes, and why:

    * A chunk with no choices and no usage (Azure's first chunk, carrying
      only ``prompt_filter_results``) is dropped, as are choices that carry
      neither a delta nor a finish reason (Azure's content-filter
      annotations): OpenAI sends a choice-less chunk only for usage, and
      clients read ``choices[0].delta``.
    * Usage is sent once, last, in a chunk of its own with ``choices: []``,
      as OpenAI does, wherever the upstream put it: on the finish chunk, on
      every chunk (the latest wins), or in a vendor field (Groq's
      ``x_groq.usage``).
    * An error object raises `map_openai_stream_error`'s error.
    * `finished` once every one of the ``n`` choices has its finish reason:
      a stream that then ends without ``[DONE]`` is complete, not cut.
    """

    def __init__(self, *, choices: int = 1) -> None:
        self._choices = max(1, choices)
        self._finished: set[int] = set()
        self._usage: Chunk | None = None

    @property
    def finished(self) -> bool:
        return all(i in self._finished for i in range(self._choices))

    def feed(self, event: str | None, data: JSON) -> list[Chunk]:
        if _is_error(data):
            raise map_openai_stream_error(data.get("error") or data)
        self._hold_usage(data)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            return []
        kept = [c for c in choices if isinstance(c, dict) and (
            "delta" in c or c.get("finish_reason"))]
        if not kept:
            return []
        for choice in kept:
            if choice.get("finish_reason"):
                index = choice.get("index", 0)
                self._finished.add(index if isinstance(index, int) else 0)
        chunk = {**data, "choices": kept} if len(kept) < len(choices) else data
        if chunk.get("usage") is not None:
            chunk = {k: v for k, v in chunk.items() if k != "usage"}
        return [chunk]

    def close(self) -> list[Chunk]:
        """End of input: the usage chunk, if any usage was seen."""
        return [self._usage] if self._usage is not None else []

    def _hold_usage(self, data: JSON) -> None:
        usage = data.get("usage")
        if not isinstance(usage, dict):
            vendor = data.get("x_groq")
            usage = vendor.get("usage") if isinstance(vendor, dict) else None
            if not isinstance(usage, dict):
                return
            usage = {k: v for k, v in usage.items() if k in _USAGE_FIELDS}
        elif not data.get("choices"):
            self._usage = data
            return
        head = {k: data[k] for k in _CHUNK_FIELDS if k in data}
        self._usage = {**head, "choices": [], "usage": usage}


class OpenAIProvider(HTTPProvider):
    kind = "openai"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        transport: Transport,
        owns_transport: bool = False,
    ) -> None:
        base = base_url.rstrip("/")
        super().__init__(
            name,
            transport=transport,
            owns_transport=owns_transport,
            ping_url=base + "/models",
            headers={"authorization": f"Bearer {api_key}" if api_key else None},
        )
        self._chat = self.endpoint(base + "/chat/completions")
        self._embed = self.endpoint(base + "/embeddings")

    def _body(self, body: JSON, model: str, *, stream: bool) -> bytes:
        out = dict(body)
        out["model"] = model
        out["stream"] = stream
        if stream:
            options = dict(out.get("stream_options") or {})
            options["include_usage"] = True
            out["stream_options"] = options
        else:
            out.pop("stream_options", None)
        return encode_body(out)

    async def chat(self, body: JSON, *, model: str) -> JSON:
        reply = await self._transport.send(self._chat, self._body(body, model, stream=False))
        if reply.status != 200:
            raise map_openai_error(reply.status, reply.content, reply.headers)
        return json_answer(reply.content)

    @contextlib.asynccontextmanager
    async def stream_chat(self, body: JSON, *, model: str) -> AsyncIterator[AsyncIterator[Chunk]]:
        payload = self._body(body, model, stream=True)
        async with self._transport.stream(self._chat, payload) as reply:
            if reply.status != 200:
                raise map_openai_error(reply.status, await reply.aread(), reply.headers)
            n = body.get("n")
            translator = OpenAIStreamTranslator(choices=n if isinstance(n, int) else 1)
            chunks = translate_sse(reply, translator, sentinel="[DONE]")
            try:
                yield chunks
            finally:
                await chunks.aclose()

    async def embed(self, body: JSON, *, model: str) -> JSON:
        out = dict(body)
        out["model"] = model
        reply = await self._transport.send(self._embed, encode_body(out))
        if reply.status != 200:
            raise map_openai_error(reply.status, reply.content, reply.headers)
        return json_answer(reply.content)
