"""Every error leaves the proxy as an OpenAI envelope that makes the SDK raise the right class."""

from __future__ import annotations

import httpx
import msgspec
import openai
import pytest
import trio
from trio.testing import MockClock

from tests.integration.conftest import CLIENT_KEY, fast_config, start_proxy
from tests.integration.sse_wire import read_stream
from tests.openai_schema import validate
from tlproxy.config import ProviderConfig
from tlproxy.server import Running

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", None),
    (b"", None),
    (b"[1, 2]", None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    (b'{"model": "auto", "messages": []}', "messages"),
    (b'{"model": "auto"}', "messages"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "a"}, {"role": 5}]}',
     "messages[1].role"),
    (b'{"model": "auto", "messages": [{"role": "wizard", "content": "a"}]}', "messages[0].role"),
    (b'{"model": 3, "messages": [{"role": "user", "content": "a"}]}', "model"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "a"}], "n": 0}', "n"),
    (b'{"model": "auto", "messages": [{"role": "tool", "content": "a"}]}',
     "messages[0].tool_call_id"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "a"}], "stream": "yes"}',
     "stream"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "a"}], "max_tokens": 0}',
     "max_tokens"),
])
async def test_client_mistakes_are_400_with_param(
    raw: httpx.AsyncClient, body: bytes, param: str | None
) -> None:
    response = await raw.post("/v1/chat/completions", content=body,
                              headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    validate("ErrorResponse", response.json())
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert "Traceback" not in response.text


async def test_sdk_raises_bad_request_for_empty_messages(aclient: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await aclient.chat.completions.create(model="auto", messages=[])
    assert caught.value.param == "messages"


async def test_missing_key_is_401(keyed_proxy: Running) -> None:
    async with openai.AsyncOpenAI(base_url=keyed_proxy.url + "/v1",
                                  api_key="tlp-wrong-key-000000", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="auto", messages=HELLO)
    assert "tlp-wrong-key" not in caught.value.response.text
    async with httpx.AsyncClient(base_url=keyed_proxy.url) as http:
        response = await http.post("/v1/chat/completions", json={"model": "auto",
                                                                 "messages": HELLO})
    assert response.status_code == 401
    validate("ErrorResponse", response.json())


async def test_right_key_is_accepted(keyed_proxy: Running) -> None:
    async with openai.AsyncOpenAI(base_url=keyed_proxy.url + "/v1", api_key=CLIENT_KEY,
                                  max_retries=0) as client:
        completion = await client.chat.completions.create(model="auto", messages=HELLO)
    assert completion.choices[0].message.content


async def test_health_needs_no_key(keyed_proxy: Running) -> None:
    async with httpx.AsyncClient(base_url=keyed_proxy.url) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_body_over_limit_is_413(keyed_proxy: Running) -> None:
    big = "x" * (65 * 1024)
    async with openai.AsyncOpenAI(base_url=keyed_proxy.url + "/v1", api_key=CLIENT_KEY,
                                  max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": big}])
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "request_too_large"


async def test_body_over_limit_without_content_length_is_413(keyed_proxy: Running) -> None:
    async def chunks():  # chunked upload: no content-length to check up front
        for _ in range(70):
            yield b"x" * 1024

    async with httpx.AsyncClient(base_url=keyed_proxy.url) as http:
        response = await http.post(
            "/v1/chat/completions", content=chunks(),
            headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status_code == 413


async def test_upstream_429_passes_through_with_retry_after(aclient: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await aclient.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "[sim:status=429]"}])
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.response.headers["x-request-id"].startswith("req_")


async def test_upstream_500_is_502_internal_server_error(aclient: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await aclient.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "[sim:status=500]"}])
    assert caught.value.status_code == 502


async def test_upstream_error_before_stream_is_an_http_error(raw: httpx.AsyncClient) -> None:
    response = await raw.post("/v1/chat/completions", json={
        "model": "auto", "stream": True,
        "messages": [{"role": "user", "content": "[sim:status=503]"}]})
    assert response.status_code == 503
    validate("ErrorResponse", response.json())


async def test_unreachable_upstream_is_502(nursery: trio.Nursery) -> None:
    base = fast_config()
    dead = ProviderConfig(kind="openai", base_url="http://127.0.0.1:9/v1", connect_timeout=1.0)
    running = await start_proxy(nursery, msgspec.structs.replace(base, providers={"sim": dead}))
    async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x",
                                  max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="auto", messages=HELLO)
    assert caught.value.status_code == 502
    async with httpx.AsyncClient(base_url=running.url) as http:
        assert (await http.get("/readyz")).status_code == 503


async def test_stream_cut_mid_way_ends_with_error_event_and_no_done(
    raw: httpx.AsyncClient, aclient: openai.AsyncOpenAI
) -> None:
    # Continuation off (docs/reliability.md): the cut is the client's to see.
    off = {"x-tlproxy-continuation": "off"}
    raw.headers.update(off)
    stream = await read_stream(raw, {
        "model": "auto", "messages": [{"role": "user", "content": "[sim:cut=3]"}]})
    assert not stream.done
    assert "error" in stream.chunks[-1]
    validate("ErrorResponse", stream.chunks[-1])
    # The role chunk and three content chunks reached the client before the cut.
    assert sum(1 for c in stream.chunks if "choices" in c) == 4
    with pytest.raises(openai.APIError):
        async for _ in await aclient.chat.completions.create(
            model="auto", stream=True, extra_headers=off,
            messages=[{"role": "user", "content": "[sim:cut=3]"}]):
            pass


async def test_slow_body_is_408(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    from tlproxy.config import ServerConfig

    body_timeout = 0.25
    running = await start_proxy(nursery, fast_config(
        server=ServerConfig(body_timeout=body_timeout)))
    host, port = running.url.removeprefix("http://").split(":")
    # A client that announces 200 bytes, sends 10 and stalls.
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\ncontent-length: 200\r\n\r\n{\"model\": ")
        stalled = trio.current_time()
        received = b""
        with trio.fail_after(10):  # a hang guard, in virtual seconds
            while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
                data = await stream.receive_some()
                if not data:
                    break
                received += data
        # Answered the moment the body's time was up.
        assert trio.current_time() - stalled == body_timeout
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in body


async def test_sdk_gets_bad_request_for_output_no_model_can_produce(
    aclient: openai.AsyncOpenAI
) -> None:
    # A 503 here would be retried by the SDK for nothing: no model ever takes this.
    with pytest.raises(openai.BadRequestError) as caught:
        await aclient.chat.completions.create(model="auto", messages=HELLO, max_tokens=200_000)
    assert caught.value.param == "max_tokens"
    assert "maximum is 128000" in caught.value.message


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions",
     b'{"model": "auto", "messages": [{"role": "user", "content": "caf\xe9"}]}'),
    ("/v1/embeddings", b'{"model": "text-embedding-3-small", "input": "caf\xe9"}'),
    ("/v1/chat/completions", b'{"model": "auto", "messages": [{"role": "user", "content": '
     b'"hi"}], "metadata": ' + b"[" * 1_200 + b"]" * 1_200 + b"}"),
    ("/v1/embeddings", b'{"model": "text-embedding-3-small", "input": "hi", "x": '
     + b'{"a":' * 1_200 + b"1" + b"}" * 1_200 + b"}"),
])
async def test_undecodable_bodies_are_400_naming_the_problem(
    raw: httpx.AsyncClient, path: str, body: bytes
) -> None:
    response = await raw.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    validate("ErrorResponse", response.json())
    message = response.json()["error"]["message"]
    assert "not valid UTF-8" in message or "levels deep" in message, message
