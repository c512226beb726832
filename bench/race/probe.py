"""What the measured phase records beside the client: the server's decisions and attempts, CPU.

`Probe` wraps two of the running server's methods in place (the classifier's ``classify`` and
the engine's ``_on_record``) to time every decision and price every upstream attempt;
`CpuWindow` reads this process's and the machine's CPU time around a phase.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench.overhead.stats import machine_ticks
from tlproxy.classifier import Embed
from tlproxy.config import Config
from tlproxy.server import Running

__all__ = ["CpuWindow", "Probe", "price_attempt"]


@dataclass
class Probe:
    """What the server tells us, collected only while `on` (the measured phase)."""

    config: Config
    on: bool = False
    decisions: list[float] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def install(self, running: Running) -> None:
        engine = running.app.engine
        classifier = engine.classifier
        if classifier is None:
            raise SystemExit("the classifier is not enabled on the server")
        classify = classifier.classify

        async def timed_classify(prompt: str, *, embed: Embed | None = None) -> str | None:
            start = trio.current_time()
            try:
                return await classify(prompt, embed=embed)
            finally:
                if self.on:
                    self.decisions.append(trio.current_time() - start)

        classifier.classify = timed_classify  # type: ignore[method-assign]
        on_record = engine._on_record

        # The engine calls `self._on_record(record, ...)` per attempt; whatever else it
        # passes (the request and its body, in recent versions) is handed on untouched.
        def recorded(record: Any, *args: Any, **kwargs: Any) -> Any:
            if self.on:
                body = next((a for a in args if isinstance(a, dict) and "messages" in a), None)
                request = next((a for a in args if isinstance(getattr(a, "id", None), str)),
                               None)
                priced = price_attempt(self.config, record, body)
                priced["request_id"] = None if request is None else request.id
                self.attempts.append(priced)
            return on_record(record, *args, **kwargs)

        engine._on_record = recorded  # type: ignore[method-assign]


def _message_chars(body: dict[str, Any] | None) -> int | None:
    if body is None:
        return None
    chars = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return chars


def price_attempt(config: Config, record: Any, body: dict[str, Any] | None) -> dict[str, Any]:
    """One attempt, priced at its model's catalog prices (USD per million tokens)."""
    model = config.model(record.candidate.key)
    usage = record.usage if isinstance(record.usage, dict) else None
    chars = _message_chars(body)
    if usage is not None and isinstance(usage.get("prompt_tokens"), int):
        prompt_tokens, estimated = usage["prompt_tokens"], False
    else:
        prompt_tokens, estimated = (math.ceil(chars / 4) if chars is not None else None), True
    if usage is not None and isinstance(usage.get("completion_tokens"), int):
        output_tokens = usage["completion_tokens"]
    else:
        output_tokens = max(0, record.chunks - 1)  # the role chunk carries no token
    cost = None
    if model is not None and prompt_tokens is not None:
        cost = (prompt_tokens * model.prices.input + output_tokens * model.prices.output) / 1e6
    started = record.started_at
    return {
        "model": record.candidate.key,
        "started_at": started,
        "first_token_at": record.first_token_at,
        "tier": record.candidate.tier,
        "outcome": record.outcome,
        "hedge": record.hedge,
        "fallback": record.fallback,
        "ttft": None if record.first_token_at is None else record.first_token_at - started,
        "duration": None if record.ended_at is None else record.ended_at - started,
        "chunks": record.chunks,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "estimated": estimated,
        "cost_usd": cost,
        "error": None if record.error is None else str(record.error),
    }


class CpuWindow:
    """This process's CPU and the whole machine's, over the measured phase (Linux /proc)."""

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.own = self._own()
        self.busy = self._busy()

    @staticmethod
    def _own() -> float:
        times = os.times()
        return times.user + times.system

    @staticmethod
    def _busy() -> float | None:
        """Seconds all cores spent busy since boot (not idle, not waiting for I/O)."""
        try:
            busy, _total = machine_ticks(Path("/proc/stat").read_text())
        except (OSError, ValueError):
            return None
        return busy / os.sysconf("SC_CLK_TCK")

    def close(self) -> dict[str, float | None]:
        wall = time.monotonic() - self.wall
        own = self._own() - self.own
        busy = self._busy()
        machine = None if busy is None or self.busy is None else busy - self.busy
        return {
            "wall_s": wall,
            "own_cpu_pct": 100 * own / wall,
            "other_cpu_pct": None if machine is None else 100 * max(0.0, machine - own) / wall,
            "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0])
            if Path("/proc/loadavg").exists() else None,
        }


