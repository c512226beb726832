"""Arbitrary bytes and arbitrary JSON at the real server: never a 5xx.

A 5xx tells the SDKs to retry, so a client mistake answered with one is
retried for nothing and reported as our outage. Whatever arrives (bytes that
are not JSON, JSON of any shape and nesting, strings holding escaped lone
surrogates, numbers past 64 bits, every known field with a wrong type) is
answered, and a refusal is a 4xx in OpenAI's envelope.

Each server starts once for the module, on port 0, with its own trio loop in
a thread so that hypothesis can drive a plain synchronous client through many
examples: one on the built-in simulated upstream (the OpenAI protocol, with
the semantic classifier on), one translating to simulated Anthropic and
Gemini upstreams through the native adapters.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import fast_config
from tests.integration.test_adapters import KEYS, MODELS, start_stack
from tests.openai_schema import validate
from tlproxy.config import ClassifierConfig, Condition, LedgerConfig, Policy, Rule
from tlproxy.server import serve
from tlproxy.wire import MAX_DEPTH

# Bounded so the module takes seconds on a small shared machine; every example
# is one loopback request, and hypothesis keeps no deadline on their speed.
FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class _ServerThread:
    """A proxy on its own trio loop in a thread; `native` puts the Anthropic and Gemini
    adapters in front of simulated upstreams speaking those protocols."""

    def __init__(self, *, native: bool) -> None:
        self.url = ""
        self._native = native
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            if self._native:
                running, _ = await start_stack(nursery, KEYS)
            else:
                # With the semantic classifier on, so every message also goes
                # through the text extraction and the embedding call it makes.
                semantic = Rule(name="code", tier="premium",
                                when=Condition(semantic_task=["code"]))
                config = fast_config(ledger=LedgerConfig(enabled=False),
                                     classifier=ClassifierConfig(enabled=True),
                                     policy=Policy(rules=[semantic]))
                running = await nursery.start(functools.partial(
                    serve, config, host="127.0.0.1", port=0))
            self.url = running.url
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()
        if self._error is not None:
            raise self._error


def _client(native: bool) -> Iterator[httpx.Client]:
    server = _ServerThread(native=native)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """The proxy on its built-in simulated upstream (the OpenAI protocol)."""
    yield from _client(native=False)


@pytest.fixture(scope="module")
def native() -> Iterator[httpx.Client]:
    """The proxy translating to Anthropic (premium) and Gemini (economy, embeddings)."""
    yield from _client(native=True)


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        validate("ErrorResponse", response.json())
        assert "Traceback" not in response.text


def _post(http: httpx.Client, path: str, body: bytes) -> None:
    _check(http.post(path, content=body, headers={"content-type": "application/json"}))


ENDPOINTS = st.sampled_from(["/v1/chat/completions", "/v1/embeddings"])

# Strings of any code point but lone surrogates, which a str can hold but UTF-8
# cannot; those are sent as JSON escapes (below) instead.
TEXT = st.text(max_size=20)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 2**63, 2**64, 10**30, 1e308, -1e308, 5e-324]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=20,
)

# Every field the proxy or an adapter reads, each to receive a value of any type.
CHAT_FIELDS = [
    "model", "messages", "stream", "stream_options", "n", "tools", "tool_choice",
    "parallel_tool_calls", "functions", "function_call", "response_format", "max_tokens",
    "max_completion_tokens", "stop", "seed", "user", "metadata", "temperature", "top_p",
    "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias",
    "reasoning_effort", "modalities", "audio", "prediction", "service_tier", "store",
]
EMBEDDING_FIELDS = ["model", "input", "encoding_format", "dimensions", "user"]
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id", "function_call",
                  "refusal"]


def _valid_chat() -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": "Hello"}]}


def _nested(depth: int, as_list: bool) -> str:
    """`depth` arrays or objects inside one another, as text (json.dumps would recurse)."""
    opening, closing = ("[", "]") if as_list else ('{"k": ', "}")
    return opening * depth + "1" + closing * depth


@given(body=st.binary(max_size=300), path=ENDPOINTS)
@FUZZ
def test_arbitrary_bytes_are_never_a_5xx(http: httpx.Client, body: bytes, path: str) -> None:
    _post(http, path, body)


@given(body=JSON, path=ENDPOINTS)
@FUZZ
def test_arbitrary_json_is_never_a_5xx(http: httpx.Client, body: Any, path: str) -> None:
    _post(http, path, json.dumps(body).encode())


@given(field=st.sampled_from(CHAT_FIELDS), value=JSON, stream=st.booleans())
@FUZZ
def test_any_value_in_a_chat_field_is_never_a_5xx(
    http: httpx.Client, field: str, value: Any, stream: bool
) -> None:
    body = {**_valid_chat(), "stream": stream, field: value}
    _post(http, "/v1/chat/completions", json.dumps(body).encode())


@given(field=st.sampled_from(MESSAGE_FIELDS), value=JSON,
       role=st.sampled_from(["user", "assistant", "system", "tool", "developer"]))
@FUZZ
def test_any_value_in_a_message_field_is_never_a_5xx(
    http: httpx.Client, field: str, value: Any, role: str
) -> None:
    message = {"role": role, "content": "Hi", "tool_call_id": "call_1", field: value}
    body = {**_valid_chat(), "messages": [{"role": "user", "content": "Hi"}, message]}
    _post(http, "/v1/chat/completions", json.dumps(body).encode())


@given(field=st.sampled_from(CHAT_FIELDS), value=JSON, stream=st.booleans(),
       model=st.sampled_from(sorted(MODELS.values())))
@FUZZ
def test_any_value_in_a_chat_field_is_never_a_5xx_through_the_native_adapters(
    native: httpx.Client, field: str, value: Any, stream: bool, model: str
) -> None:
    body = {**_valid_chat(), "model": model, "stream": stream, field: value}
    _post(native, "/v1/chat/completions", json.dumps(body).encode())


@given(field=st.sampled_from(MESSAGE_FIELDS), value=JSON,
       role=st.sampled_from(["user", "assistant", "system", "tool", "developer"]),
       model=st.sampled_from(sorted(MODELS.values())))
@FUZZ
def test_any_value_in_a_message_field_is_never_a_5xx_through_the_native_adapters(
    native: httpx.Client, field: str, value: Any, role: str, model: str
) -> None:
    message = {"role": role, "content": "Hi", "tool_call_id": "call_1", field: value}
    body = {**_valid_chat(), "model": model,
            "messages": [{"role": "user", "content": "Hi"}, message]}
    _post(native, "/v1/chat/completions", json.dumps(body).encode())


@given(field=st.sampled_from(EMBEDDING_FIELDS), value=JSON)
@FUZZ
def test_any_value_in_an_embedding_field_is_never_a_5xx(
    http: httpx.Client, field: str, value: Any
) -> None:
    body = {"model": "text-embedding-3-small", "input": "Hello", field: value}
    _post(http, "/v1/embeddings", json.dumps(body).encode())


@given(field=st.sampled_from(EMBEDDING_FIELDS), value=JSON)
@FUZZ
def test_any_value_in_an_embedding_field_is_never_a_5xx_through_gemini(
    native: httpx.Client, field: str, value: Any
) -> None:
    body = {"model": "gemini-embedding-001", "input": "Hello", field: value}
    _post(native, "/v1/embeddings", json.dumps(body).encode())


@given(depth=st.integers(min_value=1, max_value=3 * MAX_DEPTH) | st.integers(1000, 5000),
       as_list=st.booleans(), path=ENDPOINTS,
       field=st.sampled_from(["metadata", "tools", "x_vendor", "input", "messages"]))
@FUZZ
def test_any_nesting_is_never_a_5xx(
    http: httpx.Client, depth: int, as_list: bool, path: str, field: str
) -> None:
    body = json.dumps({**_valid_chat(), "input": "Hello", field: None})
    body = body.replace(f'"{field}": null', f'"{field}": {_nested(depth, as_list)}')
    _post(http, path, body.encode())


@given(code=st.integers(min_value=0xD800, max_value=0xDFFF), path=ENDPOINTS,
       before=TEXT, pair=st.booleans())
@FUZZ
def test_escaped_surrogates_are_never_a_5xx(
    http: httpx.Client, code: int, path: str, before: str, pair: bool
) -> None:
    # An escaped surrogate, alone or followed by a low one (a valid pair when
    # the first is high); JSON allows writing either.
    escape = f"\\u{code:04x}" + ("\\udc00" if pair else "")
    text = json.dumps(before)[1:-1] + escape
    for field in ("content", "input"):
        body = json.dumps({**_valid_chat(), "input": "x"}).replace(
            '"Hello"' if field == "content" else '"x"', f'"{text}"')
        _post(http, path, body.encode())


@given(junk=st.binary(min_size=1, max_size=8), path=ENDPOINTS)
@FUZZ
def test_bytes_that_are_not_utf8_inside_a_string_are_never_a_5xx(
    http: httpx.Client, junk: bytes, path: str
) -> None:
    body = (b'{"model": "auto", "input": "x' + junk.replace(b'"', b"").replace(b"\\", b"")
            + b'", "messages": [{"role": "user", "content": "a' + junk.replace(b'"', b"")
            .replace(b"\\", b"") + b'"}]}')
    _post(http, path, body)


@pytest.mark.parametrize("value", [math.pi, 2**64, 10**30, -1, 200_000])
def test_unservable_numbers_are_400s(http: httpx.Client, value: float) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        response = http.post("/v1/chat/completions", json={**_valid_chat(), field: value})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == field
