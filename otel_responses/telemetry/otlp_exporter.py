"""The SDK's OTLP/HTTP span exporter with spans encoded by `otlp.encode_spans` (4 to 6 times faster
than the SDK's encoder, which runs in the export thread holding the GIL)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_responses.telemetry.otlp import encode_spans

log = logging.getLogger("otel_responses.telemetry")


class DirectOTLPSpanExporter(OTLPSpanExporter):
    """Everything but the encoding is the SDK's: endpoint, headers, TLS, compression, timeout
    and retries from the same OTEL_EXPORTER_OTLP_* variables, and its HTTP client.

    The HTTP client is a private part of the SDK exporter (``_client.export(bytes)``, since
    1.45). Where it is missing or different, the SDK's own `export` runs instead, and
    `direct` is False. The SDK's opt-in self-metrics
    (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED) are not recorded on the direct path: the
    proxy's /metrics counts exported and dropped spans itself.
    """

    def __init__(self) -> None:
        super().__init__()
        client = getattr(self, "_client", None)
        self.direct = (callable(getattr(client, "export", None))
                       and isinstance(getattr(self, "_max_request_size", None), int)
                       and isinstance(getattr(self, "_shutdown", None), bool))
        if not self.direct:
            log.info("this OTLP exporter version has no known HTTP client: spans are encoded "
                     "by the SDK's encoder")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.direct or self._shutdown:
            return super().export(spans)
        try:
            data = encode_spans(spans)
        except Exception as error:
            log.error("Failed to encode span batch: %s", error)
            return SpanExportResult.FAILURE
        if 0 < self._max_request_size < len(data):
            log.warning("Dropping span batch: serialized size %d bytes exceeds max_request_size "
                        "%d bytes.", len(data), self._max_request_size)
            return SpanExportResult.FAILURE
        result = self._client.export(data)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE
