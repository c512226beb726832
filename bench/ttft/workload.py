"""What to send and when: prompts, request bodies and the open-loop arrival schedule.

Every choice here is a pure function of a seed and an index, so two runs with the same flags
send the same requests at the same offsets, and every endpoint of one run gets the same k-th
prompt: endpoints are compared on identical work.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

__all__ = [
    "FilePrompts",
    "PromptSource",
    "SyntheticPrompts",
    "chat_body",
    "poisson_arrivals",
    "poisson_schedule",
]

# Short common words: with the separating space they average close to 4 characters, about one
# token each in BPE vocabularies, so characters / 4 is a fair estimate of the prompt's tokens.
_VOCABULARY = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more go see way could no my than first been call who its "
    "now find long down day did get come made may part sun sea red old new big cat dog run"
)
_WORDS = tuple(_VOCABULARY.split())

_CHARS_PER_TOKEN = 4


class PromptSource(Protocol):
    """Gives the request body template (everything but model and streaming) for request k."""

    def template(self, index: int) -> dict[str, Any]:
        """The k-th request's body without ``model``/``stream``; k grows without bound."""
        ...


class SyntheticPrompts:
    """Deterministic made-up prompts of about ``input_tokens`` tokens.

    Each index gets different text (a numbered opening and its own words) so that provider
    prompt caches cannot serve later requests from earlier ones; the same index always gets the
    same text. ``output_tokens`` becomes ``max_tokens``: a cap, since the OpenAI API has no way
    to force a minimum, and the prompt asks for a long answer to get close to it.
    """

    def __init__(self, *, input_tokens: int, output_tokens: int, seed: int) -> None:
        if input_tokens < 1 or output_tokens < 1:
            raise ValueError("input and output tokens must be at least 1")
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.seed = seed

    def text(self, index: int) -> str:
        """The user message for request ``index``."""
        head = f"Request {index}. Continue this text for as long as you can: "
        target = max(self.input_tokens * _CHARS_PER_TOKEN, len(head))
        # A string seed is hashed with SHA-512 by `random`, so it is stable across processes.
        rng = random.Random(f"{self.seed}:{index}")
        # Every word is at least 2 letters plus a space, so target / 3 words always suffice;
        # one `choices` call is some 20 times cheaper than a `choice` per word.
        words = rng.choices(_WORDS, k=target // 3 + 1)
        return (head + " ".join(words))[:target]

    def template(self, index: int) -> dict[str, Any]:
        return {
            "messages": [{"role": "user", "content": self.text(index)}],
            "max_tokens": self.output_tokens,
        }


class FilePrompts:
    """Real requests from a JSONL file, one chat request body per line, used in order, cycling.

    A line needs ``messages``; ``tools``, ``max_tokens`` and any other field pass through
    unchanged. ``model``, ``stream`` and ``stream_options.include_usage`` are always set by the
    tool. ``default_max_tokens`` fills ``max_tokens`` when a line has none.
    """

    def __init__(self, lines: list[dict[str, Any]], *, default_max_tokens: int | None) -> None:
        if not lines:
            raise ValueError("the prompts file has no requests")
        self.lines = lines
        self.default_max_tokens = default_max_tokens

    @classmethod
    def load(cls, path: Path, *, default_max_tokens: int | None = None) -> FilePrompts:
        """Read ``path``; raises ValueError naming the line of the first bad request."""
        lines: list[dict[str, Any]] = []
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(line, dict) or not isinstance(line.get("messages"), list):
                raise ValueError(f"{path}:{number}: a line must be an object with 'messages'")
            lines.append(line)
        return cls(lines, default_max_tokens=default_max_tokens)

    def template(self, index: int) -> dict[str, Any]:
        body = dict(self.lines[index % len(self.lines)])
        if "max_tokens" not in body and self.default_max_tokens is not None:
            body["max_tokens"] = self.default_max_tokens
        return body


def chat_body(template: dict[str, Any], model: str) -> bytes:
    """The encoded streaming request: the template plus model and ``include_usage``."""
    options = template.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    options["include_usage"] = True
    return orjson.dumps({**template, "model": model, "stream": True, "stream_options": options})


def poisson_arrivals(rate: float, *, seed: int) -> Iterator[float]:
    """Endless Poisson arrival times (seconds from 0) at ``rate`` per second.

    The gaps are exponential draws from a private seeded RNG: the schedule is fixed before the
    first request leaves and nothing a server does can move it. That is what keeps the open
    loop free of coordinated omission.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = random.Random(seed)
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        yield t


def poisson_schedule(
    rate: float, *, seed: int, count: int | None = None, duration: float | None = None
) -> list[float]:
    """The first ``count`` arrivals, or those before ``duration`` seconds (exactly one given)."""
    if (count is None) == (duration is None):
        raise ValueError("give exactly one of count and duration")
    arrivals = poisson_arrivals(rate, seed=seed)
    if count is not None:
        return list(itertools.islice(arrivals, count))
    assert duration is not None
    return list(itertools.takewhile(lambda t: t < duration, arrivals))
