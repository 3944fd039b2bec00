"""Real OTLP trace receivers (HTTP/protobuf and gRPC) keeping raw bytes and decoded spans."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.servers import free_port, serve_asgi


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@dataclass
class ExportedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: list[str]
    links: list[tuple[str, str]]
    resource: dict[str, Any]

    @classmethod
    def decode(cls, span: Span, resource: dict[str, Any]) -> ExportedSpan:
        return cls(
            name=span.name, kind=span.kind, trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
            attributes={a.key: _value(a.value) for a in span.attributes},
            status_code=span.status.code, status_message=span.status.message,
            events=[e.name for e in span.events],
            links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
            resource=resource,
        )


@dataclass
class Receiver:
    raw: list[bytes] = field(default_factory=list)
    spans: list[ExportedSpan] = field(default_factory=list)
    endpoint: str = ""

    def ingest(self, payload: bytes) -> None:
        self.raw.append(payload)
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(payload)
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                self.spans.extend(ExportedSpan.decode(s, resource) for s in ss.spans)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ExportedSpan]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.spans) >= count, f"got {len(self.spans)} spans, wanted {count}"
        return self.spans


@contextlib.contextmanager
def otlp_http_receiver(delay: float = 0.0) -> Iterator[Receiver]:
    """``delay``: seconds before each export is answered (a slow collector)."""
    receiver = Receiver()

    async def traces(request: Request) -> Response:
        payload = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            payload = gzip.decompress(payload)
        if delay:
            await asyncio.sleep(delay)
        receiver.ingest(payload)
        body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return Response(body, media_type="application/x-protobuf")

    app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
    with serve_asgi(app) as base:
        receiver.endpoint = base + "/v1/traces"
        yield receiver


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self.receiver.ingest(request.SerializeToString())
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.contextmanager
def otlp_grpc_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(receiver), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.stop(grace=None)


@contextlib.contextmanager
def black_hole() -> Iterator[str]:
    """A TCP listener that accepts connections and never answers: a hung collector."""
    import socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for sock in accepted:
            sock.close()
        listener.close()
