"""A request no model can take is the client's 400; one only unhealthy models could take is 503."""

from __future__ import annotations

from typing import Any

import pytest

from tlproxy.catalog import default_config, resolve_name
from tlproxy.config import Capabilities, Config, ModelConfig
from tlproxy.errors import InvalidRequest, UpstreamError
from tlproxy.router import Router
from tlproxy.stats import StatsBook

USER = {"role": "user", "content": "How do tides work?"}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
IMAGE = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}


def model(model_id: str, tier: str, **caps: Any) -> ModelConfig:
    return ModelConfig(id=model_id, provider="sim", tier=tier,  # type: ignore[arg-type]
                       capabilities=Capabilities(**caps))


CATALOG = [
    model("big", "premium", max_context=1_000_000, max_output=128_000),
    model("also-big", "premium", max_context=400_000, max_output=64_000, vision=True),
    model("small", "economy", max_context=128_000, max_output=16_384, tools=False,
          json_schema=False),
    model("small-2", "economy", max_context=200_000, max_output=32_000, tools=False,
          json_schema=False),
]


def router() -> Router:
    return Router(Config(providers=default_config().providers, models=CATALOG), StatsBook())


def body(name: str, **fields: Any) -> dict[str, Any]:
    return {"model": name, "messages": [USER], **fields}


@pytest.mark.parametrize(("request_body", "param", "words"), [
    (body("premium", max_tokens=200_000), "max_tokens",
     ["'max_tokens': 200000", "any premium model", "maximum is 128000"]),
    (body("economy", max_completion_tokens=40_000), "max_completion_tokens",
     ["'max_completion_tokens': 40000", "maximum is 32000", "another model takes up to 128000"]),
    (body("premium", max_tokens=2**64), "max_tokens",
     ["plus 18446744073709551616 from 'max_tokens'", "largest premium context is 1000000"]),
    (body("economy", messages=[{"role": "user", "content": "x" * 4 * 300_000}]), "messages",
     ["about 300", "largest economy context is 200000", "another model takes up to 1000000"]),
    (body("economy", tools=[TOOL]), "tools",
     ["needs tool calling", "no economy model", "a premium model does"]),
    (body("economy", response_format=SCHEMA), "response_format", ["JSON schema output"]),
    (body("economy", messages=[IMAGE]), "messages", ["needs image input", "a premium model"]),
    # A pinned model is judged alone.
    (body("also-big", max_tokens=100_000), "max_tokens",
     ["the model 'also-big'", "its maximum is 64000", "another model takes up to 128000"]),
    (body("small", tools=[TOOL]), "tools", ["small does not offer", "premium"]),
])
def test_requests_no_model_can_take_are_400_naming_the_param(
    request_body: dict[str, Any], param: str, words: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        router().plan_chat(request_body)
    assert caught.value.status == 400
    assert caught.value.param == param
    assert caught.value.code == "no_eligible_model"
    for word in words:
        assert word in caught.value.message, caught.value.message


def test_unhealthy_models_that_could_serve_are_503() -> None:
    r = router()
    for _ in range(5):
        r.stats["big"].record_failure(now=10.0)
        r.stats["also-big"].record_failure(now=10.0)
    with pytest.raises(UpstreamError) as caught:
        r.plan_chat(body("premium", max_tokens=100_000), now=11.0)
    assert caught.value.status == 503
    assert "circuit breaker open" in caught.value.message
    # Once one unfit model is healthy again, the only reason left is the request.
    with pytest.raises(InvalidRequest):
        r.plan_chat(body("premium", max_tokens=200_000), now=11.0)


def test_a_request_one_model_fits_is_planned() -> None:
    plan = router().plan_chat(body("premium", max_tokens=100_000))
    assert [m.id for m in plan.candidates] == ["big"]
    assert dict(plan.excluded) == {"also-big": "max output 64000 too small"}


def test_a_possible_tier_nothing_fits_is_left_out_of_speculation() -> None:
    plan = router().plan_chat(body("auto", max_tokens=100_000))
    assert plan.tier == "premium"
    assert plan.by_tier.get("economy", []) == []


@pytest.mark.parametrize(("name", "intent", "pinned", "via"), [
    ("premium", "premium", None, "intent"),
    ("PREMIUM", "premium", None, "intent"),
    ("premium ", "premium", None, "intent"),
    ("\tEconomy\n", "economy", None, "intent"),
    ("Auto", "auto", None, "intent"),
    ("pre mium", "auto", None, "default-alias"),
    ("big", None, "big", "pinned"),
    (" BIG ", None, "big", "pinned"),
    ("Old-Name", "economy", None, "alias"),
    ("old-name ", "economy", None, "alias"),
    ("OLD-PIN", None, "small", "alias"),
    ("unknown", "auto", None, "default-alias"),
])
def test_names_are_matched_without_regard_to_case_or_blanks(
    name: str, intent: str | None, pinned: str | None, via: str
) -> None:
    config = Config(providers=default_config().providers, models=CATALOG,
                    aliases={"old-name": "economy", "old-pin": "small"})
    resolution = resolve_name(config, name)
    assert resolution.intent == intent
    assert (resolution.pinned.id if resolution.pinned else None) == pinned
    assert resolution.via == via


def test_embedding_ids_are_matched_the_same_way() -> None:
    config = Config(models=[model("Text-Embedding-3-Small", "embedding")])
    plan = Router(config, StatsBook()).plan_embedding("text-embedding-3-small ")
    assert (plan.rule, [m.id for m in plan.candidates]) == (
        "pinned", ["Text-Embedding-3-Small"])


def test_a_tier_without_models_is_the_servers_503_not_the_clients_400() -> None:
    config = Config(providers=default_config().providers, models=CATALOG[:2])
    with pytest.raises(UpstreamError) as caught:
        Router(config, StatsBook()).plan_chat(body("economy"))
    assert caught.value.status == 503
    assert "none is configured" in caught.value.message
