"""The pure parts of ``bench.overhead``: which targets run under which load and in what order,
CPU per request, the options, the tables, the configs, and the bytes of the fast upstream and
the hello floor (checked with the tool's own stream detector)."""

from __future__ import annotations

import argparse
import resource
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.fast_upstream import Answers
from bench.overhead import (
    ALL_TARGETS,
    FirstContentDetector,
    build_parser,
    main,
    nginx_config,
    procs,
    render_markdown,
    slice_order,
    targets_for,
)
from bench.overhead.cli import check_args
from bench.overhead.floors import hello
from bench.overhead.memory import raise_nofile
from bench.overhead.procs import _bench_env, floor_command, upstream_command
from bench.overhead.stats import RESULT_FORMAT, Record, Tally, compare, proxy_config_toml


@pytest.mark.parametrize(
    ("load", "available", "expected"),
    [
        ("json", ALL_TARGETS, ALL_TARGETS),
        ("stream", ALL_TARGETS, ("direct", "bare", "nginx", "proxy")),
        # The order is always ALL_TARGETS', whatever order the targets were started in.
        ("json", ("proxy", "direct", "hello"), ("direct", "hello", "proxy")),
        ("stream", ("proxy", "direct", "hello"), ("direct", "proxy")),
        ("json", ("direct", "proxy"), ("direct", "proxy")),
    ],
)
def test_targets_for_a_load(load: str, available: tuple[str, ...],
                            expected: tuple[str, ...]) -> None:
    assert targets_for(load, available) == expected


def test_targets_interleave_in_mirrored_rounds() -> None:
    assert slice_order(2, ("direct", "proxy")) == ["direct", "proxy", "proxy", "direct"]
    assert slice_order(3, ("direct", "bare", "proxy")) == [
        "direct", "bare", "proxy", "proxy", "bare", "direct", "direct", "bare", "proxy"]
    # Over two rounds every target's mean position is the same: linear drift cancels.
    order = slice_order(2, ALL_TARGETS)
    positions = {t: sum(i for i, o in enumerate(order) if o == t) for t in ALL_TARGETS}
    assert set(positions.values()) == {len(order) - 1}


def test_cpu_per_request_is_the_groups_ticks_over_requests_completed_in_the_windows() -> None:
    tally = Tally(stream=False)
    records = [Record(0.0, 0.5), Record(0.2, 0.9), Record(0.6, 1.2), Record(0.1, 0.3, error="x")]
    tally.add_slice(records, 0.0, 1.0)
    tally.ticks["proxy"] += 30
    assert tally.ok == 2  # the third ended after the window closed; the fourth failed
    assert tally.cpu_ms_per_request("proxy", clock_hz=100) == 150.0
    assert tally.cpu_ms_per_request("bare", clock_hz=100) == 0.0
    assert Tally(stream=False).cpu_ms_per_request("proxy", clock_hz=100) is None


def _args(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(list(argv))
    check_args(args)
    return args


@pytest.mark.parametrize(
    ("argv", "json_c", "stream_c"),
    [
        ((), [32, 128], [8, 64]),
        (("--concurrency", "4"), [4], [4]),
        (("--concurrency", "4", "--stream-concurrency", "2", "3"), [4], [2, 3]),
        (("--json-concurrency", "16"), [16], [8, 64]),
    ],
)
def test_each_load_has_its_own_concurrencies(argv: tuple[str, ...], json_c: list[int],
                                             stream_c: list[int]) -> None:
    args = _args(*argv)
    assert (args.json_concurrency, args.stream_concurrency) == (json_c, stream_c)


def test_defaults_measure_one_worker_against_the_fast_upstream_with_floors() -> None:
    args = _args()
    assert (args.upstream, args.proxy_workers, args.floors, args.ledger) == ("fast", 1, True, True)
    assert (args.upstream_ttft_ms, args.inter_token_ms, args.tokens) == ([200.0], 10.0, 24)


@pytest.mark.parametrize(
    "argv",
    [("--concurrency", "0"), ("--stream-concurrency", "8", "-1"), ("--duration", "0"),
     ("--slice", "-1"), ("--proxy-workers", "0")],
)
def test_options_that_cannot_run_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit):
        _args(*argv)


def _summary(target: str, requests: int, ticks: int, ttft: float | None) -> dict[str, Any]:
    tally = Tally(stream=ttft is not None)
    tally.add_slice([Record(0.1 * i, 0.1 * i + 0.05, ttft) for i in range(requests)], 0.0, 1.0)
    tally.ticks["upstream"] += 5
    if target != "direct":
        tally.ticks[target] += ticks
    return tally.summary(clock_hz=100, cores=2)


def _result() -> dict[str, Any]:
    runs = []
    for load, targets in (("json", ("direct", "hello", "proxy")), ("stream", ("direct", "proxy"))):
        ttft = 0.2 if load == "stream" else None
        run: dict[str, Any] = {"load": load, "concurrency": 4, "targets": list(targets)}
        for target in targets:
            run[target] = _summary(target, 10 if target == "direct" else 8, 4, ttft)
            if target != "direct":
                run[target]["cpu_ms_per_request"] = 5.0
                run[target]["vs_direct"] = compare(run["direct"], run[target])
        runs.append(run)
    return {
        "settings": {"proxy_workers": 1},
        "upstreams": [{"upstream_ttft_ms": 200.0, "targets": ["direct", "hello", "proxy"],
                       "proxy_processes": 1, "runs": runs,
                       "proxy_rss_kib": {"idle": 1000, "peak_sampled": 1200, "hwm": 1300}}],
    }


def test_tables_have_one_row_per_target_and_a_summary_per_intermediary() -> None:
    markdown = render_markdown(_result())

    assert "**Summary, upstream TTFT 200 ms (proxy workers: 1)**" in markdown
    # hello has no stream: its stream cells are dashes.
    assert "| hello | 5.000 (8) | - | - |" in markdown
    assert "| proxy | 5.000 (8) | 5.000 | 0.00 / 0.00 |" in markdown
    assert "| 200 | 4 | direct | 10.0 | - |" in markdown
    assert "| 200 | 4 | hello | 8.0 | 0.800 |" in markdown
    # own CPU: 4 ticks of 100 Hz over a 1 s window is 4 % of a core.
    stream_row = ("| 200 | 4 | proxy | 8 | 200.00 | 200.00 | 200.00 | 0.00 | 0.00 | 0.00 | 0 "
                  "| 5.000 | 4 |")
    assert stream_row in markdown
    assert "| 200 | 1 | 1000 | 1200 | 1300 |" in markdown


def test_nginx_config_keeps_every_path_in_its_prefix(tmp_path: Path) -> None:
    conf = nginx_config(listen_port=8081, upstream_port=9091, workers=3, prefix=tmp_path)
    assert "worker_processes 3;" in conf
    assert "listen 127.0.0.1:8081;" in conf
    assert "server 127.0.0.1:9091;" in conf
    assert "keepalive 256;" in conf
    assert 'proxy_set_header Connection "";' in conf
    assert "proxy_http_version 1.1;" in conf
    assert "proxy_buffering off;" in conf
    assert "access_log off;" in conf
    assert "user " not in conf
    for line in conf.splitlines():
        if line.strip().startswith(("pid ", "error_log ", "client_body_temp_path ",
                                    "proxy_temp_path ")):
            assert str(tmp_path) in line


def test_the_fast_upstreams_stream_is_read_by_the_tools_detector() -> None:
    answers = Answers(tokens=3)
    detector = FirstContentDetector()
    assert not detector.feed(answers.role)  # the role chunk carries no content
    assert detector.feed(answers.token)
    assert not detector.feed(answers.token + answers.finish + answers.usage)
    assert not detector.done
    detector.feed(b"data: [DONE]\n\n")
    assert detector.done
    completion = orjson.loads(answers.completion)
    assert completion["choices"][0]["message"]["content"] == " tok" * 3
    assert completion["usage"]["completion_tokens"] == 3


async def test_hello_answers_a_chat_completion_after_reading_the_body() -> None:
    sent: list[dict[str, Any]] = []
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"model":', "more_body": True},
        {"type": "http.request", "body": b'"m"}'},
    ]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await hello()({"type": "http", "method": "POST", "path": "/v1/chat/completions"},
                  receive, send)
    assert not incoming
    start, body = sent
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-length"] == b"%d" % len(body["body"])
    assert orjson.loads(body["body"])["choices"][0]["message"]["role"] == "assistant"


def test_nofile_limit_is_raised_to_what_is_asked_within_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        assert raise_nofile(soft) == soft  # never lowered
        assert raise_nofile(1) == soft
        higher = soft + 1 if hard == resource.RLIM_INFINITY else min(soft + 1, hard)
        assert raise_nofile(soft + 1) == higher
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (higher, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(
    ("max_connections", "line"),
    [(None, None), (2000, "max_connections = 2000")],
)
def test_proxy_config_sizes_the_upstream_pool_only_when_asked(max_connections: int | None,
                                                             line: str | None) -> None:
    conf = tomllib.loads(proxy_config_toml("http://127.0.0.1:1/v1", ledger=False,
                                           max_connections=max_connections))
    assert conf["providers"]["up"].get("max_connections") == max_connections
    assert conf["ledger"] == {"enabled": False}
    assert line is None or line in proxy_config_toml("u", max_connections=max_connections)


def test_report_prints_a_saved_result_and_refuses_an_older_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    saved = tmp_path / "r.json"
    saved.write_bytes(orjson.dumps({**_result(), "format": RESULT_FORMAT}))
    assert main(["--report", str(saved)]) == 0
    assert "Summary, upstream TTFT 200 ms" in capsys.readouterr().out

    older = tmp_path / "old.json"
    older.write_bytes(orjson.dumps(_result()))  # no "format": the two-target tool's files
    with pytest.raises(SystemExit, match=r"older bench\.overhead"):
        main(["--report", str(older)])


@pytest.mark.parametrize(
    ("upstream", "module", "itl_flag"),
    [("fast", "bench.fast_upstream", "--itl-ms"), ("sim", "tlproxy.cli", "--inter-token-ms")],
)
def test_upstream_command_passes_the_timing_to_either_upstream(upstream: str, module: str,
                                                               itl_flag: str) -> None:
    args = build_parser().parse_args(["--upstream", upstream, "--tokens", "7",
                                      "--inter-token-ms", "2.5"])
    command = upstream_command(args, 8001, 150.0)
    assert command[1:3] == ["-m", module]
    assert (upstream == "sim") == ("sim" in command)
    for flag, value in (("--port", "8001"), ("--ttft-ms", "150"), ("--tokens", "7"),
                        (itl_flag, "2.5")):
        assert command[command.index(flag) + 1] == value


def test_floors_and_fast_upstream_import_this_checkout_before_a_measured_snapshot() -> None:
    root = str(Path(procs.__file__).resolve().parents[2])
    assert _bench_env({"A": "1"}) == {"A": "1", "PYTHONPATH": root}
    env = _bench_env({"PYTHONPATH": "/tmp/snapshot"})
    assert env["PYTHONPATH"].split(":") == [root, "/tmp/snapshot"]
    command = floor_command("bare", 9000, "http://127.0.0.1:8001")
    assert command[1:4] == ["-m", "bench.overhead.floors", "bare"]
    assert command[command.index("--upstream") + 1] == "http://127.0.0.1:8001/v1"
