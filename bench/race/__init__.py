"""The first-token race, measured: what speculation and hedging buy in TTFT, and what they cost.

Run it as ``python -m bench.race`` (``--help`` for the options), from the repository root.

What runs
---------
One trio process holds everything: the proxy (`tlproxy.server.serve`, hypercorn on a loopback
port), its simulated upstreams (each provider its own `SimUpstream` on its own port, so each has
its own latency draw) and the client. Providers: two per tier, one chat model each (catalog ids
and prices: premium ``claude-sonnet-4-6`` on p1 and ``gpt-5.4`` on p2, economy ``gpt-5-mini`` on
e1 and ``gemini-2.5-flash`` on e2), every one with a lognormal TTFT of median 300 ms and p99
1500 ms, 10 ms between tokens, 20 tokens; and an embedding model (``text-embedding-3-small``)
on a sim of its own with TTFT median 100 ms, p99 150 ms, which the semantic classifier calls:
that call is the slow routing decision. Every sim is seeded (``sim_seed``), so a rerun draws
the same latencies per provider in the same order (which request gets which draw still depends
on timing).

Workload: single-turn prompts, each equal to one of the classifier's examples (so the label is
certain whatever the embedding), none with the prompt cues the fast ``summarize-extract`` rule
reads. With the default rules, the fast signals leave both tiers possible (``first-turn`` says
premium, ``semantic-summarize-extract`` may say economy): only the classifier decides. About
``--economy-share`` (default 90 %) of the prompts are summarization / extraction requests
(decided economy), the rest conversation (decided premium). The classifier's result cache is off
(``cache_size = 0``) so that every request pays the decision, as a stream of distinct prompts
would; its example vectors are embedded once, in the warm-up.

Variants, each on a fresh proxy and fresh sims, after a warm-up of ``--warmup`` requests (which
fills the live TTFT statistics that hedging reads; sent at twice the concurrency, to save time),
then ``--requests`` measured requests at ``--concurrency`` (a closed loop: each worker sends its
next request when the last one ended). Every variant sends the same prompts in the same order:

* (a) ``direct``: each request straight to the sim of the best single provider of the tier the
  proxy would decide for it ("best" = lowest median TTFT measured in a direct warm-up);
* (b) ``wait``: through the proxy without speculation or hedging (``speculate = false``,
  ``hedge_tiers = []``): decide, then call the best model of the decided tier;
* (c) ``race``: through the proxy with the defaults (speculation, hedging at the p90 of each
  model's live TTFT);
* the trade-off curve: the race with ``hedge_quantile`` 0.5, 0.75, 0.95, 0.99 (0.9 is (c)) and
  with hedging off (speculation only), ``--curve-requests`` each;
* with ``--extra``: (a') through the proxy with the best model pinned by name (no decision, no
  race: the proxy's own overhead), and (d) the race speculating into economy only (the default
  rules reordered so the fast guess is economy, ``fanout = 1``: a premium model is called only
  once the decision names it), ``--requests`` each.

What is measured
----------------
* TTFT on the client: from just before the request is sent to the read that completes the first
  SSE event with content (not the role-only chunk), on ``trio.current_time()``; p50/p90/p99 with
  95 % bootstrap intervals (percentile method, 2000 resamples, seeded).
* Decision time: every call of the server's classifier (wrapped in place), which is the
  embedding round trip plus the nearest-neighbour search.
* "Added": per request, the client's TTFT minus the race's own time from its first attempt's
  start to the winner's first token (joined on ``x-request-id``): what the proxy adds around
  the upstream, paired, so free of the upstream's latency draw. Without speculation it includes
  the whole decision; with it, only the part of the decision that outlasted the first token.
* CPU: this process's, and the rest of the machine's (from ``/proc/stat``), over each measured
  phase, in % of one core; a warning is printed when other processes used more than 25 %.
* Cost: the engine's `AttemptRecord` of every upstream attempt (its ``_on_record`` is wrapped in
  place), priced at the catalog's prices: input tokens from the upstream's usage when a chunk
  carried it, else ceil(characters of the messages / 4); output tokens from the usage, else the
  content chunks received (one token per chunk: the role chunk is not counted). An attempt that
  lost, was cut by the decision or failed is "waste". The extra cost of a variant is its waste
  per request minus (b)'s, in % of (b)'s total cost per request for the same prompts (a curve
  point sends only the first ``--curve-requests`` of them); it is split into speculation
  (``outside-tier``: the tier the decision did not name) and hedging (``lost``). The
  classifier's own embedding call costs the same in (b) and (c) and is left out.

Caveats
-------
* Client, proxy and sims share one event loop: CPU spent by one delays the others' clock
  readings. Through the proxy there is more of it (three HTTP hops instead of one), so the
  proxy's numbers include some of the client's and sims' scheduling delay too.
* With 400 samples, a p50 is known to about ±15 ms and a p99 is the 4th-largest sample: read the
  intervals, not only the points.
* The sim's TTFT draws are independent per request; real providers' slow periods are correlated
  (a slow minute, a slow region), which hedging across providers helps with more, and hedging
  within one provider less.

Layout
------
`scenario` (providers, prompts, the proxy's config, the variants, the workload), `client`
(streamed requests in a closed loop), `probe` (hooks into the running server: decision times,
priced attempts; CPU), `runner` (the variants run in-process, the result file), `stats`
(summaries, bootstrap intervals, cost: pure functions of a result file), `render` (tables,
Markdown, plot), `cli` (options and ``main``). ``--report`` reads a result file and runs only
`stats` and `render`.
"""

from __future__ import annotations

from bench.race.cli import RESULTS, build_parser, main
from bench.race.client import Sample, Target, closed_loop, stream_one
from bench.race.probe import CpuWindow, Probe, price_attempt
from bench.race.render import (
    curve_rows,
    plot_tradeoff,
    render_markdown,
    render_rich,
    table_rows,
    target_lines,
)
from bench.race.runner import (
    best_by_tier,
    machine,
    proxy_server,
    run_all,
    run_direct,
    run_proxy,
)
from bench.race.scenario import (
    CHAT_PROVIDERS,
    CURVE_QUANTILES,
    ECONOMY_FIRST_RULES,
    ECONOMY_PROMPTS,
    EMBED_MODEL,
    EMBED_PROVIDER,
    EMBED_SEED,
    PREMIUM_PROMPTS,
    Item,
    Latency,
    Variant,
    build_config,
    catalog_models,
    check_prompts,
    variants,
    workload,
)
from bench.race.stats import (
    analyze,
    bootstrap,
    cost_by_item,
    interval,
    paired_added,
    percentile_ms,
    summarize,
)

__all__ = [
    "CHAT_PROVIDERS",
    "CURVE_QUANTILES",
    "ECONOMY_FIRST_RULES",
    "ECONOMY_PROMPTS",
    "EMBED_MODEL",
    "EMBED_PROVIDER",
    "EMBED_SEED",
    "PREMIUM_PROMPTS",
    "RESULTS",
    "CpuWindow",
    "Item",
    "Latency",
    "Probe",
    "Sample",
    "Target",
    "Variant",
    "analyze",
    "best_by_tier",
    "bootstrap",
    "build_config",
    "build_parser",
    "catalog_models",
    "check_prompts",
    "closed_loop",
    "cost_by_item",
    "curve_rows",
    "interval",
    "machine",
    "main",
    "paired_added",
    "percentile_ms",
    "plot_tradeoff",
    "price_attempt",
    "proxy_server",
    "render_markdown",
    "render_rich",
    "run_all",
    "run_direct",
    "run_proxy",
    "stream_one",
    "summarize",
    "table_rows",
    "target_lines",
    "variants",
    "workload",
]
