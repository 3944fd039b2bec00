"""What the demo upstream saw: recorded requests and the life of each stream, for tests."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

StreamOutcome = Literal["completed", "disconnected", "cancelled"]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the demo upstream received it (headers in wire order, names lower-case)."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class StreamRecord:
    """One SSE stream: times are ``time.monotonic()``; ``outcome`` is None while it runs."""

    response_id: str
    started_at: float
    ended_at: float | None = None
    outcome: StreamOutcome | None = None
    frames_sent: int = 0


@dataclass
class DemoObserver:
    """Updated by the server's event loop; safe to read from the test thread (GIL-atomic ops).

    ``requests`` holds every request except ``GET /healthz``, oldest first (bounded).
    ``open_streams`` counts SSE streams still running; ``closed_streams`` those that ended for any
    reason, ``disconnected_streams`` the subset that ended because the client went away.
    """

    limit: int = 1000
    requests: deque[RecordedRequest] = field(init=False)
    streams: deque[StreamRecord] = field(init=False)
    open_streams: int = 0
    closed_streams: int = 0
    disconnected_streams: int = 0

    def __post_init__(self) -> None:
        self.requests = deque(maxlen=self.limit)
        self.streams = deque(maxlen=self.limit)

    @property
    def last_request(self) -> RecordedRequest | None:
        return self.requests[-1] if self.requests else None

    def wait_until(self, predicate: Callable[[DemoObserver], bool], timeout: float = 2.0) -> bool:
        """Poll ``predicate(self)`` until it is true or ``timeout`` seconds pass (test helper)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def clear(self) -> None:
        """Forget recorded requests and finished streams (counters of open streams stay)."""
        self.requests.clear()
        self.streams = deque((s for s in self.streams if s.outcome is None), maxlen=self.limit)
        self.closed_streams = self.disconnected_streams = 0

    # Called by the server.
    def record(self, request: RecordedRequest) -> None:
        self.requests.append(request)

    def stream_started(self, response_id: str) -> StreamRecord:
        record = StreamRecord(response_id, time.monotonic())
        self.streams.append(record)
        self.open_streams += 1
        return record

    def stream_ended(self, record: StreamRecord, outcome: StreamOutcome, frames_sent: int) -> None:
        record.frames_sent = frames_sent
        record.ended_at = time.monotonic()
        record.outcome = outcome
        self.open_streams -= 1
        self.closed_streams += 1
        if outcome == "disconnected":
            self.disconnected_streams += 1
