"""The two pictures: TTFT CDFs, and TTFT percentiles against load.

matplotlib is imported inside the functions and drawn through its Agg canvas on a bare
`Figure`, never through ``pyplot``: no global backend switch, no figure registry, nothing
happens at import, and plotting works without a display.

Reading them:

* ``ttft_cdf.png``: for each endpoint (a colour) and load level (a line style), the share of
  requests whose TTFT was at most x. Further left is faster; a line that flattens late has a
  long tail. Where the lines cross, the faster median has the worse tail.
* ``ttft_vs_concurrency.png``: p50 (solid), p90 (dashed), p99 (dotted) TTFT per endpoint
  against concurrency (or request rate for open-loop runs). A line bending upward shows the
  load at which that endpoint starts queueing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .runner import LevelResult
from .stats import Distribution

__all__ = ["plot_ttft_cdf", "plot_ttft_vs_load"]

_LINESTYLES = ("-", "--", ":", "-.")
_PERCENTILES = (("p50", "-", "o"), ("p90", "--", "s"), ("p99", ":", "^"))


def plot_ttft_cdf(levels: Sequence[LevelResult], path: Path) -> None:
    """Write the TTFT CDF, a line per endpoint per level, to ``path`` (PNG)."""
    fig, ax = _figure()
    names = _endpoint_names(levels)
    colours = _colours(len(names))
    lowest = highest = None
    for i, level in enumerate(levels):
        for name, colour in zip(names, colours, strict=True):
            ttfts = sorted(s.ttft * 1000 for s in level.samples.get(name, ()) if s.ttft is not None)
            if not ttfts:
                continue
            lowest = ttfts[0] if lowest is None else min(lowest, ttfts[0])
            highest = ttfts[-1] if highest is None else max(highest, ttfts[-1])
            # The curve starts at 0 at the fastest request and steps up by 1/n at each one.
            ys = [k / len(ttfts) for k in range(len(ttfts) + 1)]
            ax.step(
                [ttfts[0], *ttfts],
                ys,
                where="post",
                color=colour,
                linestyle=_LINESTYLES[i % len(_LINESTYLES)],
                label=f"{name} {level.label} (n={len(ttfts)})",
            )
    if lowest is None or highest is None:
        _no_data(ax)
    else:
        if lowest > 0 and highest / lowest > 20:
            ax.set_xscale("log")
        for q in (0.5, 0.9, 0.99):
            ax.axhline(q, color="0.85", linewidth=0.8, zorder=0)
        ax.legend(fontsize="small", loc="lower right")
    ax.set_xlabel("time to first token (ms)")
    ax.set_ylabel("share of requests")
    ax.set_ylim(0, 1.02)
    ax.set_title("TTFT distribution")
    fig.savefig(path, dpi=110)


def plot_ttft_vs_load(levels: Sequence[LevelResult], path: Path) -> None:
    """Write p50/p90/p99 TTFT against concurrency (or rate), a colour per endpoint, to ``path``."""
    fig, ax = _figure()
    names = _endpoint_names(levels)
    colours = _colours(len(names))
    kind = levels[0].kind if levels else "closed"
    same_kind = [level for level in levels if level.kind == kind]
    xs = [level.value for level in same_kind]
    drawn = False
    for name, colour in zip(names, colours, strict=True):
        dists = [
            Distribution.of(s.ttft for s in level.samples.get(name, ()) if s.ttft is not None)
            for level in same_kind
        ]
        for field, style, marker in _PERCENTILES:
            points = [
                (x, getattr(d, field) * 1000)
                for x, d in zip(xs, dists, strict=True)
                if getattr(d, field) is not None
            ]
            if not points:
                continue
            drawn = True
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                color=colour,
                linestyle=style,
                marker=marker,
                label=f"{name} {field}",
            )
    if not drawn:
        _no_data(ax)
    else:
        if min(xs) > 0 and max(xs) / min(xs) >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small", ncols=max(1, len(names)))
    ax.set_xlabel("concurrency per endpoint" if kind == "closed" else "requests/s per endpoint")
    ax.set_ylabel("time to first token (ms)")
    ax.set_title("TTFT against load")
    fig.savefig(path, dpi=110)


def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, which="both", color="0.92")
    return fig, ax


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _endpoint_names(levels: Sequence[LevelResult]) -> list[str]:
    names: list[str] = []
    for level in levels:
        names += [n for n in level.samples if n not in names]
    return names


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no request produced a first token", ha="center", transform=ax.transAxes)
