from __future__ import annotations

import orjson
import pytest

from tlproxy.errors import AuthenticationFailed, InvalidRequest, UpstreamError, redact
from tlproxy.providers.openai import map_openai_error


@pytest.mark.parametrize("secret", [
    "sk-proj-abcdefghijklmnop1234", "sk-ant-api03-abcdefghijkl", "AIzaSyA1234567890abcdefghijk",
    "tlp-0123456789abcdef", "Bearer abcdefghijklmnop",
])
def test_redact_masks_keys(secret: str) -> None:
    assert secret not in redact(f"Incorrect API key provided: {secret}.")


def test_envelopes_have_all_four_fields() -> None:
    for exc in (InvalidRequest("bad", param="x"), AuthenticationFailed(),
                UpstreamError("down", status=503)):
        error = orjson.loads(exc.body())["error"]
        assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(("status", "client_status", "retryable"), [
    (429, 429, True), (500, 502, True), (502, 502, True), (503, 503, True), (529, 503, True),
    (400, 400, False), (404, 404, False), (401, 502, True), (403, 502, True), (408, 502, True),
])
def test_openai_upstream_errors_map_to_client_statuses(
    status: int, client_status: int, retryable: bool
) -> None:
    body = orjson.dumps({"error": {"message": "m", "type": "t", "param": None, "code": None}})
    error = map_openai_error(status, body, {"retry-after": "2"})
    assert (error.status, error.retryable) == (client_status, retryable)
    if status == 429:
        assert error.headers["retry-after"] == "2"


def test_upstream_auth_failure_does_not_echo_upstream_text() -> None:
    body = orjson.dumps({"error": {"message": "Incorrect API key provided: sk-abc...xyz"}})
    error = map_openai_error(401, body, {})
    assert "sk-" not in error.message
