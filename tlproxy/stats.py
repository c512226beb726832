"""Live statistics per model, fed by every attempt, and the circuit breaker.

One small object per model. Times are passed in (`now`), never read here, so
the logic is deterministic under test. What is kept:

* TTFT: an exponentially weighted mean (for ranking) and a ring of the last
  observations (for quantiles: the hedge delay is a quantile of recent TTFTs).
  A ring of 256 gives exact quantiles of a recent window at a fixed cost,
  which is what a hedging decision wants; a streaming sketch would only
  matter for far larger windows.

  The ring also holds attempts that ended without a first token because the
  race cut them (another attempt won, the decision chose another tier, the
  first-token deadline passed, the client left). Their TTFT is unknown but
  longer than the time they ran: right-censored. Dropping them would keep
  only the fast draws of a model that is often raced and cut, and every
  quantile (so every hedge delay and derived deadline) would come out low.
  Quantiles are read from the Kaplan-Meier estimate over the window instead;
  with nothing censored it is the plain nearest-rank quantile. When the
  censored tail hides the quantile asked for, the answer is the longest time
  seen: a lower bound, the best the window can say.
  A first token is the first delta that carries anything (content, a
  refusal, a tool call, reasoning, audio), because that is what the race
  waits for: the hedge delay and the derived deadline ask "how long until
  this model shows progress", whatever its kind. So one window holds them
  all, each observation labelled with its kind: a reasoning model's first
  reasoning delta and a chat model's first word are never mixed unawares,
  and `first_token_kinds` says what the quantiles measured.
  The moving average (for ranking) takes a cut attempt into account only
  when it ran longer than the average: its TTFT was at least that long, so
  the average moves towards the time it ran, as if that were its TTFT (a
  lower bound, so still on the low side). A cut shorter than the average
  says nothing the average does not already allow, and leaves it alone.
* gaps between chunks after the first token: the longest of each stream
  that ended whole, per phase (``reasoning`` while the stream's last chunk
  was reasoning, ``answer`` otherwise), in a ring of the last 256 streams.
  The stall deadline is a high quantile of those, not of single gaps: a
  stream of 500 chunks has 500 gaps, and a deadline at the 99th percentile
  of single gaps would trip on most streams, while the 99th percentile of
  each stream's longest gap trips on about one stream in a hundred of a
  model behaving as usual, and that one is continued, not lost. It is kept
  between `STALL_FLOOR` and `STALL_CEILING` and used only once
  `STALL_MIN_SAMPLES` streams of the phase were measured; before that, the
  deadline is `STALL_DEFAULT`.
* errors: an exponentially weighted failure rate.
* a breaker: after `failure_threshold` consecutive failures the model is
  skipped for `cooldown` seconds, then one probe request is let through
  (half-open); a success closes the breaker, a failure opens it again.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

__all__ = [
    "STALL_CEILING",
    "STALL_DEFAULT",
    "STALL_FLOOR",
    "STALL_MIN_SAMPLES",
    "STALL_QUANTILE",
    "ModelStats",
    "StatsBook",
]

# The stall deadline derived from live gaps (seconds): never under the floor
# (a deadline of a few hundred milliseconds would fire on any hiccup of the
# network), never over the ceiling (past it, a user has given up waiting).
STALL_FLOOR = 2.0
STALL_CEILING = 30.0
STALL_QUANTILE = 0.99
STALL_MIN_SAMPLES = 20
# Before enough streams were measured: the ceiling, so a model is never cut
# on a guess.
STALL_DEFAULT = STALL_CEILING


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
        # (seconds, observed, kind): a TTFT and its first token's kind, or
        # a time it was cut without one (kind None).
        self._window: deque[tuple[float, bool, str | None]] = deque(maxlen=window)
        self._observed = 0
        # The Kaplan-Meier curve of the window, until the next observation.
        self._curve: tuple[list[float], list[float]] | None = None
        self._opened_at: float | None = None
        self._probing = False
        # Per phase, each whole stream's longest gap between chunks.
        self._gaps: dict[str, deque[float]] = {}
        self._gap_window = window

    # -- feeding ---------------------------------------------------------

    def record_ttft(self, seconds: float, *, kind: str = "content") -> None:
        """A first token after `seconds`; `kind` is what it carried (``reasoning``, ...)."""
        self._observe(seconds, kind)
        if self.ttft_ewma is None:
            self.ttft_ewma = seconds
        else:
            self.ttft_ewma += self.alpha * (seconds - self.ttft_ewma)

    def record_no_token(self, seconds: float) -> None:
        """An attempt cut after `seconds` without a first token: its TTFT is longer."""
        self._observe(seconds, None)
        if self.ttft_ewma is None:
            self.ttft_ewma = seconds
        elif seconds > self.ttft_ewma:
            self.ttft_ewma += self.alpha * (seconds - self.ttft_ewma)

    def _observe(self, seconds: float, kind: str | None) -> None:
        observed = kind is not None
        if len(self._window) == self._window.maxlen and self._window[0][1]:
            self._observed -= 1
        self._window.append((seconds, observed, kind))
        self._observed += observed
        self._curve = None

    def record_gaps(self, longest: dict[str, float]) -> None:
        """A stream that ended whole: its longest gap between chunks, per phase."""
        for phase, seconds in longest.items():
            ring = self._gaps.get(phase)
            if ring is None:
                ring = self._gaps[phase] = deque(maxlen=self._gap_window)
            ring.append(seconds)

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
        """Observed TTFTs in the window (cut attempts not counted)."""
        return self._observed

    @property
    def cut(self) -> int:
        """Attempts in the window cut before a first token (censored)."""
        return len(self._window) - self._observed

    def first_token_kinds(self) -> dict[str, int]:
        """Observed TTFTs in the window by their first token's kind: what `quantile` measures."""
        counts: dict[str, int] = {}
        for _, _, kind in self._window:
            if kind is not None:
                counts[kind] = counts.get(kind, 0) + 1
        return counts

    def quantile(self, q: float) -> float | None:
        """The q-quantile of recent TTFTs, or None before the first one is observed.

        Kaplan-Meier over the window, so attempts cut without a token count
        as "longer than this". Nearest rank when nothing is censored.
        """
        if not self._observed:
            return None
        times, cumulative = self._kaplan_meier()
        # Tolerance: the product of (1 - 1/n) terms lands a hair under k/n.
        index = bisect.bisect_left(cumulative, q - 1e-9)
        if index == len(times):
            return max(seconds for seconds, _, _ in self._window)
        return times[index]

    def _kaplan_meier(self) -> tuple[list[float], list[float]]:
        """Event times, ascending, and the estimated P(TTFT <= t) at each."""
        if self._curve is None:
            # At equal times an observation comes before a cut: the cut one
            # is known to have lasted at least as long.
            ordered = sorted(self._window, key=lambda item: (item[0], not item[1]))
            at_risk = len(ordered)
            survival = 1.0
            times: list[float] = []
            cumulative: list[float] = []
            for seconds, observed, _ in ordered:
                if observed:
                    survival *= 1 - 1 / at_risk
                    times.append(seconds)
                    cumulative.append(1 - survival)
                at_risk -= 1
            self._curve = times, cumulative
        return self._curve

    def gap_samples(self, phase: str) -> int:
        """Whole streams measured in `phase` (``answer`` or ``reasoning``)."""
        ring = self._gaps.get(phase)
        return len(ring) if ring is not None else 0

    def stall_deadline(self, phase: str) -> float:
        """Seconds of silence after which a stream in `phase` has stalled.

        The `STALL_QUANTILE` of recent streams' longest gaps in that phase,
        between `STALL_FLOOR` and `STALL_CEILING`; `STALL_DEFAULT` until
        `STALL_MIN_SAMPLES` streams were measured.
        """
        ring = self._gaps.get(phase)
        if ring is None or len(ring) < STALL_MIN_SAMPLES:
            return STALL_DEFAULT
        ordered = sorted(ring)
        # Nearest rank: the smallest gap with at least q of the streams at or under it.
        rank = max(0, math.ceil(STALL_QUANTILE * len(ordered)) - 1)
        return min(STALL_CEILING, max(STALL_FLOOR, ordered[rank]))

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
