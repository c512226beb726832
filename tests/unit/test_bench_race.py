"""``bench.race``: its public names, the client's TTFT (against ``httpx.MockTransport`` under
trio's autojump clock, so times are exact) and ``--report`` on a saved result file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

import bench.race
from bench.race import Sample, main, stream_one

# Every public name of the single-module ``bench/race.py`` the package replaced.
OLD_MODULE_NAMES = {
    "CHAT_PROVIDERS", "CURVE_QUANTILES", "ECONOMY_FIRST_RULES", "ECONOMY_PROMPTS", "EMBED_MODEL",
    "EMBED_PROVIDER", "EMBED_SEED", "PREMIUM_PROMPTS", "RESULTS", "CpuWindow", "Item", "Latency",
    "Probe", "Sample", "Target", "Variant", "analyze", "best_by_tier", "bootstrap", "build_config",
    "build_parser", "catalog_models", "check_prompts", "closed_loop", "cost_by_item",
    "curve_rows", "interval", "machine", "main", "paired_added", "percentile_ms",
    "plot_tradeoff", "price_attempt", "proxy_server", "render_markdown", "render_rich", "run_all",
    "run_direct", "run_proxy", "stream_one", "summarize", "table_rows", "target_lines",
    "variants", "workload",
}


def test_every_name_of_the_old_module_imports_from_the_package() -> None:
    assert set(bench.race.__all__) == OLD_MODULE_NAMES
    for name in OLD_MODULE_NAMES:
        assert getattr(bench.race, name) is not None


def test_results_directory_is_still_bench_results() -> None:
    assert Path(bench.__file__).parent / "results" == bench.race.RESULTS


# --- the client -------------------------------------------------------------------------------


def chunk(delta: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": delta}]}) + b"\n\n"


ROLE = chunk({"role": "assistant", "content": ""})
DONE = b"data: [DONE]\n\n"


async def scripted(events: list[tuple[float, bytes]]) -> AsyncIterator[bytes]:
    for at, data in events:
        await trio.sleep_until(at)
        yield data


def transport(script: list[tuple[float, bytes]], status: int = 200) -> httpx.MockTransport:
    """Each response plays ``script`` (offsets in s from the request) after these headers."""

    async def handler(request: httpx.Request) -> httpx.Response:
        start = trio.current_time()
        return httpx.Response(
            status,
            headers={"content-type": "text/event-stream", "x-tlproxy-tier": "economy",
                     "x-request-id": "req-1"},
            content=scripted([(start + at, data) for at, data in script]),
        )

    return httpx.MockTransport(handler)


async def stream(script: list[tuple[float, bytes]], status: int = 200) -> Sample:
    async with httpx.AsyncClient(transport=transport(script, status)) as client:
        sample = Sample(0, "economy", "proxy", trio.current_time())
        return await stream_one(client, "http://proxy.test/v1/chat/completions", b"{}", sample)


async def test_ttft_is_the_first_content_event_not_the_role_chunk(autojump_clock: Any) -> None:
    start = trio.current_time()
    content = chunk({"content": "hello"})
    # The content event arrives in two reads; it counts when the second completes it.
    sample = await stream([(0.0, ROLE), (0.25, content[:9]), (0.3, content[9:]), (0.4, DONE)])
    assert sample.error is None
    assert sample.ttft == pytest.approx(0.3)
    assert sample.end == pytest.approx(start + 0.4)
    assert (sample.status, sample.tier, sample.request_id) == (200, "economy", "req-1")


async def test_stream_without_done_or_content_is_an_error(autojump_clock: Any) -> None:
    assert (await stream([(0.0, ROLE), (0.1, chunk({"content": "x"}))])).error == "no_done"
    assert (await stream([(0.0, ROLE), (0.1, DONE)])).error == "no_content"
    assert (await stream([(0.0, b"{}")], status=503)).error == "http_503"


# --- --report ---------------------------------------------------------------------------------


def sample(index: int, ttft: float, target: str) -> dict[str, Any]:
    return {"index": index, "tier_expected": "economy", "target": target, "start": 0.0,
            "ttft": ttft, "end": ttft + 0.2, "status": 200,
            "tier": "economy" if target == "proxy" else None, "model": None, "rule": None,
            "request_id": f"r{index}" if target == "proxy" else None, "error": None}


def attempt(index: int, outcome: str, cost: float, *, first: float | None) -> dict[str, Any]:
    return {"model": "gpt-5-mini", "started_at": 10.0, "first_token_at": first,
            "tier": "economy", "outcome": outcome, "hedge": False, "fallback": False,
            "ttft": None if first is None else first - 10.0, "duration": 0.3, "chunks": 3,
            "prompt_tokens": 10, "output_tokens": 2, "estimated": False, "cost_usd": cost,
            "error": None, "request_id": f"r{index}"}


def run(name: str, label: str, ttfts: list[float], *, proxied: bool,
        speculation: bool = False) -> dict[str, Any]:
    target = "proxy" if proxied else "e1"
    attempts = []
    if proxied:
        for i, ttft in enumerate(ttfts):
            attempts.append(attempt(i, "won", 1e-3, first=10.0 + ttft - 0.005))
            if speculation:
                attempts.append(attempt(i, "outside-tier", 5e-4, first=None))
    return {"name": name, "label": label, "wall_s": 10.0,
            "cpu": {"wall_s": 10.0, "own_cpu_pct": 20.0, "other_cpu_pct": 1.0,
                    "loadavg_1m": 0.5},
            "samples": [sample(i, t, target) for i, t in enumerate(ttfts)],
            "attempts": attempts, "decisions": [0.1 + i / 1000 for i in range(len(ttfts))]
            if proxied else []}


def result_file(tmp_path: Path) -> Path:
    ttfts = [0.2 + (i % 10) / 100 for i in range(40)]
    raw = {
        "tool": "bench.race", "command": ["python", "-m", "bench.race", "--no-curve"],
        "started": "2026-11-27T12:00:00+00:00", "finished": "2026-11-27T12:01:00+00:00",
        "machine": {"nproc": 2, "cpu_model": "test", "python": "3.11", "platform": "linux",
                    "git_head": None, "git_dirty": None},
        "settings": {"seed": 0},
        "runs": [
            run("direct", "(a) direct, best single provider", ttfts, proxied=False),
            run("wait", "(b) proxy, decide then call", [t + 0.1 for t in ttfts], proxied=True),
            run("race", "(c) proxy, race (defaults: hedge at p90)", ttfts, proxied=True,
                speculation=True),
        ],
    }
    path = tmp_path / "race-test.json"
    path.write_bytes(orjson.dumps(raw))
    return path


def test_report_prints_the_markdown_tables_of_a_saved_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = result_file(tmp_path)
    argv = ["--report", str(path), "--markdown", "--plot", str(tmp_path / "plot.png")]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert (tmp_path / "plot.png").exists()
    assert "command: python -m bench.race --no-curve" in first
    assert "| variant | n | err | TTFT p50 ms [95% CI] |" in first
    # The race wastes one speculative attempt of half (b)'s cost per request: 50 %, all of it
    # speculation.
    assert "| 50.0 % (50.0 + 0.0) |" in first
    assert "- extra cost of (c) over (b) <= 15 %: 50.0 %: MISSED" in first
    # The bootstrap is seeded: the same file gives the same report.
    assert main(argv) == 0
    assert capsys.readouterr().out == first


def test_every_variant_builds_a_config_the_proxy_accepts() -> None:
    import argparse

    from bench.race.scenario import Latency, build_config, variants
    from tlproxy.config_check import problems

    args = argparse.Namespace(requests=1, curve_requests=1, extra=True, no_curve=False)
    for variant in variants(args):
        if variant.policy is not None:
            config = build_config(variant.policy, Latency(), seed=0)
            assert problems(config, serving=True) == [], variant.name
