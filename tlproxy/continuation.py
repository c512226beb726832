"""Finishing a stream another model started: the pure half of continuation.

The problem. After the winner's first token the client holds part of an
answer. When that stream then breaks (the connection cut, a malformed event,
an error event, or a stall past its deadline), ending with an error event is
honest but leaves the user with half an answer. The next model of the decided
tier can finish it, if it is asked in a form it accepts and if what the
client receives still reads as one answer.

Options rejected:

* Append a fixed "continue this text" system message and an assistant
  prefill to every continuation. Models that refuse assistant prefill (recent
  Claude models answer 400) turn every failure into a 400 about prefill, and
  a system message overrides the team's own prompt and language.
* Retry from scratch and send the new answer after the old half: the client
  sees the first words twice.
* Continue whatever was cut, tool calls and structured output included: a
  call whose arguments were half sent cannot be finished by another model's
  guess, and a JSON document half written by one model and finished by
  another may not parse.

What this module gives the engine (`engine.py` does the I/O):

* `failure_reason`: what kind of failure ended an attempt (``cut``,
  ``stall``, ``malformed``, ``error-event``), for the ledger and metrics;
* `Delivered`: what the client was given so far, and `Delivered.refusal`,
  why a stream cannot be continued faithfully (then the honest error event
  stands, as before);
* `continue_body`: the original request plus the partial answer, in the form
  the next model takes (`form_for`): ``prefill`` (the partial answer as the
  last assistant message, to be continued; the flags OpenAI-compatible
  servers read for it are set) or ``instruction`` (the partial answer as an
  assistant turn, then a final user turn asking, neutrally, to continue it
  in the same language; the system prompt is never touched);
* `Splice`: the continuation's chunks made part of the first stream: the
  same ``id``, ``created`` and ``model``, no second role delta, the words the
  model repeated trimmed (`Overlap`), one usage summing both attempts;
* `ToolCallHold`: tool-call deltas held until the call is whole, so a cut in
  the middle of a call is retried whole and the client never sees half of one.

A continuation is another model's words after the first model's: the docs
(docs/reliability.md) say so, and a team that wants no such answers turns it
off per tier, per key or per request.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import orjson

from .config import ModelConfig
from .errors import UpstreamError
from .pricing import estimate_usage, usage_from_openai

__all__ = [
    "DEFAULT_FORMS",
    "REASONS",
    "Delivered",
    "Form",
    "Overlap",
    "Splice",
    "ToolCallHold",
    "attempt_usage",
    "continue_body",
    "failure_reason",
    "form_for",
    "instruction_text",
]

Chunk = dict[str, Any]
Form = Literal["prefill", "instruction", "none"]
REASONS = ("cut", "stall", "malformed", "error-event")

# The form each provider kind's models take unless the catalog says otherwise.
# Anthropic's current models refuse an assistant prefill (400), Gemini has no
# such thing, and OpenAI's own API reads a trailing assistant message as
# history, not as text to continue: all three take the instruction. An
# OpenAI-compatible server that continues a final assistant message (vLLM's
# `continue_final_message`, DeepSeek's and Mistral's `prefix`) is declared
# ``continuation = "prefill"`` in the catalog.
DEFAULT_FORMS: Mapping[str, Form] = {
    "openai": "instruction", "anthropic": "instruction", "gemini": "instruction",
    "sim": "instruction",
}

# How much of the partial answer the instruction quotes, and how far back a
# repeated overlap is looked for (characters).
_QUOTE = 200
_OVERLAP_WINDOW = 500

_MALFORMED = (
    "the upstream provider sent a malformed stream event",
    "the upstream provider sent a malformed event stream",
    "the upstream provider sent a malformed compressed body",
)
_CUT = ("upstream stream ended before its final event", "could not reach the upstream provider")


def failure_reason(error: BaseException) -> str:
    """What ended a stream after its first token: ``cut``, ``stall``,
    ``malformed`` or ``error-event``.

    A stall is the race's own deadline (``stall_timeout``) or the transport's
    read timeout; a cut is a connection that ended before the answer's final
    event; a malformed event is bytes that are not the protocol's JSON.
    Anything else the adapters raise mid-stream is an error event the
    upstream sent.
    """
    if isinstance(error, UpstreamError):
        if error.code in ("stall_timeout", "timeout"):
            return "stall"
        if error.message.startswith(_MALFORMED):
            return "malformed"
        if error.message.startswith(_CUT):
            return "cut"
        return "error-event"
    return "cut"


def form_for(model: ModelConfig, provider_kind: str) -> Form:
    """The form `model` is asked to continue in: the catalog's, else its kind's default."""
    if model.continuation is not None:
        return model.continuation
    return DEFAULT_FORMS.get(provider_kind, "instruction")


def instruction_text(partial: str) -> str:
    """The final user turn of the instruction form: neutral, quoting where the reply stopped.

    It names no language and no persona, so the team's system prompt still
    decides both; it asks for the same language as the reply so far.
    """
    tail = partial[-_QUOTE:]
    if len(partial) > _QUOTE:
        tail = "..." + tail
    return (
        "Your previous reply was interrupted. It stopped after:\n\n"
        f"{tail}\n\n"
        "Continue the reply from exactly that point. Do not repeat anything already "
        "written and do not comment on the interruption; keep the same language, tone "
        "and format.")


def continue_body(body: Mapping[str, Any], partial: str, form: Form,
                  provider_kind: str) -> dict[str, Any]:
    """The request asking the next model to continue `partial` (the client's text so far).

    With nothing to continue (only a held tool call or reasoning was under
    way) it is the original request: a retry. The system prompt and every
    earlier message are kept as they were.
    """
    out = dict(body)
    if not partial:
        return out
    messages = list(body.get("messages") or ())
    if form == "prefill":
        if provider_kind == "anthropic":
            # Anthropic refuses a final assistant turn that ends in whitespace;
            # `Overlap` drops the whitespace the continuation starts with.
            messages.append({"role": "assistant", "content": partial.rstrip()})
        else:
            messages.append({"role": "assistant", "content": partial, "prefix": True})
            if provider_kind != "gemini":
                out["continue_final_message"] = True
                out["add_generation_prompt"] = False
    else:
        messages.append({"role": "assistant", "content": partial})
        messages.append({"role": "user", "content": instruction_text(partial)})
    out["messages"] = messages
    return out


class Delivered:
    """What the client has been given of choice 0, read from the chunks on their way.

    `refusal` says why a failure now could not be continued faithfully.
    """

    __slots__ = ("created", "finished", "ident", "model", "other", "parts", "tool_calls")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.ident: Any = None
        self.created: Any = None
        self.model: Any = None
        self.tool_calls = False  # a whole tool call reached the client
        self.other = False  # a refusal or audio reached the client
        self.finished = False  # a finish_reason reached the client

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def note(self, chunk: Chunk) -> None:
        if self.ident is None and "id" in chunk:
            self.ident, self.created, self.model = (
                chunk.get("id"), chunk.get("created"), chunk.get("model"))
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self.parts.append(content)
            if delta.get("tool_calls") or delta.get("function_call"):
                self.tool_calls = True
            if delta.get("refusal") or delta.get("audio"):
                self.other = True
            if choice.get("finish_reason"):
                self.finished = True

    def refusal(self, body: Mapping[str, Any], error: BaseException) -> str | None:
        """Why this stream cannot be continued (None: it can)."""
        if isinstance(error, UpstreamError) and not error.retryable:
            return "the upstream refused the request"
        if (body.get("n") or 1) > 1:
            return "n > 1"
        if self.finished:
            return "the answer was finished"
        if self.tool_calls:
            return "a tool call was sent"
        if self.other:
            return "a refusal or audio was sent"
        kind = (body.get("response_format") or {}).get("type")
        if kind in ("json_object", "json_schema") and self.parts:
            return "structured output was half sent"
        return None


class Overlap:
    """Trims what a continuation repeats of the partial answer's end.

    Models asked to continue often start with the last words again. Text is
    held while it may still be such a repetition (it occurs in the partial
    answer's last characters); then the longest prefix that equals the
    partial's end, starting at a word boundary, is dropped. A continuation
    that starts with whitespace after a partial that ended with some loses it.
    """

    __slots__ = ("_held", "_tail", "decided")

    def __init__(self, partial: str) -> None:
        self._tail = partial[-_OVERLAP_WINDOW:]
        self._held = ""
        self.decided = not partial

    def feed(self, text: str) -> str:
        """Text to send now, of `text` and what was held."""
        if self.decided or not text:
            return text
        self._held += text
        if self._held and self._held in self._tail[:-1]:
            return ""  # may still grow into a repetition of the partial's end
        return self.flush()

    def flush(self) -> str:
        """Decide with what is held (the continuation ended, or will say no more)."""
        if self.decided:
            return ""
        self.decided = True
        held, tail = self._held, self._tail
        self._held = ""
        for k in range(min(len(held), len(tail)), 0, -1):
            start = len(tail) - k
            at_word = start == 0 or tail[start - 1].isspace() or tail[start].isspace()
            if at_word and held[:k].strip() and tail.endswith(held[:k]):
                return held[k:]
        if tail[-1:].isspace():
            return held.lstrip()
        return held


class Splice:
    """A continuation's chunks, made part of the stream the client already has.

    `prompt_tokens` is the client's prompt, `prior_completion` the completion
    tokens of the attempts before this one: its usage chunk reports those
    plus its own completion, as one answer's usage.
    """

    __slots__ = ("_overlap", "_prior", "_prompt", "delivered")

    def __init__(self, delivered: Delivered, *, prompt_tokens: int,
                 prior_completion: int) -> None:
        self.delivered = delivered
        self._overlap = Overlap(delivered.text)
        self._prompt = prompt_tokens
        self._prior = prior_completion

    def chunk(self, chunk: Chunk) -> Chunk | None:
        """The chunk as the client should get it, or None to drop it."""
        out = dict(chunk)
        delivered = self.delivered
        for field, value in (("id", delivered.ident), ("created", delivered.created),
                             ("model", delivered.model)):
            if field in out and value is not None:
                out[field] = value
        if out.get("usage") is not None:
            out["usage"] = self._usage(out["usage"])
        choices = []
        for choice in out.get("choices") or ():
            choice = dict(choice)
            delta = dict(choice.get("delta") or {})
            delta.pop("role", None)
            content = delta.get("content")
            if content is not None or choice.get("finish_reason"):
                text = self._overlap.feed(content or "")
                if choice.get("finish_reason"):
                    text += self._overlap.flush()
                if text or content is not None:
                    delta["content"] = text
            choice["delta"] = delta
            if any(v not in (None, "", [], {}) for v in delta.values()) or choice.get(
                    "finish_reason") or choice.get("logprobs"):
                choices.append(choice)
        if not choices and out.get("choices") and out.get("usage") is None:
            return None
        out["choices"] = choices
        return out

    def _usage(self, own: dict[str, Any]) -> dict[str, Any]:
        """One usage for the whole answer: the client's prompt, every attempt's completion."""
        later = usage_from_openai(own)
        completion = self._prior + (later.completion_tokens if later else 0)
        usage = dict(own)
        usage.update(prompt_tokens=self._prompt, completion_tokens=completion,
                     total_tokens=self._prompt + completion)
        return usage


def attempt_usage(body: Mapping[str, Any], reported: Mapping[str, Any] | None,
                  text: str) -> tuple[int, int]:
    """(prompt, completion) tokens of an attempt that failed after sending `text`:
    as the upstream reported them, else estimated from characters."""
    usage = usage_from_openai(reported) or estimate_usage(body, output_chars=len(text))
    completion = usage.completion_tokens
    if not completion and text:
        completion = estimate_usage(body, output_chars=len(text)).completion_tokens
    return usage.prompt_tokens, completion


class ToolCallHold:
    """Tool-call deltas held until the call is whole; everything else passes in order.

    A call is whole when its arguments parse as JSON, when the next call
    starts, or when a finish reason comes. The chunks of a call are then
    released together, in their order. A chunk held behind a call waits too,
    so the order the client sees is the upstream's.
    """

    __slots__ = ("_args", "_held")

    def __init__(self) -> None:
        self._held: deque[Chunk] = deque()
        self._args: dict[int, list[str]] = {}

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def feed(self, chunk: Chunk) -> list[Chunk]:
        """The chunks to pass on now (possibly none, possibly several)."""
        calls = list(_tool_call_deltas(chunk))
        finished = any(c.get("finish_reason") for c in chunk.get("choices") or ())
        if not calls and not self._held:
            return [chunk]
        released: list[Chunk] = []
        for call in calls:
            index = call.get("index", 0)
            if index not in self._args and self._args:
                released += self._release()  # the next call starts: the last one is whole
            self._args.setdefault(index, []).append(
                (call.get("function") or {}).get("arguments") or "")
        self._held.append(chunk)
        if finished or (calls and self._whole()):
            released += self._release()
        return released

    def flush(self) -> list[Chunk]:
        """What is held, at the stream's clean end (the calls are as whole as they get)."""
        return self._release()

    def _whole(self) -> bool:
        if len(self._args) != 1:
            return False
        (parts,) = self._args.values()
        text = "".join(parts)
        if not text.strip():
            return False
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError:
            return False
        return True

    def _release(self) -> list[Chunk]:
        out = list(self._held)
        self._held.clear()
        self._args.clear()
        return out


def _tool_call_deltas(chunk: Chunk) -> Iterable[dict[str, Any]]:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        yield from delta.get("tool_calls") or ()
