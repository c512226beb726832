from __future__ import annotations

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
