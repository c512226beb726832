"""The bytes the simulator sends for each habit of real upstreams, and when.

The simulator is called as the ASGI app it is, in memory, under trio's
`MockClock`: each body message is recorded with its virtual time, so the
tests see both the wire format and the pacing. What the proxy makes of each
habit is in tests/integration/test_upstream_habits.py.
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from tlproxy.config import ConfigError, SimHabit, SimModelProfile
from tlproxy.config_load import load_config
from tlproxy.sim import SimUpstream
from tlproxy.sim.openai import AZURE_FILTER_CHUNK, REASONING, REFUSAL
from tlproxy.sse import SSEDecoder

PROMPT = [{"role": "user", "content": "Tell me about routing"}]
TTFT = 0.25


class Reply(msgspec.Struct):
    status: int
    headers: dict[str, str]
    # (virtual seconds since the request, bytes as sent) per message, the
    # headers first (as b"")
    writes: list[tuple[float, bytes]]

    @property
    def body(self) -> bytes:
        data = b"".join(w for _, w in self.writes)
        return gzip.decompress(data) if self.headers.get("content-encoding") == "gzip" else data

    def events(self) -> list[tuple[str | None, str]]:
        return [(e.event, e.data) for e in SSEDecoder().feed(self.body)]

    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(data) for _, data in self.events() if data != "[DONE]"]


async def call(
    habits: tuple[SimHabit, ...], *, protocol: str = "openai", stream: bool = True,
    include_usage: bool = True, prompt: list[dict[str, Any]] = PROMPT, n: int = 1,
) -> Reply:
    """One request to a sim whose model `m` has `habits`, answered in full."""
    profile = SimModelProfile(ttft_ms=TTFT * 1000, inter_token_ms=10.0, tokens=6, habits=habits)
    sim = SimUpstream({"m": profile}, wall_clock=lambda: 1_800_000_000.0)
    headers = [(b"content-type", b"application/json")]
    if protocol == "openai":
        path = "/v1/chat/completions"
        body: dict[str, Any] = {"model": "m", "messages": prompt, "stream": stream, "n": n}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        headers.append((b"authorization", b"Bearer k"))
    elif protocol == "anthropic":
        path = "/v1/messages"
        body = {"model": "m", "max_tokens": 64, "messages": prompt, "stream": stream}
        headers += [(b"x-api-key", b"k"), (b"anthropic-version", b"2023-06-01")]
    else:
        method = "streamGenerateContent" if stream else "generateContent"
        path = f"/v1beta/models/m:{method}"
        body = {"contents": [{"role": "user", "parts": [{"text": prompt[0]["content"]}]}]}
        headers.append((b"x-goog-api-key", b"k"))
    scope = {"type": "http", "path": path, "headers": headers,
             "query_string": b"alt=sse" if protocol == "gemini" and stream else b""}
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": json.dumps(body).encode()}
        await trio.sleep_forever()
        raise AssertionError

    reply = Reply(status=0, headers={}, writes=[])
    start = trio.current_time()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            reply.status = message["status"]
            reply.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            reply.writes.append((trio.current_time() - start, b""))
        else:
            reply.writes.append((trio.current_time() - start, message.get("body", b"")))

    await sim(scope, receive, send)
    return reply


def deltas(reply: Reply) -> list[dict[str, Any]]:
    return [c["delta"] for chunk in reply.chunks() for c in chunk["choices"]]


def content(reply: Reply) -> str:
    return "".join(d.get("content") or "" for d in deltas(reply))


# ---------------------------------------------------------------- OpenAI


async def test_no_habits_is_openai_as_documented(autojump_clock: Any) -> None:
    reply = await call(())
    assert reply.events()[-1] == (None, "[DONE]")
    chunks = reply.chunks()
    assert all(c["choices"] for c in chunks[:-1]) and chunks[-1]["choices"] == []
    assert b":" not in b"".join(line[:1] for line in reply.body.split(b"\n"))


async def test_azure_filter_chunk_comes_first(autojump_clock: Any) -> None:
    reply = await call(("azure_filter_chunk",))
    first, *rest = reply.chunks()
    assert first == AZURE_FILTER_CHUNK
    assert first["choices"] == [] and "usage" not in first
    assert rest == (await call(())).chunks()


async def test_sse_comments_come_before_every_event(autojump_clock: Any) -> None:
    reply = await call(("sse_comments",))
    plain = await call(())
    assert reply.events() == plain.events()
    comments = reply.body.count(b": OPENROUTER PROCESSING\n\n")
    assert comments == len(plain.events()) + 1  # one right after the headers
    assert reply.writes[1][1] == b": OPENROUTER PROCESSING\n\n"


@pytest.mark.parametrize("habit", ["reasoning_content", "reasoning"])
async def test_reasoning_deltas_come_before_the_content(
    autojump_clock: Any, habit: SimHabit
) -> None:
    reply = await call((habit,))
    plain = await call(())
    thinking = [d for d in deltas(reply) if habit in d]
    assert [d[habit] for d in thinking] == list(REASONING)
    assert all(d["content"] is None for d in thinking)
    first_content = next(i for i, d in enumerate(deltas(reply)) if d.get("content"))
    assert first_content > max(i for i, d in enumerate(deltas(reply)) if habit in d)
    assert content(reply) == content(plain)
    usage, plain_usage = reply.chunks()[-1]["usage"], plain.chunks()[-1]["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == len(REASONING)
    assert usage["completion_tokens"] == plain_usage["completion_tokens"] + len(REASONING)
    answer = json.loads((await call((habit,), stream=False)).body)
    assert answer["choices"][0]["message"][habit] == "".join(REASONING)


async def test_refusal_deltas_replace_the_content(autojump_clock: Any) -> None:
    reply = await call(("refusal",))
    role, *rest = deltas(reply)
    assert role == {"role": "assistant", "content": None, "refusal": ""}
    assert "".join(d.get("refusal") or "" for d in rest) == "".join(REFUSAL)
    assert content(reply) == ""
    finishes = [c["finish_reason"] for chunk in reply.chunks() for c in chunk["choices"]]
    assert [f for f in finishes if f] == ["stop"]
    message = json.loads((await call(("refusal",), stream=False)).body)["choices"][0]["message"]
    assert (message["content"], message["refusal"]) == (None, "".join(REFUSAL))


@pytest.mark.parametrize("include_usage", [False, True])
async def test_usage_in_x_groq_is_on_the_finish_chunk_only(
    autojump_clock: Any, include_usage: bool
) -> None:
    chunks = (await call(("usage_in_x_groq",), include_usage=include_usage)).chunks()
    plain = (await call(())).chunks()
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    groq = chunks[-1]["x_groq"]["usage"]
    assert {k: groq[k] for k in plain[-1]["usage"]} == plain[-1]["usage"]
    assert groq["total_time"] > 0
    assert all(not c.get("usage") for c in chunks)


async def test_usage_on_finish_chunk(autojump_clock: Any) -> None:
    chunks = (await call(("usage_on_finish_chunk",))).chunks()
    plain = (await call(())).chunks()
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == plain[-1]["usage"]
    assert all(c["choices"] for c in chunks)


async def test_no_done_ends_after_the_usage_chunk(autojump_clock: Any) -> None:
    reply, plain = await call(("no_done",)), await call(())
    assert reply.events() == plain.events()[:-1]
    assert reply.events()[-1][1] != "[DONE]"


# ---------------------------------------------------------------- every protocol


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
async def test_gzip_is_flushed_after_every_event(autojump_clock: Any, protocol: str) -> None:
    reply = await call(("gzip",), protocol=protocol)
    plain = await call((), protocol=protocol)
    assert reply.headers["content-encoding"] == "gzip"
    assert reply.events() == plain.events()
    # Each write decodes on its own as it arrives: the stream is not held back.
    decoder = zlib.decompressobj(wbits=31)
    pieces = [decoder.decompress(data) for _, data in reply.writes]
    assert pieces == [data for _, data in plain.writes]
    answer = await call(("gzip",), protocol=protocol, stream=False)
    assert answer.body == (await call((), protocol=protocol, stream=False)).body


ERROR_EVENTS = {
    "openai": (None, {"error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error", "param": None, "code": None}}),
    "anthropic": ("error", {"type": "error", "error": {"type": "overloaded_error",
                                                       "message": "Overloaded"},
                            "request_id": "req_sim"}),
    "gemini": (None, {"error": {"code": 503, "status": "UNAVAILABLE",
                                "message": "The model is overloaded. Please try again later."}}),
}


@pytest.mark.parametrize("protocol", sorted(ERROR_EVENTS))
async def test_error_first_is_a_200_with_one_error_event(
    autojump_clock: Any, protocol: str
) -> None:
    reply = await call(("error_first",), protocol=protocol)
    assert reply.status == 200
    [(event, data)] = reply.events()
    assert (event, json.loads(data)) == ERROR_EVENTS[protocol]
    assert reply.writes[-1][0] == TTFT


@pytest.mark.parametrize(("protocol", "status", "kind"), [
    ("anthropic", 529, "overloaded_error"), ("openai", 503, "server_error"),
    ("gemini", 503, "UNAVAILABLE")])
async def test_overloaded_refuses_every_request(
    autojump_clock: Any, protocol: str, status: int, kind: str
) -> None:
    for stream in (True, False):
        reply = await call(("overloaded",), protocol=protocol, stream=stream)
        error = json.loads(reply.body)["error"]
        assert (reply.status, error.get("type") or error.get("status")) == (status, kind)


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
async def test_late_first_event_sends_only_headers_until_the_ttft(
    autojump_clock: Any, protocol: str
) -> None:
    reply = await call(("late_first_event",), protocol=protocol)
    assert reply.writes[0] == (0.0, b"")  # the headers
    assert min(t for t, data in reply.writes if data) == TTFT
    assert reply.events() == (await call((), protocol=protocol)).events()
    # Without the habit, OpenAI's role chunk and Anthropic's message_start
    # leave with the headers.
    if protocol != "gemini":
        plain = await call((), protocol=protocol)
        assert min(t for t, data in plain.writes if data) == 0.0


# ---------------------------------------------------------------- Anthropic and Gemini


async def test_anthropic_pings_between_the_events(autojump_clock: Any) -> None:
    events = [e for e, _ in (await call(("pings",), protocol="anthropic")).events()]
    plain = [e for e, _ in (await call((), protocol="anthropic")).events()]
    assert [e for e in events if e != "ping"] == [e for e in plain if e != "ping"]
    assert events.count("ping") > plain.count("ping") >= 1
    # A ping after each token's events.
    deltas = [i for i, e in enumerate(events) if e == "content_block_delta"]
    assert deltas and all(events[i + 1] == "ping" for i in deltas)


@pytest.mark.parametrize(("habit", "reason", "evidence"), [
    ("safety_stop", "SAFETY", "safetyRatings"),
    ("recitation_stop", "RECITATION", "citationMetadata")])
async def test_gemini_candidate_stopped_by_its_filters(
    autojump_clock: Any, habit: SimHabit, reason: str, evidence: str
) -> None:
    responses = [json.loads(d) for _, d in (await call((habit,), protocol="gemini")).events()]
    plain = [json.loads(d) for _, d in (await call((), protocol="gemini")).events()]
    *text, last = [r["candidates"][0] for r in responses]
    assert all("finishReason" not in c for c in text)
    assert (last["finishReason"], "content" in last, evidence in last) == (reason, False, True)
    if habit == "safety_stop":
        assert any(r.get("blocked") for r in last["safetyRatings"])
    words = [p["text"] for c in text for p in c["content"]["parts"]]
    full = [p["text"] for r in plain for p in r["candidates"][0]["content"]["parts"]]
    assert words == full[: len(full) // 2]
    answer = json.loads((await call((habit,), protocol="gemini", stream=False)).body)
    assert answer["candidates"][0]["finishReason"] == reason


@pytest.mark.parametrize(("protocol", "finish"), [("openai", "content_filter"),
                                                  ("anthropic", "refusal")])
async def test_a_filter_stop_in_the_other_protocols(
    autojump_clock: Any, protocol: str, finish: str
) -> None:
    events = [json.loads(d) for _, d in (await call(("safety_stop",),
                                                    protocol=protocol)).events()
              if d != "[DONE]"]
    if protocol == "openai":
        reasons = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    else:
        reasons = [e["delta"]["stop_reason"] for e in events if e["type"] == "message_delta"]
    assert reasons == [finish]


async def test_audio_deltas_carry_the_transcript_then_the_expiry(autojump_clock: Any) -> None:
    reply, plain = await call(("audio",)), await call(())
    spoken = [d["audio"] for d in deltas(reply) if "audio" in d]
    *parts, last = spoken
    first = reply.chunks()[0]
    assert parts[0]["id"] == "audio_" + first["id"].removeprefix("chatcmpl-")
    assert "".join(p["transcript"] for p in parts) == content(plain)
    assert all(base64.b64decode(p["data"]) == bytes(48 * len(p["transcript"])) for p in parts)
    assert last == {"expires_at": first["created"] + 3600}
    assert content(reply) == ""
    message = json.loads((await call(("audio",), stream=False)).body)["choices"][0]["message"]
    assert (message["content"], message["audio"]["transcript"]) == (None, content(plain))


def test_habits_are_chosen_per_model_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "tlproxy.toml"
    table = '[providers.sim]\nkind = "sim"\n[providers.sim.sim_models]\n'
    path.write_text(table + '"a" = { habits = ["gzip", "no_done"] }\n"b" = {}\n')
    models = load_config(path).providers["sim"].sim_models
    assert (models["a"].habits, models["b"].habits) == (("gzip", "no_done"), ())
    path.write_text(table + '"a" = { habits = ["gzip", "teleport"] }\n')
    with pytest.raises(ConfigError, match=r"tlproxy.toml:4: .*habits\[1\]: Invalid enum"):
        load_config(path)
