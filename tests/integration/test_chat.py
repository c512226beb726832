"""Chat completions through the real proxy, with the official SDK and on the raw wire."""

from __future__ import annotations

import json

import httpx
import openai
import trio

from tests.integration.sse_wire import check_openai_stream, read_stream
from tests.openai_schema import validate
from tlproxy.server import Running

HELLO = [{"role": "user", "content": "Hello there"}]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


async def test_async_sdk_json_answer_is_a_valid_chat_completion(
    aclient: openai.AsyncOpenAI,
) -> None:
    raw = await aclient.chat.completions.with_raw_response.create(model="auto", messages=HELLO)
    completion = raw.parse()
    validate("CreateChatCompletionResponse", json.loads(raw.http_response.content))
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-tlproxy-tier"] == "premium"
    assert raw.headers["x-tlproxy-model"] == completion.model


async def test_sync_sdk_json_answer(client: openai.OpenAI) -> None:
    completion = await trio.to_thread.run_sync(
        lambda: client.chat.completions.create(model="economy", messages=HELLO)
    )
    assert completion.choices[0].message.content
    assert completion.choices[0].message.refusal is None
    assert completion.choices[0].logprobs is None


async def test_wire_json_has_null_logprobs_and_refusal(raw: httpx.AsyncClient) -> None:
    response = await raw.post("/v1/chat/completions", json={"model": "auto", "messages": HELLO})
    body = response.json()
    assert response.headers["content-type"] == "application/json"
    choice = body["choices"][0]
    assert choice["logprobs"] is None
    assert choice["message"]["refusal"] is None
    assert "prompt_tokens_details" in body["usage"]
    assert "completion_tokens_details" in body["usage"]


async def test_stream_without_usage_follows_openai_wire(raw: httpx.AsyncClient) -> None:
    stream = await read_stream(raw, {"model": "economy", "messages": HELLO})
    check_openai_stream(stream, include_usage=False)


async def test_stream_with_usage_ends_with_usage_chunk(raw: httpx.AsyncClient) -> None:
    stream = await read_stream(raw, {
        "model": "economy", "messages": HELLO, "stream_options": {"include_usage": True}})
    check_openai_stream(stream, include_usage=True)


async def test_stream_n2_gives_indices_0_and_1(raw: httpx.AsyncClient) -> None:
    stream = await read_stream(raw, {"model": "premium", "messages": HELLO, "n": 2})
    check_openai_stream(stream, n=2, include_usage=False)


async def test_async_sdk_stream_with_usage(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="auto", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    text = ""
    usage = None
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
        usage = chunk.usage or usage
    assert text
    assert usage is not None and usage.completion_tokens > 0


async def test_sync_sdk_stream(client: openai.OpenAI) -> None:
    def run() -> list[str]:
        stream = client.chat.completions.create(model="auto", messages=HELLO, stream=True)
        return [c.choices[0].finish_reason for c in stream if c.choices]

    finishes = await trio.to_thread.run_sync(run)
    assert [f for f in finishes if f] == ["stop"]


async def test_n2_json_answer(aclient: openai.AsyncOpenAI) -> None:
    completion = await aclient.chat.completions.create(model="auto", messages=HELLO, n=2)
    assert [c.index for c in completion.choices] == [0, 1]


async def test_tool_call_json_and_round_trip(aclient: openai.AsyncOpenAI) -> None:
    first = await aclient.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice="auto",
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "example", "unit": "celsius"}
    # The SDK's own message object goes back into the history, as users do.
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        choice.message.model_dump(exclude_none=False),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"},
    ]
    second = await aclient.chat.completions.create(
        model="auto", messages=history, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].finish_reason == "stop"
    assert "18 degrees" in second.choices[0].message.content


async def test_parallel_tool_calls_stream_as_openai_does(raw: httpx.AsyncClient) -> None:
    stream = await read_stream(raw, {
        "model": "auto", "messages": [{"role": "user", "content": "Weather and time"}],
        "tools": [WEATHER_TOOL, TIME_TOOL],
    })
    check_openai_stream(stream, include_usage=False)
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream.chunks:
        for choice in chunk["choices"]:
            for fragment in choice["delta"].get("tool_calls") or ():
                index = fragment["index"]
                if index not in calls:
                    # The first fragment names the call; later ones carry arguments only.
                    assert fragment["id"] and fragment["type"] == "function"
                    assert fragment["function"]["name"]
                    calls[index] = {"name": fragment["function"]["name"], "arguments": ""}
                else:
                    assert "id" not in fragment and "name" not in fragment["function"]
                calls[index]["arguments"] += fragment["function"].get("arguments", "")
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "example", "unit": "celsius"}
    finish = [c["choices"][0]["finish_reason"] for c in stream.chunks]
    assert finish[-1] == "tool_calls"


async def test_async_sdk_stream_accumulates_tool_calls(aclient: openai.AsyncOpenAI) -> None:
    async with aclient.chat.completions.stream(
        model="auto", messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ) as stream:
        final = await stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments)["city"] == "example"


async def test_json_schema_response_format(aclient: openai.AsyncOpenAI) -> None:
    schema = {"type": "object", "properties": {"title": {"type": "string"},
              "year": {"type": "integer"}}, "required": ["title", "year"],
              "additionalProperties": False}
    completion = await aclient.chat.completions.create(
        model="auto", messages=HELLO,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "film", "schema": schema, "strict": True}},
    )
    assert json.loads(completion.choices[0].message.content) == {"title": "example", "year": 1}


async def test_max_tokens_gives_finish_reason_length(aclient: openai.AsyncOpenAI) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        completion = await aclient.chat.completions.create(
            model="auto", messages=HELLO, **{field: 3}
        )
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == 3


async def test_unread_fields_pass_through_untouched(proxy: Running, raw: httpx.AsyncClient) -> None:
    body = {
        "model": "economy", "messages": HELLO, "seed": 7, "user": "u-1",
        "metadata": {"team": "rag"}, "stop": ["\n\n"], "logit_bias": {"50256": -100},
        "prediction": {"type": "content", "content": "x"}, "x_vendor": {"a": [1, 2]},
    }
    response = await raw.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    seen = proxy.sims["sim"].stats.last_body
    assert seen is not None
    for key in ("seed", "user", "metadata", "stop", "logit_bias", "prediction", "x_vendor"):
        assert seen[key] == body[key]
    assert seen["model"] == response.headers["x-tlproxy-model"]


async def test_upstream_is_always_asked_for_usage(proxy: Running, raw: httpx.AsyncClient) -> None:
    await read_stream(raw, {"model": "economy", "messages": HELLO})
    seen = proxy.sims["sim"].stats.last_body
    assert seen is not None and seen["stream_options"] == {"include_usage": True}


async def test_every_request_shape_real_clients_send(aclient: openai.AsyncOpenAI) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "You are helpful."}]},
        {"role": "user", "name": "ann", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=",
                                                "detail": "low"}},
        ]},
        {"role": "assistant", "content": None, "refusal": None, "annotations": [],
         "function_call": {"name": "lookup", "arguments": "{}"}},
        {"role": "function", "name": "lookup", "content": "a cat"},
        {"role": "assistant", "content": "A cat.", "refusal": None, "annotations": [],
         "audio": None, "tool_calls": []},
        {"role": "user", "content": "Thanks"},
    ]
    completion = await aclient.chat.completions.create(
        model="gpt-4o", messages=messages,  # an old name: routed, not refused
        functions=[{"name": "lookup", "parameters": {"type": "object", "properties": {}}}],
        function_call="none",
    )
    assert completion.choices[0].message.content
