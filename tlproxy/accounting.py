"""From race attempts to ledger rows, and shadow traffic: the engine's bookkeeping.

Every attempt the race started, winner or not, becomes one `LedgerRow`,
priced from the upstream's usage or, when the upstream never sent usage (a
loser cancelled mid-way, a stream cut short), estimated from what was sent
and received and marked estimated: a request the upstream bills is never
missing from the ledger. Rows are queued with `Ledger.record`, which never
blocks; the writing happens in the ledger's own task.

Shadow traffic is decided when the request starts (so the primary answer's
text is only collected for sampled requests) and sent after the client has
its answer, in the shadow's own bounded background nursery.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .config import Config, ModelConfig
from .ledger import Ledger, LedgerRow
from .pricing import Usage, estimate_usage, price_attempt, reference_model, usage_from_openai
from .race import AttemptRecord
from .shadow import Shadow, ShadowResult, shadow_config_for, should_sample

if TYPE_CHECKING:
    from .app import Request

__all__ = ["Accounting", "ShadowPlan"]

_STATUS = {"won": "ok", "lost": "cancelled", "outside-tier": "cancelled", "failed": "error",
           "deadline": "error", "cancelled": "cancelled"}


class ShadowPlan:
    """A sampled request: where its copy goes, and the primary text collected so far."""

    __slots__ = ("parts", "started", "target", "ttft")

    def __init__(self, target: str) -> None:
        self.target = target
        self.parts: list[str] = []
        self.started = time.monotonic()
        self.ttft: float | None = None


class Accounting:
    def __init__(self, config: Config, ledger: Ledger | None, shadow: Shadow | None,
                 *, seed: int | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.shadow = shadow
        self.premium = reference_model(config)
        self._rng = random.Random(seed)

    # -- the ledger --------------------------------------------------------

    def attempt(self, record: AttemptRecord, request: Request, body: dict[str, Any],
                tier: str, rule: str) -> None:
        """Price one finished attempt and queue its row; adds its cost to the request."""
        model = self.config.model(record.candidate.key)
        if model is None:
            return
        winner = record.outcome == "won"
        usage = usage_from_openai(record.usage)
        if usage is None:
            # One chunk carries about one token; a cancelled loser is billed
            # for its prompt at least.
            usage = estimate_usage(body, output_chars=4 * max(record.chunks - 1, 0))
        cost, reference = price_attempt(model, usage, self.premium, winner=winner)
        status = _STATUS.get(record.outcome, "error")
        if winner and record.error is not None:
            status = "cut"
        request.cost_usd = (request.cost_usd or 0.0) + cost
        if self.ledger is None:
            return
        ended = record.ended_at if record.ended_at is not None else record.started_at
        ttft = (record.first_token_at - record.started_at) * 1000 if (
            record.first_token_at is not None) else None
        self.ledger.record(LedgerRow(
            request_id=request.id, ts=time.time() - (ended - record.started_at),
            key=request.key.name if request.key else None, kind="chat",
            tier=record.candidate.tier, model=model.id, provider=model.provider,
            rule=rule if record.candidate.tier == tier else f"speculative:{rule}",
            prompt_tokens=usage.prompt_tokens, cached_tokens=usage.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            completion_tokens=usage.completion_tokens, cost_usd=cost,
            estimated=usage.estimated, ttft_ms=ttft,
            duration_ms=(ended - record.started_at) * 1000, status=status,  # type: ignore[arg-type]
            winner=winner, hedge=record.hedge, wasted=not winner and cost > 0,
            reference_cost_usd=reference, first_token_kind=record.first_token_kind,
        ))

    def embedding(self, request: Request, body: dict[str, Any], model: ModelConfig,
                  answer: dict[str, Any], started: float) -> None:
        usage = usage_from_openai(answer.get("usage")) or estimate_usage(
            body, output_chars=0, kind="embedding")
        cost, reference = price_attempt(model, usage, self.premium, winner=True)
        request.cost_usd = (request.cost_usd or 0.0) + cost
        if self.ledger is None:
            return
        self.ledger.record(LedgerRow(
            request_id=request.id, ts=time.time(), key=request.key.name if request.key else None,
            kind="embedding", tier="embedding", model=model.id, provider=model.provider,
            rule="embedding", prompt_tokens=usage.prompt_tokens, cost_usd=cost,
            estimated=usage.estimated, duration_ms=(time.monotonic() - started) * 1000,
            reference_cost_usd=reference))

    # -- shadow traffic ----------------------------------------------------

    def plan_shadow(self, request: Request, rule: str, tier: str) -> ShadowPlan | None:
        if self.shadow is None:
            return None
        config = shadow_config_for(self.config, request.key)
        if config is None or not should_sample(config, rule, self._rng, served=(tier,)):
            return None
        return ShadowPlan(config.target)

    def submit_shadow(
        self,
        plan: ShadowPlan,
        request: Request,
        rule: str,
        primary_model: ModelConfig,
        call: Callable[[str], Awaitable[tuple[ModelConfig, dict[str, Any], float]]],
        body: dict[str, Any],
    ) -> None:
        """Send the copy in the background; returns at once."""
        if self.shadow is None:
            return
        duration = (time.monotonic() - plan.started) * 1000
        text = "".join(plan.parts)
        primary = ShadowResult(
            model=primary_model.id, text=text,
            ttft_ms=plan.ttft * 1000 if plan.ttft is not None else None,
            duration_ms=duration, cost_usd=request.cost_usd or 0.0)

        async def run() -> ShadowResult:
            started = time.monotonic()
            model, answer, ttft = await call(plan.target)
            usage = usage_from_openai(answer.get("usage")) or Usage(prompt_tokens=0)
            cost, _ = price_attempt(model, usage, self.premium, winner=False)
            message = ((answer.get("choices") or [{}])[0].get("message") or {})
            if self.ledger is not None:
                self.ledger.record(LedgerRow(
                    request_id=request.id, ts=time.time(),
                    key=request.key.name if request.key else None, kind="shadow",
                    tier=model.tier, model=model.id, provider=model.provider, rule=rule,
                    prompt_tokens=usage.prompt_tokens, cached_tokens=usage.cached_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    completion_tokens=usage.completion_tokens, cost_usd=cost,
                    ttft_ms=ttft * 1000, duration_ms=(time.monotonic() - started) * 1000,
                    winner=False))
            return ShadowResult(model=model.id, text=message.get("content") or "",
                                ttft_ms=ttft * 1000,
                                duration_ms=(time.monotonic() - started) * 1000, cost_usd=cost)

        key = request.key
        config = shadow_config_for(self.config, key)
        self.shadow.submit(run, primary, request_id=request.id, rule=rule, target=plan.target,
                           key=key.name if key else None,
                           key_limit=config.max_concurrency if config and key and key.shadow
                           else None,
                           prompt=_prompt(body))


def _prompt(body: dict[str, Any]) -> str | None:
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content[:500] if isinstance(content, str) else None
    return None
