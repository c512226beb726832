"""The routing headers say what the policy decided, and match `tlproxy route --explain`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from tlproxy.router import Router
from tlproxy.server import Running
from tlproxy.stats import StatsBook

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}}}}

REQUESTS: list[tuple[str, dict[str, Any], str, str]] = [
    ("first turn", {"model": "auto", "messages": [{"role": "user", "content": "Hi"}]},
     "premium", "first-turn"),
    ("old name", {"model": "gpt-4o", "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "More"}]}, "economy", "default"),
    ("unknown name", {"model": "my-favourite-model", "messages": [
        {"role": "user", "content": "Summarize: tides"}]}, "economy", "summarize-extract"),
    ("tools", {"model": "auto", "tools": [TOOL], "messages": [
        {"role": "user", "content": "Look it up"}]}, "premium", "tools"),
    ("warm-up", {"model": "auto", "messages": [{"role": "system", "content": "Ready"}]},
     "economy", "system-only-warmup"),
    ("premium intent", {"model": "premium", "messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
        {"role": "user", "content": "z"}]}, "premium", "intent:premium"),
    ("economy intent", {"model": "economy", "messages": [{"role": "user", "content": "Hi"}]},
     "economy", "intent:economy"),
    ("pinned", {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "Hi"}]},
     "economy", "pinned"),
    # Names differing from an intent or an id only in case or surrounding blanks are that one.
    ("PREMIUM", {"model": "PREMIUM", "messages": [{"role": "user", "content": "Hi"}]},
     "premium", "intent:premium"),
    ("economy blank", {"model": " economy\n", "messages": [{"role": "user", "content": "Hi"}]},
     "economy", "intent:economy"),
    ("pinned case", {"model": "Gemini-2.5-Flash ", "messages": [
        {"role": "user", "content": "Hi"}]}, "economy", "pinned"),
]


@pytest.mark.parametrize(("name", "body", "tier", "rule"), REQUESTS,
                         ids=[r[0] for r in REQUESTS])
async def test_routing_headers_match_the_plan(
    proxy: Running, aclient: openai.AsyncOpenAI, name: str, body: dict[str, Any], tier: str,
    rule: str,
) -> None:
    raw = await aclient.chat.completions.with_raw_response.create(**body)
    assert raw.parse().choices[0].message is not None
    assert (raw.headers["x-tlproxy-tier"], raw.headers["x-tlproxy-rule"]) == (tier, rule)
    plan = Router(proxy.app.config, StatsBook()).plan_chat(body)
    assert raw.headers["x-tlproxy-model"] in [m.id for m in plan.candidates]
    assert raw.headers["x-tlproxy-provider"] == "sim"


async def test_route_explain_command_agrees_with_the_server(
    aclient: openai.AsyncOpenAI, tmp_path: Path
) -> None:
    body = REQUESTS[3][1]
    raw = await aclient.chat.completions.with_raw_response.create(**body)
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    result = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "tlproxy.cli", "route", "--explain", str(request)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"Decision: tier={raw.headers['x-tlproxy-tier']} " \
           f"rule={raw.headers['x-tlproxy-rule']}" in result.stdout
    assert f"1. {raw.headers['x-tlproxy-model']} " in result.stdout
