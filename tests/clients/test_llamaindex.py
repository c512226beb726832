"""LlamaIndex: OpenAILike and OpenAIEmbedding with only api_base (and the key) changed."""

from __future__ import annotations

import pytest

from tests.clients._support import require_clients_venv

require_clients_venv()

from llama_index.core.llms import ChatMessage  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402
from llama_index.embeddings.openai import OpenAIEmbedding  # noqa: E402
from llama_index.llms.openai_like import OpenAILike  # noqa: E402

from tests.clients._recorder import Recorder  # noqa: E402


def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"18 C and sunny in {city}"


WEATHER = FunctionTool.from_defaults(fn=get_weather)


def _llm(base_url: str, **extra: object) -> OpenAILike:
    return OpenAILike(model="auto", api_base=base_url, api_key="unused",
                      is_chat_model=True, is_function_calling_model=True, **extra)


def test_chat(base_url: str) -> None:
    reply = _llm(base_url).chat([ChatMessage(role="user", content="Hello!")])
    assert reply.message.role == "assistant"
    assert reply.message.content


def test_stream_chat(base_url: str) -> None:
    chunks = list(_llm(base_url).stream_chat([ChatMessage(role="user", content="A story")]))
    assert len(chunks) > 3
    # Each chunk carries the text so far, and the last one all of it.
    assert chunks[-1].message.content
    assert chunks[-1].message.content.startswith(chunks[1].message.content)
    assert "".join(c.delta or "" for c in chunks) == chunks[-1].message.content


def test_predict_and_call_runs_the_tool(base_url: str) -> None:
    recorder = Recorder()
    with recorder.client() as http:
        output = _llm(base_url, http_client=http).predict_and_call(
            [WEATHER], user_msg="What is the weather in Paris?")
    assert recorder.last.headers["x-tlproxy-rule"] == "tools"
    assert output.sources[0].tool_name == "get_weather"
    city = output.sources[0].raw_input["kwargs"]["city"]
    assert output.response == f"18 C and sunny in {city}"


def test_chat_with_tools_round_trip(base_url: str) -> None:
    llm = _llm(base_url)
    response = llm.chat_with_tools([WEATHER], user_msg="What is the weather in Paris?")
    calls = llm.get_tool_calls_from_response(response, error_on_no_tool_call=True)
    assert [c.tool_name for c in calls] == ["get_weather"]
    result = WEATHER(**calls[0].tool_kwargs)
    history = [
        ChatMessage(role="user", content="What is the weather in Paris?"),
        response.message,
        ChatMessage(role="tool", content=str(result),
                    additional_kwargs={"tool_call_id": calls[0].tool_id, "name": "get_weather"}),
    ]
    answer = llm.chat_with_tools([WEATHER], chat_history=history)
    assert llm.get_tool_calls_from_response(answer, error_on_no_tool_call=False) == []
    assert str(result) in answer.message.content


def test_embeddings_with_model_name(base_url: str) -> None:
    recorder = Recorder()
    with recorder.client() as http:
        embed = OpenAIEmbedding(model_name="text-embedding-3-small", api_base=base_url,
                                api_key="unused", http_client=http)
        assert len(embed.get_text_embedding("hello")) == 256
        assert [len(v) for v in embed.get_text_embedding_batch(["a", "b"])] == [256, 256]
        assert len(embed.get_query_embedding("a query")) == 256
    assert recorder.last.body["model"] == "text-embedding-3-small"
    assert recorder.last.body["encoding_format"] == "base64"  # the openai SDK's default


def test_embeddings_model_name_accepts_any_catalog_id(base_url: str) -> None:
    # `model=` is checked against OpenAI's own list of embedding models;
    # `model_name=` sends any name, e.g. a non-OpenAI model of the catalog.
    embed = OpenAIEmbedding(model_name="gemini-embedding-001", api_base=base_url,
                            api_key="unused")
    assert len(embed.get_text_embedding("hello")) == 256
    with pytest.raises(ValueError, match="gemini-embedding-001"):
        OpenAIEmbedding(model="gemini-embedding-001", api_base=base_url, api_key="unused")


def test_openai_class_refuses_intents_so_openai_like_is_needed(base_url: str) -> None:
    from llama_index.llms.openai import OpenAI

    with pytest.raises(ValueError, match="Unknown model 'auto'"):
        OpenAI(model="auto", api_base=base_url, api_key="unused").chat(
            [ChatMessage(role="user", content="Hello!")])


def test_openai_like_without_is_chat_model_calls_legacy_completions(base_url: str) -> None:
    import openai

    llm = OpenAILike(model="auto", api_base=base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="/v1/completions is not supported"):
        llm.chat([ChatMessage(role="user", content="Hello!")])
