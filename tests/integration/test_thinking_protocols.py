"""Anthropic's extended thinking and Gemini's thoughts reach the client as reasoning.

A model that thinks first (the simulator's ``reasoning_content`` habit, in each
protocol's own wire format: Anthropic ``thinking`` blocks with
``thinking_delta`` and ``signature_delta`` events, Gemini parts with
``thought: true``) is served through the real proxy and its native adapters;
the official ``openai`` SDK reads ``reasoning_content``, as it reads it from
vLLM or DeepSeek: in the deltas of a stream, in ``message`` of a completion.
The thinking is progress: its first delta is the first token, so a first-token
deadline shorter than the thinking does not replace the model.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from .test_upstream_habits import (  # noqa: F401 - the module's fixture
    PLAIN,
    PROMPT,
    Model,
    clients,
    stream_of,
    text_of,
)

THOUGHT = "Let me think about this."
NATIVE = ["anthropic", "gemini"]


@pytest.mark.parametrize("protocol", NATIVE)
async def test_a_native_model_that_thinks_streams_its_thinking_as_reasoning_content(
    autojump_clock: trio.testing.MockClock, clients: Any, protocol: str,  # noqa: F811
) -> None:
    stack = await clients(
        Model("thinker", protocol, ("reasoning_content",), inter_token_ms=100.0,
              first_token_timeout=0.25),
        Model("backup", protocol))
    started = trio.current_time()
    raw = await stack.sdk.chat.completions.with_raw_response.create(
        model="thinker", messages=PROMPT, stream=True, stream_options={"include_usage": True})
    seen: list[dict[str, Any]] = []
    usage = None
    async with raw.parse() as chunks:
        async for chunk in chunks:
            seen += [c.delta.to_dict() for c in chunk.choices]
            usage = chunk.usage or usage
    assert (raw.headers["x-tlproxy-model"], raw.headers["x-tlproxy-attempts"]) == ("thinker", "1")
    # Six thoughts 100 ms apart, past the 250 ms first-token deadline: the first one counted.
    assert trio.current_time() - started >= 0.5
    assert stack.sims[protocol].stats.streams_started == 1  # no hedge, no fallback
    thinking = [d["reasoning_content"] for d in seen if d.get("reasoning_content")]
    assert "".join(thinking) == THOUGHT
    # The thinking comes first, and the answer is the one a model without the habit gives.
    first_content = next(i for i, d in enumerate(seen) if d.get("content"))
    assert all(not d.get("reasoning_content") for d in seen[first_content:])
    plain = await stream_of(stack, PLAIN[protocol], include_usage=True)
    assert "".join(d.get("content") or "" for d in seen) == text_of(plain)
    # The thinking is billed as output, as each provider counts it.
    plain_usage = plain.chunks[-1]["usage"]
    assert usage is not None
    assert usage.completion_tokens == plain_usage["completion_tokens"] + 6


@pytest.mark.parametrize("protocol", NATIVE)
async def test_a_native_model_that_thinks_answers_with_message_reasoning_content(
    autojump_clock: trio.testing.MockClock, clients: Any, protocol: str,  # noqa: F811
) -> None:
    stack = await clients(Model("thinker", protocol, ("reasoning_content",)))
    completion = await stack.sdk.chat.completions.create(model="thinker", messages=PROMPT)
    message = completion.choices[0].message
    assert message.to_dict()["reasoning_content"] == THOUGHT
    plain = await stack.sdk.chat.completions.create(model=PLAIN[protocol], messages=PROMPT)
    assert message.content == plain.choices[0].message.content
    assert completion.usage is not None and plain.usage is not None
    assert completion.usage.completion_tokens == plain.usage.completion_tokens + 6
