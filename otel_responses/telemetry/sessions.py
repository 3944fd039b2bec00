"""Bounded memories of recent calls: response id → session id and span, for chains of calls;
call id → the span that asked for it, for a client's answer."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from opentelemetry.trace import SpanContext

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class ChainLink:
    session_id: str
    span_context: SpanContext


class RecentIndex(Generic[V]):
    """An LRU map from ids to what was recorded with them, in this process.

    Bounded: past ``capacity`` the least recently used entries are forgotten.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def remember(self, key: str, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


class SessionIndex(RecentIndex[ChainLink]):
    """Response ids, so a ``previous_response_id`` finds its chain's session and span; a chain
    whose root was forgotten starts a new session at the first response still remembered."""
