"""Server-Sent Events, as bytes in and events out.

This is a sans-IO codec in the style of h11: it never touches a socket, a clock
or an event loop. `SSEDecoder.feed` takes whatever bytes the transport happened
to deliver and returns the events they complete; `SSEDecoder.close` is called at
end of input. The proxy uses it to read upstream streams (OpenAI, Anthropic,
Gemini's ``alt=sse``), and `encode_data` / `encode_event` / `DONE` to write its
own stream to clients.

The guarantee: the events returned depend only on the concatenation of the fed
bytes, never on how they were split, including a CRLF cut between its CR and
its LF, or a UTF-8 character cut in half. Memory is bounded: the bytes that one
event occupies (every line since the last blank line, comments included, plus
the unterminated tail; line endings not counted) may not exceed
``max_event_size``, or `SSEProtocolError` is raised; whether it is raised does
not depend on the split either.

Parsing follows the WHATWG HTML spec, "Server-sent events", section
"Interpreting an event stream":

* One leading UTF-8 byte order mark at the start of the stream is dropped.
* Lines end in CRLF, LF or a lone CR. Bytes are decoded as UTF-8, with
  invalid sequences replaced by U+FFFD.
* A line starting with ``:`` is a comment and is ignored (servers use these as
  keep-alives).
* Otherwise the field name runs up to the first ``:`` and the value is the
  rest, with one leading space stripped if present. A line with no colon is a
  field whose value is empty. Unknown field names are ignored.
* ``data`` appends a line to the data buffer; lines are joined with ``\\n``.
  ``event`` sets the event type. ``id`` sets the last event ID, unless the
  value contains NUL, and that ID sticks to every later event until another
  ``id`` line changes it. ``retry`` is honoured only if it is all ASCII digits.
* A blank line dispatches the event, but only if at least one ``data`` line was
  seen; either way the data and event type are then reset. At end of input an
  event without its blank line is discarded, and `SSEDecoder.has_partial`
  tells a caller that the stream was cut.

What `ServerSentEvent` leaves to the consumer: ``event`` is None when the server
named no type (the spec calls that "message"), and ``id`` is None until the
stream has sent an ``id`` line (the spec's empty string, which an explicit empty
``id:`` line also produces).
"""

from __future__ import annotations

import msgspec

__all__ = [
    "DONE",
    "SSEDecoder",
    "SSEProtocolError",
    "ServerSentEvent",
    "encode_data",
    "encode_event",
]

_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_LF = 0x0A

DONE = b"data: [DONE]\n\n"


class SSEProtocolError(ValueError):
    """The stream broke a limit of the decoder (an event larger than allowed)."""


# gc=False: an event holds only str, int and None, so it can never be part of a
# reference cycle, and the collector need not track one object per streamed token.
class ServerSentEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched event.

    ``retry`` is the reconnection time sent in this event's own block, if any;
    `SSEDecoder.retry` keeps the latest one even from blocks that carried no data.
    """

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental event-stream parser; one instance per stream.

    After `SSEProtocolError` the stream is unusable: the error means the peer is
    broken or hostile, and the decoder's state is no longer meaningful.
    """

    __slots__ = (
        "_at_start",
        "_block_size",
        "_closed",
        "_data",
        "_event",
        "_last_id",
        "_max",
        "_pending",
        "_retry",
        "_retry_here",
        "_skip_lf",
    )

    def __init__(self, *, max_event_size: int = 1_048_576) -> None:
        if max_event_size < 1:
            raise ValueError("max_event_size must be positive")
        self._max = max_event_size
        # Bytes after the last line ending; a bytearray so that a long line
        # arriving in many small pieces is appended to, not recopied each time.
        self._pending = bytearray()
        self._at_start = True
        # The last chunk ended in CR: an LF opening the next chunk belongs to it.
        self._skip_lf = False
        self._closed = False
        # Content bytes of the lines of the event being built, for the bound.
        self._block_size = 0
        # Data lines stay bytes until dispatch: one decode per event, not per line.
        self._data: list[bytes] = []
        self._event = b""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._retry_here: int | None = None

    @property
    def has_partial(self) -> bool:
        """Whether bytes were received after the last blank line.

        True after `close` means the stream ended mid-event (or at least without
        the final blank line), which for an upstream LLM stream is a cut.
        """
        return bool(self._pending) or self._block_size > 0

    @property
    def last_event_id(self) -> str | None:
        """The last event ID set by the stream, for a reconnect's ``Last-Event-ID``."""
        return self._last_id

    @property
    def retry(self) -> int | None:
        """The latest valid ``retry`` value seen, in milliseconds."""
        return self._retry

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Consume the next bytes of the stream and return the events they complete."""
        if self._at_start:
            data = self._start(data)
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == _LF:
                data = data[1:]
        if not data:
            return []
        pending = self._pending
        last = data[-1]
        if last in b"\r\n":
            # The usual case: the chunk ends exactly at a line end, often an event's.
            self._skip_lf = last == _CR
            if pending:
                data = bytes(pending) + data
                pending.clear()
        else:
            end = max(data.rfind(b"\n"), data.rfind(b"\r"))
            if end < 0:
                pending += data
                if self._block_size + len(pending) > self._max:
                    raise self._too_big()
                return []
            rest = data[end + 1 :]
            data = bytes(pending) + data[: end + 1] if pending else data[: end + 1]
            pending.clear()
            pending += rest
        # Only whole lines are decoded, and line ends are ASCII, so a UTF-8
        # character is never decoded in two halves. bytes.splitlines breaks on
        # exactly CRLF, LF and CR, as the spec wants (str.splitlines would also
        # break on U+2028 and friends).
        events = self._lines(data.splitlines())
        if pending and self._block_size + len(pending) > self._max:
            raise self._too_big()
        return events

    def close(self) -> list[ServerSentEvent]:
        """Signal end of input.

        Per the spec an unterminated event is discarded, so this always returns
        ``[]``; check `has_partial` to learn whether anything was thrown away.
        """
        self._closed = True
        # Routes the next feed() through _start, which refuses it; keeps the
        # hot path down to one flag.
        self._at_start = True
        return []

    def _start(self, data: bytes) -> bytes:
        if self._closed:
            raise RuntimeError("feed() called after close()")
        pending = self._pending
        pending += data
        # The BOM itself may be split across chunks: wait until it can be told apart.
        if len(pending) < len(_BOM) and _BOM.startswith(pending):
            return b""
        self._at_start = False
        data = bytes(pending)
        pending.clear()
        return data[len(_BOM) :] if data.startswith(_BOM) else data

    def _too_big(self) -> SSEProtocolError:
        return SSEProtocolError(
            f"server-sent event larger than {self._max} bytes without a blank line"
        )

    def _lines(self, lines: list[bytes]) -> list[ServerSentEvent]:
        # State lives in locals for the loop: attribute access is the main cost
        # of the many-small-events case.
        events: list[ServerSentEvent] = []
        data = self._data
        event = self._event
        retry = self._retry_here
        last_id = self._last_id
        size = self._block_size
        limit = self._max
        for line in lines:
            if not line:
                if data:
                    events.append(
                        ServerSentEvent(
                            (b"\n".join(data) if len(data) > 1 else data[0]).decode(
                                "utf-8", "replace"
                            ),
                            event.decode("utf-8", "replace") if event else None,
                            last_id,
                            retry,
                        )
                    )
                    data = []
                event = b""
                retry = None
                size = 0
                continue
            size += len(line)
            if size > limit:
                raise self._too_big()
            # The hot path: nearly every line of an LLM stream is "data: {...}".
            if line.startswith(b"data: "):
                data.append(line[6:])
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value
            elif name == b"id":
                if b"\x00" not in value:
                    self._last_id = last_id = value.decode("utf-8", "replace")
            elif name == b"retry" and value.isdigit():  # bytes.isdigit is ASCII-only
                self._retry = retry = int(value)
            # Anything else, comments (empty name) included, is ignored by the spec.
        self._data = data
        self._event = event
        self._retry_here = retry
        self._block_size = size
        return events


def encode_data(payload: bytes) -> bytes:
    """Frame one single-line ``data`` event.

    ``payload`` must not contain CR or LF (compact JSON never does); this is the
    per-chunk hot path, so that is not checked: a newline would split the event.
    """
    return b"data: " + payload + b"\n\n"


def encode_event(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Frame a general event; multi-line ``data`` becomes several ``data`` lines.

    Any of CRLF, CR or LF in ``data`` is a line break and decodes back as LF.
    An empty ``event`` is the same as none, per the spec.
    """
    if event is not None and ("\n" in event or "\r" in event):
        raise ValueError("event name must not contain a line break")
    if id is not None and ("\n" in id or "\r" in id or "\x00" in id):
        raise ValueError("event id must not contain a line break or NUL")
    if retry is not None and retry < 0:
        raise ValueError("retry must not be negative")
    parts: list[str] = []
    if event:
        parts.append(f"event: {event}\n")
    if id is not None:
        parts.append(f"id: {id}\n")
    if retry is not None:
        parts.append(f"retry: {retry}\n")
    for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode()
