"""Log lines written by a thread of their own, never by the event loop.

The problem. logging's `StreamHandler` writes each record to stderr from the
thread that logs it: for the access line of every request, the event loop.
A write to a pipe whose reader has fallen behind (a container runtime's log
driver under pressure, a terminal paused, a supervisor that stopped reading)
blocks once the pipe's buffer is full, and with it every request the worker
serves: a stuck log reader stops the proxy. It is also a system call per
request.

What `LineSink` does instead: each record is formatted where it is logged
(the JSON line: a few microseconds) and appended to a bounded buffer; a
thread woken by the first line of a burst gathers for `interval` (50 ms),
takes whatever is buffered and writes it in one piece, and sleeps until the
next line (an idle proxy wakes no thread). The event loop never waits on the
stream. When the buffer is full because the stream has been stuck for long,
the oldest lines give way and are counted, and once the stream takes writes
again a line says how many were lost. The thread needs the GIL at most twice per `interval`, not
once per request (a thread woken per item competes with a busy event loop
for the GIL at every item: see the ledger's writer). `flush` writes what is
buffered in the caller's thread; `logging.shutdown` calls it at exit, so a
clean exit loses nothing.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from typing import TextIO

__all__ = ["LineSink"]


class LineSink(logging.Handler):
    """A logging handler that never blocks its caller on the stream.

    `stream` defaults to `sys.stderr` as it is when a line is written;
    `capacity` lines wait at most; `interval` is how long the thread gathers
    a burst's lines before it writes them.
    """

    def __init__(self, stream: TextIO | None = None, *, interval: float = 0.05,
                 capacity: int = 10_000) -> None:
        super().__init__()
        self._stream = stream
        self._interval = interval
        self._capacity = max(1, capacity)
        # The lines waiting and those given way, under a lock of their own: not the
        # handler's, which `logging.shutdown` holds while it flushes and closes.
        self._buffer = threading.Lock()
        self._lines: deque[str] = deque()
        self._dropped = 0
        self._writing = threading.Lock()  # one writer at a time: the thread, or `flush`
        self._stop = threading.Event()
        self._pending = threading.Event()  # set by the first line into an empty buffer
        # Started by the first line: a handler that is never used costs no thread.
        self._thread: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tlproxy-log", daemon=True)
            self._thread.start()
        with self._buffer:
            if not self._lines:
                self._pending.set()
            elif len(self._lines) >= self._capacity:
                self._lines.popleft()
                self._dropped += 1
            self._lines.append(line)

    def flush(self) -> None:
        """Write what is buffered now, unless a write is stuck (then give up after 1 s)."""
        if self._writing.acquire(timeout=1.0):
            try:
                self._write()
            finally:
                self._writing.release()

    def close(self) -> None:
        self._stop.set()
        self._pending.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self.flush()
        super().close()

    def _run(self) -> None:
        while True:
            self._pending.wait()
            if self._stop.wait(self._interval):  # gather a burst's lines; or closing
                return
            # Cleared before the buffer is taken: a line that comes later sets it again.
            self._pending.clear()
            with self._writing:
                self._write()

    def _write(self) -> None:
        with self._buffer:
            lines, self._lines = list(self._lines), deque()
            dropped, self._dropped = self._dropped, 0
        if dropped:
            notice = logging.LogRecord(
                "tlproxy.log", logging.WARNING, __file__, 0,
                "%d log lines were dropped: the log stream took no writes for too long",
                (dropped,), None)
            lines.insert(0, self.format(notice) + "\n")
        if not lines:
            return
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write("".join(lines))
            stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed or gone: nowhere left to say it
