"""A raw-socket test upstream: replays recordings at random byte boundaries, or misbehaves.

The scenario is picked per request by the ``x-scenario`` header (which the proxy forwards), else
by the request's path where ``routes`` names one (:meth:`RawUpstream.replaying` serves recordings
on their recorded paths, for clients that send no such header; other paths get a 404):
``replay:<recording>``, ``echo``, ``stall``, ``cut``, ``gzip``, ``held``, ``drip``,
``close`` (answer, then close the kept-alive connection), ``early-hints`` (103 before 200),
``drop-once`` (the first such request: close without an answer; later ones: ``echo``),
``gzip-bomb`` (1 GiB of zeros, gzipped), ``cut:<recording>`` (the first half of a recorded
stream, then the connection closes), ``no-max-completion-tokens:<recording>`` (a 400 naming
``max_completion_tokens`` when the request body has it, else the replay),
``hold:<recording>`` (the first half of a recorded stream, then the rest once ``release`` is
set). A replay is
compressed when the request's ``x-compress`` names codings (applied in that order, e.g.
``gzip, br``) that its accept-encoding accepts: ``gzip``, ``deflate``, ``raw-deflate`` (sent
as ``deflate``), ``br``, ``zstd``; ``corrupt`` sends a broken gzip, ``compress`` a coding nobody
decodes. ``sent`` keeps each replay's body bytes as written.
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
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Self

import brotli
import zstandard

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
    sent: list[bytes] = field(default_factory=list)  # each replay's body, as written
    routes: dict[str, str] = field(default_factory=dict)  # path → scenario without x-scenario

    @classmethod
    def replaying(cls, *recordings: Recording, seed: int = 0) -> Self:
        """Answer each recording's path (query aside) with that recording, byte for byte."""
        return cls(recordings={r.name: r for r in recordings}, seed=seed,
                   routes={r.request_path.split("?")[0]: f"replay:{r.name}" for r in recordings})

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
        scenario = (req.header("x-scenario") or self.routes.get(req.target.split("?")[0])
                    or ("not-found" if self.routes else "echo"))
        rng = random.Random(f"{self.seed}:{scenario}")
        _, _, name = scenario.partition("no-max-completion-tokens:")
        if name:
            if b'"max_completion_tokens"' in req.body:
                body = json.dumps({"error": {
                    "message": "Unrecognized request argument supplied: max_completion_tokens",
                    "type": "invalid_request_error", "param": None, "code": None}}).encode()
                await _write_fixed(writer, 400, [("Content-Type", "application/json")], body,
                                   rng)
                return True
            scenario = "replay:" + name
        if scenario.startswith(("cut:", "hold:")):
            kind, _, name = scenario.partition(":")
            body = self.recordings[name].body_bytes
            await _start_chunked(writer, 200, [("Content-Type", "text/event-stream")])
            await _write_chunk(writer, body[:len(body) // 2])
            if kind == "cut":
                await asyncio.sleep(0.05)
                return False  # close without the terminating chunk
            while not self.release.is_set():
                await asyncio.sleep(0.005)
            await _write_chunk(writer, body[len(body) // 2:])
            await _write_chunk(writer, b"")
            return True
        if scenario.startswith("replay:"):
            await self._replay(self.recordings[scenario[7:]], writer, rng, _coder(req))
            return True
        if scenario == "not-found":
            body = json.dumps({"error": {"message": f"Invalid URL ({req.method} {req.target})",
                                         "type": "invalid_request_error", "param": None,
                                         "code": None}}).encode()
            await _write_fixed(writer, 404, [("Content-Type", "application/json")], body, rng)
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
        if scenario == "gzip-bomb":
            await _write_fixed(writer, 200, [("Content-Type", "application/json"),
                                             ("Content-Encoding", "gzip")], gzip_bomb(), rng)
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
                      rng: random.Random, coder: _Coder) -> None:
        headers = [(k, v) for k, v in rec.headers.items() if k.lower() not in _HOP]
        headers += [("Content-Encoding", coder.header)] if coder.header else []
        if rec.is_sse:
            pieces = [*map(coder.piece, _split(rec.body_bytes, rng)), coder.end()]
            self.sent.append(b"".join(pieces))
            await _start_chunked(writer, rec.status, headers)
            for piece in filter(None, pieces):  # an empty chunk would end the body
                await _write_chunk(writer, piece)
                await asyncio.sleep(rng.random() * 0.002)
            await _write_chunk(writer, b"")
        else:
            self.sent.append(coder.piece(rec.body_bytes) + coder.end())
            await _write_fixed(writer, rec.status, headers, self.sent[-1], rng)


# Per coding: its Content-Encoding name, a new compressor, how to flush what it holds so far
# (each streamed piece reaches the client whole), how to end it.
_CODINGS: dict[str, tuple[str, Callable[[], object], Callable[[object], bytes],
                          Callable[[object], bytes]]] = {
    "gzip": ("gzip", lambda: zlib.compressobj(wbits=31),
             lambda c: c.flush(zlib.Z_SYNC_FLUSH), lambda c: c.flush()),
    "deflate": ("deflate", zlib.compressobj, lambda c: c.flush(zlib.Z_SYNC_FLUSH),
                lambda c: c.flush()),
    "raw-deflate": ("deflate", lambda: zlib.compressobj(wbits=-15),
                    lambda c: c.flush(zlib.Z_SYNC_FLUSH), lambda c: c.flush()),
    "br": ("br", brotli.Compressor, lambda c: c.flush(), lambda c: c.finish()),
    "zstd": ("zstd", lambda: zstandard.ZstdCompressor().compressobj(),
             lambda c: c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK), lambda c: c.flush()),
}


class _Coder:
    """Compresses a body piece by piece with stacked codings (none: the bytes as they are)."""

    def __init__(self, names: list[str]) -> None:
        self.header = ", ".join(_CODINGS[n][0] for n in names)
        self._coders = [(_CODINGS[n], _CODINGS[n][1]()) for n in names]

    def piece(self, data: bytes) -> bytes:
        for (_, _, flush, _), c in self._coders:
            data = (c.process if isinstance(c, brotli.Compressor) else c.compress)(data)
            data += flush(c)
        return data

    def end(self) -> bytes:
        data = b""
        for (_, _, flush, end), c in self._coders:
            if data:
                data = (c.process if isinstance(c, brotli.Compressor) else c.compress)(data)
                data += flush(c)
            data += end(c)
        return data


class _Broken(_Coder):
    """``corrupt``: gzip with a compression method byte no decoder knows; ``compress``: the
    bytes as they are, labelled with a coding nobody decodes."""

    def __init__(self, kind: str) -> None:
        super().__init__([])
        self.header = "gzip" if kind == "corrupt" else kind
        self._kind = kind
        self._first = True

    def piece(self, data: bytes) -> bytes:
        if self._kind == "corrupt" and self._first:
            data = b"\x1f\x8b\x07" + data  # method 7: undefined
        self._first = False
        return data


def _coder(req: SeenRequest) -> _Coder:
    names = [n.strip() for n in (req.header("x-compress") or "").split(",") if n.strip()]
    if names in (["corrupt"], ["compress"]):
        return _Broken(names[0])
    accepted = {a.split(";")[0].strip()
                for a in (req.header("accept-encoding") or "").lower().split(",")}
    if not all(_CODINGS[n][0] in accepted for n in names):
        return _Coder([])
    return _Coder(names)


@cache
def gzip_bomb() -> bytes:
    """1 GiB of zeros, gzipped (about 1 MB), made a MiB at a time."""
    c, mib = zlib.compressobj(9, wbits=31), bytes(1 << 20)
    return b"".join([*(c.compress(mib) for _ in range(1024)), c.flush()])


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
