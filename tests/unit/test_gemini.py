"""The Gemini adapter: request and answer translation, streams, embeddings, errors, and its I/O.

Answers and streams come from Google's Gemini API Cookbook recordings and docs (see
tests/data/gemini/README.md); every OpenAI-shaped output is also checked against
OpenAI's published schemas.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import struct
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
    mock_transport,
    openai_messages,
    usage,
    validate,
)
from tests.unit.adapter_support import Split as SplitBody
from tests.unit.adapter_support import collect as collect_chunks
from tlproxy.errors import InvalidRequest, UpstreamError
from tlproxy.providers.gemini import (
    GeminiProvider,
    GeminiStreamTranslator,
    from_gemini_embed_response,
    from_gemini_response,
    map_gemini_error,
    to_gemini_embed_request,
    to_gemini_request,
)

DATA = Recordings("gemini")
fixture, events = DATA.json, DATA.events
collect = functools.partial(collect_chunks, model="gemini-2.5-flash")
# Pieces of 41 bytes cut the recorded streams' CRLFs in two.
Split = functools.partial(SplitBody, size=41)
SIGNATURE = "skip_thought_signature_validator"


def translate(name: str, **kwargs: Any) -> list[dict[str, Any]]:
    translator = GeminiStreamTranslator(model="gemini-x", created=7, **kwargs)
    chunks = [c for event, data in events(name) for c in translator.feed(event, data)]
    assert translator.finished
    return chunks + translator.close()


# ---------------------------------------------------------------- requests

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "function": {"name": "weather", "description": "W", "parameters": WEATHER},
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
}
FC = {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}

REQUESTS: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    (
        "plain",
        "gemini-2.5-flash",
        {"messages": [USER]},
        {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
    ),
    (
        "system_instruction",
        "gemini-2.5-flash",
        {
            "messages": [
                {"role": "system", "content": "A"},
                {"role": "developer", "content": "B"},
                USER,
            ]
        },
        {
            "systemInstruction": {"parts": [{"text": "A\n\nB"}]},
            "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        },
    ),
    (
        "system_only_warm_up",
        "gemini-2.5-flash",
        {"messages": [{"role": "system", "content": "Be brief."}]},
        {"contents": [{"role": "user", "parts": [{"text": "Be brief."}]}]},
    ),
    (
        "media",
        "gemini-2.5-flash",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0K"},
                        },
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/cat.jpg?x=1"},
                        },
                        {
                            "type": "input_audio",
                            "input_audio": {"data": "UklGRg==", "format": "wav"},
                        },
                        {
                            "type": "file",
                            "file": {
                                "file_data": "data:application/pdf;base64,JVBERi0=",
                                "filename": "a.pdf",
                            },
                        },
                    ],
                }
            ]
        },
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "What?"},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
                        {
                            "fileData": {
                                "fileUri": "https://example.com/cat.jpg?x=1",
                                "mimeType": "image/jpeg",
                            }
                        },
                        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
                    ],
                }
            ]
        },
    ),
    (
        "tool_round_trip",
        "gemini-2.5-flash",
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "content": "Let me see.",
                    "tool_calls": [CALL, {**CALL, "id": "call_2"}],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'},
                {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
            ],
            "tools": [TOOL],
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{"text": "Let me see."}, FC, FC]},
                {
                    "role": "user",
                    "parts": [
                        {"functionResponse": {"name": "weather", "response": {"temp": 3}}},
                        {"functionResponse": {"name": "weather", "response": {"output": "rain"}}},
                    ],
                },
            ],
            "tools": [
                {
                    "functionDeclarations": [
                        {"name": "weather", "description": "W", "parametersJsonSchema": WEATHER}
                    ]
                }
            ],
        },
    ),
    (
        "gemini_3_replays_calls_with_the_documented_sentinel",
        "gemini-3-pro-preview",
        {
            "messages": [
                USER,
                {"role": "assistant", "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "x"},
                {"role": "tool", "tool_call_id": "call_2", "content": "y"},
            ]
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{**FC, "thoughtSignature": SIGNATURE}, FC]},
                {
                    "role": "user",
                    "parts": [
                        {"functionResponse": {"name": "weather", "response": {"output": "x"}}},
                        {"functionResponse": {"name": "weather", "response": {"output": "y"}}},
                    ],
                },
            ]
        },
    ),
    (
        "legacy_functions",
        "gemini-2.5-flash",
        {
            "messages": [
                USER,
                {"role": "assistant", "function_call": {"name": "weather", "arguments": ""}},
                {"role": "function", "name": "weather", "content": "sunny"},
            ],
            "functions": [{"name": "weather"}],
            "function_call": "none",
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {}}}]},
                {
                    "role": "user",
                    "parts": [
                        {"functionResponse": {"name": "weather", "response": {"output": "sunny"}}}
                    ],
                },
            ],
            "tools": [{"functionDeclarations": [{"name": "weather"}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "NONE"}},
        },
    ),
    (
        "tool_choice_auto",
        "g",
        {"messages": [USER], "tools": [TOOL], "tool_choice": "auto"},
        {"toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}},
    ),
    (
        "tool_choice_required",
        "g",
        {"messages": [USER], "tools": [TOOL], "tool_choice": "required"},
        {"toolConfig": {"functionCallingConfig": {"mode": "ANY"}}},
    ),
    (
        "tool_choice_named",
        "g",
        {
            "messages": [USER],
            "tools": [TOOL],
            "parallel_tool_calls": False,
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
        },
        {
            "toolConfig": {
                "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}
            }
        },
    ),
    (
        "generation_config",
        "g",
        {
            "messages": [USER],
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "temperature": 1.5,
            "top_p": 0.5,
            "seed": 3,
            "n": 2,
            "stop": "END",
            "user": "u",
            "presence_penalty": 1,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": WEATHER},
            },
        },
        {
            "generationConfig": {
                "maxOutputTokens": 20,
                "temperature": 1.5,
                "topP": 0.5,
                "seed": 3,
                "candidateCount": 2,
                "stopSequences": ["END"],
                "responseMimeType": "application/json",
                "responseJsonSchema": WEATHER,
            }
        },
    ),
    (
        "json_object",
        "g",
        {"messages": [USER], "stop": ["a", "b"], "response_format": {"type": "json_object"}},
        {"generationConfig": {"stopSequences": ["a", "b"], "responseMimeType": "application/json"}},
    ),
]


@pytest.mark.parametrize(
    ("model", "body", "expected"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_request_translation(model: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    out = to_gemini_request(body, model=model)
    assert {k: out.get(k) for k in expected} == expected
    assert "model" not in out  # it goes in the URL


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("logprobs", {"messages": [USER], "logprobs": True}, "logprobs"),
    ("no_messages", {"messages": []}, "messages"),
    (
        "unknown_tool_call_id",
        {"messages": [USER, {"role": "tool", "tool_call_id": "x", "content": "y"}]},
        "messages[1].tool_call_id",
    ),
    (
        "bad_arguments",
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "weather", "arguments": "{"}}],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    ("custom_tool", {"messages": [USER], "tools": [{"type": "custom"}]}, "tools[0].type"),
    (
        "bad_media",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
                }
            ]
        },
        "messages[0].content[0].image_url.url",
    ),
    ("bad_n", {"messages": [USER], "n": 0}, "n"),
    (
        "bad_format",
        {"messages": [USER], "response_format": {"type": "xml"}},
        "response_format.type",
    ),
    ("bare_string_format", {"messages": [USER], "response_format": "json_schema"},
     "response_format"),
]


@pytest.mark.parametrize(("body", "param"), [r[1:] for r in INVALID], ids=[r[0] for r in INVALID])
def test_untranslatable_requests_are_invalid(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_gemini_request(body, model="gemini-2.5-flash")
    assert caught.value.param == param


# ---------------------------------------------------------------- answers


def test_text_answer() -> None:
    out = from_gemini_response(fixture("generate_text.json"), model="gemini-x", created=7)
    validate("CreateChatCompletionResponse", out)
    assert out["object"] == "chat.completion" and out["created"] == 7 and out["model"] == "gemini-x"
    assert out["id"].startswith("chatcmpl-")
    assert out["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "refusal": None,
                "annotations": [],
                "content": fixture("generate_text.json")["candidates"][0]["content"]["parts"][0][
                    "text"
                ],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert out["usage"] == usage(754, 49)
    assert (out["service_tier"], out["system_fingerprint"]) == ("default", None)


def test_thinking_tokens_are_reasoning_tokens() -> None:
    out = from_gemini_response(fixture("generate_thinking.json"), model="gemini-x", created=7)
    assert out["id"] == "chatcmpl-6VFkaIDwEPXVjMcP4-XW6Qo"
    assert out["usage"] == usage(8, 11 + 829, reasoning=829)  # totalTokenCount 848


def test_cached_tokens_are_part_of_the_prompt() -> None:
    out = from_gemini_response(fixture("generate_cached.json"), model="gemini-x", created=7)
    assert out["usage"] == usage(323388, 397, cached=323383)


def test_function_call_answer_gets_a_deterministic_id() -> None:
    resp = fixture("generate_function_call.json")
    out = from_gemini_response(resp, model="gemini-x", created=7)
    validate("CreateChatCompletionResponse", out)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {
        "name": "find_theaters",
        "arguments": '{"movie":"Barbie","location":"Mountain View, CA"}',
    }
    assert call["id"].startswith("call_") and len(call["id"]) == 29
    assert (
        from_gemini_response(resp, model="gemini-x", created=8)["choices"][0]["message"][
            "tool_calls"
        ][0]["id"]
        == call["id"]
    )


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
    ],
)
def test_finish_reasons(reason: str, finish: str) -> None:
    resp = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]}
    assert from_gemini_response(resp, model="m", created=0)["choices"][0]["finish_reason"] == finish


def test_several_candidates_are_several_choices_and_thoughts_are_reasoning() -> None:
    resp = {
        "candidates": [
            {"index": 1, "content": {"parts": [{"text": "b"}]}, "finishReason": "MAX_TOKENS"},
            {
                "index": 0,
                "content": {"parts": [{"text": "plan", "thought": True}, {"text": "a"}]},
                "finishReason": "STOP",
            },
        ],
        "responseId": "r",
    }
    out = from_gemini_response(resp, model="m", created=0)
    validate("CreateChatCompletionResponse", out)
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in out["choices"]] == [
        (0, "a", "stop"),
        (1, "b", "length"),
    ]
    assert [c["message"].get("reasoning_content") for c in out["choices"]] == ["plan", None]


def test_blocked_prompt_is_a_content_filter_finish() -> None:
    out = from_gemini_response({"promptFeedback": {"blockReason": "SAFETY"}}, model="m", created=0)
    validate("CreateChatCompletionResponse", out)
    assert out["choices"][0]["finish_reason"] == "content_filter"


# ---------------------------------------------------------------- streams


def assert_stream_shape(chunks: list[dict[str, Any]], *, include_usage: bool = True) -> None:
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        assert (chunk["id"], chunk["created"], chunk["model"]) == (chunks[0]["id"], 7, "gemini-x")
        assert ("usage" in chunk) is include_usage
    assert chunks[0]["choices"][0]["delta"] == ROLE
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert [f for f in finishes if f is not None] == [finishes[-1]]
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is not None


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def test_legacy_stream_with_a_finish_reason_on_every_chunk_finishes_once() -> None:
    chunks = translate("stream_text_legacy.sse")
    assert_stream_shape(chunks)
    texts = [
        data["candidates"][0]["content"]["parts"][0]["text"]
        for _, data in events("stream_text_legacy.sse")
    ]
    assert deltas(chunks) == [ROLE, *({"content": t} for t in texts), {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == usage(0, 0)  # this old model sent no usageMetadata


def test_function_call_stream() -> None:
    chunks = translate("stream_function_call.sse")
    assert_stream_shape(chunks)
    calls = [d["tool_calls"][0] for d in deltas(chunks) if "tool_calls" in d]
    assert deltas(chunks)[:4] == [
        ROLE, {"reasoning_content": "**Checking the weather**\n\nThe user wants the weather in "
                                    "Boston."},
        {"content": "Let me check "}, {"content": "that for you."}]
    assert [(c["index"], c["type"], c["function"]) for c in calls] == [
        (0, "function", {"name": "get_current_weather", "arguments": '{"location":"Boston, MA"}'}),
        (1, "function", {"name": "get_current_weather", "arguments": '{"location":"Paris"}'}),
    ]
    assert all(c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]
    assert chunks[0]["id"] == "chatcmpl-syn0Resp1dF0rTests"
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == usage(70, 34 + 46, reasoning=46)


def test_stream_without_usage_chunk() -> None:
    chunks = translate("stream_function_call.sse", include_usage=False)
    assert_stream_shape(chunks, include_usage=False)


def test_stream_without_a_finish_reason_is_not_finished() -> None:
    translator = GeminiStreamTranslator(model="m", created=0)
    for event, data in events("stream_function_call.sse")[:2]:
        translator.feed(event, data)
    assert not translator.finished


def test_candidates_stream_as_separate_choices() -> None:
    translator = GeminiStreamTranslator(model="gemini-x", created=7)
    chunks = translator.feed(
        None,
        {
            "candidates": [
                {"index": 0, "content": {"parts": [{"text": "a"}]}},
                {"index": 1, "content": {"parts": [{"text": "b"}]}, "finishReason": "STOP"},
            ]
        },
    )
    assert not translator.finished
    chunks += translator.feed(None, {"candidates": [{"index": 0, "finishReason": "MAX_TOKENS"}]})
    assert translator.finished
    chunks += translator.close()
    assert [
        (c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in chunks[-3:-1]
    ] == [(0, "length"), (1, "stop")]
    assert translator.close() == []


def test_blocked_prompt_stream() -> None:
    translator = GeminiStreamTranslator(model="gemini-x", created=7)
    assert translator.feed(None, {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}) == []
    assert translator.finished
    chunks = translator.close()
    assert_stream_shape(chunks)
    assert chunks[1]["choices"][0]["finish_reason"] == "content_filter"


def test_error_object_in_the_stream_raises() -> None:
    translator = GeminiStreamTranslator(model="m", created=0)
    with pytest.raises(UpstreamError) as caught:
        translator.feed(
            None, {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}
        )
    assert (caught.value.status, caught.value.retryable) == (503, True)


# ---------------------------------------------------------------- embeddings


def test_embed_request_for_one_string() -> None:
    method, body = to_gemini_embed_request(
        {"input": "Hello world", "dimensions": 256}, model="gemini-embedding-001"
    )
    assert method == "embedContent"
    assert body == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "Hello world"}]},
        "outputDimensionality": 256,
    }


def test_embed_request_for_a_list() -> None:
    method, body = to_gemini_embed_request(
        {"input": ["a", "b"]}, model="models/gemini-embedding-001"
    )
    assert method == "batchEmbedContents"
    assert body == {
        "requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}}
            for t in "ab"
        ]
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [1, 2, 3]}, "input"),
        ({"input": [[1, 2]]}, "input"),
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_embed_request_refusals(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_gemini_embed_request(body, model="gemini-embedding-001")
    assert caught.value.param == param


def test_embed_response_as_floats() -> None:
    out = from_gemini_embed_response(
        fixture("batch_embed_contents.json"),
        model="gemini-embedding-001",
        texts=["What is the meaning of life?", "abc", "a"],
    )
    validate("CreateEmbeddingResponse", out)
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert out["data"][0] == {
        "object": "embedding",
        "index": 0,
        "embedding": fixture("batch_embed_contents.json")["embeddings"][0]["values"],
    }
    assert out["usage"] == {"prompt_tokens": 7 + 1 + 1, "total_tokens": 9}


def test_embed_response_as_base64_little_endian_float32() -> None:
    out = from_gemini_embed_response(
        fixture("embed_content.json"), model="m", encoding_format="base64", texts=["Hello world"]
    )
    # (OpenAI's spec only models float arrays; the SDKs decode this string themselves.)
    values = fixture("embed_content.json")["embedding"]["values"]
    decoded = struct.unpack(f"<{len(values)}f", base64.b64decode(out["data"][0]["embedding"]))
    assert decoded == pytest.approx(values, rel=1e-6)
    assert out["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


def test_embed_response_that_is_not_one_is_a_502() -> None:
    with pytest.raises(UpstreamError):
        from_gemini_embed_response({"embeddings": [{"nope": 1}]}, model="m")


# ---------------------------------------------------------------- errors

ERRORS: list[tuple[int, bytes, dict[str, str], int, bool, str | None]] = [
    (400, DATA.bytes("error_invalid_argument.json"), {}, 400, False, None),
    (400, DATA.bytes("error_api_key_invalid.json"), {}, 502, True, None),
    (
        403,
        b'{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}',
        {},
        502,
        True,
        None,
    ),
    (
        400,
        b'{"error":{"code":400,"message":"billing","status":"FAILED_PRECONDITION"}}',
        {},
        502,
        True,
        None,
    ),
    (
        404,
        b'{"error":{"code":404,"message":"models/x is not found","status":"NOT_FOUND"}}',
        {},
        502,
        True,
        None,
    ),
    (429, DATA.bytes("error_resource_exhausted.json"), {}, 429, True, "28"),
    (
        429,
        DATA.bytes("error_resource_exhausted.json"),
        {"retry-after": "5"},
        429,
        True,
        "5",
    ),
    (500, b'{"error":{"code":500,"message":"internal","status":"INTERNAL"}}', {}, 503, True, None),
    (
        503,
        b'[{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}]',
        {},
        503,
        True,
        None,
    ),
    (
        504,
        b'{"error":{"code":504,"message":"deadline","status":"DEADLINE_EXCEEDED"}}',
        {},
        504,
        True,
        None,
    ),
    (502, b"<html>", {}, 503, True, None),
]


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected", "retryable", "retry_after"), ERRORS
)
def test_error_mapping(
    status: int,
    body: bytes,
    headers: dict[str, str],
    expected: int,
    retryable: bool,
    retry_after: str | None,
) -> None:
    error = map_gemini_error(status, body, headers)
    assert (error.status, error.retryable, error.retry_after) == (expected, retryable, retry_after)
    assert error.upstream_status == status
    if expected == 400:
        assert error.type == "invalid_request_error" and "includeThoughts" in error.message


def test_error_messages_are_redacted() -> None:
    body = json.dumps(
        {"error": {"code": 400, "message": "key AIzaSyA-abcdefghijklmnopqrstuvwxyz01"}}
    )
    assert "AIza" not in map_gemini_error(400, body.encode(), {}).message


# ---------------------------------------------------------------- property

MESSAGE = openai_messages(
    media=[
        st.builds(
            lambda f: {"type": "input_audio", "input_audio": {"data": "AA==", "format": f}},
            st.sampled_from(["wav", "flac"]),
        ),
        st.builds(lambda t: {"type": t}, st.sampled_from(["file", "video"])),
    ],
    call_ids=["call_1", "call_2"],
    arguments=["{}", '{"a":1}', "", "{", "7"],
    tool_call_ids=["call_1", "call_2", "zzz"],
    legacy_function_call=False,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(MESSAGE, max_size=6),
    model=st.sampled_from(["gemini-2.5-flash", "gemini-3-pro"]),
)
def test_any_message_list_translates_or_is_an_invalid_request(
    messages: list[Any], model: str
) -> None:
    try:
        out = to_gemini_request({"messages": messages}, model=model)
    except InvalidRequest:
        return
    roles = [c["role"] for c in out["contents"]]
    assert roles and set(roles) <= {"user", "model"}
    assert all(a != b for a, b in itertools.pairwise(roles))
    assert all(c["parts"] for c in out["contents"])


# ---------------------------------------------------------------- I/O


def provider(handler: Handler, base_url: str = "https://gl.test") -> GeminiProvider:
    return GeminiProvider("gemini", base_url=base_url, api_key="AIza-test-key",
                          transport=mock_transport(handler))


async def test_clean_stream_uses_sse_and_the_key_header() -> None:
    seen: list[httpx2.Request] = []

    async def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, stream=Split(DATA.bytes("stream_function_call.sse")))

    chunks = await collect(provider(handler), {"model": "premium", "messages": [USER]})
    [request] = seen
    assert str(request.url) == (
        "https://gl.test/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert request.headers["x-goog-api-key"] == "AIza-test-key"
    assert "key=" not in str(request.url)
    assert json.loads(request.content) == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}]
    }
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["total_tokens"] == 150


async def test_stream_cut_before_any_finish_reason_is_an_error() -> None:
    cut = DATA.bytes("stream_function_call.sse").rsplit(b"data: ", 1)[0]

    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, stream=Split(cut))

    with pytest.raises(UpstreamError) as caught:
        await collect(provider(handler), {"messages": [USER]})
    assert caught.value.message == "upstream stream ended before its final event"
    # The upstream's fault, not the request's: before a first token, another
    # candidate may answer.
    assert (caught.value.status, caught.value.retryable) == (502, True)


async def test_rate_limited_stream_derives_retry_after() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            429, stream=Split(DATA.bytes("error_resource_exhausted.json"))
        )

    with pytest.raises(UpstreamError) as caught:
        await collect(provider(handler), {"messages": [USER]})
    assert (caught.value.status, caught.value.headers) == (429, {"retry-after": "28"})


async def test_unavailable_is_a_retryable_503() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            503,
            json={
                "error": {
                    "code": 503,
                    "message": "The model is overloaded.",
                    "status": "UNAVAILABLE",
                }
            },
        )

    with pytest.raises(UpstreamError) as caught:
        await collect(provider(handler), {"messages": [USER]})
    assert (caught.value.status, caught.value.retryable) == (503, True)


async def test_timeout_is_a_retryable_504() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpcore2.ConnectTimeout("slow")

    with pytest.raises(UpstreamError) as caught:
        await provider(handler).chat({"messages": [USER]}, model="gemini-2.5-flash")
    assert (caught.value.status, caught.value.retryable) == (504, True)


async def test_chat_translates_the_answer() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/models/gemini-2.5-flash:generateContent"
        return httpx2.Response(200, content=DATA.bytes("generate_function_call.json"))

    answer = await provider(handler, "https://gl.test/v1/").chat(
        {"messages": [USER]}, model="models/gemini-2.5-flash"
    )
    assert answer["model"] == "models/gemini-2.5-flash"
    assert answer["choices"][0]["finish_reason"] == "tool_calls"


async def test_embed_round_trip() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
        assert len(json.loads(request.content)["requests"]) == 3
        return httpx2.Response(200, content=DATA.bytes("batch_embed_contents.json"))

    out = await provider(handler).embed(
        {"input": ["a", "bb", "ccccc"], "encoding_format": "float"}, model="gemini-embedding-001"
    )
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert out["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


async def test_error_object_mid_stream_ends_it_with_the_mapped_error() -> None:
    first = DATA.bytes("stream_function_call.sse").split(b"\r\n\r\n")[1] + b"\r\n\r\n"
    error = {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}
    error_event = b"data: " + json.dumps({"error": error}).encode() + b"\r\n\r\n"

    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, stream=Split(first + error_event))

    with pytest.raises(UpstreamError) as caught:
        await collect(provider(handler), {"messages": [USER]})
    assert (caught.value.status, caught.value.retryable) == (503, True)
