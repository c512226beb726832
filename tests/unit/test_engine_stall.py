"""The engine's stall deadline: configured per model, or derived from live gaps.

Scripted upstreams under trio's MockClock (the harness of `test_engine`);
every time asserted is exact virtual time.
"""

from __future__ import annotations

import trio
import trio.testing

from tests.unit.test_engine import (
    MODELS,
    QUESTION,
    Client,
    FakeUpstream,
    Harness,
    Step,
    answer_stream,
    chunk,
    events,
)
from tlproxy.config import ModelConfig
from tlproxy.stats import STALL_FLOOR


def stalls_after(words: int) -> list[Step]:
    """A first word at 0.25 s, then a word every 0.125 s, then silence for an hour."""
    steps: list[Step] = [0.25, chunk(role="assistant", content="")]
    for n in range(words):
        steps += [0.125 if n else 0.0, chunk(f" w{n}")]
    return [*steps, 3600.0, chunk(finish="stop")]


async def test_a_configured_stall_timeout_ends_a_silent_stream_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    models = [ModelConfig(id="p1", provider="fake", tier="premium", stall_timeout=3.0)]
    upstream = FakeUpstream({"p1": stalls_after(5)})
    harness = Harness(upstream, models=models)
    client = Client()
    await harness.chat(client, model="p1", messages=QUESTION, stream=True)
    sent = events(client.body)
    assert sent[-1]["error"]["code"] == "stall_timeout"
    assert "[DONE]" not in sent
    # The fifth word at 0.25 + 4 x 0.125 = 0.75 s; silence for 3 s after it.
    assert client.body_times()[-1] == 3.75
    assert upstream.log[-1] == (3.75, "p1", "ended")


async def test_the_stall_deadline_comes_from_live_gaps_once_measured(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream({})
    harness = Harness(upstream, models=MODELS)
    # Twenty whole streams, a word every 0.5 s: the deadline drops to the floor.
    for _ in range(20):
        upstream.scripts["p1"] = [
            0.25, chunk(role="assistant", content=""), chunk("a"), 0.5, chunk(" b"),
            *answer_stream()[1:]]
        await harness.chat(Client(), model="p1", messages=QUESTION, stream=True)
    assert harness.engine.stats["p1"].stall_deadline("answer") == STALL_FLOOR
    upstream.scripts["p1"] = stalls_after(5)
    client = Client()
    started = trio.current_time()
    await harness.chat(client, model="p1", messages=QUESTION, stream=True)
    assert events(client.body)[-1]["error"]["code"] == "stall_timeout"
    assert client.body_times()[-1] - started == 0.75 + STALL_FLOOR
