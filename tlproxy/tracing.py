"""OpenTelemetry traces: a server span per request, a client span per race attempt.

A trace of one request shows what metrics cannot: which candidates the race
started (speculatively, as hedges, as fallbacks), which one won and when,
what the losers cost, and when the decision came. The spans follow the
OpenTelemetry semantic conventions for HTTP servers and for generative AI
(``gen_ai.*``); what is the proxy's own is under ``tlproxy.*``. Prompts and
answers are never recorded.

How spans are made. Nothing is exported while a request runs: `begin` draws
the request's ids (or continues the client's ``traceparent``) and returns a
`tracecontext.Timeline`, which the engine writes a few facts into; `end`
builds every span at once from it, the race's attempt records and what the
edge knows (`Exchange`), with explicit start and end times taken from trio's
clock (mapped to the epoch at the request's arrival), so trio's `MockClock`
gives exact times in tests. The ids the upstream requests carried are given
to the spans through `_PresetIds`, the SDK's id generator hook.

Off the hot path. Spans go to a `BatchSpanProcessor`, whose thread does the
exporting: a request only appends to its queue. A collector that is down or
slow costs the request nothing; the queue is bounded, and what is dropped
(queue full, export failed, after shutdown) is counted in
``tlproxy_trace_spans_dropped_total``. Shutdown waits for the last export at
most the export timeout.

Configuration: `config.TracingConfig`; each value left out there falls back
to the standard ``OTEL_*`` environment variables, which the SDK reads. The
SDK is imported only when tracing is on: the ``tracing`` extra is optional.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
import trio

from .config import Config, ConfigError, TracingConfig
from .metrics import Metrics
from .race import AttemptRecord
from .router import Route
from .tracecontext import Parent, Timeline, parse_traceparent, span_key

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Tracer

__all__ = ["Exchange", "Tracing", "build_tracing"]

# gen_ai.provider.name by adapter kind (the conventions' well-known values).
# An OpenAI-compatible server is spoken to as OpenAI; the simulator is ours.
_PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini",
                   "sim": "tlproxy.sim"}
_OPERATIONS = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}


class Exchange(msgspec.Struct, frozen=True, kw_only=True):
    """What the edge knows of a request once it is over: the request span's facts."""

    method: str
    path: str
    # The route's template (``/v1/models/{model}``); None for a path that is not a route.
    route_template: str | None
    status: int
    ended: float  # trio's clock
    scheme: str = "http"
    http_version: str = "1.1"
    request_id: str = ""
    key: str | None = None  # the key's name, never the key
    requested_model: str | None = None
    route: Route | None = None
    ttft: float | None = None  # arrival to the first byte of a streamed answer
    cost_usd: float | None = None
    outcome: str = "ok"  # the access log's: ok, error, cut, cancelled
    error: str | None = None


class Tracing:
    """Tracing for one app: its tracer provider, exporter and counters.

    `exporter` replaces the OTLP exporter (tests pass the SDK's in-memory
    one), `batch` false exports each span as it ends instead of from the
    batch thread, `wall_ns` is the wall clock a request's arrival is mapped
    to, and `environ` the ``OTEL_*`` variables (the process's by default;
    the SDK's own reads of them are not redirected).
    """

    def __init__(self, config: Config, metrics: Metrics, *,
                 exporter: SpanExporter | None = None, batch: bool = True,
                 wall_ns: Callable[[], int] = time.time_ns,
                 environ: Mapping[str, str] | None = None) -> None:
        try:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.sdk.trace.sampling import Decision
        except ImportError as exc:
            raise ConfigError("tracing.enabled: tracing needs the 'tracing' extra, which is not "
                              f"installed ({exc}): pip install 'tlproxy[tracing]'") from None
        settings = config.tracing
        env = os.environ if environ is None else environ
        self._config = config
        self._metrics = metrics
        self._wall_ns = wall_ns
        self._rng = random.Random()
        self.timeout = settings.timeout or _env_float(
            env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT", default=10.0)
        limit = settings.max_queue_size or int(_env_float(
            env, "OTEL_BSP_MAX_QUEUE_SIZE", default=2048))
        self._ids = _preset_ids()
        self._provider = TracerProvider(
            sampler=_sampler(settings), resource=_resource(settings, env), id_generator=self._ids,
            shutdown_on_exit=False)
        self._sampler: Sampler = self._provider.sampler
        self._sample = Decision.RECORD_AND_SAMPLE
        bounded = _Bounded(limit, dropped=self._dropped)
        counted = _counting(exporter or _otlp_exporter(settings, env),
                            taken=bounded.taken, exported=self._exported, dropped=self._dropped)
        if batch:
            size = int(_env_float(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default=512))
            bounded.inner = BatchSpanProcessor(counted, max_queue_size=limit,
                                               max_export_batch_size=min(size, limit))
        else:
            bounded.inner = SimpleSpanProcessor(counted)
        self._processor = bounded
        self._provider.add_span_processor(_processor(bounded))
        try:
            own = version("tlproxy")
        except PackageNotFoundError:
            own = None
        self._tracer: Tracer = self._provider.get_tracer("tlproxy", own)
        self._servers = {name: _server(p.base_url) for name, p in config.providers.items()}

    # -- counters (called from the export thread too: prometheus is thread-safe) --

    def _dropped(self, reason: str, count: int) -> None:
        self._metrics.trace_spans_dropped.labels(reason).inc(count)

    def _exported(self, count: int) -> None:
        self._metrics.trace_spans_exported.inc(count)

    # -- a request ------------------------------------------------------------

    def begin(self, arrived: float, traceparent: str | None,
              tracestate: str | None = None) -> Timeline:
        """A request arrived at trio time `arrived`: its ids and sampling decision.

        A valid ``traceparent`` makes the request span its child (same trace);
        its sampled flag is followed (parent-based sampling).
        """
        parent = parse_traceparent(traceparent, tracestate)
        trace_id = parent.trace_id if parent is not None else self._rng.getrandbits(128) or 1
        decision = self._sampler.should_sample(_context(parent), trace_id, "request").decision
        lag = round((trio.current_time() - arrived) * 1e9)
        return Timeline(trace_id=trace_id, span_id=self._rng.getrandbits(64) or 1,
                        sampled=decision == self._sample, parent=parent, arrived=arrived,
                        epoch_ns=self._wall_ns() - lag, rng=self._rng)

    def end(self, timeline: Timeline, exchange: Exchange) -> None:
        """The request is over: build and hand over its spans (nothing if not sampled)."""
        if not timeline.sampled:
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

        self._ids.preset(timeline.trace_id, timeline.span_id)
        name = f"{exchange.method} {exchange.route_template or ''}".rstrip()
        span = self._tracer.start_span(
            name, context=_context(timeline.parent), kind=SpanKind.SERVER,
            attributes=self._request_attributes(timeline, exchange),
            start_time=timeline.ns(timeline.arrived))
        if timeline.decision is not None:
            at, tier, rule = timeline.decision
            span.add_event("tlproxy.decision", {"tlproxy.tier": tier, "tlproxy.rule": rule},
                           timestamp=timeline.ns(at))
        winner = _winner(timeline)
        if winner is not None and winner.first_token_at is not None:
            span.add_event("tlproxy.first_token", _compact({
                "tlproxy.model": winner.candidate.key,
                "tlproxy.first_token.kind": winner.first_token_kind}),
                timestamp=timeline.ns(winner.first_token_at))
        inside = set_span_in_context(span)
        decided_at = timeline.decision[0] if timeline.decision is not None else None
        for record, cost in sorted(timeline.attempts, key=lambda a: a[0].started_at):
            self._ids.preset(None, timeline.attempt_ids.get(span_key(record.candidate)))
            model = self._config.model(record.candidate.key)
            upstream = model.upstream_id if model is not None else record.candidate.key
            child = self._tracer.start_span(
                f"chat {upstream}", context=inside, kind=SpanKind.CLIENT,
                attributes=self._attempt_attributes(timeline, record, cost, decided_at),
                start_time=timeline.ns(record.started_at))
            if record.first_token_at is not None:
                child.add_event("tlproxy.first_token", timestamp=timeline.ns(record.first_token_at))
            if record.error is not None and record.outcome in ("failed", "deadline", "won"):
                child.set_status(Status(StatusCode.ERROR, str(record.error)))
            ended = record.ended_at if record.ended_at is not None else exchange.ended
            child.end(end_time=timeline.ns(ended))
        if exchange.status >= 500 or exchange.outcome == "cut":
            span.set_status(Status(StatusCode.ERROR, exchange.error or ""))
        span.end(end_time=timeline.ns(exchange.ended))

    def _request_attributes(self, timeline: Timeline, exchange: Exchange) -> dict[str, Any]:
        route = exchange.route
        attributes: dict[str, Any] = {
            "http.request.method": exchange.method,
            "url.path": exchange.path,
            "url.scheme": exchange.scheme,
            "network.protocol.version": exchange.http_version,
            "http.response.status_code": exchange.status,
            "http.route": exchange.route_template,
            "tlproxy.request_id": exchange.request_id,
            "tlproxy.key": exchange.key,
            "tlproxy.outcome": exchange.outcome,
            "gen_ai.operation.name": _OPERATIONS.get(exchange.route_template or ""),
            "gen_ai.request.model": exchange.requested_model,
        }
        if exchange.status >= 500 or exchange.outcome == "cut":
            attributes["error.type"] = exchange.error or str(exchange.status)
        if route is not None:
            attributes.update({
                "gen_ai.provider.name": self._provider_name(route.model.provider),
                "gen_ai.response.model": timeline.response_model or route.model.upstream_id,
                "tlproxy.tier": route.tier,
                "tlproxy.rule": route.rule,
                "tlproxy.model": route.model.id,
                "tlproxy.provider": route.model.provider,
            })
        attributes["tlproxy.attempts"] = len(timeline.attempts)
        if exchange.ttft is not None:
            attributes["tlproxy.ttft_ms"] = exchange.ttft * 1000
        if exchange.cost_usd is not None:
            attributes["tlproxy.cost_usd"] = exchange.cost_usd
        winner = _winner(timeline)
        if winner is not None:
            attributes.update(_usage(winner.usage))
            if timeline.finish_reasons:
                attributes["gen_ai.response.finish_reasons"] = tuple(timeline.finish_reasons)
        return _compact(attributes)

    def _attempt_attributes(self, timeline: Timeline, record: AttemptRecord, cost: float,
                            decided_at: float | None) -> dict[str, Any]:
        candidate = record.candidate
        model = self._config.model(candidate.key)
        provider = model.provider if model is not None else ""
        host, port = self._servers.get(provider, (None, None))
        start = ("continuation" if candidate.continues is not None else "hedge" if record.hedge
                 else "fallback" if record.fallback else "initial")
        won = record.outcome == "won"
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": self._provider_name(provider),
            "gen_ai.request.model": model.upstream_id if model is not None else candidate.key,
            "server.address": host,
            "server.port": port,
            "tlproxy.model": candidate.key,
            "tlproxy.provider": provider,
            "tlproxy.tier": candidate.tier,
            "tlproxy.attempt.outcome": record.outcome,
            "tlproxy.attempt.start": start,
            # Why the answer it finishes broke: cut, stall, malformed, error-event.
            "tlproxy.attempt.continues": candidate.continues,
            "tlproxy.attempt.speculative": (decided_at is not None
                                            and record.started_at < decided_at),
            "tlproxy.chunks": record.chunks,
            "tlproxy.cost_usd": cost,
            **_usage(record.usage),
        }
        # A JSON answer's "first token" is the whole answer (kind "answer"): no TTFT.
        if record.first_token_at is not None and record.first_token_kind != "answer":
            attributes["tlproxy.ttft_ms"] = (record.first_token_at - record.started_at) * 1000
            attributes["tlproxy.first_token.kind"] = record.first_token_kind
        if won:
            attributes["gen_ai.response.model"] = timeline.response_model
            if timeline.finish_reasons:
                attributes["gen_ai.response.finish_reasons"] = tuple(timeline.finish_reasons)
        if record.error is not None:
            attributes["error.type"] = getattr(record.error, "code", None) or type(
                record.error).__name__
        return _compact(attributes)

    def _provider_name(self, provider: str) -> str | None:
        config = self._config.providers.get(provider)
        return _PROVIDER_NAMES.get(config.kind, config.kind) if config is not None else None

    # -- shutdown -------------------------------------------------------------

    async def aclose(self) -> None:
        """Export what is queued, waiting at most the export timeout (and a second).

        The SDK's shutdown joins its export thread; a collector that does not
        answer would hold it for as long as its retries last, so it runs in a
        thread of its own that is abandoned when the time is up (spans still
        queued then are lost, and the export thread is a daemon).
        """
        with trio.move_on_after(self.timeout + 1.0):
            await trio.to_thread.run_sync(self._provider.shutdown, abandon_on_cancel=True)
        self._processor.closed = True


def build_tracing(config: Config, metrics: Metrics,
                  environ: Mapping[str, str] | None = None) -> Tracing | None:
    """The app's tracing: None when ``[tracing]`` is off or ``OTEL_SDK_DISABLED`` is true."""
    env = os.environ if environ is None else environ
    if not config.tracing.enabled or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    return Tracing(config, metrics, environ=env)


def _winner(timeline: Timeline) -> AttemptRecord | None:
    return next((r for r, _ in timeline.attempts if r.outcome == "won"), None)


def _usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    if not isinstance(usage, dict):
        return {}
    return _compact({"gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
                     "gen_ai.usage.output_tokens": usage.get("completion_tokens")})


def _compact(attributes: dict[str, Any]) -> dict[str, Any]:
    """Without the unknowns: the SDK refuses None values (with a warning each)."""
    return {k: v for k, v in attributes.items() if v is not None}


def _server(base_url: str | None) -> tuple[str | None, int | None]:
    if not base_url:
        return None, None
    parts = urlsplit(base_url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    return parts.hostname, port


def _env_float(env: Mapping[str, str], *names: str, default: float) -> float:
    for name in names:
        raw = env.get(name, "").strip()
        if raw:
            try:
                return float(raw)
            except ValueError:
                break
    return default


def _context(parent: Parent | None) -> Context | None:
    """The client's span as the parent context, or None for a new trace."""
    if parent is None:
        return None
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        TraceFlags,
        TraceState,
        set_span_in_context,
    )

    state = TraceState.from_header([parent.tracestate]) if parent.tracestate else None
    return set_span_in_context(NonRecordingSpan(SpanContext(
        parent.trace_id, parent.span_id, is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if parent.sampled else TraceFlags.DEFAULT),
        trace_state=state)))


def _sampler(settings: TracingConfig) -> Sampler | None:
    """The config's ratio, parent-based; None lets the SDK read OTEL_TRACES_SAMPLER."""
    if settings.sample_ratio is None:
        return None
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    return ParentBased(TraceIdRatioBased(settings.sample_ratio))


def _resource(settings: TracingConfig, env: Mapping[str, str]) -> Any:
    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, Any] = {}
    if settings.service_name:
        attributes["service.name"] = settings.service_name
    elif not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = "tlproxy"
    return Resource.create(attributes)


def _otlp_exporter(settings: TracingConfig, env: Mapping[str, str]) -> SpanExporter:
    protocol = settings.protocol or (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf").strip().lower()
    # Lower-case: gRPC metadata refuses upper-case keys, and HTTP does not mind.
    headers = {k.lower(): v for k, v in settings.headers.items()} if settings.headers else None
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GRPCExporter,
            )

            return GRPCExporter(endpoint=settings.endpoint, headers=headers,
                                timeout=settings.timeout)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError("tracing.protocol: tracing needs the 'tracing' extra, which is not "
                          f"installed ({exc}): pip install 'tlproxy[tracing]'") from None
    endpoint = settings.endpoint
    if endpoint and urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=settings.timeout)


# -- the SDK's hooks: ids given in advance, a bounded queue that counts ---------


class _PresetIdsBase:
    """Mixed into the SDK's `IdGenerator` by `_preset_ids` (imported only when tracing is on)."""

    def __init__(self) -> None:
        self._rng = random.Random()
        self._trace_id: int | None = None
        self._span_id: int | None = None

    def preset(self, trace_id: int | None, span_id: int | None) -> None:
        """The ids the next span started gets (None: random). The spans of a
        request are started one after another without a checkpoint, and only
        by `Tracing.end`, so nothing can start a span in between."""
        self._trace_id, self._span_id = trace_id, span_id

    def generate_span_id(self) -> int:
        span_id, self._span_id = self._span_id, None
        return span_id or self._rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        trace_id, self._trace_id = self._trace_id, None
        return trace_id or self._rng.getrandbits(128) or 1


def _preset_ids() -> Any:
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class PresetIds(_PresetIdsBase, IdGenerator):
        pass

    ids: IdGenerator = PresetIds()
    return ids


class _Bounded:
    """The span queue's bound, kept here so that a drop is counted.

    The SDK's batch processor drops the oldest span when its queue is full
    and reports it only through OpenTelemetry's own metrics, when an
    environment variable enables them. This wrapper counts the spans handed
    to the processor and not yet taken by the exporter, and refuses (and
    counts) a span beyond the bound, so the SDK's queue, of the same size,
    never overflows.
    """

    def __init__(self, limit: int, *, dropped: Callable[[str, int], None]) -> None:
        self.limit = limit
        self.inner: SpanProcessor | None = None
        self.closed = False
        self._dropped = dropped
        self._pending = 0
        self._lock = threading.Lock()

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            reason = ("shutdown" if self.closed
                      else "queue_full" if self._pending >= self.limit else None)
            if reason is None:
                self._pending += 1
        if reason is not None:
            self._dropped(reason, 1)
            return
        assert self.inner is not None
        self.inner.on_end(span)

    def taken(self, count: int) -> None:
        with self._lock:
            self._pending = max(0, self._pending - count)


def _processor(bounded: _Bounded) -> SpanProcessor:
    from opentelemetry.sdk.trace import SpanProcessor

    class BoundedProcessor(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            bounded.on_end(span)

        def shutdown(self) -> None:
            bounded.closed = True
            assert bounded.inner is not None
            bounded.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            assert bounded.inner is not None
            return bounded.inner.force_flush(timeout_millis)

    return BoundedProcessor()


def _counting(exporter: SpanExporter, *, taken: Callable[[int], None],
              exported: Callable[[int], None],
              dropped: Callable[[str, int], None]) -> SpanExporter:
    """`exporter`, counting what it exported and what it failed to."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Counting(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            taken(len(spans))
            try:
                result = exporter.export(spans)
            except Exception:
                result = SpanExportResult.FAILURE
            if result == SpanExportResult.SUCCESS:
                exported(len(spans))
            else:
                dropped("export_failed", len(spans))
            return result

        def shutdown(self) -> None:
            exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return exporter.force_flush(timeout_millis)

    return Counting()

