"""SIGTERM drains: open streams finish with [DONE], new connections are refused, exit 0.

And a worker that dies on its own stops the server, so it does not serve on at
reduced capacity unnoticed.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.server_process import ServerProcess

CONFIG = """
[server]
graceful_timeout = 20.0

[ledger]
enabled = false

[providers.sim]
kind = "sim"
[providers.sim.sim_models.slow]
ttft_ms = 50.0
inter_token_ms = 50.0
tokens = 30

[[models]]
id = "slow"
provider = "sim"
tier = "economy"

[[models]]
id = "slow-premium"
upstream_model = "slow"
provider = "sim"
tier = "premium"
"""


async def _stream(http: httpx.AsyncClient, results: list[bytes], started: trio.Event,
                  count: list[int], total: int) -> None:
    body = {"model": "economy", "stream": True,
            "messages": [{"role": "user", "content": "a long answer please"}]}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        data = b""
        counted = False
        async for chunk in response.aiter_raw():
            data += chunk
            if not counted and b"content" in data:
                counted = True
                count[0] += 1
                if count[0] == total:
                    started.set()
        results.append(data)


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_drains_open_streams(tmp_path: Path, workers: int) -> None:
    config = tmp_path / "tlproxy.toml"
    config.write_text(CONFIG)
    server = ServerProcess(config, workers=workers)
    try:
        await trio.to_thread.run_sync(server.wait_ready)
        results: list[bytes] = []
        started = trio.Event()
        count = [0]
        total = 50
        limits = httpx.Limits(max_connections=total)
        async with (httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as http,
                    trio.open_nursery() as nursery):
            for _ in range(total):
                nursery.start_soon(_stream, http, results, started, count, total)
            with trio.fail_after(20):
                await started.wait()
            # Every stream is mid-way (about 1.5 s long) when the signal lands.
            server.terminate()
            sent = time.monotonic()
            await trio.sleep(0.3)
            with pytest.raises(httpx.ConnectError):
                async with httpx.AsyncClient(base_url=server.url) as late:
                    await late.get("/healthz")
        assert len(results) == total
        assert all(r.rstrip().endswith(b"data: [DONE]") for r in results)
        code = await trio.to_thread.run_sync(server.wait, 20.0)
        assert code == 0
        assert time.monotonic() - sent < 20.0
    finally:
        server.kill()


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_a_dead_worker_stops_the_server(tmp_path: Path) -> None:
    config = tmp_path / "tlproxy.toml"
    config.write_text(CONFIG)
    server = ServerProcess(config, workers=2)
    try:
        await trio.to_thread.run_sync(server.wait_ready)
        first, second = _children(server.process.pid)
        os.kill(first, signal.SIGKILL)
        code = await trio.to_thread.run_sync(server.wait, 20.0)
        assert code == 128 + signal.SIGKILL
        _, stderr = server.process.communicate()
        assert f"worker {first} exited (killed by SIGKILL); stopping the others" in stderr
        with pytest.raises(ProcessLookupError):
            os.kill(second, 0)
    finally:
        server.kill()


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request; read until its chunked body ends or the server closes."""
    sock.sendall(request)
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return data


@pytest.mark.parametrize("after", [0.0, 0.05])
async def test_a_request_on_an_idle_keep_alive_connection_during_drain_never_hangs(
    tmp_path: Path, after: float
) -> None:
    """Answered, or the connection closed at once (the request never ran, so a
    client may retry it): never left waiting for the grace period (20 s here)."""
    config = tmp_path / "tlproxy.toml"
    config.write_text(CONFIG)
    server = ServerProcess(config, workers=1)
    try:
        await trio.to_thread.run_sync(server.wait_ready)
        request = b"GET /healthz HTTP/1.1\r\nHost: tlproxy\r\n\r\n"
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            assert b'{"status":"ok"}' in await trio.to_thread.run_sync(_exchange, sock, request)
            server.terminate()
            await trio.sleep(after)
            with trio.fail_after(5):
                answer = await trio.to_thread.run_sync(_exchange, sock, request)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 200"), answer
        # Well inside the 20 s grace period: nothing was left waiting for it.
        assert await trio.to_thread.run_sync(server.wait, 10.0) == 0
    finally:
        server.kill()


def _h2c_after_drain(url: str, server: ServerProcess, after: float) -> int | None:
    """One h2c request, SIGTERM, another on the same connection: its status, or
    None when the server closed the connection (with or without a GOAWAY first)."""
    with httpx.Client(http1=False, http2=True, base_url=url, timeout=10) as client:
        assert client.get("/healthz").http_version == "HTTP/2"
        server.terminate()
        time.sleep(after)
        try:
            return client.get("/healthz").status_code
        except httpx.TransportError:  # closed: a GOAWAY, a reset or a plain close
            return None


@pytest.mark.parametrize("after", [0.0, 0.05])
async def test_an_h2c_request_during_drain_never_hangs(tmp_path: Path, after: float) -> None:
    config = tmp_path / "tlproxy.toml"
    config.write_text(CONFIG)
    server = ServerProcess(config, workers=1)
    try:
        await trio.to_thread.run_sync(server.wait_ready)
        with trio.fail_after(5):
            outcome = await trio.to_thread.run_sync(_h2c_after_drain, server.url, server, after)
        assert outcome in (200, None), outcome
        # Well inside the 20 s grace period: nothing was left waiting for it.
        assert await trio.to_thread.run_sync(server.wait, 10.0) == 0
    finally:
        server.kill()
