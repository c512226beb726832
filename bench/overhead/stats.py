"""Pure parts of the overhead benchmark: statistics, parsers of /proc text, configs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.ttft.stats import percentile

MODEL = "gpt-5-nano"
# The layout of a result file; `--report` reads only its own.
RESULT_FORMAT = 2
QUANTILES = (0.5, 0.9, 0.99)
LOADS = ("json", "stream")
# Every target in the order of one round of slices (the next round runs it backwards): the
# upstream itself, then the intermediaries in front of it, cheapest first.
ALL_TARGETS = ("direct", "hello", "bare", "nginx", "proxy")
# The intermediaries: each is its own process group, whose CPU per request is reported.
INTERMEDIARIES = ("hello", "bare", "nginx", "proxy")
# The floors: servers the proxy's cost is read against (`bench.overhead.floors`, nginx).
FLOORS = ("hello", "bare")
# hello answers every request with one fixed body: a floor for JSON only, it does not stream.
JSON_ONLY = frozenset({"hello"})
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


def targets_for(load: str, available: Sequence[str]) -> tuple[str, ...]:
    """The targets measured under ``load``, in `ALL_TARGETS` order, of those ``available``."""
    return tuple(t for t in ALL_TARGETS
                 if t in available and (load == "json" or t not in JSON_ONLY))


def slice_order(slices: int, targets: Sequence[str]) -> list[str]:
    """ABBA ordering of ``slices`` slices per target: linear drift cancels out pair by pair.

    With more than two targets a round and the next one mirror each other (A B C C B A), so
    every target's mean slice position over two rounds is the same.
    """
    order: list[str] = []
    for index in range(slices):
        order.extend(targets if index % 2 == 0 else reversed(targets))
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


def proxy_config_toml(upstream_base_url: str, *, ledger: bool = True,
                      max_connections: int | None = None) -> str:
    """The proxy's config: one OpenAI-compatible provider (the upstream) behind each tier.

    ``max_connections`` sizes the proxy's pool to the upstream (its own default otherwise).
    """
    ledger_section = "" if ledger else "[ledger]\nenabled = false\n\n"
    pool = "" if max_connections is None else f"max_connections = {max_connections}\n"
    return f"""\
{ledger_section}[server]
host = "127.0.0.1"
port = 0
graceful_timeout = 1.0

[providers.up]
kind = "openai"
base_url = "{upstream_base_url}"
{pool}
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


def nginx_config(*, listen_port: int, upstream_port: int, workers: int, prefix: Path,
                 user: str | None = None) -> str:
    """nginx as a plain reverse proxy to the upstream, with every path inside ``prefix``.

    ``user`` is for a root master only (workers would otherwise switch to nginx's default user,
    which cannot enter a private temporary directory).
    """
    user_line = f"user {user};\n" if user else ""
    return f"""\
{user_line}worker_processes {workers};
worker_rlimit_nofile 16384;
pid {prefix / "nginx.pid"};
error_log {prefix / "nginx-error.log"} warn;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    client_body_temp_path {prefix / "client_body"};
    proxy_temp_path {prefix / "proxy"};
    fastcgi_temp_path {prefix / "fastcgi"};
    uwsgi_temp_path {prefix / "uwsgi"};
    scgi_temp_path {prefix / "scgi"};
    keepalive_requests 1000000;
    keepalive_timeout 120s;

    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }}

    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout {int(_REQUEST_TIMEOUT)}s;
        }}
    }}
}}
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
        """CPU of process group ``name`` in the windows, per request completed in them."""
        return self.ticks[name] / clock_hz * 1000 / self.ok if self.ok else None


def compare(direct: dict[str, Any], proxy: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rps_ratio": proxy["rps"] / direct["rps"] if direct["rps"] else None,
        "latency_added_ms": added_ms(direct["latency_ms"], proxy["latency_ms"]),
    }
    if "ttft_ms" in direct and "ttft_ms" in proxy:
        out["ttft_added_ms"] = added_ms(direct["ttft_ms"], proxy["ttft_ms"])
    return out
