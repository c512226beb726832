"""The routing policy: signals from a request, rules over signals, a tier.

The problem: each request should go to the cheapest tier that does the job,
and a team must be able to say what "does the job" means for its traffic
without writing code, and see why any request went where it did.

The shape chosen: signals are computed from the request by pure functions
(no I/O, no clock); rules are an ordered list, each a conjunction of
conditions on signals and a tier; the first rule that matches decides. An
ordered list is what people already read in firewalls and routers: the
answer to "why premium?" is one rule name. Scores or weights were rejected
because nobody can predict them.

Some signals need I/O (a semantic classifier calling an embedding model, a
budget look-up): they are *slow*. `possible_tiers` answers, from the fast
signals alone, which tiers are still possible, so the race can start
upstream requests before the slow signals are in; `decide` then gives the
final decision once they are. The guarantee: `decide` always returns one of
the tiers `possible_tiers` returned for the same fast signals.

An explicit intent (`premium` / `economy` in `model`) bypasses the rules,
but never a key's `allowed_tiers`: a key capped to economy stays there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from .config import Condition, Policy, Rule

__all__ = [
    "DEFAULT_RULES",
    "Decision",
    "RuleTrace",
    "Signals",
    "decide",
    "extract_signals",
    "possible_tiers",
]

Tier = Literal["premium", "economy"]

DEFAULT_RULES: tuple[Rule, ...] = (
    # No user turn at all: a warm-up or cache-priming call.
    Rule(name="system-only-warmup", when=Condition(system_only=True), tier="economy"),
    # Function calling needs the most reliable argument generation.
    Rule(name="tools", when=Condition(tools=True), tier="premium"),
    # Before first-turn: most summarization and extraction calls are single-turn.
    Rule(name="summarize-extract", when=Condition(task=["summarization", "extraction"]),
         tier="economy"),
    # The classifier's view of the same tasks, for prompts without cues; it
    # never matches while the classifier is off (`[classifier] enabled`).
    Rule(name="semantic-summarize-extract",
         when=Condition(semantic_task=["summarization", "extraction"]), tier="economy"),
    Rule(name="structured-output", when=Condition(json_schema=True), tier="economy"),
    # The first answer of a conversation sets the user's impression of it.
    Rule(name="first-turn", when=Condition(first_turn=True), tier="premium"),
)


class Signals(msgspec.Struct, kw_only=True):
    """What the policy knows about a request. `None` means not known (yet)."""

    first_turn: bool = False
    tools: bool = False
    system_only: bool = False
    images: bool = False
    json_schema: bool = False
    task: str | None = None
    prompt_tokens: int = 0
    # Slow: filled in by the classifier; None while unknown.
    semantic_task: str | None = None
    semantic_known: bool = False


class RuleTrace(msgspec.Struct):
    rule: str
    tier: str
    # "matched", "no", or "unknown" (depends on a slow signal not known yet).
    result: str
    detail: str


class Decision(msgspec.Struct):
    tier: Tier
    rule: str
    trace: list[RuleTrace]


_CUES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("summarization", re.compile(
        r"\b(summari[sz]e|summary|summarization|tl;?dr|condense|key points|recap)\b", re.I)),
    ("extraction", re.compile(
        r"\b(extract|extraction|parse|pull out|list all|find all|classify|categori[sz]e"
        r"|label the|as json|into json)\b", re.I)),
)
_HINTS = {"summarize": "summarization", "summarise": "summarization",
          "summarization": "summarization", "extract": "extraction", "extraction": "extraction",
          "classification": "extraction", "code": "code", "chat": "chat"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


def _has_image(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") in ("image_url", "image") for p in content
    )


def extract_signals(body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Signals:
    """Fast signals from a chat request (plain decoded JSON). Never raises."""
    messages = body.get("messages")
    messages = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    roles = [m.get("role") for m in messages]
    has_user = "user" in roles
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    response_format = body.get("response_format")
    json_schema = isinstance(response_format, dict) and response_format.get("type") == (
        "json_schema")
    chars = sum(len(_text(m.get("content"))) for m in messages)
    tools = body.get("tools") or body.get("functions")
    return Signals(
        first_turn=has_user and "assistant" not in roles,
        tools=bool(tools) and body.get("tool_choice") != "none",
        system_only=bool(messages) and all(r in ("system", "developer") for r in roles),
        images=any(_has_image(m.get("content")) for m in messages),
        json_schema=json_schema,
        task=_task(body, headers or {}, _text(last_user.get("content")) if last_user else ""),
        prompt_tokens=chars // 4,
    )


def _task(body: Mapping[str, Any], headers: Mapping[str, str], prompt: str) -> str | None:
    metadata = body.get("metadata")
    hint = headers.get("x-tlproxy-task") or (
        metadata.get("task") if isinstance(metadata, dict) else None)
    if isinstance(hint, str) and hint.strip().lower() in _HINTS:
        return _HINTS[hint.strip().lower()]
    # Cues are looked for at the start of the instruction, where people state
    # the task; a long document that merely contains the word is not a cue.
    head = prompt[:400]
    for task, pattern in _CUES:
        if pattern.search(head):
            return task
    return None


def _check(condition: Condition, signals: Signals) -> tuple[bool | None, str]:
    """Whether a condition holds: True, False, or None when a slow signal is unknown."""
    failed: list[str] = []
    for name in ("first_turn", "tools", "system_only", "images", "json_schema"):
        wanted = getattr(condition, name)
        if wanted is not None and getattr(signals, name) != wanted:
            failed.append(f"{name} is {getattr(signals, name)}")
    if condition.task is not None and signals.task not in condition.task:
        failed.append(f"task is {signals.task}")
    if condition.min_prompt_tokens is not None and signals.prompt_tokens < (
            condition.min_prompt_tokens):
        failed.append(f"prompt_tokens {signals.prompt_tokens} < {condition.min_prompt_tokens}")
    if condition.max_prompt_tokens is not None and signals.prompt_tokens > (
            condition.max_prompt_tokens):
        failed.append(f"prompt_tokens {signals.prompt_tokens} > {condition.max_prompt_tokens}")
    if failed:
        return False, "; ".join(failed)
    if condition.semantic_task is not None:
        if not signals.semantic_known:
            return None, "semantic_task not known yet"
        if signals.semantic_task not in condition.semantic_task:
            return False, f"semantic_task is {signals.semantic_task}"
    return True, "all conditions hold"


def _rules(policy: Policy) -> Iterable[Rule]:
    return DEFAULT_RULES if policy.rules is None else policy.rules


def possible_tiers(policy: Policy, signals: Signals) -> set[Tier]:
    """The tiers `decide` may still return, whatever the slow signals turn out to be."""
    tiers: set[Tier] = set()
    for rule in _rules(policy):
        result, _ = _check(rule.when, signals)
        if result is None:
            tiers.add(rule.tier)
        elif result:
            tiers.add(rule.tier)
            return tiers
    tiers.add(policy.default_tier)
    return tiers


def decide(policy: Policy, signals: Signals, *, assume_unknown_false: bool = True) -> Decision:
    """First matching rule wins. A slow signal still unknown counts as not matching."""
    trace: list[RuleTrace] = []
    for rule in _rules(policy):
        result, detail = _check(rule.when, signals)
        if result is None and assume_unknown_false:
            trace.append(RuleTrace(rule.name, rule.tier, "unknown", detail))
            continue
        trace.append(RuleTrace(rule.name, rule.tier, "matched" if result else "no", detail))
        if result:
            return Decision(tier=rule.tier, rule=rule.name, trace=trace)
    return Decision(tier=policy.default_tier, rule="default", trace=trace)
