"""Whole answers tried in turn: the race's rules without its machinery.

A non-streamed answer arrives whole, so its first token is its last, and it
is never hedged (its duration grows with the answer's length; see
`Engine._candidate`). Once its tier is decided, its attempts can only follow
one another: the next starts when the last one failed. `race` would run them
just the same, but with a nursery, a task per attempt and a channel for one
chunk: measured in-process (`python -m bench.machinery`), about 190 us of CPU
per request where trying the candidates here costs about 17 and the bare
call 13. So a JSON request whose tier is known at once is answered here,
under the same rules and with the same records and errors as the race:

* each attempt is bounded by its candidate's `answer_deadline` (a missed one
  is ``total_timeout``, outcome ``deadline``); any other exception fails it
  (outcome ``failed``) and the next candidate is tried (``fallback``);
* a non-retryable error (``retryable=False``) stops the tier, and at most
  `max_attempts` are started;
* every attempt started yields exactly one `AttemptRecord` to `on_record`,
  the one cut short by the caller leaving included (``cancelled``);
* when nothing answers, `RaceFailed` carries every error.

Time is read only through `trio.current_time`, so `MockClock` drives it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

import trio

from .attempts import (
    AttemptRecord,
    Candidate,
    Chunk,
    RaceFailed,
    Winner,
    WinnerChunks,
    deadline_error,
)

__all__ = ["in_turn"]


async def in_turn(
    *,
    tier: str,
    candidates: Sequence[Candidate],
    call: Callable[[Candidate], Awaitable[Chunk]],
    max_attempts: int,
    on_record: Callable[[AttemptRecord], None] | None = None,
) -> Winner:
    """Ask `candidates` (of the decided `tier`, best first) one after another for a
    whole answer; return the `Winner` whose one chunk is that answer.

    Raises `RaceFailed` when none answered.
    """
    records: list[AttemptRecord] = []
    for candidate in candidates[:max(0, max_attempts)]:
        started = trio.current_time()
        record = AttemptRecord(
            candidate=candidate, started_at=started, ended_at=None, first_token_at=None,
            outcome="running", hedge=False, fallback=bool(records), error=None, chunks=0,
            usage=None)
        records.append(record)
        whole = candidate.answer_deadline
        error: Exception | None = None
        try:
            with trio.move_on_at(math.inf if whole is None else started + whole) as scope:
                answer = await call(candidate)
        except Exception as exc:
            error = exc
        except BaseException:
            record.outcome, record.ended_at = "cancelled", trio.current_time()
            _report(on_record, record)
            raise
        record.ended_at = trio.current_time()
        if error is None and scope.cancelled_caught:
            error = deadline_error(candidate, "total_timeout")
            record.outcome = "deadline"
        elif error is not None:
            record.outcome = "failed"
        if error is not None:
            record.error = error
            _report(on_record, record)
            if getattr(error, "retryable", True) is False:
                break
            continue
        record.first_token_at = record.ended_at
        record.first_token_kind = "answer"
        record.outcome, record.chunks, record.whole = "won", 1, True
        record.longest_gaps = {}
        usage = answer.get("usage")
        if usage is not None:
            record.usage = usage
        _report(on_record, record)
        return Winner(candidate=candidate, first_chunks=[answer], chunks=WinnerChunks(None),
                      records=records)
    failed = RaceFailed.in_tier(tier, records)
    raise failed from ExceptionGroup(str(failed), failed.errors)


def _report(on_record: Callable[[AttemptRecord], None] | None, record: AttemptRecord) -> None:
    if on_record is not None:
        on_record(record)
