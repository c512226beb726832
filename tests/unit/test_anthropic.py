"""The Anthropic adapter: request and answer translation, streams, errors, and its I/O.

Answers and streams come from the examples in Anthropic's documentation (see
tests/data/anthropic/README.md); every OpenAI-shaped output is also checked
against OpenAI's published schemas.
"""

from __future__ import annotations

import functools
import itertools
import json
from typing import Any

import httpcore2
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.adapter_support import (
    ROLE,
    USER,
    Handler,
    Recordings,
    Split,
    mock_transport,
    openai_messages,
    usage,
    validate,
)
from tests.unit.adapter_support import collect as collect_chunks
from tlproxy.errors import InvalidRequest, UpstreamError
from tlproxy.pricing import CACHE_WRITE_TOKENS
from tlproxy.providers.anthropic import (
    AnthropicProvider,
    AnthropicStreamTranslator,
    from_anthropic_response,
    map_anthropic_error,
    to_anthropic_request,
)

DATA = Recordings("anthropic")
fixture, events = DATA.json, DATA.events
collect = functools.partial(collect_chunks, model="claude-up")


def translate(name: str, **kwargs: Any) -> list[dict[str, Any]]:
    translator = AnthropicStreamTranslator(model="claude-x", created=7, **kwargs)
    chunks = [c for event, data in events(name) for c in translator.feed(event, data)]
    assert translator.finished
    return chunks


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


# ---------------------------------------------------------------- requests

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOL = {"type": "function", "function": {"name": "weather", "parameters": WEATHER, "strict": True}}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
}

REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "plain",
        {"messages": [USER]},
        {
            "model": "claude-x",
            "max_tokens": 4096,
            "messages": [{"role": "user", "content": [text("Hi")]}],
        },
    ),
    (
        "system_and_developer_joined",
        {
            "messages": [
                {"role": "system", "content": "A"},
                {"role": "developer", "content": [text("B")]},
                USER,
            ]
        },
        {"system": "A\n\nB", "messages": [{"role": "user", "content": [text("Hi")]}]},
    ),
    (
        "system_only_warm_up_becomes_the_turn",
        {"messages": [{"role": "system", "content": "Be brief."}]},
        {"messages": [{"role": "user", "content": [text("Be brief.")]}]},
    ),
    (
        "images_data_and_url",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        text("What is this?"),
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0K"},
                        },
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"},
                        },
                    ],
                }
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        text("What is this?"),
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": "iVBORw0K",
                            },
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                        },
                    ],
                }
            ]
        },
    ),
    (
        "tool_round_trip_merges_results_into_one_user_turn",
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [CALL, {**CALL, "id": "call.2"}],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call.2", "content": [text("rain")]},
                {"role": "user", "content": "thanks"},
            ],
            "tools": [TOOL],
        },
        {
            "messages": [
                {"role": "user", "content": [text("Hi")]},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "call_1",
                            "name": "weather",
                            "input": {"city": "Oslo"},
                        },
                        {
                            "type": "tool_use",
                            "id": "call_2",
                            "name": "weather",
                            "input": {"city": "Oslo"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
                        text("thanks"),
                    ],
                },
            ],
            "tools": [{"name": "weather", "input_schema": WEATHER}],
        },
    ),
    (
        "consecutive_user_turns_merge",
        {
            "messages": [
                USER,
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": ""},
            ]
        },
        {"messages": [{"role": "user", "content": [text("Hi"), text("again")]}]},
    ),
    (
        "legacy_functions",
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": "weather", "arguments": ""},
                },
                {"role": "function", "name": "weather", "content": "sunny"},
            ],
            "functions": [{"name": "weather", "description": "Weather", "parameters": WEATHER}],
            "function_call": {"name": "weather"},
        },
        {
            "messages": [
                {"role": "user", "content": [text("Hi")]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_legacy_1", "name": "weather", "input": {}}
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_legacy_1", "content": "sunny"}
                    ],
                },
            ],
            "tools": [{"name": "weather", "description": "Weather", "input_schema": WEATHER}],
            "tool_choice": {"type": "tool", "name": "weather"},
        },
    ),
    (
        "tool_choice_auto",
        {"messages": [USER], "tools": [TOOL], "tool_choice": "auto"},
        {"tool_choice": {"type": "auto"}},
    ),
    (
        "tool_choice_none",
        {"messages": [USER], "tools": [TOOL], "tool_choice": "none"},
        {"tool_choice": {"type": "none"}},
    ),
    (
        "tool_choice_required",
        {"messages": [USER], "tools": [TOOL], "tool_choice": "required"},
        {"tool_choice": {"type": "any"}},
    ),
    (
        "tool_choice_named_without_parallel_calls",
        {
            "messages": [USER],
            "tools": [TOOL],
            "parallel_tool_calls": False,
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
        },
        {"tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": True}},
    ),
    (
        "no_parallel_calls_alone",
        {"messages": [USER], "tools": [TOOL], "parallel_tool_calls": False},
        {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
    ),
    ("tool_choice_without_tools_is_dropped", {"messages": [USER], "tool_choice": "required"}, {}),
    (
        "sampling_and_limits",
        {
            "messages": [USER],
            "stop": "END",
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "temperature": 1.5,
            "top_p": 0.5,
            "user": "u-1",
            "seed": 3,
            "presence_penalty": 1,
        },
        {
            "stop_sequences": ["END"],
            "max_tokens": 20,
            "temperature": 1.0,
            "metadata": {"user_id": "u-1"},
        },
    ),
    (
        "stop_list_and_top_p",
        {"messages": [USER], "stop": ["a", "b"], "top_p": 0.5},
        {"stop_sequences": ["a", "b"], "top_p": 0.5},
    ),
    (
        "json_schema_uses_output_config",
        {
            "messages": [USER],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "w", "strict": True, "schema": WEATHER},
            },
        },
        {"output_config": {"format": {"type": "json_schema", "schema": WEATHER}}},
    ),
    (
        "stream",
        {"messages": [USER], "stream": True, "stream_options": {"include_usage": True}},
        {"stream": True},
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_request_translation(body: dict[str, Any], expected: dict[str, Any]) -> None:
    out = to_anthropic_request(body, model="claude-x", stream=bool(body.get("stream")))
    assert {k: out.get(k) for k in expected} == expected
    assert out["model"] == "claude-x"
    assert "stream_options" not in out and "seed" not in out and "presence_penalty" not in out
    if "tool_choice" not in expected:
        assert "tool_choice" not in out


def test_json_object_becomes_a_system_instruction() -> None:
    out = to_anthropic_request(
        {
            "messages": [{"role": "system", "content": "S"}, USER],
            "response_format": {"type": "json_object"},
        },
        model="m",
        stream=False,
    )
    assert out["system"].startswith("S\n\n") and "JSON object" in out["system"]
    assert "output_config" not in out


def test_default_max_tokens_is_configurable() -> None:
    out = to_anthropic_request({"messages": [USER]}, model="m", stream=False, default_max_tokens=99)
    assert out["max_tokens"] == 99


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("n", {"messages": [USER], "n": 2}, "n"),
    ("logprobs", {"messages": [USER], "logprobs": True}, "logprobs"),
    ("top_logprobs", {"messages": [USER], "top_logprobs": 2}, "top_logprobs"),
    ("no_messages", {"messages": []}, "messages"),
    ("bad_role", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    (
        "bad_arguments",
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "weather", "arguments": "{oops"}}],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "array_arguments",
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "weather", "arguments": "[1]"}}],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "audio",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}
                    ],
                }
            ]
        },
        "messages[0].content[0].type",
    ),
    (
        "svg_image",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="},
                        }
                    ],
                }
            ]
        },
        "messages[0].content[0].image_url.url",
    ),
    (
        "custom_tool",
        {"messages": [USER], "tools": [{"type": "custom", "custom": {"name": "x"}}]},
        "tools[0].type",
    ),
    (
        "function_without_call",
        {"messages": [USER, {"role": "function", "name": "f", "content": "x"}]},
        "messages[1].role",
    ),
    ("max_tokens", {"messages": [USER], "max_tokens": 0}, "max_tokens"),
    (
        "schema",
        {"messages": [USER], "response_format": {"type": "json_schema", "json_schema": {}}},
        "response_format.json_schema.schema",
    ),
]


@pytest.mark.parametrize(("body", "param"), [r[1:] for r in INVALID], ids=[r[0] for r in INVALID])
def test_untranslatable_requests_are_invalid(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_anthropic_request(body, model="m", stream=False)
    assert caught.value.param == param
    assert caught.value.status == 400


def test_n_message_is_explicit() -> None:
    with pytest.raises(InvalidRequest, match=r"n > 1 is not supported by this model's provider"):
        to_anthropic_request({"messages": [USER], "n": 3}, model="m", stream=False)


# ---------------------------------------------------------------- answers


def test_text_answer_from_the_api_reference() -> None:
    out = from_anthropic_response(fixture("message_text.json"), model="claude-x", created=7)
    validate("CreateChatCompletionResponse", out)
    assert out == {
        "id": "chatcmpl-013Zva2CMHLNnXjNJJKqJ2EF",
        "object": "chat.completion",
        "created": 7,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hi! My name is Claude.",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        # input 2095 + cache read 2051 + cache write 2051; the writes are
        # passed on for the pricing, and never reach a client.
        "usage": {**usage(6197, 503, cached=2051), CACHE_WRITE_TOKENS: 2051},
        "service_tier": "default",
        "system_fingerprint": None,
    }


def test_tool_use_answer_from_the_tool_use_guide() -> None:
    out = from_anthropic_response(fixture("message_tool_use.json"), model="claude-x", created=7)
    validate("CreateChatCompletionResponse", out)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert (
        choice["message"]["content"] == "I'll check the current weather in San Francisco for you."
    )
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": '{"location":"San Francisco, CA","unit":"celsius"}',
            },
        }
    ]
    assert out["usage"] == usage(0, 0)  # the guide's example carries no usage


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    resp = {"id": "msg_1", "content": [], "stop_reason": stop_reason, "usage": {}}
    assert (
        from_anthropic_response(resp, model="m", created=0)["choices"][0]["finish_reason"] == finish
    )


def test_only_tool_calls_gives_null_content() -> None:
    tool = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    resp = {
        "id": "msg_1",
        "content": [{"type": "thinking", "thinking": "hm"}, tool],
        "stop_reason": "tool_use",
    }
    message = from_anthropic_response(resp, model="m", created=0)["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"


def test_an_answer_that_is_not_a_message_is_a_502() -> None:
    with pytest.raises(UpstreamError) as caught:
        from_anthropic_response({"type": "error"}, model="m", created=0)
    assert caught.value.status == 502


# ---------------------------------------------------------------- streams


def assert_stream_shape(chunks: list[dict[str, Any]], *, include_usage: bool = True) -> None:
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        assert (chunk["id"], chunk["created"], chunk["model"]) == (chunks[0]["id"], 7, "claude-x")
        assert ("usage" in chunk) is include_usage
    assert chunks[0]["choices"][0]["delta"] == ROLE
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert [f for f in finishes if f is not None] == [finishes[-1]]
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is not None
        assert all(c["usage"] is None for c in chunks[:-1])


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def test_basic_stream_from_the_docs() -> None:
    chunks = translate("stream_basic.sse")
    assert_stream_shape(chunks)
    assert chunks[0]["id"] == "chatcmpl-1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"
    assert deltas(chunks) == [ROLE, {"content": "Hello"}, {"content": "!"}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == usage(25, 15)


def test_tool_use_stream_from_the_docs() -> None:
    chunks = translate("stream_tool_use.sse")
    assert_stream_shape(chunks)
    words = [
        "Okay",
        ",",
        " let",
        "'s",
        " check",
        " the",
        " weather",
        " for",
        " San",
        " Francisco",
        ",",
        " CA",
        ":",
    ]
    fragments = [
        '{"location":',
        ' "San',
        " Francisc",
        "o,",
        ' CA"',
        ", ",
        '"unit": "fah',
        'renheit"}',
    ]
    first = {
        "index": 0,
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert deltas(chunks) == [
        ROLE,
        *({"content": w} for w in words),
        {"tool_calls": [first]},
        *({"tool_calls": [{"index": 0, "function": {"arguments": f}}]} for f in fragments),
        {},
    ]
    assert json.loads("".join(fragments)) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == usage(472, 89)


def test_thinking_is_forwarded_as_reasoning_content() -> None:
    chunks = translate("stream_thinking.sse", include_usage=False)
    assert_stream_shape(chunks, include_usage=False)
    thinking = [d["reasoning_content"] for d in deltas(chunks) if "reasoning_content" in d]
    assert "".join(thinking).endswith("6. 10,800 + 1,350 + 81 = 12,231")
    assert [d for d in deltas(chunks) if "reasoning_content" not in d] == [
        ROLE, {"content": "27 * 453 = 12,231"}, {}]


def test_tool_calls_are_numbered_among_tool_calls_only() -> None:
    translator = AnthropicStreamTranslator(model="claude-x", created=7)
    script: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {"id": "msg_x", "usage": {"input_tokens": 3, "cache_read_input_tokens": 4}},
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        *(
            {
                "type": "content_block_start",
                "index": i,
                "content_block": {"type": "tool_use", "id": f"toolu_{i}", "name": "f", "input": {}},
            }
            for i in (1, 2)
        ),
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    chunks = [c for data in script for c in translator.feed(data["type"], data)]
    assert_stream_shape(chunks)
    calls = [d["tool_calls"][0] for d in deltas(chunks) if "tool_calls" in d]
    assert [(c["index"], c.get("id"), c["function"]["arguments"]) for c in calls] == [
        (0, "toolu_1", ""),
        (1, "toolu_2", ""),
        (1, None, "{}"),
        (0, None, "{}"),
    ]
    assert chunks[-1]["usage"] == usage(7, 9, cached=4)


def test_ping_and_unknown_events_say_nothing() -> None:
    translator = AnthropicStreamTranslator(model="m", created=0)
    assert translator.feed("ping", {"type": "ping"}) == []
    assert translator.feed("future_event", {"type": "future_event"}) == []
    assert not translator.finished


def test_error_event_raises_a_retryable_upstream_error() -> None:
    translator = AnthropicStreamTranslator(model="m", created=0)
    [(event, data)] = events("stream_error.sse")
    with pytest.raises(UpstreamError) as caught:
        translator.feed(event, data)
    assert (caught.value.status, caught.value.retryable, caught.value.message) == (
        503,
        True,
        "Overloaded",
    )


@pytest.mark.parametrize(
    ("kind", "status", "upstream_status", "retryable"),
    [
        ("overloaded_error", 503, 529, True),
        ("rate_limit_error", 429, 429, True),
        ("api_error", 502, 500, True),
        ("some_future_error", 502, None, True),
        ("authentication_error", 502, 401, True),
        ("invalid_request_error", 400, 400, False),
    ],
)
def test_error_event_statuses(
    kind: str, status: int, upstream_status: int | None, retryable: bool
) -> None:
    # An error event stands for the HTTP error of its type: retried unless
    # it blames the request.
    translator = AnthropicStreamTranslator(model="m", created=0)
    with pytest.raises(UpstreamError) as caught:
        translator.feed("error", {"type": "error", "error": {"type": kind, "message": "x"}})
    error = caught.value
    assert (error.status, error.upstream_status, error.retryable) == (
        status, upstream_status, retryable)


# ---------------------------------------------------------------- errors

ERRORS: list[tuple[int, bytes, dict[str, str], int, bool, str]] = [
    (
        400,
        json.dumps(
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "max_tokens: too big"},
            }
        ).encode(),
        {},
        400,
        False,
        "invalid_request_error",
    ),
    (
        401,
        b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}',
        {},
        502,
        True,
        "upstream_error",
    ),
    (
        403,
        b'{"type":"error","error":{"type":"permission_error","message":"no"}}',
        {},
        502,
        True,
        "upstream_error",
    ),
    (404, DATA.bytes("error_not_found.json"), {}, 502, True, "upstream_error"),
    (
        413,
        b'{"type":"error","error":{"type":"request_too_large","message":"too large"}}',
        {},
        413,
        False,
        "invalid_request_error",
    ),
    (
        429,
        b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}',
        {"retry-after": "17"},
        429,
        True,
        "rate_limit_error",
    ),
    (
        500,
        b'{"type":"error","error":{"type":"api_error","message":"oops"}}',
        {},
        503,
        True,
        "api_error",
    ),
    (529, DATA.bytes("error_overloaded.json"), {}, 503, True, "overloaded_error"),
    (502, b"<html>bad gateway</html>", {}, 503, True, "service_unavailable"),
]


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected", "retryable", "kind"),
    ERRORS,
    ids=[str(e[0]) for e in ERRORS],
)
def test_error_mapping(
    status: int, body: bytes, headers: dict[str, str], expected: int, retryable: bool, kind: str
) -> None:
    error = map_anthropic_error(status, body, headers)
    assert (error.status, error.retryable, error.type, error.upstream_status) == (
        expected,
        retryable,
        kind,
        status,
    )
    assert error.retry_after == headers.get("retry-after")
    if status in (401, 403):
        assert "rejected the proxy's credentials" in error.message


def test_error_messages_are_redacted() -> None:
    body = json.dumps(
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "sk-ant-api03-x1y2z3w4"},
        }
    ).encode()
    error = map_anthropic_error(400, body, {})
    assert "sk-ant" not in error.message and "[redacted]" in error.message


# ---------------------------------------------------------------- property

MESSAGE = openai_messages(
    media=[st.builds(lambda t: {"type": t}, st.sampled_from(["input_audio", "file", "video"]))],
    call_ids=["call_1", "call 2", ""],
    arguments=["{}", '{"a":1}', "", "{", "[]"],
    tool_call_ids=["call_1", "", "zzz"],
    legacy_function_call=True,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(MESSAGE, max_size=6), n=st.sampled_from([None, 1, 2]))
def test_any_message_list_translates_or_is_an_invalid_request(messages: list[Any], n: Any) -> None:
    try:
        out = to_anthropic_request({"messages": messages, "n": n}, model="m", stream=False)
    except InvalidRequest:
        return
    roles = [m["role"] for m in out["messages"]]
    assert roles and all(a != b for a, b in itertools.pairwise(roles))
    assert all(m["content"] for m in out["messages"])


# ---------------------------------------------------------------- I/O


def provider(handler: Handler, **kwargs: Any) -> AnthropicProvider:
    return AnthropicProvider(
        "anthropic", base_url="https://api.test", api_key="sk-ant-test-key",
        transport=mock_transport(handler), **kwargs
    )


def sse(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.Response(
        status, headers={"content-type": "text/event-stream", **(headers or {})}, stream=Split(body)
    )


async def test_clean_stream_sends_anthropic_headers_and_translates() -> None:
    seen: list[httpx2.Request] = []

    async def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return sse(DATA.bytes("stream_tool_use.sse"))

    chunks = await collect(provider(handler), {"model": "premium", "messages": [USER]})
    [request] = seen
    assert str(request.url) == "https://api.test/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-test-key"
    assert request.headers["anthropic-version"] == "2023-06-01"
    body = json.loads(request.content)
    assert (body["model"], body["stream"], body["max_tokens"]) == ("claude-up", True, 4096)
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 89
    assert {c["model"] for c in chunks} == {"claude-up"}


async def test_stream_cut_before_message_stop_is_an_error() -> None:
    cut = DATA.bytes("stream_basic.sse").split(b"event: message_delta")[0]

    async def handler(request: httpx2.Request) -> httpx2.Response:
        return sse(cut)

    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError) as caught:
        async with provider(handler).stream_chat({"messages": [USER]}, model="claude-up") as chunks:
            async for chunk in chunks:
                received.append(chunk)
    assert caught.value.message == "upstream stream ended before its final event"
    # The upstream's fault, not the request's: before a first token, another
    # candidate may answer.
    assert (caught.value.status, caught.value.retryable) == (502, True)
    assert deltas(received)[1:] == [{"content": "Hello"}, {"content": "!"}]


async def test_stream_closed_after_its_stop_reason_is_complete() -> None:
    # The stop reason and the final usage came (message_delta); only
    # message_stop, which closes the stream, is missing.
    whole = DATA.bytes("stream_basic.sse")
    closed_early = whole.split(b"event: message_stop")[0]
    answers = []
    for body in (whole, closed_early):
        async def handler(request: httpx2.Request, body: bytes = body) -> httpx2.Response:
            return sse(body)

        chunks = await collect(provider(handler), {"messages": [USER]})
        answers.append([{k: v for k, v in c.items() if k != "created"} for c in chunks])
    assert answers[1] == answers[0]
    assert answers[0][-2]["choices"][0]["finish_reason"] == "stop"


async def test_rate_limited_stream_keeps_retry_after() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        body = (
            b'{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests"}}'
        )
        return httpx2.Response(429, headers={"retry-after": "12"}, stream=Split(body))

    with pytest.raises(UpstreamError) as caught:
        await collect(provider(handler), {"messages": [USER]})
    assert (caught.value.status, caught.value.headers, caught.value.retryable) == (
        429,
        {"retry-after": "12"},
        True,
    )


async def test_overloaded_529_is_a_retryable_503() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(529, content=DATA.bytes("error_overloaded.json"))

    with pytest.raises(UpstreamError) as caught:
        await collect(provider(handler), {"messages": [USER]})
    assert (caught.value.status, caught.value.retryable, caught.value.message) == (
        503,
        True,
        "Overloaded",
    )
    with pytest.raises(UpstreamError):
        await provider(handler).chat({"messages": [USER]}, model="claude-up")


async def test_timeout_is_a_retryable_504() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpcore2.ReadTimeout("slow")

    with pytest.raises(UpstreamError) as caught:
        await collect(provider(handler), {"messages": [USER]})
    assert (caught.value.status, caught.value.retryable) == (504, True)


async def test_connection_failure_is_a_retryable_502() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpcore2.ConnectError("refused")

    with pytest.raises(UpstreamError) as caught:
        await provider(handler).chat({"messages": [USER]}, model="claude-up")
    assert (caught.value.status, caught.value.retryable) == (502, True)


async def test_chat_translates_the_answer() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        assert "stream" not in json.loads(request.content)
        return httpx2.Response(200, content=DATA.bytes("message_tool_use.json"))

    p = provider(handler)
    p_v1 = AnthropicProvider(
        "a",
        base_url="https://api.test/v1/",
        api_key=None,
        transport=mock_transport(handler),
    )
    for candidate in (p, p_v1):
        answer = await candidate.chat({"messages": [USER]}, model="claude-up")
        assert answer["model"] == "claude-up"
        assert (
            answer["choices"][0]["message"]["tool_calls"][0]["id"]
            == "toolu_01A09q90qw90lq917835lq9"
        )


async def test_invalid_json_answer_is_a_502() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=b"<html>")

    with pytest.raises(UpstreamError) as caught:
        await provider(handler).chat({"messages": [USER]}, model="claude-up")
    assert caught.value.status == 502


async def test_no_embeddings() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        raise AssertionError("no request expected")

    with pytest.raises(InvalidRequest):
        await provider(handler).embed({"input": "x"}, model="claude-up")


async def test_error_event_mid_stream_ends_it_with_the_mapped_error() -> None:
    start = DATA.bytes("stream_basic.sse").split(b"event: content_block_stop")[0]

    async def handler(request: httpx2.Request) -> httpx2.Response:
        return sse(start + DATA.bytes("stream_error.sse"))

    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError) as caught:
        async with provider(handler).stream_chat({"messages": [USER]}, model="claude-up") as chunks:
            async for chunk in chunks:
                received.append(chunk)
    assert (caught.value.status, caught.value.retryable) == (503, True)
    assert len(received) == 3  # role, "Hello", "!"


def test_sampling_can_be_left_out() -> None:
    body = {"messages": [USER], "temperature": 0.2, "top_p": 0.9}
    out = to_anthropic_request(body, model="m", stream=False, sampling=False)
    assert "temperature" not in out and "top_p" not in out


async def test_a_model_that_refuses_temperature_is_retried_once_and_remembered() -> None:
    sent: list[dict[str, Any]] = []

    async def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        sent.append(body)
        if "temperature" in body:
            error = {
                "type": "invalid_request_error",
                "message": "`temperature` is deprecated for this model.",
            }
            return httpx2.Response(400, json={"type": "error", "error": error})
        return httpx2.Response(200, content=DATA.bytes("message_text.json"))

    p = provider(handler)
    for _ in range(2):
        answer = await p.chat({"messages": [USER], "temperature": 0.7}, model="claude-opus-4-7")
        assert answer["choices"][0]["message"]["content"] == "Hi! My name is Claude."
    assert ["temperature" in body for body in sent] == [True, False, False]
