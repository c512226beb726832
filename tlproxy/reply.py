"""The engine's reply, as the renderers read it: a whole answer, or a stream in batches.

`Engine.chat` yields one of these; `edge.py` renders it as Chat Completions
(JSON, or SSE with ``[DONE]``) and `responses/render.py` as the Responses API.
Nothing here does I/O: a `Stream` is the route and an async iterator of
batches, each batch the chunks one upstream read brought, so one read of the
upstream is one write to the client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import UpstreamError
from .providers.base import Chunk
from .router import Route

if TYPE_CHECKING:
    from .resume import ChunkSource

__all__ = ["Answer", "Batches", "Reply", "Stream"]


class Answer(msgspec.Struct, frozen=True):
    """A complete answer: a ``chat.completion`` or an embeddings ``list``, as the
    upstream gave it (OpenAI-shaped, not yet repaired), and where it came from."""

    route: Route
    body: dict[str, Any]


class Batches:
    """A streamed answer's chunks, in the batches the edge writes them in.

    The first batch is everything held back until the decision was final and
    the winner had its first token; each later one is a chunk and whatever
    else had already arrived, so one read of the upstream is one write to the
    client. `ended` turns true with the last batch of a stream that ended
    whole (the edge sends ``[DONE]`` with it). An upstream failure after the
    first token is raised from the iteration as `UpstreamError`.
    """

    __slots__ = ("_chunks", "_first", "_on_error", "_tap", "ended")

    def __init__(self, first: list[Chunk], chunks: ChunkSource, *,
                 tap: Callable[[Chunk], None],
                 on_error: Callable[[UpstreamError], None]) -> None:
        self._first: list[Chunk] | None = first
        self._chunks = chunks
        self._tap = tap
        self._on_error = on_error
        self.ended = False

    def __aiter__(self) -> Batches:
        return self

    async def __anext__(self) -> list[Chunk]:
        batch: list[Chunk] = []
        if self._first is not None:
            batch, self._first = self._first, None
        # A first batch all held back (a tool call not yet whole) is no batch.
        while not batch:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self.ended = True
                raise
            except UpstreamError as exc:
                self._on_error(exc)
                raise
            batch = [chunk, *self._chunks.buffered()]
            self.ended = self._chunks.ended
        for chunk in batch:
            self._tap(chunk)
        return batch


class Stream(msgspec.Struct, frozen=True):
    """A streamed answer: where it comes from and its chunks (`Batches`)."""

    route: Route
    batches: Batches


Reply = Answer | Stream
