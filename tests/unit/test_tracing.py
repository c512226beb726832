"""Traces of raced requests, with the SDK's in-memory exporter under `MockClock`.

A request is served as the app serves it (the engine and the edge's
renderer, the scripted upstreams of `test_engine`), with a `Timeline` on its
tab; its spans are built when it ends and exported at once, so every time,
id and attribute can be checked exactly: the trio clock's 0 is the epoch
`EPOCH` given to the tracing as its wall clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.unit.test_engine import QUESTION, USAGE, Client, FakeUpstream, answer_stream
from tests.unit.test_engine import config as engine_config
from tests.unit.test_ledger import MemoryWriter
from tlproxy.accounting import Accounting, Tab
from tlproxy.call import ChatCall, ChatFacts
from tlproxy.config import Prices, TracingConfig
from tlproxy.edge import Request, StreamSlots, serve_chat
from tlproxy.engine import Engine
from tlproxy.errors import UpstreamError
from tlproxy.ledger import Ledger, LedgerRow
from tlproxy.metrics import Metrics
from tlproxy.providers.base import JSON, Chunk
from tlproxy.tracecontext import (
    UPSTREAM_HEADERS,
    Timeline,
    format_traceparent,
    parse_traceparent,
)
from tlproxy.tracing import Exchange, Tracing, _Bounded, _otlp_exporter
from tlproxy.wire import decode_chat_request

EPOCH = 1_800_000_000_000_000_000  # ns: what the wall clock says at trio time 0
SECOND = 1_000_000_000
CLIENT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN = 0x00F067AA0BA902B7


class TracedUpstream(FakeUpstream):
    """The scripted upstreams, noting the trace headers each request carried."""

    def __init__(self, scripts: dict[str, list[Any]], **options: Any) -> None:
        super().__init__(scripts, **options)
        self.headers: dict[str, dict[bytes, bytes]] = {}

    async def chat(self, body: JSON, *, model: str) -> JSON:
        self.headers[model] = dict(UPSTREAM_HEADERS.get())
        return await super().chat(body, model=model)

    @contextlib.asynccontextmanager
    async def stream_chat(self, body: JSON, *, model: str) -> AsyncIterator[AsyncIterator[Chunk]]:
        self.headers[model] = dict(UPSTREAM_HEADERS.get())
        async with super().stream_chat(body, model=model) as chunks:
            yield chunks


class Traced:
    """The engine as `test_engine` runs it (priced models), with tracing around each request."""

    def __init__(self, upstream: FakeUpstream, *, sample_ratio: float | None = None,
                 **policy: Any) -> None:
        base = engine_config(**policy)
        # Prices, so that each attempt's cost is not zero.
        models = [msgspec.structs.replace(m, prices=Prices(input=2.0, output=8.0))
                  for m in base.models]
        self.config = msgspec.structs.replace(
            base, models=models, tracing=TracingConfig(enabled=True, sample_ratio=sample_ratio))
        self.writer = MemoryWriter()
        self.ledger = Ledger(self.writer)
        self.metrics = Metrics()
        accounting = Accounting(self.config, self.ledger, None, metrics=self.metrics)
        self.engine = Engine(self.config, {"fake": upstream}, accounting=accounting,
                             metrics=self.metrics)
        self.exporter = InMemorySpanExporter()
        self.tracing = Tracing(self.config, self.metrics, exporter=self.exporter, batch=False,
                               wall_ns=lambda: EPOCH + round(trio.current_time() * SECOND))
        self.timeline: Timeline | None = None

    async def rows(self) -> dict[str, LedgerRow]:
        await self.ledger.aclose()
        return {r.model: r for r in self.writer.rows if r.kind == "chat"}

    async def chat(self, client: Client, *, traceparent: str | None = None,
                   **body: Any) -> Request:
        request = Request({"method": "POST", "path": "/v1/chat/completions", "headers": []},
                          client.receive, client.send)
        raw = msgspec.json.encode({"model": "auto", **body})
        chat, decoded = decode_chat_request(raw)
        call = ChatCall.of(chat, id=request.id, arrived=request.arrived, key=None, headers={},
                           body=decoded, facts=ChatFacts.of(decoded))
        tab = Tab(request.id, None, request.arrived)
        tab.trace = self.timeline = timeline = self.tracing.begin(request.arrived, traceparent)
        engine = self.engine
        try:
            await serve_chat(request, engine, call, tab, slots=StreamSlots(self.config.limits),
                             metrics=self.metrics)
        finally:
            engine.finish(call, tab, request.route, client_ttft=request.ttft,
                          client_gone=request.client_gone, complete=request.answered)
            self.tracing.end(timeline, Exchange(
                method="POST", path="/v1/chat/completions",
                route_template="/v1/chat/completions", status=request.status or 499,
                ended=trio.current_time(), request_id=request.id,
                requested_model=call.facts.requested, route=request.route, ttft=request.ttft,
                cost_usd=tab.cost_usd, outcome="ok" if request.error is None else "error",
                error=request.error))
        return request

    def spans(self) -> dict[str, ReadableSpan]:
        return {span.name: span for span in self.exporter.get_finished_spans()}


def _times(span: ReadableSpan) -> tuple[float, float]:
    """A span's start and end in seconds of trio time."""
    assert span.start_time is not None and span.end_time is not None
    return (span.start_time - EPOCH) / SECOND, (span.end_time - EPOCH) / SECOND


async def test_the_span_tree_of_a_raced_request(autojump_clock: trio.testing.MockClock) -> None:
    """Both tiers speculated while the classifier decides (economy, at 1.0 s): the
    premium attempt is cut by the decision, the economy hedge started at 0.5 s
    loses to the first economy attempt's first token at 1.5 s."""
    upstream = TracedUpstream({
        "p1": [30.0],  # never answers: cut by the decision
        "e1": [1.5, *answer_stream("An", " answer")],
        "e2": [30.0],  # the hedge: too slow
    }, embed_delay=0.5)
    traced = Traced(upstream, speculate_tiers=["premium", "economy"], hedge_tiers=["economy"],
                    hedge_initial_ms=500.0, fanout=3)
    client = Client()
    parent = format_traceparent(CLIENT_TRACE, CLIENT_SPAN, True)
    request = await traced.chat(client, traceparent=parent, messages=QUESTION, stream=True)
    assert client.status == 200
    rows = await traced.rows()
    spans = traced.spans()
    assert set(spans) == {"POST /v1/chat/completions", "chat p1", "chat e1", "chat e2"}
    server = spans.pop("POST /v1/chat/completions")

    # The client's trace continues: every span is in it, the request span is the
    # child of the client's span, each attempt the child of the request span.
    assert server.kind == SpanKind.SERVER
    assert server.parent is not None and server.parent.span_id == CLIENT_SPAN
    assert server.parent.is_remote
    assert {s.context.trace_id for s in [server, *spans.values()]} == {CLIENT_TRACE}
    assert all(s.parent is not None and s.parent.span_id == server.context.span_id
               and s.kind == SpanKind.CLIENT for s in spans.values())
    # Each upstream request carried its own attempt span's context.
    for model, span in spans.items():
        assert upstream.headers[model.removeprefix("chat ")] == {
            b"traceparent": format_traceparent(CLIENT_TRACE, span.context.span_id,
                                               True).encode()}

    assert _times(server) == (0.0, 1.5)
    assert _times(spans["chat p1"]) == (0.0, 1.0)
    assert _times(spans["chat e1"]) == (0.0, 1.5)
    assert _times(spans["chat e2"]) == (0.5, 1.5)
    assert [(e.name, (e.timestamp - EPOCH) / SECOND, dict(e.attributes or {}))
            for e in server.events] == [
        ("tlproxy.decision", 1.0, {"tlproxy.tier": "economy",
                                   "tlproxy.rule": "semantic-summarize-extract"}),
        ("tlproxy.first_token", 1.5, {"tlproxy.model": "e1",
                                      "tlproxy.first_token.kind": "content"}),
    ]

    outcome = {name: (s.attributes or {})["tlproxy.attempt.outcome"]
               for name, s in spans.items()}
    assert outcome == {"chat p1": "outside-tier", "chat e1": "won", "chat e2": "lost"}
    assert {name: ((s.attributes or {})["tlproxy.attempt.start"],
                   (s.attributes or {})["tlproxy.attempt.speculative"],
                   (s.attributes or {})["tlproxy.tier"]) for name, s in spans.items()} == {
        "chat p1": ("initial", True, "premium"),
        "chat e1": ("initial", True, "economy"),
        "chat e2": ("hedge", True, "economy"),
    }
    # What each attempt cost is what the ledger booked for it.
    for name, span in spans.items():
        cost = (span.attributes or {})["tlproxy.cost_usd"]
        assert cost == rows[name.removeprefix("chat ")].cost_usd
        assert cost > 0
    winner = dict(spans["chat e1"].attributes or {})
    assert winner == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "e1",
        "gen_ai.response.model": "m",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 4,
        "gen_ai.usage.output_tokens": 2,
        "server.address": "fake.invalid",
        "server.port": 80,
        "tlproxy.model": "e1",
        "tlproxy.provider": "fake",
        "tlproxy.tier": "economy",
        "tlproxy.attempt.outcome": "won",
        "tlproxy.attempt.start": "initial",
        "tlproxy.attempt.speculative": True,
        "tlproxy.chunks": 5,
        "tlproxy.cost_usd": rows["e1"].cost_usd,
        "tlproxy.ttft_ms": 1500.0,
        "tlproxy.first_token.kind": "content",
    }
    assert all(s.status.status_code == StatusCode.UNSET for s in traced.spans().values())

    attributes = dict(server.attributes or {})
    assert attributes == {
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "http.response.status_code": 200,
        "http.route": "/v1/chat/completions",
        "tlproxy.request_id": request.id,
        "tlproxy.outcome": "ok",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "auto",
        "gen_ai.provider.name": "openai",
        "gen_ai.response.model": "m",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 4,
        "gen_ai.usage.output_tokens": 2,
        "tlproxy.tier": "economy",
        "tlproxy.rule": "semantic-summarize-extract",
        "tlproxy.model": "e1",
        "tlproxy.provider": "fake",
        "tlproxy.attempts": 3,
        "tlproxy.ttft_ms": 1500.0,
        # The request's cost: every ledger row of it, the classifier's calls too.
        "tlproxy.cost_usd": pytest.approx(sum(r.cost_usd for r in traced.writer.rows)),
    }
    assert {r.kind for r in traced.writer.rows} == {"chat", "classifier"}
    # Prompts and answers are not recorded anywhere.
    recorded = repr([(s.attributes, [e.attributes for e in s.events])
                     for s in traced.spans().values()])
    assert "report" not in recorded and "answer" not in recorded
    assert traced.metrics.registry.get_sample_value("tlproxy_trace_spans_exported_total") == 4


async def test_a_failed_attempt_is_an_error_span_and_the_fallback_wins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = TracedUpstream({
        "e1": [0.25, UpstreamError("upstream overloaded", status=503, code="overloaded")],
        "e2": [0.5, *answer_stream("Fine")],
    })
    traced = Traced(upstream, hedge_tiers=[])
    await traced.chat(Client(), model="economy", messages=QUESTION, stream=True)
    spans = traced.spans()
    failed, fallback = spans["chat e1"], spans["chat e2"]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "upstream overloaded"
    assert (failed.attributes or {})["error.type"] == "overloaded"
    assert (failed.attributes or {})["tlproxy.attempt.outcome"] == "failed"
    assert _times(failed) == (0.0, 0.25)
    assert (fallback.attributes or {})["tlproxy.attempt.start"] == "fallback"
    assert (fallback.attributes or {})["tlproxy.attempt.speculative"] is False
    assert _times(fallback) == (0.25, 0.75)
    # A decision without slow signals is made when the request is planned.
    server = spans["POST /v1/chat/completions"]
    assert [(e.name, (e.timestamp - EPOCH) / SECOND) for e in server.events] == [
        ("tlproxy.decision", 0.0), ("tlproxy.first_token", 0.75)]
    # Without a client's traceparent, the request span starts a trace.
    assert server.parent is None


async def test_json_attempts_tried_in_turn_each_carry_their_own_span_upstream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Decided at once, answered whole: the attempts run one after another in the
    # request's own task, so each must set its context and give it back.
    whole = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Fine"},
                          "finish_reason": "stop"}], "usage": USAGE}
    upstream = TracedUpstream({
        "e1": [0.25, UpstreamError("upstream overloaded", status=503, code="overloaded")],
        "e2": [0.5, whole],
    })
    traced = Traced(upstream)
    await traced.chat(Client(), model="economy", messages=QUESTION)
    spans = traced.spans()
    for key in ("e1", "e2"):
        sent = parse_traceparent(upstream.headers[key][b"traceparent"].decode())
        assert sent is not None
        assert (sent.trace_id, sent.span_id) == (spans[f"chat {key}"].context.trace_id,
                                                 spans[f"chat {key}"].context.span_id)
    assert _times(spans["chat e1"]) == (0.0, 0.25)
    assert _times(spans["chat e2"]) == (0.25, 0.75)
    # The request's task carries no attempt's context once it is over.
    assert UPSTREAM_HEADERS.get() == ()


async def test_an_unsampled_request_records_nothing_and_says_so_upstream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = TracedUpstream({"e1": [0.25, *answer_stream("Hi")]})
    traced = Traced(upstream, sample_ratio=0.0)
    await traced.chat(Client(), model="economy", messages=QUESTION, stream=True)
    assert traced.spans() == {}
    assert traced.timeline is not None and not traced.timeline.sampled
    sent = parse_traceparent(upstream.headers["e1"][b"traceparent"].decode())
    assert sent is not None and not sent.sampled
    assert sent.trace_id == traced.timeline.trace_id
    # A client's sampled flag is followed, whatever the ratio says.
    await traced.chat(Client(), traceparent=format_traceparent(CLIENT_TRACE, CLIENT_SPAN, True),
                      model="economy", messages=QUESTION, stream=True)
    assert {s.context.trace_id for s in traced.spans().values()} == {CLIENT_TRACE}


@pytest.mark.parametrize(("header", "expected"), [
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", (CLIENT_TRACE, CLIENT_SPAN, True)),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
     (CLIENT_TRACE, CLIENT_SPAN, False)),
    # Flags other than sampled are ignored; a later version may add fields.
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03", (CLIENT_TRACE, CLIENT_SPAN, True)),
    ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes",
     (CLIENT_TRACE, CLIENT_SPAN, True)),
    # Invalid: a new trace is started.
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),
    ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None),
    ("garbage", None),
    ("", None),
    (None, None),
])
def test_traceparent_is_read_as_w3c_trace_context(
        header: str | None, expected: tuple[int, int, bool] | None) -> None:
    parent = parse_traceparent(header)
    got = None if parent is None else (parent.trace_id, parent.span_id, parent.sampled)
    assert got == expected
    if expected is not None and header is not None and header.startswith("00-"):
        assert format_traceparent(*expected) == header[:53] + ("01" if expected[2] else "00")


# -- what is lost is counted ---------------------------------------------------


class _Holding:
    """A span processor that keeps what it is given (an exporter that never runs)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def test_spans_beyond_the_queue_bound_are_dropped_and_counted() -> None:
    dropped: list[tuple[str, int]] = []
    bounded = _Bounded(2, dropped=lambda reason, count: dropped.append((reason, count)))
    holding = _Holding()
    bounded.inner = holding  # type: ignore[assignment]
    spans = [ReadableSpan(name=f"s{i}") for i in range(4)]
    for span in spans[:3]:
        bounded.on_end(span)
    assert holding.spans == spans[:2] and dropped == [("queue_full", 1)]
    bounded.taken(2)  # the exporter took the first two
    bounded.on_end(spans[3])
    assert holding.spans == [*spans[:2], spans[3]]
    bounded.closed = True
    bounded.on_end(spans[0])
    assert dropped == [("queue_full", 1), ("shutdown", 1)]


class _Refusing(SpanExporter):
    """A collector that refuses every batch."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.FAILURE


async def test_spans_an_exporter_fails_to_deliver_are_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = TracedUpstream({"e1": [0.25, *answer_stream("Hi")]})
    traced = Traced(upstream)
    traced.tracing = Tracing(traced.config, traced.metrics, exporter=_Refusing(),
                             batch=False)
    request = await traced.chat(Client(), model="economy", messages=QUESTION, stream=True)
    assert request.status == 200
    assert traced.metrics.registry.get_sample_value(
        "tlproxy_trace_spans_dropped_total", {"reason": "export_failed"}) == 2
    assert traced.metrics.registry.get_sample_value("tlproxy_trace_spans_exported_total") == 0


@pytest.mark.parametrize(("endpoint", "env", "url"), [
    # The config's endpoint wins over the environment; a bare base URL gets the traces path.
    ("http://collector:4318", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:1/v1/traces"},
     "http://collector:4318/v1/traces"),
    ("http://collector:4318/custom/path", {}, "http://collector:4318/custom/path"),
])
def test_the_config_names_the_collector(endpoint: str, env: dict[str, str], url: str) -> None:
    exporter = _otlp_exporter(TracingConfig(enabled=True, endpoint=endpoint), env)
    assert exporter._endpoint == url  # type: ignore[attr-defined]


@pytest.mark.parametrize(("protocol", "env", "expected"), [
    (None, {}, "http"),
    (None, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
    (None, {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "grpc"),
    # The config wins over the environment.
    ("http", {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "http"),
    ("grpc", {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, "grpc"),
])
def test_the_protocol_comes_from_the_config_then_the_environment(
        protocol: str | None, env: dict[str, str], expected: str) -> None:
    settings = TracingConfig(enabled=True, protocol=protocol)  # type: ignore[arg-type]
    exporter = _otlp_exporter(settings, env)
    assert type(exporter).__module__ == (
        f"opentelemetry.exporter.otlp.proto.{expected}.trace_exporter")
    exporter.shutdown()


def test_only_the_tracing_module_imports_opentelemetry() -> None:
    """The engine, the race and the adapters know tracing only through `tracecontext`."""
    import ast
    from pathlib import Path

    import tlproxy

    package = Path(tlproxy.__file__).parent
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "opentelemetry" for name in names):
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"tracing.py"}


async def test_a_json_answer_names_its_model_and_finish_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answer = {"id": "c", "object": "chat.completion", "created": 1, "model": "e1-2026-01",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                           "finish_reason": "length"}],
              "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
    traced = Traced(FakeUpstream({"e1": [0.75, answer]}))
    await traced.chat(Client(), model="economy", messages=QUESTION)
    spans = traced.spans()
    for name in ("chat e1", "POST /v1/chat/completions"):
        attributes = spans[name].attributes or {}
        assert (attributes["gen_ai.response.model"], attributes["gen_ai.response.finish_reasons"],
                attributes["gen_ai.usage.input_tokens"],
                attributes["gen_ai.usage.output_tokens"]) == ("e1-2026-01", ("length",), 7, 3)
    assert _times(spans["chat e1"]) == (0.0, 0.75)
    # A JSON answer has no time to first token.
    assert all("tlproxy.ttft_ms" not in (s.attributes or {}) for s in spans.values())


@pytest.mark.parametrize(("method", "template", "status", "outcome", "error", "expected"), [
    # (span name, status code, error.type)
    ("POST", "/v1/chat/completions", 200, "ok", None,
     ("POST /v1/chat/completions", StatusCode.UNSET, None)),
    # A client's mistake is not the server's error (HTTP semantic conventions).
    ("POST", "/v1/chat/completions", 400, "error", "invalid_request_error",
     ("POST /v1/chat/completions", StatusCode.UNSET, None)),
    ("POST", "/v1/chat/completions", 502, "error", "upstream_error",
     ("POST /v1/chat/completions", StatusCode.ERROR, "upstream_error")),
    # A stream cut after its first byte went out as a 200.
    ("POST", "/v1/chat/completions", 200, "cut", "upstream_failed_mid_stream",
     ("POST /v1/chat/completions", StatusCode.ERROR, "upstream_failed_mid_stream")),
    ("GET", "/v1/models/{model}", 404, "error", "model_not_found",
     ("GET /v1/models/{model}", StatusCode.UNSET, None)),
    # A path that is no route: the method alone names the span (paths are unbounded).
    ("GET", None, 404, "error", "unknown_url", ("GET", StatusCode.UNSET, None)),
])
async def test_the_request_span_says_how_the_request_ended(
    autojump_clock: trio.testing.MockClock, method: str, template: str | None, status: int,
    outcome: str, error: str | None, expected: tuple[str, StatusCode, str | None],
) -> None:
    traced = Traced(FakeUpstream({}))
    timeline = traced.tracing.begin(trio.current_time(), None)
    await trio.sleep(0.125)
    traced.tracing.end(timeline, Exchange(
        method=method, path="/v1/anything", route_template=template, status=status,
        ended=trio.current_time(), outcome=outcome, error=error))
    [span] = traced.exporter.get_finished_spans()
    attributes = span.attributes or {}
    assert (span.name, span.status.status_code, attributes.get("error.type")) == expected
    assert (attributes["http.response.status_code"], attributes["tlproxy.outcome"]) == (
        status, outcome)
    assert _times(span) == (0.0, 0.125)


@given(st.text(max_size=80))
def test_any_traceparent_header_is_read_or_ignored_never_raises(header: str) -> None:
    parent = parse_traceparent(header)
    assert parent is None or (parent.trace_id > 0 and parent.span_id > 0)


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.booleans())
def test_a_traceparent_written_is_read_back(trace_id: int, span_id: int, sampled: bool) -> None:
    parent = parse_traceparent(format_traceparent(trace_id, span_id, sampled))
    assert parent is not None
    assert (parent.trace_id, parent.span_id, parent.sampled) == (trace_id, span_id, sampled)


async def test_a_continuation_is_an_attempt_span_of_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The winner breaks after five words at 0.75 s; e2 finishes the answer: its span
    starts then, says it is a continuation and why, and its upstream request carried
    its own context."""
    cut = UpstreamError("upstream stream ended before its final event", status=502)
    words = [0.25, *answer_stream("One", " two", " three", " four", " five")[:-2], 0.0, cut]
    upstream = TracedUpstream({"e1": words, "e2": [0.5, *answer_stream(" six", " seven")]})
    traced = Traced(upstream, hedge_tiers=[])
    client = Client()
    await traced.chat(client, model="economy", messages=QUESTION, stream=True)
    assert b"[DONE]" in client.body
    spans = traced.spans()
    broken, finishing = spans["chat e1"], spans["chat e2"]
    server = spans["POST /v1/chat/completions"]
    assert broken.parent is not None and finishing.parent is not None
    assert broken.parent.span_id == finishing.parent.span_id == server.context.span_id
    attributes = finishing.attributes or {}
    assert attributes["tlproxy.attempt.start"] == "continuation"
    assert attributes["tlproxy.attempt.continues"] == "cut"
    assert "tlproxy.attempt.continues" not in (broken.attributes or {})
    assert _times(finishing)[0] == _times(broken)[1]
    # Each upstream request carried its own attempt's span id.
    sent = {model: parse_traceparent(headers[b"traceparent"].decode())
            for model, headers in upstream.headers.items()}
    assert sent["e1"] is not None and sent["e2"] is not None
    assert sent["e1"].span_id == broken.context.span_id
    assert sent["e2"].span_id == finishing.context.span_id
    # The continuation's cost is its ledger row's.
    rows = await traced.rows()
    assert attributes["tlproxy.cost_usd"] == rows["e2"].cost_usd
