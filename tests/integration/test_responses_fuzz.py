"""Arbitrary JSON in every field of a Responses request, at the real server: never a 5xx.

The chat fuzzers' servers and strategies (`test_fuzz_requests.py`), aimed at
``/v1/responses``: each field the proxy reads, each field of an input item and
of a content part, with a value of any type; on the simulated OpenAI upstream
and through the Anthropic and Gemini adapters, JSON and streamed. A refusal is
a 4xx in OpenAI's envelope, and an answer a valid response or event stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.integration.test_fuzz_requests import FUZZ, JSON, _check, _client
from tests.openai_schema import validate

RESPONSES_FIELDS = [
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
    "temperature", "top_p", "max_output_tokens", "text", "reasoning", "metadata", "user",
    "store", "previous_response_id", "stream", "background", "conversation", "prompt",
    "include", "truncation",
]
ITEM_FIELDS = ["type", "role", "content", "call_id", "name", "arguments", "output", "id"]
PART_FIELDS = ["type", "text", "image_url", "file_id", "detail"]
ITEMS = {
    "message": {"role": "user", "content": "Hello"},
    "function_call": {"type": "function_call", "call_id": "call_1", "name": "f",
                      "arguments": "{}"},
    "function_call_output": {"type": "function_call_output", "call_id": "call_1",
                             "output": "ok"},
    "reasoning": {"type": "reasoning", "id": "rs_1", "summary": []},
}


@pytest.fixture(scope="module", params=["openai", "native"])
def http(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    yield from _client(native=request.param == "native")


def _valid() -> dict[str, Any]:
    return {"model": "auto", "input": "Hello"}


def _answered(http: httpx.Client, body: dict[str, Any]) -> None:
    response = http.post("/v1/responses", content=json.dumps(body).encode(),
                         headers={"content-type": "application/json"})
    _check(response)
    if response.status_code != 200:
        return
    if response.headers["content-type"].startswith("application/json"):
        validate("Response", response.json())
        return
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: ")]
    for event in events:
        validate("ResponseStreamEvent", event)
    assert events[-1]["type"] in ("response.completed", "response.incomplete",
                                  "response.failed")


@given(field=st.sampled_from(RESPONSES_FIELDS), value=JSON, stream=st.booleans())
@FUZZ
def test_any_value_in_a_responses_field_is_never_a_5xx(
    http: httpx.Client, field: str, value: Any, stream: bool
) -> None:
    _answered(http, {**_valid(), "stream": stream, field: value})


@given(kind=st.sampled_from(sorted(ITEMS)), field=st.sampled_from(ITEM_FIELDS), value=JSON)
@FUZZ
def test_any_value_in_an_input_item_is_never_a_5xx(
    http: httpx.Client, kind: str, field: str, value: Any
) -> None:
    item = {**ITEMS[kind], field: value}
    _answered(http, {**_valid(), "input": [{"role": "user", "content": "Hi"}, item]})


@given(field=st.sampled_from(PART_FIELDS), value=JSON,
       kind=st.sampled_from(["input_text", "input_image", "output_text"]),
       role=st.sampled_from(["user", "assistant", "developer"]))
@FUZZ
def test_any_value_in_a_content_part_is_never_a_5xx(
    http: httpx.Client, field: str, value: Any, kind: str, role: str
) -> None:
    part = {"type": kind, "text": "Hi", "image_url": "data:image/png;base64,iVBORw0KGgo=",
            field: value}
    _answered(http, {**_valid(), "input": [{"role": role, "content": [part]},
                                           {"role": "user", "content": "Go on"}]})
