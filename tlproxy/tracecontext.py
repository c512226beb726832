"""A request's trace as the engine sees it: W3C trace context and a timeline, no SDK.

Tracing (`tracing.py`) is optional and built on OpenTelemetry's SDK; the
engine must not depend on either. What the engine needs while a request runs
is small: the ``traceparent`` each upstream request carries, and a place to
note the facts a trace shows that the race's records do not (when the
decision was made, what each attempt cost, what the answer said about
itself). This module holds exactly that, in plain Python: `Timeline` is
made by `tracing.Tracing` when a request arrives, written by the engine
through a handful of calls, and turned into spans by `tracing` when the
request ends. With tracing off there is no timeline, and every hook is one
``if``.

Why the attempt spans' ids exist before the spans. A trace is written when
the request ends, from the race's records (one per attempt) and this
timeline, with explicit start and end times: nothing is exported while a
request runs, and times come from trio's clock, so `MockClock` tests see
exact times. But an upstream that traces too (a self-hosted model server)
joins the trace only if its request carries the attempt span's context when
the attempt *starts*. So the span id of an attempt is drawn when its upstream
request is made (`Timeline.upstream_headers`), kept by the candidate's key
(unique within a race), and given to the span when it is built.

How the ``traceparent`` reaches the upstream request: through
`UPSTREAM_HEADERS`, a context variable the transport adds to every request
it sends. Trio gives each task its own copy of the context, and each race
attempt is a task of its own, so an attempt's value never leaks into another
attempt or another request; a JSON attempt tried in the request's own task
(`turns.in_turn`) sets it for its call only (`attempt_context`). The adapters
need not know tracing exists.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .race import AttemptRecord, Candidate

__all__ = ["UPSTREAM_HEADERS", "Parent", "Timeline", "attempt_context", "attempt_started",
           "format_traceparent",
           "parse_traceparent", "span_key"]

# Extra headers (lower-case name, value, as bytes) for the upstream requests of
# the current task: the transport appends them to every request it sends. A
# context variable is per task under trio, so it is not shared state.
UPSTREAM_HEADERS: ContextVar[tuple[tuple[bytes, bytes], ...]] = ContextVar(
    "tlproxy_upstream_headers", default=())

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


class Parent:
    """A client's trace context, from its ``traceparent`` (and ``tracestate``)."""

    __slots__ = ("sampled", "span_id", "trace_id", "tracestate")

    def __init__(self, trace_id: int, span_id: int, sampled: bool, tracestate: str = "") -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.tracestate = tracestate


def parse_traceparent(value: str | None, tracestate: str | None = None) -> Parent | None:
    """The client's context, or None when the header is absent or not valid W3C.

    As the W3C recommendation says: version ``ff``, an all-zero trace or
    parent id, or upper-case hex make the header invalid, and a receiver
    then starts a new trace; a future version (not ``00``) may carry more
    fields after the four it knows, which are read and the rest ignored.
    """
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace, span, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return Parent(trace_id, span_id, bool(int(flags, 16) & 1), (tracestate or "").strip())


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


class Timeline:
    """One request's trace while it runs: its ids and what the engine noted.

    Times are on trio's clock (the race's). The edge makes one per request
    when tracing is on (`tracing.Tracing.begin`); `tracing.Tracing.end`
    builds the spans from it and the race's records.
    """

    __slots__ = ("_rng", "arrived", "attempt_ids", "attempts", "decision", "epoch_ns",
                 "finish_reasons", "parent", "response_model", "sampled", "span_id", "trace_id")

    def __init__(self, *, trace_id: int, span_id: int, sampled: bool, parent: Parent | None,
                 arrived: float, epoch_ns: int, rng: random.Random) -> None:
        self.trace_id = trace_id
        self.span_id = span_id  # the request's server span
        self.sampled = sampled
        self.parent = parent
        # The request's arrival on trio's clock and in nanoseconds since the
        # epoch: every span time is the second plus the trio time since the first.
        self.arrived = arrived
        self.epoch_ns = epoch_ns
        self._rng = rng
        # Span id of each attempt, by its candidate's key.
        self.attempt_ids: dict[str, int] = {}
        # Every attempt's record and its cost in USD as the ledger priced it.
        self.attempts: list[tuple[AttemptRecord, float]] = []
        # (time, tier, rule) of the routing decision.
        self.decision: tuple[float, str, str] | None = None
        # What the winner's answer said of itself.
        self.response_model: str | None = None
        self.finish_reasons: list[str] = []

    def traceparent(self) -> str:
        """The request span's context, for upstream calls made outside a race attempt."""
        return format_traceparent(self.trace_id, self.span_id, self.sampled)

    def ns(self, at: float) -> int:
        """Trio time `at` in nanoseconds since the epoch."""
        return self.epoch_ns + round((at - self.arrived) * 1e9)

    def upstream_headers(self, key: str) -> tuple[tuple[bytes, bytes], ...]:
        """The headers of attempt `key`'s upstream request: its span's ``traceparent``
        (the span id drawn now, kept for the span) and the client's ``tracestate``."""
        span_id = self.attempt_ids.get(key)
        if span_id is None:
            span_id = self.attempt_ids[key] = self._rng.getrandbits(64) or 1
        headers = [(b"traceparent",
                    format_traceparent(self.trace_id, span_id, self.sampled).encode())]
        if self.parent is not None and self.parent.tracestate:
            headers.append((b"tracestate", self.parent.tracestate.encode("latin-1")))
        return tuple(headers)

    def decided(self, at: float, tier: str, rule: str) -> None:
        self.decision = (at, tier, rule)

    def booked(self, record: AttemptRecord, cost_usd: float) -> None:
        """An attempt's ledger row was priced."""
        self.attempts.append((record, cost_usd))

    def answer(self, chunk: dict[str, Any]) -> None:
        """A chunk (or the whole JSON answer) of the winner: its model and finish reasons."""
        model = chunk.get("model")
        if isinstance(model, str) and model:
            self.response_model = model
        for choice in chunk.get("choices") or ():
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if isinstance(reason, str) and reason:
                self.finish_reasons.append(reason)


def span_key(candidate: Candidate) -> str:
    """Which attempt span a candidate's attempt is: its model, or, for an attempt that
    continues a broken answer, its model's continuation (a model may have raced for
    the answer and then be asked to finish it: two attempts, two spans)."""
    return candidate.key if candidate.continues is None else f"{candidate.key}/continuation"


def attempt_context(timeline: Timeline | None, key: str) -> contextlib.AbstractContextManager[None]:
    """Within the block, the current task's upstream requests carry attempt `key`'s context.

    For an attempt that runs in the request's own task (`turns.in_turn`): the
    request's context is given back when the attempt ends, so the next attempt,
    and what the request starts afterwards (a shadow call), do not carry it.
    Without a trace, nothing to set: a do-nothing block (every JSON request).
    """
    if timeline is None:
        return contextlib.nullcontext()
    return _upstream_headers(timeline.upstream_headers(key))


@contextlib.contextmanager
def _upstream_headers(headers: tuple[tuple[bytes, bytes], ...]) -> Iterator[None]:
    token = UPSTREAM_HEADERS.set(headers)
    try:
        yield
    finally:
        UPSTREAM_HEADERS.reset(token)


def attempt_started(timeline: Timeline | None, key: str) -> None:
    """The current task runs attempt `key`: its upstream requests carry the attempt's context.

    Set and never reset: a race attempt is a trio task of its own, whose context
    (a copy of the request's, taken when the task was started) ends with it.
    """
    if timeline is not None:
        UPSTREAM_HEADERS.set(timeline.upstream_headers(key))
