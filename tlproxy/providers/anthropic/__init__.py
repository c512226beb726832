"""Anthropic's Messages API behind OpenAI's Chat Completions.

Clients speak OpenAI; this adapter speaks ``POST /v1/messages`` (headers
``x-api-key`` and ``anthropic-version: 2023-06-01``). The translation is a pure
core (plain dicts in and out, no I/O, no clock) and a thin `AnthropicProvider`
around it:

* `.request`: OpenAI chat requests -> Messages requests (system prompt,
  alternating turns, tool results, structured outputs);
* `.answer`: Messages answers, stream events and errors -> OpenAI shapes;
* `.adapter`: `AnthropicProvider`, the HTTP I/O.

Each module opens with the differences between the protocols that shape it.
"""

from __future__ import annotations

from .adapter import ANTHROPIC_VERSION, AnthropicProvider
from .answer import AnthropicStreamTranslator, from_anthropic_response, map_anthropic_error
from .request import to_anthropic_request

__all__ = [
    "ANTHROPIC_VERSION",
    "AnthropicProvider",
    "AnthropicStreamTranslator",
    "from_anthropic_response",
    "map_anthropic_error",
    "to_anthropic_request",
]
