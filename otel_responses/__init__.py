"""otel-responses: an observability-first proxy for the OpenAI Responses API."""

__version__ = "0.1.0"
