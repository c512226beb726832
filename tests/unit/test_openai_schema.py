"""Sanity checks for tests/openai_schema.py and the vendored OpenAI schemas.

The "good" payloads are the examples from OpenAI's API reference (the ``x-oaiMeta``
examples of the vendored spec: chat completion object, chunk object, embeddings and
models list responses) plus the documented error envelope and the final
``stream_options.include_usage`` chunk. If one of them stops validating, the helper's
OpenAPI -> JSON Schema conversion is wrong, not the example.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from tests.openai_schema import _registry, schema_names, source, validate

CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! How can I assist you today?",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 10,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}

CHUNK_ROLE = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ],
    "obfuscation": "r4N7vQ2m",
}

CHUNK_CONTENT: dict[str, Any] = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [
        {"index": 0, "delta": {"content": "Hello"}, "logprobs": None, "finish_reason": None}
    ],
}

CHUNK_STOP = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
    "obfuscation": "",
}

# With stream_options={"include_usage": true}: every chunk carries "usage": null and one
# extra last chunk has an empty choices list and the totals.
CHUNK_WITH_NULL_USAGE = {**CHUNK_CONTENT, "usage": None}
CHUNK_USAGE = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 12,
        "total_tokens": 21,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
}

EMBEDDINGS = {
    "object": "list",
    "data": [
        {
            "object": "embedding",
            "embedding": [0.0023064255, -0.009327292, -0.0028842222],
            "index": 0,
        }
    ],
    "model": "text-embedding-ada-002",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}

MODELS = {
    "object": "list",
    "data": [
        {
            "id": "model-id-0",
            "object": "model",
            "created": 1686935002,
            "owned_by": "organization-owner",
            "shutdown_date": None,
        },
        {
            "id": "model-id-2",
            "object": "model",
            "created": 1686935002,
            "owned_by": "openai",
            "shutdown_date": "2026-10-23",
        },
        # shutdown_date is optional
        {"id": "gpt-4o-mini", "object": "model", "created": 1686935002, "owned_by": "system"},
    ],
}

MODEL = {
    "id": "VAR_chat_model_id",
    "object": "model",
    "created": 1686935002,
    "owned_by": "openai",
    "shutdown_date": "2026-10-23",
}

ERROR = {
    "error": {
        "message": "Incorrect API key provided: sk-abc. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


@pytest.mark.parametrize(
    ("schema_name", "instance"),
    [
        ("CreateChatCompletionResponse", CHAT_COMPLETION),
        ("CreateChatCompletionStreamResponse", CHUNK_ROLE),
        ("CreateChatCompletionStreamResponse", CHUNK_CONTENT),
        ("CreateChatCompletionStreamResponse", CHUNK_STOP),
        ("CreateChatCompletionStreamResponse", CHUNK_WITH_NULL_USAGE),
        ("CreateChatCompletionStreamResponse", CHUNK_USAGE),
        ("CreateEmbeddingResponse", EMBEDDINGS),
        ("ListModelsResponse", MODELS),
        ("Model", MODEL),
        ("ErrorResponse", ERROR),
    ],
    ids=[
        "chat.completion",
        "chunk-role",
        "chunk-content",
        "chunk-stop",
        "chunk-null-usage",
        "chunk-final-usage",
        "embeddings",
        "models-list",
        "model",
        "error",
    ],
)
def test_reference_examples_validate(schema_name: str, instance: dict[str, Any]) -> None:
    validate(schema_name, instance)


def test_tool_call_response_validates() -> None:
    response = copy.deepcopy(CHAT_COMPLETION)
    choice = response["choices"][0]
    choice["finish_reason"] = "tool_calls"
    choice["message"] = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_abc123",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    validate("CreateChatCompletionResponse", response)


def test_logprobs_validate() -> None:
    token = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}
    response = copy.deepcopy(CHAT_COMPLETION)
    response["choices"][0]["logprobs"] = {"content": [token], "refusal": None}
    validate("CreateChatCompletionResponse", response)
    chunk = copy.deepcopy(CHUNK_CONTENT)
    chunk["choices"][0]["logprobs"] = {"content": [token], "refusal": None}
    validate("CreateChatCompletionStreamResponse", chunk)


def _without(instance: dict[str, Any], dotted: str) -> dict[str, Any]:
    instance = copy.deepcopy(instance)
    *parents, last = dotted.split(".")
    node: Any = instance  # dicts and lists along the path
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    del node[last]
    return instance


def _with(instance: dict[str, Any], dotted: str, value: object) -> dict[str, Any]:
    instance = copy.deepcopy(instance)
    *parents, last = dotted.split(".")
    node: Any = instance  # dicts and lists along the path
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[last] = value
    return instance


@pytest.mark.parametrize(
    ("schema_name", "instance", "expected"),
    [
        (
            "CreateChatCompletionResponse",
            _without(CHAT_COMPLETION, "choices"),
            r"'choices' is a required property",
        ),
        (
            "CreateChatCompletionResponse",
            _with(CHAT_COMPLETION, "choices.0.finish_reason", "bogus"),
            r"\$\.choices\[0\]\.finish_reason: 'bogus' is not one of",
        ),
        (
            "CreateChatCompletionResponse",
            _with(CHAT_COMPLETION, "object", "chat.completion.chunk"),
            r"\$\.object: 'chat\.completion\.chunk' is not one of \['chat\.completion'\]",
        ),
        (
            # finish_reason is nullable only in chunks
            "CreateChatCompletionResponse",
            _with(CHAT_COMPLETION, "choices.0.finish_reason", None),
            r"\$\.choices\[0\]\.finish_reason: None is not one of",
        ),
        (
            "CreateChatCompletionResponse",
            _without(CHAT_COMPLETION, "choices.0.logprobs"),
            r"'logprobs' is a required property",
        ),
        (
            "CreateChatCompletionResponse",
            _without(CHAT_COMPLETION, "choices.0.message.refusal"),
            r"'refusal' is a required property",
        ),
        (
            "CreateChatCompletionStreamResponse",
            _without(CHUNK_CONTENT, "choices"),
            r"'choices' is a required property",
        ),
        (
            "CreateChatCompletionStreamResponse",
            _with(CHUNK_CONTENT, "choices.0.finish_reason", "bogus"),
            r"\$\.choices\[0\]\.finish_reason: 'bogus' is not one of",
        ),
        (
            "CreateChatCompletionStreamResponse",
            _without(CHUNK_CONTENT, "choices.0.finish_reason"),
            r"'finish_reason' is a required property",
        ),
        (
            "CreateChatCompletionStreamResponse",
            _with(CHUNK_CONTENT, "object", "chat.completion"),
            r"\$\.object: 'chat\.completion' is not one of \['chat\.completion\.chunk'\]",
        ),
        (
            "CreateChatCompletionStreamResponse",
            _with(CHUNK_USAGE, "usage", {"prompt_tokens": 9}),
            r"\$\.usage: .*'completion_tokens' is a required property",
        ),
        (
            "CreateEmbeddingResponse",
            _without(EMBEDDINGS, "usage"),
            r"'usage' is a required property",
        ),
        (
            "CreateEmbeddingResponse",
            _with(EMBEDDINGS, "data.0.object", "list"),
            r"\$\.data\[0\]\.object: 'list' is not one of \['embedding'\]",
        ),
        (
            "ListModelsResponse",
            _without(MODELS, "data.0.owned_by"),
            r"\$\.data\[0\]: 'owned_by' is a required property",
        ),
        ("ListModelsResponse", _with(MODELS, "object", "models"), r"'models' is not one of"),
        ("Model", _without(MODEL, "created"), r"'created' is a required property"),
        (
            "ErrorResponse",
            _without(ERROR, "error.param"),
            r"\$\.error: 'param' is a required property",
        ),
        ("ErrorResponse", {"detail": "Not Found"}, r"'error' is a required property"),
    ],
)
def test_broken_payloads_are_rejected(
    schema_name: str, instance: dict[str, Any], expected: str
) -> None:
    with pytest.raises(jsonschema.ValidationError) as excinfo:
        validate(schema_name, instance)
    message = str(excinfo.value)
    assert schema_name in message
    assert re.search(expected, message, re.DOTALL), message


def test_error_is_readable_and_located() -> None:
    broken = _with(CHAT_COMPLETION, "choices.0.finish_reason", "bogus")
    with pytest.raises(jsonschema.ValidationError) as excinfo:
        validate("CreateChatCompletionResponse", broken)
    error = excinfo.value
    assert list(error.absolute_path) == ["choices", 0, "finish_reason"]
    assert error.instance == "bogus"
    # str() is the summary only, not a dump of the (long, described) schema
    assert "description" not in str(error)


def test_unknown_schema_name() -> None:
    with pytest.raises(KeyError, match="CreateChatCompletionResponse"):
        validate("NoSuchSchema", {})


def test_vendored_data_has_provenance_and_roots() -> None:
    src = source()
    assert src["repository"] == "openai/openai-openapi"
    assert re.fullmatch(r"[0-9a-f]{40}", src["commit"])
    assert src["path"] and src["commit_date"]
    names = set(schema_names())
    assert set(src["roots"]) <= names
    # Every vendored schema converts to a valid Draft 2020-12 schema (checked on load).
    _registry()


def test_no_openapi_only_keywords_survive_conversion() -> None:
    document = _registry().contents("urn:openai-openapi:components")

    def keywords(node: object, in_map: bool = False) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if not in_map:
                    yield key
                if key in ("enum", "const", "default", "required", "examples"):
                    continue
                yield from keywords(value, in_map=key in ("properties", "schemas"))
        elif isinstance(node, list):
            for value in node:
                yield from keywords(value)

    found = set(keywords(document["components"]["schemas"], in_map=True))
    assert not {"nullable", "discriminator", "$recursiveAnchor", "$recursiveRef"} & found
    assert not {k for k in found if k.startswith("x-")}


def test_a_recursive_schema_checks_its_nested_levels() -> None:
    """``$recursiveRef: "#"`` became a ``$ref`` to its own schema: nested levels are checked."""
    validate("CompoundFilter", {"type": "and", "filters": [{"type": "or", "filters": []}]})
    with pytest.raises(jsonschema.ValidationError):
        validate("CompoundFilter", {"type": "and", "filters": [{"type": "xor", "filters": []}]})
