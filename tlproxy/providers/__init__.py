"""Upstream adapters, one module per wire protocol, and the factory that builds them."""

from __future__ import annotations

from ..config import Config
from .anthropic import AnthropicProvider
from .base import Provider
from .gemini import GeminiProvider
from .openai import OpenAIProvider
from .openai_responses import OpenAIResponsesProvider
from .transport import make_transport

__all__ = ["Provider", "build_providers", "make_transport"]


# Adapter class per provider kind; a "sim" speaks OpenAI's protocol.
_ADAPTERS: dict[str, type[OpenAIProvider | AnthropicProvider | GeminiProvider]] = {
    "openai": OpenAIProvider,
    "sim": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
}


def build_providers(config: Config) -> dict[str, Provider]:
    """One adapter per configured provider, each with its own pooled transport."""
    providers: dict[str, Provider] = {}
    for name, provider in config.providers.items():
        if not provider.base_url:
            raise ValueError(f"provider {name!r} has no base_url (a sim must be started first)")
        adapter = _ADAPTERS.get(provider.kind)
        if provider.kind == "openai" and provider.responses_api:
            adapter = OpenAIResponsesProvider
        if adapter is None:
            raise ValueError(f"provider kind {provider.kind!r} is not available")
        options = {"prompt_cache": True} if provider.prompt_cache else {}
        providers[name] = adapter(
            name, base_url=provider.base_url, api_key=provider.api_key,
            transport=make_transport(provider), owns_transport=True, **options,
        )
    return providers
