"""The stall deadline between chunks, under trio's MockClock: exact virtual times.

After the first token, an attempt that sends nothing for longer than its
candidate's stall deadline has failed (``stall_timeout``); the deadline of the
phase it is in applies (reasoning pauses longer), and time its consumer spends
not reading is not the upstream's silence.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from trio.testing import MockClock

from tests.unit.test_race import Step, Upstream, finish, role, text, usage
from tlproxy.errors import UpstreamError
from tlproxy.race import AttemptRecord, Candidate, race
from tlproxy.shapes import token_kind
from tlproxy.stats import STALL_CEILING, STALL_DEFAULT, STALL_FLOOR, ModelStats


def thought(key: str, content: str) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "model": key,
            "choices": [{"index": 0, "delta": {"reasoning_content": content}}]}


def words(key: str, count: int, *, every: float) -> list[Step]:
    """`count` words, `every` seconds apart (the first one at once)."""
    steps: list[Step] = []
    for n in range(count):
        if n:
            steps.append(("sleep", every))
        steps.append(("chunk", text(key, f" w{n}")))
    return steps


def stalled(key: str) -> list[Step]:
    """A first token at 0.5 s, four more words 0.1 s apart, then silence."""
    return [("chunk", role(key)), ("sleep", 0.5), *words(key, 5, every=0.1),
            ("sleep", 3600.0), ("chunk", finish(key))]


async def consume(candidate: Candidate, steps: list[Step], *, pause: float = 0.0,
                  buffer_limit: int = 256) -> tuple[list[tuple[float, Any]], AttemptRecord]:
    """Race one candidate; read its stream (after `pause`), noting when each item came."""
    upstream = Upstream({candidate.key: steps})
    seen: list[tuple[float, Any]] = []
    records: list[AttemptRecord] = []
    async with race(candidates={candidate.tier: [candidate]}, decide=candidate.tier,
                    open_stream=upstream.open, first_token_kind=token_kind,
                    buffer_limit=buffer_limit, on_record=records.append) as winner:
        await trio.sleep(pause)
        try:
            async for chunk in winner.chunks:
                seen.append((trio.current_time(), chunk))
        except UpstreamError as exc:
            seen.append((trio.current_time(), exc))
    [record] = records
    return seen, record


async def test_a_stall_after_five_tokens_fails_at_the_deadline(
        autojump_clock: MockClock) -> None:
    candidate = Candidate("p1", "premium", 10.0, stall_deadline=2.0)
    seen, record = await consume(candidate, stalled("p1"))
    # Last word at 0.5 + 4 x 0.1 = 0.9 s; the deadline two seconds later.
    when, error = seen[-1]
    assert isinstance(error, UpstreamError)
    assert when == pytest.approx(2.9)
    assert (error.code, error.status) == ("stall_timeout", 504)
    assert "nothing for 2 s" in error.message
    assert record.outcome == "won" and record.error is error
    assert record.longest_gaps is None  # a stream that did not end whole measures nothing


async def test_without_a_stall_deadline_only_the_stream_itself_ends_the_wait(
        autojump_clock: MockClock) -> None:
    seen, record = await consume(Candidate("p1", "premium", 10.0), stalled("p1"))
    assert seen[-1][0] == pytest.approx(3600.9)
    assert record.error is None


async def test_a_steady_stream_never_trips_the_deadline_and_reports_its_longest_gap(
        autojump_clock: MockClock) -> None:
    steps = [("chunk", role("p1")), ("sleep", 0.5), *words("p1", 20, every=1.5),
             ("chunk", finish("p1")), ("chunk", usage("p1"))]
    seen, record = await consume(Candidate("p1", "premium", 10.0, stall_deadline=2.0), steps)
    assert not any(isinstance(item, Exception) for _, item in seen)
    assert record.longest_gaps == pytest.approx({"answer": 1.5})


async def test_a_consumer_that_does_not_read_is_not_the_upstream_stalling(
        autojump_clock: MockClock) -> None:
    # Two chunks of room; the reader starts 30 s late; the upstream waits on it.
    steps = [("chunk", role("p1")), ("sleep", 0.5), *words("p1", 10, every=0.1),
             ("chunk", finish("p1")), ("chunk", usage("p1"))]
    seen, record = await consume(Candidate("p1", "premium", 10.0, stall_deadline=2.0), steps,
                                 pause=30.0, buffer_limit=3)
    assert not any(isinstance(item, Exception) for _, item in seen)
    assert seen[0][0] == 30.5
    assert record.error is None
    # The wait for the reader is not a gap of the upstream's.
    assert record.longest_gaps == pytest.approx({"answer": 0.1})


async def test_a_pause_while_reasoning_has_the_reasoning_deadline(
        autojump_clock: MockClock) -> None:
    candidate = Candidate("r1", "premium", 10.0, stall_deadline=2.0,
                          reasoning_stall_deadline=10.0)
    steps: list[Step] = [
        ("chunk", role("r1")), ("sleep", 0.5), ("chunk", thought("r1", "Let")),
        ("sleep", 8.0), ("chunk", thought("r1", " me")),  # 8 s of thought: allowed
        ("sleep", 6.0), ("chunk", text("r1", "Yes")),  # 6 s to the answer: still thinking
        ("sleep", 3.0), ("chunk", text("r1", " no")),  # 3 s mid-answer: a stall at 2
    ]
    seen, _ = await consume(candidate, steps)
    when, error = seen[-1]
    assert isinstance(error, UpstreamError) and error.code == "stall_timeout"
    assert when == pytest.approx(0.5 + 8.0 + 6.0 + 2.0)


async def test_whole_streams_report_their_longest_gap_per_phase(
        autojump_clock: MockClock) -> None:
    steps: list[Step] = [
        ("chunk", role("r1")), ("sleep", 0.5), ("chunk", thought("r1", "Let")),
        ("sleep", 4.0), ("chunk", thought("r1", " me")), ("sleep", 1.0),
        ("chunk", text("r1", "Yes")), ("sleep", 0.25), ("chunk", text("r1", " sir")),
        ("chunk", finish("r1")), ("chunk", usage("r1")),
    ]
    _, record = await consume(Candidate("r1", "premium", 10.0), steps)
    # The gap up to the first answer word was spent thinking: a reasoning gap.
    assert record.longest_gaps == pytest.approx({"reasoning": 4.0, "answer": 0.25})


# -- the deadline derived from live statistics ------------------------------


@pytest.mark.parametrize(("gaps", "expected"), [
    ([], STALL_DEFAULT),
    ([0.05] * 19, STALL_DEFAULT),  # not enough streams yet
    ([0.05] * 20, STALL_FLOOR),  # a fast model: never under the floor
    ([3.0] * 99 + [20.0], 3.0),  # p99 of 100 streams: the 99th longest
    ([3.0] * 98 + [20.0, 20.0], 20.0),
    ([90.0] * 30, STALL_CEILING),  # a slow model: never over the ceiling
])
def test_the_stall_deadline_is_a_high_quantile_of_longest_gaps(
        gaps: list[float], expected: float) -> None:
    stats = ModelStats()
    for gap in gaps:
        stats.record_gaps({"answer": gap})
    assert stats.stall_deadline("answer") == expected
    assert stats.gap_samples("answer") == len(gaps)


def test_each_phase_has_its_own_statistics() -> None:
    stats = ModelStats()
    for _ in range(20):
        stats.record_gaps({"answer": 0.1, "reasoning": 12.0})
    assert stats.stall_deadline("answer") == STALL_FLOOR
    assert stats.stall_deadline("reasoning") == 12.0
