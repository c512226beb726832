"""LangChain (`langchain-openai`): ChatOpenAI and OpenAIEmbeddings with only base_url changed."""

from __future__ import annotations

import asyncio

import pytest

from tests.clients._support import require_clients_venv

require_clients_venv()

from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_openai import ChatOpenAI, OpenAIEmbeddings  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from tests.clients._recorder import Recorder  # noqa: E402


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"18 C and sunny in {city}"


class Person(BaseModel):
    name: str
    age: int


def test_invoke(base_url: str) -> None:
    llm = ChatOpenAI(base_url=base_url, api_key="unused", model="auto")
    reply = llm.invoke("Hello!")
    assert isinstance(reply.content, str) and reply.content
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] > 0
    # The model that answered, as with OpenAI: here one of the premium tier.
    assert reply.response_metadata["model_name"] in {
        "claude-sonnet-4-6", "gpt-5.4", "gemini-3-pro-preview"}
    assert reply.response_metadata["finish_reason"] == "stop"


def test_async_invoke_and_stream(base_url: str) -> None:
    async def main() -> tuple[str, int]:
        llm = ChatOpenAI(base_url=base_url, api_key="unused", model="economy", stream_usage=True)
        reply = await llm.ainvoke("Hello!")
        chunks = [chunk async for chunk in llm.astream("A story")]
        return str(reply.content), sum(c.usage_metadata is not None for c in chunks)

    content, usage_chunks = asyncio.run(main())
    assert content
    assert usage_chunks == 1


def _stream(llm: ChatOpenAI, prompt: str) -> tuple[int, AIMessageChunk]:
    chunks = list(llm.stream(prompt))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    assert isinstance(whole, AIMessageChunk)
    return len(chunks), whole


def test_stream_with_stream_usage_gives_usage_metadata(base_url: str) -> None:
    recorder = Recorder()
    with recorder.client() as http:
        llm = ChatOpenAI(base_url=base_url, api_key="unused", model="auto",
                         stream_usage=True, http_client=http)
        count, whole = _stream(llm, "Tell me a story")
    assert recorder.last.body["stream_options"] == {"include_usage": True}
    assert count > 3 and isinstance(whole.content, str) and whole.content
    assert whole.usage_metadata is not None
    assert whole.usage_metadata["total_tokens"] == (
        whole.usage_metadata["input_tokens"] + whole.usage_metadata["output_tokens"])


def test_stream_without_stream_usage_has_no_usage_with_a_custom_base_url(base_url: str) -> None:
    # LangChain turns stream_usage on by itself only for api.openai.com: with any
    # other base_url it does not ask, so there is none (docs/migration.md says so).
    recorder = Recorder()
    with recorder.client() as http:
        llm = ChatOpenAI(base_url=base_url, api_key="unused", model="auto", http_client=http)
        _, whole = _stream(llm, "Tell me a story")
    assert "stream_options" not in recorder.last.body
    assert whole.usage_metadata is None


def test_bind_tools_round_trip(base_url: str) -> None:
    recorder = Recorder()
    with recorder.client() as http:
        llm = ChatOpenAI(base_url=base_url, api_key="unused", model="auto",
                         http_client=http).bind_tools([get_weather])
        messages: list = [HumanMessage("What is the weather in Paris?")]
        call = llm.invoke(messages)
        assert recorder.last.headers["x-tlproxy-rule"] == "tools"
        assert [c["name"] for c in call.tool_calls] == ["get_weather"]
        args = call.tool_calls[0]["args"]
        assert isinstance(args["city"], str)
        messages += [call, ToolMessage(get_weather.invoke(args),
                                       tool_call_id=call.tool_calls[0]["id"])]
        answer = llm.invoke(messages)
    assert answer.tool_calls == []
    assert f"18 C and sunny in {args['city']}" in answer.content


def test_with_structured_output_sends_a_json_schema(base_url: str) -> None:
    recorder = Recorder()
    with recorder.client() as http:
        llm = ChatOpenAI(base_url=base_url, api_key="unused", model="auto", http_client=http)
        person = llm.with_structured_output(Person).invoke("Ada Lovelace was 36.")
    assert isinstance(person, Person)
    assert recorder.last.body["response_format"]["type"] == "json_schema"
    # The routing policy saw it: structured output goes to the economy tier.
    assert recorder.last.headers["x-tlproxy-rule"] == "structured-output"
    assert recorder.last.headers["x-tlproxy-tier"] == "economy"


def test_embeddings_offline_with_check_embedding_ctx_length_false(base_url: str) -> None:
    embeddings = OpenAIEmbeddings(model="text-embedding-3-small", base_url=base_url,
                                  api_key="unused", check_embedding_ctx_length=False)
    vectors = embeddings.embed_documents(["first text", "second text"])
    assert [len(v) for v in vectors] == [256, 256]
    assert len(embeddings.embed_query("a query")) == 256


def test_embeddings_default_settings_need_tiktoken_encodings_from_the_internet(
    base_url: str,
) -> None:
    # By default LangChain tokenizes with tiktoken first, which downloads its
    # encoding on first use: behind a firewall (here, offline) that fails before
    # any request reaches the proxy. The fixes are in docs/migration.md.
    embeddings = OpenAIEmbeddings(model="text-embedding-3-small", base_url=base_url,
                                  api_key="unused", max_retries=0)
    with pytest.raises(Exception, match=r"openaipublic|client tests run offline"):
        embeddings.embed_documents(["first text"])


def test_use_responses_api_with_a_tool_round_trip(base_url: str) -> None:
    """`use_responses_api=True`: the same chat model over `/v1/responses`."""
    recorder = Recorder()
    with recorder.client() as http:
        llm = ChatOpenAI(base_url=base_url, api_key="unused", model="auto",
                         use_responses_api=True, http_client=http).bind_tools([get_weather])
        messages: list = [HumanMessage("What is the weather in Paris?")]
        call = llm.invoke(messages)
        assert recorder.last.path == "/v1/responses"
        assert recorder.last.headers["x-tlproxy-rule"] == "tools"
        args = call.tool_calls[0]["args"]
        messages += [call, ToolMessage(get_weather.invoke(args),
                                       tool_call_id=call.tool_calls[0]["id"])]
        answer = llm.invoke(messages)
    assert answer.tool_calls == []
    assert f"18 C and sunny in {args['city']}" in answer.text
    assert [e.path for e in recorder.exchanges] == ["/v1/responses", "/v1/responses"]
