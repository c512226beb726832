"""The dashboard's endpoints through the real server, over a ledger filled by real requests.

Admin keys only, OpenAI-shaped refusals and 400s, the numbers `tlproxy
report` prints for the same window (run as the command), the explanation
`tlproxy route --explain` prints, and never a key or a prompt in an answer.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from tests.integration.conftest import fast_config, start_proxy
from tlproxy.config import ClientKey, LedgerConfig
from tlproxy.dashboard import UI_FILES
from tlproxy.report import usage_json
from tlproxy.server import Running

ADMIN = "tlp-admin-dashboard-key-0000042"
CLIENT = "tlp-client-dashboard-key-0000042"
MARKER = "zebra-quartz-prompt"  # in every prompt; in no answer
SINCE, UNTIL = "2020-01-01", "2100-01-01"
PACKAGE_UI = Path(__file__).resolve().parents[2] / "tlproxy" / "ui"
ENDPOINTS = ["/v1/tlproxy/spend", "/v1/tlproxy/routing", "/v1/tlproxy/race",
             "/v1/tlproxy/requests", "/v1/tlproxy/shadow", "/v1/tlproxy/live"]
EXPLAINED = {"model": "auto", "messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": f"Summarize this: {MARKER}"}]}


def _hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _report(db: Path, cwd: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tlproxy.cli", *args, *(("--db", str(db)) if args[0] == "report"
                                                        else ())],
        capture_output=True, text=True, timeout=120, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
async def filled(nursery: trio.Nursery, tmp_path: Path) -> tuple[Running, Path]:
    """A proxy with an admin key and a client key, and a ledger of real requests."""
    db = tmp_path / "ledger.db"
    config = fast_config(ledger=LedgerConfig(path=str(db), flush_interval=0.05),
                         admin_keys=[_hash(ADMIN)],
                         keys=[ClientKey(name="team-a", hash=_hash(CLIENT))])
    running = await start_proxy(nursery, config)
    async with openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=CLIENT,
                                  max_retries=0) as client:
        first = [{"role": "user", "content": f"Hello {MARKER}"}]
        await client.chat.completions.create(model="auto", messages=first)
        later = [*first, {"role": "assistant", "content": "Hi."},
                 {"role": "user", "content": f"And then? {MARKER}"}]
        for _ in range(3):
            async for _chunk in await client.chat.completions.create(
                    model="auto", messages=later, stream=True):
                pass
        await client.chat.completions.create(model="auto", messages=EXPLAINED["messages"])
        await client.embeddings.create(model="text-embedding-3-small", input=MARKER)
    # A winner's row is queued once its request has ended, just after the client
    # has its answer: wait until the six are written.
    def requests() -> int | None:
        return (usage_json(str(db), by="all")["total"] or {}).get("requests")

    with trio.fail_after(10):
        while await trio.to_thread.run_sync(requests) != 6:  # noqa: ASYNC110 - another thread's
            await trio.sleep(0.02)
    return running, db


async def _get(running: Running, path: str, key: str | None = ADMIN) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        return await http.get(path, headers=headers)


def _no_secret(text: str) -> None:
    for secret in (ADMIN, CLIENT, MARKER, "sha256:"):
        assert secret not in text


@pytest.mark.parametrize("key", [None, CLIENT, "tlp-wrong"], ids=["none", "client", "wrong"])
async def test_only_admin_keys_are_answered(filled: tuple[Running, Path],
                                            key: str | None) -> None:
    running, _ = filled
    for path in ENDPOINTS:
        refused = await _get(running, path, key)
        assert refused.status_code == 403, path
        error = refused.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "admin_key_required"
        _no_secret(refused.text)
    async with httpx.AsyncClient(base_url=running.url) as http:
        posted = await http.post("/v1/tlproxy/explain", json=EXPLAINED,
                                 headers={"authorization": f"Bearer {CLIENT}"})
    assert posted.status_code == 403


async def test_every_answer_is_free_of_keys_and_prompts(filled: tuple[Running, Path]) -> None:
    running, _ = filled
    for path in ENDPOINTS:
        answer = await _get(running, f"{path}")
        assert answer.status_code == 200, (path, answer.text)
        assert answer.headers["content-type"] == "application/json"
        _no_secret(answer.text)
    recent = (await _get(running, "/v1/tlproxy/requests?limit=3")).json()["data"]
    assert len(recent) == 3 and all(r["key"] == "team-a" for r in recent)
    # Polling: the newest ts seen, as the answer gave it, returns only what came later.
    newest = recent[0]["ts"]
    later = (await _get(running, f"/v1/tlproxy/requests?after={newest!r}")).json()["data"]
    earlier = (await _get(running, f"/v1/tlproxy/requests?after={newest - 1e-3!r}")).json()
    assert later == [] and [r["request_id"] for r in earlier["data"]] == [
        recent[0]["request_id"]]
    window = (await _get(running, f"/v1/tlproxy/spend?since={int(newest) + 3600}")).json()
    assert window["since"] == int(newest) + 3600 and window["total"] is None


@pytest.mark.parametrize("by", ["tier", "model", "key", "rule"])
async def test_csv_export_is_the_reports(filled: tuple[Running, Path], tmp_path: Path,
                                         by: str) -> None:
    running, db = filled
    answer = await _get(running, f"/v1/tlproxy/spend?format=csv&by={by}"
                                 f"&since={SINCE}&until={UNTIL}")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    expected = await trio.to_thread.run_sync(lambda: _report(
        db, tmp_path, "report", "--by", by, "--format", "csv", "--since", SINCE,
        "--until", UNTIL))
    assert answer.text == expected and expected.count("\n") > 1


async def test_spend_and_race_numbers_are_the_reports(filled: tuple[Running, Path],
                                                      tmp_path: Path) -> None:
    running, db = filled
    window = f"since={SINCE}&until={UNTIL}"
    spend = (await _get(running, f"/v1/tlproxy/spend?by=model&step=day&{window}")).json()
    race = (await _get(running, f"/v1/tlproxy/race?{window}")).json()
    report = json.loads(await trio.to_thread.run_sync(lambda: _report(
        db, tmp_path, "report", "--by", "model", "--format", "json", "--since", SINCE,
        "--until", UNTIL)))
    assert spend["total"]["requests"] == report["total"]["requests"] == 6
    for mine, theirs in zip(spend["groups"], report["groups"], strict=True):
        assert mine == {k: v for k, v in theirs.items() if k in mine}
    assert spend["total"] == {k: v for k, v in report["total"].items() if k in spend["total"]}
    for column in ("client_ttft_p50_ms", "client_ttft_p95_ms", "upstream_ttft_p50_ms",
                   "upstream_ttft_p95_ms", "wasted_usd", "errors", "requests"):
        assert race["total"][column] == report["total"][column], column
    assert race["total"]["client_ttft_p50_ms"] is not None
    routing = (await _get(running, f"/v1/tlproxy/routing?{window}")).json()
    hits = {r["name"]: r["requests"] for r in routing["policies"][0]["rules"]}
    assert hits["first-turn"] == 1 and hits["summarize-extract"] == 1
    assert sum(r["requests"] for r in routing["series"]) == 6


async def test_live_state_names_every_model(filled: tuple[Running, Path]) -> None:
    running, _ = filled
    live = (await _get(running, "/v1/tlproxy/live")).json()
    assert live["ready"] is True and live["open_streams"] == 0
    states = {m["model"]: m["breaker"] for m in live["models"]}
    assert set(states) == {m.id for m in running.app.config.models}
    assert set(states.values()) == {"closed"}
    assert live["ledger"]["written"] >= 6 and live["shadow"] is None
    used = [m for m in live["models"] if m["attempts"]]
    # The streamed answers' models have a live TTFT (JSON answers have no first token).
    assert used and any(m["ttft_ewma_ms"] is not None for m in used)


async def test_explain_is_what_route_explain_prints(filled: tuple[Running, Path],
                                                    tmp_path: Path) -> None:
    running, _ = filled
    request = tmp_path / "request.json"
    request.write_text(json.dumps(EXPLAINED))
    printed = await trio.to_thread.run_sync(lambda: _report(
        Path(), tmp_path, "route", "--explain", str(request)))
    async with httpx.AsyncClient(base_url=running.url) as http:
        answer = await http.post("/v1/tlproxy/explain", json=EXPLAINED,
                                 headers={"authorization": f"Bearer {ADMIN}"})
        bad = await http.post("/v1/tlproxy/explain", content=b"{not json",
                              headers={"authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["text"] + "\n" == printed
    assert (body["tier"], body["rule"]) == ("economy", "summarize-extract")
    assert bad.status_code == 400 and set(bad.json()["error"]) == {
        "message", "type", "param", "code"}


@pytest.mark.parametrize(("query", "param"), [
    ("/v1/tlproxy/spend?step=week", None), ("/v1/tlproxy/spend?by=day", None),
    ("/v1/tlproxy/race?since=yesterday", None), ("/v1/tlproxy/routing?nope=1", "nope"),
    ("/v1/tlproxy/requests?limit=0", "limit"), ("/v1/tlproxy/shadow?limit=x", "limit"),
    ("/v1/tlproxy/spend?format=xml", "format"), ("/v1/tlproxy/live?since=1d", "since"),
])
async def test_bad_parameters_are_openai_400s(filled: tuple[Running, Path], query: str,
                                              param: str | None) -> None:
    running, _ = filled
    answer = await _get(running, query)
    assert answer.status_code == 400, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_value"
    assert error["param"] == param


async def test_the_page_is_served_without_a_key_and_holds_no_data(
        filled: tuple[Running, Path]) -> None:
    running, _ = filled
    async with httpx.AsyncClient(base_url=running.url) as http:
        for path, (name, content_type) in UI_FILES.items():
            answer = await http.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"] == content_type
            assert answer.content == (PACKAGE_UI / name).read_bytes()
            assert "script-src 'self'" in answer.headers["content-security-policy"]
            assert answer.headers["x-content-type-options"] == "nosniff"
            _no_secret(answer.text)
        assert (await http.get("/ui/")).status_code == 200
        assert (await http.get("/ui/nope.js")).status_code == 404
