"""Carrying one request upstream and its answer back, in OpenAI's exact shape.

The engine owns the request's lifetime: it picks the route, calls the
provider, and writes the response through the edge's `Request`. For
streams it runs the upstream stream and a disconnect listener in one nursery
(starlette's `listen_for_disconnect` pattern), so a client that goes away
cancels the upstream request at once.

Conformance repairs happen here, on every chunk, whatever the upstream:
``usage`` is present on every chunk (``null``) when the client asked for
usage and absent when it did not; the usage-only chunk the proxy asked for
for itself is dropped when the client did not ask; every choice carries
``finish_reason``. A stream that fails after the response started ends with
an OpenAI error event and no ``[DONE]``: a cut stream never looks complete.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from .config import Config, ModelConfig
from .metrics import Metrics
from .errors import UpstreamError
from .providers.base import Chunk, Provider
from .router import Plan, Router
from .sse import DONE, encode_data
from .stats import StatsBook
from .wire import ChatRequest, EmbeddingRequest

if TYPE_CHECKING:
    from .app import Request

__all__ = ["Engine", "Route", "has_token"]

log = logging.getLogger("tlproxy")
_encode = msgspec.json.Encoder().encode

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class Route(msgspec.Struct, frozen=True):
    """Where a request goes and why."""

    model: ModelConfig
    tier: str
    rule: str

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-tlproxy-tier", self.tier.encode()),
            (b"x-tlproxy-model", self.model.id.encode()),
            (b"x-tlproxy-provider", self.model.provider.encode()),
            (b"x-tlproxy-rule", self.rule.encode()),
        ]


class Engine:
    def __init__(
        self, config: Config, providers: dict[str, Provider], metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.providers = providers
        self.metrics = metrics or Metrics()
        self.stats = StatsBook()
        self.router = Router(config, self.stats)
        # Candidates tried, one after another, when one fails before answering.
        self.max_attempts = 3

    # -- chat ------------------------------------------------------------

    async def chat(self, request: Request, chat: ChatRequest, body: dict[str, Any]) -> None:
        plan = self.router.plan_chat(
            body, headers=request.text_headers(), key=request.key, now=trio.current_time())
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            await self._stream(request, body, plan, include_usage)
            return
        result: tuple[Route, dict[str, Any]] | None = None
        async with _cancelled_on_disconnect(request):
            result = await self._complete(body, plan)
        if result is None:
            return  # the client went away; the upstream call was cancelled
        route, answer = result
        request.route = route
        _repair_completion(answer)
        await request.respond(200, _encode(answer), route.headers())

    def _routes(self, plan: Plan) -> list[Route]:
        return [Route(model, plan.tier, plan.rule)
                for model in plan.candidates[: self.max_attempts]]

    async def _complete(self, body: dict[str, Any], plan: Plan) -> tuple[Route, dict[str, Any]]:
        last: UpstreamError | None = None
        for route in self._routes(plan):
            stats = self.stats[route.model.id]
            started = trio.current_time()
            try:
                answer = await self.providers[route.model.provider].chat(
                    body, model=route.model.upstream_id)
            except UpstreamError as exc:
                stats.record_failure(trio.current_time())
                self._upstream_error(route, exc)
                if not exc.retryable:
                    raise
                last = exc
                continue
            stats.record_ttft(trio.current_time() - started)
            stats.record_success()
            return route, answer
        assert last is not None
        raise last

    async def _stream(
        self, request: Request, body: dict[str, Any], plan: Plan, include_usage: bool
    ) -> None:
        async with _cancelled_on_disconnect(request), contextlib.AsyncExitStack() as stack:
            route, chunks, early = await self._open_stream(stack, body, plan)
            request.route = route
            stats = self.stats[route.model.id]
            await request.start(200, [*_SSE_HEADERS, *route.headers()])
            self.metrics.open_streams.inc()
            stack.callback(self.metrics.open_streams.dec)
            try:
                for chunk in early:
                    await self._emit(request, chunk, include_usage)
                request.ttft = time.monotonic() - request.arrived
                async for chunk in chunks:
                    await self._emit(request, chunk, include_usage)
            except UpstreamError as exc:
                stats.record_failure(trio.current_time())
                self._upstream_error(route, exc)
                request.error = "upstream_failed_mid_stream"
                log.warning("request %s: upstream failed mid-stream: %s", request.id, exc)
                await _send(request, encode_data(exc.body()), more=False)
            else:
                stats.record_success()
                await _send(request, DONE, more=False)

    async def _open_stream(
        self, stack: contextlib.AsyncExitStack, body: dict[str, Any], plan: Plan
    ) -> tuple[Route, AsyncIterator[Chunk], list[Chunk]]:
        """Open the first candidate that produces a token; fall back on early failures.

        Nothing is sent to the client here, so a candidate that fails before
        its first token is replaced without the client seeing anything.
        """
        last: UpstreamError | None = None
        for route in self._routes(plan):
            stats = self.stats[route.model.id]
            started = trio.current_time()
            attempt = contextlib.AsyncExitStack()
            try:
                chunks = await attempt.enter_async_context(
                    self.providers[route.model.provider].stream_chat(
                        body, model=route.model.upstream_id))
                early: list[Chunk] = []
                async for chunk in chunks:
                    early.append(chunk)
                    if has_token(chunk):
                        break
            except UpstreamError as exc:
                await attempt.aclose()
                stats.record_failure(trio.current_time())
                self._upstream_error(route, exc)
                if not exc.retryable:
                    raise
                last = exc
                continue
            stats.record_ttft(trio.current_time() - started)
            stack.push_async_exit(attempt)
            return route, chunks, early
        assert last is not None
        raise last

    def _upstream_error(self, route: Route, exc: UpstreamError) -> None:
        self.metrics.upstream_errors.labels(route.model.provider, str(exc.status)).inc()

    async def _emit(self, request: Request, chunk: Chunk, include_usage: bool) -> None:
        if not _repair_chunk(chunk, include_usage):
            return
        await _send(request, encode_data(_encode(chunk)))

    # -- embeddings ------------------------------------------------------

    async def embed(
        self, request: Request, embedding: EmbeddingRequest, body: dict[str, Any]
    ) -> None:
        plan = self.router.plan_embedding(embedding.model)
        route, answer = await self._embed(body, plan)
        request.route = route
        await request.respond(200, _encode(answer), route.headers())

    async def _embed(self, body: dict[str, Any], plan: Plan) -> tuple[Route, dict[str, Any]]:
        last: UpstreamError | None = None
        for route in self._routes(plan):
            try:
                answer = await self.providers[route.model.provider].embed(
                    body, model=route.model.upstream_id)
            except UpstreamError as exc:
                if not exc.retryable:
                    raise
                last = exc
                continue
            return route, answer
        assert last is not None
        raise last


def has_token(chunk: Chunk) -> bool:
    """Whether a chunk carries a first token: content, refusal or a tool-call delta.

    A role-only chunk (``{"role": "assistant", "content": ""}``) does not count,
    nor does the usage chunk. A finish without any token counts, so an empty
    answer is not waited on forever.
    """
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
            return True
        if delta.get("function_call") or choice.get("finish_reason"):
            return True
    return False


async def _send(request: Request, data: bytes, *, more: bool = True) -> None:
    await request.send({"type": "http.response.body", "body": data, "more_body": more})


@contextlib.asynccontextmanager
async def _cancelled_on_disconnect(request: Request) -> AsyncIterator[None]:
    """Run the body while listening for the client to leave; if it does, cancel the body.

    The body's own exception leaves as itself, not wrapped in a group, so the
    edge renders it like any other error.
    """
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_listen_for_disconnect, request, nursery.cancel_scope)
            yield
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], Exception):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _listen_for_disconnect(request: Request, scope: trio.CancelScope) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


def _repair_chunk(chunk: Chunk, include_usage: bool) -> bool:
    """Make one chunk exactly what OpenAI sends; False means drop it."""
    choices = chunk.get("choices")
    if include_usage:
        chunk.setdefault("usage", None)
    else:
        if not choices and chunk.get("usage") is not None:
            return False  # the usage chunk the proxy asked for, not the client
        chunk.pop("usage", None)
    for choice in choices or ():
        if "finish_reason" not in choice:
            choice["finish_reason"] = None
    return True


def _repair_completion(answer: dict[str, Any]) -> None:
    for choice in answer.get("choices") or ():
        choice.setdefault("logprobs", None)
        message = choice.get("message")
        if isinstance(message, dict):
            message.setdefault("content", None)
            message.setdefault("refusal", None)
