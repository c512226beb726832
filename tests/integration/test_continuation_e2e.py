"""Streams that survive, end to end: the official SDK, the real proxy, sims that break.

Three simulated upstreams on loopback ports, one per protocol (OpenAI's,
Anthropic's, Gemini's). In each, the model ``broken`` fails every stream after
five tokens (cut, stall, malformed event or error event: the sim's per-model
``fault``); the OpenAI sim's model ``healthy`` answers whole. The economy tier
ranks ``broken`` first (it is cheaper), so it wins the race, breaks, and
``healthy`` finishes its answer: the SDK must see one complete answer, and the
ledger both attempts.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
import trio
from trio.testing import MockClock

from tests.integration.conftest import start_proxy
from tests.integration.sse_wire import check_openai_stream, read_stream
from tlproxy.config import (
    Config,
    LedgerConfig,
    ModelConfig,
    Policy,
    Prices,
    ProviderConfig,
    SimFault,
    SimModelProfile,
)
from tlproxy.continuation import Overlap, continue_body, instruction_text
from tlproxy.server import serve_sim
from tlproxy.sim import SimUpstream
from tlproxy.sim.plan import plan_answer

KEYS = {"anthropic": "test-anthropic-key", "gemini": "test-gemini-key",
        "openai": "test-openai-key"}
HEALTHY = SimModelProfile(tokens=12)
QUESTION = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Tell me how the proxy routes requests"}]


def broken(fault: SimFault) -> SimModelProfile:
    return SimModelProfile(tokens=20, fault=fault, fault_after=5, fault_stall_ms=15_000.0)


async def start(nursery: trio.Nursery, protocol: str, fault: SimFault,
                db: Path, *, form: Literal["prefill", "instruction"] | None = None,
                healthy: str = "openai", sims: dict[str, SimUpstream] | None = None) -> str:
    """The three sims and the proxy; the broken model speaks `protocol`, the healthy
    one `healthy`."""
    providers: dict[str, ProviderConfig] = {}
    for kind in ("anthropic", "gemini", "openai"):
        profiles = {"healthy": HEALTHY}
        if kind == protocol:
            profiles["broken"] = broken(fault)
        sim = SimUpstream(profiles, api_key=KEYS[kind])
        if sims is not None:
            sims[kind] = sim
        address = (await nursery.start(functools.partial(serve_sim, sim)))[0]
        base = address + "/v1" if kind == "openai" else address
        providers[kind] = ProviderConfig(kind=kind, base_url=base, api_key=KEYS[kind])
    models = [
        ModelConfig(id="broken", provider=protocol, tier="economy", stall_timeout=2.0,
                    prices=Prices(input=0.1, output=0.4)),
        ModelConfig(id="healthy", provider=healthy, tier="economy", continuation=form,
                    prices=Prices(input=1.0, output=4.0)),
        ModelConfig(id="premium-model", provider="openai", upstream_model="healthy",
                    tier="premium"),
    ]
    config = Config(providers=providers, models=models, policy=Policy(strategy="cost"),
                    ledger=LedgerConfig(path=str(db), flush_interval=0.05))
    running = await start_proxy(nursery, config)
    return running.url


def ledger(db: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM ledger ORDER BY ts")]


def expected_text(provider_kind: str) -> str:
    """What the client should read: the broken model's first five tokens, then the
    healthy model's answer to the continuation request, its repetition trimmed."""
    body = {"model": "economy", "messages": QUESTION}
    partial = "".join(plan_answer(body, broken("cut")).choices[0].tokens[:5])
    asked = continue_body(body, partial, "instruction", provider_kind)
    overlap = Overlap(partial)
    rest = overlap.feed("".join(plan_answer(asked, HEALTHY).choices[0].tokens))
    return partial + rest + overlap.flush()


async def answer_through_sdk(url: str) -> tuple[str, list[str], openai.types.CompletionUsage]:
    text: list[str] = []
    finishes: list[str] = []
    usage = None
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused",
                                  max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(
            model="economy", messages=QUESTION, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True})
        async for chunk in stream:
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                if choice.finish_reason:
                    finishes.append(choice.finish_reason)
            usage = chunk.usage or usage
    assert usage is not None
    return "".join(text), finishes, usage


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize(("fault", "reason"), [
    ("cut", "cut"), ("malformed", "malformed"), ("error_event", "error-event"),
    ("stall", "stall"),
])
async def test_the_sdk_sees_one_complete_answer_and_the_ledger_both_attempts(
        autojump_clock: MockClock, tmp_path: Path, protocol: str, fault: SimFault,
        reason: str) -> None:
    db = tmp_path / "ledger.db"
    async with trio.open_nursery() as nursery:
        url = await start(nursery, protocol, fault, db)
        text, finishes, usage = await answer_through_sdk(url)
        nursery.cancel_scope.cancel()  # shutdown flushes the ledger
    assert text == expected_text("openai")
    assert finishes == ["stop"]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    rows = {r["model"]: r for r in ledger(db)}
    assert set(rows) == {"broken", "healthy"}
    assert rows["broken"]["request_id"] == rows["healthy"]["request_id"]
    assert (rows["broken"]["status"], rows["broken"]["winner"]) == ("cut", 1)
    assert (rows["healthy"]["status"], rows["healthy"]["winner"],
            rows["healthy"]["continuation"]) == ("ok", 0, reason)
    assert rows["healthy"]["cost_usd"] > 0


async def test_the_wire_is_openai_s_and_the_header_turns_it_off(
        autojump_clock: MockClock, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        url = await start(nursery, "openai", "cut", tmp_path / "ledger.db")
        async with httpx.AsyncClient(base_url=url) as http:
            body = {"model": "economy", "messages": QUESTION,
                    "stream_options": {"include_usage": True}}
            whole = await read_stream(http, body)
            check_openai_stream(whole, include_usage=True)
            http.headers["x-tlproxy-continuation"] = "off"
            cut = await read_stream(http, body)
            metrics = (await http.get("/metrics")).text
        nursery.cancel_scope.cancel()
    assert 'tlproxy_continuations_total{outcome="recovered",reason="cut"} 1.0' in metrics
    assert 'tlproxy_continuations_total{outcome="not-continued",reason="cut"} 1.0' in metrics
    assert not cut.done and "error" in cut.chunks[-1]
    assert sum(1 for c in cut.chunks if c.get("choices")) == 1 + 5  # role, five tokens


async def test_a_model_that_takes_prefill_writes_only_the_rest(
        autojump_clock: MockClock, tmp_path: Path) -> None:
    """The sim continues a prefill as a model would: the client reads one answer,
    the continuing model's own, its first five tokens written by the broken one."""
    async with trio.open_nursery() as nursery:
        url = await start(nursery, "anthropic", "cut", tmp_path / "ledger.db", form="prefill")
        text, finishes, _ = await answer_through_sdk(url)
        nursery.cancel_scope.cancel()
    body = {"model": "economy", "messages": QUESTION}
    assert text == "".join(plan_answer(body, HEALTHY).choices[0].tokens)
    assert finishes == ["stop"]


@pytest.mark.parametrize("healthy", ["anthropic", "gemini"])
async def test_models_that_take_no_prefill_are_asked_by_a_last_user_turn(
        autojump_clock: MockClock, tmp_path: Path, healthy: str) -> None:
    """Anthropic's current models refuse an assistant prefill, Gemini has none: the
    continuation is asked for in a final user turn, the system prompt untouched."""
    sims: dict[str, SimUpstream] = {}
    async with trio.open_nursery() as nursery:
        url = await start(nursery, "openai", "cut", tmp_path / "ledger.db", healthy=healthy,
                          sims=sims)
        text, finishes, _ = await answer_through_sdk(url)
        nursery.cancel_scope.cancel()
    assert finishes == ["stop"]
    body = {"model": "economy", "messages": QUESTION}
    partial = "".join(plan_answer(body, broken("cut")).choices[0].tokens[:5])
    assert text.startswith(partial) and len(text) > len(partial)
    sent = sims[healthy].stats.last_body
    assert sent is not None
    if healthy == "anthropic":
        assert sent["system"] == "You are terse."
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
        last = sent["messages"][-1]["content"]
        last = last if isinstance(last, str) else last[0]["text"]
    else:
        assert sent["systemInstruction"]["parts"][0]["text"] == "You are terse."
        assert [c["role"] for c in sent["contents"]] == ["user", "model", "user"]
        last = sent["contents"][-1]["parts"][0]["text"]
    assert last == instruction_text(partial)


@pytest.mark.parametrize("fault", ["cut", "stall"])
async def test_a_responses_stream_that_breaks_is_finished_and_completes(
        autojump_clock: MockClock, tmp_path: Path, fault: SimFault) -> None:
    """`/v1/responses` renders the same reply: the broken answer is finished by the
    next model, and the SDK's stream completes with the whole text."""
    db = tmp_path / "ledger.db"
    async with trio.open_nursery() as nursery:
        url = await start(nursery, "openai", fault, db)
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused",
                                      max_retries=0) as sdk, sdk.responses.stream(
                model="economy", instructions=QUESTION[0]["content"],
                input=QUESTION[1]["content"], store=False) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        nursery.cancel_scope.cancel()
    assert final.status == "completed"
    assert kinds[-1] == "response.completed" and "response.failed" not in kinds
    assert final.output_text == expected_text("openai")
    rows = {r["model"]: r for r in ledger(db)}
    assert set(rows) == {"broken", "healthy"}
    assert rows["healthy"]["continuation"] == fault
