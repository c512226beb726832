"""Shadow mode: mirror a sample of traffic to another tier, in the background.

Before a team moves a rule from premium to economy it wants evidence: on
*its* traffic, how often does economy say the same thing, how much cheaper
is it, how much faster? Shadow mode answers by sending a copy of a sampled
request to the target tier or model after the client's own request, and
recording both answers, latencies and costs side by side (`ShadowPair`).

Latencies are on trio's clock, each side from the moment its request
started: the primary's from the client's request arriving at the proxy (its
TTFT is what the client saw: the first byte of the answer sent), the
shadow's from its copy being sent, streamed if the client's was. A JSON
answer has no first token: its TTFT is None and only its duration counts.

The guarantees, since the client must never pay for the experiment:

* `Shadow.submit` is synchronous and returns at once: the shadow call runs
  in the Shadow's own nursery (`Shadow.run`), never in the request's;
* at most ``max_concurrency`` shadow calls run at once (and at most a key's
  own bound, when given); at capacity a submission is skipped and counted,
  never queued, so a slow target cannot pile up work or memory;
* whatever the shadow call does (raise, hang past ``timeout``, answer
  garbage) becomes a failed `ShadowResult` in the record; nothing propagates;
* `Shadow.aclose` cancels the calls still running, at shutdown.

The comparison (`agreement`, `shadow_report`) is deliberately simple and
explainable: exact match after trimming whitespace, the length ratio, and
for JSON answers whether both parse and have the same top-level keys. It is
a screen for where to look, not a quality score: the report shows example
pairs so a person can read them.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec
import trio

from .config import ClientKey, Config, ShadowConfig
from .report import (
    COMMAND_ERRORS,
    LedgerSource,
    add_common_arguments,
    dialect_of,
    ledger_source,
    percentile,
    print_report,
    reading_ledger,
    time_window,
)

__all__ = [
    "Agreement",
    "Shadow",
    "ShadowPair",
    "ShadowResult",
    "ShadowStatistics",
    "agreement",
    "shadow_config_for",
    "shadow_main",
    "shadow_report",
    "should_sample",
]

log = logging.getLogger("tlproxy.shadow")


class ShadowResult(msgspec.Struct, frozen=True):
    """One side of a comparison: who answered, what, how fast, at what cost."""

    model: str
    text: str | None = None  # the answer's content (tool calls as their JSON)
    ttft_ms: float | None = None  # to the first token (streams only; None for JSON)
    duration_ms: float = 0.0  # to the end of the answer
    cost_usd: float = 0.0
    ok: bool = True
    error: str | None = None


class ShadowPair(msgspec.Struct, frozen=True):
    """The client's answer (`primary`) and the shadow's, for one request."""

    request_id: str
    rule: str
    primary: ShadowResult
    shadow: ShadowResult
    ts: float = 0.0  # unix time of the submission
    key: str | None = None  # the client key's name
    prompt: str | None = None  # what was asked (for people reading examples), if kept


class ShadowStatistics(msgspec.Struct, kw_only=True):
    submitted: int = 0
    skipped: int = 0  # at capacity
    not_running: int = 0  # submitted before `run` or after `aclose`
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0  # at shutdown
    record_errors: int = 0


def shadow_config_for(config: Config, key: ClientKey | None) -> ShadowConfig | None:
    """The shadow settings for a request: its key's own, else the global ``[shadow]``."""
    if key is not None and key.shadow is not None:
        return key.shadow
    return config.shadow


def should_sample(
    config: ShadowConfig | None,
    rule: str,
    rng: random.Random,
    *,
    served: Sequence[str] = (),
) -> bool:
    """Whether to mirror this request: the rule is listed (or any), and a coin says so.

    `served` names what already answered it (its tier and model id): mirroring
    economy traffic to economy compares a model with itself, so it is never
    sampled. A rule capped by a key's tiers ("first-turn (capped by key)")
    matches its plain name. `rng` is passed in so tests can seed it.
    """
    if config is None or config.sample_rate <= 0 or config.target in served:
        return False
    if config.rules is not None and rule.split(" (", 1)[0] not in config.rules:
        return False
    return config.sample_rate >= 1 or rng.random() < config.sample_rate


class Shadow:
    """Runs shadow calls in the background, bounded, and records each pair."""

    def __init__(
        self,
        *,
        max_concurrency: int,
        record: Callable[[ShadowPair], None],
        timeout: float = 300.0,
    ) -> None:
        # A hung shadow call would hold its slot forever; `timeout` frees it.
        self.timeout = timeout
        self._limiter = trio.CapacityLimiter(max(1, max_concurrency))
        self._key_limiters: dict[str, trio.CapacityLimiter] = {}
        self._record = record
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._stopped = trio.Event()
        self.stats = ShadowStatistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background nursery shadow calls run in; returns after `aclose`."""
        if self._closed:
            task_status.started()
            return
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._stopped.set()

    async def aclose(self) -> None:
        """Cancel the shadow calls still running and stop accepting new ones."""
        self._closed = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
            await self._stopped.wait()

    def submit(
        self,
        fn: Callable[[], Awaitable[ShadowResult]],
        primary: ShadowResult,
        *,
        request_id: str,
        rule: str,
        target: str,
        key: str | None = None,
        key_limit: int | None = None,
        prompt: str | None = None,
    ) -> bool:
        """Start `fn` (the shadow call) in the background; True if started, False if skipped.

        Returns at once in every case. `target` names the shadow side when
        `fn` fails before saying which model it used. `key_limit` bounds
        this key's shadow calls in flight (a key's own ``max_concurrency``),
        on top of the Shadow's global bound.
        """
        if self._nursery is None or self._closed:
            self.stats.not_running += 1
            return False
        token = object()
        held: list[trio.CapacityLimiter] = []
        limiters = [self._limiter]
        if key is not None and key_limit is not None:
            limiters.append(self._key_limiters.setdefault(
                key, trio.CapacityLimiter(max(1, key_limit))))
        for limiter in limiters:
            try:
                limiter.acquire_on_behalf_of_nowait(token)
            except trio.WouldBlock:
                for taken in held:
                    taken.release_on_behalf_of(token)
                self.stats.skipped += 1
                return False
            held.append(limiter)
        pair = ShadowPair(request_id=request_id, rule=rule, primary=primary,
                          shadow=ShadowResult(model=target, ok=False), ts=time.time(), key=key,
                          prompt=prompt)
        self.stats.submitted += 1
        self.stats.running += 1
        self._nursery.start_soon(self._run_one, fn, pair, token, held)
        return True

    async def _run_one(
        self,
        fn: Callable[[], Awaitable[ShadowResult]],
        pair: ShadowPair,
        token: object,
        held: list[trio.CapacityLimiter],
    ) -> None:
        started = trio.current_time()
        try:
            try:
                with trio.fail_after(self.timeout):
                    result = await fn()
                if not isinstance(result, ShadowResult):
                    raise TypeError(f"shadow call returned {type(result).__name__}")
            except Exception as exc:
                log.info("shadow call for %s failed: %r", pair.request_id, exc)
                if isinstance(exc, trio.TooSlowError):
                    error = f"no answer within {self.timeout:g} s"
                else:
                    error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                result = msgspec.structs.replace(
                    pair.shadow, duration_ms=(trio.current_time() - started) * 1000, error=error)
            if result.ok:
                self.stats.completed += 1
            else:
                self.stats.failed += 1
            try:
                self._record(msgspec.structs.replace(pair, shadow=result))
            except Exception:
                self.stats.record_errors += 1
                log.exception("shadow: recording the pair for %s failed", pair.request_id)
        except trio.Cancelled:
            self.stats.cancelled += 1
            raise
        finally:
            self.stats.running -= 1
            for limiter in held:
                limiter.release_on_behalf_of(token)

    def statistics(self) -> ShadowStatistics:
        return msgspec.structs.replace(self.stats)


# -- comparing answers -----------------------------------------------------

class Agreement(msgspec.Struct, frozen=True):
    """How alike two sets of answers are; rates are fractions, None with nothing to compare."""

    compared: int  # pairs where both sides answered
    exact_match: float | None
    length_ratio: float | None  # mean of len(shadow) / len(primary), primary non-empty
    json_pairs: int  # compared pairs whose primary answer is a JSON object or array
    json_agreement: float | None  # of those: the shadow's parses too, same top-level keys


def _json_shape(text: str) -> frozenset[str] | str | None:
    """Top-level keys of a JSON object, "array" for an array, None if not JSON of either."""
    body = text.strip()
    if body.startswith("```"):  # a fenced block: ```json ... ```
        body = body.strip("`").removeprefix("json").strip()
    if not body.startswith(("{", "[")):
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if isinstance(value, dict):
        return frozenset(value)
    return "array" if isinstance(value, list) else None


def agreement(pairs: Iterable[tuple[str | None, str | None]]) -> Agreement:
    """Compare (primary, shadow) answer texts. A None side (a failure) is not compared."""
    compared = exact = json_pairs = json_agree = 0
    ratios: list[float] = []
    for primary, shadow in pairs:
        if primary is None or shadow is None:
            continue
        compared += 1
        exact += primary.strip() == shadow.strip()
        if primary:
            ratios.append(len(shadow) / len(primary))
        shape = _json_shape(primary)
        if shape is not None:
            json_pairs += 1
            json_agree += _json_shape(shadow) == shape
    return Agreement(
        compared=compared,
        exact_match=exact / compared if compared else None,
        length_ratio=sum(ratios) / len(ratios) if ratios else None,
        json_pairs=json_pairs,
        json_agreement=json_agree / json_pairs if json_pairs else None,
    )


# -- the report ------------------------------------------------------------

_EXAMPLE_CHARS = 300
# What the table shows (CSV and JSON carry every column), and its headers.
TABLE_COLUMNS = ("rule", "pairs", "shadow_errors", "primary_cost_usd", "shadow_cost_usd",
                 "primary_client_ttft_p50_ms", "shadow_ttft_p50_ms", "exact_match_pct",
                 "json_agreement_pct")
_LABELS = {"shadow_errors": "errors", "primary_cost_usd": "prim $", "shadow_cost_usd": "shad $",
           "primary_client_ttft_p50_ms": "prim ttft\n(client)", "shadow_ttft_p50_ms": "shad ttft",
           "exact_match_pct": "exact %", "json_agreement_pct": "json %"}


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= _EXAMPLE_CHARS:
        return text
    return text[:_EXAMPLE_CHARS] + "…"


def shadow_report(
    db_path: LedgerSource,
    *,
    since: Any = None,
    until: Any = None,
    examples: int = 3,
) -> list[dict[str, Any]]:
    """Per rule: pairs, both sides' cost and latency, agreement, and example pairs.

    Examples prefer the most recent pairs whose answers differ, since those
    are the ones worth reading. Rates are percentages. `db_path` is a ledger
    source: a SQLite path or a PostgreSQL URL (`tlproxy.report.connect_ledger`).
    """
    where, params = time_window(since, until, dialect_of(db_path).param)
    with reading_ledger(db_path) as (conn, _):
        cursor = conn.cursor()
        # Newest first; id breaks ties in ts, so both databases list pairs alike.
        cursor.execute(
            "SELECT rule, request_id, prompt, primary_model, primary_text, primary_ttft_ms, "
            "primary_duration_ms, primary_cost_usd, shadow_model, shadow_text, shadow_ttft_ms, "
            f"shadow_duration_ms, shadow_cost_usd, shadow_ok FROM shadow_pairs WHERE {where} "
            "ORDER BY ts DESC, id DESC", params)
        rows = cursor.fetchall()
    by_rule: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        by_rule.setdefault(row[0], []).append(row)
    return [_rule_report(rule, group, examples) for rule, group in sorted(by_rule.items())]


def _rule_report(rule: str, rows: list[tuple[Any, ...]], examples: int) -> dict[str, Any]:
    texts = [(r[4], r[9] if r[13] else None) for r in rows]
    agree = agreement(texts)

    def p50(column: int) -> float | None:
        value = percentile([r[column] for r in rows if r[column] is not None], 0.5)
        return None if value is None else round(value, 1)

    def pct(rate: float | None) -> float | None:
        return None if rate is None else round(100 * rate, 1)

    same = [a is not None and b is not None and a.strip() == b.strip() for a, b in texts]
    # Stable sort: differing pairs first, each part most recent first.
    chosen = [row for _, row in sorted(zip(same, rows, strict=True), key=lambda x: x[0])]
    chosen = chosen[:examples]
    return {
        "rule": rule,
        "pairs": len(rows),
        "primary_models": ", ".join(sorted({r[3] for r in rows})),
        "shadow_models": ", ".join(sorted({r[8] for r in rows})),
        "shadow_errors": sum(1 for r in rows if not r[13]),
        "primary_cost_usd": round(sum(r[7] for r in rows), 6),
        "shadow_cost_usd": round(sum(r[12] for r in rows), 6),
        # What the primary's client saw, from its request's arrival at the proxy.
        "primary_client_ttft_p50_ms": p50(5),
        "shadow_ttft_p50_ms": p50(10),
        "primary_duration_p50_ms": p50(6),
        "shadow_duration_p50_ms": p50(11),
        "exact_match_pct": pct(agree.exact_match),
        "length_ratio": None if agree.length_ratio is None else round(agree.length_ratio, 3),
        "json_pairs": agree.json_pairs,
        "json_agreement_pct": pct(agree.json_agreement),
        "examples": [{"request_id": r[1], "prompt": _clip(r[2]), "primary": _clip(r[4]),
                      "shadow": _clip(r[9])} for r in chosen],
    }


def shadow_main(argv: Sequence[str] | None = None) -> int:
    """``tlproxy shadow report``: how the shadow target compares, rule by rule."""
    parser = argparse.ArgumentParser(prog="tlproxy shadow", description=shadow_main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="compare primary and shadow answers per rule")
    add_common_arguments(report)
    report.add_argument("--examples", type=int, default=3, help="example pairs per rule")
    args = parser.parse_args(argv)
    try:
        rows = shadow_report(ledger_source(args), since=args.since, until=args.until,
                             examples=args.examples)
    except COMMAND_ERRORS as exc:
        print(f"tlproxy: {exc}", file=sys.stderr)
        return 1
    status = print_report(rows, args.format, title="Shadow comparison by rule",
                          columns=TABLE_COLUMNS, labels=_LABELS)
    if args.format == "table":
        for row in rows:
            for example in row["examples"]:
                print(f"\n[{row['rule']}] {example['request_id']}")
                if example["prompt"]:
                    print(f"  asked:   {example['prompt']}")
                for side in ("primary", "shadow"):
                    print(f"  {side + ':':8} {example[side] or '(no answer)'}")
    return status
