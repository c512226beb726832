"""Turn the bytes of one streamed chat completion, and when they arrived, into a `Sample`.

What is measured, and why this way
----------------------------------
A benchmark client sees bytes, not tokens. The honest clock is the moment a read returns, so
the recorder is fed ``(now, data)`` for every read and never reads a clock itself (sans-IO, as
h11 is): the same class runs under a real clock in the tool and under ``MockClock`` in tests.

* TTFB: the first body byte. For an SSE stream that is usually the role-only first chunk, or a
  keep-alive comment; it tells whether the server is up, not whether the model is.
* TTFT: the first event that carries output, a non-empty ``delta.content`` or ``delta.tool_calls``.
  A role-only chunk does not count: proxies and some providers send it at once, before the
  model has produced anything, and counting it would flatter them.
* ITL: the gaps between successive output events. Two events that came in one read get a gap of
  0, which is what the client saw; servers that batch tokens show it as a spread of ITLs.
* E2E: until ``[DONE]`` (or until the stream ended, if it never came).
* Output tokens come from the usage chunk (``stream_options.include_usage``), never from
  counting events: one event may carry several tokens.

The SSE parsing is deliberately minimal and self-contained, so the tool can measure any
endpoint without depending on the proxy's own decoder: events are split on a blank line (CRLF
is folded to LF), ``data:`` lines are joined, comments and other fields are ignored, and an
unterminated event at the end of the stream is dropped as the SSE specification says. An event
larger than ``max_event_bytes`` is an error rather than unbounded buffering.

Errors are kinds, not exceptions: the first one recorded wins and is kept in the `Sample`
(``connect``, ``timeout``, ``protocol``, ``http_NNN``, ``stream_cut``, ``malformed_chunk``,
``api_error``). A stream that ends without ``[DONE]`` and without another error is a
``stream_cut``, even if it looked finished, because a client cannot tell the difference.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "API_ERROR",
    "CONNECT",
    "MALFORMED",
    "PROTOCOL",
    "STREAM_CUT",
    "TIMEOUT",
    "Sample",
    "TimingRecorder",
    "http_error",
]

CONNECT = "connect"
TIMEOUT = "timeout"
PROTOCOL = "protocol"
STREAM_CUT = "stream_cut"
MALFORMED = "malformed_chunk"
API_ERROR = "api_error"

_DETAIL_LIMIT = 300


def http_error(status: int) -> str:
    """The error kind for a non-200 response: ``http_429``, ``http_500``, ..."""
    return f"http_{status}"


class Sample(msgspec.Struct, kw_only=True):
    """One request as the client saw it. Times are seconds, relative to when it was sent.

    ``ttfb``/``ttft``/``headers`` are None when the event never happened. ``lag`` is how late
    the request left compared with its scheduled time (open loop; 0 in closed loop), so the
    latency a user would have felt from the schedule is ``ttft + lag``.
    """

    start: float
    lag: float = 0.0
    headers: float | None = None
    ttfb: float | None = None
    ttft: float | None = None
    e2e: float = 0.0
    itl: list[float] = msgspec.field(default_factory=list)
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    deltas: int = 0
    done: bool = False
    error: str | None = None
    detail: str | None = None
    status: int | None = None
    http_version: str | None = None
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        """Completed with ``[DONE]`` and no error of any kind."""
        return self.error is None and self.done

    @property
    def ttft_from_schedule(self) -> float | None:
        """TTFT counted from the scheduled send time: what coordinated omission would hide."""
        return None if self.ttft is None else self.ttft + self.lag

    @property
    def decode_rate(self) -> float | None:
        """Output tokens per second after the first one, or None when it cannot be known."""
        if self.output_tokens is None or self.output_tokens < 2 or self.ttft is None:
            return None
        span = self.e2e - self.ttft
        return (self.output_tokens - 1) / span if span > 0 else None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[msgspec.Raw] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    # Raw cannot be in a union with None: absent is empty, JSON null is b"null".
    error: msgspec.Raw = msgspec.Raw()


# Decoders are stateless once built; building them once is msgspec's intended use.
_chunk_decoder = msgspec.json.Decoder(_Chunk)
_any_decoder = msgspec.json.Decoder()


class TimingRecorder:
    """Accumulates the timing of one request from ``(now, bytes)`` events.

    Call `on_response` when the status line and headers are in, `feed` for every body read,
    `fail` for a transport error or a timeout, then `finish` once. ``sent`` is the clock reading
    when the request was handed to the HTTP client; ``scheduled`` (open loop) when it should
    have been; ``origin`` the start of the measurement phase, for the sample's ``start``.
    A non-200 body is kept (truncated) as the error detail instead of being parsed.
    """

    def __init__(
        self,
        sent: float,
        *,
        scheduled: float | None = None,
        origin: float | None = None,
        max_event_bytes: int = 1 << 20,
    ) -> None:
        self._sent = sent
        self._max_event_bytes = max_event_bytes
        self._buffer = bytearray()
        self._events_seen = 0
        self._last_output: float | None = None
        self._error_body = bytearray()
        self._sample = Sample(
            start=sent - (sent if origin is None else origin),
            lag=max(0.0, sent - scheduled) if scheduled is not None else 0.0,
        )

    @property
    def done(self) -> bool:
        """``[DONE]`` has been seen."""
        return self._sample.done

    @property
    def error(self) -> str | None:
        """The first error recorded so far, if any."""
        return self._sample.error

    def on_response(self, now: float, status: int, http_version: str | None = None) -> None:
        """The response headers arrived with this status."""
        s = self._sample
        s.headers = now - self._sent
        s.status = status
        s.http_version = http_version
        if status != 200:
            self.fail(now, http_error(status))

    def feed(self, now: float, data: bytes) -> None:
        """Bytes of the response body arrived at ``now``."""
        if not data:
            return
        s = self._sample
        if s.ttfb is None:
            s.ttfb = now - self._sent
        if s.status is not None and s.status != 200:
            room = _DETAIL_LIMIT - len(self._error_body)
            self._error_body += data[: max(0, room)]
            return
        if s.done:
            return  # bytes after [DONE] are the transport's business, not the stream's
        self._buffer += data
        if b"\r" in self._buffer:
            # Folded on the whole pending buffer, so a CR and LF split across reads still meet.
            self._buffer[:] = self._buffer.replace(b"\r\n", b"\n")
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                break
            block = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._on_block(now, block)
            if s.done:
                return
        if len(self._buffer) > self._max_event_bytes:
            self._buffer.clear()
            self.fail(now, MALFORMED, f"event larger than {self._max_event_bytes} bytes")

    def fail(self, now: float, kind: str, detail: str = "") -> None:
        """Record an error; only the first one is kept, later ones are consequences."""
        s = self._sample
        if s.error is None:
            s.error = kind
            s.detail = detail[:_DETAIL_LIMIT] or None

    def finish(self, now: float) -> Sample:
        """Close the request at ``now`` and return its `Sample`."""
        s = self._sample
        if not s.done:
            s.e2e = now - self._sent
            if s.error is None:
                leftover = bytes(self._buffer).strip()
                if self._events_seen == 0 and leftover and not _looks_like_sse(leftover):
                    self.fail(now, MALFORMED, "response is not an event stream: " + _text(leftover))
                else:
                    self.fail(now, STREAM_CUT, "stream ended without [DONE]")
        if self._error_body and s.detail is None:
            s.detail = _text(bytes(self._error_body))
        return s

    def _on_block(self, now: float, block: bytes) -> None:
        data: list[bytes] = []
        event = b""
        for line in block.split(b"\n"):
            if not line or line.startswith(b":"):
                continue
            field, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if field == b"data":
                data.append(value)
            elif field == b"event":
                event = value
        if not data:
            return
        self._events_seen += 1
        self._on_data(now, b"\n".join(data), event)

    def _on_data(self, now: float, payload: bytes, event: bytes) -> None:
        s = self._sample
        if payload.strip() == b"[DONE]":
            s.done = True
            s.e2e = now - self._sent
            return
        try:
            chunk = _chunk_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            self.fail(now, MALFORMED, f"{exc}: {_text(payload)}")
            return
        if (len(chunk.error) and bytes(chunk.error) != b"null") or event == b"error":
            self.fail(now, API_ERROR, _error_message(chunk.error, payload))
            return
        if chunk.usage is not None:
            if chunk.usage.completion_tokens is not None:
                s.output_tokens = chunk.usage.completion_tokens
            if chunk.usage.prompt_tokens is not None:
                s.prompt_tokens = chunk.usage.prompt_tokens
        output = False
        for choice in chunk.choices or ():
            if s.finish_reason is None and choice.finish_reason is not None:
                s.finish_reason = choice.finish_reason
            delta = choice.delta
            if delta is not None and (delta.content or delta.tool_calls):
                output = True
        if output:
            s.deltas += 1
            if s.ttft is None:
                s.ttft = now - self._sent
            if self._last_output is not None:
                s.itl.append(now - self._last_output)
            self._last_output = now


def _error_message(raw: msgspec.Raw, payload: bytes) -> str:
    if not len(raw):
        return _text(payload)
    try:
        error = _any_decoder.decode(raw)
    except msgspec.DecodeError:
        return _text(bytes(raw))
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else _text(bytes(raw))


def _looks_like_sse(data: bytes) -> bool:
    return data.startswith((b"data:", b"event:", b"id:", b"retry:", b":"))


def _text(data: bytes) -> str:
    return data[:_DETAIL_LIMIT].decode("utf-8", "replace")
