"""Embeddings, models, health, and endpoints the proxy does not serve."""

from __future__ import annotations

import base64
import struct

import httpx
import msgspec
import openai
import pytest
import trio

from tests.integration.conftest import fast_config, start_proxy
from tests.openai_schema import validate
from tlproxy.config import Config, ModelConfig, ProviderConfig, SimModelProfile

HELLO = [{"role": "user", "content": "Hello there"}]


async def test_embeddings_float(raw: httpx.AsyncClient) -> None:
    response = await raw.post("/v1/embeddings", json={
        "model": "text-embedding-3-small", "input": ["one", "two"], "encoding_format": "float"})
    body = response.json()
    validate("CreateEmbeddingResponse", body)
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert response.headers["x-tlproxy-tier"] == "embedding"


async def test_embeddings_base64_is_the_sdk_default(aclient: openai.AsyncOpenAI) -> None:
    result = await aclient.embeddings.create(model="text-embedding-3-small", input="hello")
    vector = result.data[0].embedding
    assert len(vector) == 256
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-3


async def test_embeddings_base64_on_the_wire_is_float32(raw: httpx.AsyncClient) -> None:
    response = await raw.post("/v1/embeddings", json={
        "model": "text-embedding-3-small", "input": "hello", "encoding_format": "base64",
        "dimensions": 8})
    encoded = response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert len(struct.unpack("<8f", base64.b64decode(encoded))) == 8


@pytest.mark.parametrize("value", ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
async def test_embeddings_accept_every_input_shape(raw: httpx.AsyncClient, value: object) -> None:
    response = await raw.post("/v1/embeddings", json={"model": "text-embedding-3-large",
                                                      "input": value})
    assert response.status_code == 200, response.text


async def test_embeddings_dimensions(aclient: openai.AsyncOpenAI) -> None:
    result = await aclient.embeddings.create(
        model="text-embedding-3-large", input=["a", "b", "c"], dimensions=32)
    assert [len(d.embedding) for d in result.data] == [32, 32, 32]


async def test_unknown_embedding_name_goes_to_default_embedding_model(
    aclient: openai.AsyncOpenAI,
) -> None:
    raw = await aclient.embeddings.with_raw_response.create(
        model="text-embedding-ada-002", input="x")
    assert raw.headers["x-tlproxy-model"] == "text-embedding-3-small"


async def test_chat_model_is_refused_for_embeddings(aclient: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await aclient.embeddings.create(model="gpt-5-nano", input="x")
    assert caught.value.param == "model"


@pytest.mark.parametrize("value", ["", [], [""], [[]], [1, "a"], [-1]])
async def test_bad_embedding_input_is_400(raw: httpx.AsyncClient, value: object) -> None:
    response = await raw.post("/v1/embeddings", json={"model": "text-embedding-3-small",
                                                      "input": value})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"


async def test_models_list_has_intents_and_catalog(aclient: openai.AsyncOpenAI) -> None:
    ids = [m.id async for m in aclient.models.list()]
    assert ids[:3] == ["premium", "economy", "auto"]
    assert "claude-sonnet-4-6" in ids and "text-embedding-3-small" in ids


async def test_models_wire_matches_schema(raw: httpx.AsyncClient) -> None:
    body = (await raw.get("/v1/models")).json()
    validate("ListModelsResponse", body)
    for model in body["data"]:
        validate("Model", model)


async def test_model_retrieve(aclient: openai.AsyncOpenAI) -> None:
    assert (await aclient.models.retrieve("economy")).id == "economy"
    assert (await aclient.models.retrieve("gpt-5.4")).owned_by == "sim"
    with pytest.raises(openai.NotFoundError):
        await aclient.models.retrieve("no-such-model")


async def test_health_and_readiness(raw: httpx.AsyncClient) -> None:
    assert (await raw.get("/healthz")).json() == {"status": "ok"}
    ready = await raw.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def _with_dead_provider(premium_on_sim: bool) -> Config:
    """The default catalog on the sim, plus a premium model on a provider that is down."""
    base = fast_config()
    dead = ProviderConfig(kind="openai", base_url="http://127.0.0.1:9/v1", connect_timeout=1.0)
    models = [m for m in base.models if premium_on_sim or m.tier != "premium"]
    models.insert(0, ModelConfig(id="dead-premium", provider="dead", tier="premium"))
    return msgspec.structs.replace(
        base, providers={**base.providers, "dead": dead}, models=models)


async def test_one_provider_down_leaves_the_instance_ready(nursery: trio.Nursery) -> None:
    running = await start_proxy(nursery, _with_dead_provider(premium_on_sim=True))
    async with httpx.AsyncClient(base_url=running.url) as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready" and body["providers_down"] == ["dead"]
    assert "dead-premium" not in body["tiers"]["premium"] and body["tiers"]["premium"]
    # ...and it is telling the truth: premium requests are answered through the others.
    async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x",
                                  max_retries=0) as client:
        answer = await client.chat.completions.with_raw_response.create(
            model="premium", messages=HELLO)
    assert answer.headers["x-tlproxy-tier"] == "premium"
    assert answer.headers["x-tlproxy-model"] != "dead-premium"


async def test_a_tier_with_every_model_down_makes_the_instance_unready(
    nursery: trio.Nursery,
) -> None:
    running = await start_proxy(nursery, _with_dead_provider(premium_on_sim=False))
    async with httpx.AsyncClient(base_url=running.url) as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable" and body["providers_down"] == ["dead"]
    assert body["problems"] == ["no healthy model in tier premium"]
    assert body["tiers"]["economy"]


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/assistants"),
    ("POST", "/v1/audio/speech"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/nope"),
    ("GET", "/"),
])
async def test_unsupported_endpoints_are_openai_404s(
    raw: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await raw.request(method, path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    validate("ErrorResponse", response.json())
    assert "not supported" in response.json()["error"]["message"] or \
        "Invalid URL" in response.json()["error"]["message"]


async def test_unsupported_endpoint_raises_not_found_in_sdk(aclient: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="not supported"):
        await aclient.images.generate(prompt="a cat", model="gpt-image-1")


async def test_wrong_method_is_405_envelope(raw: httpx.AsyncClient) -> None:
    response = await raw.get("/v1/chat/completions")
    assert response.status_code == 405
    validate("ErrorResponse", response.json())


def _embedding_config(*, primary_fails: bool, backup_fails: bool = False) -> Config:
    """`emb` on a primary and a backup provider, and another embedding model."""
    def sim(fails: bool) -> ProviderConfig:
        return ProviderConfig(kind="sim", sim_models={"emb": SimModelProfile(
            ttft_ms=0.0, error_rate=1.0 if fails else 0.0)})

    return Config(
        providers={"primary": sim(primary_fails), "backup": sim(backup_fails),
                   "other": sim(False)},
        models=[
            ModelConfig(id="emb", provider="primary", tier="embedding"),
            ModelConfig(id="other-emb", upstream_model="other", provider="other",
                        tier="embedding"),
            ModelConfig(id="emb-backup", upstream_model="emb", provider="backup",
                        tier="embedding"),
            ModelConfig(id="chat", provider="other", tier="economy"),
        ])


@pytest.mark.parametrize(("primary_fails", "served_by"), [(False, "emb"), (True, "emb-backup")])
async def test_embeddings_fall_back_to_the_same_model_elsewhere(
    nursery: trio.Nursery, primary_fails: bool, served_by: str
) -> None:
    running = await start_proxy(nursery, _embedding_config(primary_fails=primary_fails))
    async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="k",
                                  max_retries=0) as client:
        raw = await client.embeddings.with_raw_response.create(model="emb", input="hello")
    assert raw.headers["x-tlproxy-model"] == served_by
    assert len(raw.parse().data[0].embedding) == 256
    assert running.sims["other"].stats.last_body is None, "never another model"


async def test_embeddings_never_fall_back_to_another_model(nursery: trio.Nursery) -> None:
    running = await start_proxy(nursery, _embedding_config(primary_fails=True,
                                                           backup_fails=True))
    async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="k",
                                  max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as failed:
            await client.embeddings.create(model="emb", input="hello")
    assert failed.value.status_code == 503
    assert running.sims["other"].stats.last_body is None
