"""Reading a config file: decode it, resolve its secrets, run every check.

`load_config` is the one way a TOML file becomes a `Config`: ``tlproxy config
check``, ``tlproxy serve`` and ``tlproxy report`` all read through it. The
arrows point one way: `config` holds the types, `config_check` the rules
(which read the catalog and the policies' defaults, both built on those
types), and this module, above them all, puts each problem on its line of the
file (`toml_locate`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

from .config import Config, ConfigError
from .config_check import key_path, problems
from .toml_locate import line_of

__all__ = ["load_config"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _resolve_env(value: str, path: str, environ: dict[str, str],
                 missing: list[tuple[str, str]]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            missing.append((path, f"environment variable {name} is not set"))
            return ""
        return environ[name]

    return _ENV_REF.sub(replace, value)


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None, *,
                serving: bool = False) -> Config:
    """Read, validate and resolve a TOML config file.

    Raises `ConfigError` naming, with its line, every value the proxy would
    refuse (see `config_check.problems`): `tlproxy config check` and
    `tlproxy serve` both load through here with `serving` (also checking
    what only a server about to start needs), so they refuse the same files.
    """
    env = dict(os.environ if environ is None else environ)
    text = Path(path).read_bytes()
    try:
        config = msgspec.toml.decode(text, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(_with_line(path, text, str(exc))) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    missing: list[tuple[str, str]] = []
    providers = {}
    for name, provider in config.providers.items():
        if provider.api_key is not None:
            key = _resolve_env(provider.api_key, key_path("providers", name, "api_key"), env,
                               missing)
            provider = msgspec.structs.replace(provider, api_key=key)
        if provider.proxy is not None:
            proxy = _resolve_env(provider.proxy, key_path("providers", name, "proxy"), env,
                                 missing)
            provider = msgspec.structs.replace(provider, proxy=proxy)
        providers[name] = provider
    limits, ledger = config.limits, config.ledger
    if limits.redis_url:
        limits = msgspec.structs.replace(
            limits, redis_url=_resolve_env(limits.redis_url, "limits.redis_url", env, missing))
    if ledger.postgres_url:
        ledger = msgspec.structs.replace(ledger, postgres_url=_resolve_env(
            ledger.postgres_url, "ledger.postgres_url", env, missing))
    tracing = config.tracing
    if tracing.headers:
        tracing = msgspec.structs.replace(tracing, headers={
            name: _resolve_env(value, key_path("tracing", "headers", name), env, missing)
            for name, value in tracing.headers.items()})
    config = msgspec.structs.replace(config, providers=providers, limits=limits, ledger=ledger,
                                     tracing=tracing)
    found = [*missing, *problems(config, serving=serving)]
    if found:
        located = [_locate(path, text, where, message) for where, message in found]
        raise ConfigError("\n".join(located), problems=found)
    return config


def _locate(path: str | os.PathLike[str], text: bytes, where: str, message: str) -> str:
    """``file:line: path: message``, as people read TOML by line."""
    line = line_of(text.decode("utf-8", "replace"), where) if where else None
    location = f"{path}:{line}" if line else str(path)
    return f"{location}: {where or '(top level)'}: {message}"


_AT = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`")


def _with_line(path: str | os.PathLike[str], text: bytes, message: str) -> str:
    """Name the path and line of a msgspec validation error."""
    match = _AT.search(message)
    where = match.group("path") if match else ""
    unknown = _UNKNOWN.search(message)
    if unknown:
        where = f"{where}.{unknown.group('field')}" if where else unknown.group("field")
    head = message[: match.start()] if match else message
    return _locate(path, text, where, head)
