"""The PostgreSQL ledger (`PostgresWriter`) against a real PostgreSQL server.

One server per module (`postgres_server.py`), one fresh database per test,
so tests share a start (about a second) and nothing else; the test that
stops and restarts a server runs its own.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
import openai
import psycopg
import pytest
import trio

from tests.integration.conftest import fast_config, start_proxy
from tests.integration.test_ledger_e2e import ADMIN, ADMIN_HASH, HELLO
from tests.unit.test_ledger import row, running
from tlproxy.config import LedgerConfig
from tlproxy.ledger import MIGRATIONS, Ledger, LedgerError, LedgerRow, PostgresWriter
from tlproxy.shadow import ShadowPair, ShadowResult

from .postgres_server import (
    PostgresServer,
    postgres_server,
    postgres_server_sync,
    query,
    requires_postgres,
)
from .redis_servers import free_port

pytestmark = requires_postgres

_PAIR_SIDES = ("primary", "shadow")


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with postgres_server_sync() as running_server:
        yield running_server


@pytest.fixture
def url(server: PostgresServer) -> str:
    """A new, empty database on the module's server."""
    return server.create_database()


@pytest.fixture
def retry_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The ledger's 'writing N rows failed; retrying' records (shown only if a test fails)."""
    with caplog.at_level(logging.ERROR, logger="tlproxy.ledger"):
        yield caplog


def retried_because(log: pytest.LogCaptureFixture, text: str) -> bool:
    return any("retrying" in r.getMessage() and r.exc_info and text in str(r.exc_info[1])
               for r in log.records)


async def fetch(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """`query` in a worker thread, so that a ledger or proxy in this loop keeps running."""
    return await trio.to_thread.run_sync(lambda: query(url, sql, *params))


async def ledger_rows(url: str) -> list[LedgerRow]:
    columns = LedgerRow.__struct_fields__
    found = await fetch(url, f"SELECT {', '.join(columns)} FROM ledger ORDER BY id")
    return [LedgerRow(**dict(zip(columns, values, strict=True))) for values in found]


async def wait_written(ledger: Ledger, count: int) -> None:
    with trio.fail_after(10):
        while ledger.statistics().written < count:  # noqa: ASYNC110 - the writer's counter
            await trio.sleep(0.02)


@contextlib.asynccontextmanager
async def closing_writers(url: str, count: int) -> AsyncIterator[list[PostgresWriter]]:
    """`count` writers on one database (several instances), closed however the test ends."""
    writers = [PostgresWriter(url) for _ in range(count)]
    try:
        yield writers
    finally:
        with trio.CancelScope(shield=True):
            for writer in writers:
                await writer.aclose()


@pytest.fixture
async def ledger(url: str) -> AsyncIterator[Ledger]:
    """A running Ledger on the test's database, flushing every 20 ms."""
    ledger = Ledger(PostgresWriter(url), batch_size=100, flush_interval=0.02)
    async with running(ledger):
        yield ledger


# -- schema and migrations --------------------------------------------------

async def test_schema_has_the_sqlite_columns_with_native_types(url: str) -> None:
    writer = PostgresWriter(url)
    await writer.migrate()
    await writer.aclose()
    columns = await fetch(url, "SELECT column_name, data_type, is_nullable, is_identity "
                          "FROM information_schema.columns WHERE table_name = 'ledger' "
                          "ORDER BY ordinal_position")
    assert [c[0] for c in columns] == ["id", *LedgerRow.__struct_fields__]
    types = {name: data_type for name, data_type, _, _ in columns}
    assert types["id"] == "bigint" and columns[0][3] == "YES"
    assert {types[c] for c in ("estimated", "winner", "hedge", "wasted")} == {"boolean"}
    assert {types[c] for c in ("ts", "cost_usd", "ttft_ms", "duration_ms",
                               "reference_cost_usd")} == {"double precision"}
    assert {types[c] for c in ("prompt_tokens", "cached_tokens",
                               "completion_tokens")} == {"integer"}
    assert types["first_token_kind"] == "text"
    nullable = {name for name, _, null, _ in columns if null == "YES"}
    assert nullable == {"key", "ttft_ms", "first_token_kind", "client_ttft_ms", "continuation"}
    assert types["client_ttft_ms"] == "double precision"
    assert types["continuation"] == "text"
    pair_columns = [c for (c,) in await fetch(
        url, "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = 'shadow_pairs' ORDER BY ordinal_position")]
    assert pair_columns == ["id", "request_id", "ts", "key", "rule", "prompt",
                            *(f"{side}_{c}" for side in _PAIR_SIDES
                              for c in ShadowResult.__struct_fields__)]
    indexes = {name for (name,) in await fetch(
        url, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    assert {"ledger_ts", "ledger_key_ts", "ledger_model_ts", "shadow_pairs_rule_ts"} <= indexes
    versions = await fetch(url, "SELECT version FROM schema_migrations ORDER BY version")
    assert versions == [(v,) for v in range(1, len(MIGRATIONS) + 1)]


async def waiting_for_advisory_locks(url: str) -> int:
    ((count,),) = await fetch(url, "SELECT count(*) FROM pg_locks "
                              "WHERE locktype = 'advisory' AND NOT granted")
    return int(count)


async def test_concurrent_migrations_take_turns_on_the_advisory_lock(url: str) -> None:
    # Another instance holds the migration lock: every writer must wait for it
    # before touching the schema, then exactly one of them migrates.
    holder = await trio.to_thread.run_sync(lambda: psycopg.connect(url, autocommit=True))
    try:
        await trio.to_thread.run_sync(holder.execute, "BEGIN")
        await trio.to_thread.run_sync(lambda: holder.execute(
            "SELECT pg_advisory_xact_lock(%s)", (PostgresWriter._MIGRATION_LOCK,)))
        async with closing_writers(url, 4) as writers, trio.open_nursery() as nursery:
            for writer in writers:
                nursery.start_soon(writer.migrate)
            with trio.fail_after(10):
                while await waiting_for_advisory_locks(url) < 4:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            assert await fetch(url, "SELECT to_regclass('schema_migrations')") == [(None,)]
            await trio.to_thread.run_sync(holder.execute, "COMMIT")
    finally:
        await trio.to_thread.run_sync(holder.close)
    versions = await fetch(url, "SELECT version FROM schema_migrations ORDER BY version")
    assert versions == [(v,) for v in range(1, len(MIGRATIONS) + 1)]


async def test_many_writers_migrating_at_once_apply_each_version_once(url: str) -> None:
    async with closing_writers(url, 8) as writers, trio.open_nursery() as nursery:
        for writer in writers:
            nursery.start_soon(writer.migrate)
    assert await fetch(url, "SELECT version, count(*) FROM schema_migrations "
                       "GROUP BY version ORDER BY version") == [
        (v, 1) for v in range(1, len(MIGRATIONS) + 1)]


async def test_reopening_migrates_nothing_and_keeps_the_rows(url: str) -> None:
    applied = None
    for i in range(3):
        ledger = Ledger(PostgresWriter(url))
        async with running(ledger):
            ledger.record(row(i))
        now = await fetch(url, "SELECT version, applied_at FROM schema_migrations "
                          "ORDER BY version")
        assert applied is None or now == applied
        applied = now
    assert [r.request_id for r in await ledger_rows(url)] == ["req_0", "req_1", "req_2"]


async def test_a_bad_url_fails_at_start() -> None:
    ledger = Ledger.from_config(LedgerConfig(
        postgres_url=f"postgresql://nobody@127.0.0.1:{free_port()}/ledger"))
    with pytest.raises(LedgerError, match="cannot connect to the PostgreSQL ledger"):
        await ledger.run()


# -- rows --------------------------------------------------------------------

ODD_ROWS = [
    row(7, key=None, estimated=True, ttft_ms=None, status="cut", winner=False, hedge=True,
        wasted=True, reference_cost_usd=0.0),
    # Doubles must come back bit for bit: PostgreSQL prints them shortest-exact.
    row(8, ts=1_700_000_000.123456, cost_usd=0.1 + 0.2, duration_ms=1e-9,
        reference_cost_usd=math.pi, ttft_ms=2.5e-300, first_token_kind="reasoning"),
    row(9, key="équipe 日本 🚀", kind="embedding", tier="embedding", status="error",
        prompt_tokens=2**31 - 1, cached_tokens=0, completion_tokens=0),
    row(10, kind="shadow", status="cancelled", winner=False, model="o'reilly \"quoted\""),
]


async def test_rows_round_trip_exactly(url: str) -> None:
    writer = PostgresWriter(url)
    await writer.migrate()
    await writer.write(ODD_ROWS)
    await writer.write([row(11)])
    await writer.aclose()
    assert await ledger_rows(url) == [*ODD_ROWS, row(11)]
    booleans = await fetch(url, "SELECT estimated, winner, hedge, wasted FROM ledger "
                           "ORDER BY id LIMIT 1")
    assert booleans == [(True, False, True, True)]


async def test_a_ledger_writes_everything_recorded_in_batches(url: str) -> None:
    ledger = Ledger(PostgresWriter(url), batch_size=64, flush_interval=3600)
    async with running(ledger):
        for i in range(1000):
            ledger.record(row(i))
    assert [r.request_id for r in await ledger_rows(url)] == [f"req_{i}" for i in range(1000)]
    stats = ledger.statistics()
    assert (stats.written, stats.batches, stats.lost, stats.write_errors) == (1000, 16, 0, 0)


async def test_shadow_pairs_round_trip_beside_rows(url: str) -> None:
    pairs = [
        ShadowPair("req_1", "first-turn",
                   ShadowResult("claude-sonnet-4-6", "Paris.", 300.0, 900.0, 0.002),
                   ShadowResult("gpt-5-nano", None, None, 50.0, 0.0, False, "boom"),
                   ts=1.5, key="team-a", prompt="Capital of France?"),
        ShadowPair("req_2", "default", ShadowResult("m1", '{"tool": []}'),
                   ShadowResult("m2", "ünïcode", 1.25, 3.0, 1e-7), ts=2.0),
    ]
    ledger = Ledger(PostgresWriter(url))
    async with running(ledger):
        ledger.record(row(1))
        for pair in pairs:
            ledger.record_shadow(pair)
    result = ShadowResult.__struct_fields__
    stored = await fetch(url, "SELECT request_id, rule, ts, key, prompt, " + ", ".join(
        f"{side}_{c}" for side in _PAIR_SIDES for c in result) + " FROM shadow_pairs ORDER BY id")
    assert [ShadowPair(request_id, rule, ShadowResult(*rest[:len(result)]),
                       ShadowResult(*rest[len(result):]), ts=ts, key=key, prompt=prompt)
            for request_id, rule, ts, key, prompt, *rest in stored] == pairs
    stats = ledger.statistics()
    assert (stats.written, stats.shadow_written, stats.batches) == (1, 2, 1)


# -- failures ----------------------------------------------------------------

async def test_a_terminated_connection_is_reopened_and_the_batch_retried(
    url: str, ledger: Ledger, retry_log: pytest.LogCaptureFixture,
) -> None:
    ledger.record(row(0))
    await wait_written(ledger, 1)
    # What a failover, a pooler or an administrator does to an idle connection.
    terminated = await fetch(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert terminated == [(True,)]
    for i in range(1, 10):
        ledger.record(row(i))
    await wait_written(ledger, 10)
    assert [r.request_id for r in await ledger_rows(url)] == [f"req_{i}" for i in range(10)]
    stats = ledger.statistics()
    assert (stats.write_errors, stats.lost) == (1, 0)
    assert retried_because(retry_log, "terminating connection due to administrator command")


async def test_a_restarted_server_loses_nothing(retry_log: pytest.LogCaptureFixture) -> None:
    async with postgres_server() as own:
        url = own.create_database()
        ledger = Ledger(PostgresWriter(url), flush_interval=0.02)
        async with running(ledger):
            ledger.record(row(0))
            await wait_written(ledger, 1)
            await trio.to_thread.run_sync(own.stop)
            for i in range(1, 6):
                ledger.record(row(i))
            # Down: the writer's connection is gone and reconnecting is refused;
            # the batch waits in memory, retried with backoff.
            with trio.fail_after(10):
                while ledger.statistics().write_errors < 3:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            assert ledger.statistics().written == 1
            await trio.to_thread.run_sync(own.start)
            await wait_written(ledger, 6)
        assert [r.request_id for r in await ledger_rows(url)] == [f"req_{i}" for i in range(6)]
        assert ledger.statistics().lost == 0
        assert retried_because(retry_log, "cannot connect to the PostgreSQL ledger")


# -- the proxy ----------------------------------------------------------------

async def test_the_proxy_writes_its_ledger_to_postgres(nursery: trio.Nursery, url: str) -> None:
    config = fast_config(ledger=LedgerConfig(postgres_url=url, flush_interval=0.05),
                         admin_keys=[ADMIN_HASH])
    proxy = await start_proxy(nursery, config)
    answered = {}
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x",
                                  max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=HELLO)
        assert raw.parse().choices[0].message.content
        answered[raw.headers["x-request-id"]] = raw.headers
        json_id = raw.headers["x-request-id"]
        raw = await client.chat.completions.with_raw_response.create(
            model="economy", messages=HELLO, stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in raw.parse()
                        if chunk.choices])
        assert text
        answered[raw.headers["x-request-id"]] = raw.headers
    with trio.fail_after(10):
        while True:
            # The proxy migrated the database before it started serving.
            winners = {r.request_id: r for r in await ledger_rows(url) if r.winner}
            if len(winners) >= 2:
                break
            await trio.sleep(0.05)
    assert set(winners) == set(answered)
    for request_id, headers in answered.items():
        winner = winners[request_id]
        assert (winner.model, winner.tier) == (headers["x-tlproxy-model"],
                                               headers["x-tlproxy-tier"])
        assert winner.kind == "chat" and winner.status == "ok"
        assert winner.cost_usd > 0 and winner.prompt_tokens > 0 and winner.completion_tokens > 0
        assert winner.reference_cost_usd > 0
        if request_id == json_id:  # no first token in a JSON answer
            assert (winner.ttft_ms, winner.client_ttft_ms) == (None, None)
        else:  # what the client saw includes the winner's own TTFT
            assert winner.ttft_ms is not None and winner.client_ttft_ms is not None
            assert winner.client_ttft_ms >= winner.ttft_ms
    # The usage endpoint reads the same PostgreSQL ledger.
    async with httpx.AsyncClient(base_url=proxy.url) as http:
        usage = await http.get("/v1/tlproxy/usage?by=model",
                               headers={"authorization": f"Bearer {ADMIN}"})
    assert usage.status_code == 200
    total = usage.json()["total"]
    assert total["requests"] == 2
    assert total["spend_usd"] == pytest.approx(
        sum(r.cost_usd for r in await ledger_rows(url)), abs=1e-6)


async def test_the_usage_endpoint_says_when_the_ledger_cannot_be_read(
    nursery: trio.Nursery, url: str
) -> None:
    proxy = await start_proxy(nursery, fast_config(
        ledger=LedgerConfig(postgres_url=url, flush_interval=0.05), admin_keys=[ADMIN_HASH]))
    # Point the running app's reports at a database that does not exist, with a
    # password in the URL (the URL looks like postgresql://user@host:port/name).
    user, rest = url.removeprefix("postgresql://").split("@", 1)
    missing = f"postgresql://{user}:s3cret-pw@{rest.rsplit('/', 1)[0]}/no_such_database"
    proxy.app.config = msgspec.structs.replace(
        proxy.app.config, ledger=LedgerConfig(postgres_url=missing))
    async with httpx.AsyncClient(base_url=proxy.url) as http:
        usage = await http.get("/v1/tlproxy/usage", headers={"authorization": f"Bearer {ADMIN}"})
    assert usage.status_code == 503
    assert usage.json()["error"]["code"] == "ledger_unavailable"
    assert "s3cret-pw" not in usage.text


async def test_connections_detect_a_partition_and_suit_pgbouncer(url: str) -> None:
    writer = PostgresWriter(url)
    await writer.migrate()
    conn = writer._conn
    assert conn is not None
    try:
        assert conn.prepare_threshold is None
        params = conn.info.get_parameters()
        assert (params["keepalives_idle"], params["tcp_user_timeout"]) == ("10", "30000")
    finally:
        await writer.aclose()
