"""Forwarding to the upstream: streaming, header policy, OpenAI-shaped errors."""
