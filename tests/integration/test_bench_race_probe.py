"""The race benchmark's probe on the real server: it times decisions without changing them.

`Probe.install` wraps the classifier's ``classify`` in place; the wrapper must
take whatever the engine passes (the per-request ``embed``), or every decision
of a benchmarked server fails inside the wrapper instead of being timed.
"""

from __future__ import annotations

import httpx

from bench.race.probe import Probe
from bench.race.runner import proxy_server
from bench.race.scenario import ECONOMY_PROMPTS, Latency, build_config
from tlproxy.config import Policy

# Sims this fast keep the test short; the probe does not depend on the numbers.
_FAST = Latency(ttft_ms=5.0, ttft_p99_ms=10.0, inter_token_ms=1.0, tokens=3,
                decision_ms=5.0, decision_p99_ms=10.0)


async def test_probe_times_each_decision_and_the_request_is_answered() -> None:
    config = build_config(Policy(), _FAST, seed=1)
    prompt = ECONOMY_PROMPTS["summarization"][0]
    async with proxy_server(config) as running:
        probe = Probe(running.app.config)
        probe.install(running)
        probe.on = True
        async with httpx.AsyncClient(base_url=running.url) as client:
            response = await client.post("/v1/chat/completions", json={
                "model": "auto", "messages": [{"role": "user", "content": prompt}]})
    assert response.status_code == 200, response.text
    assert response.headers["x-tlproxy-rule"] == "semantic-summarize-extract"
    assert len(probe.decisions) == 1
    assert probe.decisions[0] >= 0
