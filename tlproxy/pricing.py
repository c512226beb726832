"""Usage in, dollars out: reading, estimating and pricing token counts.

Pure functions over values: no I/O, no clock. The engine hands over what the
upstream said (``usage`` in OpenAI's shape, which every adapter produces) and
the catalog entry of the model that served it; the ledger stores the result.

Where usage comes from, in order of trust:

1. the upstream's own ``usage`` object (`usage_from_openai`): exact;
2. when there is none (a stream cancelled before its usage chunk, a loser of
   the race, an upstream that does not report it), `estimate_usage` counts
   characters and divides by four. That is deliberately tokenizer-free: a
   tokenizer per provider is heavy, slow to load and still wrong for the
   other providers, while a loser's cost only has to be the right order of
   magnitude for "what does hedging cost". Rows priced from an estimate are
   marked ``estimated`` so reports can say how much of the spend is a guess.

Prices are USD per million tokens (`tlproxy.config.Prices`). OpenAI counts
cached prompt tokens inside ``prompt_tokens``; so do our adapters. A model
with `long_context` prices is billed at those rates for the *whole* request
once its prompt is longer than the threshold (strictly more tokens than
``above_input_tokens``), which is how Gemini and OpenAI bill: crossing the
line by one token reprices every token, not just the ones above it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from .config import Config, LongContextPrices, ModelConfig, Prices

__all__ = [
    "CACHE_WRITE_TOKENS",
    "Usage",
    "cost_usd",
    "estimate_usage",
    "premium_reference_cost",
    "price_attempt",
    "reference_model",
    "usage_from_openai",
]

_encode = msgspec.json.Encoder().encode

# The estimation rule, in one place (docs/accounting.md repeats it).
CHARS_PER_TOKEN = 4
# Role, separators and name that every chat message costs beyond its text.
TOKENS_PER_MESSAGE = 4

# A key an adapter may add to an OpenAI ``usage`` object: how many prompt
# tokens were written to the provider's prompt cache. OpenAI's usage has no
# such field, so the race takes the key out before a client sees the usage.
CACHE_WRITE_TOKENS = "tlproxy_cache_write_tokens"


class Usage(msgspec.Struct, frozen=True):
    """Tokens of one upstream attempt. ``prompt_tokens`` includes ``cached_tokens``."""

    prompt_tokens: int
    cached_tokens: int = 0
    completion_tokens: int = 0
    # True when counted from characters rather than reported by the upstream.
    estimated: bool = False
    # Prompt tokens written to the provider's prompt cache (Anthropic bills
    # them above the input price). Part of ``prompt_tokens``, not cached.
    cache_write_tokens: int = 0


def _count(value: Any) -> int | None:
    # bool is an int subclass; a `true` in a usage object is not a count.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def usage_from_openai(obj: Mapping[str, Any] | None) -> Usage | None:
    """Read an OpenAI ``usage`` object; None when it is absent or unusable.

    Chat usage has ``prompt_tokens``, ``completion_tokens`` and optionally
    ``prompt_tokens_details.cached_tokens``. Embeddings usage has only
    ``prompt_tokens`` and ``total_tokens``: completion is then
    ``total - prompt`` (zero). Cached tokens are capped at the prompt, so a
    confused upstream can never make a request cost less than nothing.
    """
    if not isinstance(obj, Mapping):
        return None
    prompt = _count(obj.get("prompt_tokens"))
    if prompt is None:
        return None
    completion = _count(obj.get("completion_tokens"))
    if completion is None:
        total = _count(obj.get("total_tokens"))
        completion = max(0, total - prompt) if total is not None else 0
    details = obj.get("prompt_tokens_details")
    cached = min(_count(details.get("cached_tokens")) or 0 if isinstance(details, Mapping)
                 else 0, prompt)
    written = min(_count(obj.get(CACHE_WRITE_TOKENS)) or 0, prompt - cached)
    return Usage(prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion,
                 cache_write_tokens=written)


def _tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        # Only text parts: images, audio and files are billed by rules of
        # their own (image tiles, seconds) that characters cannot estimate.
        return sum(len(part["text"]) for part in content
                   if isinstance(part, dict) and isinstance(part.get("text"), str))
    return 0


def _message_chars(message: Mapping[str, Any]) -> int:
    chars = _content_chars(message.get("content"))
    refusal = message.get("refusal")
    if isinstance(refusal, str):
        chars += len(refusal)
    # An assistant's earlier tool calls are prompt text on the next turn.
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            chars += sum(len(v) for v in (function.get("name"), function.get("arguments"))
                         if isinstance(v, str))
    return chars


def _schema_chars(body: Mapping[str, Any]) -> int:
    """JSON size of what the upstream injects into the prompt: tools and response schema."""
    parts = [body.get("tools"), body.get("functions")]
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        parts.append(response_format.get("json_schema"))
    chars = 0
    for part in parts:
        if part:
            try:
                chars += len(_encode(part).decode())
            except (TypeError, msgspec.EncodeError):
                continue  # not JSON-shaped: nothing the upstream would bill either
    return chars


def _embedding_input_tokens(value: Any) -> int:
    if isinstance(value, str):
        return _tokens(len(value))
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)  # already token ids
        return sum(_embedding_input_tokens(v) for v in value)
    return 0


def estimate_usage(
    request_body: Mapping[str, Any],
    output_chars: int,
    *,
    kind: Literal["chat", "embedding"] = "chat",
) -> Usage:
    """Estimate usage without a tokenizer, for attempts the upstream never reported.

    The rule (one token per four characters, rounded up):

    * chat prompt: per message, ``ceil(text chars / 4) + 4``, where text is
      the string content or the ``text`` parts of a content list, a refusal,
      and the names and arguments of earlier tool calls; plus
      ``ceil(chars / 4)`` of the JSON of ``tools`` / ``functions`` and of a
      ``response_format.json_schema``. Images, audio and files count nothing.
    * embeddings: ``ceil(chars / 4)`` per input string; token-id arrays count
      their length. No completion.
    * completion: ``ceil(output_chars / 4)``, the characters streamed so far.

    It is low for scripts without spaces between words (CJK: about one token
    a character) and for images; high for code-heavy English. Never raises.
    """
    if kind == "embedding":
        return Usage(prompt_tokens=_embedding_input_tokens(request_body.get("input")),
                     estimated=True)
    messages = request_body.get("messages")
    prompt = 0
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, Mapping):
            prompt += _tokens(_message_chars(message)) + TOKENS_PER_MESSAGE
    prompt += _tokens(_schema_chars(request_body))
    return Usage(prompt_tokens=prompt, completion_tokens=_tokens(max(0, output_chars)),
                 estimated=True)


def cost_usd(model: ModelConfig, usage: Usage) -> float:
    """What `usage` on `model` costs, in USD, from the catalog's prices.

    Cached prompt tokens cost ``cached_input`` (unset: ``input``, no
    discount); prompt tokens written to the cache ``cache_write_input``
    (unset: ``input``, no surcharge); the other prompt tokens ``input``;
    completion tokens (reasoning included) ``output``. With `long_context`
    prices and a prompt of more than ``above_input_tokens``, the long-context
    table prices the whole request, with the same rule for its own unset
    prices.
    """
    table: Prices | LongContextPrices = model.prices
    long = model.prices.long_context
    if long is not None and usage.prompt_tokens > long.above_input_tokens:
        table = long
    input_price = table.input
    cached_price = input_price if table.cached_input is None else table.cached_input
    write_price = input_price if table.cache_write_input is None else table.cache_write_input
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    fresh = usage.prompt_tokens - cached - written
    return (fresh * input_price + cached * cached_price + written * write_price
            + usage.completion_tokens * table.output) / 1_000_000


def premium_reference_cost(usage: Usage, premium_model: ModelConfig | None) -> float:
    """What the same usage would have cost on `premium_model`: the "all premium" baseline.

    The saving reported is the sum of these over the requests actually served
    minus what was spent. The baseline keeps the served request's token
    counts (another model's tokenizer would count a little differently, and
    its cache might not have hit): it answers "what if every request had gone
    to premium", not "what would premium have answered". With no premium model
    in the catalog there is no baseline: 0.0.
    """
    if premium_model is None:
        return 0.0
    return cost_usd(premium_model, usage)


def price_attempt(
    model: ModelConfig, usage: Usage, premium_model: ModelConfig | None, *, winner: bool
) -> tuple[float, float]:
    """``(cost_usd, reference_cost_usd)`` of one attempt, as the ledger stores them.

    Only a winner has a reference cost: the all-premium world would have
    served the request once, without losers. An embedding is its own
    reference, since no premium model could have served it (vectors of
    different models are not interchangeable), so it saves nothing and
    costs nothing extra.
    """
    cost = cost_usd(model, usage)
    if not winner:
        return cost, 0.0
    if model.tier == "embedding":
        return cost, cost
    return cost, premium_reference_cost(usage, premium_model)


def reference_model(config: Config) -> ModelConfig | None:
    """The premium model savings are measured against: the catalog's first premium model.

    The catalog order is the team's preference order, so its first premium
    model is where "send everything to premium" would have sent a request.
    """
    return next((m for m in config.models if m.tier == "premium"), None)
