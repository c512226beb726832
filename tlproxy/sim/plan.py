"""The simulated upstream's planner: what to answer to an OpenAI-shaped request.

Pure and deterministic from the request (and the model's profile): the text
or tool calls, the usage, and the failures a marker in the last user message
scripts. A request whose last message is the assistant's own text (a prefill)
is continued: the answer is the rest of what it would have said. Each
protocol's wire (`tlproxy.sim.openai`, `.anthropic`, `.gemini`) renders the
same plan in its own format.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from typing import Any

import msgspec

from ..config import SimModelProfile

__all__ = [
    "Answer",
    "ChoicePlan",
    "embedding_size",
    "embedding_vector",
    "example_from_schema",
    "plan_answer",
    "stop_by_filters",
]

_encode = msgspec.json.Encoder().encode

_WORDS = (  # noqa: SIM905 - a sentence reads better than forty quoted words
    "the proxy routes each request to a model that fits its task and budget while streaming "
    "tokens as soon as the fastest eligible upstream produces them so users see answers sooner "
    "and teams pay for quality only where it matters"
).split()

_MARKER = re.compile(r"\[sim:(status=(?P<status>\d{3})|cut=(?P<cut>\d+)|stall)\]")


class ChoicePlan(msgspec.Struct):
    tokens: list[str]
    tool_calls: list[tuple[str, str, str]]  # (id, name, arguments JSON)
    finish_reason: str


class Answer(msgspec.Struct):
    choices: list[ChoicePlan]
    prompt_tokens: int
    completion_tokens: int
    fail_status: int | None = None
    cut_after: int | None = None
    stall: bool = False


def example_from_schema(schema: Any, depth: int = 0) -> Any:
    """A plausible value that satisfies a (simple) JSON schema."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_from_schema(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: example_from_schema(sub, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [example_from_schema(schema.get("items", {}), depth + 1)]
    if kind == "string":
        return {"date": "2026-01-01", "date-time": "2026-01-01T00:00:00Z"}.get(
            schema.get("format", ""), "example"
        )
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    return None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _prompt_tokens(body: dict[str, Any]) -> int:
    chars = sum(len(_text_of(m.get("content"))) for m in body.get("messages", ()))
    chars += len(json.dumps(body.get("tools", []))) if body.get("tools") else 0
    return max(1, math.ceil(chars / 4) + 3 * len(body.get("messages", ())))


def plan_answer(body: dict[str, Any], profile: SimModelProfile) -> Answer:
    """Decide what to answer, deterministically from the request."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    last_user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    prompt = _text_of(last_user.get("content"))
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    n = body.get("n") or 1

    marker = _MARKER.search(prompt)
    fail = int(marker.group("status")) if marker and marker.group("status") else None
    cut = int(marker.group("cut")) if marker and marker.group("cut") else None
    stall = bool(marker and marker.group(0) == "[sim:stall]")

    tools = body.get("tools") or []
    choice = body.get("tool_choice", "auto")
    wants_tools = bool(tools) and choice != "none" and last.get("role") != "tool"
    fmt = (body.get("response_format") or {}).get("type")

    choices = []
    for index in range(n):
        if wants_tools:
            chosen = tools[:1]
            if isinstance(choice, dict):
                name = (choice.get("function") or {}).get("name")
                chosen = [t for t in tools if t.get("function", {}).get("name") == name][:1]
            elif body.get("parallel_tool_calls", True) and len(tools) > 1:
                chosen = tools[:2]
            calls = []
            for position, tool in enumerate(chosen):
                function = tool.get("function") or {}
                args = example_from_schema(function.get("parameters") or {}) or {}
                call_id = f"call_{seed % 10**12:012d}{index}{position}"
                calls.append((call_id, function.get("name", "tool"), _encode(args).decode()))
            choices.append(ChoicePlan(tokens=[], tool_calls=calls, finish_reason="tool_calls"))
            continue
        if fmt in ("json_object", "json_schema"):
            schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
            value = example_from_schema(schema) if schema else {"answer": _WORDS[seed % 9]}
            text = _encode(value).decode()
            tokens = [text[i : i + 4] for i in range(0, len(text), 4)]
        else:
            count = profile.tokens
            words = [_WORDS[(rng.randrange(len(_WORDS)) + index) % len(_WORDS)]
                     for _ in range(count)]
            tokens = [words[0].capitalize(), *(" " + w for w in words[1:])]
            if last.get("role") == "tool":
                tokens = ["The", " tool", " returned", ":", " " + _text_of(last.get("content"))]
        tokens = _continued(tokens, last)
        finish = "stop"
        stops = body.get("stop")
        stops = [stops] if isinstance(stops, str) else (stops or [])
        if stops:
            text = "".join(tokens)
            cut_at = min((text.find(s) for s in stops if s and s in text), default=-1)
            if cut_at >= 0:
                tokens = _retokenize(text[:cut_at])
        if limit is not None and len(tokens) > limit:
            tokens, finish = tokens[:limit], "length"
        choices.append(ChoicePlan(tokens=tokens, tool_calls=[], finish_reason=finish))
    completion = sum(len(c.tokens) + sum(len(a) // 4 + 1 for _, _, a in c.tool_calls)
                     for c in choices)
    return Answer(
        choices=choices,
        prompt_tokens=_prompt_tokens(body),
        completion_tokens=completion,
        fail_status=fail,
        cut_after=cut,
        stall=stall,
    )


def _continued(tokens: list[str], last: dict[str, Any]) -> list[str]:
    """An assistant prefill (the request's last message is the assistant's text)
    continued: the tokens after it, when the answer starts with that text."""
    prefix = last.get("content") if last.get("role") == "assistant" else None
    if not isinstance(prefix, str) or not prefix or last.get("tool_calls"):
        return tokens
    said = ""
    for k, token in enumerate(tokens):
        if said.rstrip() == prefix.rstrip() and said:
            return tokens[k:]
        said += token
        if not prefix.startswith(said.rstrip()) and not said.startswith(prefix):
            return tokens
    return [] if said.rstrip() == prefix.rstrip() else tokens


def stop_by_filters(answer: Answer) -> None:
    """The `safety_stop` and `recitation_stop` habits: each text answer stops half-way,
    its finish reason ``content_filter``."""
    for plan in answer.choices:
        if not plan.tool_calls:
            kept = plan.tokens[: max(1, len(plan.tokens) // 2)]
            answer.completion_tokens -= len(plan.tokens) - len(kept)
            plan.tokens = kept
            plan.finish_reason = "content_filter"


def _retokenize(text: str) -> list[str]:
    parts = re.findall(r"\s*\S+", text)
    return parts


def embedding_size(requested: Any, profile: SimModelProfile) -> int | None:
    """How long the vectors answering a request are: None for a size to refuse.

    A request that names no size gets the model's own (`embedding_dimensions`);
    one may ask for fewer, never more (real APIs only shorten a model's
    vectors), so what the sim allocates stays within what its config allows.
    """
    if requested is None:
        return profile.embedding_dimensions
    if isinstance(requested, bool) or not isinstance(requested, int):
        return None
    return requested if 1 <= requested <= profile.embedding_dimensions else None


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for a text (similar texts are not similar)."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
