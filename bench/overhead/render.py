"""Tables of a result: rich for the terminal, Markdown for the docs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.table import Table

from bench.overhead.stats import (
    _OTHER_CPU_WARNING,
    LOADS,
    TARGETS_WITH_NGINX,
)

# -- rendering ---------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(result: dict[str, Any], load: str) -> list[list[str]]:
    rows = []
    for upstream in result["upstreams"]:
        for run in upstream["runs"]:
            if run["load"] != load:
                continue
            d, p, c = run["direct"], run["proxy"], run["comparison"]
            cells = [_f(upstream["upstream_ttft_ms"], 0), str(run["concurrency"])]
            if load == "json":
                cells += [
                    _f(d["rps"], 1), _f(p["rps"], 1), _f(c["rps_ratio"], 3),
                    _f(d["latency_ms"]["p50"]), _f(p["latency_ms"]["p50"]),
                    f"{d['errors']}/{p['errors']}",
                ]
            else:
                dt_, pt, added = d["ttft_ms"], p["ttft_ms"], c["ttft_added_ms"]
                cells += [
                    f"{dt_['n']}/{pt['n']}",
                    *(_f(dt_[k]) for k in ("p50", "p90", "p99")),
                    *(_f(pt[k]) for k in ("p50", "p90", "p99")),
                    *(_f(added[k]) for k in ("p50", "p90", "p99")),
                    f"{d['errors']}/{p['errors']}",
                ]
            cpu_d, cpu_p = d["cpu_percent"], p["cpu_percent"]
            cells += [
                _f(cpu_p.get("proxy"), 0), _f(p.get("proxy_cpu_ms_per_request"), 3),
                f"{_f(cpu_d.get('sim'), 0)}/{_f(cpu_p.get('sim'), 0)}",
                f"{_f(cpu_d.get('client'), 0)}/{_f(cpu_p.get('client'), 0)}",
                f"{_f(cpu_d.get('machine'), 0)}/{_f(cpu_p.get('machine'), 0)}",
                f"{_f(cpu_d.get('other'), 0)}/{_f(cpu_p.get('other'), 0)}",
            ]
            rows.append(cells)
    return rows


_CPU_HEADERS = [
    "proxy CPU %", "proxy CPU ms/req", "sim CPU % d/p", "client CPU % d/p", "machine CPU % d/p",
    "other CPU % d/p",
]
_HEADERS_BY_LOAD = {
    "json": ["upstream TTFT ms", "conc", "RPS direct", "RPS proxy", "proxy/direct",
             "latency p50 ms direct", "latency p50 ms proxy", "errors d/p", *_CPU_HEADERS],
    "stream": ["upstream TTFT ms", "conc", "n d/p",
               "direct p50", "direct p90", "direct p99",
               "proxy p50", "proxy p90", "proxy p99",
               "added p50", "added p90", "added p99", "errors d/p", *_CPU_HEADERS],
}
_TITLES = {
    "json": "Non-streaming chat completions, closed loop",
    "stream": "Streaming TTFT (ms, to the first content delta)",
}


def _dnp(runs: dict[str, Any], get: Callable[[dict[str, Any]], float | None],
         digits: int = 0) -> str:
    return "/".join(_f(get(runs[t]), digits) for t in TARGETS_WITH_NGINX)


def _getter(name: str, key: str) -> Callable[[dict[str, Any]], float | None]:
    """What `_dnp` reads of each target: ``run[name][key]``, None when absent."""
    return lambda run: run[name].get(key)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _nginx_rows(result: dict[str, Any], load: str) -> list[list[str]]:
    """Direct, nginx and tlproxy side by side, for the runs that measured nginx."""
    rows = []
    for upstream in result["upstreams"]:
        for run in upstream["runs"]:
            if run["load"] != load or "nginx" not in run:
                continue
            d, n, p = run["direct"], run["nginx"], run["proxy"]
            cells = [_f(upstream["upstream_ttft_ms"], 0), str(run["concurrency"])]
            if load == "json":
                cells += [
                    _f(d["rps"], 1), _f(n["rps"], 1), _f(p["rps"], 1),
                    _f(run["nginx_comparison"]["rps_ratio"], 3),
                    _f(run["proxy_vs_nginx"]["rps_ratio"], 3),
                    _dnp(run, lambda r: r["latency_ms"]["p50"], 2),
                ]
            else:
                cells += [f"{d['ttft_ms']['n']}/{n['ttft_ms']['n']}/{p['ttft_ms']['n']}"]
                cells += [_dnp(run, _getter("ttft_ms", k), 2) for k in ("p50", "p90", "p99")]
                cells += [_f(run["nginx_comparison"]["ttft_added_ms"]["p50"]),
                          _f(run["proxy_vs_nginx"]["ttft_added_ms"]["p50"])]
            cells += [
                f"{d['errors']}/{n['errors']}/{p['errors']}",
                _f(n["cpu_percent"].get("nginx"), 0), _f(p["cpu_percent"].get("proxy"), 0),
                _f(n.get("nginx_cpu_ms_per_request"), 3),
                _f(p.get("proxy_cpu_ms_per_request"), 3),
                _f(_ratio(n.get("nginx_cpu_ms_per_request"),
                          p.get("proxy_cpu_ms_per_request")), 3),
                *(_dnp(run, _getter("cpu_percent", k))
                  for k in ("sim", "client", "machine", "other")),
            ]
            rows.append(cells)
    return rows


_NGINX_CPU_HEADERS = [
    "errors d/n/p", "nginx CPU %", "tlproxy CPU %", "nginx CPU ms/req", "tlproxy CPU ms/req",
    "CPU/req nginx/tlproxy",
    "sim CPU % d/n/p", "client CPU % d/n/p", "machine CPU % d/n/p", "other CPU % d/n/p",
]
_NGINX_HEADERS_BY_LOAD = {
    "json": ["upstream TTFT ms", "conc", "RPS direct", "RPS nginx", "RPS tlproxy",
             "nginx/direct", "tlproxy/nginx", "latency p50 ms d/n/p", *_NGINX_CPU_HEADERS],
    "stream": ["upstream TTFT ms", "conc", "n d/n/p", "TTFT p50 d/n/p", "TTFT p90 d/n/p",
               "TTFT p99 d/n/p", "nginx added p50", "tlproxy over nginx p50",
               *_NGINX_CPU_HEADERS],
}
_NGINX_TITLES = {
    "json": "Against nginx: non-streaming chat completions, closed loop (d/n/p = direct/nginx/"
            "tlproxy)",
    "stream": "Against nginx: streaming TTFT (ms, to the first content delta)",
}


_MEMORY_TITLE = "Proxy memory (KiB, summed over its processes)"
_MEMORY_HEADERS = ("upstream TTFT ms", "processes", "RSS idle", "RSS peak (sampled)", "VmHWM")


def _memory_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for upstream in result["upstreams"]:
        rss = upstream["proxy_rss_kib"]
        rows.append([_f(upstream["upstream_ttft_ms"], 0),
                     str(upstream.get("proxy_processes", 1)), str(rss["idle"]),
                     str(rss["peak_sampled"]), str(rss["hwm"])])
    return rows


def render_tables(result: dict[str, Any]) -> list[Table]:
    tables = []
    for load in LOADS:
        table = Table(title=_TITLES[load], title_justify="left")
        for header in _HEADERS_BY_LOAD[load]:
            table.add_column(header, justify="right")
        for row in _rows(result, load):
            table.add_row(*row)
        tables.append(table)
    for load in LOADS:
        rows = _nginx_rows(result, load)
        if not rows:
            continue
        table = Table(title=_NGINX_TITLES[load], title_justify="left")
        for header in _NGINX_HEADERS_BY_LOAD[load]:
            table.add_column(header, justify="right")
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    memory = Table(title=_MEMORY_TITLE, title_justify="left")
    for header in _MEMORY_HEADERS:
        memory.add_column(header, justify="right")
    for row in _memory_rows(result):
        memory.add_row(*row)
    tables.append(memory)
    return tables


def noise_warnings(result: dict[str, Any]) -> list[str]:
    """Runs during which other processes used a noticeable share of the machine."""
    out = []
    for upstream in result["upstreams"]:
        for run in upstream["runs"]:
            worst = max((run[t]["cpu_percent"].get("other") or 0.0)
                        for t in TARGETS_WITH_NGINX if t in run)
            if worst > _OTHER_CPU_WARNING:
                out.append(
                    f"upstream {upstream['upstream_ttft_ms']:g} ms, {run['load']} at "
                    f"concurrency {run['concurrency']}: other processes used up to {worst:.0f} % "
                    "of a core meanwhile; these numbers are not the proxy's alone"
                )
    return out


def render_markdown(result: dict[str, Any]) -> str:
    """The same tables as GitHub-flavoured Markdown, numbers formatted exactly as printed."""
    parts = []
    for load in LOADS:
        headers = _HEADERS_BY_LOAD[load]
        lines = [f"**{_TITLES[load]}**", "", "| " + " | ".join(headers) + " |",
                 "|" + "---:|" * len(headers)]
        lines += ["| " + " | ".join(row) + " |" for row in _rows(result, load)]
        parts.append("\n".join(lines))
    for load in LOADS:
        rows = _nginx_rows(result, load)
        if not rows:
            continue
        headers = _NGINX_HEADERS_BY_LOAD[load]
        lines = [f"**{_NGINX_TITLES[load]}**", "", "| " + " | ".join(headers) + " |",
                 "|" + "---:|" * len(headers)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        parts.append("\n".join(lines))
    lines = [f"**{_MEMORY_TITLE}**", "", "| " + " | ".join(_MEMORY_HEADERS) + " |",
             "|" + "---:|" * len(_MEMORY_HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in _memory_rows(result)]
    parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
