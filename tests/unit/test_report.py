"""Spend reports over a small ledger whose every number is worked out by hand."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_ledger import ledger_of_version, running, version_before
from tlproxy.ledger import Ledger, LedgerRow, SQLiteWriter
from tlproxy.report import (
    GROUPS,
    POSTGRES,
    SQLITE,
    LedgerReadError,
    dialect_of,
    ledger_path,
    ledger_source,
    parse_time,
    percentile,
    redact,
    render_table,
    report_main,
    summarize,
    to_csv,
    usage_json,
)

DAY1 = dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC).timestamp()
DAY2 = dt.datetime(2026, 1, 2, 10, tzinfo=dt.UTC).timestamp()


def attempt(request_id: str, ts: float, tier: str, model: str, *, key: str | None = "a",
            rule: str = "default", cost: float, reference: float = 0.0, ttft: float | None,
            winner: bool = True, **kw: Any) -> LedgerRow:
    return LedgerRow(request_id=request_id, ts=ts, key=key, tier=tier, model=model,
                     provider="sim", rule=rule, prompt_tokens=1000, cached_tokens=100,
                     completion_tokens=50, cost_usd=cost, ttft_ms=ttft, duration_ms=1000.0,
                     winner=winner, reference_cost_usd=reference, **kw)


ROWS = [
    # req_1: premium served it.
    attempt("req_1", DAY1, "premium", "claude-sonnet-4-6", rule="first-turn", cost=0.01,
            reference=0.01, ttft=300.0, client_ttft_ms=420.0, first_token_kind="content"),
    # req_2: economy won; a hedge on another economy model lost but was billed.
    # A reasoning model's first token is a thought, not a word.
    attempt("req_2", DAY1 + 60, "economy", "gpt-5-nano", cost=0.001, reference=0.02,
            ttft=100.0, client_ttft_ms=350.0, first_token_kind="reasoning"),
    attempt("req_2", DAY1 + 60, "economy", "gemini-2.5-flash", cost=0.0005, ttft=None,
            winner=False, hedge=True, wasted=True, status="cancelled"),
    # req_3: speculation on premium lost to economy once the decision came.
    attempt("req_3", DAY2, "economy", "gpt-5-nano", key="b", rule="summarize-extract",
            cost=0.002, reference=0.03, ttft=200.0, client_ttft_ms=330.0,
            first_token_kind="content"),
    attempt("req_3", DAY2, "premium", "claude-sonnet-4-6", key="b", rule="summarize-extract",
            cost=0.003, ttft=None, winner=False, wasted=True, status="cancelled",
            estimated=True),
    # req_1's shadow call to economy.
    attempt("req_1", DAY1 + 1, "economy", "gpt-5-nano", rule="first-turn", kind="shadow",
            cost=0.0004, ttft=80.0, winner=False),
    # An embedding: its own reference.
    attempt("req_4", DAY2 + 60, "embedding", "text-embedding-3-small", key=None,
            rule="default-embedding", kind="embedding", cost=0.0001, reference=0.0001,
            ttft=None),
]


async def ledger_file(path: Path, rows: Sequence[LedgerRow]) -> Path:
    """A SQLite ledger at `path` holding `rows`, written as the proxy writes them."""
    ledger = Ledger(SQLiteWriter(path))
    async with running(ledger):
        for row in rows:
            ledger.record(row)
    return path


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    return await ledger_file(tmp_path / "ledger.db", ROWS)


async def test_by_tier(db: Path) -> None:
    premium, economy, embedding = summarize(db, by="tier")  # most spend first
    assert premium == {
        "tier": "premium", "requests": 1, "attempts": 2, "prompt_tokens": 2000,
        "cached_tokens": 200, "completion_tokens": 100, "spend_usd": 0.013,
        "reference_usd": 0.01, "saving_usd": -0.003, "saving_pct": -30.0,
        "wasted_usd": 0.003, "shadow_usd": 0.0, "classifier_usd": 0.0,
        "estimated_usd": 0.003, "errors": 0,
        "client_ttft_p50_ms": 420.0, "client_ttft_p95_ms": 420.0,
        "upstream_ttft_p50_ms": 300.0, "upstream_ttft_p95_ms": 300.0, "ttft_kinds": "content",
        "ttft_by_kind": {"content": {
            "requests": 1, "upstream_ttft_p50_ms": 300.0, "upstream_ttft_p95_ms": 300.0}},
    }
    assert (economy["requests"], economy["attempts"]) == (2, 4)
    assert economy["spend_usd"] == pytest.approx(0.0039)
    assert economy["saving_usd"] == pytest.approx(0.05 - 0.0039)
    assert (economy["wasted_usd"], economy["shadow_usd"]) == (0.0005, 0.0004)
    # Winners only: the shadow call's 80 ms is not the client's TTFT.
    assert (economy["upstream_ttft_p50_ms"], economy["upstream_ttft_p95_ms"]) == (100.0, 200.0)
    # What the clients saw: the decision and the race on top of the winner's own.
    assert (economy["client_ttft_p50_ms"], economy["client_ttft_p95_ms"]) == (330.0, 350.0)
    # Which kinds of first token those percentiles mix, and each kind's own.
    assert economy["ttft_kinds"] == "content+reasoning"
    assert economy["ttft_by_kind"] == {
        "content": {"requests": 1, "upstream_ttft_p50_ms": 200.0, "upstream_ttft_p95_ms": 200.0},
        "reasoning": {"requests": 1, "upstream_ttft_p50_ms": 100.0,
                      "upstream_ttft_p95_ms": 100.0}}
    assert (embedding["saving_usd"], embedding["upstream_ttft_p50_ms"]) == (0.0, None)
    assert embedding["client_ttft_p50_ms"] is None
    assert (embedding["ttft_kinds"], embedding["ttft_by_kind"]) == (None, {})


async def test_classifier_calls_and_json_answers(tmp_path: Path) -> None:
    """The classifier's spend has its own column; a JSON answer has no TTFT to mix in."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(SQLiteWriter(path))
    async with running(ledger):
        for row in [
            attempt("req_1", DAY1, "economy", "gpt-5-nano", cost=0.002, reference=0.03,
                    ttft=90.0, client_ttft_ms=310.0),
            attempt("req_1", DAY1, "embedding", "text-embedding-3-small", kind="classifier",
                    rule="classifier", cost=0.00001, ttft=None, winner=False),
            # A JSON answer: its duration is no first token, on either side.
            attempt("req_2", DAY1 + 1, "economy", "gpt-5-nano", cost=0.003, reference=0.04,
                    ttft=None),
            attempt("req_2", DAY1 + 1, "embedding", "text-embedding-3-small",
                    kind="classifier", rule="classifier", cost=0.00002, ttft=None,
                    winner=False),
        ]:
            ledger.record(row)
    (total,) = summarize(path, by="all")
    assert (total["requests"], total["attempts"]) == (2, 4)
    assert total["classifier_usd"] == pytest.approx(0.00003)
    assert total["spend_usd"] == pytest.approx(0.00503)
    assert total["saving_usd"] == pytest.approx(0.07 - 0.00503)
    assert (total["upstream_ttft_p50_ms"], total["upstream_ttft_p95_ms"]) == (90.0, 90.0)
    assert (total["client_ttft_p50_ms"], total["client_ttft_p95_ms"]) == (310.0, 310.0)
    by_rule = {r["rule"]: r for r in summarize(path, by="rule")}
    assert (by_rule["classifier"]["requests"], by_rule["classifier"]["attempts"]) == (0, 2)


async def test_total_and_usage_json(db: Path) -> None:
    document = usage_json(db, by="model")
    total = document["total"]
    assert (total["requests"], total["attempts"]) == (4, 7)
    assert total["spend_usd"] == pytest.approx(0.017)
    assert total["saving_usd"] == pytest.approx(0.0601 - 0.017)
    assert total["wasted_usd"] == pytest.approx(0.0035)
    assert [g["model"] for g in document["groups"]] == [
        "claude-sonnet-4-6", "gpt-5-nano", "gemini-2.5-flash", "text-embedding-3-small"]
    assert document["by"] == "model" and document["since"] is None
    json.dumps(document)  # plain JSON types only


@pytest.mark.parametrize(("by", "groups"), [
    ("key", {"a": 2, "b": 1, "-": 1}),  # '-': requests without a client key
    ("rule", {"first-turn": 1, "default": 1, "summarize-extract": 1, "default-embedding": 1}),
    ("day", {"2026-01-01": 2, "2026-01-02": 2}),
    # '-': winners with no first token (the embedding); req_1 also has a shadow row.
    ("first_token", {"content": 2, "reasoning": 1, "-": 1}),
])
async def test_other_groupings(db: Path, by: str, groups: dict[str, int]) -> None:
    rows = summarize(db, by=by)
    assert {r[by]: r["requests"] for r in rows} == groups
    if by == "day":
        assert [r["day"] for r in rows] == ["2026-01-01", "2026-01-02"]


async def test_time_window(db: Path) -> None:
    (day2,) = summarize(db, by="all", since="2026-01-02", until="2026-01-03T00:00:00+00:00")
    assert (day2["requests"], day2["attempts"]) == (2, 3)
    assert summarize(db, since=DAY2 + 3600) == []


async def test_rendering(db: Path) -> None:
    table_module = pytest.importorskip("rich.table")
    document = usage_json(db)
    table = render_table(document["groups"], title="Spend by tier", total=document["total"])
    assert isinstance(table, table_module.Table) and table.row_count == 4
    csv_text = to_csv(document["groups"])
    lines = csv_text.splitlines()
    assert lines[0].startswith("tier,requests,attempts,") and len(lines) == 4


async def test_report_main_formats(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main(["--db", str(db), "--by", "key", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["requests"] == 4
    assert report_main(["--db", str(db), "--format", "csv", "--since", "2026-01-02"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == ["tier", "premium", "economy", "embedding"]
    pytest.importorskip("rich")
    assert report_main(["--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "Spend by tier" in out and "total" in out and "$0.0130" in out
    # Both TTFTs, named, fit an 80-column terminal: the last column (upstream p95) is
    # whole. (The second day's first tokens are all content: no kinds column.)
    assert report_main(["--db", str(db), "--since", "2026-01-02"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[1].split()[-4:] == ["client", "client", "upstr", "upstr"]
    assert lines[5].split()[0] == "economy"
    assert lines[5].split()[-4:] == ["330", "330", "200", "200"]


async def test_the_table_names_the_first_token_kinds_when_they_are_mixed(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("rich")
    monkeypatch.setenv("COLUMNS", "160")
    assert report_main(["--db", str(db)]) == 0
    header, second, *lines = capsys.readouterr().out.splitlines()[1:]
    assert (header.split()[-1], second.split()[-1]) == ("1st", "token")
    economy = next(line for line in lines if line.startswith("economy"))
    assert economy.split()[-3:] == ["100", "200", "content+reasoning"]
    # Plain content only (the second day): the TTFT columns need no label.
    assert report_main(["--db", str(db), "--since", "2026-01-02"]) == 0
    assert "1st" not in capsys.readouterr().out
    assert report_main(["--db", str(db), "--by", "first_token", "--format", "csv"]) == 0
    groups = {line.split(",")[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(groups) == {"content", "reasoning", "-"}
    assert groups["reasoning"].endswith(",100.0,100.0,reasoning")


async def test_a_ledger_from_before_first_token_kinds_is_still_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ledger no proxy has migrated yet: no first-token kinds, no client TTFT, no failure."""
    path = tmp_path / "old.db"
    await ledger_of_version(path, version_before("first_token_kind"), monkeypatch)
    (economy,) = summarize(path, by="tier")
    assert (economy["requests"], economy["upstream_ttft_p50_ms"]) == (1, 120.0)
    assert (economy["ttft_kinds"], economy["ttft_by_kind"]) == ("-", {"-": {
        "requests": 1, "upstream_ttft_p50_ms": 120.0, "upstream_ttft_p95_ms": 120.0}})
    assert economy["client_ttft_p50_ms"] is None
    assert [g["first_token"] for g in summarize(path, by="first_token")] == ["-"]


def test_report_main_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main(["--db", str(tmp_path / "nope.db")]) == 1
    assert "no ledger" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()


async def test_report_main_bad_time(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main(["--db", str(db), "--since", "last tuesday"]) == 1
    assert "ISO 8601" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "expected"), [
    (None, None),
    (12.5, 12.5),
    ("2026-01-01", DAY1 - 10 * 3600),
    ("2026-01-01T10:00:00", DAY1),
    ("2026-01-01T11:00:00+01:00", DAY1),
    (dt.datetime(2026, 1, 1, 10), DAY1),
    ("24h", 1_000_000.0 - 86400),
    ("90m", 1_000_000.0 - 5400),
    ("7d", 1_000_000.0 - 7 * 86400),
])
def test_parse_time(value: Any, expected: float | None) -> None:
    assert parse_time(value, now=1_000_000.0) == expected


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 0.5, None), ([5.0], 0.95, 5.0), ([1.0, 2.0], 0.5, 1.0), ([1.0, 2.0], 0.95, 2.0),
    ([float(i) for i in range(1, 101)], 0.95, 95.0),
])
def test_percentile_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


# -- types, sources and errors ------------------------------------------------

@pytest.mark.parametrize("by", list(GROUPS))
async def test_json_types(db: Path, by: str) -> None:
    """Dollars are floats even in a group with nothing to sum (the embedding group has
    no waste, shadow or estimate), counts are ints: the JSON says 0.0, never 0."""
    for row in summarize(db, by=by):
        for column, value in row.items():
            if column.endswith("_usd"):
                assert type(value) is float, (column, value)
            elif column in ("requests", "attempts", "errors") or column.endswith("_tokens"):
                assert type(value) is int, (column, value)
    assert '"wasted_usd": 0.0,' in json.dumps(usage_json(db, by="tier")["groups"][2], indent=0)


@pytest.mark.parametrize(("source", "dialect"), [
    ("tlproxy-ledger.db", SQLITE), ("/var/lib/tlproxy/ledger.db", SQLITE),
    (Path("postgresql:/not-a-url.db"), SQLITE), ("file:ledger.db", SQLITE),
    ("postgresql://u:p@db.internal:5432/tlproxy", POSTGRES), ("postgres://db/tlproxy", POSTGRES),
    ("PostgreSQL://db/tlproxy", POSTGRES),
])
def test_dialect_of(source: str | Path, dialect: object) -> None:
    assert dialect_of(source) is dialect


@pytest.mark.parametrize("source", ["mysql://u:hunter22@h/db", "postgresq://u:hunter22@h/db"])
def test_another_url_is_not_taken_for_a_path(source: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # "no ledger at postgresq://u:hunter22@..." would print the password.
    with pytest.raises(ValueError, match="SQLite path or a postgresql:// URL"):
        dialect_of(source)
    assert report_main(["--db", source]) == 1
    err = capsys.readouterr().err
    assert "postgresql:// URL" in err and "hunter22" not in err


@pytest.mark.parametrize(("url", "text", "expected"), [
    ("postgresql://u:s3cret@h/db", "failed: s3cret at postgresql://u:s3cret@h/db",
     "failed: *** at postgresql://u:***@h/db"),
    ("postgresql://u:p%40ss%2Fw@h/db", "raw p%40ss%2Fw, decoded p@ss/w", "raw ***, decoded ***"),
    ("postgresql://u@h/db?sslmode=require&password=s3cret", "s3cret", "***"),
    ("postgres://u:a:b@h:5/db", "a:b", "***"),
    ("postgresql://u@h/db", "user u, no password", "user u, no password"),
    ("postgresql://h/db?password=", "nothing to hide", "nothing to hide"),
])
def test_redact(url: str, text: str, expected: str) -> None:
    assert redact(text, url) == expected


def test_postgres_without_psycopg(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    url = "postgresql://tlproxy:hunter22@127.0.0.1:1/tlproxy"
    with pytest.raises(LedgerReadError, match=r"pip install 'psycopg\[binary\]'"):
        usage_json(url)
    assert report_main(["--db", url]) == 1
    err = capsys.readouterr().err
    assert "needs psycopg" in err and "hunter22" not in err


@pytest.mark.parametrize(("ledger", "db", "expected"), [
    ("", None, "tlproxy-ledger.db"),
    ('path = "/data/l.db"', None, "/data/l.db"),
    ('path = "/data/l.db"\npostgres_url = "postgresql://h/tlproxy"', None,
     "postgresql://h/tlproxy"),
    ('postgres_url = "${LEDGER_URL}"', None, "postgresql://from-env/tlproxy"),
    ('postgres_url = "postgresql://h/tlproxy"', "other.db", "other.db"),  # --db wins
])
def test_ledger_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger: str,
                       db: str | None, expected: str) -> None:
    monkeypatch.setenv("LEDGER_URL", "postgresql://from-env/tlproxy")
    config = tmp_path / "tlproxy.toml"
    config.write_text(f"[ledger]\n{ledger}\n")
    args = argparse.Namespace(db=db, config=str(config))
    assert ledger_source(args) == ledger_path(args) == expected
    assert ledger_source(argparse.Namespace(db=None, config=None)) == "tlproxy-ledger.db"


def test_a_file_without_a_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()  # a database, but no table
    with pytest.raises(LedgerReadError, match="no such table: ledger"):
        summarize(path)
    assert report_main(["--db", str(path)]) == 1
    assert "cannot read the ledger" in capsys.readouterr().err
