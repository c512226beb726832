"""The command line: ``python -m bench.overhead``."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import orjson
import trio
from rich.console import Console

from bench.overhead.load import (
    run_all,
)
from bench.overhead.procs import write_result
from bench.overhead.render import (
    noise_warnings,
    render_markdown,
    render_tables,
)
from bench.overhead.stats import (
    RESULT_FORMAT,
)

# -- command line ------------------------------------------------------------------------------

# JSON at the concurrencies a busy client pool reaches; streams where TTFT is read at p50 and p99.
_JSON_CONCURRENCY = [32, 128]
_STREAM_CONCURRENCY = [8, 64]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead",
        description="Measure what the proxy adds over calling its upstream directly.",
    )
    parser.add_argument("--duration", type=float, default=5.0,
                        help="measured seconds per target, load and concurrency (default 5)")
    parser.add_argument("--json-concurrency", type=int, nargs="+", metavar="C",
                        help="closed-loop workers for JSON requests (default 32 128)")
    parser.add_argument("--stream-concurrency", type=int, nargs="+", metavar="C",
                        help="closed-loop workers for streams (default 8 64)")
    parser.add_argument("--concurrency", type=int, nargs="+", metavar="C",
                        help="the same workers for both loads, where the two options above "
                             "are not given")
    parser.add_argument("--upstream", choices=("fast", "sim"), default="fast",
                        help="fast: bench.fast_upstream (uvloop, little CPU per request; "
                             "default); sim: tlproxy sim")
    parser.add_argument("--upstream-ttft-ms", type=float, nargs="+", default=[200.0],
                        help="the upstream's time to first token; one stack per value "
                             "(default 200; the fast upstream answers JSON at once)")
    parser.add_argument("--inter-token-ms", type=float, default=10.0,
                        help="the upstream's delay between tokens (default 10)")
    parser.add_argument("--tokens", type=int, default=24, help="tokens per answer (default 24)")
    parser.add_argument("--slice", type=float, default=1.0,
                        help="seconds per interleaved slice (default 1)")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="unmeasured seconds per target before each measurement")
    parser.add_argument("--proxy-workers", type=int, default=1,
                        help="passed to tlproxy serve --workers (default 1: one process, like "
                             "the floors); nginx gets as many")
    parser.add_argument("--ledger", action=argparse.BooleanOptionalAction, default=True,
                        help="the proxy writes its ledger (default, as in production); "
                             "--no-ledger measures it without")
    parser.add_argument("--floors", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the floors: a bare proxy hop and hypercorn-trio "
                             "alone (bench.overhead.floors; default on)")
    parser.add_argument("--client-pool", choices=("per-worker", "shared"), default="per-worker",
                        help="one httpcore2 pool per worker (default), or one shared pool")
    parser.add_argument("--nginx", action=argparse.BooleanOptionalAction, default=None,
                        help="also measure nginx as a plain reverse proxy to the same upstream "
                             "(default: on when an nginx binary is found; --no-nginx skips it)")
    parser.add_argument("--nginx-bin", metavar="PATH",
                        help="the nginx binary (default: nginx on PATH, else /usr/sbin/nginx)")
    parser.add_argument("--out", type=Path,
                        help="result JSON (default bench/results/overhead-<timestamp>.json)")
    parser.add_argument("--note", help="free text kept in the result (what was measured, why)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the tables as Markdown")
    parser.add_argument("--report", type=Path, metavar="FILE",
                        help="print the tables of an earlier result file; run nothing")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Reject what cannot run, and fill in each load's concurrencies: its own option, else
    ``--concurrency``, else the default."""
    args.json_concurrency = args.json_concurrency or args.concurrency or _JSON_CONCURRENCY
    args.stream_concurrency = (args.stream_concurrency or args.concurrency
                               or _STREAM_CONCURRENCY)
    if min(*args.json_concurrency, *args.stream_concurrency) < 1:
        raise SystemExit("concurrencies must be positive")
    if args.duration <= 0 or args.slice <= 0:
        raise SystemExit("--duration and --slice must be positive")
    if args.proxy_workers < 1:
        raise SystemExit("--proxy-workers must be at least 1")


def resolve_nginx(wanted: bool | None, binary: str | None) -> str | None:
    """The nginx binary to run, or None: ``--nginx`` demands one, the default takes one found."""
    if wanted is False:
        return None
    found = shutil.which(binary) if binary else (
        shutil.which("nginx") or shutil.which("/usr/sbin/nginx"))
    if found is None and (wanted or binary):
        raise SystemExit(f"no nginx binary at {binary or 'nginx (PATH) or /usr/sbin/nginx'}")
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:
        # A log file gets the full table rather than one squeezed to 80 columns.
        console = Console(width=220)
    if args.report is not None:
        result = orjson.loads(args.report.read_bytes())
        if result.get("format") != RESULT_FORMAT:
            raise SystemExit(f"{args.report} was written by an older bench.overhead; "
                             "its own version of the tool prints it")
    else:
        check_args(args)
        args.nginx_bin = resolve_nginx(args.nginx, args.nginx_bin)
        result = trio.run(run_all, args, argv, console)
        out = write_result(result, args.out, "overhead")
        console.print(f"result written to {out}")
    for table in render_tables(result):
        console.print(table)
    for warning in noise_warnings(result):
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False)
    if args.markdown:
        console.print(render_markdown(result), markup=False, highlight=False, soft_wrap=True)
    errors = sum(
        run[target]["errors"] for up in result["upstreams"] for run in up["runs"]
        for target in run["targets"]
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
