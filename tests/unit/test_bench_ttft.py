"""The pure parts of ``bench.ttft``: SSE timing, percentiles, the Poisson schedule, the load
loops (against ``httpx.MockTransport`` under trio's autojump clock, so times are exact), and
the flag parsing that must never leak a key."""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from bench.ttft.cli import main
from bench.ttft.client import measure_request, record_stream
from bench.ttft.endpoints import Endpoint, EndpointError, build_endpoints, redact_url
from bench.ttft.recorder import Sample, TimingRecorder
from bench.ttft.runner import Level, NullProgress, RunResult, Settings, run
from bench.ttft.stats import Distribution, percentile, summarize
from bench.ttft.workload import (
    FilePrompts,
    SyntheticPrompts,
    chat_body,
    poisson_schedule,
)

# --- scripted streams -------------------------------------------------------------------------


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return event({"id": "c", "object": "chat.completion.chunk", "choices": [choice]})


ROLE = chunk({"role": "assistant", "content": ""})
DONE = b"data: [DONE]\n\n"
TOOL_CALL = chunk(
    {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}]}
)


def content(text: str) -> bytes:
    return chunk({"content": text})


def usage(completion: int, prompt: int = 7) -> bytes:
    totals = {"prompt_tokens": prompt, "completion_tokens": completion}
    return event({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": totals})


async def scripted(events: list[tuple[float, bytes]]) -> AsyncIterator[bytes]:
    for at, data in events:
        await trio.sleep_until(at)
        yield data


async def record(events: list[tuple[float, bytes]], *, sent: float = 0.0) -> Sample:
    recorder = TimingRecorder(sent)
    await record_stream(recorder, scripted(events))
    return recorder.finish(trio.current_time())


# --- the SSE timing recorder ------------------------------------------------------------------


async def test_role_chunk_is_first_byte_but_not_first_token(autojump_clock: Any) -> None:
    s = await record(
        [(0.1, ROLE), (0.25, content("Hel")), (0.30, content("lo")), (0.31, usage(2)), (0.32, DONE)]
    )
    assert s.ttfb == 0.1
    assert s.ttft == 0.25
    assert s.itl == [pytest.approx(0.05)]
    assert s.e2e == 0.32
    assert (s.output_tokens, s.prompt_tokens, s.deltas) == (2, 7, 2)
    assert s.done and s.ok and s.error is None


async def test_stream_cut_without_done_is_an_error(autojump_clock: Any) -> None:
    s = await record([(0.1, ROLE), (0.2, content("a")), (0.4, content("b"))])
    assert s.error == "stream_cut"
    assert not s.done and not s.ok
    assert s.ttft == 0.2
    assert s.e2e == 0.4  # the stream ended when its last read returned


async def test_tool_call_delta_is_a_first_token(autojump_clock: Any) -> None:
    s = await record([(0.1, ROLE), (0.2, TOOL_CALL), (0.5, content("x")), (0.6, DONE)])
    assert s.ttft == 0.2
    assert s.itl == [pytest.approx(0.3)]
    assert s.ok


async def test_error_event_is_an_api_error(autojump_clock: Any) -> None:
    overloaded = event({"error": {"message": "model overloaded", "type": "server_error"}})
    s = await record([(0.1, ROLE), (0.2, content("a")), (0.3, overloaded), (0.4, DONE)])
    assert s.error == "api_error"
    assert s.detail == "model overloaded"
    assert s.done and not s.ok
    assert s.ttft == 0.2


async def test_event_split_across_reads_counts_when_complete(autojump_clock: Any) -> None:
    first = content("hello")
    s = await record([(0.1, ROLE + first[:10]), (0.3, first[10:]), (0.4, DONE)])
    assert s.ttfb == 0.1
    assert s.ttft == 0.3


async def test_two_deltas_in_one_read_have_zero_gap(autojump_clock: Any) -> None:
    s = await record([(0.2, content("a") + content("b")), (0.3, content("c")), (0.3, DONE)])
    assert s.ttft == 0.2
    assert s.itl == [0.0, pytest.approx(0.1)]


async def test_comments_and_crlf_are_handled(autojump_clock: Any) -> None:
    crlf = content("a").replace(b"\n", b"\r\n")
    s = await record([(0.05, b": keep-alive\n\n"), (0.1, ROLE), (0.2, crlf[:-1]), (0.25, b"\n")])
    assert s.ttfb == 0.05
    assert s.ttft == 0.25
    assert s.error == "stream_cut"


async def test_malformed_chunk(autojump_clock: Any) -> None:
    s = await record([(0.1, b"data: {not json\n\n"), (0.2, DONE)])
    assert s.error == "malformed_chunk"
    assert s.done


async def test_json_body_is_not_an_event_stream(autojump_clock: Any) -> None:
    s = await record([(0.1, b'{"choices": []}')])
    assert s.error == "malformed_chunk"
    assert s.detail is not None and "not an event stream" in s.detail


async def test_bytes_after_done_do_not_move_e2e(autojump_clock: Any) -> None:
    s = await record([(0.1, content("a")), (0.2, DONE), (0.5, content("late"))])
    assert s.e2e == 0.2
    assert s.deltas == 1


def test_oversized_event_is_an_error_not_a_leak() -> None:
    recorder = TimingRecorder(0.0, max_event_bytes=100)
    recorder.feed(0.1, b"data: " + b"x" * 200)
    assert recorder.finish(0.2).error == "malformed_chunk"


def test_lag_behind_schedule_adds_to_ttft_from_schedule() -> None:
    recorder = TimingRecorder(10.5, scheduled=10.0, origin=4.0)
    recorder.feed(10.7, content("a"))
    recorder.feed(10.8, DONE)
    s = recorder.finish(10.8)
    assert s.start == 6.5
    assert s.lag == 0.5
    assert s.ttft == pytest.approx(0.2)
    assert s.ttft_from_schedule == pytest.approx(0.7)


def test_http_error_keeps_the_body_as_detail() -> None:
    recorder = TimingRecorder(0.0)
    recorder.on_response(0.05, 429, "HTTP/1.1")
    recorder.feed(0.06, b'{"error": {"message": "slow down"}}')
    s = recorder.finish(0.07)
    assert (s.error, s.status, s.headers, s.ttfb) == ("http_429", 429, 0.05, 0.06)
    assert s.detail is not None and "slow down" in s.detail


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
@given(cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30))
def test_any_split_gives_the_same_sample(newline: bytes, cuts: list[int]) -> None:
    parts = [ROLE, content("a"), content("b"), usage(2), DONE]
    parts = [p.replace(b"\n", newline) for p in parts]
    stream = b"".join(parts)
    # The first token is complete when the read holding the last byte of its event arrives.
    first_token_end = len(parts[0]) + len(parts[1]) - 1
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    recorder = TimingRecorder(0.0)
    expected_ttft = None
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        recorder.feed(float(i), stream[lo:hi])
        if expected_ttft is None and hi > first_token_end:
            expected_ttft = float(i)
    s = recorder.finish(float(len(bounds)))
    assert s.ok and s.deltas == 2 and s.output_tokens == 2
    assert s.ttft == expected_ttft


# --- percentiles ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1, 2, 3, 4], 0.0, 1),
        ([1, 2, 3, 4], 0.5, 2.5),
        ([1, 2, 3, 4], 0.9, 3.7),  # h = 2.7: 3 + 0.7 * (4 - 3)
        ([1, 2, 3, 4], 0.95, 3.85),
        ([1, 2, 3, 4], 0.99, 3.97),
        ([1, 2, 3, 4], 1.0, 4),
        ([10], 0.5, 10),
        ([10], 0.99, 10),
        ([0, 10], 0.95, 9.5),
        ([15, 20, 35, 40, 50], 0.4, 29),  # h = 1.6: 20 + 0.6 * 15
        ([15, 20, 35, 40, 50], 0.9, 46),  # h = 3.6: 40 + 0.6 * 10
        (list(range(1, 101)), 0.99, 99.01),  # h = 98.01
    ],
)
def test_percentile_interpolates_linearly(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_refuses_what_has_no_answer() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 1.5)


def test_distribution_sorts_and_reports_the_table() -> None:
    d = Distribution.of([4, 1, 3, 2])
    assert (d.n, d.mean, d.p50, d.max) == (4, 2.5, 2.5, 4)
    assert [d.p90, d.p95, d.p99] == pytest.approx([3.7, 3.85, 3.97])
    assert Distribution.of([]) == Distribution(n=0)


def test_summary_keeps_errors_out_of_latencies() -> None:
    ok = [
        Sample(start=0, ttfb=0.01, ttft=t, e2e=t + 1.0, output_tokens=11, done=True)
        for t in (0.1, 0.2, 0.3)
    ]
    rejected = Sample(start=0, ttfb=0.001, e2e=0.002, error="http_429", status=429)
    cut = Sample(start=0, ttfb=0.01, ttft=0.4, e2e=0.9, itl=[0.1], error="stream_cut")
    s = summarize([*ok, rejected, cut], wall=2.0)
    assert (s.requests, s.ok, s.errors) == (5, 3, {"http_429": 1, "stream_cut": 1})
    assert s.ttft.n == 4 and s.ttft.p50 == pytest.approx(0.25)  # the cut one got a token
    assert s.e2e.n == 3 and s.e2e.max == pytest.approx(1.3)  # only completed requests
    assert s.decode_rate.p50 == pytest.approx(10.0)  # 10 tokens after the first, in 1 s
    assert s.done_ratio == pytest.approx(0.6)
    assert s.throughput == pytest.approx(33 / 2.0)
    assert s.in_flight == pytest.approx((1.1 + 1.2 + 1.3 + 0.002 + 0.9) / 2.0)


# --- the Poisson schedule ---------------------------------------------------------------------


def test_schedule_is_reproducible_from_its_seed() -> None:
    assert poisson_schedule(5.0, seed=1, count=50) == poisson_schedule(5.0, seed=1, count=50)
    assert poisson_schedule(5.0, seed=1, count=50) != poisson_schedule(5.0, seed=2, count=50)


def test_schedule_has_the_requested_rate_and_exponential_gaps() -> None:
    times = poisson_schedule(8.0, seed=3, count=20_000)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 8.0, rel=0.03)
    # For exponential gaps the standard deviation equals the mean.
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, abs=0.05)
    window = poisson_schedule(8.0, seed=3, duration=100.0)
    assert all(t < 100.0 for t in window)
    assert len(window) == pytest.approx(800, rel=0.1)


def test_schedule_needs_exactly_one_bound() -> None:
    with pytest.raises(ValueError):
        poisson_schedule(1.0, seed=0)
    with pytest.raises(ValueError):
        poisson_schedule(1.0, seed=0, count=3, duration=1.0)


# --- the load loops against a scripted transport ----------------------------------------------

Handler = Callable[[httpx.Request], Any]


def streaming_transport(first: float, *, tokens: int = 3, gap: float = 0.01) -> httpx.MockTransport:
    """Each response: role at once, first token after ``first`` s, then one per ``gap``."""

    async def handler(request: httpx.Request) -> httpx.Response:
        start = trio.current_time()
        script = [(0.0, ROLE)]
        script += [(first + i * gap, content(f"t{i}")) for i in range(tokens)]
        script += [(first + tokens * gap, usage(tokens) + DONE)]
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=scripted([(start + at, data) for at, data in script]),
        )

    return httpx.MockTransport(handler)


def two_endpoints() -> list[Endpoint]:
    return [
        Endpoint("a", "http://a.test/v1", "m-a", key="sk-a-0123456789"),
        Endpoint("b", "http://b.test/v1", "m-b"),
    ]


async def run_with(transport: httpx.MockTransport, settings: Settings) -> RunResult:
    endpoints = two_endpoints()
    prompts = SyntheticPrompts(input_tokens=8, output_tokens=3, seed=0)
    result = RunResult(endpoints=endpoints, settings=settings)
    return await run(endpoints, prompts, result, NullProgress(), transport=transport)


async def test_closed_loop_alternates_endpoints_and_counts_requests(autojump_clock: Any) -> None:
    seen: list[tuple[str, str]] = []
    inner = streaming_transport(0.2)

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.host, body["messages"][0]["content"].split(".")[0]))
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        return await inner.handle_async_request(request)

    settings = Settings(levels=[Level("closed", 1), Level("closed", 2)], requests=4, warmup=1)
    result = await run_with(httpx.MockTransport(handler), settings)

    for level in result.levels:
        assert {name: len(s) for name, s in level.samples.items()} == {"a": 4, "b": 4}
        for samples in level.samples.values():
            assert all(s.ok and s.ttft == pytest.approx(0.2) for s in samples)
    # Each endpoint got the same prompts in the same order: request k carries prompt k.
    by_host = {h: [p for host, p in seen if host == h] for h in ("a.test", "b.test")}
    assert by_host["a.test"] == by_host["b.test"]
    assert by_host["a.test"] == [f"Request {k}" for k in range(len(by_host["a.test"]))]
    # Warm-up requests (1 per endpoint per level) are sent but not counted.
    assert len(seen) == 2 * (4 + 1) * 2


async def test_closed_loop_duration_lets_started_requests_finish(autojump_clock: Any) -> None:
    settings = Settings(levels=[Level("closed", 1)], duration=1.0, warmup=0)
    result = await run_with(streaming_transport(0.3, tokens=1, gap=0.0), settings)
    (level,) = result.levels
    # Each worker does back-to-back 0.3 s requests: starts at 0, 0.3, 0.6, 0.9 (< 1.0).
    assert sorted(s.start for s in level.samples["a"]) == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert level.wall == pytest.approx(1.2)


@pytest.mark.parametrize("first_token", [0.01, 5.0])
async def test_open_loop_arrivals_ignore_response_times(
    autojump_clock: Any, first_token: float
) -> None:
    settings = Settings(levels=[Level("open", 4.0)], duration=3.0, warmup=0, seed=11)
    result = await run_with(streaming_transport(first_token), settings)
    (level,) = result.levels
    expected = poisson_schedule(4.0, seed=11, duration=3.0)
    for samples in level.samples.values():
        assert sorted(s.start for s in samples) == pytest.approx(expected)
        assert all(s.lag == 0.0 and s.ttft == pytest.approx(first_token) for s in samples)


async def test_open_loop_warmup_uses_the_first_arrivals(autojump_clock: Any) -> None:
    settings = Settings(levels=[Level("open", 4.0)], requests=5, warmup=2, seed=11)
    result = await run_with(streaming_transport(0.05), settings)
    (level,) = result.levels
    arrivals = poisson_schedule(4.0, seed=11, count=7)
    for samples in level.samples.values():
        starts = sorted(s.start for s in samples)
        assert starts == pytest.approx([t - arrivals[1] for t in arrivals[2:]])


async def test_transport_failures_become_error_kinds(autojump_clock: Any) -> None:
    endpoint = two_endpoints()[0]

    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def hang(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=scripted([(0.1, ROLE), (1000.0, DONE)]))

    async def reject(request: httpx.Request) -> httpx.Response:
        echoed = b'{"error": {"message": "bad key sk-a-0123456789"}}'
        return httpx.Response(401, content=scripted([(0.01, echoed)]))

    async def cut(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            yield ROLE
            await trio.sleep(0.2)
            raise httpx.ReadError("connection reset", request=request)

        return httpx.Response(200, content=body())

    results = {}
    for name, handler in [("refuse", refuse), ("hang", hang), ("reject", reject), ("cut", cut)]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            results[name] = await measure_request(client, endpoint, b"{}", time_limit=5.0)
    assert results["refuse"].error == "connect"
    assert results["hang"].error == "timeout" and results["hang"].e2e == 5.0
    assert results["reject"].error == "http_401"
    assert results["reject"].detail is not None and "sk-a-" not in results["reject"].detail
    assert results["cut"].error == "stream_cut" and results["cut"].e2e == pytest.approx(0.2)


# --- prompts and request bodies ---------------------------------------------------------------


def test_synthetic_prompts_are_deterministic_sized_and_distinct() -> None:
    prompts = SyntheticPrompts(input_tokens=500, output_tokens=64, seed=7)
    again = SyntheticPrompts(input_tokens=500, output_tokens=64, seed=7)
    assert prompts.text(3) == again.text(3)
    assert prompts.text(3) != prompts.text(4)
    assert prompts.text(3) != SyntheticPrompts(input_tokens=500, output_tokens=64, seed=8).text(3)
    assert len(prompts.text(3)) == 2000  # ~4 characters per token
    assert prompts.template(0)["max_tokens"] == 64


def test_chat_body_always_streams_with_usage() -> None:
    template = {"messages": [], "stream_options": {"include_usage": False, "x": 1}, "model": "no"}
    body = orjson.loads(chat_body(template, "m"))
    assert body["model"] == "m" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True, "x": 1}


def test_prompt_file_lines_pass_through_and_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    lines = [{"messages": [{"role": "user", "content": "hi"}], "tools": tools}]
    lines += [{"messages": [], "max_tokens": 5}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    prompts = FilePrompts.load(path, default_max_tokens=99)
    assert prompts.template(0) == {**lines[0], "max_tokens": 99}
    assert prompts.template(3) == lines[1]  # cycles
    path.write_text('{"messages": []}\n{"nope": 1}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2"):
        FilePrompts.load(path)


# --- endpoints and secrets --------------------------------------------------------------------


def test_flags_build_endpoints_with_keys_from_the_environment() -> None:
    endpoints = build_endpoints(
        endpoints=["a=http://127.0.0.1:1/v1", "b=https://api.example.com/v1"],
        keys=["a=env:A_KEY", "b=sk-b-literal-key"],
        models=["default-model", "b=gpt-x"],
        headers=["b=X-Team: bench"],
        environ={"A_KEY": "sk-a-from-env"},
    )
    a, b = endpoints
    assert (a.model, a.key, b.model, b.key) == (
        "default-model",
        "sk-a-from-env",
        "gpt-x",
        "sk-b-literal-key",
    )
    assert b.request_headers()["authorization"] == "Bearer sk-b-literal-key"
    assert b.request_headers()["x-team"] == "bench"
    assert b.url == "https://api.example.com/v1/chat/completions"
    for e in endpoints:
        assert "sk-" not in repr(e) and "sk-" not in json.dumps(e.public())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"endpoints": ["a=http://x/v1"]}, "no model"),
        ({"endpoints": ["a=ftp://x"], "models": ["m"]}, "http"),
        ({"endpoints": ["a=http://x", "a=http://y"], "models": ["m"]}, "twice"),
        ({"endpoints": ["a=http://x"], "models": ["m"], "keys": ["b=k"]}, "no such endpoint"),
        ({"endpoints": ["a=http://x"], "models": ["m"], "keys": ["a=env:NOPE"]}, "NOPE"),
        ({"endpoints": ["a=http://x"], "models": ["m"], "keys": ["sk-secret"]}, "NAME=KEY"),
        ({}, "no endpoint"),
    ],
)
def test_bad_endpoint_flags_are_explained(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(EndpointError, match=message) as info:
        build_endpoints(environ={}, **kwargs)
    assert "sk-secret" not in str(info.value)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_endpoints_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"endpoints{suffix}"
    if suffix == ".toml":
        path.write_text(
            'model = "m"\n[endpoints.p]\nbase_url = "http://127.0.0.1:9/v1"\nkey_env = "K"\n'
            '[endpoints.q]\nbase_url = "http://127.0.0.1:8/v1"\nmodel = "auto"\n'
            'headers = { "X-A" = "1" }\n'
        )
    else:
        path.write_text(
            json.dumps(
                {
                    "model": "m",
                    "endpoints": {
                        "p": {"base_url": "http://127.0.0.1:9/v1", "key_env": "K"},
                        "q": {
                            "base_url": "http://127.0.0.1:8/v1",
                            "model": "auto",
                            "headers": {"X-A": "1"},
                        },
                    },
                }
            )
        )
    p, q = build_endpoints(file=path, models=["p=override"], environ={"K": "sk-from-env"})
    assert (p.name, p.model, p.key) == ("p", "override", "sk-from-env")
    assert (q.name, q.model, dict(q.headers)) == ("q", "auto", {"x-a": "1"})


def test_urls_are_redacted() -> None:
    url = "https://user:pw@host.example:8443/v1?api-version=1&api_key=sekrit"
    assert redact_url(url) == "https://host.example:8443/v1?api-version=1&api_key=%2A%2A%2A"


def test_cli_usage_errors_return_2_without_running(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--endpoint", "a=ftp://x", "--model", "m"]) == 2
    assert "http" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-c", "0"])


def test_public_surface_is_locked() -> None:
    import bench.ttft
    from bench.ttft.__main__ import main as entry

    assert entry is main is bench.ttft.main
    assert sorted(bench.ttft.__all__) == [
        "Distribution",
        "EndpointSummary",
        "Sample",
        "SyntheticPrompts",
        "TimingRecorder",
        "build_parser",
        "main",
        "percentile",
        "poisson_arrivals",
        "poisson_schedule",
        "summarize",
    ]
    assert all(hasattr(bench.ttft, name) for name in bench.ttft.__all__)
