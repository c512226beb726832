"""The model catalog: tiers, models, and what a client's `model` name means.

A client names what it wants in `model`: an intent (``premium``, ``economy``,
``auto``), a catalog id (pins that model), or anything else, which goes
through the configured aliases (``auto`` by default) so that old code still
sending ``gpt-4o`` is routed rather than refused.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .config import (
    Capabilities,
    Config,
    ModelConfig,
    Prices,
    ProviderConfig,
    SimModelProfile,
    Tier,
)

__all__ = [
    "INTENTS",
    "Intent",
    "NameResolution",
    "default_config",
    "find_model",
    "normalize",
    "resolve_name",
]

Intent = Literal["premium", "economy", "auto"]
INTENTS: tuple[Intent, ...] = ("premium", "economy", "auto")


class NameResolution(msgspec.Struct, frozen=True):
    """What a requested model name asks for: an intent, or one pinned model."""

    intent: Intent | None
    pinned: ModelConfig | None
    # How the name was understood: "intent", "pinned", "alias" or "default-alias".
    via: str


def normalize(name: str) -> str:
    """How names are compared: surrounding whitespace dropped, case folded."""
    return name.strip().casefold()


def find_model(config: Config, name: str) -> ModelConfig | None:
    """The catalog model `name` names: its exact id, else the id equal to it but for case
    and surrounding whitespace (config validation keeps that match unique)."""
    model = config.model(name)
    if model is not None:
        return model
    wanted = normalize(name)
    return next((m for m in config.models if normalize(m.id) == wanted), None)


def _alias(config: Config, name: str) -> str | None:
    target = config.aliases.get(name)
    if target is not None:
        return target
    wanted = normalize(name)
    return next((t for a, t in config.aliases.items() if normalize(a) == wanted), None)


def resolve_name(config: Config, name: str) -> NameResolution:
    """Understand a client's `model` string. Never fails: unknown names go to the default alias.

    Intents, catalog ids and aliases are matched without regard to case or
    surrounding whitespace (``"PREMIUM"``, ``"premium "``, ``"GPT-5.4"``): a
    name that differs only so from a known one is that one, not an unknown
    name silently routed by the default alias.
    """
    intent = normalize(name)
    if intent in INTENTS:
        return NameResolution(intent=intent, pinned=None, via="intent")
    model = find_model(config, name)
    if model is not None:
        return NameResolution(intent=None, pinned=model, via="pinned")
    via = "alias"
    target = _alias(config, name)
    if target is None:
        target, via = config.default_alias, "default-alias"
    if target in INTENTS:
        return NameResolution(intent=target, pinned=None, via=via)
    model = config.model(target)
    if model is not None:
        return NameResolution(intent=None, pinned=model, via=via)
    # Config validation rejects aliases to nowhere; stay safe regardless.
    return NameResolution(intent="auto", pinned=None, via="default-alias")


def _model(
    model_id: str,
    tier: Tier,
    prices: tuple[float, float | None, float],
    *,
    vision: bool = True,
    context: int = 200_000,
    output: int = 64_000,
    tools: bool = True,
) -> ModelConfig:
    return ModelConfig(
        id=model_id,
        provider="sim",
        tier=tier,
        capabilities=Capabilities(
            tools=tools,
            parallel_tool_calls=tools,
            vision=vision,
            json_schema=tools,
            max_context=context,
            max_output=output,
        ),
        prices=Prices(input=prices[0], cached_input=prices[1], output=prices[2]),
    )


def default_config() -> Config:
    """The zero-config setup: a simulated upstream serving a realistic catalog.

    Model ids and prices mirror the real catalog (see ``examples/tlproxy.toml``
    for sources); latencies are modest so a first request answers at once
    while premium and economy still differ visibly.
    """
    models = [
        _model("claude-sonnet-4-6", "premium", (3.0, 0.30, 15.0), context=1_000_000),
        _model("gpt-5.4", "premium", (2.5, 0.25, 15.0), context=1_050_000, output=128_000),
        _model("gemini-3-pro-preview", "premium", (2.0, 0.20, 12.0), context=1_048_576),
        _model("claude-haiku-4-5", "economy", (1.0, 0.10, 5.0)),
        _model("gpt-5-nano", "economy", (0.05, 0.005, 0.40), context=400_000, output=128_000),
        _model("gpt-5-mini", "economy", (0.25, 0.025, 2.0), context=400_000, output=128_000),
        _model("gemini-2.5-flash", "economy", (0.30, 0.03, 2.50), context=1_048_576),
        _model("text-embedding-3-small", "embedding", (0.02, None, 0.0), tools=False),
        _model("text-embedding-3-large", "embedding", (0.13, None, 0.0), tools=False),
        _model("gemini-embedding-001", "embedding", (0.15, None, 0.0), tools=False),
    ]
    premium = SimModelProfile(ttft_ms=120.0, inter_token_ms=8.0, tokens=48)
    economy = SimModelProfile(ttft_ms=40.0, inter_token_ms=3.0, tokens=32)
    embedding = SimModelProfile(ttft_ms=5.0, embedding_dimensions=256)
    profiles = {
        m.id: {"premium": premium, "economy": economy, "embedding": embedding}[m.tier]
        for m in models
    }
    return Config(
        providers={"sim": ProviderConfig(kind="sim", sim_models=profiles)},
        models=models,
    )
