"""Incremental Server-Sent Events parser (WHATWG event-stream rules), sans-IO.

Feed it bytes as they arrive; it returns the events each chunk completes.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from dataclasses import dataclass

MAX_EVENT = 16 << 20
"""Characters one event may hold: its data lines plus the line being read (of any field).
Well above real events (image generation streams base64 images of a few MiB, and the final
response repeats them); past it the event's data is dropped and it is dispatched as
`oversize`."""

_BOM = codecs.BOM_UTF8
_decode_utf8 = codecs.utf_8_decode  # the incremental utf-8-sig decoder runs Python per call


@dataclass(slots=True)
class ServerSentEvent:
    """One dispatched event.

    `event` is None when no (or an empty) `event:` field was given (the spec's "message").
    `id` is the stream's last event ID, which per spec persists across events until changed.
    `retry` is a valid `retry:` value seen in this event's block, if any.
    `oversize`: the block went past `MAX_EVENT`, so its data was dropped (`data` is "") and so
    was the line that went past, whatever its field.
    """

    event: str | None
    data: str
    id: str | None = None
    retry: int | None = None
    oversize: bool = False


class SSEParser:
    """Bytes in, events out. Work per `feed` is proportional to the chunk, not the buffer;
    memory is bounded by `MAX_EVENT` plus the chunk."""

    __slots__ = ("_carry", "_data", "_dirty", "_discard", "_event", "_id", "_oversize",
                 "_partial", "_partial_size", "_retry", "_size", "_skip_lf", "_start")

    def __init__(self) -> None:
        self._start = True  # a leading BOM may still come (utf-8-sig drops one)
        self._carry = b""  # undecoded bytes: an unfinished UTF-8 sequence or a partial BOM
        self._partial: list[str] = []  # fragments of the unterminated last line
        self._partial_size = 0
        self._discard = False  # the unterminated line went past MAX_EVENT: drop it to its end
        self._skip_lf = False  # previous chunk ended in CR: a leading LF completes that CRLF
        self._data: list[str] = []
        self._size = 0  # characters of the block's data lines, counted against MAX_EVENT
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._dirty = False  # a field line was seen since the last blank line
        self._oversize = False

    @property
    def pending(self) -> bool:
        """True if the input so far stops inside an event (an unfinished line or block)."""
        return bool(self._partial) or self._dirty or bool(self._carry)

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume a chunk; return the events completed by it."""
        if self._carry or self._start:
            chunk = self._prefix(chunk)
        # "replace" is the spec's decoding of invalid bytes; an unfinished sequence at the end
        # is left unconsumed and carried to the next chunk.
        text, used = _decode_utf8(chunk, "replace", False)
        if used != len(chunk):
            self._carry = chunk[used:]
        if not text:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return []
        if "\r" in text:
            # A trailing CR already ends its line; remember it so a following LF is not a
            # second (blank) line.
            self._skip_lf = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self._discard:  # the rest of a line dropped as oversize
            end = text.find("\n")
            if end < 0:
                return []
            self._discard = False
            text = text[end + 1:]
        if "\n" not in text:
            self._extend(text)
            return []
        if self._partial:
            self._partial.append(text)
            text = "".join(self._partial)
            self._partial = []
            self._partial_size = 0
        # The common shapes of a block (an event's lines), "data: D" and "event: E\ndata: D",
        # are dispatched without a walk over its lines; from the first block of another shape
        # on, the rest of the chunk goes line by line. (Splitting is cheaper than str.find or
        # startswith with bounds, which parse their arguments slowly.)
        events: list[ServerSentEvent] = []
        blocks: list[str] = []
        rest = text
        # Not when an event begun before is pending, nor when the text can't start with one
        # of the shapes: the split would be wasted.
        if not self._dirty and text[0] in "de":
            blocks = text.split("\n\n")
            rest = blocks.pop()  # the text after the last blank line
        for block in blocks:
            if len(block) <= MAX_EVENT:  # else the line walk applies the limit
                if block.startswith("data: "):
                    if "\n" not in block:
                        events.append(ServerSentEvent(None, block[6:], self._id))
                        continue
                elif block.startswith("event: "):
                    head, _, body = block.partition("\n")
                    if body.startswith("data: ") and "\n" not in body:
                        events.append(ServerSentEvent(head[7:] or None, body[6:], self._id))
                        continue
            n = len(events)  # the blocks before this one, each dispatched as one event
            rest = text[sum(map(len, blocks[:n])) + 2 * n:]
            break
        if rest:
            lines = rest.split("\n")
            tail = lines.pop()
            # No line can go past the limit if the whole rest does not: skip the checks.
            self._process(lines, events, self._size + len(rest) > MAX_EVENT)
            self._extend(tail)
        return events

    def close(self) -> list[ServerSentEvent]:
        """Signal end of input. Per spec an unterminated event is discarded, never dispatched;
        `pending` then tells whether the stream was cut mid-event (undecodable trailing bytes
        count as part of an unfinished line)."""
        return []

    def _prefix(self, chunk: bytes) -> bytes:
        """`chunk` after the bytes carried over, without the stream's leading BOM."""
        if self._carry:
            chunk = self._carry + chunk
            self._carry = b""
        if self._start:
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._carry = chunk  # may be the start of a BOM: wait for more
                return b""
            self._start = False
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
        return chunk

    def _extend(self, tail: str) -> None:
        """Add to the unterminated last line, or drop it once the event gets oversize."""
        if not tail:
            return
        self._partial.append(tail)
        self._partial_size += len(tail)
        if self._partial_size + self._size > MAX_EVENT:
            self._partial = []
            self._partial_size = 0
            self._discard = True
            self._drop_block()

    def _drop_block(self) -> None:
        self._data = []
        self._size = 0
        self._oversize = self._dirty = True

    def _process(self, lines: list[str], events: list[ServerSentEvent], limited: bool) -> None:
        """Apply complete lines one by one, appending the events they dispatch; `limited`:
        the lines may take the event past `MAX_EVENT`."""
        data, size, limit = self._data, self._size, MAX_EVENT
        for line in lines:
            if not line:
                if data or self._oversize:
                    events.append(ServerSentEvent(self._event or None, "\n".join(data),
                                                  self._id, self._retry, self._oversize))
                    data = self._data = []
                    size = 0
                self._event = None
                self._retry = None
                self._dirty = self._oversize = False
                continue
            if limited and len(line) + size > limit:
                self._drop_block()
                data, size = self._data, 0
                continue
            if line[0] == ":":
                continue
            self._dirty = True
            name, colon, value = line.partition(":")
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                if not self._oversize:
                    data.append(value)
                    size += len(line)
            elif name == "event":
                self._event = value
            elif name == "id":
                if "\0" not in value:
                    self._id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                self._retry = int(value)
        self._size = size


_EVENT_STREAM = b"text/event-stream"


def is_event_stream(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether response ``headers`` say the body is an event stream (names and the media type
    matched case-insensitively, parameters such as ``charset`` allowed)."""
    return any(name.lower() == b"content-type"
               and value[:len(_EVENT_STREAM)].lower() == _EVENT_STREAM for name, value in headers)
