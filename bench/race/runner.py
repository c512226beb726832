"""Running the variants: the proxy and its sims in-process, a warm-up, the measured phase.

`run_direct` is (a), straight to the sims; `run_proxy` every variant through the proxy;
`run_all` runs them in order under one time budget and returns the result file's content
(its shape is what ``--report`` reads back, so it must not change).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import math
import os
import platform
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgspec
import trio

from bench.race.client import closed_loop
from bench.race.probe import CpuWindow, Probe
from bench.race.scenario import (
    CHAT_PROVIDERS,
    EMBED_MODEL,
    Item,
    Variant,
    build_config,
    catalog_models,
    check_prompts,
    variants,
    workload,
)
from tlproxy.config import Config, Policy
from tlproxy.server import Running, serve

__all__ = ["best_by_tier", "machine", "proxy_server", "run_all", "run_direct", "run_proxy"]


@contextlib.asynccontextmanager
async def proxy_server(config: Config) -> AsyncIterator[Running]:
    """The proxy and its sims, in-process, on loopback ports; stopped on exit."""
    async with trio.open_nursery() as nursery:
        running = await nursery.start(functools.partial(serve, config, host="127.0.0.1", port=0))
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()


def best_by_tier(medians: dict[str, float]) -> dict[str, str]:
    """Per tier, the provider with the lowest median TTFT (the first one if none measured)."""
    best: dict[str, str] = {}
    for name, (_model, tier, _seed) in CHAT_PROVIDERS.items():
        if tier not in best or medians.get(name, math.inf) < medians.get(best[tier], math.inf):
            best[tier] = name
    return best


async def run_direct(variant: Variant, args: argparse.Namespace, warm: list[Item],
                     items: list[Item], context: dict[str, Any]) -> dict[str, Any]:
    """(a): each request to the sim of its tier's best provider, measured in a direct warm-up."""
    config = build_config(Policy(speculate=False, hedge_tiers=[]), args.latency, args.seed)
    async with proxy_server(config) as running:
        providers = running.app.config.providers
        urls = {name: f"{providers[name].base_url}/chat/completions" for name in CHAT_PROVIDERS}
        turns: Counter[str] = Counter()
        by_tier: dict[str, list[str]] = {}
        for name, (_model, tier, _seed) in CHAT_PROVIDERS.items():
            by_tier.setdefault(tier, []).append(name)

        def round_robin(item: Item) -> tuple[str, str, str]:
            names = by_tier[item.tier]
            name = names[turns[item.tier] % len(names)]
            turns[item.tier] += 1
            return urls[name], CHAT_PROVIDERS[name][0], name

        warm_samples = await closed_loop(warm, round_robin, 2 * args.concurrency)
        medians = {
            name: statistics.median(ttfts) for name in CHAT_PROVIDERS
            if (ttfts := [s.ttft for s in warm_samples if s.target == name and s.ttft is not None])
        }
        best = context["best"] = best_by_tier(medians)

        def to_best(item: Item) -> tuple[str, str, str]:
            name = best[item.tier]
            return urls[name], CHAT_PROVIDERS[name][0], name

        window = CpuWindow()
        samples = await closed_loop(items, to_best, args.concurrency)
        cpu = window.close()
    return {"name": variant.name, "label": variant.label, "policy": None, "wall_s": cpu["wall_s"],
            "cpu": cpu, "warmup_medians_ms": {k: v * 1000 for k, v in medians.items()},
            "best": best, "samples": [asdict(s) for s in samples], "attempts": [],
            "decisions": []}


async def run_proxy(variant: Variant, args: argparse.Namespace, warm: list[Item],
                    items: list[Item], context: dict[str, Any]) -> dict[str, Any]:
    assert variant.policy is not None
    config = build_config(variant.policy, args.latency, args.seed)
    best = context.get("best") or best_by_tier({})
    async with proxy_server(config) as running:
        probe = Probe(running.app.config)
        probe.install(running)
        url = f"{running.url}/v1/chat/completions"

        def proxy(item: Item) -> tuple[str, str, str]:
            if variant.pinned:
                return url, CHAT_PROVIDERS[best[item.tier]][0], "proxy"
            return url, "auto", "proxy"

        await closed_loop(warm, proxy, 2 * args.concurrency)
        probe.on = True
        window = CpuWindow()
        samples = await closed_loop(items, proxy, args.concurrency)
        cpu = window.close()
        # A request's last attempts report as its race closes, just after the client read
        # [DONE]; give them a moment.
        await trio.sleep(0.3)
        probe.on = False
        engine = running.app.engine
        live = {
            model_id: {"samples": stats.samples,
                       "p50_ms": _ms(stats.quantile(0.5)),
                       "hedge_quantile_ms": _ms(stats.quantile(variant.policy.hedge_quantile)),
                       "p99_ms": _ms(stats.quantile(0.99)),
                       "failures": stats.failures}
            for model_id, stats in engine.stats.items()
        }
        classifier = engine.classifier
        classifier_counts = ({"misses": classifier.misses, "failures": classifier.failures}
                             if classifier is not None else {})
    return {"name": variant.name, "label": variant.label,
            "policy": msgspec.to_builtins(variant.policy), "pinned": variant.pinned,
            "wall_s": cpu["wall_s"], "cpu": cpu,
            "samples": [asdict(s) for s in samples], "attempts": probe.attempts,
            "decisions": probe.decisions, "live_stats_after": live,
            "classifier": classifier_counts}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    head = dirty = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = Path(__file__).resolve().parents[2]  # bench/race/runner.py -> the repository
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=root, capture_output=True, text=True, timeout=10,
                                check=False).stdout
        dirty = bool(status.strip())
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "git_head": head, "git_dirty": dirty}


async def run_all(args: argparse.Namespace, argv: list[str], console: Any) -> dict[str, Any]:
    check_prompts()
    warm = workload(args.warmup, seed=args.seed + 1, economy_share=args.economy_share)
    items = workload(max(args.requests, args.curve_requests), seed=args.seed,
                     economy_share=args.economy_share)
    started = dt.datetime.now(dt.UTC)
    runs = []
    context: dict[str, Any] = {}  # what (a) learned: the best provider per tier
    with trio.fail_after(args.budget):
        for variant in variants(args):
            console.print(f"[bold]{variant.label}[/]: {args.warmup} warm-up + "
                          f"{variant.requests} measured requests at concurrency "
                          f"{args.concurrency} ...")
            t0 = time.monotonic()
            run = run_direct if variant.policy is None else run_proxy
            result = await run(variant, args, warm, items[: variant.requests], context)
            console.print(f"  done in {time.monotonic() - t0:.1f} s")
            runs.append(result)
    return {
        "tool": "bench.race",
        "command": ["python", "-m", "bench.race", *argv],
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "requests": args.requests, "curve_requests": args.curve_requests,
            "warmup": args.warmup, "warmup_concurrency": 2 * args.concurrency,
            "concurrency": args.concurrency, "seed": args.seed,
            "economy_share": args.economy_share, "latency": asdict(args.latency),
            "providers": {name: {"model": m, "tier": t, "sim_seed": s + args.seed}
                          for name, (m, t, s) in CHAT_PROVIDERS.items()},
            "prices_usd_per_mtok": {
                m.id: {"input": m.prices.input, "output": m.prices.output}
                for m in catalog_models().values()
                if m.id in {v[0] for v in CHAT_PROVIDERS.values()} | {EMBED_MODEL}},
        },
        "runs": runs,
    }

