"""The ``/v1/responses`` endpoints: create, retrieve, delete, list input items.

`Responses` is built once by the app with the collaborators chat uses (the
engine, the stream slots, the metrics) and the size checks of chat
requests; its handlers stay thin: decode and translate (`request.py`),
build the same `ChatCall` a chat request becomes, so the policy reads the
same signals and the engine races, limits and accounts it the same way, and
render the reply (`render.py`). Stored responses (`store.py`) are scoped to
the client key: another key's id is answered as an unknown one, with a 404.

Not served, each answered in OpenAI's envelope: cancelling (there is no
background mode), the token-counting and compaction endpoints (404).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from ..accounting import Tab
from ..call import ChatCall, ChatFacts
from ..config import Config
from ..edge import Request, StreamSlots
from ..engine import Engine
from ..errors import InvalidRequest, NotFound, ProxyError
from ..metrics import Metrics
from ..wire import ChatRequest
from .render import serve_responses
from .request import Turn, answer_messages, decode_responses_request, translate
from .store import ResponseStore, StoredResponse

__all__ = ["Responses"]

log = logging.getLogger("tlproxy")
_encode = msgspec.json.Encoder().encode


class Responses:
    """The Responses API's handlers, over the app's engine and (maybe) a response store."""

    def __init__(self, config: Config, engine: Engine, *, slots: StreamSlots, metrics: Metrics,
                 check: Callable[[ChatRequest], None]) -> None:
        self.config = config
        self.engine = engine
        self.slots = slots
        self.metrics = metrics
        self.check = check
        keeps = config.responses.store and config.ledger.enabled
        self.store = ResponseStore(
            config.ledger, retention=config.responses.retention_days * 86_400) if keeps else None

    async def aclose(self) -> None:
        if self.store is not None:
            await self.store.aclose()

    async def create(self, request: Request) -> None:
        """``POST /v1/responses``."""
        server = self.config.server
        body = await request.body(server.max_body_bytes, server.body_timeout)
        wanted, _ = decode_responses_request(body)
        owner = _owner(request)
        previous = None
        if wanted.previous_response_id:
            previous = (await self._stored(owner, wanted.previous_response_id,
                                           param="previous_response_id")).history
        turn = translate(wanted, previous=previous)
        self.check(turn.typed)
        headers = request.text_headers()
        facts = ChatFacts.of(turn.signals_body, headers)
        if wanted.max_output_tokens is not None:
            facts = msgspec.structs.replace(facts, output_param="max_output_tokens")
        request.call = call = ChatCall.of(
            turn.typed, id=request.id, arrived=request.arrived, key=request.key,
            headers=headers, body=turn.chat, facts=facts)
        request.tab = tab = Tab(request.id, request.key, request.arrived)
        tab.kind = "responses"
        tab.trace = request.trace
        keep = None
        if self.store is not None and wanted.store is not False:
            keep = functools.partial(self._keep, owner, turn)
        await serve_responses(request, self.engine, call, tab, turn, slots=self.slots,
                              metrics=self.metrics, keep=keep)

    async def resource(self, request: Request, rest: str) -> None:
        """``/v1/responses/{id}`` (GET, DELETE) and ``/v1/responses/{id}/input_items`` (GET)."""
        response_id, _, sub = rest.partition("/")
        owner = _owner(request)
        if response_id in _UNSERVED and not sub:
            raise NotFound(f"The endpoint {request.method} {request.path} is not supported by "
                           "this proxy.", code="unsupported_endpoint")
        if sub == "" and request.method == "GET":
            stored = await self._stored(owner, response_id)
            await request.respond(200, _encode(stored.response))
        elif sub == "" and request.method == "DELETE":
            if self.store is None or not await self.store.delete(
                    owner, response_id, now=time.time()):
                raise _not_found(response_id)
            await request.respond(200, _encode(
                {"id": response_id, "object": "response", "deleted": True}))
        elif sub == "input_items" and request.method == "GET":
            stored = await self._stored(owner, response_id)
            await request.respond(200, _encode(_page(stored.input_items, request)))
        elif sub == "cancel":
            raise InvalidRequest(
                "Only background responses can be cancelled, and this proxy does not run "
                "responses in the background.", code="unsupported_endpoint")
        elif sub in ("", "input_items"):
            raise ProxyError(f"Method {request.method} is not allowed on {request.path}.",
                             status=405, type="invalid_request_error",
                             code="method_not_allowed")
        else:
            raise NotFound(f"The endpoint {request.method} {request.path} is not supported by "
                           "this proxy.", code="unsupported_endpoint")

    async def _stored(self, owner: str, response_id: str, *,
                      param: str | None = None) -> StoredResponse:
        stored = None
        if self.store is not None:
            stored = await self.store.get(owner, response_id, now=time.time())
        if stored is not None:
            return stored
        if param is None:
            raise _not_found(response_id)
        why = "" if self.store is not None else (
            " (this proxy keeps no responses: its ledger or [responses] store is off)")
        raise InvalidRequest(f"Previous response with id '{response_id}' not found.{why}",
                             param=param, code="previous_response_not_found")

    async def _keep(self, owner: str, turn: Turn, response: dict[str, Any]) -> None:
        assert self.store is not None
        history = [*turn.history, *answer_messages(response)]
        try:
            await self.store.save(owner, StoredResponse(response, turn.input_items, history),
                                  now=time.time())
        except ProxyError as exc:
            # The answer itself is good: it is sent, and the failure logged.
            log.error("response %s was not stored: %s", response["id"], exc.message)


# OpenAI's endpoints beside the responses themselves: counting tokens, compaction.
_UNSERVED = ("input_tokens", "compact")


def _owner(request: Request) -> str:
    """Whose responses these are: the client key's name ("" when the proxy has no keys)."""
    return request.key.name if request.key is not None else ""


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id",
                    code="response_not_found")


def _page(items: list[dict[str, Any]], request: Request) -> dict[str, Any]:
    """One page of input items: ``order`` (default desc), ``limit`` (1-100, 20), ``after``."""
    query = dict(parse_qsl(bytes(request.scope.get("query_string", b"")).decode("latin-1")))
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"Invalid 'order': expected 'asc' or 'desc', but got {order!r}.",
                             param="order", code="invalid_value")
    limit_text = query.get("limit", "20")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
        raise InvalidRequest(
            f"Invalid 'limit': expected an integer between 1 and 100, but got {limit_text!r}.",
            param="limit", code="invalid_value")
    ordered = items if order == "asc" else items[::-1]
    after = query.get("after")
    if after is not None:
        ids = [item["id"] for item in ordered]
        ordered = ordered[ids.index(after) + 1:] if after in ids else []
    page = ordered[:int(limit_text)]
    return {"object": "list", "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(ordered) > len(page)}
