"""Real providers' habits, through the real proxy: what a client sees.

Each test starts three simulated upstreams (OpenAI, Anthropic and Gemini
protocols) whose models have habits of real providers turned on
(`SimModelProfile.habits`), and the proxy in front of them with providers of
kind ``openai``, ``anthropic`` and ``gemini``, so every byte goes through
the real adapters, race and engine over loopback sockets. The client is the
official ``openai`` SDK, or plain HTTP to check the wire itself.

The answers are compared with those of a model without habits: the
simulator's text depends only on the prompt, so a habit that the proxy
smooths out leaves the client's answer unchanged.
"""

from __future__ import annotations

import contextlib
import functools
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
from tlproxy.config import Config, ModelConfig, ProviderConfig, SimHabit, SimModelProfile
from tlproxy.server import serve_sim
from tlproxy.sim import SimUpstream

PROTOCOLS = ("openai", "anthropic", "gemini")
PLAIN = {"openai": "gpt-plain", "anthropic": "claude-plain", "gemini": "gemini-plain"}
PROMPT = [{"role": "user", "content": "Tell me about routing"}]


class Model(msgspec.Struct, frozen=True):
    id: str
    protocol: str
    habits: tuple[SimHabit, ...] = ()
    tier: str = "premium"
    ttft_ms: float = 0.0
    inter_token_ms: float = 0.0
    first_token_timeout: float | None = None


class Stack(msgspec.Struct):
    url: str
    sims: dict[str, SimUpstream]
    http: httpx.AsyncClient
    sdk: openai.AsyncOpenAI


@pytest.fixture
async def clients(nursery: trio.Nursery) -> AsyncIterator[Any]:
    """Makes a proxy over sims serving `models` (plus one plain model per protocol)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(*models: Model) -> Stack:
            plain = [Model(PLAIN[p], p, tier="economy") for p in PROTOCOLS]
            every = [*models, *plain]
            sims: dict[str, SimUpstream] = {}
            providers: dict[str, ProviderConfig] = {}
            for protocol in PROTOCOLS:
                profiles = {m.id: SimModelProfile(tokens=12, ttft_ms=m.ttft_ms, habits=m.habits,
                                                  inter_token_ms=m.inter_token_ms)
                            for m in every if m.protocol == protocol}
                sim = sims[protocol] = SimUpstream(profiles, api_key=f"key-{protocol}")
                address = (await nursery.start(functools.partial(serve_sim, sim)))[0]
                base = address + "/v1" if protocol == "openai" else address
                providers[protocol] = ProviderConfig(
                    kind=protocol, base_url=base, api_key=f"key-{protocol}")
            catalog = [
                ModelConfig(id=m.id, provider=m.protocol, tier=m.tier,
                            first_token_timeout=m.first_token_timeout)
                for m in every]
            proxy = await start_proxy(nursery, Config(providers=providers, models=catalog))
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=proxy.url, timeout=10, verify=False))
            sdk = await stack.enter_async_context(openai.AsyncOpenAI(
                base_url=proxy.url + "/v1", api_key="unused", max_retries=0,
                http_client=httpx2.AsyncClient(verify=False)))
            return Stack(url=proxy.url, sims=sims, http=http, sdk=sdk)

        yield start


def check_openai_stream(stream: WireStream, *, include_usage: bool) -> None:
    """`sse_wire.check_openai_stream`; the native adapters have no fingerprint to give."""
    for chunk in stream.chunks:
        if chunk.get("system_fingerprint") is None:
            chunk.pop("system_fingerprint", None)
    check_wire(stream, include_usage=include_usage)


def text_of(stream: WireStream) -> str:
    return "".join(choice["delta"].get("content") or ""
                   for chunk in stream.chunks for choice in chunk["choices"])


async def stream_of(stack: Stack, model: str, *, include_usage: bool = False,
                    messages: list[dict[str, Any]] = PROMPT) -> WireStream:
    body: dict[str, Any] = {"model": model, "messages": messages}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return await read_stream(stack.http, body)


async def sdk_text(stack: Stack, model: str) -> tuple[str, list[str]]:
    """The SDK's stream, read as an application does: ``chunk.choices[0]``."""
    text, finishes = "", []
    async for chunk in await stack.sdk.chat.completions.create(
            model=model, messages=PROMPT, stream=True):
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        finishes += [choice.finish_reason] if choice.finish_reason else []
    return text, finishes


def attempts(metrics: httpx.Response) -> dict[tuple[str, str], int]:
    """``tlproxy_race_attempts_total`` by (outcome, start), from ``/metrics``."""
    counts = {}
    for line in metrics.text.splitlines():
        if line.startswith("tlproxy_race_attempts_total{"):
            labels, value = line.removeprefix("tlproxy_race_attempts_total").rsplit(" ", 1)
            pairs = dict(p.split("=") for p in labels.strip("{}").split(","))
            counts[(pairs["outcome"].strip('"'), pairs["start"].strip('"'))] = int(float(value))
    return counts


# ---------------------------------------------------------------- OpenAI-compatible


@pytest.mark.parametrize("habit", ["azure_filter_chunk", "sse_comments", "gzip", "no_done"])
@pytest.mark.parametrize("include_usage", [False, True])
async def test_an_openai_habit_leaves_the_answer_as_openai_sends_it(
    clients: Any, habit: SimHabit, include_usage: bool
) -> None:
    # Azure's filter-only first chunk is dropped: OpenAI sends a choice-less
    # chunk only for usage, and clients read chunk.choices[0]. Comments are
    # SSE's; gzip is decoded; a finished answer without [DONE] is complete.
    stack = await clients(Model("gpt-habit", "openai", (habit,)))
    stream = await stream_of(stack, "gpt-habit", include_usage=include_usage)
    check_openai_stream(stream, include_usage=include_usage)
    plain = await stream_of(stack, "gpt-plain", include_usage=include_usage)
    assert text_of(stream) == text_of(plain)
    if include_usage:
        assert stream.chunks[-1]["usage"] == plain.chunks[-1]["usage"]
    assert await sdk_text(stack, "gpt-habit") == (text_of(plain), ["stop"])


async def test_a_gzip_json_answer_is_decoded(clients: Any) -> None:
    stack = await clients(Model("gpt-gzip", "openai", ("gzip",)))
    answer = await stack.sdk.chat.completions.create(model="gpt-gzip", messages=PROMPT)
    plain = await stack.sdk.chat.completions.create(model="gpt-plain", messages=PROMPT)
    assert answer.choices[0].message.content == plain.choices[0].message.content


@pytest.mark.parametrize("habit", ["usage_in_x_groq", "usage_on_finish_chunk"])
async def test_usage_anywhere_reaches_the_client_in_its_own_last_chunk(
    clients: Any, habit: SimHabit
) -> None:
    stack = await clients(Model("gpt-usage", "openai", (habit,)))
    stream = await stream_of(stack, "gpt-usage", include_usage=True)
    check_openai_stream(stream, include_usage=True)
    plain = await stream_of(stack, "gpt-plain", include_usage=True)
    assert stream.chunks[-1]["usage"] == plain.chunks[-1]["usage"]
    # Without include_usage the client sees no usage at all, as from OpenAI.
    check_openai_stream(await stream_of(stack, "gpt-usage"), include_usage=False)


async def test_several_choices_without_done_end_cleanly_once_all_finished(clients: Any) -> None:
    stack = await clients(Model("gpt-no-done", "openai", ("no_done",)))
    body = {"messages": PROMPT, "n": 2, "stream_options": {"include_usage": True}}
    stream = await read_stream(stack.http, {**body, "model": "gpt-no-done"})
    plain = await read_stream(stack.http, {**body, "model": "gpt-plain"})
    check_wire(stream, n=2, include_usage=True)
    assert stream.chunks[-1]["usage"] == plain.chunks[-1]["usage"]
    assert [c["choices"] for c in stream.chunks] == [c["choices"] for c in plain.chunks]


async def test_a_stream_cut_before_its_finish_still_ends_with_an_error(clients: Any) -> None:
    stack = await clients(Model("gpt-no-done", "openai", ("no_done",)))
    stream = await stream_of(stack, "gpt-no-done", messages=[
        {"role": "user", "content": "[sim:cut=3]"}])
    assert stream.response.status_code == 200
    assert not stream.done
    assert "error" in stream.chunks[-1]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_error_event_first_falls_back_to_the_next_candidate(
    clients: Any, protocol: str
) -> None:
    # Each protocol's own error event, sent after a 200 in place of the first
    # chunk: before a first token that is a failure like a 5xx.
    stack = await clients(Model("failing", protocol, ("error_first",)),
                          Model("healthy", "openai"))
    stream = await stream_of(stack, "premium", include_usage=True)
    check_openai_stream(stream, include_usage=True)
    assert stream.response.headers["x-tlproxy-model"] == "healthy"
    assert text_of(stream) == text_of(await stream_of(stack, "gpt-plain"))
    assert attempts(await stack.http.get("/metrics")) == {
        ("failed", "initial"): 1, ("won", "fallback"): 1, ("won", "initial"): 1}


async def test_an_error_event_first_with_nothing_to_fall_back_to_is_an_http_error(
    clients: Any
) -> None:
    stack = await clients(Model("failing", "openai", ("error_first",)))
    with pytest.raises(openai.InternalServerError) as caught:
        await stack.sdk.chat.completions.create(model="failing", messages=PROMPT,
                                                stream=True)
    assert caught.value.status_code == 502


# ---------------------------------------------------------------- Anthropic


async def test_anthropic_pings_are_not_forwarded(clients: Any) -> None:
    stack = await clients(Model("claude-pings", "anthropic", ("pings",)))
    stream = await stream_of(stack, "claude-pings", include_usage=True)
    check_openai_stream(stream, include_usage=True)
    # Role, one chunk per token, finish, usage: nothing for the pings.
    plain = await stream_of(stack, "claude-plain", include_usage=True)
    assert [c["choices"] for c in stream.chunks] == [c["choices"] for c in plain.chunks]


async def test_anthropic_529_falls_back_and_alone_is_a_503(clients: Any) -> None:
    stack = await clients(Model("claude-overloaded", "anthropic", ("overloaded",)),
                          Model("healthy", "openai"))
    stream = await stream_of(stack, "premium")
    check_openai_stream(stream, include_usage=False)
    assert stream.response.headers["x-tlproxy-model"] == "healthy"
    assert attempts(await stack.http.get("/metrics")) == {
        ("failed", "initial"): 1, ("won", "fallback"): 1}
    with pytest.raises(openai.InternalServerError) as caught:
        await stack.sdk.chat.completions.create(model="claude-overloaded", messages=PROMPT)
    assert caught.value.status_code == 503


# ---------------------------------------------------------------- Gemini


@pytest.mark.parametrize("habit", ["safety_stop", "recitation_stop"])
async def test_a_gemini_candidate_stopped_by_its_filters_is_a_content_filter_finish(
    clients: Any, habit: SimHabit
) -> None:
    stack = await clients(Model("gemini-filtered", "gemini", (habit,)))
    stream = await stream_of(stack, "gemini-filtered", include_usage=True)
    check_openai_stream(stream, include_usage=True)
    finishes = [c["finish_reason"] for chunk in stream.chunks for c in chunk["choices"]
                if c["finish_reason"]]
    assert finishes == ["content_filter"]
    # What came before the stop reached the client: the start of the answer.
    full = text_of(await stream_of(stack, "gemini-plain"))
    assert text_of(stream) and full.startswith(text_of(stream)) and text_of(stream) != full
    answer = await stack.sdk.chat.completions.create(model="gemini-filtered", messages=PROMPT)
    assert answer.choices[0].finish_reason == "content_filter"


# ---------------------------------------------------------------- any protocol


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_first_event_long_after_the_headers_is_still_answered(
    autojump_clock: MockClock, clients: Any, protocol: str
) -> None:
    ttft = 0.125
    stack = await clients(Model("late", protocol, ("late_first_event",), ttft_ms=ttft * 1000))
    started = trio.current_time()
    stream = await stream_of(stack, "late", include_usage=True)
    # The proxy answered once the first event came (the whole answer with it,
    # no time between tokens), not at the upstream's headers.
    assert trio.current_time() - started == ttft
    check_openai_stream(stream, include_usage=True)
    assert text_of(stream) == text_of(await stream_of(stack, PLAIN[protocol]))


# ---------------------------------------------------------------- first tokens of any kind


@pytest.mark.parametrize(("habit", "field"), [
    ("reasoning_content", "reasoning_content"),
    ("reasoning", "reasoning"),
    ("refusal", "refusal"),
    ("audio", "audio"),
])
async def test_a_model_that_thinks_refuses_or_speaks_first_wins_with_its_first_delta(
    autojump_clock: trio.testing.MockClock, clients: Any, habit: SimHabit, field: str,
) -> None:
    """Six thinking deltas 100 ms apart come before the first word, well past a
    first-token deadline of 250 ms: the first delta of any kind is the first token,
    so neither the deadline nor a hedge replaces the model, and every delta reaches
    the client as the upstream sent it."""
    stack = await clients(
        Model("thinker", "openai", (habit,), inter_token_ms=100.0, first_token_timeout=0.25),
        Model("backup", "openai"))
    started = trio.current_time()
    raw = await stack.sdk.chat.completions.with_raw_response.create(
        model="thinker", messages=PROMPT, stream=True)
    seen: list[dict[str, Any]] = []
    async with raw.parse() as chunks:
        async for chunk in chunks:
            seen += [c.delta.to_dict() for c in chunk.choices]
    assert (raw.headers["x-tlproxy-model"], raw.headers["x-tlproxy-attempts"]) == ("thinker", "1")
    assert trio.current_time() - started >= 0.5  # it did think for longer than the deadline
    assert any(delta.get(field) for delta in seen), seen
    assert stack.sims["openai"].stats.streams_started == 1  # no hedge, no fallback
    plain = await stream_of(stack, "gpt-plain")
    if habit == "refusal":
        refusal = "".join(d.get("refusal") or "" for d in seen)
        assert refusal == "I'm sorry, I can't help with that."
    elif habit != "audio":
        thought = "".join(d.get(field) or "" for d in seen)
        assert thought == "Let me think about this."
        assert "".join(d.get("content") or "" for d in seen) == text_of(plain)
