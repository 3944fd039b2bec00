"""What the adapter and the retrieval endpoints ask of the store: bounded in time, failures
turned into `StoreUnavailable` for reads and into a logged, counted note for writes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from otel_responses.protocol.chat import new_id
from otel_responses.store.items import listed_input
from otel_responses.store.record import (
    Operation,
    ResponseStore,
    StoredResponse,
    StoreUnavailable,
)
from otel_responses.store.url import StoreSpec

log = logging.getLogger("otel_responses.store")

T = TypeVar("T")
# Seconds any store operation may take: a read a request needs fails fast (503) instead.
DEFAULT_TIMEOUT = 2.0


class ChainBroken(Exception):
    """A ``previous_response_id`` (or an earlier response of its chain) is unknown, expired or
    deleted; ``missing`` is the id not found."""

    def __init__(self, missing: str) -> None:
        super().__init__(missing)
        self.missing = missing


class Responses:
    """The store as the rest of the app uses it, once opened (or given a ``store``): every
    operation bounded by ``timeout`` seconds; ``on_error(operation)`` is called for every
    failure (metrics hang off it)."""

    def __init__(self, *, ttl: float, timeout: float = DEFAULT_TIMEOUT,
                 store: ResponseStore | None = None, described: str = "response store",
                 on_error: Callable[[Operation], None] = lambda op: None) -> None:
        self.store = store
        self.ttl = ttl
        self.timeout = timeout
        self.described = described
        self.on_error = on_error

    async def open(self, spec: StoreSpec, max_mb: float | None) -> None:
        """Open the backend ``spec`` names (at startup: a file that cannot be made stops it)."""
        self.store = await spec.open(max_mb=max_mb, timeout=self.timeout)
        self.described = spec.described

    async def _bounded(self, operation: Operation,
                       work: Callable[[ResponseStore], Awaitable[T]]) -> T:
        try:
            if self.store is None:
                raise StoreUnavailable("not open")
            async with asyncio.timeout(self.timeout):
                return await work(self.store)
        except (StoreUnavailable, TimeoutError) as exc:
            self.on_error(operation)
            reason = str(exc) or f"no answer within {self.timeout:g} s"
            raise StoreUnavailable(f"{self.described}: {operation} failed: {reason}") from None

    async def get(self, response_id: str, owner: str | None, *,
                  events: bool = False) -> StoredResponse | None:
        return await self._bounded("read", lambda store: store.get(response_id, owner,
                                                                   events=events))

    async def delete(self, response_id: str, owner: str | None) -> bool:
        return await self._bounded("delete", lambda store: store.delete(response_id, owner))

    async def chain(self, previous_id: str, owner: str | None) -> list[StoredResponse]:
        """The chain ending at ``previous_id``, oldest first, in two reads (the last
        response names the others); `ChainBroken` if any of it is gone, since continuing from
        part of a conversation would answer a different one."""
        last = await self.get(previous_id, owner)
        if last is None:
            raise ChainBroken(previous_id)
        if not last.ancestors:
            return [last]
        earlier = await self._bounded("read", lambda store: store.get_many(last.ancestors,
                                                                           owner))
        chain: list[StoredResponse] = []
        for response_id, record in zip(last.ancestors, earlier, strict=True):
            if record is None:
                raise ChainBroken(response_id)
            chain.append(record)
        return [*chain, last]

    def record(self, response: Mapping[str, Any], request: Mapping[str, Any],
               events: bytes | None, owner: str | None,
               chain: Sequence[str] = ()) -> StoredResponse:
        """The record of a response that ended, made from the client's request body, the
        event stream it was sent as (None: not streamed) and the ids of the ``chain`` it
        continued (oldest first)."""
        now = time.time()
        return StoredResponse(
            id=str(response["id"]), owner=owner, created_at=now, expires_at=now + self.ttl,
            response=response, input_items=listed_input(request.get("input"), new_id),
            events=events, ancestors=tuple(chain))

    async def save(self, record: StoredResponse) -> str | None:
        """Store ``record``; a failure is logged and counted, never raised: the client already
        has its response. Returns what failed, for the span, or None."""
        try:
            await self._bounded("write", lambda store: store.put(record))
        except StoreUnavailable as exc:
            log.warning("response %s was not stored: %s", record.id, exc)
            return str(exc)
        return None

    async def aclose(self) -> None:
        if self.store is not None:
            store, self.store = self.store, None
            await store.aclose()
