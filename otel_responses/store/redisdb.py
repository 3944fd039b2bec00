"""The shared backend: Redis (the ``redis`` package's asyncio client), so several proxy
replicas serve one set of responses; each record is one key carrying its TTL natively."""

from __future__ import annotations

import time
from collections.abc import Sequence

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from otel_responses.store.record import StoredResponse, StoreUnavailable

KEY_PREFIX = "otel-responses:response:"
EVENTS_PREFIX = "otel-responses:events:"  # a streamed response's events, read for replays
MAX_CONNECTIONS = 64


class RedisStore:
    """Commands go through a bounded pool; every connect, command and wait for a pooled
    connection is bounded by ``timeout`` seconds. A failed command is tried once more on a
    fresh connection (a pooled one may predate a Redis restart), with no backoff.

    The size bound is Redis's own: run it with ``maxmemory`` and ``maxmemory-policy
    volatile-ttl``; every key has the same TTL, so the oldest are evicted first.
    """

    def __init__(self, url: str, *, timeout: float, described: str) -> None:
        self.described = described  # the URL without its password, for messages
        pool = BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1))
        self._redis = Redis(connection_pool=pool)

    async def get(self, response_id: str, owner: str | None, *,
                  events: bool = False) -> StoredResponse | None:
        try:
            if events:
                data, stream = await self._redis.mget(KEY_PREFIX + response_id,
                                                      EVENTS_PREFIX + response_id)
            else:
                data, stream = await self._redis.get(KEY_PREFIX + response_id), None
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if data is None:
            return None
        record = StoredResponse.decode(data, stream)
        return record if record.visible(owner, time.time()) else None

    async def get_many(self, response_ids: Sequence[str],
                       owner: str | None) -> list[StoredResponse | None]:
        try:
            found = await self._redis.mget([KEY_PREFIX + i for i in response_ids])
        except RedisError as exc:
            raise self._unavailable(exc) from None
        now = time.time()
        records = [None if data is None else StoredResponse.decode(data) for data in found]
        return [r if r is not None and r.visible(owner, now) else None for r in records]

    async def put(self, record: StoredResponse) -> None:
        ttl_ms = int((record.expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return
        data = record.encode()
        try:
            if record.events is None:
                await self._redis.set(KEY_PREFIX + record.id, data, px=ttl_ms)
                return
            # The events first, in one round trip: a reader that finds the record finds its
            # events (a crash in between leaves only events, which expire unseen).
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(EVENTS_PREFIX + record.id, record.events, px=ttl_ms)
                pipe.set(KEY_PREFIX + record.id, data, px=ttl_ms)
                await pipe.execute()
        except RedisError as exc:
            raise self._unavailable(exc) from None

    async def delete(self, response_id: str, owner: str | None) -> bool:
        if await self.get(response_id, owner) is None:  # only its owner may delete it
            return False
        try:
            return bool(await self._redis.delete(KEY_PREFIX + response_id,
                                                 EVENTS_PREFIX + response_id))
        except RedisError as exc:
            raise self._unavailable(exc) from None

    async def aclose(self) -> None:
        await self._redis.aclose()

    def _unavailable(self, exc: RedisError) -> StoreUnavailable:
        return StoreUnavailable(f"Redis store {self.described}: {type(exc).__name__}: {exc}")
