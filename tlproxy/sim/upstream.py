"""The simulated upstream as an ASGI app: read the request, pick its protocol by path.

The only module of the package that knows every protocol: each protocol
module builds on `tlproxy.sim.core` and none imports another, so the arrows
point one way (this module -> protocols -> core -> plan).
"""

from __future__ import annotations

from typing import Any

from ..asgi import lifespan, read_body
from . import anthropic, gemini, openai
from .core import SimRequest, Simulator

__all__ = ["SimUpstream"]


class SimUpstream(Simulator):
    """An ASGI app that answers like OpenAI's, Anthropic's and Gemini's APIs, with latency.

    The protocol is chosen by path: ``.../v1/messages`` (and ``.../models``
    with an ``anthropic-version`` header) speak Anthropic
    (`tlproxy.sim.anthropic`), ``.../models/{model}:{method}`` Gemini
    (`tlproxy.sim.gemini`), anything else OpenAI (`tlproxy.sim.openai`:
    ``.../chat/completions``, ``.../embeddings``, ``.../models``). With an
    `api_key`, requests must present it the way their protocol does, or get
    that protocol's authentication error. The options are `Simulator`'s.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.stats.requests += 1
        self.stats.last_path = path
        self.stats.last_query = scope.get("query_string", b"").decode("latin-1")
        self.stats.last_headers = headers
        request = SimRequest(path=path, query=self.stats.last_query, headers=headers, raw=body,
                             receive=receive, send=send)
        if anthropic.handles(path, headers):
            await anthropic.serve(self, request)
        elif gemini.handles(path, headers):
            await gemini.serve(self, request)
        else:
            await openai.serve(self, request)
