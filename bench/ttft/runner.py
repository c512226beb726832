"""Load generation: closed loop at fixed concurrencies, open loop at Poisson request rates.

Fairness between endpoints
--------------------------
Endpoints measured one after another see different machines: a backup starts, the laptop
throttles, a neighbour's build runs. So every endpoint runs at the same time and requests are
interleaved: in closed loop each of ``c * len(endpoints)`` workers alternates endpoints
round-robin (worker ``w`` starts at endpoint ``w % n``), so each endpoint gets the same number
of requests and any noise lands on all of them. Per endpoint the concurrency is ``c`` while the
endpoints are equally fast; a slower endpoint holds workers longer and so more of them, which the
summary shows as ``in_flight``. The k-th request to every endpoint carries the same prompt.

Coordinated omission
--------------------
A closed loop only sends when a worker is free, so a server that stalls also stalls the load
and its stall shows up in one sample instead of in every request that should have been sent
meanwhile. The open loop avoids that: arrival times come from a seeded Poisson schedule fixed
in advance, a sender sleeps until each one and starts the request in its own task without
waiting for earlier answers, and each `Sample` records its lag behind the schedule, so latency
is available from the scheduled time too (``ttft_from_schedule``). At each arrival every
endpoint gets one request, in rotating order, so they see the same arrival process.

A request started before the end of a ``--duration`` window is always allowed to finish:
cutting it would drop the slowest requests from the statistics.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

import httpx
import msgspec
import trio

from .client import make_client, measure_request
from .endpoints import Endpoint
from .recorder import Sample
from .stats import Distribution
from .workload import PromptSource, chat_body, poisson_arrivals

__all__ = ["Level", "LevelResult", "NullProgress", "Progress", "RunResult", "Settings", "run"]

# How often the event-loop lag probe wakes up; small enough to see stalls, cheap enough not
# to cause them.
_LAG_PROBE_INTERVAL = 0.01
_PROGRESS_INTERVAL = 0.1


@dataclass(frozen=True)
class Level:
    """One load level: ``closed`` with ``value`` workers per endpoint, or ``open`` at ``value``
    requests per second per endpoint."""

    kind: Literal["closed", "open"]
    value: float

    @property
    def label(self) -> str:
        """``c=8`` or ``rate=2.5/s``, as tables and plots name the level."""
        return f"c={self.value:g}" if self.kind == "closed" else f"rate={self.value:g}/s"


@dataclass(frozen=True)
class Settings:
    """How to drive the load; exactly one of ``duration``/``requests`` bounds each level."""

    levels: Sequence[Level]
    duration: float | None = None
    requests: int | None = None
    warmup: int = 1
    timeout: float = 60.0
    seed: int = 0
    http2: bool = False


class Progress(Protocol):
    """Where the runner reports progress; the CLI draws it with rich."""

    def level_started(self, label: str, *, requests: int | None, duration: float | None) -> None:
        """A measured phase starts; ``requests`` is the total over endpoints when known."""

    def request_done(self, sample: Sample) -> None:
        """A measured request finished."""

    def tick(self, elapsed: float) -> None:
        """Periodic, with the seconds since the measured phase started."""

    def level_finished(self) -> None:
        """The measured phase is over."""


class NullProgress:
    """Reports nothing."""

    def level_started(self, label: str, *, requests: int | None, duration: float | None) -> None:
        pass

    def request_done(self, sample: Sample) -> None:
        pass

    def tick(self, elapsed: float) -> None:
        pass

    def level_finished(self) -> None:
        pass


class LevelResult(msgspec.Struct, kw_only=True):
    """The measured samples of one level, per endpoint name, and the client's own load.

    ``cpu`` is process CPU seconds over ``wall`` seconds of the measured phase: near 1.0 means
    one core was busy and the client, not the servers, may have set the pace. ``loop_lag`` is
    how late a 10 ms timer fired, a direct measure of how late timestamps may be.
    """

    kind: str
    value: float
    label: str
    wall: float = 0.0
    cpu: float = 0.0
    loop_lag: Distribution = msgspec.field(default_factory=lambda: Distribution(n=0))
    samples: dict[str, list[Sample]] = msgspec.field(default_factory=dict)

    @property
    def cpu_share(self) -> float:
        """Client CPU as a share of one core over the measured phase."""
        return self.cpu / self.wall if self.wall > 0 else 0.0


@dataclass
class RunResult:
    """Everything measured so far; filled in place, so an interrupted run keeps its levels."""

    endpoints: list[Endpoint]
    settings: Settings
    levels: list[LevelResult] = field(default_factory=list)
    interrupted: bool = False


@dataclass
class _Context:
    endpoints: list[Endpoint]
    clients: list[httpx.AsyncClient]
    prompts: PromptSource
    settings: Settings
    progress: Progress
    # Per-endpoint count of requests sent so far: the prompt index, never reused in a run.
    sent: list[int]

    async def send(
        self, j: int, *, scheduled: float | None, origin: float, into: LevelResult | None
    ) -> None:
        endpoint = self.endpoints[j]
        index = self.sent[j]
        self.sent[j] += 1
        body = chat_body(self.prompts.template(index), endpoint.model)
        sample = await measure_request(
            self.clients[j],
            endpoint,
            body,
            time_limit=self.settings.timeout,
            scheduled=scheduled,
            origin=origin,
        )
        if into is not None:
            into.samples[endpoint.name].append(sample)
            self.progress.request_done(sample)


async def run(
    endpoints: list[Endpoint],
    prompts: PromptSource,
    result: RunResult,
    progress: Progress,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RunResult:
    """Run every level of ``result.settings`` against ``endpoints``, appending to ``result``.

    ``transport`` replaces the network for every endpoint (tests).
    """
    settings = result.settings
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                make_client(e, http2=settings.http2, timeout=settings.timeout, transport=transport)
            )
            for e in endpoints
        ]
        ctx = _Context(endpoints, clients, prompts, settings, progress, [0] * len(endpoints))
        for level in settings.levels:
            level_result = LevelResult(
                kind=level.kind,
                value=level.value,
                label=level.label,
                samples={e.name: [] for e in endpoints},
            )
            result.levels.append(level_result)
            if level.kind == "closed":
                await _closed_level(ctx, level, level_result)
            else:
                await _open_level(ctx, level, level_result)
    return result


async def _closed_level(ctx: _Context, level: Level, out: LevelResult) -> None:
    settings = ctx.settings
    workers = int(level.value) * len(ctx.endpoints)
    if settings.warmup:
        origin = trio.current_time()
        await _closed_phase(ctx, workers, settings.warmup, None, origin=origin, out=None)
    total = settings.requests * len(ctx.endpoints) if settings.requests else None
    ctx.progress.level_started(out.label, requests=total, duration=settings.duration)
    async with _measured(ctx, out) as origin:
        deadline = origin + settings.duration if settings.duration is not None else None
        await _closed_phase(ctx, workers, settings.requests, deadline, origin=origin, out=out)
    ctx.progress.level_finished()


async def _closed_phase(
    ctx: _Context,
    workers: int,
    quota: int | None,
    deadline: float | None,
    *,
    origin: float,
    out: LevelResult | None,
) -> None:
    n = len(ctx.endpoints)
    left = [quota or 0] * n

    async def worker(w: int) -> None:
        start = w % n
        while deadline is None or trio.current_time() < deadline:
            # Round-robin from where this worker left off, skipping endpoints whose quota
            # is used up; with none left the worker is done.
            for step in range(n):
                j = (start + step) % n
                if quota is None or left[j] > 0:
                    break
            else:
                return
            left[j] -= 1
            await ctx.send(j, scheduled=None, origin=origin, into=out)
            start = (j + 1) % n

    async with trio.open_nursery() as nursery:
        for w in range(workers):
            nursery.start_soon(worker, w)


async def _open_level(ctx: _Context, level: Level, out: LevelResult) -> None:
    settings = ctx.settings
    arrivals = poisson_arrivals(level.value, seed=settings.seed)
    total = settings.requests * len(ctx.endpoints) if settings.requests else None
    t0 = trio.current_time()
    async with trio.open_nursery() as warmup_nursery:
        # Warm-up arrivals follow the same schedule, so the measured phase starts in the
        # steady state instead of from an idle server.
        for k in range(settings.warmup):
            when = t0 + next(arrivals)
            await _arrive(ctx, warmup_nursery, k, when, origin=t0, out=None)
        ctx.progress.level_started(out.label, requests=total, duration=settings.duration)
        # The inner nursery waits for the measured requests still in flight, inside the
        # measured phase; warm-up stragglers finish in the outer one.
        async with _measured(ctx, out) as origin, trio.open_nursery() as nursery:
            end = origin + settings.duration if settings.duration is not None else None
            k = 0
            while settings.requests is None or k < settings.requests:
                when = t0 + next(arrivals)
                if end is not None and when >= end:
                    break
                await _arrive(ctx, nursery, settings.warmup + k, when, origin=origin, out=out)
                k += 1
    ctx.progress.level_finished()


async def _arrive(
    ctx: _Context,
    nursery: trio.Nursery,
    k: int,
    when: float,
    *,
    origin: float,
    out: LevelResult | None,
) -> None:
    await trio.sleep_until(when)
    send = functools.partial(ctx.send, scheduled=when, origin=origin, into=out)
    n = len(ctx.endpoints)
    for step in range(n):
        nursery.start_soon(send, (k + step) % n)


@asynccontextmanager
async def _measured(ctx: _Context, out: LevelResult) -> AsyncIterator[float]:
    """A measured phase: yields its origin, records CPU, wall and event-loop lag into ``out``.

    The results are written in ``finally`` so that an interrupted level still has them.
    """
    origin = trio.current_time()
    cpu = time.process_time()
    lags: list[float] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_probe, ctx, origin, lags)
            yield origin
            nursery.cancel_scope.cancel()
    finally:
        out.wall = trio.current_time() - origin
        out.cpu = time.process_time() - cpu
        out.loop_lag = Distribution.of(lags)


async def _probe(ctx: _Context, origin: float, lags: list[float]) -> None:
    ticks = round(_PROGRESS_INTERVAL / _LAG_PROBE_INTERVAL)
    while True:
        target = trio.current_time() + _LAG_PROBE_INTERVAL
        await trio.sleep_until(target)
        now = trio.current_time()
        lags.append(now - target)
        if len(lags) % ticks == 0:
            ctx.progress.tick(now - origin)
