"""Many concurrent streams through one worker: errors and memory (``python -m bench.streams``).

Starts the standalone simulated upstream and one proxy worker as subprocesses on
loopback, then opens streams in steps (default 1,000 then 2,000 held at once),
each a slow stream (default 15 tokens a second apart) so that every step holds its
streams open while the proxy's resident memory (VmRSS, and the peak VmHWM) is
read from /proc. Every stream must end with ``data: [DONE]``; anything else is
counted as an error by kind. ``max_open_at_once`` counts, on the client, the
streams that had their first bytes and had not ended yet: when it falls short of
the step, the proxy was too slow to have them all open together and the RSS
peak understates the step.

The client is deliberately lean (raw trio sockets, one hand-written HTTP/1.1
request, bytes counted rather than parsed) so that 2,000 streams in one client
process stay cheap. Bounded: a step lasts one stream's length, the whole run
a few times that, and it only ever talks to 127.0.0.1.

``--profile [FRAMES]`` says where the memory goes instead of only how much there
is. The proxy worker then installs a SIGUSR1 handler that records its RSS,
glibc's heap statistics (`mallinfo2`), live objects by type with their sizes
(`gc.get_objects`), suspended coroutines and generators by code, the sets, dicts
and lists held in objects' attributes by owner and, with FRAMES > 0 (the
default is 1), a `tracemalloc` snapshot. The bench asks for one record while the
worker is idle and one once every stream of a step has its first bytes, and
prints the growth per stream: by package, by allocating line and by traceback.
``--profile 0`` leaves tracemalloc off: the worker runs at full speed, and the
RSS in its records (read before anything else) is representative. tracemalloc
slows the worker down about tenfold (pair it with a long ``--inter-token-ms``,
such as 15000, so that the streams are still open when the last one starts) and
adds its own memory; the census adds some too once it has run. So the RSS
figures of a profiled run's steps are not the benchmark's result.
``--profile-dir`` keeps the records for a closer look.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter, OrderedDict, deque
from pathlib import Path
from types import AsyncGeneratorType, CoroutineType, GeneratorType
from typing import Any

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


class _Tally:
    """Streams that got their first bytes, and how many were open at once (client side)."""

    __slots__ = ("max_open", "open", "opened")

    def __init__(self) -> None:
        self.opened = self.open = self.max_open = 0


def _note(results: dict[str, Any], kind: str, data: bytes) -> None:
    """Count a failed stream by kind, keeping the end of the first one's answer."""
    results[kind] = results.get(kind, 0) + 1
    results.setdefault("_bodies", {}).setdefault(kind, data[-300:].decode(errors="replace"))


async def _stream(port: int, body: bytes, results: dict[str, Any], tally: _Tally,
                  deadline: float) -> None:
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\n"
        b"content-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode() + body
    )
    first = True
    try:
        # A stream that never ends is counted, not waited for forever.
        with trio.move_on_at(deadline):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(request)
                tail = b""
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    if first:
                        first = False
                        tally.opened += 1
                        tally.open += 1
                        tally.max_open = max(tally.max_open, tally.open)
                        if not data.startswith(b"HTTP/1.1 200"):
                            _note(results, f"http_{data[9:12].decode(errors='replace')}", data)
                            return
                    tail = (tail + data)[-400:]
                    if b"data: [DONE]" in tail[-64:]:
                        results["ok"] = results.get("ok", 0) + 1
                        return
                    if tail.endswith(b"\r\n0\r\n\r\n"):
                        # The chunked body ended without [DONE] (an error event); the
                        # connection stays open for another request: no EOF to wait for.
                        _note(results, "ended_without_done", tail)
                        return
                results["cut"] = results.get("cut", 0) + 1
                return
        results["timeout"] = results.get("timeout", 0) + 1
    except (OSError, trio.BrokenResourceError) as exc:
        kind = type(exc).__name__
        results[kind] = results.get(kind, 0) + 1
    finally:
        if not first:
            tally.open -= 1


async def _step(port: int, count: int, body: bytes, pid: int, hold: float,
                profile: _Profile | None = None) -> dict[str, object]:
    results: dict[str, Any] = {}
    tally = _Tally()
    peak_rss = 0.0
    started = time.monotonic()
    snapshot: Path | None = None
    deadline = trio.current_time() + 3 * hold + 60
    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(_stream, port, body, results, tally, deadline)
            if index % 100 == 99:
                await trio.sleep(0.05)  # open in waves: a burst of SYNs is not the test
        # Sample memory while the streams are held open (a profiled worker is
        # slow to open them all: then until the snapshot is taken).
        while time.monotonic() - started < hold or (
                profile is not None and snapshot is None
                and sum(v for k, v in results.items() if k != "_bodies") < count):
            await trio.sleep(0.25)
            peak_rss = max(peak_rss, _memory(pid)["VmRSS"])
            # Once every stream has its first bytes, all of them are open in the proxy.
            if profile is not None and snapshot is None and tally.opened >= count:
                snapshot = await trio.to_thread.run_sync(profile.take, pid)
    memory = _memory(pid)
    step: dict[str, object] = {
        "streams": count, "results": results, "opened": tally.opened,
        "max_open_at_once": tally.max_open,
        "rss_mb_peak_during": round(peak_rss, 1), "hwm_mb": round(memory["VmHWM"], 1),
        "seconds": round(time.monotonic() - started, 1)}
    if snapshot is not None:
        step["snapshot"] = str(snapshot)
    return step


# -- --profile: where the memory goes ---------------------------------------

_MALLINFO2 = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
              "fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2]


def _mallinfo() -> dict[str, int] | None:
    """glibc's heap statistics (None elsewhere): what malloc holds and what is free in it."""
    try:
        function = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    info = function()
    return {name: int(getattr(info, name)) for name in _MALLINFO2}


def _profiled_worker(out_dir: str, frames: int, argv: list[str]) -> int:
    """The proxy worker under tracemalloc; SIGUSR1 writes ``snap-N.tm`` and ``snap-N.json``.

    Runs in the worker's main thread between two bytecodes (a Python signal
    handler), so the event loop stands still while the snapshot is taken.
    """
    if frames:
        tracemalloc.start(frames)
    taken = [0]

    def dump(_signum: int, _frame: object) -> None:
        taken[0] += 1
        base = Path(out_dir) / f"snap-{taken[0]}"
        # Everything measured first: the census below allocates, and reading an
        # object's __dict__ creates it for good (Python 3.11 makes them lazily).
        meta: dict[str, Any] = {
            "rss_mb": _memory(os.getpid())["VmRSS"],
            "traced_bytes": tracemalloc.get_traced_memory()[0] if frames else None,
            "tracemalloc_own_bytes": tracemalloc.get_tracemalloc_memory() if frames else None,
            "mallinfo": _mallinfo(),
        }
        snapshot = tracemalloc.take_snapshot() if frames else None
        types: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        by_code: Counter[str] = Counter()
        by_owner: Counter[str] = Counter()
        for obj in gc.get_objects():
            name = type(obj).__qualname__
            types[name] += 1
            size = sys.getsizeof(obj)
            sizes[name] += size
            _count_containers(obj, name, by_owner)
            # A suspended coroutine or generator holds its frame: name it by its code.
            if isinstance(obj, CoroutineType):
                code = obj.cr_code
            elif isinstance(obj, AsyncGeneratorType):
                code = obj.ag_code
            elif isinstance(obj, GeneratorType):
                code = obj.gi_code
            else:
                continue
            by_code[f"{name} {code.co_qualname} ({os.path.basename(code.co_filename)})"] += size
        meta.update(types=dict(types), type_bytes=dict(sizes), frame_bytes=dict(by_code),
                    container_bytes=dict(by_owner), garbage_collected=gc.collect())
        if snapshot is not None:
            snapshot.dump(f"{base}.tm")
        Path(f"{base}.json.part").write_text(json.dumps(meta))
        os.replace(f"{base}.json.part", f"{base}.json")

    signal.signal(signal.SIGUSR1, dump)
    from tlproxy.cli import main as cli_main

    return cli_main(argv)


_CONTAINERS = (set, dict, list, deque, OrderedDict)


def _package(filename: str) -> str:
    """The package a source file belongs to: ``trio``, ``httpx``, ``tlproxy``, ``stdlib``."""
    if filename.startswith("<attrs generated"):
        return filename.split()[-1].split(".")[0]  # "<... trio._core._run.CancelStatus>"
    path = Path(filename)
    for marker in ("site-packages", "tlproxy"):
        if marker in path.parts:
            index = path.parts.index(marker)
            return "tlproxy" if marker == "tlproxy" else path.parts[index + 1].removesuffix(".py")
    return "stdlib" if "python3" in filename else filename


def _count_containers(obj: object, name: str, out: Counter[str]) -> None:
    """Sets, dicts, lists and deques held in an object's attributes, by owner and attribute."""
    if isinstance(obj, type):
        return
    fields = getattr(obj, "__dict__", None)
    items = list(fields.items()) if isinstance(fields, dict) else []
    slots = [s for k in type(obj).__mro__ for s in getattr(k, "__slots__", ())
             if isinstance(s, str) and s not in ("__dict__", "__weakref__")]
    for slot in slots:
        with contextlib.suppress(AttributeError):
            items.append((slot, getattr(obj, slot)))
    for attr, value in items:
        if type(value) in _CONTAINERS:
            out[f"{type(value).__name__} {name}.{attr}"] += sys.getsizeof(value)


class _Profile:
    """The bench's side of ``--profile``: ask the worker for snapshots and compare them."""

    def __init__(self, out_dir: Path, frames: int) -> None:
        self.dir = out_dir
        self.frames = frames
        self.taken = 0

    def command(self, python: str, serve: list[str]) -> list[str]:
        code = ("import sys; from bench.streams import _profiled_worker; "
                "sys.exit(_profiled_worker(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))")
        return [python, "-c", code, str(self.dir.resolve()), str(self.frames), *serve]

    def take(self, pid: int, timeout: float = 120.0) -> Path:
        self.taken += 1
        base = self.dir / f"snap-{self.taken}"
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not Path(f"{base}.json").exists():
            if time.monotonic() > deadline:
                log = (self.dir / "worker.log").read_text(errors="replace")[-3000:]
                raise TimeoutError(f"the proxy worker wrote no snapshot; its stderr:\n{log}")
            time.sleep(0.1)
        return base

    @staticmethod
    def report(idle: Path, busy: Path, streams: int, top: int = 25) -> str:
        """What grew between `idle` and `busy`, in total and per stream."""
        meta0 = json.loads(Path(f"{idle}.json").read_text())
        meta1 = json.loads(Path(f"{busy}.json").read_text())
        lines: list[str] = []
        mb = 1024 * 1024
        rss = meta1["rss_mb"] - meta0["rss_mb"]
        lines.append(f"RSS {meta0['rss_mb']:.1f} -> {meta1['rss_mb']:.1f} MB (+{rss:.1f} MB, "
                     f"{rss * 1024 / streams:.1f} KB per stream)")
        traced = meta0["traced_bytes"] is not None
        if meta0["mallinfo"] and meta1["mallinfo"]:
            m0, m1 = meta0["mallinfo"], meta1["mallinfo"]
            lines.append("glibc malloc (MB, idle -> busy): " + ", ".join(
                f"{name} {m0[name] / mb:.1f} -> {m1[name] / mb:.1f}"
                for name in ("arena", "hblkhd", "uordblks", "fordblks", "keepcost")))
        lines.append(f"garbage found by gc.collect() after counting: "
                     f"{meta0['garbage_collected']} idle, {meta1['garbage_collected']} busy")
        if traced:
            # The probe's own allocations (its census of the idle worker) are not the streams'.
            ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
                      tracemalloc.Filter(False, __file__),
                      tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
                      tracemalloc.Filter(False, "<unknown>")]
            snap0 = tracemalloc.Snapshot.load(f"{idle}.tm").filter_traces(ignore)
            snap1 = tracemalloc.Snapshot.load(f"{busy}.tm").filter_traces(ignore)
            by_file = snap1.compare_to(snap0, "filename")
            more = sum(stat.size_diff for stat in by_file) / mb
            own = (meta1["tracemalloc_own_bytes"] - meta0["tracemalloc_own_bytes"]) / mb
            lines.append(f"Python allocations traced: +{more:.1f} MB "
                         f"({more * 1024 / streams:.1f} KB per stream); tracemalloc's own "
                         f"memory (part of the RSS above): +{own:.1f} MB")
            packages: Counter[str] = Counter()
            for stat in by_file:
                packages[_package(stat.traceback[0].filename)] += stat.size_diff
            lines.append("\nBy package of the allocating line (growth, per stream):")
            for name, size in packages.most_common(12):
                lines.append(f"  {size / streams:8.0f} B  {name}")
            for key_type, count in (("lineno", top), ("traceback", 12)):
                lines.append(f"\nTop {count} allocation sites by {key_type} (growth, per stream):")
                for stat in snap1.compare_to(snap0, key_type)[:count]:
                    per = stat.size_diff / streams
                    lines.append(f"  {stat.size_diff / 1024:10.1f} KB {per:8.0f} B/stream "
                                 f"{stat.count_diff / streams:6.1f} blocks/stream  "
                                 + ("" if key_type == "traceback" else str(stat.traceback[0])))
                    if key_type == "traceback":
                        for frame in list(stat.traceback)[-8:]:
                            lines.append(f"        {frame.filename}:{frame.lineno}")
        types0, types1 = Counter(meta0["types"]), Counter(meta1["types"])
        bytes0, bytes1 = Counter(meta0["type_bytes"]), Counter(meta1["type_bytes"])
        growth = sorted(((bytes1[t] - bytes0[t], t) for t in bytes1), reverse=True)
        total = sum(diff for diff, _ in growth)
        lines.append(f"\nLive gc-tracked objects (sys.getsizeof, not what they point to): "
                     f"+{total / mb:.1f} MB, {total / 1024 / streams:.1f} KB per stream; "
                     f"by type (growth: objects per stream, bytes per stream):")
        for diff, name in growth[:top]:
            lines.append(f"  {(types1[name] - types0[name]) / streams:7.2f} "
                         f"{diff / streams:8.0f} B  {name}")
        frames0, frames1 = Counter(meta0["frame_bytes"]), Counter(meta1["frame_bytes"])
        growth = sorted(((frames1[f] - frames0[f], f) for f in frames1), reverse=True)
        total = sum(diff for diff, _ in growth)
        lines.append(f"\nSuspended coroutines and generators with their frames: "
                     f"{total / 1024 / streams:.1f} KB per stream; by code (bytes per stream):")
        for diff, name in growth[:top]:
            lines.append(f"  {diff / streams:8.0f} B  {name}")
        held0, held1 = Counter(meta0["container_bytes"]), Counter(meta1["container_bytes"])
        growth = sorted(((held1[f] - held0[f], f) for f in held1), reverse=True)
        lines.append("\nSets, dicts, lists and deques in objects' attributes, by owner "
                     "(bytes per stream, the container alone):")
        for diff, name in growth[:top]:
            lines.append(f"  {diff / streams:8.0f} B  {name}")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__)
    parser.add_argument("--steps", default="1000,2000", help="concurrent streams per step")
    parser.add_argument("--tokens", type=int, default=15)
    parser.add_argument("--inter-token-ms", type=float, default=1000.0)
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    parser.add_argument("--profile", type=int, nargs="?", const=1, default=None,
                        metavar="FRAMES",
                        help="print where the worker's memory goes: live objects by type, "
                             "glibc's heap and, with FRAMES > 0 (default 1), tracemalloc's "
                             "allocation sites; tracemalloc makes the worker slow and its RSS "
                             "larger, so pair it with a long --inter-token-ms")
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="keep the snapshots there (tracemalloc's .tm, the rest as JSON)")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    python = sys.executable
    sim_port, proxy_port = _free_port(), _free_port()
    body = json.dumps({"model": "economy", "stream": True,
                       "messages": [{"role": "user", "content": "stream please"}]}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        snapshots = args.profile_dir or Path(tmp)
        snapshots.mkdir(parents=True, exist_ok=True)
        profile = _Profile(snapshots, args.profile) if args.profile is not None else None
        config = Path(tmp) / "tlproxy.toml"
        config.write_text(_CONFIG.format(port=sim_port))
        env = dict(os.environ, TLPROXY_LOG_LEVEL="WARNING")
        sim = subprocess.Popen(
            [python, "-m", "tlproxy.cli", "sim", "--port", str(sim_port),
             "--tokens", str(args.tokens), "--inter-token-ms", str(args.inter_token_ms)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        serve = ["serve", "--config", str(config), "--port", str(proxy_port), "--workers", "1"]
        proxy = subprocess.Popen(
            profile.command(python, serve) if profile else [python, "-m", "tlproxy.cli", *serve],
            env=env, cwd=tmp, stdout=subprocess.DEVNULL,
            stderr=(snapshots / "worker.log").open("wb") if profile else subprocess.DEVNULL)
        try:
            _wait_http(sim_port, "/v1/models")
            _wait_http(proxy_port, "/healthz")
            idle = _memory(proxy.pid)
            idle_snapshot = profile.take(proxy.pid) if profile else None
            hold = args.tokens * args.inter_token_ms / 1000 + 2.0
            report: dict[str, Any] = {
                "command": " ".join(["python -m bench.streams", *(argv or sys.argv[1:])]),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()},
                "idle_rss_mb": round(idle["VmRSS"], 1),
                "steps": [trio.run(_step, proxy_port, n, body, proxy.pid, hold, profile)
                          for n in steps],
            }
            if profile is not None and idle_snapshot is not None:
                for step in report["steps"]:
                    if "snapshot" in step:
                        print(f"== {step['streams']} streams open, against idle ==")
                        print(profile.report(idle_snapshot, Path(step.pop("snapshot")),
                                             int(step["streams"])), flush=True)
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
    errors = sum(v for s in report["steps"] for k, v in s["results"].items()
                 if k not in ("ok", "_bodies"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
