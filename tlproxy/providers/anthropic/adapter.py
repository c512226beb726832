"""`AnthropicProvider`: moves bytes to and from ``POST /v1/messages``.

Requests carry ``x-api-key`` and ``anthropic-version: 2023-06-01``. The
translation both ways is pure (`.request`, `.answer`); this module only sends,
reads, and learns once per model that it refuses sampling parameters.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator

from ...errors import InvalidRequest
from .._http import HTTPProvider, encode_body, json_answer, translate_sse
from ..base import JSON, Chunk
from ..transport import Reply, Transport
from .answer import AnthropicStreamTranslator, from_anthropic_response, map_anthropic_error
from .request import to_anthropic_request

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider"]

ANTHROPIC_VERSION = "2023-06-01"

_SAMPLING_REFUSED = re.compile(rb"(temperature|top_p|top_k)`? is deprecated for this model")


class AnthropicProvider(HTTPProvider):
    """An Anthropic Messages endpoint.

    ``base_url`` may be given with or without its ``/v1``
    (``https://api.anthropic.com`` or ``https://api.anthropic.com/v1``). The
    ``transport`` is the caller's and stays open unless ``owns_transport``.
    """

    kind = "anthropic"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        transport: Transport,
        default_max_tokens: int = 4096,
        prompt_cache: bool = False,
        owns_transport: bool = False,
    ) -> None:
        base = base_url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        super().__init__(
            name,
            transport=transport,
            owns_transport=owns_transport,
            ping_url=base + "/models",
            headers={"anthropic-version": ANTHROPIC_VERSION, "x-api-key": api_key},
        )
        self._messages = self.endpoint(base + "/messages")
        self._default_max_tokens = default_max_tokens
        self._prompt_cache = prompt_cache
        self._no_sampling: set[str] = set()  # models that refused temperature / top_p

    def _payload(self, body: JSON, model: str, *, stream: bool) -> bytes:
        request = to_anthropic_request(
            body,
            model=model,
            stream=stream,
            default_max_tokens=self._default_max_tokens,
            sampling=model not in self._no_sampling,
        )
        if self._prompt_cache:
            # Automatic caching: Anthropic puts the breakpoint on the last
            # cacheable block, so each turn reads the conversation so far.
            request["cache_control"] = {"type": "ephemeral"}
        return encode_body(request)

    async def _send(
        self, stack: contextlib.AsyncExitStack, body: JSON, model: str, *, stream: bool
    ) -> Reply:
        """POST the request; a 2xx reply (its body unread when streaming)."""
        while True:
            payload = self._payload(body, model, stream=stream)
            reply = await stack.enter_async_context(self._transport.stream(self._messages, payload))
            ok = 200 <= reply.status < 300
            content = b"" if ok and stream else await reply.aread()
            if ok:
                return reply
            if (
                reply.status == 400
                and model not in self._no_sampling
                and _SAMPLING_REFUSED.search(content)
            ):
                # Newer models (Opus 4.7 on) refuse temperature and top_p outright.
                # Clients send them by habit; learn it once and send without.
                self._no_sampling.add(model)
                continue
            raise map_anthropic_error(reply.status, content, reply.headers)

    async def chat(self, body: JSON, *, model: str) -> JSON:
        async with contextlib.AsyncExitStack() as stack:
            reply = await self._send(stack, body, model, stream=False)
        return from_anthropic_response(
            json_answer(reply.content), model=model, created=int(time.time())
        )

    @contextlib.asynccontextmanager
    async def stream_chat(self, body: JSON, *, model: str) -> AsyncIterator[AsyncIterator[Chunk]]:
        translator = AnthropicStreamTranslator(model=model, created=int(time.time()))
        async with contextlib.AsyncExitStack() as stack:
            reply = await self._send(stack, body, model, stream=True)
            chunks = translate_sse(reply, translator)
            stack.push_async_callback(chunks.aclose)
            yield chunks

    async def embed(self, body: JSON, *, model: str) -> JSON:
        raise InvalidRequest("Anthropic offers no embeddings", param="model")
