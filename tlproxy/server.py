"""Running the proxy: hypercorn's trio worker, served programmatically.

`serve` is a trio task: ``await nursery.start(serve, config)`` returns the
bound addresses once the socket listens, so tests bind port 0 and read the
port back. When the config has simulated providers without a base URL, their
`SimUpstream` is started first, in the same nursery, on a loopback port of
its own: the proxy then talks to it over real HTTP, exactly as it would to a
remote provider.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIFramework

from .app import App, create_app
from .config import Config
from .sim import SimUpstream

__all__ = ["Running", "serve", "serve_sim", "start_sims"]

log = logging.getLogger("tlproxy")


class Running(msgspec.Struct, frozen=True):
    """What `serve` reports once it listens."""

    addresses: list[str]
    app: App
    # The simulated upstreams started for this server, by provider name.
    sims: dict[str, SimUpstream]

    @property
    def url(self) -> str:
        return self.addresses[0]


def _release_h2_sends_on_close() -> None:
    """Mend hypercorn 0.18: a closed h2 connection must release its streams' senders.

    When an h2 connection closes, `H2Protocol.handle(Closed())` closes its
    streams but not their send buffers. An app that was sending (waiting for
    its buffer to drain) then waits until the graceful timeout cancels it. A
    request that arrives just as the drain closes idle connections meets this,
    and the server's exit waits the whole grace period. Closing the buffers
    too lets those sends return at once. Idempotent.
    """
    original = H2Protocol.handle
    if getattr(original, "tlproxy_mended", False):
        return

    async def handle(self: Any, event: Any) -> None:
        await original(self, event)
        if isinstance(event, Closed):
            for buffer in list(self.stream_buffers.values()):
                await buffer.close()

    handle.tlproxy_mended = True  # type: ignore[attr-defined]
    H2Protocol.handle = handle  # type: ignore[method-assign]


def _hypercorn_config(host: str, port: int, *, graceful_timeout: float = 30.0) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = 75.0
    # Bursts of new connections (a deploy, a retry storm) must queue, not be reset.
    config.backlog = 4096
    # Streams can be long; hypercorn must not cut a slow upstream's answer.
    config.read_timeout = None
    return config


async def serve_sim(
    sim: SimUpstream,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a simulated upstream until cancelled; reports its bound addresses."""
    config = _hypercorn_config(host, port, graceful_timeout=0.0)
    await hypercorn_serve(sim, config, task_status=task_status)  # type: ignore[arg-type]


async def start_sims(
    nursery: trio.Nursery, config: Config
) -> tuple[Config, dict[str, SimUpstream]]:
    """Start every simulated provider that has no base URL; return the config pointing at them."""
    sims: dict[str, SimUpstream] = {}
    providers = dict(config.providers)
    for name, provider in config.providers.items():
        if provider.kind == "sim" and not provider.base_url:
            sim = SimUpstream(provider.sim_models, seed=provider.sim_seed)
            addresses = await nursery.start(functools.partial(serve_sim, sim))
            providers[name] = msgspec.structs.replace(provider, base_url=f"{addresses[0]}/v1")
            sims[name] = sim
    return msgspec.structs.replace(config, providers=providers), sims


async def serve(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    bind: list[str] | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the proxy until cancelled or `shutdown_trigger` returns.

    Reports a `Running` (bound addresses such as ``http://127.0.0.1:8080``, the
    app, the simulated upstreams) once the socket listens.
    """
    _release_h2_sends_on_close()
    async with trio.open_nursery() as nursery:
        config, sims = await start_sims(nursery, config)
        app = create_app(config)
        await nursery.start(app.run)
        try:
            hconfig = _hypercorn_config(
                host or config.server.host,
                config.server.port if port is None else port,
                graceful_timeout=config.server.graceful_timeout,
            )
            if bind:
                hconfig.bind = bind
            trigger = None
            if shutdown_trigger is not None:
                wait = shutdown_trigger

                async def trigger() -> None:
                    await wait()
                    app.ready = False  # /readyz answers 503 while the drain goes on

            # hypercorn returns once the trigger fired and in-flight requests
            # drained (up to the graceful timeout); only then do the sims stop.
            async with trio.open_nursery() as front:
                # The app reads ASGI messages as plain dicts; hypercorn's
                # signature spells the same messages as TypedDicts.
                asgi_app = cast("ASGIFramework", app)
                addresses = await front.start(functools.partial(
                    hypercorn_serve, asgi_app, hconfig, shutdown_trigger=trigger))
                task_status.started(Running(addresses=addresses, app=app, sims=sims))
        finally:
            with trio.CancelScope(shield=True):
                await app.aclose()
            nursery.cancel_scope.cancel()

