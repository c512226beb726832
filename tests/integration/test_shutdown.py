"""SIGTERM drains: open streams finish with [DONE], new connections are refused, exit 0.

And a worker that dies on its own stops the server, so it does not serve on at
reduced capacity unnoticed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

import h11
import httpx
import pytest
import trio

from tests.integration.server_process import ServerProcess

# The grace period is far beyond any hang guard: a server that exits (or a
# request answered) within the guard did not wait for it. Nothing here is
# timed: real processes run at the machine's speed.
GRACE = 600.0
HANG_GUARD = 60.0
CONFIG = f"""
[server]
graceful_timeout = {GRACE}

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
            with trio.fail_after(HANG_GUARD):
                await started.wait()
            # Every stream has begun its answer (about 1.5 s long) when the signal lands.
            server.terminate()
            await trio.to_thread.run_sync(server.wait_refused, HANG_GUARD)
            with pytest.raises(httpx.ConnectError):
                async with httpx.AsyncClient(base_url=server.url) as late:
                    await late.get("/healthz")
        # Drained, not cut: every stream ended with its [DONE]...
        assert len(results) == total
        assert all(r.rstrip().endswith(b"data: [DONE]") for r in results)
        # ...and the server then exited, without waiting out the grace period.
        code = await trio.to_thread.run_sync(server.wait, HANG_GUARD)
        assert code == 0
    finally:
        server.kill()


def _running(pid: int) -> bool:
    """Whether `pid` still runs (an exited orphan may linger as a zombie until reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


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
        code = await trio.to_thread.run_sync(server.wait, HANG_GUARD)
        assert code == 128 + signal.SIGKILL
        _, stderr = server.process.communicate()
        assert f"worker {first} exited (killed by SIGKILL); stopping the others" in stderr
        with pytest.raises(ProcessLookupError):
            os.kill(second, 0)
    finally:
        server.kill()


async def test_workers_of_a_killed_server_drain_and_exit(tmp_path: Path) -> None:
    """The supervisor SIGKILLed (no signal to forward): its workers notice they were
    adopted by another process and exit, rather than serve on unsupervised."""
    config = tmp_path / "tlproxy.toml"
    config.write_text(CONFIG)
    server = ServerProcess(config, workers=2)
    try:
        await trio.to_thread.run_sync(server.wait_ready)
        workers = _children(server.process.pid)
        server.kill()
        with trio.fail_after(HANG_GUARD):
            # Polled: an orphan is not ours to wait for.
            while any(_running(pid) for pid in workers):  # noqa: ASYNC110
                await trio.sleep(0.05)
    finally:
        server.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request; read until its answer ends (h11 frames it) or the server closes.

    A close in the middle of an answer is returned as what came: a request that
    lands on an idle connection the instant the drain begins races hypercorn's
    closing of idle connections, which may close it after the answer's head
    (the app sees the client leave and cancels its work; the client sees a
    connection error it may retry). What matters here is that nothing waits.
    """
    sock.sendall(request)
    reader = h11.Connection(h11.CLIENT)
    data = b""
    while True:
        try:
            event = reader.next_event()
        except h11.RemoteProtocolError:
            return data
        if event is h11.NEED_DATA:
            piece = sock.recv(65536)
            data += piece
            reader.receive_data(piece)  # b"" is the server closing
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return data


# When the request lands: at once after SIGTERM (racing the drain's start), or
# once the server has stopped listening (the drain has begun, for sure).
WHEN = ["at-once", "once-refusing"]


@pytest.mark.parametrize("when", WHEN)
async def test_a_request_on_an_idle_keep_alive_connection_during_drain_never_hangs(
    tmp_path: Path, when: str
) -> None:
    """Answered, or the connection closed at once (the request never ran, so a
    client may retry it): never left waiting for the grace period."""
    config = tmp_path / "tlproxy.toml"
    config.write_text(CONFIG)
    server = ServerProcess(config, workers=1)
    try:
        await trio.to_thread.run_sync(server.wait_ready)
        request = b"GET /healthz HTTP/1.1\r\nHost: tlproxy\r\n\r\n"
        # The socket's timeout is the hang guard: a request left waiting for
        # the grace period fails the test long before the period ends.
        with socket.create_connection(("127.0.0.1", server.port), timeout=HANG_GUARD) as sock:
            assert b'{"status":"ok"}' in await trio.to_thread.run_sync(_exchange, sock, request)
            server.terminate()
            if when == "once-refusing":
                await trio.to_thread.run_sync(server.wait_refused, HANG_GUARD)
            answer = await trio.to_thread.run_sync(_exchange, sock, request)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 200"), answer
        # Exited: nothing was left waiting for the grace period.
        assert await trio.to_thread.run_sync(server.wait, HANG_GUARD) == 0
    finally:
        server.kill()


def _h2c_after_drain(url: str, server: ServerProcess, when: str) -> int | None:
    """One h2c request, SIGTERM, another on the same connection: its status, or
    None when the server closed the connection (with or without a GOAWAY first).
    The client's timeout is the hang guard."""
    with httpx.Client(http1=False, http2=True, base_url=url, timeout=HANG_GUARD) as client:
        assert client.get("/healthz").http_version == "HTTP/2"
        server.terminate()
        if when == "once-refusing":
            server.wait_refused(HANG_GUARD)
        try:
            return client.get("/healthz").status_code
        except httpx.TransportError:  # closed: a GOAWAY, a reset or a plain close
            return None


@pytest.mark.parametrize("when", WHEN)
async def test_an_h2c_request_during_drain_never_hangs(tmp_path: Path, when: str) -> None:
    config = tmp_path / "tlproxy.toml"
    config.write_text(CONFIG)
    server = ServerProcess(config, workers=1)
    try:
        await trio.to_thread.run_sync(server.wait_ready)
        outcome = await trio.to_thread.run_sync(_h2c_after_drain, server.url, server, when)
        assert outcome in (200, None), outcome
        # Exited: nothing was left waiting for the grace period.
        assert await trio.to_thread.run_sync(server.wait, HANG_GUARD) == 0
    finally:
        server.kill()


async def _answered_on_a_kept_alive_connection(address: str, body: bytes) -> trio.SocketStream:
    """One whole answer read on a connection the client then keeps open, idle."""
    host, port = address.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    reader = h11.Connection(h11.CLIENT)
    received = b""
    while not isinstance(event := reader.next_event(), h11.EndOfMessage):
        if event is h11.NEED_DATA:
            data = await stream.receive_some()
            assert data, received  # the server must not close a connection it just answered on
            received += data
            reader.receive_data(data)
    assert received.startswith(b"HTTP/1.1 200 "), received
    return stream


async def test_connections_kept_alive_after_their_answer_do_not_hold_the_drain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that keeps its connection open after a JSON answer and after a stream
    (as SDKs' pools do) must not keep the server from exiting: its connection is idle,
    and the drain closes idle connections at once, not after the grace period."""
    import functools

    import msgspec

    from tests.integration.conftest import fast_config
    from tlproxy.config import LedgerConfig, ServerConfig
    from tlproxy.server import serve

    config = msgspec.structs.replace(
        fast_config(), ledger=LedgerConfig(enabled=False),
        server=ServerConfig(graceful_timeout=GRACE))
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        running = await nursery.start(functools.partial(
            serve, config, host="127.0.0.1", port=0, shutdown_trigger=stop.wait))
        kept = [await _answered_on_a_kept_alive_connection(running.url, body) for body in (
            b'{"model": "economy", "messages": [{"role": "user", "content": "hi"}]}',
            b'{"model": "economy", "stream": true, '
            b'"messages": [{"role": "user", "content": "hi"}]}')]
        stopped = trio.current_time()
        stop.set()
    # Virtual time: the drain waited for no timer at all, let alone the grace period.
    assert trio.current_time() - stopped < 1.0
    for stream in kept:
        assert await stream.receive_some() == b""  # closed by the server
        await stream.aclose()
