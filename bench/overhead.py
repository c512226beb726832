"""Proxy overhead: what tlproxy adds over calling the same upstream directly.

Run it as ``python -m bench.overhead`` (``--help`` for the options). It starts two subprocesses
on loopback ports: the simulated upstream (``tlproxy sim``) and the proxy (``tlproxy serve``,
with a config written to a temporary directory that names the sim as an OpenAI-compatible
provider). The same client then drives the same requests at two targets: the sim directly, and
the proxy in front of it. The difference between the two is the proxy's cost.

Method
------
* Two loads, each at every ``--concurrency``: (1) non-streaming chat completions, throughput in
  a closed loop (each of C workers sends its next request as soon as the previous one is
  answered); (2) streaming chat completions, time to first token (TTFT): from just before the
  request is sent to the moment the read that completes the first event carrying content (not
  the role-only chunk) returns, on ``trio.current_time()``.
* Interleaving: each measurement is cut into slices of about ``--slice`` seconds, alternating
  direct and proxy in an ABBA order (D P P D D P ...), so that drift and noise of the machine
  (another process waking up, frequency changes) hit both targets alike.
* In a slice the workers' first requests are staggered over one typical request duration
  (measured in a warm-up), and only the steady part of the slice counts: without the stagger a
  fixed-latency upstream answers all C requests of a closed loop in the same instant, round
  after round, and the numbers would describe a synchronized burst instead of a steady load.
* Client: httpx on trio, HTTP/1.1, one ``httpx.AsyncClient`` (a pool of one keep-alive
  connection) per worker, so C workers hold C connections; see `make_clients` for why not one
  shared pool (``--client-pool shared`` measures that way too).
  A slice lasts at least three typical request durations, so a slow target still starts
  requests inside it (the run then takes longer than ``--duration``).
* CPU: utime+stime deltas from ``/proc/<pid>/stat`` over each measured window, for the proxy
  (all its processes: with ``--workers`` it is a supervisor and its workers; ``--proxy-workers``
  sets their number), the sim and this client, in percent of one core; also the whole machine's
  busy time from ``/proc/stat`` in the same unit (its ceiling is ``nproc`` x 100 %). What the
  machine spent beyond those three is "other", and a run where it was large is flagged: on a
  shared machine the numbers are then not the proxy's alone. Memory: the proxy's VmRSS, summed
  over its processes, sampled every 0.2 s (peak reported), and the sum of their VmHWM.

Caveats
-------
* Client, sim and proxy share the machine's cores (two on the reference machine). Through the
  proxy, three busy processes compete for them; directly, only two. When the machine column
  nears ``nproc`` x 100 %, the proxy numbers include waiting for a core, not only the proxy's
  own work; the client's CPU column tells whether the client itself was the bottleneck.
* Closed-loop numbers: throughput is what C workers achieve, not a capacity at a latency
  target, and the latency they see is bounded by the queueing they cause themselves.
* "Added TTFT" at a percentile is the proxy's TTFT percentile minus the direct one (two
  unpaired distributions), not a percentile of per-request differences.
* The proxy asks its upstream for a usage chunk on every stream (it prices every token) and
  strips it when the client did not ask; that extra work is part of the cost measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio
from rich.console import Console
from rich.table import Table

__all__ = [
    "FirstContentDetector",
    "build_parser",
    "cpu_ticks",
    "distribution_ms",
    "machine_ticks",
    "main",
    "noise_warnings",
    "parent_pid",
    "percentile",
    "plan_slices",
    "process_tree",
    "proxy_config_toml",
    "render_markdown",
    "slice_order",
    "vm_kib",
]

MODEL = "gpt-5-nano"
QUANTILES = (0.5, 0.9, 0.99)
LOADS = ("json", "stream")
TARGETS = ("direct", "proxy")
_PROMPT = [{"role": "user", "content": "Explain in one paragraph why the sky is blue."}]
_HEADERS = {"content-type": "application/json", "authorization": "Bearer unused"}
# One request may take this long before it counts as an error; it also bounds a slice's drain.
_REQUEST_TIMEOUT = 30.0
_READY_TIMEOUT = 30.0
_RSS_PERIOD = 0.2
# Slices last at least this many typical request durations (capped), the stagger at most one.
_CYCLES_PER_SLICE = 3
_MAX_CYCLE = 5.0
_MAX_LEAD = 2.0
# Above this share of one core, other processes' work is reported as a warning on the results.
_OTHER_CPU_WARNING = 20.0


# -- pure functions ----------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of sorted values, linear between closest ranks (numpy's default).

    Raises ValueError for no values: a NaN would travel silently into a table.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is outside [0, 1]")
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def distribution_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean, p50/p90/p99 and max in milliseconds; None values when there are none."""
    values = sorted(s * 1000.0 for s in seconds)
    out: dict[str, float | int | None] = {"n": len(values)}
    out["mean"] = sum(values) / len(values) if values else None
    for q in QUANTILES:
        out[f"p{round(q * 100)}"] = percentile(values, q) if values else None
    out["max"] = values[-1] if values else None
    return out


def added_ms(direct: dict[str, Any], proxy: dict[str, Any]) -> dict[str, float | None]:
    """Proxy minus direct, per percentile of two distributions (not per request)."""
    out: dict[str, float | None] = {}
    for q in QUANTILES:
        key = f"p{round(q * 100)}"
        a, b = direct.get(key), proxy.get(key)
        out[key] = None if a is None or b is None else b - a
    return out


def slice_order(slices: int) -> list[str]:
    """ABBA ordering of ``slices`` slices per target: linear drift cancels out pair by pair."""
    order: list[str] = []
    for index in range(slices):
        order.extend(TARGETS if index % 2 == 0 else reversed(TARGETS))
    return order


def plan_slices(duration: float, slice_s: float, cycle: float) -> tuple[int, float]:
    """How many slices per target, and how long each, for a measurement of ``duration``.

    A slice must hold several request durations (``cycle``), or a closed loop whose requests
    outlast the slice would start almost none inside it: then slices get longer, and fewer,
    and the measurement may run longer than ``duration``.
    """
    shortest = _CYCLES_PER_SLICE * min(cycle, _MAX_CYCLE)
    slices = max(1, round(duration / max(slice_s, shortest)))
    return slices, max(duration / slices, shortest)


def cpu_ticks(stat: str) -> int:
    """utime + stime, in clock ticks, from the text of ``/proc/<pid>/stat``."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def parent_pid(stat: str) -> int:
    """The parent's pid (field 4) from the text of ``/proc/<pid>/stat``."""
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def process_tree(parents: dict[int, int], root: int) -> list[int]:
    """``root`` and all its descendants, given every process's parent."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, ()))
    return sorted(tree)


def machine_ticks(stat: str) -> tuple[int, int]:
    """(busy, total) ticks over all cores from the ``cpu`` line of ``/proc/stat``."""
    for line in stat.splitlines():
        if line.startswith("cpu "):
            # user nice system idle iowait irq softirq steal; guest time is already in user.
            values = [int(v) for v in line.split()[1:9]]
            total = sum(values)
            return total - values[3] - values[4], total
    raise ValueError("no cpu line in /proc/stat")


def vm_kib(status: str, name: str) -> int | None:
    """A ``VmXxx:  N kB`` value from ``/proc/<pid>/status``, in KiB."""
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return None


def cpu_percent(ticks: int, clock_hz: int, seconds: float) -> float | None:
    """Percent of one core."""
    return ticks / clock_hz / seconds * 100.0 if seconds > 0 else None


class FirstContentDetector:
    """Sans-IO: fed the raw bytes of an OpenAI SSE stream, tells when content first appears.

    The role chunk (``"content": ""``) does not count; content text or a tool-call delta does.
    After the first content it stops parsing and only keeps the tail, to check for ``[DONE]``.
    """

    def __init__(self) -> None:
        self.found = False
        self._buffer = b""

    def feed(self, data: bytes) -> bool:
        """Add bytes; True exactly when these bytes completed the first content event."""
        self._buffer += data
        if self.found:
            self._buffer = self._buffer[-64:]
            return False
        events = self._buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events[:-1]:
            if _has_content(event):
                self.found = True
                self._buffer = self._buffer[-64:]
                return True
        self._buffer = events[-1]
        return False

    @property
    def done(self) -> bool:
        """The stream ended with ``data: [DONE]``."""
        return self._buffer.rstrip().endswith(b"data: [DONE]")


def _has_content(event: bytes) -> bool:
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return False
        chunk = orjson.loads(payload)
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("tool_calls"):
                return True
    return False


def proxy_config_toml(upstream_base_url: str) -> str:
    """The proxy's config: one OpenAI-compatible provider (the sim) behind each tier."""
    return f"""\
[server]
host = "127.0.0.1"
port = 0
graceful_timeout = 1.0

[providers.up]
kind = "openai"
base_url = "{upstream_base_url}"

[[models]]
id = "gpt-5-nano"
provider = "up"
tier = "economy"

[[models]]
id = "claude-sonnet-4-6"
provider = "up"
tier = "premium"

[[models]]
id = "text-embedding-3-small"
provider = "up"
tier = "embedding"
"""


@dataclass
class Record:
    """One request as the client saw it (trio clock, seconds)."""

    start: float
    end: float
    ttft: float | None = None
    error: str | None = None


@dataclass
class Tally:
    """Everything measured for one target under one load, summed over its slices."""

    stream: bool
    window: float = 0.0
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    ticks: Counter[str] = field(default_factory=Counter)
    machine_busy: int = 0
    machine_total: int = 0

    def add_slice(self, records: Sequence[Record], w0: float, w1: float) -> None:
        """Count a slice: errors anywhere in it, successes in the steady window [w0, w1]."""
        self.window += w1 - w0
        for record in records:
            if record.error is not None:
                self.errors[record.error] += 1
                continue
            if w0 <= record.start < w1:
                self.latencies.append(record.end - record.start)
                if record.ttft is not None:
                    self.ttfts.append(record.ttft)
            if w0 <= record.end <= w1:
                self.ok += 1

    def summary(self, clock_hz: int, cores: int) -> dict[str, Any]:
        cpu = {k: cpu_percent(v, clock_hz, self.window) for k, v in sorted(self.ticks.items())}
        if self.machine_total:
            machine = self.machine_busy / self.machine_total * cores * 100.0
            cpu["machine"] = machine
            # Whatever else ran on the machine meanwhile (other tenants, the kernel's own work).
            cpu["other"] = max(0.0, machine - sum(v or 0.0 for k, v in cpu.items()
                                                  if k != "machine"))
        out: dict[str, Any] = {
            "completed": self.ok,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "window_s": self.window,
            "rps": self.ok / self.window if self.window else 0.0,
            "latency_ms": distribution_ms(self.latencies),
            "cpu_percent": cpu,
        }
        if self.stream:
            out["ttft_ms"] = distribution_ms(self.ttfts)
        return out

    def cpu_ms_per_request(self, name: str, clock_hz: int) -> float | None:
        return self.ticks[name] / clock_hz * 1000 / self.ok if self.ok else None


def compare(direct: dict[str, Any], proxy: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rps_ratio": proxy["rps"] / direct["rps"] if direct["rps"] else None,
        "latency_added_ms": added_ms(direct["latency_ms"], proxy["latency_ms"]),
    }
    if "ttft_ms" in direct and "ttft_ms" in proxy:
        out["ttft_added_ms"] = added_ms(direct["ttft_ms"], proxy["ttft_ms"])
    return out


# -- rendering ---------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(result: dict[str, Any], load: str) -> list[list[str]]:
    rows = []
    for upstream in result["upstreams"]:
        for run in upstream["runs"]:
            if run["load"] != load:
                continue
            d, p, c = run["direct"], run["proxy"], run["comparison"]
            cells = [_f(upstream["upstream_ttft_ms"], 0), str(run["concurrency"])]
            if load == "json":
                cells += [
                    _f(d["rps"], 1), _f(p["rps"], 1), _f(c["rps_ratio"], 3),
                    _f(d["latency_ms"]["p50"]), _f(p["latency_ms"]["p50"]),
                    f"{d['errors']}/{p['errors']}",
                ]
            else:
                dt_, pt, added = d["ttft_ms"], p["ttft_ms"], c["ttft_added_ms"]
                cells += [
                    f"{dt_['n']}/{pt['n']}",
                    *(_f(dt_[k]) for k in ("p50", "p90", "p99")),
                    *(_f(pt[k]) for k in ("p50", "p90", "p99")),
                    *(_f(added[k]) for k in ("p50", "p90", "p99")),
                    f"{d['errors']}/{p['errors']}",
                ]
            cpu_d, cpu_p = d["cpu_percent"], p["cpu_percent"]
            cells += [
                _f(cpu_p.get("proxy"), 0), _f(p.get("proxy_cpu_ms_per_request"), 3),
                f"{_f(cpu_d.get('sim'), 0)}/{_f(cpu_p.get('sim'), 0)}",
                f"{_f(cpu_d.get('client'), 0)}/{_f(cpu_p.get('client'), 0)}",
                f"{_f(cpu_d.get('machine'), 0)}/{_f(cpu_p.get('machine'), 0)}",
                f"{_f(cpu_d.get('other'), 0)}/{_f(cpu_p.get('other'), 0)}",
            ]
            rows.append(cells)
    return rows


_CPU_HEADERS = [
    "proxy CPU %", "proxy CPU ms/req", "sim CPU % d/p", "client CPU % d/p", "machine CPU % d/p",
    "other CPU % d/p",
]
_HEADERS_BY_LOAD = {
    "json": ["upstream TTFT ms", "conc", "RPS direct", "RPS proxy", "proxy/direct",
             "latency p50 ms direct", "latency p50 ms proxy", "errors d/p", *_CPU_HEADERS],
    "stream": ["upstream TTFT ms", "conc", "n d/p",
               "direct p50", "direct p90", "direct p99",
               "proxy p50", "proxy p90", "proxy p99",
               "added p50", "added p90", "added p99", "errors d/p", *_CPU_HEADERS],
}
_TITLES = {
    "json": "Non-streaming chat completions, closed loop",
    "stream": "Streaming TTFT (ms, to the first content delta)",
}


_MEMORY_TITLE = "Proxy memory (KiB, summed over its processes)"
_MEMORY_HEADERS = ("upstream TTFT ms", "processes", "RSS idle", "RSS peak (sampled)", "VmHWM")


def _memory_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for upstream in result["upstreams"]:
        rss = upstream["proxy_rss_kib"]
        rows.append([_f(upstream["upstream_ttft_ms"], 0),
                     str(upstream.get("proxy_processes", 1)), str(rss["idle"]),
                     str(rss["peak_sampled"]), str(rss["hwm"])])
    return rows


def render_tables(result: dict[str, Any]) -> list[Table]:
    tables = []
    for load in LOADS:
        table = Table(title=_TITLES[load], title_justify="left")
        for header in _HEADERS_BY_LOAD[load]:
            table.add_column(header, justify="right")
        for row in _rows(result, load):
            table.add_row(*row)
        tables.append(table)
    memory = Table(title=_MEMORY_TITLE, title_justify="left")
    for header in _MEMORY_HEADERS:
        memory.add_column(header, justify="right")
    for row in _memory_rows(result):
        memory.add_row(*row)
    tables.append(memory)
    return tables


def noise_warnings(result: dict[str, Any]) -> list[str]:
    """Runs during which other processes used a noticeable share of the machine."""
    out = []
    for upstream in result["upstreams"]:
        for run in upstream["runs"]:
            worst = max((run[t]["cpu_percent"].get("other") or 0.0) for t in TARGETS)
            if worst > _OTHER_CPU_WARNING:
                out.append(
                    f"upstream {upstream['upstream_ttft_ms']:g} ms, {run['load']} at "
                    f"concurrency {run['concurrency']}: other processes used up to {worst:.0f} % "
                    "of a core meanwhile; these numbers are not the proxy's alone"
                )
    return out


def render_markdown(result: dict[str, Any]) -> str:
    """The same tables as GitHub-flavoured Markdown, numbers formatted exactly as printed."""
    parts = []
    for load in LOADS:
        headers = _HEADERS_BY_LOAD[load]
        lines = [f"**{_TITLES[load]}**", "", "| " + " | ".join(headers) + " |",
                 "|" + "---:|" * len(headers)]
        lines += ["| " + " | ".join(row) + " |" for row in _rows(result, load)]
        parts.append("\n".join(lines))
    lines = [f"**{_MEMORY_TITLE}**", "", "| " + " | ".join(_MEMORY_HEADERS) + " |",
             "|" + "---:|" * len(_MEMORY_HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in _memory_rows(result)]
    parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


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
    sim_url: str
    proxy_url: str
    pids: dict[str, int]


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


@contextlib.asynccontextmanager
async def running_stack(args: argparse.Namespace, ttft_ms: float,
                        workdir: Path) -> AsyncIterator[Stack]:
    """The sim and the proxy in front of it, as subprocesses, killed on the way out."""
    env = {**os.environ, "TLPROXY_LOG_LEVEL": "WARNING"}
    sim_port, proxy_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    config = workdir / f"proxy-{ttft_ms:g}.toml"
    config.write_text(proxy_config_toml(sim_url + "/v1"))
    command = [sys.executable, "-m", "tlproxy.cli"]
    sim_cmd = [*command, "sim", "--host", "127.0.0.1", "--port", str(sim_port),
               "--ttft-ms", f"{ttft_ms:g}", "--inter-token-ms", f"{args.inter_token_ms:g}",
               "--tokens", str(args.tokens)]
    proxy_cmd = [*command, "serve", "--config", str(config), "--host", "127.0.0.1",
                 "--port", str(proxy_port)]
    if args.proxy_workers is not None:
        proxy_cmd += ["--workers", str(args.proxy_workers)]
    processes: list[trio.Process] = []
    try:
        async with httpx.AsyncClient(trust_env=False) as probe:
            ready = []
            for name, cmd, url in (("sim", sim_cmd, sim_url + "/v1/models"),
                                   ("proxy", proxy_cmd, proxy_url + "/healthz")):
                log = workdir / f"{name}-{ttft_ms:g}.log"
                with log.open("wb") as out:
                    # Not our cwd: a ./tlproxy.toml or ./tlproxy there must not be picked up.
                    processes.append(await trio.lowlevel.open_process(
                        cmd, stdout=out, stderr=out, env=env, cwd=workdir))
                ready.append((url, processes[-1], log))
            for url, process, log in ready:
                await _wait_ready(probe, url, process, log)
        yield Stack(sim_url, proxy_url, {"sim": processes[0].pid, "proxy": processes[1].pid})
    finally:
        for process in reversed(processes):
            await _stop(process)


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


# -- load --------------------------------------------------------------------------------------


def make_clients(count: int, *, shared: bool) -> list[httpx.AsyncClient]:
    """HTTP/1.1 clients for ``count`` workers: one each, or one shared pool of ``count``.

    One client per worker is the default because httpcore 1.0's pool rescans every connection
    for every queued request on each request start and end (encode/httpcore#1035): with one
    shared pool of 64 connections the client spent ~13 ms of CPU per request on that alone, and
    became the bottleneck it is meant not to be. ``shared`` keeps the other way available.
    """
    size = count if shared else 1
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size,
                          keepalive_expiry=120.0)
    return [
        httpx.AsyncClient(http1=True, http2=False, trust_env=False, limits=limits,
                          timeout=httpx.Timeout(_REQUEST_TIMEOUT))
        for _ in range(1 if shared else count)
    ]


async def json_request(client: httpx.AsyncClient, url: str, body: bytes) -> Record:
    start = trio.current_time()
    try:
        response = await client.post(url, content=body, headers=_HEADERS)
    except httpx.HTTPError as exc:
        return Record(start, trio.current_time(), error=type(exc).__name__)
    end = trio.current_time()
    if response.status_code != 200:
        return Record(start, end, error=f"http_{response.status_code}")
    if b'"choices"' not in response.content:
        return Record(start, end, error="no_choices")
    return Record(start, end)


async def stream_request(client: httpx.AsyncClient, url: str, body: bytes) -> Record:
    start = trio.current_time()
    ttft = None
    detector = FirstContentDetector()
    try:
        async with client.stream("POST", url, content=body, headers=_HEADERS) as response:
            if response.status_code != 200:
                await response.aread()
                return Record(start, trio.current_time(), error=f"http_{response.status_code}")
            async for data in response.aiter_raw():
                now = trio.current_time()
                if detector.feed(data):
                    ttft = now - start
    except httpx.HTTPError as exc:
        return Record(start, trio.current_time(), ttft, error=type(exc).__name__)
    end = trio.current_time()
    if ttft is None:
        return Record(start, end, error="no_content")
    if not detector.done:
        return Record(start, end, ttft, error="no_done")
    return Record(start, end, ttft)


# Called with the worker's index, which picks the worker's own client.
Requester = Callable[[int], Awaitable[Record]]


async def closed_loop(request: Requester, concurrency: int, *, begin: float, lead: float,
                      seconds: float) -> list[Record]:
    """C workers, each sending back to back from ``begin`` on (trio clock); returns the records.

    Worker i starts ``lead * i / C`` after ``begin``; the steady window opens once all have
    started, at ``begin + lead``, and closes ``seconds`` later, after which no worker starts a
    new request (those in flight finish: cancelling them would close pooled connections).
    """
    records: list[Record] = []
    w1 = begin + lead + seconds

    async def worker(index: int) -> None:
        await trio.sleep_until(begin + lead * index / concurrency)
        while trio.current_time() < w1:
            records.append(await request(index))

    with trio.move_on_after(lead + seconds + _REQUEST_TIMEOUT) as scope:
        async with trio.open_nursery() as nursery:
            for index in range(concurrency):
                nursery.start_soon(worker, index)
    if scope.cancelled_caught:
        records.append(Record(w1, trio.current_time(), error="slice_timeout"))
    return records


async def measure_window(groups: dict[str, list[int]], tally: Tally, w0: float,
                         w1: float) -> None:
    await trio.sleep_until(w0)
    before = Snapshot(groups)
    await trio.sleep_until(w1)
    Snapshot(groups).add_delta_to(tally, before)


async def run_load(clients: dict[str, list[httpx.AsyncClient]], stack: Stack, load: str,
                   concurrency: int, args: argparse.Namespace, rss: RssSampler,
                   clock_hz: int, cores: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": _PROMPT}
    if load == "stream":
        body["stream"] = True
    payload = orjson.dumps(body)
    call = stream_request if load == "stream" else json_request
    urls = {"direct": stack.sim_url, "proxy": stack.proxy_url}

    def requester(target: str) -> Requester:
        pool, url = clients[target], urls[target] + "/v1/chat/completions"

        async def request(index: int) -> Record:
            return await call(pool[index % len(pool)], url, payload)

        return request

    requesters = {target: requester(target) for target in TARGETS}
    # Warm-up: pools filled to C connections, and a typical request duration to stagger by.
    cycles = {}
    warmup = min(args.warmup, args.duration)
    for target in TARGETS:
        records = await closed_loop(requesters[target], concurrency,
                                    begin=trio.current_time(), lead=0.0, seconds=warmup)
        durations = sorted(r.end - r.start for r in records if r.error is None)
        cycles[target] = percentile(durations, 0.5) if durations else 0.0
    leads = {target: min(cycle, _MAX_LEAD) for target, cycle in cycles.items()}
    slices, seconds = plan_slices(args.duration, args.slice, max(cycles.values()))
    groups = {"sim": tree_of(stack.pids["sim"]), "proxy": tree_of(stack.pids["proxy"]),
              "client": [os.getpid()]}
    # Workers may still have been starting when the proxy first answered.
    rss.pids = groups["proxy"]
    tallies = {target: Tally(stream=load == "stream") for target in TARGETS}
    rss.peak = 0
    for target in slice_order(slices):
        tally = tallies[target]
        begin = trio.current_time()
        w0, w1 = begin + leads[target], begin + leads[target] + seconds
        async with trio.open_nursery() as nursery:
            nursery.start_soon(measure_window, groups, tally, w0, w1)
            records = await closed_loop(requesters[target], concurrency, begin=begin,
                                        lead=leads[target], seconds=seconds)
        tally.add_slice(records, w0, w1)
    summaries = {t: tallies[t].summary(clock_hz, cores) for t in TARGETS}
    summaries["proxy"]["proxy_cpu_ms_per_request"] = tallies["proxy"].cpu_ms_per_request(
        "proxy", clock_hz)
    return {
        "load": load,
        "concurrency": concurrency,
        "slices_per_target": slices,
        "slice_s": seconds,
        "stagger_s": leads,
        **summaries,
        "comparison": compare(summaries["direct"], summaries["proxy"]),
        "proxy_rss_peak_kib": rss.peak,
    }


async def run_upstream(args: argparse.Namespace, ttft_ms: float, workdir: Path,
                       console: Console) -> dict[str, Any]:
    clock_hz = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    size = max(args.concurrency)
    async with running_stack(args, ttft_ms, workdir) as stack:
        console.print(f"upstream TTFT {ttft_ms:g} ms: sim pid {stack.pids['sim']} at "
                      f"{stack.sim_url}, proxy pid {stack.pids['proxy']} at {stack.proxy_url}")
        rss = RssSampler(tree_of(stack.pids["proxy"]))
        idle = rss.sample()
        runs = []
        async with contextlib.AsyncExitStack() as exits:
            clients = {
                target: [await exits.enter_async_context(client) for client in
                         make_clients(size, shared=args.client_pool == "shared")]
                for target in TARGETS
            }
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rss.run)
                for load in LOADS:
                    for concurrency in args.concurrency:
                        console.print(f"  {load} at concurrency {concurrency} ...")
                        runs.append(await run_load(clients, stack, load, concurrency, args, rss,
                                                   clock_hz, cores))
                nursery.cancel_scope.cancel()
        # Summed per process, so an upper bound of the tree's simultaneous peak.
        proxy_tree = rss.pids
        hwm = _status_kib(proxy_tree, "VmHWM")
        return {
            "upstream_ttft_ms": ttft_ms,
            "inter_token_ms": args.inter_token_ms,
            "tokens": args.tokens,
            "proxy_processes": len(proxy_tree),
            "proxy_rss_kib": {
                "idle": idle,
                "peak_sampled": max(r["proxy_rss_peak_kib"] for r in runs),
                "hwm": hwm,
            },
            "runs": runs,
        }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in _read("/proc/cpuinfo").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _code_under_test(workdir: Path) -> dict[str, str | None]:
    """Which tlproxy the subprocesses import (PYTHONPATH may name a snapshot), and its commit."""
    found = subprocess.run(
        [sys.executable, "-c", "import tlproxy; print(tlproxy.__file__)"],
        cwd=workdir, capture_output=True, text=True, timeout=30, check=False,
    )
    package = str(Path(found.stdout.strip()).parent) if found.returncode == 0 else None
    head = None
    if package is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True,
                                 text=True, timeout=10, check=False)
            head = rev.stdout.strip() or None
    return {"tlproxy_package": package, "git_head": head}


async def run_all(args: argparse.Namespace, argv: list[str], console: Console) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC)
    upstreams = []
    # Every phase is bounded on its own; this is the backstop for a hang nobody foresaw.
    longest_slice = max(args.duration, args.slice, _CYCLES_PER_SLICE * _MAX_CYCLE)
    per_load = 2 * (args.warmup + _REQUEST_TIMEOUT) + 2 * (
        args.duration + longest_slice + _MAX_LEAD + _REQUEST_TIMEOUT)
    budget = 120.0 + len(args.upstream_ttft_ms) * (
        _READY_TIMEOUT + len(LOADS) * len(args.concurrency) * per_load)
    with tempfile.TemporaryDirectory(prefix="tlproxy-overhead-") as tmp:
        code = await trio.to_thread.run_sync(_code_under_test, Path(tmp))
        with trio.fail_after(budget):
            for ttft_ms in args.upstream_ttft_ms:
                upstreams.append(await run_upstream(args, ttft_ms, Path(tmp), console))
    return {
        "tool": "bench.overhead",
        "command": ["python", "-m", "bench.overhead", *argv],
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "note": args.note,
        "code": code,
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "duration_s": args.duration,
            "slice_s": args.slice,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "upstream_ttft_ms": args.upstream_ttft_ms,
            "inter_token_ms": args.inter_token_ms,
            "tokens": args.tokens,
            "model": MODEL,
            "client_pool": args.client_pool,
            "proxy_workers": args.proxy_workers,
        },
        "upstreams": upstreams,
    }


# -- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead",
        description="Measure what the proxy adds over calling its upstream directly.",
    )
    parser.add_argument("--duration", type=float, default=5.0,
                        help="measured seconds per target, load and concurrency (default 5)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 64],
                        help="closed-loop workers; several values run one after the other")
    parser.add_argument("--upstream-ttft-ms", type=float, nargs="+", default=[0.0, 200.0],
                        help="the sim's time to first token; one stack per value (default 0 200)")
    parser.add_argument("--inter-token-ms", type=float, default=0.0,
                        help="the sim's delay between tokens (default 0)")
    parser.add_argument("--tokens", type=int, default=24, help="tokens per answer (default 24)")
    parser.add_argument("--slice", type=float, default=1.0,
                        help="seconds per interleaved slice (default 1)")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="unmeasured seconds per target before each measurement")
    parser.add_argument("--proxy-workers", type=int,
                        help="passed to tlproxy serve --workers (default: the proxy's own)")
    parser.add_argument("--client-pool", choices=("per-worker", "shared"), default="per-worker",
                        help="one httpx client per worker (default), or one shared pool")
    parser.add_argument("--out", type=Path,
                        help="result JSON (default bench/results/overhead-<timestamp>.json)")
    parser.add_argument("--note", help="free text kept in the result (what was measured, why)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the tables as Markdown")
    parser.add_argument("--report", type=Path, metavar="FILE",
                        help="print the tables of an earlier result file; run nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:
        # A log file gets the full table rather than one squeezed to 80 columns.
        console = Console(width=220)
    if args.report is not None:
        result = orjson.loads(args.report.read_bytes())
    else:
        if min(args.concurrency) < 1 or args.duration <= 0 or args.slice <= 0:
            raise SystemExit("--concurrency, --duration and --slice must be positive")
        result = trio.run(run_all, args, argv, console)
        out = args.out
        if out is None:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path(__file__).parent / "results" / f"overhead-{stamp}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        console.print(f"result written to {out}")
    for table in render_tables(result):
        console.print(table)
    for warning in noise_warnings(result):
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False)
    if args.markdown:
        console.print(render_markdown(result), markup=False, highlight=False, soft_wrap=True)
    errors = sum(
        run[target]["errors"] for up in result["upstreams"] for run in up["runs"]
        for target in TARGETS
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
