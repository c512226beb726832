"""What the adapter tests share: recorded fixtures, the OpenAI shapes their
answers must have, and a mock upstream (at the connection pool's seam) that
cuts bodies.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import httpcore2
import httpx2
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from tests.openai_schema import validate as validate_schema
from tlproxy.providers.transport import Transport
from tlproxy.sse import SSEDecoder

USER = {"role": "user", "content": "Hi"}
ROLE = {"role": "assistant", "content": "", "refusal": None}

Handler = Callable[[httpx2.Request], Any]


def validate(schema: str, instance: dict[str, Any]) -> None:
    """OpenAI's schema, except for ``system_fingerprint: null``.

    The published spec types the fingerprint as a string, yet OpenAI sends null
    for models without one and the SDKs type it ``Optional[str]``; these
    adapters have no fingerprint to give, so they say null.
    """
    assert instance.get("system_fingerprint") is None
    validate_schema(schema, {k: v for k, v in instance.items() if k != "system_fingerprint"})


class Recordings:
    """The recorded upstream answers under one ``tests/data/`` folder."""

    def __init__(self, folder: str) -> None:
        self.path = Path(__file__).parent.parent / "data" / folder

    def json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def bytes(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def events(self, name: str) -> list[tuple[str | None, dict[str, Any]]]:
        """A recorded SSE stream as (event name, decoded data) pairs."""
        return [(e.event, json.loads(e.data)) for e in SSEDecoder().feed(self.bytes(name))]


def usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    """An OpenAI ``usage`` object as the adapters write it."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class MockPool:
    """A connection pool whose upstream is `handler`, httpcore2's seam as
    ``httpx.MockTransport`` is httpx's.

    The handler gets the request as sent (an ``httpx2.Request``, for its
    conveniences: ``.url``, ``.headers``, ``.content``) and returns an
    ``httpx2.Response``, whose body goes back as it is on the wire: still
    compressed, cut where its stream cuts it. Exceptions are raised as they
    come (a handler raises httpcore2's, as a real pool would).
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.closed = False

    async def handle_async_request(self, request: httpcore2.Request) -> httpcore2.Response:
        assert isinstance(request.stream, AsyncIterable)
        sent = httpx2.Request(
            request.method.decode(), bytes(request.url).decode(), headers=request.headers,
            content=b"".join([part async for part in request.stream]),
        )
        response = self._handler(sent)
        if inspect.isawaitable(response):
            response = await response
        assert isinstance(response, httpx2.Response)
        stream = response.stream
        assert isinstance(stream, AsyncIterable)

        async def body() -> AsyncIterator[bytes]:
            # Closed when the reader stops early, as httpcore2 closes its own.
            parts = stream.__aiter__()
            try:
                async for part in parts:
                    yield part
            finally:
                if inspect.isasyncgen(parts):
                    await parts.aclose()

        return httpcore2.Response(response.status_code, headers=response.headers.raw,
                                  content=body())

    async def aclose(self) -> None:
        self.closed = True


def mock_transport(handler: Handler) -> Transport:
    """A transport whose upstream is `handler`: a request in, a response out."""
    return Transport(MockPool(handler))


class Split(httpx2.AsyncByteStream):
    """Serves a body in small pieces, so events arrive cut across reads."""

    def __init__(self, body: bytes, size: int = 37) -> None:
        self._pieces = [body[i : i + size] for i in range(0, len(body), size)]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            yield piece


class _Streams(Protocol):
    def stream_chat(self, body: dict[str, Any], *, model: str) -> Any: ...


async def collect(p: _Streams, body: dict[str, Any], *, model: str) -> list[dict[str, Any]]:
    """Every chunk `p` streams for `body`."""
    async with p.stream_chat(body, model=model) as chunks:
        return [chunk async for chunk in chunks]


def openai_messages(
    *, media: list[SearchStrategy[dict[str, Any]]], call_ids: list[str], arguments: list[str],
    tool_call_ids: list[str], legacy_function_call: bool,
) -> SearchStrategy[dict[str, Any]]:
    """Hypothesis: any OpenAI chat message an adapter may be given, valid or not.

    Text, image URLs of every kind and the given `media` parts; assistant tool
    calls with the given ids and arguments; tool results naming `tool_call_ids`;
    legacy function results (and, with `legacy_function_call`, legacy calls).
    """
    text = st.text(max_size=12)
    parts = st.lists(
        st.one_of(
            st.builds(lambda t: {"type": "text", "text": t}, text),
            st.builds(
                lambda u: {"type": "image_url", "image_url": {"url": u}},
                st.sampled_from(
                    ["https://x/y.png", "data:image/png;base64,AA==", "ftp://x", "data:,x"]
                ),
            ),
            *media,
        ),
        max_size=3,
    )
    content = st.one_of(st.none(), text, parts)
    calls = st.lists(
        st.builds(
            lambda i, a: {"id": i, "type": "function", "function": {"name": "f", "arguments": a}},
            st.sampled_from(call_ids),
            st.sampled_from(arguments),
        ),
        max_size=2,
    )
    kinds = [
        st.builds(
            lambda r, c: {"role": r, "content": c},
            st.sampled_from(["system", "developer", "user", "assistant"]),
            content,
        ),
        st.builds(lambda c, k: {"role": "assistant", "content": c, "tool_calls": k},
                  content, calls),
        st.builds(
            lambda i, c: {"role": "tool", "tool_call_id": i, "content": c},
            st.sampled_from(tool_call_ids),
            content,
        ),
        st.builds(lambda c: {"role": "function", "name": "f", "content": c}, content),
    ]
    if legacy_function_call:
        kinds.append(st.builds(
            lambda a: {"role": "assistant", "function_call": {"name": "f", "arguments": a}},
            st.sampled_from(["{}", "nope"]),
        ))
    return st.one_of(*kinds)
