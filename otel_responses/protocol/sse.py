"""Incremental Server-Sent Events parser (WHATWG event-stream rules), sans-IO.

Feed it bytes as they arrive; it returns the events each chunk completes.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(slots=True)
class ServerSentEvent:
    """One dispatched event.

    `event` is None when no (or an empty) `event:` field was given (the spec's "message").
    `id` is the stream's last event ID, which per spec persists across events until changed.
    `retry` is a valid `retry:` value seen in this event's block, if any.
    """

    event: str | None
    data: str
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Bytes in, events out. Work per `feed` is proportional to the chunk, not the buffer."""

    __slots__ = ("_data", "_decoder", "_dirty", "_event", "_id", "_partial", "_retry", "_skip_lf")

    def __init__(self) -> None:
        # utf-8-sig drops one leading BOM (even split across chunks) and keeps later ones;
        # "replace" is the spec's UTF-8 decode for invalid bytes.
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")("replace")
        self._partial: list[str] = []  # fragments of the unterminated last line
        self._skip_lf = False  # previous chunk ended in CR: a leading LF completes that CRLF
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._dirty = False  # a field line was seen since the last blank line

    @property
    def pending(self) -> bool:
        """True if the input so far stops inside an event (an unfinished line or block)."""
        return bool(self._partial) or self._dirty or bool(self._decoder.getstate()[0])

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume a chunk; return the events completed by it."""
        text = self._decoder.decode(chunk)
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
        lines = text.split("\n")
        tail = lines.pop()
        if not lines:
            if tail:
                self._partial.append(tail)
            return []
        if self._partial:
            self._partial.append(lines[0])
            lines[0] = "".join(self._partial)
            self._partial = []
        if tail:
            self._partial.append(tail)
        return self._process(lines)

    def close(self) -> list[ServerSentEvent]:
        """Signal end of input. Per spec an unterminated event is discarded, never dispatched;
        `pending` then tells whether the stream was cut mid-event."""
        rest = self._decoder.decode(b"", True)
        if rest:  # undecodable trailing bytes: part of an unfinished line
            self._partial.append(rest)
        return []

    def _process(self, lines: list[str]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(ServerSentEvent(self._event or None, "\n".join(data),
                                                  self._id, self._retry))
                    data = self._data = []
                self._event = None
                self._retry = None
                self._dirty = False
                continue
            if line[0] == ":":
                continue
            self._dirty = True
            name, colon, value = line.partition(":")
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id":
                if "\0" not in value:
                    self._id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                self._retry = int(value)
        return events
