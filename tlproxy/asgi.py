"""Small ASGI pieces shared by the proxy's app and the simulated upstream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Receive", "Send", "lifespan", "read_body"]

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge the server's start-up and shutdown; the apps keep no lifespan state."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Receive) -> bytes:
    """A request's whole body, however many messages the server split it into.

    For the simulated upstream and the test and benchmark servers: the proxy's
    own edge reads with a size limit and a timeout (`edge.Request.body`).
    """
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)
