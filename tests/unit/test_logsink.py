"""LineSink: log lines leave through a thread of their own; a stuck stream never blocks
the caller, and what could not wait is counted, then said."""

from __future__ import annotations

import io
import logging
import threading

from tlproxy.logsink import LineSink


class GatedStream(io.StringIO):
    """A stream whose writes wait for `gate`; `writing` is set when one has begun."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.writing = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        self.gate.wait()
        return super().write(text)


def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("tlproxy.access", level, __file__, 0, message, None, None)


def sink_on(stream: io.StringIO, *, capacity: int = 10_000) -> LineSink:
    # A timer that never fires within a test: lines leave only through `flush`.
    sink = LineSink(stream, interval=3600.0, capacity=capacity)
    sink.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    return sink


def test_lines_leave_formatted_and_in_order() -> None:
    stream = io.StringIO()
    sink = sink_on(stream)
    for n in range(3):
        sink.handle(record(f"line {n}"))
    assert stream.getvalue() == ""  # nothing written by the caller
    sink.flush()
    assert stream.getvalue() == "INFO line 0\nINFO line 1\nINFO line 2\n"
    sink.close()


def test_a_stuck_stream_never_blocks_the_caller_and_what_gave_way_is_said() -> None:
    stream = GatedStream()
    sink = sink_on(stream, capacity=5)
    sink.handle(record("before"))
    # A write of the first line gets stuck, as on a full pipe nobody reads.
    writer = threading.Thread(target=sink.flush)
    writer.start()
    assert stream.writing.wait(timeout=30)
    for n in range(12):
        sink.handle(record(f"during {n}"))  # each returns at once: the stream is not touched
    stream.gate.set()
    writer.join(timeout=30)
    sink.flush()
    assert stream.getvalue().splitlines() == [
        "INFO before",
        "WARNING 7 log lines were dropped: the log stream took no writes for too long",
        *(f"INFO during {n}" for n in range(7, 12)),
    ]
    sink.close()


class NotifyingStream(io.StringIO):
    """A stream that says when it was written to."""

    def __init__(self) -> None:
        super().__init__()
        self.written = threading.Event()

    def write(self, text: str) -> int:
        count = super().write(text)
        self.written.set()
        return count


def test_the_thread_writes_a_burst_of_its_own_accord() -> None:
    stream = NotifyingStream()
    sink = LineSink(stream, interval=0.01)
    sink.setFormatter(logging.Formatter("%(message)s"))
    for n in range(3):
        sink.handle(record(f"burst {n}"))
    while stream.getvalue().count("\n") < 3:  # no flush is called: the thread writes them
        assert stream.written.wait(timeout=30)  # a hang guard
        stream.written.clear()
    assert stream.getvalue() == "burst 0\nburst 1\nburst 2\n"
    sink.handle(record("later"))  # the next line wakes it again
    assert stream.written.wait(timeout=30)
    assert stream.getvalue().endswith("later\n")
    sink.close()


def test_the_writer_needs_no_lock_that_logging_shutdown_holds() -> None:
    # logging.shutdown holds each handler's lock while it flushes and closes it; a
    # writer that needed that lock too would wait it out, and lines would be lost.
    stream = io.StringIO()
    sink = sink_on(stream)
    sink.handle(record("at exit"))
    sink.acquire()
    try:
        writer = threading.Thread(target=sink.flush)  # the writer's turn, as its thread has it
        writer.start()
        writer.join(timeout=30)
        assert not writer.is_alive()
        assert stream.getvalue() == "INFO at exit\n"
    finally:
        sink.release()
    sink.close()


def test_close_writes_what_is_left_and_stops_the_thread() -> None:
    stream = io.StringIO()
    sink = sink_on(stream)
    sink.handle(record("last words"))
    thread = sink._thread
    assert thread is not None and thread.is_alive()
    sink.close()
    assert not thread.is_alive()
    assert stream.getvalue() == "INFO last words\n"


def test_a_sink_never_used_starts_no_thread() -> None:
    sink = LineSink(io.StringIO())
    assert sink._thread is None
    sink.close()
