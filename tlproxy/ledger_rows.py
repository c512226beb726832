"""What the ledger holds and what writes it: one row per upstream attempt, the
writer's interface, the queue's statistics.

Values and an interface only, so the accounting, the reports and the tests
read the row's shape without the ledger's machinery (`ledger.py`: the queue,
the schema and its migrations, the SQLite and PostgreSQL writers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import msgspec

from .shadow import ShadowPair

__all__ = ["LedgerError", "LedgerRow", "LedgerStatistics", "LedgerWriter"]


class LedgerError(Exception):
    """The ledger's database cannot be opened or used."""


class LedgerRow(msgspec.Struct, kw_only=True):
    """One upstream attempt: who asked, what ran, what it cost, how it ended."""

    request_id: str
    ts: float  # unix time the attempt started
    key: str | None = None  # the client key's *name*; never the key itself
    # "classifier": an embedding call the semantic task classifier made to route
    # the request (`request_id`), which no client asked for but which is billed.
    # "responses": a chat attempt made for `/v1/responses`.
    kind: Literal["chat", "responses", "embedding", "shadow", "classifier"] = "chat"
    tier: str
    model: str
    provider: str
    rule: str
    prompt_tokens: int = 0  # cached tokens included, as OpenAI counts
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    estimated: bool = False  # usage counted from characters, not reported
    ttft_ms: float | None = None  # this attempt's own; None for a JSON answer
    duration_ms: float = 0.0
    status: Literal["ok", "error", "cancelled", "cut"] = "ok"
    winner: bool = True  # the attempt whose answer the client got
    hedge: bool = False  # started by the hedging timer
    wasted: bool = False  # a loser or cancelled attempt that was billed anyway
    reference_cost_usd: float = 0.0  # the same usage priced all-premium; 0 for losers
    cache_write_tokens: int = 0  # prompt tokens written to the provider's prompt cache
    # What the first token carried (content, refusal, tool_calls, reasoning,
    # audio, finish; "answer" for a non-streamed answer); None without one.
    first_token_kind: str | None = None
    # On the winner of a streamed answer: from the request's arrival at the proxy
    # to the first byte of the answer sent to the client (what the client saw).
    client_ttft_ms: float | None = None
    # On an attempt that continued an answer whose winner failed after its
    # first token: why that one failed ("cut", "stall", "malformed",
    # "error-event"). Its cost is what the recovery cost.
    continuation: str | None = None


class LedgerStatistics(msgspec.Struct, kw_only=True):
    queued: int = 0  # rows and pairs in memory, waiting to be written
    written: int = 0
    shadow_written: int = 0
    batches: int = 0
    overflowed: int = 0  # rows that found the channel full (kept, not dropped)
    write_errors: int = 0
    lost: int = 0  # only when the database kept failing at shutdown


class LedgerWriter(Protocol):
    """Where batches go. Calls are never concurrent; each `write` is one transaction."""

    async def migrate(self) -> None: ...

    async def write(self, rows: list[LedgerRow], pairs: Sequence[ShadowPair] = ()) -> None: ...

    async def aclose(self) -> None: ...
