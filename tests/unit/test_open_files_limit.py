"""`tlproxy serve` raises its soft open-files limit to the hard one, never lowers it."""

from __future__ import annotations

import resource

import pytest

from tlproxy import cli

INF = resource.RLIM_INFINITY


@pytest.mark.parametrize(("soft", "hard", "expected"), [
    (256, 20_000, (20_000, 20_000)),  # raised to the operator's ceiling
    (1_024, INF, (1 << 20, INF)),  # no ceiling: a large finite soft limit
    (20_000, 20_000, None),  # already there
    (INF, INF, None),  # unlimited already: never lowered to a number
    (2_000_000, INF, None),  # above the cap already: left as it is
])
def test_the_soft_limit_is_raised_never_lowered(
    monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, expected: tuple[int, int] | None,
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _kind: (soft, hard))
    monkeypatch.setattr(resource, "setrlimit", lambda _kind, limits: calls.append(limits))
    cli._raise_open_files_limit()
    assert calls == ([] if expected is None else [expected])
