"""bench/dashboard.py: the rows it makes are ledger rows, and a small run reports every query."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from bench.dashboard import COLUMNS, PAGES, YEAR, main, make_rows
from tlproxy.ledger import LedgerRow


def test_rows_are_ledger_rows_spread_over_the_year() -> None:
    now = 1_800_000_000.0
    rows = [LedgerRow(**dict(zip(COLUMNS, values, strict=True)))
            for values in make_rows(4000, now=now)]
    assert len(rows) == 4000
    assert now - YEAR <= rows[0].ts < rows[-1].ts < now
    winners = [r for r in rows if r.winner]
    assert {r.request_id for r in winners} == {r.request_id for r in rows}
    assert 0.1 < 1 - len(winners) / len(rows) < 0.3  # about a request in four has a loser
    assert all(r.client_ttft_ms is not None and r.client_ttft_ms >= r.ttft_ms
               for r in winners if r.ttft_ms is not None)
    msgspec.json.encode(rows)  # every field of the right type


def test_a_small_run_times_every_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    assert main(["--rows", "3000", "--repeat", "1", "--dir", str(tmp_path),
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    timings = result["databases"]["SQLite"]
    pages = [f"{window} | page: {page}" for window in ("year", "7 days") for page in PAGES]
    assert set(pages) <= set(timings)
    assert all(t["median_s"] > 0 for t in timings.values())
    printed = capsys.readouterr().out
    assert "| year | race (hour) |" in printed and "PostgreSQL" not in printed
