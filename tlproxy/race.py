"""The first-token race: speculative, hedged and cancel-safe.

The problem. Through a router, time to first token (TTFT) is the routing
decision's time plus the upstream's TTFT if the proxy waits for the decision
before calling anyone. Some decisions are slow (a semantic classifier calling
an embedding model, a budget look-up in a shared store), and every upstream
has a tail: one request in twenty waits seconds for a first token that its
median delivers in 300 ms. A proxy that adds its decision time and inherits
one provider's tail is slower than calling the provider directly, which
defeats the point of routing.

Options rejected:

* Wait, then call: simple and cheap, but TTFT is the *sum* of the decision
  and the upstream, and the upstream's tail is passed on untouched.
* Call first, then decide blindly (stream whichever model answers first):
  fast, but the client may be shown tokens from a model the policy would not
  have chosen, which breaks the one promise a router makes.
* Unbounded fan-out (call every eligible model, keep the fastest): fast and
  correct, but every loser is billed, at least for its prompt tokens, and
  the upstreams' rate limits are spent many times over.

What this module does, inside one trio nursery (the shape of trio's happy
eyeballs in `trio._highlevel_open_tcp_stream`): while the decision is being
made, the best candidate of each tier still possible is called (speculation,
at most `fanout` at once); within a tier, a candidate with no first token
after its `hedge_delay` (a quantile of its live TTFT) gets company from the
next one, staggered, and a failure starts the next one at once. When the
decision names a tier, everything outside it is cancelled; the first
candidate of that tier with a first token wins and the rest are cancelled.

What counts as a first token is the caller's to say (`first_token_kind`):
any chunk that shows progress, whatever it carries (content, a refusal, a
tool call, reasoning, audio), and the record keeps which kind it was, so the
statistics and the ledger never mix a reasoning model's first thought with
another's first word unawares. A role-only chunk is not progress: a model
that sends one at once and then thinks for seconds has not answered. A
non-streamed answer is one chunk, its first token and its last at once, so a
first-token deadline means nothing to it: its bound is the candidate's
`answer_deadline`, on the whole attempt.

After the first token, a stream that goes quiet has failed as surely as one
that breaks: a candidate's `stall_deadline` bounds the wait between chunks
(`reasoning_stall_deadline` while the last chunk was reasoning, since a model
thinking pauses longer than one writing). Only the upstream's silence counts:
while the consumer is not reading and the buffer is full, the clock is off.
An attempt that misses it fails with code ``stall_timeout`` like a cut
stream, and a stream that ends whole reports its longest gaps per phase
(`AttemptRecord.longest_gaps`), the measure the caller derives the deadline
from.

The guarantees:

1. the caller sees nothing (the `async with` does not enter) until the
   decision is final and a winner exists, so it never sees a chunk from a
   model outside the decided tier;
2. TTFT is close to max(decision, fastest candidate's TTFT), not their sum;
3. chunks that arrive before the decision are buffered, at most
   `buffer_limit` per attempt; a full buffer makes the attempt wait
   (backpressure), it never drops a chunk;
4. a failure before a first token (or before the attempt is chosen) is
   replaced by the next candidate of the same tier, up to `max_attempts`;
   when nothing in the decided tier can answer, one `RaceFailed` carries
   every error; a failure after the winner's first token comes out of
   `Winner.chunks` as the exception the stream raised;
5. leaving the `async with`, for whatever reason, cancels every attempt,
   upstream streams included, and no task outlives it;
6. every attempt started yields exactly one `AttemptRecord` to `on_record`.

The cost: a speculative or hedged attempt that loses is billed by its
upstream, for its prompt tokens at least, and more if it was cancelled late.
That is why fan-out and attempts are bounded and why each loser's record is
kept (with its usage when a chunk carried it), so the team can see what the
speed costs. Time is read only through `trio.current_time`, so trio's
`MockClock` drives the whole race in tests.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager

import trio

from .attempts import (
    AttemptRecord,
    Candidate,
    Chunk,
    RaceFailed,
    StreamFailure,
    Winner,
    WinnerChunks,
    deadline_error,
)
from .errors import UpstreamError, lone_errors

__all__ = [
    "AttemptRecord",
    "Candidate",
    "RaceFailed",
    "StreamFailure",
    "Winner",
    "WinnerChunks",
    "race",
]


class _Attempt:
    def __init__(self, record: AttemptRecord, index: int) -> None:
        self.record = record
        self.index = index
        self.scope = trio.CancelScope()
        self.deadline_scope: trio.CancelScope | None = None
        self.answer_deadline_at = math.inf
        # After the first token: the phase the stream is in, when its last chunk
        # was taken, its longest gaps; whether its consumer keeps it waiting
        # (`paused`), the watchdog's scope and what it found (`stalled_for`).
        self.phase = "answer"
        self.last_at = 0.0
        self.gaps: dict[str, float] = {}
        self.paused = False
        self.watch: trio.CancelScope | None = None
        self.stalled_for: float | None = None
        self.first_chunks: list[Chunk] = []
        self.send: trio.MemorySendChannel[Chunk | StreamFailure] | None = None
        self.receive: trio.MemoryReceiveChannel[Chunk | StreamFailure] | None = None
        self.task_done = False
        self.reported = False

    @property
    def tier(self) -> str:
        return self.record.candidate.tier

    @property
    def live(self) -> bool:
        return self.record.outcome == "running"

    @property
    def ready(self) -> bool:
        return self.live and self.record.first_token_at is not None

    @property
    def hedge_at(self) -> float:
        return self.record.started_at + self.record.candidate.hedge_delay


class _Lane:
    """One tier's ranked candidates and how far through them the race is."""

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.candidates = list(candidates)
        self.next = 0  # index of the best untried candidate
        self.started = 0
        self.pending_fallbacks = 0  # failures not replaced yet
        self.exhausted = False  # a non-retryable error: try no more here
        self.latest: _Attempt | None = None  # owns the hedging timer


class _Race:
    """The race's state and the one task (the caller's) that moves it on.

    Attempts, the decision and hedge timers only record facts and set
    `changed`; `_step` reads the whole state and acts (starts, cancels, picks
    the winner), like happy eyeballs' chain of waits but in one place, so the
    rules can be read together. Between steps the supervisor sleeps until
    something changes or the next hedge falls due.
    """

    def __init__(
        self,
        *,
        candidates: Mapping[str, Sequence[Candidate]],
        open_stream: Callable[[Candidate], AbstractAsyncContextManager[AsyncIterator[Chunk]]],
        first_token_kind: Callable[[Chunk], str | None],
        fanout: int,
        max_attempts: int,
        hedge: bool,
        buffer_limit: int,
        on_record: Callable[[AttemptRecord], None] | None,
    ) -> None:
        self.lanes = {tier: _Lane(ranked) for tier, ranked in candidates.items()}
        self.open_stream = open_stream
        self.first_token_kind = first_token_kind
        self.fanout = fanout
        self.max_attempts = max_attempts
        self.hedge = hedge
        self.buffer_limit = max(1, buffer_limit)
        self.on_record = on_record
        # With several tiers possible, speculation leaves one attempt unspent
        # for the tier the decision will name.
        self.reserve = 1 if len(self.lanes) > 1 else 0
        self.speculate: frozenset[str] | None = None
        self.attempts: list[_Attempt] = []
        self.records: list[AttemptRecord] = []
        self.decided: str | None = None
        self.winner: _Attempt | None = None
        self.failure: RaceFailed | None = None
        self.changed = trio.Event()
        self.nursery: trio.Nursery | None = None

    # -- the supervisor: state in, starts and cancels out -----------------

    async def run(self, decide: Callable[[], Awaitable[str]] | str) -> Winner | None:
        """Drive the race until a winner exists in the decided tier, or nothing can."""
        assert self.nursery is not None
        if isinstance(decide, str):
            self.lanes = {decide: self.lanes.get(decide, _Lane(()))}
            self.reserve = 0
            self._decide(decide)
        else:
            self.nursery.start_soon(self._await_decision, decide)
        while True:
            self.changed = trio.Event()
            if self._step():
                break
            with trio.move_on_at(self._next_timer()):
                await self.changed.wait()
        if self.winner is None:
            return None
        assert self.winner.receive is not None
        return Winner(
            candidate=self.winner.record.candidate,
            first_chunks=self.winner.first_chunks,
            chunks=WinnerChunks(self.winner.receive),
            records=self.records,
            nursery=self.nursery,
        )

    def _step(self) -> bool:
        """Start what is due; pick the winner or give up. True when settled."""
        if self.decided is None:
            self._start_due([t for t in self.lanes
                             if self.speculate is None or t in self.speculate])
            return False
        tier = self.decided
        ready = [a for a in self.attempts if a.tier == tier and a.ready]
        if ready:
            self._win(min(ready, key=lambda a: (a.record.first_token_at, a.index)))
            return True
        self._start_due([tier])
        if any(a.live for a in self.attempts if a.tier == tier):
            return False
        self.failure = RaceFailed.in_tier(tier, self.records)
        return True

    def _start_due(self, tiers: list[str]) -> None:
        # Round-robin by rank: the tier with the fewest attempts goes first,
        # ties in the caller's order; one start per tier per pass.
        started = True
        while started:
            started = False
            for tier in sorted(tiers, key=lambda t: self.lanes[t].started):
                kind = self._due(tier)
                if kind is not None and self._may_start(kind):
                    self._start(tier, kind)
                    started = True

    def _due(self, tier: str) -> str | None:
        """Whether `tier` wants another attempt now, and why."""
        lane = self.lanes[tier]
        if lane.exhausted or lane.next >= len(lane.candidates):
            return None
        if any(a.tier == tier and a.ready for a in self.attempts):
            return None
        if lane.started == 0:
            return "initial"
        if lane.pending_fallbacks:
            return "fallback"
        latest = lane.latest
        if (self.hedge and latest is not None and latest.live
                and latest.record.first_token_at is None
                and trio.current_time() >= latest.hedge_at):
            return "hedge"
        return None

    def _may_start(self, kind: str) -> bool:
        if len(self.attempts) >= self.max_attempts:
            return False
        if self.decided is not None:
            return True
        if sum(not a.task_done for a in self.attempts) >= self.fanout:
            return False
        return kind == "initial" or len(self.attempts) < self.max_attempts - self.reserve

    def _next_timer(self) -> float:
        """When the next hedge falls due (inf: nothing to wait for but events)."""
        now = trio.current_time()
        tiers = list(self.lanes) if self.decided is None else [self.decided]
        times = [
            lane.latest.hedge_at
            for lane in (self.lanes[t] for t in tiers)
            if self.hedge and lane.next < len(lane.candidates) and not lane.exhausted
            and lane.latest is not None and lane.latest.live
            and lane.latest.record.first_token_at is None and lane.latest.hedge_at > now
        ]
        return min(times, default=math.inf)

    # -- transitions -----------------------------------------------------

    def _start(self, tier: str, kind: str) -> None:
        assert self.nursery is not None
        lane = self.lanes[tier]
        candidate = lane.candidates[lane.next]
        lane.next += 1
        lane.started += 1
        if kind == "fallback":
            lane.pending_fallbacks -= 1
        record = AttemptRecord(
            candidate=candidate, started_at=trio.current_time(), ended_at=None,
            first_token_at=None, outcome="running", hedge=kind == "hedge",
            fallback=kind == "fallback", error=None, chunks=0, usage=None)
        attempt = _Attempt(record, len(self.attempts))
        self.attempts.append(attempt)
        self.records.append(record)
        lane.latest = attempt
        self.nursery.start_soon(self._attempt, attempt, name=f"race attempt {candidate.key}")

    async def _await_decision(self, decide: Callable[[], Awaitable[str]]) -> None:
        self._decide(await decide())

    def _decide(self, tier: str) -> None:
        self.decided = tier
        self.lanes.setdefault(tier, _Lane(()))
        for attempt in self.attempts:
            if attempt.live and attempt.tier != tier:
                self._conclude(attempt, "outside-tier")
        self.changed.set()

    def _win(self, winner: _Attempt) -> None:
        self.winner = winner
        for attempt in self.attempts:
            if attempt.live and attempt is not winner:
                self._conclude(attempt, "lost")
        self._conclude(winner, "won", cancel=False)

    def _conclude(self, attempt: _Attempt, outcome: str, *, cancel: bool = True) -> None:
        attempt.record.outcome = outcome
        if cancel:
            attempt.scope.cancel()
        if attempt.task_done:
            self._report(attempt)

    def _fail(self, attempt: _Attempt, error: Exception, outcome: str) -> None:
        """An attempt failed before it was chosen: replace it (fallback)."""
        attempt.record.error = error
        attempt.record.outcome = outcome
        lane = self.lanes[attempt.tier]
        if getattr(error, "retryable", True) is False:
            lane.exhausted = True
        else:
            lane.pending_fallbacks += 1
        self.changed.set()

    def _report(self, attempt: _Attempt) -> None:
        if not attempt.reported:
            attempt.reported = True
            if self.on_record is not None:
                self.on_record(attempt.record)

    def close(self) -> None:
        """After the nursery: whatever is still open was cut short by the caller."""
        for attempt in self.attempts:
            if attempt.live:
                attempt.record.outcome = "cancelled"
            self._report(attempt)

    # -- one attempt -----------------------------------------------------

    async def _attempt(self, attempt: _Attempt) -> None:
        record = attempt.record
        try:
            with attempt.scope:
                error, outcome = await self._stream(attempt)
                if error is None:
                    record.longest_gaps = attempt.gaps
                    record.whole = True
                elif attempt is self.winner:
                    record.error = error
                    assert attempt.send is not None
                    await attempt.send.send(StreamFailure(error))
                elif attempt.live:
                    self._fail(attempt, error, outcome)
        finally:
            if attempt.watch is not None:
                attempt.watch.cancel()
            if attempt.send is not None:
                attempt.send.close()
            attempt.task_done = True
            record.ended_at = trio.current_time()
            # A stream that ended cleanly before the verdict waits for it.
            if not (attempt.ready and self.winner is None and self.failure is None):
                if attempt.live and attempt is not self.winner:
                    record.outcome = "cancelled"
                self._report(attempt)
            self.changed.set()

    async def _stream(self, attempt: _Attempt) -> tuple[Exception | None, str]:
        """Read the upstream stream; return (error or None, outcome if it failed)."""
        candidate = attempt.record.candidate
        first, whole = candidate.first_token_deadline, candidate.answer_deadline
        started = attempt.record.started_at
        first_at = math.inf if first is None else started + first
        attempt.answer_deadline_at = math.inf if whole is None else started + whole
        with trio.CancelScope(deadline=min(first_at, attempt.answer_deadline_at)) as scope:
            attempt.deadline_scope = scope
            try:
                async with self.open_stream(candidate) as chunks:
                    async for chunk in chunks:
                        await self._take(attempt, chunk)
            except Exception as exc:
                return exc, "failed"
        if scope.cancelled_caught:
            if attempt.record.first_token_at is None and first_at <= attempt.answer_deadline_at:
                return deadline_error(candidate, "first_token_timeout"), "deadline"
            if attempt.stalled_for is not None:
                return deadline_error(candidate, "stall_timeout", attempt.stalled_for), "deadline"
            return deadline_error(candidate, "total_timeout"), "deadline"
        if attempt.record.first_token_at is None:
            return UpstreamError(
                f"{candidate.key} ended its stream without a token.", status=502), "failed"
        return None, ""

    async def _take(self, attempt: _Attempt, chunk: Chunk) -> None:
        record = attempt.record
        record.chunks += 1
        usage = chunk.get("usage")
        if usage is not None:
            record.usage = usage
        if attempt.send is not None:
            self._progress(attempt, chunk)
            # No checkpoint while there is room: the chunks of one upstream read
            # all reach the channel before the consumer runs, so it can write
            # them out together. The upstream read itself is the checkpoint.
            try:
                attempt.send.send_nowait(chunk)
            except trio.WouldBlock:
                # A consumer not reading is not the upstream stalling.
                attempt.paused = True
                await attempt.send.send(chunk)  # blocks when the buffer is full
                attempt.paused = False
                attempt.last_at = trio.current_time()
            return
        attempt.first_chunks.append(chunk)
        kind = self.first_token_kind(chunk)
        if kind is not None:
            record.first_token_at = attempt.last_at = trio.current_time()
            record.first_token_kind = kind
            attempt.phase = _phase(kind, "answer")
            assert attempt.deadline_scope is not None
            attempt.deadline_scope.deadline = attempt.answer_deadline_at
            candidate = record.candidate
            if candidate.stall_deadline is not None or (
                    candidate.reasoning_stall_deadline is not None):
                assert self.nursery is not None
                attempt.watch = trio.CancelScope()
                self.nursery.start_soon(self._watch, attempt,
                                        name=f"stall watchdog {candidate.key}")
            # What this attempt holds in all: first chunks, the channel, one in hand.
            room = max(0, self.buffer_limit - len(attempt.first_chunks) - 1)
            attempt.send, attempt.receive = trio.open_memory_channel[Chunk | StreamFailure](room)
            self.changed.set()
        elif len(attempt.first_chunks) >= self.buffer_limit:
            raise UpstreamError(
                f"{record.candidate.key} sent {self.buffer_limit} chunks without a token.")

    def _progress(self, attempt: _Attempt, chunk: Chunk) -> None:
        """A chunk after the first token: the gap it ended, and the phase it leaves.

        Only facts, no deadline moved: rescheduling a cancel scope per chunk
        costs more than the rest of a chunk's way through the race, so the
        stall deadline is kept by a watchdog that reads these facts (`_watch`).
        """
        now = trio.current_time()
        gap = now - attempt.last_at
        if gap > attempt.gaps.get(attempt.phase, -1.0):
            attempt.gaps[attempt.phase] = gap
        attempt.last_at = now
        kind = self.first_token_kind(chunk)
        if kind is not None and kind != "finish":
            attempt.phase = "reasoning" if kind == "reasoning" else "answer"

    async def _watch(self, attempt: _Attempt) -> None:
        """Fail `attempt` once it has sent nothing for its phase's stall deadline.

        It wakes when the deadline measured from the last chunk falls due, or
        after the shortest of the candidate's deadlines if that is sooner (the
        phase may change to one with a shorter deadline, the consumer may keep
        the attempt waiting), and sleeps again if a chunk came in the meantime.
        """
        assert attempt.watch is not None
        candidate = attempt.record.candidate
        bounds = [d for d in (candidate.stall_deadline, candidate.reasoning_stall_deadline)
                  if d is not None]
        recheck = min(bounds)
        with attempt.watch:
            while True:
                now = trio.current_time()
                after = self._stall_after(attempt)
                due = attempt.last_at + after
                if not attempt.paused and now >= due:
                    attempt.stalled_for = after
                    assert attempt.deadline_scope is not None
                    attempt.deadline_scope.cancel()
                    return
                await trio.sleep_until(now + recheck if attempt.paused
                                       else min(due, now + recheck))

    @staticmethod
    def _stall_after(attempt: _Attempt) -> float:
        candidate = attempt.record.candidate
        after = (candidate.reasoning_stall_deadline if attempt.phase == "reasoning"
                 else candidate.stall_deadline)
        return math.inf if after is None else after


def _phase(kind: str | None, current: str) -> str:
    """The phase a stream is in after a chunk of `kind` (None: a chunk with no token)."""
    if kind is None or kind == "finish":
        return current
    return "reasoning" if kind == "reasoning" else "answer"


@contextlib.asynccontextmanager
async def race(
    *,
    candidates: Mapping[str, Sequence[Candidate]],
    decide: Callable[[], Awaitable[str]] | str,
    open_stream: Callable[[Candidate], AbstractAsyncContextManager[AsyncIterator[Chunk]]],
    first_token_kind: Callable[[Chunk], str | None],
    fanout: int = 2,
    max_attempts: int = 4,
    hedge: bool = True,
    buffer_limit: int = 256,
    on_record: Callable[[AttemptRecord], None] | None = None,
    speculate: Collection[str] | None = None,
) -> AsyncIterator[Winner]:
    """Race `candidates` for a first token; enter with the `Winner` of the decided tier.

    `candidates` maps each tier still possible to its candidates, best first,
    in the order tiers should be tried; `decide` is the slow decision (a
    plain string when already made: then only that tier is called).
    `first_token_kind` names what a chunk's first token carries, or None
    when the chunk carries none (a role-only chunk, usage, filter results);
    the record of the attempt keeps the name.

    Speculation starts the best candidate of each tier, at most `fanout`
    attempts running at once until the decision; with several tiers possible
    it never spends the last of `max_attempts` before the decision, so the
    decided tier can still be tried. `hedge` turns hedging off altogether; a
    candidate's `hedge_delay` of ``math.inf`` turns it off for that candidate.
    An attempt holds at most `buffer_limit` chunks (then it waits); one that
    sends that many without a token fails. A non-retryable error
    (``retryable=False``) stops fallback within its tier. `on_record` is
    called once per attempt, when it ended and its outcome is known.

    Raises `RaceFailed` from the ``async with`` when no candidate of the
    decided tier produced a first token; an exception of `decide` or of the
    caller's body leaves as itself, not wrapped in a group. Leaving the block
    cancels every attempt still running, the winner's included.
    """
    state = _Race(
        candidates=candidates, open_stream=open_stream, first_token_kind=first_token_kind,
        fanout=max(1, fanout), max_attempts=max_attempts, hedge=hedge,
        buffer_limit=buffer_limit, on_record=on_record)
    # Tiers that may start before the decision (None: all of them). A tier left
    # out still gets its attempts, once the decision names it.
    state.speculate = None if speculate is None else frozenset(speculate)
    try:
        with lone_errors():
            async with trio.open_nursery() as nursery:
                state.nursery = nursery
                try:
                    winner = await state.run(decide)
                    if winner is not None:
                        yield winner
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        state.close()
    if state.failure is not None:
        raise state.failure from ExceptionGroup(str(state.failure), state.failure.errors)

