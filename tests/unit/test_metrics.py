"""The spend counters: whatever is counted, in any order, the exposition adds up."""

from __future__ import annotations

import math
from collections import defaultdict

from hypothesis import given
from hypothesis import strategies as st

from tlproxy.metrics import TOKEN_KINDS, Metrics

_CALLS = st.lists(st.tuples(
    st.sampled_from(["premium", "economy", "embedding"]),
    st.sampled_from(["m1", "m2", "m3"]),
    st.sampled_from(["chat", "embedding", "shadow", "classifier"]),
    st.sampled_from(["used", "wasted"]),
    st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
    st.tuples(*[st.integers(min_value=0, max_value=10**7)] * len(TOKEN_KINDS)),
), max_size=40)


@given(_CALLS)
def test_spend_counts_every_call_under_its_labels(
    calls: list[tuple[str, str, str, str, float, tuple[int, int, int, int]]],
) -> None:
    metrics = Metrics()
    cost: dict[tuple[str, ...], float] = defaultdict(float)
    tokens: dict[tuple[str, ...], int] = defaultdict(int)
    for tier, model, kind, outcome, usd, counts in calls:
        metrics.spend(tier, model, kind, outcome, usd, counts)
        cost[tier, model, kind, outcome] += usd
        for name, count in zip(TOKEN_KINDS, counts, strict=True):
            tokens[tier, model, name, outcome] += count
    labels = ("tier", "model", "kind", "outcome")
    for key, usd in cost.items():
        value = metrics.registry.get_sample_value(
            "tlproxy_cost_usd_total", dict(zip(labels, key, strict=True)))
        assert value is not None and math.isclose(value, usd, rel_tol=1e-12, abs_tol=1e-12)
    for key, count in tokens.items():
        assert metrics.registry.get_sample_value(
            "tlproxy_tokens_total", dict(zip(labels, key, strict=True))) == count
    # Each label set is resolved once, whatever the number of calls.
    assert len(metrics._spend) == len(cost)
