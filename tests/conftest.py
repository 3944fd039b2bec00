"""Test-wide settings: deterministic hypothesis runs without wall-clock deadlines."""

import os

from hypothesis import settings

settings.register_profile("default", deadline=None, max_examples=100)
settings.register_profile("ci", deadline=None, max_examples=100, derandomize=True,
                          print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "default")

# No test exports spans to a collector it did not start (the default OTLP endpoint on
# localhost would only add retries and a shutdown flush wait); export tests opt back in.
os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
