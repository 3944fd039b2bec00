"""Content-Encoding decoding, sans-IO: feed compressed chunks, get at most `limit` decoded bytes.

What is decoded is only read (the recorder, the guard, the adapter); bytes relayed are untouched.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

try:
    import brotli
except ImportError:  # the reason is reported per body, never raised
    brotli = None
try:
    import zstandard
except ImportError:
    zstandard = None

_GZIP_WBITS = 16 + zlib.MAX_WBITS
# A stage of a stacked coding is pulled for at most this many bytes at a time, so what one
# coding expands to is bounded before the next one reads it.
_STEP = 64 * 1024
_MAX_CODINGS = 4  # more is no real server's doing
SCOPE_KEY = "otel_responses.decoded_body"


class _Overflow(Exception):
    """A stage would hold more than the decoder may ever return."""


class _Undecodable(Exception):
    """A coding's library refused the data."""


class _Stage(Protocol):
    @property
    def has_more(self) -> bool:
        """Holds input or output already given: call again with b"" before any new input."""

    def decompress(self, data: bytes, limit: int) -> bytes: ...  # at most `limit` (> 0) bytes


class _Zlib:
    """gzip (members one after another), or deflate: zlib-wrapped, else raw (as browsers)."""

    __slots__ = ("_d", "_gzip", "_head", "_tail", "has_more")

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._d: Any = zlib.decompressobj(_GZIP_WBITS) if gzip else None
        self._head = b""  # deflate: the first bytes, until they tell which kind it is
        self._tail = b""
        self.has_more = False

    def decompress(self, data: bytes, limit: int) -> bytes:
        if self._d is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return b""
            self._d = zlib.decompressobj(zlib.MAX_WBITS if _zlib_header(data) else -zlib.MAX_WBITS)
        data = self._tail + data if self._tail else data
        out = []
        while True:
            d = self._d
            if d.eof:
                if not data or not self._gzip:
                    data = b""  # bytes after the deflate stream: ignored, as zlib does
                    break
                d = self._d = zlib.decompressobj(_GZIP_WBITS)  # the next gzip member
            piece = d.decompress(data, limit)  # never past `limit`: a bomb stops here
            out.append(piece)
            limit -= len(piece)
            data = d.unused_data if d.eof else d.unconsumed_tail
            if not (d.eof and data and limit):
                break
        self._tail = data
        self.has_more = bool(data) or not limit  # at the limit, zlib may hold more back
        return b"".join(out)


def _zlib_header(data: bytes) -> bool:
    return data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


class _Brotli:
    __slots__ = ("_d", "_extra")

    def __init__(self) -> None:
        self._d = brotli.Decompressor()
        self._extra = b""

    @property
    def has_more(self) -> bool:
        return bool(self._extra) or not self._d.can_accept_more_data()

    def decompress(self, data: bytes, limit: int) -> bytes:
        out = self._extra or self._d.process(data, output_buffer_limit=limit)
        self._extra = out[limit:]  # the limit is where the buffer stops growing: a bit past
        return out[:limit]


class _Zstd:
    """Every frame in turn. The library's streaming API has no output limit: it writes to this
    object, which keeps at most `bound` bytes and then stops it (`_Overflow`)."""

    __slots__ = ("_bound", "_full", "_pending", "_writer")

    def __init__(self, bound: int) -> None:
        self._bound = bound
        self._full = False
        self._pending = bytearray()
        self._writer = zstandard.ZstdDecompressor().stream_writer(self, write_size=_STEP)

    @property
    def has_more(self) -> bool:
        return bool(self._pending) or self._full

    def write(self, data: bytes) -> int:
        self._pending += data[:self._bound - len(self._pending)]
        if len(self._pending) >= self._bound:
            self._full = True
            raise _Overflow
        return len(data)

    def decompress(self, data: bytes, limit: int) -> bytes:
        if self._full and not self._pending:
            # What was kept is all returned; what came past it is lost, so (with a limit that
            # grows past the bound) the body is cut here.
            raise _Overflow
        if data and not self._full:  # once full, later data would follow a gap: never decoded
            with contextlib.suppress(_Overflow):  # what was kept is returned first
                self._writer.write(data)
        out = bytes(self._pending[:limit])
        del self._pending[:limit]
        return out


Headers = Iterable[tuple[bytes, bytes]]
"""A message's headers as (name, value) pairs: raw ASGI ones, or the upstream client's."""


def codings(headers: Headers) -> list[str]:
    """The codings a message's Content-Encoding headers name, in the order applied; `identity`
    dropped."""
    names = (name.strip().lower() for key, value in headers if key.lower() == b"content-encoding"
             for name in value.decode("latin-1").split(","))
    return [name for name in names if name and name != "identity"]


class ContentDecoder:
    """Decodes a body coded with `codings` (in the order applied), keeping at most `limit` bytes.

    With `per_input_byte`, the limit grows by that many decoded bytes for each coded byte fed:
    for a body that is parsed as it passes rather than kept (an event stream), so that a long
    body compressing like text decodes to its end while a bomb (zlib reaches ~1000:1) stops.
    `unreadable` says why decoding stopped (an unknown coding, a library not installed,
    corrupt data); `truncated`, that the decoded body went on past the limit. Either way, `feed`
    returns nothing more.
    """

    __slots__ = ("_growth", "_input", "_names", "_room", "_stages", "truncated", "unreadable")

    def __init__(self, codings: list[str], limit: int, per_input_byte: int = 0) -> None:
        self._room = limit
        self._growth = per_input_byte
        self._input = b""
        self.truncated = False
        self.unreadable: str | None = None
        self._names = codings[::-1]  # decoded the last applied first
        self._stages: list[_Stage] = []
        if len(codings) > _MAX_CODINGS:
            self.unreadable = f"{len(codings)} content codings stacked"
            return
        for name in self._names:
            stage, reason = _stage(name, limit)
            if stage is None:
                self.unreadable = reason
                return
            self._stages.append(stage)

    def feed(self, chunk: bytes) -> bytes:
        """The decoded bytes that `chunk` completes (b"" once stopped)."""
        if self.unreadable is not None or self.truncated:
            return b""
        self._room += self._growth * len(chunk)
        self._input = chunk
        out: list[bytes] = []
        want = self._room + 1  # one byte past the room tells that the body goes on
        try:
            while want > 0 and (self._input or any(s.has_more for s in self._stages)):
                piece = self._pull(len(self._stages) - 1, want)
                out.append(piece)
                want -= len(piece)
        except _Overflow:
            want = 0
        except _Undecodable as exc:
            self.unreadable = str(exc)
        decoded = b"".join(out)
        if want <= 0:
            self.truncated = True
            decoded = decoded[:self._room]
        self._room -= len(decoded)
        return decoded

    def _pull(self, i: int, limit: int) -> bytes:
        """At most `limit` bytes out of stage `i`, given the input it needs if it has none."""
        stage = self._stages[i]
        if stage.has_more:
            data = b""
        elif i == 0:
            data, self._input = self._input, b""
        else:
            data = self._pull(i - 1, _STEP)
            if not data:
                return b""
        try:
            return stage.decompress(data, limit)
        except _Overflow:
            raise
        except Exception as exc:  # each library has its own error for corrupt data
            raise _Undecodable(f"{self._names[i]}: undecodable data ({exc})") from None


def _stage(name: str, limit: int) -> tuple[_Stage | None, str]:
    if name in ("gzip", "x-gzip", "deflate"):
        return _Zlib(gzip=name != "deflate"), ""
    if name == "br":
        if brotli is None or not hasattr(brotli.Decompressor, "can_accept_more_data"):
            return None, "br: the brotli package (>= 1.2) is not installed"
        return _Brotli(), ""
    if name == "zstd":
        if zstandard is None:
            return None, "zstd: the zstandard package is not installed"
        # Coded data is never much longer than what it decodes to (stored blocks add a few bytes
        # per 64 KB): past this, an inner coding's output would pass the limit too.
        return _Zstd(limit + 1 + _STEP), ""
    return None, f"unsupported content-encoding: {name}"


def decoder(headers: Headers, limit: int, per_input_byte: int = 0) -> ContentDecoder | None:
    """A decoder for the body of a message with these headers; None if it is not coded (a plain
    body costs nothing)."""
    names = codings(headers)
    return ContentDecoder(names, limit, per_input_byte) if names else None


@dataclass(frozen=True, slots=True)
class Decoded:
    """A whole body decoded (at most the limit's bytes), and why it is not all there, if it is
    not: `ContentDecoder`'s ``truncated`` and ``unreadable``."""

    body: bytes
    truncated: bool
    unreadable: str | None

    @property
    def whole(self) -> bool:
        return not self.truncated and self.unreadable is None


class DecodedBody:
    """A coded request body decoded at most once: the guard, the adapter and the recorder share
    one, handed down in the ASGI scope under `SCOPE_KEY` (as `body.ParsedBody` is)."""

    __slots__ = ("_last", "_limit", "_raw")

    def __init__(self) -> None:
        self._raw: bytes | None = None
        self._limit = 0
        self._last: Decoded | None = None

    @classmethod
    def shared(cls, scope: Mapping[str, Any]) -> DecodedBody:
        """The one a layer in front left in ``scope``, else a new one."""
        found = scope.get(SCOPE_KEY)
        return found if isinstance(found, cls) else cls()

    def decode(self, headers: Headers, raw: bytes, limit: int) -> Decoded | None:
        """``raw``, the body of a message with these headers, decoded to at most ``limit``
        bytes; None if it is not coded. The last result is reused for the same bytes unless
        this limit could change it (the layers' limits differ)."""
        last = self._last
        # Each layer joins the body's chunks itself, so the bytes are equal, not identical.
        if last is not None and (raw is self._raw or raw == self._raw) and (
                limit == self._limit or (last.whole and len(last.body) <= limit)):
            return last
        coding = decoder(headers, limit)
        if coding is None:
            return None
        self._raw, self._limit = raw, limit
        self._last = Decoded(coding.feed(raw), coding.truncated, coding.unreadable)
        return self._last
