"""``python -m bench.ttft`` end to end, over real loopback sockets.

The server is a fixture (`openai_like_server`, a base URL) so the same test can later point at
the real proxy. The tool runs in a subprocess because it calls ``trio.run`` itself; the server
runs in this test's own event loop and serves it meanwhile.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from bench.fake_openai import create_app

# The repository root: `python -m bench.ttft` is run from there, as a user would.
_ROOT = Path(__file__).resolve().parents[2]

SECRET = "sk-bench-never-printed-0123456789"


@pytest.fixture
async def openai_like_server(nursery: trio.Nursery) -> AsyncIterator[str]:
    """Base URL (``http://127.0.0.1:PORT/v1``) of a streaming OpenAI-compatible server."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    app = create_app(ttft=0.02, itl=0.002, jitter=0.2, seed=1)
    # hypercorn types its ASGI scopes as TypedDicts; the fake app takes plain dicts.
    binds = await nursery.start(functools.partial(serve, app, config))  # type: ignore[arg-type]
    yield f"{binds[0]}/v1"


async def run_bench(base_url: str, model: str, out: Path) -> tuple[int, str, str]:
    """Run the tool on two names for ``base_url`` at ``-c 1,4``; exit code, stdout, stderr."""
    argv = [
        sys.executable,
        "-W",
        "error",
        "-m",
        "bench.ttft",
        "--endpoint",
        f"a={base_url}",
        "--endpoint",
        f"b={base_url}",
        "--model",
        model,
        "--key",
        "a=env:BENCH_TEST_KEY",
        "--key",
        f"b={SECRET}",
        "-c",
        "1,4",
        "--duration",
        "0.4",
        "--warmup",
        "1",
        "--input-tokens",
        "32",
        "--output-tokens",
        "8",
        "--no-progress",
        "--out",
        str(out),
    ]
    env = {**os.environ, "BENCH_TEST_KEY": SECRET}
    with trio.fail_after(30):
        proc = await trio.run_process(
            argv, cwd=_ROOT, env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


async def test_two_endpoints_closed_loop_writes_results_and_plots(
    openai_like_server: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code, stdout, stderr = await run_bench(openai_like_server, "fake", out)
    assert code == 0, stderr

    doc = json.loads((out / "results.json").read_bytes())
    assert [level["label"] for level in doc["levels"]] == ["c=1", "c=4"]
    for level in doc["levels"]:
        assert set(level["endpoints"]) == {"a", "b"}
        for name, entry in level["endpoints"].items():
            samples = entry["samples"]
            assert samples, f"no samples for {name} at {level['label']}"
            assert all(s["done"] and s["error"] is None for s in samples)
            assert all(s["ttft"] > 0 and s["ttfb"] <= s["ttft"] <= s["e2e"] for s in samples)
            assert all(s["output_tokens"] > 0 for s in samples)
            assert all(len(s["itl"]) == s["deltas"] - 1 for s in samples)
            assert entry["summary"]["ok"] == len(samples)
    for png in ("ttft_cdf.png", "ttft_vs_concurrency.png"):
        data = (out / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
    report = (out / "report.md").read_text()
    assert "## c=4" in report

    assert "TTFT" in stdout and "c=1" in stdout
    everything = stdout + stderr + report + (out / "results.json").read_text()
    assert SECRET not in everything
    assert [e["key"] for e in doc["endpoints"]] == [True, True]


async def test_against_the_proxy(proxy: Any, tmp_path: Path) -> None:
    """The same run through the real proxy (the `proxy` fixture of this folder's conftest)."""
    out = tmp_path / "run"
    code, _, stderr = await run_bench(proxy.url + "/v1", "auto", out)
    assert code == 0, stderr
    doc = json.loads((out / "results.json").read_bytes())
    samples = [s for lv in doc["levels"] for e in lv["endpoints"].values() for s in e["samples"]]
    assert samples and all(s["done"] and s["error"] is None and s["ttft"] > 0 for s in samples)
    assert all(s["output_tokens"] > 0 for s in samples)
