"""An httpx client that records what went over the wire, for the tests that look at it."""

from __future__ import annotations

import json
from typing import Any

import httpx

__all__ = ["Exchange", "Recorder"]


class Exchange:
    """One HTTP request the client sent, and the head of the response it got."""

    def __init__(self, request: httpx.Request) -> None:
        self.method = request.method
        self.path = request.url.path
        self.body: dict[str, Any] = json.loads(request.content) if request.content else {}
        self.status: int | None = None
        self.headers: dict[str, str] = {}


class Recorder:
    """Event hooks for `httpx.Client(event_hooks=...)`: every exchange, in order."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def client(self) -> httpx.Client:
        return httpx.Client(event_hooks={"request": [self._request], "response": [self._response]})

    def async_client(self) -> httpx.AsyncClient:
        """The same, for the async clients (httpx awaits async hooks there)."""

        async def request(request: httpx.Request) -> None:
            self._request(request)

        async def response(response: httpx.Response) -> None:
            self._response(response)

        return httpx.AsyncClient(event_hooks={"request": [request], "response": [response]})

    def _request(self, request: httpx.Request) -> None:
        self.exchanges.append(Exchange(request))

    def _response(self, response: httpx.Response) -> None:
        exchange = self.exchanges[-1]
        exchange.status = response.status_code
        exchange.headers = {k.lower(): v for k, v in response.headers.items()}

    @property
    def last(self) -> Exchange:
        return self.exchanges[-1]
