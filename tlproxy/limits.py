"""Per-key rate limits (requests and tokens per minute) and budgets (USD per day or month).

The algorithm
-------------
Each rate limit is a bucket that drains continuously (GCRA, a leaky bucket as
a meter): with ``rpm = N`` the level falls by N per 60 s; a request fits when
``level + cost <= N`` and then adds its cost (1 request, or the estimated
tokens). Two numbers per bucket: the level and when it was last drained.
A fixed 60 s window would let 2N through across a boundary, a sliding log
costs O(N) memory per key, a sliding-window counter is approximate. The
bucket is O(1), smooth, and gives OpenAI's headers directly: remaining is
``floor(N - level)``, reset (time back to the initial state) ``level / rate``,
retry-after the time for the level to fall by what is missing. The level is
kept in requests or tokens, not as a "theoretical arrival time": adding
intervals to a timestamp near 1.8e9 s rounds each time, small integers add
exactly, so a burst at one instant admits exactly N.

Tokens are reserved from an estimate and corrected by `settle` (actual -
estimated), which may leave a debt above capacity that delays the next
requests until it drains; an estimate above tpm reserves tpm (admitted when
the bucket is empty, not never). Budgets sum spend per UTC day or month under
a key named after the period; a key is refused once that reaches
``budget_usd``. Spend is known only after a response, so requests in flight
when the line is crossed may overshoot it by their own cost.

The guarantee
-------------
`RedisLimiter` (`limits_redis.py`) runs each admission as one Lua script (one
round trip, atomic on the server): all checks, then all increments only if
every check passed, so a refused request consumes nothing. Proxy processes
sharing one Redis share a key's limit exactly: with rpm = N, N of a burst are
allowed and the rest get 429, however the requests are spread. The script reads the time
from Redis (``TIME``) so skewed clocks share one timeline (``clock="caller"``
uses `now`; tests compare that with `MemoryLimiter` step by step). A key's
counters are named ``{tlproxy:<key>}:...``: the hash tag keeps them in one
cluster slot, as a multi-key script requires, on Redis and Redis Cluster alike.

Failure behaviour
-----------------
Every Redis call is bounded by ``trio.move_on_after(timeout)``. A dead or
stalled Redis then means: ``on_failure="open"`` admits unchecked
(``Verdict.degraded``, counted), ``"closed"`` raises a 503 `ProxyError` (code
``limits_unavailable``). `settle` never raises: it runs after the response,
and a lost correction skews the limits for a minute at most.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec
import trio

from .config import ClientKey
from .errors import ProxyError

if TYPE_CHECKING:
    # Imported by RedisLimiter only: a proxy with limits in memory skips its 0.5 s import.
    pass

__all__ = [
    "KeyLimits", "KeyState", "Limiter", "LimiterStatistics", "MemoryLimiter",
    "Verdict", "admit_state", "budget_window", "openai_duration", "settle_state",
]

log = logging.getLogger("tlproxy.limits")

Reason = Literal["requests", "tokens", "budget"]
Period = Literal["day", "month"]

WINDOW = 60.0  # seconds: the "per minute" of rpm and tpm
# Tolerance on a fit check, in requests or tokens: a level drained by float
# arithmetic may miss an integer by a few ulps, which must not refuse a request.
_EPS = 1e-6
# A spend key outlives its period by this much, to be inspected afterwards.
_SPEND_GRACE = 86_400


class KeyLimits(msgspec.Struct, frozen=True):
    """The limits of one client key; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: Period = "month"

    def __post_init__(self) -> None:
        if (self.rpm is not None and self.rpm < 1) or (self.tpm is not None and self.tpm < 1):
            raise ValueError("rpm and tpm must be at least 1 (or None for no limit)")

    @classmethod
    def from_client_key(cls, key: ClientKey) -> KeyLimits:
        return cls(rpm=key.rpm, tpm=key.tpm, budget_usd=key.budget_usd,
                   budget_period=key.budget_period)

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.budget_usd is None

    def reserve(self, estimated_tokens: int) -> int:
        """Tokens an admission reserves: the estimate, capped at one minute's worth."""
        return min(max(estimated_tokens, 0), self.tpm or 0)


class Verdict(msgspec.Struct):
    """The answer to one admission.

    `headers` go on the response whatever the verdict (OpenAI's
    ``x-ratelimit-*`` for each limit the key has; ``retry-after`` and
    ``retry-after-ms`` when refused). `retry_after` is in seconds. `degraded`
    means the limits could not be checked and the request was let through.
    """

    allowed: bool
    reason: Reason | None = None
    retry_after: float | None = None
    headers: dict[str, str] = {}
    degraded: bool = False

    def error(self) -> ProxyError:
        """The 429 to answer a refused request with, shaped as OpenAI's."""
        wait = openai_duration(self.retry_after or 0.0)
        if self.reason == "budget":
            return ProxyError(
                f"You exceeded this API key's budget for the period; it resets in {wait}.",
                status=429, type="insufficient_quota", code="insufficient_quota",
                headers=self.headers)
        unit = "tokens" if self.reason == "tokens" else "requests"
        limit = self.headers.get(f"x-ratelimit-limit-{unit}", "?")
        return ProxyError(
            f"Rate limit reached for {unit} per min ({'TPM' if unit == 'tokens' else 'RPM'}) "
            f"on this API key: Limit {limit}. Please try again in {wait}.",
            status=429, type=unit, code="rate_limit_exceeded", headers=self.headers)


class LimiterStatistics(msgspec.Struct):
    """Counts since start. `degraded`: let through unchecked; `unavailable`: answered 503."""

    admitted: int = 0
    degraded: int = 0
    refused_requests: int = 0
    refused_tokens: int = 0
    refused_budget: int = 0
    unavailable: int = 0
    redis_failures: int = 0


class Limiter(Protocol):
    """What the app needs from a limiter; `MemoryLimiter` and `RedisLimiter` provide it."""

    async def admit(
        self, key: str, limits: KeyLimits, *, estimated_tokens: int, now: float
    ) -> Verdict:
        """Check and count one request (one round trip). `now` is Unix time (seconds)."""

    async def settle(
        self, key: str, limits: KeyLimits, *, tokens: int, estimated_tokens: int,
        cost_usd: float, now: float,
    ) -> None:
        """After the response: correct the token reservation and add the spend."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the limiter's resources open until `aclose`; start with `nursery.start`."""

    async def aclose(self) -> None: ...

    def statistics(self) -> LimiterStatistics: ...


def openai_duration(seconds: float) -> str:
    """Format a duration as OpenAI's headers do (Go's style): ``120ms``, ``1.5s``, ``6m0s``.

    Rounded up to the millisecond, so that a client waiting that long is not early.
    """
    ms = max(0, math.ceil(round(seconds * 1000, 6)))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    text = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    if minutes:
        return f"{minutes}m{text}s"
    return f"{text}s"


def _spend_ttl(now: float, end: float) -> int:
    """Seconds a period's spend is kept: to the period's `end`, then a grace day."""
    return max(math.ceil(end - now), 0) + _SPEND_GRACE


def budget_window(now: float, period: Period) -> tuple[str, float]:
    """The UTC period containing `now`: its label (``2026-11-27`` / ``2026-11``) and its end."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return start.strftime("%Y-%m-%d"), (start + timedelta(days=1)).timestamp()
    start = start.replace(day=1)
    end = (start.replace(year=start.year + 1, month=1) if start.month == 12
           else start.replace(month=start.month + 1))
    return start.strftime("%Y-%m"), end.timestamp()


# -- the arithmetic, shared by both limiters (and mirrored in _LUA_COMMON) --

def _drain(state: tuple[float, float] | None, now: float, capacity: int) -> tuple[float, float]:
    """A bucket's (level, time) at `now`. A clock that went backwards drains nothing."""
    if state is None:
        return 0.0, now
    used, at = state
    elapsed = max(now - at, 0.0)
    return max(used - elapsed * capacity / WINDOW, 0.0), max(at, now)


def _failing(
    limits: KeyLimits, *, requests: float, tokens: float, reserve: int, spend: float,
    budget_wait: float,
) -> list[tuple[Reason, float]]:
    """The limits a request does not fit, budget first, each with the wait until it would."""
    failing: list[tuple[Reason, float]] = []
    if limits.budget_usd is not None and spend >= limits.budget_usd:
        failing.append(("budget", budget_wait))
    if limits.rpm is not None and requests + 1 > limits.rpm + _EPS:
        failing.append(("requests", (requests + 1 - limits.rpm) * WINDOW / limits.rpm))
    if limits.tpm is not None and tokens + reserve > limits.tpm + _EPS:
        failing.append(("tokens", (tokens + reserve - limits.tpm) * WINDOW / limits.tpm))
    return failing


def _bucket_headers(unit: str, capacity: int, level: float) -> dict[str, str]:
    remaining = min(capacity, max(0, math.floor(capacity - level + _EPS)))
    return {
        f"x-ratelimit-limit-{unit}": str(capacity),
        f"x-ratelimit-remaining-{unit}": str(remaining),
        f"x-ratelimit-reset-{unit}": openai_duration(level * WINDOW / capacity),
    }


def _verdict(
    limits: KeyLimits, requests: float, tokens: float, failing: list[tuple[Reason, float]]
) -> Verdict:
    """The verdict, from the bucket levels after the decision (unchanged when refused)."""
    headers: dict[str, str] = {}
    if limits.rpm is not None:
        headers |= _bucket_headers("requests", limits.rpm, requests)
    if limits.tpm is not None:
        headers |= _bucket_headers("tokens", limits.tpm, tokens)
    if not failing:
        return Verdict(allowed=True, headers=headers)
    # Every failing limit must have room again before a retry can pass: wait for the longest.
    wait = max(w for _, w in failing)
    headers["retry-after"] = str(max(1, math.ceil(wait)))
    headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
    return Verdict(allowed=False, reason=failing[0][0], retry_after=wait, headers=headers)


class _Counting:
    """Statistics shared by both limiters."""

    def __init__(self) -> None:
        self._stats = LimiterStatistics()

    def statistics(self) -> LimiterStatistics:
        return msgspec.structs.replace(self._stats)

    def _count(self, verdict: Verdict) -> Verdict:
        field = ("degraded" if verdict.degraded else "admitted" if verdict.allowed
                 else f"refused_{verdict.reason}")
        setattr(self._stats, field, getattr(self._stats, field) + 1)
        return verdict

    async def _unlimited(self) -> Verdict:
        """The admission of a key without limits: nothing to check or store."""
        await trio.lowlevel.checkpoint()
        return self._count(Verdict(allowed=True))


class KeyState(msgspec.Struct):
    """One key's counters: each bucket's (level, time), and (period label, spend)."""

    requests: tuple[float, float] | None = None
    tokens: tuple[float, float] | None = None
    spend: tuple[str, float] | None = None


def admit_state(state: KeyState, limits: KeyLimits, *, estimated_tokens: int,
                now: float) -> Verdict:
    """Check one request against `state` and count it there if it fits (pure but for
    `state`, which a refused request leaves as it was)."""
    reserve = limits.reserve(estimated_tokens)
    requests, requests_at = _drain(state.requests, now, limits.rpm or 1)
    tokens, tokens_at = _drain(state.tokens, now, limits.tpm or 1)
    label, end = budget_window(now, limits.budget_period)
    spent_label, spent = state.spend or (label, 0.0)
    failing = _failing(limits, requests=requests, tokens=tokens, reserve=reserve,
                       spend=spent if spent_label == label else 0.0, budget_wait=end - now)
    if not failing:
        if limits.rpm is not None:
            requests += 1
            state.requests = (requests, requests_at)
        if limits.tpm is not None:
            tokens += reserve
            state.tokens = (tokens, tokens_at)
    return _verdict(limits, requests, tokens, failing)


def settle_state(state: KeyState, limits: KeyLimits, *, tokens: int, estimated_tokens: int,
                 cost_usd: float, now: float) -> None:
    """Correct the token reservation and add the spend, in `state`."""
    if limits.tpm is not None:
        level, at = _drain(state.tokens, now, limits.tpm)
        delta = tokens - limits.reserve(estimated_tokens)
        state.tokens = (max(level + delta, 0.0), at)
    if limits.budget_usd is not None and cost_usd:
        label, _ = budget_window(now, limits.budget_period)
        spent_label, spent = state.spend or (label, 0.0)
        state.spend = (label, (spent if spent_label == label else 0.0) + cost_usd)


class MemoryLimiter(_Counting):
    """Limits kept in this process: exact for one worker, never shared with another
    (several workers share theirs through `SharedFileLimiter`)."""

    def __init__(self) -> None:
        super().__init__()
        self._state: dict[str, KeyState] = {}

    async def admit(
        self, key: str, limits: KeyLimits, *, estimated_tokens: int, now: float
    ) -> Verdict:
        await trio.lowlevel.checkpoint()
        if limits.unlimited:
            return self._count(Verdict(allowed=True))
        state = self._state.setdefault(key, KeyState())
        return self._count(admit_state(state, limits, estimated_tokens=estimated_tokens,
                                       now=now))

    async def settle(
        self, key: str, limits: KeyLimits, *, tokens: int, estimated_tokens: int,
        cost_usd: float, now: float,
    ) -> None:
        await trio.lowlevel.checkpoint()
        if limits.tpm is None and limits.budget_usd is None:
            return
        settle_state(self._state.setdefault(key, KeyState()), limits, tokens=tokens,
                     estimated_tokens=estimated_tokens, cost_usd=cost_usd, now=now)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


# -- Redis --------------------------------------------------------------------
