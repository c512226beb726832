"""The dashboard: its page at ``/ui`` and its JSON endpoints under ``/v1/tlproxy/``.

Each answers a question of a team deciding on a routing policy, from the
ledger (`ledger.py`) and the running app's live statistics, for admin keys
only (the edge checks them for every ``/v1/tlproxy/`` path). The page at
``/ui`` reads them; so can anyone with an admin key and curl.

The questions asked of the ledger (`dashboard_queries`: the report's sums by
time bucket, TTFT percentiles, routing hits, shadow pairs) do blocking I/O
on one read-only connection (one snapshot); `Dashboard` runs them in a
worker thread. What is never in an answer: a client key, a prompt or an
answer outside the shadow pairs that shadow mode recorded on purpose, a
database password.
"""

from __future__ import annotations

import functools
import importlib.resources
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl

import msgspec
import trio

from .dashboard_queries import (
    BY,
    EXACT_TTFTS,
    QUANTILES,
    STEPS,
    Window,
    parse_bound,
    race,
    recent,
    routing,
    shadow_pairs,
    spend,
    spend_csv,
)
from .errors import InvalidRequest, NotFound, ProxyError
from .explain import describe_plan
from .ledger_read import LedgerReadError
from .router import Router
from .stats import StatsBook
from .wire import decode_chat_request

if TYPE_CHECKING:
    from .config import Config
    from .edge import Request
    from .engine import Engine
    from .ledger import Ledger
    from .metrics import Metrics
    from .shadow import Shadow


class ProxyState(Protocol):
    """What the dashboard reads of the running proxy (`tlproxy.app.App` is one)."""

    config: Config
    engine: Engine
    ledger: Ledger | None
    metrics: Metrics
    shadow: Shadow | None
    ready: bool

__all__ = [
    "BY",
    "EXACT_TTFTS",
    "QUANTILES",
    "ROUTES",
    "STEPS",
    "UI_FILES",
    "Dashboard",
    "Window",
    "race",
    "recent",
    "routing",
    "shadow_pairs",
    "spend",
    "spend_csv",
]

_encode = msgspec.json.Encoder().encode

_MAX_LIMIT = 500


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# -- the endpoints ---------------------------------------------------------------------------

# The page's files (tlproxy/ui, package data): path -> (file, content type). Built by hand,
# vendored, nothing to build on the user's machine and nothing fetched from elsewhere.
UI_FILES = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
    "/ui/vendor/uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "/ui/vendor/uPlot.min.css": ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
    "/ui/vendor/LICENSE": ("vendor/LICENSE", "text/plain; charset=utf-8"),
}
# The page runs only its own scripts and talks only to this proxy.
_UI_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; "
     b"img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; "
     b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]

ROUTES = (
    *(("GET", path) for path in UI_FILES),
    ("GET", "/v1/tlproxy/spend"),
    ("GET", "/v1/tlproxy/routing"),
    ("GET", "/v1/tlproxy/race"),
    ("GET", "/v1/tlproxy/requests"),
    ("GET", "/v1/tlproxy/shadow"),
    ("GET", "/v1/tlproxy/live"),
    ("POST", "/v1/tlproxy/explain"),
)


def _query(request: Request, allowed: Sequence[str]) -> dict[str, str]:
    query = dict(parse_qsl(bytes(request.scope.get("query_string", b"")).decode("latin-1")))
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise InvalidRequest(f"Unknown query parameter(s): {', '.join(unknown)}. "
                             f"This endpoint takes: {', '.join(allowed)}.",
                             param=unknown[0], code="invalid_value")
    return query


def _limit(query: dict[str, str], default: int) -> int:
    text = query.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= _MAX_LIMIT:
        raise InvalidRequest(f"limit must be a whole number from 1 to {_MAX_LIMIT}, "
                             f"not {text!r}.", param="limit", code="invalid_value")
    return int(text)


class Dashboard:
    """The endpoints of `ROUTES`, over the app's ledger, config and live statistics."""

    def __init__(self, app: ProxyState) -> None:
        self._app = app
        self._files: dict[str, bytes] = {}  # the page's files, read on first use

    async def handle(self, request: Request) -> None:
        path = request.path.rstrip("/") or "/"
        if path in UI_FILES:
            await self._ui(request, path)
            return
        handler: Callable[[Request], Any] = getattr(self, f"_{path.removeprefix('/v1/tlproxy/')}")
        await handler(request)

    async def _ui(self, request: Request, path: str) -> None:
        """A file of the page; it holds no data, so it needs no key (its requests do)."""
        name, content_type = UI_FILES[path]
        body = self._files.get(name)
        if body is None:
            resource = importlib.resources.files("tlproxy") / "ui" / name
            body = self._files[name] = await trio.to_thread.run_sync(resource.read_bytes)
        await request.start(200, [(b"content-type", content_type.encode()), *_UI_HEADERS])
        await request.send({"type": "http.response.body", "body": body})

    # -- reading the ledger --------------------------------------------------------------

    async def _read(self, fn: Callable[..., Any], **options: Any) -> Any:
        app = self._app
        if app.ledger is None:
            raise NotFound("The ledger is disabled ([ledger] enabled = false).",
                           code="ledger_disabled")
        # Rows still queued belong in the answer: give the writer a moment.
        with trio.move_on_after(2.0):
            while app.ledger.statistics().queued:  # noqa: ASYNC110 - the writer's state
                await trio.sleep(0.02)
        source = app.config.ledger.postgres_url or app.config.ledger.path
        try:
            return await trio.to_thread.run_sync(functools.partial(fn, source, **options))
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="invalid_value") from None
        except (FileNotFoundError, LedgerReadError) as exc:
            # Neither message holds the database password.
            raise ProxyError(f"The ledger cannot be read: {exc}", status=503,
                             code="ledger_unavailable") from None

    async def _windowed(self, request: Request, fn: Callable[..., Any],
                        allowed: Sequence[str], **options: Any) -> Any:
        """`fn` over the window of ``since`` and ``until``, with the other parameters."""
        query = _query(request, ("since", "until", *allowed))
        try:
            window = Window.parse(query.pop("since", None), query.pop("until", None))
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="invalid_value") from None
        if "limit" in allowed:
            query["limit"] = _limit(query, 20)  # type: ignore[assignment]
        query.pop("format", None)
        return await self._read(fn, window=window, **options, **query)

    async def _spend(self, request: Request) -> None:
        allowed = ("step", "by", "format")
        fmt = _query(request, ("since", "until", *allowed)).get("format", "json")
        if fmt not in ("json", "csv"):
            raise InvalidRequest(f"format must be json or csv, not {fmt!r}.", param="format",
                                 code="invalid_value")
        if fmt == "json":
            await request.respond(200, _encode(await self._windowed(request, spend, allowed)))
            return
        text = await self._windowed(request, spend_csv, allowed)
        await request.start(200, [(b"content-type", b"text/csv; charset=utf-8"),
                                  (b"content-disposition",
                                   b'attachment; filename="tlproxy-spend.csv"')])
        await request.send({"type": "http.response.body", "body": text.encode()})

    async def _routing(self, request: Request) -> None:
        config = self._app.config
        policies = [("default", config.policy), *config.policies.items()]
        body = await self._windowed(request, routing, ("step",), policies=policies)
        await request.respond(200, _encode(body))

    async def _race(self, request: Request) -> None:
        await request.respond(200, _encode(await self._windowed(request, race, ("step",))))

    async def _shadow(self, request: Request) -> None:
        body = await self._windowed(request, shadow_pairs, ("rule", "limit"))
        await request.respond(200, _encode(body))

    async def _requests(self, request: Request) -> None:
        query = _query(request, ("limit", "after"))
        try:
            after = parse_bound(query["after"], time.time()) if "after" in query else None
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="after", code="invalid_value") from None
        body = await self._read(recent, limit=_limit(query, 50), after=after)
        await request.respond(200, _encode(body))

    # -- the running app -----------------------------------------------------------------

    async def _live(self, request: Request) -> None:
        _query(request, ())
        await request.respond(200, _encode(self.live()))

    def live(self) -> dict[str, Any]:
        """Circuit breakers, live TTFT and error rates, open streams, the ledger's queue."""
        app = self._app
        now = trio.current_time()
        known = dict(app.engine.stats.items())
        models = []
        for model in app.config.models:
            stats = known.get(model.id)
            p50 = stats.quantile(0.5) if stats else None
            models.append({
                "model": model.id, "tier": model.tier, "provider": model.provider,
                "breaker": stats.state(now) if stats else "closed",
                "ttft_ewma_ms": _round(stats.ttft_ewma * 1000) if stats and
                stats.ttft_ewma is not None else None,
                "ttft_p50_ms": _round(p50 * 1000) if p50 is not None else None,
                "error_rate": round(stats.error_rate, 4) if stats else 0.0,
                "attempts": stats.attempts if stats else 0,
                "failures": stats.failures if stats else 0,
            })
        registry = app.metrics.registry
        return {
            "object": "tlproxy.live",
            "ready": app.ready,
            "open_streams": int(registry.get_sample_value("tlproxy_open_streams") or 0),
            "models": models,
            "ledger": msgspec.to_builtins(app.ledger.statistics()) if app.ledger else None,
            "shadow": msgspec.to_builtins(app.shadow.statistics()) if app.shadow else None,
        }

    async def _explain(self, request: Request) -> None:
        """What `tlproxy route --explain` prints for the posted body; nothing is called."""
        _query(request, ())
        config = self._app.config
        body = await request.body(config.server.max_body_bytes, config.server.body_timeout)
        _, raw = decode_chat_request(body)
        try:
            plan = Router(config, StatsBook()).plan_chat(raw, headers={}, key=None)
        except ProxyError as exc:
            refused = msgspec.json.decode(exc.body())
            answer = {"object": "tlproxy.explain", "refused": refused,
                      "text": f"The request would be refused: {refused['error']['message']}"}
        else:
            answer = {"object": "tlproxy.explain", "tier": plan.tier, "rule": plan.rule,
                      "text": describe_plan(plan)}
        await request.respond(200, _encode(answer))
