"""The proxy's upstream connections over real sockets: HTTP/2, TLS, and HTTP proxies.

The upstream is the simulated OpenAI server behind hypercorn, on a loopback
port, optionally with a certificate from a throwaway CA (trustme): the CA a
TLS-inspecting proxy would present, unknown to the system's trust store.
The proxy reaches it with the provider kind ``openai``, through the real
transport (httpcore2's pool, h2 for HTTP/2).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from tests.integration.conftest import start_proxy
from tlproxy.config import Config, ModelConfig, ProviderConfig, SimModelProfile
from tlproxy.sim import SimUpstream

MODEL = "gpt-up"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}


class Recorder:
    """The sim, noting the HTTP version of every request it is sent."""

    def __init__(self, sim: SimUpstream) -> None:
        self.sim = sim
        self.versions: list[str] = []

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http":
            self.versions.append(scope["http_version"])
        await self.sim(scope, receive, send)  # type: ignore[arg-type]


async def start_upstream(
    nursery: trio.Nursery, cert: trustme.LeafCert | None, tmp_path: Path
) -> tuple[Recorder, str]:
    """The sim on a loopback port (TLS with `cert`); the recorder and its base URL."""
    recorder = Recorder(SimUpstream({MODEL: SimModelProfile(tokens=5)}, api_key="k"))
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.0
    if cert is not None:
        certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
        cert.cert_chain_pems[0].write_to_path(str(certfile))
        cert.private_key_pem.write_to_path(str(keyfile))
        config.certfile, config.keyfile = str(certfile), str(keyfile)
    addresses = await nursery.start(functools.partial(hypercorn_serve, recorder, config))
    return recorder, addresses[0] + "/v1"


async def start(nursery: trio.Nursery, base_url: str, *, http2: bool,
                proxy: str | None = None) -> httpx.AsyncClient:
    provider = ProviderConfig(kind="openai", base_url=base_url, api_key="k", http2=http2,
                              proxy=proxy)
    config = Config(providers={"up": provider},
                    models=[ModelConfig(id=MODEL, provider="up", tier="premium")])
    proxy = await start_proxy(nursery, config)
    return httpx.AsyncClient(base_url=proxy.url, timeout=10)


async def ask(http: httpx.AsyncClient) -> tuple[str, str]:
    """A JSON answer's text and a streamed answer's text, through the proxy."""
    async with http:
        answer = await http.post("/v1/chat/completions", json=BODY)
        assert answer.status_code == 200, answer.text
        streamed = ""
        async with http.stream("POST", "/v1/chat/completions",
                               json={**BODY, "stream": True}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    chunk = httpx.Response(200, content=line[6:]).json()
                    for choice in chunk["choices"]:
                        streamed += choice["delta"].get("content") or ""
    return answer.json()["choices"][0]["message"]["content"], streamed


@pytest.mark.parametrize(("http2", "version"), [(False, "1.1"), (True, "2")])
async def test_plain_http_upstream_is_spoken_as_configured(
    nursery: trio.Nursery, tmp_path: Path, http2: bool, version: str
) -> None:
    # http2 over a plain http:// URL is HTTP/2 with prior knowledge (h2c).
    upstream, base_url = await start_upstream(nursery, None, tmp_path)
    text, streamed = await ask(await start(nursery, base_url, http2=http2))
    assert text and streamed == text
    assert upstream.versions and set(upstream.versions) == {version}


@pytest.mark.parametrize(("http2", "version"), [(False, "1.1"), (True, "2")])
async def test_tls_upstream_is_trusted_through_ssl_cert_file(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    http2: bool, version: str,
) -> None:
    # What a user behind a TLS-inspecting proxy sets: SSL_CERT_FILE names a
    # bundle holding the CA that signs the certificates the proxy presents.
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    upstream, base_url = await start_upstream(nursery, ca.issue_cert("127.0.0.1"), tmp_path)
    assert base_url.startswith("https://")
    text, streamed = await ask(await start(nursery, base_url, http2=http2))
    assert text and streamed == text
    # Over TLS, HTTP/2 is negotiated (ALPN), HTTP/1.1 otherwise.
    assert upstream.versions and set(upstream.versions) == {version}


async def test_tls_upstream_outside_the_trust_store_is_refused(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    ca = trustme.CA()
    upstream, base_url = await start_upstream(nursery, ca.issue_cert("127.0.0.1"), tmp_path)
    async with await start(nursery, base_url, http2=False) as http:
        answer = await http.post("/v1/chat/completions", json=BODY)
    assert answer.status_code == 502
    assert "ConnectError" in answer.json()["error"]["message"]
    assert upstream.versions == []  # no request was ever sent


class ConnectProxy:
    """An HTTP proxy as a company's egress has one: CONNECT tunnels only, Basic auth.

    Every host name resolves to this machine's loopback, so an upstream named
    ``upstream.test`` is reached without any DNS, as only the proxy resolves
    the name a client asks it to CONNECT to.
    """

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        self.tunnels: list[str] = []
        self.refused = 0

    async def serve(self, nursery: trio.Nursery) -> str:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, self.handle, listeners)
        return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"

    async def handle(self, client: trio.SocketStream) -> None:
        async with client:
            head = b""
            while b"\r\n\r\n" not in head:
                data = await client.receive_some(65536)
                if not data:
                    return
                head += data
            head, _, rest = head.partition(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n")[0].decode().split(" ")
            headers = {k.strip().lower(): v.strip() for k, _, v in (
                line.decode().partition(":") for line in head.split(b"\r\n")[1:])}
            expected = None if self.credentials is None else "Basic " + base64.b64encode(
                self.credentials.encode()).decode()
            if method != "CONNECT" or headers.get("proxy-authorization") != expected:
                self.refused += 1
                await client.send_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                      b"content-length: 0\r\n\r\n")
                return
            self.tunnels.append(target)
            _, _, port = target.rpartition(":")
            async with await trio.open_tcp_stream("127.0.0.1", int(port)) as upstream:
                await client.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    await upstream.send_all(rest)
                async with trio.open_nursery() as pipes:
                    pipes.start_soon(_pipe, client, upstream, pipes.cancel_scope)
                    pipes.start_soon(_pipe, upstream, client, pipes.cancel_scope)


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream,
                done: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except trio.BrokenResourceError:
        pass
    done.cancel()


async def _named_tls_upstream(nursery: trio.Nursery, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> tuple[Recorder, str]:
    """The sim over TLS, named ``upstream.test`` (trusted through SSL_CERT_FILE)."""
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    upstream, base_url = await start_upstream(nursery, ca.issue_cert("upstream.test"), tmp_path)
    return upstream, base_url.replace("127.0.0.1", "upstream.test")


@pytest.mark.parametrize("how", ["config", "environment"])
async def test_an_upstream_is_reached_through_an_http_proxy(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str,
) -> None:
    # A network whose only way out is a proxy: the upstream's name resolves
    # nowhere but at the proxy, which asks for credentials.
    upstream, base_url = await _named_tls_upstream(nursery, tmp_path, monkeypatch)
    relay = ConnectProxy(credentials="team:s3cret")
    address = await relay.serve(nursery)
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxy = f"http://team:s3cret@{address}"
    if how == "environment":
        monkeypatch.setenv("HTTPS_PROXY", proxy)
    http = await start(nursery, base_url, http2=False,
                       proxy=proxy if how == "config" else None)
    text, streamed = await ask(http)
    assert text and streamed == text
    port = base_url.split(":")[2].split("/")[0]
    assert relay.tunnels and set(relay.tunnels) == {f"upstream.test:{port}"}
    assert relay.refused == 0
    assert upstream.versions


async def test_a_proxy_that_refuses_is_a_502_that_keeps_its_credentials(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream, base_url = await _named_tls_upstream(nursery, tmp_path, monkeypatch)
    relay = ConnectProxy(credentials="team:s3cret")
    address = await relay.serve(nursery)
    async with await start(nursery, base_url, http2=False,
                           proxy=f"http://team:wrong-pw@{address}") as http:
        answer = await http.post("/v1/chat/completions", json=BODY)
    assert answer.status_code == 502
    assert "wrong-pw" not in answer.text
    assert relay.refused >= 1 and relay.tunnels == []
    assert upstream.versions == []
