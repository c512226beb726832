from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlproxy.stats import ModelStats


def test_ewma_and_quantiles() -> None:
    stats = ModelStats(alpha=0.5)
    for value in (1.0, 3.0):
        stats.record_ttft(value)
    assert stats.ttft_ewma == 2.0
    for value in range(1, 11):
        stats.record_ttft(float(value))
    # 12 samples: 1, 1, 2, 3, 3, 4, ..., 10; nearest rank 6 of 12 is 4.
    assert stats.quantile(0.5) == 4.0
    assert stats.quantile(1.0) == 10.0
    assert ModelStats().quantile(0.9) is None


def test_breaker_opens_after_consecutive_failures_then_probes() -> None:
    stats = ModelStats(failure_threshold=3, cooldown=10.0)
    for _ in range(2):
        stats.record_failure(now=0.0)
    assert stats.state(0.0) == "closed"
    stats.record_failure(now=1.0)
    assert stats.state(5.0) == "open" and not stats.available(5.0)
    assert stats.state(11.0) == "half-open"
    assert stats.acquire(11.0)
    assert not stats.acquire(11.5)  # one probe at a time
    stats.record_failure(now=12.0)
    assert stats.state(12.0) == "open"
    assert stats.acquire(22.0)
    stats.record_success()
    assert stats.state(22.0) == "closed"


def test_error_rate_moves_towards_outcomes() -> None:
    stats = ModelStats(alpha=0.5)
    stats.record_failure(now=0.0)
    assert stats.error_rate == 0.5
    stats.record_success()
    assert stats.error_rate == 0.25


def test_rate_limits_do_not_open_the_breaker() -> None:
    stats = ModelStats(failure_threshold=2)
    for _ in range(10):
        stats.record_throttled()
    assert stats.state(0.0) == "closed"
    assert stats.error_rate > 0.5


@pytest.mark.parametrize(
    ("window", "q", "expected"),
    [
        # (seconds, observed). Observed 1, 2, 3; cut at 2.5 and 4. Kaplan-Meier:
        # F(1) = 0.2, F(2) = 0.4, F(3) = 0.7, then the cut tail hides the rest.
        ([(1, True), (2, True), (2.5, False), (3, True), (4, False)], 0.2, 1.0),
        ([(1, True), (2, True), (2.5, False), (3, True), (4, False)], 0.5, 3.0),
        ([(1, True), (2, True), (2.5, False), (3, True), (4, False)], 0.7, 3.0),
        # Beyond what the window can see: the longest time, a lower bound.
        ([(1, True), (2, True), (2.5, False), (3, True), (4, False)], 0.8, 4.0),
        # Cuts shorter than every TTFT change nothing.
        ([(0.1, False), (0.2, False), (1, True), (2, True)], 0.5, 1.0),
        # A cut at the same time as a TTFT may have lasted longer: it is still
        # at risk at 2, so F(2) = 1/3 (not 1/2, as if it had left before).
        ([(2, False), (2, True), (3, True)], 0.3, 2.0),
        ([(2, False), (2, True), (3, True)], 0.5, 3.0),
        # Nothing observed: no quantile.
        ([(1, False), (2, False)], 0.5, None),
    ],
)
def test_quantiles_count_cut_attempts_as_longer(
    window: list[tuple[float, bool]], q: float, expected: float | None
) -> None:
    stats = ModelStats()
    for seconds, observed in window:
        (stats.record_ttft if observed else stats.record_no_token)(float(seconds))
    assert stats.quantile(q) == expected
    assert stats.samples == sum(observed for _, observed in window)
    assert stats.cut == len(window) - stats.samples


@given(st.lists(st.floats(0.001, 60.0), min_size=1, max_size=300),
       st.floats(0.0, 1.0))
def test_without_cuts_the_quantile_is_the_nearest_rank(values: list[float], q: float) -> None:
    stats = ModelStats(window=256)
    for value in values:
        stats.record_ttft(value)
    recent = sorted(values[-256:])
    rank = min(len(recent) - 1, max(0, math.ceil(q * len(recent)) - 1))
    assert stats.quantile(q) == recent[rank]
    assert stats.samples == len(recent)


def test_the_window_forgets_old_cuts_and_ttfts_alike() -> None:
    stats = ModelStats(window=3)
    stats.record_no_token(5.0)
    stats.record_ttft(1.0)
    assert stats.quantile(0.9) == 5.0
    for value in (2.0, 3.0):
        stats.record_ttft(value)
    # The cut at 5 s has left the window: 1, 2, 3 remain.
    assert (stats.samples, stats.cut, stats.quantile(0.9)) == (3, 0, 3.0)
    stats.record_no_token(0.5)
    assert (stats.samples, stats.cut, stats.quantile(1.0)) == (2, 1, 3.0)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        # (seconds, observed); alpha 0.5.
        ([(1.0, True), (0.5, False)], 1.0),  # shorter than the average: no news
        ([(1.0, True), (3.0, False)], 2.0),  # longer: at least that long
        ([(1.0, True), (3.0, False), (1.0, True)], 1.5),
        ([(0.2, False)], 0.2),  # only cut so far: it takes at least this long
    ],
)
def test_cut_attempts_raise_the_moving_average_only_when_longer(
    events: list[tuple[float, bool]], expected: float
) -> None:
    stats = ModelStats(alpha=0.5)
    for seconds, observed in events:
        (stats.record_ttft if observed else stats.record_no_token)(seconds)
    assert stats.ttft_ewma == expected


def test_first_tokens_are_labelled_with_their_kind_and_leave_the_window() -> None:
    stats = ModelStats(window=4)
    stats.record_ttft(0.2, kind="reasoning")
    stats.record_ttft(0.3, kind="reasoning")
    stats.record_no_token(1.0)
    stats.record_ttft(0.9, kind="content")
    assert stats.first_token_kinds() == {"reasoning": 2, "content": 1}
    # One window for every kind: the race waits for the first delta of any kind.
    assert (stats.samples, stats.cut, stats.quantile(0.5)) == (3, 1, 0.3)
    stats.record_ttft(0.4, kind="tool_calls")
    stats.record_ttft(0.5, kind="content")
    # Both reasoning TTFTs have left: the cut, 0.9, 0.4 and 0.5 remain.
    assert stats.first_token_kinds() == {"content": 2, "tool_calls": 1}
