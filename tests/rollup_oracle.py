"""Random ledger rows, and the report's sums computed from them in plain Python.

The oracle the roll-up is held to (`tests/unit/test_ledger_rollup.py` on SQLite,
`tests/integration/test_ledger_rollup_postgres.py` on PostgreSQL): whatever the
window, the sums `report_sums.window_sums` reads (roll-up days and hours plus raw edges)
must be these, computed row by row with no SQL at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Literal

import pytest
from hypothesis import strategies as st

from tlproxy.ledger import LedgerRow
from tlproxy.ledger_read import Dialect
from tlproxy.ledger_rollup import COLUMNS, FLOATS, GROUPINGS, Hist, ttft_bin
from tlproxy.report_sums import Bucket, window_hists, window_sums

# Three hours before a UTC midnight: the rows span three days and four dates, so a
# window has whole days, whole hours around them and partial hours at its edges.
BASE = 1_767_225_600.0 - 3 * 3600
SPAN = 3 * 86400
BUCKETS: tuple[Bucket, ...] = (None, 3600, 86400, "date")
STATUSES: list[Literal["ok", "error", "cancelled", "cut"]] = [
    "ok", "ok", "error", "cancelled", "cut"]


@st.composite
def ledger_rows(draw: st.DrawFn) -> list[LedgerRow]:
    """Rows as the proxy writes them: one winner at most per request id."""
    count = draw(st.integers(0, 40))
    rows = []
    for i in range(count):
        winner = draw(st.booleans())
        kind: Literal["chat", "responses", "embedding", "shadow", "classifier"] = draw(
            st.sampled_from(["chat", "chat", "responses", "embedding", "shadow", "classifier"]))
        ttft = draw(st.one_of(st.none(), st.floats(0, 5000, allow_nan=False)))
        rows.append(LedgerRow(
            request_id=f"req_{i}", ts=BASE + draw(st.floats(0, SPAN, exclude_max=True)),
            key=draw(st.sampled_from(["a", "b", None])), kind=kind,
            tier=draw(st.sampled_from(["premium", "economy"])),
            model=draw(st.sampled_from(["m1", "m2", "m3"])), provider="sim",
            rule=draw(st.sampled_from(["first-turn", "default", "tools"])),
            prompt_tokens=draw(st.integers(0, 100_000)),
            cached_tokens=draw(st.integers(0, 1000)),
            completion_tokens=draw(st.integers(0, 4000)),
            cost_usd=draw(st.floats(0, 1, allow_nan=False)),
            estimated=draw(st.booleans()), ttft_ms=ttft,
            status=draw(st.sampled_from(STATUSES)),
            winner=winner, hedge=draw(st.booleans()), wasted=not winner and draw(st.booleans()),
            reference_cost_usd=draw(st.floats(0, 2, allow_nan=False)) if winner else 0.0,
            first_token_kind=(draw(st.sampled_from(["content", "reasoning"]))
                              if ttft is not None else None),
            client_ttft_ms=draw(st.one_of(st.none(), st.floats(0, 9000, allow_nan=False)))
            if winner else None))
    return rows


def window_bounds() -> st.SearchStrategy[float | None]:
    """None, a whole day, a whole hour, or any time, around the rows."""
    midnight = BASE + 3 * 3600
    return st.one_of(st.none(), st.integers(-1, 4).map(lambda d: midnight + d * 86400),
                     st.integers(-1, 73).map(lambda h: BASE + h * 3600),
                     st.floats(-3600, SPAN + 3600).map(lambda s: BASE + s))


def _bucket(ts: float, bucket: Bucket) -> list[Any]:
    if bucket is None:
        return []
    if bucket == "date":
        return [dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")]
    return [int(ts // bucket) * bucket]


def _dims(row: LedgerRow) -> dict[str, Any]:
    return {"tier": row.tier, "model": row.model, "key": row.key or "-", "rule": row.rule,
            "first_token": row.first_token_kind or "-", "status": row.status,
            "role": "winner" if row.winner else "hedge" if row.hedge else "other",
            "kind": row.kind}


def expected_sums(rows: Sequence[LedgerRow], since: float | None, until: float | None,
                  dims: Sequence[str], bucket: Bucket) -> dict[tuple[Any, ...], list[Any]]:
    found: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        if (since is not None and row.ts < since) or (until is not None and row.ts >= until):
            continue
        race = row.kind in ("chat", "responses", "embedding")
        values = [
            int(row.winner), 1, row.prompt_tokens, row.cached_tokens, row.completion_tokens,
            row.cost_usd, row.reference_cost_usd if row.winner else 0.0,
            row.cost_usd if row.wasted else 0.0, row.cost_usd if row.kind == "shadow" else 0.0,
            row.cost_usd if row.kind == "classifier" else 0.0,
            row.cost_usd if row.estimated else 0.0, int(row.winner and row.status != "ok"),
            int(race), int(row.hedge), int(not row.winner and race and row.status == "error"),
            int(row.winner and (row.ttft_ms is not None or row.client_ttft_ms is not None))]
        names = (*_bucket(row.ts, bucket), *(_dims(row)[d] for d in dims))
        total = found.setdefault(names, [0] * len(values))
        for i, value in enumerate(values):
            total[i] += value
    return found


def expected_hists(rows: Sequence[LedgerRow], since: float | None, until: float | None,
                   column: str, by_model: bool, bucket: Bucket) -> dict[tuple[Any, ...], Hist]:
    found: dict[tuple[Any, ...], Hist] = {}
    for row in rows:
        value = getattr(row, column)
        if (not row.winner or value is None or (since is not None and row.ts < since)
                or (until is not None and row.ts >= until)):
            continue
        names = (*_bucket(row.ts, bucket), *([row.model] if by_model else []))
        hist = found.setdefault(names, {})
        hist[ttft_bin(value)] = hist.get(ttft_bin(value), 0) + 1
    return found


def assert_window_matches(conn: Any, dialect: Dialect, rows: Sequence[LedgerRow],
                          since: float | None, until: float | None) -> None:
    """Every grouping and bucket of `window_sums`, and the histograms, against the oracle."""
    for dims in GROUPINGS.values():
        for bucket in BUCKETS:
            got = window_sums(conn, dialect, since, until, dims, bucket)
            expected = expected_sums(rows, since, until, dims, bucket)
            assert set(got) == set(expected), (dims, bucket)
            for names, values in expected.items():
                assert len(got[names]) == len(COLUMNS)
                for column, have, want in zip(COLUMNS, got[names], values, strict=True):
                    if column in FLOATS:
                        assert have == pytest.approx(want, rel=1e-9, abs=1e-12), column
                        assert isinstance(have, float), column
                    else:
                        assert have == want and isinstance(have, int), (column, have, want)
    for measure, column, by_model in (("client", "client_ttft_ms", False),
                                      ("upstream", "ttft_ms", False),
                                      ("upstream", "ttft_ms", True)):
        for bucket in BUCKETS:
            got_hists = window_hists(conn, dialect, since, until,
                                     measure=measure,  # type: ignore[arg-type]
                                     by_model=by_model, bucket=bucket)
            assert got_hists == expected_hists(rows, since, until, column, by_model, bucket), (
                measure, by_model, bucket)
