"""What the ledger, the report and /metrics say about requests served by the real server.

The sims sleep on the clock the proxy reads (one trio run, one process), so
every latency below has an exact lower bound; no upper bound is asserted.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import start_proxy
from tests.integration.test_ledger_e2e import wait_rows
from tests.integration.test_race_e2e import (
    CHITCHAT,
    SUMMARY,
    _model,
    _sim,
    classified_config,
    sdk,
    stream_timed,
)
from tlproxy.config import Config, LedgerConfig, Policy, ProviderConfig, SimModelProfile
from tlproxy.metrics import TOKEN_KINDS
from tlproxy.report import usage_json


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def metric_samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    async with httpx.AsyncClient(base_url=url) as http:
        text = (await http.get("/metrics")).text
    return [(sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]


async def test_client_ttft_classifier_calls_and_json_durations_are_recorded(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.db"
    # Decide first (the classifier: two embedding calls of 120 ms on the first
    # request, examples then prompt), then call economy (TTFT 100 ms).
    config = msgspec.structs.replace(
        classified_config(speculate=False),
        ledger=LedgerConfig(path=str(db), flush_interval=0.05))
    running = await start_proxy(nursery, config)
    async with sdk(running) as client:
        streamed = await stream_timed(client, "auto", SUMMARY)
        answered = await client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": CHITCHAT}])
    stream_id = streamed.headers["x-request-id"]
    json_id = answered.headers["x-request-id"]
    rows = await wait_rows(db, 5)  # two winners and three classifier calls
    winners = {r["request_id"]: r for r in rows if r["winner"]}
    assert set(winners) == {stream_id, json_id}

    stream_row = winners[stream_id]
    assert streamed.ttft is not None and stream_row["ttft_ms"] is not None
    assert stream_row["ttft_ms"] >= 100  # the economy attempt's own
    # What the client saw: the decision (240 ms) and the attempt; and no more
    # than the SDK measured from before it sent the request.
    assert stream_row["client_ttft_ms"] - stream_row["ttft_ms"] >= 240
    assert stream_row["client_ttft_ms"] <= streamed.ttft * 1000
    # A JSON answer has no first token: its time is a duration.
    json_row = winners[json_id]
    assert (json_row["ttft_ms"], json_row["client_ttft_ms"]) == (None, None)
    assert json_row["duration_ms"] >= 100

    classifier = [r for r in rows if r["kind"] == "classifier"]
    assert [r["request_id"] for r in classifier] == [stream_id, stream_id, json_id]
    for row in classifier:
        assert (row["tier"], row["model"], row["rule"], row["status"]) == (
            "embedding", "emb", "classifier", "ok")
        assert row["cost_usd"] > 0 and not row["winner"] and not row["estimated"]
        assert row["duration_ms"] >= 120

    total = usage_json(str(db), by="all")["total"]
    assert total["requests"] == 2 and total["attempts"] == len(rows)
    # The report rounds dollars to 6 decimals.
    assert total["classifier_usd"] == round(sum(r["cost_usd"] for r in classifier), 6) > 0
    assert total["client_ttft_p50_ms"] == round(stream_row["client_ttft_ms"], 1)
    assert total["upstream_ttft_p50_ms"] == round(stream_row["ttft_ms"], 1)

    # /metrics counts the same spend and tokens as the ledger, row for row.
    cost = await metric_samples(running.url, "tlproxy_cost_usd_total")
    for kind in ("chat", "classifier"):
        spent = sum(value for labels, value in cost if labels["kind"] == kind)
        ledger = sum(r["cost_usd"] for r in rows if r["kind"] == kind)
        assert abs(spent - ledger) < 1e-12, kind
    tokens = await metric_samples(running.url, "tlproxy_tokens_total")
    for kind in TOKEN_KINDS:
        counted = sum(value for labels, value in tokens if labels["kind"] == kind)
        assert counted == sum(r[f"{kind}_tokens"] for r in rows), kind
    assert {labels["outcome"] for labels, _ in cost} == {"used"}


async def test_attempts_refused_by_the_upstream_cost_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.db"
    # Ranked by cost: a provider nobody listens on, then one that answers
    # every request with 429, 500 or 503, then one that works.
    config = Config(
        providers={
            "gone": ProviderConfig(kind="openai", base_url=f"http://127.0.0.1:{closed_port()}/v1",
                                   api_key="unused"),
            "failing": _sim(failing=SimModelProfile(error_rate=1.0)),
            "working": _sim(working=SimModelProfile(tokens=8)),
        },
        models=[_model("unreachable", "gone", "economy", 0.01),
                _model("failing", "failing", "economy", 0.02),
                _model("working", "working", "economy", 0.30)],
        policy=Policy(strategy="cost", hedge_tiers=[]),
        ledger=LedgerConfig(path=str(db), flush_interval=0.05))
    running = await start_proxy(nursery, config)
    async with sdk(running) as client:
        for stream in (True, False):
            raw = await client.chat.completions.with_raw_response.create(
                model="economy", stream=stream,
                messages=[{"role": "user", "content": "Hello there"}])
            assert raw.headers["x-tlproxy-model"] == "working"
            if stream:
                async for _ in raw.parse():
                    pass
    rows = await wait_rows(db, 6)
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(str(row["model"]), []).append(row)
    assert len(by_model["unreachable"]) == len(by_model["failing"]) == 2
    for row in by_model["unreachable"] + by_model["failing"]:
        assert (row["status"], row["cost_usd"], row["prompt_tokens"]) == ("error", 0.0, 0)
        assert not row["estimated"] and not row["wasted"] and not row["winner"]
    for row in by_model["working"]:
        assert row["winner"] and row["cost_usd"] > 0
    assert usage_json(str(db), by="all")["total"]["wasted_usd"] == 0.0
