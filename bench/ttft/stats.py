"""Percentiles and per-endpoint summaries.

Method: linear interpolation between closest ranks, the default of numpy's ``percentile``
(Hyndman and Fan's type 7). For sorted values ``x[0..n-1]`` and a fraction ``q`` in [0, 1]::

    h = (n - 1) * q
    p = x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h])

So p0 is the minimum, p100 the maximum, p50 of an even count the mean of the middle two, and no
value is invented outside the observed range. With few samples the high percentiles are
interpolations between the largest observations, not estimates of a true tail: the tables print
the sample count beside them for that reason.

Which samples count (see `summarize`): TTFT and TTFB over every request that got that far,
E2E and tokens/s over the requests that completed without error, ITL over all gaps seen. An
error that comes back in 5 ms must not make an endpoint look fast, so errors are counted
separately and never averaged in.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import msgspec

from .recorder import Sample

__all__ = ["QUANTILES", "Distribution", "EndpointSummary", "percentile", "summarize"]

#: The percentiles every table and file reports, as fractions.
QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0 <= q <= 1) of already sorted values, interpolated linearly.

    Raises ValueError on an empty sequence or a ``q`` outside [0, 1]: there is no honest
    answer to either, and a NaN would travel silently into a table.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is outside [0, 1]")
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


class Distribution(msgspec.Struct, kw_only=True):
    """Count, mean and the reported percentiles of one metric; all None when ``n`` is 0."""

    n: int
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values: Iterable[float]) -> Distribution:
        """Summarize values in any order."""
        xs = sorted(values)
        if not xs:
            return cls(n=0)
        p50, p90, p95, p99 = (percentile(xs, q) for q in QUANTILES)
        return cls(
            n=len(xs), mean=math.fsum(xs) / len(xs), p50=p50, p90=p90, p95=p95, p99=p99, max=xs[-1]
        )


class EndpointSummary(msgspec.Struct, kw_only=True):
    """What one endpoint did at one load level.

    ``wall`` is the measured phase's duration; ``throughput`` output tokens per second over it;
    ``in_flight`` the mean number of its requests open at once (Little's law: total E2E over
    wall), which in closed loop shows how much of the shared concurrency this endpoint held.
    """

    requests: int
    ok: int
    errors: dict[str, int]
    done_ratio: float
    ttfb: Distribution
    ttft: Distribution
    ttft_from_schedule: Distribution
    itl: Distribution
    e2e: Distribution
    decode_rate: Distribution
    output_tokens: int
    wall: float
    throughput: float
    in_flight: float

    @property
    def error_count(self) -> int:
        """Requests that ended in any error."""
        return sum(self.errors.values())


def summarize(samples: Sequence[Sample], wall: float) -> EndpointSummary:
    """Summarize one endpoint's measured samples over a phase that lasted ``wall`` seconds."""
    completed = [s for s in samples if s.ok]
    ttfts = [s.ttft for s in samples if s.ttft is not None]
    tokens = sum(s.output_tokens or 0 for s in samples)
    return EndpointSummary(
        requests=len(samples),
        ok=len(completed),
        errors=dict(Counter(s.error for s in samples if s.error is not None).most_common()),
        done_ratio=sum(s.done for s in samples) / len(samples) if samples else 0.0,
        ttfb=Distribution.of(s.ttfb for s in samples if s.ttfb is not None),
        ttft=Distribution.of(ttfts),
        ttft_from_schedule=Distribution.of(
            t for s in samples if (t := s.ttft_from_schedule) is not None
        ),
        itl=Distribution.of(gap for s in samples for gap in s.itl),
        e2e=Distribution.of(s.e2e for s in completed),
        decode_rate=Distribution.of(r for s in completed if (r := s.decode_rate) is not None),
        output_tokens=tokens,
        wall=wall,
        throughput=tokens / wall if wall > 0 else 0.0,
        in_flight=math.fsum(s.e2e for s in samples) / wall if wall > 0 else 0.0,
    )
