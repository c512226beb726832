"""The simulator continues an assistant prefill: the rest of the answer it would give."""

from __future__ import annotations

from tlproxy.config import SimModelProfile
from tlproxy.sim.plan import plan_answer

PROFILE = SimModelProfile(tokens=12)
ASK = {"role": "user", "content": "Tell me about routing"}


def test_a_prefill_of_the_answers_start_is_continued() -> None:
    whole = plan_answer({"messages": [ASK]}, PROFILE).choices[0].tokens
    prefill = {"role": "assistant", "content": "".join(whole[:5])}
    rest = plan_answer({"messages": [ASK, prefill]}, PROFILE)
    assert rest.choices[0].tokens == whole[5:]
    assert rest.completion_tokens == len(whole) - 5
    # Anthropic's prefill has no trailing whitespace; the rest is the same.
    stripped = {"role": "assistant", "content": "".join(whole[:5]).rstrip() + " "}
    assert plan_answer({"messages": [ASK, stripped]}, PROFILE).choices[0].tokens == whole[5:]


def test_an_assistant_message_that_is_not_the_answers_start_is_answered_whole() -> None:
    whole = plan_answer({"messages": [ASK]}, PROFILE).choices[0].tokens
    other = {"role": "assistant", "content": "Something else entirely"}
    assert plan_answer({"messages": [ASK, other]}, PROFILE).choices[0].tokens == whole
