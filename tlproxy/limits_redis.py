"""Per-key limits in Redis: one atomic Lua script per admission, single node or cluster.

The same arithmetic as `limits.MemoryLimiter` (GCRA buckets for rpm and tpm, a
spend counter per budget period), run by Redis, so every worker of every
instance sees one count. A key's state lives in one hash slot (its keys share
a hash tag), so a cluster runs each script on one node. coredis is imported
only when a Redis limiter is built: a proxy with its limits in memory never
pays for the import.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import quote, unquote, urlsplit

import trio

from .errors import ProxyError
from .limits import (
    KeyLimits,
    Verdict,
    _Counting,
    _failing,
    _spend_ttl,
    _verdict,
    budget_window,
)

if TYPE_CHECKING:
    import coredis
    from coredis.commands import Script

__all__ = ["RedisLimiter", "redis_client"]

log = logging.getLogger("tlproxy.limits")


_LUA_COMMON = """
local now = tonumber(ARGV[1])
if not now then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function num(x) return string.format('%.17g', x) end
-- Mirrors _drain: the level and time of a bucket at `now`.
local function drain(key, cap)
  local s = redis.call('HMGET', key, 'used', 'at')
  local used, at = tonumber(s[1]), tonumber(s[2])
  if not used then return 0, now end
  local elapsed = math.max(now - at, 0)
  return math.max(used - elapsed * cap / 60, 0), math.max(at, now)
end
local function store(key, cap, used, at)
  redis.call('HSET', key, 'used', num(used), 'at', num(at))
  -- Gone once fully drained, when it would read as empty anyway.
  redis.call('PEXPIRE', key, math.ceil(used * 60000 / cap) + 1000)
end
"""

# KEYS: requests bucket, tokens bucket, spend. ARGV: now ('' = Redis time),
# rpm, tpm ('' = none), tokens to reserve, budget ('' = none).
_ADMIT_LUA = _LUA_COMMON + """
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local reserve, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local requests, requests_at, tokens, tokens_at = 0, now, 0, now
if rpm then requests, requests_at = drain(KEYS[1], rpm) end
if tpm then tokens, tokens_at = drain(KEYS[2], tpm) end
local spend = 0
if budget then spend = tonumber(redis.call('GET', KEYS[3]) or '0') end
local allowed = (not budget or spend < budget)
  and (not rpm or requests + 1 <= rpm + 1e-6)
  and (not tpm or tokens + reserve <= tpm + 1e-6)
if allowed then
  if rpm then requests = requests + 1; store(KEYS[1], rpm, requests, requests_at) end
  if tpm then tokens = tokens + reserve; store(KEYS[2], tpm, tokens, tokens_at) end
end
return {allowed and 1 or 0, num(requests), num(tokens), num(spend)}
"""

# KEYS: tokens bucket, spend. ARGV: now ('' = Redis time), tpm ('' = none),
# token correction, cost ('' = none), seconds the spend key lives. The lifetime is
# relative, not an EXPIREAT: the period's end follows the caller's clock, and an
# absolute time would be read on Redis's own clock, which may differ from it.
_SETTLE_LUA = _LUA_COMMON + """
local tpm, delta = tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm and delta ~= 0 then
  local tokens, at = drain(KEYS[1], tpm)
  store(KEYS[1], tpm, math.max(tokens + delta, 0), at)
end
if ARGV[4] ~= '' then
  redis.call('INCRBYFLOAT', KEYS[2], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
return 1
"""

_RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _arg(value: float | None) -> str:
    return "" if value is None else repr(value)


def _describe(error: BaseException) -> str:
    # Logged as text: a log record holding the exception would keep its
    # traceback, and the connections in it, alive.
    return f"{type(error).__name__}: {error}"


def redis_client(url: str, *, cluster: bool | None = None, connect_timeout: float = 1.0,
                 ) -> coredis.Redis[bytes] | coredis.RedisCluster[bytes]:
    """A coredis client for `url`; no I/O until it is entered.

    A Redis Cluster is chosen by ``cluster=True`` or a ``redis+cluster://`` scheme;
    the URL names any one node and the client discovers the others.
    """
    import coredis
    from coredis.connection import TCPLocation

    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme.endswith("+cluster"):
        scheme, cluster = scheme.removesuffix("+cluster"), True
    if cluster:
        # Built by hand: coredis's own RedisCluster.from_url warns about itself.
        return coredis.RedisCluster(
            startup_nodes=[TCPLocation(parts.hostname or "localhost", parts.port or 6379)],
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ssl=scheme == "rediss", connect_timeout=connect_timeout, decode_responses=False)
    return coredis.Redis.from_url(parts._replace(scheme=scheme).geturl(),
                                  connect_timeout=connect_timeout)


class RedisLimiter(_Counting):
    """Limits shared by every process that uses the same Redis (or Redis Cluster).

    Start it with ``await nursery.start(limiter.run)`` or ``async with limiter:``,
    stop it with `aclose`; until Redis answers, admissions follow `on_failure`.
    `clock`: rate-limit time from ``"redis"`` (shared by all processes) or
    ``"caller"`` (the `now` passed in). Budget periods always follow `now`.
    """

    def __init__(
        self, url: str, *, timeout: float = 0.25, on_failure: Literal["open", "closed"] = "open",
        cluster: bool | None = None, prefix: str = "tlproxy",
        clock: Literal["redis", "caller"] = "redis",
    ) -> None:
        from coredis.commands import Script
        from coredis.exceptions import RedisError

        super().__init__()
        # What a failing, unreachable or restarting Redis raises (TimeoutError is an OSError).
        self._errors: tuple[type[Exception], ...] = (RedisError, OSError)
        self.timeout = timeout
        self.on_failure = on_failure
        self.clock = clock
        self._prefix = prefix
        # Opening a connection costs several round trips (HELLO, ...); it gets more
        # time than one request, which runs on a connection already open.
        self._connect_timeout = max(timeout, 1.0)
        self._url, self._cluster = url, cluster
        # Made by `run`, anew for each attempt to open it; None while closed.
        self._client: coredis.Redis[bytes] | coredis.RedisCluster[bytes] | None = None
        self._admit: Script[bytes] = Script(script=_ADMIT_LUA)
        self._settle: Script[bytes] = Script(script=_SETTLE_LUA)
        self._connected = False
        self._healthy = True
        self._running = False
        self._closing = trio.Event()
        self._closed = trio.Event()
        self._stack: contextlib.AsyncExitStack | None = None

    def keys(self, key: str, period: str = "") -> list[str]:
        """The Redis keys of one client key: requests, tokens, spend in `period`."""
        tag = "{" + f"{self._prefix}:{quote(key, safe='')}" + "}"
        return [f"{tag}:rpm", f"{tag}:tpm", f"{tag}:spend:{period}"]

    async def admit(
        self, key: str, limits: KeyLimits, *, estimated_tokens: int, now: float
    ) -> Verdict:
        if limits.unlimited:
            return await self._unlimited()
        reserve = limits.reserve(estimated_tokens)
        period, end = budget_window(now, limits.budget_period)
        args = [_arg(now if self.clock == "caller" else None), _arg(limits.rpm),
                _arg(limits.tpm), str(reserve), _arg(limits.budget_usd)]
        reply = await self._call(self._admit, self.keys(key, period), args)
        if reply is None:
            return self._unavailable()
        allowed, requests, tokens, spend = int(reply[0]), *map(float, reply[1:])
        # Refused, the levels are those the script judged by: the same checks find why.
        failing = [] if allowed else _failing(
            limits, requests=requests, tokens=tokens, reserve=reserve, spend=spend,
            budget_wait=end - now)
        return self._count(_verdict(limits, requests, tokens, failing))

    async def settle(
        self, key: str, limits: KeyLimits, *, tokens: int, estimated_tokens: int,
        cost_usd: float, now: float,
    ) -> None:
        delta = tokens - limits.reserve(estimated_tokens) if limits.tpm is not None else 0
        charge = limits.budget_usd is not None and cost_usd != 0
        if not delta and not charge:
            await trio.lowlevel.checkpoint()
            return
        period, end = budget_window(now, limits.budget_period)
        args = [_arg(now if self.clock == "caller" else None), _arg(limits.tpm), str(delta),
                _arg(cost_usd) if charge else "", str(_spend_ttl(now, end))]
        await self._call(self._settle, self.keys(key, period)[1:], args)

    async def _call(self, script: Script[bytes], keys: list[str],
                    args: list[str]) -> list[Any] | None:
        """Run a script within the timeout; None when Redis failed or was too slow."""
        failure = "Redis limiter is not running (start RedisLimiter.run)"
        if self._connected and self._client is not None:
            failure = f"no answer from Redis within {self.timeout}s"
            with trio.move_on_after(self.timeout):
                try:
                    reply: list[Any] = await script(keys=keys, args=args, client=self._client)
                except self._errors as exc:
                    failure = _describe(exc)
                else:
                    if not self._healthy:
                        log.info("Redis answers again; limits are enforced")
                    self._healthy = True
                    return reply
        self._stats.redis_failures += 1
        if self._healthy:
            # Once per outage: a log line per request would flood the logs.
            log.warning("limits store unavailable (%s); on_failure=%s", failure, self.on_failure)
        self._healthy = False
        return None

    def _unavailable(self) -> Verdict:
        if self.on_failure == "closed":
            self._stats.unavailable += 1
            raise ProxyError(
                "Rate limits cannot be checked right now; please retry shortly.",
                status=503, type="service_unavailable", code="limits_unavailable",
            )
        return self._count(Verdict(allowed=True, degraded=True))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the connection pool open until `aclose` or cancellation.

        Reports started once the pool is open or failed to open (a down Redis must
        not stop the proxy from starting); a failed open is retried with backoff.
        """
        if self._running:
            raise RuntimeError("RedisLimiter.run is already running")
        self._running = True
        try:
            for attempt in itertools.count():
                self._client = redis_client(self._url, cluster=self._cluster,
                                            connect_timeout=self._connect_timeout)
                try:
                    async with self._client:
                        await self._warm_up(self._client)
                        self._connected = True
                        task_status.started()
                        task_status = trio.TASK_STATUS_IGNORED
                        await self._closing.wait()
                        return
                except* self._errors as group:
                    self._stats.redis_failures += 1
                    log.warning("cannot open the Redis limits store: %s",
                                _describe(group.exceptions[0]))
                finally:
                    self._connected, self._client = False, None
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                with trio.move_on_after(_RECONNECT_DELAYS[min(attempt, 5)]):
                    await self._closing.wait()
                if self._closing.is_set():
                    return
        finally:
            self._closed.set()

    async def _warm_up(self, client: coredis.Redis[bytes] | coredis.RedisCluster[bytes]) -> None:
        """Connect and load the scripts now (best effort): the first request need not."""
        with trio.move_on_after(self._connect_timeout), contextlib.suppress(*self._errors):
            for script in (self._admit, self._settle):
                await client.script_load(script.script)

    async def aclose(self) -> None:
        """Close the pool; waits for `run` to let go of it. Safe to call twice."""
        self._closing.set()
        if self._running:
            await self._closed.wait()

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(self.run)
            # Started: the nursery now lives until __aexit__.
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
