"""Whole answers tried in turn, under trio's MockClock: exact virtual times, and the
same records and errors as the race gives for the same upstreams."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from tlproxy.engine import _single
from tlproxy.errors import UpstreamError
from tlproxy.race import AttemptRecord, Candidate, RaceFailed, race
from tlproxy.turns import in_turn

Chunk = dict[str, Any]
# What one candidate does when asked: wait, then answer, fail (retryably or
# not) or hang past any deadline.
Script = tuple[float, str]


def completion(key: str) -> Chunk:
    return {"object": "chat.completion", "model": key,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def caller(scripts: dict[str, Script], asked: list[tuple[float, str]] | None = None
           ) -> Callable[[Candidate], Awaitable[Chunk]]:
    async def call(candidate: Candidate) -> Chunk:
        if asked is not None:
            asked.append((trio.current_time(), candidate.key))
        delay, result = scripts[candidate.key]
        await trio.sleep(delay)
        if result == "answer":
            return completion(candidate.key)
        if result == "fail":
            raise UpstreamError(f"{candidate.key} is overloaded", status=503)
        if result == "refuse":
            raise UpstreamError("context too long", status=400, retryable=False)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    return call


def ranked(*keys: str, total: float | None = 10.0) -> list[Candidate]:
    return [Candidate(key, "economy", math.inf, answer_deadline=total) for key in keys]


def summary(records: list[AttemptRecord]) -> list[tuple[Any, ...]]:
    return [(r.candidate.key, r.outcome, r.started_at, r.ended_at, r.first_token_at,
             r.fallback, r.hedge, r.chunks, r.usage, r.whole, r.first_token_kind,
             r.longest_gaps,
             None if r.error is None else (type(r.error), getattr(r.error, "code", None),
                                           getattr(r.error, "status", None), str(r.error)))
            for r in records]


@pytest.mark.parametrize(("scripts", "max_attempts", "winner", "outcomes", "ends"), [
    # The best answers: one attempt, no fallback.
    ({"a": (1.0, "answer"), "b": (0.5, "answer")}, 4, "a", ["won"], [1.0]),
    # A failure hands over at once; the next answers a second later.
    ({"a": (2.0, "fail"), "b": (1.0, "answer")}, 4, "b", ["failed", "won"], [2.0, 3.0]),
    # A hang is cut at the answer deadline (10 s), then the next is asked.
    ({"a": (0.0, "hang"), "b": (1.0, "answer")}, 4, "b", ["deadline", "won"], [10.0, 11.0]),
    # So is an answer that would come too late.
    ({"a": (12.0, "answer"), "b": (1.0, "answer")}, 4, "b", ["deadline", "won"], [10.0, 11.0]),
])
async def test_attempts_follow_one_another_until_one_answers(
        autojump_clock: MockClock, scripts: dict[str, Script], max_attempts: int, winner: str,
        outcomes: list[str], ends: list[float]) -> None:
    records: list[AttemptRecord] = []
    asked: list[tuple[float, str]] = []
    won = await in_turn(tier="economy", candidates=ranked(*scripts), call=caller(scripts, asked),
                        max_attempts=max_attempts, on_record=records.append)
    assert won.candidate.key == winner
    assert won.first_chunks == [completion(winner)]
    assert won.records == records
    assert [r.outcome for r in records] == outcomes
    assert [r.ended_at for r in records] == ends
    # Each attempt starts when the one before it ended.
    assert [t for t, _ in asked] == [0.0, *ends[:-1]]
    assert [r.fallback for r in records] == [False] + [True] * (len(records) - 1)
    last = records[-1]
    assert last.first_token_at == last.ended_at and last.first_token_kind == "answer"
    assert last.usage == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert last.whole and last.chunks == 1
    # Nothing follows a whole answer.
    assert [c async for c in won.chunks] == []


async def test_a_missed_deadline_says_which_and_when(autojump_clock: MockClock) -> None:
    records: list[AttemptRecord] = []
    with pytest.raises(RaceFailed) as caught:
        await in_turn(tier="economy", candidates=ranked("a", total=2.5),
                      call=caller({"a": (0.0, "hang")}), max_attempts=4,
                      on_record=records.append)
    [record] = records
    assert (record.outcome, record.ended_at) == ("deadline", 2.5)
    error = caught.value.first_error()
    assert isinstance(error, UpstreamError)
    assert (error.status, error.code) == (504, "total_timeout")
    assert error.message == "a did not complete its answer within 2.5 s."


async def test_a_request_the_upstream_refuses_is_not_tried_elsewhere(
        autojump_clock: MockClock) -> None:
    records: list[AttemptRecord] = []
    with pytest.raises(RaceFailed) as caught:
        await in_turn(tier="economy", candidates=ranked("a", "b"),
                      call=caller({"a": (1.0, "refuse"), "b": (1.0, "answer")}),
                      max_attempts=4, on_record=records.append)
    assert [(r.candidate.key, r.outcome) for r in records] == [("a", "failed")]
    error = caught.value.first_error()
    assert isinstance(error, UpstreamError) and error.status == 400


async def test_no_more_than_max_attempts_are_started(autojump_clock: MockClock) -> None:
    records: list[AttemptRecord] = []
    scripts = {key: (1.0, "fail") for key in "abc"}
    with pytest.raises(RaceFailed) as caught:
        await in_turn(tier="economy", candidates=ranked(*scripts), call=caller(scripts),
                      max_attempts=2, on_record=records.append)
    assert [r.candidate.key for r in records] == ["a", "b"]
    assert str(caught.value) == "all 2 attempt(s) in tier 'economy' failed before a first token"
    assert isinstance(caught.value.__cause__, ExceptionGroup)


async def test_a_tier_with_no_candidate_is_a_503(autojump_clock: MockClock) -> None:
    with pytest.raises(RaceFailed) as caught:
        await in_turn(tier="premium", candidates=[], call=caller({}), max_attempts=4)
    error = caught.value.first_error()
    assert isinstance(error, UpstreamError)
    assert (error.status, error.code) == (503, "no_eligible_model")


async def test_a_caller_that_leaves_cancels_the_attempt_and_records_it(
        autojump_clock: MockClock) -> None:
    records: list[AttemptRecord] = []
    with trio.move_on_after(3.0):
        await in_turn(tier="economy", candidates=ranked("a", "b"),
                      call=caller({"a": (1.0, "fail"), "b": (5.0, "answer")}),
                      max_attempts=4, on_record=records.append)
    assert [(r.candidate.key, r.outcome, r.ended_at) for r in records] == [
        ("a", "failed", 1.0), ("b", "cancelled", 3.0)]


# -- the same upstreams through the race ------------------------------------


async def _through_race(scripts: dict[str, Script], candidates: list[Candidate],
                        max_attempts: int) -> tuple[str | None, list[AttemptRecord]]:
    call = caller(scripts)
    records: list[AttemptRecord] = []

    @contextlib.asynccontextmanager
    async def open_stream(candidate: Candidate) -> AsyncIterator[AsyncIterator[Chunk]]:
        yield _single(await call(candidate))

    try:
        async with race(candidates={"economy": candidates}, decide="economy",
                        open_stream=open_stream, first_token_kind=lambda _: "answer",
                        max_attempts=max_attempts, on_record=records.append) as winner:
            return winner.candidate.key, records
    except RaceFailed:
        return None, records


async def _in_turn(scripts: dict[str, Script], candidates: list[Candidate],
                   max_attempts: int) -> tuple[str | None, list[AttemptRecord]]:
    records: list[AttemptRecord] = []
    try:
        won = await in_turn(tier="economy", candidates=candidates, call=caller(scripts),
                            max_attempts=max_attempts, on_record=records.append)
    except RaceFailed:
        return None, records
    return won.candidate.key, records


_SCRIPTS = st.lists(
    st.tuples(st.sampled_from([0.0, 0.5, 1.0, 3.0, 12.0]),
              st.sampled_from(["answer", "fail", "refuse", "hang"])),
    min_size=0, max_size=5)


@settings(max_examples=150, deadline=None)
@given(_SCRIPTS, st.integers(min_value=1, max_value=5),
       st.sampled_from([None, 2.0, 10.0]))
def test_in_turn_keeps_the_race_s_records_for_whole_answers(
        steps: list[Script], max_attempts: int, total: float | None) -> None:
    # Without a deadline a hang would wait forever in both: give it an end.
    steps = [(d, "fail" if r == "hang" and total is None else r) for d, r in steps]
    scripts = {f"m{i}": step for i, step in enumerate(steps)}
    candidates = ranked(*scripts, total=total)
    raced = trio.run(_through_race, scripts, candidates, max_attempts,
                     clock=MockClock(autojump_threshold=0))
    turned = trio.run(_in_turn, scripts, candidates, max_attempts,
                      clock=MockClock(autojump_threshold=0))
    assert turned[0] == raced[0]
    assert summary(turned[1]) == summary(raced[1])
