"""The roll-up: kept by the writer, filled on migration, equal to the raw rows' sums."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlproxy import ledger_rollup
from tlproxy.dashboard import QUANTILES, Window, race
from tlproxy.ledger import MIGRATIONS, Ledger, LedgerRow, SQLiteWriter
from tlproxy.ledger_read import SQLITE, reading_ledger
from tlproxy.ledger_rollup import (
    RELATIVE_ERROR,
    bin_value,
    decode_hist,
    hist_percentile,
    rebuild,
    ttft_bin,
)
from tlproxy.report import usage_json
from tlproxy.report_sums import has_rollup, percentile

from ..rollup_oracle import BASE, assert_window_matches, ledger_rows, window_bounds
from .test_ledger import ledger_of_version

ROLLUP_VERSION = next(version for version, steps in enumerate(MIGRATIONS, start=1)
                      if ledger_rollup.backfill in steps)


@contextlib.contextmanager
def _ledger(rows: list[LedgerRow], batches: int) -> Iterator[Path]:
    """A SQLite ledger of `rows`, written by the writer in `batches` transactions."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ledger.db"
        writer = SQLiteWriter(path)
        trio.run(writer.migrate)
        size = max(1, math.ceil(len(rows) / batches))
        for start in range(0, len(rows), size):
            trio.run(writer.write, rows[start:start + size])
        trio.run(writer.aclose)
        yield path


def _table(path: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"SELECT * FROM {ledger_rollup.TABLE} "
                            "ORDER BY grp, span, start, a, b, c").fetchall()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ledger_rows(), st.integers(1, 4), st.lists(st.tuples(window_bounds(), window_bounds()),
                                                   min_size=1, max_size=4))
def test_rollup_sums_equal_the_raw_rows(rows: list[LedgerRow], batches: int,
                                        windows: list[tuple[float | None, float | None]],
                                        ) -> None:
    with _ledger(rows, batches) as path, reading_ledger(path) as (conn, dialect):
        assert has_rollup(conn, dialect)
        for since, until in [(None, None), *windows]:
            assert_window_matches(conn, dialect, rows, since, until)


@settings(max_examples=25, deadline=None)
@given(ledger_rows(), st.integers(1, 4))
def test_backfill_builds_what_the_writer_kept(rows: list[LedgerRow], batches: int) -> None:
    with _ledger(rows, batches) as path:
        kept = _table(path)
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            rebuild(conn.cursor(), SQLITE.param)
            conn.execute("COMMIT")
        rebuilt = _table(path)
    assert [r[:6] for r in rebuilt] == [r[:6] for r in kept]
    width = 6 + len(ledger_rollup.COLUMNS)
    for old, new in zip(kept, rebuilt, strict=True):
        assert new[6:width] == pytest.approx(old[6:width], rel=1e-12)
        assert ([decode_hist(str(h)) if h else {} for h in new[width:]]
                == [decode_hist(str(h)) if h else {} for h in old[width:]])


async def test_an_older_ledger_is_rolled_up_when_it_is_migrated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    await ledger_of_version(path, ROLLUP_VERSION - 1, monkeypatch)
    with reading_ledger(path) as (conn, dialect):
        assert not has_rollup(conn, dialect)
    before = usage_json(path, by="model")
    writer = SQLiteWriter(path)
    ledger = Ledger(writer)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        ledger.record(LedgerRow(request_id="req_new", ts=1_700_000_100.0, tier="economy",
                                model="gpt-5-nano", provider="openai", rule="default",
                                cost_usd=0.0002, reference_cost_usd=0.003))
        await ledger.aclose()
    rows = _table(path)
    assert {("all", 3600, 1_699_999_200, "", "", ""), ("all", 86400, 1_699_920_000, "", "", "")
            } <= {r[:6] for r in rows}
    after = usage_json(path, by="model")
    assert before["groups"][0]["requests"] == 1
    # The row written before the roll-up existed and the one after, both summed from it.
    (group,) = after["groups"]
    assert (group["requests"], group["spend_usd"]) == (2, 0.0003)
    hour = usage_json(path, by="model", since=1_699_999_200, until=1_700_002_800)
    assert hour["groups"] == after["groups"] and hour["total"] == after["total"]


def test_a_worker_waits_while_another_migrates_a_large_ledger(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filling the roll-up of a large ledger holds SQLite's write lock for longer than a
    write waits (`busy_timeout`): a worker starting meanwhile waits for it, not fails."""
    path = tmp_path / "l.db"
    trio.run(ledger_of_version, path, ROLLUP_VERSION - 1, monkeypatch)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another worker, migrating
    release = threading.Timer(0.2, holder.execute, ("COMMIT",))
    release.start()
    writer = SQLiteWriter(path, busy_timeout=0.01)
    try:
        trio.run(writer.migrate)
        trio.run(writer.aclose)
    finally:
        release.join()
        holder.close()
    assert (ledger_rollup.TABLE,) in _tables(path)


def _tables(path: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()


# -- histograms ---------------------------------------------------------------------------

@pytest.mark.parametrize("ms", [0.0, 0.0005, 0.001, 0.5, 1.0, 99.99, 100.0, 250.0, 60_000.0])
def test_a_bins_value_is_within_the_stated_error(ms: float) -> None:
    value = bin_value(ttft_bin(ms))
    assert abs(value - max(ms, 0.001)) <= RELATIVE_ERROR * max(ms, 0.001) * (1 + 1e-9)
    assert ttft_bin(ms) <= ttft_bin(ms * 1.5)


@given(st.lists(st.floats(0.001, 1e6, allow_nan=False), min_size=1, max_size=200))
def test_histogram_percentiles_are_within_the_stated_error(values: list[float]) -> None:
    hist: dict[int, int] = {}
    for value in values:
        hist[ttft_bin(value)] = hist.get(ttft_bin(value), 0) + 1
    for p in QUANTILES:
        exact = percentile(values, p / 100)
        found = hist_percentile(hist, p)
        assert exact is not None and found is not None
        assert abs(found - exact) <= RELATIVE_ERROR * exact * (1 + 1e-9)
    assert hist_percentile({}, 50) is None


@settings(max_examples=30, deadline=None)
@given(ledger_rows(), st.sampled_from(["hour", "day"]), window_bounds(), window_bounds())
def test_race_from_histograms_is_the_exact_race_within_the_error(
        rows: list[LedgerRow], step: str, since: float | None, until: float | None) -> None:
    with _ledger(rows, 2) as path:
        window = Window(since, until)
        exact = race(path, window=window, step=step)
        approximate = race(path, window=window, step=step, exact_up_to=-1)
    assert exact["percentiles"] == "exact"
    assert approximate["percentiles"] == "histogram"
    assert approximate["outcomes"] == exact["outcomes"]
    pairs = [(exact["total"], approximate["total"])] if exact["total"] else []
    pairs += list(zip(exact["series"], approximate["series"], strict=True))
    pairs += list(zip(exact["models"], approximate["models"], strict=True))
    for want, have in pairs:
        assert set(have) == set(want)
        for column, value in want.items():
            if column.endswith("_ms") and value is not None:
                # Within 1 %, after both were rounded to a tenth of a millisecond.
                assert abs(have[column] - value) <= RELATIVE_ERROR * value + 0.1, column
            else:
                assert have[column] == value, column


def test_rollup_rows_are_few_next_to_the_ledger() -> None:
    """A hundred rows in one hour of one model, key and rule: one roll-up row a grouping
    for the hour, and one for the day."""
    rows = [LedgerRow(request_id=f"r{i}", ts=BASE + i, tier="economy", model="m",
                      provider="sim", rule="default", key="a", ttft_ms=100.0 + i,
                      client_ttft_ms=120.0 + i, first_token_kind="content")
            for i in range(100)]
    delta = ledger_rollup.rollup(
        [getattr(row, f) for f in ledger_rollup.FIELDS] for row in rows)
    assert len(delta.sums) == 2 * len(ledger_rollup.GROUPINGS)
    day = ledger_rollup.start_of(BASE, 86400)
    assert delta.sums[("all", 3600, int(BASE), "", "", "")][:2] == [100, 100]
    assert delta.sums[("all", 86400, day, "", "", "")][:2] == [100, 100]
    client, upstream = delta.hists[("all", 3600, int(BASE), "", "", "")]
    assert (sum(client.values()), sum(upstream.values())) == (100, 100)
    assert delta.hists[("model", 86400, day, "m", "", "")][0] == {}
