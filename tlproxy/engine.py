"""Carrying one request upstream and its answer back: the engine returns values.

The engine owns a request's lifetime between the edge and the upstreams: it
plans the route, runs the race (`race.py`) with the admission gate and the
classifier inside the decision, and hands the edge a reply: an `Answer`
(a complete ``chat.completion``, or an embeddings list) or a `Stream` (the
route and the winner's chunks, in the batches they arrived in). It knows
nothing of ASGI or bytes: the edge (`edge.py`) renders a reply as Chat
Completions (and a Responses renderer can render the same reply). A reply is
yielded by an async context manager, so the race and the upstream stream stay
open exactly as long as the edge is sending, and leaving it, for whatever
reason (the client hung up, the send failed), cancels every upstream call.

The chunks are as the adapters made them, OpenAI-shaped; the repairs that
make them exactly OpenAI's are the renderer's (`shapes.py`). On their way
through, the engine reads what the bookkeeping needs: the usage the key is
charged, the text a sampled shadow compares. An upstream failure after the
first token is continued by the next model of the decided tier in the same
stream, when that can be done faithfully (`resume.py`, `continuation.py`;
docs/reliability.md); otherwise it leaves the stream as `UpstreamError`,
counted here, rendered by the edge. The request's account (`accounting.Tab`)
is the one mutable thing the engine and the edge share; the edge closes it
with `Engine.finish` once it knows what the client saw.

One clock: every time the engine measures or decides by is read from
``trio.current_time()`` (the race's clock), so trio's `MockClock` drives a
whole request in tests; the wall clock appears only in ledger timestamps.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import trio

from .accounting import Accounting, Booking, ShadowAnswer, Tab
from .call import ChatCall, EmbeddingCall
from .classifier import TaskClassifier, decode_embedding
from .config import Config, ModelConfig, Policy
from .continuation import Delivered, continue_body, form_for
from .errors import ProxyError, UpstreamError
from .metrics import Metrics
from .providers.base import Chunk, Provider
from .race import AttemptRecord, Candidate, RaceFailed, StreamFailure, Winner, WinnerChunks, race
from .reply import Answer, Batches, Reply, Stream
from .resume import ChunkSource, ResumableChunks
from .router import Plan, Route, Router
from .shapes import first_choice_text, token_kind, total_tokens
from .stats import StatsBook
from .tracecontext import attempt_context, attempt_started, span_key
from .turns import in_turn

# The reply's values (`reply.py`) are named here too: they are what `Engine.chat` yields.
__all__ = [
    "Admit", "Answer", "Batches", "ChunkSource", "Engine", "Gated", "Reply", "Stream",
]
log = logging.getLogger("tlproxy")

# Attempts the race cut before their first token: their TTFT is longer than
# the time they ran (right-censored; see `stats.py`). A failure says nothing
# about TTFT, but a missed first-token deadline does.
_CUT = frozenset({"lost", "outside-tier", "deadline", "cancelled"})

# A gate a request must pass before it is answered (a key's rate limits and
# budget): awaited inside the decision, so it overlaps the race. It raises
# the `ProxyError` to answer with when the request is refused, and notes on
# the tab what it reserved and the headers every response carries.
Admit = Callable[[ChatCall, Tab], Awaitable[None]]
# Whether a request has anything for that gate to check (a key with limits):
# one without is decided at once, with no task and no nursery spent on it.
Gated = Callable[[ChatCall], bool]


class Engine:
    """One request's lifetime, for every request of an app.

    Its collaborators are given when it is built: the providers by name, the
    metrics, the accounting (ledger and shadow traffic) and `admit`, the gate
    of a key's limits (None: every request is admitted), with `gated`, which
    says whether a request has anything for the gate to check (None: all do).
    """

    def __init__(
        self,
        config: Config,
        providers: dict[str, Provider],
        *,
        accounting: Accounting,
        metrics: Metrics,
        admit: Admit | None = None,
        gated: Gated | None = None,
    ) -> None:
        self.config = config
        self.providers = providers
        self.metrics = metrics
        self.accounting = accounting
        self.admit = admit
        self.gated = gated
        self.stats = StatsBook()
        self.classifier = (
            TaskClassifier(config.classifier, self._embed_texts)
            if config.classifier.enabled else None
        )
        self.router = Router(config, self.stats, semantic=self.classifier is not None)

    # -- chat ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def chat(self, call: ChatCall, tab: Tab) -> AsyncIterator[Reply]:
        """Answer `call`: enter with its reply once the decision is final and a model
        of the decided tier answered (or produced its first token, for a stream).

        Raises `ProxyError` when nothing can answer (the request refused, every
        candidate failed); costs and usage go on `tab` either way.
        """
        plan = self.router.plan(call.facts, key=call.key, now=trio.current_time())
        if not call.stream:
            # The race is over before the edge writes: nothing left to cancel.
            async with self._race(call, tab, plan, stream=False) as (route, winner):
                answer = winner.first_chunks[-1]
            if tab.trace is not None:
                tab.trace.answer(answer)
            tab.usage_tokens = total_tokens(answer.get("usage"))
            tab.shadow = self.accounting.plan_shadow(call.key, route.rule, route.tier)
            if tab.shadow is not None:
                message = ((answer.get("choices") or [{}])[0].get("message") or {})
                tab.shadow.parts.append(message.get("content") or "")
            yield Answer(route, answer)
            return
        async with self._race(call, tab, plan, stream=True) as (route, winner):
            tab.shadow = shadow = self.accounting.plan_shadow(call.key, route.rule, route.tier)
            trace = tab.trace

            def tap(chunk: Chunk) -> None:
                usage = chunk.get("usage")
                if usage:
                    tab.usage_tokens = total_tokens(usage)
                if shadow is not None:
                    shadow.parts.extend(first_choice_text(chunk))
                if trace is not None:
                    trace.answer(chunk)

            def failed(exc: UpstreamError) -> None:
                # Counted in the metrics with its attempt (`_on_record`).
                log.warning("request %s: upstream failed mid-stream: %s", call.id, exc)

            def outcome(reason: str, result: str) -> None:
                self.metrics.continuations.labels(reason, result).inc()
                log.info("request %s: %s after the first token: %s", call.id, reason, result)

            record = next(r for r in winner.records if r.outcome == "won")
            resume = self._resumer(call, tab, plan, route, winner)
            # Tool calls are held whole only where a cut one can be retried.
            tools = bool(call.body.get("tools") or call.body.get("functions"))
            chunks = ResumableChunks(
                winner.first_chunks, winner.chunks, body=call.body,
                hold_tools=tools and resume is not None, resume=resume,
                first_usage=lambda: record.usage, on_outcome=outcome)
            # Taken over: not held for the rest of the stream (a few KiB each).
            winner.first_chunks.clear()
            yield Stream(route, Batches(chunks.first, chunks, tap=tap, on_error=failed))

    def finish(self, call: ChatCall | EmbeddingCall, tab: Tab, route: Route | None, *,
               client_ttft: float | None, client_gone: bool, complete: bool) -> None:
        """The request is over: what its client saw is known.

        `client_ttft` is from its arrival to the first byte of a streamed answer
        sent, `client_gone` whether the client left before the whole answer,
        `complete` whether it was handed the whole answer. A sampled request
        that was answered whole sends its shadow copy now; the winner's ledger
        row is queued.
        """
        shadow, tab.shadow = tab.shadow, None
        if complete and shadow is not None and route is not None and isinstance(call, ChatCall):
            self.accounting.submit_shadow(
                shadow, tab, route.rule, route.model,
                self._shadow_call(call.body, stream=call.stream), _question(call),
                client_ttft=client_ttft)
        self.accounting.finish(tab, client_ttft=client_ttft, client_gone=client_gone)

    @contextlib.asynccontextmanager
    async def _race(
        self, call: ChatCall, tab: Tab, plan: Plan, *, stream: bool
    ) -> AsyncIterator[tuple[Route, Winner]]:
        """Run the race for this plan; enter once the decision is final and a model won."""
        body = call.body
        models = {m.id: m for tier in plan.by_tier.values() for m in tier}
        policy = self.router.policy_for(call.key)
        speculate = policy.speculate and len(plan.possible_tiers) > 1
        admit = self.admit if self.gated is None or self.gated(call) else None
        slow = plan.policy is not None or admit is not None
        booking = Booking(plan.tier, plan.rule, decided=not slow)
        trace = tab.trace
        if trace is not None and not slow:
            trace.decided(trio.current_time(), plan.tier, plan.rule)

        def on_record(record: AttemptRecord) -> None:
            self._on_record(record, stream)

            def write(tier: str | None, rule: str) -> None:
                row = self.accounting.attempt(record, tab, body, tier, rule, stream=stream)
                if trace is not None and row is not None:
                    trace.booked(record, row.cost_usd)

            booking.book(write)

        async def decide() -> str:
            semantic: list[str | None] = [None]
            async with trio.open_nursery() as nursery:
                if admit is not None:
                    nursery.start_soon(admit, call, tab)
                if plan.policy is not None and self.classifier is not None:
                    nursery.start_soon(self._classify, call, tab, semantic)
            tier, rule = self.router.finish(plan, semantic[0])
            if trace is not None:
                trace.decided(trio.current_time(), tier, rule)
            decided = booking.decide(tier, rule)
            if not plan.by_tier.get(tier) and tier in plan.refusals:
                # No model of the decided tier could take it: the request's own
                # limits (a 400 naming them) or the tier's health (a 503).
                raise plan.refusals[tier]
            return decided

        if slow and not speculate:
            # Decide first, then race only inside the decided tier.
            await decide()
            slow = False
        candidates = {
            tier: [self._candidate(m, tier, policy, stream=stream) for m in ranked]
            for tier, ranked in plan.by_tier.items()
            if speculate or tier == booking.tier
        }

        async def answer(candidate: Candidate) -> Chunk:
            model = models[candidate.key]
            # Its upstream request joins the trace (in the request's own task when tried
            # in turn: hence a context given back afterwards).
            with attempt_context(trace, span_key(candidate)):
                return await self.providers[model.provider].chat(body, model=model.upstream_id)

        @contextlib.asynccontextmanager
        async def open_stream(candidate: Candidate) -> AsyncIterator[AsyncIterator[Chunk]]:
            if not stream:
                yield _single(await answer(candidate))
                return
            model = models[candidate.key]
            attempt_started(trace, span_key(candidate))
            async with self.providers[model.provider].stream_chat(
                    body, model=model.upstream_id) as chunks:
                yield chunks

        try:
            if not stream and not slow:
                # Decided at once and answered whole: tried in turn, no race.
                winner = await in_turn(
                    tier=booking.tier, candidates=candidates.get(booking.tier, ()),
                    call=answer, max_attempts=policy.max_attempts, on_record=on_record)
                yield Route(models[winner.candidate.key], booking.tier, booking.rule,
                            attempts=len(winner.records)), winner
                return
            async with race(
                candidates=candidates,
                decide=decide if slow else booking.tier,
                open_stream=open_stream,
                first_token_kind=token_kind if stream else _whole_answer,
                fanout=policy.fanout,
                max_attempts=policy.max_attempts,
                hedge=True,
                on_record=on_record,
                speculate=policy.speculate_tiers,
            ) as winner:
                model = models[winner.candidate.key]
                yield Route(model, booking.tier, booking.rule,
                            attempts=len(winner.records)), winner
        except RaceFailed as failed:
            error = failed.first_error()
            raise error if isinstance(error, ProxyError) else UpstreamError(str(error)) from None
        finally:
            booking.close()

    def _resumer(self, call: ChatCall, tab: Tab, plan: Plan, route: Route, winner: Winner
                 ) -> Callable[[str, Delivered, UpstreamError], ChunkSource | None] | None:
        """How a stream of this request is continued after its winner fails
        (None: it is not: off for the tier, the key's policy or the request)."""
        policy = self.router.policy_for(call.key)
        off = call.headers.get("x-tlproxy-continuation", "").strip().lower() == "off"
        if off or route.tier not in policy.continuation_tiers:
            return None
        tried = {r.candidate.key for r in winner.records if r.error is not None}
        tried.add(winner.candidate.key)
        spent = [len(winner.records)]

        def resume(reason: str, delivered: Delivered, error: UpstreamError) -> ChunkSource | None:
            ranked = [m for m in plan.by_tier.get(route.tier, ()) if m.id not in tried]
            bodies = {}
            for model in ranked:
                kind = self.config.providers[model.provider].kind
                form = form_for(model, kind)
                if form != "none":
                    bodies[model.id] = continue_body(call.body, delivered.text, form, kind)
            budget = policy.max_attempts - spent[0]
            if not bodies or budget < 1:
                return None
            candidates = [msgspec.structs.replace(
                self._candidate(m, route.tier, policy, stream=True), continues=reason)
                for m in ranked if m.id in bodies]
            send, receive = trio.open_memory_channel[Chunk | StreamFailure](_CONTINUATION_BUFFER)
            # In the race's nursery: leaving the stream cancels the continuation.
            assert winner.nursery is not None
            winner.nursery.start_soon(self._continue, tab, route, candidates, bodies,
                                      budget, error, send, tried, spent)
            return WinnerChunks(receive)

        return resume

    async def _continue(self, tab: Tab, route: Route,
                        candidates: list[Candidate], bodies: dict[str, dict[str, Any]],
                        budget: int, error: UpstreamError,
                        send: trio.MemorySendChannel[Chunk | StreamFailure],
                        tried: set[str], spent: list[int]) -> None:
        """Race `candidates` to continue the answer; their chunks go down `send`.

        When none produces a first token, the stream ends with the `error`
        that broke it, as it would have without a continuation.
        """
        models = {m.id: m for m in self.config.models}
        trace = tab.trace

        def on_record(record: AttemptRecord) -> None:
            self._on_record(record, True)
            row = self.accounting.attempt(record, tab, bodies[record.candidate.key],
                                          route.tier, route.rule, stream=True)
            if trace is not None and row is not None:
                trace.booked(record, row.cost_usd)

        @contextlib.asynccontextmanager
        async def open_stream(candidate: Candidate) -> AsyncIterator[AsyncIterator[Chunk]]:
            # Counted as it starts: a later continuation neither reuses it nor
            # spends more attempts than the request has.
            spent[0] += 1
            tried.add(candidate.key)
            model = models[candidate.key]
            provider = self.providers[model.provider]
            attempt_started(trace, span_key(candidate))
            async with provider.stream_chat(bodies[model.id],
                                            model=model.upstream_id) as chunks:
                yield chunks

        async with send:
            try:
                async with race(candidates={route.tier: candidates}, decide=route.tier,
                                open_stream=open_stream, first_token_kind=token_kind,
                                fanout=1, max_attempts=budget, hedge=True,
                                on_record=on_record) as winner:
                    for chunk in winner.first_chunks:
                        await send.send(chunk)
                    async for chunk in winner.chunks:
                        await send.send(chunk)
            except RaceFailed:
                await send.send(StreamFailure(error))
            except UpstreamError as exc:
                await send.send(StreamFailure(exc))

    def _candidate(self, model: ModelConfig, tier: str, policy: Policy, *,
                   stream: bool) -> Candidate:
        if not stream:
            # A JSON answer arrives whole: its "first token" is its last, so
            # neither a first-token deadline nor a hedge delay drawn from
            # TTFTs applies to it. Its bound is the total timeout. It is not
            # hedged at all: its duration grows with the answer's length
            # (max_tokens, reasoning effort), so a quantile of past durations
            # would start a second, fully billed copy of every long answer
            # rather than rescue a slow upstream. A failure or the total
            # timeout still hands over to the next candidate.
            total = model.total_timeout
            if total is None:
                total = self.config.providers[model.provider].total_timeout
            return Candidate(key=model.id, tier=tier, hedge_delay=math.inf,
                             answer_deadline=total)
        stats = self.stats[model.id]
        delay = math.inf
        if tier in policy.hedge_tiers:
            quantile = stats.quantile(policy.hedge_quantile)
            delay = (policy.hedge_initial_ms / 1000 if quantile is None
                     else max(policy.hedge_floor_ms / 1000, quantile))
        deadline = model.first_token_timeout
        if deadline is None and stats.samples >= 20:
            p99 = stats.quantile(0.99)
            # Generous: a burst of load raises every TTFT at once, and a deadline
            # that fires on all candidates together turns slowness into errors.
            deadline = max(5.0, 4 * p99) if p99 is not None else None
        stall = model.stall_timeout
        return Candidate(
            key=model.id, tier=tier, hedge_delay=delay, first_token_deadline=deadline,
            stall_deadline=stall if stall is not None else stats.stall_deadline("answer"),
            reasoning_stall_deadline=(
                stall if stall is not None else stats.stall_deadline("reasoning")))

    def _on_record(self, record: AttemptRecord, stream: bool) -> None:
        """An attempt's statistics and metrics (its ledger row is `accounting.Booking`'s)."""
        stats = self.stats[record.candidate.key]
        start = "hedge" if record.hedge else "fallback" if record.fallback else "initial"
        self.metrics.child(self.metrics.race, record.outcome, start).inc()
        # A JSON attempt's "first token" is its whole answer: not a TTFT.
        if stream and record.first_token_at is not None:
            ttft, kind = record.first_token_at - record.started_at, record.first_token_kind
            assert kind is not None
            stats.record_ttft(ttft, kind=kind)
            self.metrics.child(self.metrics.upstream_ttft, record.candidate.key,
                               kind).observe(ttft)
            if record.longest_gaps:
                stats.record_gaps(record.longest_gaps)
        elif stream and record.outcome in _CUT and record.ended_at is not None:
            stats.record_no_token(record.ended_at - record.started_at)
        # A winner whose stream broke after its first token failed too: its
        # breaker and error rate hear of it, so a model that keeps breaking
        # mid-stream is avoided rather than continued every time.
        if record.outcome in ("failed", "deadline") or (
                stream and record.outcome == "won" and record.error is not None):
            error = record.error
            if isinstance(error, UpstreamError) and error.status == 429:
                stats.record_throttled()
            else:
                stats.record_failure(trio.current_time())
            if isinstance(error, UpstreamError):
                provider = self.config.model(record.candidate.key)
                self.metrics.upstream_errors.labels(
                    provider.provider if provider else "", str(error.status)).inc()
        elif record.first_token_at is not None:
            stats.record_success()

    def _shadow_call(
        self, body: dict[str, Any], *, stream: bool
    ) -> Callable[[str], Awaitable[ShadowAnswer]]:
        """The shadow copy of `body`, sent as the client sent it (streamed or not), so
        both sides' latencies mean the same thing; timed from the moment it is sent."""

        async def call(target: str) -> ShadowAnswer:
            model = self.config.model(target) or next(
                m for m in self.config.models if m.tier == target)
            provider = self.providers[model.provider]
            started = trio.current_time()
            if not stream:
                answer = await provider.chat(body, model=model.upstream_id)
                message = ((answer.get("choices") or [{}])[0].get("message") or {})
                return ShadowAnswer(model, message.get("content") or "", answer.get("usage"),
                                    None, trio.current_time() - started)
            parts: list[str] = []
            usage: dict[str, Any] | None = None
            first: float | None = None
            async with provider.stream_chat(body, model=model.upstream_id) as chunks:
                async for chunk in chunks:
                    usage = chunk.get("usage") or usage
                    if first is None and token_kind(chunk) is not None:
                        first = trio.current_time() - started
                    parts.extend(first_choice_text(chunk))
            return ShadowAnswer(model, "".join(parts), usage, first,
                                trio.current_time() - started)

        return call

    async def _classify(self, call: ChatCall, tab: Tab, out: list[str | None]) -> None:
        assert self.classifier is not None
        out[0] = await self.classifier.classify(
            call.facts.last_user_text, embed=functools.partial(self._embed_texts, tab=tab))

    async def _embed_texts(self, texts: list[str], *,
                           tab: Tab | None = None) -> list[list[float]]:
        """The classifier's embedding call; each try is a ledger row of `tab`'s request."""
        plan = self.router.plan_embedding(self.config.classifier.model)
        body = {"model": plan.requested, "input": texts, "encoding_format": "float"}

        def account(model: ModelConfig, started: float, answer: dict[str, Any] | None,
                    error: BaseException | None) -> None:
            self.accounting.classifier_call(tab, body, model, started, answer=answer,
                                            error=error)

        _, answer = await self._embed(body, plan, account=account)
        return [decode_embedding(d["embedding"]) for d in answer["data"]]

    # -- embeddings ------------------------------------------------------

    async def embed(self, call: EmbeddingCall, tab: Tab) -> Answer:
        """Answer an embeddings request: the first candidate to answer, in order."""
        plan = self.router.plan_embedding(call.embedding.model)
        started = trio.current_time()
        route, answer = await self._embed(call.body, plan)
        tab.usage_tokens = total_tokens(answer.get("usage"))
        self.accounting.embedding(tab, call.body, route.model, answer, started)
        return Answer(route, answer)

    async def _embed(
        self, body: dict[str, Any], plan: Plan, *, account: _EmbedAccount | None = None
    ) -> tuple[Route, dict[str, Any]]:
        """Try the plan's candidates in turn. `account` hears of every try: its model,
        start, and answer, error, or neither (cancelled)."""
        last: UpstreamError | None = None
        for tried, model in enumerate(plan.candidates, 1):
            route = Route(model, plan.tier, plan.rule, attempts=tried)
            started = trio.current_time()
            try:
                answer = await self.providers[route.model.provider].embed(
                    body, model=route.model.upstream_id)
            except UpstreamError as exc:
                if account is not None:
                    account(model, started, None, exc)
                if not exc.retryable:
                    raise
                last = exc
                continue
            except trio.Cancelled:
                if account is not None:
                    account(model, started, None, None)
                raise
            if account is not None:
                account(model, started, answer, None)
            return route, answer
        assert last is not None
        raise last


# Chunks of a continuation that may wait for the consumer: a bounded buffer,
# as the race's (the producer waits when it is full).
_CONTINUATION_BUFFER = 64


_EmbedAccount = Callable[[ModelConfig, float, dict[str, Any] | None, BaseException | None], None]


class _single:
    """A JSON answer as a one-item stream, for the race of a JSON request that waits on
    a slow decision (one decided at once is tried in turn, `turns.py`).

    A class, not an async generator: nothing to finalize if the race drops it.
    """

    def __init__(self, answer: dict[str, Any]) -> None:
        self._answer: dict[str, Any] | None = answer

    def __aiter__(self) -> _single:
        return self

    async def __anext__(self) -> Chunk:
        await trio.lowlevel.checkpoint()
        if self._answer is None:
            raise StopAsyncIteration
        answer, self._answer = self._answer, None
        return answer


def _whole_answer(_answer: Chunk) -> str:
    """The first token of a JSON answer is the whole answer."""
    return "answer"


def _question(call: ChatCall) -> str | None:
    """What a shadow comparison shows as the question: the last user text, cut short."""
    return call.facts.last_user_text[:500] or None
