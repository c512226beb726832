"""`tlproxy report`'s recovery lines: what finishing broken streams cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_ledger import ledger_of_version, version_before
from tests.unit.test_report import DAY1, attempt, ledger_file
from tlproxy.report import recovery, report_main

ROWS = [
    # req_1: cut after its first token, finished by another model.
    attempt("req_1", DAY1, "economy", "gpt-5-nano", cost=0.001, reference=0.02, ttft=100.0,
            status="cut"),
    attempt("req_1", DAY1 + 1, "economy", "gemini-2.5-flash", cost=0.0004, ttft=90.0,
            winner=False, continuation="cut"),
    # req_2: stalled; the first continuation failed too, the second finished it.
    attempt("req_2", DAY1 + 60, "economy", "gpt-5-nano", cost=0.001, reference=0.02,
            ttft=100.0, status="cut"),
    attempt("req_2", DAY1 + 62, "economy", "gemini-2.5-flash", cost=0.0002, ttft=None,
            winner=False, continuation="stall", status="error"),
    attempt("req_2", DAY1 + 63, "economy", "claude-haiku-4-5", cost=0.0006, ttft=80.0,
            winner=False, continuation="stall"),
]


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    return await ledger_file(tmp_path / "ledger.db", ROWS)


async def test_continuations_by_reason_with_their_cost(db: Path) -> None:
    assert recovery(db) == [
        {"reason": "cut", "continuations": 1, "recovered": 1, "completion_tokens": 50,
         "spend_usd": 0.0004},
        {"reason": "stall", "continuations": 2, "recovered": 1, "completion_tokens": 100,
         "spend_usd": 0.0008},
    ]
    assert recovery(db, since=DAY1 + 30) == [
        {"reason": "stall", "continuations": 2, "recovered": 1, "completion_tokens": 100,
         "spend_usd": 0.0008}]


async def test_the_report_shows_recovery(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main(["--db", str(db), "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [r["reason"] for r in document["recovery"]] == ["cut", "stall"]
    # Two requests: continuations are not winners.
    assert document["total"]["requests"] == 2
    assert report_main(["--db", str(db)]) == 0
    assert "Recovery" in capsys.readouterr().out


async def test_a_ledger_from_before_continuations_has_no_recovery(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    await ledger_of_version(path, version_before("continuation"), monkeypatch)
    assert recovery(path) == []
