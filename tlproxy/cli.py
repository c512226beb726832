"""The ``tlproxy`` command: serve, sim."""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import gc
import logging
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import trio

from .catalog import default_config
from .config import ClientKey, Config, ConfigError, SimModelProfile
from .config_load import load_config
from .errors import leaves
from .logsink import LineSink
from .metrics import JSONFormatter

if TYPE_CHECKING:
    from .keys import KeyStore

__all__ = ["main"]

_BANNER = """\
tlproxy is listening on {url}
{source}

Try it:

  curl {url}/v1/chat/completions \\
    -H 'Content-Type: application/json' \\
    -d '{{"model": "auto", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="{key}")
  reply = client.chat.completions.create(
      model="auto", messages=[{{"role": "user", "content": "Hello!"}}])
  print(reply.choices[0].message.content)
"""


def _load(path: str | None, *, serving: bool = True) -> Config:
    """The config `serve` runs on: the file given, ./tlproxy.toml, or the built-in one.

    Every command that acts on what a server would do loads through here, so
    each refuses what `serve` refuses (and `config check`, with the same checks).
    """
    if path is None:
        default = Path("tlproxy.toml")
        if not default.exists():
            return default_config()
        path = str(default)
    try:
        return load_config(path, serving=serving)
    except (ConfigError, OSError) as exc:
        raise SystemExit(_config_message(exc)) from None


def _config_message(exc: ConfigError | OSError) -> str:
    problems = getattr(exc, "problems", ())
    lines = str(exc).splitlines()
    head = f"tlproxy: the config has {len(problems)} problems:\n  " if len(problems) > 1 else ""
    return (head + "\n  ".join(lines)) if head else f"tlproxy: {exc}"


def _banner(config: Config, url: str, workers: int) -> str:
    sims = [n for n, p in config.providers.items() if p.kind == "sim"]
    source = ("Serving the built-in simulated upstream (no provider keys needed)."
              if sims and len(sims) == len(config.providers)
              else f"Providers: {', '.join(config.providers)}")
    source += f" Workers: {workers}."
    key = "YOUR_TLPROXY_KEY" if config.keys or config.keys_db else "unused"
    return _BANNER.format(url=url, source=source, key=key)


async def _shutdown_on_signal(event: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            event.set()
            return


async def _shutdown_when_orphaned(stop: trio.Event, parent: int) -> None:
    """A worker whose supervisor died (SIGKILL, the OOM killer) drains and exits too,
    rather than serve on unsupervised: it sees itself adopted by another process."""
    while not stop.is_set():
        with trio.move_on_after(1.0):
            await stop.wait()
        if os.getppid() != parent:
            stop.set()


# Net allocations between two collections of the youngest generation.
_GC_YOUNG = 7000


def _raise_open_files_limit() -> None:
    """Let the process hold as many sockets as the system allows it.

    Each client connection is a file descriptor, and each upstream
    connection another: a worker holding 10,000 idle keep-alive connections
    needs more than the soft limit many systems start a process with (1,024).
    The hard limit is the operator's ceiling; the soft one is raised to it,
    as Go's runtime does for every program.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return  # nothing to raise
    wanted = _OPEN_FILES_CAP if hard == resource.RLIM_INFINITY else hard
    if wanted > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# Where the soft limit goes when the hard one is unlimited.
_OPEN_FILES_CAP = 1 << 20


def _freeze_startup_heap() -> None:
    """Leave what start-up built out of every later garbage collection.

    Everything allocated until the server is up (modules, the config, the
    catalog, the metrics, the app) lives as long as the process. Left in the
    collector's oldest generation, each full collection walks all of it
    again: measured with 64 streams open, a full pass then took 22 ms of CPU
    on average (up to 32 ms), during which the event loop serves no one,
    a cause of the p99 TTFT tail. `gc.freeze` moves those objects to a
    permanent generation the collector skips (the use Python's documentation
    gives it); after it, a full pass took 5 ms (up to 7 ms). The garbage
    start-up left is collected first, so none of it is kept for good.

    The youngest generation is collected every `_GC_YOUNG` net allocations
    rather than Python's 700: each request allocates and frees thousands of
    objects, and with 64 streams open the default made about 70 young passes
    a second. Measured over the same load, the collector's CPU fell from
    0.29 to 0.06-0.08 ms per stream; each young pass then took 2 to 4 ms on
    average (up to 7) instead of 0.2: fewer, longer pauses, and the p99 TTFT
    at 64 streams did not move between the two settings (older generations
    keep their ratios of 10).
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG, older, oldest)


async def _serve_main(config: Config, host: str, port: int, bind: list[str] | None,
                      banner: bool, *, parent: int | None = None) -> None:
    from .server import serve

    stop = trio.Event()
    async with trio.open_nursery() as watchers:
        watchers.start_soon(_shutdown_on_signal, stop)
        if parent is not None:
            watchers.start_soon(_shutdown_when_orphaned, stop, parent)
        async with trio.open_nursery() as nursery:
            running = await nursery.start(functools.partial(
                serve, config, host=host, port=port, bind=bind, shutdown_trigger=stop.wait))
            _freeze_startup_heap()
            if banner:
                print(_banner(config, running.url, 1), flush=True)
        # Once `stop` is set hypercorn drains in-flight requests, then `serve` returns;
        # whichever watcher did not set it has nothing left to watch.
        watchers.cancel_scope.cancel()


def _cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _raise_open_files_limit()
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    workers = args.workers if args.workers is not None else config.server.workers
    workers = workers or os.cpu_count() or 1
    if args.fd is not None:
        if args.limits_file is not None:
            config = msgspec.structs.replace(config, limits=msgspec.structs.replace(
                config.limits, shared_file=args.limits_file))
        trio.run(functools.partial(_serve_main, config, host, port, [f"fd://{args.fd}"], False,
                                   parent=os.getppid()))
        return 0
    try:
        if workers <= 1:
            trio.run(_serve_main, config, host, port, None, True)
            return 0
        return _run_workers(args, config, host, port, workers)
    except (OSError, BaseExceptionGroup) as exc:
        # A port taken by another process, an address this machine does not
        # have, a privileged port: the operator's to fix, said in one line.
        refused = _bind_error(exc)
        if refused is None:
            raise
        print(f"tlproxy: cannot listen on {host}:{port}: {refused.strerror}", file=sys.stderr)
        return 1


_BIND_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def _bind_error(exc: BaseException) -> OSError | None:
    """The one bind failure `exc` is (or a group holds nothing but), else None."""
    match leaves(exc):
        case [OSError() as error] if error.errno in _BIND_ERRORS:
            return error
    return None


def _run_workers(
    args: argparse.Namespace, config: Config, host: str, port: int, workers: int
) -> int:
    """Several processes accept on one listening socket, each with its own trio loop."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    command = [sys.executable, "-m", "tlproxy.cli", "serve", "--fd", str(sock.fileno())]
    if args.config:
        command += ["--config", args.config]
    with contextlib.ExitStack() as cleanup:
        if config.limits.redis_url is None and config.limits.shared_file is None:
            # Without Redis the workers share their limits through one file of this run's.
            folder = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tlproxy-limits-"))
            command += ["--limits-file", os.path.join(folder, "limits.db")]
        return _start_workers(command, sock, config, host, workers)


def _start_workers(command: list[str], sock: socket.socket, config: Config, host: str,
                   workers: int) -> int:
    bound = sock.getsockname()[1]
    children = [subprocess.Popen(command, pass_fds=(sock.fileno(),)) for _ in range(workers)]
    # The workers hold the socket now. Were the parent to keep its copy, the
    # kernel would go on queueing connections after the workers stopped
    # accepting on SIGTERM, and those clients would hang instead of being refused.
    sock.close()
    url = f"http://{'[' + host + ']' if ':' in host else host}:{bound}"
    print(_banner(config, url, workers), flush=True)

    stopping = False

    def forward(signum: int, _frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.returncode is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return _supervise(children, forward, lambda: stopping)


def _supervise(children: list[subprocess.Popen[bytes]], stop: Callable[[int], None],
               stopping: Callable[[], bool]) -> int:
    """Wait for the workers; the first to exit unasked stops the others.

    A worker that dies (a crash, the OOM killer, a failed start) must not leave
    the others serving at reduced capacity unnoticed: the server stops and
    exits non-zero, so whatever supervises it (systemd, Kubernetes) restarts it.
    """
    by_pid = {child.pid: child for child in children}
    failure = 0
    while by_pid:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        child = by_pid.pop(pid, None)
        if child is None:
            continue
        child.returncode = code = os.waitstatus_to_exitcode(status)
        if stopping():
            failure = failure or max(code, 0)
            continue
        print(f"tlproxy: worker {pid} exited ({_exit_reason(code)}); stopping the others",
              file=sys.stderr, flush=True)
        failure = code if code >= 0 else 128 - code
        stop(signal.SIGTERM)
    return failure


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"code {code}"


def _cmd_sim(args: argparse.Namespace) -> int:
    from .server import serve_sim
    from .sim import SimUpstream

    profile = SimModelProfile(
        ttft_ms=args.ttft_ms, ttft_p99_ms=args.ttft_p99_ms,
        inter_token_ms=args.inter_token_ms, tokens=args.tokens, error_rate=args.error_rate,
    )
    models = {m.id: profile for m in default_config().models}
    sim = SimUpstream(models, seed=args.seed, default=profile)

    async def run() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_shutdown_on_signal, stop)
            addresses = await nursery.start(
                functools.partial(serve_sim, sim, host=args.host, port=args.port))
            print(f"tlproxy sim: OpenAI-compatible upstream at {addresses[0]}/v1", flush=True)
            await stop.wait()
            nursery.cancel_scope.cancel()

    trio.run(run)
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    from .explain import describe_config

    try:
        config = load_config(args.file, serving=True)
    except (ConfigError, OSError) as exc:
        print(_config_message(exc), file=sys.stderr)
        return 1
    print(describe_config(config))
    print(f"\n{args.file}: OK")
    return 0


def _cmd_route(args: argparse.Namespace) -> int:
    import orjson

    from .errors import ProxyError
    from .explain import describe_plan
    from .router import Router
    from .stats import StatsBook
    from .wire import decode_chat_request

    config = _load(args.config, serving=False)
    try:
        _, body = decode_chat_request(Path(args.request).read_bytes())
        key = None
        if args.key is not None:
            key, problem = _named_key(config, args.key)
            if key is None:
                print(f"tlproxy: {problem}", file=sys.stderr)
                return 1
        headers = dict(h.split(":", 1) for h in args.header or ())
        headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
        plan = Router(config, StatsBook()).plan_chat(body, headers=headers, key=key)
    except ProxyError as exc:
        print(f"tlproxy: the request would be refused: {orjson.loads(exc.body())}",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tlproxy: {exc}", file=sys.stderr)
        return 1
    print(describe_plan(plan))
    return 0


def _named_key(config: Config, name: str) -> tuple[ClientKey | None, str]:
    """A client key by name, from the config or the key store, as `serve` would use it."""
    from .config_check import key_problems
    from .keys import KeyStore

    key = next((k for k in config.keys if k.name == name), None)
    if key is None and config.keys_db and Path(config.keys_db).exists():
        found = KeyStore(config.keys_db).lookup(name)
        if found is not None and found[1]:
            return None, f"the key {name!r} is revoked: the server refuses it (401)"
        key = found[0] if found else None
    if key is None:
        where = " or the key store" if config.keys_db else ""
        return None, f"no client key named {name!r} in the config{where}"
    problems = key_problems(key, config)
    if problems:
        reasons = "; ".join(f"{p.path}: {p.message}" for p in problems)
        return None, f"the key {name!r} cannot be used, the server refuses it (403): {reasons}"
    return key, ""


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        from bench.ttft import main as bench_main
    except ImportError as exc:
        print(f"tlproxy bench needs the bench extra (pip install 'tlproxy[bench]'): {exc}",
              file=sys.stderr)
        return 2
    return bench_main(args.args)


# `tlproxy keys create` options, by the field of a key they set.
_KEY_OPTIONS = {"rpm": "--rpm", "tpm": "--tpm", "budget_usd": "--budget-usd",
                "budget_period": "--period", "policy": "--policy",
                "allowed_tiers": "--allowed-tiers", "name": "NAME"}


def _new_key_problems(args: argparse.Namespace, tiers: list[str] | None) -> list[str]:
    """What would make the key unusable, checked against the config `serve` would load."""
    from .config_check import key_problems

    config = _load(args.config)
    key = ClientKey(name=args.name, hash="", policy=args.policy,
                    allowed_tiers=tiers,  # type: ignore[arg-type]
                    rpm=args.rpm, tpm=args.tpm, budget_usd=args.budget_usd,
                    budget_period=args.period)
    return [f"{_KEY_OPTIONS.get(p.path, p.path)}: {p.message}"
            for p in key_problems(key, config)]


def _key_store(args: argparse.Namespace) -> KeyStore:
    from .keys import KeyStore

    path = args.db or _load(args.config).keys_db
    if not path:
        raise SystemExit("tlproxy: no key store: pass --db FILE or set keys_db in the config")
    return KeyStore(path)


def _cmd_keys(args: argparse.Namespace) -> int:
    store = _key_store(args)
    if args.keys_command == "create":
        tiers = [t.strip() for t in args.allowed_tiers.split(",")] if args.allowed_tiers else None
        problems = _new_key_problems(args, tiers)
        if problems:
            for problem in problems:
                print(f"tlproxy: {problem}", file=sys.stderr)
            print(f"tlproxy: key {args.name!r} not created", file=sys.stderr)
            return 2
        try:
            token = store.create(args.name, rpm=args.rpm, tpm=args.tpm,
                                 budget_usd=args.budget_usd, budget_period=args.period,
                                 policy=args.policy, allowed_tiers=tiers)
        except sqlite3.IntegrityError:
            print(f"tlproxy: a key named {args.name!r} exists already", file=sys.stderr)
            return 1
        print(token)
        print(f"Key {args.name!r} created. It is shown once: store it now.", file=sys.stderr)
        return 0
    if args.keys_command == "revoke":
        if not store.revoke(args.name):
            print(f"tlproxy: no live key named {args.name!r}", file=sys.stderr)
            return 1
        print(f"Key {args.name!r} revoked; servers refuse it within a second.", file=sys.stderr)
        return 0
    for row in store.list():
        state = "revoked" if row["revoked_at"] else "active"
        print(f"{row['name']}\ttlp-{row['id']}-...\t{state}\trpm={row['rpm']} "
              f"tpm={row['tpm']} budget={row['budget_usd']}/{row['budget_period']} "
              f"policy={row['policy'] or 'default'} tiers={row['allowed_tiers'] or 'all'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlproxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="TOML config (default: ./tlproxy.toml if present, "
                       "else the built-in simulated upstream)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8080; 0 picks one)")
    serve.add_argument("--workers", type=int,
                       help="worker processes (default: one per CPU core)")
    serve.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--limits-file", help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve)

    config = sub.add_parser("config", help="work with config files")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config and print the catalog, "
                                  "secrets masked")
    check.add_argument("file")
    check.set_defaults(func=_cmd_config_check)

    keys = sub.add_parser("keys", help="client API keys: create, revoke, list")
    keys.add_argument("--db", help="the key store (default: keys_db from the config)")
    keys.add_argument("--config", help="config file (default as for serve)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a key and print it once")
    create.add_argument("name")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--budget-usd", type=float, help="spend allowed per period")
    create.add_argument("--period", choices=["day", "month"], default="month")
    create.add_argument("--policy", help="a named policy from the config")
    create.add_argument("--allowed-tiers", help="comma-separated, e.g. economy")
    revoke = keys_sub.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("name")
    keys_sub.add_parser("list", help="list keys (never the secrets)")
    keys.set_defaults(func=_cmd_keys)

    route = sub.add_parser("route", help="explain where a request would go, calling nothing")
    route.add_argument("--explain", dest="request", required=True, metavar="REQUEST.json",
                       help="a chat completions request body")
    route.add_argument("--key", help="a client key's name (config or key store), for its "
                       "policy and tiers")
    route.add_argument("--config", help="config file (default as for serve)")
    route.add_argument("--header", action="append", metavar="NAME:VALUE",
                       help="a request header, e.g. x-tlproxy-task:summarize")
    route.set_defaults(func=_cmd_route)

    bench = sub.add_parser("bench", help="measure TTFT of OpenAI-compatible endpoints "
                           "(python -m bench.ttft; needs the 'bench' extra)", add_help=False)
    bench.add_argument("args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_bench)

    sub.add_parser("report", help="spend, savings and the cost of speed, from the ledger "
                   "(tlproxy report --help)", add_help=False)
    sub.add_parser("shadow", help="compare shadow answers with the primary ones "
                   "(tlproxy shadow report --help)", add_help=False)

    sim = sub.add_parser("sim", help="run the simulated upstream as a fake OpenAI server")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8090)
    sim.add_argument("--ttft-ms", type=float, default=0.0)
    sim.add_argument("--ttft-p99-ms", type=float, default=None,
                     help="with --ttft-ms as the median, draw TTFT from a lognormal")
    sim.add_argument("--inter-token-ms", type=float, default=0.0)
    sim.add_argument("--tokens", type=int, default=24)
    sim.add_argument("--error-rate", type=float, default=0.0)
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=_cmd_sim)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Lines are written by a thread of their own: a stuck stderr never stops the loop.
    handler = LineSink()
    if os.environ.get("TLPROXY_LOG_FORMAT", "json") == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=os.environ.get("TLPROXY_LOG_LEVEL", "INFO"), handlers=[handler])
    # No line shows the caller's file, the thread or the process: the logging
    # HOWTO's "Optimization" settings skip finding them for every record (the
    # access log line of every request: 10 us before, 7 after).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # Every option belongs to the benchmark tool, --help included.
        return _cmd_bench(argparse.Namespace(args=argv[1:]))
    if argv[:1] == ["report"]:
        from .report import report_main

        return report_main(argv[1:])
    if argv[:1] == ["shadow"]:
        from .shadow import shadow_main

        return shadow_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, BaseExceptionGroup) as exc:
        # A config mistake found after loading (a key store that cannot be
        # opened, raised from inside the server's nursery) is a message for
        # the operator, never a traceback.
        mistakes = _config_errors(exc)
        if mistakes is None:
            raise
        for mistake in mistakes:
            print(_config_message(mistake), file=sys.stderr)
        return 1


def _config_errors(exc: BaseException) -> list[ConfigError] | None:
    """The `ConfigError`s `exc` is made of, or None if it holds anything else."""
    found = leaves(exc)
    if all(isinstance(error, ConfigError) for error in found):
        return [error for error in found if isinstance(error, ConfigError)]
    return None


if __name__ == "__main__":
    sys.exit(main())
