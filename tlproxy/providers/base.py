"""What every upstream adapter offers the engine.

An adapter turns OpenAI-shaped requests (plain decoded JSON, a ``dict``) into
its upstream's protocol and the answers back into OpenAI's shapes: a
``chat.completion`` dict, a stream of ``chat.completion.chunk`` dicts, or an
embedding list. Errors leave an adapter only as `tlproxy.errors.UpstreamError`:
the HTTP library's exceptions are mapped in one place (`transport.map_exceptions`),
decode errors where the body is decoded.

A stream is an async context manager yielding an async iterator, never a bare
async generator, so that the upstream connection is closed deterministically
when the consumer stops early or is cancelled::

    async with provider.stream_chat(body, model="gpt-5-nano") as chunks:
        async for chunk in chunks:
            ...

The stream ends normally only when the upstream's answer is whole: OpenAI's
``[DONE]`` or a finish reason for every choice, Anthropic's stop reason
(``message_delta``; ``message_stop`` only closes the stream), Gemini's last
candidate with a finish reason. A stream cut short raises `UpstreamError`
instead, so a cut stream can never pass for a complete answer.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

__all__ = ["JSON", "Chunk", "Provider"]

JSON = dict[str, Any]
Chunk = dict[str, Any]


class Provider(abc.ABC):
    """One upstream endpoint (a base URL and its credentials)."""

    name: str
    kind: str

    @abc.abstractmethod
    async def chat(self, body: JSON, *, model: str) -> JSON:
        """Send a non-streaming chat request; return an OpenAI ``chat.completion``."""

    @abc.abstractmethod
    def stream_chat(
        self, body: JSON, *, model: str
    ) -> AbstractAsyncContextManager[AsyncIterator[Chunk]]:
        """Open a streaming chat request; yield OpenAI ``chat.completion.chunk`` dicts.

        The upstream is always asked for usage; the last chunk before the end
        carries ``usage`` (with ``choices: []``) when the upstream reports it.
        """

    @abc.abstractmethod
    async def embed(self, body: JSON, *, model: str) -> JSON:
        """Create embeddings; return OpenAI's ``list`` of ``embedding`` objects."""

    async def ping(self) -> bool:
        """Whether the upstream answers at all (for readiness); no tokens spent."""
        return True

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called once at shutdown."""
