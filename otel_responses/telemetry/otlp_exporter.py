"""The SDK's OTLP/HTTP span exporter with spans encoded by `otlp` (4 to 5 times faster than
the SDK's encoder, which runs in the export thread holding the GIL)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_responses.telemetry.otlp import encode_requests, span_field
from otel_responses.telemetry.sdk_private import exporter_client

log = logging.getLogger("otel_responses.telemetry")

# Spans per request are cut at this many bytes: a batch of long conversations (a 100 KB
# request makes a 270 KB span) would otherwise pass the SDK's 64 MiB limit and be dropped
# whole, and collectors refuse far less (the OpenTelemetry Collector's HTTP receiver: 20 MiB).
REQUEST_BYTES = 4 << 20
# Spans encoded ahead of export are kept up to this many bytes in all; past it, the export
# thread encodes them (queued spans would otherwise hold their data twice).
PREPARED_BYTES = 32 << 20


class DirectOTLPSpanExporter(OTLPSpanExporter):
    """Everything but the encoding is the SDK's: endpoint, headers, TLS, compression, timeout
    and retries from the same OTEL_EXPORTER_OTLP_* variables, and its HTTP client.

    The HTTP client is a private part of the SDK exporter (`sdk_private.exporter_client`).
    Where it is missing or different, the SDK's own `export` runs instead, and `direct` is
    False. A batch goes out as requests of at most `REQUEST_BYTES`; if one fails,
    the batch counts as failed. The SDK's opt-in self-metrics
    (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED) are not recorded on the direct path: the
    proxy's /metrics counts exported and dropped spans itself.
    """

    def __init__(self) -> None:
        super().__init__()
        self.unencodable = 0  # spans left out of their batch: they could not be encoded
        self._prepared: dict[ReadableSpan, bytes] = {}
        self._prepared_bytes = 0
        self._lock = threading.Lock()  # spans end in one thread and are exported in another
        self._sender = exporter_client(self)
        self.direct = self._sender is not None
        if not self.direct:
            log.info("this OTLP exporter version has no known HTTP client: spans are encoded "
                     "by the SDK's encoder")

    def prepare(self, span: ReadableSpan) -> None:
        """Encode `span` now, in the thread that ended it (for the proxy, the event loop once
        the response is sent): in the export thread the encoding of a whole batch would take
        the GIL from the event loop in bursts."""
        if not self.direct or self._prepared_bytes >= PREPARED_BYTES:
            return
        try:
            field = span_field(span)
            with self._lock:
                self._prepared[span] = field
                self._prepared_bytes += len(field)
        except Exception:
            return  # export encodes it again and reports the failure

    def discard_prepared(self) -> None:
        """Forget every span encoded ahead (a forked child starts with an empty queue)."""
        self._lock = threading.Lock()
        self._prepared.clear()
        self._prepared_bytes = 0

    def _field(self, span: ReadableSpan) -> bytes:
        with self._lock:
            field = self._prepared.pop(span, None)
            if field is not None:
                self._prepared_bytes -= len(field)
        return field if field is not None else span_field(span)

    def _fields(self, spans: Sequence[ReadableSpan]) -> list[tuple[ReadableSpan, bytes]]:
        """Each span with its encoding; one that cannot be encoded is dropped alone (counted
        in `unencodable`), never failing the batch of other calls' spans."""
        fields = []
        for span in spans:
            try:
                fields.append((span, self._field(span)))
            except Exception:
                self.unencodable += 1  # only the export thread counts: no lock
                log.exception("dropping span %r: it cannot be encoded", span.name)
        return fields

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        sender = self._sender
        if sender is None or sender.shut_down:
            return super().export(spans)
        limit = sender.max_request_size if sender.max_request_size > 0 else REQUEST_BYTES
        requests = encode_requests(self._fields(spans), min(REQUEST_BYTES, limit))
        result = SpanExportResult.SUCCESS
        for data in requests:
            if 0 < sender.max_request_size < len(data):  # one span alone is that large
                log.warning("Dropping a span: serialized size %d bytes exceeds "
                            "max_request_size %d bytes.", len(data), sender.max_request_size)
                result = SpanExportResult.FAILURE
            elif not sender.send(data).success:
                return SpanExportResult.FAILURE  # the rest would wait out the same retries
        return result
