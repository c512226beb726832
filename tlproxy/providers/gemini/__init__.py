"""Google's Gemini API behind OpenAI's Chat Completions and Embeddings.

Clients speak OpenAI; this adapter speaks the Gemini API's
``models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``,
``:embedContent`` and ``:batchEmbedContents`` (key in ``x-goog-api-key``, never
in the URL). As with the Anthropic adapter, a pure core (plain dicts in and
out, no I/O, no clock) does the translation and `GeminiProvider` only moves
bytes:

* `.request`: OpenAI chat and embeddings requests -> Gemini requests (turns,
  function responses by name, thought signatures, ``generationConfig``);
* `.answer`: Gemini answers, stream events, embeddings and errors -> OpenAI
  shapes;
* `.adapter`: `GeminiProvider`, the HTTP I/O.

Each module opens with the differences between the protocols that shape it.
"""

from __future__ import annotations

from .adapter import GeminiProvider
from .answer import (
    GeminiStreamTranslator,
    from_gemini_embed_response,
    from_gemini_response,
    map_gemini_error,
)
from .request import to_gemini_embed_request, to_gemini_request

__all__ = [
    "GeminiProvider",
    "GeminiStreamTranslator",
    "from_gemini_embed_response",
    "from_gemini_response",
    "map_gemini_error",
    "to_gemini_embed_request",
    "to_gemini_request",
]
