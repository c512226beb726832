"""A fast OpenAI-compatible upstream for the overhead benchmark: uvloop and httptools.

The proxy's cost is measured as the difference between calling an upstream directly and
through the proxy, on one machine. When the upstream is itself a Python server on trio (the
built-in sim), it takes about as much CPU per request as the proxy, competes with it for the
machine's cores, and its own latency under load blurs the difference. This one answers in a
few microseconds of C-backed work per request, so the cores stay free for the proxy and the
client.

It answers ``POST .../chat/completions`` (JSON, or an SSE stream when the body says
``"stream": true``: a role chunk at once, then after ``--ttft-ms`` one content token every
``--itl-ms`` up to ``--tokens``, the finish chunk, a usage chunk when
``stream_options.include_usage`` asks for it, ``[DONE]``), ``POST .../embeddings`` and
``GET .../models``, over HTTP/1.1 keep-alive. It prints ``listening on http://HOST:PORT`` once
bound (``--port 0`` picks a free port).

    python -m bench.fast_upstream --port 8001 --ttft-ms 200 --itl-ms 10 --tokens 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import httptools
import orjson
import uvloop

__all__ = ["Answers", "main"]


class Answers:
    """The bytes the upstream sends: built once, so a request costs a lookup and a write."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
        self.completion = orjson.dumps({
            "id": "chatcmpl-fast", "object": "chat.completion", "created": 1_700_000_000,
            "model": "fast", "system_fingerprint": None,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": " tok" * tokens,
                                     "refusal": None}}],
            "usage": usage,
        })
        base = {"id": "chatcmpl-fast", "object": "chat.completion.chunk",
                "created": 1_700_000_000, "model": "fast", "system_fingerprint": None}

        def event(choices: list[Any], **extra: Any) -> bytes:
            return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"

        self.role = event([{"index": 0, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": None}])
        self.token = event([{"index": 0, "delta": {"content": " tok"}, "logprobs": None,
                             "finish_reason": None}])
        self.finish = event([{"index": 0, "delta": {}, "logprobs": None,
                              "finish_reason": "stop"}])
        self.usage = event([], usage=usage)
        self.embeddings = orjson.dumps({
            "object": "list", "model": "fast", "usage": {"prompt_tokens": 4, "total_tokens": 4},
            "data": [{"object": "embedding", "index": 0, "embedding": [0.0] * 16}]})
        self.models = orjson.dumps({"object": "list", "data": [
            {"id": "fast", "object": "model", "created": 0, "owned_by": "bench"}]})


def _response(status: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


_STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Connection(asyncio.Protocol):
    def __init__(self, answers: Answers, ttft: float, itl: float) -> None:
        self.answers, self.ttft, self.itl = answers, ttft, itl
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's own transport class

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        url = self.url.split(b"?", 1)[0]
        transport = self.transport
        if transport is None:
            return
        if url.endswith(b"/chat/completions"):
            request = orjson.loads(body or b"{}")
            if request.get("stream"):
                usage = bool((request.get("stream_options") or {}).get("include_usage"))
                tokens = min(int(request.get("max_tokens") or self.answers.tokens),
                             self.answers.tokens)
                asyncio.get_running_loop().create_task(self._stream(tokens, usage))
                return
            transport.write(_response(b"200 OK", self.answers.completion))
        elif url.endswith(b"/embeddings"):
            transport.write(_response(b"200 OK", self.answers.embeddings))
        elif url.endswith(b"/models"):
            transport.write(_response(b"200 OK", self.answers.models))
        else:
            transport.write(_response(b"404 Not Found", b'{"error":{"message":"not found"}}'))

    async def _stream(self, tokens: int, usage: bool) -> None:
        answers = self.answers
        self._write(_STREAM_HEAD + _chunk(answers.role))
        await asyncio.sleep(self.ttft)
        for i in range(tokens):
            if i:
                await asyncio.sleep(self.itl)
            self._write(_chunk(answers.token))
        tail = answers.finish + (answers.usage if usage else b"") + b"data: [DONE]\n\n"
        self._write(_chunk(tail) + b"0\r\n\r\n")

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)


async def _serve(host: str, port: int, answers: Answers, ttft: float, itl: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(answers, ttft, itl), host, port,
                                      backlog=4096)
    bound = server.sockets[0].getsockname()
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args(argv)
    answers = Answers(args.tokens)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve(args.host, args.port, answers, args.ttft_ms / 1e3, args.itl_ms / 1e3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
