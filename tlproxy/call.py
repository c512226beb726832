"""One request as the engine sees it: a value built once by the edge and passed down.

The edge decodes a body (`wire`), authenticates its key, and builds a
`ChatCall` or `EmbeddingCall`; the router, the engine, the limiter's
estimate, the classifier and the ledger read the facts from it instead of
each reading the raw body again with its own idea of a default.

The one default worth naming: a request without ``max_completion_tokens`` or
``max_tokens`` asked for no particular amount of output, so its
`ChatFacts.requested_output` is 0. The router's context check then reserves
nothing beyond the prompt (as OpenAI does: without a cap, an answer may run
to the end of the window, and such a request is never refused for its
length), and a key's token reservation is the prompt alone, corrected by the
actual usage when the request settles. A made-up figure (256, say) would
refuse long prompts OpenAI serves, and reserve tokens nobody asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from .config import ClientKey
from .policy import Signals, extract_signals
from .wire import ChatRequest, EmbeddingRequest

__all__ = ["ChatCall", "ChatFacts", "EmbeddingCall", "last_user_text"]


class ChatFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the proxy derives from a chat body, once: routing, estimates, the classifier."""

    # The name in `model`, as sent: an intent, a catalog id, or an alias.
    requested: str
    # The fast policy signals (the prompt's size among them).
    signals: Signals
    # The text of the last user message: what the semantic classifier reads,
    # and what a shadow comparison shows as the question.
    last_user_text: str
    # Output tokens the client capped the answer at; 0 when it set no cap.
    requested_output: int
    # The parameter that cap came from, for the 400 that names it.
    output_param: str

    @classmethod
    def of(cls, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> ChatFacts:
        """The facts of a decoded chat body (plain JSON); never raises."""
        param = "max_completion_tokens" if body.get("max_completion_tokens") else "max_tokens"
        output = body.get(param) or 0
        if not isinstance(output, int) or isinstance(output, bool):
            output = 0
        return cls(requested=str(body.get("model") or ""),
                   signals=extract_signals(body, headers),
                   last_user_text=last_user_text(body),
                   requested_output=output, output_param=param)

    @property
    def prompt_tokens(self) -> int:
        """The prompt's size in tokens, estimated from its characters."""
        return self.signals.prompt_tokens


class ChatCall(msgspec.Struct, frozen=True, kw_only=True):
    """A chat completion request, authenticated and decoded, with its facts."""

    id: str
    # When the request arrived, on trio's clock (the race's): every time the
    # engine measures for this request (the client's TTFT, a shadow's
    # duration) is from here.
    arrived: float
    key: ClientKey | None
    headers: Mapping[str, str]
    # The body as decoded plain objects: what goes upstream, untouched.
    body: dict[str, Any]
    facts: ChatFacts
    stream: bool
    # Whether the client asked for the usage chunk of a stream.
    include_usage: bool

    @classmethod
    def of(cls, chat: ChatRequest, *, id: str, arrived: float, key: ClientKey | None,
           headers: Mapping[str, str], body: dict[str, Any], facts: ChatFacts) -> ChatCall:
        """The call of a validated request. Only what is read later is kept of the typed
        request, not the request itself: a long prompt is held once (`body`) for as
        long as its answer streams, not twice."""
        options = chat.stream_options
        return cls(id=id, arrived=arrived, key=key, headers=headers, body=body, facts=facts,
                   stream=bool(chat.stream), include_usage=bool(options and options.include_usage))


class EmbeddingCall(msgspec.Struct, frozen=True, kw_only=True):
    """An embeddings request, authenticated and decoded."""

    id: str
    arrived: float
    key: ClientKey | None
    embedding: EmbeddingRequest
    body: dict[str, Any]


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message (its text parts joined), or ""."""
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text") or "") for p in content
                                if isinstance(p, dict))
    return ""
