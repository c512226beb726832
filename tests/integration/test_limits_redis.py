"""RedisLimiter against real redis-server processes: one node and a three-node cluster.

Two `RedisLimiter` instances stand for two proxy processes: they share
nothing but the Redis they talk to.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal

import pytest
import trio

from tests.unit.test_limits import EPOCHS, SCENARIOS, matches_memory_limiter
from tlproxy.errors import ProxyError
from tlproxy.limits import KeyLimits, Verdict, budget_window
from tlproxy.limits_redis import RedisLimiter, redis_client

from .redis_servers import RedisServer, free_port, redis_cluster, redis_server, requires_redis

pytestmark = [
    requires_redis,
    # coredis 6.9 creates a connection's anyio memory streams in its constructor
    # and closes them only once connected: a connection that never connects (a
    # dead node; cluster discovery) leaves them to the garbage collector, which
    # warns. Harmless, and not ours; `collect_garbage` makes it happen here.
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <function MemoryObject(Send|Receive)Stream\.__del__"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]

TIMEOUT = 0.25
# Real Redis processes run in real time, so the tests assert which path the
# limiter took (its statistics and the reason it logged), never how long it
# took; this bound only turns a hang into a failure.
HANG_GUARD = 10.0
# Why the limiter gave up on Redis, as it logs it, for each kind of outage:
# a killed Redis refuses the connection; a stalled one is cut by the timeout.
OUTAGE_REASONS = {
    "killed": "(ConnectionError: Unable to establish a connection to 127.0.0.1:",
    "stalled": f"(no answer from Redis within {TIMEOUT}s)",
}
RPM_1 = KeyLimits(rpm=1)


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    yield
    gc.collect()


@pytest.fixture(params=["single", "cluster"])
async def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A Redis that several limiters share: one node, or a cluster of three."""
    if request.param == "single":
        async with redis_server(tmp_path) as server:
            yield server.url
    else:
        async with redis_cluster(tmp_path) as cluster:
            yield cluster.url


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path) as running:
        yield running


async def admit_many(limiter: RedisLimiter, key: str, limits: KeyLimits, count: int,
                     out: list[Verdict]) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(functools.partial(
                _admit_into, limiter, key, limits, out))


async def _admit_into(limiter: RedisLimiter, key: str, limits: KeyLimits,
                      out: list[Verdict]) -> None:
    out.append(await limiter.admit(key, limits, estimated_tokens=10, now=time.time()))


async def test_two_instances_share_one_rpm_exactly(shared_url: str) -> None:
    limits = KeyLimits(rpm=10)
    # Characters that would break a hash tag if they were not escaped.
    key = "team/a b{x}"
    verdicts: list[Verdict] = []
    async with RedisLimiter(shared_url, timeout=2.0) as first, \
            RedisLimiter(shared_url, timeout=2.0) as second:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(admit_many, first, key, limits, 15, verdicts)
            nursery.start_soon(admit_many, second, key, limits, 15, verdicts)
        stats = [first.statistics(), second.statistics()]

    allowed = [v for v in verdicts if v.allowed]
    refused = [v for v in verdicts if not v.allowed]
    assert (len(allowed), len(refused)) == (10, 20)
    # Each admission saw the count left by the one before it, whichever process ran it.
    remaining = sorted(int(v.headers["x-ratelimit-remaining-requests"]) for v in allowed)
    assert remaining == list(range(10))
    for verdict in refused:
        assert verdict.reason == "requests"
        # Redis's clock runs on while the burst is served: at most one
        # emission interval (60 s / 10), less the time since the first admission.
        assert verdict.retry_after is not None and 0 < verdict.retry_after <= 6.0
        assert verdict.headers["retry-after"] == str(math.ceil(verdict.retry_after))
        assert verdict.headers["x-ratelimit-limit-requests"] == "10"
        assert verdict.headers["x-ratelimit-remaining-requests"] == "0"
        assert not verdict.degraded
    assert sum(s.admitted for s in stats) == 10
    assert sum(s.refused_requests for s in stats) == 20
    assert sum(s.redis_failures for s in stats) == 0


async def test_spend_and_tokens_settled_on_one_instance_count_on_the_other(
    shared_url: str,
) -> None:
    limits = KeyLimits(tpm=1000, budget_usd=1.0, budget_period="day")
    # On the caller's clock, one instant for every call: no token flows back
    # into the bucket between them, however long the calls take.
    async with RedisLimiter(shared_url, clock="caller", timeout=2.0) as first, \
            RedisLimiter(shared_url, clock="caller", timeout=2.0) as second:
        now = time.time()
        assert (await first.admit("k", limits, estimated_tokens=100, now=now)).allowed
        # 700 more tokens than reserved, and the whole budget, settled by the first...
        await first.settle("k", limits, tokens=800, estimated_tokens=100, cost_usd=1.25, now=now)
        # ...so the second refuses, for the budget (reported before tokens).
        verdict = await second.admit("k", limits, estimated_tokens=300, now=now)
        assert (verdict.allowed, verdict.reason) == (False, "budget")
        # 800 of the 1000 tokens used: 200 left, the 800 back in 48 s.
        assert verdict.headers["x-ratelimit-remaining-tokens"] == "200"
        assert verdict.headers["x-ratelimit-reset-tokens"] == "48s"
        assert int(verdict.headers["retry-after"]) >= verdict.retry_after  # type: ignore[operator]
        # Another key is untouched.
        assert (await second.admit("other", limits, estimated_tokens=300, now=now)).allowed
        assert second.statistics().refused_budget == 1


@pytest.mark.parametrize("epoch", EPOCHS)
@pytest.mark.parametrize("name", SCENARIOS)
async def test_lua_scripts_match_memory_limiter_step_by_step(
    name: str, epoch: str, server: RedisServer
) -> None:
    """At an epoch ahead of Redis's clock and one a year behind it: the spend keys
    live relative to `now`, so Redis's own clock never expires them early."""
    async with RedisLimiter(server.url, clock="caller", timeout=2.0) as redis:
        await matches_memory_limiter(redis, name, epoch)


@contextlib.asynccontextmanager
async def after_outage(
    server: RedisServer, outage: str, *, on_failure: Literal["open", "closed"]
) -> AsyncIterator[RedisLimiter]:
    """A limiter that worked (one admission of rpm=1 counted), then lost its Redis."""
    async with RedisLimiter(server.url, timeout=TIMEOUT, on_failure=on_failure) as limiter:
        assert (await limiter.admit("k", RPM_1, estimated_tokens=0, now=time.time())).allowed
        if outage == "killed":
            await server.kill()
        else:
            server.pause()
        yield limiter


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "tlproxy.limits" and record.levelno == logging.WARNING]


@pytest.mark.parametrize("outage", ["killed", "stalled"])
async def test_fail_open_admits_degraded_within_the_timeout(
    outage: str, server: RedisServer, caplog: pytest.LogCaptureFixture,
) -> None:
    async with after_outage(server, outage, on_failure="open") as limiter:
        for _ in range(2):
            with trio.fail_after(HANG_GUARD):
                verdict = await limiter.admit("k", RPM_1, estimated_tokens=0, now=time.time())
                await limiter.settle("k", KeyLimits(tpm=10), tokens=5, estimated_tokens=1,
                                     cost_usd=0.1, now=time.time())
            assert verdict == Verdict(allowed=True, degraded=True)
        stats = limiter.statistics()
        assert (stats.admitted, stats.degraded, stats.redis_failures) == (1, 2, 4)
        # Given up on for the outage's reason (a stalled Redis: the timeout),
        # logged once for the whole outage.
        (warning,) = outage_warnings(caplog)
        assert warning.startswith(f"limits store unavailable {OUTAGE_REASONS[outage]}"), warning
        assert warning.endswith("; on_failure=open")
        if outage == "stalled":
            # Redis answers again: limits are enforced again, with the state it kept.
            server.resume()
            with trio.fail_after(HANG_GUARD):
                verdict = await limiter.admit("k", RPM_1, estimated_tokens=0, now=time.time())
            assert (verdict.allowed, verdict.reason, verdict.degraded) == (False, "requests", False)


@pytest.mark.parametrize("outage", ["killed", "stalled"])
async def test_fail_closed_answers_503_within_the_timeout(
    outage: str, server: RedisServer, caplog: pytest.LogCaptureFixture,
) -> None:
    async with after_outage(server, outage, on_failure="closed") as limiter:
        with trio.fail_after(HANG_GUARD), pytest.raises(ProxyError) as caught:
            await limiter.admit("k", RPM_1, estimated_tokens=0, now=time.time())
        error = caught.value
        assert (error.status, error.type, error.code) == (
            503, "service_unavailable", "limits_unavailable")
        stats = limiter.statistics()
        assert (stats.unavailable, stats.redis_failures, stats.degraded) == (1, 1, 0)
        (warning,) = outage_warnings(caplog)
        assert warning.startswith(f"limits store unavailable {OUTAGE_REASONS[outage]}"), warning


async def test_starts_and_degrades_when_redis_was_never_there() -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    with trio.fail_after(HANG_GUARD):
        async with RedisLimiter(url, timeout=TIMEOUT) as limiter:
            verdict = await limiter.admit("k", KeyLimits(rpm=1), estimated_tokens=0,
                                          now=time.time())
    assert verdict.degraded


async def test_cluster_starts_when_its_nodes_are_down_and_retries() -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    limiter = RedisLimiter(url, timeout=TIMEOUT, on_failure="closed")
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(limiter.run)
            with pytest.raises(ProxyError):
                await limiter.admit("k", KeyLimits(rpm=1), estimated_tokens=0, now=time.time())
            await limiter.aclose()
    assert limiter.statistics().redis_failures >= 2


@pytest.mark.parametrize(("url", "cluster", "kind"), [
    ("redis://127.0.0.1:6379/0", None, "Redis"),
    ("redis+cluster://127.0.0.1:7000", None, "RedisCluster"),
    ("rediss+cluster://user:pw@cache.example:7000", None, "RedisCluster"),
    ("redis://127.0.0.1:7000", True, "RedisCluster"),
])
def test_client_kind_follows_scheme_or_option(url: str, cluster: bool | None, kind: str) -> None:
    assert type(redis_client(url, cluster=cluster)).__name__ == kind


@pytest.mark.parametrize("epoch", EPOCHS)
async def test_spend_key_lives_to_the_period_end_plus_a_day_on_any_clock(
    epoch: str, server: RedisServer,
) -> None:
    limits = KeyLimits(budget_usd=1.0, budget_period="day")
    now = EPOCHS[epoch]  # noon UTC: twelve hours before the period ends
    async with RedisLimiter(server.url, clock="caller", timeout=2.0) as limiter:
        await limiter.settle("k", limits, tokens=0, estimated_tokens=0, cost_usd=0.25, now=now)
        period, _ = budget_window(now, "day")
        async with redis_client(server.url) as client:
            ttl = await client.ttl(limiter.keys("k", period)[2])
    assert ttl in range(43_200 + 86_400 - 2, 43_200 + 86_400 + 1)
