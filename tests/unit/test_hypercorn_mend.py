"""`server._release_h2_sends_on_close`: a closed h2 connection releases blocked senders.

hypercorn 0.18's `H2Protocol.handle(Closed())` closes the connection's streams
but not their send buffers, so an app blocked in a send waits for the graceful
timeout. Driven here on a bare protocol object under the mock clock: the
sender must be released at once, at the same virtual time.
"""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.events import Closed
from hypercorn.protocol.h2 import H2Protocol, StreamBuffer
from hypercorn.trio.worker_context import EventWrapper

from tlproxy.server import _release_h2_sends_on_close


def bare_protocol(buffer: StreamBuffer) -> Any:
    """An H2Protocol with only what `handle(Closed())` touches."""
    protocol: Any = H2Protocol.__new__(H2Protocol)
    protocol.closed = False
    protocol.streams = {}
    protocol.stream_buffers = {1: buffer}
    protocol.has_data = EventWrapper()

    async def flush() -> None:
        pass

    protocol._flush = flush
    return protocol


async def test_a_closed_connection_releases_a_sender_waiting_to_drain(
    autojump_clock: trio.abc.Clock,
) -> None:
    _release_h2_sends_on_close()
    _release_h2_sends_on_close()  # idempotent: one wrapper, not two
    assert H2Protocol.handle.tlproxy_mended  # type: ignore[attr-defined]
    buffer = StreamBuffer(EventWrapper)
    await buffer.push(b"the rest of an answer")
    protocol = bare_protocol(buffer)
    released_at: list[float] = []

    async def sender() -> None:
        await buffer.drain()  # what an app's send waits on at the end of its body
        released_at.append(trio.current_time())

    # Virtual time: unmended, the sender would wait for ever; this fails at once.
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.sleep(5)
            assert not released_at
            await protocol.handle(Closed())
    assert released_at == [5.0]
    assert protocol.closed
