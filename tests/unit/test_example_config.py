"""examples/tlproxy.toml is what teams copy: it must load, be complete and hold no secret."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest

from tlproxy.catalog import INTENTS, resolve_name
from tlproxy.config import Config, ConfigError
from tlproxy.config_load import load_config
from tlproxy.policy import DEFAULT_RULES

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tlproxy.toml"
ENV = {"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "y", "GEMINI_API_KEY": "z"}


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(EXAMPLE, environ=ENV)


def test_loads_and_resolves_keys(config: Config) -> None:
    assert {name: p.kind for name, p in config.providers.items()} == {
        "openai": "openai", "anthropic": "anthropic", "gemini": "gemini"}
    assert {name: p.api_key for name, p in config.providers.items()} == {
        "openai": "x", "anthropic": "y", "gemini": "z"}
    assert config.providers["openai"].http2


def test_missing_env_var_is_an_error() -> None:
    with pytest.raises(ConfigError, match="GEMINI_API_KEY"):
        load_config(EXAMPLE, environ={"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "y"})


def test_every_model_has_an_input_price(config: Config) -> None:
    for model in config.models:
        assert model.prices.input > 0, model.id
        if model.tier != "embedding":
            assert model.prices.output > model.prices.input, model.id
            assert model.prices.cached_input is not None, model.id
            assert 0 < model.prices.cached_input < model.prices.input, model.id


def test_each_tier_has_two_models_or_more(config: Config) -> None:
    for tier in ("premium", "economy", "embedding"):
        assert len([m for m in config.models if m.tier == tier]) >= 2, tier


def test_each_chat_tier_spans_providers(config: Config) -> None:
    # A tier that one provider outage can empty defeats the fallback.
    for tier in ("premium", "economy"):
        assert len({m.provider for m in config.models if m.tier == tier}) >= 2, tier


def test_aliases_target_intents_or_ids(config: Config) -> None:
    ids = {m.id for m in config.models}
    assert config.aliases
    for name, target in {**config.aliases, "(default)": config.default_alias}.items():
        assert target in INTENTS or target in ids, (name, target)
        if target in ids:
            assert config.model(target).tier != "embedding", name  # type: ignore[union-attr]
    assert resolve_name(config, "gpt-4o").intent == "auto"
    assert resolve_name(config, "gpt-4o-mini").intent == "economy"
    assert resolve_name(config, "gpt-4").intent == "premium"
    assert resolve_name(config, "claude-3-5-sonnet-latest").intent == "premium"
    assert resolve_name(config, "some-model-nobody-knows").via == "default-alias"


def test_long_context_prices(config: Config) -> None:
    for model_id, threshold in (("gpt-5.4", 272_000), ("gemini-3-pro-preview", 200_000)):
        model = config.model(model_id)
        assert model is not None, model_id
        long = model.prices.long_context
        assert long is not None, model_id
        assert long.above_input_tokens == threshold
        assert long.input > model.prices.input
        assert long.output > model.prices.output
        assert long.cached_input is not None and model.prices.cached_input is not None
        assert long.cached_input > model.prices.cached_input
        assert model.capabilities.max_context > threshold


def test_context_windows_hold_their_outputs(config: Config) -> None:
    for model in config.models:
        caps = model.capabilities
        assert caps.max_context > caps.max_output >= 0, model.id
        if model.tier == "embedding":
            assert not (caps.tools or caps.vision or caps.json_schema), model.id
            assert model.prices.output == 0


def test_spelled_out_policy_is_the_default(config: Config) -> None:
    assert config.policy.rules is not None
    assert tuple(config.policy.rules) == DEFAULT_RULES
    assert config.policy.default_tier == "economy"
    assert config.policy.strategy == "balanced"


def test_named_policies_and_keys(config: Config) -> None:
    codegen, rag = config.policies["codegen"], config.policies["rag"]
    assert (codegen.default_tier, codegen.strategy) == ("premium", "latency")
    assert (rag.default_tier, rag.strategy) == ("economy", "cost")
    assert {k.policy for k in config.keys} == {"codegen", "rag"}
    assert [k.allowed_tiers for k in config.keys if k.policy == "rag"] == [["economy"]]


def test_example_keys_match_their_hashes(config: Config) -> None:
    # The comment in the file names the example keys; their hashes must match,
    # so the documented `printf %s "$KEY" | sha256sum` recipe is right.
    text = EXAMPLE.read_text()
    examples = re.findall(r'"(tlp-example-[a-z]+-[0-9a-f]+)"', text)
    assert len(examples) == len(config.keys) == 2
    hashes = {"sha256:" + hashlib.sha256(k.encode()).hexdigest() for k in examples}
    assert hashes == {k.hash for k in config.keys}


def test_no_literal_secret() -> None:
    text = EXAMPLE.read_text()
    raw = tomllib.loads(text)
    for name, provider in raw["providers"].items():
        assert re.fullmatch(r"\$\{[A-Z][A-Z0-9_]*\}", provider["api_key"]), name
    # Nothing that looks like a provider key, anywhere, comments included.
    for pattern in (r"sk-[A-Za-z0-9_-]{16,}", r"sk-ant-", r"AIza[0-9A-Za-z_-]{20,}",
                    r"Bearer\s+[A-Za-z0-9._-]{16,}"):
        assert not re.search(pattern, text), pattern
    # The references are the documented variables, each used once.
    refs = [p["api_key"][2:-1] for p in raw["providers"].values()]
    assert sorted(refs) == sorted(ENV)


def test_providers_are_https(config: Config) -> None:
    for name, provider in config.providers.items():
        assert provider.base_url is not None and provider.base_url.startswith("https://"), name


DOCS = EXAMPLE.parents[1] / "docs" / "configuration.md"


def test_docs_document_every_field() -> None:
    import msgspec

    from tlproxy import config as schema

    text = DOCS.read_text()
    structs = [obj for obj in vars(schema).values()
               if isinstance(obj, type) and issubclass(obj, msgspec.Struct)
               and obj.__module__ == schema.__name__ and obj.__struct_fields__]
    assert len(structs) >= 12
    for struct in structs:
        for name in struct.__struct_fields__:
            assert f"| `{name}` |" in text, f"{struct.__name__}.{name} is not documented"


def test_docs_toml_snippets_are_valid() -> None:
    import msgspec

    snippets = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    assert len(snippets) > 10
    model = '[[models]]\nid = "m"\nprovider = "p"\ntier = "premium"\n'
    for snippet in snippets:
        tomllib.loads(snippet)
        if snippet.lstrip().startswith("api_key"):
            continue  # a one-line fragment
        if "[models." in snippet and "[[models]]" not in snippet:
            snippet = model + snippet  # a sub-table of some model
        msgspec.toml.decode(snippet.encode(), type=Config)
