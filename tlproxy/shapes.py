"""OpenAI's Chat Completions shapes, made exact: pure functions over decoded JSON.

Whatever the upstream, what the client receives is what OpenAI sends: every
chunk carries ``usage`` (``null`` until the last) when the client asked for
usage and none when it did not, the usage-only chunk the proxy asked for
for itself is dropped when the client did not ask, every choice carries
``finish_reason``, and a completion's message carries ``content`` and
``refusal``. Fields an adapter added for the pricing
(`pricing.CACHE_WRITE_TOKENS`) never leave the proxy.

`token_kind` says what a chunk's first token carries: the race's notion of
progress, the statistics' kind of TTFT.
"""

from __future__ import annotations

from typing import Any

from .pricing import CACHE_WRITE_TOKENS
from .providers.base import Chunk

__all__ = [
    "first_choice_text",
    "public_usage",
    "repair_chunk",
    "repair_completion",
    "token_kind",
    "total_tokens",
]


def total_tokens(usage: Any) -> int | None:
    """A usage object's ``total_tokens``, or None when it has none."""
    if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
        return int(usage["total_tokens"])
    return None


def first_choice_text(chunk: Chunk) -> list[str]:
    """The content of choice 0's delta in a chunk, if any (what shadow mode compares)."""
    return [text for choice in chunk.get("choices") or ()
            if choice.get("index", 0) == 0
            and (text := (choice.get("delta") or {}).get("content"))]


# Delta fields that carry a token, and the kind each is counted as, in the
# order a delta holding several is named by.
_DELTA_KINDS = (
    ("content", "content"),
    ("refusal", "refusal"),
    ("tool_calls", "tool_calls"),
    ("function_call", "tool_calls"),  # the legacy single call
    ("reasoning_content", "reasoning"),  # vLLM, DeepSeek
    ("reasoning", "reasoning"),  # OpenRouter, Groq, vLLM's newer name
    ("reasoning_details", "reasoning"),  # OpenRouter's structured form
)


def token_kind(chunk: Chunk) -> str | None:
    """What a stream chunk's first token carries, or None when it carries none.

    Any delta with something in it is progress: ``content``, ``refusal``,
    ``tool_calls`` (or the legacy ``function_call``), ``reasoning`` (the
    ``reasoning_content``, ``reasoning`` or ``reasoning_details`` field) and
    ``audio`` (an ``audio`` delta with ``data`` or a ``transcript``). A
    role-only chunk (``{"role": "assistant", "content": ""}``), the usage
    chunk and a chunk with no choices (Azure's filter results) carry none.
    A choice that finishes without any of these is ``finish``, so an empty
    answer is not waited on forever.
    """
    choices = chunk.get("choices")
    finished = False
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for field, kind in _DELTA_KINDS:
                if delta.get(field):
                    return kind
            audio = delta.get("audio")
            if isinstance(audio, dict) and (audio.get("data") or audio.get("transcript")):
                return "audio"
        finished = finished or bool(choice.get("finish_reason"))
    return "finish" if finished else None


def repair_chunk(chunk: Chunk, include_usage: bool) -> bool:
    """Make one chunk exactly what OpenAI sends (in place); False means drop it."""
    choices = chunk.get("choices")
    if include_usage:
        chunk.setdefault("usage", None)
        public_usage(chunk)
    else:
        if not choices and chunk.get("usage") is not None:
            return False  # the usage chunk the proxy asked for, not the client
        chunk.pop("usage", None)
    for choice in choices or ():
        if "finish_reason" not in choice:
            choice["finish_reason"] = None
    return True


def public_usage(holder: dict[str, Any]) -> None:
    """OpenAI's usage fields only: what an adapter added for the pricing stays inside."""
    usage = holder.get("usage")
    if usage and CACHE_WRITE_TOKENS in usage:
        # A new dict: the race's record of the attempt keeps the original.
        holder["usage"] = {k: v for k, v in usage.items() if k != CACHE_WRITE_TOKENS}


def repair_completion(answer: dict[str, Any]) -> None:
    """Make a ``chat.completion`` exactly what OpenAI sends (in place)."""
    public_usage(answer)
    for choice in answer.get("choices") or ():
        choice.setdefault("logprobs", None)
        message = choice.get("message")
        if isinstance(message, dict):
            message.setdefault("content", None)
            message.setdefault("refusal", None)
