"""The files a run leaves behind: ``results.json``, ``report.md`` and the two plots.

``results.json`` keeps every sample, so any other statistic can be computed later::

    {
      "format": "bench.ttft/1",
      "started_at": "...", "finished_at": "...", "interrupted": false,
      "settings": {...}, "prompts": {...}, "client": {"cpu_seconds": ..., ...},
      "endpoints": [{"name": "a", "base_url": "...", "model": "...", "key": true, ...}],
      "levels": [
        {"kind": "closed", "value": 8, "label": "c=8", "wall": ..., "cpu": ...,
         "loop_lag": {...},
         "endpoints": {"a": {"summary": {...}, "samples": [{"ttft": 0.21, ...}, ...]}}}
      ]
    }

Sample times are seconds from the request's send (``start`` and ``lag`` excepted: seconds from
the level's measured start, and behind schedule). Only `Endpoint.public` is written: no key and
no header value reaches a file.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec

from .display import (
    errors_caption,
    format_ms,
    format_rate,
    level_title,
    summaries,
    table_rows,
    warnings_for,
)
from .runner import LevelResult, RunResult

__all__ = ["RunInfo", "results_document", "write_markdown", "write_outputs"]

FORMAT = "bench.ttft/1"


class RunInfo(msgspec.Struct, kw_only=True):
    """Facts about the run that are not in `RunResult`: times, client load, what was sent."""

    started_at: str
    finished_at: str
    cpu_seconds: float
    wall_seconds: float
    prompts: dict[str, Any]


def results_document(result: RunResult, info: RunInfo) -> dict[str, Any]:
    """The ``results.json`` content as plain data (Structs are encoded by msgspec)."""
    s = result.settings
    return {
        "format": FORMAT,
        "started_at": info.started_at,
        "finished_at": info.finished_at,
        "interrupted": result.interrupted,
        "settings": {
            "levels": [{"kind": lv.kind, "value": lv.value} for lv in s.levels],
            "duration": s.duration,
            "requests": s.requests,
            "warmup": s.warmup,
            "timeout": s.timeout,
            "seed": s.seed,
            "http2": s.http2,
        },
        "prompts": info.prompts,
        "client": {
            "cpu_seconds": info.cpu_seconds,
            "wall_seconds": info.wall_seconds,
            "cpu_share": info.cpu_seconds / info.wall_seconds if info.wall_seconds else 0.0,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "httpx": httpx.__version__,
        },
        "endpoints": [e.public() for e in result.endpoints],
        "levels": [_level_document(level) for level in result.levels],
    }


def _level_document(level: LevelResult) -> dict[str, Any]:
    stats = summaries(level)
    return {
        "kind": level.kind,
        "value": level.value,
        "label": level.label,
        "wall": level.wall,
        "cpu": level.cpu,
        "cpu_share": level.cpu_share,
        "loop_lag": level.loop_lag,
        "endpoints": {
            name: {"summary": stats[name], "samples": samples}
            for name, samples in level.samples.items()
        },
    }


def write_outputs(out_dir: Path, result: RunResult, info: RunInfo, *, plots: bool) -> list[Path]:
    """Write every output file into ``out_dir`` (created if needed); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json", out_dir / "report.md"]
    written[0].write_bytes(msgspec.json.encode(results_document(result, info)))
    if plots:
        from .plots import plot_ttft_cdf, plot_ttft_vs_load

        cdf, load = out_dir / "ttft_cdf.png", out_dir / "ttft_vs_concurrency.png"
        plot_ttft_cdf(result.levels, cdf)
        plot_ttft_vs_load(result.levels, load)
        written += [cdf, load]
    written[1].write_text(write_markdown(result, info, plots=plots))
    return written


def write_markdown(result: RunResult, info: RunInfo, *, plots: bool) -> str:
    """``report.md``: settings, the tables of the terminal, full distributions, the plots."""
    s = result.settings
    bound = f"{s.duration:g} s" if s.duration is not None else f"{s.requests} requests/endpoint"
    kinds = {lv.kind for lv in s.levels}
    load = ", ".join(lv.label for lv in s.levels)
    share = info.cpu_seconds / info.wall_seconds if info.wall_seconds else 0.0
    lines = [
        f"# TTFT benchmark, {info.started_at}",
        "",
        f"- load: {'closed loop' if kinds == {'closed'} else 'open loop (Poisson)'}, {load}; "
        f"{bound} per level; warm-up {s.warmup} request(s) per endpoint per level",
        f"- prompts: {_describe_prompts(info.prompts)}; seed {s.seed}",
        f"- HTTP/{'2' if s.http2 else '1.1'}, timeout {s.timeout:g} s per request",
        f"- client: {info.cpu_seconds:.1f} s CPU over {info.wall_seconds:.1f} s"
        f" ({share:.0%} of a core)",
    ]
    if result.interrupted:
        lines.append("- **interrupted**: the last level is partial")
    lines += ["", "| endpoint | base URL | model |", "|---|---|---|"]
    lines += [f"| {e.name} | {e.public()['base_url']} | {e.model} |" for e in result.endpoints]
    for level in result.levels:
        lines += ["", f"## {level_title(level)}", "", "Times in ms.", ""]
        lines += _markdown_table(*table_rows(level)[:2])
        caption = errors_caption(level)
        if caption:
            lines += ["", caption]
        lines += ["", *_distributions(level)]
    warnings = warnings_for(result.levels)
    if warnings:
        lines += ["", *[f"> {w}" for w in warnings]]
    if plots:
        lines += ["", "![TTFT CDF](ttft_cdf.png)", ""]
        lines += ["![TTFT against load](ttft_vs_concurrency.png)"]
    return "\n".join(lines) + "\n"


def _distributions(level: LevelResult) -> list[str]:
    lines = []
    header = ["metric", "n", "mean", "p50", "p90", "p95", "p99", "max"]
    for name, s in summaries(level).items():
        rows = []
        for label, dist, fmt in (
            ("TTFB (ms)", s.ttfb, format_ms),
            ("TTFT (ms)", s.ttft, format_ms),
            ("TTFT from schedule (ms)", s.ttft_from_schedule, format_ms),
            ("ITL (ms)", s.itl, format_ms),
            ("E2E (ms)", s.e2e, format_ms),
            ("tokens/s after the first", s.decode_rate, format_rate),
        ):
            if label.startswith("TTFT from") and level.kind != "open":
                continue
            values = (dist.mean, dist.p50, dist.p90, dist.p95, dist.p99, dist.max)
            rows.append([label, str(dist.n), *(fmt(v) for v in values)])
        lines += [
            f"<details><summary>{name}: {s.ok}/{s.requests} ok, "
            f"{s.throughput:.0f} output tokens/s in total, {s.in_flight:.1f} in flight on "
            "average</summary>",
            "",
            *_markdown_table(header, rows),
            "",
            "</details>",
            "",
        ]
    return lines


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(headers) - 1)
    return [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _describe_prompts(prompts: dict[str, Any]) -> str:
    if prompts.get("kind") == "file":
        return f"{prompts['lines']} request(s) from {prompts['path']}"
    return (
        f"synthetic, about {prompts['input_tokens']} tokens in, "
        f"max_tokens {prompts['output_tokens']}"
    )
