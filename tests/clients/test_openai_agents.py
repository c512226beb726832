"""The OpenAI Agents SDK (`openai-agents`): an agent with one function tool, unchanged.

The SDK speaks the Responses API: it sends the conversation so far as input
items (its own earlier output among them: messages, function calls with
their ids and statuses), runs the tool the model called, sends the tool's
output back, and stops at the model's final message. Only the client's
`base_url` points at the proxy; tracing is off, as its export would call
OpenAI.
"""

from __future__ import annotations

import asyncio

from tests.clients._support import require_clients_venv

require_clients_venv()

import pytest  # noqa: E402

agents = pytest.importorskip("agents", reason="openai-agents is in tests/clients/requirements")

from openai import AsyncOpenAI  # noqa: E402

from tests.clients._recorder import Recorder  # noqa: E402

CALLS: list[str] = []


@agents.function_tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    CALLS.append(city)
    return f"18 C and sunny in {city}"


def agent_for(client: AsyncOpenAI) -> agents.Agent[None]:
    return agents.Agent(
        name="weather", instructions="Answer with the tool's result.", tools=[get_weather],
        model=agents.OpenAIResponsesModel(model="auto", openai_client=client))


def test_agent_runs_its_tool_and_answers(base_url: str) -> None:
    agents.set_tracing_disabled(True)
    CALLS.clear()
    recorder = Recorder()

    async def run() -> str:
        # Closed inside the loop that used it: no connection outlives the run.
        async with AsyncOpenAI(base_url=base_url, api_key="unused",
                               http_client=recorder.async_client()) as client:
            result = await agents.Runner.run(agent_for(client), "What is the weather in Oslo?")
        return str(result.final_output)

    final = asyncio.run(run())
    assert len(CALLS) == 1
    # The second model call saw the tool's output and answered with it.
    assert "18 C and sunny in" in final
    assert [(e.path, e.status) for e in recorder.exchanges] == [
        ("/v1/responses", 200), ("/v1/responses", 200)]
    # The second call carried the function call and its output, as input items.
    sent = [item.get("type") for item in recorder.exchanges[1].body["input"]]
    assert "function_call" in sent and "function_call_output" in sent
    # The tools rule sends both turns to the premium tier.
    assert [e.headers["x-tlproxy-rule"] for e in recorder.exchanges] == ["tools", "tools"]


def test_streamed_agent_run(base_url: str) -> None:
    agents.set_tracing_disabled(True)
    CALLS.clear()

    async def run() -> tuple[str, list[str]]:
        async with AsyncOpenAI(base_url=base_url, api_key="unused") as client:
            streamed = agents.Runner.run_streamed(agent_for(client), "Weather in Lima?")
            kinds = [event.type async for event in streamed.stream_events()]
        return str(streamed.final_output), kinds

    final, kinds = asyncio.run(run())
    assert len(CALLS) == 1
    assert "18 C and sunny in" in final
    assert "raw_response_event" in kinds
