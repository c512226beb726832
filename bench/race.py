"""The first-token race, measured: what speculation and hedging buy in TTFT, and what they cost.

Run it as ``python -m bench.race`` (``--help`` for the options), from the repository root.

What runs
---------
One trio process holds everything: the proxy (`tlproxy.server.serve`, hypercorn on a loopback
port), its simulated upstreams (each provider its own `SimUpstream` on its own port, so each has
its own latency draw) and the client. Providers: two per tier, one chat model each (catalog ids
and prices: premium ``claude-sonnet-4-6`` on p1 and ``gpt-5.4`` on p2, economy ``gpt-5-mini`` on
e1 and ``gemini-2.5-flash`` on e2), every one with a lognormal TTFT of median 300 ms and p99
1500 ms, 10 ms between tokens, 20 tokens; and an embedding model (``text-embedding-3-small``)
on a sim of its own with TTFT median 100 ms, p99 150 ms, which the semantic classifier calls:
that call is the slow routing decision. Every sim is seeded (``sim_seed``), so a rerun draws
the same latencies per provider in the same order (which request gets which draw still depends
on timing).

Workload: single-turn prompts, each equal to one of the classifier's examples (so the label is
certain whatever the embedding), none with the prompt cues the fast ``summarize-extract`` rule
reads. With the default rules, the fast signals leave both tiers possible (``first-turn`` says
premium, ``semantic-summarize-extract`` may say economy): only the classifier decides. About
``--economy-share`` (default 90 %) of the prompts are summarization / extraction requests
(decided economy), the rest conversation (decided premium). The classifier's result cache is off
(``cache_size = 0``) so that every request pays the decision, as a stream of distinct prompts
would; its example vectors are embedded once, in the warm-up.

Variants, each on a fresh proxy and fresh sims, after a warm-up of ``--warmup`` requests (which
fills the live TTFT statistics that hedging reads; sent at twice the concurrency, to save time),
then ``--requests`` measured requests at ``--concurrency`` (a closed loop: each worker sends its
next request when the last one ended). Every variant sends the same prompts in the same order:

* (a) ``direct``: each request straight to the sim of the best single provider of the tier the
  proxy would decide for it ("best" = lowest median TTFT measured in a direct warm-up);
* (b) ``wait``: through the proxy without speculation or hedging (``speculate = false``,
  ``hedge_tiers = []``): decide, then call the best model of the decided tier;
* (c) ``race``: through the proxy with the defaults (speculation, hedging at the p90 of each
  model's live TTFT);
* the trade-off curve: the race with ``hedge_quantile`` 0.5, 0.75, 0.95, 0.99 (0.9 is (c)) and
  with hedging off (speculation only), ``--curve-requests`` each;
* with ``--extra``: (a') through the proxy with the best model pinned by name (no decision, no
  race: the proxy's own overhead), and (d) the race speculating into economy only (the default
  rules reordered so the fast guess is economy, ``fanout = 1``: a premium model is called only
  once the decision names it), ``--requests`` each.

What is measured
----------------
* TTFT on the client: from just before the request is sent to the read that completes the first
  SSE event with content (not the role-only chunk), on ``trio.current_time()``; p50/p90/p99 with
  95 % bootstrap intervals (percentile method, 2000 resamples, seeded).
* Decision time: every call of the server's classifier (wrapped in place), which is the
  embedding round trip plus the nearest-neighbour search.
* "Added": per request, the client's TTFT minus the race's own time from its first attempt's
  start to the winner's first token (joined on ``x-request-id``): what the proxy adds around
  the upstream, paired, so free of the upstream's latency draw. Without speculation it includes
  the whole decision; with it, only the part of the decision that outlasted the first token.
* CPU: this process's, and the rest of the machine's (from ``/proc/stat``), over each measured
  phase, in % of one core; a warning is printed when other processes used more than 25 %.
* Cost: the engine's `AttemptRecord` of every upstream attempt (its ``_on_record`` is wrapped in
  place), priced at the catalog's prices: input tokens from the upstream's usage when a chunk
  carried it, else ceil(characters of the messages / 4); output tokens from the usage, else the
  content chunks received (one token per chunk: the role chunk is not counted). An attempt that
  lost, was cut by the decision or failed is "waste". The extra cost of a variant is its waste
  per request minus (b)'s, in % of (b)'s total cost per request for the same prompts (a curve
  point sends only the first ``--curve-requests`` of them); it is split into speculation
  (``outside-tier``: the tier the decision did not name) and hedging (``lost``). The
  classifier's own embedding call costs the same in (b) and (c) and is left out.

Caveats
-------
* Client, proxy and sims share one event loop: CPU spent by one delays the others' clock
  readings. Through the proxy there is more of it (three HTTP hops instead of one), so the
  proxy's numbers include some of the client's and sims' scheduling delay too.
* With 400 samples, a p50 is known to about ±15 ms and a p99 is the 4th-largest sample: read the
  intervals, not only the points.
* The sim's TTFT draws are independent per request; real providers' slow periods are correlated
  (a slow minute, a slow region), which hedging across providers helps with more, and hedging
  within one provider less.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import orjson
import trio

from tlproxy.catalog import default_config
from tlproxy.config import (
    ClassifierConfig,
    Condition,
    Config,
    LedgerConfig,
    ModelConfig,
    Policy,
    ProviderConfig,
    Rule,
    SimModelProfile,
)
from tlproxy.policy import extract_signals
from tlproxy.server import Running, serve

__all__ = ["main"]

log = logging.getLogger("bench.race")

RESULTS = Path(__file__).parent / "results"

# provider -> (catalog model id, tier, sim seed)
CHAT_PROVIDERS: dict[str, tuple[str, str, int]] = {
    "p1": ("claude-sonnet-4-6", "premium", 101),
    "p2": ("gpt-5.4", "premium", 102),
    "e1": ("gpt-5-mini", "economy", 201),
    "e2": ("gemini-2.5-flash", "economy", 202),
}
EMBED_PROVIDER, EMBED_MODEL, EMBED_SEED = "emb", "text-embedding-3-small", 301

# Decided economy by `semantic-summarize-extract`: each equals a classifier example.
ECONOMY_PROMPTS: dict[str, list[str]] = {
    "summarization": [
        "What are the main takeaways from this memo? Support tickets rose by a fifth after the "
        "pricing change, mostly from customers on the legacy plan, while churn stayed flat and the "
        "new onboarding flow cut the time to first value by two days.",
        "Give me the gist of these meeting notes: the team agreed to move the launch to March, "
        "keep the beta open to existing customers, hire two more support engineers before launch, "
        "and rewrite the pricing page next week.",
        "Tell me in two sentences what this article argues: cities that replaced parking minimums "
        "with maximums saw housing starts rise within three years, with the largest effect near "
        "transit lines and no measurable change in traffic.",
    ],
    "extraction": [
        "What did the customer actually complain about in this email? I was charged twice for my "
        "March subscription, the refund form returns an error, and nobody answered my two "
        "previous messages about it.",
        "Which dates and amounts appear in this invoice? Invoice 2291, issued 3 February 2026, due "
        "5 March 2026: consulting, 14 hours at 120 euros; travel, 310 euros; total 1,990 euros "
        "before VAT.",
        "Who are the people and companies named here? Ana Duarte, formerly at Northwind, joined "
        "Contoso as chief operating officer in January, replacing Marc Leroy, who moved to the "
        "board of Fabrikam.",
    ],
}
# Decided premium by `first-turn` (the classifier says "chat", which no rule names).
PREMIUM_PROMPTS: list[str] = [
    "Can you help me plan a three-day trip to Lisbon in late spring, with one day outside the "
    "city?",
    "I am thinking about moving from accounting into software engineering. Where would you start, "
    "and what would you avoid?",
]

# The default rules with one change: a first turn goes premium only when the classifier says
# it is a conversation (or code), so the fast guess, made before the classifier answers, is
# economy. With `fanout = 1` the race then speculates into economy alone: the same decisions
# for this workload, but a premium model is only called once the decision names it.
ECONOMY_FIRST_RULES = [
    Rule(name="system-only-warmup", when=Condition(system_only=True), tier="economy"),
    Rule(name="tools", when=Condition(tools=True), tier="premium"),
    Rule(name="summarize-extract", when=Condition(task=["summarization", "extraction"]),
         tier="economy"),
    Rule(name="semantic-summarize-extract",
         when=Condition(semantic_task=["summarization", "extraction"]), tier="economy"),
    Rule(name="structured-output", when=Condition(json_schema=True), tier="economy"),
    Rule(name="semantic-first-turn",
         when=Condition(first_turn=True, semantic_task=["chat", "code"]), tier="premium"),
]

CURVE_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)
_REQUEST_TIMEOUT = 30.0
_BOOTSTRAP = 2000


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    ttft_ms: float = 300.0
    ttft_p99_ms: float = 1500.0
    inter_token_ms: float = 10.0
    tokens: int = 20
    decision_ms: float = 100.0
    decision_p99_ms: float = 150.0


def catalog_models() -> dict[str, ModelConfig]:
    return {m.id: m for m in default_config().models}


def build_config(policy: Policy, latency: Latency, seed: int) -> Config:
    """Two sims per tier and one for the embedding model, each its own provider and port."""
    catalog = catalog_models()
    chat = SimModelProfile(ttft_ms=latency.ttft_ms, ttft_p99_ms=latency.ttft_p99_ms,
                           inter_token_ms=latency.inter_token_ms, tokens=latency.tokens)
    providers: dict[str, ProviderConfig] = {}
    models: list[ModelConfig] = []
    for name, (model_id, _tier, sim_seed) in CHAT_PROVIDERS.items():
        providers[name] = ProviderConfig(kind="sim", sim_models={model_id: chat},
                                         sim_seed=sim_seed + seed)
        models.append(msgspec.structs.replace(catalog[model_id], provider=name))
    embedding = SimModelProfile(ttft_ms=latency.decision_ms, ttft_p99_ms=latency.decision_p99_ms,
                                embedding_dimensions=64)
    providers[EMBED_PROVIDER] = ProviderConfig(kind="sim", sim_models={EMBED_MODEL: embedding},
                                               sim_seed=EMBED_SEED + seed)
    models.append(msgspec.structs.replace(catalog[EMBED_MODEL], provider=EMBED_PROVIDER))
    examples = {**ECONOMY_PROMPTS, "chat": list(PREMIUM_PROMPTS)}
    return Config(
        providers=providers,
        models=models,
        policy=policy,
        classifier=ClassifierConfig(enabled=True, model=EMBED_MODEL, min_similarity=0.5,
                                    timeout=1.0, cache_size=0, examples=examples),
        ledger=LedgerConfig(enabled=False),
    )


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    policy: Policy | None  # None: direct to the sims
    requests: int
    pinned: bool = False  # through the proxy, but naming the best model itself


def variants(args: argparse.Namespace) -> list[Variant]:
    out = [
        Variant("direct", "(a) direct, best single provider", None, args.requests),
        Variant("wait", "(b) proxy, decide then call", Policy(speculate=False, hedge_tiers=[]),
                args.requests),
        Variant("race", "(c) proxy, race (defaults: hedge at p90)", Policy(), args.requests),
    ]
    if args.extra:
        out[1:1] = [Variant("pinned", "(a') proxy, best model pinned (no decision, no race)",
                            Policy(speculate=False, hedge_tiers=[]), args.requests, pinned=True)]
        out.append(Variant("race-econ-first", "(d) race, speculating into economy only",
                           Policy(rules=ECONOMY_FIRST_RULES, fanout=1), args.requests))
    if not args.no_curve:
        for q in CURVE_QUANTILES:
            if q != Policy().hedge_quantile:
                out.append(Variant(f"race-q{q:g}", f"race, hedge at p{q * 100:g}",
                                   Policy(hedge_quantile=q), args.curve_requests))
        out.append(Variant("race-nohedge", "race, hedging off (speculation only)",
                           Policy(hedge_tiers=[]), args.curve_requests))
    return out


# -- workload --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    index: int
    prompt: str
    tier: str  # the tier the policy decides for it

    def body(self, model: str) -> bytes:
        return orjson.dumps({"model": model, "stream": True,
                             "messages": [{"role": "user", "content": self.prompt}]})


def workload(count: int, *, seed: int, economy_share: float) -> list[Item]:
    rng = random.Random(seed)
    economy = [p for prompts in ECONOMY_PROMPTS.values() for p in prompts]
    items = []
    for index in range(count):
        if rng.random() < economy_share:
            items.append(Item(index, rng.choice(economy), "economy"))
        else:
            items.append(Item(index, rng.choice(PREMIUM_PROMPTS), "premium"))
    return items


def check_prompts() -> None:
    """Every prompt must leave the decision to the classifier (no fast cue, first turn)."""
    economy = [p for prompts in ECONOMY_PROMPTS.values() for p in prompts]
    for prompt in [*economy, *PREMIUM_PROMPTS]:
        signals = extract_signals({"messages": [{"role": "user", "content": prompt}]})
        if signals.task is not None or not signals.first_turn:
            raise SystemExit(f"prompt has a fast cue ({signals.task}): {prompt[:60]}...")


# -- the client ------------------------------------------------------------------------------


@dataclass
class Sample:
    index: int
    tier_expected: str
    target: str  # the URL's provider for direct runs, "proxy" otherwise
    start: float
    ttft: float | None = None
    end: float | None = None
    status: int = 0
    tier: str | None = None
    model: str | None = None
    rule: str | None = None
    request_id: str | None = None
    error: str | None = None


def _has_content(event: bytes) -> bool:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return False
            for choice in orjson.loads(payload).get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("tool_calls"):
                    return True
    return False


async def stream_one(client: httpx.AsyncClient, url: str, body: bytes, sample: Sample) -> Sample:
    buffer = b""
    done = False
    try:
        async with client.stream("POST", url, content=body,
                                 headers={"content-type": "application/json",
                                          "authorization": "Bearer bench"}) as response:
            sample.status = response.status_code
            sample.tier = response.headers.get("x-tlproxy-tier")
            sample.model = response.headers.get("x-tlproxy-model")
            sample.rule = response.headers.get("x-tlproxy-rule")
            sample.request_id = response.headers.get("x-request-id")
            if response.status_code != 200:
                await response.aread()
                sample.error = f"http_{response.status_code}"
                return sample
            async for data in response.aiter_raw():
                now = trio.current_time()
                buffer += data
                if sample.ttft is None:
                    events = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
                    if any(_has_content(e) for e in events[:-1]):
                        sample.ttft = now - sample.start
                    buffer = events[-1] if sample.ttft is None else buffer[-64:]
                else:
                    buffer = buffer[-64:]
            done = buffer.rstrip().endswith(b"data: [DONE]")
    except httpx.HTTPError as exc:
        sample.error = type(exc).__name__
    sample.end = trio.current_time()
    if sample.error is None and sample.ttft is None:
        sample.error = "no_content"
    elif sample.error is None and not done:
        sample.error = "no_done"
    return sample


Target = Callable[[Item], tuple[str, str, str]]  # item -> (url, model, target name)


async def closed_loop(items: Sequence[Item], target: Target, concurrency: int) -> list[Sample]:
    """`concurrency` workers, each with its own connection, sending the items in order."""
    samples: list[Sample] = []
    queue = iter(items)
    clients = [httpx.AsyncClient(timeout=_REQUEST_TIMEOUT,
                                 limits=httpx.Limits(max_connections=1))
               for _ in range(concurrency)]

    async def worker(client: httpx.AsyncClient) -> None:
        for item in queue:
            url, model, name = target(item)
            sample = Sample(item.index, item.tier, name, trio.current_time())
            samples.append(await stream_one(client, url, item.body(model), sample))

    try:
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(worker, client)
    finally:
        with trio.CancelScope(shield=True):
            for client in clients:
                await client.aclose()
    return sorted(samples, key=lambda s: s.index)


# -- hooks into the running server -----------------------------------------------------------


@dataclass
class Probe:
    """What the server tells us, collected only while `on` (the measured phase)."""

    config: Config
    on: bool = False
    decisions: list[float] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def install(self, running: Running) -> None:
        engine = running.app.engine
        classifier = engine.classifier
        if classifier is None:
            raise SystemExit("the classifier is not enabled on the server")
        classify = classifier.classify

        async def timed_classify(prompt: str) -> str | None:
            start = trio.current_time()
            try:
                return await classify(prompt)
            finally:
                if self.on:
                    self.decisions.append(trio.current_time() - start)

        classifier.classify = timed_classify  # type: ignore[method-assign]
        on_record = engine._on_record

        # The engine calls `self._on_record(record, ...)` per attempt; whatever else it
        # passes (the request and its body, in recent versions) is handed on untouched.
        def recorded(record: Any, *args: Any, **kwargs: Any) -> Any:
            if self.on:
                body = next((a for a in args if isinstance(a, dict) and "messages" in a), None)
                request = next((a for a in args if isinstance(getattr(a, "id", None), str)),
                               None)
                priced = price_attempt(self.config, record, body)
                priced["request_id"] = None if request is None else request.id
                self.attempts.append(priced)
            return on_record(record, *args, **kwargs)

        engine._on_record = recorded  # type: ignore[method-assign]


def _message_chars(body: dict[str, Any] | None) -> int | None:
    if body is None:
        return None
    chars = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return chars


def price_attempt(config: Config, record: Any, body: dict[str, Any] | None) -> dict[str, Any]:
    """One attempt, priced at its model's catalog prices (USD per million tokens)."""
    model = config.model(record.candidate.key)
    usage = record.usage if isinstance(record.usage, dict) else None
    chars = _message_chars(body)
    if usage is not None and isinstance(usage.get("prompt_tokens"), int):
        prompt_tokens, estimated = usage["prompt_tokens"], False
    else:
        prompt_tokens, estimated = (math.ceil(chars / 4) if chars is not None else None), True
    if usage is not None and isinstance(usage.get("completion_tokens"), int):
        output_tokens = usage["completion_tokens"]
    else:
        output_tokens = max(0, record.chunks - 1)  # the role chunk carries no token
    cost = None
    if model is not None and prompt_tokens is not None:
        cost = (prompt_tokens * model.prices.input + output_tokens * model.prices.output) / 1e6
    started = record.started_at
    return {
        "model": record.candidate.key,
        "started_at": started,
        "first_token_at": record.first_token_at,
        "tier": record.candidate.tier,
        "outcome": record.outcome,
        "hedge": record.hedge,
        "fallback": record.fallback,
        "ttft": None if record.first_token_at is None else record.first_token_at - started,
        "duration": None if record.ended_at is None else record.ended_at - started,
        "chunks": record.chunks,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "estimated": estimated,
        "cost_usd": cost,
        "error": None if record.error is None else str(record.error),
    }


# -- running the variants --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def proxy_server(config: Config) -> AsyncIterator[Running]:
    """The proxy and its sims, in-process, on loopback ports; stopped on exit."""
    async with trio.open_nursery() as nursery:
        running = await nursery.start(functools.partial(serve, config, host="127.0.0.1", port=0))
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class CpuWindow:
    """This process's CPU and the whole machine's, over the measured phase (Linux /proc)."""

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.own = self._own()
        self.busy = self._busy()

    @staticmethod
    def _own() -> float:
        times = os.times()
        return times.user + times.system

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except (OSError, IndexError):
            return None
        ticks = [int(f) for f in fields]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def close(self) -> dict[str, float | None]:
        wall = time.monotonic() - self.wall
        own = self._own() - self.own
        busy = self._busy()
        machine = None if busy is None or self.busy is None else busy - self.busy
        return {
            "wall_s": wall,
            "own_cpu_pct": 100 * own / wall,
            "other_cpu_pct": None if machine is None else 100 * max(0.0, machine - own) / wall,
            "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0])
            if Path("/proc/loadavg").exists() else None,
        }


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
            name: _median(ttfts) for name in CHAT_PROVIDERS
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


# -- analysis --------------------------------------------------------------------------------


def percentile_ms(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values) * 1000, q * 100))


def bootstrap(values: Sequence[float], q: float, rng: Any) -> Any:
    """`_BOOTSTRAP` resampled q-quantiles of `values`, in ms."""
    import numpy as np

    data = np.asarray(values) * 1000
    picks = rng.integers(0, len(data), size=(_BOOTSTRAP, len(data)))
    return np.percentile(data[picks], q * 100, axis=1)


def interval(draws: Any) -> list[float]:
    import numpy as np

    low, high = np.percentile(draws, [2.5, 97.5])
    return [float(low), float(high)]


def paired_added(run: dict[str, Any]) -> list[float]:
    """Per request: client TTFT minus the race's own time to its winner's first token.

    The race's time runs from its first attempt's start to the winner's first token, as the
    proxy saw it; what is left of the client's TTFT is what the proxy added around the race:
    reading and planning the request, waiting for a decision that came after the first token
    (or, without speculation, before any attempt started), relaying the chunks, and the
    client's own reading. Paired per request, so free of the upstream's latency draw.
    """
    by_request: dict[str, list[dict[str, Any]]] = {}
    for attempt in run["attempts"]:
        if attempt.get("request_id"):
            by_request.setdefault(attempt["request_id"], []).append(attempt)
    added = []
    for sample in run["samples"]:
        attempts = by_request.get(sample.get("request_id") or "")
        if sample["error"] is not None or not attempts:
            continue
        winner = next((a for a in attempts if a["outcome"] == "won"), None)
        if winner is None or winner["first_token_at"] is None:
            continue
        race = winner["first_token_at"] - min(a["started_at"] for a in attempts)
        added.append(sample["ttft"] - race)
    return added


def summarize(run: dict[str, Any], rng: Any) -> dict[str, Any]:
    samples = run["samples"]
    ok = [s for s in samples if s["error"] is None]
    ttfts = [s["ttft"] for s in ok]
    errors = Counter(s["error"] for s in samples if s["error"] is not None)
    out: dict[str, Any] = {"name": run["name"], "label": run["label"], "n": len(samples),
                           "ok": len(ok), "errors": dict(errors), "wall_s": run["wall_s"],
                           "cpu": run.get("cpu")}
    for q in (0.5, 0.9, 0.99):
        key = f"p{q * 100:g}"
        out[key] = percentile_ms(ttfts, q) if ttfts else None
        out[f"{key}_ci"] = interval(bootstrap(ttfts, q, rng)) if ttfts else None
    proxied = [s for s in samples if s["target"] == "proxy"]
    out["tier_mismatches"] = sum(1 for s in proxied if s["tier"] != s["tier_expected"])
    decisions = run["decisions"]
    out["decision"] = {f"p{q * 100:g}": percentile_ms(decisions, q) for q in (0.5, 0.9, 0.99)
                       } if decisions else None
    out["decisions_n"] = len(decisions)
    added = paired_added(run) if proxied else []
    out["added"] = ({"n": len(added), **{f"p{q * 100:g}": percentile_ms(added, q)
                                          for q in (0.5, 0.9)}} if added else None)
    attempts = run["attempts"]
    if proxied:
        n = len(proxied)
        unpriced = sum(1 for a in attempts if a["cost_usd"] is None)
        total = sum(a["cost_usd"] or 0.0 for a in attempts)
        waste: dict[str, float] = {}
        for a in attempts:
            if a["outcome"] != "won":
                waste[a["outcome"]] = waste.get(a["outcome"], 0.0) + (a["cost_usd"] or 0.0)
        out["cost"] = {
            "attempts_per_request": len(attempts) / n,
            "hedges_per_request": sum(a["hedge"] for a in attempts) / n,
            "fallbacks_per_request": sum(a["fallback"] for a in attempts) / n,
            "outcomes": dict(Counter(a["outcome"] for a in attempts)),
            "total_usd_per_request": total / n,
            "waste_usd_per_request": {k: v / n for k, v in waste.items()},
            "waste_total_usd_per_request": sum(waste.values()) / n,
            "unpriced_attempts": unpriced,
            "estimated_attempts": sum(1 for a in attempts if a["estimated"]),
        }
    return out


def cost_by_item(run: dict[str, Any]) -> dict[int, float]:
    """Each measured item's total cost, all its attempts included (joined on the request id)."""
    index = {s["request_id"]: s["index"] for s in run["samples"] if s.get("request_id")}
    out: dict[int, float] = {}
    for attempt in run["attempts"]:
        item = index.get(attempt.get("request_id") or "")
        if item is not None:
            out[item] = out.get(item, 0.0) + (attempt["cost_usd"] or 0.0)
    return out


def analyze(raw: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(raw["settings"]["seed"])
    runs = {r["name"]: r for r in raw["runs"]}
    summaries = {name: summarize(run, rng) for name, run in runs.items()}
    base = summaries.get("wait", {}).get("cost")
    wait_cost = cost_by_item(runs["wait"]) if "wait" in runs else {}
    for name, summary in summaries.items():
        cost = summary.get("cost")
        if cost is None or base is None:
            continue
        # (b)'s cost of the same prompts (a curve point sends only the first ones).
        items = [s["index"] for s in runs[name]["samples"]]
        if items and all(i in wait_cost for i in items):
            baseline = sum(wait_cost[i] for i in items) / len(items)
        else:
            baseline = base["total_usd_per_request"]
        cost["baseline_usd_per_request"] = baseline
        extra = cost["waste_total_usd_per_request"] - base["waste_total_usd_per_request"]
        by_cause = cost["waste_usd_per_request"]
        cost["extra_pct"] = 100 * extra / baseline
        cost["extra_speculation_pct"] = 100 * by_cause.get("outside-tier", 0.0) / baseline
        cost["extra_hedging_pct"] = 100 * by_cause.get("lost", 0.0) / baseline
        cost["total_vs_wait_pct"] = 100 * (cost["total_usd_per_request"] / baseline - 1)
    targets: dict[str, Any] = {}
    if {"direct", "race"} <= runs.keys():
        a_ttft = [s["ttft"] for s in runs["direct"]["samples"] if s["error"] is None]
        c_ttft = [s["ttft"] for s in runs["race"]["samples"] if s["error"] is None]
        decisions = runs["race"]["decisions"]
        a50, a99 = bootstrap(a_ttft, 0.5, rng), bootstrap(a_ttft, 0.99, rng)
        c50, c99 = bootstrap(c_ttft, 0.5, rng), bootstrap(c_ttft, 0.99, rng)
        d50 = bootstrap(decisions, 0.5, rng)
        a, c = summaries["direct"], summaries["race"]
        floor = max(c["decision"]["p50"], a["p50"])
        targets["p50"] = {
            "race_p50_ms": c["p50"], "decision_p50_ms": c["decision"]["p50"],
            "direct_p50_ms": a["p50"], "bound_ms": floor + 2.0,
            "excess_ms": c["p50"] - floor, "excess_ci_ms": interval(c50 - np.maximum(d50, a50)),
            "met": c["p50"] <= floor + 2.0,
        }
        targets["p99"] = {
            "race_p99_ms": c["p99"], "direct_p99_ms": a["p99"], "bound_ms": 0.7 * a["p99"],
            "ratio": c["p99"] / a["p99"], "ratio_ci": interval(c99 / a99),
            "met": c["p99"] <= 0.7 * a["p99"],
        }
        if c.get("cost") is not None and "extra_pct" in c["cost"]:
            targets["cost"] = {"extra_pct": c["cost"]["extra_pct"], "bound_pct": 15.0,
                               "met": c["cost"]["extra_pct"] <= 15.0}
        if "pinned" in summaries:
            pinned = [s["ttft"] for s in runs["pinned"]["samples"] if s["error"] is None]
            targets["pinned"] = {
                "pinned_p50_ms": summaries["pinned"]["p50"],
                "overhead_p50_ms": summaries["pinned"]["p50"] - a["p50"],
                "overhead_ci_ms": interval(bootstrap(pinned, 0.5, rng) - a50),
            }
    curve = []
    for name, label in [("race-q0.5", "0.5"), ("race-q0.75", "0.75"), ("race", "0.9"),
                        ("race-q0.95", "0.95"), ("race-q0.99", "0.99"),
                        ("race-nohedge", "off")]:
        point = summaries.get(name)
        if point is not None and point.get("cost") is not None:
            summary = point
            curve.append({"hedge_quantile": label, "name": name, "n": summary["n"],
                          "p50": summary["p50"], "p90": summary["p90"], "p99": summary["p99"],
                          "p99_ci": summary["p99_ci"], **{k: summary["cost"].get(k) for k in (
                              "extra_pct", "extra_speculation_pct", "extra_hedging_pct",
                              "hedges_per_request")}})
    return {"summaries": summaries, "targets": targets, "curve": curve}


# -- rendering -------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(pair: list[float] | None, digits: int = 0) -> str:
    return "" if pair is None else f" [{pair[0]:.{digits}f}, {pair[1]:.{digits}f}]"


_MAIN = ("direct", "pinned", "wait", "race", "race-econ-first")


def table_rows(analysis: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["variant", "n", "err", "TTFT p50 ms [95% CI]", "p90", "p99 [95% CI]",
            "decision p50/p99", "added p50/p90", "attempts/req", "hedges/req",
            "extra cost vs (b) (spec. + hedging)", "CPU own/other %"]
    rows = []
    summaries = analysis["summaries"]
    for name in _MAIN:
        summary = summaries.get(name)
        if summary is None:
            continue
        cost = summary.get("cost") or {}
        decision = summary.get("decision")
        added = summary.get("added")
        cpu = summary.get("cpu") or {}
        extra = "-"
        if cost.get("extra_pct") is not None:
            extra = (f"{cost['extra_pct']:.1f} % ({cost['extra_speculation_pct']:.1f} + "
                     f"{cost['extra_hedging_pct']:.1f})")
        rows.append([
            summary["label"], str(summary["n"]), str(sum(summary["errors"].values())),
            _f(summary["p50"]) + _ci(summary["p50_ci"]), _f(summary["p90"]),
            _f(summary["p99"]) + _ci(summary["p99_ci"]),
            f"{_f(decision['p50'])} / {_f(decision['p99'])}" if decision else "-",
            f"{_f(added['p50'])} / {_f(added['p90'])}" if added else "-",
            _f(cost.get("attempts_per_request"), 2) if cost else "1",
            _f(cost.get("hedges_per_request"), 3) if cost else "-",
            extra,
            f"{_f(cpu.get('own_cpu_pct'))} / {_f(cpu.get('other_cpu_pct'))}" if cpu else "-",
        ])
    return head, rows


def curve_rows(analysis: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["hedge_quantile", "n", "TTFT p50 ms", "p90", "p99 ms [95% CI]", "hedges/req",
            "extra cost %", "of which speculation", "of which hedging"]
    rows = [[p["hedge_quantile"], str(p["n"]), _f(p["p50"]), _f(p["p90"]),
             _f(p["p99"]) + _ci(p["p99_ci"]), _f(p["hedges_per_request"], 3),
             _f(p["extra_pct"], 1), _f(p["extra_speculation_pct"], 1),
             _f(p["extra_hedging_pct"], 1)]
            for p in analysis["curve"]]
    return head, rows


def target_lines(analysis: dict[str, Any]) -> list[str]:
    t = analysis["targets"]
    lines = []
    if "p50" in t:
        p = t["p50"]
        lines.append(
            f"(c) p50 <= max(decision p50, (a) p50) + 2 ms: {p['race_p50_ms']:.1f} ms vs bound "
            f"{p['bound_ms']:.1f} ms (decision {p['decision_p50_ms']:.1f}, direct "
            f"{p['direct_p50_ms']:.1f}); excess {p['excess_ms']:+.1f} ms, 95% CI "
            f"[{p['excess_ci_ms'][0]:+.1f}, {p['excess_ci_ms'][1]:+.1f}]: "
            f"{'MET' if p['met'] else 'MISSED'}")
    if "pinned" in t:
        p = t["pinned"]
        lines.append(
            f"the proxy alone, best model pinned (no decision, no race): p50 "
            f"{p['pinned_p50_ms']:.1f} ms, {p['overhead_p50_ms']:+.1f} ms over direct, 95% CI "
            f"[{p['overhead_ci_ms'][0]:+.1f}, {p['overhead_ci_ms'][1]:+.1f}]")
    if "p99" in t:
        p = t["p99"]
        lines.append(
            f"(c) p99 <= 0.7 x (a) p99: {p['race_p99_ms']:.0f} ms vs bound {p['bound_ms']:.0f} ms "
            f"(direct {p['direct_p99_ms']:.0f}); ratio {p['ratio']:.2f}, 95% CI "
            f"[{p['ratio_ci'][0]:.2f}, {p['ratio_ci'][1]:.2f}]: {'MET' if p['met'] else 'MISSED'}")
    if "cost" in t:
        p = t["cost"]
        lines.append(f"extra cost of (c) over (b) <= 15 %: {p['extra_pct']:.1f} %: "
                     f"{'MET' if p['met'] else 'MISSED'}")
    for summary in analysis["summaries"].values():
        other = (summary.get("cpu") or {}).get("other_cpu_pct")
        if other is not None and other > 25:
            lines.append(f"warning: other processes used {other:.0f} % of a core during "
                         f"{summary['label']}: its latencies include waiting for a core")
    return lines


def render_rich(analysis: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    for title, (head, rows) in (("TTFT and cost per variant", table_rows(analysis)),
                                ("Trade-off: hedge quantile -> tail and cost",
                                 curve_rows(analysis))):
        if not rows:
            continue
        table = Table(title=title)
        for column in head:
            table.add_column(column, justify="left" if column == "variant" else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for line in target_lines(analysis):
        console.print(line, markup=False, highlight=False)


def render_markdown(analysis: dict[str, Any]) -> str:
    parts = []
    for head, rows in (table_rows(analysis), curve_rows(analysis)):
        if rows:
            parts.append("| " + " | ".join(head) + " |")
            parts.append("|" + "|".join("---" for _ in head) + "|")
            parts.extend("| " + " | ".join(row) + " |" for row in rows)
            parts.append("")
    parts.extend(f"- {line}" for line in target_lines(analysis))
    return "\n".join(parts) + "\n"


def plot_tradeoff(analysis: dict[str, Any], path: Path) -> Path | None:
    """Left: p99 against what hedging costs; right: the whole extra cost, by cause."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = [p for p in analysis["curve"] if p["extra_pct"] is not None]
    if not curve:
        return None
    summaries = analysis["summaries"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=120,
                                      gridspec_kw={"width_ratios": [3, 2]})
    xs = [p["extra_hedging_pct"] for p in curve]
    ys = [p["p99"] for p in curve]
    low = [p["p99"] - p["p99_ci"][0] for p in curve]
    high = [p["p99_ci"][1] - p["p99"] for p in curve]
    left.errorbar(xs, ys, yerr=[low, high], fmt="o", capsize=3, label="race: p99 (95% CI)")
    left.plot(xs, ys, linestyle=":", linewidth=0.8, color="tab:blue")
    for p in curve:
        name = "hedging off" if p["hedge_quantile"] == "off" else f"q={p['hedge_quantile']}"
        left.annotate(f"{name} (n={p['n']})", (p["extra_hedging_pct"], p["p99"]),
                      textcoords="offset points", xytext=(6, 6), fontsize=8)
    if "direct" in summaries:
        direct = summaries["direct"]["p99"]
        left.axhline(direct, color="grey", linestyle="--", linewidth=1,
                     label=f"(a) direct, best provider: p99 {direct:.0f} ms")
        left.axhline(0.7 * direct, color="green", linestyle=":", linewidth=1,
                     label="target: 0.7 x (a) p99")
    if "wait" in summaries:
        left.axhline(summaries["wait"]["p99"], color="black", linestyle="-.", linewidth=1,
                     label=f"(b) decide, then call: p99 {summaries['wait']['p99']:.0f} ms")
    left.set_xlabel("hedging's extra cost (losing hedges and primaries), % of (b)'s cost")
    left.set_ylabel("TTFT p99, client side (ms)")
    left.set_title("Tail latency against the price of hedging")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=7, loc="upper right")

    bars = [*curve]
    econ = summaries.get("race-econ-first", {}).get("cost")
    labels = [("off" if p["hedge_quantile"] == "off" else f"q={p['hedge_quantile']}")
              for p in bars]
    speculation = [p["extra_speculation_pct"] for p in bars]
    hedging = [p["extra_hedging_pct"] for p in bars]
    if econ is not None and "extra_pct" in econ:
        labels.append("(d) econ.\nfirst")
        speculation.append(econ["extra_speculation_pct"])
        hedging.append(econ["extra_hedging_pct"])
    positions = range(len(labels))
    right.bar(positions, speculation, label="speculation (outside the decided tier)",
              color="tab:orange")
    right.bar(positions, hedging, bottom=speculation, label="hedging (lost in the tier)",
              color="tab:blue")
    right.axhline(15.0, color="red", linestyle=":", linewidth=1, label="target: 15 %")
    right.set_xticks(list(positions), labels, fontsize=8)
    right.set_ylabel("extra token cost over (b), %")
    right.set_title("What the race costs, by cause")
    right.grid(True, axis="y", alpha=0.3)
    right.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# -- the command -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    head = dirty = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = Path(__file__).resolve().parent.parent
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


if __name__ == "__main__":
    raise SystemExit(main())
