"""The documentation's examples, run against the test server.

* Every ```sh / ```bash block with `curl` in README.md and docs/*.md: run with
  bash, the URL rewritten; it must exit 0 and print JSON (or an SSE stream)
  with no `error`.
* docs/migration.md's blocks tagged `<!-- test: python ... -->` (run in this
  interpreter), `<!-- test: node -->` (run by node in tests/clients/node),
  `<!-- test: toml -->` (must load as a config) and
  `<!-- test: unsupported METHOD PATH -->` (must be what the proxy answers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.clients._support import (
    DOCS_URL,
    REPO,
    Snippet,
    parse_output,
    require_clients_venv,
    snippets,
)

require_clients_venv()

import msgspec  # noqa: E402

from tests.clients.test_node import run_node  # noqa: E402
from tlproxy.catalog import default_config  # noqa: E402
from tlproxy.config import Config  # noqa: E402
from tlproxy.config_check import validate  # noqa: E402

MIGRATION = REPO / "docs" / "migration.md"
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _curl_blocks() -> list[Snippet]:
    return [s for path in DOC_FILES for s in snippets(path)
            if s.lang in ("sh", "bash", "shell", "console") and "curl " in s.code]


def _tagged(tag: str) -> list[Snippet]:
    return [s for s in snippets(MIGRATION) if s.tag == tag]


def _ids(found: list[Snippet]) -> list[str]:
    return [s.id for s in found]


CURL = _curl_blocks()
PYTHON = _tagged("python")
NODE = _tagged("node")
TOML = _tagged("toml")
UNSUPPORTED = _tagged("unsupported")


def test_the_docs_have_examples_to_run() -> None:
    # Guard against a change of format that would make the tests below vacuous.
    assert {s.path.name for s in CURL} >= {"README.md", "migration.md"}
    assert {s.label for s in PYTHON} == {"openai", "langchain", "llamaindex", "responses",
                                         "agents"}
    assert len(NODE) == 1 and len(TOML) >= 2 and len(UNSUPPORTED) == 1
    untested = [s.id for s in snippets(MIGRATION)
                if s.lang in ("python", "js", "toml") and s.tag is None]
    assert untested == [], "every code example in migration.md needs a <!-- test: --> tag"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("block", CURL, ids=_ids(CURL))
def test_curl_example(block: Snippet, proxy_url: str, tmp_path: Path) -> None:
    script = block.code.replace(DOCS_URL, proxy_url).replace("localhost:8080",
                                                              proxy_url.split("//")[1])
    env = {**os.environ, "TLPROXY_KEY": "unused"}
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{block.id} failed:\n{script}\n{done.stderr}"
    values = parse_output(done.stdout)
    for value in values:
        assert not (isinstance(value, dict) and "error" in value), f"{block.id}: {value}"
    if "data:" in done.stdout:
        chunks = [v for v in values if v != "[DONE]"]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        if "include_usage" in script:
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("block", PYTHON, ids=_ids(PYTHON))
def test_python_example(block: Snippet, base_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = block.code.replace(DOCS_URL, base_url.removesuffix("/v1"))
    exec(compile(code, block.id, "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out
    assert printed.strip(), f"{block.id} printed nothing"


@pytest.mark.parametrize("block", NODE, ids=_ids(NODE))
def test_node_example(block: Snippet, proxy_url: str) -> None:
    code = block.code.replace(DOCS_URL, proxy_url)
    printed = run_node(["--input-type=module", "--eval", code], proxy_url + "/v1")
    assert "tokens:" in printed


@pytest.mark.parametrize("block", TOML, ids=_ids(TOML))
def test_toml_example_is_a_valid_config(block: Snippet) -> None:
    # A fragment: its tables replace those of the built-in catalog (the one the
    # test server runs), so that aliases to its model ids resolve.
    fragment = tomllib.loads(textwrap.dedent(block.code))
    merged = {**msgspec.to_builtins(default_config()), **fragment}
    validate(msgspec.convert(merged, Config))


@pytest.mark.parametrize("block", UNSUPPORTED, ids=_ids(UNSUPPORTED))
def test_unsupported_endpoint_answer_is_as_documented(block: Snippet, proxy_url: str) -> None:
    method, path = block.label.split()
    request = urllib.request.Request(proxy_url + path, data=b"{}", method=method,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    with caught.value:
        assert caught.value.code == 404
        assert json.loads(caught.value.read()) == json.loads(block.code)
