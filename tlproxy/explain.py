"""Text for humans: `tlproxy config check` and `tlproxy route --explain`.

Both only read the config and the request; neither calls an upstream.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .config import Config
from .policy import DEFAULT_RULES
from .router import Plan, blended_price

__all__ = ["describe_condition", "describe_config", "describe_plan", "mask"]


def mask(secret: str | None) -> str:
    """Enough to recognise which key is configured, never enough to use it."""
    if not secret:
        return "(none)"
    return "****" + secret[-4:] if len(secret) >= 12 else "****"


def _without_password(url: str) -> str:
    """A proxy URL as it may be shown: a password in it is masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:****@{host}"))


def describe_config(config: Config) -> str:
    lines = ["Providers:"]
    for name, p in config.providers.items():
        lines.append(f"  {name}: kind={p.kind} base_url={p.base_url or '(built-in)'} "
                     f"api_key={mask(p.api_key)} http2={p.http2}"
                     + (f" proxy={_without_password(p.proxy)}" if p.proxy else ""))
    lines.append("Models:")
    for m in config.models:
        prices = m.prices
        long = ""
        if prices.long_context:
            lc = prices.long_context
            long = f" (above {lc.above_input_tokens} input tokens: {lc.input} / {lc.output})"
        lines.append(
            f"  {m.id:<24} tier={m.tier:<9} provider={m.provider:<10} "
            f"upstream={m.upstream_id} $/1M in={prices.input} cached={prices.cached_input} "
            f"out={prices.output}{long} context={m.capabilities.max_context}")
    lines.append("Aliases:")
    for alias, target in config.aliases.items():
        lines.append(f"  {alias} -> {target}")
    lines.append(f"  (any other name) -> {config.default_alias}")
    for title, policy in [("Policy (default)", config.policy),
                          *((f"Policy {n}", p) for n, p in config.policies.items())]:
        rules = DEFAULT_RULES if policy.rules is None else policy.rules
        lines.append(f"{title}: strategy={policy.strategy} default_tier={policy.default_tier}")
        for rule in rules:
            lines.append(f"  {rule.name}: {describe_condition(rule.when)} -> {rule.tier}")
    if config.keys:
        lines.append("Client keys:")
        for key in config.keys:
            lines.append(f"  {key.name}: hash={key.hash[:15]}... policy={key.policy or 'default'} "
                         f"allowed_tiers={key.allowed_tiers or 'all'}")
    return "\n".join(lines)


def describe_condition(condition: Any) -> str:
    parts = [f"{field}={getattr(condition, field)}" for field in condition.__struct_fields__
             if getattr(condition, field) is not None]
    return " and ".join(parts) or "always"


def describe_plan(plan: Plan) -> str:
    lines = [f"Requested model: {plan.requested!r} (understood as: {plan.via})"]
    if plan.signals is not None:
        s = plan.signals
        lines.append("Signals:")
        for field in s.__struct_fields__:
            if field != "semantic_known":
                lines.append(f"  {field} = {getattr(s, field)}")
    if plan.trace:
        lines.append("Rules tried (first match wins):")
        for t in plan.trace:
            lines.append(f"  {t.rule:<22} -> {t.tier:<8} {t.result}: {t.detail}")
    lines.append(f"Tiers possible before slow signals: {', '.join(plan.possible_tiers)}")
    lines.append(f"Decision: tier={plan.tier} rule={plan.rule}")
    lines.append("Candidates, best first:")
    for rank, model in enumerate(plan.candidates, 1):
        lines.append(f"  {rank}. {model.id} (provider {model.provider}, "
                     f"blended ${blended_price(model):.3f}/1M)")
    for model_id, reason in plan.excluded:
        lines.append(f"  excluded: {model_id}: {reason}")
    return "\n".join(lines)
