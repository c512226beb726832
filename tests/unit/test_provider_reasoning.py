"""Anthropic's extended thinking and Gemini's thought parts, as OpenAI-compatible reasoning.

OpenAI-compatible servers that reason (vLLM, DeepSeek) send the thinking as
``reasoning_content``: in a chunk's delta while streaming, in
``message.reasoning_content`` in a completion. The Anthropic and Gemini
translators do the same with their thinking; what cannot travel to an OpenAI
client (Anthropic's signatures, redacted thinking) is left out. Every output is
checked against OpenAI's published schemas.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.adapter_support import ROLE, Recordings, validate
from tlproxy.providers.anthropic import AnthropicStreamTranslator, from_anthropic_response
from tlproxy.providers.gemini import GeminiStreamTranslator, from_gemini_response

ANTHROPIC = Recordings("anthropic")


def _deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


# -- Anthropic: streams -------------------------------------------------------------------

def test_the_docs_thinking_stream_is_reasoning_then_content() -> None:
    translator = AnthropicStreamTranslator(model="claude-x", created=7, include_usage=False)
    chunks = [c for event, data in ANTHROPIC.events("stream_thinking.sse")
              for c in translator.feed(event, data)]
    thoughts = ["Let me solve this step by step:\n\n1. First break down 27 * 453",
                "\n2. 453 = 400 + 50 + 3", "\n3. 27 * 400 = 10,800", "\n4. 27 * 50 = 1,350",
                "\n5. 27 * 3 = 81", "\n6. 10,800 + 1,350 + 81 = 12,231"]
    assert _deltas(chunks) == [ROLE, *({"reasoning_content": t} for t in thoughts),
                               {"content": "27 * 453 = 12,231"}, {}]


def _block(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_start", "index": 0, "content_block": {"type": kind, **fields}}


def _delta(**delta: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": 0, "delta": delta}


ANTHROPIC_EVENTS: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]] = [
    ("a thinking delta", [_block("thinking", thinking="", signature=""),
                          _delta(type="thinking_delta", thinking="Hmm.")],
     [{"reasoning_content": "Hmm."}]),
    ("a thinking block that starts with text", [_block("thinking", thinking="So")],
     [{"reasoning_content": "So"}]),
    ("an empty thinking delta", [_block("thinking", thinking=""),
                                 _delta(type="thinking_delta", thinking="")], []),
    ("a signature", [_block("thinking", thinking=""),
                     _delta(type="signature_delta", signature="EqQBCgIYAh")], []),
    ("redacted thinking", [_block("redacted_thinking", data="EmwKAhgBEgy3va3pzix")], []),
    ("a thinking delta that is not text", [_delta(type="thinking_delta", thinking=None)], []),
    ("thinking, then text", [_block("thinking", thinking=""),
                             _delta(type="thinking_delta", thinking="A"),
                             {"type": "content_block_stop", "index": 0},
                             {**_block("text", text=""), "index": 1},
                             {**_delta(type="text_delta", text="B"), "index": 1}],
     [{"reasoning_content": "A"}, {"content": "B"}]),
]


@pytest.mark.parametrize(("events", "expected"), [case[1:] for case in ANTHROPIC_EVENTS],
                         ids=[case[0] for case in ANTHROPIC_EVENTS])
def test_anthropic_thinking_events(events: list[dict[str, Any]],
                                   expected: list[dict[str, Any]]) -> None:
    translator = AnthropicStreamTranslator(model="claude-x", created=7)
    chunks = translator.feed("message_start", {"type": "message_start",
                                                "message": {"id": "msg_1", "usage": {}}})
    for event in events:
        chunks += translator.feed(event["type"], event)
    assert _deltas(chunks) == [ROLE, *expected]


# -- Anthropic: whole messages -------------------------------------------------------------

THINKING = {"type": "thinking", "thinking": "Let me think.", "signature": "EqQBCgIYAh"}
TOOL = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
ANTHROPIC_MESSAGES: list[tuple[str, list[dict[str, Any]], str | None, str | None]] = [
    ("thinking and text", [THINKING, {"type": "text", "text": "Paris."}],
     "Let me think.", "Paris."),
    ("two thinking blocks, joined", [THINKING, {**THINKING, "thinking": " Done."},
                                     {"type": "text", "text": "Yes."}],
     "Let me think. Done.", "Yes."),
    ("thinking before a tool call", [THINKING, TOOL], "Let me think.", None),
    ("redacted thinking only", [{"type": "redacted_thinking", "data": "EmwKAhgB"},
                                {"type": "text", "text": "Hi."}], None, "Hi."),
    ("an empty thinking block", [{**THINKING, "thinking": ""},
                                 {"type": "text", "text": "Hi."}], None, "Hi."),
    ("no thinking", [{"type": "text", "text": "Hi."}], None, "Hi."),
]


@pytest.mark.parametrize(("content", "reasoning", "text"),
                         [case[1:] for case in ANTHROPIC_MESSAGES],
                         ids=[case[0] for case in ANTHROPIC_MESSAGES])
def test_anthropic_thinking_in_a_message(content: list[dict[str, Any]], reasoning: str | None,
                                         text: str | None) -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": content,
               "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 9}}
    out = from_anthropic_response(message, model="claude-x", created=7)
    validate("CreateChatCompletionResponse", out)
    answer = out["choices"][0]["message"]
    assert answer.get("reasoning_content") == reasoning
    assert ("reasoning_content" in answer) is (reasoning is not None)
    assert answer["content"] == text


# -- Gemini: streams and whole answers ------------------------------------------------------

def _candidate(parts: list[dict[str, Any]], finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "responseId": "r1"}


GEMINI_PARTS: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]] = [
    ("a thought", [{"text": "Thinking **about** it", "thought": True}],
     [{"reasoning_content": "Thinking **about** it"}]),
    ("a thought, then text", [{"text": "Plan.", "thought": True}, {"text": "Answer."}],
     [{"reasoning_content": "Plan."}, {"content": "Answer."}]),
    ("an empty thought with its signature", [{"text": "", "thought": True,
                                              "thoughtSignature": "CiQB"}], []),
    ("a signature on a text part", [{"text": "Hi", "thoughtSignature": "CiQB"}],
     [{"content": "Hi"}]),
    ("thought false is text", [{"text": "Hi", "thought": False}], [{"content": "Hi"}]),
]


@pytest.mark.parametrize(("parts", "expected"), [case[1:] for case in GEMINI_PARTS],
                         ids=[case[0] for case in GEMINI_PARTS])
def test_gemini_thought_parts_in_a_stream(parts: list[dict[str, Any]],
                                          expected: list[dict[str, Any]]) -> None:
    translator = GeminiStreamTranslator(model="gemini-x", created=7)
    chunks = [c for part in parts for c in translator.feed(None, _candidate([part]))]
    chunks += translator.feed(None, _candidate([], "STOP")) + translator.close()
    assert _deltas(chunks) == [ROLE, *expected, {}]


GEMINI_ANSWERS: list[tuple[str, list[dict[str, Any]], str | None, str | None]] = [
    ("thoughts, joined, and text", [{"text": "One.", "thought": True},
                                    {"text": " Two.", "thought": True}, {"text": "Yes."}],
     "One. Two.", "Yes."),
    ("a thought before a function call",
     [{"text": "Call it.", "thought": True},
      {"functionCall": {"name": "weather", "args": {"city": "Paris"}}}], "Call it.", None),
    ("an empty thought", [{"text": "", "thought": True, "thoughtSignature": "CiQB"},
                          {"text": "Yes."}], None, "Yes."),
    ("no thought", [{"text": "Yes."}], None, "Yes."),
]


@pytest.mark.parametrize(("parts", "reasoning", "text"), [case[1:] for case in GEMINI_ANSWERS],
                         ids=[case[0] for case in GEMINI_ANSWERS])
def test_gemini_thought_parts_in_an_answer(parts: list[dict[str, Any]], reasoning: str | None,
                                           text: str | None) -> None:
    out = from_gemini_response(_candidate(parts, "STOP"), model="gemini-x", created=7)
    validate("CreateChatCompletionResponse", out)
    message = out["choices"][0]["message"]
    assert message.get("reasoning_content") == reasoning
    assert ("reasoning_content" in message) is (reasoning is not None)
    assert message["content"] == text
