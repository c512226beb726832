"""Carrying one request upstream and its answer back, in OpenAI's exact shape.

The engine owns the request's lifetime: it picks the route, calls the
provider, and writes the response through the edge's `Request`. For
streams it runs the upstream stream and a disconnect listener in one nursery
(starlette's `listen_for_disconnect` pattern), so a client that goes away
cancels the upstream request at once.

Conformance repairs happen here, on every chunk, whatever the upstream:
``usage`` is present on every chunk (``null``) when the client asked for
usage and absent when it did not; the usage-only chunk the proxy asked for
for itself is dropped when the client did not ask; every choice carries
``finish_reason``. A stream that fails after the response started ends with
an OpenAI error event and no ``[DONE]``: a cut stream never looks complete.

One clock: every time the engine measures or decides by is read from
``trio.current_time()`` (the race's clock), so trio's `MockClock` drives a
whole request in tests; the wall clock appears only in ledger timestamps.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from .accounting import Accounting, ShadowAnswer, ShadowPlan
from .call import ChatCall
from .classifier import TaskClassifier, decode_embedding
from .config import Config, ModelConfig, Policy
from .errors import ProxyError, UpstreamError
from .metrics import Metrics
from .providers.base import Chunk, Provider
from .race import AttemptRecord, Candidate, RaceFailed, Winner, race
from .router import Plan, Route, Router
from .shapes import first_choice_text, repair_chunk, repair_completion, token_kind, total_tokens
from .sse import DONE, encode_data
from .stats import StatsBook
from .wire import EmbeddingRequest

if TYPE_CHECKING:
    from .app import Request

__all__ = ["Admit", "Engine"]

log = logging.getLogger("tlproxy")
_encode = msgspec.json.Encoder().encode

# Attempts the race cut before their first token: their TTFT is longer than
# the time they ran (right-censored; see `stats.py`). A failure says nothing
# about TTFT, but a missed first-token deadline does.
_CUT = frozenset({"lost", "outside-tier", "deadline", "cancelled"})

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


# A gate a request must pass before it is answered (a key's rate limits and
# budget): awaited inside the decision, so it overlaps the race. It raises
# the `ProxyError` to answer with when the request is refused.
Admit = Callable[["Request", ChatCall], Awaitable[None]]


class Engine:
    """One request's lifetime, for every request of an app.

    Its collaborators are given when it is built: the providers by name, the
    metrics, the accounting (ledger and shadow traffic) and `admit`, the gate
    of a key's limits (None: every request is admitted).
    """

    def __init__(
        self,
        config: Config,
        providers: dict[str, Provider],
        *,
        accounting: Accounting,
        metrics: Metrics,
        admit: Admit | None = None,
    ) -> None:
        self.config = config
        self.providers = providers
        self.metrics = metrics
        self.accounting = accounting
        self.admit = admit
        self.stats = StatsBook()
        self.classifier = (
            TaskClassifier(config.classifier, self._embed_texts)
            if config.classifier.enabled else None
        )
        self.router = Router(config, self.stats, semantic=self.classifier is not None)
        self.open_streams = 0
        self.streams_by_key: dict[str, int] = {}

    # -- chat ------------------------------------------------------------

    async def chat(self, request: Request, call: ChatCall) -> None:
        plan = self.router.plan(call.facts, key=call.key, now=trio.current_time())
        body = call.body
        if call.stream:
            with self._stream_slot(request):
                await self._stream(request, call, plan)
            return
        result: tuple[Route, dict[str, Any]] | None = None
        async with (_cancelled_on_disconnect(request),
                    self._race(request, call, plan, stream=False) as (route, winner)):
            result = route, winner.first_chunks[-1]
        if result is None:
            return  # the client went away; the upstream calls were cancelled
        route, answer = result
        request.route = route
        request.usage_tokens = total_tokens(answer.get("usage"))
        repair_completion(answer)
        await request.respond(200, _encode(answer), route.headers())
        shadow = self.accounting.plan_shadow(request, route.rule, route.tier)
        if shadow is not None:
            message = ((answer.get("choices") or [{}])[0].get("message") or {})
            shadow.parts.append(message.get("content") or "")
            self.accounting.submit_shadow(shadow, request, route.rule, route.model,
                                          self._shadow_call(body, stream=False),
                                          _question(call))

    @contextlib.contextmanager
    def _stream_slot(self, request: Request) -> Iterator[None]:
        """Count an open stream against the worker's and the key's caps."""
        limits = self.config.limits
        key = request.key.name if request.key else None
        if self.open_streams >= limits.max_streams_per_worker:
            raise ProxyError(
                "This server is at its limit of concurrent streams; retry shortly.",
                status=503, type="service_unavailable", code="too_many_streams",
                headers={"retry-after": "1"})
        per_key = self.streams_by_key.get(key, 0) if key else 0
        if key and limits.max_streams_per_key is not None and (
                per_key >= limits.max_streams_per_key):
            raise ProxyError(
                f"This API key has {per_key} streams open, its limit; close one or retry "
                "shortly.", status=429, type="requests", code="too_many_concurrent_streams",
                headers={"retry-after": "1"})
        self.open_streams += 1
        if key:
            self.streams_by_key[key] = per_key + 1
        try:
            yield
        finally:
            self.open_streams -= 1
            if key:
                self.streams_by_key[key] -= 1
                if not self.streams_by_key[key]:
                    del self.streams_by_key[key]

    async def _stream(self, request: Request, call: ChatCall, plan: Plan) -> None:
        include_usage = call.include_usage
        shadow: ShadowPlan | None = None
        complete = False
        async with (
            _cancelled_on_disconnect(request),
            self._race(request, call, plan, stream=True) as (route, winner),
        ):
            request.route = route
            shadow = self.accounting.plan_shadow(request, route.rule, route.tier)
            await request.start(200, [*_SSE_HEADERS, *route.headers()])
            self.metrics.open_streams.inc()
            try:
                # The chunks held until the decision go out in one write.
                first = [self._frame(request, c, include_usage, shadow)
                         for c in winner.first_chunks]
                await _send(request, b"".join(f for f in first if f))
                request.ttft = trio.current_time() - request.arrived
                last = b""
                async for chunk in winner.chunks:
                    # Whatever else has already arrived goes out in the same
                    # write: one send (and one socket write) per batch, not per chunk.
                    frames = [self._frame(request, c, include_usage, shadow)
                              for c in (chunk, *winner.chunks.buffered())]
                    data = b"".join(f for f in frames if f)
                    if winner.chunks.ended:
                        last = data  # the stream ended cleanly: [DONE] joins it
                        break
                    if data:
                        await _send(request, data)
            except UpstreamError as exc:
                self._upstream_error(route, exc)
                request.error = "upstream_failed_mid_stream"
                log.warning("request %s: upstream failed mid-stream: %s", request.id, exc)
                await _send(request, encode_data(exc.body()), more=False)
            else:
                # Complete once [DONE] is handed over: a client that hangs up as
                # soon as it reads it may cancel this task during the send.
                complete = request.answered = True
                await _send(request, last + DONE, more=False)
            finally:
                self.metrics.open_streams.dec()
        if complete and shadow is not None and request.route is not None:
            self.accounting.submit_shadow(shadow, request, request.route.rule,
                                          request.route.model,
                                          self._shadow_call(call.body, stream=True),
                                          _question(call))

    @contextlib.asynccontextmanager
    async def _race(
        self, request: Request, call: ChatCall, plan: Plan, *, stream: bool
    ) -> AsyncIterator[tuple[Route, Winner]]:
        """Run the race for this plan; enter once the decision is final and a model won."""
        body = call.body
        models = {m.id: m for tier in plan.by_tier.values() for m in tier}
        policy = self.router.policy_for(request.key)
        speculate = policy.speculate and len(plan.possible_tiers) > 1
        slow = plan.policy is not None or self.admit is not None
        booking = _Booking(plan.tier, plan.rule, decided=not slow)

        def on_record(record: AttemptRecord) -> None:
            self._on_record(record, stream)
            booking.book(lambda tier, rule: self.accounting.attempt(
                record, request, body, tier, rule, stream=stream))

        async def decide() -> str:
            semantic: list[str | None] = [None]
            async with trio.open_nursery() as nursery:
                if self.admit is not None:
                    nursery.start_soon(self.admit, request, call)
                if plan.policy is not None and self.classifier is not None:
                    nursery.start_soon(self._classify, request, call, semantic)
            return booking.decide(*self.router.finish(plan, semantic[0]))

        if slow and not speculate:
            # Decide first, then race only inside the decided tier.
            await decide()
            slow = False
        candidates = {
            tier: [self._candidate(m, tier, policy, stream=stream) for m in ranked]
            for tier, ranked in plan.by_tier.items()
            if speculate or tier == booking.tier
        }

        @contextlib.asynccontextmanager
        async def open_stream(candidate: Candidate) -> AsyncIterator[AsyncIterator[Chunk]]:
            model = models[candidate.key]
            provider = self.providers[model.provider]
            if stream:
                async with provider.stream_chat(body, model=model.upstream_id) as chunks:
                    yield chunks
            else:
                yield _single(await provider.chat(body, model=model.upstream_id))

        try:
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
                yield Route(model, booking.tier, booking.rule), winner
        except RaceFailed as failed:
            error = failed.first_error()
            raise error if isinstance(error, ProxyError) else UpstreamError(str(error)) from None
        finally:
            booking.close()

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
        return Candidate(key=model.id, tier=tier, hedge_delay=delay,
                         first_token_deadline=deadline)

    def _on_record(self, record: AttemptRecord, stream: bool) -> None:
        """An attempt's statistics and metrics (its ledger row is `_Booking`'s)."""
        stats = self.stats[record.candidate.key]
        start = "hedge" if record.hedge else "fallback" if record.fallback else "initial"
        self.metrics.race.labels(record.outcome, start).inc()
        # A JSON attempt's "first token" is its whole answer: not a TTFT.
        if stream and record.first_token_at is not None:
            ttft, kind = record.first_token_at - record.started_at, record.first_token_kind
            assert kind is not None
            stats.record_ttft(ttft, kind=kind)
            self.metrics.upstream_ttft.labels(record.candidate.key, kind).observe(ttft)
        elif stream and record.outcome in _CUT and record.ended_at is not None:
            stats.record_no_token(record.ended_at - record.started_at)
        if record.outcome in ("failed", "deadline"):
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

    async def _classify(self, request: Request, call: ChatCall,
                        out: list[str | None]) -> None:
        assert self.classifier is not None
        out[0] = await self.classifier.classify(
            call.facts.last_user_text, embed=functools.partial(self._embed_texts, request=request))

    async def _embed_texts(self, texts: list[str], *,
                           request: Request | None = None) -> list[list[float]]:
        """The classifier's embedding call; each try is a ledger row of `request`'s."""
        plan = self.router.plan_embedding(self.config.classifier.model)
        body = {"model": plan.requested, "input": texts, "encoding_format": "float"}

        def account(model: ModelConfig, started: float, answer: dict[str, Any] | None,
                    error: BaseException | None) -> None:
            self.accounting.classifier_call(request, body, model, started, answer=answer,
                                            error=error)

        _, answer = await self._embed(body, plan, account=account)
        return [decode_embedding(d["embedding"]) for d in answer["data"]]

    def _upstream_error(self, route: Route, exc: UpstreamError) -> None:
        self.metrics.upstream_errors.labels(route.model.provider, str(exc.status)).inc()

    def _frame(self, request: Request, chunk: Chunk, include_usage: bool,
               shadow: ShadowPlan | None) -> bytes | None:
        """One chunk as the SSE bytes the client gets, or None when it is dropped."""
        usage = chunk.get("usage")
        if usage:
            request.usage_tokens = total_tokens(usage)
        if shadow is not None:
            shadow.parts.extend(first_choice_text(chunk))
        if not repair_chunk(chunk, include_usage):
            return None
        return encode_data(_encode(chunk))

    # -- embeddings ------------------------------------------------------

    async def embed(
        self, request: Request, embedding: EmbeddingRequest, body: dict[str, Any]
    ) -> None:
        plan = self.router.plan_embedding(embedding.model)
        started = trio.current_time()
        route, answer = await self._embed(body, plan)
        request.route = route
        request.usage_tokens = total_tokens(answer.get("usage"))
        self.accounting.embedding(request, body, route.model, answer, started)
        await request.respond(200, _encode(answer), route.headers())

    async def _embed(
        self, body: dict[str, Any], plan: Plan, *, account: _EmbedAccount | None = None
    ) -> tuple[Route, dict[str, Any]]:
        """Try the plan's candidates in turn. `account` hears of every try: its model,
        start, and answer, error, or neither (cancelled)."""
        last: UpstreamError | None = None
        for model in plan.candidates:
            route = Route(model, plan.tier, plan.rule)
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


class _Booking:
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


_EmbedAccount = Callable[[ModelConfig, float, dict[str, Any] | None, BaseException | None], None]


class _single:
    """A JSON answer as a one-item stream, so JSON requests run the same race.

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


async def _send(request: Request, data: bytes, *, more: bool = True) -> None:
    await request.send({"type": "http.response.body", "body": data, "more_body": more})


@contextlib.asynccontextmanager
async def _cancelled_on_disconnect(request: Request) -> AsyncIterator[None]:
    """Run the body while listening for the client to leave; if it does, cancel the body.

    The body's own exception leaves as itself, not wrapped in a group, so the
    edge renders it like any other error.
    """
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_listen_for_disconnect, request, nursery.cancel_scope)
            yield
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], Exception):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _listen_for_disconnect(request: Request, scope: trio.CancelScope) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            # Before the cancellation: the ledger reads it. A client that hangs up as
            # soon as it has [DONE] had the whole answer, and is not counted as gone.
            request.client_gone = not request.answered
            scope.cancel()
            return
