"""Request decoding: strict where the proxy reads, lenient where it passes on."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlproxy.errors import InvalidRequest, ProxyError, param_from_validation_error
from tlproxy.wire import _depth_exceeds, decode_chat_request, decode_embedding_request

USER = {"role": "user", "content": "hi"}


def chat(**fields: object) -> bytes:
    return json.dumps({"model": "auto", "messages": [USER], **fields}).encode()


@pytest.mark.parametrize("fields", [
    {},
    {"stream": True, "stream_options": {"include_usage": True}},
    {"tools": [{"type": "function", "function": {"name": "f", "strict": True,
                "parameters": {"type": "object", "additionalProperties": False}}}],
     "tool_choice": "required", "parallel_tool_calls": False},
    {"tool_choice": {"type": "function", "function": {"name": "f"}}},
    {"functions": [{"name": "f"}], "function_call": {"name": "f"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
    {"response_format": {"type": "json_object"}},
    {"stop": "\n"}, {"stop": ["a", "b"]}, {"seed": 1}, {"metadata": {"k": "v"}},
    {"unknown_future_field": {"nested": [1, None]}},
    {"messages": [{"role": "assistant", "content": None, "refusal": None, "annotations": [],
                   "tool_calls": [{"id": "c", "type": "function",
                                   "function": {"name": "f", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "c", "content": [{"type": "text",
                                                                      "text": "ok"}]}]},
    {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]},
])
def test_accepts_real_request_shapes(fields: dict[str, object]) -> None:
    request, raw = decode_chat_request(chat(**fields))
    for key, value in fields.items():
        assert raw[key] == value
    assert request.model == "auto"


@pytest.mark.parametrize(("body", "param"), [
    (b'{"model": "auto", "messages": [{"role": "user"}]}', "messages[0].content"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": 1}]}', "messages[0].content"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
     "messages[0].content[0].text"),
    (b'{"model": "", "messages": [{"role": "user", "content": "x"}]}', "model"),
    (b'{"model": "a", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}',
     "tools[0].type"),
    (b'{"model": "a", "messages": [{"role": "user", "content": "x"}], '
     b'"tools": [{"type": "function"}]}', "tools[0].function"),
    (b'{"model": "a", "messages": [{"role": "user", "content": "x"}], "tool_choice": "maybe"}',
     "tool_choice"),
    (b'{"model": "a", "messages": [{"role": "user", "content": "x"}], '
     b'"response_format": {"type": "yaml"}}', "response_format.type"),
    (b'{"model": "a", "messages": [{"role": "user", "content": "x"}], "metadata": {"k": 1}}',
     "metadata"),
])
def test_mistakes_name_their_path(body: bytes, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_chat_request(body)
    assert caught.value.param == param
    assert caught.value.status == 400


class Inner(msgspec.Struct):
    role: str


class Outer(msgspec.Struct):
    messages: list[Inner]


def test_param_from_validation_error_reads_msgspec_paths() -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(b'{"messages": [{"role": "a"}, {"role": 2}]}', type=Outer)
    message, param = param_from_validation_error(caught.value)
    assert param == "messages[1].role"
    assert "Expected `str`, got `int`" in message


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(["model", "messages", "stream", "tools", "n", "role", "content",
                        "stream_options", "tool_choice", "response_format", "input"])
REQUESTISH = st.dictionaries(KEYS, JSON, max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, REQUESTISH))
def test_arbitrary_json_is_accepted_or_refused_with_400(value: object) -> None:
    body = json.dumps(value).encode()
    for decode in (decode_chat_request, decode_embedding_request):
        try:
            decode(body)
        except ProxyError as exc:
            assert exc.status == 400


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_escape_as_anything_but_400(body: bytes) -> None:
    try:
        decode_chat_request(body)
    except ProxyError as exc:
        assert exc.status == 400


def _nested(depth: int, opening: bytes, closing: bytes) -> bytes:
    return opening * depth + b"1" + closing * depth


VALID = b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "input": "hi"'


@pytest.mark.parametrize(("body", "hint"), [
    # Bytes that are not UTF-8 inside a string: msgspec's UnicodeDecodeError.
    (VALID + b', "user": "a\xffb"}', "not valid UTF-8: byte 0xff at offset {at}"),
    (VALID + b', "user": "\xc3"}', "not valid UTF-8: byte 0xc3 at offset {at}"),
    (VALID + b', "user": "\xed\xa0\x80"}', "not valid UTF-8: byte 0xed"),
    (VALID + b', "\xfe": 1}', "not valid UTF-8: byte 0xfe"),
    # Escaped halves of a surrogate pair: JSON can write them, text cannot hold them.
    (VALID + b', "user": "a\\ud800b"}', "the escape \\ud800 at offset {at}"),
    (VALID + b', "user": "\\udfff"}', "the escape \\udfff"),
    (VALID + b', "user": "\\ud800\\ud800"}', "the escape \\ud800"),
    # Nesting: msgspec's RecursionError past ~1,000 levels, our limit below it.
    (VALID + b', "x": ' + _nested(2_000, b"[", b"]") + b"}", "more than 128 levels deep"),
    (VALID + b', "x": ' + _nested(50_000, b'{"a": ', b"}") + b"}",
     "more than 128 levels deep"),
    (VALID + b', "x": ' + _nested(128, b"[", b"]") + b"}", "more than 128 levels deep"),
    (VALID + b', "x": ' + _nested(127, b'{"a": [', b"]}") + b"}", "more than 128 levels deep"),
    (VALID + b', "x": 1e400}', "Number out of range"),
])
def test_bodies_later_code_could_not_take_are_refused_at_the_edge(
    body: bytes, hint: str
) -> None:
    for decode in (decode_chat_request, decode_embedding_request):
        with pytest.raises(InvalidRequest) as caught:
            decode(body)
        assert caught.value.status == 400
        assert caught.value.code == "invalid_json"
        # {at}: where the value of "user" starts, plus one for the "a".
        at = len(VALID) + len(b', "user": "') + body.endswith(b'b"}')
        assert hint.format(at=at) in caught.value.message, caught.value.message


@pytest.mark.parametrize("extra", [
    b', "x": ' + _nested(127, b"[", b"]"),  # the body itself is level 1
    b', "x": "\\ud83d\\ude00 \\u00e9 \xc3\xa9 \\\\ud800"',  # a pair, and an escaped backslash
    b', "x": "' + b"[{" * 500 + b'"',  # brackets inside strings are no nesting
])
def test_the_limits_leave_valid_bodies_alone(extra: bytes) -> None:
    _, raw = decode_chat_request(VALID + extra + b"}")
    assert raw["model"] == "auto"


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


TRICKY_TEXT = st.text(alphabet=st.sampled_from('[]{}"\\/ab\n\u00e9'), max_size=8)
NESTED = st.recursive(
    st.none() | st.integers() | TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY_TEXT, inner, max_size=3),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(NESTED, st.booleans(), st.integers(min_value=1, max_value=8))
def test_depth_scan_agrees_with_the_decoded_structure(
    value: object, ascii_only: bool, limit: int
) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert _depth_exceeds(body, limit) == (_depth(value) > limit)
