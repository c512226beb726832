"""Attempts made for `/v1/responses` in the ledger: rows of their own kind, counted as races.

The Responses API runs the same race as chat; its rows say ``kind =
'responses'``, and the dashboard's race view counts them as race attempts, as
the report counts their requests.
"""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_ledger import row, running
from tlproxy.dashboard import Window, race
from tlproxy.ledger import Ledger, SQLiteWriter
from tlproxy.report import usage_json


async def test_responses_attempts_are_race_attempts(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = Ledger(SQLiteWriter(path))
    async with running(ledger):
        ledger.record(row(1, kind="responses"))
        ledger.record(row(1, kind="responses", winner=False, hedge=True, status="cancelled",
                          wasted=True))
        ledger.record(row(2, kind="responses", winner=False, status="error"))
        ledger.record(row(2, kind="chat"))
    total = race(path, window=Window(None, None))["total"]
    assert total["requests"] == usage_json(path, by="all")["total"]["requests"] == 2
    (bucket,) = race(path, window=Window(None, None), step="day")["series"]
    assert (bucket["attempts"], bucket["hedges"], bucket["failed_attempts"]) == (4, 1, 1)
