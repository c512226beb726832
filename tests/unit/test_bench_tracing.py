"""``bench.tracing``: each proxy it starts gets a config the proxy accepts, tracing as named."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.tracing import SETTINGS, _config, render
from tlproxy.config_load import load_config


@pytest.mark.parametrize(("name", "ratio"), list(SETTINGS.items()))
def test_each_setting_is_a_config_the_proxy_accepts(
        tmp_path: Path, name: str, ratio: float | None) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(_config("http://127.0.0.1:9", "http://127.0.0.1:7/v1/traces", ratio))
    tracing = load_config(path, {}, serving=True).tracing
    if ratio is None:
        assert not tracing.enabled, name
    else:
        assert (tracing.enabled, tracing.sample_ratio, tracing.endpoint) == (
            True, ratio, "http://127.0.0.1:7/v1/traces")


def test_the_table_shows_the_cost_added_over_tracing_off() -> None:
    row = {"requests": 10, "errors": 0, "rps": 5.0, "ttft_p50_ms": 1.0,
           "other_cpu_percent": 3.0}
    text = render({
        "off": {**row, "cpu_ms_per_request": 2.0, "spans": {"exported_total": 0.0}},
        "on, 100 %": {**row, "cpu_ms_per_request": 2.25, "spans": {
            "exported_total": 20.0, 'dropped_total{reason="queue_full"}': 1.0}},
    })
    lines = text.splitlines()
    assert lines[2].startswith("| off | 10 | 0 | 5 | 2.000 | - |")
    assert lines[3].startswith("| on, 100 % | 10 | 0 | 5 | 2.250 | +0.250 |")
    assert "| 20.0 | 1.0 |" in lines[3]
