"""The native adapters end to end: the official SDK, the real proxy, sims speaking each protocol.

Three simulated upstreams run on loopback ports, one per protocol (Anthropic's
Messages API, the Gemini API, OpenAI's), each expecting its own key. The proxy
is configured with providers of kind ``anthropic``, ``gemini`` and ``openai``
pointing at them, so every byte goes through the real adapters, the real
engine and real sockets. Requests pin a model, so each goes to exactly one
adapter (a pinned route has one candidate: no fallback hides a failure).
"""

from __future__ import annotations

import base64
import functools
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import msgspec
import openai
import pytest
import trio
from trio.testing import MockClock

from tests.integration.conftest import start_proxy
from tests.integration.sse_wire import WireStream, read_stream
from tests.integration.sse_wire import check_openai_stream as check_wire
from tests.integration.test_chat import TIME_TOOL, WEATHER_TOOL
from tests.unit.adapter_support import validate
from tlproxy.config import Config, ModelConfig, ProviderConfig, SimModelProfile
from tlproxy.server import Running, serve_sim
from tlproxy.sim import SimUpstream, embedding_vector

KEYS = {"anthropic": "test-anthropic-key", "gemini": "test-gemini-key",
        "openai": "test-openai-key"}
# The model each adapter serves, pinned by id in the requests below.
MODELS = {"anthropic": "claude-sonnet-4-6", "gemini": "gemini-2.5-flash"}
FAST = SimModelProfile(ttft_ms=0.0, inter_token_ms=0.0, tokens=12, embedding_dimensions=64)


class Stack(msgspec.Struct):
    proxy: Running
    sims: dict[str, SimUpstream]
    http: httpx.AsyncClient
    sdk: openai.AsyncOpenAI


async def start_stack(
    nursery: trio.Nursery, keys: dict[str, str], profile: SimModelProfile = FAST
) -> tuple[Running, dict[str, SimUpstream]]:
    """Three keyed sims, and the proxy in front of them sending `keys`."""
    sims: dict[str, SimUpstream] = {}
    providers: dict[str, ProviderConfig] = {}
    for kind in ("anthropic", "gemini", "openai"):
        sim = sims[kind] = SimUpstream(default=profile, api_key=KEYS[kind])
        address = (await nursery.start(functools.partial(serve_sim, sim)))[0]
        base = address + "/v1" if kind == "openai" else address
        providers[kind] = ProviderConfig(kind=kind, base_url=base, api_key=keys[kind])
    models = [
        ModelConfig(id="claude-sonnet-4-6", provider="anthropic", tier="premium"),
        ModelConfig(id="gemini-2.5-flash", provider="gemini", tier="economy"),
        ModelConfig(id="text-embedding-3-small", provider="openai", tier="embedding"),
        ModelConfig(id="gemini-embedding-001", provider="gemini", tier="embedding"),
    ]
    proxy = await start_proxy(nursery, Config(providers=providers, models=models))
    return proxy, sims


@pytest.fixture
async def stack(nursery: trio.Nursery) -> AsyncIterator[Stack]:
    proxy, sims = await start_stack(nursery, KEYS)
    # Plain HTTP on loopback: no CA bundle to load for each test's clients.
    async with (
        httpx.AsyncClient(base_url=proxy.url, timeout=10, verify=False) as http,
        openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0,
                           http_client=httpx2.AsyncClient(verify=False)) as sdk,
    ):
        yield Stack(proxy=proxy, sims=sims, http=http, sdk=sdk)


@pytest.fixture(params=sorted(MODELS))
def adapter(request: pytest.FixtureRequest) -> str:
    return request.param



def check_openai_stream(stream: WireStream, *, include_usage: bool) -> None:
    """`sse_wire.check_openai_stream`, with the same exception for the fingerprint."""
    for chunk in stream.chunks:
        assert chunk.pop("system_fingerprint", None) is None
    check_wire(stream, include_usage=include_usage)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def assert_routed(headers: httpx.Headers, adapter: str) -> None:
    assert headers["x-tlproxy-provider"] == adapter
    assert headers["x-tlproxy-model"] == MODELS[adapter]
    assert headers["x-tlproxy-rule"] == "pinned"
    assert headers["x-tlproxy-attempts"] == "1"


def assert_no_key(response: httpx.Response, text: str | None = None) -> None:
    """No provider key in anything the client got (`text`: a streamed body)."""
    body = response.text if text is None else text
    seen = body + "".join(f"{k}: {v}\n" for k, v in response.headers.items())
    for key in KEYS.values():
        assert key not in seen


def tool_calls(chunks: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """Tool calls accumulated from stream chunks, as the SDK does."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            for fragment in choice["delta"].get("tool_calls") or ():
                index = fragment["index"]
                if index not in calls:
                    assert fragment["id"] and fragment["type"] == "function"
                    calls[index] = {"name": fragment["function"]["name"], "arguments": ""}
                else:
                    assert "id" not in fragment and "name" not in fragment["function"]
                calls[index]["arguments"] += fragment["function"].get("arguments", "")
    return calls


async def test_json_answer_is_a_valid_chat_completion(stack: Stack, adapter: str) -> None:
    raw = await stack.sdk.chat.completions.with_raw_response.create(
        model=MODELS[adapter], messages=user("Hello there"))
    validate("CreateChatCompletionResponse", json.loads(raw.http_response.content))
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.model == MODELS[adapter]
    assert_routed(raw.headers, adapter)
    native = {"anthropic": "/v1/messages", "gemini": ":generateContent"}[adapter]
    assert (stack.sims[adapter].stats.last_path or "").endswith(native)
    capped = await stack.sdk.chat.completions.create(
        model=MODELS[adapter], messages=user("Hello there"), max_completion_tokens=3)
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None and capped.usage.completion_tokens == 3


async def test_stream_with_and_without_usage(stack: Stack, adapter: str) -> None:
    stream = await read_stream(stack.http, {
        "model": MODELS[adapter], "messages": user("Hello there"),
        "stream_options": {"include_usage": True}})
    check_openai_stream(stream, include_usage=True)
    assert_routed(stream.response.headers, adapter)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in stream.chunks[:-1])
    assert stream.chunks[-1]["usage"]["completion_tokens"] > 0
    # The SDK, without usage: the same prompt gives the same text, one finish.
    sdk_stream = await stack.sdk.chat.completions.create(
        model=MODELS[adapter], messages=user("Hello there"), stream=True)
    finishes, sdk_text = [], ""
    async for chunk in sdk_stream:
        assert chunk.usage is None
        for choice in chunk.choices:
            sdk_text += choice.delta.content or ""
            finishes += [choice.finish_reason] if choice.finish_reason else []
    assert (sdk_text, finishes) == (text, ["stop"])


async def test_tool_call_json_and_round_trip(stack: Stack, adapter: str) -> None:
    question = user("Weather in Paris?")
    first = (await stack.sdk.chat.completions.create(
        model=MODELS[adapter], messages=question, tools=[WEATHER_TOOL])).choices[0]
    [call] = first.message.tool_calls
    assert (first.finish_reason, call.function.name, json.loads(call.function.arguments)) == (
        "tool_calls", "get_weather", {"city": "example", "unit": "celsius"})
    # The SDK's own message goes back into the history, as users do; the
    # adapter must pair the result with its call (by id, or by name for Gemini).
    answer = {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"}
    second = (await stack.sdk.chat.completions.create(
        model=MODELS[adapter], tools=[WEATHER_TOOL],
        messages=[*question, first.message.model_dump(exclude_none=False), answer])).choices[0]
    assert second.finish_reason == "stop"
    assert "18 degrees" in second.message.content


async def test_parallel_tool_calls_stream(stack: Stack, adapter: str) -> None:
    stream = await read_stream(stack.http, {
        "model": MODELS[adapter], "messages": user("Weather and time"),
        "tools": [WEATHER_TOOL, TIME_TOOL]})
    check_openai_stream(stream, include_usage=False)
    calls = tool_calls(stream.chunks)
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "example", "unit": "celsius"}
    assert json.loads(calls[1]["arguments"]) == {"zone": "example"}
    assert stream.chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_sdk_stream_named_tool_choice(stack: Stack, adapter: str) -> None:
    async with stack.sdk.chat.completions.stream(
        model=MODELS[adapter], messages=user("Time?"), tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    ) as stream:
        final = await stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments) == {"zone": "example"}


async def test_json_schema_response_format(stack: Stack, adapter: str) -> None:
    schema = {"type": "object", "properties": {"title": {"type": "string"},
              "year": {"type": "integer"}}, "required": ["title", "year"],
              "additionalProperties": False}
    completion = await stack.sdk.chat.completions.create(
        model=MODELS[adapter], messages=user("A film"),
        response_format={"type": "json_schema",
                         "json_schema": {"name": "film", "schema": schema, "strict": True}})
    assert json.loads(completion.choices[0].message.content) == {"title": "example", "year": 1}


async def test_upstream_errors_keep_their_meaning(stack: Stack, adapter: str) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await stack.sdk.chat.completions.create(
            model=MODELS[adapter], messages=user("[sim:status=429]"))
    # Anthropic says retry-after; Gemini says RetryInfo.retryDelay "1s".
    assert caught.value.response.headers["retry-after"] == "1"
    assert_no_key(caught.value.response)
    # Streaming too: the failure comes before the first token, as an HTTP error.
    with pytest.raises(openai.RateLimitError):
        await stack.sdk.chat.completions.create(
            model=MODELS[adapter], messages=user("[sim:status=429]"), stream=True)
    overloaded = {"anthropic": 529, "gemini": 503}[adapter]
    with pytest.raises(openai.InternalServerError) as failed:
        await stack.sdk.chat.completions.create(
            model=MODELS[adapter], messages=user(f"[sim:status={overloaded}]"))
    assert failed.value.status_code == 503


async def test_cut_stream_ends_with_error_event_and_no_done(stack: Stack, adapter: str) -> None:
    stream = await read_stream(stack.http, {
        "model": MODELS[adapter], "messages": user("[sim:cut=3]")})
    assert stream.response.status_code == 200
    assert not stream.done
    assert "error" in stream.chunks[-1]
    validate("ErrorResponse", stream.chunks[-1])
    # The role chunk and three content chunks reached the client before the cut.
    assert sum(1 for c in stream.chunks if "choices" in c) == 4
    assert stack.sims[adapter].stats.streams_completed == 0
    with pytest.raises(openai.APIError):
        async for _ in await stack.sdk.chat.completions.create(
                model=MODELS[adapter], stream=True, messages=user("[sim:cut=3]")):
            pass


async def dropped_at(sim: SimUpstream) -> float:
    """When the upstream saw the proxy drop its request (virtual time)."""
    with trio.fail_after(10):  # a hang guard, in virtual seconds
        await sim.stats.cancelled_event.wait()
    return trio.current_time()


async def test_client_leaving_mid_stream_cancels_upstream(
    autojump_clock: MockClock, nursery: trio.Nursery, adapter: str
) -> None:
    slow = SimModelProfile(ttft_ms=0.0, inter_token_ms=50.0, tokens=400)
    proxy, sims = await start_stack(nursery, KEYS, slow)
    async with httpx.AsyncClient(base_url=proxy.url, verify=False) as http:
        # Tokens flow from the start; the client gives up on the 20 s answer.
        with trio.move_on_after(0.3) as leave:
            await read_stream(http, {"model": MODELS[adapter], "messages": user("long")})
        left = trio.current_time()
    assert leave.cancelled_caught
    # The upstream request goes at that very instant.
    assert await dropped_at(sims[adapter]) == left
    assert sims[adapter].stats.streams_completed == 0


async def test_client_leaving_before_the_first_token_cancels_upstream(
    autojump_clock: MockClock, stack: Stack, adapter: str
) -> None:
    sim = stack.sims[adapter]
    with trio.move_on_after(0.2) as leave:
        await read_stream(stack.http, {"model": MODELS[adapter], "messages": user("[sim:stall]")})
    left = trio.current_time()
    assert leave.cancelled_caught
    assert await dropped_at(sim) == left
    assert (sim.stats.streams_started, sim.stats.streams_completed) == (1, 0)


async def test_embeddings_float_and_base64(stack: Stack) -> None:
    texts = ["the first text", "the second"]
    raw = await stack.sdk.embeddings.with_raw_response.create(
        model="gemini-embedding-001", input=texts, encoding_format="float")
    assert raw.headers["x-tlproxy-provider"] == "gemini"
    assert (stack.sims["gemini"].stats.last_path or "").endswith(
        "/models/gemini-embedding-001:batchEmbedContents")
    floats = raw.parse()
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.data[0].embedding == pytest.approx(embedding_vector(texts[0], 64))
    assert floats.usage.prompt_tokens > 0
    # The SDK's default asks for base64 and decodes it itself.
    decoded = await stack.sdk.embeddings.create(model="gemini-embedding-001", input=texts)
    assert decoded.data[1].embedding == pytest.approx(floats.data[1].embedding, rel=1e-6)
    # Explicit base64: the little-endian float32 bytes, as OpenAI sends them.
    one = await stack.sdk.embeddings.create(
        model="gemini-embedding-001", input="the first text", encoding_format="base64",
        dimensions=8)
    assert (stack.sims["gemini"].stats.last_path or "").endswith(":embedContent")
    packed = base64.b64decode(one.data[0].embedding)  # type: ignore[arg-type]
    values = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert values == pytest.approx(embedding_vector("the first text", 8), rel=1e-6)
    # Next to them, an OpenAI-kind provider serves its own embedding model.
    raw = await stack.sdk.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="hello", encoding_format="float")
    assert raw.headers["x-tlproxy-provider"] == "openai"
    assert len(raw.parse().data[0].embedding) == 64


@pytest.mark.parametrize("model", ["gemini-embedding-001", "text-embedding-3-small"])
@pytest.mark.parametrize("dimensions", [65, 2**40])
async def test_embeddings_longer_than_the_model_makes_are_refused_upstream(
    stack: Stack, model: str, dimensions: int
) -> None:
    # The upstream (the sim, as the real APIs) only shortens a model's vectors:
    # a size above the model's own is a 400 there, not an allocation.
    with pytest.raises(openai.BadRequestError):
        await stack.sdk.embeddings.create(model=model, input="hello", dimensions=dimensions)
    served = await stack.sdk.embeddings.create(
        model=model, input="hello", encoding_format="float", dimensions=64)
    assert len(served.data[0].embedding) == 64


async def test_keys_go_upstream_in_their_headers_and_never_back(
    stack: Stack, adapter: str
) -> None:
    model = MODELS[adapter]
    responses = [
        await stack.http.post("/v1/chat/completions", json={"model": model,
                                                            "messages": user("Hi")}),
        await stack.http.post("/v1/chat/completions", json={
            "model": model, "messages": user("[sim:status=429]")}),
        await stack.http.post("/v1/chat/completions", json={
            "model": model, "messages": user("[sim:status=400]")}),
    ]
    stream = await read_stream(stack.http, {"model": model, "messages": user("[sim:cut=1]")})
    for response in responses:
        assert_no_key(response)
    assert_no_key(stream.response, "\n".join(stream.events))
    assert [r.status_code for r in responses] == [200, 429, 400]
    seen = stack.sims[adapter].stats.last_headers
    if adapter == "anthropic":
        assert seen["x-api-key"] == KEYS["anthropic"]
        assert seen["anthropic-version"] == "2023-06-01"
    else:
        assert seen["x-goog-api-key"] == KEYS["gemini"]
        stats = stack.sims[adapter].stats
        assert stats.last_query == "alt=sse"  # the key is never in the URL

    assert "authorization" not in seen


async def test_readiness_pings_every_adapter(stack: Stack) -> None:
    response = await stack.http.get("/readyz")
    assert response.status_code == 200, response.text


async def test_wrong_provider_key_is_502_and_leaks_nothing(
    nursery: trio.Nursery, adapter: str
) -> None:
    wrong = {kind: f"wrong-{kind}-key" for kind in KEYS}
    proxy, sims = await start_stack(nursery, wrong)
    async with httpx.AsyncClient(base_url=proxy.url, verify=False) as http:
        response = await http.post("/v1/chat/completions", json={
            "model": MODELS[adapter], "messages": user("Hi")})
    assert response.status_code == 502
    validate("ErrorResponse", response.json())
    assert_no_key(response)
    assert wrong[adapter] not in response.text
    assert sims[adapter].stats.requests == 1  # a pinned route: no other candidate


@pytest.mark.parametrize(("adapter", "headers", "status", "kind"), [
    ("anthropic", {"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
    ("anthropic", {"x-api-key": "nope", "anthropic-version": "2023-06-01"}, 401,
     "authentication_error"),
    ("anthropic", {"x-api-key": KEYS["anthropic"]}, 400, "invalid_request_error"),
    ("gemini", {}, 403, "PERMISSION_DENIED"),
    ("gemini", {"x-goog-api-key": "nope"}, 400, "INVALID_ARGUMENT"),
])
async def test_sims_refuse_bad_credentials_in_their_protocol(
    nursery: trio.Nursery, adapter: str, headers: dict[str, str], status: int, kind: str
) -> None:
    sim = SimUpstream(default=FAST, api_key=KEYS[adapter])
    address = (await nursery.start(functools.partial(serve_sim, sim)))[0]
    if adapter == "anthropic":
        url = f"{address}/v1/messages"
        body: dict[str, Any] = {"model": MODELS[adapter], "max_tokens": 5,
                                "messages": user("Hi")}
    else:
        url = f"{address}/v1beta/models/{MODELS[adapter]}:generateContent"
        body = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    async with httpx.AsyncClient(verify=False) as http:
        response = await http.post(url, json=body, headers=headers)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type" if adapter == "anthropic" else "status"] == kind
    if adapter == "gemini" and status == 400:
        assert error["details"][0]["reason"] == "API_KEY_INVALID"
