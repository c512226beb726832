"""bench.machinery and bench.ledger's contended measure run end to end on a few calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import ledger as bench_ledger
from bench import machinery


@pytest.mark.parametrize("name", list(machinery.CASES))
def test_every_case_runs_and_costs_something(name: str) -> None:
    assert machinery.measure(machinery.CASES[name], 50, 1) > 0


def test_the_command_prints_one_line_per_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert machinery.main(["--calls", "20", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[:32].rstrip() for line in lines] == list(machinery.CASES)


async def test_contended_writes_every_row_it_counts(tmp_path: Path) -> None:
    rows = bench_ledger.make_rows(40)
    result = await bench_ledger.contended(rows, str(tmp_path), seconds=0.1, rate=300.0,
                                          repeat=1)
    assert result["rows"] == 27  # 0.1 s x 300 rows/s, within 90 % of the window
    assert len(result["us_per_row"]) == 1
