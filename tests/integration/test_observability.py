"""Metrics and the access log: what operators see, and that no key leaks into either."""

from __future__ import annotations

import logging

import httpx
import openai
import pytest
import trio

from tests.integration.conftest import CLIENT_KEY
from tlproxy.server import Running


async def test_metrics_count_requests_by_route(raw: httpx.AsyncClient) -> None:
    await raw.post("/v1/chat/completions", json={
        "model": "economy", "messages": [{"role": "user", "content": "hi"}]})
    await raw.post("/v1/chat/completions", json={
        "model": "economy", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    response = await raw.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    lines = [line for line in text.splitlines()
             if line.startswith("tlproxy_requests_total{") and 'tier="economy"' in line]
    assert all('endpoint="chat/completions"' in line and 'status="200"' in line
               for line in lines)
    # Live statistics may send the two requests to different economy models.
    assert sum(float(line.rsplit(" ", 1)[1]) for line in lines) == 2.0
    assert 'tlproxy_ttft_seconds_count{model=' in text
    assert "tlproxy_open_streams 0.0" in text


async def test_access_log_has_one_line_per_request_with_decision(
    raw: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tlproxy.access"):
        response = await raw.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "hi"}]})
        # The line is written once the response is sent, which may be just
        # after the client has read it.
        with trio.fail_after(10):  # a hang guard
            while not any(r.name == "tlproxy.access" for r in caplog.records):  # noqa: ASYNC110
                await trio.sleep(0.01)
    records = [r for r in caplog.records if r.name == "tlproxy.access"]
    assert len(records) == 1
    fields = records[0].fields  # type: ignore[attr-defined]
    assert fields["request_id"] == response.headers["x-request-id"]
    assert (fields["tier"], fields["rule"], fields["status"]) == ("premium", "first-turn", 200)


async def test_key_never_appears_in_logs_metrics_or_errors(
    keyed_proxy: Running, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        async with openai.AsyncOpenAI(base_url=keyed_proxy.url + "/v1", api_key=CLIENT_KEY,
                                      max_retries=0) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "hi"}])
            seen += [raw.http_response.text, str(raw.headers)]
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(model="auto", messages=[])
            seen.append(caught.value.response.text)
        async with openai.AsyncOpenAI(base_url=keyed_proxy.url + "/v1",
                                      api_key=CLIENT_KEY + "x", max_retries=0) as wrong:
            with pytest.raises(openai.AuthenticationError) as denied:
                await wrong.models.list()
            seen.append(denied.value.response.text)
        async with httpx.AsyncClient(base_url=keyed_proxy.url) as http:
            seen.append((await http.get("/metrics")).text)
    seen += [caplog.text] + [str(getattr(r, "fields", "")) for r in caplog.records]
    for text in seen:
        assert CLIENT_KEY not in text
