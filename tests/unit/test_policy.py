"""The routing policy on the signal table, per-key overrides, and arbitrary input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlproxy.catalog import default_config
from tlproxy.config import ClientKey, Condition, Config, ModelConfig, Policy, Rule
from tlproxy.errors import ProxyError
from tlproxy.policy import Signals, decide, extract_signals, possible_tiers
from tlproxy.router import Router
from tlproxy.stats import StatsBook

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
SYSTEM = {"role": "system", "content": "You are terse."}
ASSISTANT = {"role": "assistant", "content": "Sure."}


def user(text: str = "How do tides work?") -> dict[str, Any]:
    return {"role": "user", "content": text}


CASES = [
    ("first user turn", {"messages": [SYSTEM, user()]}, "premium", "first-turn"),
    ("later turn", {"messages": [user(), ASSISTANT, user("and?")]}, "economy", "default"),
    ("tools", {"messages": [user(), ASSISTANT, user()], "tools": [TOOL]}, "premium", "tools"),
    ("legacy functions", {"messages": [user(), ASSISTANT, user()],
                          "functions": [TOOL["function"]]}, "premium", "tools"),
    ("tool_choice none", {"messages": [user(), ASSISTANT, user()], "tools": [TOOL],
                          "tool_choice": "none"}, "economy", "default"),
    ("system only warm-up", {"messages": [SYSTEM]}, "economy", "system-only-warmup"),
    ("summarize cue", {"messages": [user("Summarize this article: ...")]}, "economy",
     "summarize-extract"),
    ("tl;dr cue", {"messages": [user("TL;DR of the thread below")]}, "economy",
     "summarize-extract"),
    ("extract cue", {"messages": [user("Extract all dates from: ...")]}, "economy",
     "summarize-extract"),
    ("task hint in metadata", {"messages": [user()], "metadata": {"task": "extraction"}},
     "economy", "summarize-extract"),
    ("json schema", {"messages": [user()], "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
     "economy", "structured-output"),
    ("cue deep in a document is not a cue", {"messages": [user("Explain. " + "x " * 400 +
                                                               "summarize")]},
     "premium", "first-turn"),
]


@pytest.mark.parametrize(("name", "body", "tier", "rule"), CASES, ids=[c[0] for c in CASES])
def test_default_policy_signal_table(name: str, body: dict[str, Any], tier: str,
                                     rule: str) -> None:
    decision = decide(Policy(), extract_signals(body))
    assert (decision.tier, decision.rule) == (tier, rule)


def test_task_hint_header() -> None:
    signals = extract_signals({"messages": [user()]}, {"x-tlproxy-task": "summarize"})
    assert decide(Policy(), signals).rule == "summarize-extract"


def test_custom_rules_first_match_wins() -> None:
    policy = Policy(rules=[
        Rule(name="long", when=Condition(min_prompt_tokens=100), tier="economy"),
        Rule(name="images", when=Condition(images=True), tier="premium"),
    ], default_tier="premium")
    image = {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}
    assert decide(policy, extract_signals({"messages": [image]})).rule == "images"
    long = {"messages": [image, user("x" * 800)]}
    assert decide(policy, extract_signals(long)).rule == "long"
    assert decide(policy, extract_signals({"messages": [user()]})).rule == "default"


SLOW = Policy(rules=[
    Rule(name="tools", when=Condition(tools=True), tier="premium"),
    Rule(name="semantic-summary", when=Condition(semantic_task=["summarization"]),
         tier="economy"),
    Rule(name="first-turn", when=Condition(first_turn=True), tier="premium"),
], default_tier="economy")


def test_possible_tiers_before_slow_signals() -> None:
    fast = extract_signals({"messages": [user()]})
    assert possible_tiers(SLOW, fast) == {"economy", "premium"}
    with_tools = extract_signals({"messages": [user()], "tools": [TOOL]})
    assert possible_tiers(SLOW, with_tools) == {"premium"}


@pytest.mark.parametrize(("semantic", "tier"), [("summarization", "economy"), ("chat", "premium")])
def test_decision_with_slow_signal_is_among_possible(semantic: str, tier: str) -> None:
    fast = extract_signals({"messages": [user()]})
    possible = possible_tiers(SLOW, fast)
    fast.semantic_task, fast.semantic_known = semantic, True
    decision = decide(SLOW, fast)
    assert decision.tier == tier
    assert decision.tier in possible


def router(**fields: Any) -> Router:
    base = default_config()
    config = Config(providers=base.providers, models=base.models, **fields)
    return Router(config, StatsBook())


def test_intent_overrides_rules_but_not_key_cap() -> None:
    capped = ClientKey(name="k", hash="sha256:" + "0" * 64, allowed_tiers=["economy"])
    r = router()
    assert r.plan_chat({"model": "premium", "messages": [user()]}).tier == "premium"
    plan = r.plan_chat({"model": "premium", "messages": [user()]}, key=capped)
    assert (plan.tier, plan.rule) == ("economy", "intent:premium (capped by key)")
    with pytest.raises(ProxyError) as caught:
        r.plan_chat({"model": "claude-sonnet-4-6", "messages": [user()]}, key=capped)
    assert caught.value.status == 403


def test_per_key_policy() -> None:
    rag = Policy(rules=[Rule(name="rag-first", when=Condition(first_turn=True),
                             tier="economy")], strategy="cost")
    key = ClientKey(name="rag", hash="sha256:" + "0" * 64, policy="rag")
    r = router(policies={"rag": rag})
    body = {"model": "auto", "messages": [user()]}
    assert r.plan_chat(body).tier == "premium"
    plan = r.plan_chat(body, key=key)
    assert (plan.tier, plan.rule) == ("economy", "rag-first")
    assert plan.candidates[0].id == "gpt-5-nano"  # cheapest under "cost"


@pytest.mark.parametrize(("name", "model", "via"), [
    ("gpt-4o", None, "default-alias"), ("anything-else", None, "default-alias"),
    ("gpt-5.4", "gpt-5.4", "pinned"), ("economy", None, "intent"),
])
def test_names_always_resolve(name: str, model: str | None, via: str) -> None:
    plan = router().plan_chat({"model": name, "messages": [user()]})
    assert plan.via == via
    if model:
        assert [m.id for m in plan.candidates] == [model]


def test_aliases_map_old_names() -> None:
    plan = router(aliases={"gpt-4o-mini": "economy"}).plan_chat(
        {"model": "gpt-4o-mini", "messages": [user()]})
    assert (plan.tier, plan.via) == ("economy", "alias")


def test_capabilities_and_breaker_filter_candidates() -> None:
    r = router()
    big = {"model": "economy", "messages": [user("x" * 4 * 300_000)]}
    plan = r.plan_chat(big)
    assert "claude-haiku-4-5" in dict(plan.excluded)
    for _ in range(5):
        r.stats["gpt-5-nano"].record_failure(now=10.0)
    plan = r.plan_chat({"model": "economy", "messages": [user()]}, now=11.0)
    assert dict(plan.excluded)["gpt-5-nano"] == "circuit breaker open"


def test_latency_strategy_uses_live_ttft() -> None:
    r = router(policy=Policy(strategy="latency"))
    for model, ttft in [("gpt-5-nano", 0.5), ("claude-haiku-4-5", 0.1), ("gpt-5-mini", 0.3),
                        ("gemini-2.5-flash", 0.2)]:
        r.stats[model].record_ttft(ttft)
    plan = r.plan_chat({"model": "economy", "messages": [user()]})
    assert [m.id for m in plan.candidates] == [
        "claude-haiku-4-5", "gemini-2.5-flash", "gpt-5-mini", "gpt-5-nano"]


MESSAGE = st.fixed_dictionaries({}, optional={
    "role": st.one_of(st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
                      st.text(max_size=5), st.integers()),
    "content": st.one_of(st.none(), st.text(max_size=50), st.integers(), st.lists(
        st.dictionaries(st.sampled_from(["type", "text", "image_url"]),
                        st.one_of(st.text(max_size=10), st.none(), st.integers()),
                        max_size=3), max_size=3)),
})
BODY = st.fixed_dictionaries({}, optional={
    "messages": st.one_of(st.lists(st.one_of(MESSAGE, st.integers(), st.none()), max_size=6),
                          st.text(max_size=5), st.none()),
    "tools": st.one_of(st.none(), st.lists(st.just(TOOL), max_size=2), st.integers()),
    "metadata": st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
                          st.integers()),
    "response_format": st.one_of(st.none(), st.text(max_size=5), st.dictionaries(
        st.just("type"), st.sampled_from(["json_schema", "text", 3]))),
})


@settings(max_examples=300, deadline=None)
@given(BODY)
def test_signal_extraction_never_raises(body: dict[str, Any]) -> None:
    signals = extract_signals(body)
    assert isinstance(signals, Signals)
    assert decide(Policy(), signals).tier in possible_tiers(Policy(), signals)


EMBEDDING_MODELS = [
    ModelConfig(id="small", upstream_model="text-embedding-3-small", provider="openai",
                tier="embedding"),
    ModelConfig(id="large", upstream_model="text-embedding-3-large", provider="openai",
                tier="embedding"),
    ModelConfig(id="small-eu", upstream_model="text-embedding-3-small", provider="openai-eu",
                tier="embedding"),
    # Same provider and upstream model as `small`: not "elsewhere".
    ModelConfig(id="small-again", upstream_model="text-embedding-3-small", provider="openai",
                tier="embedding"),
    ModelConfig(id="large-eu", upstream_model="text-embedding-3-large", provider="openai-eu",
                tier="embedding"),
]


@pytest.mark.parametrize(("requested", "rule", "candidates"), [
    ("small", "pinned", ["small", "small-eu"]),
    ("large", "pinned", ["large", "large-eu"]),
    ("small-eu", "pinned", ["small-eu", "small", "small-again"]),
    ("text-embedding-ada-002", "default-embedding", ["small", "small-eu"]),
])
def test_embeddings_fall_back_only_to_the_same_model_elsewhere(
    requested: str, rule: str, candidates: list[str]
) -> None:
    plan = Router(Config(models=EMBEDDING_MODELS), StatsBook()).plan_embedding(requested)
    assert plan.rule == rule
    assert [m.id for m in plan.candidates] == candidates
