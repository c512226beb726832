"""The simulator's thinking models in Anthropic's and Gemini's own wire formats.

With the ``reasoning_content`` habit, an Anthropic model streams an extended
thinking block first (``content_block_start`` of type ``thinking``,
``thinking_delta`` events, a ``signature_delta``, ``content_block_stop``) and a
Message holds a ``thinking`` block with its signature; a Gemini model sends
``thought: true`` parts first and counts them in ``thoughtsTokenCount``. Each
thought is a streamed step, timed like a token. What the proxy makes of them is
in tests/integration/test_thinking_protocols.py.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from tlproxy.sim.anthropic import SIGNATURE
from tlproxy.sim.anthropic import THINKING as ANTHROPIC_THINKING
from tlproxy.sim.gemini import THINKING as GEMINI_THINKING

from .test_sim_habits import call


async def test_anthropic_streams_a_signed_thinking_block_before_the_text(
        autojump_clock: trio.testing.MockClock) -> None:
    reply = await call(("reasoning_content",), protocol="anthropic")
    plain = await call((), protocol="anthropic")
    events = [json.loads(data) for _, data in reply.events()]
    kinds = [(e["type"], e.get("content_block", e.get("delta", {})).get("type")) for e in events]
    thinking = len(ANTHROPIC_THINKING)
    assert kinds[2:5 + thinking] == [
        ("content_block_start", "thinking"),
        *[("content_block_delta", "thinking_delta")] * thinking,
        ("content_block_delta", "signature_delta"), ("content_block_stop", None)]
    assert kinds[5 + thinking][1] == "text"
    assert [e["delta"]["thinking"] for e in events if e.get("delta", {}).get("type")
            == "thinking_delta"] == list(ANTHROPIC_THINKING)
    assert events[3 + thinking]["delta"]["signature"] == SIGNATURE
    assert _anthropic_text(events) == _anthropic_text(
        [json.loads(data) for _, data in plain.events()])
    # The thinking is output, as Anthropic bills it; each thought is a step of its own.
    assert _output_tokens(events) == _output_tokens(
        [json.loads(data) for _, data in plain.events()]) + thinking
    assert len(reply.writes) == len(plain.writes) + thinking


async def test_an_anthropic_message_holds_the_thinking_block_first(
        autojump_clock: trio.testing.MockClock) -> None:
    reply = await call(("reasoning_content",), protocol="anthropic", stream=False)
    plain = await call((), protocol="anthropic", stream=False)
    message, plain_message = json.loads(reply.body), json.loads(plain.body)
    assert message["content"][0] == {"type": "thinking", "thinking": "".join(ANTHROPIC_THINKING),
                                     "signature": SIGNATURE}
    assert message["content"][1:] == plain_message["content"]
    assert (message["usage"]["output_tokens"]
            == plain_message["usage"]["output_tokens"] + len(ANTHROPIC_THINKING))


async def test_gemini_streams_thought_parts_before_the_text(
        autojump_clock: trio.testing.MockClock) -> None:
    reply = await call(("reasoning_content",), protocol="gemini")
    plain = await call((), protocol="gemini")
    parts = [p for chunk in reply.chunks() for p in chunk["candidates"][0]["content"]["parts"]]
    thoughts = [p for p in parts if p.get("thought")]
    assert thoughts == [{"text": t, "thought": True} for t in GEMINI_THINKING]
    assert parts[:len(thoughts)] == thoughts
    plain_parts = [p for chunk in plain.chunks()
                   for p in chunk["candidates"][0]["content"]["parts"]]
    assert parts[len(thoughts):] == plain_parts
    usage = reply.chunks()[-1]["usageMetadata"]
    assert usage["thoughtsTokenCount"] == len(GEMINI_THINKING)
    assert usage["totalTokenCount"] == (usage["promptTokenCount"] + usage["candidatesTokenCount"]
                                        + len(GEMINI_THINKING))
    assert "thoughtsTokenCount" not in reply.chunks()[0]["usageMetadata"]


async def test_a_gemini_answer_holds_the_thought_part_first(
        autojump_clock: trio.testing.MockClock) -> None:
    reply = await call(("reasoning_content",), protocol="gemini", stream=False)
    plain = await call((), protocol="gemini", stream=False)
    answer, plain_answer = json.loads(reply.body), json.loads(plain.body)
    parts = answer["candidates"][0]["content"]["parts"]
    assert parts[0] == {"text": "".join(GEMINI_THINKING), "thought": True}
    assert parts[1:] == plain_answer["candidates"][0]["content"]["parts"]
    assert answer["usageMetadata"]["thoughtsTokenCount"] == len(GEMINI_THINKING)


def _anthropic_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"].get("text", "") for e in events
                   if e["type"] == "content_block_delta")


def _output_tokens(events: list[dict[str, Any]]) -> int:
    return int(next(e for e in events if e["type"] == "message_delta")["usage"]["output_tokens"])
