"""Streams that think, refuse or speak before they write, through the real proxy.

Reasoning models (vLLM's and DeepSeek's ``reasoning_content``, OpenRouter's
and Groq's ``reasoning``) stream their thinking before any content; refusals
come as ``refusal`` deltas; audio models stream ``audio`` deltas. Each is
progress: the first such delta is the first token, for the race, the hedge
timer and the first-token deadline alike, and every delta reaches the client
as the upstream sent it. A scripted upstream sends 300 such deltas (more
than the race's 256-chunk buffer) behind the real proxy, the official SDK
reads them, and trio's MockClock gives exact times.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
import trio
from trio.testing import MockClock

from tests.integration.conftest import start_proxy
from tests.integration.scripted_upstream import (
    ScriptedUpstream,
    Step,
    chunk,
    start_upstream,
    usage_chunk,
)
from tlproxy.config import Config, LedgerConfig, ModelConfig, Policy
from tlproxy.report import report_main

THINK_AT = 0.25  # the thinker's first non-role delta
THOUGHT = 1 / 128  # seconds between two of its deltas (exact in binary)
DELTAS = 300
# Both before THINK_AT + DELTAS * THOUGHT: counting those deltas as nothing,
# the hedge (at 0.3 s) would start `backup`, which answers at once, and the
# first-token deadline (0.35 s) would fail the thinker.
HEDGE_MS = 300.0
FIRST_TOKEN_TIMEOUT = 0.35

KINDS: list[tuple[str, Callable[[int], dict[str, Any]]]] = [
    ("reasoning", lambda i: {"reasoning_content": f"Step {i}. "}),  # vLLM, DeepSeek
    ("reasoning", lambda i: {"reasoning": f"Step {i}. "}),  # OpenRouter, Groq
    ("refusal", lambda i: {"refusal": f"No {i}. "}),
    ("audio", lambda i: {"audio": {"id": "audio_1", "transcript": f"Word {i} "}}),
]
IDS = [f"{kind}-{next(iter(make(0)))}" for kind, make in KINDS]


def script(make: Callable[[int], dict[str, Any]]) -> tuple[list[Step], list[dict[str, Any]]]:
    """The thinker's stream, and the deltas the client should get from it."""
    deltas = [{"role": "assistant", "content": ""}, *(make(i) for i in range(DELTAS))]
    if "reasoning" in str(deltas[1]):
        deltas.append({"content": "Hello."})  # thinking first, then the answer
    steps: list[Step] = [("chunk", chunk("thinker", deltas[0])), ("sleep", THINK_AT)]
    for fields in deltas[1:]:
        steps += [("chunk", chunk("thinker", fields)), ("sleep", THOUGHT)]
    steps += [("chunk", chunk("thinker", finish_reason="stop")),
              ("chunk", usage_chunk("thinker"))]
    return steps, [*deltas, {}]


def config(upstream: ScriptedUpstream, provider: Any, **fields: Any) -> Config:
    return Config(
        providers={"scripted": provider},
        models=[
            ModelConfig(id="thinker", provider="scripted", tier="premium",
                        first_token_timeout=FIRST_TOKEN_TIMEOUT),
            ModelConfig(id="backup", provider="scripted", tier="premium"),
        ],
        policy=Policy(hedge_initial_ms=HEDGE_MS),
        **fields,
    )


async def stream(url: str) -> tuple[float, list[tuple[float, dict[str, Any]]], Any]:
    """Stream one request with the SDK: its start, each delta with when it came, headers."""
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                  http_client=httpx2.AsyncClient()) as client:
        start = trio.current_time()
        raw = await client.chat.completions.with_raw_response.create(
            model="premium", stream=True, messages=[{"role": "user", "content": "Think."}])
        seen: list[tuple[float, dict[str, Any]]] = []
        async with raw.parse() as chunks:
            async for event in chunks:
                for choice in event.choices:
                    seen.append((trio.current_time(), choice.delta.to_dict()))
    return start, seen, raw.headers


@pytest.mark.parametrize(("kind", "make"), KINDS, ids=IDS)
async def test_a_thinking_stream_wins_at_its_first_delta_and_reaches_the_client_untouched(
    autojump_clock: MockClock, nursery: trio.Nursery, kind: str,
    make: Callable[[int], dict[str, Any]],
) -> None:
    steps, expected = script(make)
    upstream = ScriptedUpstream({"thinker": steps, "backup": [
        ("chunk", chunk("backup", {"role": "assistant", "content": "Hi"})),
        ("chunk", chunk("backup", finish_reason="stop")), ("chunk", usage_chunk("backup"))]})
    provider = await start_upstream(nursery, upstream)
    running = await start_proxy(nursery, config(upstream, provider))
    start, seen, headers = await stream(running.url)
    assert [delta for _, delta in seen] == expected
    first = next(at for at, delta in seen if set(delta) != {"role", "content"})
    assert first - start == THINK_AT
    assert seen[-1][0] - start == THINK_AT + (len(expected) - 2) * THOUGHT
    # Neither the hedge timer nor the first-token deadline fired.
    assert [model for _, model, _ in upstream.calls] == ["thinker"]
    assert headers["x-tlproxy-model"] == "thinker"
    # The live TTFT statistics say which kind of first token they measured.
    stats = running.app.engine.stats["thinker"]
    assert (stats.samples, stats.first_token_kinds()) == (1, {kind: 1})
    async with httpx.AsyncClient(base_url=running.url) as http:
        metrics = (await http.get("/metrics")).text
    assert f'tlproxy_upstream_ttft_seconds_sum{{kind="{kind}",model="thinker"}} {THINK_AT}' in (
        metrics)


@pytest.mark.parametrize(("kind", "make"), KINDS, ids=IDS)
async def test_the_ledger_and_the_report_name_the_first_token_kind(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, kind: str,
    make: Callable[[int], dict[str, Any]],
) -> None:
    db = tmp_path / "ledger.db"
    upstream = ScriptedUpstream({"thinker": script(make)[0]})
    provider = await start_upstream(nursery, upstream)
    # The proxy in a nursery of its own: leaving it shuts the proxy down, which
    # writes every ledger row before it returns.
    async with trio.open_nursery() as proxy_nursery:
        running = await start_proxy(
            proxy_nursery, config(upstream, provider, ledger=LedgerConfig(path=str(db))))
        await stream(running.url)
        proxy_nursery.cancel_scope.cancel()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT model, winner, status, ttft_ms, first_token_kind "
                            "FROM ledger").fetchall()
    assert rows == [("thinker", 1, "ok", THINK_AT * 1000, kind)]
    assert report_main(["--db", str(db), "--by", "model", "--format", "json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert (group["model"], group["upstream_ttft_p50_ms"], group["ttft_kinds"]) == (
        "thinker", THINK_AT * 1000, kind)
    assert group["ttft_by_kind"] == {kind: {
        "requests": 1, "upstream_ttft_p50_ms": THINK_AT * 1000,
        "upstream_ttft_p95_ms": THINK_AT * 1000}}
    pytest.importorskip("rich")
    monkeypatch.setenv("COLUMNS", "160")
    assert report_main(["--db", str(db), "--by", "model"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert (table[1].split()[-1], table[2].split()[-1]) == ("1st", "token")
    assert next(line for line in table if line.startswith("thinker")).split()[-1] == kind
