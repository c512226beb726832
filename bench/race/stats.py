"""Analysis of a result file: percentiles, bootstrap intervals, the paired "added" time, cost.

Pure functions of the saved JSON (``--report`` runs only these and `bench.race.render`).
Percentiles are numpy's default (linear between closest ranks), in ms; every 95 % interval is
a percentile bootstrap of `_BOOTSTRAP` resamples drawn from one generator seeded with the run's
``--seed``, consumed in a fixed order (`analyze`), so a report is reproducible to the digit.

The pure-Python `percentile` of `bench.overhead.stats` and `bench.ttft.stats` is the same
definition but not always the same float as numpy's (which interpolates from the upper neighbour
past the midpoint); the resampled quantiles need numpy's vectorised form anyway, so the point
estimates use it too and stay consistent with their intervals.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = [
    "analyze",
    "bootstrap",
    "cost_by_item",
    "interval",
    "paired_added",
    "percentile_ms",
    "summarize",
]

_BOOTSTRAP = 2000


def percentile_ms(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values) * 1000, q * 100))


def bootstrap(values: Sequence[float], q: float, rng: Any) -> Any:
    """`_BOOTSTRAP` resampled q-quantiles of `values`, in ms."""
    import numpy as np

    data = np.asarray(values) * 1000
    picks = rng.integers(0, len(data), size=(_BOOTSTRAP, len(data)))
    return np.percentile(data[picks], q * 100, axis=1)


def interval(draws: Any) -> list[float]:
    import numpy as np

    low, high = np.percentile(draws, [2.5, 97.5])
    return [float(low), float(high)]


def paired_added(run: dict[str, Any]) -> list[float]:
    """Per request: client TTFT minus the race's own time to its winner's first token.

    The race's time runs from its first attempt's start to the winner's first token, as the
    proxy saw it; what is left of the client's TTFT is what the proxy added around the race:
    reading and planning the request, waiting for a decision that came after the first token
    (or, without speculation, before any attempt started), relaying the chunks, and the
    client's own reading. Paired per request, so free of the upstream's latency draw.
    """
    by_request: dict[str, list[dict[str, Any]]] = {}
    for attempt in run["attempts"]:
        if attempt.get("request_id"):
            by_request.setdefault(attempt["request_id"], []).append(attempt)
    added = []
    for sample in run["samples"]:
        attempts = by_request.get(sample.get("request_id") or "")
        if sample["error"] is not None or not attempts:
            continue
        winner = next((a for a in attempts if a["outcome"] == "won"), None)
        if winner is None or winner["first_token_at"] is None:
            continue
        race = winner["first_token_at"] - min(a["started_at"] for a in attempts)
        added.append(sample["ttft"] - race)
    return added


def summarize(run: dict[str, Any], rng: Any) -> dict[str, Any]:
    samples = run["samples"]
    ok = [s for s in samples if s["error"] is None]
    ttfts = [s["ttft"] for s in ok]
    errors = Counter(s["error"] for s in samples if s["error"] is not None)
    out: dict[str, Any] = {"name": run["name"], "label": run["label"], "n": len(samples),
                           "ok": len(ok), "errors": dict(errors), "wall_s": run["wall_s"],
                           "cpu": run.get("cpu")}
    for q in (0.5, 0.9, 0.99):
        key = f"p{q * 100:g}"
        out[key] = percentile_ms(ttfts, q) if ttfts else None
        out[f"{key}_ci"] = interval(bootstrap(ttfts, q, rng)) if ttfts else None
    proxied = [s for s in samples if s["target"] == "proxy"]
    out["tier_mismatches"] = sum(1 for s in proxied if s["tier"] != s["tier_expected"])
    decisions = run["decisions"]
    out["decision"] = {f"p{q * 100:g}": percentile_ms(decisions, q) for q in (0.5, 0.9, 0.99)
                       } if decisions else None
    out["decisions_n"] = len(decisions)
    added = paired_added(run) if proxied else []
    out["added"] = ({"n": len(added), **{f"p{q * 100:g}": percentile_ms(added, q)
                                          for q in (0.5, 0.9)}} if added else None)
    attempts = run["attempts"]
    if proxied:
        n = len(proxied)
        unpriced = sum(1 for a in attempts if a["cost_usd"] is None)
        total = sum(a["cost_usd"] or 0.0 for a in attempts)
        waste: dict[str, float] = {}
        for a in attempts:
            if a["outcome"] != "won":
                waste[a["outcome"]] = waste.get(a["outcome"], 0.0) + (a["cost_usd"] or 0.0)
        out["cost"] = {
            "attempts_per_request": len(attempts) / n,
            "hedges_per_request": sum(a["hedge"] for a in attempts) / n,
            "fallbacks_per_request": sum(a["fallback"] for a in attempts) / n,
            "outcomes": dict(Counter(a["outcome"] for a in attempts)),
            "total_usd_per_request": total / n,
            "waste_usd_per_request": {k: v / n for k, v in waste.items()},
            "waste_total_usd_per_request": sum(waste.values()) / n,
            "unpriced_attempts": unpriced,
            "estimated_attempts": sum(1 for a in attempts if a["estimated"]),
        }
    return out


def cost_by_item(run: dict[str, Any]) -> dict[int, float]:
    """Each measured item's total cost, all its attempts included (joined on the request id)."""
    index = {s["request_id"]: s["index"] for s in run["samples"] if s.get("request_id")}
    out: dict[int, float] = {}
    for attempt in run["attempts"]:
        item = index.get(attempt.get("request_id") or "")
        if item is not None:
            out[item] = out.get(item, 0.0) + (attempt["cost_usd"] or 0.0)
    return out


def analyze(raw: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(raw["settings"]["seed"])
    runs = {r["name"]: r for r in raw["runs"]}
    summaries = {name: summarize(run, rng) for name, run in runs.items()}
    base = summaries.get("wait", {}).get("cost")
    wait_cost = cost_by_item(runs["wait"]) if "wait" in runs else {}
    for name, summary in summaries.items():
        cost = summary.get("cost")
        if cost is None or base is None:
            continue
        # (b)'s cost of the same prompts (a curve point sends only the first ones).
        items = [s["index"] for s in runs[name]["samples"]]
        if items and all(i in wait_cost for i in items):
            baseline = sum(wait_cost[i] for i in items) / len(items)
        else:
            baseline = base["total_usd_per_request"]
        cost["baseline_usd_per_request"] = baseline
        extra = cost["waste_total_usd_per_request"] - base["waste_total_usd_per_request"]
        by_cause = cost["waste_usd_per_request"]
        cost["extra_pct"] = 100 * extra / baseline
        cost["extra_speculation_pct"] = 100 * by_cause.get("outside-tier", 0.0) / baseline
        cost["extra_hedging_pct"] = 100 * by_cause.get("lost", 0.0) / baseline
        cost["total_vs_wait_pct"] = 100 * (cost["total_usd_per_request"] / baseline - 1)
    targets: dict[str, Any] = {}
    if {"direct", "race"} <= runs.keys():
        a_ttft = [s["ttft"] for s in runs["direct"]["samples"] if s["error"] is None]
        c_ttft = [s["ttft"] for s in runs["race"]["samples"] if s["error"] is None]
        decisions = runs["race"]["decisions"]
        a50, a99 = bootstrap(a_ttft, 0.5, rng), bootstrap(a_ttft, 0.99, rng)
        c50, c99 = bootstrap(c_ttft, 0.5, rng), bootstrap(c_ttft, 0.99, rng)
        d50 = bootstrap(decisions, 0.5, rng)
        a, c = summaries["direct"], summaries["race"]
        floor = max(c["decision"]["p50"], a["p50"])
        targets["p50"] = {
            "race_p50_ms": c["p50"], "decision_p50_ms": c["decision"]["p50"],
            "direct_p50_ms": a["p50"], "bound_ms": floor + 2.0,
            "excess_ms": c["p50"] - floor, "excess_ci_ms": interval(c50 - np.maximum(d50, a50)),
            "met": c["p50"] <= floor + 2.0,
        }
        targets["p99"] = {
            "race_p99_ms": c["p99"], "direct_p99_ms": a["p99"], "bound_ms": 0.7 * a["p99"],
            "ratio": c["p99"] / a["p99"], "ratio_ci": interval(c99 / a99),
            "met": c["p99"] <= 0.7 * a["p99"],
        }
        if c.get("cost") is not None and "extra_pct" in c["cost"]:
            targets["cost"] = {"extra_pct": c["cost"]["extra_pct"], "bound_pct": 15.0,
                               "met": c["cost"]["extra_pct"] <= 15.0}
        if "pinned" in summaries:
            pinned = [s["ttft"] for s in runs["pinned"]["samples"] if s["error"] is None]
            targets["pinned"] = {
                "pinned_p50_ms": summaries["pinned"]["p50"],
                "overhead_p50_ms": summaries["pinned"]["p50"] - a["p50"],
                "overhead_ci_ms": interval(bootstrap(pinned, 0.5, rng) - a50),
            }
    curve = []
    for name, label in [("race-q0.5", "0.5"), ("race-q0.75", "0.75"), ("race", "0.9"),
                        ("race-q0.95", "0.95"), ("race-q0.99", "0.99"),
                        ("race-nohedge", "off")]:
        point = summaries.get(name)
        if point is not None and point.get("cost") is not None:
            summary = point
            curve.append({"hedge_quantile": label, "name": name, "n": summary["n"],
                          "p50": summary["p50"], "p90": summary["p90"], "p99": summary["p99"],
                          "p99_ci": summary["p99_ci"], **{k: summary["cost"].get(k) for k in (
                              "extra_pct", "extra_speculation_pct", "extra_hedging_pct",
                              "hedges_per_request")}})
    return {"summaries": summaries, "targets": targets, "curve": curve}
