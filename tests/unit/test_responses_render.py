"""The Responses renderer on its own: replies made by hand, writes and times checked exactly.

The scripted stream and the in-memory ASGI client are the edge tests' own
(`tests/unit/test_edge.py`), so both renderers are held to the same clock.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import trio
import trio.testing

from tests.unit.test_edge import ROUTE, USAGE, Client, delta, new_request, stream
from tlproxy.edge import CUT_MID_STREAM
from tlproxy.engine import Answer
from tlproxy.errors import UpstreamError
from tlproxy.metrics import Metrics
from tlproxy.responses.render import render_responses
from tlproxy.responses.request import Turn, decode_responses_request, translate
from tlproxy.sse import SSEDecoder


def turn(**fields: Any) -> Turn:
    request, _ = decode_responses_request(msgspec.json.encode(
        {"model": "auto", "input": "Hi", **fields}))
    return translate(request)


def events(data: bytes) -> list[dict[str, Any]]:
    found = []
    for event in SSEDecoder().feed(data):
        payload = json.loads(event.data)
        assert event.event == payload["type"]
        found.append(payload)
    return found


class Kept:
    """A `keep` that notes how many messages the client had when it was called."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.calls: list[tuple[int, dict[str, Any]]] = []

    async def __call__(self, response: dict[str, Any]) -> None:
        await trio.sleep(0.125)  # a commit takes time: the last write waits for it
        self.calls.append((len(self.client.sent), response))


async def test_a_stream_is_written_one_batch_at_a_time_and_kept_before_its_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = Client()
    request = new_request(client)
    kept = Kept(client)
    metrics = Metrics()
    await trio.sleep(0.25)  # the race: the first token is here
    await render_responses(request, stream([delta(role="assistant", content="Hi")], [
        (0.5, delta(" there")), (0, delta(" you")),  # one read: one write
        (0.5, delta(finish="stop")), (0, {"choices": [], "usage": USAGE}),
    ]), turn(stream=True), metrics=metrics, keep=kept)
    writes = client.writes()
    assert [(t, more) for t, _, more in writes] == [(0.25, True), (0.75, True), (1.375, False)]
    assert [e["type"] for e in events(writes[0][1])] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta"]
    assert [e["delta"] for e in events(writes[1][1])] == [" there", " you"]
    last = events(writes[2][1])
    assert last[-1]["type"] == "response.completed"
    # Kept before the last write (the start and two writes had been sent), as completed.
    ((sent_before, response),) = kept.calls
    assert sent_before == 3
    assert response == last[-1]["response"] and response["usage"]["total_tokens"] == 6
    assert request.ttft == 0.25 and request.answered and request.error is None
    assert metrics.registry.get_sample_value("tlproxy_open_streams") == 0


async def test_a_failure_after_the_first_byte_ends_failed_and_is_not_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = Client()
    request = new_request(client)
    kept = Kept(client)
    failure = UpstreamError("the stream broke", status=502)
    await render_responses(request, stream([delta("Hi")], [(0.5, delta(" the")),
                                                           (0.25, failure)]),
                           turn(stream=True), metrics=Metrics(), keep=kept)
    writes = client.writes()
    assert [(t, more) for t, _, more in writes] == [(0.0, True), (0.5, True), (0.75, False)]
    last = events(writes[-1][1])
    assert [e["type"] for e in last] == [
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.failed"]
    assert last[-1]["response"]["error"] == {"code": "server_error",
                                             "message": "the stream broke"}
    assert kept.calls == []
    assert request.error == CUT_MID_STREAM and not request.answered


async def test_a_complete_answer_is_kept_then_sent_as_one_json_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = Client()
    request = new_request(client)
    kept = Kept(client)
    completion = {"object": "chat.completion", "model": "e1", "usage": USAGE, "choices": [
        {"index": 0, "finish_reason": "length",
         "message": {"role": "assistant", "content": "Hi there"}}]}
    await render_responses(request, Answer(ROUTE, completion), turn(), metrics=Metrics(),
                           keep=kept)
    ((sent_before, response),) = kept.calls
    assert sent_before == 0
    ((at, body, more),) = client.writes()
    assert at == 0.125 and not more
    assert json.loads(body) == response
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["content"][0]["text"] == "Hi there"
    assert (b"x-tlproxy-model", b"e1") in client.start()["headers"]
    assert request.answered
