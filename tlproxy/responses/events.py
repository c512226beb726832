"""Chat chunks in, Responses events and the ``response`` object out: sans-IO.

The engine's reply is Chat Completions chunks (a complete answer is one
chunk-shaped message). `ResponseEvents` reads them in order and returns the
typed events OpenAI's Responses API streams, each numbered with its
``sequence_number``; at the end it holds the whole ``response`` object. A
complete (non-streamed) answer goes through the same reader
(`completion_chunk`) and only its final object is sent, so the JSON answer
and the last event of a stream are built by one piece of code.

Theory of operation. The output is a list of items, each opened with
``response.output_item.added`` and closed with ``response.output_item.done``:

* ``reasoning`` (from a delta's ``reasoning_content`` or ``reasoning``),
  one ``reasoning_text`` part;
* ``message``, with ``output_text`` and ``refusal`` parts, each opened with
  ``response.content_part.added``, grown by ``.delta`` events, closed by
  ``.done`` then ``response.content_part.done``;
* ``function_call``, one per tool call index, grown by
  ``response.function_call_arguments.delta``.

A reasoning or message item is closed when output of another kind begins;
function calls stay open to the end (an upstream may interleave the
arguments of parallel calls), then close in their order. So every item and
part opened is closed exactly once, whatever the chunk boundaries. The
stream ends with exactly one terminal event: ``response.completed``,
``response.incomplete`` (the answer was cut by ``max_output_tokens`` or a
content filter: ``finish_reason`` ``length`` or ``content_filter``), or
``response.failed`` with the error, for an upstream that failed mid-answer:
a cut stream never looks complete. Pure: ids come from `ids`, the time
from the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .request import Turn, new_id

__all__ = ["ResponseEvents", "completion_chunk", "response_base", "response_usage"]

Event = dict[str, Any]

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def completion_chunk(completion: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` as one chunk: its message as the delta, tool calls indexed."""
    choice = (completion.get("choices") or [{}])[0]
    message = dict(choice.get("message") or {})
    calls = message.get("tool_calls")
    if calls:
        message["tool_calls"] = [{**call, "index": i} for i, call in enumerate(calls)]
    return {"choices": [{"index": 0, "delta": message,
                         "finish_reason": choice.get("finish_reason")}],
            "usage": completion.get("usage")}


def response_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage in the Responses shape (input/output tokens and their details)."""
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details") or {}
    out_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": int(details.get("cached_tokens") or 0),
            "cache_write_tokens": int(details.get("cache_write_tokens")
                                      or usage.get("cache_creation_input_tokens") or 0),
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(out_details.get("reasoning_tokens")
                                                          or 0)},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


class _Part:
    __slots__ = ("kind", "text")

    def __init__(self, kind: str) -> None:
        self.kind = kind  # output_text, refusal or reasoning_text
        self.text = ""

    def shape(self) -> dict[str, Any]:
        if self.kind == "refusal":
            return {"type": "refusal", "refusal": self.text}
        if self.kind == "reasoning_text":
            return {"type": "reasoning_text", "text": self.text}
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}


class _Item:
    __slots__ = ("arguments", "call_id", "id", "index", "kind", "name", "open", "parts")

    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind = kind  # message, reasoning or function_call
        self.id = item_id
        self.index = index  # output_index
        self.parts: list[_Part] = []
        self.open = True
        self.call_id = ""
        self.name = ""
        self.arguments = ""

    def shape(self, status: str) -> dict[str, Any]:
        if self.kind == "function_call":
            return {"id": self.id, "type": "function_call", "status": status,
                    "call_id": self.call_id, "name": self.name, "arguments": self.arguments}
        if self.kind == "reasoning":
            return {"id": self.id, "type": "reasoning", "status": status, "summary": [],
                    "content": [p.shape() for p in self.parts]}
        return {"id": self.id, "type": "message", "status": status, "role": "assistant",
                "content": [p.shape() for p in self.parts]}


class ResponseEvents:
    """One response being built from chat chunks; every method returns the events to send.

    `base` holds the response object's fixed fields (`response_base`); call
    `start` once, `feed` each chunk in order, then exactly one of `finish`
    (the upstream stream ended whole) or `fail`. `response` is the object as
    it stands (its final form after `finish` or `fail`).
    """

    def __init__(self, base: dict[str, Any], *, ids: Callable[[str], str] = new_id) -> None:
        self._base = base
        self._ids = ids
        self._sequence = 0
        self._items: list[_Item] = []
        self._current: _Item | None = None  # the open reasoning or message item
        self._calls: dict[int, _Item] = {}  # function calls by the chunk's tool index
        self._usage: dict[str, Any] | None = None
        self._finish: str | None = None
        self.status = "in_progress"
        self._error: dict[str, Any] | None = None
        self._completed_at: int | None = None

    # -- the whole object ------------------------------------------------------------

    def response(self) -> dict[str, Any]:
        incomplete = _INCOMPLETE.get(self._finish or "") if self.status == "incomplete" else None
        item_status = "incomplete" if self.status in ("incomplete", "failed") else "completed"
        output = [] if self.status == "in_progress" else [
            item.shape(item_status) for item in self._items]
        body = {**self._base, "status": self.status, "completed_at": self._completed_at,
                "error": self._error,
                "incomplete_details": {"reason": incomplete} if incomplete else None,
                "output": output}
        usage = response_usage(self._usage)
        if usage is not None and self.status != "in_progress":
            body["usage"] = usage
        return body

    # -- events ----------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self) -> list[Event]:
        return [self._event("response.created", response=self.response()),
                self._event("response.in_progress", response=self.response())]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        """The events of one chat chunk (choice 0; the proxy asks for one choice)."""
        events: list[Event] = []
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._text(events, "reasoning", "reasoning_text", reasoning)
            if delta.get("refusal"):
                self._text(events, "message", "refusal", delta["refusal"])
            if delta.get("content"):
                self._text(events, "message", "output_text", delta["content"])
            for call in delta.get("tool_calls") or ():
                self._call(events, call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return events

    def finish(self, completed_at: int) -> list[Event]:
        """The upstream answer ended whole: close everything, then the terminal event."""
        self.status = "incomplete" if self._finish in _INCOMPLETE else "completed"
        events = self._close_all("incomplete" if self.status == "incomplete" else "completed")
        self._completed_at = completed_at
        kind = "response.completed" if self.status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=self.response()))
        return events

    def fail(self, message: str, *, code: str = "server_error") -> list[Event]:
        """The upstream failed mid-answer: what was open closes incomplete, then
        ``response.failed`` with the error. The client never sees it as complete."""
        events = self._close_all("incomplete")
        self.status = "failed"
        self._error = {"code": code, "message": message}
        events.append(self._event("response.failed", response=self.response()))
        return events

    # -- items -----------------------------------------------------------------------

    def _open(self, events: list[Event], kind: str) -> _Item:
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        item = _Item(kind, self._ids(prefix), len(self._items))
        self._items.append(item)
        events.append(self._event("response.output_item.added", output_index=item.index,
                                  item=item.shape("in_progress")))
        return item

    def _text(self, events: list[Event], kind: str, part_kind: str, delta: str) -> None:
        item = self._current
        if item is None or item.kind != kind:
            self._close_current(events, "completed")
            item = self._current = self._open(events, kind)
        part = item.parts[-1] if item.parts else None
        if part is None or part.kind != part_kind:
            if part is not None:
                self._close_part(events, item)
            part = _Part(part_kind)
            item.parts.append(part)
            events.append(self._event("response.content_part.added", item_id=item.id,
                                      output_index=item.index,
                                      content_index=len(item.parts) - 1, part=part.shape()))
        part.text += delta
        where = {"item_id": item.id, "output_index": item.index,
                 "content_index": len(item.parts) - 1}
        if part_kind == "output_text":
            events.append(self._event("response.output_text.delta", **where, delta=delta,
                                      logprobs=[]))
        elif part_kind == "refusal":
            events.append(self._event("response.refusal.delta", **where, delta=delta))
        else:
            events.append(self._event("response.reasoning_text.delta", **where, delta=delta))

    def _call(self, events: list[Event], call: dict[str, Any]) -> None:
        index = call.get("index", 0)
        function = call.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            self._close_current(events, "completed")
            item = _Item("function_call", self._ids("fc"), len(self._items))
            item.call_id = call.get("id") or self._ids("call")
            item.name = function.get("name") or ""
            self._items.append(item)
            self._calls[index] = item
            events.append(self._event("response.output_item.added", output_index=item.index,
                                      item=item.shape("in_progress")))
        arguments = function.get("arguments")
        if arguments:
            item.arguments += arguments
            events.append(self._event("response.function_call_arguments.delta",
                                      item_id=item.id, output_index=item.index,
                                      delta=arguments))

    def _close_part(self, events: list[Event], item: _Item) -> None:
        part = item.parts[-1]
        where = {"item_id": item.id, "output_index": item.index,
                 "content_index": len(item.parts) - 1}
        if part.kind == "output_text":
            events.append(self._event("response.output_text.done", **where, text=part.text,
                                      logprobs=[]))
        elif part.kind == "refusal":
            events.append(self._event("response.refusal.done", **where, refusal=part.text))
        else:
            events.append(self._event("response.reasoning_text.done", **where, text=part.text))
        events.append(self._event("response.content_part.done", **where, part=part.shape()))

    def _close_item(self, events: list[Event], item: _Item, status: str) -> None:
        if not item.open:
            return
        item.open = False
        if item.kind == "function_call":
            events.append(self._event("response.function_call_arguments.done",
                                      item_id=item.id, output_index=item.index,
                                      name=item.name, arguments=item.arguments))
        elif item.parts:
            self._close_part(events, item)
        events.append(self._event("response.output_item.done", output_index=item.index,
                                  item=item.shape(status)))

    def _close_current(self, events: list[Event], status: str) -> None:
        if self._current is not None:
            self._close_item(events, self._current, status)
            self._current = None

    def _close_all(self, status: str) -> list[Event]:
        events: list[Event] = []
        self._close_current(events, status)
        for item in self._items:
            self._close_item(events, item, status)
        return events


def response_base(turn: Turn, *, response_id: str, created_at: int, model: str,
                  store: bool) -> dict[str, Any]:
    """The fields of a response object that do not change while it is made."""
    request = turn.request
    fmt = request.text.format if request.text and request.text.format else None
    tools = [{"type": "function", "name": t.name, "description": t.description,
              "parameters": t.parameters, "strict": t.strict} for t in request.tools or ()]
    choice: Any = request.tool_choice if request.tool_choice is not None else "auto"
    if not isinstance(choice, str):
        choice = {"type": "function", "name": choice.name}
    reasoning = request.reasoning
    base = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "background": False,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "metadata": dict(request.metadata or {}),
        "model": model,
        "parallel_tool_calls": (request.parallel_tool_calls
                                if request.parallel_tool_calls is not None else True),
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": reasoning.effort if reasoning else None,
                      "summary": reasoning.summary if reasoning else None},
        "store": store,
        "temperature": request.temperature if request.temperature is not None else 1.0,
        "text": {"format": _format_echo(fmt)},
        "tool_choice": choice,
        "tools": tools,
        "top_p": request.top_p if request.top_p is not None else 1.0,
        "truncation": "disabled",
    }
    if request.user is not None:  # a string when present, never null
        base["user"] = request.user
    return base


def _format_echo(fmt: Any) -> dict[str, Any]:
    if fmt is None or fmt.type == "text":
        return {"type": "text"}
    if fmt.type == "json_object":
        return {"type": "json_object"}
    echo = {"type": "json_schema", "name": fmt.name, "schema": fmt.schema,
            "strict": fmt.strict}
    if fmt.description is not None:
        echo["description"] = fmt.description
    return echo
