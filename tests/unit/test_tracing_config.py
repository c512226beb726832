"""The [tracing] section: its checks, its ${ENV} headers, and the optional extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tlproxy.config import Config, ConfigError, TracingConfig
from tlproxy.config_check import problems
from tlproxy.config_load import load_config
from tlproxy.metrics import Metrics
from tlproxy.tracing import Tracing, build_tracing

BASE = """\
[providers.sim]
kind = "sim"

[[models]]
id = "big"
provider = "sim"
tier = "premium"
"""


def _tracing_problems(config: Config) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in problems(config) if p.path.startswith("tracing")]


@pytest.mark.parametrize(("protocol", "missing"), [
    (None, "opentelemetry.sdk.trace"),
    ("http", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
    ("grpc", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"),
])
def test_tracing_without_the_extra_is_a_config_error_naming_it(
        monkeypatch: pytest.MonkeyPatch, protocol: str | None, missing: str) -> None:
    # A module set to None in sys.modules cannot be imported: as if not installed.
    monkeypatch.setitem(sys.modules, missing, None)
    config = Config(tracing=TracingConfig(enabled=True, protocol=protocol))  # type: ignore[arg-type]
    [(path, message)] = _tracing_problems(config)
    assert path == "tracing.enabled"
    assert "'tracing' extra" in message and "pip install 'tlproxy[tracing]'" in message
    # A config built in code and never checked fails as clearly when tracing starts.
    with pytest.raises(ConfigError, match=r"'tracing' extra.*pip install 'tlproxy\[tracing\]'"):
        Tracing(config, Metrics())


def test_tracing_off_needs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    config = Config(tracing=TracingConfig(endpoint="http://collector:4318"))
    assert _tracing_problems(config) == []
    assert build_tracing(config, Metrics()) is None


def test_otel_sdk_disabled_turns_configured_tracing_off() -> None:
    config = Config(tracing=TracingConfig(enabled=True))
    assert build_tracing(config, Metrics(), {"OTEL_SDK_DISABLED": "true"}) is None


def test_headers_are_env_references_resolved_at_load_and_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "tlproxy.toml"
    path.write_text(BASE + '[tracing]\nenabled = true\n[tracing.headers]\n'
                    '"x-honeycomb-team" = "${HONEY_KEY}"\nfixed = "a-${REGION}-b"\n')
    config = load_config(path, {"HONEY_KEY": "s3cret", "REGION": "eu"})
    assert config.tracing.headers == {"x-honeycomb-team": "s3cret", "fixed": "a-eu-b"}
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"REGION": "eu"})
    assert "tracing.headers.x-honeycomb-team: environment variable HONEY_KEY is not set" in str(
        caught.value)
    assert "s3cret" not in str(caught.value)
