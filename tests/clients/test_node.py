"""The `openai` npm package (tests/clients/node/client.mjs) against the proxy."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.clients._support import require_clients_venv

require_clients_venv()

NODE_PROJECT = Path(__file__).parent / "node"
MIN_NODE = 20


def _missing(message: str) -> NoReturn:
    """Skip for a stated reason; under CI, whose machine has Node and whose set-up
    installs the package, fail instead: a skip there would hide an untested client."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        _missing(f"node is not installed (Node >= {MIN_NODE} runs tests/clients/node)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    major = int(re.match(r"v(\d+)", version).group(1))  # type: ignore[union-attr]
    if major < MIN_NODE:
        _missing(f"node {version} is too old: the openai package needs Node >= {MIN_NODE}")
    if not (NODE_PROJECT / "node_modules" / "openai").is_dir():
        _missing("tests/clients/node/node_modules is missing: "
                 "run ./scripts/install-clients (npm ci)")
    return node


def run_node(args: list[str], base_url: str, *, timeout: float = 60,
             env: dict[str, str] | None = None) -> str:
    """Run node in the Node project (so `import "openai"` resolves); return its stdout."""
    env = {**os.environ, "TLPROXY_BASE_URL": base_url, **(env or {})}
    done = subprocess.run([_node(), *args], cwd=NODE_PROJECT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"node failed ({done.returncode}):\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def summary(base_url: str, rate_limit_base_url: str) -> dict[str, Any]:
    printed = run_node(["client.mjs"], base_url,
                       env={"TLPROXY_RATE_LIMIT_BASE_URL": rate_limit_base_url})
    return json.loads(printed)  # type: ignore[no-any-return]


def test_the_locked_sdk_version_ran(summary: dict[str, Any]) -> None:
    lock = json.loads((NODE_PROJECT / "package-lock.json").read_text())
    assert summary["sdk"] == lock["packages"]["node_modules/openai"]["version"]


def test_json(summary: dict[str, Any]) -> None:
    answer = summary["json"]
    assert answer["object"] == "chat.completion"
    assert answer["content"]
    assert answer["finish_reason"] == "stop"
    assert answer["total_tokens"] > 0
    assert answer["request_id"].startswith("req_")
    assert answer["tier"] == "premium"
    assert answer["model"]


def test_stream_with_include_usage(summary: dict[str, Any]) -> None:
    stream = summary["stream"]
    assert stream["role"] == "assistant"
    assert stream["text"]
    assert stream["finish_reasons"] == ["stop"]
    usage = stream["usage"]
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_tool_call_round_trip(summary: dict[str, Any]) -> None:
    tools = summary["tools"]
    assert tools["finish_reason"] == "tool_calls"
    assert tools["name"] == "get_weather"
    assert isinstance(tools["arguments"]["city"], str)
    assert "18 C and sunny" in tools["answer"]


def test_embeddings_in_base64_are_decoded(summary: dict[str, Any]) -> None:
    assert summary["embeddings"] == {"count": 2, "dimensions": 256, "is_array": True}


def test_429_is_retried_after_retry_after(summary: dict[str, Any]) -> None:
    limited = summary["rate_limit"]
    assert limited["is_rate_limit_error"] and limited["status"] == 429
    assert limited["requests"] == 2  # maxRetries: 1
    assert limited["elapsed_ms"] >= 1000  # retry-after: 1
    assert limited["request_id"].startswith("req_")


def test_unsupported_endpoint_is_not_found_error(summary: dict[str, Any]) -> None:
    unsupported = summary["unsupported"]
    assert unsupported["is_not_found_error"] and unsupported["status"] == 404
    assert unsupported["code"] == "unsupported_endpoint"
    assert "is not supported by this proxy" in unsupported["message"]
