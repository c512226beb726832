"""The client: streamed chat completions in a closed loop, TTFT read on the trio clock.

TTFT runs from just before the request is sent to the read that completes the first SSE event
with content (not the role-only chunk); `bench.overhead`'s `FirstContentDetector` finds that
event, so both benchmarks define the first token the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import trio

from bench.overhead.stats import FirstContentDetector
from bench.race.scenario import Item

__all__ = ["Sample", "Target", "closed_loop", "stream_one"]

_REQUEST_TIMEOUT = 30.0


@dataclass
class Sample:
    index: int
    tier_expected: str
    target: str  # the URL's provider for direct runs, "proxy" otherwise
    start: float
    ttft: float | None = None
    end: float | None = None
    status: int = 0
    tier: str | None = None
    model: str | None = None
    rule: str | None = None
    request_id: str | None = None
    error: str | None = None


async def stream_one(client: httpx.AsyncClient, url: str, body: bytes, sample: Sample) -> Sample:
    """One streamed request into `sample`: headers, TTFT (first content event) and any error."""
    detector = FirstContentDetector()
    done = False
    try:
        async with client.stream("POST", url, content=body,
                                 headers={"content-type": "application/json",
                                          "authorization": "Bearer bench"}) as response:
            sample.status = response.status_code
            sample.tier = response.headers.get("x-tlproxy-tier")
            sample.model = response.headers.get("x-tlproxy-model")
            sample.rule = response.headers.get("x-tlproxy-rule")
            sample.request_id = response.headers.get("x-request-id")
            if response.status_code != 200:
                await response.aread()
                sample.error = f"http_{response.status_code}"
                return sample
            async for data in response.aiter_raw():
                now = trio.current_time()
                if detector.feed(data):
                    sample.ttft = now - sample.start
            done = detector.done
    except httpx.HTTPError as exc:
        sample.error = type(exc).__name__
    sample.end = trio.current_time()
    if sample.error is None and sample.ttft is None:
        sample.error = "no_content"
    elif sample.error is None and not done:
        sample.error = "no_done"
    return sample


Target = Callable[[Item], tuple[str, str, str]]  # item -> (url, model, target name)


async def closed_loop(items: Sequence[Item], target: Target, concurrency: int) -> list[Sample]:
    """`concurrency` workers, each with its own connection, sending the items in order."""
    samples: list[Sample] = []
    queue = iter(items)
    clients = [httpx.AsyncClient(timeout=_REQUEST_TIMEOUT,
                                 limits=httpx.Limits(max_connections=1))
               for _ in range(concurrency)]

    async def worker(client: httpx.AsyncClient) -> None:
        for item in queue:
            url, model, name = target(item)
            sample = Sample(item.index, item.tier, name, trio.current_time())
            samples.append(await stream_one(client, url, item.body(model), sample))

    try:
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(worker, client)
    finally:
        with trio.CancelScope(shield=True):
            for client in clients:
                await client.aclose()
    return sorted(samples, key=lambda s: s.index)

