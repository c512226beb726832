"""The dashboard's queries give the same answers from a PostgreSQL ledger as from SQLite.

The rows and pairs of `test_report_postgres` (one server, one filled pair of
ledgers), compared as encoded JSON so that a float turned int is a failure.
"""

from __future__ import annotations

from typing import Any

import pytest

from tlproxy.config import Config
from tlproxy.dashboard import BY, STEPS, Window, race, recent, routing, shadow_pairs, spend
from tlproxy.report import to_json

from .postgres_server import requires_postgres
from .test_report_postgres import (  # noqa: F401 - the module's fixtures
    MIDNIGHT,
    WINDOWS,
    Ledgers,
    ledgers,
    server,
)

pytestmark = requires_postgres
IDS = ["all-time", "day2", "midnight", "late", "empty"]


def _window(window: dict[str, Any]) -> Window:
    return Window.parse(window.get("since"), window.get("until"))


@pytest.mark.parametrize("window", WINDOWS, ids=IDS)
@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("by", BY)
def test_spend_is_the_same_from_both(ledgers: Ledgers, by: str, step: str,  # noqa: F811
                                     window: dict[str, Any]) -> None:
    fixed = _window(window)
    from_sqlite = spend(ledgers.sqlite, window=fixed, step=step, by=by)
    assert to_json(spend(ledgers.postgres, window=fixed, step=step, by=by)) == to_json(
        from_sqlite)
    assert bool(from_sqlite["series"]) == (window.get("since") != 4e9)


@pytest.mark.parametrize("window", WINDOWS, ids=IDS)
@pytest.mark.parametrize("step", list(STEPS))
def test_routing_and_race_are_the_same_from_both(ledgers: Ledgers, step: str,  # noqa: F811
                                                 window: dict[str, Any]) -> None:
    fixed = _window(window)
    policies = [("default", Config().policy)]
    assert (to_json(routing(ledgers.postgres, window=fixed, step=step, policies=policies))
            == to_json(routing(ledgers.sqlite, window=fixed, step=step, policies=policies)))
    from_sqlite = race(ledgers.sqlite, window=fixed, step=step)
    assert to_json(race(ledgers.postgres, window=fixed, step=step)) == to_json(from_sqlite)
    if window.get("since") != 4e9:
        assert from_sqlite["total"]["client_ttft_p99_ms"] is not None


def test_buckets_are_utc_hours_and_days(ledgers: Ledgers) -> None:  # noqa: F811
    around = Window(MIDNIGHT - 1, MIDNIGHT + 1)
    for step, seconds in STEPS.items():
        buckets = [r["bucket"] for r in race(ledgers.postgres, window=around,
                                             step=step)["series"]]
        # 23:59:59.5 belongs to the hour (and day) before midnight; midnight starts its own.
        assert buckets == [int(MIDNIGHT) - seconds, int(MIDNIGHT)]


@pytest.mark.parametrize("after", [None, MIDNIGHT - 1, 4e9])
def test_recent_requests_are_the_same_from_both(ledgers: Ledgers,  # noqa: F811
                                                after: float | None) -> None:
    from_sqlite = recent(ledgers.sqlite, limit=40, after=after)
    assert to_json(recent(ledgers.postgres, limit=40, after=after)) == to_json(from_sqlite)
    assert len(from_sqlite["data"]) == (0 if after == 4e9 else 40)
    assert all(r["ts"] > (after or 0) for r in from_sqlite["data"])


@pytest.mark.parametrize("rule", [None, "tools", "règle", "absent"])
def test_shadow_pairs_are_the_same_from_both(ledgers: Ledgers,  # noqa: F811
                                             rule: str | None) -> None:
    from_sqlite = shadow_pairs(ledgers.sqlite, window=Window(None, None), rule=rule, limit=5)
    assert to_json(shadow_pairs(ledgers.postgres, window=Window(None, None), rule=rule,
                                limit=5)) == to_json(from_sqlite)
    assert bool(from_sqlite["pairs"]) == (rule != "absent")
