"""From race attempts to ledger rows, and shadow traffic: the engine's bookkeeping.

Every attempt the race started, winner or not, becomes one `LedgerRow`,
priced from the upstream's usage or, when the upstream never sent usage (a
loser cancelled mid-way, a stream cut short), estimated from what was sent
and received and marked estimated: a request the upstream bills is never
missing from the ledger. An attempt the upstream refused before accepting it
(an HTTP error status, a connection that never opened) is not billed by
providers, so its row costs nothing. The embedding calls the semantic task
classifier makes to route a request are rows too (``kind = 'classifier'``),
attributed to that request. Rows are queued with `Ledger.record`, which
never blocks; the writing happens in the ledger's own task.

The winner's row waits for the request's end (`Accounting.finish`): only
then is it known what the client saw (its time to first byte) and whether
the client stayed for the whole answer (``cancelled`` when it did not).

Shadow traffic is decided when the request starts (so the primary answer's
text is only collected for sampled requests) and sent after the client has
its answer, in the shadow's own bounded background nursery. Both sides'
latencies are on trio's clock: the primary's from the request's arrival at
the proxy (what the client saw), the shadow's from the moment its copy was
sent.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import trio

from .config import ClientKey, Config, ModelConfig
from .errors import UpstreamError
from .ledger import Ledger, LedgerRow
from .metrics import Metrics
from .pricing import Usage, estimate_usage, price_attempt, reference_model, usage_from_openai
from .race import AttemptRecord
from .shadow import Shadow, ShadowResult, shadow_config_for, should_sample

if TYPE_CHECKING:
    from .limits import KeyLimits
    from .tracecontext import Timeline

__all__ = ["Accounting", "Booking", "ShadowAnswer", "ShadowPlan", "Tab", "refused_upstream"]

_STATUS = {"won": "ok", "lost": "cancelled", "outside-tier": "cancelled", "failed": "error",
           "deadline": "error", "cancelled": "cancelled"}
_NOTHING = Usage(prompt_tokens=0)


def refused_upstream(error: BaseException | None, chunks: int = 0) -> bool:
    """Whether a failed call never got past the upstream's door, so nothing is billed.

    That is an HTTP error status (429, 5xx, 4xx: `UpstreamError.upstream_status`)
    or a connection that never opened (`UpstreamError.unsent`), before any
    chunk came back. A call cut after the upstream accepted it (a timeout, a
    stream that broke, a cancelled race loser) may have been generating: it
    keeps its estimated cost.
    """
    return (chunks == 0 and isinstance(error, UpstreamError)
            and (error.upstream_status is not None or error.unsent))


class Tab:
    """One request's account while it runs: what it cost so far, what it used.

    Opened by the edge for each request once its key is known, written by the
    engine (attempts, usage, a sampled shadow) and by the admission gate (the
    tokens reserved, the rate-limit headers), read by the edge when the
    request ends: to settle the key's usage and queue the winner's row.
    """

    __slots__ = ("arrived", "cost_usd", "held_row", "id", "key", "kind", "limit_headers",
                 "reserved", "shadow", "trace", "usage_tokens")

    def __init__(self, request_id: str, key: ClientKey | None, arrived: float) -> None:
        self.id = request_id
        self.key = key
        # On trio's clock: the client's TTFT and a shadow's primary are from here.
        self.arrived = arrived
        # The endpoint its attempts are booked under: the ledger row's `kind`.
        self.kind: Literal["chat", "responses"] = "chat"
        self.cost_usd: float | None = None
        # Total tokens the upstream reported for the answer, when it did.
        self.usage_tokens: int | None = None
        # The winner's row, queued when the request ends (`Accounting.finish`).
        self.held_row: LedgerRow | None = None
        # The admission gate's: the key's limits and the tokens it reserved
        # (settled at the end against `usage_tokens`), and the ``x-ratelimit-*``
        # headers every response to the request carries.
        self.reserved: tuple[KeyLimits, int] | None = None
        self.limit_headers: dict[str, str] = {}
        # A sampled request's shadow, collecting the primary's text.
        self.shadow: ShadowPlan | None = None
        # The request's trace, when tracing is on (the engine notes its facts there).
        self.trace: Timeline | None = None


class ShadowPlan:
    """A sampled request: where its copy goes, and the primary text collected so far."""

    __slots__ = ("parts", "target")

    def __init__(self, target: str) -> None:
        self.target = target
        self.parts: list[str] = []


class ShadowAnswer(msgspec.Struct, frozen=True):
    """What a shadow call brought back; times in seconds from the moment it was sent."""

    model: ModelConfig
    text: str
    usage: dict[str, Any] | None
    ttft: float | None  # None for a JSON answer: it has no first token
    duration: float


class Accounting:
    def __init__(self, config: Config, ledger: Ledger | None, shadow: Shadow | None,
                 *, seed: int | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.shadow = shadow
        self.metrics = metrics
        self.premium = reference_model(config)
        self._rng = random.Random(seed)

    # -- the ledger --------------------------------------------------------

    def attempt(self, record: AttemptRecord, tab: Tab, body: dict[str, Any],
                tier: str | None, rule: str, *, stream: bool = True) -> LedgerRow | None:
        """Price one finished attempt and queue its row (returned); adds its cost to the tab.

        `tier` and `rule` are the request's decision; an attempt outside `tier`
        (or any attempt, when `tier` is None: no decision was made) has the
        rule ``speculative:<rule>``. The winner's row is held until `finish`.
        A JSON attempt (`stream` false) has no time to first token: its row's
        ``ttft_ms`` is None.
        """
        model = self.config.model(record.candidate.key)
        if model is None:
            return None
        # A continuation finishes an answer the winner started: the winner's row
        # stays the request's one winner; the continuation's is its recovery cost.
        continues = record.candidate.continues
        winner = record.outcome == "won" and continues is None
        usage = usage_from_openai(record.usage)
        if usage is None and refused_upstream(record.error, record.chunks):
            usage = _NOTHING
        elif usage is None:
            # One chunk carries about one token; a cancelled loser is billed
            # for its prompt at least.
            usage = estimate_usage(body, output_chars=4 * max(record.chunks - 1, 0))
        cost, reference = price_attempt(model, usage, self.premium, winner=winner)
        status = _STATUS.get(record.outcome, "error")
        if record.outcome == "won" and record.error is not None:
            status = "cut"
        elif continues is not None and record.outcome == "won" and not record.whole:
            status = "cancelled"  # its client left before the end
        ended = record.ended_at if record.ended_at is not None else record.started_at
        ttft = (record.first_token_at - record.started_at) * 1000 if (
            stream and record.first_token_at is not None) else None
        row = LedgerRow(
            request_id=tab.id, ts=time.time() - (trio.current_time() - record.started_at),
            key=tab.key.name if tab.key else None, kind=tab.kind,
            tier=record.candidate.tier, model=model.id, provider=model.provider,
            rule=rule if record.candidate.tier == tier else f"speculative:{rule}",
            prompt_tokens=usage.prompt_tokens, cached_tokens=usage.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            completion_tokens=usage.completion_tokens, cost_usd=cost,
            estimated=usage.estimated, ttft_ms=ttft,
            duration_ms=(ended - record.started_at) * 1000, status=status,  # type: ignore[arg-type]
            winner=winner, hedge=record.hedge,
            wasted=not winner and cost > 0 and not (continues and record.outcome == "won"),
            reference_cost_usd=reference, first_token_kind=record.first_token_kind,
            continuation=continues,
        )
        self._priced(tab, row)
        if winner:
            tab.held_row = row
        elif self.ledger is not None:
            self.ledger.record(row)
        return row

    def finish(self, tab: Tab, *, client_ttft: float | None, client_gone: bool) -> None:
        """The request is over: queue its winner's row with what the client saw.

        `client_ttft` is from the request's arrival to the first byte of the
        streamed answer sent (None for a JSON answer), the row's
        ``client_ttft_ms``; a winner whose client left before the whole answer
        was sent (`client_gone`) is ``cancelled``.
        """
        row, tab.held_row = tab.held_row, None
        if row is None or self.ledger is None:
            return
        if client_gone and row.status == "ok":
            row.status = "cancelled"
        if client_ttft is not None:
            row.client_ttft_ms = client_ttft * 1000
        self.ledger.record(row)

    def embedding(self, tab: Tab, body: dict[str, Any], model: ModelConfig,
                  answer: dict[str, Any], started: float) -> None:
        """A client's embedding request, answered; `started` on trio's clock."""
        usage = usage_from_openai(answer.get("usage")) or estimate_usage(
            body, output_chars=0, kind="embedding")
        cost, reference = price_attempt(model, usage, self.premium, winner=True)
        duration = trio.current_time() - started
        self._priced(tab, LedgerRow(
            request_id=tab.id, ts=time.time() - duration,
            key=tab.key.name if tab.key else None,
            kind="embedding", tier="embedding", model=model.id, provider=model.provider,
            rule="embedding", prompt_tokens=usage.prompt_tokens, cost_usd=cost,
            estimated=usage.estimated, duration_ms=duration * 1000,
            reference_cost_usd=reference), record=True)

    def classifier_call(self, tab: Tab | None, body: dict[str, Any],
                        model: ModelConfig, started: float, *,
                        answer: dict[str, Any] | None = None,
                        error: BaseException | None = None) -> None:
        """One embedding call of the task classifier, for `tab`'s request (None: none,
        a warm-up): answered (`answer`), failed (`error`) or cancelled (neither).

        The row is the request's (its id and key), ``kind = 'classifier'``,
        never a winner or a saving; its cost counts towards the request's.
        """
        usage = usage_from_openai(answer.get("usage")) if answer is not None else None
        if usage is None:
            usage = _NOTHING if refused_upstream(error) else estimate_usage(
                body, output_chars=0, kind="embedding")
        status = "ok" if answer is not None else "error" if error is not None else "cancelled"
        cost, _ = price_attempt(model, usage, self.premium, winner=False)
        duration = trio.current_time() - started
        self._priced(tab, LedgerRow(
            request_id=tab.id if tab is not None else "cls_" + uuid.uuid4().hex,
            ts=time.time() - duration,
            key=tab.key.name if tab is not None and tab.key else None,
            kind="classifier", tier=model.tier, model=model.id, provider=model.provider,
            rule="classifier", prompt_tokens=usage.prompt_tokens, cost_usd=cost,
            estimated=usage.estimated, duration_ms=duration * 1000,
            status=status, winner=False), record=True)  # type: ignore[arg-type]

    def _priced(self, tab: Tab | None, row: LedgerRow, *, record: bool = False) -> None:
        """Count a priced row: on the tab, in the metrics, and (`record`) in the ledger."""
        if tab is not None:
            tab.cost_usd = (tab.cost_usd or 0.0) + row.cost_usd
        if self.metrics is not None:
            self.metrics.spend(
                row.tier, row.model, row.kind, "wasted" if row.wasted else "used",
                row.cost_usd, (row.prompt_tokens, row.cached_tokens, row.cache_write_tokens,
                               row.completion_tokens))
        if record and self.ledger is not None:
            self.ledger.record(row)

    # -- shadow traffic ----------------------------------------------------

    def plan_shadow(self, key: ClientKey | None, rule: str, tier: str) -> ShadowPlan | None:
        """Whether to mirror a request of `key` decided by `rule` into `tier`, and where."""
        if self.shadow is None:
            return None
        config = shadow_config_for(self.config, key)
        if config is None or not should_sample(config, rule, self._rng, served=(tier,)):
            return None
        return ShadowPlan(config.target)

    def submit_shadow(
        self,
        plan: ShadowPlan,
        tab: Tab,
        rule: str,
        primary_model: ModelConfig,
        call: Callable[[str], Awaitable[ShadowAnswer]],
        prompt: str | None,
        *,
        client_ttft: float | None,
    ) -> None:
        """Send the copy in the background; returns at once. `prompt` is the question
        the comparison shows (the last user text, cut short).

        Call it once the client has the whole answer: the primary's duration
        is from the request's arrival to now, its TTFT the client's (`client_ttft`).
        """
        if self.shadow is None:
            return
        primary = ShadowResult(
            model=primary_model.id, text="".join(plan.parts),
            ttft_ms=client_ttft * 1000 if client_ttft is not None else None,
            duration_ms=(trio.current_time() - tab.arrived) * 1000,
            cost_usd=tab.cost_usd or 0.0)

        async def run() -> ShadowResult:
            answer = await call(plan.target)
            model = answer.model
            usage = usage_from_openai(answer.usage) or _NOTHING
            cost, _ = price_attempt(model, usage, self.premium, winner=False)
            ttft_ms = answer.ttft * 1000 if answer.ttft is not None else None
            self._priced(None, LedgerRow(
                request_id=tab.id, ts=time.time() - answer.duration,
                key=tab.key.name if tab.key else None, kind="shadow",
                tier=model.tier, model=model.id, provider=model.provider, rule=rule,
                prompt_tokens=usage.prompt_tokens, cached_tokens=usage.cached_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                completion_tokens=usage.completion_tokens, cost_usd=cost,
                ttft_ms=ttft_ms, duration_ms=answer.duration * 1000, winner=False),
                record=True)
            return ShadowResult(model=model.id, text=answer.text, ttft_ms=ttft_ms,
                                duration_ms=answer.duration * 1000, cost_usd=cost)

        key = tab.key
        config = shadow_config_for(self.config, key)
        self.shadow.submit(run, primary, request_id=tab.id, rule=rule, target=plan.target,
                           key=key.name if key else None,
                           key_limit=config.max_concurrency if config and key and key.shadow
                           else None,
                           prompt=prompt)


class Booking:
    """The tier and rule a request's attempts are booked against in the ledger.

    While slow signals are pending, the race runs on a provisional decision,
    and an attempt may end (fail, miss its deadline) before the real one is
    made. Its row waits for it: the row's rule is the decided rule, marked
    ``speculative:`` when the attempt's tier is not the decided tier, whether
    the attempt ended before the decision or after. When no decision is ever
    made (the admission refused the request, the client left), every attempt
    was speculative: its rule is the provisional one, marked so.
    """

    __slots__ = ("decided", "held", "rule", "tier")

    def __init__(self, tier: str, rule: str, *, decided: bool) -> None:
        self.tier = tier
        self.rule = rule
        self.decided = decided
        self.held: list[Callable[[str | None, str], None]] = []

    def book(self, write: Callable[[str | None, str], None]) -> None:
        """Book an attempt with `write(decided tier, rule)`: now, or once decided."""
        if self.decided:
            write(self.tier, self.rule)
        else:
            self.held.append(write)

    def decide(self, tier: str, rule: str) -> str:
        self.tier, self.rule, self.decided = tier, rule, True
        self._flush(tier)
        return tier

    def close(self) -> None:
        """The race is over; book what is still held (no decision: speculative)."""
        self._flush(self.tier if self.decided else None)

    def _flush(self, tier: str | None) -> None:
        held, self.held = self.held, []
        for write in held:
            write(tier, self.rule)
