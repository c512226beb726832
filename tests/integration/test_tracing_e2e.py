"""Traces through the real server, exported over OTLP/HTTP to a collector in the test.

The collector is a small ASGI app on a loopback port that decodes what it
receives with the OpenTelemetry protobuf messages (`opentelemetry-proto`), as
a real collector would. The proxy exports from its batch thread; its shutdown
exports what is left, so once the server has stopped, every span is there,
and nothing waits on a timer.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import msgspec
import openai
import pytest
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.integration.conftest import CLIENT_KEY, fast_config, start_proxy
from tests.integration.scripted_upstream import serve_asgi
from tlproxy.asgi import lifespan, read_body
from tlproxy.config import ClientKey, Config, TracingConfig
from tlproxy.server import Running
from tlproxy.tracecontext import format_traceparent, parse_traceparent

CLIENT_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
CLIENT_SPAN = 0xB7AD6B7169203331
QUESTION = [{"role": "user", "content": "Name three rivers"}]


class Collector:
    """An OTLP/HTTP traces endpoint: the spans it received, with their resource."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.services: set[str] = set()
        self.paths: list[str] = []
        self.teams: set[str] = set()  # the x-team header of each export

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        self.paths.append(scope["path"])
        self.teams.update(v.decode() for k, v in scope["headers"] if k == b"x-team")
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        _take(self, request)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-protobuf")]})
        await send({"type": "http.response.body",
                    "body": ExportTraceServiceResponse().SerializeToString()})


class GRPCCollector:
    """The same, over OTLP/gRPC: the collector's trace service in a gRPC server's threads."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.services: set[str] = set()
        self.teams: set[str] = set()

    def Export(self, request: ExportTraceServiceRequest,  # the gRPC method's name
               context: Any) -> ExportTraceServiceResponse:
        self.teams.update(v for k, v in context.invocation_metadata() if k == "x-team")
        _take(self, request)
        return ExportTraceServiceResponse()


def _take(collector: Collector | GRPCCollector, request: ExportTraceServiceRequest) -> None:
    """An export's spans, and the service names of their resources, into `collector`."""
    for resource_spans in request.resource_spans:
        for attribute in resource_spans.resource.attributes:
            if attribute.key == "service.name":
                collector.services.add(attribute.value.string_value)
        for scope_spans in resource_spans.scope_spans:
            collector.spans.extend(scope_spans.spans)


@contextlib.contextmanager
def _grpc_collector(collector: GRPCCollector) -> Iterator[str]:
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


async def _start_collector(nursery: trio.Nursery, collector: Collector) -> str:
    return await serve_asgi(nursery, collector)


def _attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        kind = value.WhichOneof("value")
        out[attribute.key] = (list(value.array_value.values) if kind == "array_value"
                              else getattr(value, kind))
    for key, value in out.items():
        if isinstance(value, list):
            out[key] = [v.string_value for v in value]
    return out


def _traced(endpoint: str, **tracing: Any) -> Config:
    return fast_config(tracing=TracingConfig(enabled=True, endpoint=endpoint, **tracing))


async def _ask(running: Running, *, traceparent: str | None = None) -> tuple[str, str]:
    """One streamed answer through the openai SDK: its text and its request id."""
    headers = {"traceparent": traceparent} if traceparent else {}
    async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="unused",
                                  max_retries=0, default_headers=headers) as client:
        response = await client.chat.completions.with_raw_response.create(
            model="auto", messages=QUESTION, stream=True)
        text = ""
        async for chunk in response.parse():
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    return text, response.headers["x-request-id"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
async def test_spans_of_a_request_arrive_in_the_clients_trace(
    caplog: pytest.LogCaptureFixture, protocol: str,
) -> None:
    collector: Collector | GRPCCollector
    async with contextlib.AsyncExitStack() as stack:
        outer = await stack.enter_async_context(trio.open_nursery())
        if protocol == "http":
            collector = Collector()
            endpoint = await _start_collector(outer, collector)
        else:
            collector = GRPCCollector()
            endpoint = stack.enter_context(_grpc_collector(collector))
        with caplog.at_level(logging.INFO, logger="tlproxy.access"):
            async with trio.open_nursery() as nursery:
                # A base URL: the proxy posts to its /v1/traces.
                running = await start_proxy(nursery, _traced(
                    endpoint, service_name="gw", protocol=protocol, headers={"X-Team": "t1"}))
                sim = running.sims["sim"]
                text, request_id = await _ask(running, traceparent=format_traceparent(
                    CLIENT_TRACE, CLIENT_SPAN, True))
                sent = parse_traceparent(sim.stats.last_headers.get("traceparent"))
                # An embeddings request: its upstream call is the request span's child.
                async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="unused",
                                              max_retries=0) as client:
                    await client.embeddings.create(model="text-embedding-3-small",
                                                   input="rivers")
                embedded = parse_traceparent(sim.stats.last_headers.get("traceparent"))
                nursery.cancel_scope.cancel()  # the server stops: its spans are flushed
        outer.cancel_scope.cancel()
    assert text
    if isinstance(collector, Collector):
        assert set(collector.paths) == {"/v1/traces"}
    assert collector.services == {"gw"}
    assert collector.teams == {"t1"}
    [embedding] = [s for s in collector.spans if s.name == "POST /v1/embeddings"]
    assert embedded is not None and embedded.span_id.to_bytes(8, "big") == embedding.span_id
    assert embedding.trace_id == embedded.trace_id.to_bytes(16, "big") != CLIENT_TRACE
    assert _attributes(embedding)["gen_ai.operation.name"] == "embeddings"
    spans = [s for s in collector.spans if s is not embedding]
    server = [s for s in spans if s.name == "POST /v1/chat/completions"]
    attempts = [s for s in spans if s.name.startswith("chat ")]
    assert len(server) == 1 and len(attempts) == 1, [s.name for s in spans]
    [request], [attempt] = server, attempts
    assert {s.trace_id for s in spans} == {CLIENT_TRACE.to_bytes(16, "big")}
    assert request.parent_span_id == CLIENT_SPAN.to_bytes(8, "big")
    assert attempt.parent_span_id == request.span_id
    # The upstream request carried the attempt span's context.
    assert sent is not None and sent.sampled
    assert (sent.trace_id, sent.span_id.to_bytes(8, "big")) == (CLIENT_TRACE, attempt.span_id)
    fields = _attributes(request)
    assert fields["tlproxy.request_id"] == request_id
    assert (fields["http.response.status_code"], fields["tlproxy.tier"],
            fields["tlproxy.rule"], fields["gen_ai.request.model"]) == (
        200, "premium", "first-turn", "auto")
    assert _attributes(attempt)["tlproxy.attempt.outcome"] == "won"
    assert _attributes(attempt)["gen_ai.response.finish_reasons"] == ["stop"]
    assert request.start_time_unix_nano <= attempt.start_time_unix_nano
    assert attempt.end_time_unix_nano <= request.end_time_unix_nano
    # The access log line leads to the trace.
    line, embedding_line = [r for r in caplog.records if r.name == "tlproxy.access"]
    assert line.fields["trace_id"] == f"{CLIENT_TRACE:032x}"
    assert embedding_line.fields["trace_id"] == (
        embedding.trace_id.hex())
    assert running.app.metrics.registry.get_sample_value("tlproxy_trace_spans_exported_total") == 3


def _refused_endpoint() -> str:
    """A loopback URL where nothing listens: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/traces"


async def _black_hole(nursery: trio.Nursery) -> str:
    """A loopback URL that accepts connections and never answers."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def hold() -> None:
        async with contextlib.AsyncExitStack() as closing:
            for listener in listeners:
                await closing.enter_async_context(listener)
            while True:
                await closing.enter_async_context(await listeners[0].accept())

    nursery.start_soon(hold)
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/traces"


@pytest.mark.parametrize("collector", ["refusing", "silent"])
async def test_a_collector_that_is_down_changes_nothing_for_the_client(collector: str) -> None:
    """Connections refused, or accepted and never answered: the client gets the same
    answer as without tracing, and the server still stops (the exporter gives up
    within its timeout) with the lost spans counted."""
    answers: dict[str, str] = {}
    async with trio.open_nursery() as outer:
        endpoint = _refused_endpoint() if collector == "refusing" else await _black_hole(outer)
        for name, config in [("untraced", fast_config()),
                             ("traced", _traced(endpoint, timeout=0.5))]:
            async with trio.open_nursery() as nursery:
                running = await start_proxy(nursery, config)
                answers[name], _ = await _ask(running, traceparent=format_traceparent(
                    CLIENT_TRACE, CLIENT_SPAN, True))
                nursery.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    assert answers["traced"] == answers["untraced"] != ""
    metrics = running.app.metrics
    assert metrics.registry.get_sample_value(
        "tlproxy_trace_spans_dropped_total", {"reason": "export_failed"}) == 2
    assert metrics.registry.get_sample_value("tlproxy_trace_spans_exported_total") == 0


async def test_tracing_off_adds_no_header_upstream_and_no_trace_id() -> None:
    async with trio.open_nursery() as nursery:
        running = await start_proxy(nursery, fast_config())
        await _ask(running, traceparent=format_traceparent(CLIENT_TRACE, CLIENT_SPAN, True))
        assert "traceparent" not in running.sims["sim"].stats.last_headers
        assert running.app.tracing is None
        nursery.cancel_scope.cancel()



async def test_a_span_names_the_clients_key_and_never_holds_the_key() -> None:
    collector = Collector()
    digest = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
    async with trio.open_nursery() as outer:
        endpoint = await _start_collector(outer, collector)
        config = msgspec.structs.replace(
            _traced(endpoint), keys=[ClientKey(name="rag-service", hash=f"sha256:{digest}")])
        async with trio.open_nursery() as nursery:
            running = await start_proxy(nursery, config)
            async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=CLIENT_KEY,
                                          max_retries=0) as client:
                await client.chat.completions.create(model="auto", messages=QUESTION)
            nursery.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    [request] = [s for s in collector.spans if s.name == "POST /v1/chat/completions"]
    assert _attributes(request)["tlproxy.key"] == "rag-service"
    for span in collector.spans:
        assert CLIENT_KEY not in repr(_attributes(span))
        assert CLIENT_KEY.encode() not in span.SerializeToString()


async def test_a_responses_request_is_traced_with_its_attempts() -> None:
    """`/v1/responses` runs the same race as chat: a server span and an attempt span,
    and the upstream request carries the attempt's context."""
    collector = Collector()
    async with trio.open_nursery() as outer:
        endpoint = await _start_collector(outer, collector)
        async with trio.open_nursery() as nursery:
            running = await start_proxy(nursery, _traced(endpoint))
            sim = running.sims["sim"]
            async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="unused",
                                          max_retries=0) as client:
                answer = await client.responses.create(model="auto", input="Hello there",
                                                       store=False)
            sent = parse_traceparent(sim.stats.last_headers.get("traceparent"))
            nursery.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    assert answer.output_text
    [request] = [s for s in collector.spans if s.name == "POST /v1/responses"]
    attempts = [s for s in collector.spans if s.parent_span_id == request.span_id]
    assert len(attempts) == 1, [s.name for s in collector.spans]
    assert _attributes(attempts[0])["tlproxy.attempt.outcome"] == "won"
    assert sent is not None
    assert sent.span_id.to_bytes(8, "big") == attempts[0].span_id
