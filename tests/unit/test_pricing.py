"""Reading, estimating and pricing usage, on table cases with the shipped catalog's prices."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tlproxy.catalog import default_config
from tlproxy.config import Config, LongContextPrices, ModelConfig, Prices
from tlproxy.config_load import load_config
from tlproxy.pricing import (
    CACHE_WRITE_TOKENS,
    Usage,
    cost_usd,
    estimate_usage,
    premium_reference_cost,
    price_attempt,
    reference_model,
    usage_from_openai,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tlproxy.toml"
ENV = {"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "y", "GEMINI_API_KEY": "z"}


@pytest.fixture(scope="module")
def catalog() -> Config:
    """The example catalog: real prices, long-context tables included."""
    return load_config(EXAMPLE, environ=ENV)


def model(config: Config, model_id: str) -> ModelConfig:
    found = config.model(model_id)
    assert found is not None, model_id
    return found


USAGE_CASES: list[tuple[str, Any, Usage | None]] = [
    ("absent", None, None),
    ("not an object", [1, 2], None),
    ("no prompt_tokens", {"completion_tokens": 3}, None),
    ("prompt_tokens not a count", {"prompt_tokens": True, "completion_tokens": 3}, None),
    ("chat", {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
     Usage(120, 0, 30)),
    ("chat with cache hits", {"prompt_tokens": 2006, "completion_tokens": 300,
                              "prompt_tokens_details": {"cached_tokens": 1920}},
     Usage(2006, 1920, 300)),
    ("cached details null", {"prompt_tokens": 10, "completion_tokens": 1,
                             "prompt_tokens_details": None}, Usage(10, 0, 1)),
    ("more cached than prompt is capped", {"prompt_tokens": 10, "completion_tokens": 1,
                                           "prompt_tokens_details": {"cached_tokens": 99}},
     Usage(10, 10, 1)),
    ("cache writes", {"prompt_tokens": 3000, "completion_tokens": 5,
                      "prompt_tokens_details": {"cached_tokens": 1000},
                      CACHE_WRITE_TOKENS: 1500},
     Usage(3000, 1000, 5, cache_write_tokens=1500)),
    ("more written than not cached is capped",
     {"prompt_tokens": 10, "completion_tokens": 1,
      "prompt_tokens_details": {"cached_tokens": 4}, CACHE_WRITE_TOKENS: 99},
     Usage(10, 4, 1, cache_write_tokens=6)),
    ("cache writes not a count", {"prompt_tokens": 10, CACHE_WRITE_TOKENS: -1},
     Usage(10, 0, 0)),
    ("embeddings", {"prompt_tokens": 8, "total_tokens": 8}, Usage(8, 0, 0)),
    ("completion from total", {"prompt_tokens": 8, "total_tokens": 11}, Usage(8, 0, 3)),
]


@pytest.mark.parametrize(("name", "obj", "expected"), USAGE_CASES, ids=[c[0] for c in USAGE_CASES])
def test_usage_from_openai(name: str, obj: Any, expected: Usage | None) -> None:
    assert usage_from_openai(obj) == expected


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
TOOLS_TOKENS = math.ceil(len(msgspec.json.encode(TOOLS)) / 4)
CALL = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}

ESTIMATE_CASES: list[tuple[str, dict[str, Any], int, int, int]] = [
    # name, body, output chars, prompt tokens, completion tokens
    ("empty", {}, 0, 0, 0),
    ("two messages", {"messages": [{"role": "system", "content": "You are terse."},  # 14 chars
                                   {"role": "user", "content": "Hello!"}]},  # 6 chars
     10, (4 + 4) + (2 + 4), 3),
    ("text parts, image ignored", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "abcdefgh"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     1, 2 + 4, 1),
    ("earlier tool call counts", {"messages": [{"role": "assistant", "content": None,
                                                "tool_calls": [CALL]}]}, 0, 1 + 4, 0),
    ("tool schemas", {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS},
     0, (1 + 4) + TOOLS_TOKENS, 0),
    ("garbage messages", {"messages": ["nope", 3, None]}, 0, 0, 0),
]


@pytest.mark.parametrize(("name", "body", "output_chars", "prompt", "completion"),
                         ESTIMATE_CASES, ids=[c[0] for c in ESTIMATE_CASES])
def test_estimate_chat(name: str, body: dict[str, Any], output_chars: int, prompt: int,
                       completion: int) -> None:
    assert estimate_usage(body, output_chars) == Usage(prompt, 0, completion, estimated=True)


@pytest.mark.parametrize(("value", "tokens"), [
    ("abcdefghijkl", 3), (["abcd", "abcde"], 1 + 2), ([101, 102, 103], 3),
    ([[1, 2], [3]], 3), (None, 0),
])
def test_estimate_embeddings(value: Any, tokens: int) -> None:
    assert estimate_usage({"input": value}, 999, kind="embedding") == Usage(
        tokens, 0, 0, estimated=True)


def test_cached_tokens_at_the_cache_price(catalog: Config) -> None:
    gpt = model(catalog, "gpt-5.4")  # 2.50 / 0.25 cached / 15.00 per 1M
    usage = Usage(prompt_tokens=1_000, cached_tokens=400, completion_tokens=200)
    assert cost_usd(gpt, usage) == pytest.approx((600 * 2.5 + 400 * 0.25 + 200 * 15.0) / 1e6)


def test_cache_writes_at_the_cache_write_price(catalog: Config) -> None:
    sonnet = model(catalog, "claude-sonnet-4-6")  # 3 / 0.30 read / 3.75 write / 15 per 1M
    usage = Usage(prompt_tokens=10_000, cached_tokens=6_000, completion_tokens=100,
                  cache_write_tokens=3_000)
    assert cost_usd(sonnet, usage) == pytest.approx(
        (1_000 * 3.0 + 6_000 * 0.30 + 3_000 * 3.75 + 100 * 15.0) / 1e6)


def test_cache_writes_without_a_surcharge_cost_input() -> None:
    plain = ModelConfig(id="m", provider="p", tier="economy",
                        prices=Prices(input=1.0, output=2.0))
    assert cost_usd(plain, Usage(1_000_000, 0, 0, cache_write_tokens=1_000_000)) == (
        pytest.approx(1.0))


def test_no_cache_discount_costs_input() -> None:
    plain = ModelConfig(id="m", provider="p", tier="economy",
                        prices=Prices(input=1.0, output=2.0))
    assert cost_usd(plain, Usage(1_000_000, 900_000, 0)) == pytest.approx(1.0)


def test_embeddings_cost_only_input() -> None:
    small = model(default_config(), "text-embedding-3-small")  # 0.02 per 1M
    usage = usage_from_openai({"prompt_tokens": 500_000, "total_tokens": 500_000})
    assert usage is not None
    assert cost_usd(small, usage) == pytest.approx(0.01)


def test_missing_usage_is_estimated_then_priced() -> None:
    nano = model(default_config(), "gpt-5-nano")  # 0.05 / 0.40
    body = {"messages": [{"role": "user", "content": "x" * 4000}]}
    usage = usage_from_openai(None) or estimate_usage(body, output_chars=400)
    assert usage.estimated
    assert (usage.prompt_tokens, usage.completion_tokens) == (1004, 100)
    assert cost_usd(nano, usage) == pytest.approx((1004 * 0.05 + 100 * 0.40) / 1e6)


LONG_CONTEXT_CASES = [
    # model, threshold, standard (input, cached, output), long (input, cached, output)
    ("gemini-3-pro-preview", 200_000, (2.0, 0.20, 12.0), (4.0, 0.40, 18.0)),
    ("gpt-5.4", 272_000, (2.5, 0.25, 15.0), (5.0, 0.50, 22.5)),
]


@pytest.mark.parametrize(("model_id", "threshold", "standard", "long"), LONG_CONTEXT_CASES,
                         ids=[c[0] for c in LONG_CONTEXT_CASES])
@pytest.mark.parametrize("above", [False, True], ids=["at-threshold", "one-above"])
def test_long_context_reprices_the_whole_request(
    catalog: Config, model_id: str, threshold: int, standard: tuple[float, float, float],
    long: tuple[float, float, float], above: bool,
) -> None:
    prompt = threshold + 1 if above else threshold
    usage = Usage(prompt_tokens=prompt, cached_tokens=10_000, completion_tokens=1_000)
    input_price, cached_price, output_price = long if above else standard
    expected = ((prompt - 10_000) * input_price + 10_000 * cached_price
                + 1_000 * output_price) / 1e6
    assert cost_usd(model(catalog, model_id), usage) == pytest.approx(expected)


def test_long_context_without_cached_price_charges_its_input() -> None:
    prices = Prices(input=1.0, cached_input=0.1, output=2.0, long_context=LongContextPrices(
        above_input_tokens=100, input=3.0, output=4.0))
    long = ModelConfig(id="m", provider="p", tier="premium", prices=prices)
    assert cost_usd(long, Usage(200, 200, 0)) == pytest.approx(200 * 3.0 / 1e6)
    assert cost_usd(long, Usage(100, 100, 0)) == pytest.approx(100 * 0.1 / 1e6)


def test_reference_model_is_the_first_premium() -> None:
    reference = reference_model(default_config())
    assert reference is not None and reference.id == "claude-sonnet-4-6"


def test_premium_reference_cost() -> None:
    config = default_config()
    usage = Usage(10_000, 0, 1_000)
    sonnet = reference_model(config)  # 3.00 / 15.00
    assert premium_reference_cost(usage, sonnet) == pytest.approx((30_000 + 15_000) / 1e6)
    assert premium_reference_cost(usage, None) == 0.0


def test_price_attempt_references() -> None:
    config = default_config()
    sonnet, nano = reference_model(config), model(config, "gpt-5-nano")
    small = model(config, "text-embedding-3-small")
    usage = Usage(10_000, 0, 1_000)
    cost, reference = price_attempt(nano, usage, sonnet, winner=True)
    assert (cost, reference) == (cost_usd(nano, usage), premium_reference_cost(usage, sonnet))
    assert price_attempt(nano, usage, sonnet, winner=False) == (cost, 0.0)
    # An embedding could not have gone to premium: it is its own reference.
    embed_cost = cost_usd(small, Usage(10_000))
    assert price_attempt(small, Usage(10_000), sonnet, winner=True) == (embed_cost, embed_cost)
