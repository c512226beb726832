from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

from tlproxy.classifier import ClassifierConfig, TaskClassifier, cosine, decode_embedding

VOCAB = ["summarize", "key", "points", "extract", "dates", "python", "function", "bug",
         "hello", "trip", "article", "invoice", "list", "code", "joke"]


def bag(text: str) -> list[float]:
    words = text.lower().replace(",", " ").split()
    return [float(sum(w.startswith(v) for w in words)) for v in VOCAB] + [0.01]


async def fake_embed(texts: list[str]) -> list[list[float]]:
    return [bag(t) for t in texts]


CONFIG = ClassifierConfig(enabled=True, min_similarity=0.3, examples={
    "summarization": ["summarize the article", "key points please"],
    "extraction": ["extract the dates from the invoice", "list the dates"],
    "code": ["write a python function", "fix the bug in my code"],
})


async def test_nearest_example_wins() -> None:
    classifier = TaskClassifier(CONFIG, fake_embed)
    assert await classifier.classify("Could you summarize this long article?") == "summarization"
    assert await classifier.classify("There is a bug in my python code") == "code"
    assert await classifier.classify("extract all dates") == "extraction"


async def test_unrelated_prompt_is_unknown() -> None:
    assert await TaskClassifier(CONFIG, fake_embed).classify("hello trip joke") is None


async def test_cache_avoids_second_embedding() -> None:
    calls: list[list[str]] = []

    async def counting(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return await fake_embed(texts)

    classifier = TaskClassifier(CONFIG, counting)
    for _ in range(3):
        await classifier.classify("summarize the article")
    assert len(calls) == 2  # the examples once, the prompt once
    assert (classifier.hits, classifier.misses) == (2, 1)


async def test_each_call_goes_through_the_embed_of_the_classification_that_made_it() -> None:
    """So the engine can account each embedding call to the request that caused it."""
    calls: list[tuple[str, list[str]]] = []

    def embed_for(cause: str) -> Callable[[list[str]], Awaitable[list[list[float]]]]:
        async def embed(texts: list[str]) -> list[list[float]]:
            calls.append((cause, texts))
            return await fake_embed(texts)
        return embed

    classifier = TaskClassifier(CONFIG, embed_for("default"))
    assert await classifier.classify("summarize the article", embed=embed_for("req_1")) == (
        "summarization")
    assert await classifier.classify("fix the bug", embed=embed_for("req_2")) == "code"
    assert await classifier.classify("fix the bug", embed=embed_for("req_3")) == "code"
    examples = [text for texts in CONFIG.examples.values() for text in texts]
    # The examples once, for the request that needed them first; a cached label, no call.
    assert calls == [("req_1", examples), ("req_1", ["summarize the article"]),
                     ("req_2", ["fix the bug"])]


async def test_slow_embedding_times_out_as_unknown(autojump_clock: trio.abc.Clock) -> None:
    async def slow(texts: list[str]) -> list[list[float]]:
        await trio.sleep(10)
        return await fake_embed(texts)

    classifier = TaskClassifier(CONFIG, slow)
    start = trio.current_time()
    assert await classifier.classify("summarize the article") is None
    assert trio.current_time() - start == CONFIG.timeout
    assert classifier.failures == 1


async def test_failing_embedding_is_unknown() -> None:
    async def broken(texts: list[str]) -> list[list[float]]:
        raise RuntimeError("embedding tier down")

    assert await TaskClassifier(CONFIG, broken).classify("summarize") is None


def test_cosine_and_base64() -> None:
    assert cosine([1.0, 0.0], [1.0, 0.0]) == 1.0
    assert cosine([1.0, 0.0], [0.0, 1.0]) == 0.0
    assert cosine([0.0], [1.0]) == 0.0
    assert decode_embedding("AACAPwAAAEA=") == [1.0, 2.0]
    assert math.isclose(cosine([1, 2], [2, 4]), 1.0)
