"""What tracing costs on the hot path (``python -m bench.tracing``).

Starts the simulated upstream, an OTLP/HTTP sink (a collector that decodes
nothing and answers 200, in this process) and three proxies, one worker
each, as subprocesses on loopback: tracing off, tracing on with every trace
recorded, and tracing on with 1 % of traces recorded. Then it drives the same
streamed chat completions at each proxy in turn, in short slices rotated
round by round (ABC, BCA, CAB, ...) so that noise on the machine falls on all
three alike, and reads each proxy's CPU time from ``/proc`` over its slices.

The result is the proxy's CPU per request (its process, the export thread
included) for each setting, and the difference from tracing off: the cost
of building the spans of a request (one server span and one per attempt),
queueing them and exporting them in batches. Spans exported and dropped are
read from each proxy's ``/metrics`` at the end. The client's and the sink's
CPU are not the proxy's and are not counted. Bounded: a few rounds of a few
seconds, loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from bench.overhead.load import closed_loop, make_clients, stream_request
from bench.overhead.procs import Snapshot, _stop, _wait_ready, free_port, tree_of
from bench.overhead.stats import Record, Tally, proxy_config_toml
from bench.ttft.stats import percentile

__all__ = ["main"]

SETTINGS = {
    "off": None,
    "on, 100 %": 1.0,
    "on, 1 %": 0.01,
}
_PROMPT = [{"role": "user", "content": "Say something short."}]


async def _sink(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An OTLP/HTTP collector that keeps nothing: reads the body, answers 200."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/x-protobuf")]})
    await send({"type": "http.response.body", "body": b""})


def _config(sim_url: str, sink_url: str, ratio: float | None) -> str:
    text = proxy_config_toml(sim_url + "/v1", ledger=False)
    if ratio is not None:
        text += (f'\n[tracing]\nenabled = true\nendpoint = "{sink_url}"\n'
                 f"sample_ratio = {ratio}\n")
    return text


@contextlib.asynccontextmanager
async def _stack(args: argparse.Namespace, workdir: Path,
                 sink_url: str) -> AsyncIterator[tuple[dict[str, str], dict[str, int]]]:
    """The sim and one proxy per setting; their URLs and process ids."""
    env = {**os.environ, "TLPROXY_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "tlproxy.cli"]
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    starts = [("sim", [*command, "sim", "--host", "127.0.0.1", "--port", str(sim_port),
                       "--ttft-ms", f"{args.upstream_ttft_ms:g}", "--inter-token-ms", "0",
                       "--tokens", str(args.tokens)], sim_url, sim_url + "/v1/models")]
    for index, (name, ratio) in enumerate(SETTINGS.items()):
        port = free_port()
        config = workdir / f"proxy-{index}.toml"
        config.write_text(_config(sim_url, sink_url, ratio))
        url = f"http://127.0.0.1:{port}"
        starts.append((name, [*command, "serve", "--config", str(config), "--host",
                              "127.0.0.1", "--port", str(port), "--workers", "1"],
                       url, url + "/healthz"))
    processes: list[trio.Process] = []
    try:
        async with httpx.AsyncClient(trust_env=False) as probe:
            for _, cmd, _, ready in starts:
                log = workdir / f"{len(processes)}.log"
                with log.open("wb") as out:
                    processes.append(await trio.lowlevel.open_process(
                        cmd, stdout=out, stderr=out, env=env, cwd=workdir))
                await _wait_ready(probe, ready, processes[-1], log)
        yield ({name: url for name, _, url, _ in starts},
               {name: p.pid for (name, _, _, _), p in zip(starts, processes, strict=True)})
    finally:
        for process in reversed(processes):
            await _stop(process)


async def _spans(url: str) -> dict[str, float]:
    """Spans exported and dropped, from the proxy's /metrics."""
    async with httpx.AsyncClient(trust_env=False) as client:
        text = (await client.get(url + "/metrics")).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("tlproxy_trace_spans_exported_total",
                            "tlproxy_trace_spans_dropped_total")):
            name, value = line.rsplit(" ", 1)
            out[name.removeprefix("tlproxy_trace_spans_")] = float(value)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    clock_hz = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.0
    app: Any = _sink
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as tmp:
        async with trio.open_nursery() as nursery:
            sink = await nursery.start(functools.partial(serve, app, config))
            async with _stack(args, Path(tmp), f"{sink[0]}/v1/traces") as (urls, pids):
                names = list(SETTINGS)
                clients = {n: make_clients(args.concurrency, shared=False) for n in names}
                payload = orjson.dumps({"model": "economy", "messages": _PROMPT,
                                        "stream": True})
                tallies = {name: Tally(stream=True) for name in names}

                def requester(name: str) -> Any:
                    pool, url = clients[name], urls[name] + "/v1/chat/completions"

                    async def request(index: int) -> Record:
                        return await stream_request(pool[index % len(pool)], url, payload)

                    return request

                for name in names:  # warm-up: connections open, code paths hot
                    await closed_loop(requester(name), args.concurrency,
                                      begin=trio.current_time(), lead=0.0, seconds=args.warmup)
                for round_ in range(args.rounds):
                    for name in names[round_ % 3:] + names[:round_ % 3]:
                        # The client (and the sink, in this process) and the sim are
                        # watched too, so "other" is the machine's other tenants only.
                        groups = {"proxy": tree_of(pids[name]), "sim": tree_of(pids["sim"]),
                                  "client": [os.getpid()]}
                        begin = trio.current_time()
                        before = Snapshot(groups)
                        records = await closed_loop(requester(name), args.concurrency,
                                                    begin=begin, lead=0.0, seconds=args.slice)
                        end = trio.current_time()
                        Snapshot(groups).add_delta_to(tallies[name], before)
                        tallies[name].add_slice(records, begin, end)
                spans = {name: await _spans(urls[name]) for name in names}
                for pool in clients.values():
                    for client in pool:
                        await client.aclose()
            nursery.cancel_scope.cancel()
    results: dict[str, Any] = {}
    for name in names:
        tally = tallies[name]
        summary = tally.summary(clock_hz, cores)
        results[name] = {
            "requests": tally.ok,
            "errors": summary["errors"],
            "rps": summary["rps"],
            "cpu_ms_per_request": tally.cpu_ms_per_request("proxy", clock_hz),
            "ttft_p50_ms": percentile(sorted(tally.ttfts), 0.5) * 1000 if tally.ttfts else None,
            "other_cpu_percent": summary["cpu_percent"].get("other"),
            "spans": spans[name],
        }
    return results


def render(results: dict[str, Any]) -> str:
    base = results["off"]["cpu_ms_per_request"]
    lines = ["| tracing | requests | errors | req/s | proxy CPU ms/req | added ms/req | "
             "TTFT p50 ms | spans exported | spans dropped | other CPU % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        cpu = row["cpu_ms_per_request"]
        added = f"{cpu - base:+.3f}" if cpu is not None and base is not None else "-"
        dropped = sum(v for k, v in row["spans"].items() if k.startswith("dropped"))
        exported = row["spans"].get("exported_total")
        lines.append(
            f"| {name} | {row['requests']} | {row['errors']} | {row['rps']:.0f} | "
            f"{cpu:.3f} | {added if name != 'off' else '-'} | "
            f"{row['ttft_p50_ms']:.1f} | {exported if exported is not None else '-'} | "
            f"{dropped if row['spans'] else '-'} | {row['other_cpu_percent']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__)
    parser.add_argument("--rounds", type=int, default=6, help="rounds of slices (default 6)")
    parser.add_argument("--slice", type=float, default=2.0,
                        help="seconds per setting per round (default 2)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="closed-loop streams at once (default 16)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="unmeasured seconds per setting first (default 1)")
    parser.add_argument("--upstream-ttft-ms", type=float, default=0.0,
                        help="the sim's time to first token (default 0)")
    parser.add_argument("--tokens", type=int, default=24, help="tokens per answer (default 24)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = trio.run(run, args)
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, "
          f"{args.rounds} rounds x {args.slice:g} s per setting, concurrency {args.concurrency}")
    print(render(results))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
