"""The overhead benchmark runs end to end on a tiny load and writes a complete result file.

It checks that the tool works (subprocesses start, requests succeed, numbers are filled in),
never how fast anything is: timings belong to `bench/`, not to assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_overhead_benchmark_writes_rps_and_ttft_for_both_targets(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.overhead", "--duration", "0.5", "--concurrency", "2",
         "--upstream-ttft-ms", "0", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    result = json.loads(out.read_text())

    [upstream] = result["upstreams"]
    assert upstream["upstream_ttft_ms"] == 0
    assert upstream["proxy_rss_kib"]["peak_sampled"] > 0
    runs = {run["load"]: run for run in upstream["runs"]}
    assert set(runs) == {"json", "stream"}
    for run in runs.values():
        assert run["concurrency"] == 2
        for target in ("direct", "proxy"):
            assert run[target]["rps"] > 0
            assert run[target]["errors"] == 0, run[target]["error_kinds"]
        assert run["proxy"]["cpu_percent"]["proxy"] is not None
    for target in ("direct", "proxy"):
        ttft = runs["stream"][target]["ttft_ms"]
        assert ttft["n"] > 0
        assert all(ttft[p] is not None and ttft[p] >= 0 for p in ("p50", "p90", "p99"))
    assert set(runs["stream"]["comparison"]["ttft_added_ms"]) == {"p50", "p90", "p99"}
