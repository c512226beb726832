"""An OpenAI upstream declared with ``responses_api``: reached at its own ``/v1/responses``.

The upstream here is a small fake of OpenAI's Responses API on a loopback
port: it reads each request as a Responses request, answers with a text, or
with a function call when tools are offered and no tool output came back
yet, and sends every answer and event checked against OpenAI's schemas. The
proxy in front of it serves chat clients and Responses clients alike, so
both translations (chat -> Responses upstream, Responses events -> chat
chunks -> the client's API) run over real sockets.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import openai
import pytest
import trio

from tests.integration.conftest import start_proxy
from tests.integration.scripted_upstream import serve_asgi
from tests.openai_schema import validate
from tlproxy.asgi import lifespan, read_body
from tlproxy.config import Config, LedgerConfig, ModelConfig, ProviderConfig
from tlproxy.responses.events import ResponseEvents, response_base
from tlproxy.responses.request import decode_responses_request, translate
from tlproxy.server import Running

MODEL = "gpt-5.4"
WEATHER = {"type": "function", "name": "get_weather", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False}}


class FakeResponsesAPI:
    """``POST /v1/responses`` only; `requests` holds every body it was sent."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        self.paths.append(scope["path"])
        if scope["path"] != "/v1/responses":
            await _send_json(send, 404, {"error": {"message": "not here"}})
            return
        request = json.loads(body)
        self.requests.append(request)
        builder = _answer(body, request)
        if not request.get("stream"):
            response = builder.response()
            validate("Response", response)
            await _send_json(send, 200, response)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for event in builder.events:
            validate("ResponseStreamEvent", event)
            data = b"event: " + event["type"].encode() + b"\ndata: " + json.dumps(
                event).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Built(ResponseEvents):
    events: list[dict[str, Any]]


def _answer(body: bytes, request: dict[str, Any]) -> _Built:
    """What OpenAI would answer, in the shape it would: built as the proxy builds its own."""
    turn = translate(decode_responses_request(body)[0])
    builder = _Built(response_base(turn, response_id="resp_upstream", created_at=1_800_000_000,
                                   model=request["model"], store=False))
    builder.events = builder.start()
    last = (request["input"] or [{}])[-1]
    if request.get("tools") and last.get("type") != "function_call_output":
        deltas: list[dict[str, Any]] = [{"tool_calls": [{
            "index": 0, "id": "call_up_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}]
        finish = "tool_calls"
    else:
        said = f"The tool said: {last['output']}" if "output" in last else "Hello from upstream"
        deltas = [{"content": word} for word in said.split(" ")]
        deltas = [{"content": d["content"] + " "} for d in deltas[:-1]] + deltas[-1:]
        finish = "stop"
    for delta in deltas:
        builder.events += builder.feed({"choices": [{"index": 0, "delta": delta}]})
    builder.events += builder.feed({"choices": [{"index": 0, "delta": {},
                                                 "finish_reason": finish}],
                                    "usage": {"prompt_tokens": 11, "completion_tokens": 5,
                                              "total_tokens": 16}})
    builder.events += builder.finish(1_800_000_001)
    return builder


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class Upstreamed(msgspec.Struct):
    proxy: Running
    upstream: FakeResponsesAPI
    sdk: openai.AsyncOpenAI


@pytest.fixture
async def upstreamed(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Upstreamed]:
    upstream = FakeResponsesAPI()
    address = await serve_asgi(nursery, upstream)
    provider = ProviderConfig(kind="openai", base_url=f"{address}/v1", api_key="sk-test",
                              responses_api=True)
    config = Config(providers={"openai": provider},
                    models=[ModelConfig(id=MODEL, provider="openai", tier="premium"),
                            ModelConfig(id="gpt-5-mini", provider="openai", tier="economy")],
                    ledger=LedgerConfig(path=str(tmp_path / "ledger.db")))
    proxy = await start_proxy(nursery, config)
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused",
                                  max_retries=0) as sdk:
        yield Upstreamed(proxy=proxy, upstream=upstream, sdk=sdk)


async def test_chat_client_is_served_through_the_upstreams_responses_api(
    upstreamed: Upstreamed,
) -> None:
    raw = await upstreamed.sdk.chat.completions.with_raw_response.create(
        model=MODEL, max_completion_tokens=50,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hello"}])
    validate("CreateChatCompletionResponse", json.loads(raw.http_response.content))
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from upstream"
    assert completion.usage is not None and completion.usage.total_tokens == 16
    assert upstreamed.upstream.paths == ["/v1/responses"]
    (sent,) = upstreamed.upstream.requests
    assert sent["input"] == [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Hello"}]
    assert sent["max_output_tokens"] == 50 and sent["store"] is False
    assert sent["model"] == MODEL


async def test_chat_stream_from_the_upstreams_events(upstreamed: Upstreamed) -> None:
    stream = await upstreamed.sdk.chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Hello"}])
    chunks = [chunk async for chunk in stream]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(mode="json",
                                                                        exclude_unset=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from upstream"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 16


async def test_responses_client_with_a_tool_round_trip(upstreamed: Upstreamed) -> None:
    first = await upstreamed.sdk.responses.create(
        model=MODEL, input="Weather in Oslo?", tools=[WEATHER])  # type: ignore[list-item]
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.call_id == "call_up_1" and json.loads(call.arguments) == {"city": "Oslo"}
    async with upstreamed.sdk.responses.stream(
            model=MODEL, tools=[WEATHER], previous_response_id=first.id,  # type: ignore[list-item]
            input=[{"type": "function_call_output", "call_id": call.call_id,
                    "output": "sunny"}]) as stream:
        final = await stream.get_final_response()
    assert final.output_text == "The tool said: sunny"
    # The upstream got the whole conversation as items, never our response ids.
    sent = upstreamed.upstream.requests[-1]
    assert "previous_response_id" not in sent
    assert [item.get("type", item.get("role")) for item in sent["input"]] == [
        "user", "function_call", "function_call_output"]
    assert sent["tools"] == [WEATHER]

