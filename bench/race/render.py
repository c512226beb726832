"""An analysis, shown: rich tables for the terminal, Markdown for the docs, the trade-off plot.

Input is what `bench.race.stats.analyze` returns; the Markdown is what ``docs/benchmarks.md``
quotes, so its columns and number formats are part of the tool's interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "curve_rows",
    "plot_tradeoff",
    "render_markdown",
    "render_rich",
    "table_rows",
    "target_lines",
]


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(pair: list[float] | None, digits: int = 0) -> str:
    return "" if pair is None else f" [{pair[0]:.{digits}f}, {pair[1]:.{digits}f}]"


_MAIN = ("direct", "pinned", "wait", "race", "race-econ-first")


def table_rows(analysis: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["variant", "n", "err", "TTFT p50 ms [95% CI]", "p90", "p99 [95% CI]",
            "decision p50/p99", "added p50/p90", "attempts/req", "hedges/req",
            "extra cost vs (b) (spec. + hedging)", "CPU own/other %"]
    rows = []
    summaries = analysis["summaries"]
    for name in _MAIN:
        summary = summaries.get(name)
        if summary is None:
            continue
        cost = summary.get("cost") or {}
        decision = summary.get("decision")
        added = summary.get("added")
        cpu = summary.get("cpu") or {}
        extra = "-"
        if cost.get("extra_pct") is not None:
            extra = (f"{cost['extra_pct']:.1f} % ({cost['extra_speculation_pct']:.1f} + "
                     f"{cost['extra_hedging_pct']:.1f})")
        rows.append([
            summary["label"], str(summary["n"]), str(sum(summary["errors"].values())),
            _f(summary["p50"]) + _ci(summary["p50_ci"]), _f(summary["p90"]),
            _f(summary["p99"]) + _ci(summary["p99_ci"]),
            f"{_f(decision['p50'])} / {_f(decision['p99'])}" if decision else "-",
            f"{_f(added['p50'])} / {_f(added['p90'])}" if added else "-",
            _f(cost.get("attempts_per_request"), 2) if cost else "1",
            _f(cost.get("hedges_per_request"), 3) if cost else "-",
            extra,
            f"{_f(cpu.get('own_cpu_pct'))} / {_f(cpu.get('other_cpu_pct'))}" if cpu else "-",
        ])
    return head, rows


def curve_rows(analysis: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["hedge_quantile", "n", "TTFT p50 ms", "p90", "p99 ms [95% CI]", "hedges/req",
            "extra cost %", "of which speculation", "of which hedging"]
    rows = [[p["hedge_quantile"], str(p["n"]), _f(p["p50"]), _f(p["p90"]),
             _f(p["p99"]) + _ci(p["p99_ci"]), _f(p["hedges_per_request"], 3),
             _f(p["extra_pct"], 1), _f(p["extra_speculation_pct"], 1),
             _f(p["extra_hedging_pct"], 1)]
            for p in analysis["curve"]]
    return head, rows


def target_lines(analysis: dict[str, Any]) -> list[str]:
    t = analysis["targets"]
    lines = []
    if "p50" in t:
        p = t["p50"]
        lines.append(
            f"(c) p50 <= max(decision p50, (a) p50) + 2 ms: {p['race_p50_ms']:.1f} ms vs bound "
            f"{p['bound_ms']:.1f} ms (decision {p['decision_p50_ms']:.1f}, direct "
            f"{p['direct_p50_ms']:.1f}); excess {p['excess_ms']:+.1f} ms, 95% CI "
            f"[{p['excess_ci_ms'][0]:+.1f}, {p['excess_ci_ms'][1]:+.1f}]: "
            f"{'MET' if p['met'] else 'MISSED'}")
    if "pinned" in t:
        p = t["pinned"]
        lines.append(
            f"the proxy alone, best model pinned (no decision, no race): p50 "
            f"{p['pinned_p50_ms']:.1f} ms, {p['overhead_p50_ms']:+.1f} ms over direct, 95% CI "
            f"[{p['overhead_ci_ms'][0]:+.1f}, {p['overhead_ci_ms'][1]:+.1f}]")
    if "p99" in t:
        p = t["p99"]
        lines.append(
            f"(c) p99 <= 0.7 x (a) p99: {p['race_p99_ms']:.0f} ms vs bound {p['bound_ms']:.0f} ms "
            f"(direct {p['direct_p99_ms']:.0f}); ratio {p['ratio']:.2f}, 95% CI "
            f"[{p['ratio_ci'][0]:.2f}, {p['ratio_ci'][1]:.2f}]: {'MET' if p['met'] else 'MISSED'}")
    if "cost" in t:
        p = t["cost"]
        lines.append(f"extra cost of (c) over (b) <= 15 %: {p['extra_pct']:.1f} %: "
                     f"{'MET' if p['met'] else 'MISSED'}")
    for summary in analysis["summaries"].values():
        other = (summary.get("cpu") or {}).get("other_cpu_pct")
        if other is not None and other > 25:
            lines.append(f"warning: other processes used {other:.0f} % of a core during "
                         f"{summary['label']}: its latencies include waiting for a core")
    return lines


def render_rich(analysis: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    for title, (head, rows) in (("TTFT and cost per variant", table_rows(analysis)),
                                ("Trade-off: hedge quantile -> tail and cost",
                                 curve_rows(analysis))):
        if not rows:
            continue
        table = Table(title=title)
        for column in head:
            table.add_column(column, justify="left" if column == "variant" else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for line in target_lines(analysis):
        console.print(line, markup=False, highlight=False)


def render_markdown(analysis: dict[str, Any]) -> str:
    parts = []
    for head, rows in (table_rows(analysis), curve_rows(analysis)):
        if rows:
            parts.append("| " + " | ".join(head) + " |")
            parts.append("|" + "|".join("---" for _ in head) + "|")
            parts.extend("| " + " | ".join(row) + " |" for row in rows)
            parts.append("")
    parts.extend(f"- {line}" for line in target_lines(analysis))
    return "\n".join(parts) + "\n"


def plot_tradeoff(analysis: dict[str, Any], path: Path) -> Path | None:
    """Left: p99 against what hedging costs; right: the whole extra cost, by cause."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = [p for p in analysis["curve"] if p["extra_pct"] is not None]
    if not curve:
        return None
    summaries = analysis["summaries"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=120,
                                      gridspec_kw={"width_ratios": [3, 2]})
    xs = [p["extra_hedging_pct"] for p in curve]
    ys = [p["p99"] for p in curve]
    low = [p["p99"] - p["p99_ci"][0] for p in curve]
    high = [p["p99_ci"][1] - p["p99"] for p in curve]
    left.errorbar(xs, ys, yerr=[low, high], fmt="o", capsize=3, label="race: p99 (95% CI)")
    left.plot(xs, ys, linestyle=":", linewidth=0.8, color="tab:blue")
    for p in curve:
        name = "hedging off" if p["hedge_quantile"] == "off" else f"q={p['hedge_quantile']}"
        left.annotate(f"{name} (n={p['n']})", (p["extra_hedging_pct"], p["p99"]),
                      textcoords="offset points", xytext=(6, 6), fontsize=8)
    if "direct" in summaries:
        direct = summaries["direct"]["p99"]
        left.axhline(direct, color="grey", linestyle="--", linewidth=1,
                     label=f"(a) direct, best provider: p99 {direct:.0f} ms")
        left.axhline(0.7 * direct, color="green", linestyle=":", linewidth=1,
                     label="target: 0.7 x (a) p99")
    if "wait" in summaries:
        left.axhline(summaries["wait"]["p99"], color="black", linestyle="-.", linewidth=1,
                     label=f"(b) decide, then call: p99 {summaries['wait']['p99']:.0f} ms")
    left.set_xlabel("hedging's extra cost (losing hedges and primaries), % of (b)'s cost")
    left.set_ylabel("TTFT p99, client side (ms)")
    left.set_title("Tail latency against the price of hedging")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=7, loc="upper right")

    bars = [*curve]
    econ = summaries.get("race-econ-first", {}).get("cost")
    labels = [("off" if p["hedge_quantile"] == "off" else f"q={p['hedge_quantile']}")
              for p in bars]
    speculation = [p["extra_speculation_pct"] for p in bars]
    hedging = [p["extra_hedging_pct"] for p in bars]
    if econ is not None and "extra_pct" in econ:
        labels.append("(d) econ.\nfirst")
        speculation.append(econ["extra_speculation_pct"])
        hedging.append(econ["extra_hedging_pct"])
    positions = range(len(labels))
    right.bar(positions, speculation, label="speculation (outside the decided tier)",
              color="tab:orange")
    right.bar(positions, hedging, bottom=speculation, label="hedging (lost in the tier)",
              color="tab:blue")
    right.axhline(15.0, color="red", linestyle=":", linewidth=1, label="target: 15 %")
    right.set_xticks(list(positions), labels, fontsize=8)
    right.set_ylabel("extra token cost over (b), %")
    right.set_title("What the race costs, by cause")
    right.grid(True, axis="y", alpha=0.3)
    right.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
