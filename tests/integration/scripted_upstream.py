"""A small OpenAI-compatible upstream that replays a script per model, over real HTTP.

Where the simulator answers like a well-behaved provider, this one sends
exactly the SSE events (or the JSON answer) a test scripts, with exact
(virtual) pauses between them, so a test can show what the client sees
through the proxy when an upstream streams reasoning, refusal or audio
deltas, or takes its time over a JSON answer. Served by hypercorn's trio
worker on a loopback port chosen by the OS.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from tlproxy.asgi import lifespan, read_body
from tlproxy.config import ProviderConfig

# ("sleep", seconds) | ("chunk", an SSE event's JSON) | ("answer", a JSON completion)
# | ("status", (HTTP status, JSON body)) | ("raw", bytes of a 200 JSON answer)
Step = tuple[str, Any]


class ScriptedUpstream:
    """The ASGI app: `scripts` by upstream model id; `calls` notes (time, model, stream)."""

    def __init__(self, scripts: Mapping[str, Sequence[Step]]) -> None:
        self.scripts = scripts
        self.calls: list[tuple[float, str, bool]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        if not scope["path"].endswith("/chat/completions"):
            await _respond(send, 404, {"error": {"message": "not scripted"}})
            return
        request = orjson.loads(body)
        model, stream = request["model"], bool(request.get("stream"))
        self.calls.append((trio.current_time(), model, stream))
        steps = list(self.scripts[model])
        if not stream:
            for kind, arg in steps:
                if kind == "sleep":
                    await trio.sleep(arg)
                elif kind == "answer":
                    await _respond(send, 200, arg)
                elif kind == "status":  # (HTTP status, error body)
                    await _respond(send, *arg)
                elif kind == "raw":  # a 200 whose body is these bytes, JSON or not
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [(b"content-type", b"application/json")]})
                    await send({"type": "http.response.body", "body": arg})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for kind, arg in steps:
            if kind == "sleep":
                await trio.sleep(arg)
            else:
                event = b"data: " + orjson.dumps(arg) + b"\n\n"
                await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                    "more_body": False})


async def _respond(send: Any, status: int, body: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


async def serve_asgi(nursery: trio.Nursery, app: Any) -> str:
    """Serve an ASGI app of a test on a loopback port; its address (``http://host:port``)."""
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.0
    addresses = await nursery.start(functools.partial(serve, app, config))
    return str(addresses[0])


async def start_upstream(nursery: trio.Nursery, upstream: ScriptedUpstream) -> ProviderConfig:
    """Serve `upstream` on a loopback port; the provider config that points at it."""
    return ProviderConfig(kind="openai", base_url=f"{await serve_asgi(nursery, upstream)}/v1")


def chunk(model: str, delta: dict[str, Any] | None = None, *,
          finish_reason: str | None = None) -> dict[str, Any]:
    """A ``chat.completion.chunk`` with one choice."""
    return {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1,
            "model": model, "choices": [{"index": 0, "delta": delta or {},
                                         "finish_reason": finish_reason}]}


def usage_chunk(model: str, prompt: int = 9, completion: int = 300) -> dict[str, Any]:
    return {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1,
            "model": model, "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}


def completion(model: str, content: str) -> dict[str, Any]:
    """A whole ``chat.completion``, as a JSON answer."""
    return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": 1,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}
