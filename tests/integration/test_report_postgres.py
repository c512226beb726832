"""The reports read a PostgreSQL ledger exactly as they read a SQLite one.

The same rows and shadow pairs go, through the real `Ledger` and its two
writers, into a SQLite file and into a PostgreSQL database on a real server
(`postgres_server.py`; one server and one filled pair of ledgers for the
module). Then every report must give the same document from both, compared
as encoded JSON so that a float turned int (``0`` for ``0.0``) is a failure,
and a PostgreSQL URL's password must never reach what the commands print.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import psycopg
import pytest
import trio

from tests.unit.test_ledger import running
from tests.unit.test_report import DAY1, DAY2, ROWS, attempt
from tests.unit.test_shadow import pair
from tlproxy.ledger import Ledger, LedgerRow, LedgerWriter, PostgresWriter, SQLiteWriter
from tlproxy.report import (
    GROUPS,
    POSTGRES,
    LedgerReadError,
    connect_ledger,
    recovery,
    report_main,
    summarize,
    to_json,
    usage_json,
)
from tlproxy.shadow import ShadowPair, shadow_main, shadow_report

from .postgres_server import PostgresServer, postgres_server_sync, query, requires_postgres

pytestmark = requires_postgres

MIDNIGHT = dt.datetime(2026, 1, 2, tzinfo=dt.UTC).timestamp()  # between DAY1 and DAY2


def _rows() -> list[LedgerRow]:
    rows = [
        *ROWS,
        # Half a second before midnight UTC: still 2026-01-01, whatever the time zone.
        attempt("req_5", MIDNIGHT - 0.5, "economy", "gpt-5-nano", key="équipe-ß",
                rule="règle", cost=0.0002, reference=0.004, ttft=120.0, client_ttft_ms=260.5),
        attempt("req_5", MIDNIGHT - 0.6, "embedding", "text-embedding-3-small",
                key="équipe-ß", rule="classifier", kind="classifier", cost=0.00001,
                ttft=None, winner=False),
        attempt("req_6", MIDNIGHT, "premium", "claude-sonnet-4-6", cost=0.02, reference=0.02,
                ttft=500.0, status="cut"),
        # A group without a winner, a shadow call or an estimate: its sums of
        # dollars must still be floats (0.0), as SQLite's TOTAL gave.
        attempt("req_7", DAY1 + 5, "lonely", "m-loser", cost=0.0007, ttft=None,
                winner=False, wasted=True, status="cancelled"),
        # req_6's answer, finished by two continuations (the first broke too).
        attempt("req_6", MIDNIGHT + 1, "premium", "gpt-5.4", cost=0.003, ttft=90.0,
                winner=False, continuation="cut", status="cut"),
        attempt("req_6", MIDNIGHT + 2, "premium", "gemini-3-pro-preview", cost=0.002,
                ttft=80.0, winner=False, continuation="error-event"),
    ]
    rng = random.Random(20260101)  # enough rows that the sums are not round numbers
    for i in range(300):
        winner = i % 3 == 0
        rows.append(LedgerRow(
            request_id=f"rnd_{i // 3}", ts=DAY1 + rng.uniform(-2 * 86400, 3 * 86400),
            key=rng.choice(["a", "b", None]),
            kind=rng.choice(["chat", "chat", "shadow", "classifier"]),
            tier=rng.choice(["premium", "economy"]), model=rng.choice(["m1", "m2", "m3"]),
            provider="sim", rule=rng.choice(["first-turn", "default"]),
            prompt_tokens=rng.randint(0, 200_000), cached_tokens=rng.randint(0, 1000),
            completion_tokens=rng.randint(0, 4000), cost_usd=rng.random() / 7,
            estimated=rng.random() < 0.3, ttft_ms=rng.choice([None, rng.uniform(20, 900)]),
            duration_ms=rng.uniform(100, 5000), status=rng.choice(["ok", "ok", "cut"]),
            winner=winner, hedge=rng.random() < 0.1, wasted=not winner and rng.random() < 0.5,
            reference_cost_usd=rng.random() / 3 if winner else 0.0,
            client_ttft_ms=rng.choice([None, rng.uniform(100, 1500)]) if winner else None))
    return rows


def _pairs() -> list[ShadowPair]:
    pairs = [pair(1, "first-turn", "Paris.", "Paris."),
             pair(2, "first-turn", "It is Paris.", "Lyon."),
             pair(3, "first-turn", '{"city": "Paris"}', '{"city": "Lyon"}'),
             pair(4, "first-turn", "Hi", None),
             pair(5, "tools", "ok", "ok"),
             pair(6, "règle", "Ça va « bien » ✓", "Ça va", key="équipe-ß"),
             pair(7, "tools", "x" * 1000, "y" * 900)]
    # Two pairs at the same instant: the order of examples must not depend on the database.
    tie = pairs[-1].ts + 1
    pairs += [msgspec.structs.replace(pair(8, "tools", "a", "b"), ts=tie),
              msgspec.structs.replace(pair(9, "tools", "c", "d"), ts=tie)]
    return pairs


ROWS_ALL = _rows()
PAIRS = _pairs()


class Ledgers(NamedTuple):
    sqlite: str  # a path
    postgres: str  # a URL


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with postgres_server_sync() as running_server:
        yield running_server


async def _fill(writer: LedgerWriter) -> None:
    ledger = Ledger(writer, batch_size=64, flush_interval=0.01)
    async with running(ledger):
        for row in ROWS_ALL:
            ledger.record(row)
        for shadow_pair in PAIRS:
            ledger.record_shadow(shadow_pair)
    statistics = ledger.statistics()
    assert (statistics.written, statistics.shadow_written) == (len(ROWS_ALL), len(PAIRS))


@pytest.fixture(scope="module")
def ledgers(server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Ledgers:
    """The same rows and pairs in a SQLite file and in a PostgreSQL database, written once."""
    path = tmp_path_factory.mktemp("report") / "ledger.db"
    url = server.create_database("report")
    trio.run(_fill, SQLiteWriter(path))
    trio.run(_fill, PostgresWriter(url))
    return Ledgers(str(path), url)


WINDOWS: list[dict[str, Any]] = [
    {},
    {"since": "2026-01-02", "until": "2026-01-03"},
    {"since": MIDNIGHT - 1, "until": MIDNIGHT + 1},
    {"since": DAY2 + 3600},
    {"since": 4e9},  # nothing: no groups, no total
]


@pytest.mark.parametrize("window", WINDOWS, ids=["all-time", "day2", "midnight", "late", "empty"])
@pytest.mark.parametrize("by", list(GROUPS))
def test_usage_json_is_the_same_from_both(ledgers: Ledgers, by: str,
                                          window: dict[str, Any]) -> None:
    from_sqlite = usage_json(ledgers.sqlite, by=by, **window)
    from_postgres = usage_json(ledgers.postgres, by=by, **window)
    assert to_json(from_postgres) == to_json(from_sqlite)
    if window.get("since") != 4e9:
        assert from_sqlite["groups"] and from_sqlite["total"]["attempts"] > 0
    else:
        assert (from_sqlite["groups"], from_sqlite["total"]) == ([], None)


def test_types_and_the_edge_rows(ledgers: Ledgers) -> None:
    """What the comparison above relies on, checked on the PostgreSQL side directly."""
    lonely = {g["tier"]: g for g in summarize(ledgers.postgres, by="tier")}["lonely"]
    assert (lonely["requests"], lonely["attempts"], lonely["spend_usd"]) == (0, 1, 0.0007)
    for column in ("reference_usd", "shadow_usd", "classifier_usd", "estimated_usd",
                   "spend_usd"):
        assert type(lonely[column]) is float, column
    for column in ("requests", "attempts", "prompt_tokens", "errors"):
        assert type(lonely[column]) is int, column
    # Days are UTC: 23:59:59.5 is the first day, midnight the second.
    days = summarize(ledgers.postgres, by="day", since=MIDNIGHT - 1, until=MIDNIGHT + 1)
    assert [(d["day"], d["requests"], d["errors"]) for d in days] == [
        ("2026-01-01", 1, 0), ("2026-01-02", 1, 1)]
    keys = {g["key"]: g for g in summarize(ledgers.postgres, by="key")}
    assert {"équipe-ß", "-"} <= set(keys)
    # req_5: the client's TTFT beside the winner's own, and its classifier call.
    team = keys["équipe-ß"]
    assert (team["client_ttft_p50_ms"], team["upstream_ttft_p50_ms"]) == (260.5, 120.0)
    assert team["classifier_usd"] == 0.00001


def test_days_are_utc_whatever_the_session_time_zone(ledgers: Ledgers) -> None:
    # UTC+14 and UTC-11: a local date would move midnight's neighbours.
    for zone in ("Pacific/Kiritimati", "Pacific/Pago_Pago"):
        url = f"{ledgers.postgres}?options=-c%20TimeZone%3D{zone.replace('/', '%2F')}"
        conn, _ = connect_ledger(url)
        with conn:
            assert conn.execute("SHOW TimeZone").fetchone() == (zone,)
        assert (to_json(usage_json(url, by="day", since=MIDNIGHT - 1, until=MIDNIGHT + 1))
                == to_json(usage_json(ledgers.sqlite, by="day", since=MIDNIGHT - 1,
                                      until=MIDNIGHT + 1)))


@pytest.mark.parametrize("examples", [0, 2, 10])
@pytest.mark.parametrize("window", [{}, {"since": 1_700_000_002.0, "until": 1_700_000_008.0},
                                    {"since": 4e9}], ids=["all-time", "some", "empty"])
def test_shadow_report_is_the_same_from_both(ledgers: Ledgers, examples: int,
                                             window: dict[str, Any]) -> None:
    from_sqlite = shadow_report(ledgers.sqlite, examples=examples, **window)
    from_postgres = shadow_report(ledgers.postgres, examples=examples, **window)
    assert to_json(from_postgres) == to_json(from_sqlite)
    assert len(from_sqlite) == (0 if window.get("since") == 4e9 else 3)


def test_shadow_examples_break_ties_alike(ledgers: Ledgers) -> None:
    (tools,) = [r for r in shadow_report(ledgers.postgres, examples=10) if r["rule"] == "tools"]
    # req_8 and req_9 share a ts: the later written (higher id) first.
    assert [e["request_id"] for e in tools["examples"]][:2] == ["req_9", "req_8"]


def test_the_report_connection_is_read_only(ledgers: Ledgers) -> None:
    conn, dialect = connect_ledger(ledgers.postgres)
    assert dialect is POSTGRES
    with conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("DELETE FROM ledger")
    assert query(ledgers.postgres, "SELECT count(*) FROM ledger") == [(len(ROWS_ALL),)]


# -- the commands ------------------------------------------------------------

def write_config(directory: Path, postgres_url: str) -> Path:
    """A config whose [ledger] has a postgres_url and a path to no file at all."""
    config = directory / "tlproxy.toml"
    config.write_text(f'[ledger]\npath = "{directory / "absent.db"}"\n'
                      f'postgres_url = "{postgres_url}"\n', encoding="utf-8")
    return config


def run(main: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("fmt", ["json", "csv"])
@pytest.mark.parametrize("by", ["tier", "model", "key", "day", "rule"])
def test_report_command_reads_postgres_from_config(
        ledgers: Ledgers, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        by: str, fmt: str) -> None:
    config = write_config(tmp_path, ledgers.postgres)
    args = ["--by", by, "--format", fmt, "--since", "2025-12-30", "--until", "2026-01-05"]
    expected = run(report_main, ["--db", ledgers.sqlite, *args], capsys)
    assert expected[0] == 0 and expected[1] and not expected[2]
    assert run(report_main, ["--config", str(config), *args], capsys) == expected
    assert run(report_main, ["--db", ledgers.postgres, *args], capsys) == expected


def test_shadow_command_reads_postgres_from_config(
        ledgers: Ledgers, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, ledgers.postgres)
    for fmt in ("json", "csv"):
        expected = run(shadow_main, ["report", "--db", ledgers.sqlite, "--format", fmt], capsys)
        assert expected[0] == 0 and expected[1]
        got = run(shadow_main, ["report", "--config", str(config), "--format", fmt], capsys)
        assert got == expected


# -- passwords -----------------------------------------------------------------

ROLE = "reporter"
PASSWORD = "right-Pass-4821"  # a throwaway role on a throwaway server
WRONG = "wr0ng-Pa%40ss%2F9137"  # percent-encoded in URLs; the server sees "wr0ng-Pa@ss/9137"
WRONG_DECODED = "wr0ng-Pa@ss/9137"


@pytest.fixture(scope="module")
def password_role(server: PostgresServer, ledgers: Ledgers) -> str:
    """A role that must give its password (scram-sha-256; the others keep trust auth),
    allowed to read the module's ledger. Returns the server's ``host:port``."""
    query(server.url, f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
    query(ledgers.postgres, f"GRANT SELECT ON ledger, shadow_pairs TO {ROLE}")
    hba = server.data / "pg_hba.conf"
    hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n{hba.read_text()}")
    query(server.url, "SELECT pg_reload_conf()")
    where = f"127.0.0.1:{server.port}"
    deadline = time.monotonic() + 10
    while True:  # the reload is asynchronous: wait until a wrong password is refused
        try:
            psycopg.connect(f"postgresql://{ROLE}:{WRONG}@{where}/postgres").close()
        except psycopg.OperationalError as exc:
            assert "password authentication failed" in str(exc)
            return where
        assert time.monotonic() < deadline, "pg_hba.conf was not reloaded"
        time.sleep(0.05)


def test_the_right_password_reads(ledgers: Ledgers, password_role: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The control for the tests below: with its password the role reads the ledger."""
    database = ledgers.postgres.rsplit("/", 1)[1]
    url = f"postgresql://{ROLE}:{PASSWORD}@{password_role}/{database}"
    args = ["--by", "model", "--format", "json"]
    expected = run(report_main, ["--db", ledgers.sqlite, *args], capsys)
    assert run(report_main, ["--db", url, *args], capsys) == expected


# Each: a URL holding WRONG, and what the error must say instead.
FAILURES = {
    "wrong password": ("postgresql://reporter:{wrong}@{where}/{db}",
                       'password authentication failed for user "reporter"'),
    "in the query": ("postgresql://reporter@{where}/{db}?password={wrong}",
                     "password authentication failed"),
    "postgres scheme": ("postgres://reporter:{wrong}@{where}/{db}",
                        "password authentication failed"),
    "no database": ("postgresql://tlproxy:{wrong}@{where}/nope", 'database "nope" does not exist'),
    # Reached the server (trust auth for this user), failed at the first query:
    # relation "ledger" (or "shadow_pairs") does not exist.
    "no ledger table": ("postgresql://tlproxy:{wrong}@{where}/postgres", 'relation "'),
    "bad port": ("postgresql://tlproxy:{wrong}@127.0.0.1:notaport/{db}", "notaport"),
    "bad option": ("postgresql://tlproxy:{wrong}@{where}/{db}?sslmode=bogus", "sslmode"),
}


@pytest.mark.parametrize("how", ["--db", "--config", "--config ${ENV}"])
@pytest.mark.parametrize("case", list(FAILURES))
def test_a_password_never_appears_in_errors(
        ledgers: Ledgers, password_role: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], case: str, how: str) -> None:
    template, expected = FAILURES[case]
    database = ledgers.postgres.rsplit("/", 1)[1]
    url = template.format(wrong=WRONG, where=password_role, db=database)
    if how == "--db":
        source = ["--db", url]
    elif how == "--config":
        source = ["--config", str(write_config(tmp_path, url))]
    else:
        monkeypatch.setenv("TLPROXY_TEST_LEDGER_URL", url)
        source = ["--config", str(write_config(tmp_path, "${TLPROXY_TEST_LEDGER_URL}"))]
    if case == "no ledger table" and how == "--db":
        with pytest.raises(LedgerReadError) as raised:
            usage_json(url)
        whole = "".join(traceback.format_exception(raised.value))
        assert WRONG not in whole and WRONG_DECODED not in whole
    for main, argv in ((report_main, source), (shadow_main, ["report", *source])):
        status, out, err = run(main, argv, capsys)
        assert status == 1 and out == ""
        assert err.startswith("tlproxy: ") and expected in err, err
        for secret in (WRONG, WRONG_DECODED, "wr0ng"):
            assert secret not in err


@pytest.mark.parametrize("window", WINDOWS, ids=["all-time", "day2", "midnight", "late", "empty"])
def test_recovery_is_the_same_from_both(ledgers: Ledgers, window: dict[str, Any]) -> None:
    from_sqlite = recovery(ledgers.sqlite, **window)
    assert to_json(recovery(ledgers.postgres, **window)) == to_json(from_sqlite)
    if not window:
        assert from_sqlite == [
            {"reason": "cut", "continuations": 1, "recovered": 0, "completion_tokens": 50,
             "spend_usd": 0.003},
            {"reason": "error-event", "continuations": 1, "recovered": 1,
             "completion_tokens": 50, "spend_usd": 0.002}]
