"""The Responses API through the real proxy, with the official SDK and on the raw wire.

The proxy runs with its ledger in a temporary directory (stored responses live
in the ledger's database) and two client keys, so scoping is tested the way a
deployment sees it. Every answer and event is checked against OpenAI's
published schemas (`Response`, `ResponseStreamEvent`, `ResponseItemList`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import msgspec
import openai
import pytest
import trio
from trio.testing import MockClock

from tests.integration.conftest import fast_config, start_proxy
from tests.integration.test_adapters import FAST, KEYS
from tests.integration.test_disconnect import dropped_at, slow_config
from tests.openai_schema import validate
from tlproxy.config import (
    ClientKey,
    Config,
    LedgerConfig,
    ModelConfig,
    ProviderConfig,
    SimModelProfile,
)
from tlproxy.server import Running, serve_sim
from tlproxy.sim import SimUpstream
from tlproxy.sse import SSEDecoder

KEY_A = "tlp-responses-key-a-0123456789"
KEY_B = "tlp-responses-key-b-0123456789"

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "strict": True,
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
PERSON = {
    "type": "json_schema",
    "name": "person",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
}


def _key(name: str, token: str) -> ClientKey:
    return ClientKey(name=name, hash="sha256:" + hashlib.sha256(token.encode()).hexdigest())


class Served(msgspec.Struct):
    proxy: Running
    ledger: Path
    a: openai.AsyncOpenAI
    b: openai.AsyncOpenAI
    http: httpx.AsyncClient


@pytest.fixture
async def served(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Served]:
    ledger = tmp_path / "ledger.db"
    config = fast_config(keys=[_key("alpha", KEY_A), _key("beta", KEY_B)],
                         ledger=LedgerConfig(path=str(ledger), flush_interval=0.01))
    proxy = await start_proxy(nursery, config)
    async with (
        openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=KEY_A, max_retries=0,
                           http_client=httpx2.AsyncClient()) as a,
        openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=KEY_B, max_retries=0,
                           http_client=httpx2.AsyncClient()) as b,
        httpx.AsyncClient(base_url=proxy.url, timeout=10,
                          headers={"authorization": f"Bearer {KEY_A}"}) as http,
    ):
        yield Served(proxy=proxy, ledger=ledger, a=a, b=b, http=http)


async def events_of(http: httpx.AsyncClient, body: dict[str, Any],
                    headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The events of a streamed response, each checked: its SSE name is its type."""
    events: list[dict[str, Any]] = []
    decoder = SSEDecoder()
    async with http.stream("POST", "/v1/responses", json={**body, "stream": True},
                           headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for data in response.aiter_bytes():
            for event in decoder.feed(data):
                payload = json.loads(event.data)
                assert event.event == payload["type"]
                events.append(payload)
    return events


def check_sequence(events: list[dict[str, Any]]) -> None:
    """Numbered from 0, every event valid, one terminal event and it is last."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        validate("ResponseStreamEvent", event)
    terminal = [e for e in events if e["type"] in (
        "response.completed", "response.incomplete", "response.failed")]
    assert terminal == [events[-1]]
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert sorted(added) == sorted(done) == list(range(len(added)))


async def test_text_answer_is_a_valid_response(served: Served) -> None:
    raw = await served.a.responses.with_raw_response.create(
        model="auto", input="Hello there", instructions="Be brief.")
    body = json.loads(raw.http_response.content)
    validate("Response", body)
    response = raw.parse()
    assert response.status == "completed" and response.object == "response"
    assert response.output_text
    assert response.output[0].type == "message"
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.total_tokens == (
        response.usage.input_tokens + response.usage.output_tokens)
    assert response.instructions == "Be brief." and response.store is True
    assert raw.headers["x-tlproxy-tier"] == "premium"  # a first turn
    assert raw.headers["x-tlproxy-model"] == response.model


async def test_function_call_output_round_trip(served: Served) -> None:
    first = await served.a.responses.create(
        model="auto", input="What is the weather in Paris?", tools=[WEATHER])  # type: ignore[list-item]
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments)["city"]
    # The client runs the tool and sends its output with the call, as the SDK's docs do.
    second = await served.a.responses.create(
        model="auto", tools=[WEATHER],  # type: ignore[list-item]
        input=[{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name,
                "arguments": calls[0].arguments},
               {"type": "function_call_output", "call_id": calls[0].call_id,
                "output": "sunny, 21 C"}])
    assert "sunny, 21 C" in second.output_text


async def test_json_schema_output_parses(served: Served) -> None:
    raw = await served.a.responses.with_raw_response.create(
        model="auto", input="Ada is 36 years old.", text={"format": PERSON})  # type: ignore[typeddict-item]
    validate("Response", json.loads(raw.http_response.content))
    person = json.loads(raw.parse().output_text)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    assert raw.headers["x-tlproxy-rule"] == "structured-output"


async def test_previous_response_id_continues_on_another_tier(served: Served) -> None:
    first = await served.a.responses.with_raw_response.create(
        model="auto", input="My name is Ada.", instructions="Answer in English.")
    assert first.headers["x-tlproxy-tier"] == "premium"
    second = await served.a.responses.with_raw_response.create(
        model="auto", input="What is my name?", previous_response_id=first.parse().id)
    # No longer a first turn: the default policy sends it to the other tier.
    assert second.headers["x-tlproxy-tier"] == "economy"
    assert second.parse().previous_response_id == first.parse().id
    assert second.parse().instructions is None  # instructions are not carried over
    items = await served.a.responses.input_items.list(second.parse().id)
    assert [i.type for i in items.data] == ["message"]


async def test_stream_with_the_sdk_helper(served: Served) -> None:
    seen: list[str] = []
    text = ""
    async with served.a.responses.stream(model="economy", input="Hello there") as stream:
        async for event in stream:
            seen.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = await stream.get_final_response()
    assert seen[:2] == ["response.created", "response.in_progress"]
    assert seen[-1] == "response.completed"
    assert final.status == "completed" and final.output_text == text
    assert final.usage is not None and final.usage.output_tokens > 0
    stored = await served.a.responses.retrieve(final.id)
    assert stored.output_text == text


async def test_stream_events_follow_the_schema(served: Served) -> None:
    events = await events_of(served.http, {"model": "auto", "input": "Weather in Oslo?",
                                           "tools": [WEATHER]})
    check_sequence(events)
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds
    assert events[-1]["type"] == "response.completed"
    call = events[-1]["response"]["output"][0]
    assert call["type"] == "function_call" and json.loads(call["arguments"])["city"]


async def test_stream_cut_mid_answer_ends_failed(served: Served) -> None:
    # Continuation off: the cut is the client's to see (with it on, the next
    # model finishes the answer: tests/integration/test_continuation_e2e.py).
    off = {"x-tlproxy-continuation": "off"}
    events = await events_of(served.http, {"model": "economy",
                                           "input": "Tell me a story [sim:cut=3]"}, off)
    check_sequence(events)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    assert not any(e["type"] == "response.completed" for e in events)
    with pytest.raises(RuntimeError, match=r"response\.completed"):
        async with served.a.responses.stream(
                model="economy", input="Tell me a story [sim:cut=3]",
                extra_headers=off) as stream:
            await stream.get_final_response()


async def test_retrieve_input_items_and_delete(served: Served) -> None:
    made = await served.a.responses.create(
        model="auto", input=[{"role": "user", "content": [
            {"type": "input_text", "text": "Hello"},
            {"type": "input_text", "text": " there"}]}])
    got = await served.http.get(f"/v1/responses/{made.id}")
    validate("Response", got.json())
    assert got.json()["output"] == made.model_dump(mode="json", exclude_unset=True)["output"]
    listed = await served.http.get(f"/v1/responses/{made.id}/input_items")
    validate("ResponseItemList", listed.json())
    assert listed.json()["data"][0]["content"][1]["text"] == " there"
    await served.a.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        await served.a.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        await served.a.responses.delete(made.id)


async def test_a_key_cannot_read_another_keys_response(served: Served) -> None:
    made = await served.a.responses.create(model="auto", input="Hello there")
    with pytest.raises(openai.NotFoundError) as caught:
        await served.b.responses.retrieve(made.id)
    assert caught.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        await served.b.responses.input_items.list(made.id)
    with pytest.raises(openai.NotFoundError):
        await served.b.responses.delete(made.id)
    with pytest.raises(openai.BadRequestError) as refused:
        await served.b.responses.create(model="auto", input="Go on",
                                        previous_response_id=made.id)
    assert refused.value.code == "previous_response_not_found"
    assert (await served.a.responses.retrieve(made.id)).id == made.id


async def test_store_false_keeps_nothing(served: Served) -> None:
    made = await served.a.responses.create(model="auto", input="Hello there", store=False)
    assert made.store is False
    with pytest.raises(openai.NotFoundError):
        await served.a.responses.retrieve(made.id)
    with sqlite3.connect(served.ledger) as db:
        assert db.execute("SELECT COUNT(*) FROM tlproxy_responses").fetchone() == (0,)


@pytest.mark.parametrize(("body", "param", "status"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", 400),
    ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["vs_1"]}]},
     "tools[1].type", 400),
    ({"background": True}, "background", 400),
    ({"conversation": "conv_123"}, "conversation", 400),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", 400),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type", 400),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type", 400),
    ({"input": None}, "input", 400),
    ({"max_output_tokens": 0}, "max_output_tokens", 400),
    ({"temperature": "hot"}, "temperature", 400),
])
async def test_unsupported_or_wrong_parts_are_named_400s(
    served: Served, body: dict[str, Any], param: str, status: int
) -> None:
    response = await served.http.post(
        "/v1/responses", json={"model": "auto", "input": "Hello", **body})
    assert response.status_code == status
    validate("ErrorResponse", response.json())
    assert response.json()["error"]["param"] == param


async def test_unserved_response_endpoints_are_openai_errors(served: Served) -> None:
    made = await served.a.responses.create(model="auto", input="Hello there")
    cancel = await served.http.post(f"/v1/responses/{made.id}/cancel")
    assert cancel.status_code == 400
    assert "background" in cancel.json()["error"]["message"]
    counting = await served.http.post("/v1/responses/input_tokens", json={"model": "auto"})
    assert counting.status_code == 404
    assert counting.json()["error"]["code"] == "unsupported_endpoint"
    put = await served.http.put(f"/v1/responses/{made.id}")
    assert put.status_code == 405


async def test_every_attempt_is_booked_as_responses_in_the_ledger(served: Served) -> None:
    made = await served.a.responses.with_raw_response.create(model="auto", input="Hello there")
    request_id = made.headers["x-request-id"]
    for _ in range(200):
        with sqlite3.connect(served.ledger) as db:
            rows = db.execute("SELECT kind, key, winner FROM ledger WHERE request_id = ?",
                              (request_id,)).fetchall()
        if rows:
            break
        await trio.sleep(0.01)  # the ledger writes in batches, in its own task
    assert rows == [("responses", "alpha", 1)]


async def test_without_a_ledger_nothing_is_kept(nursery: trio.Nursery) -> None:
    proxy = await start_proxy(nursery, fast_config())  # the tests' default: no ledger
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0,
                                  http_client=httpx2.AsyncClient()) as sdk:
        made = await sdk.responses.create(model="auto", input="Hello there")
        assert made.store is False and made.output_text
        with pytest.raises(openai.BadRequestError, match="keeps no responses"):
            await sdk.responses.create(model="auto", input="Go on",
                                       previous_response_id=made.id)


async def test_reasoning_deltas_become_a_reasoning_item(nursery: trio.Nursery) -> None:
    config = fast_config()
    profile = SimModelProfile(ttft_ms=0.0, inter_token_ms=0.0, tokens=6,
                              habits=("reasoning_content",))
    sim = msgspec.structs.replace(
        config.providers["sim"], sim_models={m.id: profile for m in config.models})
    proxy = await start_proxy(nursery, msgspec.structs.replace(config, providers={"sim": sim}))
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as http:
        events = await events_of(http, {"model": "economy", "input": "Think first"})
        answer = (await http.post("/v1/responses",
                                  json={"model": "economy", "input": "Think first"})).json()
    check_sequence(events)
    kinds = [item["type"] for item in events[-1]["response"]["output"]]
    assert kinds == ["reasoning", "message"]
    assert "response.reasoning_text.delta" in [e["type"] for e in events]
    validate("Response", answer)
    assert [item["type"] for item in answer["output"]] == ["reasoning", "message"]
    assert answer["output"][0]["content"][0]["text"]


# -- every provider kind ----------------------------------------------------------------------

# One chat model per protocol, each on its own keyed sim; requests pin them by id.
ADAPTER_MODELS = {"openai": "gpt-4.1", "anthropic": "claude-sonnet-4-6",
                  "gemini": "gemini-2.5-flash"}


class Stack(msgspec.Struct):
    proxy: Running
    sdk: openai.AsyncOpenAI
    http: httpx.AsyncClient


@pytest.fixture
async def stack(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Stack]:
    providers: dict[str, ProviderConfig] = {}
    for kind in ("openai", "anthropic", "gemini"):
        sim = SimUpstream(default=FAST, api_key=KEYS[kind])
        address = (await nursery.start(functools.partial(serve_sim, sim)))[0]
        providers[kind] = ProviderConfig(kind=kind, base_url=address + "/v1" if (
            kind == "openai") else address, api_key=KEYS[kind])
    models = [ModelConfig(id="claude-sonnet-4-6", provider="anthropic", tier="premium"),
              ModelConfig(id="gpt-4.1", provider="openai", tier="premium"),
              ModelConfig(id="gemini-2.5-flash", provider="gemini", tier="economy")]
    config = Config(providers=providers, models=models,
                    ledger=LedgerConfig(path=str(tmp_path / "ledger.db")))
    proxy = await start_proxy(nursery, config)
    async with (
        openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0,
                           http_client=httpx2.AsyncClient()) as sdk,
        httpx.AsyncClient(base_url=proxy.url, timeout=10) as http,
    ):
        yield Stack(proxy=proxy, sdk=sdk, http=http)


@pytest.fixture(params=sorted(ADAPTER_MODELS))
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_each_adapter_answers_a_valid_response(stack: Stack, adapter: str) -> None:
    raw = await stack.sdk.responses.with_raw_response.create(
        model=ADAPTER_MODELS[adapter], input="Hello there", instructions="Be brief.",
        max_output_tokens=64)
    validate("Response", json.loads(raw.http_response.content))
    assert raw.headers["x-tlproxy-provider"] == adapter
    response = raw.parse()
    assert response.status == "completed" and response.output_text
    assert response.usage is not None and response.usage.input_tokens > 0


async def test_each_adapter_streams_valid_events(stack: Stack, adapter: str) -> None:
    events = await events_of(stack.http, {"model": ADAPTER_MODELS[adapter],
                                          "input": "Hello there"})
    check_sequence(events)
    assert events[-1]["type"] == "response.completed"
    async with stack.sdk.responses.stream(model=ADAPTER_MODELS[adapter],
                                          input="Hello there") as stream:
        final = await stream.get_final_response()
    assert final.output_text and final.model == ADAPTER_MODELS[adapter]


async def test_each_adapter_takes_a_tool_result_after_previous_response_id(
    stack: Stack, adapter: str
) -> None:
    model = ADAPTER_MODELS[adapter]
    first = await stack.sdk.responses.create(model=model, input="Weather in Oslo?",
                                             tools=[WEATHER])  # type: ignore[list-item]
    call = next(item for item in first.output if item.type == "function_call")
    second = await stack.sdk.responses.create(
        model=model, tools=[WEATHER], previous_response_id=first.id,  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": "sunny, 21 C"}])
    assert "sunny, 21 C" in second.output_text


async def test_a_conversation_moves_between_providers(stack: Stack) -> None:
    first = await stack.sdk.responses.with_raw_response.create(
        model="auto", input="My name is Ada.")
    second = await stack.sdk.responses.with_raw_response.create(
        model="auto", input="What is my name?", previous_response_id=first.parse().id)
    assert first.headers["x-tlproxy-tier"] == "premium"
    assert second.headers["x-tlproxy-tier"] == "economy"
    assert second.headers["x-tlproxy-provider"] == "gemini"
    assert second.parse().output_text


# -- limits and cancellation, as for chat -------------------------------------------------------

async def test_a_keys_rate_limit_applies_to_responses(nursery: trio.Nursery) -> None:
    config = fast_config(keys=[ClientKey(name="svc", hash=_key("svc", KEY_A).hash, rpm=2)])
    proxy = await start_proxy(nursery, config)
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=KEY_A, max_retries=0,
                                  http_client=httpx2.AsyncClient()) as sdk:
        raw = await sdk.responses.with_raw_response.create(model="auto", input="Hello")
        assert raw.headers["x-ratelimit-remaining-requests"] == "1"
        await sdk.responses.create(model="auto", input="Hello")
        with pytest.raises(openai.RateLimitError) as caught:
            async with sdk.responses.stream(model="auto", input="Hello") as stream:
                await stream.get_final_response()
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1


async def test_client_leaving_a_stream_cancels_the_upstream(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    proxy = await start_proxy(nursery, slow_config())
    sim = proxy.sims["sim"]
    body = {"model": "auto", "stream": True, "input": "long"}
    async with httpx.AsyncClient(base_url=proxy.url) as http:
        with trio.CancelScope() as leave:
            async with http.stream("POST", "/v1/responses", json=body) as response:
                received = b""
                async for data in response.aiter_raw():
                    received += data
                    if received.count(b"response.output_text.delta") >= 3:
                        leave.cancel()
        left = trio.current_time()
    assert leave.cancelled_caught
    # Dropped at the instant the client left, not when the 20 s answer would end.
    assert await dropped_at(sim) == left
    assert sim.stats.streams_completed == 0


async def test_stored_response_paths_are_one_metrics_label(served: Served) -> None:
    made = await served.a.responses.create(model="auto", input="Hello there")
    await served.http.get(f"/v1/responses/{made.id}")
    await served.http.get(f"/v1/responses/{made.id}/input_items")
    metrics = (await served.http.get("/metrics")).text
    assert made.id not in metrics
    assert 'endpoint="responses/{id}"' in metrics
    assert 'endpoint="responses/{id}/input_items"' in metrics
    assert 'endpoint="responses"' in metrics


async def test_input_items_pages_in_either_order(served: Served) -> None:
    made = await served.a.responses.create(model="auto", input=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "One"},
        {"role": "user", "content": "Two"}])
    newest = await served.a.responses.input_items.list(made.id, limit=2)
    assert [i.content[0].text for i in newest.data] == ["Two", "One"]  # type: ignore[union-attr]
    assert newest.has_more
    rest = await served.a.responses.input_items.list(made.id, limit=2, after=newest.last_id)
    assert [i.content[0].text for i in rest.data] == ["Be brief."]  # type: ignore[union-attr]
    assert not rest.has_more
    oldest = await served.a.responses.input_items.list(made.id, order="asc")
    assert [i.role for i in oldest.data] == ["developer", "user", "user"]  # type: ignore[union-attr]
    wrong = await served.http.get(f"/v1/responses/{made.id}/input_items?limit=500")
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "limit"


async def test_each_adapter_answers_a_json_schema(stack: Stack, adapter: str) -> None:
    raw = await stack.sdk.responses.with_raw_response.create(
        model=ADAPTER_MODELS[adapter], input="Ada is 36 years old.",
        text={"format": PERSON})  # type: ignore[typeddict-item]
    validate("Response", json.loads(raw.http_response.content))
    person = json.loads(raw.parse().output_text)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
