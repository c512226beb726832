"""SharedFileLimiter: the memory limiter's arithmetic, shared through one SQLite file."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from tests.unit.test_limits import EPOCHS, SCENARIOS, matches_memory_limiter
from tlproxy.limits import KeyLimits, Verdict
from tlproxy.limits_file import SharedFileLimiter


@pytest.mark.parametrize("epoch", EPOCHS)
@pytest.mark.parametrize("name", SCENARIOS)
async def test_matches_memory_limiter_step_by_step(name: str, epoch: str, tmp_path: Path) -> None:
    shared = SharedFileLimiter(tmp_path / "limits.db")
    await shared.run()
    try:
        await matches_memory_limiter(shared, name, epoch)
    finally:
        await shared.aclose()


async def _admit_into(limiter: SharedFileLimiter, limits: KeyLimits, now: float,
                      out: list[Verdict]) -> None:
    out.append(await limiter.admit("k", limits, estimated_tokens=0, now=now))


async def test_limiters_on_one_file_share_a_keys_limit_exactly(tmp_path: Path) -> None:
    """Two limiters stand for two worker processes: they share only the file."""
    path = tmp_path / "limits.db"
    first, second = SharedFileLimiter(path), SharedFileLimiter(path)
    await first.run()
    await second.run()
    limits = KeyLimits(rpm=10, budget_usd=1.0)
    now = EPOCHS["ahead"]
    verdicts: list[Verdict] = []
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(15):
                for limiter in (first, second):
                    nursery.start_soon(functools.partial(_admit_into, limiter, limits, now,
                                                         verdicts))
        allowed = [v for v in verdicts if v.allowed]
        assert len(allowed) == 10 and len(verdicts) == 30
        remaining = sorted(int(v.headers["x-ratelimit-remaining-requests"]) for v in allowed)
        assert remaining == list(range(10))
        # Spend settled through one is seen by the other.
        await first.settle("k", limits, tokens=0, estimated_tokens=0, cost_usd=1.0,
                           now=now + 120)
        verdict = await second.admit("k", limits, estimated_tokens=0, now=now + 120)
        assert (verdict.allowed, verdict.reason) == (False, "budget")
        stats = [first.statistics(), second.statistics()]
        assert sum(s.admitted for s in stats) == 10
        assert sum(s.refused_requests for s in stats) == 20
    finally:
        await first.aclose()
        await second.aclose()


async def test_unlimited_key_never_opens_a_transaction(tmp_path: Path) -> None:
    limiter = SharedFileLimiter(tmp_path / "limits.db")
    verdict = await limiter.admit("k", KeyLimits(), estimated_tokens=10, now=EPOCHS["ahead"])
    assert verdict == Verdict(allowed=True)
    assert not (tmp_path / "limits.db").exists()
