"""`tlproxy.providers.transport`: the one boundary between httpcore2 and the adapters.

Requests go to a `MockPool` (httpcore2's seam); what goes on the wire is
checked as bytes, what comes back is decoded whatever its encoding and
however it is cut, and every exception from below leaves as `UpstreamError`.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import httpcore2
import httpx2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.unit.adapter_support import MockPool, Split
from tlproxy.config import ProviderConfig
from tlproxy.errors import UpstreamError
from tlproxy.providers.transport import (
    Endpoint,
    Reply,
    Transport,
    _Shards,
    map_exceptions,
    proxy_url,
    shard_sizes,
    transport_error,
)


@pytest.mark.parametrize(
    ("url", "host", "target"),
    [
        ("https://api.test/v1/chat", b"api.test", b"/v1/chat"),
        ("http://127.0.0.1:8090/v1/x?alt=sse", b"127.0.0.1:8090", b"/v1/x?alt=sse"),
        ("http://[::1]:8090/v1", b"[::1]:8090", b"/v1"),
    ],
)
def test_endpoint_is_built_once_with_every_header_as_bytes(
    url: str, host: bytes, target: bytes
) -> None:
    endpoint = Endpoint(url, {"Content-Type": "application/json", "x-api-key": None})
    assert endpoint.url.target == target
    assert endpoint.headers == [
        (b"host", host),
        (b"user-agent", b"tlproxy"),
        (b"accept-encoding", b"gzip, deflate"),
        (b"content-type", b"application/json"),  # names lower-cased; no key, no header
    ]


async def test_a_request_carries_its_body_length_and_the_configured_timeouts() -> None:
    seen: list[httpcore2.Request] = []

    class Recording(MockPool):
        async def handle_async_request(self, request: httpcore2.Request) -> httpcore2.Response:
            seen.append(request)
            return await super().handle_async_request(request)

    transport = Transport(Recording(lambda r: httpx2.Response(200, content=b"{}")),
                          connect_timeout=3.0, read_timeout=7.0)
    reply = await transport.send(Endpoint("http://up/v1/x", {}), b'{"a":1}')
    assert (reply.status, reply.content) == (200, b"{}")
    [request] = seen
    assert (request.method, request.headers[-1]) == (b"POST", (b"content-length", b"7"))
    assert request.extensions["timeout"] == {
        "connect": 3.0, "read": 7.0, "write": 7.0, "pool": 7.0,
    }


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODINGS = {
    "identity": lambda b: b,
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "raw deflate": raw_deflate,  # sent as "deflate" by some servers
}


@example(body=b"", encoding="raw deflate", size=1)  # raw or zlib: undecided after one byte
@given(
    body=st.binary(max_size=2000),
    encoding=st.sampled_from(sorted(ENCODINGS)),
    size=st.integers(min_value=1, max_value=64),
)
async def test_a_body_is_decoded_however_it_is_cut(body: bytes, encoding: str, size: int) -> None:
    wire = ENCODINGS[encoding](body)
    name = "deflate" if encoding == "raw deflate" else encoding

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-encoding": name}, stream=Split(wire, size))

    transport = Transport(MockPool(handler))
    async with transport.stream(Endpoint("http://up/x", {}), b"") as reply:
        parts = [part async for part in reply.chunks()]
    assert b"".join(parts) == body
    assert all(parts)  # no empty reads passed on
    assert (await transport.send(Endpoint("http://up/x", {}), b"")).content == body


@pytest.mark.parametrize(
    ("headers", "wire", "message"),
    [
        ({"content-encoding": "br"}, b"\x0b\x02\x80hi\x03",
         "the upstream provider sent a body in an encoding it was not offered"),
        ({"content-encoding": "gzip"}, b"not gzip at all",
         "the upstream provider sent a malformed compressed body"),
    ],
)
async def test_a_body_that_cannot_be_decoded_is_the_upstreams_fault(
    headers: dict[str, str], wire: bytes, message: str
) -> None:
    transport = Transport(
        MockPool(lambda r: httpx2.Response(200, headers=headers, stream=Split(wire)))
    )
    with pytest.raises(UpstreamError) as caught:
        await transport.send(Endpoint("http://up/x", {}), b"")
    assert (caught.value.message, caught.value.status, caught.value.retryable) == (
        message, 502, True,
    )


@pytest.mark.parametrize(
    ("exc", "status", "unsent"),
    [
        # Never sent: the upstream bills nothing.
        (httpcore2.ConnectError("refused"), 502, True),
        (httpcore2.ConnectTimeout("no SYN-ACK"), 504, True),
        (httpcore2.PoolTimeout("no free connection"), 504, True),
        # Sent, then failed.
        (httpcore2.ReadTimeout("slow"), 504, False),
        (httpcore2.WriteTimeout("slow"), 504, False),
        (httpcore2.ReadError("reset"), 502, False),
        (httpcore2.WriteError("reset"), 502, False),
        (httpcore2.RemoteProtocolError("cut"), 502, False),
        (httpcore2.LocalProtocolError("bad header"), 502, False),
        (httpcore2.UnsupportedProtocol("ftp"), 502, False),
        (zlib.error("bad block"), 502, False),
    ],
)
async def test_every_exception_from_below_leaves_as_an_upstream_error(
    exc: Exception, status: int, unsent: bool
) -> None:
    with pytest.raises(UpstreamError) as caught, map_exceptions():
        raise exc
    assert (caught.value.status, caught.value.unsent, caught.value.retryable) == (
        status, unsent, True,
    )
    assert caught.value.message == transport_error(exc).message


@pytest.mark.parametrize("where", ["connecting", "reading"])
async def test_the_boundary_holds_while_connecting_and_while_reading_a_stream(where: str) -> None:
    class Broken(httpx2.AsyncByteStream):
        async def __aiter__(self) -> Any:
            yield b"data: {}\n\n"
            raise httpcore2.ReadError("reset")

    def handler(request: httpx2.Request) -> httpx2.Response:
        if where == "connecting":
            raise httpcore2.ConnectError("refused")
        return httpx2.Response(200, stream=Broken())

    transport = Transport(MockPool(handler))
    received: list[bytes] = []
    with pytest.raises(UpstreamError) as caught:
        async with transport.stream(Endpoint("http://up/x", {}), b"") as reply:
            async for part in reply.chunks():
                received.append(part)
    assert caught.value.unsent == (where == "connecting")
    assert received == ([] if where == "connecting" else [b"data: {}\n\n"])


async def test_a_ping_is_true_for_any_answer_and_false_when_nothing_answers() -> None:
    assert await Transport(MockPool(lambda r: httpx2.Response(401))).ping(
        Endpoint("http://up/models", {}))

    def refused(request: httpx2.Request) -> httpx2.Response:
        raise httpcore2.ConnectError("refused")

    assert not await Transport(MockPool(refused)).ping(Endpoint("http://up/models", {}))


def test_reply_headers_are_read_by_lower_case_name() -> None:
    reply = Reply(429, [(b"Retry-After", b"12"), (b"content-type", b"application/json")])
    assert reply.headers == {"retry-after": "12", "content-type": "application/json"}


@pytest.mark.parametrize(
    ("connections", "sizes"),
    [(1000, [125] * 8), (10, [2, 2, 1, 1, 1, 1, 1, 1]), (3, [1, 1, 1]), (1, [1])],
)
def test_max_connections_is_split_over_the_shards_exactly(
    connections: int, sizes: list[int]
) -> None:
    assert shard_sizes(connections, 8) == sizes


async def test_requests_go_round_robin_over_the_shards_and_all_are_closed() -> None:
    served: list[int] = []

    def pool(number: int) -> MockPool:
        def handler(request: httpx2.Request) -> httpx2.Response:
            served.append(number)
            return httpx2.Response(200, content=b"{}")
        return MockPool(handler)

    pools = [pool(n) for n in range(3)]
    transport = Transport(_Shards(list(pools)))
    for _ in range(7):
        await transport.send(Endpoint("http://up/x", {}), b"")
    assert served == [0, 1, 2, 0, 1, 2, 0]
    await transport.aclose()
    assert all(p.closed for p in pools)


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                    "all_proxy", "NO_PROXY", "no_proxy", "REQUEST_METHOD")


@pytest.mark.parametrize(("base_url", "proxy", "environ", "expected"), [
    # Nothing set: straight to the upstream.
    ("https://api.openai.com/v1", None, {}, None),
    # The environment, as curl and the SDKs read it.
    ("https://api.openai.com/v1", None, {"HTTPS_PROXY": "http://egress:3128"},
     "http://egress:3128"),
    ("https://api.openai.com/v1", None,
     {"HTTPS_PROXY": "http://upper:3128", "https_proxy": "http://lower:3128"},
     "http://lower:3128"),
    ("https://api.openai.com/v1", None, {"HTTP_PROXY": "http://egress:3128"}, None),
    ("http://vllm.internal:8000/v1", None, {"HTTP_PROXY": "http://egress:3128"},
     "http://egress:3128"),
    ("https://api.openai.com/v1", None, {"ALL_PROXY": "http://egress:3128"},
     "http://egress:3128"),
    # Without a scheme, as many set it: an http proxy, as curl reads it.
    ("https://api.openai.com/v1", None, {"HTTPS_PROXY": "egress:3128"}, "http://egress:3128"),
    # NO_PROXY excepts a host, a domain, everything.
    ("https://api.openai.com/v1", None,
     {"HTTPS_PROXY": "http://egress:3128", "NO_PROXY": "api.openai.com"}, None),
    ("https://api.openai.com/v1", None,
     {"HTTPS_PROXY": "http://egress:3128", "NO_PROXY": ".openai.com,example.org"}, None),
    ("https://api.openai.com/v1", None,
     {"HTTPS_PROXY": "http://egress:3128", "NO_PROXY": "*"}, None),
    ("https://api.anthropic.com/v1", None,
     {"HTTPS_PROXY": "http://egress:3128", "NO_PROXY": ".openai.com"}, "http://egress:3128"),
    # A loopback upstream (the built-in simulator, a model server beside us): never.
    ("http://127.0.0.1:8001/v1", None, {"HTTP_PROXY": "http://egress:3128"}, None),
    ("http://localhost:8001/v1", None, {"HTTP_PROXY": "http://egress:3128"}, None),
    ("http://[::1]:8001/v1", None, {"HTTP_PROXY": "http://egress:3128"}, None),
    (None, None, {"HTTP_PROXY": "http://egress:3128"}, None),
    # A SOCKS proxy is not spoken: direct, with a warning.
    ("https://api.openai.com/v1", None, {"ALL_PROXY": "socks5://egress:1080"}, None),
    # The provider's own setting wins over the environment.
    ("https://api.openai.com/v1", "http://mine:8080", {"HTTPS_PROXY": "http://egress:3128"},
     "http://mine:8080"),
    ("https://api.openai.com/v1", "none", {"HTTPS_PROXY": "http://egress:3128"}, None),
    ("http://127.0.0.1:8001/v1", "http://mine:8080", {}, "http://mine:8080"),
])
def test_the_proxy_a_provider_goes_through(
    monkeypatch: pytest.MonkeyPatch, base_url: str | None, proxy: str | None,
    environ: dict[str, str], expected: str | None,
) -> None:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    config = ProviderConfig(kind="openai" if base_url else "sim", base_url=base_url,
                            proxy=proxy)
    assert proxy_url(config) == expected
