"""The overhead benchmark runs end to end on a tiny load and writes a complete result file.

It checks that the tool works (subprocesses start, requests succeed, numbers are filled in),
never how fast anything is: timings belong to `bench/`, not to assertions. nginx, the optional
third target, is measured when a binary is installed and checked only then: CI need not have it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.overhead import nginx_config, slice_order

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")


@pytest.mark.parametrize(
    "with_nginx",
    [
        False,
        pytest.param(True, marks=pytest.mark.skipif(NGINX is None, reason="nginx not installed")),
    ],
    ids=["without-nginx", "with-nginx"],
)
def test_overhead_benchmark_writes_rps_and_ttft_for_every_target(
    tmp_path: Path, with_nginx: bool
) -> None:
    out = tmp_path / "r.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.overhead", "--duration", "0.5", "--concurrency", "2",
         "--upstream-ttft-ms", "0", "--warmup", "0.2", "--out", str(out),
         "--nginx" if with_nginx else "--no-nginx", "--markdown"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    result = json.loads(out.read_text())

    targets = ("direct", "nginx", "proxy") if with_nginx else ("direct", "proxy")
    [upstream] = result["upstreams"]
    assert upstream["upstream_ttft_ms"] == 0
    assert upstream["targets"] == list(targets)
    assert upstream["proxy_rss_kib"]["peak_sampled"] > 0
    runs = {run["load"]: run for run in upstream["runs"]}
    assert set(runs) == {"json", "stream"}
    for run in runs.values():
        assert run["concurrency"] == 2
        for target in targets:
            assert run[target]["rps"] > 0
            assert run[target]["errors"] == 0, run[target]["error_kinds"]
        assert run["proxy"]["cpu_percent"]["proxy"] is not None
        assert ("proxy_vs_nginx" in run) is with_nginx
    for target in targets:
        ttft = runs["stream"][target]["ttft_ms"]
        assert ttft["n"] > 0
        assert all(ttft[p] is not None and ttft[p] >= 0 for p in ("p50", "p90", "p99"))
    assert set(runs["stream"]["comparison"]["ttft_added_ms"]) == {"p50", "p90", "p99"}
    if with_nginx:
        assert result["settings"]["nginx"]["worker_processes"] >= 1
        for run in runs.values():
            assert run["nginx"]["cpu_percent"]["nginx"] is not None
            assert run["proxy_vs_nginx"]["rps_ratio"] > 0
        assert "Against nginx" in completed.stdout
    else:
        assert result["settings"]["nginx"] is None
        assert "Against nginx" not in completed.stdout


def test_three_targets_interleave_in_mirrored_rounds() -> None:
    assert slice_order(2) == ["direct", "proxy", "proxy", "direct"]
    assert slice_order(2, ("direct", "nginx", "proxy")) == [
        "direct", "nginx", "proxy", "proxy", "nginx", "direct"]


def test_nginx_config_keeps_every_path_in_its_prefix(tmp_path: Path) -> None:
    conf = nginx_config(listen_port=8081, upstream_port=9091, workers=3, prefix=tmp_path)
    assert "worker_processes 3;" in conf
    assert "listen 127.0.0.1:8081;" in conf
    assert "server 127.0.0.1:9091;" in conf
    assert "keepalive 256;" in conf
    assert 'proxy_set_header Connection "";' in conf
    assert "proxy_http_version 1.1;" in conf
    assert "proxy_buffering off;" in conf
    assert "access_log off;" in conf
    assert "user " not in conf
    for line in conf.splitlines():
        if line.strip().startswith(("pid ", "error_log ", "client_body_temp_path ",
                                    "proxy_temp_path ")):
            assert str(tmp_path) in line
