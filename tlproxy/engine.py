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
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from .catalog import resolve_name
from .config import Config, ModelConfig
from .errors import InvalidRequest, UpstreamError
from .providers.base import Chunk, Provider
from .sse import DONE, encode_data
from .wire import ChatRequest, EmbeddingRequest

if TYPE_CHECKING:
    from .app import Request

__all__ = ["Engine", "Route"]

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
    def __init__(self, config: Config, providers: dict[str, Provider]) -> None:
        self.config = config
        self.providers = providers

    # -- routing ---------------------------------------------------------

    def route_chat(self, request: ChatRequest) -> Route:
        resolution = resolve_name(self.config, request.model)
        if resolution.pinned is not None:
            if resolution.pinned.tier == "embedding":
                raise InvalidRequest(
                    f"The model '{request.model}' is an embedding model and cannot be used "
                    "for chat completions.", param="model", code="model_not_supported")
            return Route(resolution.pinned, resolution.pinned.tier, resolution.via)
        intent = resolution.intent or "auto"
        tier = "premium" if intent == "auto" else intent
        for model in self.config.models:
            if model.tier == tier:
                return Route(model, tier, f"intent:{intent}")
        raise UpstreamError(f"no model is configured for the {tier} tier", status=503)

    def route_embedding(self, request: EmbeddingRequest) -> Route:
        model = self.config.model(request.model)
        if model is not None and model.tier != "embedding":
            raise InvalidRequest(
                f"The model '{request.model}' is not an embedding model.",
                param="model", code="model_not_supported")
        if model is not None:
            return Route(model, "embedding", "pinned")
        for candidate in self.config.models:
            if candidate.tier == "embedding":
                return Route(candidate, "embedding", "default-embedding")
        raise UpstreamError("no embedding model is configured", status=503)

    # -- chat ------------------------------------------------------------

    async def chat(self, request: Request, chat: ChatRequest, body: dict[str, Any]) -> None:
        route = self.route_chat(chat)
        provider = self.providers[route.model.provider]
        if chat.stream:
            await self._stream(request, chat, body, route, provider)
            return
        answer = None
        async with _cancelled_on_disconnect(request):
            answer = await provider.chat(body, model=route.model.upstream_id)
        if answer is None:
            return  # the client went away; the upstream call was cancelled
        _repair_completion(answer)
        await request.respond(200, _encode(answer), route.headers())

    async def _stream(
        self,
        request: Request,
        chat: ChatRequest,
        body: dict[str, Any],
        route: Route,
        provider: Provider,
    ) -> None:
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        async with _cancelled_on_disconnect(request):
            async with provider.stream_chat(body, model=route.model.upstream_id) as chunks:
                # Errors before the first chunk are still ordinary HTTP errors.
                first = await anext(chunks, None)
                await request.start(200, [*_SSE_HEADERS, *route.headers()])
                try:
                    if first is not None:
                        await self._emit(request, first, include_usage)
                    async for chunk in chunks:
                        await self._emit(request, chunk, include_usage)
                except UpstreamError as exc:
                    log.warning("request %s: upstream failed mid-stream: %s", request.id, exc)
                    await _send(request, encode_data(exc.body()), more=False)
                else:
                    await _send(request, DONE, more=False)

    async def _emit(self, request: Request, chunk: Chunk, include_usage: bool) -> None:
        if not _repair_chunk(chunk, include_usage):
            return
        await _send(request, encode_data(_encode(chunk)))

    # -- embeddings ------------------------------------------------------

    async def embed(self, request: Request, embedding: EmbeddingRequest, body: dict[str, Any]) -> None:
        route = self.route_embedding(embedding)
        provider = self.providers[route.model.provider]
        answer = await provider.embed(body, model=route.model.upstream_id)
        await request.respond(200, _encode(answer), route.headers())


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
