"""`GeminiProvider`: moves bytes to and from the Gemini API.

It speaks ``models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``,
``:embedContent`` and ``:batchEmbedContents``, with the key in
``x-goog-api-key``, never in the URL, where it would end up in logs and error
texts. The translation both ways is pure (`.request`, `.answer`).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator

from .._http import HTTPProvider, encode_body, json_answer, translate_sse
from ..base import JSON, Chunk
from ..transport import Endpoint, Transport
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
    ``transport`` is the caller's and stays open unless ``owns_transport``.
    """

    kind = "gemini"

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
        if not re.search(r"/v\d+(alpha|beta)?\d*$", base):
            base += "/v1beta"
        super().__init__(
            name,
            transport=transport,
            owns_transport=owns_transport,
            ping_url=base + "/models",
            headers={"x-goog-api-key": api_key},
        )
        self._base = base
        # One endpoint per model and method, built on first use: the models
        # are the catalog's, so this stays small.
        self._endpoints: dict[tuple[str, str], Endpoint] = {}

    def _endpoint(self, model: str, method: str) -> Endpoint:
        endpoint = self._endpoints.get((model, method))
        if endpoint is None:
            url = f"{self._base}/models/{model.removeprefix('models/')}:{method}"
            if method == "streamGenerateContent":
                url += "?alt=sse"
            endpoint = self._endpoints[model, method] = self.endpoint(url)
        return endpoint

    async def _post(self, endpoint: Endpoint, payload: JSON) -> JSON:
        reply = await self._transport.send(endpoint, encode_body(payload))
        if not 200 <= reply.status < 300:
            raise map_gemini_error(reply.status, reply.content, reply.headers)
        return json_answer(reply.content)

    async def chat(self, body: JSON, *, model: str) -> JSON:
        payload = to_gemini_request(body, model=model)
        answer = await self._post(self._endpoint(model, "generateContent"), payload)
        return from_gemini_response(answer, model=model, created=int(time.time()))

    @contextlib.asynccontextmanager
    async def stream_chat(self, body: JSON, *, model: str) -> AsyncIterator[AsyncIterator[Chunk]]:
        payload = encode_body(to_gemini_request(body, model=model))
        endpoint = self._endpoint(model, "streamGenerateContent")
        translator = GeminiStreamTranslator(model=model, created=int(time.time()))
        async with self._transport.stream(endpoint, payload) as reply:
            if not 200 <= reply.status < 300:
                raise map_gemini_error(reply.status, await reply.aread(), reply.headers)
            chunks = translate_sse(reply, translator, strict_end=True)
            try:
                yield chunks
            finally:
                await chunks.aclose()

    async def embed(self, body: JSON, *, model: str) -> JSON:
        method, payload = to_gemini_embed_request(body, model=model)
        answer = await self._post(self._endpoint(model, method), payload)
        return from_gemini_embed_response(
            answer,
            model=model,
            encoding_format=body.get("encoding_format"),
            texts=embed_texts(body),
        )
