"""The first-token race, driven by scripted upstreams under trio's MockClock.

Like trio's happy-eyeballs tests: a fake `open_stream` replays one script per
candidate and notes when each stream was opened and how it ended; every test
asserts exact virtual times (`autojump_clock` jumps straight to the next
deadline, so a test of seconds of virtual time runs in milliseconds).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from tlproxy.errors import UpstreamError
from tlproxy.race import (
    AttemptRecord,
    Candidate,
    RaceFailed,
    StreamFailure,
    Winner,
    WinnerChunks,
    race,
)
from tlproxy.shapes import token_kind

Chunk = dict[str, Any]
Step = tuple[str, Any]


# -- chunks ---------------------------------------------------------------


def role(key: str) -> Chunk:
    return {"object": "chat.completion.chunk", "model": key,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}


def text(key: str, content: str) -> Chunk:
    return {"object": "chat.completion.chunk", "model": key,
            "choices": [{"index": 0, "delta": {"content": content}}]}


def finish(key: str) -> Chunk:
    return {"object": "chat.completion.chunk", "model": key,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


def usage(key: str, prompt: int = 10, completion: int = 2) -> Chunk:
    return {"object": "chat.completion.chunk", "model": key, "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}


def answer(key: str, ttft: float, *, tail: float = 0.0, words: Sequence[str] = ("Hi",)
           ) -> list[Step]:
    """A role chunk at once, the first word after `ttft`, the rest after `tail`."""
    steps: list[Step] = [("chunk", role(key)), ("sleep", ttft), ("chunk", text(key, words[0]))]
    if tail:
        steps.append(("sleep", tail))
    steps += [("chunk", text(key, w)) for w in words[1:]]
    return [*steps, ("chunk", finish(key)), ("chunk", usage(key))]


def failing(delay: float, error: Exception) -> list[Step]:
    return [("sleep", delay), ("raise", error)]


def rate_limited() -> UpstreamError:
    return UpstreamError("Rate limit reached.", status=429, upstream_status=429)


def unavailable() -> UpstreamError:
    return UpstreamError("Overloaded.", status=503, upstream_status=529)


# -- the fake upstream ------------------------------------------------------


class Replay:
    def __init__(self, upstream: Upstream, key: str, steps: list[Step]) -> None:
        self.upstream, self.key, self.steps = upstream, key, steps

    def __aiter__(self) -> Replay:
        return self

    async def __anext__(self) -> Chunk:
        while self.steps:
            kind, arg = self.steps.pop(0)
            if kind == "sleep":
                await trio.sleep(arg)
            elif kind == "raise":
                raise arg
            else:
                self.upstream.sent[self.key].append(trio.current_time())
                return dict(arg)
        raise StopAsyncIteration


class Upstream:
    """Scripts per candidate key; notes when each stream opened and how it ended.

    A script starting with ``("refuse", (delay, error))`` fails in
    `open_stream` itself, before any iterator exists.
    """

    def __init__(self, scripts: Mapping[str, list[Step]]) -> None:
        self.scripts = scripts
        self.opened: dict[str, float] = {}
        self.ended: dict[str, tuple[float, str]] = {}
        self.sent: dict[str, list[float]] = {}

    @contextlib.asynccontextmanager
    async def open(self, candidate: Candidate) -> AsyncIterator[Replay]:
        key = candidate.key
        assert key not in self.opened, f"{key} opened twice"
        self.opened[key] = trio.current_time()
        self.sent[key] = []
        steps = list(self.scripts[key])
        try:
            if steps and steps[0][0] == "refuse":
                delay, error = steps.pop(0)[1]
                await trio.sleep(delay)
                raise error
            yield Replay(self, key, steps)
        except trio.Cancelled:
            self.ended[key] = (trio.current_time(), "cancelled")
            raise
        except BaseException as exc:
            self.ended[key] = (trio.current_time(), type(exc).__name__)
            raise
        else:
            self.ended[key] = (trio.current_time(), "closed")


def tiers(hedge_delay: float = 10.0, deadline: float | None = None,
          **ranked: Sequence[str]) -> dict[str, list[Candidate]]:
    return {tier: [Candidate(key, tier, hedge_delay, deadline) for key in keys]
            for tier, keys in ranked.items()}


def after(delay: float, tier: str) -> Callable[[], Awaitable[str]]:
    async def decide() -> str:
        await trio.sleep(delay)
        return tier
    return decide


class Result:
    def __init__(self) -> None:
        self.won_at: float | None = None
        self.winner: Winner | None = None
        self.chunks: list[Chunk] = []
        self.done_at: float | None = None
        self.reported: list[AttemptRecord] = []

    def record(self, key: str) -> AttemptRecord:
        [record] = [r for r in self.reported if r.candidate.key == key]
        return record

    def records(self) -> list[AttemptRecord]:
        """Every attempt, in start order, as the winner holds them."""
        assert self.winner is not None
        return self.winner.records

    def outcomes(self) -> dict[str, str]:
        return {r.candidate.key: r.outcome for r in self.reported}


async def run(upstream: Upstream, candidates: Mapping[str, Sequence[Candidate]],
              decide: Callable[[], Awaitable[str]] | str, **options: Any) -> Result:
    """Race, stream the whole winner, and note when things happened."""
    result = Result()
    options.setdefault("first_token_kind", token_kind)
    async with race(candidates=candidates, decide=decide, open_stream=upstream.open,
                    on_record=result.reported.append, **options) as winner:
        result.won_at = trio.current_time()
        result.winner = winner
        result.chunks = list(winner.first_chunks)
        result.chunks += [chunk async for chunk in winner.chunks]
        result.done_at = trio.current_time()
    return result


def models(chunks: list[Chunk]) -> set[str]:
    return {chunk["model"] for chunk in chunks}


# -- speculation and the decision -------------------------------------------


@pytest.mark.parametrize(("decision", "won_at"), [(0.5, 0.5), (0.1, 0.3)])
async def test_ttft_is_max_of_decision_and_upstream_not_sum(
    autojump_clock: MockClock, decision: float, won_at: float
) -> None:
    upstream = Upstream({"p1": answer("p1", 0.3), "e1": answer("e1", 0.2)})
    result = await run(upstream, tiers(premium=["p1"], economy=["e1"]),
                       after(decision, "premium"))
    assert result.won_at == won_at
    assert upstream.opened == {"p1": 0, "e1": 0}
    assert result.winner is not None and result.winner.candidate.key == "p1"
    assert result.record("p1").first_token_at == 0.3
    assert result.outcomes() == {"p1": "won", "e1": "outside-tier"}


async def test_candidate_outside_decided_tier_is_cancelled_and_never_reaches_client(
    autojump_clock: MockClock,
) -> None:
    upstream = Upstream({
        "p1": answer("p1", 0.4, tail=0.1, words=["a", "b"]),
        # Economy is faster and mid-answer when the decision lands.
        "e1": answer("e1", 0.1, tail=5.0, words=["x", "y"]),
    })
    result = await run(upstream, tiers(premium=["p1"], economy=["e1"]),
                       after(0.2, "premium"))
    assert upstream.ended["e1"] == (0.2, "cancelled")
    e1 = result.record("e1")
    assert (e1.outcome, e1.first_token_at, e1.ended_at) == ("outside-tier", 0.1, 0.2)
    assert result.won_at == 0.4
    assert models(result.chunks) == {"p1"}
    assert [c["choices"][0]["delta"].get("content") for c in result.chunks[:3]] == ["", "a", "b"]


async def test_decided_string_skips_speculation(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": answer("p1", 0.05), "e1": answer("e1", 0.2)})
    result = await run(upstream, tiers(premium=["p1"], economy=["e1"]), "economy")
    assert upstream.opened == {"e1": 0}
    assert result.won_at == 0.2
    assert result.outcomes() == {"e1": "won"}


async def test_decision_for_tier_with_no_running_attempt_starts_its_best(
    autojump_clock: MockClock,
) -> None:
    upstream = Upstream({"p1": answer("p1", 1.0), "e1": answer("e1", 0.3),
                         "e2": answer("e2", 0.1)})
    result = await run(upstream, tiers(premium=["p1"], economy=["e1", "e2"]),
                       after(0.4, "economy"), fanout=1)
    assert upstream.opened == {"p1": 0, "e1": 0.4}
    assert result.won_at == 0.4 + 0.3
    e1 = result.record("e1")
    assert (e1.hedge, e1.fallback) == (False, False)
    assert result.outcomes() == {"p1": "outside-tier", "e1": "won"}


async def test_fanout_bounds_speculative_attempts(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": answer("p1", 5.0), "p2": answer("p2", 0.2),
                         "e1": answer("e1", 5.0), "e2": answer("e2", 0.1)})
    # Both tiers' hedges fall due at 0.1, but two attempts already run.
    result = await run(upstream, tiers(0.1, premium=["p1", "p2"], economy=["e1", "e2"]),
                       after(0.5, "premium"), fanout=2)
    assert upstream.opened == {"p1": 0, "e1": 0, "p2": 0.5}
    assert result.record("p2").hedge
    assert result.won_at == 0.5 + 0.2
    assert result.outcomes() == {"p1": "lost", "e1": "outside-tier", "p2": "won"}


async def test_speculation_round_robins_tiers_by_rank(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": failing(0.1, unavailable()), "p2": answer("p2", 0.3),
                         "e1": answer("e1", 2.0), "e2": answer("e2", 0.1)})
    result = await run(upstream, tiers(premium=["p1", "p2"], economy=["e1", "e2"]),
                       after(1.0, "premium"), fanout=3)
    # Rank 0 of each tier first; a third slot does not buy rank 1 speculatively,
    # but p1's failure is replaced at once.
    assert upstream.opened == {"p1": 0, "e1": 0, "p2": 0.1}
    assert result.won_at == 1.0
    assert result.record("p2").fallback


async def test_speculation_keeps_an_attempt_for_the_decided_tier(
    autojump_clock: MockClock,
) -> None:
    upstream = Upstream({"e1": failing(0.1, unavailable()), "e2": failing(0.1, unavailable()),
                         "e3": answer("e3", 0.1), "p1": failing(0.3, unavailable()),
                         "p2": answer("p2", 0.2)})
    result = await run(upstream, tiers(premium=["p1", "p2"], economy=["e1", "e2", "e3"]),
                       after(0.5, "premium"), max_attempts=4)
    # e3 would be the 4th attempt: speculation must not spend the last one.
    assert upstream.opened == {"e1": 0, "p1": 0, "e2": 0.1, "p2": 0.5}
    assert result.won_at == 0.5 + 0.2


async def test_earliest_buffered_first_token_wins_when_decision_lands(
    autojump_clock: MockClock,
) -> None:
    upstream = Upstream({"p1": answer("p1", 0.35, tail=1.0), "p2": answer("p2", 0.1)})
    result = await run(upstream, tiers(0.2, premium=["p1", "p2"]), after(1.0, "premium"))
    assert upstream.opened == {"p1": 0, "p2": 0.2}
    assert result.won_at == 1.0
    assert result.winner is not None and result.winner.candidate.key == "p2"
    assert upstream.ended["p1"] == (1.0, "cancelled")
    assert result.outcomes() == {"p1": "lost", "p2": "won"}


async def test_decision_for_unknown_tier_fails_with_503(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": answer("p1", 0.1)})
    with pytest.raises(RaceFailed) as info:
        await run(upstream, tiers(premium=["p1"]), after(0.2, "economy"))
    assert trio.current_time() == 0.2
    error = info.value.first_error()
    assert isinstance(error, UpstreamError) and error.status == 503
    assert [r.outcome for r in info.value.records] == ["outside-tier"]


async def test_decision_error_leaves_unwrapped_and_cancels_attempts(
    autojump_clock: MockClock,
) -> None:
    async def decide() -> str:
        await trio.sleep(0.3)
        raise LookupError("budget store down")

    upstream = Upstream({"p1": answer("p1", 1.0), "e1": answer("e1", 1.0)})
    with pytest.raises(LookupError):
        await run(upstream, tiers(premium=["p1"], economy=["e1"]), decide)
    assert upstream.ended == {"p1": (0.3, "cancelled"), "e1": (0.3, "cancelled")}


# -- first tokens, hedging, fallback -----------------------------------------


async def test_role_only_chunk_is_not_a_first_token(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": answer("p1", 1.0), "p2": answer("p2", 0.1)})
    result = await run(upstream, tiers(0.5, premium=["p1", "p2"]), "premium")
    # p1 sent its role chunk at 0; that did not stop the hedge at 0.5.
    assert upstream.sent["p1"] == [0]
    assert upstream.opened == {"p1": 0, "p2": 0.5}
    assert result.won_at == 0.6
    assert result.winner is not None
    assert [c["choices"][0]["delta"] for c in result.winner.first_chunks] == [
        {"role": "assistant", "content": ""}, {"content": "Hi"}]


async def test_second_candidate_wins_when_first_is_slow(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": answer("p1", 5.0), "p2": answer("p2", 0.1)})
    result = await run(upstream, tiers(0.5, premium=["p1", "p2"]), "premium")
    assert upstream.opened == {"p1": 0, "p2": 0.5}
    assert result.won_at == 0.6
    assert upstream.ended["p1"] == (0.6, "cancelled")
    p1 = result.record("p1")
    assert (p1.outcome, p1.ended_at, p1.first_token_at) == ("lost", 0.6, None)


async def test_hedge_not_started_when_first_token_is_early(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": answer("p1", 0.2, tail=3.0, words=["a", "b"]),
                         "p2": answer("p2", 0.1)})
    result = await run(upstream, tiers(0.5, premium=["p1", "p2"]), "premium")
    assert upstream.opened == {"p1": 0}
    assert (result.won_at, result.done_at) == (0.2, 3.2)


async def test_hedge_started_after_delay(autojump_clock: MockClock) -> None:
    # Staggered like happy eyeballs, each attempt with its own delay.
    candidates = {"premium": [Candidate("p1", "premium", 0.5), Candidate("p2", "premium", 0.25),
                              Candidate("p3", "premium", 0.25)]}
    upstream = Upstream({"p1": answer("p1", 2.0), "p2": answer("p2", 1.0),
                         "p3": answer("p3", 3.0)})
    result = await run(upstream, candidates, "premium")
    assert upstream.opened == {"p1": 0, "p2": 0.5, "p3": 0.75}
    assert result.won_at == 1.5
    assert [(r.candidate.key, r.hedge, r.fallback) for r in result.records()] == [
        ("p1", False, False), ("p2", True, False), ("p3", True, False)]
    assert result.outcomes() == {"p1": "lost", "p2": "won", "p3": "lost"}


async def test_hedging_off_waits_for_the_first(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": answer("p1", 3.0), "p2": answer("p2", 0.1)})
    result = await run(upstream, tiers(0.5, premium=["p1", "p2"]), "premium", hedge=False)
    assert upstream.opened == {"p1": 0}
    assert result.won_at == 3.0


async def test_fallback_after_429_before_first_token(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": [("refuse", (0.05, rate_limited()))], "p2": answer("p2", 0.2)})
    result = await run(upstream, tiers(premium=["p1", "p2"]), "premium", hedge=False)
    assert upstream.opened == {"p1": 0, "p2": 0.05}
    assert upstream.ended["p1"] == (0.05, "UpstreamError")
    assert result.won_at == 0.25
    p1, p2 = result.record("p1"), result.record("p2")
    assert (p1.outcome, p1.ended_at, p1.chunks) == ("failed", 0.05, 0)
    assert isinstance(p1.error, UpstreamError) and p1.error.status == 429
    assert (p2.fallback, p2.hedge) == (True, False)


async def test_failure_expedites_the_next_hedge(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": failing(0.1, unavailable()), "p2": failing(0.2, unavailable()),
                         "p3": answer("p3", 2.0), "p4": answer("p4", 0.25)})
    result = await run(upstream, tiers(0.25, premium=["p1", "p2", "p3", "p4"]), "premium")
    # The shape of trio's test_custom_errors_expedite.
    assert upstream.opened == {"p1": 0, "p2": 0.1, "p3": 0.1 + 0.2, "p4": 0.1 + 0.2 + 0.25}
    assert result.won_at == 0.1 + 0.2 + 0.25 + 0.25
    assert [r.fallback for r in result.records()] == [False, True, True, False]


async def test_first_token_deadline_replaces_stalled_candidate(
    autojump_clock: MockClock,
) -> None:
    upstream = Upstream({"p1": answer("p1", 100.0), "p2": answer("p2", 0.3)})
    result = await run(upstream, tiers(math.inf, 1.0, premium=["p1", "p2"]), "premium")
    assert upstream.opened == {"p1": 0, "p2": 1.0}
    assert upstream.ended["p1"] == (1.0, "cancelled")
    assert result.won_at == 1.3
    p1 = result.record("p1")
    assert (p1.outcome, p1.ended_at) == ("deadline", 1.0)
    assert isinstance(p1.error, UpstreamError) and p1.error.status == 504
    assert result.record("p2").fallback


async def test_max_attempts_bounds_fallbacks(autojump_clock: MockClock) -> None:
    keys = ["p1", "p2", "p3", "p4", "p5"]
    upstream = Upstream({key: failing(0.1, unavailable()) for key in keys})
    with pytest.raises(RaceFailed) as info:
        await run(upstream, tiers(premium=keys), "premium", max_attempts=3)
    assert trio.current_time() == 0.1 + 0.1 + 0.1
    assert list(upstream.opened) == ["p1", "p2", "p3"]
    assert len(info.value.errors) == 3


async def test_non_retryable_error_stops_fallback_in_its_tier(
    autojump_clock: MockClock,
) -> None:
    bad = UpstreamError("Invalid 'temperature'.", status=400, retryable=False,
                        type="invalid_request_error")
    upstream = Upstream({"p1": failing(1.5, unavailable()), "p2": failing(0.05, bad),
                         "p3": answer("p3", 0.1)})
    with pytest.raises(RaceFailed) as info:
        await run(upstream, tiers(0.1, premium=["p1", "p2", "p3"]), "premium")
    # p1 is still waited for (another model may accept), p3 is never tried.
    assert upstream.opened == {"p1": 0, "p2": 0.1}
    assert trio.current_time() == 1.5
    # The client sees the error about its request, not p1's later 503.
    assert info.value.first_error() is bad


async def test_all_candidates_fail_gives_one_openai_error(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": failing(0.1, rate_limited()), "p2": failing(0.2, unavailable()),
                         "e1": failing(0.05, unavailable())})
    with pytest.raises(RaceFailed) as info:
        await run(upstream, tiers(premium=["p1", "p2"], economy=["e1"]), after(0.15, "premium"))
    assert trio.current_time() == 0.1 + 0.2
    failed = info.value
    # In start order: p1, e1, p2.
    assert [getattr(e, "status", None) for e in failed.errors] == [429, 503, 503]
    error = failed.first_error()
    assert isinstance(error, UpstreamError) and error.status == 429
    assert error.envelope()["error"]["message"] == "Rate limit reached."
    assert isinstance(failed.__cause__, ExceptionGroup)
    assert failed.__cause__.exceptions == tuple(failed.errors)
    assert [r.outcome for r in failed.records] == ["failed", "failed", "failed"]


async def test_attempt_failing_after_first_token_before_decision_is_replaced(
    autojump_clock: MockClock,
) -> None:
    upstream = Upstream({
        "p1": [("chunk", text("p1", "a")), ("sleep", 0.2), ("raise", unavailable())],
        "p2": answer("p2", 0.3),
    })
    result = await run(upstream, tiers(premium=["p1", "p2"]), after(1.0, "premium"))
    assert upstream.opened == {"p1": 0, "p2": 0.2}
    assert result.won_at == 1.0
    assert models(result.chunks) == {"p2"}
    assert result.outcomes() == {"p1": "failed", "p2": "won"}


# -- after the first token ----------------------------------------------------


async def test_winner_stream_end_is_clean(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": answer("p1", 0.2, tail=0.5, words=["a", "b", "c"])})
    result = await run(upstream, tiers(premium=["p1"]), "premium")
    assert (result.won_at, result.done_at) == (0.2, 0.7)
    assert [c["choices"][0]["delta"].get("content") if c["choices"] else None
            for c in result.chunks] == ["", "a", "b", "c", None, None]
    assert upstream.ended["p1"] == (0.7, "closed")
    p1 = result.record("p1")
    assert (p1.outcome, p1.error, p1.chunks, p1.ended_at) == ("won", None, 6, 0.7)
    assert p1.usage == usage("p1")["usage"]
    assert result.reported == [p1]


async def test_error_event_after_first_token_failure(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": [("chunk", role("p1")), ("sleep", 0.1), ("chunk", text("p1", "a")),
                                ("sleep", 0.2), ("chunk", text("p1", "b")),
                                ("sleep", 0.1), ("raise", unavailable())]})
    seen: list[Chunk] = []
    reported: list[AttemptRecord] = []
    with pytest.raises(UpstreamError) as info:
        async with race(candidates=tiers(premium=["p1"]), decide="premium",
                        open_stream=upstream.open, first_token_kind=token_kind,
                        on_record=reported.append) as winner:
            assert trio.current_time() == 0.1
            async for chunk in winner.chunks:
                seen.append(chunk)
    assert info.value.status == 503
    assert trio.current_time() == 0.1 + 0.2 + 0.1
    assert [c["choices"][0]["delta"]["content"] for c in seen] == ["b"]
    [p1] = reported
    assert (p1.outcome, p1.error, p1.ended_at) == ("won", info.value, 0.1 + 0.2 + 0.1)


async def test_client_disconnect_cancels_every_attempt(autojump_clock: MockClock) -> None:
    # Before a winner: the caller's scope cancels the race and its decision.
    upstream = Upstream({"p1": answer("p1", 1.0), "e1": answer("e1", 0.2, tail=5.0)})
    reported: list[AttemptRecord] = []
    with trio.move_on_after(0.3) as scope:
        async with race(candidates=tiers(premium=["p1"], economy=["e1"]),
                        decide=after(5.0, "premium"), open_stream=upstream.open,
                        first_token_kind=token_kind, on_record=reported.append):
            raise AssertionError("never entered")  # pragma: no cover
    assert scope.cancelled_caught
    assert upstream.ended == {"p1": (0.3, "cancelled"), "e1": (0.3, "cancelled")}
    assert [(r.candidate.key, r.outcome, r.ended_at) for r in reported] == [
        ("p1", "cancelled", 0.3), ("e1", "cancelled", 0.3)]


async def test_client_disconnect_mid_stream_cancels_the_winner_upstream(
    autojump_clock: MockClock,
) -> None:
    # The winner's upstream and a still-running hedge are cut at once.
    upstream = Upstream({"q1": answer("q1", 0.1, tail=10.0, words=["a", "b"]),
                         "q2": answer("q2", 5.0)})
    with trio.move_on_after(1.0) as scope:
        async with race(candidates=tiers(0.05, premium=["q1", "q2"]), decide="premium",
                        open_stream=upstream.open, first_token_kind=token_kind) as winner:
            async for _ in winner.chunks:
                pass  # pragma: no cover
    assert scope.cancelled_caught
    assert upstream.ended == {"q1": (1.0, "cancelled"), "q2": (0.1, "cancelled")}
    assert [(r.outcome, r.ended_at) for r in winner.records] == [("won", 1.0), ("lost", 0.1)]


async def test_caller_exception_leaves_unwrapped(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": answer("p1", 0.1, tail=5.0, words=["a", "b"])})
    with pytest.raises(KeyError):
        async with race(candidates=tiers(premium=["p1"]), decide="premium",
                        open_stream=upstream.open, first_token_kind=token_kind):
            raise KeyError("caller")
    assert upstream.ended == {"p1": (0.1, "cancelled")}


async def test_buffer_is_bounded_before_decision(autojump_clock: MockClock) -> None:
    words = [str(i) for i in range(40)]
    upstream = Upstream({"p1": answer("p1", 0.1, words=words)})
    result = await run(upstream, tiers(premium=["p1"]), after(1.0, "premium"), buffer_limit=8)
    # Up to the decision the attempt held 8 chunks (role, first, 5 queued, 1 in
    # hand) and was waiting, not reading; the rest came when the caller read.
    sent = upstream.sent["p1"]
    assert sent[:8] == [0] + [0.1] * 7
    assert set(sent[8:]) == {1.0}
    assert result.won_at == 1.0
    contents = [c["choices"][0]["delta"].get("content") for c in result.chunks if c["choices"]]
    assert contents == ["", *words, None]
    assert len(result.chunks) == 1 + 40 + 2


async def test_stream_without_a_token_within_the_buffer_limit_fails(
    autojump_clock: MockClock,
) -> None:
    upstream = Upstream({"p1": [("chunk", role("p1"))] * 5, "p2": answer("p2", 0.1)})
    result = await run(upstream, tiers(premium=["p1", "p2"]), "premium", buffer_limit=3)
    assert upstream.opened == {"p1": 0, "p2": 0}
    assert upstream.sent["p1"] == [0, 0, 0]
    assert result.record("p1").outcome == "failed"
    assert result.won_at == 0.1


# -- what counts as a first token ----------------------------------------------

THOUGHT = 1 / 128  # seconds between two thinking deltas (exact in binary)

# A delta of each kind a model may stream before (or instead of) content.
KIND_DELTAS: list[tuple[str, Callable[[int], dict[str, Any]]]] = [
    ("reasoning", lambda i: {"reasoning_content": f"step {i}. "}),  # vLLM, DeepSeek
    ("reasoning", lambda i: {"reasoning": f"step {i}. "}),  # OpenRouter, Groq
    ("refusal", lambda i: {"refusal": f"no {i} "}),
    ("audio", lambda i: {"audio": {"id": "audio_1", "transcript": f"word {i} "}}),
    ("audio", lambda i: {"audio": {"id": "audio_1", "data": "UklGRg=="}}),
    ("tool_calls", lambda i: {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}),
    ("content", lambda i: {"content": f"w{i} "}),
]


def delta(key: str, fields: dict[str, Any]) -> Chunk:
    return {"object": "chat.completion.chunk", "model": key,
            "choices": [{"index": 0, "delta": fields}]}


def thinking(key: str, make: Callable[[int], dict[str, Any]], *, after: float,
             deltas: int) -> list[Step]:
    """A role chunk at once, `deltas` deltas from `after` on, then a word and the end."""
    steps: list[Step] = [("chunk", role(key)), ("sleep", after)]
    for i in range(deltas):
        steps += [("chunk", delta(key, make(i))), ("sleep", THOUGHT)]
    return [*steps, ("chunk", text(key, "Done")), ("chunk", finish(key)), ("chunk", usage(key))]


@pytest.mark.parametrize(("kind", "make"), KIND_DELTAS,
                         ids=[f"{k}-{next(iter(m(0)))}" for k, m in KIND_DELTAS])
async def test_a_delta_of_any_kind_is_the_first_token(
    autojump_clock: MockClock, kind: str, make: Callable[[int], dict[str, Any]],
) -> None:
    # 300 deltas, more than the buffer limit; a hedge after 0.3 s and a
    # first-token deadline of 0.35 s, both after p1's first delta at 0.25 s:
    # counted as nothing, they would have failed p1 and handed over to p2.
    upstream = Upstream({"p1": thinking("p1", make, after=0.25, deltas=300),
                         "p2": answer("p2", 0.01)})
    result = await run(upstream, tiers(0.3, 0.35, premium=["p1", "p2"]), "premium")
    assert upstream.opened == {"p1": 0}
    assert result.won_at == 0.25
    p1 = result.record("p1")
    assert (p1.outcome, p1.first_token_at, p1.first_token_kind) == ("won", 0.25, kind)
    assert result.done_at == 0.25 + 300 * THOUGHT
    # Every delta reaches the caller, unchanged and in order.
    assert [c["choices"][0]["delta"] for c in result.chunks if c["choices"]] == [
        {"role": "assistant", "content": ""}, *(make(i) for i in range(300)),
        {"content": "Done"}, {}]


async def test_thinking_before_the_decision_is_held_not_failed(
    autojump_clock: MockClock,
) -> None:
    # 300 reasoning deltas by 0.25 + 300/128 s, the decision only at 3 s: the
    # buffer fills (backpressure), the attempt waits and then wins as of its
    # first reasoning delta.
    reason = KIND_DELTAS[0][1]
    upstream = Upstream({"p1": thinking("p1", reason, after=0.25, deltas=300)})
    result = await run(upstream, tiers(premium=["p1"]), after(3.0, "premium"))
    p1 = result.record("p1")
    assert (p1.outcome, p1.first_token_at, p1.first_token_kind) == ("won", 0.25, "reasoning")
    assert result.won_at == 3.0
    assert len(result.chunks) == 1 + 300 + 3


@pytest.mark.parametrize(("chunk", "kind"), [
    (role("m"), None),
    (usage("m"), None),
    ({"choices": [], "prompt_filter_results": [{"prompt_index": 0}]}, None),
    (delta("m", {"content": "", "reasoning_content": None, "refusal": None}), None),
    (delta("m", {"audio": {"id": "audio_1"}}), None),  # an id alone carries nothing yet
    (delta("m", {"reasoning_details": [{"type": "reasoning.text", "text": "Hm"}]}),
     "reasoning"),
    (delta("m", {"function_call": {"name": "f"}}), "tool_calls"),
    (delta("m", {"content": "Hi", "reasoning_content": "so"}), "content"),
    (finish("m"), "finish"),  # an empty answer is not waited on forever
    ({"choices": [{"index": 0, "delta": {}}, {"index": 1, "delta": {"refusal": "No"}}]},
     "refusal"),
    ({"choices": ["garbage", {"index": 0, "delta": None}]}, None),
])
def test_token_kind(chunk: Chunk, kind: str | None) -> None:
    assert token_kind(chunk) == kind


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["choices", "delta", "content", "reasoning", "reasoning_content",
                         "refusal", "tool_calls", "audio", "data", "transcript",
                         "finish_reason", "role", "index"]), inner, max_size=4),
    max_leaves=20)


@given(_JSON)
def test_token_kind_of_any_json_is_a_known_kind_or_none(chunk: Any) -> None:
    # Whatever an upstream sends in a chunk object, naming its kind never raises.
    kind = token_kind({"choices": chunk} if not isinstance(chunk, dict) else chunk)
    assert kind in {None, "content", "refusal", "tool_calls", "reasoning", "audio", "finish"}


# -- the whole answer's deadline ------------------------------------------------


def whole(key: str, seconds: float) -> list[Step]:
    """A non-streamed answer: nothing for `seconds`, then all of it in one chunk."""
    return [("sleep", seconds), ("chunk", {
        "object": "chat.completion", "model": key,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                     "finish_reason": "stop"}]})]


def answers(total: float | None, first: float | None = None,
            **ranked: Sequence[str]) -> dict[str, list[Candidate]]:
    return {tier: [Candidate(key, tier, math.inf, first_token_deadline=first,
                             answer_deadline=total) for key in keys]
            for tier, keys in ranked.items()}


async def test_a_whole_answer_within_its_deadline_wins_when_it_arrives(
    autojump_clock: MockClock,
) -> None:
    upstream = Upstream({"p1": whole("p1", 4.0), "p2": whole("p2", 0.1)})
    result = await run(upstream, answers(5.0, premium=["p1", "p2"]), "premium",
                       first_token_kind=lambda _: "answer")
    assert upstream.opened == {"p1": 0}
    p1 = result.record("p1")
    assert (result.won_at, p1.outcome, p1.first_token_kind) == (4.0, "won", "answer")


@pytest.mark.parametrize(("first", "total", "failed_at", "code"), [
    (None, 2.0, 2.0, "total_timeout"),
    (1.0, 2.0, 1.0, "first_token_timeout"),
    (3.0, 2.0, 2.0, "total_timeout"),
])
async def test_the_earlier_deadline_fails_the_attempt_and_names_itself(
    autojump_clock: MockClock, first: float | None, total: float, failed_at: float, code: str,
) -> None:
    upstream = Upstream({"p1": answer("p1", 100.0), "p2": answer("p2", 0.5)})
    result = await run(upstream, answers(total, first, premium=["p1", "p2"]), "premium")
    assert upstream.opened == {"p1": 0, "p2": failed_at}
    p1 = result.record("p1")
    assert (p1.outcome, p1.ended_at) == ("deadline", failed_at)
    assert isinstance(p1.error, UpstreamError)
    assert (p1.error.status, p1.error.code, p1.error.retryable) == (504, code, True)
    assert result.won_at == failed_at + 0.5


async def test_answer_deadline_keeps_running_after_the_first_token(
    autojump_clock: MockClock,
) -> None:
    upstream = Upstream({"p1": answer("p1", 0.5, tail=10.0, words=["a", "b"])})
    async with race(candidates=answers(2.0, premium=["p1"]), decide="premium",
                    open_stream=upstream.open, first_token_kind=token_kind) as winner:
        assert trio.current_time() == 0.5
        with pytest.raises(UpstreamError) as caught:
            async for _chunk in winner.chunks:
                pass
    assert trio.current_time() == 2.0
    assert (caught.value.status, caught.value.code) == (504, "total_timeout")
    assert upstream.ended["p1"] == (2.0, "cancelled")


# -- accounting ---------------------------------------------------------------


async def test_every_attempt_is_recorded_once_with_outcome(autojump_clock: MockClock) -> None:
    upstream = Upstream({
        "p1": answer("p1", 100.0),  # deadline at 1.0
        "p2": failing(0.1, unavailable()),  # fallback for p1, fails
        "p3": answer("p3", 0.5),  # fallback for p2, wins
        "p4": answer("p4", 5.0),  # hedge after p3's delay
        "e1": answer("e1", 0.1),  # outside the decided tier
    })
    candidates = {
        "premium": [Candidate("p1", "premium", math.inf, 1.0),
                    Candidate("p2", "premium", 1.0), Candidate("p3", "premium", 0.2),
                    Candidate("p4", "premium", 1.0)],
        "economy": [Candidate("e1", "economy", 1.0)],
    }
    result = await run(upstream, candidates, after(0.9, "premium"), max_attempts=5)
    assert upstream.opened == {"p1": 0, "e1": 0, "p2": 1.0, "p3": 1.1, "p4": 1.3}
    assert result.won_at == 1.6
    assert result.outcomes() == {"e1": "outside-tier", "p1": "deadline", "p2": "failed",
                                 "p4": "lost", "p3": "won"}
    assert len(result.reported) == 5
    assert sorted(result.records(), key=id) == sorted(result.reported, key=id)
    timings = {r.candidate.key: (r.started_at, r.first_token_at, r.ended_at)
               for r in result.reported}
    # e1 ended its stream at 0.1; it was reported when the decision ruled it out.
    assert timings == {"p1": (0, None, 1.0), "e1": (0, 0.1, 0.1), "p2": (1.0, None, 1.1),
                       "p3": (1.1, 1.6, 1.6), "p4": (1.3, None, 1.6)}


async def test_loser_usage_is_recorded_when_seen(autojump_clock: MockClock) -> None:
    upstream = Upstream({"p1": answer("p1", 0.4), "e1": answer("e1", 0.1)})
    result = await run(upstream, tiers(premium=["p1"], economy=["e1"]), after(0.5, "premium"))
    e1 = result.record("e1")
    # e1 answered in full before the decision; its bill is known.
    assert (e1.outcome, e1.ended_at, e1.chunks) == ("outside-tier", 0.1, 4)
    assert e1.usage == {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    assert upstream.ended["e1"] == (0.1, "closed")
    assert models(result.chunks) == {"p1"}


async def test_buffered_returns_arrived_chunks_and_keeps_the_end_for_iteration() -> None:
    send, receive = trio.open_memory_channel[Any](10)
    chunks = WinnerChunks(receive)
    assert chunks.buffered() == []
    for n in range(3):
        send.send_nowait({"n": n})
    send.close()
    assert await chunks.__anext__() == {"n": 0}
    assert not chunks.ended
    assert chunks.buffered() == [{"n": 1}, {"n": 2}]
    assert chunks.ended
    assert chunks.buffered() == []
    assert [c async for c in chunks] == []


async def test_buffered_stops_at_a_failure_which_the_next_step_raises() -> None:
    send, receive = trio.open_memory_channel[Any](10)
    chunks = WinnerChunks(receive)
    send.send_nowait({"n": 0})
    send.send_nowait(StreamFailure(UpstreamError("cut", status=502)))
    send.send_nowait({"n": 1})
    assert chunks.buffered() == [{"n": 0}]
    assert not chunks.ended
    with pytest.raises(UpstreamError, match="cut"):
        await chunks.__anext__()


async def test_winner_chunks_of_one_read_reach_the_consumer_together(
        autojump_clock: MockClock) -> None:
    # The winner's chunks that arrive without a checkpoint in between are all
    # in the channel before the consumer runs, so it can write them at once.
    async def burst(_candidate: Candidate) -> AsyncIterator[Any]:
        for n in range(5):
            yield {"choices": [{"index": 0, "delta": {"content": f"t{n}"}}]}

    @contextlib.asynccontextmanager
    async def open_stream(candidate: Candidate) -> AsyncIterator[AsyncIterator[Any]]:
        yield burst(candidate)

    batches: list[int] = []
    async with race(candidates={"economy": [Candidate("a", "economy", math.inf)]},
                    decide="economy", open_stream=open_stream,
                    first_token_kind=token_kind) as winner:
        assert len(winner.first_chunks) == 1
        async for _chunk in winner.chunks:
            batches.append(1 + len(winner.chunks.buffered()))
    assert batches == [4]


async def test_tier_left_out_of_speculation_starts_only_once_decided(
    autojump_clock: trio.abc.Clock,
) -> None:
    opened: dict[str, float] = {}

    @contextlib.asynccontextmanager
    async def open_stream(candidate: Candidate) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        opened[candidate.key] = trio.current_time()

        async def chunks() -> AsyncGenerator[dict[str, Any], None]:
            await trio.sleep(0.1)
            yield {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}

        gen = chunks()
        try:
            yield gen
        finally:
            await gen.aclose()

    async def decide() -> str:
        await trio.sleep(0.05)
        return "premium"

    candidates = {
        "premium": [Candidate(key="p", tier="premium", hedge_delay=math.inf)],
        "economy": [Candidate(key="e", tier="economy", hedge_delay=math.inf)],
    }
    start = trio.current_time()
    async with race(candidates=candidates, decide=decide, open_stream=open_stream,
                    first_token_kind=token_kind, speculate={"economy"}) as winner:
        assert winner.candidate.key == "p"
        assert trio.current_time() - start == pytest.approx(0.15)
    # Economy started at once; premium only when the decision named it.
    assert opened["e"] - start == 0.0
    assert opened["p"] - start == pytest.approx(0.05)
