"""The endpoints to measure: from ``--endpoint``/``--key``/``--model``/``--header`` flags and an
optional JSON or TOML file, merged into a list of `Endpoint`.

A key never leaves this module in clear: `Endpoint` hides it (and header values, which may be
keys too, such as Azure's ``api-key``) from its repr, `Endpoint.public` is what gets printed or
written, and `Endpoint.scrub` removes the key from any text an endpoint sent back.

The file, TOML::

    model = "gpt-4o-mini"                 # default model, optional

    [endpoints.openai]
    base_url = "https://api.openai.com/v1"
    key_env = "OPENAI_API_KEY"            # or key = "..." (better kept out of files)

    [endpoints.proxy]
    base_url = "http://127.0.0.1:8080/v1"
    model = "auto"
    headers = { "X-Team" = "bench" }

or the same structure in JSON (``{"model": ..., "endpoints": {"openai": {...}}}``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

__all__ = ["Endpoint", "EndpointError", "build_endpoints", "redact_url"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_SECRET_PARAM = re.compile(r"key|token|secret|sig|password", re.IGNORECASE)


class EndpointError(ValueError):
    """A flag or file entry that does not describe a usable endpoint; the message says which."""


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible endpoint: ``base_url`` is the part before ``/chat/completions``."""

    name: str
    base_url: str
    model: str
    key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        """The chat completions URL."""
        return self.base_url.rstrip("/") + "/chat/completions"

    def request_headers(self) -> dict[str, str]:
        """Headers for every request: JSON body, SSE accepted, the key as a bearer token.

        ``accept-encoding: identity`` because timestamps are taken on raw bytes: a compressed
        stream would be unreadable there, and a compressor's buffering would hold tokens back.
        """
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "accept-encoding": "identity",
        }
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        headers.update(self.headers)
        return headers

    def public(self) -> dict[str, object]:
        """What may be printed or written: no key, no header values, no URL credentials."""
        return {
            "name": self.name,
            "base_url": redact_url(self.base_url),
            "model": self.model,
            "key": self.key is not None,
            "headers": sorted(self.headers),
        }

    def scrub(self, text: str) -> str:
        """``text`` with this endpoint's key and header values masked."""
        for secret in (self.key, *self.headers.values()):
            if secret and len(secret) >= 8:
                text = text.replace(secret, "***")
        return text


def redact_url(url: str) -> str:
    """``url`` without user info and with secret-looking query values masked."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    query = urlencode(
        [(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in parse_qsl(parts.query)]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class _Entry(msgspec.Struct, forbid_unknown_fields=True):
    base_url: str
    model: str | None = None
    key: str | None = None
    key_env: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class _File(msgspec.Struct, forbid_unknown_fields=True):
    endpoints: dict[str, _Entry]
    model: str | None = None


@dataclass
class _Draft:
    base_url: str
    model: str | None = None
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _load_file(path: Path) -> tuple[dict[str, _Entry], str | None]:
    """Parse a ``.toml`` or ``.json`` endpoints file; returns the entries and default model."""
    try:
        if path.suffix.lower() == ".toml":
            parsed = msgspec.convert(tomllib.loads(path.read_text()), type=_File)
        else:
            parsed = msgspec.json.decode(path.read_bytes(), type=_File)
    except (OSError, tomllib.TOMLDecodeError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EndpointError(f"{path}: {exc}") from None
    return parsed.endpoints, parsed.model


def build_endpoints(
    *,
    endpoints: Sequence[str] = (),
    keys: Sequence[str] = (),
    models: Sequence[str] = (),
    headers: Sequence[str] = (),
    file: Path | None = None,
    environ: Mapping[str, str],
) -> list[Endpoint]:
    """Merge the flags (and the file, whose endpoints come first) into endpoints.

    ``endpoints`` are ``NAME=BASE_URL``; ``keys`` ``NAME=KEY`` or ``NAME=env:VAR``; ``models``
    ``NAME=MODEL`` or a bare ``MODEL`` that is the default; ``headers`` ``NAME=Header: value``.
    Flags for a name override the file's entry. Raises `EndpointError` for an unknown name, a
    duplicate, a missing model, a missing environment variable or a URL that is not http(s).
    """
    drafts: dict[str, _Draft] = {}
    default_model: str | None = None
    if file is not None:
        entries, default_model = _load_file(file)
        for name, entry in entries.items():
            key = entry.key
            if entry.key_env is not None:
                key = _env(environ, entry.key_env, name)
            lowered = {k.lower(): v for k, v in entry.headers.items()}
            drafts[_check_name(name)] = _Draft(entry.base_url, entry.model, key, lowered)
    for spec in endpoints:
        name, url = _split(spec, "--endpoint", "NAME=BASE_URL")
        if name in drafts:
            raise EndpointError(f"--endpoint {name!r} given twice")
        drafts[_check_name(name)] = _Draft(url)
    for spec in models:
        if "=" in spec:
            name, model = _split(spec, "--model", "NAME=MODEL")
            _draft(drafts, name, "--model").model = model
        else:
            default_model = spec
    for spec in keys:
        name, key = _split(spec, "--key", "NAME=KEY")
        if key.startswith("env:"):
            key = _env(environ, key.removeprefix("env:"), name)
        _draft(drafts, name, "--key").key = key
    for spec in headers:
        name, header = _split(spec, "--header", "NAME=Header: value")
        field_name, sep, value = header.partition(":")
        if not sep or not field_name.strip():
            raise EndpointError(f"--header {name}=...: expected 'Header: value'")
        _draft(drafts, name, "--header").headers[field_name.strip().lower()] = value.strip()
    if not drafts:
        raise EndpointError("no endpoint: give --endpoint NAME=BASE_URL or --endpoints FILE")
    return [_finish(name, draft, default_model) for name, draft in drafts.items()]


def _finish(name: str, draft: _Draft, default_model: str | None) -> Endpoint:
    scheme = urlsplit(draft.base_url).scheme
    if scheme not in ("http", "https"):
        raise EndpointError(f"endpoint {name!r}: base URL must be http(s)://..., got {scheme!r}")
    model = draft.model or default_model
    if not model:
        raise EndpointError(f"endpoint {name!r} has no model: give --model MODEL or {name}=MODEL")
    return Endpoint(name, draft.base_url, model, draft.key, dict(draft.headers))


def _split(spec: str, flag: str, shape: str) -> tuple[str, str]:
    name, sep, value = spec.partition("=")
    if not sep or not name or not value:
        # The value is not echoed: a key given without its NAME= would be printed whole.
        raise EndpointError(f"{flag} expects {shape}")
    return name, value


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise EndpointError(f"endpoint name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def _draft(drafts: dict[str, _Draft], name: str, flag: str) -> _Draft:
    try:
        return drafts[name]
    except KeyError:
        known = ", ".join(drafts) or "none"
        raise EndpointError(f"{flag} {name}=...: no such endpoint (known: {known})") from None


def _env(environ: Mapping[str, str], var: str, name: str) -> str:
    try:
        return environ[var]
    except KeyError:
        raise EndpointError(f"endpoint {name!r}: environment variable {var} is not set") from None
