"""Every use of an OpenTelemetry SDK private, in one place: each has a public fallback, and
tests/test_sdk_private.py fails loudly when an SDK upgrade takes one away."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter


@dataclass(frozen=True, slots=True)
class ExporterClient:
    """The OTLP/HTTP exporter's own sender (1.45+): posts serialized bytes with the exporter's
    endpoint, headers, TLS, compression, timeout and retries."""

    send: Callable[[bytes], Any]  # returns a result with a boolean ``success``
    max_request_size: int  # 0: no limit
    exporter: OTLPSpanExporter

    @property
    def shut_down(self) -> bool:
        return bool(self.exporter._shutdown)


def exporter_client(exporter: OTLPSpanExporter) -> ExporterClient | None:
    """The exporter's sender, or None where this SDK version has none we know (then the SDK's
    own `export`, with its own encoder, must be used)."""
    client = getattr(exporter, "_client", None)
    size = getattr(exporter, "_max_request_size", None)
    if (callable(getattr(client, "export", None)) and isinstance(size, int)
            and isinstance(getattr(exporter, "_shutdown", None), bool)):
        return ExporterClient(client.export, size, exporter)
    return None


def attribute_items(owner: Any, attributes: Mapping[str, Any] | None) -> Iterable[Any]:
    """A span's (or event's, link's) attribute items: straight from the plain dict inside the
    SDK's BoundedAttributes where there is one (its Mapping interface runs Python code per
    item), else through the public mapping."""
    inner = getattr(getattr(owner, "_attributes", None), "_dict", None)
    return inner.items() if isinstance(inner, dict) else (attributes or {}).items()


def attribute_store(span: Any) -> BoundedAttributes | None:
    """A live span's attribute store, for its count limit (no public API exposes it) and its
    dropped count; None when the span has none we know."""
    store = getattr(span, "_attributes", None)
    return store if isinstance(store, BoundedAttributes) else None
