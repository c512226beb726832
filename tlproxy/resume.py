"""The winner's chunks as the client gets them: whole tool calls, and a stream that survives.

`ResumableChunks` sits between the race's `WinnerChunks` and the engine's
`Batches`. It holds tool-call deltas until each call is whole
(`continuation.ToolCallHold`), and when the stream fails after its first
token it asks the engine for a continuation (`Resume`): another source of
chunks, from the next model of the decided tier, which it splices into the
same stream (`continuation.Splice`). When there is no faithful continuation,
the failure leaves as it came, and the edge ends the stream with the honest
error event. Half a tool call is never passed on: held deltas of a call
under way when the stream failed are dropped, and the continuation (a retry
when nothing else was sent) makes the call whole.

No task of its own: reading happens in the consumer's task, and a
continuation's chunks come from a task the engine started in its own nursery,
so the consumer leaving cancels it with everything else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .continuation import Delivered, Splice, ToolCallHold, attempt_usage, failure_reason
from .errors import UpstreamError
from .shapes import token_kind

__all__ = ["ChunkSource", "ResumableChunks", "Resume"]

Chunk = dict[str, Any]


class ChunkSource(Protocol):
    """What is read: the race's `WinnerChunks` (or a test's script)."""

    def __aiter__(self) -> ChunkSource: ...

    async def __anext__(self) -> Chunk: ...

    def buffered(self) -> list[Chunk]:
        """The chunks already arrived, without waiting."""
        ...

    @property
    def ended(self) -> bool:
        """Whether `buffered` met the stream's clean end."""
        ...


# Asked, after a failure (its reason, what the client has, the error), for the
# continuation's chunks; None when there is none (off, no model left).
Resume = Callable[[str, Delivered, UpstreamError], ChunkSource | None]


class ResumableChunks:
    """A `ChunkSource` of what the client may see, continued across failures.

    `first` are the chunks up to the winner's first token; `first_usage`
    gives the usage the winner reported before it failed (None: none).
    `on_outcome(reason, outcome)` hears of each failure after the first
    token: ``recovered`` (its continuation ended whole), ``failed`` (the
    continuation failed too) or ``not-continued``.
    """

    def __init__(self, first: list[Chunk], source: ChunkSource, *, body: Mapping[str, Any],
                 hold_tools: bool, resume: Resume | None,
                 first_usage: Callable[[], dict[str, Any] | None],
                 on_outcome: Callable[[str, str], None]) -> None:
        self._source = source
        self._body = body
        self._hold = ToolCallHold() if hold_tools else None
        self._resume = resume
        self._first_usage = first_usage
        self._on_outcome = on_outcome
        self._delivered = Delivered()
        self._splice: Splice | None = None
        self._continuing: str | None = None  # the reason of the continuation under way
        self._error: UpstreamError | None = None  # the failure it continues
        self._attempt_chars = 0  # characters the current attempt delivered
        self._prior_completion = 0
        self._prompt: int | None = None
        self._out: deque[Chunk] = deque()
        self._shown = False  # whether a chunk with a token was passed on
        self._before: list[Chunk] = []
        self._ended = False
        for chunk in first:
            self._take(chunk)
        self.first = self._drain()

    def __aiter__(self) -> ResumableChunks:
        return self

    async def __anext__(self) -> Chunk:
        while not self._out:
            if self._ended:
                raise StopAsyncIteration
            try:
                chunk = await self._source.__anext__()
            except StopAsyncIteration:
                self._end()
                continue
            except UpstreamError as exc:
                self._failed(exc)
                continue
            self._take(chunk)
        return self._out.popleft()

    def buffered(self) -> list[Chunk]:
        for chunk in self._source.buffered():
            self._take(chunk)
        if self._source.ended:
            self._end()
        return self._drain()

    @property
    def ended(self) -> bool:
        return self._ended and not self._out

    # -- inside ----------------------------------------------------------------

    def _take(self, chunk: Chunk) -> None:
        if self._resume is None and self._hold is None:
            self._out.append(chunk)  # nothing to continue: nothing to note
            return
        if self._splice is not None:
            spliced = self._splice.chunk(chunk)
            if spliced is None:
                return
            chunk = spliced
        for passed in self._hold.feed(chunk) if self._hold is not None else (chunk,):
            if not self._shown:
                # What comes before the first token waits for it (a role chunk
                # ahead of a held tool call): the client's first byte carries one.
                self._before.append(passed)
                if token_kind(passed) is None:
                    continue
                self._shown = True
                for held in self._before[:-1]:
                    self._delivered.note(held)
                    self._out.append(held)
                self._before.clear()
            before = len(self._delivered.parts)
            self._delivered.note(passed)
            self._attempt_chars += sum(map(len, self._delivered.parts[before:]))
            self._out.append(passed)

    def _drain(self) -> list[Chunk]:
        out = list(self._out)
        self._out.clear()
        return out

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._out.extend(self._before)
        self._before.clear()
        if self._hold is not None:
            self._out.extend(self._hold.flush())
        if self._continuing is not None:
            self._on_outcome(self._continuing, "recovered")

    def _failed(self, error: UpstreamError) -> None:
        """The current source failed: continue elsewhere, or let the error out."""
        if self._continuing is not None:
            self._on_outcome(self._continuing, "failed")
            if error is self._error:
                raise error  # no model could continue: the first failure stands
        if self._hold is not None:
            self._hold = ToolCallHold()  # half a call is never sent
        reason = failure_reason(error)
        delivered = self._delivered
        source = None
        if self._resume is not None and delivered.refusal(self._body, error) is None:
            source = self._resume(reason, delivered, error)
        if source is None:
            self._on_outcome(reason, "not-continued")
            raise error
        self._error = error
        prompt, completion = attempt_usage(
            self._body, self._first_usage() if self._prompt is None else None,
            delivered.text[len(delivered.text) - self._attempt_chars:])
        if self._prompt is None:
            self._prompt = prompt
        self._prior_completion += completion
        self._attempt_chars = 0
        self._source = source
        self._continuing = reason
        self._splice = Splice(delivered, prompt_tokens=self._prompt,
                              prior_completion=self._prior_completion)
