"""The command line: ``python -m bench.race``: run the variants, or ``--report`` a saved file."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path

import orjson
import trio

from bench.race.render import plot_tradeoff, render_markdown, render_rich
from bench.race.runner import machine, run_all
from bench.race.scenario import Latency
from bench.race.stats import analyze

__all__ = ["RESULTS", "build_parser", "main"]

RESULTS = Path(__file__).parent.parent / "results"  # bench/results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.race",
        description="TTFT and token cost of the proxy's first-token race (speculation, "
                    "hedging) against a direct call and against decide-then-call.")
    parser.add_argument("--requests", type=int, default=400,
                        help="measured requests for (a), (b) and (c) (default 400)")
    parser.add_argument("--curve-requests", type=int, default=120,
                        help="measured requests per extra point of the trade-off curve "
                             "(default 120)")
    parser.add_argument("--no-curve", action="store_true", help="only (a), (b) and (c)")
    parser.add_argument("--extra", action="store_true",
                        help="also (a') the proxy with the best model pinned (its overhead alone) "
                             "and (d) the race speculating into economy only, --requests each")
    parser.add_argument("--warmup", type=int, default=50,
                        help="unmeasured requests before each variant (default 50)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    parser.add_argument("--economy-share", type=float, default=0.9,
                        help="fraction of prompts the policy decides economy (default 0.9)")
    parser.add_argument("--seed", type=int, default=0,
                        help="added to every sim's seed and to the workload's (default 0)")
    parser.add_argument("--ttft-ms", type=float, default=300.0,
                        help="chat models' median TTFT (default 300)")
    parser.add_argument("--ttft-p99-ms", type=float, default=1500.0,
                        help="chat models' p99 TTFT (default 1500)")
    parser.add_argument("--decision-ms", type=float, default=100.0,
                        help="embedding (decision) median latency (default 100)")
    parser.add_argument("--decision-p99-ms", type=float, default=150.0,
                        help="embedding (decision) p99 latency (default 150)")
    parser.add_argument("--out", type=Path,
                        help="JSON of every sample (default bench/results/race-<time>.json)")
    parser.add_argument("--plot", type=Path, default=RESULTS / "race-tradeoff.png",
                        help="trade-off plot (default bench/results/race-tradeoff.png)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the tables as Markdown")
    parser.add_argument("--report", type=Path, metavar="FILE",
                        help="analyse and print an earlier result file; run nothing")
    parser.add_argument("--budget", type=float, default=900.0,
                        help="seconds after which the run is abandoned (default 900)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.latency = Latency(ttft_ms=args.ttft_ms, ttft_p99_ms=args.ttft_p99_ms,
                           decision_ms=args.decision_ms, decision_p99_ms=args.decision_p99_ms)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.report is not None:
        raw = json.loads(args.report.read_text())
    else:
        info = machine()
        console.print("command: " + " ".join(["python", "-m", "bench.race", *argv]))
        console.print(f"machine: {info['cpu_model']}, {info['nproc']} cores, Python "
                      f"{info['python']}, {info['platform']}; tlproxy at {info['git_head']}"
                      f"{' (working tree modified)' if info['git_dirty'] else ''}")
        raw = trio.run(run_all, args, argv, console)
        out = args.out or RESULTS / f"race-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2))
        console.print(f"samples: {out}")
    analysis = analyze(raw)
    console.print("command: " + " ".join(raw["command"]))
    m = raw["machine"]
    console.print(f"machine: {m['cpu_model']}, {m['nproc']} cores, Python {m['python']}; "
                  f"started {raw['started']}")
    render_rich(analysis, console)
    plot = plot_tradeoff(analysis, args.plot)
    if plot is not None:
        console.print(f"plot: {plot}")
    if args.markdown:
        console.print(render_markdown(analysis), markup=False, highlight=False)
    return 0

