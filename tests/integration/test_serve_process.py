"""`tlproxy serve` as a real process: what only the command itself does."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.server_process import ServerProcess

CONFIG = """
[ledger]
enabled = false

[providers.sim]
kind = "sim"

[[models]]
id = "fast"
provider = "sim"
tier = "economy"
"""

# A bound on how often /metrics is read before the test gives up; each read
# is a full round trip to the server, so the test waits on the server only.
READS = 200


def _frozen(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30.0).text
    found = re.search(r"^tlproxy_gc_frozen_objects (\S+)$", text, re.MULTILINE)
    assert found is not None, "the gauge is exported"
    return float(found.group(1))


def test_serve_freezes_its_startup_heap_out_of_garbage_collection(tmp_path: Path) -> None:
    # Start-up's objects live as long as the process; a full collection that
    # walked them all again stalled the event loop for tens of milliseconds.
    config = tmp_path / "tlproxy.toml"
    config.write_text(CONFIG)
    server = ServerProcess(config, workers=1)
    try:
        server.wait_ready()
        frozen = 0.0
        for _ in range(READS):
            frozen = _frozen(server.url)
            if frozen > 0:
                break
            time.sleep(0.01)
        # Modules, config, app: tens of thousands of objects, not a handful.
        assert frozen > 10_000
        answer = httpx.post(server.url + "/v1/chat/completions", timeout=30.0, json={
            "model": "economy", "messages": [{"role": "user", "content": "hello"}]})
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"]
        metrics = httpx.get(server.url + "/metrics", timeout=30.0).text
        assert 'python_gc_collections_total{generation="0"}' in metrics
        # The young generation's threshold is not the interpreter's default.
        assert re.search(r"^tlproxy_gc_young_threshold 7000", metrics, re.MULTILINE)
    finally:
        server.terminate()
        server.process.communicate(timeout=60.0)


def _limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = (resource.RLIM_INFINITY if value == "unlimited" else int(value)
                          for value in line.split()[3:5])
            return soft, hard
    raise AssertionError("no open files limit")


def test_serve_raises_its_open_files_limit_to_the_hard_limit(tmp_path: Path) -> None:
    # Started the way many systems start a process, with a soft limit of 256
    # descriptors: 10,000 kept-alive connections would fail to be accepted.
    config = tmp_path / "tlproxy.toml"
    config.write_text(CONFIG)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    process = subprocess.Popen(
        [sys.executable, "-m", "tlproxy.cli", "serve", "--config", str(config), "--port", "0",
         "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=low_soft_limit)
    try:
        # The banner is printed once the worker listens, after the limit was set.
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert "tlproxy" in banner
        soft_now, hard_now = _limit(process.pid)
        assert hard_now == hard
        assert soft_now == (hard if hard != resource.RLIM_INFINITY else 1 << 20)
    finally:
        process.terminate()
        process.communicate(timeout=60.0)


def test_a_log_reader_that_stops_reading_never_stops_the_proxy(tmp_path: Path) -> None:
    # Every answered request logs an access line to stderr, a pipe nobody reads
    # until the end: its buffer (64 KiB) fills after a few hundred lines. Were the
    # event loop writing them, it would block on the full pipe, and with it every
    # request; the lines wait in the sink instead, and none is lost.
    config = tmp_path / "tlproxy.toml"
    config.write_text(CONFIG)
    server = ServerProcess(config, workers=1, log_level="INFO")
    requests = 1500
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            for n in range(requests):
                answer = client.post("/v1/chat/completions", json={
                    "model": "economy", "messages": [{"role": "user", "content": f"q{n}"}]})
                assert answer.status_code == 200
        server.terminate()
        _, err = server.process.communicate(timeout=60)
    finally:
        server.kill()
    access = [line for line in err.splitlines() if '"path":"/v1/chat/completions"' in line]
    assert len(access) == requests
    assert "were dropped" not in err

