"""Anthropic's automatic prompt caching, asked for and priced, through the real proxy.

The Anthropic-speaking simulator bills a cached prompt as Anthropic does (an
earlier prompt this one starts with is read from the cache, the rest is
written), so a two-turn conversation shows both: turn one writes, turn two
reads turn one's prompt and writes the rest. The ledger must price writes at
`cache_write_input` and reads at `cached_input`; the client must see OpenAI's
usage only.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from tests.integration.conftest import start_proxy
from tests.integration.test_ledger_e2e import wait_rows
from tlproxy.config import Config, LedgerConfig, ModelConfig, Prices, ProviderConfig
from tlproxy.pricing import CACHE_WRITE_TOKENS
from tlproxy.server import serve_sim
from tlproxy.sim import SimUpstream

SONNET = Prices(input=3.0, cached_input=0.30, cache_write_input=3.75, output=15.0)
SYSTEM = {"role": "system", "content": "You answer questions about the proxy. " * 40}


async def start(nursery: trio.Nursery, tmp_path: Path, *, prompt_cache: bool
                ) -> tuple[openai.AsyncOpenAI, SimUpstream, Path]:
    sim = SimUpstream(api_key="sk-ant")
    address = (await nursery.start(functools.partial(serve_sim, sim)))[0]
    ledger = tmp_path / "ledger.db"
    proxy = await start_proxy(nursery, Config(
        providers={"anthropic": ProviderConfig(kind="anthropic", base_url=address,
                                               api_key="sk-ant", prompt_cache=prompt_cache)},
        models=[ModelConfig(id="claude-sonnet-4-6", provider="anthropic", tier="premium",
                            prices=SONNET)],
        ledger=LedgerConfig(path=str(ledger), flush_interval=0.05),
    ))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
    return client, sim, ledger


def cost(row: dict[str, Any]) -> float:
    prompt, cached, written = row["prompt_tokens"], row["cached_tokens"], row["cache_write_tokens"]
    return ((prompt - cached - written) * SONNET.input + cached * 0.30 + written * 3.75
            + row["completion_tokens"] * SONNET.output) / 1e6


async def test_a_conversation_writes_then_reads_the_cache_and_is_priced_so(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    client, sim, ledger = await start(nursery, tmp_path, prompt_cache=True)
    first = [SYSTEM, {"role": "user", "content": "What does the proxy do?"}]
    async with client:
        one = await client.chat.completions.create(model="claude-sonnet-4-6", messages=first)
        assert sim.stats.last_body is not None
        assert sim.stats.last_body["cache_control"] == {"type": "ephemeral"}
        second = [*first, {"role": "assistant", "content": one.choices[0].message.content},
                  {"role": "user", "content": "And how fast is it?"}]
        stream = await client.chat.completions.create(
            model="claude-sonnet-4-6", messages=second, stream=True,
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]

    assert one.usage is not None and one.usage.prompt_tokens_details is not None
    assert one.usage.prompt_tokens_details.cached_tokens == 0
    two = chunks[-1].usage
    assert two is not None and two.prompt_tokens_details is not None
    # Turn two starts with turn one's whole prompt: that much is read.
    assert two.prompt_tokens_details.cached_tokens == one.usage.prompt_tokens
    # The count of written tokens is for the pricing, never for the client.
    for usage in (one.usage, two):
        assert CACHE_WRITE_TOKENS not in json.dumps(usage.model_dump())
        assert not usage.model_extra

    rows = await wait_rows(ledger, 2)
    assert [(r["cached_tokens"], r["cache_write_tokens"]) for r in rows] == [
        (0, one.usage.prompt_tokens),
        (one.usage.prompt_tokens, two.prompt_tokens - one.usage.prompt_tokens)]
    for row in rows:
        assert row["cost_usd"] == pytest.approx(cost(row))


async def test_off_by_default_nothing_is_cached(nursery: trio.Nursery, tmp_path: Path) -> None:
    client, sim, ledger = await start(nursery, tmp_path, prompt_cache=False)
    messages = [SYSTEM, {"role": "user", "content": "What does the proxy do?"}]
    async with client:
        for _ in range(2):
            answer = await client.chat.completions.create(
                model="claude-sonnet-4-6", messages=messages)
    assert sim.stats.last_body is not None and "cache_control" not in sim.stats.last_body
    assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 0
    rows = await wait_rows(ledger, 2)
    assert all(r["cache_write_tokens"] == 0 and r["cached_tokens"] == 0 for r in rows)
    assert rows[0]["cost_usd"] == pytest.approx(
        (answer.usage.prompt_tokens * 3.0 + rows[0]["completion_tokens"] * 15.0) / 1e6)
