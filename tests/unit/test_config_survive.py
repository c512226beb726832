"""The config of streams that survive: stall deadlines, continuation forms, sim faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlproxy.config import ConfigError
from tlproxy.config_load import load_config

BASE = """
[providers.sim]
kind = "sim"

[providers.sim.sim_models]
"m1" = {{ {profile} }}

[[models]]
id = "m1"
provider = "sim"
tier = "economy"
{model}

[policy]
{policy}
"""


def load(tmp_path: Path, *, profile: str = "tokens = 20", model: str = "",
         policy: str = "") -> None:
    path = tmp_path / "tlproxy.toml"
    path.write_text(BASE.format(profile=profile, model=model, policy=policy))
    load_config(path)


def test_every_new_field_is_read(tmp_path: Path) -> None:
    load(tmp_path, profile='fault = "stall", fault_after = 3, fault_stall_ms = 15000.0',
         model='stall_timeout = 2.5\ncontinuation = "prefill"',
         policy='continuation_tiers = ["premium"]')


@pytest.mark.parametrize(("where", "value", "problem"), [
    ("model", "stall_timeout = 0", "models[0].stall_timeout: must be more than 0 seconds"),
    ("model", 'continuation = "always"', "continuation"),
    ("profile", "fault_after = -1", "fault_after: must be at least 0"),
    ("profile", "fault_stall_ms = -5.0", "fault_stall_ms: must be at least 0"),
    ("profile", 'fault = "explode"', "fault"),
    ("policy", 'continuation_tiers = ["embedding"]', "continuation_tiers"),
])
def test_values_out_of_range_are_refused_by_name(tmp_path: Path, where: str, value: str,
                                                 problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, **{where: value if where != "profile" else f"tokens = 20, {value}"})
    assert problem in str(refused.value)
