"""Test helpers for the guard: a keys file, a proxy with keys, a clock the test moves, and a
reader of the proxy's own metrics."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from otel_responses.app import create_app
from otel_responses.config import Settings
from tests.servers import serve_asgi
from tests.spans import SpanSink


class Clock:
    """Wall-clock time plus what the test added: limit windows pass without waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def write_keys(path: Path, document: dict[str, Any]) -> Path:
    """Write the keys file as a new file swapped in (as an editor or a Secret mount does)."""
    staged = path.with_suffix(".new")
    staged.write_text(yaml.safe_dump(document))
    staged.replace(path)
    return path


@contextlib.contextmanager
def guarded(upstream_url: str, keys_file: Path, clock: Clock | None = None,
            **settings: Any) -> Iterator[tuple[str, SpanSink]]:
    """A proxy requiring the keys of ``keys_file``; yields its base URL and its spans."""
    sink = SpanSink()
    app = create_app(Settings(upstream=upstream_url, api_keys=str(keys_file), **settings),
                     tracer_provider=sink.provider, clock=clock or time.time)
    with serve_asgi(app) as base:
        yield base, sink


def client(base: str, key: str) -> openai.OpenAI:
    """The openai SDK with ``key``, no retries: each status reaches the test as it came."""
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def metric(base: str, name: str, labels: str = "") -> float:
    """A sample of the proxy's /metrics (0 if absent), e.g. labels='reason="invalid_api_key"'."""
    text = httpx.get(base + "/metrics", timeout=5).text
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_metric(base: str, name: str, at_least: float, labels: str = "",
                timeout: float = 10.0) -> float:
    """Poll until the metric reaches ``at_least`` (a call's charge lands just after its last
    byte): a wait for an event, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while (value := metric(base, name, labels)) < at_least:
        assert time.monotonic() < deadline, f"{name} stayed at {value} < {at_least}"
        time.sleep(0.02)
    return value
