"""The dashboard's queries over the report's hand-worked ledger: the report's numbers, by time."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_ledger import ledger_of_version, version_before
from tests.unit.test_report import DAY1, DAY2, ROWS, db  # noqa: F401 - the fixture
from tests.unit.test_shadow import shadow_db  # noqa: F401 - the fixture
from tlproxy.config import Config, Policy, Rule
from tlproxy.dashboard import (
    BY,
    QUANTILES,
    Window,
    race,
    recent,
    routing,
    shadow_pairs,
    spend,
    spend_csv,
)
from tlproxy.dashboard_queries import _percentiles
from tlproxy.report import percentile, summarize, to_csv, usage_json
from tlproxy.shadow import shadow_report

ALL = Window(None, None)
HOUR1 = int(DAY1)  # DAY1 and DAY2 are 10:00 UTC: the start of their hour
DAY1_START = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())
DAY2_START = DAY1_START + 86400
MONEY = ("requests", "attempts", "prompt_tokens", "cached_tokens", "completion_tokens",
         "spend_usd", "reference_usd", "saving_usd", "saving_pct", "wasted_usd", "shadow_usd",
         "classifier_usd", "estimated_usd", "errors")


def _money(row: dict[str, Any]) -> dict[str, Any]:
    return {column: row[column] for column in MONEY}


# -- spend -------------------------------------------------------------------------------

async def test_spend_by_hour_and_tier(db: Path) -> None:  # noqa: F811
    answer = spend(db, window=ALL, step="hour", by="tier")
    series = {(r["bucket"], r["tier"]): r for r in answer["series"]}
    assert list(series) == [(HOUR1, "economy"), (HOUR1, "premium"),
                            (int(DAY2), "economy"), (int(DAY2), "embedding"),
                            (int(DAY2), "premium")]
    # DAY1, 10:00: req_2 won on economy (0.001) beside its billed hedge (0.0005) and
    # req_1's shadow call (0.0004); the counterfactual is req_2's premium price.
    economy = series[(HOUR1, "economy")]
    assert (economy["requests"], economy["attempts"]) == (1, 3)
    assert economy["spend_usd"] == 0.0019 and economy["reference_usd"] == 0.02
    assert economy["saving_usd"] == 0.0181 and economy["saving_pct"] == 90.5
    assert (economy["wasted_usd"], economy["shadow_usd"]) == (0.0005, 0.0004)
    # DAY2: speculation on premium, cancelled and billed, is premium's spend with no request.
    premium = series[(int(DAY2), "premium")]
    assert (premium["requests"], premium["spend_usd"], premium["wasted_usd"]) == (0, 0.003, 0.003)


@pytest.mark.parametrize("by", BY)
async def test_spend_groups_and_total_are_the_reports(db: Path, by: str) -> None:  # noqa: F811
    answer = spend(db, window=ALL, by=by)
    report = usage_json(db, by=by)
    assert answer["groups"] == [{by: g[by], **_money(g)} for g in report["groups"]]
    assert answer["total"] == _money(report["total"])
    assert answer["keys"] == [{"key": g["key"], **_money(g)}
                              for g in summarize(db, by="key")]
    assert answer["rules"] == [{"rule": g["rule"], **_money(g)}
                               for g in summarize(db, by="rule")]


@pytest.mark.parametrize("by", BY)
@pytest.mark.parametrize("step", ["hour", "day"])
async def test_the_series_adds_up_to_the_groups(db: Path, by: str, step: str) -> None:  # noqa: F811
    answer = spend(db, window=ALL, step=step, by=by)
    for group in answer["groups"]:
        rows = [r for r in answer["series"] if r[by] == group[by]]
        for column in ("requests", "attempts", "prompt_tokens", "errors"):
            assert sum(r[column] for r in rows) == group[column]
        for column in ("spend_usd", "reference_usd", "wasted_usd"):
            assert math.isclose(sum(r[column] for r in rows), group[column], abs_tol=1e-9)


async def test_days_are_the_reports_utc_days(db: Path) -> None:  # noqa: F811
    answer = spend(db, window=ALL, step="day", by="tier")
    days = sorted({r["bucket"] for r in answer["series"]})
    assert days == [DAY1_START, DAY2_START]
    report_days = [d["day"] for d in summarize(db, by="day")]
    assert [dt.datetime.fromtimestamp(b, dt.UTC).date().isoformat() for b in days] == report_days


async def test_a_window_limits_every_part(db: Path) -> None:  # noqa: F811
    window = Window(DAY2 - 1, None)
    answer = spend(db, window=window, by="model")
    assert {r["bucket"] for r in answer["series"]} == {int(DAY2)}
    assert answer["total"] == _money(usage_json(db, since=DAY2 - 1, by="all")["total"])
    assert spend(db, window=Window(4e9, None))["total"] is None


@pytest.mark.parametrize("by", BY)
async def test_csv_is_the_reports_csv(db: Path, by: str) -> None:  # noqa: F811
    window = Window(DAY1 - 1, DAY2 + 3600)
    expected = to_csv(usage_json(db, since=DAY1 - 1, until=DAY2 + 3600, by=by)["groups"])
    assert spend_csv(db, window=window, by=by) == expected
    assert expected.startswith(f"{by},requests,attempts,")


@pytest.mark.parametrize(("option", "value"), [("step", "week"), ("by", "day"), ("by", "x")])
async def test_bad_options_are_value_errors(db: Path, option: str,  # noqa: F811
                                            value: str) -> None:
    with pytest.raises(ValueError, match=option):
        spend(db, window=ALL, **{option: value})


# -- routing -----------------------------------------------------------------------------

async def test_routing_shares_and_the_policys_rules_in_order(db: Path) -> None:  # noqa: F811
    config = Config()
    answer = routing(db, window=ALL, step="day", policies=[("default", config.policy)])
    assert answer["series"] == [
        {"bucket": DAY1_START, "rule": "default", "tier": "economy", "requests": 1},
        {"bucket": DAY1_START, "rule": "first-turn", "tier": "premium", "requests": 1},
        {"bucket": DAY2_START, "rule": "default-embedding", "tier": "embedding", "requests": 1},
        {"bucket": DAY2_START, "rule": "summarize-extract", "tier": "economy", "requests": 1},
    ]
    (policy,) = answer["policies"]
    hits = [(r["name"], r["tier"], r["requests"]) for r in policy["rules"]]
    assert hits == [("system-only-warmup", "economy", 0), ("tools", "premium", 0),
                    ("summarize-extract", "economy", 1),
                    ("semantic-summarize-extract", "economy", 0),
                    ("structured-output", "economy", 0), ("first-turn", "premium", 1),
                    ("default", "economy", 1)]
    assert policy["rules"][1]["when"] == "tools=True"
    # Not a rule of any policy: the embedding route's own.
    assert answer["other"] == [{"rule": "default-embedding", "tier": "embedding", "requests": 1}]


async def test_a_custom_policy_lists_its_own_rules(db: Path) -> None:  # noqa: F811
    custom = Policy(rules=[Rule(name="first-turn", tier="economy")], default_tier="premium")
    answer = routing(db, window=ALL, policies=[("cheap", custom)])
    (policy,) = answer["policies"]
    assert [(r["name"], r["tier"], r["when"], r["requests"]) for r in policy["rules"]] == [
        ("first-turn", "economy", "always", 1), ("default", "premium", "no rule matched", 1)]
    assert [r["rule"] for r in answer["other"]] == ["default-embedding", "summarize-extract"]


# -- the race ----------------------------------------------------------------------------

async def test_race_by_day(db: Path) -> None:  # noqa: F811
    answer = race(db, window=ALL, step="day")
    day1, day2 = answer["series"]
    # DAY1: req_1 and req_2 (clients saw 420 and 350 ms), req_2's billed hedge.
    assert day1 == {
        "bucket": DAY1_START, "requests": 2, "errors": 0, "error_rate_pct": 0.0,
        "attempts": 3, "hedges": 1, "failed_attempts": 0, "wasted_usd": 0.0005,
        "client_ttft_p50_ms": 350.0, "client_ttft_p90_ms": 420.0,
        "client_ttft_p95_ms": 420.0, "client_ttft_p99_ms": 420.0}
    assert (day2["requests"], day2["hedges"], day2["wasted_usd"]) == (2, 0, 0.003)
    models = [(m["bucket"], m["model"], m["upstream_ttft_p50_ms"]) for m in answer["models"]]
    assert models == [(DAY1_START, "claude-sonnet-4-6", 300.0),
                      (DAY1_START, "gpt-5-nano", 100.0), (DAY2_START, "gpt-5-nano", 200.0)]
    kinds = {(o["kind"], o["role"], o["status"]): o["attempts"] for o in answer["outcomes"]}
    assert kinds == {("chat", "hedge", "cancelled"): 1, ("chat", "other", "cancelled"): 1,
                     ("chat", "winner", "ok"): 3, ("embedding", "winner", "ok"): 1,
                     ("shadow", "other", "ok"): 1}


async def test_race_total_is_the_reports(db: Path) -> None:  # noqa: F811
    total = race(db, window=ALL)["total"]
    report = usage_json(db, by="all")["total"]
    for column in ("client_ttft_p50_ms", "client_ttft_p95_ms", "upstream_ttft_p50_ms",
                   "upstream_ttft_p95_ms", "requests", "errors", "wasted_usd"):
        assert total[column] == report[column], column
    assert race(db, window=Window(4e9, None)) | {"since": None} == {
        "object": "tlproxy.race", "since": None, "until": None, "step": "hour",
        "percentiles": "exact",
        "series": [], "models": [], "total": None, "outcomes": []}


@contextlib.contextmanager
def _ttfts(values: list[tuple[str, float | None, bool]]) -> Iterator[sqlite3.Cursor]:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE ledger (ts REAL, model TEXT, ttft_ms REAL, winner INTEGER)")
    conn.executemany("INSERT INTO ledger VALUES (0, ?, ?, ?)", values)
    try:
        yield conn.cursor()
    finally:
        conn.close()


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]),
                          st.one_of(st.none(), st.floats(0, 1e5, allow_nan=False)),
                          st.booleans()), max_size=60))
def test_sql_percentiles_are_the_reports(values: list[tuple[str, float | None, bool]]) -> None:
    with _ttfts(values) as cursor:
        found = _percentiles(cursor, ["model"], "ttft_ms", "1 = 1", [])
        overall = _percentiles(cursor, [], "ttft_ms", "1 = 1", []).get(())
    for model in ("a", "b", None):
        times = [v for m, v, winner in values
                 if winner and v is not None and model in (None, m)]
        got = overall if model is None else found.get((model,))
        if not times:
            assert got is None
            continue
        assert got is not None and got["ttft_count"] == len(times)
        for p in QUANTILES:
            expected = percentile(times, p / 100)
            assert got[f"p{p}"] == (None if expected is None else round(expected, 1))


# -- recent requests and shadow pairs ----------------------------------------------------

async def test_recent_requests_newest_first_without_what_was_said(db: Path) -> None:  # noqa: F811
    data = recent(db, limit=3)["data"]
    assert [r["request_id"] for r in data] == ["req_4", "req_3", "req_2"]
    assert "prompt" not in data[0] and "text" not in data[0]
    assert data[1] | {"ts": 0} == {
        "request_id": "req_3", "ts": 0, "key": "b", "kind": "chat", "tier": "economy",
        "model": "gpt-5-nano", "provider": "sim", "rule": "summarize-extract",
        "ttft_ms": 200.0, "client_ttft_ms": 330.0, "first_token_kind": "content",
        "prompt_tokens": 1000, "completion_tokens": 50, "cost_usd": 0.002, "status": "ok"}
    assert [r["request_id"] for r in recent(db, after=DAY2)["data"]] == ["req_4"]


async def test_recent_reads_a_ledger_older_than_its_columns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    await ledger_of_version(path, version_before("first_token_kind"), monkeypatch)
    (row,) = recent(path)["data"]
    assert (row["first_token_kind"], row["client_ttft_ms"]) == (None, None)
    assert race(path, window=ALL)["total"]["client_ttft_p50_ms"] is None


async def test_shadow_summary_is_the_reports_and_pairs_side_by_side(
        shadow_db: Path) -> None:  # noqa: F811
    answer = shadow_pairs(shadow_db, window=ALL, limit=2)
    expected = shadow_report(shadow_db, examples=0)
    for row in expected:
        row.pop("examples")
    assert answer["summary"] == expected
    latest, before = answer["pairs"]
    assert (latest["request_id"], before["request_id"]) == ("req_5", "req_4")
    assert before["primary"] == {"model": "claude-sonnet-4-6", "text": "Hi", "ttft_ms": 304.0,
                                 "duration_ms": 1000.0, "cost_usd": 0.01, "ok": True,
                                 "error": None}
    assert before["shadow"]["ok"] is False and before["shadow"]["error"] == "timeout"
    assert before["prompt"] == "question 4"
    only = shadow_pairs(shadow_db, window=ALL, rule="first-turn")
    assert [r["rule"] for r in only["summary"]] == ["first-turn"]
    assert [p["request_id"] for p in only["pairs"]] == ["req_4", "req_3", "req_2", "req_1"]
