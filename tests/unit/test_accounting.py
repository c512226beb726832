"""Attempts to ledger rows: what is billed, what the client saw, how the request ended.

Times are virtual (trio's `MockClock`), so every duration below is exact.
"""

from __future__ import annotations

import math
from typing import Any

import httpcore2
import httpx
import pytest
import trio

from tests.unit.test_ledger import MemoryWriter, running
from tlproxy.accounting import Accounting, ShadowAnswer, ShadowPlan, Tab, refused_upstream
from tlproxy.catalog import default_config
from tlproxy.config import ModelConfig
from tlproxy.errors import UpstreamError
from tlproxy.ledger import Ledger, LedgerRow
from tlproxy.metrics import Metrics
from tlproxy.pricing import cost_usd, estimate_usage, usage_from_openai
from tlproxy.providers.openai import map_openai_error
from tlproxy.providers.transport import transport_error
from tlproxy.race import AttemptRecord, Candidate
from tlproxy.shadow import Shadow, ShadowPair

CONFIG = default_config()
BODY: dict[str, Any] = {"model": "economy",
                        "messages": [{"role": "user", "content": "Hello there"}]}
USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def model(model_id: str) -> ModelConfig:
    found = CONFIG.model(model_id)
    assert found is not None
    return found


def http_error(status: int) -> UpstreamError:
    """The error the OpenAI adapter raises for an HTTP error status."""
    return map_openai_error(status, b'{"error": {"message": "no"}}', httpx.Headers())


def attempt(key: str, outcome: str, *, started: float = 0.25, ended: float = 1.0,
            first: float | None = None, error: Exception | None = None, chunks: int = 0,
            usage: dict[str, Any] | None = None, tier: str = "economy") -> AttemptRecord:
    return AttemptRecord(
        candidate=Candidate(key=key, tier=tier, hedge_delay=math.inf), started_at=started,
        ended_at=ended, first_token_at=first, outcome=outcome, hedge=False, fallback=False,
        error=error, chunks=chunks, usage=usage)


def new_tab() -> Tab:
    """The account of a request arriving now."""
    return Tab("req_test", None, trio.current_time())


def estimated_cost(model_id: str, chunks: int) -> float:
    return cost_usd(model(model_id), estimate_usage(BODY, output_chars=4 * max(chunks - 1, 0)))


# -- what the upstream bills -------------------------------------------------

@pytest.mark.parametrize(("error", "chunks", "refused"), [
    (http_error(429), 0, True),
    (http_error(500), 0, True),
    (http_error(503), 0, True),
    (http_error(400), 0, True),
    (transport_error(httpcore2.ConnectError("connection refused")), 0, True),
    (transport_error(httpcore2.ConnectTimeout("no SYN-ACK")), 0, True),
    (transport_error(httpcore2.PoolTimeout("no free connection")), 0, True),
    # Sent, then the answer never came or broke: the upstream may be generating.
    (transport_error(httpcore2.ReadTimeout("slow")), 0, False),
    (transport_error(httpcore2.RemoteProtocolError("cut")), 0, False),
    (UpstreamError("an error event in a 200 stream"), 0, False),
    (UpstreamError("the stream broke", status=502), 3, False),
    (RuntimeError("a bug"), 0, False),
    (None, 0, False),
], ids=["429", "500", "503", "400", "refused", "connect-timeout", "pool-timeout",
        "read-timeout", "protocol-error", "error-event", "after-chunks", "not-upstream",
        "no-error"])
def test_refused_upstream(error: Exception | None, chunks: int, refused: bool) -> None:
    assert refused_upstream(error, chunks) is refused


async def accounted(records: list[AttemptRecord], *, stream: bool = True,
                    before_finish: Any = None, client_ttft: float | None = None,
                    client_gone: bool = False) -> tuple[list[LedgerRow], Tab, Metrics]:
    """Account `records` for one request, finish it with what its client saw, and
    return the rows written."""
    writer = MemoryWriter()
    ledger = Ledger(writer)
    metrics = Metrics()
    accounting = Accounting(CONFIG, ledger, None, metrics=metrics)
    tab = new_tab()
    for record in records:
        accounting.attempt(record, tab, BODY, "economy", "default", stream=stream)
    if before_finish is not None:
        before_finish(ledger)
    accounting.finish(tab, client_ttft=client_ttft, client_gone=client_gone)
    await ledger.aclose()
    return writer.rows, tab, metrics


async def test_refused_attempts_cost_nothing_and_cut_ones_keep_their_estimate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rows, tab, metrics = await accounted([
        attempt("gpt-5-nano", "failed", error=http_error(429)),
        attempt("gpt-5-mini", "failed", error=transport_error(httpcore2.ConnectError("refused"))),
        attempt("gemini-2.5-flash", "lost", chunks=3),  # a hedge cancelled mid-way
        attempt("claude-haiku-4-5", "deadline", error=UpstreamError("no first token")),
        attempt("gpt-5-nano", "won", first=0.375, chunks=6, usage=USAGE),
    ])
    by_model = {(r.model, r.winner): r for r in rows}
    for refused in (by_model["gpt-5-nano", False], by_model["gpt-5-mini", False]):
        assert (refused.status, refused.cost_usd, refused.prompt_tokens) == ("error", 0.0, 0)
        assert not refused.estimated and not refused.wasted
    hedge = by_model["gemini-2.5-flash", False]
    assert (hedge.status, hedge.estimated, hedge.wasted) == ("cancelled", True, True)
    assert hedge.cost_usd == estimated_cost("gemini-2.5-flash", 3)
    late = by_model["claude-haiku-4-5", False]
    assert (late.status, late.estimated, late.wasted) == ("error", True, True)
    assert late.cost_usd == estimated_cost("claude-haiku-4-5", 0)
    winner = by_model["gpt-5-nano", True]
    usage = usage_from_openai(USAGE)
    assert usage is not None
    assert winner.cost_usd == cost_usd(model("gpt-5-nano"), usage)
    assert tab.cost_usd == pytest.approx(winner.cost_usd + hedge.cost_usd + late.cost_usd)
    # The metrics count the same spend, the billed losers as wasted.
    registry = metrics.registry
    assert registry.get_sample_value("tlproxy_cost_usd_total", {
        "tier": "economy", "model": "gemini-2.5-flash", "kind": "chat",
        "outcome": "wasted"}) == hedge.cost_usd
    assert registry.get_sample_value("tlproxy_tokens_total", {
        "tier": "economy", "model": "gpt-5-nano", "kind": "completion",
        "outcome": "used"}) == 5
    assert registry.get_sample_value("tlproxy_cost_usd_total", {
        "tier": "economy", "model": "gpt-5-mini", "kind": "chat", "outcome": "used"}) == 0.0


# -- what the client saw -------------------------------------------------------

async def test_the_winner_waits_for_the_request_and_carries_the_client_ttft(
    autojump_clock: trio.testing.MockClock,
) -> None:
    queued: list[int] = []

    def answered(ledger: Ledger) -> None:
        queued.append(ledger.statistics().queued)

    rows, _, _ = await accounted([
        attempt("gemini-2.5-flash", "lost", chunks=1),
        attempt("gpt-5-nano", "won", started=0.25, first=0.375, ended=2.0, chunks=9,
                usage=USAGE),
    ], before_finish=answered, client_ttft=0.5)  # from its arrival to the first byte sent
    assert queued == [1]  # only the loser: the winner waited for the end of the request
    (winner,) = [r for r in rows if r.winner]
    # The winner's own TTFT (125 ms) and what the client saw (500 ms): the
    # decision and the race are the difference.
    assert (winner.ttft_ms, winner.client_ttft_ms, winner.duration_ms) == (125.0, 500.0, 1750.0)
    assert winner.status == "ok"


async def test_a_json_answer_has_a_duration_and_no_ttft(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rows, _, _ = await accounted([
        attempt("gpt-5-nano", "won", started=0.25, first=1.0, ended=1.0, chunks=1,
                usage=USAGE),
        attempt("gpt-5-mini", "lost", started=0.25, ended=1.0),
    ], stream=False)
    for row in rows:
        assert (row.ttft_ms, row.client_ttft_ms, row.duration_ms) == (None, None, 750.0)


@pytest.mark.parametrize(("error", "status"), [
    (None, "cancelled"),
    # Cut by the upstream first: that is what the client got, whatever it did next.
    (UpstreamError("the stream broke"), "cut"),
])
async def test_a_client_that_left_makes_the_winner_cancelled(
    autojump_clock: trio.testing.MockClock, error: Exception | None, status: str,
) -> None:
    rows, _, _ = await accounted([
        attempt("gpt-5-nano", "won", first=0.375, chunks=4, error=error),
    ], client_ttft=0.5, client_gone=True)
    (winner,) = rows
    assert (winner.status, winner.winner, winner.client_ttft_ms) == (status, True, 500.0)


# -- the classifier's calls -------------------------------------------------------

@pytest.mark.parametrize(("answer", "error", "status", "estimated"), [
    ({"usage": {"prompt_tokens": 40, "total_tokens": 40}}, None, "ok", False),
    (None, http_error(503), "error", None),
    (None, transport_error(httpcore2.ReadTimeout("slow")), "error", True),
    (None, None, "cancelled", True),
], ids=["answered", "refused", "read-timeout", "cancelled"])
async def test_classifier_calls_are_rows_of_their_request(
    autojump_clock: trio.testing.MockClock, answer: dict[str, Any] | None,
    error: Exception | None, status: str, estimated: bool | None,
) -> None:
    writer = MemoryWriter()
    ledger = Ledger(writer)
    metrics = Metrics()
    accounting = Accounting(CONFIG, ledger, None, metrics=metrics)
    tab = new_tab()
    embedder = model("text-embedding-3-small")
    body = {"model": "text-embedding-3-small", "input": ["Summarize this memo, please"]}
    started = trio.current_time()
    await trio.sleep(0.125)
    accounting.classifier_call(tab, body, embedder, started, answer=answer, error=error)
    await ledger.aclose()
    (row,) = writer.rows
    assert (row.request_id, row.kind, row.tier, row.model) == (
        tab.id, "classifier", "embedding", "text-embedding-3-small")
    assert (row.status, row.winner, row.wasted, row.reference_cost_usd) == (
        status, False, False, 0.0)
    assert row.duration_ms == 125.0
    if estimated is None:  # refused: nothing billed
        assert (row.cost_usd, row.prompt_tokens, row.estimated) == (0.0, 0, False)
    else:
        expected = (usage_from_openai(answer["usage"]) if answer is not None
                    else estimate_usage(body, output_chars=0, kind="embedding"))
        assert expected is not None
        assert row.estimated is estimated
        assert row.prompt_tokens == expected.prompt_tokens
        assert row.cost_usd == cost_usd(embedder, expected) > 0
    assert tab.cost_usd == row.cost_usd
    assert metrics.registry.get_sample_value("tlproxy_cost_usd_total", {
        "tier": "embedding", "model": "text-embedding-3-small", "kind": "classifier",
        "outcome": "used"}) == row.cost_usd


# -- shadow latencies --------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
async def test_both_shadow_sides_are_timed_from_their_own_start(
    autojump_clock: trio.testing.MockClock, stream: bool,
) -> None:
    pairs: list[ShadowPair] = []
    shadow = Shadow(max_concurrency=2, record=pairs.append)
    writer = MemoryWriter()
    ledger = Ledger(writer)
    accounting = Accounting(CONFIG, ledger, shadow)
    async with running(shadow):
        tab = new_tab()  # arrives now
        await trio.sleep(0.375)
        # The first byte sent.
        client_ttft = trio.current_time() - tab.arrived if stream else None
        await trio.sleep(0.125)  # the rest of the answer
        tab.cost_usd = 0.001
        plan = ShadowPlan("economy")
        plan.parts.append("Paris.")

        async def call(target: str) -> ShadowAnswer:
            assert target == "economy"
            sent = trio.current_time()
            await trio.sleep(0.25)
            first = trio.current_time() - sent if stream else None
            await trio.sleep(0.5)
            return ShadowAnswer(model("gpt-5-nano"), "Paris!", USAGE, first,
                                trio.current_time() - sent)

        accounting.submit_shadow(plan, tab, "first-turn", model("claude-sonnet-4-6"),
                                 call, "Hello there", client_ttft=client_ttft)
        await trio.sleep(1.0)
    await ledger.aclose()
    (pair,) = pairs
    # The primary from the request's arrival (what its client saw), the shadow
    # from its copy being sent; a JSON answer has no first token on either side.
    assert (pair.primary.ttft_ms, pair.primary.duration_ms) == (375.0 if stream else None,
                                                                500.0)
    assert (pair.shadow.ttft_ms, pair.shadow.duration_ms) == (250.0 if stream else None,
                                                              750.0)
    assert (pair.primary.text, pair.shadow.text) == ("Paris.", "Paris!")
    (row,) = writer.rows
    assert (row.kind, row.ttft_ms, row.duration_ms) == ("shadow", pair.shadow.ttft_ms, 750.0)
