"""``bench.survive``: how an answer's end is classified, and a config the proxy accepts."""

from __future__ import annotations

import pytest

from bench.survive import FAULTS, classify, proxy_config
from tlproxy.config_check import problems


@pytest.mark.parametrize(("finished", "error", "timed_out", "outcome"), [
    (True, None, False, "recovered"),
    (False, None, False, "silent cut"),
    (False, ValueError("bad line"), False, "honest error"),
    (True, ValueError("late error"), False, "honest error"),
    (False, None, True, "hang"),
])
def test_classify(finished: bool, error: Exception | None, timed_out: bool,
                  outcome: str) -> None:
    assert classify(finished, error, timed_out) == outcome


@pytest.mark.parametrize("fault", FAULTS)
def test_the_proxy_config_of_each_fault_is_valid(fault: str) -> None:
    config = proxy_config("http://127.0.0.1:9/v1", fault)  # type: ignore[arg-type]
    assert list(problems(config)) == []
    assert [m.id for m in config.models if m.tier == "economy"] == [f"flaky-{fault}", "steady"]
