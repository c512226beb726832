"""Upstream adapters, one module per wire protocol, and the factory that builds them."""

from __future__ import annotations

import httpx

from ..config import Config, ProviderConfig
from .base import Provider
from .openai import OpenAIProvider

__all__ = ["Provider", "build_providers", "make_client"]


def make_client(config: ProviderConfig) -> httpx.AsyncClient:
    """One pooled client per upstream, HTTP/2 when the upstream speaks it."""
    return httpx.AsyncClient(
        http1=not config.http2 or not (config.base_url or "").startswith("http:"),
        http2=config.http2,
        timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
        limits=httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
            keepalive_expiry=30.0,
        ),
        # Proxies from the environment would surprise an operator on a hot path.
        trust_env=False,
    )


def build_providers(config: Config) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for name, provider in config.providers.items():
        if not provider.base_url:
            raise ValueError(f"provider {name!r} has no base_url (a sim must be started first)")
        client = make_client(provider)
        if provider.kind in ("openai", "sim"):
            providers[name] = OpenAIProvider(
                name, base_url=provider.base_url, api_key=provider.api_key, client=client,
                owns_client=True,
            )
        else:
            raise ValueError(f"provider kind {provider.kind!r} is not available yet")
    return providers
