"""A raw-socket test upstream: replays recordings at random byte boundaries, or misbehaves.

The scenario is picked per request by the ``x-scenario`` header (which the proxy forwards):
``replay:<recording>``, ``echo``, ``stall``, ``cut``, ``gzip``, ``held``, ``drip``,
``close`` (answer, then close the kept-alive connection), ``early-hints`` (103 before 200),
``drop-once`` (the first such request: close without an answer; later ones: ``echo``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Self

from tests.recordings import Recording
from tests.servers import LoopbackServer

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass
class RawUpstream(LoopbackServer):
    """Serve in a background thread; the test reads ``seen`` and ``closed_at`` afterwards."""

    recordings: dict[str, Recording] = field(default_factory=dict)
    seed: int = 0
    seen: list[SeenRequest] = field(default_factory=list)
    closed_at: list[float] = field(default_factory=list)  # monotonic time a held stream ended
    release: threading.Event = field(default_factory=threading.Event)  # lets `held` continue
    port: int = 0
    connections: int = 0  # TCP connections accepted
    dropped: int = 0  # requests closed unanswered by ``drop-once``

    @contextlib.contextmanager
    def running(self) -> Iterator[Self]:
        with super().running():
            try:
                yield self
            finally:
                self.release.set()  # before the loop stops: held streams end, not hang

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.seen.append(request)
                keep = await self._respond(request, reader, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _respond(self, req: SeenRequest, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> bool:
        scenario = req.header("x-scenario") or "echo"
        rng = random.Random(f"{self.seed}:{scenario}")
        if scenario.startswith("replay:"):
            await self._replay(self.recordings[scenario[7:]], writer, rng)
            return True
        if scenario == "drop-once" and not self.dropped:
            self.dropped += 1
            return False
        if scenario in ("echo", "drop-once"):
            body = json.dumps({
                "method": req.method, "target": req.target, "headers": req.headers,
                "body_b64": base64.b64encode(req.body).decode(),
            }).encode()
            await _write_fixed(writer, 200, [("Content-Type", "application/json"),
                                             ("X-Upstream", "raw"), ("Keep-Alive", "timeout=5"),
                                             ("Proxy-Agent", "test"),
                                             ("Connection", "keep-alive, X-Hop")], body, rng)
            return True
        if scenario == "close":
            # Keep-alive by the headers, closed anyway: what a server does on its idle timeout.
            await _write_fixed(writer, 200, [("Content-Type", "application/json")], b"{}", rng)
            await asyncio.sleep(0.05)
            return False
        if scenario == "early-hints":
            writer.write(_head(103, [("Link", "</style.css>; rel=preload")]))
            await _write_fixed(writer, 200, [("Content-Type", "application/json")],
                               b'{"hinted":true}', rng)
            return True
        if scenario == "gzip":
            body = gzip.compress(b'{"object":"response","id":"resp_gz"}' * 50)
            await _write_fixed(writer, 200, [("Content-Type", "application/json"),
                                             ("Content-Encoding", "gzip")], body, rng)
            return True
        if scenario == "stall":
            await asyncio.sleep(3600)
        if scenario == "cut":
            await _start_chunked(writer, 200, [("Content-Type", "text/event-stream")])
            await _write_chunk(writer, b"event: response.created\ndata: {\"type\":\"response."
                                       b"created\",\"sequence_number\":0}\n\n")
            await _write_chunk(writer, b"event: response.output_text.delta\ndata: {\"ty")
            await asyncio.sleep(0.05)
            return False  # close without the terminating chunk
        if scenario == "cut-fixed":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"partial\":")
            await writer.drain()
            return False
        if scenario in ("held", "drip"):
            await self._held(writer, scenario)
            return False
        raise AssertionError(f"unknown scenario {scenario}")

    async def _held(self, writer: asyncio.StreamWriter, scenario: str) -> None:
        """``held``: one event, then wait for ``release``; ``drip``: an event every 20 ms."""
        await _start_chunked(writer, 200, [("Content-Type", "text/event-stream")])
        try:
            n = 0
            while True:
                await _write_chunk(writer, f"data: {{\"n\":{n}}}\n\n".encode())
                n += 1
                if scenario == "held":
                    while not self.release.is_set():
                        await asyncio.sleep(0.005)
                    await _write_chunk(writer, b"data: {\"n\":\"last\"}\n\n")
                    await _write_chunk(writer, b"")
                    return
                await asyncio.sleep(0.02)
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed_at.append(time.monotonic())

    async def _replay(self, rec: Recording, writer: asyncio.StreamWriter,
                      rng: random.Random) -> None:
        headers = [(k, v) for k, v in rec.headers.items() if k.lower() not in _HOP]
        if rec.is_sse:
            await _start_chunked(writer, rec.status, headers)
            for piece in _split(rec.body_bytes, rng):
                await _write_chunk(writer, piece)
                await asyncio.sleep(rng.random() * 0.002)
            await _write_chunk(writer, b"")
        else:
            await _write_fixed(writer, rec.status, headers, rec.body_bytes, rng)


def _split(data: bytes, rng: random.Random) -> list[bytes]:
    pieces, i = [], 0
    while i < len(data):
        n = rng.randint(1, 700)
        pieces.append(data[i:i + n])
        i += n
    return pieces


async def _read_request(reader: asyncio.StreamReader) -> SeenRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    body = await reader.readexactly(length) if length else b""
    return SeenRequest(method, target, [(k, v) for k, v in headers], body)


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _write_fixed(writer: asyncio.StreamWriter, status: int, headers: list[tuple[str, str]],
                       body: bytes, rng: random.Random) -> None:
    writer.write(_head(status, [*headers, ("Content-Length", str(len(body)))]))
    for piece in _split(body, rng):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(rng.random() * 0.002)


async def _start_chunked(writer: asyncio.StreamWriter, status: int,
                         headers: list[tuple[str, str]]) -> None:
    writer.write(_head(status, [*headers, ("Transfer-Encoding", "chunked")]))
    await writer.drain()


async def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()
