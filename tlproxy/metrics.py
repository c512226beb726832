"""Prometheus metrics and the structured access log.

Each app owns its own `CollectorRegistry` (no module-level registry), so
several apps in one process (tests) never share counters. Label values are
routing facts (tier, model, provider, rule, status), never a key or a body.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["TOKEN_KINDS", "AccessLog", "JSONFormatter", "Metrics"]

# TTFT and durations of LLM calls span milliseconds to minutes.
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# The ledger's token columns, in `Metrics.spend`'s order. ``prompt`` includes
# the cached and cache-write tokens, as the ledger (and OpenAI) count them.
TOKEN_KINDS = ("prompt", "cached", "cache_write", "completion")


class _Spend(NamedTuple):
    """The counter children of one (tier, model, kind, outcome), resolved once."""

    cost: Any
    tokens: tuple[Any, ...]  # one per TOKEN_KINDS


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tlproxy_requests", "Requests answered, by routing outcome and HTTP status.",
            ["endpoint", "tier", "model", "provider", "rule", "status"], registry=r)
        self.ttft = Histogram(
            "tlproxy_ttft_seconds", "Time to first token of streamed answers, as sent.",
            ["tier", "model"], buckets=_TTFT_BUCKETS, registry=r)
        self.upstream_ttft = Histogram(
            "tlproxy_upstream_ttft_seconds",
            "Time to first token of streamed upstream attempts, by model and by what the "
            "first token carried (content, refusal, tool_calls, reasoning, audio, finish).",
            ["model", "kind"], buckets=_TTFT_BUCKETS, registry=r)
        self.duration = Histogram(
            "tlproxy_request_duration_seconds", "Time from request to the last byte.",
            ["endpoint", "tier"], buckets=_DURATION_BUCKETS, registry=r)
        self.race = Counter(
            "tlproxy_race_attempts",
            "Upstream attempts by outcome (won, lost, outside-tier, failed, deadline, "
            "cancelled) and how they started (initial, hedge, fallback).",
            ["outcome", "start"], registry=r)
        self.continuations = Counter(
            "tlproxy_continuations",
            "Streams whose winner failed after its first token, by reason (cut, stall, "
            "malformed, error-event) and outcome (recovered, failed, not-continued).",
            ["reason", "outcome"], registry=r)
        self.upstream_errors = Counter(
            "tlproxy_upstream_errors", "Upstream failures, by provider and client status.",
            ["provider", "status"], registry=r)
        self.rate_limited = Counter(
            "tlproxy_rate_limited", "Requests refused by a key's limit.", ["reason"], registry=r)
        self.open_streams = Gauge(
            "tlproxy_open_streams", "Streams being sent to clients now.", registry=r)
        self.ledger_queue = Gauge(
            "tlproxy_ledger_queue_depth", "Ledger rows waiting to be written.", registry=r)
        self.cost = Counter(
            "tlproxy_cost_usd",
            "Spend in USD of every priced upstream call (one per ledger row), by the call's "
            "kind (chat, embedding, shadow, classifier) and outcome (used, or wasted: billed "
            "but not used, as the race's losers).",
            ["tier", "model", "kind", "outcome"], registry=r)
        self.tokens = Counter(
            "tlproxy_tokens",
            "Tokens of every priced upstream call (one per ledger row), by token kind "
            "(prompt, cached, cache_write, completion; prompt includes cached and "
            "cache_write) and outcome (used, wasted).",
            ["tier", "model", "kind", "outcome"], registry=r)
        # The garbage collector's passes per generation (python_gc_*), and what
        # start-up left out of them (`tlproxy serve` freezes its start-up heap).
        r.register(GC_COLLECTOR)
        self.gc_frozen = Gauge(
            "tlproxy_gc_frozen_objects",
            "Objects left out of every garbage collection (start-up's, frozen).", registry=r)
        self.gc_frozen.set_function(gc.get_freeze_count)
        self.gc_young = Gauge(
            "tlproxy_gc_young_threshold",
            "Net allocations between two collections of the youngest generation.", registry=r)
        self.gc_young.set_function(lambda: gc.get_threshold()[0])
        # Tracing ([tracing]): spans handed to the exporter, and spans lost.
        self.trace_spans_exported = Counter(
            "tlproxy_trace_spans_exported", "Spans the trace exporter delivered.", registry=r)
        self.trace_spans_dropped = Counter(
            "tlproxy_trace_spans_dropped",
            "Spans lost before a collector had them: queue_full (the export queue was full, "
            "the collector slow or down), export_failed (the exporter gave up on them), "
            "shutdown (ended after tracing shut down).", ["reason"], registry=r)
        # Label lookups take a lock and validate every value: each combination is
        # resolved once and kept (tiers and models come from the catalog: a few).
        self._spend: dict[tuple[str, str, str, str], _Spend] = {}
        # Keyed by the metric's identity: every metric lives as long as this object.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, resolved once per combination and kept."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def spend(self, tier: str, model: str, kind: str, outcome: str, cost_usd: float,
              tokens: tuple[int, int, int, int]) -> None:
        """Count one priced call: its cost and its tokens, in `TOKEN_KINDS` order."""
        key = (tier, model, kind, outcome)
        children = self._spend.get(key)
        if children is None:
            children = self._spend[key] = _Spend(
                self.cost.labels(*key),
                tuple(self.tokens.labels(tier, model, name, outcome) for name in TOKEN_KINDS))
        if cost_usd > 0:
            children.cost.inc(cost_usd)
        for child, count in zip(children.tokens, tokens, strict=True):
            if count > 0:
                child.inc(count)

    def watch_ledger(self, depth: Callable[[], float]) -> None:
        self.ledger_queue.set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class JSONFormatter(logging.Formatter):
    """One JSON object per line; fields from `extra={"fields": {...}}` are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


class AccessLog:
    """One line per request with its id and routing decision; no body, no key."""

    def __init__(self, *, debug: bool = False) -> None:
        self.log = logging.getLogger("tlproxy.access")
        self.debug = debug

    def emit(self, fields: dict[str, Any]) -> None:
        if self.log.isEnabledFor(logging.INFO):
            fields["ts"] = round(time.time(), 3)
            self.log.info("request", extra={"fields": fields})
