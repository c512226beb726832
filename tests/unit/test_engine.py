"""The engine with scripted fake upstreams under trio's `MockClock`: exact virtual times.

Each upstream model follows a script of steps: a number sleeps that many
seconds, a dict is the next chunk (or the JSON answer), an exception is
raised. Requests go through the engine and the edge's renderer as the app
composes them; the client is an in-memory ASGI pair that records what was
sent and when, and can hang up at a given time.
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
from tlproxy.accounting import Accounting, Tab
from tlproxy.call import ChatCall, ChatFacts
from tlproxy.config import (
    Capabilities,
    ClassifierConfig,
    Config,
    ModelConfig,
    Policy,
    ProviderConfig,
)
from tlproxy.edge import Request, StreamSlots, serve_chat
from tlproxy.engine import Admit, Engine, Gated
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


def config(models: Sequence[ModelConfig] = MODELS, **policy: Any) -> Config:
    return Config(
        providers={"fake": ProviderConfig(kind="openai", base_url="http://fake.invalid")},
        models=list(models), policy=Policy(**policy),
        classifier=ClassifierConfig(enabled=True, model="emb", timeout=10.0,
                                    examples={"summarization": ["sum"], "extraction": ["ext"]}))


class Client:
    """The ASGI side of one request: what was sent, when, and a hang-up at `leave_at`.

    Like hypercorn, the server also reports the exchange over
    (``http.disconnect``) as soon as the last body message is sent.
    """

    def __init__(self, leave_at: float = math.inf) -> None:
        self.leave_at = leave_at
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self._over = trio.Event()

    async def receive(self) -> dict[str, Any]:
        with trio.move_on_at(self.leave_at):
            await self._over.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append((trio.current_time(), message))
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self._over.set()
            # The listener hears of it before the send returns, as over a socket.
            await trio.testing.wait_all_tasks_blocked()

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
                 gated: Gated | None = None, models: Sequence[ModelConfig] = MODELS,
                 **policy: Any) -> None:
        self.config = config(models, **policy)
        self.upstream = upstream
        self.writer = MemoryWriter()
        self.ledger = Ledger(self.writer)
        self.metrics = Metrics()
        self.accounting = Accounting(self.config, self.ledger, None, metrics=self.metrics)
        self.engine = Engine(self.config, {"fake": upstream}, accounting=self.accounting,
                             metrics=self.metrics, admit=admit, gated=gated)
        # The account of the last request served.
        self.tab: Tab | None = None

    async def chat(self, client: Client, *, headers: dict[str, str] | None = None,
                   **body: Any) -> Request:
        """One chat request, served as the app serves it, and finished."""
        request = Request({"method": "POST", "path": "/v1/chat/completions", "headers": []},
                          client.receive, client.send)
        raw = msgspec.json.encode({"model": "auto", **body})
        chat, decoded = decode_chat_request(raw)
        call = ChatCall.of(chat, id=request.id, arrived=request.arrived, key=None,
                           headers=headers or {}, body=decoded, facts=ChatFacts.of(decoded))
        tab = Tab(request.id, None, request.arrived)
        try:
            await serve_chat(request, self.engine, call, tab,
                             slots=StreamSlots(self.config.limits), metrics=self.metrics)
        finally:
            self.engine.finish(call, tab, request.route, client_ttft=request.ttft,
                               client_gone=request.client_gone, complete=request.answered)
        self.tab = tab
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

    async def refuse(_call: ChatCall, _tab: Tab) -> None:
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


@pytest.mark.parametrize(("gated", "admissions", "answered_at"), [
    # A key with limits: the model starts once the gate (1 s) let it through.
    (True, 1, 1.5),
    # A key without: no gate to pass, the model starts at once.
    (False, 0, 0.5),
])
async def test_a_request_with_nothing_to_check_skips_the_gate(
    autojump_clock: trio.testing.MockClock, gated: bool, admissions: int,
    answered_at: float,
) -> None:
    admitted: list[str] = []

    async def admit(call: ChatCall, _tab: Tab) -> None:
        admitted.append(call.id)
        await trio.sleep(1.0)

    upstream = FakeUpstream({"e1": [0.5, ANSWER]})
    harness = Harness(upstream, admit=admit, gated=lambda _call: gated)
    client = Client()
    await harness.chat(client, model="economy", messages=QUESTION)
    assert client.status == 200
    assert len(admitted) == admissions
    assert client.body_times() == [answered_at]


# -- one request's lifetime, at exact virtual times --------------------------

def events(body: bytes) -> list[Any]:
    """The SSE `data:` payloads of a response body, decoded ([DONE] as the string)."""
    out: list[Any] = []
    for frame in body.split(b"\n\n"):
        if frame.startswith(b"data: "):
            data = frame.removeprefix(b"data: ")
            out.append("[DONE]" if data == b"[DONE]" else msgspec.json.decode(data))
    return out


def contents(body: bytes) -> str:
    return "".join(choice["delta"].get("content") or "" for event in events(body)
                   if isinstance(event, dict) for choice in event.get("choices", ()))


ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
          "choices": [{"index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": "An answer"}}],
          "usage": USAGE}


async def test_a_json_answer_is_sent_whole_when_the_upstream_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream({"e1": [0.5, ANSWER]})
    harness = Harness(upstream)
    client = Client()
    request = await harness.chat(client, model="economy", messages=QUESTION)
    assert client.status == 200
    assert client.body_times() == [0.5]
    answer = msgspec.json.decode(client.body)
    # Repaired to OpenAI's exact shape: the fields OpenAI always sends are there.
    assert answer["choices"][0]["logprobs"] is None
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "An answer",
                                               "refusal": None}
    assert request.ttft is None  # a JSON answer has no first token
    # The server's "exchange over" after the body is not a client that left.
    assert not request.client_gone
    assert harness.tab is not None and harness.tab.usage_tokens == 6
    (row,) = await harness.rows()
    assert (row.model, row.rule, row.status, row.winner) == ("e1", "intent:economy", "ok", True)
    assert (row.ttft_ms, row.client_ttft_ms, row.duration_ms) == (None, None, 500.0)


async def test_a_stream_starts_with_the_first_token_and_ends_with_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream({"e1": [
        0.25, chunk(role="assistant", content=""), 0.125, chunk("Hello"),
        0.5, chunk(" world"), 0.5, chunk(finish="stop"), chunk(usage=USAGE)]})
    harness = Harness(upstream)
    client = Client()
    request = await harness.chat(client, model="economy", messages=QUESTION, stream=True)
    assert client.status == 200
    start = next(t for t, m in client.sent if m["type"] == "http.response.start")
    # Nothing is sent before the first token: the role chunk waits for it.
    assert start == request.ttft == 0.375
    times = client.body_times()
    assert (times[0], times[1], times[-1]) == (0.375, 0.875, 1.375)
    sent = events(client.body)
    assert contents(client.body) == "Hello world"
    assert sent[-1] == "[DONE]"
    # The usage chunk was the proxy's, not asked for by the client: dropped.
    assert all("usage" not in e for e in sent if isinstance(e, dict))
    assert [c["finish_reason"] for e in sent[:-1] for c in e["choices"]] == [
        None, None, None, "stop"]
    assert harness.tab is not None and harness.tab.usage_tokens == 6
    (row,) = await harness.rows()
    assert (row.ttft_ms, row.client_ttft_ms, row.duration_ms) == (375.0, 375.0, 1375.0)
    assert (row.status, row.completion_tokens) == ("ok", 2)


async def test_usage_asked_for_comes_last_and_null_on_every_other_chunk(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream({"e1": [0.25, *answer_stream("Hi")]})
    client = Client()
    await Harness(upstream).chat(client, model="economy", messages=QUESTION, stream=True,
                                 stream_options={"include_usage": True})
    sent = events(client.body)
    assert [e["usage"] for e in sent[:-1]] == [None, None, None, USAGE]
    assert sent[-2]["choices"] == [] and sent[-1] == "[DONE]"


async def test_a_failure_before_the_first_token_falls_back_to_the_next_model(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream({
        "e1": [0.25, UpstreamError("unavailable", status=503)],
        "e2": [0.5, *answer_stream("Fallback")],
    })
    harness = Harness(upstream)
    client = Client()
    request = await harness.chat(client, model="economy", messages=QUESTION, stream=True)
    assert [(t, m, e) for t, m, e in upstream.log if e == "stream"] == [
        (0.0, "e1", "stream"), (0.25, "e2", "stream")]
    assert request.ttft == 0.75
    assert contents(client.body) == "Fallback"
    rows = {r.model: r for r in await harness.rows()}
    assert (rows["e1"].status, rows["e1"].winner, rows["e1"].duration_ms) == (
        "error", False, 250.0)
    assert (rows["e2"].status, rows["e2"].winner, rows["e2"].ttft_ms) == ("ok", True, 500.0)


async def test_a_slow_first_token_is_hedged_and_the_faster_model_wins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No statistics yet: the hedge starts after `hedge_initial_ms`; the first
    token of either model wins and the other is cancelled at that moment."""
    upstream = FakeUpstream({
        "e1": [3.0, *answer_stream("Slow")],
        "e2": [0.5, *answer_stream("Fast")],
    })
    harness = Harness(upstream, hedge_initial_ms=1000.0)
    client = Client()
    request = await harness.chat(client, model="economy", messages=QUESTION, stream=True)
    # At 1.5 s the loser is cancelled and the winner's stream ends (in either order).
    assert sorted(upstream.log) == [(0.0, "e1", "stream"), (1.0, "e2", "stream"),
                                    (1.5, "e1", "ended"), (1.5, "e2", "ended")]
    assert request.ttft == 1.5
    assert contents(client.body) == "Fast"
    rows = {r.model: r for r in await harness.rows()}
    assert (rows["e1"].status, rows["e1"].hedge, rows["e1"].duration_ms) == (
        "cancelled", False, 1500.0)
    assert (rows["e2"].status, rows["e2"].hedge, rows["e2"].winner) == ("ok", True, True)


async def test_a_client_that_leaves_mid_stream_cancels_the_upstream_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    words = [step for i in range(20) for step in (0.5, chunk(f" w{i}"))]
    upstream = FakeUpstream({"e1": [0.25, chunk(role="assistant", content=""), *words,
                                    chunk(finish="stop")]})
    harness = Harness(upstream)
    client = Client(leave_at=1.5)
    request = await harness.chat(client, model="economy", messages=QUESTION, stream=True)
    assert upstream.log == [(0.0, "e1", "stream"), (1.5, "e1", "ended")]
    assert request.client_gone
    assert client.body_times() == [0.75, 1.25]
    assert contents(client.body) == " w0 w1"
    assert "[DONE]" not in events(client.body)
    (row,) = await harness.rows()
    assert (row.winner, row.status, row.client_ttft_ms) == (True, "cancelled", 750.0)


async def test_a_client_that_leaves_before_a_json_answer_cancels_the_upstream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream({"e1": [5.0, ANSWER]})
    harness = Harness(upstream)
    client = Client(leave_at=0.5)
    request = await harness.chat(client, model="economy", messages=QUESTION)
    assert upstream.log == [(0.0, "e1", "chat"), (0.5, "e1", "ended")]
    assert client.sent == [] and request.client_gone
    (row,) = await harness.rows()
    assert (row.status, row.winner, row.duration_ms) == ("cancelled", False, 500.0)


async def test_a_failure_after_the_first_token_ends_with_an_error_event_and_no_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream({"e1": [0.25, chunk(role="assistant", content="Half"), 0.25,
                                    UpstreamError("the stream broke", status=502)]})
    # Continuation off for the tier: the failure is the client's to see.
    harness = Harness(upstream, continuation_tiers=[])
    client = Client()
    request = await harness.chat(client, model="economy", messages=QUESTION, stream=True)
    sent = events(client.body)
    assert sent[-1]["error"]["message"] == "the stream broke"
    assert "[DONE]" not in sent
    assert request.error == "upstream_failed_mid_stream"
    assert client.body_times()[-1] == 0.5
    (row,) = await harness.rows()
    assert (row.status, row.winner) == ("cut", True)


async def test_a_tier_the_classifier_picks_that_cannot_fit_the_request_is_the_clients_400(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Both tiers are possible until the classifier answers (summarization: economy);
    no economy model takes a prompt this long. That is the request's doing, said as a
    400 naming the limit, as when the tier is known at once; not a 503."""
    tiny = Capabilities(max_context=2)
    models = [m if m.tier != "economy" else msgspec.structs.replace(m, capabilities=tiny)
              for m in MODELS]
    upstream = FakeUpstream({"p1": [0.25, *answer_stream("An", " answer")]},
                            embed_delay=0.5, prompt_vector=SUMMARY)
    harness = Harness(upstream, models=models, speculate_tiers=["premium", "economy"],
                      hedge_tiers=[])
    with pytest.raises(ProxyError) as refused:
        await harness.chat(Client(), messages=QUESTION, stream=True)
    assert refused.value.status == 400
    assert refused.value.code == "no_eligible_model"
    # Refused as soon as the decision named the tier.
    assert trio.current_time() == 1.0
