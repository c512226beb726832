"""One measured request over httpx on trio: the only place here that touches the network.

httpx exceptions become error kinds at this one boundary (`classify`); everything after works
on `Sample` values. Clock readings are ``trio.current_time()`` taken as soon as each read
returns, so they include the client's own scheduling delay, which is why the tool reports its
CPU use and event-loop lag beside the numbers.
"""

from __future__ import annotations

from collections.abc import AsyncIterable

import httpx
import trio

from .endpoints import Endpoint
from .recorder import CONNECT, PROTOCOL, STREAM_CUT, TIMEOUT, Sample, TimingRecorder

__all__ = ["classify", "make_client", "measure_request", "record_stream"]

# After [DONE] the body should end at once; reading it to the end keeps the connection
# reusable, but a server that holds it open must not turn a finished request into a timeout.
_DRAIN_AFTER_DONE = 1.0


def make_client(
    endpoint: Endpoint,
    *,
    http2: bool,
    timeout: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A client with its own unbounded pool, so endpoints never queue behind each other.

    With ``http2`` a plain ``http://`` URL is spoken as HTTP/2 with prior knowledge (there is no
    TLS to negotiate it), and an ``https://`` URL offers h2 through ALPN. ``transport`` replaces
    the network (tests pass an ``httpx.MockTransport``).
    """
    prior_knowledge = http2 and endpoint.base_url.startswith("http://")
    return httpx.AsyncClient(
        http1=not prior_knowledge,
        http2=http2,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        transport=transport,
    )


def classify(exc: httpx.TransportError, *, responded: bool) -> str:
    """The error kind for a transport failure, before or after the response headers."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return CONNECT
    if isinstance(exc, httpx.TimeoutException):
        return TIMEOUT
    return STREAM_CUT if responded else PROTOCOL


async def record_stream(recorder: TimingRecorder, chunks: AsyncIterable[bytes]) -> None:
    """Feed every read of ``chunks`` to ``recorder`` with the time it returned."""
    iterator = aiter(chunks)
    async for data in iterator:
        recorder.feed(trio.current_time(), data)
        if recorder.done:
            break
    if recorder.done:
        with trio.move_on_after(_DRAIN_AFTER_DONE):
            async for _ in iterator:
                pass


async def measure_request(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    body: bytes,
    *,
    time_limit: float,
    scheduled: float | None = None,
    origin: float | None = None,
) -> Sample:
    """Send one streaming chat request and return what the client saw; never raises for I/O.

    ``time_limit`` (seconds) bounds the whole request, from send to the end of the stream.
    """
    sent = trio.current_time()
    recorder = TimingRecorder(sent, scheduled=scheduled, origin=origin)
    responded = False
    with trio.move_on_after(time_limit) as scope:
        try:
            async with client.stream(
                "POST", endpoint.url, content=body, headers=endpoint.request_headers()
            ) as response:
                responded = True
                recorder.on_response(
                    trio.current_time(), response.status_code, response.http_version
                )
                await record_stream(recorder, response.aiter_raw())
        except httpx.TransportError as exc:
            kind = classify(exc, responded=responded)
            recorder.fail(trio.current_time(), kind, f"{type(exc).__name__}: {exc}")
    if scope.cancelled_caught:
        recorder.fail(trio.current_time(), TIMEOUT, f"no complete answer within {time_limit:g} s")
    sample = recorder.finish(trio.current_time())
    if sample.detail:
        sample.detail = endpoint.scrub(sample.detail)
    return sample
