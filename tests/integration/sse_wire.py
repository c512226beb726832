"""Reading a proxy stream as raw bytes, to check the wire itself."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.openai_schema import validate
from tlproxy.sse import SSEDecoder


class WireStream:
    def __init__(self, response: httpx.Response, events: list[str]) -> None:
        self.response = response
        self.events = events
        self.done = bool(events) and events[-1] == "[DONE]"
        payloads = events[:-1] if self.done else events
        self.chunks: list[dict[str, Any]] = [orjson.loads(e) for e in payloads]


async def read_stream(http: httpx.AsyncClient, body: dict[str, Any]) -> WireStream:
    decoder = SSEDecoder()
    events: list[str] = []
    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        async for data in r.aiter_raw():
            events.extend(e.data for e in decoder.feed(data))
    return WireStream(r, events)


def check_openai_stream(stream: WireStream, *, n: int = 1, include_usage: bool) -> None:
    """Every rule of OpenAI's streaming wire, asserted on one stream."""
    assert stream.response.status_code == 200
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    assert stream.done, "a complete stream ends with [DONE]"
    chunks = stream.chunks
    assert chunks
    assert len({c["id"] for c in chunks}) == 1
    assert len({c["created"] for c in chunks}) == 1
    finishes: dict[int, list[str]] = {i: [] for i in range(n)}
    first_delta: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        assert chunk["object"] == "chat.completion.chunk"
        if include_usage:
            assert "usage" in chunk
        else:
            assert "usage" not in chunk
        for choice in chunk["choices"]:
            assert "finish_reason" in choice
            first_delta.setdefault(choice["index"], choice["delta"])
            if choice["finish_reason"] is not None:
                finishes[choice["index"]].append(choice["finish_reason"])
    assert sorted(first_delta) == list(range(n))
    for index in range(n):
        assert first_delta[index].get("role") == "assistant"
        assert len(finishes[index]) == 1, f"choice {index} finished {finishes[index]}"
    if include_usage:
        last = chunks[-1]
        assert last["choices"] == []
        assert last["usage"]["total_tokens"] > 0
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert all(c["choices"] for c in chunks)
