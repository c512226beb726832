"""Streams that survive: a winner that fails after its first token is continued.

Scripted upstreams under trio's MockClock (the harness of `test_engine`), so
every time asserted is exact virtual time. The client is the in-memory ASGI
pair of that harness; what it receives is decoded from the bytes sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from tests.unit.test_engine import (
    QUESTION,
    USAGE,
    Client,
    FakeUpstream,
    Harness,
    Step,
    chunk,
    contents,
    events,
)
from tlproxy.config import ModelConfig
from tlproxy.continuation import instruction_text
from tlproxy.errors import UpstreamError
from tlproxy.providers.base import JSON, Chunk

CUT = UpstreamError("upstream stream ended before its final event", status=502)
SYSTEM = {"role": "system", "content": "Réponds toujours en français."}


def words(*texts: str, every: float = 0.125) -> list[Step]:
    steps: list[Step] = []
    for n, text in enumerate(texts):
        steps += [every if n else 0.0, chunk(text)]
    return steps


def first_five(then: Step) -> list[Step]:
    """A first word at 0.25 s, four more 0.125 s apart (the last at 0.75 s), then `then`."""
    return [0.25, chunk(role="assistant", content=""),
            *words("One", " two", " three", " four", " five"), 0.0, then]


def rest(*texts: str, ttft: float = 0.5, usage: dict[str, int] | None = None) -> list[Step]:
    """A continuation: its role chunk, its words after `ttft`, the finish, its usage."""
    return [chunk(role="assistant", content=""), ttft, *words(*texts),
            chunk(finish="stop"),
            chunk(usage=usage or {"prompt_tokens": 40, "completion_tokens": 3,
                                  "total_tokens": 43})]


class Recording(FakeUpstream):
    """The fake upstream, keeping the body each model was sent."""

    def __init__(self, scripts: dict[str, list[Step]]) -> None:
        super().__init__(scripts)
        self.bodies: dict[str, JSON] = {}

    @contextlib.asynccontextmanager
    async def stream_chat(self, body: JSON, *, model: str) -> AsyncIterator[AsyncIterator[Chunk]]:
        self.bodies[model] = body
        async with super().stream_chat(body, model=model) as chunks:
            yield chunks


def economy(**overrides: Any) -> list[ModelConfig]:
    """Economy models e1, e2 (and e3 when given fields); `e1=dict(...)` sets fields of one."""
    names = ("e1", "e2", "e3") if "e3" in overrides else ("e1", "e2")
    return [ModelConfig(id=m, provider="fake", tier="economy", **overrides.get(m, {}))
            for m in names]


async def ask(harness: Harness, client: Client, **body: Any) -> None:
    body.setdefault("messages", QUESTION)
    await harness.chat(client, model="economy", stream=True, **body)


def finishes(sent: Sequence[Any]) -> list[str]:
    return [c["finish_reason"] for e in sent if isinstance(e, dict)
            for c in e.get("choices", ()) if c.get("finish_reason")]


async def test_a_cut_after_five_tokens_is_continued_by_the_next_model(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = Recording({"e1": first_five(CUT), "e2": rest(" six", " seven", " eight")})
    harness = Harness(upstream, models=economy())
    client = Client()
    await ask(harness, client, stream_options={"include_usage": True})
    sent = events(client.body)
    assert contents(client.body) == "One two three four five six seven eight"
    assert sent[-1] == "[DONE]"
    assert finishes(sent) == ["stop"]
    # One stream: the first attempt's id, created and model on every chunk.
    assert {(e["id"], e["created"], e["model"]) for e in sent[:-1]} == {("c", 1, "m")}
    assert sum("role" in c["delta"] for e in sent[:-1] for c in e["choices"]) == 1
    # One usage: the client's prompt and both attempts' completion tokens; the
    # cut attempt reported none, so its 23 characters count as ceil(23 / 4).
    usage = sent[-2]["usage"]
    assert sent[-2]["choices"] == []
    assert usage["completion_tokens"] == 6 + 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 9
    # Continued at once: e2 opened when e1 broke (0.75 s), its words 0.5 s later.
    assert (0.75, "e2", "stream") in upstream.log
    assert client.body_times()[-1] == 0.75 + 0.5 + 2 * 0.125
    rows = {r.model: r for r in await harness.rows()}
    assert (rows["e1"].status, rows["e1"].winner, rows["e1"].continuation) == ("cut", True, None)
    assert (rows["e2"].status, rows["e2"].winner, rows["e2"].continuation) == ("ok", False, "cut")
    assert rows["e2"].completion_tokens == 3 and not rows["e2"].wasted
    assert rows["e1"].request_id == rows["e2"].request_id
    assert harness.metrics.continuations.labels("cut", "recovered")._value.get() == 1


async def test_the_instruction_form_keeps_the_system_prompt_and_adds_a_last_user_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = Recording({"e1": first_five(CUT), "e2": rest(" six")})
    harness = Harness(upstream, models=economy())
    await ask(harness, Client(), messages=[SYSTEM, *QUESTION])
    messages = upstream.bodies["e2"]["messages"]
    assert messages[:2] == [SYSTEM, *QUESTION]
    assert messages[2] == {"role": "assistant", "content": "One two three four five"}
    assert messages[3] == {"role": "user",
                           "content": instruction_text("One two three four five")}
    assert len(messages) == 4
    assert "continue_final_message" not in upstream.bodies["e2"]


async def test_a_model_declared_prefill_continues_the_assistant_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = Recording({"e1": first_five(CUT), "e2": rest(" six")})
    harness = Harness(upstream, models=economy(e2={"continuation": "prefill"}))
    client = Client()
    await ask(harness, client)
    body = upstream.bodies["e2"]
    assert body["messages"][-1] == {"role": "assistant", "content": "One two three four five",
                                    "prefix": True}
    assert (body["continue_final_message"], body["add_generation_prompt"]) == (True, False)
    assert contents(client.body) == "One two three four five six"


async def test_a_stall_after_five_tokens_is_detected_at_the_deadline_and_continued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = Recording({"e1": first_five(3600.0), "e2": rest(" six", " seven")})
    harness = Harness(upstream, models=economy(e1={"stall_timeout": 2.0}))
    client = Client()
    await ask(harness, client)
    # The fifth word at 0.75 s; nothing for 2 s: e1 is dropped and e2 asked.
    assert (2.75, "e1", "ended") in upstream.log
    assert (2.75, "e2", "stream") in upstream.log
    assert contents(client.body) == "One two three four five six seven"
    assert client.body_times()[-1] == 2.75 + 0.5 + 0.125
    rows = {r.model: r for r in await harness.rows()}
    assert (rows["e1"].status, rows["e2"].continuation) == ("cut", "stall")


async def test_a_continuation_that_repeats_the_last_words_is_trimmed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = Recording({"e1": first_five(CUT),
                          "e2": rest("four", " five", " six", " seven")})
    harness = Harness(upstream, models=economy())
    client = Client()
    await ask(harness, client)
    assert contents(client.body) == "One two three four five six seven"


async def test_a_cut_in_the_middle_of_a_tool_call_gives_one_whole_call_from_the_next_model(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def call(index: int, *, head: str | None = None, args: str = "") -> Chunk:
        delta: dict[str, Any] = {"index": index, "function": {"arguments": args}}
        if head is not None:
            delta.update(id=head, type="function")
            delta["function"]["name"] = "get_weather"
        out = chunk()
        out["choices"][0]["delta"] = {"tool_calls": [delta]}
        return out

    upstream = Recording({
        "e1": [0.25, chunk(role="assistant", content=None), call(0, head="call_a"), 0.125,
               call(0, args='{"city": "Pa'), 0.125, CUT],
        "e2": [chunk(role="assistant", content=None), 0.5, call(0, head="call_b"),
               call(0, args='{"city": '), call(0, args='"Paris"}'),
               chunk(finish="tool_calls"), chunk(usage=USAGE)],
    })
    harness = Harness(upstream, models=economy())
    client = Client()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    request = await harness.chat(client, model="economy", stream=True, messages=QUESTION,
                                 tools=tools)
    sent = events(client.body)
    deltas = [d for e in sent[:-1] for c in e["choices"]
              for d in c["delta"].get("tool_calls") or ()]
    # Nothing of e1's half call: e2's call, whole, sent once it parsed.
    assert [d.get("id") for d in deltas] == ["call_b", None, None]
    assert "".join(d["function"]["arguments"] for d in deltas) == '{"city": "Paris"}'
    assert finishes(sent) == ["tool_calls"] and sent[-1] == "[DONE]"
    # The request that went to e2 is the original: nothing had been sent to continue.
    assert upstream.bodies["e2"]["messages"] == QUESTION
    # The client's first byte waited for the whole call: 0.5 s to e1's break, 0.5 s more.
    assert request.ttft == 0.5 + 0.5


async def test_a_tool_call_is_held_only_until_its_arguments_parse(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def call(args: str, head: bool = False) -> Chunk:
        delta: dict[str, Any] = {"index": 0, "function": {"arguments": args}}
        if head:
            delta.update(id="call_a", type="function")
            delta["function"]["name"] = "get_weather"
        out = chunk()
        out["choices"][0]["delta"] = {"tool_calls": [delta]}
        return out

    upstream = Recording({"e1": [0.25, chunk(role="assistant", content=None),
                                 call("", head=True), 0.25, call('{"city":'), 0.25,
                                 call(' "Oslo"}'), 1.0, chunk(finish="tool_calls"),
                                 chunk(usage=USAGE)]})
    harness = Harness(upstream, models=economy())
    client = Client()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    request = await harness.chat(client, model="economy", stream=True, messages=QUESTION,
                                 tools=tools)
    # The first token came at 0.25 s; the call was whole at 0.75 s: what holding cost.
    assert request.ttft == 0.75
    assert client.body_times()[:2] == [0.75, 1.75]


async def test_without_continuation_tool_calls_are_not_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    delta = {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                             "function": {"name": "get_weather", "arguments": ""}}]}
    head = chunk()
    head["choices"][0]["delta"] = delta
    upstream = Recording({"e1": [0.25, chunk(role="assistant", content=None), head, 0.5,
                                 chunk(finish="tool_calls"), chunk(usage=USAGE)]})
    harness = Harness(upstream, models=economy())
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    request = await harness.chat(Client(), model="economy", stream=True, messages=QUESTION,
                                 tools=tools, headers={"x-tlproxy-continuation": "off"})
    assert request.ttft == 0.25


async def test_a_next_model_declared_none_leaves_the_honest_error_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = Recording({"e1": first_five(CUT)})
    harness = Harness(upstream, models=economy(e2={"continuation": "none"}))
    client = Client()
    await ask(harness, client)
    sent = events(client.body)
    assert sent[-1]["error"]["message"] == CUT.message and "[DONE]" not in sent
    assert "e2" not in upstream.bodies
    assert harness.metrics.continuations.labels("cut", "not-continued")._value.get() == 1


@pytest.mark.parametrize(("body", "headers"), [
    ({"n": 2}, {}),
    ({"response_format": {"type": "json_object"}}, {}),
    ({}, {"x-tlproxy-continuation": "off"}),
])
async def test_what_cannot_be_continued_faithfully_ends_with_the_error_event(
    autojump_clock: trio.testing.MockClock, body: dict[str, Any], headers: dict[str, str],
) -> None:
    upstream = Recording({"e1": first_five(CUT), "e2": rest(" six")})
    harness = Harness(upstream, models=economy())
    client = Client()
    await harness.chat(client, model="economy", stream=True, messages=QUESTION,
                       headers=headers, **body)
    assert events(client.body)[-1]["error"]["message"] == CUT.message
    assert "e2" not in upstream.bodies


async def test_when_the_continuation_fails_before_its_first_token_the_first_error_stands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = Recording({"e1": first_five(CUT),
                          "e2": [0.5, UpstreamError("overloaded", status=503)]})
    harness = Harness(upstream, models=economy())
    client = Client()
    await ask(harness, client)
    sent = events(client.body)
    assert contents(client.body) == "One two three four five"
    assert sent[-1]["error"]["message"] == CUT.message and "[DONE]" not in sent
    assert client.body_times()[-1] == 0.75 + 0.5
    assert harness.metrics.continuations.labels("cut", "failed")._value.get() == 1
    assert harness.metrics.continuations.labels("cut", "not-continued")._value.get() == 0
    rows = {r.model: r for r in await harness.rows()}
    assert (rows["e2"].status, rows["e2"].continuation) == ("error", "cut")


async def test_a_client_that_leaves_during_the_continuation_cancels_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = Recording({"e1": first_five(CUT),
                          "e2": rest(*(f" w{n}" for n in range(40)))})
    harness = Harness(upstream, models=economy())
    client = Client(leave_at=2.0)
    request = await harness.chat(client, model="economy", stream=True, messages=QUESTION)
    assert request.client_gone
    assert upstream.log[-1] == (2.0, "e2", "ended")
    rows = {r.model: r for r in await harness.rows()}
    assert (rows["e2"].status, rows["e2"].continuation) == ("cancelled", "cut")


async def test_a_continuation_that_breaks_too_is_continued_by_the_next_model(
    autojump_clock: trio.testing.MockClock,
) -> None:
    malformed = UpstreamError("the upstream provider sent a malformed stream event")
    upstream = Recording({
        "e1": first_five(CUT),
        "e2": [chunk(role="assistant", content=""), 0.5, *words(" six", " seven"), 0.0,
               malformed],
        "e3": rest(" eight", " nine"),
    })
    harness = Harness(upstream, models=economy(e3={}))
    client = Client()
    await ask(harness, client)
    sent = events(client.body)
    assert contents(client.body) == "One two three four five six seven eight nine"
    assert sent[-1] == "[DONE]" and finishes(sent) == ["stop"]
    # e3 continues what the client has: both broken attempts' words.
    assert upstream.bodies["e3"]["messages"][-2]["content"] == (
        "One two three four five six seven")
    rows = {r.model: r for r in await harness.rows()}
    assert (rows["e2"].status, rows["e2"].continuation) == ("cut", "cut")
    assert (rows["e3"].status, rows["e3"].continuation) == ("ok", "malformed")
    counted = harness.metrics.continuations
    assert counted.labels("cut", "failed")._value.get() == 1
    assert counted.labels("malformed", "recovered")._value.get() == 1


async def test_a_failure_after_the_first_token_counts_against_the_model(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = Recording({"e1": first_five(CUT), "e2": rest(" six")})
    harness = Harness(upstream, models=economy())
    client = Client()
    await ask(harness, client)
    assert contents(client.body) == "One two three four five six"
    assert harness.engine.stats["e1"].error_rate > 0
    assert harness.metrics.upstream_errors.labels("fake", "502")._value.get() == 1
    # Its failure counts against e1 as a failure before a first token would: e1 now
    # ranks after e2, and the next answer is e2's from the start.
    upstream.scripts.update({"e1": first_five(CUT), "e2": rest("Fresh", " start")})
    upstream.log.clear()
    client = Client()
    await ask(harness, client)
    assert contents(client.body) == "Fresh start"
    assert upstream.log[0] == (upstream.log[0][0], "e2", "stream")
