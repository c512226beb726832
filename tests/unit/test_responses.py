"""The Responses API's pure cores: request translation, and chat chunks to events.

Translation is table-driven: a Responses body in, the chat body the engine
runs out (or the 400 naming the parameter). Event sequencing is checked by
hypothesis: whatever the answer (reasoning, text, refusals, tool calls) and
however its text is split across chunks, the events are numbered from 0,
each item and content part is opened and closed exactly once, exactly one
terminal event ends the stream, every event matches OpenAI's schema, and the
final ``response`` is the same as for the answer in one chunk.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.openai_schema import validate
from tlproxy.errors import InvalidRequest
from tlproxy.responses.events import (
    ResponseEvents,
    completion_chunk,
    response_base,
    response_usage,
)
from tlproxy.responses.request import (
    Turn,
    answer_messages,
    decode_responses_request,
    translate,
)


def turn_of(body: dict[str, Any], previous: list[dict[str, Any]] | None = None) -> Turn:
    request, _ = decode_responses_request(json.dumps({"model": "auto", **body}).encode())
    counter = iter(range(1000))
    return translate(request, previous=previous, ids=lambda p: f"{p}_{next(counter)}")


CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather",
        "arguments": '{"city":"Oslo"}'}
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


@pytest.mark.parametrize(("body", "expected"), [
    ({"input": "Hi"}, {"messages": [{"role": "user", "content": "Hi"}]}),
    ({"input": "Hi", "instructions": "Be brief."},
     {"messages": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Hi"}]}),
    ({"input": [{"type": "message", "role": "developer", "content": [
        {"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]}]},
     {"messages": [{"role": "developer", "content": "ab"}]}),
    ({"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "low"}]}]},
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "What is this?"},
         {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}}]}]}),
    ({"input": [{"role": "user", "content": "Weather?"}, CALL,
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]},
     {"messages": [
         {"role": "user", "content": "Weather?"},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
         {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]}),
    # An assistant message and the calls after it are one chat message; reasoning is dropped.
    ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Let me"}]},
                CALL]},
     {"messages": [{"role": "assistant", "content": "Let me", "tool_calls": [
         {"id": "call_1", "type": "function",
          "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}]}),
    ({"input": "Hi", "tools": [WEATHER], "tool_choice": {"type": "function",
                                                         "name": "get_weather"},
      "parallel_tool_calls": False},
     {"tools": [{"type": "function", "function": {"name": "get_weather",
                                                  "parameters": {"type": "object"}}}],
      "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
      "parallel_tool_calls": False}),
    ({"input": "Hi", "text": {"format": {"type": "json_schema", "name": "p", "strict": True,
                                         "schema": {"type": "object"}}}},
     {"response_format": {"type": "json_schema", "json_schema": {
         "name": "p", "schema": {"type": "object"}, "strict": True}}}),
    ({"input": "Hi", "text": {"format": {"type": "json_object"}}},
     {"response_format": {"type": "json_object"}}),
    ({"input": "Hi", "max_output_tokens": 64, "reasoning": {"effort": "low"},
      "temperature": 0.2, "top_p": 0.9, "user": "u1"},
     {"max_completion_tokens": 64, "reasoning_effort": "low", "temperature": 0.2,
      "top_p": 0.9, "user": "u1"}),
    ({"input": "Hi", "stream": True},
     {"stream": True, "stream_options": {"include_usage": True}}),
])
def test_translation_to_chat(body: dict[str, Any], expected: dict[str, Any]) -> None:
    chat = turn_of(body).chat
    assert {k: chat[k] for k in expected} == expected
    # The proxy's own fields never go upstream.
    assert not {"store", "metadata", "previous_response_id", "input"} & set(chat)


def test_previous_history_comes_after_new_instructions() -> None:
    history = [{"role": "user", "content": "My name is Ada."},
               {"role": "assistant", "content": "Hello Ada."}]
    turn = turn_of({"input": "And mine?", "instructions": "Be kind."}, previous=history)
    assert turn.chat["messages"] == [{"role": "system", "content": "Be kind."}, *history,
                                     {"role": "user", "content": "And mine?"}]
    # What the next turn continues: instructions left out.
    assert turn.history == [*history, {"role": "user", "content": "And mine?"}]


def test_metadata_is_a_routing_signal_not_an_upstream_field() -> None:
    turn = turn_of({"input": "Hi", "metadata": {"task": "summarization"}})
    assert "metadata" not in turn.chat
    assert turn.signals_body["metadata"] == {"task": "summarization"}


def test_input_items_are_stored_with_ids_and_parts() -> None:
    turn = turn_of({"input": [{"role": "user", "content": "Hi"}, CALL,
                              {"type": "function_call_output", "call_id": "call_1",
                               "output": "sunny"}]})
    assert turn.input_items == [
        {"id": "msg_0", "type": "message", "role": "user", "status": "completed",
         "content": [{"type": "input_text", "text": "Hi"}]},
        {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1",
         "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"id": "fco_2", "type": "function_call_output", "status": "completed",
         "call_id": "call_1", "output": "sunny"},
    ]
    validate("ResponseItemList", {"object": "list", "data": turn.input_items,
                                  "first_id": "msg_0", "last_id": "fco_2", "has_more": False})


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "Hi", "tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
    ({"input": "Hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"input": "Hi", "tool_choice": {"type": "file_search"}}, "tool_choice.type"),
    ({"input": "Hi", "tool_choice": {"type": "function"}}, "tool_choice.name"),
    ({"input": "Hi", "background": True}, "background"),
    ({"input": "Hi", "conversation": {"id": "conv_1"}}, "conversation"),
    ({"input": "Hi", "prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"input": []}, "input"),
    ({}, "input"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user"}]}, "input[0].content"),
    ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
    ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input[0].content[0].image_url"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "input[0].content[0].type"),
    ({"input": "Hi", "text": {"format": {"type": "json_schema", "name": "p"}}},
     "text.format.schema"),
    ({"input": "Hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"input": "Hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "Hi", "temperature": -1}, "temperature"),
    ({"input": "Hi", "temperature": 2.5}, "temperature"),
    ({"input": "Hi", "top_p": 1.5}, "top_p"),
    ({"input": "Hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"input": "Hi", "reasoning": {"summary": "long"}}, "reasoning.summary"),
    ({"input": 5}, "input"),
])
def test_untranslatable_requests_are_400s_naming_the_parameter(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        turn_of(body)
    assert caught.value.param == param
    assert caught.value.status == 400


def test_answer_messages_continue_text_and_calls() -> None:
    response = {"output": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_9", "name": "f", "arguments": "{}"}]}
    assert answer_messages(response) == [{"role": "assistant", "content": "Checking.",
                                          "tool_calls": [{"id": "call_9", "type": "function",
                                                          "function": {"name": "f",
                                                                       "arguments": "{}"}}]}]
    assert answer_messages({"output": []}) == []


@pytest.mark.parametrize(("usage", "expected"), [
    (None, None),
    ({"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
     {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
      "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 14}),
    ({"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
      "prompt_tokens_details": {"cached_tokens": 6},
      "completion_tokens_details": {"reasoning_tokens": 3}},
     {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 0},
      "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 14}),
])
def test_usage_in_the_responses_shape(usage: dict[str, Any] | None,
                                      expected: dict[str, Any] | None) -> None:
    assert response_usage(usage) == expected


# -- events ----------------------------------------------------------------------------------

def builder(body: dict[str, Any] | None = None) -> ResponseEvents:
    turn = turn_of(body or {"input": "Hi"})
    counter = iter(range(1000))
    return ResponseEvents(
        response_base(turn, response_id="resp_1", created_at=1_700_000_000, model="m",
                      store=True), ids=lambda p: f"{p}_{next(counter)}")


def delta(**fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


def finish(reason: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                                  "total_tokens": 7}}


def run(chunks: list[dict[str, Any]], *, fail: bool = False) -> tuple[list[dict[str, Any]],
                                                                     dict[str, Any]]:
    events_builder = builder()
    events = events_builder.start()
    for chunk in chunks:
        events.extend(events_builder.feed(chunk))
    events.extend(events_builder.fail("cut") if fail else events_builder.finish(1_700_000_001))
    return events, events_builder.response()


@pytest.mark.parametrize(("chunks", "fail", "types"), [
    ([delta(role="assistant", content="Hel"), delta(content="lo"), finish("stop"), USAGE], False,
     ["response.created", "response.in_progress", "response.output_item.added",
      "response.content_part.added", "response.output_text.delta",
      "response.output_text.delta", "response.output_text.done",
      "response.content_part.done", "response.output_item.done", "response.completed"]),
    ([delta(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                         "function": {"name": "f", "arguments": ""}}]),
      delta(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}]),
      finish("tool_calls")], False,
     ["response.created", "response.in_progress", "response.output_item.added",
      "response.function_call_arguments.delta", "response.function_call_arguments.done",
      "response.output_item.done", "response.completed"]),
    ([delta(content="Hel"), finish("length")], False,
     ["response.created", "response.in_progress", "response.output_item.added",
      "response.content_part.added", "response.output_text.delta",
      "response.output_text.done", "response.content_part.done",
      "response.output_item.done", "response.incomplete"]),
    ([delta(refusal="No.")], False,
     ["response.created", "response.in_progress", "response.output_item.added",
      "response.content_part.added", "response.refusal.delta", "response.refusal.done",
      "response.content_part.done", "response.output_item.done", "response.completed"]),
    ([delta(content="Hel")], True,
     ["response.created", "response.in_progress", "response.output_item.added",
      "response.content_part.added", "response.output_text.delta",
      "response.output_text.done", "response.content_part.done",
      "response.output_item.done", "response.failed"]),
    ([], True, ["response.created", "response.in_progress", "response.failed"]),
])
def test_event_sequences(chunks: list[dict[str, Any]], fail: bool, types: list[str]) -> None:
    events, response = run(chunks, fail=fail)
    assert [e["type"] for e in events] == types
    for event in events:
        validate("ResponseStreamEvent", event)
    validate("Response", response)


def test_incomplete_and_failed_responses_say_why() -> None:
    _, cut = run([delta(content="Hel"), finish("length")])
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["output"][0]["status"] == "incomplete"
    _, failed = run([delta(content="Hel")], fail=True)
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "cut"}
    assert failed["completed_at"] is None


def test_a_complete_answer_is_the_same_response_as_its_stream() -> None:
    completion = {
        "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Checking.", "reasoning_content": "Hmm.",
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "f", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
    _, whole = run([completion_chunk(completion)])
    _, streamed = run([delta(reasoning_content="Hm"), delta(reasoning_content="m."),
                       delta(content="Check"), delta(content="ing."),
                       delta(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                                          "function": {"name": "f", "arguments": "{"}}]),
                       delta(tool_calls=[{"index": 0, "function": {"arguments": "}"}}]),
                       finish("tool_calls"),
                       {"choices": [], "usage": completion["usage"]}])
    assert whole == streamed
    assert [item["type"] for item in whole["output"]] == ["reasoning", "message",
                                                          "function_call"]
    assert whole["usage"]["total_tokens"] == 7


# One piece of an answer: a kind and its text (a tool call's: index and arguments).
_piece = st.one_of(
    st.tuples(st.sampled_from(["content", "reasoning_content", "refusal"]),
              st.text(min_size=1, max_size=12)),
    st.tuples(st.sampled_from(["tool0", "tool1"]), st.text(min_size=1, max_size=12)),
)


def _chunks(pieces: list[tuple[str, str]], cuts: list[int]) -> list[dict[str, Any]]:
    """The pieces as chunks, each piece's text split at the given offsets."""
    chunks: list[dict[str, Any]] = []
    started: set[str] = set()
    for number, (kind, text) in enumerate(pieces):
        at = sorted({c % (len(text) + 1) for c in cuts[number:number + 2]} | {0, len(text)})
        for start, end in itertools.pairwise(at):
            fragment = text[start:end]
            if kind.startswith("tool"):
                call: dict[str, Any] = {"index": int(kind[-1]),
                                        "function": {"arguments": fragment}}
                if kind not in started:
                    call.update(id=f"call_{kind}", type="function")
                    call["function"]["name"] = kind
                    started.add(kind)
                chunks.append(delta(tool_calls=[call]))
            else:
                chunks.append(delta(**{kind: fragment}))
    return chunks


@settings(max_examples=60, deadline=None)
@given(pieces=st.lists(_piece, max_size=6), cuts=st.lists(st.integers(0, 12), max_size=14),
       end=st.sampled_from(["stop", "length", "tool_calls", "fail"]))
def test_every_stream_is_a_valid_sequence(pieces: list[tuple[str, str]], cuts: list[int],
                                          end: str) -> None:
    chunks = _chunks(pieces, cuts)
    tail = [] if end == "fail" else [finish(end), USAGE]
    events, response = run(chunks + tail, fail=end == "fail")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        validate("ResponseStreamEvent", event)
    validate("Response", response)
    terminal = [e for e in events if e["type"] in (
        "response.completed", "response.incomplete", "response.failed")]
    assert terminal == [events[-1]]
    assert events[-1]["type"] == {"stop": "response.completed", "tool_calls":
                                  "response.completed", "length": "response.incomplete",
                                  "fail": "response.failed"}[end]
    opened = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    closed = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert sorted(opened) == sorted(closed) == list(range(len(response["output"])))
    parts_opened = [(e["output_index"], e["content_index"]) for e in events
                    if e["type"] == "response.content_part.added"]
    parts_closed = [(e["output_index"], e["content_index"]) for e in events
                    if e["type"] == "response.content_part.done"]
    assert sorted(parts_opened) == sorted(parts_closed)
    assert len(set(parts_opened)) == len(parts_opened)
    # Whatever the splits, the text is all there, and the same as in one piece each.
    _, unsplit = run(_chunks(pieces, []) + tail, fail=end == "fail")
    assert response["output"] == unsplit["output"]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "".join(text for kind, text in pieces if kind == "content")
