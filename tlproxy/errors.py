"""Errors, and the one place they become OpenAI error envelopes.

Every failure a client can see leaves the proxy as OpenAI's envelope::

    {"error": {"message": "...", "type": "...", "param": null, "code": null}}

with the HTTP status that makes the official SDKs raise the matching class
(400 ``BadRequestError``, 401 ``AuthenticationError``, 404 ``NotFoundError``,
413, 429 ``RateLimitError``, 5xx ``InternalServerError``).

The tree::

    ProxyError                 anything rendered to a client (status, type, code, param)
     ├── InvalidRequest        400, a client mistake (bad JSON, wrong field, ...)
     ├── AuthenticationFailed  401
     ├── NotFound              404, unknown path, unknown model, unsupported endpoint
     ├── PayloadTooLarge       413
     └── UpstreamError         an upstream failed; status 429 / 502 / 503 / 504
                               `retryable` says whether another candidate may be tried

Messages never contain a key: upstream error bodies are passed through
`redact` before they reach a client.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import msgspec

__all__ = [
    "AuthenticationFailed",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "ProxyError",
    "UpstreamError",
    "error_body",
    "leaves",
    "lone_errors",
    "param_from_validation_error",
    "redact",
]

_encoder = msgspec.json.Encoder()


class ProxyError(Exception):
    """An error with everything needed to render it as OpenAI does."""

    status: int = 500
    type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers: dict[str, str] = dict(headers or {})

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return _encoder.encode(self.envelope())


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(ProxyError):
    status = 401
    type = "invalid_request_error"

    def __init__(self, message: str = "Incorrect API key provided.") -> None:
        super().__init__(message, code="invalid_api_key")


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"


class UpstreamError(ProxyError):
    """An upstream failed. `retryable` means another candidate may be tried.

    `status` is what the client sees: 429 when the upstream rate-limited us,
    502 for a bad answer or a broken connection, 503 when it is unavailable,
    504 on a timeout. `upstream_status` is the upstream's own HTTP error
    status, when it answered with one; `unsent` means the request never
    reached it (no connection could be opened). Either way the upstream did
    not accept the request, and providers bill nothing for it.
    """

    status = 502
    type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        code: str | None = None,
        retryable: bool = True,
        retry_after: str | None = None,
        upstream_status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        unsent: bool = False,
    ) -> None:
        headers = {"retry-after": retry_after} if retry_after else None
        super().__init__(
            redact(message), status=status, code=code, headers=headers, type=type, param=param
        )
        self.retryable = retryable
        self.retry_after = retry_after
        self.upstream_status = upstream_status
        self.unsent = unsent


def error_body(message: str, *, type: str, code: str | None = None) -> bytes:
    """An envelope for an error that has no exception behind it."""
    return _encoder.encode(
        {"error": {"message": message, "type": type, "param": None, "code": code}}
    )


# `$.messages[2].role` -> `messages[2].role`
_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def param_from_validation_error(exc: msgspec.ValidationError) -> tuple[str, str | None]:
    """Split msgspec's message into (message, param path)."""
    text = str(exc)
    match = _PATH.search(text)
    if match is None:
        return text, None
    # msgspec writes a dict value's unknown key as `[...]`; the field is what helps.
    path = match.group("path").replace("[...]", "") or None
    message = text[: match.start()]
    if path:
        message = f"{message} at '{path}'"
    return message, path


# Secrets that upstreams (or careless clients) may echo in error texts.
_SECRET = re.compile(
    r"(?:sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}"
    r"|tlp-[A-Za-z0-9_\-]{8,}|(?i:bearer)\s+[A-Za-z0-9._\-]{8,})"
)


def redact(text: str) -> str:
    """Mask anything that looks like an API key."""
    return _SECRET.sub("[redacted]", text)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions `exc` is made of: itself, or every leaf of a (nested) group."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in leaves(inner)]


@contextlib.contextmanager
def lone_errors() -> Iterator[None]:
    """Around a nursery: a group holding one error (however nested) leaves as that
    error, with its cause, so callers catch and render it like any other; a group of
    several, or of a cancellation, leaves as it is."""
    try:
        yield
    except BaseExceptionGroup as group:
        found = leaves(group)
        if len(found) == 1 and isinstance(found[0], Exception):
            raise found[0] from found[0].__cause__
        raise
