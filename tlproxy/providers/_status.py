"""What an upstream's HTTP status means for our client, where the adapters agree.

Pure: the answer modules (`anthropic.answer`, `gemini.answer`) and the OpenAI
adapter build their errors from these, and none of them needs the HTTP layer
to do it.
"""

from __future__ import annotations

from ..errors import UpstreamError

__all__ = [
    "credentials_rejected",
    "rate_limited",
    "request_refused",
    "unavailable",
    "upstream_timeout",
]


def rate_limited(message: str, status: int, retry_after: str | None) -> UpstreamError:
    """The upstream rate-limited us: 429, keeping its ``retry-after``."""
    return UpstreamError(
        message,
        status=429,
        code="rate_limit_exceeded",
        type="rate_limit_error",
        retry_after=retry_after,
        upstream_status=status,
    )


def credentials_rejected(status: int) -> UpstreamError:
    """The upstream refused *our* credentials: the client did nothing wrong.

    502 and retryable, so another candidate can serve.
    """
    return UpstreamError(
        "the upstream provider rejected the proxy's credentials",
        status=502,
        upstream_status=status,
    )


def request_refused(message: str, status: int) -> UpstreamError:
    """The request itself is wrong for this model: 400 (or 413), not retried."""
    return UpstreamError(
        message,
        status=413 if status == 413 else 400,
        retryable=False,
        type="invalid_request_error",
        upstream_status=status,
    )


def upstream_timeout(message: str, status: int) -> UpstreamError:
    """The upstream gave up waiting (408, 504): 504."""
    return UpstreamError(message, status=504, code="timeout", upstream_status=status)


def unavailable(
    message: str, status: int, retry_after: str | None, kind: str = "service_unavailable"
) -> UpstreamError:
    """The upstream is overloaded or down: 503, keeping its ``retry-after``."""
    return UpstreamError(
        message, status=503, retry_after=retry_after, upstream_status=status, type=kind
    )
