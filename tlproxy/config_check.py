"""Everything the proxy would refuse about a config, found before it starts.

Types alone (the msgspec structs in `config.py`) cannot say that a port is
below 65536, that an admin key is a ``sha256:`` digest and not the key
itself, that a Redis URL has a scheme, or that an alias names a model that
exists. A value like that used to pass the checker and fail later, in
`create_app` (a `ValueError` from ``bytes.fromhex``), in a background task
(a traceback at start), or on every request (a 500 or a 503).

`problems` is the one list of those rules. `config_load.load_config` runs it, so
``tlproxy config check`` and ``tlproxy serve`` refuse exactly the same
files, each problem named by its path (and, from a file, its line); a
config built in code is checked by `validate`. It reports every problem at
once, never echoes a value that may be a secret, and reads nothing but, for a
server about to start (`serving`), the directories the ledger and the key
store will write in.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from .catalog import INTENTS, normalize
from .config import (
    ClassifierConfig,
    ClientKey,
    Config,
    ConfigError,
    LedgerConfig,
    LimitsConfig,
    ModelConfig,
    Policy,
    ProviderConfig,
    ResponsesConfig,
    ServerConfig,
    ShadowConfig,
    TracingConfig,
)
from .policy import DEFAULT_RULES

__all__ = ["Problem", "key_path", "key_problems", "problems", "validate"]

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
_BARE = re.compile(r"[A-Za-z0-9_-]+")
_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
_POSTGRES_SCHEMES = ("postgresql", "postgres")
# Rule names the router itself gives (see router.py), besides those of policies.
_BUILT_IN_RULES = ("default", "pinned", "alias", "default-alias", "intent:premium",
                   "intent:economy")


class Problem(NamedTuple):
    """One refused value: where it is (``models[2].tier``) and why."""

    path: str
    message: str


def key_path(*parts: str) -> str:
    """A dotted path, quoting keys TOML would quote (``aliases."gpt-4.1"``)."""
    return ".".join(p if _BARE.fullmatch(p) else '"' + p.replace('"', '\\"') + '"'
                    for p in parts)


def validate(config: Config, *, serving: bool = False) -> None:
    """Raise `ConfigError` listing every problem of `config` (paths only, no lines)."""
    found = problems(config, serving=serving)
    if found:
        raise ConfigError("\n".join(f"{p.path}: {p.message}" for p in found), problems=found)


def problems(config: Config, *, serving: bool = False) -> list[Problem]:
    """Every value of `config` that the proxy would refuse, fail on, or never use as meant.

    With `serving`, also what only a server about to start needs: a model
    to route to, and the ledger's and the key store's files can be created
    here. `serve` and `config check` ask that; a command that only reads the
    config to find a file (``tlproxy report``) does not.
    """
    found = [
        *_server(config.server),
        *_providers(config),
        *_models(config),
        *_names(config),
        *_keys(config),
        *_policies(config),
        *_shadow("shadow", config.shadow, config),
        *_classifier(config.classifier, config),
        *_ledger(config.ledger),
        *_responses(config.responses),
        *_limits(config.limits),
        *_admin_keys(config.admin_keys),
        *_tracing(config.tracing),
    ]
    if serving:
        if not config.models:
            found.append(Problem("models", "the config defines no model, so every request "
                                 "would fail (without a config file the proxy serves its "
                                 "built-in simulated upstream)"))
        ledger = config.ledger
        if ledger.enabled and not ledger.postgres_url:
            found.extend(_writable("ledger.path", ledger.path, make_parents=False))
        found.extend(_writable("keys_db", config.keys_db, make_parents=True))
    return found


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


# The comparisons are written so that NaN (TOML's `nan`) fails each of them.
def _at_least(path: str, value: float | None, low: float, what: str = "") -> Iterator[Problem]:
    if value is not None and not value >= low:
        yield Problem(path, f"must be at least {_number(low)}{what}, not {_number(value)}")


def _positive(path: str, value: float | None) -> Iterator[Problem]:
    if value is not None and not value > 0:
        yield Problem(path, f"must be more than 0 seconds, not {_number(value)}")


def _fraction(path: str, value: float) -> Iterator[Problem]:
    if not 0.0 <= value <= 1.0:
        yield Problem(path, f"must be between 0 and 1, not {_number(value)}")


def _server(server: ServerConfig) -> Iterator[Problem]:
    if not _valid_host(server.host):
        yield Problem("server.host", f"{server.host!r} is neither an IP address nor a host name")
    if not 0 <= server.port <= 65535:
        yield Problem("server.port", f"must be between 0 and 65535, not {server.port}")
    yield from _at_least("server.workers", server.workers, 0, " (0: one per CPU core)")
    yield from _at_least("server.max_body_bytes", server.max_body_bytes, 1)
    yield from _at_least("server.graceful_timeout", server.graceful_timeout, 0)
    yield from _positive("server.body_timeout", server.body_timeout)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return bool(_HOSTNAME.fullmatch(host)) and len(host) <= 253


def _url(path: str, url: str, schemes: tuple[str, ...]) -> Iterator[Problem]:
    """A URL the proxy can connect to; the message never repeats it (it may hold a password)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        yield Problem(path, f"not a valid URL ({exc})")
        return
    listed = ", ".join(f"{s}://" for s in schemes)
    if parts.scheme not in schemes:
        yield Problem(path, f"the URL must start with {listed}")
    elif not parts.hostname and parts.scheme != "unix":
        yield Problem(path, "the URL names no host")


def _providers(config: Config) -> Iterator[Problem]:
    for name, provider in config.providers.items():
        here = key_path("providers", name)
        yield from _provider(here, provider)


def _provider(here: str, provider: ProviderConfig) -> Iterator[Problem]:
    if provider.base_url:
        yield from _url(f"{here}.base_url", provider.base_url, ("http", "https"))
    elif provider.kind != "sim":
        yield Problem(f"{here}.base_url", f"required for kind {provider.kind!r}")
    if provider.proxy is not None and provider.proxy != "none":
        yield from _url(f"{here}.proxy", provider.proxy, ("http", "https"))
    if provider.prompt_cache and provider.kind != "anthropic":
        yield Problem(f"{here}.prompt_cache", "only for kind 'anthropic' (OpenAI and Gemini "
                      "cache prompt prefixes without being asked)")
    if provider.responses_api and provider.kind != "openai":
        yield Problem(f"{here}.responses_api", "only for kind 'openai' (OpenAI's own "
                      "/v1/responses; other kinds are translated from chat)")
    yield from _positive(f"{here}.connect_timeout", provider.connect_timeout)
    yield from _positive(f"{here}.read_timeout", provider.read_timeout)
    yield from _positive(f"{here}.total_timeout", provider.total_timeout)
    yield from _at_least(f"{here}.max_connections", provider.max_connections, 1)
    for model, profile in provider.sim_models.items():
        at = f"{here}.{key_path('sim_models', model)}"
        for field in ("ttft_ms", "inter_token_ms"):
            yield from _at_least(f"{at}.{field}", getattr(profile, field), 0)
        if profile.ttft_p99_ms is not None and profile.ttft_p99_ms < profile.ttft_ms:
            yield Problem(f"{at}.ttft_p99_ms", "must be at least ttft_ms (it is the 99th "
                          "percentile of a distribution whose median is ttft_ms)")
        yield from _at_least(f"{at}.tokens", profile.tokens, 1)
        yield from _fraction(f"{at}.error_rate", profile.error_rate)
        yield from _at_least(f"{at}.embedding_dimensions", profile.embedding_dimensions, 1)
        yield from _at_least(f"{at}.fault_after", profile.fault_after, 0)
        yield from _at_least(f"{at}.fault_stall_ms", profile.fault_stall_ms, 0)


def _models(config: Config) -> Iterator[Problem]:
    seen: set[str] = set()
    for index, model in enumerate(config.models):
        here = f"models[{index}]"
        if not model.id:
            yield Problem(f"{here}.id", "must not be empty")
        elif normalize(model.id) in INTENTS:
            yield Problem(f"{here}.id", f"{model.id!r} is an intent; a model cannot be "
                          "named like one")
        elif normalize(model.id) in seen:
            yield Problem(f"{here}.id", f"duplicate model id {model.id!r} (ids are matched "
                          "without regard to case)")
        seen.add(normalize(model.id))
        if model.provider not in config.providers:
            yield Problem(f"{here}.provider", f"no provider named {model.provider!r}")
        if model.upstream_model is not None and not model.upstream_model:
            yield Problem(f"{here}.upstream_model", "must not be empty (leave it out to use id)")
        yield from _model_numbers(here, model)


def _model_numbers(here: str, model: ModelConfig) -> Iterator[Problem]:
    caps = model.capabilities
    yield from _at_least(f"{here}.capabilities.max_context", caps.max_context, 1)
    # Embedding models produce no tokens (the example catalog writes 0).
    yield from _at_least(f"{here}.capabilities.max_output", caps.max_output,
                         0 if model.tier == "embedding" else 1)
    prices = model.prices
    for field in ("input", "cached_input", "cache_write_input", "output"):
        yield from _at_least(f"{here}.prices.{field}", getattr(prices, field), 0)
    if prices.long_context is not None:
        long = prices.long_context
        yield from _at_least(f"{here}.prices.long_context.above_input_tokens",
                             long.above_input_tokens, 1)
        for field in ("input", "cached_input", "cache_write_input", "output"):
            yield from _at_least(f"{here}.prices.long_context.{field}",
                                 getattr(long, field), 0)
    yield from _positive(f"{here}.first_token_timeout", model.first_token_timeout)
    yield from _positive(f"{here}.total_timeout", model.total_timeout)
    yield from _positive(f"{here}.stall_timeout", model.stall_timeout)


def _names(config: Config) -> Iterator[Problem]:
    """Aliases and the default alias name an intent or a chat model of the catalog."""
    chat = {m.id for m in config.models if m.tier != "embedding"}
    embedding = {m.id for m in config.models if m.tier == "embedding"}

    def target_problem(target: str) -> str | None:
        if target in INTENTS or target in chat:
            return None
        if target in embedding:
            return f"{target!r} is an embedding model; chat requests cannot go there"
        return f"{target!r} is neither an intent nor a model id"

    names = {normalize(m.id) for m in config.models}
    aliases: set[str] = set()
    for alias, target in config.aliases.items():
        problem = target_problem(target)
        folded = normalize(alias)
        if folded in INTENTS or folded in names:
            problem = (f"{alias!r} is {'an intent' if folded in INTENTS else 'a model id'} "
                       "already (names are matched without regard to case): the alias would "
                       "never apply")
        elif folded in aliases:
            problem = f"{alias!r} is listed twice (names are matched without regard to case)"
        aliases.add(folded)
        if problem:
            yield Problem(key_path("aliases", alias), problem)
    problem = target_problem(config.default_alias)
    if problem:
        yield Problem("default_alias", problem)


def _keys(config: Config) -> Iterator[Problem]:
    names: set[str] = set()
    for index, key in enumerate(config.keys):
        here = f"keys[{index}]"
        if key.name in names:
            yield Problem(f"{here}.name", f"duplicate key name {key.name!r}")
        names.add(key.name)
        yield from key_problems(key, config, here)
        if not _SHA256.fullmatch(key.hash):
            yield Problem(f"{here}.hash", "expected 'sha256:' and 64 lowercase hex digits "
                          "(the SHA-256 of the key, never the key itself)")


def key_problems(key: ClientKey, config: Config, here: str = "") -> list[Problem]:
    """What makes a client key unusable under `config`, its hash aside.

    The same rules hold for ``[[keys]]`` in the config, for `tlproxy keys
    create` (before a key is stored) and for a stored key that the config
    changed under (its policy removed): a key that passes works on every
    request, one that does not is refused whole, never with a 500.
    """
    def at(field: str) -> str:
        return f"{here}.{field}" if here else field

    found: list[Problem] = []
    if not key.name:
        found.append(Problem(at("name"), "must not be empty"))
    for limit in ("rpm", "tpm"):
        found.extend(_at_least(at(limit), getattr(key, limit), 1, " (leave it out for no limit)"))
    if key.budget_usd is not None and not key.budget_usd > 0:
        found.append(Problem(at("budget_usd"), "must be more than 0 (leave it out for no "
                             f"budget), not {_number(key.budget_usd)}"))
    if key.budget_period not in ("day", "month"):
        found.append(Problem(at("budget_period"), f"{key.budget_period!r} is not 'day' or "
                             "'month'"))
    if key.allowed_tiers is not None:
        if not key.allowed_tiers:
            found.append(Problem(at("allowed_tiers"), "empty; leave it out to allow all"))
        for tier in key.allowed_tiers:
            if tier not in ("premium", "economy"):
                found.append(Problem(at("allowed_tiers"), f"{tier!r} is not a tier (premium, "
                                     "economy)"))
    if key.policy is not None and key.policy not in config.policies:
        found.append(Problem(at("policy"), f"no policy named {key.policy!r}"
                             + _known(config.policies)))
    found.extend(_shadow(at("shadow"), key.shadow, config))
    return found


def _known(names: Iterable[str]) -> str:
    listed = ", ".join(repr(n) for n in names)
    return f" (there are: {listed})" if listed else " (the config defines none)"


def _policies(config: Config) -> Iterator[Problem]:
    labels = set(config.classifier.examples)
    for here, policy in [("policy", config.policy),
                         *((key_path("policies", n), p) for n, p in config.policies.items())]:
        yield from _policy(here, policy, labels)


def _policy(here: str, policy: Policy, labels: set[str]) -> Iterator[Problem]:
    yield from _at_least(f"{here}.fanout", policy.fanout, 1)
    yield from _at_least(f"{here}.max_attempts", policy.max_attempts, 1)
    if not 0.0 < policy.hedge_quantile < 1.0:
        yield Problem(f"{here}.hedge_quantile", f"must be between 0 and 1 (exclusive), not "
                      f"{_number(policy.hedge_quantile)}")
    yield from _at_least(f"{here}.hedge_floor_ms", policy.hedge_floor_ms, 0)
    yield from _at_least(f"{here}.hedge_initial_ms", policy.hedge_initial_ms, 0)
    for index, rule in enumerate(policy.rules or ()):
        at = f"{here}.rules[{index}]"
        if not rule.name:
            yield Problem(f"{at}.name", "must not be empty")
        when = rule.when
        yield from _at_least(f"{at}.when.min_prompt_tokens", when.min_prompt_tokens, 0)
        yield from _at_least(f"{at}.when.max_prompt_tokens", when.max_prompt_tokens, 0)
        if (when.min_prompt_tokens is not None and when.max_prompt_tokens is not None
                and when.min_prompt_tokens > when.max_prompt_tokens):
            yield Problem(f"{at}.when", "min_prompt_tokens is above max_prompt_tokens: the "
                          "rule can never match")
        for label in when.semantic_task or ():
            if label not in labels:
                yield Problem(f"{at}.when.semantic_task", f"{label!r} is not a label of "
                              f"[classifier.examples]{_known(sorted(labels))}")


def _rule_names(config: Config) -> set[str]:
    names = {*_BUILT_IN_RULES, *(r.name for r in DEFAULT_RULES)}
    for policy in (config.policy, *config.policies.values()):
        names.update(r.name for r in policy.rules or ())
    return names


def _shadow(here: str, shadow: ShadowConfig | None, config: Config) -> Iterator[Problem]:
    if shadow is None:
        return
    yield from _fraction(f"{here}.sample_rate", shadow.sample_rate)
    yield from _at_least(f"{here}.max_concurrency", shadow.max_concurrency, 1)
    chat = [m.id for m in config.models if m.tier != "embedding"]
    if shadow.target not in ("premium", "economy") and shadow.target not in chat:
        yield Problem(f"{here}.target", f"{shadow.target!r} is neither a tier (premium, "
                      "economy) nor a chat model id of the catalog")
    known = _rule_names(config)
    for name in shadow.rules or ():
        if name not in known:
            yield Problem(f"{here}.rules", f"no rule named {name!r} in any policy")


def _classifier(classifier: ClassifierConfig, config: Config) -> Iterator[Problem]:
    if not classifier.enabled:
        return
    model = config.model(classifier.model)
    if model is None or model.tier != "embedding":
        embedding = [m.id for m in config.models if m.tier == "embedding"]
        yield Problem("classifier.model", f"{classifier.model!r} is not an embedding model "
                      f"of the catalog{_known(embedding)}")
    if not -1.0 <= classifier.min_similarity <= 1.0:
        yield Problem("classifier.min_similarity", "a cosine similarity: between -1 and 1, "
                      f"not {_number(classifier.min_similarity)}")
    yield from _positive("classifier.timeout", classifier.timeout)
    yield from _at_least("classifier.cache_size", classifier.cache_size, 0)
    if not any(classifier.examples.values()):
        yield Problem("classifier.examples", "the classifier needs at least one example")


def _responses(responses: ResponsesConfig) -> Iterator[Problem]:
    if not responses.retention_days > 0:
        yield Problem("responses.retention_days",
                      f"must be more than 0 days, not {_number(responses.retention_days)}")


def _ledger(ledger: LedgerConfig) -> Iterator[Problem]:
    if not ledger.enabled:
        return
    yield from _at_least("ledger.batch_size", ledger.batch_size, 1)
    yield from _positive("ledger.flush_interval", ledger.flush_interval)
    yield from _at_least("ledger.queue_size", ledger.queue_size, 1)
    if ledger.postgres_url:
        yield from _url("ledger.postgres_url", ledger.postgres_url, _POSTGRES_SCHEMES)
    elif not ledger.path:
        yield Problem("ledger.path", "must not be empty")


def _limits(limits: LimitsConfig) -> Iterator[Problem]:
    if limits.redis_url:
        yield from _url("limits.redis_url", limits.redis_url, _REDIS_SCHEMES)
    yield from _positive("limits.redis_timeout", limits.redis_timeout)
    yield from _at_least("limits.max_messages", limits.max_messages, 1)
    yield from _at_least("limits.max_tools", limits.max_tools, 0)
    yield from _at_least("limits.max_streams_per_worker", limits.max_streams_per_worker, 1)
    yield from _at_least("limits.max_streams_per_key", limits.max_streams_per_key, 1,
                         " (leave it out for no limit)")


# The modules a tracing config needs, by protocol, from the ``tracing`` extra.
_TRACING_MODULES = {
    None: ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
    "http": ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
    "grpc": ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"),
}


def _tracing(tracing: TracingConfig) -> Iterator[Problem]:
    if not tracing.enabled:
        return
    if tracing.sample_ratio is not None:
        yield from _fraction("tracing.sample_ratio", tracing.sample_ratio)
    yield from _positive("tracing.timeout", tracing.timeout)
    yield from _at_least("tracing.max_queue_size", tracing.max_queue_size, 1)
    if tracing.endpoint is not None and not tracing.endpoint.strip():
        yield Problem("tracing.endpoint", "must not be empty (leave it out for the default)")
    for name in tracing.headers or {}:
        if not name or not _BARE.fullmatch(name):
            yield Problem(key_path("tracing", "headers", name),
                          "not a valid HTTP header name")
    for module in _TRACING_MODULES[tracing.protocol]:
        try:
            importlib.import_module(module)
        except ImportError:
            yield Problem("tracing.enabled", f"tracing needs the 'tracing' extra, which is not "
                          f"installed (no module {module}): pip install 'tlproxy[tracing]'")
            return


def _admin_keys(admin_keys: list[str]) -> Iterator[Problem]:
    for index, digest in enumerate(admin_keys):
        if not _SHA256.fullmatch(digest):
            # The value may be the key itself: it is never repeated.
            yield Problem(f"admin_keys[{index}]", "expected 'sha256:' and 64 lowercase hex "
                          "digits, the SHA-256 of the key (printf %s KEY | sha256sum), never "
                          "the key itself")


def _writable(path: str, file: str | None, *, make_parents: bool) -> Iterator[Problem]:
    """A SQLite file the proxy can create: not a directory, under a directory it can write.

    The key store makes missing parent directories; the ledger does not.
    """
    if file is None:
        return
    if not file:
        yield Problem(path, "must not be empty")
        return
    target = Path(file)
    if target.is_dir():
        yield Problem(path, f"{file!r} is a directory; name a file")
        return
    parent = target.absolute().parent
    if not make_parents and not parent.exists():
        yield Problem(path, f"the directory {str(parent)!r} does not exist")
        return
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        yield Problem(path, f"cannot create {file!r}: {str(parent)!r} is not a directory "
                      "this user may write in")
