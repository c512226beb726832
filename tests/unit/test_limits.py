"""MemoryLimiter under trio's MockClock: exact times, levels and headers.

Each scenario is a table of steps: at virtual time `t` (seconds after the
start), do something and expect a verdict. The clock only moves when a step
sleeps until its time, so every number below is exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import pytest
import trio

from tlproxy.config import ClientKey
from tlproxy.errors import ProxyError
from tlproxy.limits import (
    KeyLimits,
    Limiter,
    MemoryLimiter,
    Verdict,
    budget_window,
    openai_duration,
)
from tlproxy.limits_redis import RedisLimiter


def scenario_epoch(today: float, *, years_back: int = 0) -> float:
    """Noon UTC three and a half days before the month after next begins.

    Half a day before the daily budget resets and 3.5 days before the monthly
    one, as the scenarios expect. It moves with `today` (always ahead of it), so
    no scenario depends on the date it runs on; `years_back` gives the same
    moment a year or more earlier, in the past of any clock.
    """
    moment = datetime.fromtimestamp(today, tz=UTC)
    month = moment.month + 2
    year = moment.year + (month - 1) // 12 - years_back
    first = datetime(year, (month - 1) % 12 + 1, 1, tzinfo=UTC)
    return first.timestamp() - 3.5 * 86400


# The scenarios run at two epochs a year apart: one ahead of the real clock, one
# behind it. A store that reads its own clock (Redis's expiries) sees both.
EPOCHS = {"ahead": scenario_epoch(time.time()),
          "a-year-before": scenario_epoch(time.time(), years_back=1)}
EPOCH = EPOCHS["ahead"]


@pytest.mark.parametrize(("today", "expected"), [
    (datetime(2026, 12, 3, 9, tzinfo=UTC), datetime(2027, 1, 28, 12, tzinfo=UTC)),
    (datetime(2026, 11, 29, tzinfo=UTC), datetime(2026, 12, 28, 12, tzinfo=UTC)),
    (datetime(2027, 2, 10, tzinfo=UTC), datetime(2027, 3, 28, 12, tzinfo=UTC)),
    (datetime(2027, 11, 30, 23, tzinfo=UTC), datetime(2027, 12, 28, 12, tzinfo=UTC)),
])
def test_scenario_epoch_is_ahead_of_today_at_noon_before_a_month_end(
    today: datetime, expected: datetime,
) -> None:
    assert scenario_epoch(today.timestamp()) == expected.timestamp()
    a_year_before = expected.replace(year=expected.year - 1).timestamp()
    assert scenario_epoch(today.timestamp(), years_back=1) == a_year_before


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0s"),
    (0.0004, "1ms"),          # rounded up: a client waiting this long is not early
    (0.12, "120ms"),
    (0.999, "999ms"),
    (1.0, "1s"),
    (1.5, "1.5s"),
    (6.0, "6s"),
    (17.2981, "17.299s"),
    (59.994, "59.994s"),
    (60.0, "1m0s"),
    (90.5, "1m30.5s"),
    (360.0, "6m0s"),
    (3600.0, "1h0m0s"),
    (3723.25, "1h2m3.25s"),
    (-1.0, "0s"),
])
def test_openai_duration(seconds: float, text: str) -> None:
    assert openai_duration(seconds) == text


@pytest.mark.parametrize(("moment", "period", "label", "end"), [
    (datetime(2026, 11, 27, 12, tzinfo=UTC), "day", "2026-11-27",
     datetime(2026, 11, 28, tzinfo=UTC)),
    (datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC), "day", "2026-11-27",
     datetime(2026, 11, 28, tzinfo=UTC)),
    (datetime(2026, 11, 27, 12, tzinfo=UTC), "month", "2026-11",
     datetime(2026, 12, 1, tzinfo=UTC)),
    (datetime(2026, 12, 31, 23, tzinfo=UTC), "month", "2026-12",
     datetime(2027, 1, 1, tzinfo=UTC)),
    (datetime(2027, 1, 1, tzinfo=UTC), "day", "2027-01-01", datetime(2027, 1, 2, tzinfo=UTC)),
])
def test_budget_window(moment: datetime, period: str, label: str, end: datetime) -> None:
    assert budget_window(moment.timestamp(), period) == (label, end.timestamp())  # type: ignore[arg-type]


@dataclass
class Step:
    """At `t`, settle (when `settle` is given as (tokens, estimated, cost)) or admit."""

    t: float
    allowed: bool | None = None
    estimated: int = 0
    settle: tuple[int, int, float] | None = None
    reason: str | None = None
    retry_after: float | None = None
    headers: dict[str, str] | None = None  # the subset of headers expected


def requests(limit: int, remaining: int, reset: str) -> dict[str, str]:
    return {"x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": reset}


def tokens(limit: int, remaining: int, reset: str) -> dict[str, str]:
    return {"x-ratelimit-limit-tokens": str(limit),
            "x-ratelimit-remaining-tokens": str(remaining),
            "x-ratelimit-reset-tokens": reset}


def retry(seconds: int, ms: int) -> dict[str, str]:
    return {"retry-after": str(seconds), "retry-after-ms": str(ms)}


SCENARIOS = {
    "rpm_burst_then_drain": (KeyLimits(rpm=3), [
        Step(0, True, headers=requests(3, 2, "20s")),
        Step(0, True, headers=requests(3, 1, "40s")),
        Step(0, True, headers=requests(3, 0, "1m0s")),
        Step(0, False, reason="requests", retry_after=20.0,
             headers=requests(3, 0, "1m0s") | retry(20, 20000)),
        Step(10, False, reason="requests", retry_after=10.0, headers=retry(10, 10000)),
        Step(20, True, headers=requests(3, 0, "1m0s")),
        # 30 s later the level is 1.5: half a request of room, not a whole one.
        Step(50, True, headers=requests(3, 0, "50s")),
        Step(50, False, reason="requests", retry_after=10.0),
        Step(200, True, headers=requests(3, 2, "20s")),
    ]),
    "tpm_reserve_refund_and_debt": (KeyLimits(tpm=1000), [
        Step(0, True, estimated=400, headers=tokens(1000, 600, "24s")),
        Step(0, True, estimated=400, headers=tokens(1000, 200, "48s")),
        Step(0, False, estimated=400, reason="tokens", retry_after=12.0,
             headers=tokens(1000, 200, "48s") | retry(12, 12000)),
        Step(0, settle=(100, 400, 0.0)),  # 300 reserved tokens come back
        Step(0, True, estimated=400, headers=tokens(1000, 100, "54s")),
        Step(0, settle=(1500, 400, 0.0)),  # 1100 more than reserved: the bucket owes
        Step(0, False, estimated=1, reason="tokens", retry_after=60.06,
             headers=tokens(1000, 0, "2m0s") | retry(61, 60060)),
        Step(60, False, estimated=1, reason="tokens", retry_after=0.06),
        Step(61, True, estimated=1, headers=tokens(1000, 15, "59.06s")),
    ]),
    "request_larger_than_tpm_passes_only_when_empty": (KeyLimits(tpm=1000), [
        Step(0, True, estimated=5000, headers=tokens(1000, 0, "1m0s")),
        Step(30, False, estimated=5000, reason="tokens", retry_after=30.0),
        Step(60, True, estimated=5000),
    ]),
    "refused_request_consumes_nothing": (KeyLimits(rpm=2, tpm=100), [
        Step(0, True, estimated=100, headers=requests(2, 1, "30s") | tokens(100, 0, "1m0s")),
        Step(0, False, estimated=10, reason="tokens", retry_after=6.0,
             headers=requests(2, 1, "30s")),
        Step(0, settle=(0, 100, 0.0)),
        Step(0, True, estimated=10, headers=requests(2, 0, "1m0s") | tokens(100, 90, "6s")),
    ]),
    "retry_after_waits_for_every_failing_limit": (KeyLimits(rpm=1, tpm=100), [
        Step(0, True, estimated=100),
        # Room for a request in 60 s, for the tokens in 6 s: the first reason, the longest wait.
        Step(0, False, estimated=10, reason="requests", retry_after=60.0,
             headers=retry(60, 60000)),
    ]),
    "daily_budget": (KeyLimits(budget_usd=1.0, budget_period="day"), [
        Step(0, True, headers={}),
        Step(0, settle=(0, 0, 0.6)),
        Step(1, True),
        Step(1, settle=(0, 0, 0.5)),
        Step(2, False, reason="budget", retry_after=43198.0, headers=retry(43198, 43198000)),
        Step(43199, False, reason="budget", retry_after=1.0),
        Step(43200, True),  # midnight UTC: a new day, a new budget
    ]),
    "budget_is_reported_before_rate_limits": (KeyLimits(rpm=1, budget_usd=0.5), [
        Step(0, True),
        Step(0, settle=(0, 0, 0.5)),
        Step(0, False, reason="budget", retry_after=(4 * 86400 - 43200.0),
             headers=requests(1, 0, "1m0s")),
    ]),
}


async def matches_memory_limiter(limiter: Limiter, name: str, epoch: str) -> None:
    """Run scenario `name` at `epoch` on `limiter` and on a `MemoryLimiter` side by
    side; every verdict must be the memory limiter's (retry-after to float noise)."""
    limits, steps = SCENARIOS[name]
    memory = MemoryLimiter()
    for step in steps:
        now = EPOCHS[epoch] + step.t
        if step.settle is not None:
            used, estimated, cost = step.settle
            for each in (memory, limiter):
                await each.settle("k", limits, tokens=used, estimated_tokens=estimated,
                                  cost_usd=cost, now=now)
            continue
        expected = await memory.admit("k", limits, estimated_tokens=step.estimated, now=now)
        got = await limiter.admit("k", limits, estimated_tokens=step.estimated, now=now)
        assert got.headers == expected.headers, step
        assert (got.allowed, got.reason) == (expected.allowed, expected.reason), step
        assert got.retry_after == pytest.approx(expected.retry_after), step


@pytest.mark.parametrize("epoch", EPOCHS)
@pytest.mark.parametrize("name", SCENARIOS)
async def test_memory_limiter_scenarios(
    name: str, epoch: str, autojump_clock: trio.testing.MockClock,
) -> None:
    limits, steps = SCENARIOS[name]
    limiter = MemoryLimiter()
    start = trio.current_time()
    for index, step in enumerate(steps):
        await trio.sleep_until(start + step.t)
        now = EPOCHS[epoch] + (trio.current_time() - start)
        if step.settle is not None:
            used, estimated, cost = step.settle
            await limiter.settle("k", limits, tokens=used, estimated_tokens=estimated,
                                 cost_usd=cost, now=now)
            continue
        verdict = await limiter.admit("k", limits, estimated_tokens=step.estimated, now=now)
        where = f"step {index} at t={step.t}: {verdict}"
        assert verdict.allowed is step.allowed, where
        assert verdict.reason == step.reason, where
        if step.retry_after is None:
            assert verdict.retry_after is None, where
        else:
            assert verdict.retry_after == pytest.approx(step.retry_after, abs=1e-9), where
        for header, value in (step.headers or {}).items():
            assert verdict.headers.get(header) == value, f"{header}: {where}"
        if step.headers == {}:
            assert verdict.headers == {}, where
        assert not verdict.degraded


async def test_keys_are_independent() -> None:
    limiter = MemoryLimiter()
    limits = KeyLimits(rpm=1)
    assert (await limiter.admit("a", limits, estimated_tokens=0, now=EPOCH)).allowed
    assert not (await limiter.admit("a", limits, estimated_tokens=0, now=EPOCH)).allowed
    assert (await limiter.admit("b", limits, estimated_tokens=0, now=EPOCH)).allowed


async def test_unlimited_key_is_admitted_without_headers() -> None:
    limiter = MemoryLimiter()
    verdict = await limiter.admit("k", KeyLimits(), estimated_tokens=10**9, now=EPOCH)
    assert verdict == Verdict(allowed=True)
    await limiter.settle("k", KeyLimits(), tokens=10, estimated_tokens=5, cost_usd=1.0, now=EPOCH)


async def test_clock_going_backwards_drains_nothing() -> None:
    limiter = MemoryLimiter()
    limits = KeyLimits(rpm=2)
    await limiter.admit("k", limits, estimated_tokens=0, now=EPOCH + 30)
    verdict = await limiter.admit("k", limits, estimated_tokens=0, now=EPOCH)
    assert verdict.headers["x-ratelimit-remaining-requests"] == "0"
    assert not (await limiter.admit("k", limits, estimated_tokens=0, now=EPOCH + 30)).allowed


async def test_statistics_count_each_outcome() -> None:
    limiter = MemoryLimiter()
    limits = KeyLimits(rpm=1, tpm=10, budget_usd=1.0)
    await limiter.admit("a", limits, estimated_tokens=1, now=EPOCH)
    await limiter.admit("a", limits, estimated_tokens=1, now=EPOCH)
    await limiter.admit("b", limits, estimated_tokens=11, now=EPOCH)
    await limiter.admit("c", limits, estimated_tokens=0, now=EPOCH)
    await limiter.settle("c", KeyLimits(budget_usd=1.0), tokens=0, estimated_tokens=0,
                         cost_usd=2.0, now=EPOCH)
    await limiter.admit("c", KeyLimits(budget_usd=1.0), estimated_tokens=0, now=EPOCH)
    stats = limiter.statistics()
    assert msgspec.structs.asdict(stats) == {
        "admitted": 3, "degraded": 0, "refused_requests": 1, "refused_tokens": 0,
        "refused_budget": 1, "unavailable": 0, "redis_failures": 0,
    }
    stats.admitted = 100  # a snapshot: changing it changes nothing
    assert limiter.statistics().admitted == 3


def test_key_limits_from_client_key() -> None:
    key = ClientKey(name="ci", hash="sha256:" + "0" * 64, rpm=60, tpm=1000, budget_usd=5.0,
                    budget_period="day")
    assert KeyLimits.from_client_key(key) == KeyLimits(
        rpm=60, tpm=1000, budget_usd=5.0, budget_period="day")
    assert KeyLimits.from_client_key(ClientKey(name="x", hash=key.hash)).unlimited


@pytest.mark.parametrize("fields", [{"rpm": 0}, {"tpm": -1}])
def test_key_limits_refuse_empty_rate_limits(fields: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        KeyLimits(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("reason", "status", "type_", "code", "words"), [
    ("requests", 429, "requests", "rate_limit_exceeded", "Limit 3. Please try again in 20s."),
    ("tokens", 429, "tokens", "rate_limit_exceeded", "tokens per min (TPM)"),
    ("budget", 429, "insufficient_quota", "insufficient_quota", "budget"),
])
def test_verdict_error_is_openai_shaped(
    reason: str, status: int, type_: str, code: str, words: str
) -> None:
    headers = requests(3, 0, "1m0s") | retry(20, 20000)
    verdict = Verdict(allowed=False, reason=reason, retry_after=20.0,  # type: ignore[arg-type]
                      headers=headers)
    error = verdict.error()
    assert isinstance(error, ProxyError)
    assert (error.status, error.type, error.code) == (status, type_, code)
    assert words in error.message
    assert error.headers["retry-after"] == "20"



def test_redis_keys_share_one_hash_tag_whatever_the_key_name() -> None:
    limiter = RedisLimiter("redis://127.0.0.1:1")
    keys = limiter.keys("team/a b{x}", "2026-11")
    assert keys == [
        "{tlproxy:team%2Fa%20b%7Bx%7D}:rpm",
        "{tlproxy:team%2Fa%20b%7Bx%7D}:tpm",
        "{tlproxy:team%2Fa%20b%7Bx%7D}:spend:2026-11",
    ]
