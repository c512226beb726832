"""The semantic task classifier: a slow signal.

Prompt cues catch "Summarize this"; they miss "What are the three things I
should remember from this memo?". The classifier embeds the last user turn
with the embedding tier and picks the label of the most similar configured
example (nearest neighbour by cosine similarity), if it is similar enough.

It is declared slow because it calls an embedding model: the race starts
upstream requests for every tier still possible while it runs, so its
latency overlaps the upstream's instead of adding to it. Results are cached
by prompt text (a small LRU), and a classification that fails or times out
counts as "unknown", which no rule matches: the request is never failed by
its classifier.

Its embedding calls are billed like any other: `classify` takes the embed
function to use for one request, so the engine can account each call to the
request that caused it (the examples' vectors, embedded once, to the request
that needed them first).
"""

from __future__ import annotations

import base64
import logging
import math
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import trio

from .config import ClassifierConfig

__all__ = ["ClassifierConfig", "TaskClassifier", "cosine"]

log = logging.getLogger("tlproxy")

Embed = Callable[[list[str]], Awaitable[list[list[float]]]]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def decode_embedding(value: list[float] | str) -> list[float]:
    """An OpenAI embedding, whether sent as floats or as base64 float32."""
    if isinstance(value, str):
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return value


class TaskClassifier:
    def __init__(self, config: ClassifierConfig, embed: Embed) -> None:
        self.config = config
        self._embed = embed
        self._examples: list[tuple[str, list[float]]] | None = None
        self._lock = trio.Lock()
        self._cache: OrderedDict[str, str | None] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.failures = 0

    async def _example_vectors(self, embed: Embed) -> list[tuple[str, list[float]]]:
        async with self._lock:
            if self._examples is None:
                labels = [(label, text) for label, texts in self.config.examples.items()
                          for text in texts]
                vectors = await embed([text for _, text in labels])
                self._examples = [(label, v) for (label, _), v in zip(labels, vectors,
                                                                       strict=True)]
            return self._examples

    async def classify(self, prompt: str, *, embed: Embed | None = None) -> str | None:
        """The task label, or None when unknown (no prompt, low similarity, failure).

        `embed` makes this classification's embedding calls (default: the one
        the classifier was built with); a cached label makes none.
        """
        embed = embed or self._embed
        prompt = prompt.strip()[:2000]
        if not prompt:
            return None
        if prompt in self._cache:
            self.hits += 1
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        self.misses += 1
        label: str | None = None
        with trio.move_on_after(self.config.timeout) as scope:
            try:
                examples = await self._example_vectors(embed)
                (vector,) = await embed([prompt])
                best, score = max(((lab, cosine(vector, v)) for lab, v in examples),
                                  key=lambda item: item[1])
                label = best if score >= self.config.min_similarity else None
            except Exception as exc:  # a failed classifier must never fail the request
                self.failures += 1
                log.warning("task classifier failed: %s", exc)
                return None
        if scope.cancelled_caught:
            self.failures += 1
            return None
        self._cache[prompt] = label
        if len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        return label
