"""A non-streamed answer is bounded by its total timeout, not by a first-token deadline.

A JSON answer arrives whole: its first byte is its last, so a first-token
deadline (a bound for streams) would cut every answer longer than it. A
scripted upstream takes exact (MockClock) seconds over its JSON answers
behind the real proxy, and the official SDK asks, pinned and routed.
"""

from __future__ import annotations

from typing import Any

import httpx2
import msgspec
import openai
import pytest
import trio
from trio.testing import MockClock

from tests.integration.conftest import start_proxy
from tests.integration.scripted_upstream import ScriptedUpstream, completion, start_upstream
from tlproxy.config import Config, ModelConfig

ASK = [{"role": "user", "content": "Take your time."}]
SLOW = 2.0  # seconds the slow model takes over its answer
QUICK = 0.5


def upstream() -> ScriptedUpstream:
    return ScriptedUpstream({
        "slow": [("sleep", SLOW), ("answer", completion("slow", "Slowly."))],
        "quick": [("sleep", QUICK), ("answer", completion("quick", "Quickly."))],
    })


async def proxy_url(nursery: trio.Nursery, scripted: ScriptedUpstream, *, model_total: float |
                    None, provider_total: float | None = None) -> str:
    provider = await start_upstream(nursery, scripted)
    if provider_total is not None:
        provider = msgspec.structs.replace(provider, total_timeout=provider_total)
    config = Config(
        providers={"scripted": provider},
        models=[
            # A first-token deadline far below the answer's time: streams only.
            ModelConfig(id="slow", provider="scripted", tier="premium",
                        first_token_timeout=0.25, total_timeout=model_total),
            ModelConfig(id="quick", provider="scripted", tier="premium"),
        ],
    )
    return (await start_proxy(nursery, config)).url


async def ask(url: str, model: str) -> tuple[float, Any]:
    """One JSON request with the SDK: how long it took, and the raw response."""
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                  http_client=httpx2.AsyncClient()) as client:
        start = trio.current_time()
        raw = await client.chat.completions.with_raw_response.create(model=model, messages=ASK)
        return trio.current_time() - start, raw


@pytest.mark.parametrize("model", ["slow", "premium"], ids=["pinned", "routed"])
async def test_an_answer_slower_than_the_first_token_timeout_but_within_the_total_succeeds(
    autojump_clock: MockClock, nursery: trio.Nursery, model: str,
) -> None:
    scripted = upstream()
    url = await proxy_url(nursery, scripted, model_total=SLOW + 1.0)
    took, raw = await ask(url, model)
    assert took == SLOW
    assert raw.parse().choices[0].message.content == "Slowly."
    assert raw.headers["x-tlproxy-model"] == "slow"
    # Not hedged either: a JSON answer's duration is its length, not a slow upstream.
    assert [called for _, called, _ in scripted.calls] == ["slow"]


@pytest.mark.parametrize("where", ["model", "provider"])
async def test_an_answer_beyond_the_total_timeout_is_a_504_in_openais_envelope(
    autojump_clock: MockClock, nursery: trio.Nursery, where: str,
) -> None:
    total = SLOW / 2
    url = await proxy_url(nursery, upstream(), model_total=total if where == "model" else None,
                          provider_total=total if where == "provider" else None)
    start = trio.current_time()
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(url, "slow")
    assert trio.current_time() - start == total
    assert caught.value.status_code == 504
    assert caught.value.response.json() == {"error": {
        "message": f"slow did not complete its answer within {total:g} s.",
        "type": "upstream_error", "param": None, "code": "total_timeout"}}


async def test_a_routed_answer_beyond_the_total_timeout_falls_back(
    autojump_clock: MockClock, nursery: trio.Nursery,
) -> None:
    scripted = upstream()
    total = SLOW / 2
    url = await proxy_url(nursery, scripted, model_total=total)
    took, raw = await ask(url, "premium")
    assert took == total + QUICK
    assert raw.parse().choices[0].message.content == "Quickly."
    assert raw.headers["x-tlproxy-model"] == "quick"
    assert [(at - scripted.calls[0][0], called) for at, called, _ in scripted.calls] == [
        (0.0, "slow"), (total, "quick")]


@pytest.mark.parametrize("failure", [
    ("status", (500, {"error": {"message": "The server had an error", "type": "server_error"}})),
    ("raw", b'{"id": "chatcmpl-scripted", "object": "chat.comp'),  # cut mid-body
], ids=["server-error", "cut-json"])
async def test_a_failed_json_attempt_is_answered_by_the_next_model(
    autojump_clock: MockClock, nursery: trio.Nursery, failure: tuple[str, Any],
) -> None:
    """Nothing reached the client yet: the next candidate answers the whole request."""
    scripted = ScriptedUpstream({
        "slow": [("sleep", QUICK), failure],
        "quick": [("sleep", QUICK), ("answer", completion("quick", "Quickly."))],
    })
    url = await proxy_url(nursery, scripted, model_total=SLOW)
    took, raw = await ask(url, "premium")
    assert took == QUICK + QUICK
    assert raw.parse().choices[0].message.content == "Quickly."
    assert raw.headers["x-tlproxy-model"] == "quick"


async def test_each_json_retry_is_bounded_by_its_own_total_timeout(
    autojump_clock: MockClock, nursery: trio.Nursery,
) -> None:
    scripted = ScriptedUpstream({
        "slow": [("sleep", QUICK), ("status", (503, {"error": {"message": "busy"}}))],
        "quick": [("sleep", 3600.0), ("answer", completion("quick", "Never."))],
    })
    provider = await start_upstream(nursery, scripted)
    config = Config(providers={"scripted": provider}, models=[
        ModelConfig(id="slow", provider="scripted", tier="premium"),
        ModelConfig(id="quick", provider="scripted", tier="premium", total_timeout=SLOW)])
    url = (await start_proxy(nursery, config)).url
    start = trio.current_time()
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(url, "premium")
    # The retry gave up at its own bound; the client hears of the first failure.
    assert trio.current_time() - start == QUICK + SLOW
    assert caught.value.status_code == 503
    assert [called for _, called, _ in scripted.calls] == ["slow", "quick"]
