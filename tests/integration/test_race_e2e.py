"""The first-token race through the real server, timed from the official SDK's side.

Each test starts the proxy on a loopback port with simulated providers of
known, fixed latency, streams one request with `openai.AsyncOpenAI` and reads
the time to the first content delta on `trio.current_time()`. The proxy, the
sims and the SDK share the test's trio run, so under `MockClock(autojump_threshold=0)`
every time is exact: the race's promise shows as an equality computed from the
scenario. TTFT is max(decision, upstream), not their sum; a hedge rescues a slow
first pick; a first-token deadline hands over to the next model. The latencies
are sums of powers of two (seconds exact in binary), so the virtual times add up
without rounding.
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import trio
from trio.testing import MockClock

from tests.integration.conftest import start_proxy
from tlproxy.config import (
    ClassifierConfig,
    Config,
    LedgerConfig,
    ModelConfig,
    Policy,
    Prices,
    ProviderConfig,
    SimModelProfile,
)
from tlproxy.server import Running
from tlproxy.sim import SimStats

# Equal to a `summarization` example, so the classifier's cosine is 1 whatever
# the embedding scheme, and free of the prompt cues the fast
# `summarize-extract` rule reads: only the slow classifier can say "economy".
SUMMARY = "What are the main takeaways from this document"
# Equal to a `chat` example; used to prime the classifier's example vectors.
CHITCHAT = "Hi, how are you today"

# The classified scenario: the classifier's embedding call is the decision.
DECISION = 0.25
ECONOMY_TTFT = 0.125
PREMIUM_TTFT = 0.5
# The economy pair: a slow cheap model ranked first, a fast dear one behind it.
HEDGE_DELAY = 0.25  # `hedge_initial_ms`: no statistics yet
FIRST_TOKEN_TIMEOUT = 0.25
SLOW_TTFT = 1.0
FAST_TTFT = 0.125


def _ms(seconds: float) -> float:
    return seconds * 1000


def _sim(**models: SimModelProfile) -> ProviderConfig:
    return ProviderConfig(kind="sim", sim_models=dict(models))


def _model(model_id: str, provider: str, tier: str, price: float = 1.0,
           **fields: Any) -> ModelConfig:
    return ModelConfig(id=model_id, provider=provider, tier=tier,  # type: ignore[arg-type]
                       prices=Prices(input=price, output=4 * price), **fields)


def classified_config(*, speculate: bool) -> Config:
    """Economy (ECONOMY_TTFT) and premium (PREMIUM_TTFT) behind a classifier taking DECISION."""
    return Config(
        providers={
            "emb-sim": _sim(emb=SimModelProfile(ttft_ms=_ms(DECISION), embedding_dimensions=256)),
            "econ-sim": _sim(econ=SimModelProfile(ttft_ms=_ms(ECONOMY_TTFT), inter_token_ms=2.0,
                                                  tokens=8)),
            "prem-sim": _sim(prem=SimModelProfile(ttft_ms=_ms(PREMIUM_TTFT), inter_token_ms=2.0,
                                                  tokens=8)),
        },
        models=[
            _model("prem", "prem-sim", "premium", 3.0),
            _model("econ", "econ-sim", "economy", 0.25),
            _model("emb", "emb-sim", "embedding", 0.02),
        ],
        classifier=ClassifierConfig(
            enabled=True, model="emb", min_similarity=0.5, timeout=1.0,
            examples={
                "summarization": [SUMMARY, "Write a short recap of the text below"],
                "extraction": ["Extract every date and amount from this invoice"],
                "chat": [CHITCHAT, "Tell me a joke about cats"],
            }),
        # Both tiers speculated, so the test sees the cross-tier cancellation.
        policy=Policy(speculate=speculate, speculate_tiers=["premium", "economy"]),
        ledger=LedgerConfig(enabled=False),
    )


def economy_pair_config(slow: ModelConfig, fast: ModelConfig, policy: Policy) -> Config:
    """Two economy models, each on a sim of its own; `slow` is the cheaper one."""
    return Config(
        providers={
            "slow-sim": _sim(**{slow.id: SimModelProfile(ttft_ms=_ms(SLOW_TTFT), tokens=8)}),
            "fast-sim": _sim(**{fast.id: SimModelProfile(ttft_ms=_ms(FAST_TTFT), tokens=8)}),
        },
        models=[slow, fast],
        policy=policy,
        ledger=LedgerConfig(enabled=False),
    )


class Timed:
    """One streamed answer as the SDK saw it."""

    def __init__(self, ttft: float | None, headers: Any, models: set[str], text: str) -> None:
        self.ttft = ttft
        self.headers = headers
        self.models = models
        self.text = text


async def stream_timed(client: openai.AsyncOpenAI, model: str, prompt: str) -> Timed:
    """Stream one chat request; time from before the call to the first content delta."""
    start = trio.current_time()
    raw = await client.chat.completions.with_raw_response.create(
        model=model, stream=True, messages=[{"role": "user", "content": prompt}])
    ttft: float | None = None
    models: set[str] = set()
    text = ""
    async with raw.parse() as stream:
        async for chunk in stream:
            models.add(chunk.model)
            if chunk.choices and chunk.choices[0].delta.content:
                if ttft is None:
                    ttft = trio.current_time() - start
                text += chunk.choices[0].delta.content
    return Timed(ttft, raw.headers, models, text)


def sdk(running: Running) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0,
                              http_client=httpx2.AsyncClient())


class Cancellation:
    """When a sim first saw a client leave, on `trio.current_time()`.

    `SimStats.cancelled_event` alone does not prove a cancellation: the sim
    currently also counts a stream read to its end as cancelled (hypercorn
    reports the disconnect once the response is complete). A cancellation
    seen *before the sim's TTFT could have elapsed* can only be the proxy
    dropping the request, so the tests compare the time against it.
    """

    def __init__(self, nursery: trio.Nursery, stats: SimStats) -> None:
        self.at: float | None = None
        self._seen = trio.Event()
        self._stats = stats
        nursery.start_soon(self._watch)

    async def _watch(self) -> None:
        await self._stats.cancelled_event.wait()
        self.at = trio.current_time()
        self._seen.set()

    async def after(self, start: float) -> float:
        with trio.fail_after(10):  # a hang guard, in virtual seconds
            await self._seen.wait()
        assert self.at is not None
        return self.at - start


async def warmed(nursery: trio.Nursery, config: Config) -> tuple[Running, openai.AsyncOpenAI]:
    """The proxy, the SDK having made its first request, and the classifier primed.

    The SDK's first request looks up the platform in a worker thread; while
    a thread runs, the autojumping clock moves on to the next pending timer
    (an idle connection's keep-alive timeout), so that request is made here,
    outside any measurement. The first classification embeds every example
    before the prompt (twice the embedding latency), so it is done once
    beforehand, directly on the server's own classifier: the chat sims see
    nothing before the measured request.
    """
    running = await start_proxy(nursery, config)
    client = sdk(running)
    await client.models.list()
    classifier = running.app.engine.classifier
    if classifier is not None:
        assert await classifier.classify(CHITCHAT) == "chat"
        assert classifier.failures == 0
    return running, client


async def test_speculation_overlaps_the_classifier_with_the_upstream(
    autojump_clock: MockClock, nursery: trio.Nursery,
) -> None:
    running, client = await warmed(nursery, classified_config(speculate=True))
    premium = running.sims["prem-sim"].stats
    cut = Cancellation(nursery, premium)
    async with client:
        start = trio.current_time()
        answer = await stream_timed(client, "auto", SUMMARY)

    # max(decision, economy), not their sum: economy's first token waits for
    # the decision, which says "economy".
    assert ECONOMY_TTFT < DECISION
    assert answer.ttft == DECISION
    assert answer.headers["x-tlproxy-tier"] == "economy"
    assert answer.headers["x-tlproxy-model"] == "econ"
    assert answer.headers["x-tlproxy-rule"] == "semantic-summarize-extract"
    assert answer.headers["x-tlproxy-attempts"] == "2"  # economy, and premium on speculation
    # Every chunk the client saw came from the economy model.
    assert answer.models == {"econ"} and answer.text
    # Premium was called speculatively, then dropped the moment the decision
    # came, long before its first token was due.
    assert premium.streams_started == 1
    assert await cut.after(start) == DECISION < PREMIUM_TTFT
    # The live statistics: economy's TTFT observed; premium's only known to be
    # longer than the time it ran (censored), not dropped.
    stats = running.app.engine.stats
    assert (stats["econ"].samples, stats["econ"].cut) == (1, 0)
    assert stats["econ"].quantile(0.5) == ECONOMY_TTFT
    assert (stats["prem"].samples, stats["prem"].cut) == (0, 1)
    assert stats["prem"].ttft_ewma == DECISION


async def test_without_speculation_ttft_is_the_sum(
    autojump_clock: MockClock, nursery: trio.Nursery,
) -> None:
    running, client = await warmed(nursery, classified_config(speculate=False))
    async with client:
        answer = await stream_timed(client, "auto", SUMMARY)

    # Decide, then call economy.
    assert answer.ttft == DECISION + ECONOMY_TTFT
    assert answer.headers["x-tlproxy-tier"] == "economy"
    assert answer.headers["x-tlproxy-rule"] == "semantic-summarize-extract"
    assert answer.models == {"econ"}
    assert answer.headers["x-tlproxy-attempts"] == "1"
    assert running.sims["prem-sim"].stats.streams_started == 0  # never called


async def test_hedge_rescues_a_slow_first_choice(
    autojump_clock: MockClock, nursery: trio.Nursery,
) -> None:
    # Ranked by cost, the slow model goes first; with no statistics yet its
    # hedge delay is `hedge_initial_ms`.
    config = economy_pair_config(
        _model("slow-cheap", "slow-sim", "economy", 0.05),
        _model("fast-dear", "fast-sim", "economy", 0.30),
        Policy(strategy="cost", hedge_initial_ms=_ms(HEDGE_DELAY)))
    running, client = await warmed(nursery, config)
    slow = running.sims["slow-sim"].stats
    cut = Cancellation(nursery, slow)
    async with client:
        start = trio.current_time()
        answer = await stream_timed(client, "economy", "Tell me about tides")

    # The hedge starts after its delay and answers first; the slow one would take SLOW_TTFT.
    assert answer.ttft == HEDGE_DELAY + FAST_TTFT < SLOW_TTFT
    assert answer.headers["x-tlproxy-model"] == "fast-dear"
    assert answer.headers["x-tlproxy-attempts"] == "2"  # the slow one, then the hedge
    assert answer.models == {"fast-dear"}
    assert slow.streams_started == 1
    assert running.sims["fast-sim"].stats.streams_started == 1
    # The loser was dropped when the hedge won, not finished.
    assert await cut.after(start) == HEDGE_DELAY + FAST_TTFT


async def test_first_token_deadline_falls_back(
    autojump_clock: MockClock, nursery: trio.Nursery,
) -> None:
    config = economy_pair_config(
        _model("stuck", "slow-sim", "economy", 0.05, first_token_timeout=FIRST_TOKEN_TIMEOUT),
        _model("backup", "fast-sim", "economy", 0.30),
        Policy(strategy="cost", hedge_tiers=[]))
    running, client = await warmed(nursery, config)
    stuck = running.sims["slow-sim"].stats
    cut = Cancellation(nursery, stuck)
    async with client:
        start = trio.current_time()
        answer = await stream_timed(client, "economy", "Tell me about tides")

    # No first token within the deadline: it fails `stuck`, and `backup` answers.
    assert answer.ttft == FIRST_TOKEN_TIMEOUT + FAST_TTFT
    assert answer.headers["x-tlproxy-model"] == "backup"
    assert answer.headers["x-tlproxy-attempts"] == "2"  # the stuck one, then the fallback
    assert answer.models == {"backup"}
    assert running.sims["fast-sim"].stats.streams_started == 1
    # `stuck` was dropped at its deadline, before its own first token.
    assert await cut.after(start) == FIRST_TOKEN_TIMEOUT < SLOW_TTFT


async def test_json_answers_do_not_feed_the_ttft_statistics(
    autojump_clock: MockClock, nursery: trio.Nursery,
) -> None:
    """A JSON attempt's first chunk is its whole answer: not a time to first token."""
    running, client = await warmed(nursery, classified_config(speculate=False))
    async with client:
        await client.chat.completions.create(
            model="economy", messages=[{"role": "user", "content": CHITCHAT}])
        await stream_timed(client, "economy", CHITCHAT)
    stats = running.app.engine.stats["econ"]
    assert (stats.samples, stats.cut) == (1, 0)
    assert stats.quantile(0.5) == ECONOMY_TTFT
