"""The scenario: simulated providers, the proxy's config, the variants and the workload.

Everything here is a value built from the command line's options; nothing starts or reads the
clock. `build_config` is the proxy under test, `variants` the runs in their order, `workload`
the prompts every variant sends in the same order.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

import msgspec
import orjson

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

__all__ = [
    "CHAT_PROVIDERS",
    "CURVE_QUANTILES",
    "ECONOMY_FIRST_RULES",
    "ECONOMY_PROMPTS",
    "EMBED_MODEL",
    "EMBED_PROVIDER",
    "EMBED_SEED",
    "PREMIUM_PROMPTS",
    "Item",
    "Latency",
    "Variant",
    "build_config",
    "catalog_models",
    "check_prompts",
    "variants",
    "workload",
]

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
# it is a conversation (the examples' only premium label), so the fast guess, made before
# the classifier answers, is economy. With `fanout = 1` the race then speculates into economy
# alone: the same decisions for this workload, but a premium model is only called once the
# decision names it.
ECONOMY_FIRST_RULES = [
    Rule(name="system-only-warmup", when=Condition(system_only=True), tier="economy"),
    Rule(name="tools", when=Condition(tools=True), tier="premium"),
    Rule(name="summarize-extract", when=Condition(task=["summarization", "extraction"]),
         tier="economy"),
    Rule(name="semantic-summarize-extract",
         when=Condition(semantic_task=["summarization", "extraction"]), tier="economy"),
    Rule(name="structured-output", when=Condition(json_schema=True), tier="economy"),
    Rule(name="semantic-first-turn",
         when=Condition(first_turn=True, semantic_task=["chat"]), tier="premium"),
]

CURVE_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)


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

