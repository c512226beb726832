"""The OpenAI-compatible adapter: its stream translation and its I/O, on a mock upstream.

Streams are OpenAI's wire as real OpenAI-compatible servers send it, habits
included: Azure's filter-only first chunk, OpenRouter's SSE comments, Groq's
usage in ``x_groq``, error objects inside a 200 stream, no ``[DONE]``, and
gzip-compressed bodies. Bodies are served in small pieces (`Split`), so
events arrive cut across reads.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import httpcore2
import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.adapter_support import USER, Handler, Split, collect, mock_transport, usage
from tlproxy.errors import UpstreamError
from tlproxy.providers.openai import (
    OpenAIProvider,
    OpenAIStreamTranslator,
    map_openai_stream_error,
)

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "gpt-up"}
USAGE = usage(9, 3)


def chunk(*choices: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**HEAD, "choices": list(choices), **extra}


def delta(index: int = 0, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "logprobs": None, "finish_reason": finish}


ROLE = chunk(delta(role="assistant", content=""))
HELLO = chunk(delta(content="Hello"))
STOP = chunk(delta(finish="stop"))
USAGE_CHUNK = chunk(usage=USAGE)
# An answer as OpenAI sends it, usage asked for.
ANSWER = [ROLE, HELLO, STOP, USAGE_CHUNK]
# Azure OpenAI's first chunk: no choices, only the prompt's filter results.
AZURE_FILTER = {
    "choices": [], "created": 0, "id": "", "model": "", "object": "",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {
        "hate": {"filtered": False, "severity": "safe"}}}],
}


def sse(events: list[Any], *, done: bool = True, comment: bytes = b"") -> bytes:
    """`events` framed as SSE (`comment` lines before each), then ``[DONE]``."""
    body = b"".join(comment + b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return body + (b"data: [DONE]\n\n" if done else b"")


def translate(events: list[dict[str, Any]], *, n: int = 1) -> tuple[list[Any], bool]:
    translator = OpenAIStreamTranslator(choices=n)
    out = [c for e in events for c in translator.feed(None, e)]
    finished = translator.finished
    return out + translator.close(), finished


# ---------------------------------------------------------------- translation


def test_an_openai_answer_passes_untouched() -> None:
    assert translate(ANSWER) == (ANSWER, True)


@pytest.mark.parametrize(
    ("name", "events", "expected"),
    [
        ("azure filter-only first chunk", [AZURE_FILTER, *ANSWER], ANSWER),
        (
            "azure content-filter annotation without a delta",
            [ROLE, HELLO, chunk({"index": 0, "finish_reason": None,
                                 "content_filter_results": {}}), STOP, USAGE_CHUNK],
            ANSWER,
        ),
        ("usage on the finish chunk", [ROLE, HELLO, chunk(delta(finish="stop"), usage=USAGE)],
         ANSWER),
        (
            "usage on every chunk, the last one counts",
            [chunk(delta(role="assistant", content=""), usage=usage(9, 0)),
             chunk(delta(content="Hello"), usage=usage(9, 1)), chunk(delta(finish="stop"),
                                                                     usage=USAGE)],
            ANSWER,
        ),
        (
            "usage in Groq's x_groq",
            [ROLE, HELLO, chunk(delta(finish="stop"), x_groq={"id": "req_1", "usage": {
                **USAGE, "queue_time": 0.01, "total_time": 0.2}})],
            [ROLE, HELLO, chunk(delta(finish="stop"), x_groq={"id": "req_1", "usage": {
                **USAGE, "queue_time": 0.01, "total_time": 0.2}}), USAGE_CHUNK],
        ),
        ("no usage at all", [ROLE, HELLO, STOP], [ROLE, HELLO, STOP]),
        (
            "null usage on every chunk stays for the engine to render",
            [chunk(delta(content="Hello"), usage=None), STOP],
            [chunk(delta(content="Hello"), usage=None), STOP],
        ),
    ],
)
def test_upstream_habits_become_openai_chunks(
    name: str, events: list[dict[str, Any]], expected: list[dict[str, Any]]
) -> None:
    assert translate(events) == (expected, True)


def test_finished_when_every_choice_has_its_finish_reason() -> None:
    two = [chunk(delta(0, content="a"), delta(1, content="b")), chunk(delta(0, finish="stop"))]
    assert translate(two, n=2)[1] is False
    assert translate([*two, chunk(delta(1, finish="length"))], n=2)[1] is True
    assert translate([ROLE, HELLO])[1] is False


@pytest.mark.parametrize(
    ("error", "status", "upstream_status", "retryable"),
    [
        # OpenAI's own mid-stream error.
        ({"message": "The server had an error", "type": "server_error"}, 502, None, True),
        # OpenRouter: a numeric code.
        ({"code": 502, "message": "Provider disconnected"}, 502, 502, True),
        ({"code": 429, "message": "Rate limited upstream"}, 429, 429, True),
        ({"message": "Overloaded", "type": "overloaded_error"}, 503, 529, True),
        ({"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"},
         429, 429, True),
        ({"message": "too long", "type": "invalid_request_error"}, 400, 400, False),
        ("a bare string", 502, None, True),
    ],
)
def test_error_objects_map_like_the_http_errors_they_stand_for(
    error: Any, status: int, upstream_status: int | None, retryable: bool
) -> None:
    mapped = map_openai_stream_error(error)
    assert (mapped.status, mapped.upstream_status, mapped.retryable) == (
        status, upstream_status, retryable)


@pytest.mark.parametrize(
    "event",
    [
        {"error": {"message": "The server had an error", "type": "server_error"}},
        # OpenRouter: the error beside a choice that finishes with "error".
        {**HEAD, "error": {"code": 502, "message": "Provider disconnected"},
         "choices": [delta(finish="error")]},
        # vLLM: the error object is the event itself.
        {"object": "error", "message": "engine dead", "type": "InternalServerError",
         "code": 500},
    ],
)
def test_an_error_event_raises_a_retryable_error(event: dict[str, Any]) -> None:
    with pytest.raises(UpstreamError) as caught:
        OpenAIStreamTranslator().feed(None, event)
    assert (caught.value.status, caught.value.retryable) == (502, True)


USAGES = st.builds(usage, st.integers(0, 9), st.integers(0, 9))
EVENTS = st.one_of(
    st.just(AZURE_FILTER),
    st.builds(lambda u: chunk(delta(content="x"), usage=u), st.none() | USAGES),
    st.builds(lambda u: chunk(delta(finish="stop"), usage=u), st.none() | USAGES),
    st.builds(lambda u: chunk(delta(content="x"), x_groq={"id": "r", "usage": u}), USAGES),
    st.builds(lambda u: chunk(usage=u), USAGES),
    st.just(chunk({"index": 0, "finish_reason": None, "content_filter_results": {}})),
)


def usage_in(event: dict[str, Any]) -> Any:
    if isinstance(event.get("usage"), dict):
        return event["usage"]
    return (event.get("x_groq") or {}).get("usage")


@given(st.lists(EVENTS, max_size=12))
def test_whatever_the_upstream_does_usage_comes_once_and_last(
    events: list[dict[str, Any]]
) -> None:
    out, _ = translate(events)
    seen = [u for u in map(usage_in, events) if u is not None]
    *body, last = out or [{}]
    # Every chunk but a final usage chunk has choices, each with a delta or a finish.
    assert all(c["choices"] and c.get("usage") is None for c in body)
    assert all("delta" in ch or ch["finish_reason"] for c in out for ch in c["choices"])
    if seen:
        assert (last["choices"], last["usage"]) == ([], seen[-1])
    else:
        assert not out or last["choices"]


# ---------------------------------------------------------------- I/O


def provider(handler: Handler) -> OpenAIProvider:
    return OpenAIProvider("up", base_url="https://api.test/v1/", api_key="sk-test-key-123",
                          transport=mock_transport(handler))


def streaming(body: bytes, **headers: str) -> Handler:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream", **headers},
                              stream=Split(body))
    return handler


async def test_stream_request_forces_usage_and_renames_the_model() -> None:
    seen: list[httpx2.Request] = []

    async def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, stream=Split(sse(ANSWER)))

    body = {"model": "premium", "messages": [USER], "stream_options": {"include_usage": False}}
    assert await collect(provider(handler), body, model="gpt-up") == ANSWER
    [request] = seen
    assert str(request.url) == "https://api.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-key-123"
    sent = json.loads(request.content)
    assert (sent["model"], sent["stream"], sent["stream_options"]) == (
        "gpt-up", True, {"include_usage": True})


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress),
                                                    ("deflate", _deflate)])
async def test_a_compressed_stream_is_decoded(encoding: str, compress: Any) -> None:
    handler = streaming(compress(sse(ANSWER)), **{"content-encoding": encoding})
    assert await collect(provider(handler), {"messages": [USER]}, model="gpt-up") == ANSWER


async def test_comments_and_the_azure_filter_chunk_never_reach_the_engine() -> None:
    body = sse([AZURE_FILTER, *ANSWER], comment=b": OPENROUTER PROCESSING\n\n")
    assert await collect(provider(streaming(body)), {"messages": [USER]},
                         model="gpt-up") == ANSWER


async def test_a_finished_answer_without_done_ends_cleanly() -> None:
    handler = streaming(sse(ANSWER, done=False))
    assert await collect(provider(handler), {"messages": [USER]}, model="gpt-up") == ANSWER


async def test_a_finished_answer_without_done_or_usage_ends_cleanly() -> None:
    handler = streaming(sse([ROLE, HELLO, STOP], done=False))
    chunks = await collect(provider(handler), {"messages": [USER]}, model="gpt-up")
    assert chunks == [ROLE, HELLO, STOP]


async def test_a_stream_cut_before_every_choice_finished_is_an_error() -> None:
    two = [chunk(delta(0, content="a"), delta(1, content="b")), chunk(delta(0, finish="stop"))]
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError) as caught:
        body = {"messages": [USER], "n": 2}
        async with provider(streaming(sse(two, done=False))).stream_chat(
                body, model="gpt-up") as chunks:
            async for c in chunks:
                received.append(c)
    assert received == two
    assert caught.value.message == "upstream stream ended before its final event"
    assert (caught.value.status, caught.value.retryable) == (502, True)


async def test_done_ends_the_stream_even_before_a_finish_reason() -> None:
    handler = streaming(sse([ROLE, HELLO]) + b"data: ignored\n\n")
    chunks = await collect(provider(handler), {"messages": [USER]}, model="gpt-up")
    assert chunks == [ROLE, HELLO]


async def test_an_error_event_first_is_a_retryable_error() -> None:
    body = sse([{"error": {"message": "Overloaded", "type": "overloaded_error"}}], done=False)
    with pytest.raises(UpstreamError) as caught:
        await collect(provider(streaming(body)), {"messages": [USER]}, model="gpt-up")
    assert (caught.value.status, caught.value.upstream_status, caught.value.retryable) == (
        503, 529, True)


async def test_an_error_event_mid_stream_ends_it() -> None:
    body = sse([ROLE, HELLO, {"error": {"message": "boom", "type": "server_error"}}], done=False)
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError) as caught:
        async with provider(streaming(body)).stream_chat({"messages": [USER]},
                                                         model="gpt-up") as chunks:
            async for c in chunks:
                received.append(c)
    assert received == [ROLE, HELLO]
    assert caught.value.message == "boom"


async def test_a_malformed_chunk_is_a_retryable_502() -> None:
    handler = streaming(b"data: {not json\n\n")
    with pytest.raises(UpstreamError) as caught:
        await collect(provider(handler), {"messages": [USER]}, model="gpt-up")
    assert (caught.value.status, caught.value.retryable) == (502, True)


async def test_a_connection_lost_after_done_loses_nothing() -> None:
    class Broken(httpx2.AsyncByteStream):
        async def __aiter__(self) -> Any:
            yield sse(ANSWER)
            raise httpcore2.ReadError("reset")

    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, stream=Broken())

    assert await collect(provider(handler), {"messages": [USER]}, model="gpt-up") == ANSWER


async def test_a_connection_lost_mid_answer_is_a_retryable_502() -> None:
    class Broken(httpx2.AsyncByteStream):
        async def __aiter__(self) -> Any:
            yield sse([ROLE, HELLO], done=False)
            raise httpcore2.ReadError("reset")

    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, stream=Broken())

    with pytest.raises(UpstreamError) as caught:
        await collect(provider(handler), {"messages": [USER]}, model="gpt-up")
    assert (caught.value.status, caught.value.retryable) == (502, True)


async def test_http_errors_of_a_stream_are_mapped() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        body = gzip.compress(b'{"error": {"message": "slow down", "type": "requests"}}')
        return httpx2.Response(429, headers={"retry-after": "3", "content-encoding": "gzip"},
                              stream=Split(body))

    with pytest.raises(UpstreamError) as caught:
        await collect(provider(handler), {"messages": [USER]}, model="gpt-up")
    assert (caught.value.status, caught.value.message, caught.value.headers) == (
        429, "slow down", {"retry-after": "3"})


async def test_timeout_is_a_retryable_504() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpcore2.ReadTimeout("slow")

    with pytest.raises(UpstreamError) as caught:
        await collect(provider(handler), {"messages": [USER]}, model="gpt-up")
    assert (caught.value.status, caught.value.retryable) == (504, True)


async def test_json_answer_and_embeddings_are_decoded_from_gzip() -> None:
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}
    vectors = {"object": "list", "data": [], "model": "e", "usage": usage(1, 0)}

    async def handler(request: httpx2.Request) -> httpx2.Response:
        sent = json.loads(request.content)
        assert "stream_options" not in sent
        payload = vectors if request.url.path.endswith("/embeddings") else answer
        return httpx2.Response(200, headers={"content-encoding": "gzip"},
                              content=gzip.compress(json.dumps(payload).encode()))

    p = provider(handler)
    body = {"messages": [USER], "stream_options": {"include_usage": True}}
    assert await p.chat(body, model="gpt-up") == answer
    assert await p.embed({"input": "x"}, model="e") == vectors


@given(st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8),
       st.booleans())
async def test_any_split_of_a_gzip_stream_gives_the_same_chunks(
    sizes: list[int], done: bool
) -> None:
    data = gzip.compress(sse([AZURE_FILTER, *ANSWER], done=done, comment=b": keep-alive\n"))
    pieces, at = [], 0
    for size in sizes * (len(data) // sum(sizes) + 1):
        pieces.append(data[at : at + size])
        at += size
    pieces = [p for p in pieces if p]

    class Pieces(httpx2.AsyncByteStream):
        async def __aiter__(self) -> Any:
            for piece in pieces:
                yield piece

    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-encoding": "gzip"}, stream=Pieces())

    assert await collect(provider(handler), {"messages": [USER]}, model="gpt-up") == ANSWER
