"""From a request to a ranked list of candidate models: names, policy, eligibility, ranking.

`Router.plan_chat` is pure given its inputs (config, live statistics, `now`),
so `tlproxy route --explain` shows exactly what the server would do.

Eligible = has the capabilities the request needs (tools, images, JSON
schema), fits its context (estimated prompt plus requested output within the
model's window), and is healthy (circuit breaker not open). Ranking within a
tier is by the policy's strategy over live statistics and price:

* ``cost``: blended price (3 input : 1 output), cheapest first;
* ``latency``: TTFT moving average, fastest first (an attempt cut before
  its first token after longer than the average raises it, see `stats.py`);
  a model with no measurement yet goes first, so it gets measured;
* ``balanced``: error rate first (in 10 % steps), then the sum of the
  latency rank and the cost rank.

Ties keep the catalog's order, so a config reads as a preference list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from .catalog import resolve_name
from .config import ClientKey, Config, ModelConfig, Policy
from .errors import InvalidRequest, ProxyError, UpstreamError
from .policy import Decision, RuleTrace, Signals, decide, extract_signals, possible_tiers
from .stats import StatsBook

__all__ = ["Plan", "Router", "blended_price"]


class Plan(msgspec.Struct, kw_only=True):
    """Everything decided about one request, for the engine and for `--explain`."""

    requested: str
    via: str
    tier: str
    rule: str
    signals: Signals | None
    trace: list[RuleTrace]
    possible_tiers: list[str]
    candidates: list[ModelConfig]
    excluded: list[tuple[str, str]]
    # Ranked candidates of every tier still possible before slow signals.
    by_tier: dict[str, list[ModelConfig]] = {}
    # Set when the tier may still change once slow signals are in (see `Router.finish`).
    policy: Policy | None = None
    allowed: list[str] | None = None


def _capped(tier: str, rule: str, allowed: set[str] | None) -> tuple[str, str]:
    if allowed is not None and tier not in allowed:
        return sorted(allowed)[0], f"{rule} (capped by key)"
    return tier, rule


def blended_price(model: ModelConfig) -> float:
    return (3 * model.prices.input + model.prices.output) / 4


class Router:
    def __init__(self, config: Config, stats: StatsBook, *, semantic: bool = False) -> None:
        self.config = config
        self.stats = stats
        # Whether the semantic classifier runs; when it does not, its signal is
        # known (as "no task") from the start and never keeps a tier open.
        self.semantic = semantic

    def policy_for(self, key: ClientKey | None) -> Policy:
        if key is not None and key.policy is not None:
            return self.config.policies[key.policy]
        return self.config.policy

    def plan_chat(
        self,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        key: ClientKey | None = None,
        now: float = 0.0,
    ) -> Plan:
        requested = str(body.get("model") or "")
        resolution = resolve_name(self.config, requested)
        signals = extract_signals(body, headers)
        signals.semantic_known = not self.semantic
        allowed = set(key.allowed_tiers) if key and key.allowed_tiers else None
        if resolution.pinned is not None:
            model = resolution.pinned
            if model.tier == "embedding":
                raise InvalidRequest(
                    f"The model '{requested}' is an embedding model and cannot be used for "
                    "chat completions.", param="model", code="model_not_supported")
            if allowed is not None and model.tier not in allowed:
                raise ProxyError(
                    f"This API key may not use the {model.tier} model '{model.id}'.",
                    status=403, type="invalid_request_error", param="model",
                    code="model_not_allowed")
            return Plan(requested=requested, via=resolution.via, tier=model.tier,
                        rule=resolution.via, signals=signals, trace=[],
                        possible_tiers=[model.tier], candidates=[model], excluded=[],
                        by_tier={model.tier: [model]})
        policy = self.policy_for(key)
        if resolution.intent in ("premium", "economy"):
            tier = resolution.intent
            decision = Decision(tier=tier, rule=f"intent:{tier}", trace=[])
            tiers = {tier}
        else:
            decision = decide(policy, signals)
            tiers = set(possible_tiers(policy, signals))
        tier, rule = _capped(decision.tier, decision.rule, allowed)
        if allowed is not None:
            tiers = {t for t in tiers if t in allowed} | {tier}
        candidates, excluded = self.candidates(tier, body, signals, policy, now)
        by_tier = {tier: candidates}
        for other in tiers - {tier}:
            try:
                by_tier[other] = self.candidates(other, body, signals, policy, now)[0]
            except UpstreamError:
                by_tier[other] = []
        open_policy = policy if len(tiers) > 1 else None
        return Plan(requested=requested, via=resolution.via, tier=tier, rule=rule,
                    signals=signals, trace=decision.trace, possible_tiers=sorted(tiers),
                    candidates=candidates, excluded=excluded, by_tier=by_tier,
                    policy=open_policy, allowed=sorted(allowed) if allowed else None)

    def finish(self, plan: Plan, semantic_task: str | None) -> tuple[str, str]:
        """The final (tier, rule) once the slow signals are in.

        Always one of `plan.possible_tiers` (the policy guarantees it).
        """
        if plan.policy is None or plan.signals is None:
            return plan.tier, plan.rule
        signals = msgspec.structs.replace(
            plan.signals, semantic_task=semantic_task, semantic_known=True)
        decision = decide(plan.policy, signals)
        allowed = set(plan.allowed) if plan.allowed else None
        return _capped(decision.tier, decision.rule, allowed)

    def plan_embedding(self, requested: str) -> Plan:
        model = self.config.model(requested)
        if model is not None and model.tier != "embedding":
            raise InvalidRequest(f"The model '{requested}' is not an embedding model.",
                                 param="model", code="model_not_supported")
        if model is None:
            model = next((m for m in self.config.models if m.tier == "embedding"), None)
            if model is None:
                raise UpstreamError("no embedding model is configured", status=503)
            rule = "default-embedding"
        else:
            rule = "pinned"
        # Vectors of different models are not comparable: an embedding falls
        # back only to the same upstream model served by another provider.
        group = [model, *(m for m in self.config.models
                          if m.tier == "embedding" and m.id != model.id
                          and m.upstream_id == model.upstream_id and m.provider != model.provider)]
        return Plan(requested=requested, via=rule, tier="embedding", rule=rule, signals=None,
                    trace=[], possible_tiers=["embedding"], candidates=group, excluded=[])

    def candidates(
        self,
        tier: str,
        body: Mapping[str, Any],
        signals: Signals,
        policy: Policy,
        now: float,
    ) -> tuple[list[ModelConfig], list[tuple[str, str]]]:
        requested_output = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        if not isinstance(requested_output, int):
            requested_output = 0
        eligible: list[ModelConfig] = []
        excluded: list[tuple[str, str]] = []
        for model in self.config.models:
            if model.tier != tier:
                continue
            caps = model.capabilities
            reason = None
            if signals.tools and not caps.tools:
                reason = "no tool calling"
            elif signals.images and not caps.vision:
                reason = "no vision"
            elif signals.json_schema and not caps.json_schema:
                reason = "no JSON schema output"
            elif signals.prompt_tokens + requested_output > caps.max_context:
                reason = f"context {caps.max_context} too small"
            elif requested_output > caps.max_output:
                reason = f"max output {caps.max_output} too small"
            elif not self.stats[model.id].available(now):
                reason = "circuit breaker open"
            if reason is None:
                eligible.append(model)
            else:
                excluded.append((model.id, reason))
        if not eligible:
            reasons = "; ".join(f"{m}: {r}" for m, r in excluded) or "no model in the tier"
            raise UpstreamError(
                f"No {tier} model can serve this request ({reasons}).", status=503,
                code="no_eligible_model")
        return self.rank(eligible, policy.strategy), excluded

    def rank(self, models: list[ModelConfig], strategy: str) -> list[ModelConfig]:
        order = {m.id: i for i, m in enumerate(models)}

        def latency(m: ModelConfig) -> float:
            ewma = self.stats[m.id].ttft_ewma
            return -1.0 if ewma is None else ewma

        if strategy == "cost":
            return sorted(models, key=lambda m: (blended_price(m), order[m.id]))
        if strategy == "latency":
            return sorted(models, key=lambda m: (latency(m), order[m.id]))
        by_latency = {m.id: i for i, m in enumerate(sorted(models, key=latency))}
        by_cost = {m.id: i for i, m in enumerate(sorted(models, key=blended_price))}
        return sorted(models, key=lambda m: (
            round(self.stats[m.id].error_rate, 1), by_latency[m.id] + by_cost[m.id], order[m.id]))
