"""The facts the edge derives once from a chat body: one reading, one default."""

from __future__ import annotations

from typing import Any

import pytest

from tlproxy.call import ChatFacts

USER = {"role": "user", "content": "x" * 40}


@pytest.mark.parametrize(("extra", "output", "param"), [
    ({}, 0, "max_tokens"),  # no cap asked for: nothing reserved beyond the prompt
    ({"max_tokens": 300}, 300, "max_tokens"),
    ({"max_completion_tokens": 500}, 500, "max_completion_tokens"),
    # The newer parameter wins when both are sent, as OpenAI reads them.
    ({"max_tokens": 300, "max_completion_tokens": 500}, 500, "max_completion_tokens"),
    ({"max_tokens": True}, 0, "max_tokens"),  # a bool is not a count
    ({"max_tokens": "300"}, 0, "max_tokens"),
])
def test_requested_output_has_one_default(extra: dict[str, Any], output: int,
                                          param: str) -> None:
    facts = ChatFacts.of({"model": "auto", "messages": [USER], **extra})
    assert (facts.requested_output, facts.output_param) == (output, param)


@pytest.mark.parametrize(("messages", "text"), [
    ([USER, {"role": "assistant", "content": "y"}, {"role": "user", "content": "again"}],
     "again"),
    ([{"role": "user", "content": [{"type": "text", "text": "a"},
                                   {"type": "image_url", "image_url": {"url": "u"}},
                                   {"type": "text", "text": "b"}]}], "a  b"),
    ([{"role": "system", "content": "only a system prompt"}], ""),
    ([], ""),
])
def test_last_user_text(messages: list[dict[str, Any]], text: str) -> None:
    assert ChatFacts.of({"model": "auto", "messages": messages}).last_user_text == text


def test_facts_carry_the_name_the_signals_and_the_prompt_size() -> None:
    facts = ChatFacts.of({"model": "gpt-4o", "messages": [USER]},
                         {"x-tlproxy-task": "summarize"})
    assert facts.requested == "gpt-4o"
    assert (facts.signals.task, facts.signals.first_turn) == ("summarization", True)
    assert facts.prompt_tokens == facts.signals.prompt_tokens == 10
