"""The in-process backend: bounded by size, oldest evicted first; lost on restart and not
shared between processes."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from otel_responses.store.record import StoredResponse


class MemoryStore:
    """Records kept in insertion order with their encoded size; past ``max_bytes`` the oldest
    go first. Expired records are dropped when met."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._records: OrderedDict[str, tuple[StoredResponse, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    async def get(self, response_id: str, owner: str | None, *,
                  events: bool = False) -> StoredResponse | None:
        found = self._records.get(response_id)
        if found is None:
            return None
        record = found[0]
        if record.expires_at <= time.time():
            self._drop(response_id)
            return None
        return record if record.owner == owner else None

    async def get_many(self, response_ids: Sequence[str],
                       owner: str | None) -> list[StoredResponse | None]:
        return [await self.get(response_id, owner) for response_id in response_ids]

    async def put(self, record: StoredResponse) -> None:
        self._drop(record.id)
        # The encoded size is what a persistent backend would hold: one measure for all.
        size = len(record.encode()) + len(record.events or b"")
        self._records[record.id] = (record, size)
        self.size += size
        while self.size > self.max_bytes and len(self._records) > 1:
            self._drop(next(iter(self._records)))

    async def delete(self, response_id: str, owner: str | None) -> bool:
        if await self.get(response_id, owner) is None:
            return False
        self._drop(response_id)
        return True

    async def aclose(self) -> None:
        self._records.clear()
        self.size = 0

    def _drop(self, response_id: str) -> None:
        found = self._records.pop(response_id, None)
        if found is not None:
            self.size -= found[1]
