"""Live statistics per model, fed by every attempt, and the circuit breaker.

One small object per model. Times are passed in (`now`), never read here, so
the logic is deterministic under test. What is kept:

* TTFT: an exponentially weighted mean (for ranking) and a ring of the last
  samples (for quantiles: the hedge delay is a quantile of recent TTFTs).
  A ring of 256 floats gives exact quantiles of a recent window at a fixed
  cost, which is what a hedging decision wants; a streaming sketch would only
  matter for far larger windows.
* errors: an exponentially weighted failure rate.
* a breaker: after `failure_threshold` consecutive failures the model is
  skipped for `cooldown` seconds, then one probe request is let through
  (half-open); a success closes the breaker, a failure opens it again.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["ModelStats", "StatsBook"]


class ModelStats:
    def __init__(
        self,
        *,
        alpha: float = 0.2,
        window: int = 256,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
    ) -> None:
        self.alpha = alpha
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.ttft_ewma: float | None = None
        self.error_rate = 0.0
        self.attempts = 0
        self.failures = 0
        self.consecutive_failures = 0
        self._samples: deque[float] = deque(maxlen=window)
        self._opened_at: float | None = None
        self._probing = False

    # -- feeding ---------------------------------------------------------

    def record_ttft(self, seconds: float) -> None:
        self._samples.append(seconds)
        if self.ttft_ewma is None:
            self.ttft_ewma = seconds
        else:
            self.ttft_ewma += self.alpha * (seconds - self.ttft_ewma)

    def record_success(self) -> None:
        self.attempts += 1
        self.error_rate *= 1 - self.alpha
        self.consecutive_failures = 0
        self._opened_at = None
        self._probing = False

    def record_throttled(self) -> None:
        """A 429: counts in the error rate, but a rate limit is not ill health, so
        it neither opens the breaker nor breaks a run of successes."""
        self.attempts += 1
        self.failures += 1
        self.error_rate += self.alpha * (1 - self.error_rate)

    def record_failure(self, now: float) -> None:
        self.attempts += 1
        self.failures += 1
        self.error_rate += self.alpha * (1 - self.error_rate)
        self.consecutive_failures += 1
        if self._probing or self.consecutive_failures >= self.failure_threshold:
            self._opened_at = now
            self._probing = False

    # -- reading ---------------------------------------------------------

    @property
    def samples(self) -> int:
        return len(self._samples)

    def quantile(self, q: float) -> float | None:
        """The q-quantile of recent TTFTs (nearest rank), or None with no samples."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return ordered[rank]

    def state(self, now: float) -> str:
        """"closed", "open" or "half-open"."""
        if self._opened_at is None:
            return "closed"
        if now - self._opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def available(self, now: float) -> bool:
        """Whether a request may go to this model now (does not reserve the probe)."""
        state = self.state(now)
        return state == "closed" or (state == "half-open" and not self._probing)

    def acquire(self, now: float) -> bool:
        """Take the right to send one request; in half-open only one probe at a time."""
        state = self.state(now)
        if state == "closed":
            return True
        if state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False


class StatsBook:
    """All models' statistics, created on first use."""

    def __init__(self, **options: float) -> None:
        self._options = options
        self._stats: dict[str, ModelStats] = {}

    def __getitem__(self, model_id: str) -> ModelStats:
        stats = self._stats.get(model_id)
        if stats is None:
            stats = self._stats[model_id] = ModelStats(**self._options)  # type: ignore[arg-type]
        return stats

    def items(self) -> list[tuple[str, ModelStats]]:
        return list(self._stats.items())
