"""The edge's renderer, on its own: replies made by hand, bytes and times checked exactly.

A stream's chunks come from a scripted source under trio's `MockClock`; the
client is an in-memory ASGI pair recording each message with its time.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from tlproxy.accounting import Tab
from tlproxy.config import ClientKey, LimitsConfig, ModelConfig
from tlproxy.edge import CUT_MID_STREAM, Request, StreamSlots, render_chat, render_error
from tlproxy.engine import Answer, Batches, Stream
from tlproxy.errors import ProxyError, UpstreamError
from tlproxy.metrics import Metrics
from tlproxy.providers.base import Chunk
from tlproxy.router import Route

ROUTE = Route(ModelConfig(id="e1", provider="fake", tier="economy"), "economy", "default")
USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def delta(content: str | None = None, *, role: str | None = None,
          finish: str | None = None) -> Chunk:
    fields = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


class Script:
    """A winner's chunks after its first token: (seconds to wait, then what comes).

    What arrives at the same instant is `buffered` together, as from one read.
    """

    def __init__(self, steps: list[tuple[float, Chunk | Exception]]) -> None:
        self._steps = steps
        self._ended = False

    def __aiter__(self) -> Script:
        return self

    async def __anext__(self) -> Chunk:
        if not self._steps:
            self._ended = True
            raise StopAsyncIteration
        wait, item = self._steps.pop(0)
        await trio.sleep(wait)
        if isinstance(item, Exception):
            raise item
        return item

    def buffered(self) -> list[Chunk]:
        out: list[Chunk] = []
        while self._steps and self._steps[0][0] == 0 and not isinstance(
                self._steps[0][1], Exception):
            out.append(self._steps.pop(0)[1])  # type: ignore[arg-type]
        if not self._steps:
            self._ended = True
        return out

    @property
    def ended(self) -> bool:
        return self._ended


def stream(first: list[Chunk], steps: list[tuple[float, Chunk | Exception]]) -> Stream:
    return Stream(ROUTE, Batches(first, Script(steps), tap=lambda _: None,
                                 on_error=lambda _: None))


class Client:
    def __init__(self) -> None:
        self.sent: list[tuple[float, dict[str, Any]]] = []

    async def receive(self) -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(self, message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append((trio.current_time(), message))

    def writes(self) -> list[tuple[float, bytes, bool]]:
        return [(t, m["body"], m.get("more_body", False)) for t, m in self.sent
                if m["type"] == "http.response.body"]

    def start(self) -> dict[str, Any]:
        return next(m for _, m in self.sent if m["type"] == "http.response.start")


def new_request(client: Client) -> Request:
    return Request({"method": "POST", "path": "/v1/chat/completions", "headers": []},
                   client.receive, client.send)


def sse(*payloads: Any) -> bytes:
    return b"".join(b"data: " + (p if isinstance(p, bytes) else msgspec.json.encode(p))
                    + b"\n\n" for p in payloads)


async def test_a_stream_is_written_one_batch_at_a_time_with_done_joined_to_the_last(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = Client()
    request = new_request(client)
    metrics = Metrics()
    await trio.sleep(0.25)  # the race: the first token is here
    first = [delta(role="assistant", content=""), delta("Hi")]
    await render_chat(request, stream(first, [
        (0.5, delta(" there")), (0, delta(" you")),  # one read: one write
        (0.5, delta(finish="stop")), (0, {"choices": [], "usage": USAGE}),
    ]), include_usage=False, metrics=metrics)
    start = client.start()
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert (b"x-tlproxy-rule", b"default") in start["headers"]
    done = [delta(finish="stop")]
    assert client.writes() == [
        (0.25, sse(*(delta(role="assistant", content=""), delta("Hi"))), True),
        (0.75, sse(delta(" there"), delta(" you")), True),
        # The usage chunk was the proxy's own: dropped. [DONE] in the same write.
        (1.25, sse(*done, b"[DONE]"), False),
    ]
    assert request.ttft == 0.25 and request.answered and request.error is None
    assert metrics.registry.get_sample_value("tlproxy_open_streams") == 0


async def test_usage_asked_for_is_null_on_every_chunk_and_whole_on_the_last(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = Client()
    await render_chat(new_request(client), stream([delta("Hi")], [
        (0.5, delta(finish="stop")), (0, {"choices": [], "usage": USAGE})]),
        include_usage=True, metrics=Metrics())
    body = b"".join(data for _, data, _ in client.writes())
    assert body == sse({**delta("Hi"), "usage": None}, {**delta(finish="stop"), "usage": None},
                       {"choices": [], "usage": USAGE}, b"[DONE]")


async def test_a_failure_after_the_first_byte_is_an_error_event_and_no_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = Client()
    request = new_request(client)
    failure = UpstreamError("the stream broke", status=502)
    await render_chat(request, stream([delta("Hi")], [(0.5, delta(" the")), (0.25, failure)]),
                      include_usage=False, metrics=Metrics())
    assert client.writes() == [(0.0, sse(delta("Hi")), True), (0.5, sse(delta(" the")), True),
                               (0.75, sse(msgspec.json.decode(failure.body())), False)]
    assert request.error == CUT_MID_STREAM and not request.answered


async def test_a_complete_answer_is_one_json_body_in_openai_shape(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = Client()
    request = new_request(client)
    completion = {"object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi"}}]}
    await render_chat(request, Answer(ROUTE, completion), include_usage=False,
                      metrics=Metrics())
    assert client.start()["status"] == 200
    ((_, body, more),) = client.writes()
    assert not more and request.answered and request.route == ROUTE
    assert msgspec.json.decode(body)["choices"][0] == {
        "index": 0, "finish_reason": "stop", "logprobs": None,
        "message": {"role": "assistant", "content": "Hi", "refusal": None}}


async def test_an_error_carries_the_keys_limit_headers_and_its_own_retry_after() -> None:
    client = Client()
    request = new_request(client)
    request.tab = Tab(request.id, None, 0.0)
    request.tab.limit_headers = {"x-ratelimit-remaining-requests": "0", "retry-after": "30"}
    error = ProxyError("slow down", status=429, type="requests", code="rate_limit_exceeded",
                       headers={"retry-after": "2"})
    await render_error(request, error)
    start = client.start()
    assert start["status"] == 429
    headers = dict(start["headers"])
    assert (headers[b"retry-after"], headers[b"x-ratelimit-remaining-requests"]) == (b"2", b"0")
    ((_, body, _),) = client.writes()
    assert msgspec.json.decode(body)["error"]["code"] == "rate_limit_exceeded"


async def test_our_own_bug_is_a_500_naming_the_request_and_nothing_else() -> None:
    client = Client()
    request = new_request(client)
    await render_error(request, None)
    assert client.start()["status"] == 500
    ((_, body, _),) = client.writes()
    error = msgspec.json.decode(body)["error"]
    assert error["type"] == "server_error" and request.id in error["message"]


async def test_nothing_is_written_once_the_response_started() -> None:
    client = Client()
    request = new_request(client)
    await request.start(200, [])
    await render_error(request, ProxyError("late", status=502))
    assert len(client.sent) == 1


KEY_A = ClientKey(name="a", hash="sha256:" + "0" * 64)
KEY_B = ClientKey(name="b", hash="sha256:" + "1" * 64)


def test_the_workers_stream_cap_is_a_503_to_retry() -> None:
    slots = StreamSlots(LimitsConfig(max_streams_per_worker=2))
    with slots.hold(KEY_A), slots.hold(None), pytest.raises(ProxyError) as refused, \
            slots.hold(KEY_B):
        pass
    assert (refused.value.status, refused.value.code) == (503, "too_many_streams")
    assert refused.value.headers == {"retry-after": "1"}
    assert (slots.open, slots.by_key) == (0, {})


def test_a_keys_stream_cap_is_a_429_and_leaves_other_keys_alone() -> None:
    slots = StreamSlots(LimitsConfig(max_streams_per_key=1))
    with slots.hold(KEY_A):
        with pytest.raises(ProxyError) as refused, slots.hold(KEY_A):
            pass
        with slots.hold(KEY_B):
            assert (slots.open, slots.by_key) == (2, {"a": 1, "b": 1})
    assert (refused.value.status, refused.value.code) == (429, "too_many_concurrent_streams")
    assert (slots.open, slots.by_key) == (0, {})
