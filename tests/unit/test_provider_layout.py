"""The adapters' public names, and the pieces they share.

`tlproxy.providers.anthropic` and `tlproxy.providers.gemini` are packages split
by concern (request, answer, adapter); what callers import from them is locked
here, so a later move cannot drop a name silently.
"""

from __future__ import annotations

import ast
import gzip
import zlib
from pathlib import Path
from types import ModuleType

import httpx2
import pytest

import tlproxy.providers
from tests.unit.adapter_support import MockPool
from tlproxy.errors import InvalidRequest
from tlproxy.providers import _envelopes, _shapes, anthropic, gemini
from tlproxy.providers._http import HTTPProvider
from tlproxy.providers.anthropic import AnthropicProvider
from tlproxy.providers.gemini import GeminiProvider
from tlproxy.providers.openai import OpenAIProvider
from tlproxy.providers.transport import Transport

# The adapters, which share one constructor (HTTPProvider's own takes no URL).
Adapter = type[OpenAIProvider | AnthropicProvider | GeminiProvider]

PUBLIC = {
    anthropic: {
        "ANTHROPIC_VERSION",
        "AnthropicProvider",
        "AnthropicStreamTranslator",
        "from_anthropic_response",
        "map_anthropic_error",
        "to_anthropic_request",
    },
    gemini: {
        "GeminiProvider",
        "GeminiStreamTranslator",
        "from_gemini_embed_response",
        "from_gemini_response",
        "map_gemini_error",
        "to_gemini_embed_request",
        "to_gemini_request",
    },
}


@pytest.mark.parametrize("module", list(PUBLIC), ids=lambda m: m.__name__)
def test_adapter_packages_export_the_names_callers_import(module: ModuleType) -> None:
    assert set(module.__all__) == PUBLIC[module]
    for name in PUBLIC[module]:
        assert getattr(module, name) is not None


@pytest.mark.parametrize(
    ("adapter", "api_key", "auth"),
    [
        (OpenAIProvider, "k", {"authorization": "Bearer k"}),
        (AnthropicProvider, "k", {"anthropic-version": "2023-06-01", "x-api-key": "k"}),
        (AnthropicProvider, "", {"anthropic-version": "2023-06-01"}),
        (GeminiProvider, "k", {"x-goog-api-key": "k"}),
        (GeminiProvider, None, {}),
        (OpenAIProvider, None, {}),
    ],
)
async def test_adapters_share_one_constructor_and_leave_out_a_missing_key(
    adapter: Adapter, api_key: str | None, auth: dict[str, str]
) -> None:
    pinged: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        pinged.append(request)
        return httpx2.Response(401)

    pool = MockPool(handler)
    transport = Transport(pool)
    provider = adapter("p", base_url="http://up/v1", api_key=api_key, transport=transport)
    assert isinstance(provider, HTTPProvider)
    assert provider.name == "p"
    assert await provider.ping()  # any answer, even 401, means the upstream is there
    assert pinged[0].url.path.endswith("/models")
    ours = ("content-type", "authorization", "anthropic-version", "x-api-key", "x-goog-api-key")
    sent = {k: v for k, v in pinged[0].headers.items() if k in ours}
    assert sent == {"content-type": "application/json", **auth}
    await provider.aclose()
    assert not pool.closed  # the caller's transport, unless owns_transport
    owned = adapter("p", base_url="http://up", api_key=None, transport=transport,
                    owns_transport=True)
    await owned.aclose()
    assert pool.closed


def test_assistant_message_content_is_null_only_beside_tool_calls() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert _envelopes.assistant_message("", []) == {
        "role": "assistant",
        "content": "",
        "refusal": None,
        "annotations": [],
    }
    with_call = _envelopes.assistant_message("", [call])
    assert with_call["content"] is None
    assert with_call["tool_calls"] == [call]


def test_chunks_carry_null_usage_only_when_usage_was_asked_for() -> None:
    plain = _envelopes.completion_chunk("id", created=1, model="m", delta={}, include_usage=False)
    asked = _envelopes.completion_chunk("id", created=1, model="m", delta={}, include_usage=True)
    assert "usage" not in plain
    assert asked["usage"] is None
    usage = _envelopes.openai_usage(prompt=3, completion=2, cached=1, reasoning=1)
    last = _envelopes.usage_chunk("id", created=1, model="m", usage=usage)
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] == 5
    assert list(last) == list(asked)  # same keys, in the same order


def test_unknown_finish_reasons_read_as_stop() -> None:
    assert _envelopes.finish_reason({"MAX_TOKENS": "length"}, "MAX_TOKENS") == "length"
    assert _envelopes.finish_reason({"MAX_TOKENS": "length"}, None) == "stop"


def test_token_counts_ignore_what_is_not_an_integer() -> None:
    assert _envelopes.count({"a": 3, "b": "4"}, "a") == 3
    assert _envelopes.count({"a": 3, "b": "4"}, "b") == 0
    assert _envelopes.count(None, "a") == 0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, None),
        ({"max_tokens": 5}, 5),
        ({"max_tokens": 5, "max_completion_tokens": 7}, 7),
    ],
)
def test_max_completion_tokens_wins_over_the_legacy_field(
    body: dict[str, int], expected: int | None
) -> None:
    assert _shapes.max_tokens(body) == expected


@pytest.mark.parametrize("value", [0, -1, True, "5", 1.5])
def test_max_tokens_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        _shapes.max_tokens({"max_tokens": value})
    assert info.value.param == "max_tokens"


@pytest.mark.parametrize(
    ("stop", "expected"),
    [(None, None), ("x", ["x"]), ([], None), (["a", 1, "b"], ["a", "b"])],
)
def test_stop_sequences(stop: object, expected: list[str] | None) -> None:
    assert _shapes.stop_sequences({"stop": stop}) == expected


STREAMS: dict[Adapter, bytes | Path] = {
    OpenAIProvider: b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
                    b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}'
                    b"\n\ndata: [DONE]\n\n",
    AnthropicProvider: (Path(__file__).parent.parent / "data/anthropic/stream_basic.sse"),
    GeminiProvider: (Path(__file__).parent.parent / "data/gemini/stream_text_legacy.sse"),
}


@pytest.mark.parametrize("adapter", list(STREAMS), ids=lambda a: a.__name__)
@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate"])
async def test_every_adapter_reads_its_stream_decoded_through_the_shared_loop(
    adapter: Adapter, encoding: str
) -> None:
    # One SSE loop for every protocol: a compressed stream is no special case.
    raw = STREAMS[adapter]
    body = raw if isinstance(raw, bytes) else raw.read_bytes()
    compress = {"identity": lambda b: b, "gzip": gzip.compress, "deflate": zlib.compress}

    def handler(request: httpx2.Request, encoded: bool = True) -> httpx2.Response:
        if not encoded:
            return httpx2.Response(200, content=body)
        content = compress[encoding](body)
        return httpx2.Response(200, headers={"content-encoding": encoding}, content=content)

    async def chunks(pool: MockPool) -> list[dict[str, object]]:
        provider = adapter("p", base_url="http://up/v1", api_key="k", transport=Transport(pool))
        async with provider.stream_chat({"messages": [{"role": "user", "content": "Hi"}]},
                                        model="m") as stream:
            # `created` is the clock's second: it may tick between the two reads.
            return [{k: v for k, v in c.items() if k != "created"} async for c in stream]

    plain = await chunks(MockPool(lambda r: handler(r, encoded=False)))
    assert plain and await chunks(MockPool(handler)) == plain


PROVIDERS = Path(tlproxy.providers.__file__).parent
HTTP_LIBRARIES = {"httpcore2", "httpx2", "httpx", "httpcore", "h2", "h11", "zlib"}


def imported(path: Path) -> set[str]:
    """Every module `path` imports, relative ones resolved from `tlproxy.providers`."""
    names: set[str] = set()
    package = ".".join(path.relative_to(PROVIDERS.parent.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize(
    "path", sorted(PROVIDERS.rglob("*.py")), ids=lambda p: str(p.relative_to(PROVIDERS))
)
def test_only_the_transport_imports_the_http_library(path: Path) -> None:
    # One boundary: the exceptions of the layers below become ours in
    # transport.map_exceptions, so nothing else may even see them.
    libraries = {name.split(".")[0] for name in imported(path)} & HTTP_LIBRARIES
    assert libraries == (HTTP_LIBRARIES & {"httpcore2", "zlib"} if path.name == "transport.py"
                         else set())


@pytest.mark.parametrize(
    "path",
    [*sorted(PROVIDERS.glob("*/answer.py")), *sorted(PROVIDERS.glob("*/request.py")),
     PROVIDERS / "_status.py", PROVIDERS / "_envelopes.py", PROVIDERS / "_shapes.py"],
    ids=lambda p: str(p.relative_to(PROVIDERS)),
)
def test_pure_modules_import_no_io(path: Path) -> None:
    io = {"tlproxy.providers._http", "tlproxy.providers.transport", "trio"}
    assert not {name for name in imported(path) if name in io or name.split(".")[0] in io}
