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

When nothing is eligible, the reason decides the status: if no model of the
tier could ever take the request as sent (it asks for more output or context
than any has, or a capability none offers), that is the client's to fix, a
400 naming the parameter and the most any model takes; only when models that
could take it exist but are all unhealthy is it a 503, which clients retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import msgspec

from .call import ChatFacts
from .catalog import find_model, resolve_name
from .config import ClientKey, Config, ModelConfig, Policy
from .errors import InvalidRequest, ProxyError, UpstreamError
from .policy import Decision, RuleTrace, Signals, Tier, decide, possible_tiers
from .stats import StatsBook

__all__ = ["Plan", "Route", "Router", "blended_price"]


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
    allowed: list[Tier] | None = None
    # Why a tier still possible has no candidate (no model of it could serve the
    # request, or none is healthy): the error to answer with if it is decided.
    refusals: dict[str, ProxyError] = {}


class Route(msgspec.Struct, frozen=True):
    """Where a request goes and why."""

    model: ModelConfig
    tier: str
    rule: str
    # Upstream attempts started by the time the answer began: speculative ones,
    # hedges and fallbacks included (1 when the first model simply answered).
    attempts: int = 1


def _capped(tier: Tier, rule: str, allowed: set[Tier] | None) -> tuple[Tier, str]:
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
        """The plan for a decoded chat body (`tlproxy route --explain`, tests)."""
        return self.plan(ChatFacts.of(body, headers), key=key, now=now)

    def plan(self, facts: ChatFacts, *, key: ClientKey | None = None, now: float = 0.0) -> Plan:
        """The plan for a request's facts, derived once by the edge."""
        requested = facts.requested
        resolution = resolve_name(self.config, requested)
        signals = msgspec.structs.replace(facts.signals, semantic_known=not self.semantic)
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
            need = _Need.of(facts, signals)
            problem = need.unfit(model)
            if problem is not None:
                raise need.refusal(model.tier, [(model, problem)], self.config.models,
                                   pinned=True)
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
        candidates, excluded = self.candidates(tier, facts, signals, policy, now)
        by_tier: dict[str, list[ModelConfig]] = {tier: candidates}
        refusals: dict[str, ProxyError] = {}
        for other in tiers - {tier}:
            try:
                by_tier[other] = self.candidates(other, facts, signals, policy, now)[0]
            except (InvalidRequest, UpstreamError) as refused:
                by_tier[other] = []
                refusals[other] = refused
        open_policy = policy if len(tiers) > 1 else None
        return Plan(requested=requested, via=resolution.via, tier=tier, rule=rule,
                    signals=signals, trace=decision.trace, possible_tiers=sorted(tiers),
                    candidates=candidates, excluded=excluded, by_tier=by_tier,
                    policy=open_policy, allowed=sorted(allowed) if allowed else None,
                    refusals=refusals)

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
        model = find_model(self.config, requested)
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
        facts: ChatFacts,
        signals: Signals,
        policy: Policy,
        now: float,
    ) -> tuple[list[ModelConfig], list[tuple[str, str]]]:
        """The tier's eligible models, ranked, and the excluded ones with the reason.

        Raises `InvalidRequest` (400) when no model of the tier could ever serve
        the request as sent (too long, needs a capability none has): retrying
        cannot help, so the client must hear it is its request. Raises
        `UpstreamError` (503) when some could, but every one of them is
        unhealthy right now.
        """
        need = _Need.of(facts, signals)
        eligible: list[ModelConfig] = []
        excluded: list[tuple[str, str]] = []
        unfit: list[tuple[ModelConfig, _Unfit]] = []
        for model in self.config.models:
            if model.tier != tier:
                continue
            problem = need.unfit(model)
            if problem is not None:
                unfit.append((model, problem))
                excluded.append((model.id, problem.reason))
            elif not self.stats[model.id].available(now):
                excluded.append((model.id, "circuit breaker open"))
            else:
                eligible.append(model)
        if not eligible:
            if unfit and len(unfit) == len(excluded):
                raise need.refusal(tier, unfit, self.config.models)
            # The server's own state or config, not the request: a 503.
            reasons = "; ".join(f"{m}: {r}" for m, r in excluded) or "none is configured"
            raise UpstreamError(
                f"No {tier} model can serve this request right now ({reasons}).", status=503,
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


class _Unfit(NamedTuple):
    """Why a model can never serve a request as sent."""

    kind: str  # "tools", "vision", "json_schema", "context" or "output"
    reason: str  # for `--explain`: "max output 64000 too small"


class _Need(NamedTuple):
    """What a request asks of a model, from its signals and its output cap."""

    tools: bool
    images: bool
    json_schema: bool
    prompt_tokens: int
    output: int
    # The parameter that asked for `output` tokens.
    output_param: str

    @classmethod
    def of(cls, facts: ChatFacts, signals: Signals) -> _Need:
        return cls(signals.tools, signals.images, signals.json_schema,
                   signals.prompt_tokens, facts.requested_output, facts.output_param)

    def unfit(self, model: ModelConfig) -> _Unfit | None:
        caps = model.capabilities
        if self.tools and not caps.tools:
            return _Unfit("tools", "no tool calling")
        if self.images and not caps.vision:
            return _Unfit("vision", "no vision")
        if self.json_schema and not caps.json_schema:
            return _Unfit("json_schema", "no JSON schema output")
        if self.prompt_tokens + self.output > caps.max_context:
            return _Unfit("context", f"context {caps.max_context} too small")
        if self.output > caps.max_output:
            return _Unfit("output", f"max output {caps.max_output} too small")
        return None

    def refusal(self, tier: str, unfit: list[tuple[ModelConfig, _Unfit]],
                catalog: list[ModelConfig], *, pinned: bool = False) -> InvalidRequest:
        """The 400 for a request no model of `tier` (or the pinned one) can take.

        It names the parameter that asks too much and the most any of them takes.
        """
        kinds = [problem.kind for _, problem in unfit]
        # The reason that excluded the most models speaks for the request.
        kind = max(dict.fromkeys(kinds), key=kinds.count)
        models = [model for model, _ in unfit]
        chat = [m for m in catalog if m.tier != "embedding"]
        # "any premium model" / "the model 'gpt-5.4'", "the largest premium" / "its".
        scope = f"the model '{models[0].id}'" if pinned else f"any {tier} model"
        largest = "its" if pinned else f"the largest {tier}"
        if kind == "output":
            most = max(m.capabilities.max_output for m in models)
            anywhere = max(m.capabilities.max_output for m in chat)
            message = (f"Invalid '{self.output_param}': {self.output} is more output than "
                       f"{scope} can produce; {largest} maximum is {most} tokens")
            return _refuse(message, most, anywhere, self.output_param)
        if kind == "context":
            most = max(m.capabilities.max_context for m in models)
            anywhere = max(m.capabilities.max_context for m in chat)
            total = self.prompt_tokens + self.output
            param = "messages" if self.prompt_tokens > most else self.output_param
            asked = (f"about {self.prompt_tokens} prompt tokens"
                     + (f" plus {self.output} from '{self.output_param}'" if self.output else ""))
            message = (f"This request needs a context of {total} tokens ({asked}); {largest} "
                       f"context is {most} tokens")
            return _refuse(message, most, anywhere, param)
        param, what = {
            "tools": ("tools", "tool calling"),
            "vision": ("messages", "image input"),
            "json_schema": ("response_format", "JSON schema output"),
        }[kind]
        others = sorted({m.tier for m in chat if (pinned or m.tier != tier)
                         and m not in models and _Need.unfit(self._only(kind), m) is None})
        hint = (f" (a {' or '.join(others)} model does: ask for it by name in 'model')"
                if others else "")
        offered = f"{models[0].id} does not offer" if pinned else f"no {tier} model offers"
        return InvalidRequest(f"This request needs {what}, which {offered}{hint}.",
                              param=param, code="no_eligible_model")

    def _only(self, kind: str) -> _Need:
        """This need reduced to one capability, to ask which tiers have it."""
        return _Need(kind == "tools", kind == "vision", kind == "json_schema", 0, 0,
                     self.output_param)


def _refuse(message: str, most: int, anywhere: int, param: str) -> InvalidRequest:
    if anywhere > most:
        message += f" (another model takes up to {anywhere}: ask for it in 'model')"
    return InvalidRequest(message + ".", param=param, code="no_eligible_model")
