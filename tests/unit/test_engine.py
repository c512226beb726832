"""The engine with scripted fake upstreams under trio's `MockClock`: exact virtual times.

Each upstream model follows a script of steps: a number sleeps that many
seconds, a dict is the next chunk (or the JSON answer), an exception is
raised. The client is an in-memory ASGI pair that records what was sent and
when, and can hang up at a given time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from tests.unit.test_ledger import MemoryWriter
from tlproxy.accounting import Accounting
from tlproxy.app import Request
from tlproxy.call import ChatCall, ChatFacts
from tlproxy.config import ClassifierConfig, Config, ModelConfig, Policy, ProviderConfig
from tlproxy.engine import Admit, Engine
from tlproxy.errors import ProxyError, UpstreamError
from tlproxy.ledger import Ledger, LedgerRow
from tlproxy.metrics import Metrics
from tlproxy.providers.base import JSON, Chunk, Provider
from tlproxy.wire import decode_chat_request

Step = float | dict[str, Any] | Exception

MODELS = [
    ModelConfig(id="p1", provider="fake", tier="premium"),
    ModelConfig(id="p2", provider="fake", tier="premium"),
    ModelConfig(id="e1", provider="fake", tier="economy"),
    ModelConfig(id="e2", provider="fake", tier="economy"),
    ModelConfig(id="emb", provider="fake", tier="embedding"),
]
# Prompt vectors for the classifier's two labels.
SUMMARY, EXTRACTION = [1.0, 0.0], [0.0, 1.0]


def chunk(content: str | None = None, *, role: str | None = None,
          finish: str | None = None, usage: dict[str, int] | None = None) -> Chunk:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    choices = [] if usage is not None else [
        {"index": 0, "delta": delta, "finish_reason": finish}]
    out: Chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                  "model": "m", "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def answer_stream(*words: str) -> list[Step]:
    """A whole stream: a role chunk, one chunk per word, the finish, the usage."""
    return [chunk(role="assistant", content=""), *(chunk(w) for w in words),
            chunk(finish="stop"), chunk(usage=USAGE)]


class _Script:
    """A script as an async iterator (a class: nothing to finalize if dropped)."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self._steps = list(steps)

    def __aiter__(self) -> _Script:
        return self

    async def __anext__(self) -> Chunk:
        while self._steps:
            step = self._steps.pop(0)
            if isinstance(step, int | float):
                await trio.sleep(step)
            elif isinstance(step, Exception):
                raise step
            else:
                await trio.lowlevel.checkpoint()
                return step
        raise StopAsyncIteration


class FakeUpstream(Provider):
    """Every model's script, and a log of (virtual time, model, event)."""

    name = "fake"
    kind = "openai"

    def __init__(self, scripts: dict[str, list[Step]], *, embed_delay: float = 0.0,
                 prompt_vector: list[float] = SUMMARY) -> None:
        self.scripts = scripts
        self.embed_delay = embed_delay
        self.prompt_vector = prompt_vector
        self.log: list[tuple[float, str, str]] = []

    def _note(self, model: str, event: str) -> None:
        self.log.append((trio.current_time(), model, event))

    async def chat(self, body: JSON, *, model: str) -> JSON:
        self._note(model, "chat")
        try:
            async for answer in _Script(self.scripts[model]):
                return answer
        except BaseException:
            self._note(model, "ended")
            raise
        raise AssertionError(f"the script of {model} has no answer")

    @contextlib.asynccontextmanager
    async def stream_chat(self, body: JSON, *, model: str) -> AsyncIterator[AsyncIterator[Chunk]]:
        self._note(model, "stream")
        try:
            yield _Script(self.scripts[model])
        finally:
            self._note(model, "ended")

    async def embed(self, body: JSON, *, model: str) -> JSON:
        await trio.sleep(self.embed_delay)
        texts = body["input"]
        data = [{"object": "embedding", "index": i,
                 "embedding": SUMMARY if text == "sum" else EXTRACTION if text == "ext"
                 else self.prompt_vector} for i, text in enumerate(texts)]
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": 1, "total_tokens": 1}}


def config(**policy: Any) -> Config:
    return Config(
        providers={"fake": ProviderConfig(kind="openai", base_url="http://fake.invalid")},
        models=MODELS, policy=Policy(**policy),
        classifier=ClassifierConfig(enabled=True, model="emb", timeout=10.0,
                                    examples={"summarization": ["sum"], "extraction": ["ext"]}))


class Client:
    """The ASGI side of one request: what was sent, when, and a hang-up at `leave_at`."""

    def __init__(self, leave_at: float = math.inf) -> None:
        self.leave_at = leave_at
        self.sent: list[tuple[float, dict[str, Any]]] = []

    async def receive(self) -> dict[str, Any]:
        await trio.sleep_until(self.leave_at)
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append((trio.current_time(), message))

    @property
    def status(self) -> int | None:
        return next((m["status"] for _, m in self.sent
                     if m["type"] == "http.response.start"), None)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for _, m in self.sent
                        if m["type"] == "http.response.body")

    def body_times(self) -> list[float]:
        return [t for t, m in self.sent if m["type"] == "http.response.body"]


class Harness:
    def __init__(self, upstream: FakeUpstream, *, admit: Admit | None = None,
                 **policy: Any) -> None:
        self.config = config(**policy)
        self.upstream = upstream
        self.writer = MemoryWriter()
        self.ledger = Ledger(self.writer)
        self.accounting = Accounting(self.config, self.ledger, None, metrics=Metrics())
        self.engine = Engine(self.config, {"fake": upstream}, accounting=self.accounting,
                             metrics=Metrics(), admit=admit)

    async def chat(self, client: Client, **body: Any) -> Request:
        request = Request({"method": "POST", "path": "/v1/chat/completions", "headers": []},
                          client.receive, client.send)
        raw = msgspec.json.encode({"model": "auto", **body})
        chat, decoded = decode_chat_request(raw)
        call = ChatCall(id=request.id, arrived=request.arrived, key=None, headers={},
                        chat=chat, body=decoded, facts=ChatFacts.of(decoded))
        await self.engine.chat(request, call)
        self.accounting.finish(request)
        return request

    async def rows(self) -> list[LedgerRow]:
        await self.ledger.aclose()
        return [r for r in self.writer.rows if r.kind == "chat"]


QUESTION = [{"role": "user", "content": "Tell me about the attached report"}]


async def test_an_attempt_ended_before_the_decision_is_booked_against_the_decision(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Speculating both tiers while the classifier decides: the provisional rule
    (first-turn, premium) is not the decision (semantic, economy), and attempts
    that end before it are booked against the decision, like those ending after."""
    upstream = FakeUpstream({
        "p1": [0.25, UpstreamError("unavailable", status=503)],
        "p2": [30.0],  # never answers: cut by the decision
        "e1": [0.5, UpstreamError("unavailable", status=503)],
        "e2": [1.0, *answer_stream("An", " answer")],
    }, embed_delay=0.5, prompt_vector=SUMMARY)
    harness = Harness(upstream, speculate_tiers=["premium", "economy"], hedge_tiers=[])
    client = Client()
    await harness.chat(client, messages=QUESTION, stream=True)
    assert client.status == 200
    rows = {r.model: r for r in await harness.rows()}
    decided = "semantic-summarize-extract"
    assert {m: (r.tier, r.rule, r.status, r.winner) for m, r in rows.items()} == {
        "p1": ("premium", f"speculative:{decided}", "error", False),
        "e1": ("economy", decided, "error", False),
        "p2": ("premium", f"speculative:{decided}", "cancelled", False),
        "e2": ("economy", decided, "ok", True),
    }
    # The decision came with the second embedding call, at 1.0 s: p1 and e1
    # had ended, p2 was running and was cut then.
    assert rows["p1"].duration_ms == 250.0
    assert rows["e1"].duration_ms == 500.0
    assert rows["p2"].duration_ms == 750.0


async def test_attempts_of_a_request_never_decided_are_all_speculative(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The key's limit refuses the request while both tiers are speculated: no
    decision was made, so no attempt is booked as if it had been."""

    async def refuse(_request: Request, _call: ChatCall) -> None:
        await trio.sleep(1.0)
        raise ProxyError("over the limit", status=429, code="rate_limit_exceeded")

    upstream = FakeUpstream({
        "p1": [0.25, UpstreamError("unavailable", status=503)],
        "p2": [30.0],
        "e1": [30.0],
    }, embed_delay=0.25)
    harness = Harness(upstream, admit=refuse, speculate_tiers=["premium", "economy"],
                      hedge_tiers=[])
    with pytest.raises(ProxyError) as refused:
        await harness.chat(Client(), messages=QUESTION, stream=True)
    assert refused.value.status == 429
    rows = await harness.rows()
    assert sorted((r.model, r.rule, r.status, r.duration_ms) for r in rows) == [
        ("e1", "speculative:first-turn", "cancelled", 1000.0),
        ("p1", "speculative:first-turn", "error", 250.0),
        ("p2", "speculative:first-turn", "cancelled", 750.0),
    ]
