"""The load: clients, closed loops, interleaved slices, one whole run."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpcore2
import orjson
import trio
from rich.console import Console

from bench.overhead.procs import (
    RssSampler,
    Snapshot,
    Stack,
    _read,
    _status_kib,
    nginx_version,
    nginx_workers,
    running_stack,
    tree_of,
)
from bench.overhead.stats import (
    _CYCLES_PER_SLICE,
    _HEADERS,
    _MAX_CYCLE,
    _MAX_LEAD,
    _PROMPT,
    _READY_TIMEOUT,
    _REQUEST_TIMEOUT,
    ALL_TARGETS,
    INTERMEDIARIES,
    LOADS,
    MODEL,
    RESULT_FORMAT,
    FirstContentDetector,
    Record,
    Tally,
    compare,
    plan_slices,
    slice_order,
    targets_for,
)
from bench.ttft.stats import percentile

# -- load --------------------------------------------------------------------------------------


# What a failed request counts as: its exception's name.
_HTTP_ERRORS = (httpcore2.NetworkError, httpcore2.ProtocolError, httpcore2.TimeoutException,
                httpcore2.ProxyError)
_TIMEOUTS = {"timeout": {"connect": _REQUEST_TIMEOUT, "read": _REQUEST_TIMEOUT,
                         "write": _REQUEST_TIMEOUT, "pool": _REQUEST_TIMEOUT}}
_HEADER_BYTES = [(k.encode(), v.encode()) for k, v in _HEADERS.items()]


def make_clients(count: int, *, shared: bool) -> list[httpcore2.AsyncConnectionPool]:
    """HTTP/1.1 pools for ``count`` workers: one connection each, or one shared pool of ``count``.

    httpcore2 directly, not httpx: the client shares the machine's cores with the target, and
    httpx's objects cost a third more CPU per request (0.38 to 0.41 ms against 0.26 to 0.29
    here, 32 workers against the fast upstream). One pool per worker by default, so each
    worker keeps its own connection (httpcore 1.0's shared pool rescanned every connection for
    every queued request, encode/httpcore#1035, and made the client the bottleneck);
    ``shared`` measures one pool of ``count`` connections.
    """
    size = count if shared else 1
    return [
        httpcore2.AsyncConnectionPool(max_connections=size, max_keepalive_connections=size,
                                      keepalive_expiry=120.0, http1=True, http2=False)
        for _ in range(1 if shared else count)
    ]


async def json_request(client: httpcore2.AsyncConnectionPool, url: str, body: bytes) -> Record:
    start = trio.current_time()
    try:
        response = await client.request("POST", url, content=body, headers=_HEADER_BYTES,
                                        extensions=_TIMEOUTS)
    except _HTTP_ERRORS as exc:
        return Record(start, trio.current_time(), error=type(exc).__name__)
    end = trio.current_time()
    if response.status != 200:
        return Record(start, end, error=f"http_{response.status}")
    if b'"choices"' not in response.content:
        return Record(start, end, error="no_choices")
    return Record(start, end)


async def stream_request(client: httpcore2.AsyncConnectionPool, url: str,
                         body: bytes) -> Record:
    start = trio.current_time()
    ttft = None
    detector = FirstContentDetector()
    try:
        async with client.stream("POST", url, content=body, headers=_HEADER_BYTES,
                                 extensions=_TIMEOUTS) as response:
            if response.status != 200:
                await response.aread()
                return Record(start, trio.current_time(), error=f"http_{response.status}")
            async for data in response.aiter_stream():
                now = trio.current_time()
                if detector.feed(data):
                    ttft = now - start
    except _HTTP_ERRORS as exc:
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


async def run_load(clients: dict[str, list[httpcore2.AsyncConnectionPool]], stack: Stack,
                   load: str, concurrency: int, args: argparse.Namespace, rss: RssSampler,
                   clock_hz: int, cores: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": _PROMPT}
    if load == "stream":
        body["stream"] = True
    payload = orjson.dumps(body)
    call = stream_request if load == "stream" else json_request
    targets = targets_for(load, stack.targets)

    def requester(target: str) -> Requester:
        pool, url = clients[target], stack.urls[target] + "/v1/chat/completions"

        async def request(index: int) -> Record:
            return await call(pool[index % len(pool)], url, payload)

        return request

    requesters = {target: requester(target) for target in targets}
    # Warm-up: pools filled to C connections, and a typical request duration to stagger by.
    cycles = {}
    warmup = min(args.warmup, args.duration)
    for target in targets:
        records = await closed_loop(requesters[target], concurrency,
                                    begin=trio.current_time(), lead=0.0, seconds=warmup)
        durations = sorted(r.end - r.start for r in records if r.error is None)
        cycles[target] = percentile(durations, 0.5) if durations else 0.0
    leads = {target: min(cycle, _MAX_LEAD) for target, cycle in cycles.items()}
    slices, seconds = plan_slices(args.duration, args.slice, max(cycles.values()))
    # Workers may still have been starting when the proxy first answered; nginx is a master
    # and its workers (only the workers carry requests).
    groups = {name: tree_of(pid) for name, pid in stack.pids.items()}
    groups["upstream"] = groups.pop("direct")
    groups["client"] = [os.getpid()]
    rss.pids = groups["proxy"]
    tallies = {target: Tally(stream=load == "stream") for target in targets}
    rss.peak = 0
    for target in slice_order(slices, targets):
        tally = tallies[target]
        begin = trio.current_time()
        w0, w1 = begin + leads[target], begin + leads[target] + seconds
        async with trio.open_nursery() as nursery:
            nursery.start_soon(measure_window, groups, tally, w0, w1)
            records = await closed_loop(requesters[target], concurrency, begin=begin,
                                        lead=leads[target], seconds=seconds)
        tally.add_slice(records, w0, w1)
    summaries = {t: tallies[t].summary(clock_hz, cores) for t in targets}
    for target in targets:
        if target in INTERMEDIARIES:
            # Its own processes' CPU over its own windows, per request it completed in them.
            summaries[target]["cpu_ms_per_request"] = tallies[target].cpu_ms_per_request(
                target, clock_hz)
            summaries[target]["vs_direct"] = compare(summaries["direct"], summaries[target])
    return {
        "load": load,
        "concurrency": concurrency,
        "targets": list(targets),
        "slices_per_target": slices,
        "slice_s": seconds,
        "stagger_s": leads,
        **summaries,
        "proxy_rss_peak_kib": rss.peak,
    }


async def run_upstream(args: argparse.Namespace, ttft_ms: float, workdir: Path,
                       console: Console) -> dict[str, Any]:
    clock_hz = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    size = max(*args.json_concurrency, *args.stream_concurrency)
    async with running_stack(args, ttft_ms, workdir) as stack:
        console.print(f"upstream ({args.upstream}) TTFT {ttft_ms:g} ms:")
        for target in stack.targets:
            processes = len(tree_of(stack.pids[target]))
            console.print(f"  {target}: pid {stack.pids[target]} ({processes} processes) at "
                          f"{stack.urls[target]}")
        rss = RssSampler(tree_of(stack.pids["proxy"]))
        idle = rss.sample()
        runs = []
        async with contextlib.AsyncExitStack() as exits:
            clients = {
                target: [await exits.enter_async_context(client) for client in
                         make_clients(size, shared=args.client_pool == "shared")]
                for target in stack.targets
            }
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rss.run)
                for load in LOADS:
                    for concurrency in concurrencies(args, load):
                        console.print(f"  {load} at concurrency {concurrency} ...")
                        runs.append(await run_load(clients, stack, load, concurrency, args, rss,
                                                   clock_hz, cores))
                nursery.cancel_scope.cancel()
        # Summed per process, so an upper bound of the tree's simultaneous peak.
        proxy_tree = rss.pids
        hwm = _status_kib(proxy_tree, "VmHWM")
        return {
            "upstream_ttft_ms": ttft_ms,
            "targets": list(stack.targets),
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


def concurrencies(args: argparse.Namespace, load: str) -> list[int]:
    return list(args.json_concurrency if load == "json" else args.stream_concurrency)


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
    n = len(ALL_TARGETS)
    per_load = n * (args.warmup + _REQUEST_TIMEOUT) + n * (
        args.duration + longest_slice + _MAX_LEAD + _REQUEST_TIMEOUT)
    runs = len(args.json_concurrency) + len(args.stream_concurrency)
    budget = 120.0 + len(args.upstream_ttft_ms) * (_READY_TIMEOUT + runs * per_load)
    with tempfile.TemporaryDirectory(prefix="tlproxy-overhead-") as tmp:
        code = await trio.to_thread.run_sync(_code_under_test, Path(tmp))
        with trio.fail_after(budget):
            for ttft_ms in args.upstream_ttft_ms:
                upstreams.append(await run_upstream(args, ttft_ms, Path(tmp), console))
    return {
        "tool": "bench.overhead",
        "format": RESULT_FORMAT,
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
            "json_concurrency": args.json_concurrency,
            "stream_concurrency": args.stream_concurrency,
            "upstream": args.upstream,
            "floors": args.floors,
            "ledger": args.ledger,
            "upstream_ttft_ms": args.upstream_ttft_ms,
            "inter_token_ms": args.inter_token_ms,
            "tokens": args.tokens,
            "model": MODEL,
            "client_pool": args.client_pool,
            "proxy_workers": args.proxy_workers,
            "nginx": None if args.nginx_bin is None else {
                "binary": args.nginx_bin,
                "version": nginx_version(args.nginx_bin),
                "worker_processes": nginx_workers(args),
            },
        },
        "upstreams": upstreams,
    }
