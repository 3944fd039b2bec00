"""Limit counters in Redis, shared by every replica: each admission is one Lua script, so the
check-then-charge of all its limits is atomic across processes (`limits` has the window), and
so is each settlement (tokens charged, slots given back)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from otel_responses.guard.limits import BUCKETS, Admission, Check, State

PREFIX = "otel-responses:limit:"
# A replica that dies holding concurrency slots frees them after this (no stream lasts that long
# in practice; a longer one stops counting then).
LEASE_SECONDS = 3600.0

# Windows are hashes {bucket index: amount}; slots are sorted sets {lease: expiry}. The caller's
# clock is used (ARGV[1]), so replicas must agree on the time to within a bucket (NTP does).
_ADMIT = """
local now, lease, lease_seconds = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local buckets = tonumber(ARGV[4])
local out = {0}
local admitted = true
local found = {}
for i = 1, #KEYS do
  local base = 4 + (i - 1) * 3
  local window, limit, cost = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]),
    tonumber(ARGV[base + 3])
  local used, wait = 0, 0
  if window == 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    used = redis.call('ZCARD', KEYS[i])
    if used + 1 > limit then wait = 1 end
  else
    local width = window / buckets
    local oldest = math.floor(now / width) - buckets
    local flat = redis.call('HGETALL', KEYS[i])
    local kept = {}
    for j = 1, #flat, 2 do
      local index = tonumber(flat[j])
      if index < oldest then
        redis.call('HDEL', KEYS[i], flat[j])
      else
        local amount = tonumber(flat[j + 1])
        used = used + amount
        kept[#kept + 1] = {index, amount}
      end
    end
    if used + cost > limit or used >= limit then
      table.sort(kept, function(a, b) return a[1] < b[1] end)
      wait = window
      local left = used
      for _, bucket in ipairs(kept) do
        left = left - bucket[2]
        if left + cost <= limit and left < limit then
          wait = math.max(0, (bucket[1] + 1) * width + window - now)
          break
        end
      end
    end
    found[i] = math.floor(now / width)
  end
  if wait > 0 then admitted = false end
  out[#out + 1] = tostring(used)
  out[#out + 1] = tostring(wait)
end
if admitted then
  out[1] = 1
  for i = 1, #KEYS do
    local base = 4 + (i - 1) * 3
    local window, cost = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 3])
    if window == 0 then
      redis.call('ZADD', KEYS[i], now + lease_seconds, lease)
      redis.call('PEXPIRE', KEYS[i], math.ceil(lease_seconds * 1000))
    elseif cost > 0 then
      redis.call('HINCRBYFLOAT', KEYS[i], found[i], cost)
      redis.call('PEXPIRE', KEYS[i], math.ceil(window * (1 + 2 / buckets) * 1000))
    end
  end
end
return out
"""

_SETTLE = """
local now, buckets, charges, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  ARGV[4]
for i = 1, charges do
  local window, amount = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
  redis.call('HINCRBYFLOAT', KEYS[i], math.floor(now / (window / buckets)), amount)
  redis.call('PEXPIRE', KEYS[i], math.ceil(window * (1 + 2 / buckets) * 1000))
end
for i = charges + 1, #KEYS do
  redis.call('ZREM', KEYS[i], lease)
end
return #KEYS
"""


Call = tuple[str, list[str], list[str | float]]  # script, keys, args
_Queued = tuple[Call, asyncio.Future[Any]]  # a call waiting for the next pipeline, its reply


class RedisStore:
    """`LimitStore` on a Redis server (``redis://``, ``rediss://`` or ``unix://`` URL).

    Round trips cost more than the scripts: the admissions asked for in one turn of the event
    loop go out as one pipeline, and settlements wait (up to ``settle_delay`` seconds) to ride
    along with the next admissions, ahead of them, so a busy replica makes about one round
    trip per call and its charges land before its next check. Calls fail fast (``timeout``
    seconds, no retries) so an outage costs a request little; the guard then fails open or
    closed. A settlement that fails raises from `settle` (the guard counts and logs it) and is
    dropped.
    """

    def __init__(self, url: str, timeout: float = 0.5, settle_delay: float = 0.005) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._settle_delay = settle_delay
        self._shas: dict[str, str] = {}
        self._admits: list[_Queued] = []
        self._settles: list[_Queued] = []
        self._soon: asyncio.Handle | None = None
        self._later: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def admit(self, checks: Sequence[Check], now: float, lease: str) -> Admission:
        args: list[str | float] = [repr(now), lease, repr(LEASE_SECONDS), BUCKETS]
        for check in checks:
            args += [repr(check.window), repr(check.limit), repr(check.cost)]
        future = _queue(self._admits, (_ADMIT, [PREFIX + c.counter for c in checks], args))
        if self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self._flush)
        reply = await future
        states = tuple(State(float(reply[i]), float(reply[i + 1]))
                       for i in range(1, len(reply), 2))
        return Admission(reply[0] == 1, states, lease)

    async def settle(self, charges: Sequence[tuple[str, float, float]], slots: Sequence[str],
                     lease: str, now: float) -> None:
        charges = [c for c in charges if c[2]]
        if not charges and not slots:
            return
        args: list[str | float] = [repr(now), BUCKETS, len(charges), lease]
        for _, window, amount in charges:
            args += [repr(window), repr(amount)]
        future = _queue(self._settles, (_SETTLE, [PREFIX + c[0] for c in charges]
                                        + [PREFIX + c for c in slots], args))
        if self._later is None and self._soon is None:
            self._later = asyncio.get_running_loop().call_later(self._settle_delay, self._flush)
        await future  # raises what the server (or the connection to it) raised

    def _flush(self) -> None:
        """Send what is queued, settlements first (they count before the checks)."""
        for handle in (self._soon, self._later):
            if handle is not None:
                handle.cancel()
        self._soon = self._later = None
        admits, settles = self._admits, self._settles
        self._admits, self._settles = [], []
        task = asyncio.get_running_loop().create_task(self._send(settles + admits, len(settles)))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _send(self, queued: list[_Queued], settled: int) -> None:
        """Send ``queued`` (its first ``settled`` are settlements), then wake the admissions
        first: their requests wait, the settled calls have answered already."""
        try:
            replies = await self._pipeline([call for call, _ in queued])
        except Exception as exc:
            replies = [exc] * len(queued)
        answered = list(zip(queued, replies, strict=True))
        for (_, future), reply in answered[settled:] + answered[:settled]:
            if future.done():  # its request was cancelled meanwhile
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        """Each call by EVALSHA, in one pipeline; scripts the server lost (a restart) are
        loaded and just those calls sent again (a script that was not found did not run)."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            for script in {calls[i][0] for i in todo}:
                if attempt or script not in self._shas:
                    self._shas[script] = await self._redis.script_load(script)
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    script, keys, args = calls[i]
                    pipe.evalsha(self._shas[script], len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
            for i, result in zip(todo, results, strict=True):
                replies[i] = result
            todo = [i for i in todo if isinstance(replies[i], NoScriptError)]
            if not todo:
                break
        return replies

    async def aclose(self) -> None:
        if self._settles:
            self._flush()
        await asyncio.gather(*self._flushes, return_exceptions=True)
        await self._redis.aclose()


def _queue(queue: list[_Queued], call: Call) -> asyncio.Future[Any]:
    """Queue ``call`` for the next pipeline; the future gets its reply (or exception)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    queue.append((call, future))
    return future
