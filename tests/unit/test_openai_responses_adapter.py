"""The adapter for OpenAI upstreams with ``responses_api``: its pure translations.

Chat bodies to Responses requests, ``response`` objects to chat completions,
and Responses stream events to chat chunks, table by table; every Responses
object and event used as input here is checked against OpenAI's schemas first.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.openai_schema import validate
from tlproxy.errors import UpstreamError
from tlproxy.providers.openai_responses import (
    ResponsesStreamTranslator,
    chat_completion,
    responses_request,
)

CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}


@pytest.mark.parametrize(("body", "expected"), [
    ({"messages": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Hi"}]},
     {"input": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
      "store": False, "stream": False, "model": "up-1"}),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]},
     {"input": [{"role": "user", "content": [
         {"type": "input_text", "text": "What is it?"},
         {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "auto"}]}]}),
    ({"messages": [{"role": "assistant", "content": "Checking.", "tool_calls": [CALL]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]},
     {"input": [{"role": "assistant", "content": "Checking."},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                 "arguments": '{"city":"Oslo"}'},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]}),
    ({"messages": [], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object"}, "strict": True}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}},
      "parallel_tool_calls": False},
     {"tools": [{"type": "function", "name": "f", "parameters": {"type": "object"},
                 "strict": True}],
      "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": False}),
    ({"messages": [], "max_tokens": 20, "reasoning_effort": "low", "temperature": 0.5,
      "response_format": {"type": "json_schema", "json_schema": {
          "name": "p", "schema": {"type": "object"}, "strict": True}}},
     {"max_output_tokens": 20, "reasoning": {"effort": "low"}, "temperature": 0.5,
      "text": {"format": {"type": "json_schema", "name": "p", "schema": {"type": "object"},
                          "strict": True}}}),
    ({"messages": [], "response_format": {"type": "json_object"}},
     {"text": {"format": {"type": "json_object"}}}),
])
def test_chat_body_to_responses_request(body: dict[str, Any], expected: dict[str, Any]) -> None:
    request = responses_request(body, "up-1", stream=False)
    assert {k: request[k] for k in expected} == expected


RESPONSE: dict[str, Any] = {
    "id": "resp_1", "object": "response", "created_at": 1_800_000_000, "model": "up-1",
    "status": "completed", "error": None, "incomplete_details": None, "instructions": None,
    "metadata": {}, "parallel_tool_calls": True, "temperature": 1.0, "top_p": 1.0,
    "tool_choice": "auto", "tools": [],
    "output": [
        {"id": "rs_1", "type": "reasoning", "summary": [],
         "content": [{"type": "reasoning_text", "text": "Hmm."}]},
        {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Checking.", "annotations": [],
                      "logprobs": []}]},
        {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1",
         "name": "get_weather", "arguments": '{"city":"Oslo"}'}],
    "usage": {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 4,
                                                          "cache_write_tokens": 0},
              "output_tokens": 6, "output_tokens_details": {"reasoning_tokens": 2},
              "total_tokens": 15},
}


def test_response_to_chat_completion() -> None:
    validate("Response", RESPONSE)
    answer = chat_completion(RESPONSE)
    validate("CreateChatCompletionResponse", answer)
    (choice,) = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": "Checking.", "refusal": None,
                                 "tool_calls": [CALL], "reasoning_content": "Hmm."}
    assert answer["usage"] == {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15,
                               "prompt_tokens_details": {"cached_tokens": 4},
                               "completion_tokens_details": {"reasoning_tokens": 2}}


@pytest.mark.parametrize(("status", "details", "finish"), [
    ("incomplete", {"reason": "max_output_tokens"}, "length"),
    ("incomplete", {"reason": "content_filter"}, "content_filter"),
])
def test_an_incomplete_response_has_its_finish_reason(
    status: str, details: dict[str, str], finish: str
) -> None:
    response = {**RESPONSE, "status": status, "incomplete_details": details,
                "output": RESPONSE["output"][1:2]}
    validate("Response", response)
    assert chat_completion(response)["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize(("code", "status"), [("server_error", 502),
                                               ("rate_limit_exceeded", 429)])
def test_a_failed_response_is_an_upstream_error(code: str, status: int) -> None:
    failed = {**RESPONSE, "status": "failed", "output": [],
              "error": {"code": code, "message": "it broke"}}
    validate("Response", failed)
    with pytest.raises(UpstreamError) as caught:
        chat_completion(failed)
    assert caught.value.status == status and caught.value.retryable


def _feed(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                 ResponsesStreamTranslator]:
    translator = ResponsesStreamTranslator()
    chunks: list[dict[str, Any]] = []
    for number, event in enumerate(events):
        event = {**event, "sequence_number": number}
        validate("ResponseStreamEvent", event)
        chunks.extend(translator.feed(event["type"], event))
    return chunks, translator


IN_PROGRESS = {**RESPONSE, "status": "in_progress", "output": []}
del IN_PROGRESS["usage"]


def test_stream_events_to_chat_chunks() -> None:
    fc = {"id": "fc_1", "type": "function_call", "status": "in_progress", "call_id": "call_1",
          "name": "get_weather", "arguments": ""}
    chunks, translator = _feed([
        {"type": "response.created", "response": IN_PROGRESS},
        {"type": "response.reasoning_text.delta", "item_id": "rs_1", "output_index": 0,
         "content_index": 0, "delta": "Hmm."},
        {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 1,
         "content_index": 0, "delta": "Check", "logprobs": []},
        {"type": "response.output_item.added", "output_index": 2, "item": fc},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1",
         "output_index": 2, "delta": '{"city":'},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1",
         "output_index": 2, "delta": '"Oslo"}'},
        {"type": "response.completed", "response": RESPONSE},
    ])
    chunks.extend(translator.close())
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in chunks]
    assert deltas == [
        {"role": "assistant", "reasoning_content": "Hmm."},
        {"content": "Check"},
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
        {}, None]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["total_tokens"] == 15
    assert all(c["id"] == "resp_1" and c["model"] == "up-1" for c in chunks)
    assert translator.finished


@pytest.mark.parametrize("event", [
    {"type": "response.failed", "response": {**IN_PROGRESS, "status": "failed",
                                             "error": {"code": "server_error",
                                                       "message": "it broke"}}},
    {"type": "error", "code": "server_error", "message": "it broke", "param": None},
])
def test_a_failure_event_raises(event: dict[str, Any]) -> None:
    with pytest.raises(UpstreamError, match="it broke"):
        _feed([{"type": "response.created", "response": IN_PROGRESS}, event])


def test_a_stream_without_its_terminal_event_is_not_finished() -> None:
    _, translator = _feed([{"type": "response.created", "response": IN_PROGRESS}])
    assert not translator.finished
