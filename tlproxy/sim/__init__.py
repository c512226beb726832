"""The simulated upstream: a fake OpenAI, Anthropic and Gemini server with realistic latency.

It serves when no provider is configured (so a new user sees the proxy work at
once), in tests (as the upstream every integration test talks to over real
sockets) and in benchmarks (``tlproxy sim --port``).

Answers are deterministic functions of the request (same prompt, same text),
so tests can assert on them. Latency is not: each model has a profile (TTFT,
optionally lognormal from a median and a p99, inter-token delay, token count,
error rate) drawn from a seeded generator.

The package, its arrows pointing one way:

* `upstream`: `SimUpstream`, the ASGI app; picks the protocol by path;
* `openai`, `anthropic`, `gemini`: one module per wire protocol; each checks
  its requests as the real API does, converts them into the OpenAI-shaped
  dict the planner reads, and renders plans in its format (a `Wire`);
* `core`: `Simulator`, the state they share (profiles, counters, the prompt
  cache) and the pacing (latency, cuts, compression, comments, disconnects);
* `plan`: the pure, protocol-neutral planner (`plan_answer`).

A request can script a failure with a marker in its last user message, so
the proxy's error paths can be driven through the real server, whatever the
protocol:

* ``[sim:status=429]`` (or any status): answer with that HTTP error;
* ``[sim:cut=N]``: stream N content chunks, then drop the stream without its end;
* ``[sim:stall]``: never send a first token.

Each model's profile may also turn on habits of real upstreams (``habits``,
none by default), so the proxy's adapters, race and engine meet them in
tests: Azure's filter-only first chunk, SSE comments, reasoning and refusal
deltas, usage in a vendor field or on the finish chunk, gzip, an error event
in place of the first chunk, no ``[DONE]``, Anthropic's pings and 529s,
Gemini's SAFETY and RECITATION stops, headers long before the first event.
docs/configuration.md says what each one sends.
"""

from .core import SimRequest, SimStats, Simulator, Wire
from .plan import Answer, ChoicePlan, embedding_vector, example_from_schema, plan_answer
from .upstream import SimUpstream

__all__ = [
    "Answer",
    "ChoicePlan",
    "SimRequest",
    "SimStats",
    "SimUpstream",
    "Simulator",
    "Wire",
    "embedding_vector",
    "example_from_schema",
    "plan_answer",
]
