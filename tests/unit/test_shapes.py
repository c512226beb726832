"""OpenAI's Chat Completions shapes, made exact: the repairs, table-driven and fuzzed."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlproxy.pricing import CACHE_WRITE_TOKENS
from tlproxy.shapes import (
    first_choice_text,
    public_usage,
    repair_chunk,
    repair_completion,
    total_tokens,
)

USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
PRICED = {**USAGE, CACHE_WRITE_TOKENS: 3}


def content(text: str, **choice: Any) -> dict[str, Any]:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": text}, **choice}]}


@pytest.mark.parametrize(("chunk", "include_usage", "kept", "repaired"), [
    # No usage asked for: none on any chunk, and the proxy's usage chunk dropped.
    (content("a"), False, True, content("a", finish_reason=None)),
    ({**content("a"), "usage": None}, False, True, content("a", finish_reason=None)),
    ({"choices": [], "usage": USAGE}, False, False, None),
    # Asked for: null on every chunk, the usage chunk kept, pricing fields removed.
    (content("a"), True, True, {**content("a", finish_reason=None), "usage": None}),
    ({"choices": [], "usage": PRICED}, True, True, {"choices": [], "usage": USAGE}),
    # A finish reason that is there is kept.
    (content("", finish_reason="stop"), True, True,
     {**content("", finish_reason="stop"), "usage": None}),
    # Azure's choice-less, usage-less chunk is not the usage chunk: kept.
    ({"choices": []}, False, True, {"choices": []}),
], ids=["plain", "null-usage", "usage-chunk-dropped", "usage-null", "usage-kept",
        "finish-kept", "no-choices"])
def test_repair_chunk(chunk: dict[str, Any], include_usage: bool, kept: bool,
                      repaired: dict[str, Any] | None) -> None:
    assert repair_chunk(chunk, include_usage) is kept
    if kept:
        assert chunk == repaired


choices = st.lists(st.fixed_dictionaries(
    {"index": st.integers(0, 3)},
    optional={"delta": st.dictionaries(st.sampled_from(["content", "role"]),
                                       st.text(max_size=3)),
              "finish_reason": st.sampled_from([None, "stop", "length"])}), max_size=3)


@given(choices=choices, usage=st.none() | st.just(USAGE) | st.just(PRICED),
       include_usage=st.booleans())
def test_every_kept_chunk_has_the_usage_field_only_when_asked_and_a_finish_reason(
        choices: list[dict[str, Any]], usage: dict[str, Any] | None,
        include_usage: bool) -> None:
    chunk: dict[str, Any] = {"choices": choices}
    if usage is not None:
        chunk["usage"] = copy.deepcopy(usage)
    if not repair_chunk(chunk, include_usage):
        assert not include_usage and not choices and usage is not None
        return
    assert ("usage" in chunk) is include_usage
    assert CACHE_WRITE_TOKENS not in (chunk.get("usage") or {})
    assert all("finish_reason" in choice for choice in chunk["choices"])


def test_public_usage_leaves_the_original_to_the_record() -> None:
    kept = dict(PRICED)
    holder = {"usage": kept}
    public_usage(holder)
    assert holder["usage"] == USAGE
    assert kept == PRICED  # the attempt's record prices the cache writes from it


@pytest.mark.parametrize(("message", "repaired"), [
    ({"role": "assistant", "content": "hi"},
     {"role": "assistant", "content": "hi", "refusal": None}),
    ({"role": "assistant", "tool_calls": []},
     {"role": "assistant", "tool_calls": [], "content": None, "refusal": None}),
    ({"role": "assistant", "content": None, "refusal": "no"},
     {"role": "assistant", "content": None, "refusal": "no"}),
])
def test_repair_completion(message: dict[str, Any], repaired: dict[str, Any]) -> None:
    answer: dict[str, Any] = {"choices": [{"index": 0, "message": message,
                                           "finish_reason": "stop"}], "usage": PRICED}
    repair_completion(answer)
    assert answer["choices"][0] == {"index": 0, "message": repaired, "finish_reason": "stop",
                                    "logprobs": None}
    assert answer["usage"] == USAGE


@pytest.mark.parametrize(("usage", "tokens"), [
    (USAGE, 6), (None, None), ({"total_tokens": "6"}, None), ([], None), ({}, None)])
def test_total_tokens(usage: Any, tokens: int | None) -> None:
    assert total_tokens(usage) == tokens


@pytest.mark.parametrize(("chunk", "text"), [
    (content("a"), ["a"]),
    ({"choices": [{"index": 1, "delta": {"content": "b"}}]}, []),  # not choice 0
    ({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}, []),
    ({"choices": []}, []),
    ({}, []),
])
def test_first_choice_text(chunk: dict[str, Any], text: list[str]) -> None:
    assert first_choice_text(chunk) == text
