"""What the telemetry middleware records and how: the telemetry part of the one Settings, and
the only reader of the OpenTelemetry and OpenInference environment conventions."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from otel_responses.telemetry.masking import MaskingConfig

# Azure first: its hosts also contain "openai".
_PROVIDER_HOSTS: tuple[tuple[str, str], ...] = (
    ("openai.azure.com", "azure"), ("services.ai.azure.com", "azure"),
    ("cognitiveservices.azure.com", "azure"), ("api.openai.com", "openai"),
    ("anthropic.com", "anthropic"), ("amazonaws.com", "aws"), ("googleapis.com", "google"),
    ("x.ai", "xai"), ("deepseek.com", "deepseek"), ("groq.com", "groq"),
    ("fireworks.ai", "fireworks"), ("moonshot", "moonshot"), ("cerebras.ai", "cerebras"),
    ("perplexity.ai", "perplexity"), ("together", "together"), ("mistral.ai", "mistralai"),
    ("cohere", "cohere"),
)


def infer_provider(host: str | None) -> str | None:
    """OpenInference ``llm.provider`` for an upstream host, None when it names no known host."""
    if not host:
        return None
    host = host.lower()
    return next((name for suffix, name in _PROVIDER_HOSTS if suffix in host), None)


# OpenInference provider names → OTel GenAI gen_ai.provider.name where the two differ.
_GENAI_PROVIDERS = {"azure": "azure.ai.openai", "aws": "aws.bedrock", "xai": "x_ai",
                    "mistralai": "mistral_ai"}


def genai_provider_name(llm_provider: str | None) -> str:
    """``openai`` (the API every upstream speaks here) unless the upstream is known otherwise."""
    return _GENAI_PROVIDERS.get(llm_provider, llm_provider) if llm_provider else "openai"


def genai_opted_in(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    opt_in = env.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
    return "gen_ai_latest_experimental" in (t.strip() for t in opt_in.split(","))


def sdk_enabled(env: Mapping[str, str] | None = None) -> bool:
    """False when ``OTEL_SDK_DISABLED=true``: no spans (metrics stay on)."""
    env = os.environ if env is None else env
    return env.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"


@dataclass(frozen=True, slots=True)
class TelemetryOptions:
    """Recording choices; the defaults suit a proxy in front of api.openai.com. Those with a
    standard environment variable (``OTEL_SDK_DISABLED``, ``OTEL_SEMCONV_STABILITY_OPT_IN``,
    ``OPENINFERENCE_HIDE_*``) default to what it says, as instrumentations do."""

    provider: str | None = None  # llm.provider; None: inferred from upstream_host
    upstream_host: str | None = None
    upstream_port: int | None = None
    session_header: str = "x-session-id,session-id"  # comma-separated, first present wins
    user_header: str = "x-user-id"
    genai_semconv: bool = field(default_factory=genai_opted_in)
    trace_root: bool = False  # ignore inbound traceparent: every call starts a trace
    max_attribute_length: int = 128 * 1024
    session_cache_size: int = 10_000
    masking: MaskingConfig = field(default_factory=MaskingConfig.from_env)
    tracing: bool = field(default_factory=sdk_enabled)

    @property
    def llm_provider(self) -> str | None:
        return self.provider or infer_provider(self.upstream_host)

    def replace(self, **changes: Any) -> TelemetryOptions:
        return dataclasses.replace(self, **changes)
