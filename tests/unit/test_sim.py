from __future__ import annotations

import json

import pytest

from tlproxy import sim
from tlproxy.config import SimModelProfile
from tlproxy.sim import example_from_schema, plan_answer
from tlproxy.sim.plan import embedding_size

PROFILE = SimModelProfile(tokens=10)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(("schema", "value"), [
    ({"type": "string"}, "example"),
    ({"type": "string", "enum": ["b", "a"]}, "b"),
    ({"type": "integer", "minimum": 5}, 5),
    ({"type": "number"}, 1.5),
    ({"type": "boolean"}, True),
    ({"type": ["null", "string"]}, "example"),
    ({"type": "array", "items": {"type": "integer"}}, [1]),
    ({"type": "object", "properties": {"a": {"type": "string"}}}, {"a": "example"}),
    ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, 1),
])
def test_example_from_schema(schema: dict[str, object], value: object) -> None:
    assert example_from_schema(schema) == value


def test_same_prompt_same_answer() -> None:
    a = plan_answer({"messages": user("hello")}, PROFILE)
    b = plan_answer({"messages": user("hello")}, PROFILE)
    assert a.choices[0].tokens == b.choices[0].tokens
    assert len(a.choices[0].tokens) == 10


def test_limit_gives_length() -> None:
    plan = plan_answer({"messages": user("x"), "max_tokens": 4}, PROFILE)
    assert (len(plan.choices[0].tokens), plan.choices[0].finish_reason) == (4, "length")


def test_tools_give_calls_unless_none() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}
    plan = plan_answer({"messages": user("x"), "tools": [tool]}, PROFILE)
    _, name, args = plan.choices[0].tool_calls[0]
    assert (name, json.loads(args), plan.choices[0].finish_reason) == (
        "f", {"q": "example"}, "tool_calls")
    plan = plan_answer({"messages": user("x"), "tools": [tool], "tool_choice": "none"}, PROFILE)
    assert not plan.choices[0].tool_calls


@pytest.mark.parametrize(("text", "field", "value"), [
    ("[sim:status=429]", "fail_status", 429),
    ("please [sim:cut=2]", "cut_after", 2),
    ("[sim:stall]", "stall", True),
])
def test_markers_script_failures(text: str, field: str, value: object) -> None:
    assert getattr(plan_answer({"messages": user(text)}, PROFILE), field) == value


@pytest.mark.parametrize(("requested", "size"), [
    (None, 256),  # the model's own
    (8, 8),
    (256, 256),
    (257, None),  # longer than the model makes
    (2**62, None),
    (0, None),
    (-1, None),
    (True, None),
    (8.0, None),
    ("8", None),
])
def test_embedding_size_only_shortens_the_models_vectors(
    requested: object, size: int | None
) -> None:
    assert embedding_size(requested, SimModelProfile(embedding_dimensions=256)) == size

def test_the_sim_package_exports_the_names_callers_import() -> None:
    # Locked, so a later move inside the package cannot drop a name silently.
    assert set(sim.__all__) == {
        "Answer", "ChoicePlan", "SimRequest", "SimStats", "SimUpstream", "Simulator", "Wire",
        "embedding_vector", "example_from_schema", "plan_answer",
    }
    for name in sim.__all__:
        assert getattr(sim, name) is not None
