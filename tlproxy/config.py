"""Typed configuration: the msgspec structs a TOML config file decodes into.

This module holds the types and nothing that reads them, so every other
module may import it and it imports none of the package: the rules a value
must meet beyond its type are in `config_check`, and reading a file (decoding,
resolving its secrets, running those checks) is `config_load.load_config`.

A config file is optional: with none, `catalog.default_config()` serves the
built-in simulated upstream under a catalog that mirrors the real one, so the
proxy answers at once with no provider key.

Secrets are never written in the file itself but referenced as
``${ENV_VAR}``; they are resolved once at load time and masked whenever the
config is shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

__all__ = [
    "ClassifierConfig",
    "ClientKey",
    "Config",
    "ConfigError",
    "LedgerConfig",
    "LimitsConfig",
    "ModelConfig",
    "Prices",
    "ProviderConfig",
    "ResponsesConfig",
    "ServerConfig",
    "ShadowConfig",
    "SimFault",
    "SimHabit",
    "SimModelProfile",
    "TracingConfig",
]

Tier = Literal["premium", "economy", "embedding"]
ProviderKind = Literal["openai", "anthropic", "gemini", "sim"]


class ConfigError(ValueError):
    """The config file is missing, malformed or inconsistent.

    `problems` holds each refused value as (path, message) when the error
    comes from the checks of `config_check`; the text names them all.
    """

    def __init__(self, message: str, *,
                 problems: Iterable[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or ())


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The base of every config struct.

    msgspec passes ``frozen`` down to subclasses, but type checkers read
    structs through PEP 681's ``dataclass_transform``, where each class states
    its own: so every subclass says ``frozen=True`` again, which also lets the
    checker refuse an assignment to a config field.
    """


class ServerConfig(_Strict, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    # Processes sharing the listening socket; 0 means one per CPU core.
    workers: int = 0
    # Bodies above this are refused with 413 before they are read whole.
    max_body_bytes: int = 8 * 1024 * 1024
    # Seconds hypercorn waits for in-flight streams on shutdown.
    graceful_timeout: float = 30.0
    # Seconds a client may take to send its whole request body.
    body_timeout: float = 30.0


# Habits of real upstreams the simulator can imitate, per model (see
# docs/configuration.md, `sim_models`, for what each one sends).
SimHabit = Literal[
    "azure_filter_chunk", "sse_comments", "reasoning_content", "reasoning", "refusal",
    "usage_in_x_groq", "usage_on_finish_chunk", "gzip", "error_first", "no_done", "pings",
    "overloaded", "safety_stop", "recitation_stop", "late_first_event", "audio",
]


SimFault = Literal["cut", "stall", "malformed", "error_event"]


class SimModelProfile(_Strict, frozen=True):
    """Latency and shape of one model served by the simulated upstream."""

    ttft_ms: float = 0.0
    # When set, TTFT is lognormal with median `ttft_ms` and this 99th percentile.
    ttft_p99_ms: float | None = None
    inter_token_ms: float = 0.0
    # Completion length when the request does not cap it.
    tokens: int = 24
    error_rate: float = 0.0
    embedding_dimensions: int = 256
    # Off by default: the simulator then behaves as OpenAI, Anthropic and Gemini document.
    habits: tuple[SimHabit, ...] = ()
    # A failure of every stream of this model after `fault_after` tokens: the
    # connection dropped ("cut"), silence for `fault_stall_ms` then the drop
    # ("stall"), a line that is not the protocol's JSON ("malformed"), or the
    # protocol's error event ("error_event"). None: streams end whole.
    fault: SimFault | None = None
    fault_after: int = 5
    fault_stall_ms: float = 3_600_000.0


class ProviderConfig(_Strict, frozen=True):
    kind: ProviderKind
    base_url: str | None = None
    # A literal key or a ``${ENV_VAR}`` reference (resolved at load time).
    api_key: str | None = None
    http2: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 120.0
    # Seconds a non-streamed (JSON) answer may take in all before the next
    # model is tried, for this provider's models without a `total_timeout`.
    # Such an answer sends nothing until it is complete, so `read_timeout`
    # bounds it as well: raise both for long answers.
    total_timeout: float = 120.0
    max_connections: int = 1000
    # An HTTP proxy for this provider's requests (``http://host:port``, with
    # ``user:password@`` if it asks for them; a ``${ENV_VAR}`` reference is
    # resolved at load time), or ``"none"`` to connect directly whatever the
    # environment says. Unset: HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and
    # NO_PROXY from the environment, as curl and the SDKs read them.
    proxy: str | None = None
    # For ``kind = "anthropic"``: ask for Anthropic's automatic prompt caching.
    prompt_cache: bool = False
    # For ``kind = "openai"``: the upstream serves OpenAI's Responses API, and its
    # models are called at ``/responses`` (chat and Responses clients alike).
    responses_api: bool = False
    # For ``kind = "sim"``: per upstream model id, how it behaves.
    sim_models: dict[str, SimModelProfile] = {}
    sim_seed: int = 0


class LongContextPrices(_Strict, frozen=True):
    """Prices that apply instead when the prompt is longer than `above_input_tokens`."""

    above_input_tokens: int
    input: float
    output: float
    cached_input: float | None = None
    cache_write_input: float | None = None


class Prices(_Strict, frozen=True):
    """USD per one million tokens."""

    input: float = 0.0
    # None: the provider has no cache discount; cached tokens cost `input`.
    cached_input: float | None = None
    # None: writing the prompt cache costs no more than `input`.
    cache_write_input: float | None = None
    output: float = 0.0
    long_context: LongContextPrices | None = None


class Capabilities(_Strict, frozen=True):
    tools: bool = True
    parallel_tool_calls: bool = True
    vision: bool = False
    json_schema: bool = True
    max_context: int = 128_000
    max_output: int = 16_384


class ModelConfig(_Strict, frozen=True):
    id: str
    provider: str
    tier: Tier
    upstream_model: str | None = None
    capabilities: Capabilities = Capabilities()
    prices: Prices = Prices()
    # Seconds to wait for a first token before trying another model; None
    # derives it from live statistics (4x the recent p99, at least 5 s).
    # Streams only: a JSON answer's first token is its last.
    first_token_timeout: float | None = None
    # Seconds a non-streamed (JSON) answer may take in all before trying
    # another model; None: the provider's `total_timeout`.
    total_timeout: float | None = None
    # Seconds a stream may go without a chunk after its first token before
    # it has stalled (and is continued elsewhere); None derives it from live
    # statistics per phase (see docs/reliability.md), 30 s until then.
    stall_timeout: float | None = None
    # How this model is asked to continue another model's cut answer:
    # "prefill" (the partial answer as the last assistant message, continued),
    # "instruction" (a final user turn asking to continue it), "none" (this
    # model never continues). None: the default of its provider's kind.
    continuation: Literal["prefill", "instruction", "none"] | None = None

    @property
    def upstream_id(self) -> str:
        return self.upstream_model or self.id


class Condition(_Strict, frozen=True):
    """What a rule requires; every condition given must hold (unset ones are ignored)."""

    first_turn: bool | None = None
    tools: bool | None = None
    system_only: bool | None = None
    images: bool | None = None
    json_schema: bool | None = None
    # Any of these tasks, from prompt cues, `response_format`, a task hint in
    # `metadata.task` or the `x-tlproxy-task` header.
    task: list[str] | None = None
    # Any of these tasks, from the semantic classifier (a slow signal).
    semantic_task: list[str] | None = None
    min_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None


class Rule(_Strict, frozen=True):
    name: str
    tier: Literal["premium", "economy"]
    when: Condition = Condition()


class Policy(_Strict, frozen=True):
    """Ordered rules, first match wins; `default_tier` when none matches."""

    rules: list[Rule] | None = None  # None: the built-in default rules
    default_tier: Literal["premium", "economy"] = "economy"
    # How models inside a tier are ranked: "balanced", "latency" or "cost".
    strategy: Literal["balanced", "latency", "cost"] = "balanced"
    # The race (tlproxy/race.py). Speculation: call the best model of every
    # tier still possible while slow signals are pending, at most `fanout` at once.
    speculate: bool = True
    # Tiers whose best model may be called before the decision is in. A
    # premium call speculated for a request decided economy is billed for
    # nothing, so by default only the economy tier is speculated; list both
    # for the shortest TTFT whatever the decision.
    speculate_tiers: list[Literal["premium", "economy"]] = msgspec.field(
        default_factory=lambda: ["economy"])
    fanout: int = 2
    # Attempts per request, speculation, hedges and fallbacks included.
    max_attempts: int = 4
    # Hedging: start the next model of the tier when the running one has no
    # first token after the `hedge_quantile` of its recent TTFTs (at least
    # `hedge_floor_ms`; `hedge_initial_ms` while it has no measurements).
    hedge_tiers: list[Literal["premium", "economy"]] = msgspec.field(
        default_factory=lambda: ["premium", "economy"])
    hedge_quantile: float = 0.9
    hedge_floor_ms: float = 100.0
    hedge_initial_ms: float = 1000.0
    # Tiers in which a stream whose winner fails after its first token is
    # finished by the next model of the tier (docs/reliability.md); `[]`
    # turns continuation off (per key: give the key a policy with `[]`).
    continuation_tiers: list[Literal["premium", "economy"]] = msgspec.field(
        default_factory=lambda: ["premium", "economy"])


class ClientKey(_Strict, frozen=True):
    name: str
    # ``sha256:<hex>`` of the key; the key itself is never stored.
    hash: str
    # A named policy from `policies` to use instead of the default one.
    policy: str | None = None
    # Tiers this key may use; an explicit intent above them is capped.
    allowed_tiers: list[Literal["premium", "economy"]] | None = None
    # Limits; None means unlimited.
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: Literal["day", "month"] = "month"
    # Shadow traffic for this key (overrides the rule's or the global one).
    shadow: ShadowConfig | None = None


class ShadowConfig(_Strict, frozen=True):
    """Mirror a sample of traffic to another tier or model, in the background."""

    sample_rate: float = 0.0
    # A tier ("premium" / "economy") or a catalog model id.
    target: str = "economy"
    max_concurrency: int = 8
    # Only requests decided by these rules (None: any rule).
    rules: list[str] | None = None


class ClassifierConfig(_Strict, frozen=True):
    """The semantic task classifier, a slow signal (see tlproxy/classifier.py)."""

    enabled: bool = False
    # A catalog embedding model used to embed prompts and examples.
    model: str = "text-embedding-3-small"
    # Below this cosine similarity to every example, the task is "unknown".
    min_similarity: float = 0.3
    timeout: float = 0.5
    cache_size: int = 4096
    examples: dict[str, list[str]] = msgspec.field(default_factory=lambda: _default_examples())


def _default_examples() -> dict[str, list[str]]:
    return {
        "summarization": [
            "Summarize this article in three sentences",
            "Give me the key points of the following meeting notes",
            "What are the main takeaways from this document",
            "Write a short recap of the text below",
        ],
        "extraction": [
            "Extract every date and amount from this invoice",
            "List all the company names mentioned in the following text",
            "Pull out the email addresses from this page",
            "Classify this support ticket into billing, bug or feature request",
        ],
        "code": [
            "Write a Python function that parses a CSV file",
            "Fix the bug in this JavaScript code",
            "Refactor this class to use dependency injection",
            "Why does this SQL query return duplicate rows",
        ],
        "chat": [
            "Hi, how are you today",
            "Can you help me plan a trip to Lisbon",
            "What do you think about this idea for a birthday gift",
            "Tell me a joke about cats",
        ],
    }


class LedgerConfig(_Strict, frozen=True):
    enabled: bool = True
    # SQLite file (WAL mode); relative paths are relative to the working directory.
    path: str = "tlproxy-ledger.db"
    # Or a PostgreSQL URL (postgresql://...), when several instances share one ledger.
    postgres_url: str | None = None
    batch_size: int = 256
    flush_interval: float = 0.5
    queue_size: int = 10_000


class TracingConfig(_Strict, frozen=True):
    """OpenTelemetry traces over OTLP (needs the ``tracing`` extra). Off by default.

    A value left out here falls back to the standard ``OTEL_*`` environment
    variable, then to the SDK's default; a value given here wins over both.
    """

    enabled: bool = False
    # The collector's URL: for "http", the traces URL (a bare base URL such as
    # http://collector:4318 gets /v1/traces appended); for "grpc", host:port or
    # a URL (http:// for plain text). None: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    # OTEL_EXPORTER_OTLP_ENDPOINT, then localhost.
    endpoint: str | None = None
    # "http" (OTLP/HTTP protobuf) or "grpc". None: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    # OTEL_EXPORTER_OTLP_PROTOCOL, then "http".
    protocol: Literal["http", "grpc"] | None = None
    # Headers sent with every export (a vendor's API key, as ``${ENV_VAR}``,
    # resolved at load time). None: OTEL_EXPORTER_OTLP_TRACES_HEADERS / _HEADERS.
    headers: dict[str, str] | None = None
    # The share of new traces recorded, 0 to 1; a client's traceparent's
    # sampled flag is followed whatever this says. None: OTEL_TRACES_SAMPLER
    # and OTEL_TRACES_SAMPLER_ARG, else every trace.
    sample_ratio: float | None = None
    # The `service.name` resource attribute. None: OTEL_SERVICE_NAME, the
    # service.name of OTEL_RESOURCE_ATTRIBUTES, else "tlproxy".
    service_name: str | None = None
    # Seconds one export may take, retries included; also the most a shutdown
    # waits for the last spans. None: OTEL_EXPORTER_OTLP_TRACES_TIMEOUT /
    # OTEL_EXPORTER_OTLP_TIMEOUT, else 10.
    timeout: float | None = None
    # Spans waiting for export at most; more are dropped (and counted). None:
    # OTEL_BSP_MAX_QUEUE_SIZE, else 2048.
    max_queue_size: int | None = None


class LimitsConfig(_Strict, frozen=True):
    # Shared state across workers and instances; None keeps limits in memory.
    redis_url: str | None = None
    # Without Redis, the workers of one `tlproxy serve --workers N` share their
    # limits through this SQLite file; serve makes one for each run (no need to set it).
    shared_file: str | None = None
    # When Redis is unreachable: "open" serves (and counts it), "closed" answers 503.
    on_redis_failure: Literal["open", "closed"] = "open"
    redis_timeout: float = 0.25
    max_messages: int = 2048
    max_tools: int = 128
    max_streams_per_worker: int = 10_000
    max_streams_per_key: int | None = None


class ResponsesConfig(_Strict, frozen=True):
    """`/v1/responses`: how long stored responses (``store``) are kept.

    They live in the ledger's database (its SQLite file or PostgreSQL URL);
    with the ledger disabled, or `store` false, nothing is kept and
    ``previous_response_id`` is refused.
    """

    store: bool = True
    # Days a stored response can be read or continued (OpenAI keeps them 30).
    retention_days: float = 30.0


class Config(_Strict, frozen=True):
    server: ServerConfig = ServerConfig()
    providers: dict[str, ProviderConfig] = {}
    models: list[ModelConfig] = []
    # Model names clients may send that are not in the catalog, mapped to an
    # intent or a catalog id. Names not listed here map to `default_alias`.
    aliases: dict[str, str] = {}
    default_alias: str = "auto"
    keys: list[ClientKey] = []
    policy: Policy = Policy()
    policies: dict[str, Policy] = {}
    classifier: ClassifierConfig = ClassifierConfig()
    ledger: LedgerConfig = LedgerConfig()
    limits: LimitsConfig = LimitsConfig()
    tracing: TracingConfig = TracingConfig()
    shadow: ShadowConfig | None = None
    responses: ResponsesConfig = ResponsesConfig()
    # Keys allowed on admin endpoints (``/v1/tlproxy/*``), as ``sha256:<hex>``.
    admin_keys: list[str] = []
    # SQLite file of keys made with `tlproxy keys create`; None: config keys only.
    keys_db: str | None = None

    def model(self, model_id: str) -> ModelConfig | None:
        for model in self.models:
            if model.id == model_id:
                return model
        return None
