"""The dashboard in a real browser, over a ledger filled through real requests.

A headless chromium (`chromium.py`) logs in with an admin key, opens each
view and reads the numbers it shows, which must be `tlproxy report`'s and
`tlproxy shadow report`'s for the same window (all time), run as the
commands. A client key is refused. No key, and no prompt outside the shadow
pairs, is ever in the page. Each view is photographed: into pytest's
temporary directory, or into ``$TLPROXY_DASHBOARD_SCREENSHOTS`` when set
(``docs/dashboard`` for the pictures in docs/dashboard.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import openai
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.integration.conftest import fast_config
from tlproxy.config import ClientKey, LedgerConfig, ShadowConfig
from tlproxy.report import usage_json
from tlproxy.shadow import shadow_report

from .chromium import ProxyThread, chromium, requires_chromium

pytestmark = requires_chromium

ADMIN = "tlp-admin-browser-key-0000007"
CLIENT = "tlp-client-browser-key-0000007"
MARKER = "okapi-tungsten-prompt"  # in every prompt that is not shadowed
SHADOWED = "What is the capital of France?"  # first turns: shadow mode keeps these
SUMMARIZE = {"model": "auto", "messages": [
    {"role": "user", "content": "Summarize this text: the meeting moved to Tuesday."}]}
ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 8


def _hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _cli(*args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "tlproxy.cli", *args], capture_output=True,
                            text=True, timeout=120, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _wait(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Stack(NamedTuple):
    url: str
    db: Path
    work: Path
    client: openai.OpenAI


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The proxy with an admin key, a client key and shadow mode on first turns, and a
    ledger of real requests made with the openai SDK."""
    work = tmp_path_factory.mktemp("dashboard")
    db = work / "ledger.db"
    config = fast_config(ledger=LedgerConfig(path=str(db), flush_interval=0.05),
                         admin_keys=[_hash(ADMIN)],
                         keys=[ClientKey(name="team-a", hash=_hash(CLIENT))],
                         shadow=ShadowConfig(sample_rate=1.0, target="economy",
                                             rules=["first-turn"]))
    proxy = ProxyThread(config)
    proxy.start()
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=CLIENT, max_retries=0)
    try:
        first = [{"role": "user", "content": SHADOWED}]
        client.chat.completions.create(model="auto", messages=first)
        for _chunk in client.chat.completions.create(model="auto", messages=first,
                                                     stream=True):
            pass
        later = [*first, {"role": "assistant", "content": "Paris."},
                 {"role": "user", "content": f"And Spain? {MARKER}"}]
        for _ in range(3):
            for _chunk in client.chat.completions.create(model="auto", messages=later,
                                                         stream=True):
                pass
        client.chat.completions.create(**SUMMARIZE)
        client.chat.completions.create(model="economy", messages=later)
        client.embeddings.create(model="text-embedding-3-small", input=MARKER)
        _wait(lambda: (usage_json(str(db), by="all")["total"] or {}).get("requests")
              == REQUESTS, "the ledger")
        _wait(lambda: sum(r["pairs"] for r in shadow_report(str(db))) == 2, "shadow pairs")
        yield Stack(proxy.url, db, work, client)
    finally:
        client.close()
        proxy.stop()


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    downloads = stack.work / "downloads"
    downloads.mkdir()
    with chromium(str(downloads)) as driver:
        driver.set_window_size(1280, 1000)
        yield driver


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("TLPROXY_DASHBOARD_SCREENSHOTS")
    if not target:
        return tmp_path_factory.mktemp("screenshots")
    path = Path(target) if Path(target).is_absolute() else ROOT / target
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- driving the page -------------------------------------------------------------------

def _login(driver: Any, url: str, key: str) -> None:
    driver.get(url + "/ui")
    driver.execute_script("sessionStorage.clear()")
    driver.get(url + "/ui")
    field = driver.find_element(By.ID, "key")
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()


def _show(driver: Any, view: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"nav button[data-view={view}]").click()
    _wait(lambda: driver.execute_script("return document.body.dataset.loaded") == view,
          f"the {view} view")


def _all_time(driver: Any) -> None:
    Select(driver.find_element(By.ID, "since")).select_by_value("")
    _wait(lambda: driver.execute_script("return document.body.dataset.loaded"), "reload")


def _cells(driver: Any, table: str) -> list[dict[str, Any]]:
    """The rows of a table as the page shows them: {column: (exact value, text)}."""
    return driver.execute_script("""
        return [...document.querySelectorAll(arguments[0] + ' tbody tr')].map(tr => {
          const row = {};
          tr.querySelectorAll('td[data-col]').forEach(td => {
            row[td.dataset.col] = [JSON.parse(td.dataset.value), td.textContent];
          });
          return row;
        });""", table)


def _card(driver: Any, view: str, column: str) -> Any:
    return driver.execute_script(
        "return JSON.parse(document.querySelector(arguments[0] + ' [data-col=' + arguments[1]"
        " + ']').dataset.value)", f"#{view}-cards", column)


def _no_secret(driver: Any, *, prompts: bool = True) -> None:
    source = driver.page_source
    for secret in (ADMIN, CLIENT, _hash(ADMIN)[7:], _hash(CLIENT)[7:]):
        assert secret not in source
    if prompts:
        assert MARKER not in source and SHADOWED not in source
    assert driver.execute_script("return localStorage.length") == 0
    assert driver.get_cookies() == []


def _screenshot(driver: Any, shots: Path, name: str) -> None:
    """The whole page, not only the window: chromium's own full-page capture."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": 1280, "height": min(height, 4000), "scale": 1}})
    (shots / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


# -- the tests -----------------------------------------------------------------------------

def test_a_client_key_is_refused(stack: Stack, browser: Any) -> None:
    _login(browser, stack.url, CLIENT)
    error = _wait(lambda: browser.find_element(By.ID, "login-error").text, "the refusal")
    assert error.startswith("Refused: ") and "admin key" in error
    assert browser.find_element(By.ID, "login").is_displayed()
    assert browser.execute_script("return sessionStorage.length") == 0
    _no_secret(browser)


def test_spend_view_shows_the_reports_numbers(stack: Stack, browser: Any,
                                              shots: Path) -> None:
    _login(browser, stack.url, ADMIN)
    _wait(lambda: browser.execute_script("return document.body.dataset.loaded") == "spend",
          "the spend view")
    _all_time(browser)
    report = json.loads(_cli("report", "--db", str(stack.db), "--by", "tier", "--format",
                             "json", cwd=stack.work))
    for column in ("spend_usd", "reference_usd", "saving_usd", "saving_pct", "wasted_usd",
                   "requests"):
        assert _card(browser, "spend", column) == report["total"][column], column
    shown = _cells(browser, "#spend-groups")
    assert [row["tier"][0] for row in shown] == [g["tier"] for g in report["groups"]]
    for row, group in zip(shown, report["groups"], strict=True):
        for column, (value, _text) in row.items():
            assert value == group[column], (group["tier"], column)
    # The chart: the groups' spend, their total and the all-premium counterfactual (sums
    # of values each rounded to the micro-dollar, as the report rounds them).
    lines = json.loads(browser.execute_script(
        "return document.getElementById('spend-chart').dataset.lines"))
    for label, column in (("total spend", "spend_usd"), ("all premium", "reference_usd")):
        assert math.isclose(sum(v or 0 for v in lines[label]), report["total"][column],
                            abs_tol=1e-5), label
    for group in report["groups"]:
        assert math.isclose(sum(v or 0 for v in lines[f"spend: {group['tier']}"]),
                            group["spend_usd"], abs_tol=1e-5), group["tier"]
    # The texts are the report table's, for the dollars.
    assert shown[0]["spend_usd"][1].startswith("$")
    assert browser.execute_script("return sessionStorage.getItem('tlproxy-admin-key')") == ADMIN
    _no_secret(browser)
    _screenshot(browser, shots, "spend")


def test_csv_export_downloads_the_reports_csv(stack: Stack, browser: Any) -> None:
    _show(browser, "spend")
    browser.find_element(By.ID, "csv").click()
    target = stack.work / "downloads" / "tlproxy-spend-by-tier.csv"
    _wait(target.exists, "the download")
    expected = _cli("report", "--db", str(stack.db), "--by", "tier", "--format", "csv",
                    cwd=stack.work)
    assert _wait(lambda: target.read_text() == expected, "the whole download")


def test_routing_view_shows_hits_and_explains(stack: Stack, browser: Any,
                                              shots: Path) -> None:
    _show(browser, "routing")
    report = json.loads(_cli("report", "--db", str(stack.db), "--by", "rule", "--format",
                             "json", cwd=stack.work))
    hits = {g["rule"]: g["requests"] for g in report["groups"]}
    shown = {row["name"][0]: row["requests"][0]
             for row in _cells(browser, "table[data-policy=default]")}
    for rule, requests in shown.items():
        assert requests == hits.get(rule, 0), rule
    assert shown["first-turn"] == 2 and shown["summarize-extract"] == 1
    # The charts: each bucket's shares, per rule and per tier, add up to the whole.
    for chart in ("routing-rules-chart", "routing-tiers-chart"):
        lines = json.loads(browser.execute_script(
            "return document.getElementById(arguments[0]).dataset.lines", chart))
        for bucket in zip(*lines.values(), strict=True):
            assert math.isclose(sum(v or 0 for v in bucket), 100.0), chart
    other = {row["rule"][0]: row["requests"][0] for row in _cells(browser, "#routing-other")}
    assert other == {rule: n for rule, n in hits.items() if rule not in shown}
    request = stack.work / "summarize.json"
    request.write_text(json.dumps(SUMMARIZE))
    box = browser.find_element(By.ID, "explain-body")
    box.clear()
    box.send_keys(json.dumps(SUMMARIZE))
    browser.find_element(By.ID, "explain").click()
    printed = _cli("route", "--explain", str(request), cwd=stack.work)
    _wait(lambda: browser.find_element(By.ID, "explain-out").text, "the explanation")
    shown_text = browser.execute_script("return document.getElementById('explain-out')"
                                        ".textContent")
    assert shown_text + "\n" == printed
    _screenshot(browser, shots, "routing")


def test_race_view_shows_the_reports_ttft(stack: Stack, browser: Any, shots: Path) -> None:
    _show(browser, "race")
    report = json.loads(_cli("report", "--db", str(stack.db), "--by", "tier", "--format",
                             "json", cwd=stack.work))["total"]
    assert _card(browser, "race", "client_ttft_p50_ms") == report["client_ttft_p50_ms"]
    assert _card(browser, "race", "wasted_usd") == report["wasted_usd"]
    assert report["client_ttft_p50_ms"] is not None
    outcomes = _cells(browser, "#race-outcomes")
    winners = sum(row["attempts"][0] for row in outcomes if row["role"][0] == "winner")
    assert winners == report["requests"] == REQUESTS
    _no_secret(browser)
    _screenshot(browser, shots, "race")


def test_shadow_view_shows_the_shadow_report(stack: Stack, browser: Any,
                                             shots: Path) -> None:
    _show(browser, "shadow")
    report = json.loads(_cli("shadow", "report", "--db", str(stack.db), "--format", "json",
                             cwd=stack.work))
    shown = _cells(browser, "#shadow-summary")
    assert len(shown) == len(report) == 1
    for column, (value, _text) in shown[0].items():
        assert value == report[0][column], column
    pairs = browser.execute_script(
        "return [...document.querySelectorAll('.pair')].map(p => p.dataset.request)")
    assert len(pairs) == 2
    # Shadow mode recorded these first turns and their answers on purpose; nothing else.
    assert SHADOWED in browser.page_source
    _no_secret(browser, prompts=False)
    assert MARKER not in browser.page_source
    _screenshot(browser, shots, "shadow")


def test_live_view_refreshes_without_reloading(stack: Stack, browser: Any,
                                               shots: Path) -> None:
    _show(browser, "live")
    browser.execute_script("window.__sameDocument = true")
    before = _cells(browser, "#live-requests")
    assert len(before) == REQUESTS and all(row["key"][0] == "team-a" for row in before)
    models = {row["model"][0]: row["breaker"][0] for row in _cells(browser, "#live-models")}
    assert set(models.values()) == {"closed"}
    raw = stack.client.chat.completions.with_raw_response.create(
        model="economy", messages=[{"role": "user", "content": f"Once more {MARKER}"}])
    new_id = raw.headers["x-request-id"]
    _wait(lambda: _cells(browser, "#live-requests")[0]["request_id"][0] == new_id,
          "the new request on the page")
    assert browser.execute_script("return window.__sameDocument") is True
    _no_secret(browser)
    _screenshot(browser, shots, "live")


def test_logging_out_forgets_the_key(stack: Stack, browser: Any) -> None:
    _show(browser, "shadow")
    browser.find_element(By.ID, "logout").click()
    assert browser.execute_script("return sessionStorage.length") == 0
    assert browser.find_element(By.ID, "login").is_displayed()
    # What was read with the key left with it.
    assert "team-a" not in browser.page_source and "$" not in browser.find_element(
        By.TAG_NAME, "main").text
    _no_secret(browser)
    browser.get(stack.url + "/ui")
    assert browser.find_element(By.ID, "login").is_displayed()
