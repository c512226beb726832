"""What pieces of the hot path cost, in-process: CPU microseconds per call.

Run it as ``python -m bench.machinery`` (``--help`` for the options). Each case runs ``--calls``
times inside one ``trio.run`` and is timed with ``time.process_time``; the median of
``--repeat`` runs is reported. No sockets: these are the costs of the proxy's own machinery
around an upstream call, the figures behind the choices in ``docs/benchmarks.md``:

* ``race, whole answer``: `race` for one candidate whose answer comes whole at once (a JSON
  request); ``in turn, whole answer``: the same through `turns.in_turn`; ``direct call``: the
  upstream call alone under a cancel scope with a deadline.
* ``per event: JSON work``: one streamed event's whole way through the proxy's JSON code: SSE
  decoding, parsing, the OpenAI translator, `token_kind`, `repair_chunk`, encoding and SSE
  framing (what forwarding the event's bytes untouched could save at most).
* ``per event: channel hand-over``: a chunk passed from one task to another through a memory
  channel, both tasks yielding once per chunk as a socket read and write do, against
  ``per event: one task`` doing the same two yields alone.
* ``per read: new cancel scope`` (a deadline scope entered and left around each read) and
  ``per read: deadline moved`` (one scope whose deadline is set before each read), each
  including the read's one yield.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import trio

from tlproxy.engine import _single
from tlproxy.providers._http import event_json
from tlproxy.providers.openai import OpenAIStreamTranslator
from tlproxy.race import Candidate, race
from tlproxy.shapes import repair_chunk, token_kind
from tlproxy.sse import SSEDecoder, encode_data
from tlproxy.turns import in_turn

_ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1764000000,
           "model": "gpt-5-nano",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                        "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
_EVENT = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1764000000,'
          b'"model":"gpt-5-nano","system_fingerprint":"fp_1","choices":[{"index":0,'
          b'"delta":{"content":" token"},"logprobs":null,"finish_reason":null}]}\n\n')
_CANDIDATES = [Candidate("gpt-5-nano", "economy", math.inf, answer_deadline=120.0)]


async def _call(_candidate: Candidate) -> dict[str, Any]:
    await trio.lowlevel.checkpoint()  # the upstream's answer, ready at once
    return _ANSWER


@contextlib.asynccontextmanager
async def _open(candidate: Candidate) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    yield _single(await _call(candidate))


async def race_whole(calls: int) -> None:
    for _ in range(calls):
        async with race(candidates={"economy": _CANDIDATES}, decide="economy",
                        open_stream=_open, first_token_kind=lambda _: "answer") as winner:
            assert winner.first_chunks
        await trio.lowlevel.checkpoint()


async def in_turn_whole(calls: int) -> None:
    for _ in range(calls):
        await in_turn(tier="economy", candidates=_CANDIDATES, call=_call, max_attempts=4)


async def direct_call(calls: int) -> None:
    for _ in range(calls):
        with trio.move_on_after(120.0):
            await _call(_CANDIDATES[0])


async def json_work(calls: int) -> None:
    encode = msgspec.json.Encoder().encode
    translator = OpenAIStreamTranslator()
    for _ in range(calls):
        for event in SSEDecoder().feed(_EVENT):
            for chunk in translator.feed(event.event, event_json(event.data)):
                token_kind(chunk)
                if repair_chunk(chunk, False):
                    encode_data(encode(chunk))


async def hand_over(calls: int) -> None:
    send, receive = trio.open_memory_channel[int](256)

    async def producer() -> None:
        async with send:
            for item in range(calls):
                await trio.lowlevel.checkpoint()  # the upstream read
                await send.send(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        async for _ in receive:
            await trio.lowlevel.checkpoint()  # the write to the client


async def one_task(calls: int) -> None:
    for _ in range(calls):
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()


async def new_scope(calls: int) -> None:
    for _ in range(calls):
        with trio.CancelScope(deadline=trio.current_time() + 30.0):
            await trio.lowlevel.checkpoint()


async def moved_deadline(calls: int) -> None:
    with trio.CancelScope() as scope:
        for _ in range(calls):
            scope.deadline = trio.current_time() + 30.0
            await trio.lowlevel.checkpoint()


CASES: dict[str, Callable[[int], Awaitable[None]]] = {
    "race, whole answer": race_whole,
    "in turn, whole answer": in_turn_whole,
    "direct call": direct_call,
    "per event: JSON work": json_work,
    "per event: channel hand-over": hand_over,
    "per event: one task": one_task,
    "per read: new cancel scope": new_scope,
    "per read: deadline moved": moved_deadline,
}


def measure(case: Callable[[int], Awaitable[None]], calls: int, repeat: int) -> float:
    """Median CPU microseconds per call over `repeat` runs."""
    runs = []
    for _ in range(repeat):
        started = time.process_time()
        trio.run(case, calls)
        runs.append((time.process_time() - started) / calls * 1e6)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.machinery",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per run (20000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case (5)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for name, case in CASES.items():
        print(f"{name:<32} {measure(case, args.calls, args.repeat):8.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
