"""Many concurrent streams through one worker: errors and memory (``python -m bench.streams``).

Starts the standalone simulated upstream and one proxy worker as subprocesses on
loopback, then opens streams in steps (default 1,000 then 2,000 held at once),
each a slow stream (default 15 tokens a second apart) so that every step holds its
streams open while the proxy's resident memory (VmRSS, and the peak VmHWM) is
read from /proc. Every stream must end with ``data: [DONE]``; anything else is
counted as an error by kind.

The client is deliberately lean (raw trio sockets, one hand-written HTTP/1.1
request, bytes counted rather than parsed) so that 2,000 streams in one client
process stay cheap. Bounded: a step lasts one stream's length, the whole run
a few times that, and it only ever talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

__all__ = ["main"]

_CONFIG = """
[ledger]
enabled = false

[limits]
max_streams_per_worker = 100000

[providers.up]
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
max_connections = 100000

[[models]]
id = "gpt-5-nano"
provider = "up"
tier = "economy"

[[models]]
id = "claude-sonnet-4-6"
provider = "up"
tier = "premium"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def _wait_http(port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(request)
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"nothing answered on port {port}")


async def _stream(port: int, body: bytes, results: dict[str, int], opened: list[int]) -> None:
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\n"
        b"content-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode() + body
    )
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            tail = b""
            first = True
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                if first:
                    first = False
                    opened[0] += 1
                    if not data.startswith(b"HTTP/1.1 200"):
                        status = data[9:12].decode(errors="replace")
                        kind = f"http_{status}"
                        results[kind] = results.get(kind, 0) + 1
                        if kind not in results.setdefault("_bodies", {}):  # type: ignore[arg-type]
                            results["_bodies"][kind] = data[-300:].decode(  # type: ignore[index]
                                errors="replace")
                        return
                tail = (tail + data)[-64:]
                if b"data: [DONE]" in tail:
                    results["ok"] = results.get("ok", 0) + 1
                    return
            results["cut"] = results.get("cut", 0) + 1
    except (OSError, trio.BrokenResourceError) as exc:
        kind = type(exc).__name__
        results[kind] = results.get(kind, 0) + 1


async def _step(port: int, count: int, body: bytes, pid: int, hold: float) -> dict[str, object]:
    results: dict[str, int] = {}
    opened = [0]
    peak_rss = 0.0
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(_stream, port, body, results, opened)
            if index % 100 == 99:
                await trio.sleep(0.05)  # open in waves: a burst of SYNs is not the test
        # Sample memory while the streams are held open.
        while time.monotonic() - started < hold:
            await trio.sleep(0.25)
            peak_rss = max(peak_rss, _memory(pid)["VmRSS"])
    memory = _memory(pid)
    return {"streams": count, "results": results, "opened": opened[0],
            "rss_mb_peak_during": round(peak_rss, 1), "hwm_mb": round(memory["VmHWM"], 1),
            "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__)
    parser.add_argument("--steps", default="1000,2000", help="concurrent streams per step")
    parser.add_argument("--tokens", type=int, default=15)
    parser.add_argument("--inter-token-ms", type=float, default=1000.0)
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    python = sys.executable
    sim_port, proxy_port = _free_port(), _free_port()
    body = json.dumps({"model": "economy", "stream": True,
                       "messages": [{"role": "user", "content": "stream please"}]}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "tlproxy.toml"
        config.write_text(_CONFIG.format(port=sim_port))
        env = dict(os.environ, TLPROXY_LOG_LEVEL="WARNING")
        sim = subprocess.Popen(
            [python, "-m", "tlproxy.cli", "sim", "--port", str(sim_port),
             "--tokens", str(args.tokens), "--inter-token-ms", str(args.inter_token_ms)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proxy = subprocess.Popen(
            [python, "-m", "tlproxy.cli", "serve", "--config", str(config),
             "--port", str(proxy_port), "--workers", "1"],
            env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_http(sim_port, "/v1/models")
            _wait_http(proxy_port, "/healthz")
            idle = _memory(proxy.pid)
            hold = args.tokens * args.inter_token_ms / 1000 + 2.0
            report = {
                "command": " ".join(["python -m bench.streams", *(argv or sys.argv[1:])]),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()},
                "idle_rss_mb": round(idle["VmRSS"], 1),
                "steps": [trio.run(_step, proxy_port, n, body, proxy.pid, hold) for n in steps],
            }
        finally:
            for process in (proxy, sim):
                process.terminate()
            for process in (proxy, sim):
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    errors = sum(v for s in report["steps"] for k, v in s["results"].items()  # type: ignore[union-attr]
                 if k not in ("ok", "_bodies"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
