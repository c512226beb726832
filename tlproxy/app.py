"""The ASGI edge: parse, authenticate, dispatch, render errors.

Handlers stay thin: they decode the request (`wire`), ask the router for a
route, hand the work to the engine (`engine`) and write what comes back.
Every failure is a `ProxyError` by the time it reaches `App.__call__`, which
is the one place errors become OpenAI envelopes; anything else is a bug of
ours, logged with its traceback and answered with a plain 500 that says
nothing about the internals.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from .accounting import Accounting, Tab
from .asgi import Receive, Send, lifespan
from .call import ChatCall, ChatFacts, EmbeddingCall
from .catalog import INTENTS
from .config import ClientKey, Config
from .config_check import key_problems, validate
from .dashboard import ROUTES as DASHBOARD_ROUTES
from .dashboard import Dashboard
from .edge import (
    CUT_MID_STREAM,
    ClientGone,
    Request,
    StreamSlots,
    render_embeddings,
    render_error,
    serve_chat,
)
from .engine import Engine
from .errors import AuthenticationFailed, InvalidRequest, NotFound, ProxyError
from .keys import KeyStore
from .ledger import Ledger
from .limits import KeyLimits, Limiter, MemoryLimiter
from .limits_file import SharedFileLimiter
from .limits_redis import RedisLimiter
from .metrics import AccessLog, Metrics
from .providers import build_providers
from .providers.base import Provider
from .readiness import Readiness, assess, shutting_down
from .responses.service import Responses
from .shadow import Shadow
from .tracecontext import UPSTREAM_HEADERS
from .tracing import Exchange, build_tracing
from .wire import ChatRequest, decode_chat_request, decode_embedding_request

__all__ = ["App", "create_app"]

log = logging.getLogger("tlproxy")
_encode = msgspec.json.Encoder().encode


# Families of OpenAI endpoints this proxy deliberately does not serve.
_UNSUPPORTED = (
    "images", "audio", "fine_tuning", "fine-tunes", "assistants", "threads", "files",
    "batches", "moderations", "completions", "vector_stores", "uploads",
    "realtime", "evals", "containers", "conversations", "videos", "chatkit",
)
_SERVED = "/v1/chat/completions, /v1/responses, /v1/embeddings and /v1/models"
# Probes and scrapes: no metrics, no access log line, no trace.
_UNTRACED = ("/metrics", "/healthz", "/readyz")


class App:
    """The proxy as an ASGI application. Build it with `create_app`."""

    def __init__(self, config: Config, providers: dict[str, Provider]) -> None:
        self.config = config
        self.providers = providers
        self.metrics = Metrics()
        self.access = AccessLog()
        self.tracing = build_tracing(config, self.metrics)
        self._keys = [
            (bytes.fromhex(k.hash.removeprefix("sha256:")), k) for k in config.keys
        ]
        self._admin = [bytes.fromhex(h.removeprefix("sha256:")) for h in config.admin_keys]
        self.key_store = KeyStore(config.keys_db) if config.keys_db else None
        limits = config.limits
        self.limiter: Limiter = (
            RedisLimiter(limits.redis_url, timeout=limits.redis_timeout,
                         on_failure=limits.on_redis_failure)
            if limits.redis_url else SharedFileLimiter(limits.shared_file)
            if limits.shared_file else MemoryLimiter())
        self._key_limits: dict[str, KeyLimits] = {}
        # Per stored key name: the record last checked and what is wrong with it.
        self._key_verdicts: dict[str, tuple[ClientKey, str | None]] = {}
        self._background: trio.Nursery | None = None
        self.ledger = Ledger.from_config(config.ledger) if config.ledger.enabled else None
        self.shadow = None
        if config.shadow is not None or any(k.shadow for k in config.keys):
            bound = config.shadow.max_concurrency if config.shadow else 8
            self.shadow = Shadow(max_concurrency=bound,
                                 record=self.ledger.record_shadow if self.ledger else _ignore)
        self.accounting = Accounting(config, self.ledger, self.shadow, metrics=self.metrics)
        self.engine = Engine(config, providers, accounting=self.accounting,
                             metrics=self.metrics, admit=self._admit, gated=self._gated)
        self.streams = StreamSlots(config.limits)
        self.responses = Responses(config, self.engine, slots=self.streams,
                                   metrics=self.metrics, check=self._check_sizes)
        self.ready = True
        self._routes: dict[tuple[str, str], Callable[[Request], Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/v1/responses"): self.responses.create,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("GET", "/v1/models"): self.list_models,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
            ("GET", "/metrics"): self.metrics_endpoint,
            ("GET", "/v1/tlproxy/usage"): self.usage,
        }
        self._dashboard = Dashboard(self)
        self._routes.update(dict.fromkeys(DASHBOARD_ROUTES, self.dashboard))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the background services (key store, limiter) until cancelled.

        Work the request path hands off (settling a key's usage) runs here too,
        so a response never waits on it.
        """
        async with trio.open_nursery() as nursery:
            if self.key_store is not None:
                await nursery.start(self.key_store.run)
            await nursery.start(self.limiter.run)
            if self.ledger is not None:
                await nursery.start(self.ledger.run)
                ledger = self.ledger
                self.metrics.watch_ledger(lambda: ledger.statistics().queued)
            if self.shadow is not None:
                await nursery.start(self.shadow.run)
            self._background = nursery
            task_status.started()
            await trio.sleep_forever()

    async def aclose(self) -> None:
        """Shut down after the server drained: shadows stop, the ledger flushes, clients close."""
        if self.shadow is not None:
            await self.shadow.aclose()
        if self.ledger is not None:
            await self.ledger.aclose()
        await self.responses.aclose()
        for provider in self.providers.values():
            await provider.aclose()
        await self.limiter.aclose()
        if self.tracing is not None:
            await self.tracing.aclose()

    def _limits(self, key: ClientKey) -> KeyLimits:
        limits = self._key_limits.get(key.name)
        if limits is None:
            limits = self._key_limits[key.name] = KeyLimits.from_client_key(key)
        return limits

    def _gated(self, call: ChatCall) -> bool:
        """Whether the request's key has limits for `_admit` to check."""
        return call.key is not None and not self._limits(call.key).unlimited

    async def _admit(self, call: ChatCall, tab: Tab) -> None:
        """A key's rate limits and budget: one look-up, awaited inside the decision."""
        key = call.key
        if key is None:
            return
        limits = self._limits(key)
        if limits.unlimited:
            return
        # The prompt and the output the client capped: a request without a cap
        # reserves its prompt, and settles at what it used (see `call.py`).
        estimate = call.facts.prompt_tokens + call.facts.requested_output
        verdict = await self.limiter.admit(
            key.name, limits, estimated_tokens=estimate, now=time.time())
        tab.limit_headers = verdict.headers
        if not verdict.allowed:
            self.metrics.rate_limited.labels(verdict.reason or "").inc()
            raise verdict.error()
        tab.reserved = (limits, estimate)

    def _settle(self, request: Request) -> None:
        tab = request.tab
        if tab is None or tab.reserved is None or request.key is None or (
                self._background is None):
            return
        limits, estimate = tab.reserved
        tokens = tab.usage_tokens if tab.usage_tokens is not None else estimate
        cost = tab.cost_usd or 0.0
        self._background.start_soon(functools.partial(
            self.limiter.settle, request.key.name, limits, tokens=tokens,
            estimated_tokens=estimate, cost_usd=cost, now=time.time()))

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive, send)
        context = None
        if self.tracing is not None and request.path not in _UNTRACED:
            request.trace = self.tracing.begin(
                request.arrived, _header(request, "traceparent"), _header(request, "tracestate"))
            # Upstream calls outside a race attempt (embeddings, the classifier)
            # are children of the request span.
            context = UPSTREAM_HEADERS.set(
                ((b"traceparent", request.trace.traceparent().encode()),))
        try:
            await self._dispatch(request)
        except ClientGone:
            request.error = "client_gone"
            request.client_gone = True
        except ProxyError as exc:
            request.error = exc.code or exc.type
            await render_error(request, exc)
        except Exception:
            log.exception("request %s failed", request.id)
            request.error = "internal"
            await render_error(request, None)
        finally:
            if request.call is not None and request.tab is not None:
                # What the client saw is known: the winner's ledger row, a shadow copy.
                self.engine.finish(request.call, request.tab, request.route,
                                   client_ttft=request.ttft, client_gone=request.client_gone,
                                   complete=request.answered)
            self._settle(request)
            self._observe(request)
            if context is not None:
                UPSTREAM_HEADERS.reset(context)
                self._trace(request)

    def _trace(self, request: Request) -> None:
        """Hand the request's spans to the exporter; a failure here is logged, never raised."""
        assert self.tracing is not None and request.trace is not None
        path = request.path.rstrip("/") or "/"
        template = path if (request.method, path) in self._routes else (
            "/v1/models/{model}" if path.startswith("/v1/models/") else None)
        call = request.call
        requested = (call.facts.requested if isinstance(call, ChatCall)
                     else call.embedding.model if isinstance(call, EmbeddingCall) else None)
        try:
            self.tracing.end(request.trace, Exchange(
                method=request.method, path=request.path, route_template=template,
                status=request.status or 499, ended=trio.current_time(),
                scheme=str(request.scope.get("scheme", "http")),
                http_version=str(request.scope.get("http_version", "1.1")),
                request_id=request.id, key=request.key.name if request.key else None,
                requested_model=requested, route=request.route, ttft=request.ttft,
                cost_usd=request.tab.cost_usd if request.tab is not None else None,
                outcome=_outcome(request), error=request.error))
        except Exception:
            log.exception("request %s: its trace could not be recorded", request.id)

    def _observe(self, request: Request) -> None:
        if request.path in _UNTRACED:
            return
        route = request.route
        endpoint = request.path.removeprefix("/v1/")
        if endpoint.startswith("responses/"):
            # One label for every stored response, not one per id.
            endpoint = "responses/{id}" + ("/input_items" if endpoint.endswith(
                "/input_items") else "")
        tier = route.tier if route else ""
        duration = trio.current_time() - request.arrived
        metrics = self.metrics
        metrics.child(
            metrics.requests, endpoint, tier, route.model.id if route else "",
            route.model.provider if route else "", route.rule if route else "",
            str(request.status or 499),
        ).inc()
        metrics.child(metrics.duration, endpoint, tier).observe(duration)
        if request.ttft is not None and route is not None:
            metrics.child(metrics.ttft, tier, route.model.id).observe(request.ttft)
        self.access.emit({
            "request_id": request.id,
            "method": request.method,
            "path": request.path,
            "status": request.status or 499,
            "key": request.key.name if request.key else None,
            "tier": tier or None,
            "model": route.model.id if route else None,
            "provider": route.model.provider if route else None,
            "rule": route.rule if route else None,
            "ttft_ms": round(request.ttft * 1000, 1) if request.ttft is not None else None,
            "duration_ms": round(duration * 1000, 1),
            "outcome": _outcome(request),
            "error": request.error,
            # The request's trace, when tracing is on: a log line leads to its trace.
            "trace_id": f"{request.trace.trace_id:032x}" if request.trace is not None else None,
        })

    async def _dispatch(self, request: Request) -> None:
        path = request.path.rstrip("/") or "/"
        handler = self._routes.get((request.method, path))
        if handler is not None:
            if path.startswith("/v1/tlproxy/"):
                self._authenticate_admin(request)
            elif path.startswith("/v1/"):
                self._authenticate(request)
            await handler(request)
            return
        if path.startswith("/v1/responses/"):
            self._authenticate(request)
            await self.responses.resource(request, path.removeprefix("/v1/responses/"))
            return
        if request.method == "GET" and path.startswith("/v1/models/"):
            self._authenticate(request)
            await self.retrieve_model(request, path.removeprefix("/v1/models/"))
            return
        if any(p == path for (_, p) in self._routes):
            raise ProxyError(
                f"Method {request.method} is not allowed on {path}.",
                status=405, type="invalid_request_error", code="method_not_allowed",
            )
        family = path.removeprefix("/v1/").split("/", 1)[0]
        if path.startswith("/v1/") and family in _UNSUPPORTED:
            raise NotFound(
                f"The endpoint {request.method} {path} is not supported by this proxy. "
                f"It serves {_SERVED}.",
                code="unsupported_endpoint",
            )
        raise NotFound(f"Invalid URL ({request.method} {path}). This proxy serves {_SERVED}.",
                       code="unknown_url")

    def _authenticate_admin(self, request: Request) -> None:
        header = request.headers.get("authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        digest = hashlib.sha256(token.strip().encode()).digest()
        matched = False
        for known in self._admin:
            matched |= hmac.compare_digest(digest, known)
        if scheme.lower() != "bearer" or not matched:
            raise ProxyError("This endpoint needs an admin key (see admin_keys in the config).",
                             status=403 if self._admin else 404,
                             type="invalid_request_error", code="admin_key_required")

    def _authenticate(self, request: Request) -> None:
        if not self._keys and self.key_store is None:
            return
        header = request.headers.get("authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        token = token.strip()
        if self.key_store is not None and token.startswith("tlp-"):
            stored = self.key_store.check(token)
            if stored is not None:
                self._refuse_unusable(stored)
                request.key = stored
                return
        digest = hashlib.sha256(token.encode()).digest()
        # Compare against every configured key, always: the time taken must not
        # depend on which key (if any) matched.
        matched: ClientKey | None = None
        for known, key in self._keys:
            if hmac.compare_digest(digest, known):
                matched = key
        if matched is None:
            raise AuthenticationFailed()
        request.key = matched

    def _refuse_unusable(self, key: ClientKey) -> None:
        """Refuse a stored key the config no longer fits (its policy removed, say).

        Config keys are checked when the config loads; a stored key was checked
        against the config of the day it was made. Whole and at once: a 403,
        which no SDK retries, naming the key's problem, never a 500 half-way
        through a request. Logged once per key record, not per request.
        """
        known = self._key_verdicts.get(key.name)
        if known is None or known[0] is not key:
            problems = key_problems(key, self.config)
            reason = "; ".join(f"{p.path}: {p.message}" for p in problems) or None
            if reason is not None:
                log.error("client key %r cannot be used under this config: %s (fix the "
                          "config, or revoke the key and create it again)", key.name, reason)
            known = self._key_verdicts[key.name] = (key, reason)
        if known[1] is not None:
            raise ProxyError(
                f"The API key '{key.name}' cannot be used with this server's configuration "
                f"({known[1]}). Ask the proxy's administrator to fix the key or the config.",
                status=403, type="invalid_request_error", code="key_misconfigured")

    async def chat_completions(self, request: Request) -> None:
        body = await request.body(self.config.server.max_body_bytes,
                                  self.config.server.body_timeout)
        chat, raw = decode_chat_request(body)
        self._check_sizes(chat)
        headers = request.text_headers()
        request.call = call = ChatCall.of(
            chat, id=request.id, arrived=request.arrived, key=request.key, headers=headers,
            body=raw, facts=ChatFacts.of(raw, headers))
        del body, chat  # the request's bytes and typed copy: not held while it streams
        request.tab = tab = Tab(request.id, request.key, request.arrived)
        tab.trace = request.trace
        await serve_chat(request, self.engine, call, tab, slots=self.streams,
                         metrics=self.metrics)

    def _check_sizes(self, chat: ChatRequest) -> None:
        limits = self.config.limits
        if len(chat.messages) > limits.max_messages:
            raise InvalidRequest(
                f"Invalid 'messages': array too long. Expected an array with maximum length "
                f"{limits.max_messages}, but got an array with length {len(chat.messages)} "
                "instead.", param="messages", code="array_above_max_length")
        tools = len(chat.tools or ()) + len(chat.functions or ())
        if tools > limits.max_tools:
            raise InvalidRequest(
                f"Invalid 'tools': array too long. Expected an array with maximum length "
                f"{limits.max_tools}, but got an array with length {tools} instead.",
                param="tools", code="array_above_max_length")

    async def embeddings(self, request: Request) -> None:
        body = await request.body(self.config.server.max_body_bytes,
                                  self.config.server.body_timeout)
        embedding, raw = decode_embedding_request(body)
        request.call = call = EmbeddingCall(id=request.id, arrived=request.arrived,
                                            key=request.key, embedding=embedding, body=raw)
        request.tab = tab = Tab(request.id, request.key, request.arrived)
        tab.trace = request.trace
        await render_embeddings(request, await self.engine.embed(call, tab))

    def _model_objects(self) -> list[dict[str, Any]]:
        created = 1_767_225_600  # 2026-01-01: a stable value for clients that cache
        objects = [
            {"id": intent, "object": "model", "created": created, "owned_by": "tlproxy"}
            for intent in INTENTS
        ]
        objects.extend(
            {"id": m.id, "object": "model", "created": created, "owned_by": m.provider}
            for m in self.config.models
        )
        return objects

    async def list_models(self, request: Request) -> None:
        body = _encode({"object": "list", "data": self._model_objects()})
        await request.respond(200, body)

    async def retrieve_model(self, request: Request, model_id: str) -> None:
        for model in self._model_objects():
            if model["id"] == model_id:
                await request.respond(200, _encode(model))
                return
        raise NotFound(
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param="model", code="model_not_found",
        )

    async def metrics_endpoint(self, request: Request) -> None:
        await request.start(200, [(b"content-type", CONTENT_TYPE_LATEST.encode())])
        await request.send({"type": "http.response.body", "body": self.metrics.render()})

    async def usage(self, request: Request) -> None:
        """``GET /v1/tlproxy/usage?since=7d&by=model``: the report, as JSON."""
        from urllib.parse import parse_qsl

        from .report import LedgerReadError, usage_json

        if self.ledger is None:
            raise NotFound("The ledger is disabled ([ledger] enabled = false).",
                           code="ledger_disabled")
        query = dict(parse_qsl(self.scope_query(request)))
        filters = {k: v for k, v in query.items() if k in ("since", "until", "by")}
        # Rows still queued belong in the answer: give the writer a moment.
        with trio.move_on_after(2.0):
            while self.ledger.statistics().queued:  # noqa: ASYNC110 - the writer's state
                await trio.sleep(0.02)
        source = self.config.ledger.postgres_url or self.config.ledger.path
        try:
            body = await trio.to_thread.run_sync(
                functools.partial(usage_json, source, **filters))
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="invalid_value") from None
        except FileNotFoundError:
            body = {"object": "tlproxy.usage", "groups": [], "total": None}
        except LedgerReadError as exc:
            # The message never holds the database password.
            raise ProxyError(f"The ledger cannot be read: {exc}", status=503,
                             code="ledger_unavailable") from None
        await request.respond(200, _encode(body))

    async def dashboard(self, request: Request) -> None:
        """The dashboard's JSON endpoints (`tlproxy.dashboard`)."""
        await self._dashboard.handle(request)

    @staticmethod
    def scope_query(request: Request) -> str:
        return bytes(request.scope.get("query_string", b"")).decode("latin-1")

    async def healthz(self, request: Request) -> None:
        await request.respond(200, b'{"status":"ok"}')

    async def readyz(self, request: Request) -> None:
        readiness = await self.readiness() if self.ready else shutting_down()
        await request.respond(200 if readiness.ready else 503, _encode(readiness.body()))

    async def readiness(self) -> Readiness:
        """Ping every provider at once and judge whether every tier can answer."""
        reachable: dict[str, bool] = {}

        async def ping(name: str, provider: Provider) -> None:
            reachable[name] = await provider.ping()

        async with trio.open_nursery() as nursery:
            for name, provider in self.providers.items():
                nursery.start_soon(ping, name, provider)
        now = trio.current_time()
        return assess(self.config.models, reachable,
                      lambda model: self.engine.stats[model].available(now))


def _outcome(request: Request) -> str:
    """How the request ended, in the ledger's words: ok, error, cut or cancelled."""
    if request.client_gone:
        return "cancelled"  # whatever status was already sent
    if request.error is None:
        return "ok"
    return "cut" if request.error == CUT_MID_STREAM else "error"


def _header(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    return value.decode("latin-1") if value is not None else None


def _ignore(_pair: object) -> None:
    return None


def create_app(config: Config, *, providers: dict[str, Provider] | None = None) -> App:
    """Build the application around one state object; no I/O happens here.

    Upstream clients are created now and opened lazily on first use; close
    them with `App.aclose` at shutdown. Tests may pass their own `providers`.
    Raises `ConfigError` for a config the proxy would refuse (the checks of
    `tlproxy config check`), so no app is ever built on one.
    """
    validate(config)
    return App(config, build_providers(config) if providers is None else providers)
