"""The overhead benchmark runs end to end on a tiny load and writes a complete result file.

It checks that the tool works (subprocesses start, requests succeed, numbers are filled in),
never how fast anything is: timings belong to `bench/`, not to assertions. nginx is measured
when a binary is installed; without one (CI) the same run goes on with ``--no-nginx`` and still
checks the floors and the proxy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
# A tiny load: every target gets a few slices' worth of requests, and streams stay short.
TINY = ["--duration", "0.5", "--warmup", "0.2", "--concurrency", "2", "--upstream-ttft-ms", "0",
        "--inter-token-ms", "1", "--tokens", "3"]


def _run(tmp_path: Path, *options: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "r.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.overhead", *TINY, "--out", str(out), "--markdown",
         *options],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return json.loads(out.read_text()), completed.stdout


def test_every_target_reports_rps_ttft_and_its_own_cpu_per_request(tmp_path: Path) -> None:
    result, stdout = _run(tmp_path, "--nginx" if NGINX else "--no-nginx")

    intermediaries = ["hello", "bare", *(["nginx"] if NGINX else []), "proxy"]
    [upstream] = result["upstreams"]
    assert upstream["targets"] == ["direct", *intermediaries]
    assert upstream["proxy_processes"] == 1  # one worker by default, like the floors
    assert upstream["proxy_rss_kib"]["peak_sampled"] > 0
    runs = {run["load"]: run for run in upstream["runs"]}
    assert set(runs) == {"json", "stream"}
    # hello answers with one fixed body: it is measured under the JSON load only.
    assert runs["json"]["targets"] == ["direct", *intermediaries]
    assert runs["stream"]["targets"] == ["direct", *(t for t in intermediaries if t != "hello")]
    for run in runs.values():
        assert run["concurrency"] == 2
        for target in run["targets"]:
            summary = run[target]
            assert summary["rps"] > 0
            assert summary["errors"] == 0, summary["error_kinds"]
            assert summary["cpu_percent"]["upstream"] is not None
            if target == "direct":
                assert "cpu_ms_per_request" not in summary
                continue
            # Each intermediary's CPU comes from its own processes, over its own windows.
            assert summary["cpu_percent"][target] is not None
            assert summary["cpu_ms_per_request"] is not None
            assert summary["vs_direct"]["rps_ratio"] > 0
    for target in runs["stream"]["targets"]:
        ttft = runs["stream"][target]["ttft_ms"]
        assert ttft["n"] > 0
        assert all(ttft[p] is not None and ttft[p] >= 0 for p in ("p50", "p90", "p99"))
    assert set(runs["stream"]["proxy"]["vs_direct"]["ttft_added_ms"]) == {"p50", "p90", "p99"}
    assert result["settings"]["upstream"] == "fast"
    assert result["settings"]["floors"] is True
    if NGINX:
        assert result["settings"]["nginx"]["worker_processes"] == 1
    else:
        assert result["settings"]["nginx"] is None
    assert "**Summary, upstream TTFT 0 ms (proxy workers: 1)**" in stdout
    for target in intermediaries:
        assert f"| {target} |" in stdout


def test_the_simulated_upstream_without_floors_measures_direct_and_proxy(
    tmp_path: Path,
) -> None:
    result, _ = _run(tmp_path, "--upstream", "sim", "--no-floors", "--no-nginx",
                     "--json-concurrency", "3", "--stream-concurrency", "2")

    [upstream] = result["upstreams"]
    assert upstream["targets"] == ["direct", "proxy"]
    # --concurrency sets both lists; the later, explicit lists win over it.
    assert [(run["load"], run["concurrency"]) for run in upstream["runs"]] == [
        ("json", 3), ("stream", 2)]
    for run in upstream["runs"]:
        assert run["proxy"]["errors"] == 0, run["proxy"]["error_kinds"]
        assert run["proxy"]["cpu_ms_per_request"] is not None
    assert result["settings"]["upstream"] == "sim"


def test_memory_command_holds_streams_and_idle_connections_and_reports_rss(
    tmp_path: Path,
) -> None:
    out = tmp_path / "m.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.overhead.memory", "--streams", "20", "--idle", "60",
         "--parallel", "16", "--hold", "0.3", "--inter-token-ms", "500", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    result = json.loads(out.read_text())

    streams, idle = result["phases"]["streams"], result["phases"]["idle"]
    assert (streams["opened"], streams["errors"]) == (20, 0), streams["error_kinds"]
    assert idle["held"] == 60
    assert idle["first_request"] == {"ok": 60}
    assert idle["fresh_connection"] == "ok"
    # Held well inside the proxy's keep-alive timeout: every connection still answers.
    assert idle["second_request"] == {"ok": 60}
    assert idle["errors"] == 0
    for phase in (streams, idle):
        # VmRSS and VmHWM come from counters the kernel sums lazily: no order between them.
        assert all(value > 0 for value in phase["rss_kib"].values()), phase["rss_kib"]
    assert result["settings"]["rlimit_nofile"] >= 20
