"""Real Redis servers for integration tests: one node, or a three-node cluster.

Each server is a `redis-server` child process on a loopback port of its own,
with persistence off and its files under the test's `tmp_path`; it is killed
when the context exits, whatever happened inside. redis-server cannot bind
port 0 and report it back, so a free port is found by binding a socket first;
a cluster node also needs its bus port (port + 10000) free.

Tests that use these mark themselves with `requires_redis`: without the
binaries they are skipped, saying how to get them (`scripts/ensure-redis`,
which `scripts/test` runs).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

__all__ = [
    "RedisCluster",
    "RedisServer",
    "redis_cluster",
    "redis_server",
    "requires_redis",
]

_SERVER = shutil.which("redis-server")

requires_redis = pytest.mark.skipif(
    _SERVER is None, reason="redis-server is not on PATH; scripts/ensure-redis installs it"
)

# Starting a server takes milliseconds; forming a cluster about a second.
_START_TIMEOUT = 10.0
_CLUSTER_BUS_OFFSET = 10_000


class RedisServer:
    """One running redis-server; `kill`, `pause` and `resume` simulate outages."""

    def __init__(self, port: int, process: trio.Process, log: Path) -> None:
        self.port = port
        self.process = process
        self.log = log

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.address}"

    async def kill(self) -> None:
        """SIGKILL: connections are refused from now on."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        await self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a slow Redis)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


class RedisCluster:
    """Three (or more) masters sharing the 16384 slots, no replicas."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        # One node is enough: the client discovers the others from it.
        return f"redis+cluster://{self.nodes[0].address}"


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, cluster: bool = False) -> int:
    """A loopback port nothing listens on now (and, for a cluster node, its bus port)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if not cluster:
            return port
        bus = port + _CLUSTER_BUS_OFFSET
        if bus <= 65535 and _port_is_free(bus):
            return port
    raise RuntimeError("no free port pair for a cluster node")


async def command(port: int, *args: str) -> bytes:
    """Send one command in RESP and return the raw reply (enough for PING and INFO-like replies)."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload.encode())
        reply = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return reply
            reply += chunk
            if _complete(reply):
                return reply


def _complete(reply: bytes) -> bool:
    head, sep, rest = reply.partition(b"\r\n")
    if not sep:
        return False
    if head[:1] in (b"$", b"="):  # bulk / verbatim string: wait for the whole body
        return len(rest) >= int(head[1:]) + 2
    return True


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        return "(no log)"


@contextlib.asynccontextmanager
async def redis_server(directory: Path, *, cluster: bool = False) -> AsyncIterator[RedisServer]:
    """Run one redis-server until the context exits; yields once it answers PING."""
    assert _SERVER is not None, "use the requires_redis mark"
    port = free_port(cluster=cluster)
    log = directory / f"redis-{port}.log"
    args = [
        _SERVER, "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no",
        "--dir", str(directory), "--logfile", str(log),
    ]
    if cluster:
        args += [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(directory / f"nodes-{port}.conf"),
            "--cluster-node-timeout", "2000",
        ]
    process = await trio.lowlevel.open_process(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = RedisServer(port, process, log)
    try:
        with trio.fail_after(_START_TIMEOUT):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"redis-server exited at start:\n{_tail(log)}")
                with contextlib.suppress(OSError):
                    if (await command(port, "PING")).startswith(b"+PONG"):
                        break
                await trio.sleep(0.01)
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.kill()


@contextlib.asynccontextmanager
async def redis_cluster(directory: Path, *, nodes: int = 3) -> AsyncIterator[RedisCluster]:
    """Run a cluster of `nodes` masters; yields once every node reports `cluster_state:ok`.

    Formed with the commands ``redis-cli --cluster create`` sends, without its
    one-second polling: split the slots, give each node its own config epoch,
    introduce them to the first one. It still takes about two seconds: a
    master stays "fail" for its first 2 s (Redis's CLUSTER_WRITABLE_DELAY).
    """
    async with contextlib.AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(redis_server(directory, cluster=True))
            for _ in range(nodes)
        ]
        for index, server in enumerate(servers):
            first, last = index * 16384 // nodes, (index + 1) * 16384 // nodes - 1
            await _ok(server, "CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
            await _ok(server, "CLUSTER", "SET-CONFIG-EPOCH", str(index + 1))
        for server in servers[1:]:
            await _ok(servers[0], "CLUSTER", "MEET", "127.0.0.1", str(server.port))
        with trio.fail_after(_START_TIMEOUT):
            for server in servers:
                while True:
                    if b"cluster_state:ok" in await command(server.port, "CLUSTER", "INFO"):
                        break
                    await trio.sleep(0.02)
        yield RedisCluster(servers)


async def _ok(server: RedisServer, *args: str) -> None:
    reply = await command(server.port, *args)
    if not reply.startswith(b"+OK"):
        raise RuntimeError(f"{' '.join(args)} on {server.address}: {reply!r}")
