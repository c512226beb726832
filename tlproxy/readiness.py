"""Readiness: can this instance answer, and which providers are down.

A load balancer takes an instance out of rotation when `/readyz` fails, so
readiness must mean "requests sent here are answered", not "every upstream is
up". One provider's outage is not the instance's: if every tier in use still
has a healthy model, requests are answered through it (the race and the
fallbacks route around the dead provider), and taking every instance out of
rotation would turn a partial outage into a total one. A tier whose models are
all down is different: its requests fail here, so the instance is not ready.

A model is healthy when its provider answered the last ping and its circuit
breaker does not refuse requests. The pings are the caller's I/O; this module
only judges their results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import msgspec

from .config import ModelConfig


class Readiness(msgspec.Struct, frozen=True):
    ready: bool
    # Each tier in use and its healthy models, in catalog order.
    tiers: dict[str, list[str]]
    providers_down: list[str]
    problems: list[str]

    def body(self) -> dict[str, object]:
        """The `/readyz` answer: what is up, what is down, and why not ready."""
        body: dict[str, object] = {
            "status": "ready" if self.ready else "unavailable",
            "tiers": self.tiers,
            "providers_down": self.providers_down,
        }
        if self.problems:
            body["problems"] = self.problems
        return body


def assess(
    models: Iterable[ModelConfig],
    reachable: Mapping[str, bool],
    available: Callable[[str], bool],
) -> Readiness:
    """Judge readiness from ping results (`reachable` by provider name) and the
    breakers (`available(model_id)`)."""
    tiers: dict[str, list[str]] = {}
    for model in models:
        healthy = tiers.setdefault(model.tier, [])
        if reachable.get(model.provider, False) and available(model.id):
            healthy.append(model.id)
    problems = [f"no healthy model in tier {tier}" for tier, ids in tiers.items() if not ids]
    down = sorted(name for name, up in reachable.items() if not up)
    return Readiness(ready=not problems, tiers=tiers, providers_down=down, problems=problems)


def shutting_down() -> Readiness:
    return Readiness(ready=False, tiers={}, providers_down=[], problems=["shutting down"])
