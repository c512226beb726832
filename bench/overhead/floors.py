"""The floors the proxy's cost is read against: two servers on the proxy's own stack.

* ``hello``: hypercorn's trio worker answering every request with a fixed JSON body (a
  minimal chat completion), the least any ASGI server on this stack costs per request. It
  does not stream: a floor for JSON requests only.
* ``bare``: a bare proxy hop on the same stack: read the body, peek at ``model`` with msgspec,
  forward the bytes to the upstream through httpcore2 (one pool, HTTP/1.1, keep-alive) and
  relay the answer as it comes (a stream chunk by chunk). No routing, no accounting, no
  repair: what forwarding alone costs, so what the proxy spends beyond it is its own logic.

Run as ``python -m bench.overhead.floors {hello,bare} --port P [--upstream URL]``; prints
``listening on http://HOST:PORT`` once bound.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, cast

import httpcore2
import hypercorn.config
import hypercorn.trio
import hypercorn.typing
import msgspec
import trio

from tlproxy.asgi import lifespan, read_body

__all__ = ["bare_hop", "hello", "main"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# A minimal chat completion, so a client that checks the answer's shape accepts it.
_HELLO = (b'{"id":"hello","object":"chat.completion","created":0,"model":"hello","choices":'
          b'[{"index":0,"message":{"role":"assistant","content":"hello"},'
          b'"finish_reason":"stop"}]}')
_JSON = [(b"content-type", b"application/json")]


class _Peek(msgspec.Struct):
    model: str = ""


_peek = msgspec.json.Decoder(_Peek).decode


def hello() -> App:
    """Every request answered with the same small JSON body."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_JSON, (b"content-length", b"%d" % len(_HELLO))]})
        await send({"type": "http.response.body", "body": _HELLO})

    return app


def bare_hop(upstream: str, pool: httpcore2.AsyncConnectionPool) -> App:
    """Forward each request's bytes to ``upstream`` + path and relay the answer."""
    base = upstream.rstrip("/")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        if body:  # a GET (the readiness probe's /v1/models) has none
            _peek(body)  # what a router would read, and nothing more
        url = base + scope["path"].removeprefix("/v1")
        async with pool.stream(scope["method"], url, content=body,
                               headers=[(b"content-type", b"application/json")]) as response:
            headers = [(k, v) for k, v in response.headers
                       if k.lower() in (b"content-type", b"content-length")]
            await send({"type": "http.response.start", "status": response.status,
                        "headers": headers})
            async for part in response.aiter_stream():
                await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


async def _serve(app: App, host: str, port: int) -> None:
    config = hypercorn.config.Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.keep_alive_timeout = 120.0
    config.backlog = 4096  # as the proxy's: C clients connecting at once are not refused
    async with trio.open_nursery() as nursery:
        # hypercorn types each ASGI message; these apps use plain dicts, as the proxy does.
        asgi = cast("hypercorn.typing.ASGIFramework", app)
        bound = await nursery.start(partial(hypercorn.trio.serve, asgi, config))
        print(f"listening on {bound[0]}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("hello", "bare"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", default="http://127.0.0.1:8001/v1",
                        help="the upstream's base URL, for bare")
    args = parser.parse_args(argv)

    async def run() -> None:
        if args.kind == "hello":
            await _serve(hello(), args.host, args.port)
            return
        async with httpcore2.AsyncConnectionPool(max_connections=1000) as pool:
            await _serve(bare_hop(args.upstream, pool), args.host, args.port)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
