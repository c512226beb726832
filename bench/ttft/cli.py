"""``python -m bench.ttft``: flags in, tables and files out. `main` is what ``tlproxy bench``
calls too.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from .display import RichProgress, render
from .endpoints import Endpoint, EndpointError, build_endpoints
from .report import RunInfo, write_outputs
from .runner import Level, RunResult, Settings, run
from .workload import FilePrompts, PromptSource, SyntheticPrompts

__all__ = ["build_parser", "main"]

_EPILOG = """\
examples:
  %(prog)s --endpoint proxy=http://127.0.0.1:8080/v1 --model auto -c 1,8,64
  %(prog)s --endpoint openai=https://api.openai.com/v1 --key openai=env:OPENAI_API_KEY \\
      --endpoint proxy=http://127.0.0.1:8080/v1 --model gpt-4o-mini --model proxy=auto \\
      --rate 2,5 --duration 60
Keys are sent as 'Authorization: Bearer KEY' and never printed or written.
"""


def _positive_list(convert: Callable[[str], float], text: str) -> list[float]:
    try:
        values = [convert(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"values must be positive: {text!r}")
    return values


def _positive(convert: Callable[[str], Any], text: str) -> Any:
    value = convert(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def build_parser(prog: str = "python -m bench.ttft") -> argparse.ArgumentParser:
    """The argument parser (exposed so that ``tlproxy bench --help`` can show the same)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Measure time to first token of one or more OpenAI-compatible endpoints, "
        "side by side and interleaved, at several concurrencies or request rates.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("endpoints")
    g.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="NAME=BASE_URL",
        help="an endpoint to measure, e.g. a=http://127.0.0.1:8080/v1 (repeatable)",
    )
    g.add_argument(
        "--endpoints",
        type=Path,
        metavar="FILE",
        help="endpoints from a .toml or .json file (see docs/bench.md)",
    )
    g.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="NAME=KEY",
        help="API key for an endpoint; NAME=env:VAR reads it from $VAR",
    )
    g.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]MODEL",
        help="model for every endpoint, or NAME=MODEL for one (repeatable)",
    )
    g.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=H:V",
        help="extra request header for an endpoint (repeatable)",
    )
    g = p.add_argument_group("load")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument(
        "-c",
        "--concurrency",
        type=functools.partial(_positive_list, int),
        metavar="LIST",
        help="closed loop: requests in flight per endpoint, e.g. 1,8,64 (default 1)",
    )
    mode.add_argument(
        "--rate",
        type=functools.partial(_positive_list, float),
        metavar="LIST",
        help="open loop: Poisson arrivals, requests/s per endpoint, e.g. 1,4",
    )
    bound = g.add_mutually_exclusive_group()
    bound.add_argument(
        "--duration",
        type=functools.partial(_positive, float),
        metavar="S",
        help="seconds of measurement per level (default 10)",
    )
    bound.add_argument(
        "--requests",
        type=functools.partial(_positive, int),
        metavar="N",
        help="measured requests per endpoint per level",
    )
    g.add_argument(
        "--warmup",
        type=_non_negative,
        default=1,
        metavar="N",
        help="uncounted requests per endpoint before each level (default 1)",
    )
    g.add_argument(
        "--timeout",
        type=functools.partial(_positive, float),
        default=60.0,
        metavar="S",
        help="limit for one whole request (default 60)",
    )
    g.add_argument(
        "--http2",
        action="store_true",
        help="speak HTTP/2 (prior knowledge on http://, ALPN on https://)",
    )
    g = p.add_argument_group("prompts")
    g.add_argument(
        "--input-tokens",
        type=functools.partial(_positive, int),
        default=256,
        metavar="N",
        help="synthetic prompt length, ~4 characters/token (256)",
    )
    g.add_argument(
        "--output-tokens",
        type=functools.partial(_positive, int),
        default=128,
        metavar="N",
        help="max_tokens of each request (128)",
    )
    g.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE.jsonl",
        help="real chat requests, one JSON body per line (messages, tools, ...)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed for prompts and arrivals (0)")
    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where to write results (default bench/results/<timestamp>/)",
    )
    g.add_argument("--no-progress", action="store_true", help="no live progress bar")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its results.

    Returns 0; 1 when some endpoint had no successful measured request; 2 for a bad endpoint
    or prompts file; 130 when interrupted (partial results are still written). argparse itself
    exits with 2 on malformed flags.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    try:
        endpoints = build_endpoints(
            endpoints=args.endpoint,
            keys=args.key,
            models=args.model,
            headers=args.header,
            file=args.endpoints,
            environ=os.environ,
        )
        prompts, prompts_info = _prompts(args)
    except (EndpointError, ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    settings = _settings(args)
    result = RunResult(endpoints=endpoints, settings=settings)
    _announce(err, endpoints, settings)

    started_at = datetime.now().astimezone()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with RichProgress(err, enabled=not args.no_progress) as progress:
        try:
            trio.run(run, endpoints, prompts, result, progress)
        except* KeyboardInterrupt:
            # Ctrl-C still writes what was measured, marked as interrupted; a level cut
            # before its first measured request has nothing to show.
            result.interrupted = True
            result.levels[:] = [lv for lv in result.levels if any(lv.samples.values())]
    info = RunInfo(
        started_at=started_at.isoformat(timespec="seconds"),
        finished_at=datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu_seconds=time.process_time() - cpu0,
        wall_seconds=time.perf_counter() - wall0,
        prompts=prompts_info,
    )

    out = Console()
    if not out.is_terminal:
        out.width = 200  # a file or a pipe: never truncate a table
    out.print(render(result.levels))
    out_dir = args.out or _default_out_dir(started_at)
    written = write_outputs(out_dir, result, info, plots=not args.no_plots)
    err.print("wrote " + ", ".join(str(p) for p in written), highlight=False)
    if result.interrupted:
        err.print("[yellow]interrupted: the results are partial[/yellow]")
        return 130
    # An endpoint that never answered (wrong key, wrong model) must not pass for a result.
    silent = [
        e.name
        for e in endpoints
        if not any(s.ok for level in result.levels for s in level.samples.get(e.name, ()))
    ]
    if silent:
        err.print(f"[red]no successful request from: {', '.join(silent)}[/red]", highlight=False)
        return 1
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    if args.rate:
        levels = [Level("open", r) for r in args.rate]
    else:
        levels = [Level("closed", int(c)) for c in (args.concurrency or [1])]
    duration = None if args.requests is not None else (args.duration or 10.0)
    return Settings(
        levels=levels,
        duration=duration,
        requests=args.requests,
        warmup=args.warmup,
        timeout=args.timeout,
        seed=args.seed,
        http2=args.http2,
    )


def _prompts(args: argparse.Namespace) -> tuple[PromptSource, dict[str, Any]]:
    if args.prompts is not None:
        prompts = FilePrompts.load(args.prompts, default_max_tokens=args.output_tokens)
        return prompts, {"kind": "file", "path": str(args.prompts), "lines": len(prompts.lines)}
    synthetic = SyntheticPrompts(
        input_tokens=args.input_tokens, output_tokens=args.output_tokens, seed=args.seed
    )
    info = {
        "kind": "synthetic",
        "input_tokens": args.input_tokens,
        "output_tokens": args.output_tokens,
        "seed": args.seed,
    }
    return synthetic, info


def _announce(console: Console, endpoints: list[Endpoint], settings: Settings) -> None:
    names = ", ".join(f"{e.name} ({e.public()['base_url']}, {e.model})" for e in endpoints)
    levels = ", ".join(level.label for level in settings.levels)
    bound = (
        f"{settings.duration:g} s"
        if settings.duration is not None
        else f"{settings.requests} requests/endpoint"
    )
    console.print(f"measuring {names}\nlevels {levels}, {bound} each", highlight=False)


def _default_out_dir(started_at: datetime) -> Path:
    # Beside this package, i.e. bench/results/ of the source tree (git-ignored), whatever the
    # current directory; a second run within the same second gets a suffix.
    root = Path(__file__).resolve().parents[1] / "results"
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    candidate, n = root / stamp, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{stamp}-{n}"
    return candidate
