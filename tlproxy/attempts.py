"""What a race is made of and gives back: its candidates, one record per attempt, the
winner and its chunks, the failure when nothing could answer.

Values and the winner's channel only; the race itself (`race.py`) starts,
times and cancels the attempts. The engine, the accounting, the statistics
and the traces read these, never the race's insides.
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio

from .errors import UpstreamError

__all__ = [
    "AttemptRecord",
    "Candidate",
    "Chunk",
    "RaceFailed",
    "StreamFailure",
    "Winner",
    "WinnerChunks",
    "deadline_error",
]

Chunk = dict[str, Any]


class Candidate(msgspec.Struct, frozen=True):
    """One model that may answer, as the caller ranked it."""

    key: str  # unique within a race (a model id)
    tier: str  # "premium" | "economy" | "embedding"
    # Seconds to wait for this candidate's first token before starting the next
    # one of its tier; `math.inf` turns hedging off for this candidate alone.
    hedge_delay: float
    # Seconds after which an attempt with no first token fails ("deadline").
    first_token_deadline: float | None = None
    # Seconds after which an attempt whose stream has not ended fails
    # ("deadline"), first token or not: the bound of a non-streamed answer,
    # whose one chunk is the whole answer. The winner's time counts too,
    # including time its consumer spends not reading.
    answer_deadline: float | None = None
    # After the first token, seconds without a new chunk after which the
    # attempt has stalled (code ``stall_timeout``); `reasoning_stall_deadline`
    # while its last chunk was reasoning (a model thinking pauses longer).
    # Time the consumer spends not reading does not count. None: no bound
    # but the transport's read timeout.
    stall_deadline: float | None = None
    reasoning_stall_deadline: float | None = None
    # Set on an attempt that continues another's answer after it failed: why
    # that one failed ("cut", "stall", "malformed", "error-event").
    continues: str | None = None


class AttemptRecord(msgspec.Struct):
    """One started attempt, for statistics and the ledger; updated while it lives."""

    candidate: Candidate
    started_at: float
    ended_at: float | None
    first_token_at: float | None
    # "running" while its fate is open, then one of: "won", "lost" (cancelled
    # after another won), "outside-tier" (cancelled by the decision),
    # "failed", "deadline", "cancelled" (the caller left or the race aborted).
    # A winner stays "won" even if its stream fails or is cut later; `error`
    # and `ended_at` tell those cases apart.
    outcome: str
    hedge: bool  # started by the hedging timer
    fallback: bool  # started because an earlier attempt of its tier failed
    error: Exception | None
    chunks: int
    usage: dict[str, Any] | None
    # What the first token carried, as `first_token_kind` named it: "content",
    # "refusal", "tool_calls", "reasoning", "audio", ...; None without one.
    first_token_kind: str | None = None
    # For a stream that ended whole: its longest wait between chunks after the
    # first token, per phase ("reasoning" while the last chunk was reasoning,
    # "answer" otherwise), the measure its stall deadline is derived from.
    longest_gaps: dict[str, float] | None = None
    # Whether its stream ended whole (not failed, not cut short by anyone).
    whole: bool = False


class Winner(msgspec.Struct, frozen=True):
    """What the caller streams from."""

    candidate: Candidate
    first_chunks: list[Chunk]  # up to and including the first token, in order
    chunks: WinnerChunks  # the rest; raises what the stream raised
    records: list[AttemptRecord]  # every attempt, live
    # The race's nursery, for work that must end with it (a stream's
    # continuation): leaving the race cancels it. None for an answer that came
    # whole (`turns.in_turn`).
    nursery: trio.Nursery | None = None


class RaceFailed(Exception):
    """No candidate of the decided tier produced a first token.

    Built like trio's happy eyeballs' ``OSError``: the message says what was
    tried and ``__cause__`` is an ``ExceptionGroup`` of every attempt's error.
    """

    def __init__(
        self, message: str, *, tier: str, records: list[AttemptRecord], errors: list[Exception]
    ) -> None:
        super().__init__(message)
        self.tier = tier
        self.records = records
        self.errors = errors

    @classmethod
    def in_tier(cls, tier: str, records: list[AttemptRecord]) -> RaceFailed:
        """Nothing in `tier` produced a first token: every error, the tier's first
        (a 503 ``no_eligible_model`` first when nothing in it could be tried)."""
        errors: list[Exception] = [r.error for r in records if r.error is not None]
        tried = sum(r.candidate.tier == tier for r in records)
        if tried == 0:
            errors.insert(0, UpstreamError(
                f"No {tier} model could be tried for this request.", status=503,
                code="no_eligible_model"))
        message = f"all {tried} attempt(s) in tier {tier!r} failed before a first token"
        return cls(message, tier=tier, records=records, errors=errors)

    def first_error(self) -> Exception:
        """The one error the client should see.

        A non-retryable error of the decided tier first (it is about the
        request itself), else the decided tier's first error, else the first.
        """
        mine = [r.error for r in self.records if r.candidate.tier == self.tier and r.error]
        fatal = [e for e in mine if getattr(e, "retryable", True) is False]
        return (fatal or mine or self.errors)[0]


def deadline_error(candidate: Candidate, code: str,
                   stalled_for: float | None = None) -> UpstreamError:
    """An attempt ran out of time: `code` says which bound it missed
    (``first_token_timeout``, ``stall_timeout`` after `stalled_for` seconds of
    silence, or ``total_timeout``)."""
    if code == "first_token_timeout":
        message = (f"{candidate.key} sent no first token within "
                   f"{candidate.first_token_deadline:g} s.")
    elif code == "stall_timeout":
        message = f"{candidate.key} sent nothing for {stalled_for:g} s after its first token."
    else:
        message = (f"{candidate.key} did not complete its answer within "
                   f"{candidate.answer_deadline:g} s.")
    return UpstreamError(message, status=504, code=code)


class _Failure:
    """An error after the winner's first token, sent down the chunk channel."""

    def __init__(self, error: Exception) -> None:
        self.error = error


# The item a producer of a `WinnerChunks` channel sends to end it with an error.
StreamFailure = _Failure


class WinnerChunks:
    """`Winner.chunks`: the winner's channel, re-raising the stream's error."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Chunk | _Failure] | None) -> None:
        """None: nothing follows the first chunks (an answer that came whole)."""
        self._receive = receive
        # What `buffered` met after the chunks it returned: the stream's end
        # (None inside) or its failure, handed out by the next `__anext__`.
        self._held: list[_Failure | None] = [] if receive is not None else [None]

    def __aiter__(self) -> WinnerChunks:
        return self

    async def __anext__(self) -> Chunk:
        if self._held:
            held = self._held[0]
            await trio.lowlevel.checkpoint()
            if held is None:
                raise StopAsyncIteration
            raise held.error
        assert self._receive is not None  # else `_held` says the stream ended
        try:
            item = await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, _Failure):
            raise item.error
        return item

    @property
    def ended(self) -> bool:
        """Whether `buffered` met the stream's clean end: nothing more will come."""
        return self._held == [None]

    def buffered(self) -> list[Chunk]:
        """The chunks that have already arrived, in order, without waiting.

        For a consumer that writes them out in one piece. A failure or the end
        of the stream found on the way is kept for the next `__anext__`, so
        nothing is lost or reordered.
        """
        out: list[Chunk] = []
        while not self._held:
            assert self._receive is not None
            try:
                item = self._receive.receive_nowait()
            except trio.WouldBlock:
                break
            except trio.EndOfChannel:
                self._held.append(None)
                break
            if isinstance(item, _Failure):
                self._held.append(item)
                break
            out.append(item)
        return out
