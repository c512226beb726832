"""`GeminiProvider`: moves bytes to and from the Gemini API.

It speaks ``models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``,
``:embedContent`` and ``:batchEmbedContents``, with the key in
``x-goog-api-key``, never in the URL, where it would end up in logs and httpx
error texts. The translation both ways is pure (`.request`, `.answer`).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator

import httpx

from .._http import HTTPProvider, encode_body, json_answer, translate_sse, transport_error
from ..base import JSON, Chunk
from .answer import (
    GeminiStreamTranslator,
    from_gemini_embed_response,
    from_gemini_response,
    map_gemini_error,
)
from .request import embed_texts, to_gemini_embed_request, to_gemini_request

__all__ = ["GeminiProvider"]


class GeminiProvider(HTTPProvider):
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
        base = base_url.rstrip("/")
        if not re.search(r"/v\d+(alpha|beta)?\d*$", base):
            base += "/v1beta"
        super().__init__(
            name,
            client=client,
            owns_client=owns_client,
            ping_url=base + "/models",
            headers={"x-goog-api-key": api_key},
        )
        self._base = base

    def _url(self, model: str, method: str) -> str:
        return f"{self._base}/models/{model.removeprefix('models/')}:{method}"

    async def _post(self, url: str, payload: JSON) -> JSON:
        try:
            response = await self._client.post(
                url, content=encode_body(payload), headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc) from None
        if not 200 <= response.status_code < 300:
            raise map_gemini_error(response.status_code, response.content, response.headers)
        return json_answer(response.content)

    async def chat(self, body: JSON, *, model: str) -> JSON:
        payload = to_gemini_request(body, model=model)
        answer = await self._post(self._url(model, "generateContent"), payload)
        return from_gemini_response(answer, model=model, created=int(time.time()))

    @contextlib.asynccontextmanager
    async def stream_chat(self, body: JSON, *, model: str) -> AsyncIterator[AsyncIterator[Chunk]]:
        payload = encode_body(to_gemini_request(body, model=model))
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
            texts=embed_texts(body),
        )
