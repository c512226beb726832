"""SIGTERM under load loses no ledger row: every answered request is in the ledger."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.server_process import ServerProcess

CONFIG = """
[server]
graceful_timeout = 20.0

[ledger]
path = "{db}"
batch_size = 64
flush_interval = 5.0

[providers.sim]
kind = "sim"
[providers.sim.sim_models.m]
ttft_ms = 30.0
inter_token_ms = 20.0
tokens = 20

[[models]]
id = "m"
provider = "sim"
tier = "economy"
prices = {{ input = 1.0, output = 2.0 }}

[[models]]
id = "m-premium"
upstream_model = "m"
provider = "sim"
tier = "premium"
prices = {{ input = 3.0, output = 15.0 }}
"""


async def _client(url: str, stop: trio.Event, answered: dict[str, bool],
                  started_ids: set[str]) -> None:
    body = {"model": "economy", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with httpx.AsyncClient(base_url=url, timeout=20) as http:
        while not stop.is_set():
            try:
                async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    request_id = response.headers["x-request-id"]
                    started_ids.add(request_id)
                    data = b""
                    async for chunk in response.aiter_raw():
                        data += chunk
                    answered[request_id] = data.rstrip().endswith(b"data: [DONE]")
            except httpx.TransportError:
                return  # the server stopped accepting


@pytest.mark.parametrize("attempt", range(3))
async def test_sigterm_mid_load_loses_no_ledger_row(tmp_path: Path, attempt: int) -> None:
    db = tmp_path / "ledger.db"
    config = tmp_path / "tlproxy.toml"
    config.write_text(CONFIG.format(db=db))
    server = ServerProcess(config, workers=1)
    try:
        await trio.to_thread.run_sync(server.wait_ready)
        answered: dict[str, bool] = {}
        started_ids: set[str] = set()
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(_client, server.url, stop, answered, started_ids)
            # Let rows pile up in the writer's queue (it flushes every 5 s).
            await trio.sleep(1.5 + 0.3 * attempt)
            # Clients stop sending new requests; those in flight must all finish.
            stop.set()
            server.terminate()
        assert await trio.to_thread.run_sync(server.wait, 30.0) == 0
    finally:
        server.kill()
    completed = {request_id for request_id, done in answered.items() if done}
    assert len(completed) >= 16
    assert completed == set(answered), "every stream that began finished with [DONE]"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        winners = [r[0] for r in conn.execute(
            "SELECT request_id FROM ledger WHERE winner = 1 AND status = 'ok'")]
    assert len(winners) == len(set(winners))
    # Every answered request has its row, and no row is for a request no client got.
    assert set(winners) == completed
    assert set(winners) <= started_ids
