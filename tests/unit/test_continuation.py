"""The pure core of continuation: reasons, forms, overlap trimming, held tool calls."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlproxy.config import ModelConfig
from tlproxy.continuation import (
    Delivered,
    Overlap,
    Splice,
    ToolCallHold,
    continue_body,
    failure_reason,
    form_for,
    instruction_text,
)
from tlproxy.errors import UpstreamError


@pytest.mark.parametrize(("error", "reason"), [
    (UpstreamError("p1 sent nothing for 2 s after its first token.", status=504,
                   code="stall_timeout"), "stall"),
    (UpstreamError("the upstream provider timed out", status=504, code="timeout"), "stall"),
    (UpstreamError("the upstream provider sent a malformed stream event"), "malformed"),
    (UpstreamError("the upstream provider sent a malformed event stream"), "malformed"),
    (UpstreamError("upstream stream ended before its final event"), "cut"),
    (UpstreamError("could not reach the upstream provider (RemoteProtocolError)"), "cut"),
    (UpstreamError("Overloaded", status=503, upstream_status=529), "error-event"),
    (UpstreamError("The server had an error while processing your request."), "error-event"),
])
def test_failure_reasons(error: UpstreamError, reason: str) -> None:
    assert failure_reason(error) == reason


@pytest.mark.parametrize(("kind", "declared", "form"), [
    ("anthropic", None, "instruction"),
    ("gemini", None, "instruction"),
    ("openai", None, "instruction"),
    ("openai", "prefill", "prefill"),
    ("anthropic", "none", "none"),
])
def test_forms_default_by_provider_kind(kind: str, declared: Any, form: str) -> None:
    model = ModelConfig(id="m", provider="p", tier="premium", continuation=declared)
    assert form_for(model, kind) == form


def test_anthropic_prefill_ends_without_trailing_whitespace() -> None:
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    out = continue_body(body, "Hello there ", "prefill", "anthropic")
    assert out["messages"][-1] == {"role": "assistant", "content": "Hello there"}
    assert "continue_final_message" not in out
    assert body["messages"] == [{"role": "user", "content": "hi"}]  # not changed in place


def test_nothing_to_continue_is_a_retry_of_the_original_request() -> None:
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    assert continue_body(body, "", "instruction", "openai") == body


def test_the_instruction_quotes_only_the_end_of_a_long_answer() -> None:
    text = instruction_text("x" * 1000 + "the end")
    assert "...xxx" in text and text.count("x") < 300 and "the end" in text


@pytest.mark.parametrize(("partial", "continuation", "sent"), [
    ("One two three", " four five", " four five"),
    ("One two three", "two three four", " four"),  # repeated the last words
    ("One two three", " three four", " four"),
    ("One two three", "One two three four", " four"),  # started over
    ("One two thr", "three four", "ee four"),  # the cut word said again, whole
    ("One two ", " three", "three"),  # no double space
    ("a b a b", " a b c", " c"),  # the longest repetition
    ("", "Hello", "Hello"),
])
def test_overlap(partial: str, continuation: str, sent: str) -> None:
    overlap = Overlap(partial)
    assert overlap.feed(continuation) + overlap.flush() == sent


@given(st.lists(st.sampled_from(["one", "two", "three", "the", "end", "."]), max_size=12),
       st.lists(st.sampled_from(["one", "two", "four", "the", "."]), max_size=12),
       st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_overlap_does_not_depend_on_how_the_continuation_is_split(
        first: list[str], second: list[str], cuts: list[int]) -> None:
    partial, continuation = " ".join(first), " " + " ".join(second)
    whole = Overlap(partial)
    expected = whole.feed(continuation) + whole.flush()
    split = Overlap(partial)
    marks = sorted({min(c, len(continuation)) for c in cuts} | {0, len(continuation)})
    pieces = [continuation[a:b] for a, b in itertools.pairwise(marks)]
    assert "".join(split.feed(p) for p in pieces) + split.flush() == expected
    # What is sent is always the end of what the model said.
    assert continuation.endswith(expected) or continuation.lstrip().endswith(expected)


def tool_chunk(index: int, args: str, head: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if head:
        call.update(id=head, type="function")
    return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}


def test_held_tool_calls_are_released_whole_in_order() -> None:
    hold = ToolCallHold()
    text = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
    assert hold.feed(text) == [text]
    a0, a1 = tool_chunk(0, "", head="a"), tool_chunk(0, '{"x": ')
    b0 = tool_chunk(1, "", head="b")
    assert hold.feed(a0) == [] and hold.feed(a1) == []
    # The next call starts: the first is whole (by the protocol's word, if not by JSON).
    assert hold.feed(b0) == [a0, a1]
    b1 = tool_chunk(1, '{"y": 1}')
    assert hold.feed(b1) == [b0, b1]  # its arguments parse: whole
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    assert hold.feed(finish) == [finish]


def test_a_finish_releases_a_call_whose_arguments_never_parsed() -> None:
    hold = ToolCallHold()
    a0 = tool_chunk(0, "not json", head="a")
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    assert hold.feed(a0) == []
    assert hold.feed(finish) == [a0, finish]


@pytest.mark.parametrize(("body", "chunks", "error", "why"), [
    ({}, [], UpstreamError("cut"), None),
    ({"n": 2}, [], UpstreamError("cut"), "n > 1"),
    ({}, [], UpstreamError("bad request", status=400, retryable=False),
     "the upstream refused the request"),
    ({"response_format": {"type": "json_schema"}}, [{"content": "{"}], UpstreamError("cut"),
     "structured output was half sent"),
    ({"response_format": {"type": "json_schema"}}, [], UpstreamError("cut"), None),
    ({}, [{"tool_calls": [{"index": 0}]}], UpstreamError("cut"), "a tool call was sent"),
    ({}, [{"refusal": "No"}], UpstreamError("cut"), "a refusal or audio was sent"),
])
def test_what_refuses_a_continuation(body: dict[str, Any], chunks: list[dict[str, Any]],
                                     error: UpstreamError, why: str | None) -> None:
    delivered = Delivered()
    for delta in chunks:
        delivered.note({"id": "c", "choices": [{"index": 0, "delta": delta}]})
    assert delivered.refusal(body, error) == why


def test_a_spliced_chunk_takes_the_first_streams_identity() -> None:
    delivered = Delivered()
    delivered.note({"id": "first", "created": 7, "model": "m1",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]})
    splice = Splice(delivered, prompt_tokens=10, prior_completion=1)
    role = {"id": "second", "created": 9, "model": "m2",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    assert splice.chunk(role) is None
    out = splice.chunk({"id": "second", "created": 9, "model": "m2",
                        "choices": [{"index": 0, "delta": {"content": " there"}}]})
    assert out is not None
    assert (out["id"], out["created"], out["model"]) == ("first", 7, "m1")
    usage = splice.chunk({"id": "second", "choices": [],
                          "usage": {"prompt_tokens": 30, "completion_tokens": 2,
                                    "total_tokens": 32}})
    assert usage is not None and usage["usage"] == {
        "prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}


@given(st.lists(st.tuples(st.sampled_from(["call", "text", "finish"]),
                          st.integers(min_value=0, max_value=2),
                          st.sampled_from(["", "{", '"a"', ": 1", "}", "[]"])), max_size=20))
def test_held_chunks_come_out_in_order_and_none_is_lost(
        steps: list[tuple[str, int, str]]) -> None:
    hold = ToolCallHold()
    sent: list[dict[str, Any]] = []
    given_in: list[dict[str, Any]] = []
    for kind, index, args in steps:
        if kind == "call":
            item = tool_chunk(index, args)
        elif kind == "text":
            item = {"choices": [{"index": 0, "delta": {"content": args}}]}
        else:
            item = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        given_in.append(item)
        sent += hold.feed(item)
        # Nothing is ever sent ahead of something held before it.
        assert sent == given_in[:len(sent)]
    sent += hold.flush()
    assert sent == given_in
