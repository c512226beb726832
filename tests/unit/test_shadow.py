"""Shadow mode: sampling, the capacity bound, failure isolation, agreement, the report."""

from __future__ import annotations

import json
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from tests.unit.test_ledger import running
from tlproxy.config import ClientKey, Config, ShadowConfig
from tlproxy.ledger import Ledger, SQLiteWriter
from tlproxy.shadow import (
    Agreement,
    Shadow,
    ShadowPair,
    ShadowResult,
    agreement,
    shadow_config_for,
    shadow_main,
    shadow_report,
    should_sample,
)

PRIMARY = ShadowResult(model="claude-sonnet-4-6", text="Paris.", ttft_ms=300.0,
                       duration_ms=900.0, cost_usd=0.002)


def answer(text: str = "Paris.", *, after: float = 0.0) -> Any:
    async def call() -> ShadowResult:
        await trio.sleep(after)
        return ShadowResult(model="gpt-5-nano", text=text, ttft_ms=50.0,
                            duration_ms=after * 1000, cost_usd=0.0001)
    return call


def recording_shadow(max_concurrency: int) -> tuple[Shadow, list[ShadowPair]]:
    pairs: list[ShadowPair] = []
    return Shadow(max_concurrency=max_concurrency, record=pairs.append), pairs


def submit(shadow: Shadow, fn: Any, request_id: str = "req_1", **kw: Any) -> bool:
    return shadow.submit(fn, PRIMARY, request_id=request_id, rule="first-turn",
                         target="economy", **kw)


# -- sampling --------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.02, 0.1, 0.5])
def test_sampling_rate_matches_config(rate: float) -> None:
    rng = random.Random(1234)
    config = ShadowConfig(sample_rate=rate)
    trials = 20_000
    hits = sum(should_sample(config, "first-turn", rng) for _ in range(trials))
    sigma = (trials * rate * (1 - rate)) ** 0.5
    assert abs(hits - trials * rate) < 4 * sigma


@pytest.mark.parametrize(("config", "rule", "served", "expected"), [
    (None, "first-turn", (), False),
    (ShadowConfig(sample_rate=0.0), "first-turn", (), False),
    (ShadowConfig(sample_rate=1.0), "first-turn", (), True),
    (ShadowConfig(sample_rate=1.0, rules=["tools"]), "first-turn", (), False),
    (ShadowConfig(sample_rate=1.0, rules=["first-turn"]), "first-turn", (), True),
    (ShadowConfig(sample_rate=1.0, rules=["first-turn"]), "first-turn (capped by key)", (),
     True),
    (ShadowConfig(sample_rate=1.0, target="economy"), "default", ("economy", "gpt-5-nano"),
     False),
    (ShadowConfig(sample_rate=1.0, target="gpt-5-nano"), "default", ("economy", "gpt-5-mini"),
     True),
], ids=["off", "rate-0", "rate-1", "other-rule", "listed-rule", "capped-rule",
        "same-tier", "other-model"])
def test_sampling_table(config: ShadowConfig | None, rule: str, served: tuple[str, ...],
                        expected: bool) -> None:
    assert should_sample(config, rule, random.Random(0), served=served) is expected


def test_key_shadow_overrides_global() -> None:
    global_ = ShadowConfig(sample_rate=0.1)
    own = ShadowConfig(sample_rate=0.5, target="gpt-5-nano")
    config = Config(shadow=global_)
    key = ClientKey(name="rag", hash="sha256:" + "0" * 64, shadow=own)
    plain = ClientKey(name="other", hash="sha256:" + "1" * 64)
    assert shadow_config_for(config, key) is own
    assert shadow_config_for(config, plain) is global_
    assert shadow_config_for(config, None) is global_


# -- the background runner -------------------------------------------------

async def test_submit_returns_at_once_while_the_shadow_sleeps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shadow, pairs = recording_shadow(4)
    async with running(shadow):
        assert submit(shadow, answer("Paris is the capital.", after=10.0), key="team-a")
        assert trio.current_time() == 0 and pairs == []
        await trio.sleep(10.001)
    (pair,) = pairs
    assert (pair.request_id, pair.rule, pair.key, pair.primary) == (
        "req_1", "first-turn", "team-a", PRIMARY)
    assert pair.shadow.text == "Paris is the capital." and pair.shadow.ok
    assert shadow.statistics().completed == 1


async def test_at_capacity_submissions_are_skipped(autojump_clock: trio.testing.MockClock,
                                                   ) -> None:
    shadow, pairs = recording_shadow(2)
    async with running(shadow):
        started = [submit(shadow, answer(after=5.0), f"req_{i}") for i in range(5)]
        assert started == [True, True, False, False, False]
        assert (shadow.stats.running, shadow.stats.skipped) == (2, 3)
        await trio.sleep(6)
        assert submit(shadow, answer(after=1.0), "req_later")  # capacity is back
        await trio.sleep(2)
    assert sorted(p.request_id for p in pairs) == ["req_0", "req_1", "req_later"]


async def test_key_limit_bounds_one_key(autojump_clock: trio.testing.MockClock) -> None:
    shadow = Shadow(max_concurrency=2, record=lambda pair: None)
    async with running(shadow):
        assert submit(shadow, answer(after=5.0), key="a", key_limit=1)
        assert not submit(shadow, answer(after=5.0), key="a", key_limit=1)
        # The skipped one gave back its global slot, so key b still fits.
        assert submit(shadow, answer(after=5.0), key="b", key_limit=1)
        assert not submit(shadow, answer(after=5.0), key="c", key_limit=1)  # global bound
        assert (shadow.stats.running, shadow.stats.skipped) == (2, 2)


async def test_failing_shadow_changes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    shadow, pairs = recording_shadow(4)

    async def boom() -> ShadowResult:
        await trio.sleep(0.25)
        raise ConnectionError("upstream went away")

    async def wrong() -> Any:
        return {"not": "a result"}

    async with running(shadow):
        assert submit(shadow, boom, "req_boom")
        assert submit(shadow, wrong, "req_wrong")
        await trio.sleep(1)
    by_id = {p.request_id: p.shadow for p in pairs}
    assert not by_id["req_boom"].ok and by_id["req_boom"].model == "economy"
    assert by_id["req_boom"].error == "ConnectionError: upstream went away"
    assert by_id["req_boom"].duration_ms == pytest.approx(250.0)
    assert "TypeError" in (by_id["req_wrong"].error or "")
    assert shadow.statistics().failed == 2


async def test_a_hung_shadow_times_out(autojump_clock: trio.testing.MockClock) -> None:
    pairs: list[ShadowPair] = []
    shadow = Shadow(max_concurrency=1, record=pairs.append, timeout=30.0)
    async with running(shadow):
        submit(shadow, answer(after=math.inf))
        await trio.sleep(31)
        assert submit(shadow, answer(), "req_2")  # the slot is free again
        await trio.sleep(1)
    assert [(p.shadow.ok, p.shadow.error) for p in pairs] == [
        (False, "no answer within 30 s"), (True, None)]


async def test_a_failing_recorder_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    def broken(pair: ShadowPair) -> None:
        raise RuntimeError("disk full")

    shadow = Shadow(max_concurrency=1, record=broken)
    with caplog.at_level("CRITICAL", logger="tlproxy.shadow"):
        async with running(shadow):
            submit(shadow, answer())
            # The shadow call has run (and its recording failed) once nothing can run.
            await trio.testing.wait_all_tasks_blocked()
            assert shadow.statistics().record_errors == 1


async def test_aclose_cancels_outstanding_shadows(autojump_clock: trio.testing.MockClock,
                                                  ) -> None:
    shadow, pairs = recording_shadow(4)
    async with running(shadow):
        submit(shadow, answer(after=100.0))
        await trio.sleep(1)
        await shadow.aclose()
        assert trio.current_time() == 1
    assert pairs == []
    stats = shadow.statistics()
    assert (stats.cancelled, stats.running) == (1, 0)
    assert not submit(shadow, answer())  # closed
    assert shadow.statistics().not_running == 1


def test_submit_before_run_is_skipped() -> None:
    shadow = Shadow(max_concurrency=1, record=lambda pair: None)
    assert not submit(shadow, answer())
    assert shadow.statistics().not_running == 1


# -- agreement -------------------------------------------------------------

AGREEMENT_CASES: list[tuple[str, list[tuple[str | None, str | None]], Agreement]] = [
    ("nothing", [], Agreement(0, None, None, 0, None)),
    ("identical up to whitespace", [("Paris.", " Paris.\n")],
     Agreement(1, 1.0, 8 / 6, 0, None)),
    ("different, half as long", [("abcd", "ab")], Agreement(1, 0.0, 0.5, 0, None)),
    ("a failed side is not compared", [("abcd", None), ("x", "x")],
     Agreement(1, 1.0, 1.0, 0, None)),
    ("empty primary has no ratio", [("", "")], Agreement(1, 1.0, None, 0, None)),
    ("JSON: same keys, other values", [('{"a": 1, "b": 2}', '{"b": 3, "a": 4}')],
     Agreement(1, 0.0, 1.0, 1, 1.0)),
    ("JSON: fenced shadow, same keys", [('{"a": 1}', '```json\n{"a": 2}\n```')],
     Agreement(1, 0.0, 20 / 8, 1, 1.0)),
    ("JSON: other keys", [('{"a": 1}', '{"c": 1}')], Agreement(1, 0.0, 1.0, 1, 0.0)),
    ("JSON: shadow not JSON", [('{"a": 1}', "a is 1")], Agreement(1, 0.0, 6 / 8, 1, 0.0)),
    ("JSON: arrays", [("[1, 2]", "[3]")], Agreement(1, 0.0, 0.5, 1, 1.0)),
    ("plain number is not a JSON answer", [("42", "42")], Agreement(1, 1.0, 1.0, 0, None)),
    ("mixed", [("yes", "yes"), ("no", "nope"), ('{"k": 1}', '{"k": 2}'), ("a", None)],
     Agreement(3, 1 / 3, (1 + 2 + 1) / 3, 1, 1.0)),
]


@pytest.mark.parametrize(("name", "pairs", "expected"), AGREEMENT_CASES,
                         ids=[c[0] for c in AGREEMENT_CASES])
def test_agreement(name: str, pairs: list[tuple[str | None, str | None]],
                   expected: Agreement) -> None:
    got = agreement(pairs)
    assert (got.compared, got.json_pairs) == (expected.compared, expected.json_pairs)
    for field in ("exact_match", "length_ratio", "json_agreement"):
        want = getattr(expected, field)
        assert getattr(got, field) == (None if want is None else pytest.approx(want)), field


# -- the report ------------------------------------------------------------

def pair(i: int, rule: str, primary: str, shadow: str | None, **kw: Any) -> ShadowPair:
    return ShadowPair(
        request_id=f"req_{i}", rule=rule, ts=1_700_000_000.0 + i, prompt=f"question {i}",
        primary=ShadowResult("claude-sonnet-4-6", primary, 300.0 + i, 1000.0, 0.01),
        shadow=ShadowResult("gpt-5-nano", shadow, 50.0 + i, 200.0, 0.001,
                            ok=shadow is not None, error=None if shadow else "timeout"),
        **kw)


@pytest.fixture
async def shadow_db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    ledger = Ledger(SQLiteWriter(path))
    for p in [pair(1, "first-turn", "Paris.", "Paris."),
              pair(2, "first-turn", "It is Paris.", "Lyon."),
              pair(3, "first-turn", '{"city": "Paris"}', '{"city": "Lyon"}'),
              pair(4, "first-turn", "Hi", None),
              pair(5, "tools", "ok", "ok")]:
        ledger.record_shadow(p)
    await ledger.aclose()
    return path


async def test_shadow_report_per_rule(shadow_db: Path) -> None:
    first, tools = shadow_report(shadow_db, examples=2)
    assert (first["rule"], first["pairs"], first["shadow_errors"]) == ("first-turn", 4, 1)
    assert first["primary_cost_usd"] == pytest.approx(0.04)
    assert first["shadow_cost_usd"] == pytest.approx(0.004)
    assert first["primary_client_ttft_p50_ms"] == 302.0  # nearest rank of 301..304
    assert first["shadow_duration_p50_ms"] == 200.0
    assert first["exact_match_pct"] == pytest.approx(100 / 3, abs=0.1)
    assert (first["json_pairs"], first["json_agreement_pct"]) == (1, 100.0)
    # Examples: differing pairs first, most recent first.
    assert [e["request_id"] for e in first["examples"]] == ["req_4", "req_3"]
    assert first["examples"][1]["prompt"] == "question 3"
    assert (tools["pairs"], tools["exact_match_pct"]) == (1, 100.0)


async def test_shadow_report_time_window(shadow_db: Path) -> None:
    (first,) = shadow_report(shadow_db, since=1_700_000_002.0, until=1_700_000_004.0)
    assert first["pairs"] == 2


async def test_shadow_main(shadow_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert shadow_main(["report", "--db", str(shadow_db), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["rule"] for r in rows] == ["first-turn", "tools"]
    assert shadow_main(["report", "--db", str(shadow_db), "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("rule,pairs,") and "examples" not in header
    pytest.importorskip("rich")
    assert shadow_main(["report", "--db", str(shadow_db)]) == 0
    out = capsys.readouterr().out
    assert "first-turn" in out and "primary: It is Paris." in out


def test_shadow_main_without_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert shadow_main(["report", "--db", str(tmp_path / "none.db")]) == 1
    assert "no ledger" in capsys.readouterr().err


async def test_shadow_examples_break_ts_ties_by_insertion(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = Ledger(SQLiteWriter(path))
    for i in (1, 2, 3):  # one instant, written in this order
        ledger.record_shadow(msgspec.structs.replace(pair(i, "r", "a", "b"), ts=1_700_000_000.0))
    await ledger.aclose()
    (report,) = shadow_report(path, examples=3)
    assert [e["request_id"] for e in report["examples"]] == ["req_3", "req_2", "req_1"]


def test_shadow_main_without_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    assert shadow_main(["report", "--db", str(path)]) == 1
    assert "no such table: shadow_pairs" in capsys.readouterr().err
