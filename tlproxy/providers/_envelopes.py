"""Building OpenAI answer shapes, for the adapters that translate another protocol's answers.

A translated answer must be indistinguishable from OpenAI's own: the same
keys, in the same order, with the fields OpenAI always sends (``refusal``,
``annotations``, ``logprobs``, ``service_tier``, ``system_fingerprint``, the
token details) present even when the upstream has nothing to put in them.
Pure functions; the protocol-specific parts (ids, finish reasons, token
counts) are worked out by each adapter and passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import JSON, Chunk

__all__ = [
    "ROLE_DELTA",
    "assistant_message",
    "chat_completion",
    "choice",
    "completion_chunk",
    "count",
    "finish_reason",
    "openai_usage",
    "usage_chunk",
]

# The first delta of every choice in a stream, as OpenAI sends it.
ROLE_DELTA: Mapping[str, Any] = {"role": "assistant", "content": "", "refusal": None}


def finish_reason(reasons: Mapping[str, str], native: Any) -> str:
    """OpenAI's finish reason for a native one; ``stop`` for any it has no word for."""
    return reasons.get(str(native), "stop")


def count(native: Any, key: str) -> int:
    """A token count from a native usage object; 0 when absent or not an integer."""
    value = native.get(key) if isinstance(native, dict) else None
    return value if isinstance(value, int) else 0


def openai_usage(*, prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> JSON:
    """OpenAI's ``usage`` object: ``prompt`` includes ``cached``, ``completion`` ``reasoning``."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def assistant_message(text: str, calls: list[JSON]) -> JSON:
    """A choice's ``message``: ``content`` is null when only tool calls came back.

    The ``tool_calls`` key is left out when there are none, as OpenAI does.
    """
    message: JSON = {
        "role": "assistant",
        "content": text if text or not calls else None,
        "refusal": None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = calls
    return message


def chat_completion(
    completion_id: str, *, created: int, model: str, choices: list[JSON], usage: JSON
) -> JSON:
    """A ``chat.completion`` around translated choices (see `choice`)."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": None,
    }


def choice(index: int, message: JSON, finish: str) -> JSON:
    """One entry of a ``chat.completion``'s ``choices``."""
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}


def completion_chunk(
    completion_id: str,
    *,
    created: int,
    model: str,
    delta: JSON,
    index: int = 0,
    finish: str | None = None,
    include_usage: bool,
) -> Chunk:
    """A ``chat.completion.chunk`` with one choice's delta.

    With ``include_usage`` it carries ``"usage": null``, as every chunk does
    when the client asked for usage; only the last one (`usage_chunk`) has it.
    """
    chunk: Chunk = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": None,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(completion_id: str, *, created: int, model: str, usage: JSON) -> Chunk:
    """A stream's last chunk when usage was asked for: no choices, only ``usage``."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": None,
        "choices": [],
        "usage": usage,
    }
