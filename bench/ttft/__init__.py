"""Time-to-first-token benchmark for OpenAI-compatible endpoints: ``python -m bench.ttft``.

The pure parts are importable for tests and notebooks: `TimingRecorder` turns ``(now, bytes)``
events into a `Sample`, `percentile`/`Distribution` do the statistics, `poisson_schedule` gives
open-loop arrival times. `main` runs the command line.
"""

from __future__ import annotations

from .cli import build_parser, main
from .recorder import Sample, TimingRecorder
from .stats import Distribution, EndpointSummary, percentile, summarize
from .workload import SyntheticPrompts, poisson_arrivals, poisson_schedule

__all__ = [
    "Distribution",
    "EndpointSummary",
    "Sample",
    "SyntheticPrompts",
    "TimingRecorder",
    "build_parser",
    "main",
    "percentile",
    "poisson_arrivals",
    "poisson_schedule",
    "summarize",
]
