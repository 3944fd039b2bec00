"""Responses SSE bytes → `ResponseAccumulator`, sans-IO: feed chunks, read the outcome."""

from __future__ import annotations

import json
from typing import Any

from otel_responses.protocol.accumulator import ResponseAccumulator
from otel_responses.protocol.sse import ServerSentEvent, SSEParser


class ResponseStream:
    """Parses a Responses event stream chunk by chunk and accumulates it.

    events: SSE events received (including `[DONE]` and malformed ones).
    malformed: events whose data was not a JSON object.
    """

    __slots__ = ("_closed", "_parser", "accumulator", "events", "malformed")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self.accumulator = ResponseAccumulator()
        self.events = 0
        self.malformed = 0
        self._closed = False

    def feed(self, chunk: bytes) -> None:
        """Consume one chunk of the response body."""
        self._apply(self._parser.feed(chunk))

    def close(self) -> None:
        """End of the body: no more bytes will come."""
        self._apply(self._parser.close())
        self._closed = True

    def _apply(self, events: list[ServerSentEvent]) -> None:
        for sse in events:
            self.events += 1
            if sse.data == "[DONE]":  # chat-completions style terminator some servers add
                continue
            try:
                event = json.loads(sse.data)
            except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
                self.malformed += 1
                continue
            if not isinstance(event, dict):
                self.malformed += 1
                continue
            if not isinstance(event.get("type"), str) and sse.event:
                event["type"] = sse.event  # the object is ours, fresh from json.loads
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
        return self.accumulator.result()
