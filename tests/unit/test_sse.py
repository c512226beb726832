"""Tests for the sans-IO SSE codec: spec cases, limits, and split-invariance."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlproxy.sse import (
    DONE,
    ServerSentEvent,
    SSEDecoder,
    SSEProtocolError,
    encode_data,
    encode_event,
)

E = ServerSentEvent
BOM = b"\xef\xbb\xbf"

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def decode_all(stream: bytes, **kwargs: int) -> list[ServerSentEvent]:
    decoder = SSEDecoder(**kwargs)
    events = decoder.feed(stream)
    events += decoder.close()
    return events


def decode_chunks(chunks: list[bytes], **kwargs: int) -> tuple[list[ServerSentEvent], SSEDecoder]:
    decoder = SSEDecoder(**kwargs)
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.close()
    return events, decoder


def split_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def reference_decode(stream: bytes) -> list[ServerSentEvent]:
    """The spec's algorithm, written as literally as possible, as an oracle.

    It decodes the whole stream at once, so agreeing with it also shows that the
    decoder's per-line decoding never differs from decoding the stream as text.
    """
    if stream.startswith(BOM):
        stream = stream[3:]
    lines = re.split("\r\n|\r|\n", stream.decode("utf-8", "replace"))
    lines.pop()  # not terminated: discarded at end of input
    events = []
    data, event_type, last_id, retry = "", "", None, None
    for line in lines:
        if line == "":
            if data:
                events.append(E(data.removesuffix("\n"), event_type or None, last_id, retry))
            data, event_type, retry = "", "", None
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data += value + "\n"
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            retry = int(value)
    return events


OPENAI_STREAM = (
    b"".join(
        encode_data(json.dumps(chunk, separators=(",", ":")).encode())
        for chunk in [
            {"id": "c1", "object": "chat.completion.chunk", "choices": [{"delta": {"role": "x"}}]},
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "choices": [{"delta": {"content": "Hi"}}],
            },
            {"id": "c1", "object": "chat.completion.chunk", "choices": [{"finish_reason": "stop"}]},
        ]
    )
    + DONE
)

ANTHROPIC_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1"}}\n'
    b"\n"
    b"event: ping\n"
    b'data: {"type": "ping"}\n'
    b"\n"
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","delta":{"text":"Hi"}}\n'
    b"\n"
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n'
    b"\n"
)

CASES: list[tuple[str, bytes, list[ServerSentEvent]]] = [
    ("lf", b"data: a\n\ndata: b\n\n", [E("a"), E("b")]),
    ("crlf", b"data: a\r\n\r\ndata: b\r\n\r\n", [E("a"), E("b")]),
    ("cr", b"data: a\r\rdata: b\r\r", [E("a"), E("b")]),
    ("mixed endings", b"data: a\r\n\ndata: b\r\r\n", [E("a"), E("b")]),
    ("lf cr is two line ends", b"data: a\n\rdata: b\n\n", [E("a"), E("b")]),
    ("comment ignored", b": keep-alive\ndata: a\n: another\n\n", [E("a")]),
    ("comment only block", b": ping\n\n", []),
    ("multi-line data", b"data: a\ndata:\ndata: b\n\n", [E("a\n\nb")]),
    ("empty data line dispatches", b"data:\n\n", [E("")]),
    ("no space after colon", b"data:a\n\n", [E("a")]),
    ("only one space stripped", b"data:  a \n\n", [E(" a ")]),
    ("tab not stripped", b"data:\ta\n\n", [E("\ta")]),
    ("colon in value kept", b"data: a: b:c\n\n", [E("a: b:c")]),
    ("field without colon", b"data\ndata\n\n", [E("\n")]),
    ("event field", b"event: add\ndata: 1\n\n", [E("1", "add")]),
    ("event resets after dispatch", b"event: add\ndata: 1\n\ndata: 2\n\n", [E("1", "add"), E("2")]),
    ("empty event is default", b"event:\ndata: 1\n\n", [E("1")]),
    ("event without data not dispatched", b"event: x\n\ndata: 1\n\n", [E("1")]),
    ("id sticks", b"id: 7\ndata: a\n\ndata: b\n\n", [E("a", id="7"), E("b", id="7")]),
    ("id reset by empty id", b"id: 7\ndata: a\n\nid\ndata: b\n\n", [E("a", id="7"), E("b", id="")]),
    (
        "id with nul ignored",
        b"id: 7\ndata: a\n\nid: 8\x00\ndata: b\n\n",
        [E("a", id="7"), E("b", id="7")],
    ),
    ("id set in dataless block", b"id: 3\n\ndata: a\n\n", [E("a", id="3")]),
    ("retry", b"retry: 1500\ndata: a\n\ndata: b\n\n", [E("a", retry=1500), E("b")]),
    ("retry non-digit ignored", b"retry: 15s\ndata: a\n\n", [E("a")]),
    ("retry negative ignored", b"retry: -1\ndata: a\n\n", [E("a")]),
    ("retry non-ascii digit ignored", "retry: ١٢\ndata: a\n\n".encode(), [E("a")]),
    ("retry empty ignored", b"retry:\ndata: a\n\n", [E("a")]),
    ("unknown field ignored", b"foo: bar\ndata: a\n\n", [E("a")]),
    ("field names are case-sensitive", b"Data: a\nDATA: b\n\n", []),
    ("bom dropped", BOM + b"data: a\n\n", [E("a")]),
    ("only one bom dropped", BOM + BOM + b"data: a\n\n", []),
    ("bom mid-stream kept", b"data: a\n\n" + BOM + b"data: b\n\n", [E("a")]),
    ("bom in value kept", b"data: " + BOM + b"a\n\n", [E("\ufeffa")]),
    ("blank lines alone", b"\n\n\r\n\r", []),
    ("unterminated event dropped", b"data: a\n\ndata: b\n", [E("a")]),
    ("unterminated line dropped", b"data: a\n\ndata: b", [E("a")]),
    ("invalid utf-8 replaced", b"data: \xff\xe2\x82\n\n", [E("\ufffd\ufffd")]),
    ("utf-8 kept", "data: héllo ✓ 😀\n\n".encode(), [E("héllo ✓ 😀")]),
    (
        "unicode line separators are not line ends",
        "data: a\u2028b\x85c\n\n".encode(),
        [E("a\u2028b\x85c")],
    ),
    ("vertical tab and form feed are not line ends", b"data: a\x0bb\x0cc\n\n", [E("a\x0bb\x0cc")]),
    ("nul in data kept", b"data: a\x00b\n\n", [E("a\x00b")]),
    ("done", DONE, [E("[DONE]")]),
    (
        "openai chunks",
        OPENAI_STREAM,
        [
            E('{"id":"c1","object":"chat.completion.chunk","choices":[{"delta":{"role":"x"}}]}'),
            E(
                '{"id":"c1","object":"chat.completion.chunk","choices":[{"delta":{"content":"Hi"}}]}'
            ),
            E('{"id":"c1","object":"chat.completion.chunk","choices":[{"finish_reason":"stop"}]}'),
            E("[DONE]"),
        ],
    ),
    (
        "anthropic events",
        ANTHROPIC_STREAM,
        [
            E('{"type":"message_start","message":{"id":"msg_1"}}', "message_start"),
            E('{"type": "ping"}', "ping"),
            E('{"type":"content_block_delta","delta":{"text":"Hi"}}', "content_block_delta"),
            E('{"type":"message_stop"}', "message_stop"),
        ],
    ),
    (
        "gemini alt=sse",
        b'data: {"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}\r\n\r\n',
        [E('{"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}')],
    ),
]


@pytest.mark.parametrize(("stream", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_spec_cases(stream: bytes, expected: list[ServerSentEvent]) -> None:
    assert decode_all(stream) == expected
    assert reference_decode(stream) == expected
    byte_by_byte, _ = decode_chunks([stream[i : i + 1] for i in range(len(stream))])
    assert byte_by_byte == expected


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_single_split_point(eol: bytes) -> None:
    stream = (BOM + ANTHROPIC_STREAM + b"id: 1\nretry: 5\n" + OPENAI_STREAM).replace(b"\n", eol)
    expected = decode_all(stream)
    assert len(expected) == 8
    for cut in range(len(stream) + 1):
        assert decode_chunks([stream[:cut], stream[cut:]])[0] == expected, cut


def test_crlf_split_across_feeds_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # Were the LF a second line end, the event would be dispatched here.
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\r") == [E("a")]
    # And this LF completes that CRLF, so it is not one more blank line.
    assert decoder.feed(b"\n") == []
    assert not decoder.has_partial


def test_cr_inside_chunk_does_not_swallow_next_chunks_lf() -> None:
    # Only a CR ending a chunk may pair with an LF opening the next one.
    decoder = SSEDecoder()
    assert decoder.feed(b"event: x\rdata: a") == []
    assert decoder.feed(b"\n\n") == [E("a", "x")]


def test_cr_then_empty_feed_then_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\n\r") == [E("a")]
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\ndata: b\n\n") == [E("b")]


def test_bom_split_across_feeds() -> None:
    events, _ = decode_chunks([b"\xef", b"\xbb", b"\xbfdata: a\n\n"])
    assert events == [E("a")]
    # A BOM prefix that turns out not to be a BOM is ordinary (invalid) content.
    events, _ = decode_chunks([b"\xef", b"\xbb", b"x\n\ndata: a\n\n"])
    assert events == [E("a")]


def test_has_partial() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\n")
    assert decoder.close() == []
    assert not decoder.has_partial

    for cut in [b'data: a\n\ndata: {"x"', b"data: a\n\ndata: b\n", b"data: a\n\nevent: x\n"]:
        decoder = SSEDecoder()
        assert decoder.feed(cut) == [E("a")]
        assert decoder.close() == []
        assert decoder.has_partial, cut


def test_feed_after_close() -> None:
    decoder = SSEDecoder()
    decoder.close()
    with pytest.raises(RuntimeError):
        decoder.feed(b"data: a\n\n")


def test_decoder_state_properties() -> None:
    decoder = SSEDecoder()
    assert decoder.last_event_id is None
    assert decoder.retry is None
    decoder.feed(b"id: 42\nretry: 300\n\n")
    assert decoder.last_event_id == "42"
    assert decoder.retry == 300


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: " + b"x" * 100],  # one unterminated line
        [b"data: " + b"x" * 50, b"y" * 50],  # grown in pieces
        [b"data: " + b"x" * 100 + b"\n"],  # one complete line
        [b"data: " + b"x" * 40 + b"\n"] * 3,  # many lines, no blank line
        [b":" + b"x" * 100 + b"\n\n"],  # comments count: they are buffered too
    ],
)
def test_event_size_bounded(chunks: list[bytes]) -> None:
    decoder = SSEDecoder(max_event_size=64)
    with pytest.raises(SSEProtocolError):
        for chunk in chunks:
            decoder.feed(chunk)


def test_event_size_resets_per_event() -> None:
    decoder = SSEDecoder(max_event_size=64)
    events = []
    for _ in range(100):
        events += decoder.feed(b"data: " + b"x" * 50 + b"\n\n")
    assert events == [E("x" * 50)] * 100
    assert issubclass(SSEProtocolError, ValueError)


def test_max_event_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SSEDecoder(max_event_size=0)


def test_encode_data_and_done() -> None:
    assert encode_data(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": "x"}, b"data: x\n\n"),
        ({"data": ""}, b"data: \n\n"),
        ({"data": "a\nb\r\nc\rd"}, b"data: a\ndata: b\ndata: c\ndata: d\n\n"),
        ({"data": "x", "event": "e", "id": "1"}, b"event: e\nid: 1\ndata: x\n\n"),
        ({"data": "x", "event": ""}, b"data: x\n\n"),
        ({"data": "x", "id": ""}, b"id: \ndata: x\n\n"),
        ({"data": "x", "retry": 10}, b"retry: 10\ndata: x\n\n"),
        ({"data": "é"}, "data: é\n\n".encode()),
    ],
)
def test_encode_event(kwargs: dict[str, object], expected: bytes) -> None:
    assert encode_event(**kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"event": "a\nb"},
        {"event": "a\rb"},
        {"id": "a\nb"},
        {"id": "a\x00b"},
        {"retry": -1},
    ],
)
def test_encode_event_rejects_unframeable(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        encode_event("x", **kwargs)  # type: ignore[arg-type]


line_free = st.text().filter(lambda s: "\r" not in s and "\n" not in s)

sse_events = st.lists(
    st.fixed_dictionaries(
        {"data": st.text()},
        optional={
            "event": line_free,
            "id": line_free.filter(lambda s: "\x00" not in s),
            "retry": st.integers(min_value=0, max_value=2**40),
        },
    ),
    max_size=8,
)


@PROPERTY
@given(events=sse_events, bom=st.booleans(), data=st.data())
def test_roundtrip_any_split(events: list[dict[str, Any]], bom: bool, data: st.DataObject) -> None:
    stream = BOM if bom else b""
    stream += b"".join(encode_event(**ev) for ev in events)
    # Re-terminate every line with its own CRLF, LF or CR to mix all three.
    lines = stream.split(b"\n")
    eols = data.draw(st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=len(lines)))
    for i in range(1, len(lines) - 1):
        # CR, then a blank line ended by LF, would read as one CRLF: a different stream.
        if eols[i - 1] == b"\r" and not lines[i] and eols[i] == b"\n":
            eols[i] = b"\r\n"
    stream = b"".join(line + eol for line, eol in zip(lines[:-1], eols, strict=False))
    # Bias cuts toward the middle of CRLF pairs, the case easiest to get wrong.
    crlf_cuts = [i + 1 for i in range(len(stream)) if stream[i : i + 2] == b"\r\n"]
    cuts = data.draw(
        st.lists(
            st.integers(0, len(stream)) | st.sampled_from(crlf_cuts or [0]),
            max_size=12,
        )
    )

    expected = []
    last_id = None
    for ev in events:
        last_id = ev.get("id", last_id)
        expected.append(
            E(
                ev["data"].replace("\r\n", "\n").replace("\r", "\n"),
                ev.get("event") or None,
                last_id,
                ev.get("retry"),
            )
        )

    decoded, decoder = decode_chunks(split_at(stream, cuts))
    assert decoded == expected
    assert not decoder.has_partial


noisy_bytes = st.binary(max_size=300) | st.lists(
    st.sampled_from(
        [
            b"data", b"event", b"id", b"retry", b":", b": ", b" ", b"\r", b"\n", b"\r\n",
            b"x", b"12", b"\x00", BOM, b"\xe2\x82", b"\xac", b"\xff", b"[DONE]",
        ]
    ),
    max_size=60,
).map(b"".join)  # fmt: skip


@PROPERTY
@given(stream=noisy_bytes, cuts=st.lists(st.integers(0, 400), max_size=12))
def test_arbitrary_bytes_split_invariant(stream: bytes, cuts: list[int]) -> None:
    whole = SSEDecoder()
    expected = whole.feed(stream) + whole.close()
    assert expected == reference_decode(stream)

    chunked, decoder = decode_chunks(split_at(stream, [c for c in cuts if c <= len(stream)]))
    assert chunked == expected
    assert decoder.has_partial == whole.has_partial
    assert decoder.last_event_id == whole.last_event_id
    assert decoder.retry == whole.retry


@PROPERTY
@given(
    stream=noisy_bytes,
    cuts=st.lists(st.integers(0, 400), max_size=12),
    limit=st.integers(1, 40),
)
def test_size_limit_split_invariant(stream: bytes, cuts: list[int], limit: int) -> None:
    """Whether the limit trips depends on the bytes only, never on the chunking."""

    def outcome(chunks: list[bytes]) -> list[ServerSentEvent] | None:
        try:
            return decode_chunks(chunks, max_event_size=limit)[0]
        except SSEProtocolError:
            return None

    whole = outcome([stream])
    chunked = outcome(split_at(stream, [c for c in cuts if c <= len(stream)]))
    assert (whole is None) == (chunked is None)
    if whole is not None:
        assert whole == chunked == reference_decode(stream)
