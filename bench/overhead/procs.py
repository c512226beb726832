"""The subprocesses (upstream, proxy, floors, nginx) and what /proc says about them."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

from bench.overhead.stats import (
    _READY_TIMEOUT,
    _RSS_PERIOD,
    ALL_TARGETS,
    FLOORS,
    Tally,
    cpu_ticks,
    machine_ticks,
    nginx_config,
    parent_pid,
    process_tree,
    proxy_config_toml,
    vm_kib,
)

# -- processes and /proc -----------------------------------------------------------------------


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def free_port() -> int:
    """A port free on loopback now (another process could take it before us: rare, and loud)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat_or_none(pid: int) -> str | None:
    try:
        return _read(f"/proc/{pid}/stat")
    except OSError:  # it exited meanwhile
        return None


def tree_of(root: int) -> list[int]:
    """``root`` and its descendants now (a proxy with workers is several processes)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat_or_none(int(entry))) is not None:
            parents[int(entry)] = parent_pid(stat)
    return process_tree(parents, root)


class Snapshot:
    """CPU ticks of the watched process groups and of the machine at one instant."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.ticks = {
            name: {pid: cpu_ticks(stat) for pid in pids
                   if (stat := _stat_or_none(pid)) is not None}
            for name, pids in groups.items()
        }
        self.machine = machine_ticks(_read("/proc/stat"))

    def add_delta_to(self, tally: Tally, before: Snapshot) -> None:
        for name, now in self.ticks.items():
            then = before.ticks[name]
            # A process that came or went between the two readings has no delta to add.
            tally.ticks[name] += sum(now[pid] - then[pid] for pid in now.keys() & then.keys())
        tally.machine_busy += self.machine[0] - before.machine[0]
        tally.machine_total += self.machine[1] - before.machine[1]


@dataclass
class Stack:
    """The running targets: each one's base URL and root pid (``direct`` is the upstream)."""

    urls: dict[str, str]
    pids: dict[str, int]

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for t in ALL_TARGETS if t in self.urls)


async def _stop(process: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.terminate()
            with trio.move_on_after(5.0):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _wait_ready(client: httpx.AsyncClient, url: str, process: trio.Process,
                      log: Path) -> None:
    with trio.move_on_after(_READY_TIMEOUT):
        while True:
            if process.returncode is not None:
                break
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url, timeout=1.0)).status_code == 200:
                    return
            await trio.sleep(0.05)
    tail = _read(str(log))[-2000:]
    raise RuntimeError(f"{url} did not become ready (exit code {process.returncode}):\n{tail}")


def upstream_command(args: argparse.Namespace, port: int, ttft_ms: float) -> list[str]:
    """The upstream: `bench.fast_upstream` (``--upstream fast``) or ``tlproxy sim``."""
    timing = ["--ttft-ms", f"{ttft_ms:g}", "--tokens", str(args.tokens)]
    if args.upstream == "fast":
        return [sys.executable, "-m", "bench.fast_upstream", "--host", "127.0.0.1",
                "--port", str(port), *timing, "--itl-ms", f"{args.inter_token_ms:g}"]
    return [sys.executable, "-m", "tlproxy.cli", "sim", "--host", "127.0.0.1",
            "--port", str(port), *timing, "--inter-token-ms", f"{args.inter_token_ms:g}"]


def floor_command(kind: str, port: int, upstream_url: str) -> list[str]:
    return [sys.executable, "-m", "bench.overhead.floors", kind, "--host", "127.0.0.1",
            "--port", str(port), "--upstream", upstream_url + "/v1"]


def _bench_env(env: dict[str, str]) -> dict[str, str]:
    """The floors and the fast upstream are this checkout's, even when PYTHONPATH names a
    snapshot of tlproxy to measure (whose bench/ may lack them); they import no tlproxy."""
    root = str(Path(__file__).resolve().parents[2])
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)}


@contextlib.asynccontextmanager
async def running_stack(args: argparse.Namespace, ttft_ms: float, workdir: Path, *,
                        max_connections: int | None = None) -> AsyncIterator[Stack]:
    """The upstream and every target in front of it, as subprocesses, killed on the way out.

    ``max_connections`` sizes the proxy's pool to the upstream (the proxy's default if None).
    """
    env = {**os.environ, "TLPROXY_LOG_LEVEL": "WARNING"}
    bench_env = _bench_env(env)
    # Which targets run this checkout's bench code rather than tlproxy's.
    bench_side = {*FLOORS, *(("direct",) if args.upstream == "fast" else ())}
    ports = {name: free_port() for name in ALL_TARGETS}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    upstream = urls["direct"]
    config = workdir / f"proxy-{ttft_ms:g}.toml"
    config.write_text(proxy_config_toml(upstream + "/v1", ledger=args.ledger,
                                        max_connections=max_connections))
    proxy_cmd = [sys.executable, "-m", "tlproxy.cli", "serve", "--config", str(config),
                 "--host", "127.0.0.1", "--port", str(ports["proxy"]),
                 "--workers", str(args.proxy_workers)]
    starts = [("direct", upstream_command(args, ports["direct"], ttft_ms), "/v1/models"),
              ("proxy", proxy_cmd, "/healthz")]
    if args.floors:
        starts += [(kind, floor_command(kind, ports[kind], upstream), "/v1/models")
                   for kind in FLOORS]
    if args.nginx_bin is not None:
        prefix = workdir / f"nginx-{ttft_ms:g}"
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_config(
            listen_port=ports["nginx"], upstream_port=ports["direct"],
            workers=nginx_workers(args), prefix=prefix,
            user="root" if os.geteuid() == 0 else None))
        starts.append(("nginx", [args.nginx_bin, "-c", str(conf), "-p", str(prefix),
                                 "-e", str(prefix / "nginx-error.log"),
                                 "-g", "daemon off;"], "/v1/models"))
    processes: list[trio.Process] = []
    try:
        async with httpx.AsyncClient(trust_env=False) as probe:
            ready = []
            for name, cmd, path in starts:
                log = workdir / f"{name}-{ttft_ms:g}.log"
                with log.open("wb") as out:
                    # Not our cwd: a ./tlproxy.toml or ./tlproxy there must not be picked up.
                    processes.append(await trio.lowlevel.open_process(
                        cmd, stdout=out, stderr=out, cwd=workdir,
                        env=bench_env if name in bench_side else env))
                ready.append((urls[name] + path, processes[-1], log))
            for url, process, log in ready:
                await _wait_ready(probe, url, process, log)
        yield Stack(
            urls={name: urls[name] for name, _, _ in starts},
            pids={name: proc.pid for (name, _, _), proc in zip(starts, processes, strict=True)},
        )
    finally:
        for process in reversed(processes):
            await _stop(process)


def nginx_workers(args: argparse.Namespace) -> int:
    """nginx gets as many workers as the proxy (``--proxy-workers``)."""
    return int(args.proxy_workers)


def nginx_version(binary: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        # nginx -v writes to stderr: "nginx version: nginx/1.22.1".
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10,
                             check=False)
        return (out.stderr or out.stdout).strip().removeprefix("nginx version: ") or None
    return None


def _status_kib(pids: list[int], name: str) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += vm_kib(_read(f"/proc/{pid}/status"), name) or 0
    return total


class RssSampler:
    """Peak of the summed VmRSS of the proxy's processes."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = 0

    def sample(self) -> int:
        value = _status_kib(self.pids, "VmRSS")
        self.peak = max(self.peak, value)
        return value

    async def run(self) -> None:
        while True:
            self.sample()
            await trio.sleep(_RSS_PERIOD)


def write_result(result: dict[str, Any], out: Path | None, tool: str) -> Path:
    """Write a run's result as JSON to `out`, by default ``bench/results/<tool>-<time>.json``."""
    if out is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(__file__).parent.parent / "results" / f"{tool}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return out
