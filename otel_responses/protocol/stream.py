"""Responses SSE bytes → `ResponseAccumulator`, sans-IO: feed chunks, read the outcome."""

from __future__ import annotations

import json
import zlib
from typing import Any

from otel_responses.protocol.accumulator import ResponseAccumulator
from otel_responses.protocol.sse import ServerSentEvent, SSEParser

# json.loads wraps this C scanner in Python-level steps that cost half as much again as
# scanning a delta event; `_apply` calls it directly and keeps json.loads's exact acceptance
# (strict, JSON whitespace around the value, no BOM).
_scan = json.JSONDecoder().scan_once
_WHITESPACE = " \t\n\r"

# Snapshot events carry the whole response object (the request's tools and instructions
# echoed) and matter only if no terminal event comes: a data field that starts with one of
# these is kept unparsed until result() needs it. Anything else, such as a server that puts
# "type" later in the object, is parsed as it comes. (An object that repeated "type" would be
# taken by its first one here, by its last one by json.loads: no server does that.)
_SNAPSHOT_PREFIXES = tuple(f'{{"type":{space}"response.{kind}"'
                           for kind in ("created", "in_progress", "queued")
                           for space in ("", " "))
# A kept snapshot this long is held zlib-compressed: it lives as long as the stream (minutes,
# for a held one) and echoes the request's tools, instructions and schema, which compress
# ~5x; level 1 costs ~5 us per KB, once per read (created and in_progress come together).
_PACK_SNAPSHOT = 1024


class ResponseStream:
    """Parses a Responses event stream chunk by chunk and accumulates it.

    events: SSE events received (including `[DONE]`, malformed and oversize ones).
    malformed: events whose data was not a JSON object, or that were oversize. A snapshot
        event is only parsed if `result()` needs it: when no terminal response came, and only
        the latest one. So a broken snapshot that was superseded is not counted, and a broken
        latest one leaves no snapshot rather than an earlier one.
    """

    __slots__ = ("_closed", "_parser", "_snapshot", "accumulator", "events", "malformed")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self.accumulator = ResponseAccumulator()
        self.events = 0
        self.malformed = 0
        self._closed = False
        # The latest snapshot event's data, unparsed; zlib-compressed (bytes) when long.
        self._snapshot: str | bytes | None = None

    def feed(self, chunk: bytes) -> None:
        """Consume one chunk of the response body."""
        self._receive(self._parser.feed(chunk))

    def close(self) -> None:
        """End of the body: no more bytes will come."""
        self._receive(self._parser.close())
        self._closed = True

    def _receive(self, events: list[ServerSentEvent]) -> None:
        snapshot = None
        for sse in events:
            self.events += 1
            if sse.oversize:
                self.malformed += 1
            elif sse.data.startswith(_SNAPSHOT_PREFIXES):
                snapshot = sse.data  # only the last of a read is kept: pack that one alone
            else:
                self._apply(sse.data, sse.event)
        if snapshot is not None:
            # The decoder replaced invalid UTF-8, so the data encodes back without error.
            self._snapshot = (zlib.compress(snapshot.encode(), 1)
                              if len(snapshot) >= _PACK_SNAPSHOT else snapshot)

    def _apply(self, data: str, event_name: str | None) -> None:
        if data == "[DONE]":  # chat-completions style terminator some servers add
            return
        try:
            if data[:1] == "{":
                event, end = _scan(data, 0)
                if end != len(data) and data[end:].strip(_WHITESPACE):
                    raise ValueError("extra data")  # as json.loads
            else:  # leading whitespace, or not an object
                event = json.loads(data)
        except (StopIteration, ValueError, RecursionError):  # RecursionError: deeply nested
            event = None
        if not isinstance(event, dict):
            self.malformed += 1
            return
        if not isinstance(event.get("type"), str) and event_name:
            event["type"] = event_name  # the object is ours, fresh from the parser
        self.accumulator.add(event)

    @property
    def truncated(self) -> bool:
        """Closed without a terminal event, or mid-event."""
        return self._closed and (self.accumulator.outcome is None or self._parser.pending)

    @property
    def delta_count(self) -> int:
        return self.accumulator.delta_count

    @property
    def outcome(self) -> str | None:
        return self.accumulator.outcome

    @property
    def error(self) -> dict[str, Any] | None:
        return self.accumulator.error

    def result(self) -> dict[str, Any] | None:
        snapshot = self._snapshot
        if snapshot is not None and not self.accumulator.has_final:
            # Late is as good as in place: a snapshot only replaces the previous one, and
            # only result() reads it. Its data starts with its "type", so needs no event name.
            self._apply(zlib.decompress(snapshot).decode() if isinstance(snapshot, bytes)
                        else snapshot, None)
            self._snapshot = None
        return self.accumulator.result()
