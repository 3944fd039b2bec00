"""Test helpers: a proxy traced into memory, and plain readers of flattened span attributes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_responses.app import create_app
from otel_responses.config import Settings
from tests.servers import serve_asgi


class SpanSink:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=100_000))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def calls(self) -> list[ReadableSpan]:
        """The spans of the calls themselves (LLM spans), without their TOOL spans."""
        return [s for s in self.spans()
                if (s.attributes or {}).get("openinference.span.kind") != "TOOL"]

    def wait(self, count: int = 1, timeout: float = 5.0, *,
             calls: bool = False) -> list[ReadableSpan]:
        """At least ``count`` finished spans (``calls``: call spans), waiting for them."""
        finished = self.calls if calls else self.spans
        deadline = time.monotonic() + timeout
        while len(finished()) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        spans = finished()
        assert len(spans) >= count, f"{len(spans)} spans finished, wanted {count}"
        return spans

    def one(self) -> ReadableSpan:
        """The one call's span (any TOOL spans under it aside)."""
        spans = self.wait(1, calls=True)
        assert len(spans) == 1, [s.name for s in spans]
        return spans[0]

    def clear(self) -> None:
        self.exporter.clear()


@contextlib.contextmanager
def traced_proxy(upstream_url: str, **settings: Any) -> Iterator[tuple[str, SpanSink]]:
    sink = SpanSink()
    app = create_app(Settings(upstream=upstream_url, **settings), tracer_provider=sink.provider)
    with serve_asgi(app) as base:
        yield base, sink


def indexed(attrs: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """``prefix.{i}.rest = v`` → ``[{rest: v}, ...]`` in index order (asserting no gaps)."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if key.startswith(prefix + "."):
            index, _, rest = key[len(prefix) + 1:].partition(".")
            found.setdefault(int(index), {})[rest] = value
    assert sorted(found) == list(range(len(found))), f"gaps in {prefix}: {sorted(found)}"
    return [found[i] for i in range(len(found))]


def message_text(message: Mapping[str, Any]) -> str:
    """Text of one flattened message: its content, or its text/refusal content parts in order."""
    if "message.content" in message:
        return str(message["message.content"])
    parts = indexed({k: v for k, v in message.items() if k.startswith("message.contents.")},
                    "message.contents")
    return "".join(p.get("message_content.text", "") for p in parts
                   if p.get("message_content.type") == "text")


def tool_calls(message: Mapping[str, Any]) -> list[tuple[str, str]]:
    calls = indexed({k: v for k, v in message.items() if k.startswith("message.tool_calls.")},
                    "message.tool_calls")
    return [(c.get("tool_call.function.name", ""), c.get("tool_call.function.arguments", ""))
            for c in calls]
