"""The official `openai` Python SDK (the 2.x line, as LlamaIndex pins it), through the proxy.

tests/integration covers the SDK 3.x in depth; here: what a team relies on
without thinking about it, the SDK's own retry policy and the request id.
"""

from __future__ import annotations

import time

import pytest

from tests.clients._support import require_clients_venv

require_clients_venv()

import openai  # noqa: E402

from tests.clients._recorder import Recorder  # noqa: E402

RATE_LIMITED = [{"role": "user", "content": "Are you busy? [sim:status=429]"}]


def test_sdk_is_the_2x_line() -> None:
    assert openai.__version__.startswith("2."), openai.__version__


def test_429_with_retry_after_is_retried_once_then_raises_rate_limit_error(
    rate_limit_base_url: str,
) -> None:
    recorder = Recorder()
    with recorder.client() as http, openai.OpenAI(
        base_url=rate_limit_base_url, api_key="unused", max_retries=1, http_client=http
    ) as client:
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="auto", messages=RATE_LIMITED)
        elapsed = time.monotonic() - started

    # The first attempt and one retry, the SDK having waited what retry-after said.
    assert [e.status for e in recorder.exchanges] == [429, 429]
    assert all(e.headers["retry-after"] == "1" for e in recorder.exchanges)
    assert elapsed >= 1.0
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.request_id == recorder.last.headers["x-request-id"]


def test_max_retries_zero_raises_at_once(rate_limit_base_url: str) -> None:
    recorder = Recorder()
    with recorder.client() as http, openai.OpenAI(
        base_url=rate_limit_base_url, api_key="unused", max_retries=0, http_client=http
    ) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="auto", messages=RATE_LIMITED)
    assert len(recorder.exchanges) == 1


def test_request_id_and_routing_headers_reach_the_sdk(base_url: str) -> None:
    with openai.OpenAI(base_url=base_url, api_key="unused") as client:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Hello"}]
        )
        completion = raw.parse()
        # The SDK's documented accessor for OpenAI's request id (`_request_id` in
        # both the 2.x and 3.x lines).
        assert completion._request_id == raw.headers["x-request-id"]
        assert completion._request_id.startswith("req_")
        assert raw.headers["x-tlproxy-tier"] == "premium"  # first turn
        assert raw.headers["x-tlproxy-rule"] == "first-turn"
        assert completion.choices[0].message.content


def test_streaming_with_usage(base_url: str) -> None:
    with openai.OpenAI(base_url=base_url, api_key="unused") as client:
        stream = client.chat.completions.create(
            model="economy", messages=[{"role": "user", "content": "Count to three"}],
            stream=True, stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_embeddings_are_asked_for_in_base64_and_decoded(base_url: str) -> None:
    recorder = Recorder()
    with recorder.client() as http, openai.OpenAI(
        base_url=base_url, api_key="unused", http_client=http
    ) as client:
        result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert recorder.last.body["encoding_format"] == "base64"  # the SDK's default
    assert [len(d.embedding) for d in result.data] == [256, 256]
    assert all(isinstance(x, float) for x in result.data[0].embedding)


def test_unsupported_endpoint_is_not_found_error_in_words(base_url: str) -> None:
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            client.completions.create(model="auto", prompt="Once upon a time")
        assert "/v1/completions is not supported by this proxy" in caught.value.message
        with pytest.raises(openai.NotFoundError):
            client.moderations.create(input="Hello")
        # The Responses API is served, but not its conversation objects.
        with pytest.raises(openai.NotFoundError):
            client.conversations.create()
