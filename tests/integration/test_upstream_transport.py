"""The proxy's upstream connections over real sockets: HTTP/2 and TLS.

The upstream is the simulated OpenAI server behind hypercorn, on a loopback
port, optionally with a certificate from a throwaway CA (trustme): the CA a
TLS-inspecting proxy would present, unknown to the system's trust store.
The proxy reaches it with the provider kind ``openai``, through the real
transport (httpcore2's pool, h2 for HTTP/2).
"""

from __future__ import annotations

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


async def start(nursery: trio.Nursery, base_url: str, *, http2: bool) -> httpx.AsyncClient:
    provider = ProviderConfig(kind="openai", base_url=base_url, api_key="k", http2=http2)
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
