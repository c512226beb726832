"""Memory of one proxy worker: many streams open at once, many idle keep-alive connections.

Run as ``python -m bench.overhead.memory`` (``--help`` for the options). Two phases, each
against its own fresh pair of subprocesses (the fast upstream, `bench.fast_upstream`, and
``tlproxy serve`` with one worker), so each phase's VmHWM is its own:

* **streams** (``--streams``, default 1,000): that many streaming chat completions opened at
  once through the proxy. The upstream sends its first token at once, then one every
  ``--inter-token-ms`` (default 1,000 ms), so every stream stays open. Once every stream has
  delivered its first content event (all are then past the race, with an upstream connection
  each), the proxy's VmRSS is sampled for ``--hold`` seconds; then VmHWM is read and the
  streams are closed.
* **idle** (``--idle``, default 10,000): that many connections opened to the proxy, one
  non-streaming chat completion made on each (at most ``--parallel`` at a time), then all held
  idle for ``--hold`` seconds while VmRSS is sampled. Then a fresh connection must still be
  answered, and every held connection makes a second request: it must be answered, or have
  been closed cleanly by the server (end of stream before any byte of the answer, as the
  keep-alive timeout does); anything else counts as an error.

Numbers are reported, not judged: there is no target in the tool. The client is raw h11 on
trio sockets (a few KiB per connection, so 10,000 of them fit in this process); the tool
raises its own RLIMIT_NOFILE to the hard limit, which the subprocesses inherit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import resource
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import orjson
import trio
from rich.console import Console
from rich.table import Table

from bench.overhead.procs import (
    RssSampler,
    _status_kib,
    running_stack,
    tree_of,
    write_result,
)
from bench.overhead.stats import _PROMPT, MODEL, FirstContentDetector

__all__ = ["main", "raise_nofile"]

# What a failed connection or request counts as: its exception's name.
_FAILURES = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError,
             trio.TooSlowError)
_REQUEST_TIMEOUT = 60.0


class _ClosedByServer(Exception):
    """The server ended the connection before sending any byte of an answer."""


@dataclass
class _Client:
    """One HTTP/1.1 connection, driven by h11."""

    stream: trio.SocketStream
    host: str
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    answer_bytes: int = 0

    async def send(self, body: bytes) -> None:
        self.answer_bytes = 0
        headers = [("host", self.host), ("content-type", "application/json"),
                   ("authorization", "Bearer unused"), ("content-length", str(len(body)))]
        data = self.conn.send(h11.Request(method="POST", target="/v1/chat/completions",
                                          headers=headers))
        await self.stream.send_all(data + self.conn.send(h11.Data(data=body))
                                   + self.conn.send(h11.EndOfMessage()))

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(65536)
            if not data and not self.answer_bytes:
                raise _ClosedByServer
            self.answer_bytes += len(data)
            self.conn.receive_data(data)

    async def answer(self) -> tuple[int, bytes]:
        """Read one whole answer; get ready for the next request on the same connection."""
        status, parts = 0, []
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.conn.start_next_cycle()
                return status, b"".join(parts)
            elif isinstance(event, h11.ConnectionClosed):
                raise _ClosedByServer


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (at most the hard limit);
    subprocesses started afterwards inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _body(*, stream: bool) -> bytes:
    return orjson.dumps({"model": MODEL, "messages": _PROMPT, "stream": stream})


async def _connect(url: str) -> _Client:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    return _Client(stream, f"{host}:{port}")


# -- phase 1: many streams open at once --------------------------------------------------------


async def streams_phase(url: str, rss: RssSampler, count: int, hold: float) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    opened = 0
    all_open = trio.Event()
    settled = 0  # streams that either opened or failed

    def one_settled() -> None:
        nonlocal settled
        settled += 1
        if settled == count:
            all_open.set()

    async def one_stream() -> None:
        nonlocal opened
        detector = FirstContentDetector()
        counted = False
        try:
            with trio.fail_after(_REQUEST_TIMEOUT):
                client = await _connect(url)
            async with client.stream:
                with trio.fail_after(_REQUEST_TIMEOUT):
                    await client.send(_body(stream=True))
                while not counted:
                    event = await client.next_event()
                    if isinstance(event, h11.Response) and event.status_code != 200:
                        raise h11.RemoteProtocolError(f"status {event.status_code}")
                    if isinstance(event, h11.Data) and detector.feed(bytes(event.data)):
                        opened += 1
                        counted = True
                        one_settled()
                    if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        raise h11.RemoteProtocolError("stream ended before the hold")
                # Keep reading, so the proxy's writes never back up, until cancelled.
                while not isinstance(await client.next_event(), h11.EndOfMessage):
                    pass
                errors["ended_during_hold"] += 1
        except (*_FAILURES, _ClosedByServer) as exc:
            errors[type(exc).__name__] += 1
            if not counted:
                one_settled()

    before = rss.sample()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one_stream)
        with trio.move_on_after(_REQUEST_TIMEOUT * 2):
            await all_open.wait()
        at_open = rss.sample()
        rss.peak = at_open
        with trio.move_on_after(hold):
            await rss.run()
        hwm = _status_kib(rss.pids, "VmHWM")
        nursery.cancel_scope.cancel()
    return {"streams": count, "opened": opened, "errors": sum(errors.values()),
            "error_kinds": dict(errors), "hold_s": hold,
            "rss_kib": {"before": before, "all_open": at_open, "peak_sampled": rss.peak,
                        "hwm": hwm}}


# -- phase 2: many idle keep-alive connections -------------------------------------------------


async def _one_request(client: _Client) -> str:
    """``ok``, ``closed`` (by the server, before any byte of an answer) or an error's name."""
    try:
        with trio.fail_after(_REQUEST_TIMEOUT):
            await client.send(_body(stream=False))
            status, body = await client.answer()
    except _ClosedByServer:
        return "closed"
    except _FAILURES as exc:
        if client.answer_bytes == 0 and isinstance(exc, trio.BrokenResourceError | OSError):
            # Written into a connection the server had already closed: a clean close too.
            return "closed"
        return type(exc).__name__
    if status != 200 or b'"choices"' not in body:
        return f"http_{status}"
    return "ok"


async def idle_phase(url: str, rss: RssSampler, count: int, hold: float,
                     parallel: int) -> dict[str, Any]:
    clients: list[_Client] = []
    first: Counter[str] = Counter()
    limiter = trio.CapacityLimiter(parallel)

    async def open_one() -> None:
        async with limiter:
            try:
                with trio.fail_after(_REQUEST_TIMEOUT):
                    client = await _connect(url)
            except _FAILURES as exc:
                first[f"connect_{type(exc).__name__}"] += 1
                return
            outcome = await _one_request(client)
            first[outcome] += 1
            if outcome == "ok":
                clients.append(client)
            else:
                await client.stream.aclose()

    before = rss.sample()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(open_one)
    held = rss.sample()
    rss.peak = held
    with trio.move_on_after(hold):
        await rss.run()
    try:
        with trio.fail_after(_REQUEST_TIMEOUT):
            fresh = await _connect(url)
    except _FAILURES as exc:
        fresh_outcome = f"connect_{type(exc).__name__}"
    else:
        fresh_outcome = await _one_request(fresh)
        await fresh.stream.aclose()
    second: Counter[str] = Counter()

    async def again(client: _Client) -> None:
        async with limiter:
            second[await _one_request(client)] += 1

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(again, client)
    hwm = _status_kib(rss.pids, "VmHWM")
    for client in clients:
        await client.stream.aclose()
    errors = sum(n for k, n in first.items() if k != "ok") + sum(
        n for k, n in second.items() if k not in ("ok", "closed"))
    return {"connections": count, "held": len(clients), "hold_s": hold,
            "first_request": dict(first), "fresh_connection": fresh_outcome,
            "second_request": dict(second), "errors": errors + (fresh_outcome != "ok"),
            "rss_kib": {"before": before, "held_idle": held, "peak_sampled": rss.peak,
                        "hwm": hwm}}


# -- the command -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead.memory",
        description="One proxy worker's memory with many streams open, and with many idle "
                    "keep-alive connections.")
    parser.add_argument("--streams", type=int, default=1000,
                        help="streams open at once (default 1000; 0 skips the phase)")
    parser.add_argument("--idle", type=int, default=10_000,
                        help="idle keep-alive connections (default 10000; 0 skips the phase)")
    parser.add_argument("--hold", type=float, default=10.0,
                        help="seconds everything is held open while VmRSS is sampled")
    parser.add_argument("--parallel", type=int, default=200,
                        help="idle phase: connections opened and requests made at once")
    parser.add_argument("--inter-token-ms", type=float, default=1000.0,
                        help="the upstream's delay between tokens, long so streams stay open")
    parser.add_argument("--tokens", type=int, default=600, help="tokens per stream")
    parser.add_argument("--target", choices=("proxy", "bare"), default="proxy",
                        help="proxy (default), or the bare proxy hop of bench.overhead.floors "
                             "(hypercorn-trio and httpcore2 alone): the floor")
    parser.add_argument("--ledger", action=argparse.BooleanOptionalAction, default=True,
                        help="the proxy writes its ledger (default, as in production)")
    parser.add_argument("--out", type=Path,
                        help="result JSON (default bench/results/memory-<timestamp>.json)")
    parser.add_argument("--markdown", action="store_true", help="also print Markdown")
    return parser


async def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    # The fast upstream, one proxy worker, nothing else (the names running_stack reads).
    stack_args = argparse.Namespace(
        upstream="fast", tokens=args.tokens, inter_token_ms=args.inter_token_ms,
        ledger=args.ledger, proxy_workers=1, floors=args.target != "proxy", nginx_bin=None)
    target = args.target
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tlproxy-memory-") as tmp:
        for phase, count in (("streams", args.streams), ("idle", args.idle)):
            if count <= 0:
                continue
            workdir = Path(tmp) / phase
            workdir.mkdir()
            # The pool to the upstream must hold one connection per open stream.
            async with running_stack(stack_args, 0.0, workdir,
                                     max_connections=max(1000, args.streams)) as stack:
                rss = RssSampler(tree_of(stack.pids[target]))
                console.print(f"{phase}: {count} against the {target} at {stack.urls[target]} "
                              f"(pid {stack.pids[target]}) ...")
                with trio.fail_after(600.0 + 2 * args.hold):
                    if phase == "streams":
                        out[phase] = await streams_phase(stack.urls[target], rss, count,
                                                         args.hold)
                    else:
                        out[phase] = await idle_phase(stack.urls[target], rss, count,
                                                      args.hold, args.parallel)
    return out


def render(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) per phase that ran."""
    grids = []
    who = "bare hop" if result["settings"].get("target") == "bare" else "proxy worker"
    if (s := result["phases"].get("streams")) is not None:
        rss = s["rss_kib"]
        grids.append((
            f"One {who} with streams open at once (KiB)",
            ["streams", "opened", "errors", "RSS before", "RSS all open", "RSS peak (sampled)",
             "VmHWM"],
            [[str(s["streams"]), str(s["opened"]), str(s["errors"]), str(rss["before"]),
              str(rss["all_open"]), str(rss["peak_sampled"]), str(rss["hwm"])]]))
    if (i := result["phases"].get("idle")) is not None:
        rss = i["rss_kib"]
        grids.append((
            f"One {who} holding idle keep-alive connections (KiB)",
            ["connections", "held", "first request", "fresh connection", "second request",
             "errors", "RSS before", "RSS held idle", "RSS peak (sampled)", "VmHWM"],
            [[str(i["connections"]), str(i["held"]), _counts(i["first_request"]),
              i["fresh_connection"], _counts(i["second_request"]), str(i["errors"]),
              str(rss["before"]), str(rss["held_idle"]), str(rss["peak_sampled"]),
              str(rss["hwm"])]]))
    return grids


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.streams < 0 or args.idle < 0 or args.hold < 0 or args.parallel < 1:
        raise SystemExit("--streams, --idle and --hold must not be negative, --parallel >= 1")
    console = Console() if sys.stdout.isatty() else Console(width=220)
    # Client sockets, and (inherited) the proxy's: two per stream, one per idle connection.
    nofile = raise_nofile(2 * max(args.streams, args.idle) + 1024)
    started = dt.datetime.now(dt.UTC)
    phases = trio.run(run, args, console)
    result = {
        "tool": "bench.overhead.memory",
        "command": ["python", "-m", "bench.overhead.memory", *(argv or sys.argv[1:])],
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("out", "markdown")},
                     "rlimit_nofile": nofile, "proxy_workers": 1, "upstream": "fast"},
        "phases": phases,
    }
    out = write_result(result, args.out, "memory")
    console.print(f"result written to {out}")
    for title, headers, rows in render(result):
        table = Table(title=title, title_justify="left")
        for header in headers:
            table.add_column(header, justify="right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        if args.markdown:
            lines = [f"**{title}**", "", "| " + " | ".join(headers) + " |",
                     "|" + "---:|" * len(headers)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
    return 1 if any(p["errors"] for p in phases.values()) else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
