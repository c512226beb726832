"""Every answered request is priced and in the ledger; reports and shadow traffic."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import httpx2
import msgspec
import openai
import trio
from trio.testing import MockClock

from tests.integration.conftest import fast_config, start_proxy
from tlproxy.config import (
    Config,
    LedgerConfig,
    ModelConfig,
    Prices,
    ProviderConfig,
    ShadowConfig,
    SimModelProfile,
)
from tlproxy.server import Running

ADMIN = "tlp-admin-test-key-000001"
ADMIN_HASH = "sha256:" + hashlib.sha256(ADMIN.encode()).hexdigest()
HELLO = [{"role": "user", "content": "Hello there"}]
# The shadow tests' client-side model; seconds exact in binary, so MockClock's
# times add up without rounding.
PRIMARY_TTFT = 0.03125


def rows(db: Path) -> list[dict[str, object]]:
    """The ledger's rows, oldest first; none while the file does not exist yet."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM ledger ORDER BY ts")]


async def wait_rows(db: Path, count: int, kind: str | None = None) -> list[dict[str, object]]:
    with trio.fail_after(5):
        while True:
            found = [r for r in await trio.to_thread.run_sync(rows, db)
                     if kind is None or r["kind"] == kind]
            if len(found) >= count:
                return found
            await trio.sleep(0.05)


async def test_each_request_has_a_priced_winner_row(nursery: trio.Nursery,
                                                    tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    config = fast_config(ledger=LedgerConfig(path=str(db), flush_interval=0.05),
                         admin_keys=[ADMIN_HASH])
    running = await start_proxy(nursery, config)
    ids = {}
    async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x",
                                  max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=HELLO)
        ids[raw.headers["x-request-id"]] = raw.headers
        raw = await client.chat.completions.with_raw_response.create(
            model="economy", messages=HELLO, stream=True)
        async for _ in raw.parse():
            pass
        ids[raw.headers["x-request-id"]] = raw.headers
        raw = await client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input="hi")
        ids[raw.headers["x-request-id"]] = raw.headers
    found = await wait_rows(db, 3)
    winners = {r["request_id"]: r for r in found if r["winner"]}
    assert set(winners) == set(ids)
    for request_id, headers in ids.items():
        row = winners[request_id]
        assert row["model"] == headers["x-tlproxy-model"]
        assert row["tier"] == headers["x-tlproxy-tier"]
        assert row["cost_usd"] > 0 and row["prompt_tokens"] > 0
        assert row["status"] == "ok"
    # The usage endpoint: admin key only.
    async with httpx.AsyncClient(base_url=running.url) as http:
        assert (await http.get("/v1/tlproxy/usage")).status_code == 403
        usage = await http.get("/v1/tlproxy/usage?by=tier",
                               headers={"authorization": f"Bearer {ADMIN}"})
    assert usage.status_code == 200
    body = usage.json()
    assert body["total"]["requests"] == 3
    assert {g["tier"] for g in body["groups"]} == {"premium", "economy", "embedding"}
    # The same numbers from the command line.
    result = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "tlproxy.cli", "report", "--db", str(db), "--by", "model",
         "--format", "json"], capture_output=True, text=True, timeout=60))
    assert result.returncode == 0, result.stderr
    assert "gpt-5-nano" in result.stdout or "claude" in result.stdout
    json.loads(result.stdout)


def _shadow_config(db: Path, shadow_profile: SimModelProfile) -> Config:
    fast = SimModelProfile(ttft_ms=PRIMARY_TTFT * 1000, tokens=8)
    sim = ProviderConfig(kind="sim", sim_models={"cheap": fast, "slow-shadow": shadow_profile})
    models = [
        ModelConfig(id="cheap", provider="sim", tier="economy",
                    prices=Prices(input=0.1, output=0.4)),
        ModelConfig(id="slow-shadow", provider="sim", tier="premium",
                    prices=Prices(input=3.0, output=15.0)),
    ]
    return Config(providers={"sim": sim}, models=models,
                  ledger=LedgerConfig(path=str(db), flush_interval=0.05),
                  shadow=ShadowConfig(sample_rate=1.0, target="premium"))


async def _sdk(running: Running) -> openai.AsyncOpenAI:
    """The SDK, its first request made: it looks up the platform in a worker
    thread, during which the autojumping clock would run on."""
    client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0,
                                http_client=httpx2.AsyncClient())
    await client.models.list()
    return client


async def _ttft(client: openai.AsyncOpenAI) -> float:
    started = trio.current_time()
    ttft = None
    async for chunk in await client.chat.completions.create(
            model="economy", messages=HELLO, stream=True):
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = trio.current_time() - started
    assert ttft is not None
    return ttft


async def _shadows_done(running: Running, count: int) -> None:
    """Until `count` shadow copies have their answer (or failed), in virtual time."""
    assert running.app.shadow is not None
    with trio.fail_after(60):  # a hang guard
        while True:
            stats = running.app.shadow.statistics()
            if stats.completed + stats.failed >= count:
                return
            await trio.sleep(0.01)


def _on_real_time(clock: MockClock) -> None:
    """From here on the clock runs at the real rate, without jumps.

    The ledger writes its rows in a worker thread; while a thread runs, an
    autojumping clock races through every pending timer, a hang guard's
    included, so waiting for rows needs time that passes as the thread works.
    """
    clock.autojump_threshold = math.inf
    clock.rate = 1.0


async def test_shadow_traffic_adds_no_latency_and_is_recorded(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.db"
    # The shadow target takes 1.5 s to its first token; the client must not notice.
    running = await start_proxy(nursery, _shadow_config(db, SimModelProfile(ttft_ms=1500.0)))
    async with await _sdk(running) as client:
        ttfts = [await _ttft(client) for _ in range(3)]
    assert ttfts == [PRIMARY_TTFT] * 3
    await _shadows_done(running, 3)
    _on_real_time(autojump_clock)
    pairs = []
    with trio.fail_after(10):
        while len(pairs) < 3:
            await trio.sleep(0.1)
            if db.exists():
                with contextlib.closing(sqlite3.connect(db)) as conn:
                    pairs = conn.execute("SELECT * FROM shadow_pairs").fetchall()
    shadow_rows = await wait_rows(db, 3, kind="shadow")
    assert all(r["model"] == "slow-shadow" and r["cost_usd"] > 0 for r in shadow_rows)


async def test_failing_shadow_target_changes_nothing_for_the_client(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.db"
    broken = SimModelProfile(ttft_ms=0.0, error_rate=1.0)
    running = await start_proxy(nursery, _shadow_config(db, broken))
    async with await _sdk(running) as client:
        for _ in range(3):
            assert await _ttft(client) == PRIMARY_TTFT
    await _shadows_done(running, 3)
    _on_real_time(autojump_clock)
    await wait_rows(db, 3, kind="chat")
    async with httpx.AsyncClient(base_url=running.url) as http:
        assert msgspec.json.decode((await http.get("/healthz")).content) == {"status": "ok"}


async def test_shadow_latencies_are_measured_from_each_side_s_start(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.db"
    # The client's side: economy, first token after PRIMARY_TTFT; the shadow's
    # after `shadow_ttft`, with no time between tokens on either.
    shadow_ttft = 0.25
    running = await start_proxy(nursery, _shadow_config(
        db, SimModelProfile(ttft_ms=shadow_ttft * 1000, tokens=8)))
    async with await _sdk(running) as client:
        seen = await _ttft(client)  # streamed, timed by the client
        await client.chat.completions.create(model="economy", messages=HELLO)
    assert seen == PRIMARY_TTFT
    await _shadows_done(running, 2)
    _on_real_time(autojump_clock)
    columns = ("primary_ttft_ms", "primary_duration_ms", "shadow_ttft_ms",
               "shadow_duration_ms", "shadow_ok")
    pairs: list[tuple[float | None, ...]] = []
    with trio.fail_after(10):
        while len(pairs) < 2:
            await trio.sleep(0.1)
            with contextlib.closing(sqlite3.connect(db)) as conn:
                pairs = conn.execute(f"SELECT {', '.join(columns)} FROM shadow_pairs "
                                     "ORDER BY primary_ttft_ms IS NULL").fetchall()
    primary_ms, shadow_ms = PRIMARY_TTFT * 1000, shadow_ttft * 1000
    # The primary from the request's arrival, as its client saw it; the
    # shadow from the moment its copy was sent. Each answer is whole at its
    # first token (no time between tokens).
    assert pairs[0] == (primary_ms, primary_ms, shadow_ms, shadow_ms, 1)
    # JSON answers: no first token on either side, durations from the same starts.
    assert pairs[1] == (None, primary_ms, None, shadow_ms, 1)
