"""Tables of a result: rich for the terminal, Markdown for the docs.

A result is rendered as plain rows of strings (`Grid`), once, and each grid becomes a rich table
or a Markdown table, so both show the same numbers formatted the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table

from bench.overhead.stats import (
    _OTHER_CPU_WARNING,
    INTERMEDIARIES,
    LOADS,
)

# -- rendering ---------------------------------------------------------------------------------


@dataclass
class Grid:
    title: str
    headers: list[str]
    rows: list[list[str]]


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


_TITLES = {
    "json": "Non-streaming chat completions, closed loop",
    "stream": "Streaming chat completions: TTFT (ms, to the first content delta) and CPU",
}
_CPU_HEADERS = ["own CPU %", "upstream CPU %", "client CPU %", "machine CPU %", "other CPU %"]
_HEADERS = {
    "json": ["upstream TTFT ms", "conc", "target", "RPS", "RPS / direct", "latency p50 ms",
             "latency p99 ms", "errors", "own CPU ms/req", *_CPU_HEADERS],
    "stream": ["upstream TTFT ms", "conc", "target", "streams", "TTFT p50", "TTFT p90",
               "TTFT p99", "added p50", "added p90", "added p99", "errors",
               "own CPU ms/stream", *_CPU_HEADERS],
}


def _load_rows(result: dict[str, Any], load: str) -> list[list[str]]:
    """One row per upstream setting, concurrency and target; *own* is the target's processes."""
    rows = []
    for upstream in result["upstreams"]:
        for run in upstream["runs"]:
            if run["load"] != load:
                continue
            for target in run["targets"]:
                s = run[target]
                vs = s.get("vs_direct") or {}
                cells = [_f(upstream["upstream_ttft_ms"], 0), str(run["concurrency"]), target]
                if load == "json":
                    cells += [_f(s["rps"], 1), _f(vs.get("rps_ratio"), 3),
                              _f(s["latency_ms"]["p50"]), _f(s["latency_ms"]["p99"])]
                else:
                    ttft, added = s["ttft_ms"], vs.get("ttft_added_ms") or {}
                    cells += [str(ttft["n"]), *(_f(ttft[k]) for k in ("p50", "p90", "p99")),
                              *(_f(added.get(k)) for k in ("p50", "p90", "p99"))]
                cpu = s["cpu_percent"]
                cells += [str(s["errors"]), _f(s.get("cpu_ms_per_request"), 3),
                          _f(cpu.get(target), 0) if target in INTERMEDIARIES else "-",
                          *(_f(cpu.get(k), 0) for k in ("upstream", "client", "machine",
                                                        "other"))]
                rows.append(cells)
    return rows


def _summary(result: dict[str, Any], upstream: dict[str, Any]) -> Grid:
    """Per intermediary: CPU per request and per stream, and TTFT added, one column each."""
    runs = upstream["runs"]
    headers = ["target"]
    columns = []
    for run in runs:
        c = run["concurrency"]
        if run["load"] == "json":
            headers.append(f"JSON c={c}: CPU ms/req (RPS)")
            columns.append((run, "json"))
        else:
            headers += [f"stream c={c}: CPU ms/stream", f"stream c={c}: TTFT added p50 / p99 ms"]
            columns += [(run, "stream_cpu"), (run, "stream_ttft")]
    rows = []
    for target in INTERMEDIARIES:
        if target not in upstream["targets"]:
            continue
        cells = [target]
        for run, kind in columns:
            s = run.get(target)
            if s is None:
                cells.append("-")
            elif kind == "json":
                cells.append(f"{_f(s.get('cpu_ms_per_request'), 3)} ({_f(s['rps'], 0)})")
            elif kind == "stream_cpu":
                cells.append(_f(s.get("cpu_ms_per_request"), 3))
            else:
                added = s["vs_direct"]["ttft_added_ms"]
                cells.append(f"{_f(added['p50'])} / {_f(added['p99'])}")
        rows.append(cells)
    workers = result["settings"].get("proxy_workers")
    title = (f"Summary, upstream TTFT {upstream['upstream_ttft_ms']:g} ms "
             f"(proxy workers: {workers if workers is not None else 'default'})")
    return Grid(title, headers, rows)


_MEMORY_TITLE = "Proxy memory (KiB, summed over its processes)"
_MEMORY_HEADERS = ["upstream TTFT ms", "processes", "RSS idle", "RSS peak (sampled)", "VmHWM"]


def _memory_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for upstream in result["upstreams"]:
        rss = upstream["proxy_rss_kib"]
        rows.append([_f(upstream["upstream_ttft_ms"], 0),
                     str(upstream.get("proxy_processes", 1)), str(rss["idle"]),
                     str(rss["peak_sampled"]), str(rss["hwm"])])
    return rows


def grids(result: dict[str, Any]) -> list[Grid]:
    out = [_summary(result, upstream) for upstream in result["upstreams"]]
    out += [Grid(_TITLES[load], _HEADERS[load], _load_rows(result, load)) for load in LOADS]
    out.append(Grid(_MEMORY_TITLE, _MEMORY_HEADERS, _memory_rows(result)))
    return out


def render_tables(result: dict[str, Any]) -> list[Table]:
    tables = []
    for grid in grids(result):
        table = Table(title=grid.title, title_justify="left")
        for header in grid.headers:
            table.add_column(header, justify="right")
        for row in grid.rows:
            table.add_row(*row)
        tables.append(table)
    return tables


def render_markdown(result: dict[str, Any]) -> str:
    """The same tables as GitHub-flavoured Markdown, numbers formatted exactly as printed."""
    parts = []
    for grid in grids(result):
        lines = [f"**{grid.title}**", "", "| " + " | ".join(grid.headers) + " |",
                 "|" + "---:|" * len(grid.headers)]
        lines += ["| " + " | ".join(row) + " |" for row in grid.rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def noise_warnings(result: dict[str, Any]) -> list[str]:
    """Runs during which other processes used a noticeable share of the machine."""
    out = []
    for upstream in result["upstreams"]:
        for run in upstream["runs"]:
            worst = max((run[t]["cpu_percent"].get("other") or 0.0) for t in run["targets"])
            if worst > _OTHER_CPU_WARNING:
                out.append(
                    f"upstream {upstream['upstream_ttft_ms']:g} ms, {run['load']} at "
                    f"concurrency {run['concurrency']}: other processes used up to {worst:.0f} % "
                    "of a core meanwhile; these numbers are not the proxy's alone"
                )
    return out
