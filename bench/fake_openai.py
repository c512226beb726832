"""A tiny OpenAI-compatible streaming server with a chosen latency, to try the benchmarks on.

It knows ``POST .../chat/completions`` (streaming or not) and ``GET .../models``. A stream is a
role-only chunk at once, then after ``ttft`` seconds one content token every ``itl`` seconds up
to ``max_tokens`` (or ``tokens``), a chunk with ``finish_reason``, the usage chunk when
``stream_options.include_usage`` asks for it, and ``[DONE]``. ``jitter`` multiplies each delay by
a log-normal factor (sigma = jitter) from a seeded RNG, so runs are repeatable but not flat.

It also gives the floor of a measurement: benchmarked with ``--ttft-ms 0 --itl-ms 0`` it shows
what the client and the loopback add by themselves.

    python -m bench.fake_openai --port 8001 --ttft-ms 80 --itl-ms 15 --jitter 0.3
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio

__all__ = ["create_app", "main"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_app(
    *,
    ttft: float = 0.05,
    itl: float = 0.01,
    tokens: int | None = None,
    jitter: float = 0.0,
    seed: int = 0,
) -> App:
    """An ASGI app answering like an OpenAI chat model with the given latencies (seconds)."""
    rng = random.Random(seed)

    def delay(base: float) -> float:
        return base * rng.lognormvariate(0.0, jitter) if jitter and base else base

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path.endswith("/models"):
            entry = {"id": "fake", "object": "model", "created": 0, "owned_by": "bench"}
            await _json(send, 200, {"object": "list", "data": [entry]})
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            await _json(send, 404, _error(f"no route for {method} {path}", "not_found"))
            return
        try:
            body = orjson.loads(await _read_body(receive))
            if not isinstance(body, dict):
                raise TypeError("body must be an object")
        except (orjson.JSONDecodeError, TypeError) as exc:
            await _json(send, 400, _error(str(exc), "invalid_request_error"))
            return
        count = tokens if tokens is not None else int(body.get("max_tokens") or 16)
        model = str(body.get("model", "fake"))
        if not body.get("stream"):
            await trio.sleep(delay(ttft) + count * delay(itl))
            await _json(send, 200, _completion(model, count))
            return
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        await _stream(send, model, count, usage, first=delay(ttft), gap=lambda: delay(itl))

    return app


async def _stream(
    send: Send, model: str, count: int, usage: bool, *, first: float, gap: Callable[[], float]
) -> None:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model}

    async def event(payload: object) -> None:
        data = b"[DONE]" if payload is None else orjson.dumps(payload)
        await send(
            {"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True}
        )

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    await event(chunk({"role": "assistant", "content": ""}))
    await trio.sleep(first)
    for i in range(count):
        if i:
            await trio.sleep(gap())
        await event(chunk({"content": f"tok{i} "}))
    await event(chunk({}, "length"))
    if usage:
        totals = {"prompt_tokens": 10, "completion_tokens": count, "total_tokens": 10 + count}
        await event({**base, "choices": [], "usage": totals})
    await event(None)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _completion(model: str, count: int) -> dict[str, Any]:
    text = "".join(f"tok{i} " for i in range(count))
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": count, "total_tokens": 10 + count},
    }


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


async def _json(send: Send, status: int, payload: object) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(parts)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def main(argv: list[str] | None = None) -> int:
    """Serve the fake model until interrupted; prints the base URL to use."""
    p = argparse.ArgumentParser(
        prog="python -m bench.fake_openai", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--tokens", type=int, default=None, help="answer length (default max_tokens)")
    p.add_argument("--jitter", type=float, default=0.0, help="log-normal sigma of each delay")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from hypercorn.config import Config
    from hypercorn.trio import serve

    app = create_app(
        ttft=args.ttft_ms / 1000,
        itl=args.itl_ms / 1000,
        tokens=args.tokens,
        jitter=args.jitter,
        seed=args.seed,
    )
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.accesslog = None
    config.errorlog = None

    async def serve_and_announce() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, app, config)
            print(f"fake OpenAI endpoint at {binds[0]}/v1", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve_and_announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
