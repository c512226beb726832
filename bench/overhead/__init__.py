"""Proxy overhead: what tlproxy adds over calling its upstream directly, against floors.

Run it as ``python -m bench.overhead`` (``--help`` for the options). It starts, as
subprocesses on loopback ports, an upstream and every target in front of it, then drives the
same requests at each target in turn:

* ``direct``: the upstream itself. ``--upstream fast`` (the default) is `bench.fast_upstream`
  (uvloop and httptools: a few microseconds of CPU per request, so the machine's cores stay
  free for the proxy and the client); ``--upstream sim`` is ``tlproxy sim``, a Python server
  on trio that costs about as much CPU per request as the proxy.
* ``proxy``: ``tlproxy serve`` with a config written to a temporary directory that names the
  upstream as an OpenAI-compatible provider; one worker by default (``--proxy-workers``),
  ledger on (``--no-ledger``).
* The floors (``--floors``, the default; ``--no-floors`` skips them), from
  `bench.overhead.floors`, on the proxy's own stack: ``bare``, a bare proxy hop (read the
  body, peek at ``model``, forward the bytes through httpcore2, relay the answer), and
  ``hello``, hypercorn-trio alone answering a fixed chat completion (JSON load only: it does
  not stream).
* ``nginx``, on by default when an ``nginx`` binary is found (``--no-nginx`` skips it,
  ``--nginx-bin`` names one): a plain reverse proxy to the same upstream, started by the tool
  (``nginx -c <conf> -p <tmpdir> -g 'daemon off;'``, config from `nginx_config`: as many
  workers as the proxy has, HTTP/1.1 and a keep-alive pool of 256 to the upstream, no
  buffering, no access log).

Each intermediary (proxy, bare, hello, nginx) is its own process group: its CPU over its own
measured windows, divided by the requests it completed in them, is its CPU per request (per
stream under the stream load). The difference between the proxy and a floor is what the proxy
spends beyond forwarding (bare) or beyond serving HTTP at all (hello).

Method
------
* Two loads: (1) non-streaming chat completions at every ``--json-concurrency`` (default 32
  and 128), throughput in a closed loop (each of C workers sends its next request as soon as
  the previous one is answered); (2) streaming chat completions at every
  ``--stream-concurrency`` (default 8 and 64), time to first token (TTFT): from just before
  the request is sent to the moment the read that completes the first event carrying content
  (not the role-only chunk) returns, on ``trio.current_time()``. The upstream's timing:
  ``--upstream-ttft-ms`` (default 200; one stack per value), ``--inter-token-ms`` (default
  10), ``--tokens`` (default 24). The fast upstream answers JSON at once; the sim waits its
  TTFT there too.
* Interleaving: each measurement is cut into slices of about ``--slice`` seconds, one target
  after the other in mirrored rounds (D H B N P, then P N B H D, ...: ABBA), so that drift and
  noise of the machine (another process waking up, frequency changes) hit all targets alike.
* In a slice the workers' first requests are staggered over one typical request duration
  (measured in a warm-up), and only the steady part of the slice counts: without the stagger a
  fixed-latency upstream answers all C requests of a closed loop in the same instant, round
  after round, and the numbers would describe a synchronized burst instead of a steady load.
* Client: httpcore2 on trio, HTTP/1.1, one pool of one keep-alive connection per worker, so C
  workers hold C connections; see `make_clients` for why not httpx (``--client-pool shared``
  measures with one shared pool).
  A slice lasts at least three typical request durations, so a slow target still starts
  requests inside it (the run then takes longer than ``--duration``).
* CPU: utime+stime deltas from ``/proc/<pid>/stat`` over each measured window, for every
  process group (the upstream, each intermediary with all its processes, this client), in
  percent of one core; also the whole machine's busy time from ``/proc/stat`` in the same unit
  (its ceiling is ``nproc`` x 100 %). What the machine spent beyond the groups is "other", and
  a run where it was large is flagged: on a shared machine the numbers are then not the
  proxy's alone. Memory: the proxy's VmRSS, summed over its processes, sampled every 0.2 s
  (peak reported), and the sum of their VmHWM. Memory under many open streams and idle
  connections is `bench.overhead.memory`'s, a command of its own.

Caveats
-------
* Client, upstream and target share the machine's cores (two on the reference machine).
  Through an intermediary, three busy processes compete for them; directly, only two. When
  the machine column nears ``nproc`` x 100 %, the latencies include waiting for a core, not
  only the target's own work; the client's CPU column tells whether the client itself was the
  bottleneck.
* CPU per request depends on the rate: when few requests are in flight, or a stream's events
  arrive far apart, each request or event pays its own wakeups, reads and writes, which a
  saturated loop shares; so it is higher at 8 streams than at 64. Compare targets at the same
  load and concurrency, in the same run.
* Closed-loop numbers: throughput is what C workers achieve, not a capacity at a latency
  target, and the latency they see is bounded by the queueing they cause themselves.
* "Added TTFT" at a percentile is the proxy's TTFT percentile minus the direct one (two
  unpaired distributions), not a percentile of per-request differences.
* The proxy asks its upstream for a usage chunk on every stream (it prices every token) and
  strips it when the client did not ask; that extra work is part of the cost measured.

Layout: `stats` (pure functions and configs), `render` (tables), `procs` (subprocesses and
/proc), `load` (clients, slices, a whole run), `cli` (options and ``main``), `floors` (the
floor servers), `memory` (the memory command).
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
    ALL_TARGETS,
    INTERMEDIARIES,
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
    targets_for,
    vm_kib,
)
from bench.ttft.stats import percentile

__all__ = [
    "ALL_TARGETS",
    "INTERMEDIARIES",
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
    "targets_for",
    "vm_kib",
]
