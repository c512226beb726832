"""The sim's request conversion: Anthropic and Gemini requests into the planner's dict."""

from __future__ import annotations

from typing import Any

import pytest

from tlproxy.config import SimModelProfile
from tlproxy.providers.anthropic import to_anthropic_request
from tlproxy.providers.gemini import to_gemini_request
from tlproxy.sim import anthropic as sim_anthropic
from tlproxy.sim import gemini as sim_gemini
from tlproxy.sim import plan_answer

SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}}
TOOL = {"type": "function", "function": {"name": "f", "parameters": SCHEMA}}
OTHER = {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}}


def anthropic(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 64,
            "messages": [{"role": "user", "content": "Hi"}], **fields}


def gemini(**fields: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], **fields}


HI = {"role": "user", "content": "Hi"}

ANTHROPIC_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("plain", anthropic(), {"messages": [HI], "max_tokens": 64}),
    ("system string", anthropic(system="Be brief."),
     {"messages": [{"role": "system", "content": "Be brief."}, HI]}),
    ("system blocks", anthropic(system=[{"type": "text", "text": "A"}, {"type": "text",
                                                                        "text": "B"}]),
     {"messages": [{"role": "system", "content": "A\nB"}, HI]}),
    ("text blocks", anthropic(messages=[{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image", "source": {}},
        {"type": "text", "text": "b"}]}]),
     {"messages": [{"role": "user", "content": "a b"}]}),
    ("tools", anthropic(tools=[{"name": "f", "input_schema": SCHEMA}]),
     {"tools": [TOOL]}),
    ("tool choice any", anthropic(tool_choice={"type": "any"}), {"tool_choice": "required"}),
    ("tool choice none", anthropic(tool_choice={"type": "none"}), {"tool_choice": "none"}),
    ("tool choice named", anthropic(tool_choice={"type": "tool", "name": "f",
                                                 "disable_parallel_tool_use": True}),
     {"tool_choice": {"type": "function", "function": {"name": "f"}},
      "parallel_tool_calls": False}),
    ("stop sequences", anthropic(stop_sequences=["\n\n"]), {"stop": ["\n\n"]}),
    ("json schema", anthropic(output_config={"format": {"type": "json_schema",
                                                        "schema": SCHEMA}}),
     {"response_format": {"type": "json_schema",
                          "json_schema": {"name": "output", "schema": SCHEMA}}}),
    ("tool round trip", anthropic(messages=[
        HI,
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"q": "x"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "found"},
            {"type": "text", "text": "and?"}]},
    ]), {"messages": [
        HI,
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "f", "arguments": '{"q":"x"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "found"},
        {"role": "user", "content": "and?"},
    ]}),
]


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in ANTHROPIC_CASES],
                         ids=[c[0] for c in ANTHROPIC_CASES])
def test_anthropic_to_plan_request(body: dict[str, Any], expected: dict[str, Any]) -> None:
    out = sim_anthropic.to_plan_request(body)
    assert (out["model"], out["n"]) == ("claude-x", 1)
    assert {k: out.get(k) for k in expected} == expected


@pytest.mark.parametrize(("body", "message"), [
    ({"max_tokens": 5, "messages": [HI]}, "model"),
    (anthropic(max_tokens=None), "max_tokens"),
    (anthropic(max_tokens=0), "max_tokens"),
    (anthropic(messages=[]), "messages"),
    (anthropic(messages=[{"role": "system", "content": "x"}]), "role"),
    (anthropic(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}]), "tool_use_id"),
    (anthropic(messages=[{"role": "user", "content": [{"type": "video"}]}]), "type"),
])
def test_anthropic_refusals(body: dict[str, Any], message: str) -> None:
    with pytest.raises(sim_anthropic.WireError, match=message):
        sim_anthropic.to_plan_request(body)


GEMINI_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("plain", gemini(), {"messages": [HI]}),
    ("role omitted", {"contents": [{"parts": [{"text": "Hi"}]}]}, {"messages": [HI]}),
    ("system", gemini(systemInstruction={"parts": [{"text": "Be brief."}]}),
     {"messages": [{"role": "system", "content": "Be brief."}, HI]}),
    ("thoughts skipped", gemini(contents=[
        HI | {"parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "hmm", "thought": True}, {"text": "Hello"}]},
    ]), {"messages": [HI, {"role": "assistant", "content": "Hello"}]}),
    ("declarations", gemini(tools=[{"functionDeclarations": [
        {"name": "f", "parametersJsonSchema": SCHEMA}, {"name": "g",
                                                        "parameters": {"type": "object"}}]}]),
     {"tools": [TOOL, OTHER]}),
    ("mode none", gemini(toolConfig={"functionCallingConfig": {"mode": "NONE"}}),
     {"tool_choice": "none"}),
    ("allowed names", gemini(
        tools=[{"functionDeclarations": [{"name": "f", "parametersJsonSchema": SCHEMA},
                                         {"name": "g", "parameters": {"type": "object"}}]}],
        toolConfig={"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}),
     {"tools": [TOOL], "tool_choice": "required"}),
    ("generation config", gemini(generationConfig={"maxOutputTokens": 7,
                                                   "stopSequences": ["."]}),
     {"max_tokens": 7, "stop": ["."]}),
    ("json schema", gemini(generationConfig={"responseMimeType": "application/json",
                                             "responseJsonSchema": SCHEMA}),
     {"response_format": {"type": "json_schema",
                          "json_schema": {"name": "output", "schema": SCHEMA}}}),
    ("json object", gemini(generationConfig={"responseMimeType": "application/json"}),
     {"response_format": {"type": "json_object"}}),
    ("function round trip", gemini(contents=[
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"q": "x"}},
                                     "thoughtSignature": "sig"}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f",
                                                         "response": {"output": "found"}}}]},
    ]), {"messages": [
        HI,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1_0", "type": "function",
             "function": {"name": "f", "arguments": '{"q":"x"}'}}]},
        {"role": "tool", "tool_call_id": "call_f", "content": "found"},
    ]}),
]


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in GEMINI_CASES],
                         ids=[c[0] for c in GEMINI_CASES])
def test_gemini_to_plan_request(body: dict[str, Any], expected: dict[str, Any]) -> None:
    out = sim_gemini.to_plan_request(body, model="gemini-x")
    assert (out["model"], out["n"]) == ("gemini-x", 1)
    assert {k: out.get(k) for k in expected} == expected


@pytest.mark.parametrize(("body", "message"), [
    ({}, "contents"),
    (gemini(contents=[{"role": "system", "parts": [{"text": "x"}]}]), "role"),
    (gemini(contents=[{"role": "user", "parts": []}]), "parts"),
    (gemini(contents=[{"role": "user", "parts": [
        {"functionResponse": {"name": "f", "response": {}}}]}]), "function response"),
])
def test_gemini_refusals(body: dict[str, Any], message: str) -> None:
    with pytest.raises(sim_gemini.WireError, match=message):
        sim_gemini.to_plan_request(body, model="gemini-x")


@pytest.mark.parametrize(("path", "headers", "gemini_path"), [
    ("/v1beta/models/gemini-2.5-flash:generateContent", {}, True),
    ("/v1/models/gemini-2.5-flash:streamGenerateContent", {}, True),
    ("/v1beta/models", {}, True),
    ("/v1/models", {"x-goog-api-key": "k"}, True),
    ("/v1/models", {}, False),
    ("/v1/chat/completions", {}, False),
])
def test_gemini_paths(path: str, headers: dict[str, str], gemini_path: bool) -> None:
    assert sim_gemini.handles(path, headers) is gemini_path


# What real clients send, through each adapter's own translation and back:
# the sim must plan the same answer as for the OpenAI request itself.
OPENAI_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {"messages": [{"role": "user", "content": "Hello there"}]}),
    ("system", {"messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Hello"}]}),
    ("limit", {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}),
    ("stop", {"messages": [{"role": "user", "content": "Hello"}], "stop": ["e"]}),
    ("tools", {"messages": [{"role": "user", "content": "Look"}], "tools": [TOOL, OTHER]}),
    ("named tool", {"messages": [{"role": "user", "content": "Look"}], "tools": [TOOL, OTHER],
                    "tool_choice": {"type": "function", "function": {"name": "g"}}}),
    ("no tools", {"messages": [{"role": "user", "content": "Look"}], "tools": [TOOL],
                  "tool_choice": "none"}),
    ("json schema", {"messages": [{"role": "user", "content": "A"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}}),
    ("tool result", {"tools": [TOOL], "messages": [
        {"role": "user", "content": "Look"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f",
                                                              "arguments": '{"q":"x"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"}]}),
]


@pytest.mark.parametrize("request_body", [r[1] for r in OPENAI_REQUESTS],
                         ids=[r[0] for r in OPENAI_REQUESTS])
@pytest.mark.parametrize("protocol", ["anthropic", "gemini"])
def test_adapter_translation_plans_the_same_answer(
    request_body: dict[str, Any], protocol: str
) -> None:
    profile = SimModelProfile(tokens=10)
    if protocol == "anthropic":
        native = to_anthropic_request(request_body, model="m", stream=False)
        converted = sim_anthropic.to_plan_request(native)
    else:
        native = to_gemini_request(request_body, model="m")
        converted = sim_gemini.to_plan_request(native, model="m")
    assert plan_answer(converted, profile).choices == plan_answer(request_body, profile).choices
