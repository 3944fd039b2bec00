"""A bounded memory of recent responses: response id → session id and span, for chains of calls."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from opentelemetry.trace import SpanContext


@dataclass(frozen=True, slots=True)
class ChainLink:
    session_id: str
    span_context: SpanContext


class SessionIndex:
    """LRU of response ids, so a ``previous_response_id`` finds its chain's session and span.

    Bounded: the oldest entries are forgotten, and a chain whose root was forgotten starts a new
    session at the first response still remembered.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, ChainLink] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, response_id: str) -> ChainLink | None:
        link = self._entries.get(response_id)
        if link is not None:
            self._entries.move_to_end(response_id)
        return link

    def remember(self, response_id: str, link: ChainLink) -> None:
        self._entries[response_id] = link
        self._entries.move_to_end(response_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
