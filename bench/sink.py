"""An OTLP/HTTP trace sink: accepts ``POST /v1/traces``, counts spans, keeps nothing.

``GET /stats`` answers ``{"requests", "bytes", "spans"}``. Spans are counted by walking only
the three outer protobuf levels (ExportTraceServiceRequest → ResourceSpans → ScopeSpans →
Span), so the sink costs microseconds per batch and never competes with what is measured.

Run: ``python bench/sink.py --port P``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json

_HEAD_END = b"\r\n\r\n"


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, want: int) -> list[memoryview]:
    """The length-delimited occurrences of field number ``want`` in one message."""
    out: list[memoryview] = []
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if number == want:
                out.append(buf[pos:pos + size])
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def count_spans(body: bytes) -> int:
    view = memoryview(body)
    return sum(len(_fields(scope, 2))
               for resource in _fields(view, 1)
               for scope in _fields(resource, 2))


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.spans = 0
        self.malformed = 0


class _Http(asyncio.Protocol):
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look like one.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(_HEAD_END)
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            self._handle(head, body)

    def _handle(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        if head.startswith(b"get /stats"):
            s = self.stats
            out = json.dumps({"requests": s.requests, "bytes": s.bytes, "spans": s.spans,
                              "malformed": s.malformed}).encode()
            self._reply(b"application/json", out)
            return
        if b"content-encoding: gzip" in head:
            body = gzip.decompress(body)
        self.stats.requests += 1
        self.stats.bytes += len(body)
        try:
            self.stats.spans += count_spans(body)
        except (ValueError, IndexError):
            self.stats.malformed += 1
        # An empty ExportTraceServiceResponse: zero bytes of protobuf.
        self._reply(b"application/x-protobuf", b"")

    def _reply(self, content_type: bytes, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type
                             + b"\r\nContent-Length: " + str(len(body)).encode()
                             + b"\r\n\r\n" + body)


async def serve(host: str, port: int) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Http(stats), host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
