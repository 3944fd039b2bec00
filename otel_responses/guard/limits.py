"""Rate limits as amounts charged in a sliding window (requests, tokens, or any amount such as
USD), plus concurrency slots; the store protocol and the in-memory store.

A window of length W is kept as `BUCKETS` buckets of W/60: the amount in a window is the sum of
the buckets that overlap the last W seconds, so a charge leaves the window between W and
W + W/60 after it was made. That errs on the safe side: no W-long interval ever holds more
than the limit. An admission is all-or-nothing over its checks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

BUCKETS = 60
CONCURRENT = 0.0  # the window of a concurrency check: slots, not amounts in time
Period = Literal["day", "month"]
# A calendar window's counter is named for its period, and its sliding window is longer than
# any period (a day, 31 days), so nothing slides out before the period ends; then the next
# period's counter starts at 0.
PERIOD_WINDOWS: dict[Period, float] = {"day": 2 * 86400.0, "month": 32 * 86400.0}


def calendar_period(period: Period, now: float) -> tuple[str, float]:
    """The UTC day (``2026-12-05``) or month (``2026-12``) holding ``now``, and when it ends
    (epoch seconds)."""
    at = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), start.timestamp() + 86400.0
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = start.replace(year=start.year + start.month // 12,
                              month=start.month % 12 + 1)
    return start.strftime("%Y-%m"), following.timestamp()


@dataclass(frozen=True, slots=True)
class Check:
    """One limit an admission must pass: the amount already in ``counter``'s window plus
    ``cost`` must stay within ``limit``, and with ``cost`` 0 (tokens, charged after the call)
    the window must have some of its limit left. ``window`` is `CONCURRENT` for a slot."""

    counter: str
    limit: float
    window: float
    cost: float = 0.0


@dataclass(frozen=True, slots=True)
class State:
    """A check's counter as the admission found it: the amount used (or slots held), and the
    seconds until the check would pass (0 when it passes now)."""

    used: float
    wait: float


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    states: tuple[State, ...]
    lease: str | None = None  # holds the concurrency slots taken, for release


class LimitStore(Protocol):
    """Where counters live: one process (`MemoryStore`) or shared by replicas (Redis)."""

    async def admit(self, checks: Sequence[Check], now: float, lease: str) -> Admission: ...

    async def settle(self, charges: Sequence[tuple[str, float, float]], slots: Sequence[str],
                     lease: str, now: float) -> None:
        """When a call ends: add each (counter, window, amount) unconditionally (usage known
        after the call), and give back the concurrency ``slots`` that ``lease`` took. Returns
        once the store has done it; raises if it could not."""

    async def aclose(self) -> None: ...


def fits(used: float, limit: float, cost: float) -> bool:
    return used + cost <= limit and used < limit


def bucket_width(window: float) -> float:
    return window / BUCKETS


def wait_for(buckets: Sequence[tuple[int, float]], used: float, check: Check,
             now: float) -> float:
    """Seconds until enough of the window's oldest buckets leave it for ``check`` to pass;
    ``buckets`` are (index, amount), oldest first. A cost over the limit waits a window."""
    width = bucket_width(check.window)
    left = used
    for index, amount in buckets:
        left -= amount
        if fits(left, check.limit, check.cost):
            return max(0.0, (index + 1) * width + check.window - now)
    return check.window


class _Window:
    """One counter's buckets, oldest first, with their running total."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[float]] = deque()  # [index, amount]
        self.total = 0.0

    def expire(self, oldest: int) -> None:
        buckets = self.buckets
        while buckets and buckets[0][0] < oldest:
            self.total -= buckets.popleft()[1]
        if not buckets:
            self.total = 0.0  # no float residue once empty

    def add(self, index: int, amount: float) -> None:
        last = self.buckets[-1] if self.buckets else None
        if last is not None and last[0] >= index:  # a clock that stepped back adds to the last
            last[1] += amount
        else:
            self.buckets.append([index, amount])
        self.total += amount


class MemoryStore:
    """Counters in this process; exact under any concurrency since an admission never awaits.
    Idle counters are dropped once their window has passed (checked every ``sweep`` seconds)."""

    def __init__(self, clock: Callable[[], float] | None = None, sweep: float = 60.0) -> None:
        self._windows: dict[str, _Window] = {}
        self._slots: dict[str, set[str]] = {}
        self._sweep = sweep
        self._swept = -math.inf
        self._horizon: dict[str, float] = {}  # counter → when its newest charge leaves

    async def admit(self, checks: Sequence[Check], now: float, lease: str) -> Admission:
        self._maybe_sweep(now)
        states: list[State] = []
        admitted = True
        for check in checks:
            if check.window == CONCURRENT:
                used = float(len(self._slots.get(check.counter, ())))
                ok = fits(used, check.limit, 1)
                # Nothing says when a slot frees: a second is the usual retry.
                states.append(State(used, 0.0 if ok else 1.0))
            else:
                window = self._window(check.counter, check.window, now)
                used = window.total
                ok = fits(used, check.limit, check.cost)
                states.append(State(used, 0.0 if ok else wait_for(
                    [(int(i), a) for i, a in window.buckets], used, check, now)))
            admitted &= ok
        if admitted:
            for check in checks:
                if check.window == CONCURRENT:
                    self._slots.setdefault(check.counter, set()).add(lease)
                elif check.cost:
                    self._add(check.counter, check.window, check.cost, now)
        return Admission(admitted, tuple(states), lease)

    async def settle(self, charges: Sequence[tuple[str, float, float]], slots: Sequence[str],
                     lease: str, now: float) -> None:
        for counter, window, amount in charges:
            if amount:
                self._window(counter, window, now)  # expire before adding
                self._add(counter, window, amount, now)
        for counter in slots:
            held = self._slots.get(counter)
            if held is not None:
                held.discard(lease)
                if not held:
                    del self._slots[counter]

    async def aclose(self) -> None:
        pass

    def _window(self, counter: str, length: float, now: float) -> _Window:
        window = self._windows.get(counter)
        if window is None:
            window = self._windows[counter] = _Window()
        else:
            window.expire(math.floor(now / bucket_width(length)) - BUCKETS)
        return window

    def _add(self, counter: str, window: float, amount: float, now: float) -> None:
        width = bucket_width(window)
        self._windows[counter].add(math.floor(now / width), amount)
        self._horizon[counter] = now + window + width

    def _maybe_sweep(self, now: float) -> None:
        if now - self._swept < self._sweep:
            return
        self._swept = now
        for counter in list(self._windows):
            if self._horizon.get(counter, -math.inf) < now:  # never charged, or long ago
                self._horizon.pop(counter, None)
                del self._windows[counter]
