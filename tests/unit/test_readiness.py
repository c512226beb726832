"""Readiness: ready while every tier in use has a healthy model; pings run at once."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio

from tlproxy.app import create_app
from tlproxy.config import Config, ModelConfig, ProviderConfig
from tlproxy.providers.base import Provider
from tlproxy.readiness import assess

MODELS = [
    ModelConfig(id="p1", provider="a", tier="premium"),
    ModelConfig(id="p2", provider="b", tier="premium"),
    ModelConfig(id="e1", provider="b", tier="economy"),
    ModelConfig(id="e2", provider="c", tier="economy"),
]


def _up(*names: str) -> dict[str, bool]:
    return {name: name in names for name in "abc"}


@pytest.mark.parametrize(("reachable", "open_breakers", "ready", "tiers", "down"), [
    (_up("a", "b", "c"), set(), True, {"premium": ["p1", "p2"], "economy": ["e1", "e2"]}, []),
    # One provider down: both tiers still have a model.
    (_up("b", "c"), set(), True, {"premium": ["p2"], "economy": ["e1", "e2"]}, ["a"]),
    # b serves both tiers' last resort: with a and c down it alone keeps the instance ready.
    (_up("b"), set(), True, {"premium": ["p2"], "economy": ["e1"]}, ["a", "c"]),
    # Every economy model's provider is down: economy requests would fail here.
    (_up("a"), set(), False, {"premium": ["p1"], "economy": []}, ["b", "c"]),
    # Reachable but its breaker is open: not a healthy candidate.
    (_up("a", "b", "c"), {"e1", "e2"}, False, {"premium": ["p1", "p2"], "economy": []}, []),
    (_up(), set(), False, {"premium": [], "economy": []}, ["a", "b", "c"]),
])
def test_ready_when_every_tier_in_use_has_a_healthy_model(
    reachable: dict[str, bool], open_breakers: set[str], ready: bool,
    tiers: dict[str, list[str]], down: list[str],
) -> None:
    readiness = assess(MODELS, reachable, lambda model: model not in open_breakers)
    assert (readiness.ready, readiness.tiers, readiness.providers_down) == (ready, tiers, down)
    body = readiness.body()
    assert body["status"] == ("ready" if ready else "unavailable")
    assert body["providers_down"] == down
    expected_problems = [f"no healthy model in tier {t}" for t, ids in tiers.items() if not ids]
    assert body.get("problems", []) == expected_problems


def test_tier_without_models_is_not_in_use() -> None:
    readiness = assess(MODELS[:2], _up("a"), lambda _model: True)
    assert readiness.ready and readiness.tiers == {"premium": ["p1"]}


class SlowPing(Provider):
    """Answers its ping after `seconds`, reachable or not; serves nothing else."""

    def __init__(self, seconds: float, up: bool) -> None:
        self.seconds, self.up = seconds, up
        self.pinged_at: float | None = None

    async def chat(self, body: Any, *, model: str) -> Any:
        raise AssertionError("readiness sends no request")

    def stream_chat(self, body: Any, *, model: str) -> Any:
        raise AssertionError("readiness sends no request")

    async def embed(self, body: Any, *, model: str) -> Any:
        raise AssertionError("readiness sends no request")

    async def ping(self) -> bool:
        self.pinged_at = trio.current_time()
        await trio.sleep(self.seconds)
        return self.up


async def test_providers_are_pinged_at_once(autojump_clock: trio.testing.MockClock) -> None:
    providers = {"a": SlowPing(2.0, up=False), "b": SlowPing(1.5, up=True),
                 "c": SlowPing(1.0, up=True)}
    config = msgspec.structs.replace(
        Config(), models=MODELS, providers={name: ProviderConfig(kind="sim") for name in "abc"})
    app = create_app(config, providers=providers)  # type: ignore[arg-type]
    start = trio.current_time()
    readiness = await app.readiness()
    # The slowest ping, not the sum of them.
    assert trio.current_time() - start == 2.0
    assert {p.pinged_at for p in providers.values()} == {start}
    assert readiness.ready and readiness.providers_down == ["a"]
