"""Proxy overhead: what tlproxy adds over calling the same upstream directly.

Run it as ``python -m bench.overhead`` (``--help`` for the options). It starts two subprocesses
on loopback ports: the simulated upstream (``tlproxy sim``) and the proxy (``tlproxy serve``,
with a config written to a temporary directory that names the sim as an OpenAI-compatible
provider). The same client then drives the same requests at two targets: the sim directly, and
the proxy in front of it. The difference between the two is the proxy's cost.

A third target, on by default when an ``nginx`` binary is found (``--no-nginx`` skips it,
``--nginx-bin`` names one), puts the proxy's cost on a known scale: nginx as a plain reverse
proxy to the same sim, started by the tool (``nginx -c <conf> -p <tmpdir> -g 'daemon off;'``,
config from `nginx_config`: as many workers as the proxy has, HTTP/1.1 and a keep-alive pool of
256 to the upstream, no buffering, no access log). Its slices interleave with the other two
(D N P P N D ...), its CPU is summed over its master and workers, and each run reports the
proxy's RPS as a fraction of nginx's measured in the same run.

Method
------
* Two loads, each at every ``--concurrency``: (1) non-streaming chat completions, throughput in
  a closed loop (each of C workers sends its next request as soon as the previous one is
  answered); (2) streaming chat completions, time to first token (TTFT): from just before the
  request is sent to the moment the read that completes the first event carrying content (not
  the role-only chunk) returns, on ``trio.current_time()``.
* Interleaving: each measurement is cut into slices of about ``--slice`` seconds, alternating
  direct and proxy in an ABBA order (D P P D D P ...; with nginx D N P P N D ...), so that
  drift and noise of the machine (another process waking up, frequency changes) hit all
  targets alike.
* In a slice the workers' first requests are staggered over one typical request duration
  (measured in a warm-up), and only the steady part of the slice counts: without the stagger a
  fixed-latency upstream answers all C requests of a closed loop in the same instant, round
  after round, and the numbers would describe a synchronized burst instead of a steady load.
* Client: httpx on trio, HTTP/1.1, one ``httpx.AsyncClient`` (a pool of one keep-alive
  connection) per worker, so C workers hold C connections; see `make_clients` for why not one
  shared pool (``--client-pool shared`` measures that way too).
  A slice lasts at least three typical request durations, so a slow target still starts
  requests inside it (the run then takes longer than ``--duration``).
* CPU: utime+stime deltas from ``/proc/<pid>/stat`` over each measured window, for the proxy
  (all its processes: with ``--workers`` it is a supervisor and its workers; ``--proxy-workers``
  sets their number), the sim and this client, in percent of one core; also the whole machine's
  busy time from ``/proc/stat`` in the same unit (its ceiling is ``nproc`` x 100 %). What the
  machine spent beyond those three is "other", and a run where it was large is flagged: on a
  shared machine the numbers are then not the proxy's alone. Memory: the proxy's VmRSS, summed
  over its processes, sampled every 0.2 s (peak reported), and the sum of their VmHWM.

Caveats
-------
* Client, sim and proxy share the machine's cores (two on the reference machine). Through the
  proxy, three busy processes compete for them; directly, only two. When the machine column
  nears ``nproc`` x 100 %, the proxy numbers include waiting for a core, not only the proxy's
  own work; the client's CPU column tells whether the client itself was the bottleneck.
* Closed-loop numbers: throughput is what C workers achieve, not a capacity at a latency
  target, and the latency they see is bounded by the queueing they cause themselves.
* "Added TTFT" at a percentile is the proxy's TTFT percentile minus the direct one (two
  unpaired distributions), not a percentile of per-request differences.
* The proxy asks its upstream for a usage chunk on every stream (it prices every token) and
  strips it when the client did not ask; that extra work is part of the cost measured.

Layout: `stats` (pure functions and configs), `render` (tables), `procs` (subprocesses and
/proc), `load` (clients, slices, a whole run), `cli` (options and ``main``).
"""

from __future__ import annotations

from bench.overhead.cli import (
    build_parser,
    main,
)
from bench.overhead.render import (
    noise_warnings,
    render_markdown,
)
from bench.overhead.stats import (
    FirstContentDetector,
    cpu_ticks,
    distribution_ms,
    machine_ticks,
    nginx_config,
    parent_pid,
    plan_slices,
    process_tree,
    proxy_config_toml,
    slice_order,
    vm_kib,
)
from bench.ttft.stats import percentile

__all__ = [
    "FirstContentDetector",
    "build_parser",
    "cpu_ticks",
    "distribution_ms",
    "machine_ticks",
    "main",
    "nginx_config",
    "noise_warnings",
    "parent_pid",
    "percentile",
    "plan_slices",
    "process_tree",
    "proxy_config_toml",
    "render_markdown",
    "slice_order",
    "vm_kib",
]
