"""OpenAI-compatible upstreams: OpenAI, Azure-style base URLs, vLLM, Groq, Gemini's
OpenAI endpoint, and the built-in simulated upstream.

The request goes through nearly untouched: only the fields the proxy owns are
rewritten (`model` to the upstream's id; `stream_options.include_usage`
forced on, because every token is priced). Answers come back already in
OpenAI's shape, so the translation is only error mapping.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping

import httpx
import orjson

from ..errors import UpstreamError
from ..sse import SSEDecoder
from ._http import (
    HTTPProvider,
    credentials_rejected,
    encode_body,
    json_answer,
    transport_error,
    unavailable,
)
from .base import JSON, Chunk

__all__ = ["OpenAIProvider", "map_openai_error", "map_transport_error"]


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


map_transport_error = transport_error


class OpenAIProvider(HTTPProvider):
    kind = "openai"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        client: httpx.AsyncClient,
        owns_client: bool = False,
    ) -> None:
        base = base_url.rstrip("/")
        super().__init__(
            name,
            client=client,
            owns_client=owns_client,
            ping_url=base + "/models",
            headers={"authorization": f"Bearer {api_key}" if api_key else None},
        )
        self._chat_url = base + "/chat/completions"
        self._embed_url = base + "/embeddings"

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
        try:
            response = await self._client.post(
                self._chat_url, content=self._body(body, model, stream=False),
                headers=self._headers,
            )
        except httpx.HTTPError as exc:
            raise map_transport_error(exc) from None
        if response.status_code != 200:
            raise map_openai_error(response.status_code, response.content, response.headers)
        return json_answer(response.content)

    @contextlib.asynccontextmanager
    async def stream_chat(self, body: JSON, *, model: str) -> AsyncIterator[AsyncIterator[Chunk]]:
        request = self._client.build_request(
            "POST", self._chat_url, content=self._body(body, model, stream=True),
            headers=self._headers,
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise map_transport_error(exc) from None
        try:
            if response.status_code != 200:
                try:
                    content = await response.aread()
                except httpx.HTTPError as exc:
                    raise map_transport_error(exc) from None
                raise map_openai_error(response.status_code, content, response.headers)
            chunks = _chunks(response)
            try:
                yield chunks
            finally:
                await chunks.aclose()
        finally:
            await response.aclose()

    async def embed(self, body: JSON, *, model: str) -> JSON:
        out = dict(body)
        out["model"] = model
        try:
            response = await self._client.post(
                self._embed_url, content=encode_body(out), headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise map_transport_error(exc) from None
        if response.status_code != 200:
            raise map_openai_error(response.status_code, response.content, response.headers)
        return json_answer(response.content)


async def _chunks(response: httpx.Response) -> AsyncGenerator[Chunk, None]:
    decoder = SSEDecoder()
    done = False
    try:
        # Read to the end even after [DONE] (it is the last bytes anyway):
        # leaving httpx's nested async generators half-consumed makes trio
        # finalize them at GC time instead of now.
        async with contextlib.aclosing(response.aiter_raw()) as raw:
            async for data in raw:
                if done:
                    continue
                for event in decoder.feed(data):
                    if event.data == "[DONE]":
                        done = True
                        break
                    try:
                        chunk = orjson.loads(event.data)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(
                            "the upstream provider sent a malformed stream chunk",
                            status=502, retryable=False,
                        ) from None
                    if not isinstance(chunk, dict):
                        raise UpstreamError("the upstream provider sent a malformed stream chunk",
                                            status=502, retryable=False)
                    if "error" in chunk:
                        error = chunk["error"] if isinstance(chunk["error"], dict) else {}
                        raise UpstreamError(
                            str(error.get("message") or "the upstream provider failed mid-stream"),
                            status=502, retryable=False,
                        )
                    yield chunk
    except httpx.HTTPError as exc:
        if done:
            return
        raise map_transport_error(exc) from None
    if done:
        return
    raise UpstreamError(
        "the upstream stream ended before its final event", status=502, retryable=False
    )

