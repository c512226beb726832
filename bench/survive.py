"""Streams that break after their first token: what the client sees (``python -m bench.survive``).

One simulated upstream (OpenAI's protocol) serves a model per fault whose
every stream fails after 5 of its 20 tokens: ``cut`` (the connection drops),
``malformed`` (a line that is not JSON, then the drop) and ``stall`` (15 s of
silence, then the drop), and a ``steady`` model that answers whole. The
official ``openai`` SDK asks for a streamed answer, the same request:

* **direct**: from the upstream itself, naming the faulty model;
* **proxy**: through tlproxy, whose economy tier ranks the faulty model first
  (it is cheaper) and ``steady`` next, with the catalog's defaults (no
  ``stall_timeout``: the stall deadline is derived from live statistics).

Before the proxy's runs, ``--warmup`` short answers (``max_tokens`` 5, so they
end before the fault) give the faulty models their gap statistics, as traffic
would; the stall deadline then comes from them (2 s, the floor, on this
upstream). Each answer is classified as the client saw it:

* ``recovered``: a finish reason and all the text (the answer is whole);
* ``honest error``: the SDK raised (an error event, a malformed stream);
* ``silent cut``: the stream ended without a finish reason or an error, so a
  client that does not check sees half an answer as if it were whole;
* ``hang``: no end within ``--client-timeout`` seconds.

with the seconds from the request to the end of the answer (median of the
runs). Last, what holding a tool call until it is whole costs: the client's
time to the first tool-call chunk through the proxy, held (continuation on)
and passed as it comes (``x-tlproxy-continuation: off``), alternating.
Everything runs in this process, on loopback, in real time.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections import Counter
from typing import Any

import httpx2
import openai
import trio
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

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
from tlproxy.server import serve, serve_sim
from tlproxy.sim import SimUpstream

__all__ = ["FAULTS", "classify", "main"]

FAULTS: tuple[SimFault, ...] = ("cut", "malformed", "stall")
TOKENS = 20
FAULT_AFTER = 5
STALL_MS = 15_000.0
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "How does the proxy keep a stream alive?"}]


def profiles(inter_token_ms: float) -> dict[str, SimModelProfile]:
    out = {"steady": SimModelProfile(ttft_ms=100.0, inter_token_ms=inter_token_ms,
                                     tokens=TOKENS)}
    for fault in FAULTS:
        out[f"flaky-{fault}"] = SimModelProfile(
            ttft_ms=100.0, inter_token_ms=inter_token_ms, tokens=TOKENS, fault=fault,
            fault_after=FAULT_AFTER, fault_stall_ms=STALL_MS)
    return out


def proxy_config(upstream: str, fault: SimFault) -> Config:
    """The economy tier: the faulty model first (cheaper), ``steady`` next."""
    return Config(
        providers={"upstream": ProviderConfig(kind="openai", base_url=upstream,
                                              api_key="bench")},
        models=[
            ModelConfig(id=f"flaky-{fault}", provider="upstream", tier="economy",
                        prices=Prices(input=0.1, output=0.4)),
            ModelConfig(id="steady", provider="upstream", tier="economy",
                        prices=Prices(input=1.0, output=4.0)),
            ModelConfig(id="steady-premium", provider="upstream", upstream_model="steady",
                        tier="premium", prices=Prices(input=3.0, output=15.0)),
        ],
        policy=Policy(strategy="cost", hedge_tiers=[]),
        ledger=LedgerConfig(enabled=False),
    )


def tools_config(upstream: str) -> Config:
    """Two healthy economy models, for what holding a tool call until it is whole costs."""
    return Config(
        providers={"upstream": ProviderConfig(kind="openai", base_url=upstream,
                                              api_key="bench")},
        models=[ModelConfig(id=m, provider="upstream", tier="economy", upstream_model="steady")
                for m in ("steady-a", "steady-b")]
        + [ModelConfig(id="steady-premium", provider="upstream", upstream_model="steady",
                       tier="premium")],
        policy=Policy(hedge_tiers=[]), ledger=LedgerConfig(enabled=False))


WEATHER: list[ChatCompletionToolParam] = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]


async def tool_ttft(base_url: str, *, hold: bool) -> float:
    """Seconds to the first chunk with a tool call, streamed through the proxy; the
    call is held until whole with continuation on, passed as it comes with it off."""
    headers = {} if hold else {"x-tlproxy-continuation": "off"}
    async with openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0,
                                  http_client=httpx2.AsyncClient(timeout=None)) as sdk:
        started = time.monotonic()
        stream = await sdk.chat.completions.create(
            model="economy", messages=QUESTION, stream=True, tools=WEATHER,
            extra_headers=headers)
        first = None
        async for chunk in stream:
            if first is None and any(c.delta.tool_calls for c in chunk.choices):
                first = time.monotonic() - started
    assert first is not None
    return first


def classify(finished: bool, error: BaseException | None, timed_out: bool) -> str:
    """How an answer ended, as the client saw it."""
    if timed_out:
        return "hang"
    if error is not None:
        return "honest error"
    return "recovered" if finished else "silent cut"


async def ask(base_url: str, model: str, give_up: float,
              max_tokens: int | None = None) -> tuple[str, float, int]:
    """One streamed answer: (how it ended, seconds to its end, words received)."""
    started = time.monotonic()
    finished, error, words = False, None, 0
    with trio.move_on_after(give_up) as deadline:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0,
                                      http_client=httpx2.AsyncClient(timeout=None)) as sdk:
            try:
                stream = await sdk.chat.completions.create(
                    model=model, messages=QUESTION, stream=True,
                    max_tokens=openai.omit if max_tokens is None else max_tokens)
                async for chunk in stream:
                    for choice in chunk.choices:
                        words += bool(choice.delta.content)
                        finished = finished or choice.finish_reason is not None
            except (openai.APIError, httpx2.HTTPError, ValueError) as exc:
                error = exc
    outcome = classify(finished, error, deadline.cancelled_caught)
    return outcome, time.monotonic() - started, words


async def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    async with trio.open_nursery() as nursery:
        sim = SimUpstream(profiles(args.inter_token_ms), api_key="bench")
        upstream = (await nursery.start(functools.partial(serve_sim, sim)))[0] + "/v1"
        for fault in FAULTS:
            for target in ("direct", "proxy"):
                async with trio.open_nursery() as inner:
                    base, model = upstream, f"flaky-{fault}"
                    if target == "proxy":
                        running = await inner.start(functools.partial(
                            serve, proxy_config(upstream, fault), host="127.0.0.1", port=0))
                        base, model = running.url + "/v1", "economy"
                        for _ in range(args.warmup):
                            await ask(base, model, args.client_timeout,
                                      max_tokens=FAULT_AFTER)
                    runs = [await ask(base, model, args.client_timeout)
                            for _ in range(args.requests)]
                    inner.cancel_scope.cancel()
                outcomes = Counter(outcome for outcome, _, _ in runs)
                results[f"{fault}/{target}"] = {
                    "fault": fault, "target": target, "outcomes": dict(outcomes),
                    "seconds_to_end": round(statistics.median(s for _, s, _ in runs), 2),
                    "words": sorted({w for _, _, w in runs}),
                }
                print(f"{fault:>9} {target:>6}: {dict(outcomes)} "
                      f"{results[f'{fault}/{target}']['seconds_to_end']} s", file=sys.stderr)
        async with trio.open_nursery() as inner:
            running = await inner.start(functools.partial(
                serve, tools_config(upstream), host="127.0.0.1", port=0))
            held: list[float] = []
            passed: list[float] = []
            for _ in range(args.tool_requests):  # alternating, so both see the same noise
                held.append(await tool_ttft(running.url + "/v1", hold=True))
                passed.append(await tool_ttft(running.url + "/v1", hold=False))
            inner.cancel_scope.cancel()
        results["tools"] = {
            "held_ttft_ms": round(1000 * statistics.median(held), 1),
            "passed_ttft_ms": round(1000 * statistics.median(passed), 1)}
        print(f"tool call TTFT, held whole: {results['tools']['held_ttft_ms']} ms, "
              f"passed as it comes: {results['tools']['passed_ttft_ms']} ms", file=sys.stderr)
        nursery.cancel_scope.cancel()
    return results


def markdown(results: dict[str, dict[str, Any]], requests: int) -> str:
    kinds = ("recovered", "honest error", "silent cut", "hang")
    lines = ["| fault | target | " + " | ".join(kinds) + " | seconds to end (median) "
             "| content chunks |", "|---|---|" + "---|" * (len(kinds) + 2)]
    for row in results.values():
        if "fault" not in row:
            continue
        counts = " | ".join(f"{row['outcomes'].get(k, 0)}/{requests}" for k in kinds)
        words = ", ".join(map(str, row["words"]))
        lines.append(f"| {row['fault']} | {row['target']} | {counts} | "
                     f"{row['seconds_to_end']} | {words} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.survive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3, help="answers per fault and target")
    parser.add_argument("--warmup", type=int, default=20,
                        help="short answers through the proxy before its runs")
    parser.add_argument("--inter-token-ms", type=float, default=20.0)
    parser.add_argument("--client-timeout", type=float, default=60.0,
                        help="seconds after which an answer counts as a hang")
    parser.add_argument("--tool-requests", type=int, default=20,
                        help="tool-call answers with and without holding, for its TTFT cost")
    args = parser.parse_args(argv)
    results = trio.run(run, args)
    print(markdown(results, args.requests))
    tools = results["tools"]
    print(f"\nTool call, client TTFT (median of {args.tool_requests}): held until whole "
          f"{tools['held_ttft_ms']} ms, passed as it comes {tools['passed_ttft_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
