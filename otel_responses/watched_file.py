"""A configuration file re-read when it changes (the keys file, the price file): looked at and
parsed in a worker thread by a background task, so a request only ever reads the parsed value."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
# Seconds between two looks at a watched file (one stat() each, off the event loop).
RELOAD_INTERVAL = 1.0
Signature = tuple[int, int, int, int]


def signature(path: str) -> Signature | None:
    """What changes when the file is rewritten or its mount swapped: stat follows symlinks, and
    a Kubernetes Secret or ConfigMap mount swaps its ``..data`` link, a new inode. None when
    the file cannot be looked at (gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class WatchedFile(Generic[T]):
    """What ``read`` makes of the file at ``path``, as `value`.

    The file is read once now (``read``'s error is raised: at startup a broken file is an
    error), then again by `watch`, a task the app's lifespan runs, whenever it changed. A
    changed file that is broken (``read`` raised one of ``errors``, whose message is logged:
    it must name the place, never a secret) or gone is logged once and the last good value
    stays in use. ``on_change`` gets each new value, on the event loop.
    """

    def __init__(self, path: str | os.PathLike[str], read: Callable[[str], T],
                 errors: type[Exception], *, what: str, log: logging.Logger,
                 on_change: Callable[[T], None] = lambda value: None) -> None:
        self.path = os.fspath(path)
        self.what = what
        self._read = read
        self._errors = errors
        self._log = log
        self._on_change = on_change
        self._seen = signature(self.path)
        self.value = read(self.path)
        on_change(self.value)

    def check(self) -> bool:
        """Re-read the file if it changed since the last look; True if a new value is in use.
        It blocks on the file system: on the event loop, `watch` instead."""
        return self._use(self._reread())

    async def watch(self) -> None:
        """Look for a change every `RELOAD_INTERVAL` seconds, off the loop, until cancelled."""
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            self._use(await asyncio.to_thread(self._reread))

    def _reread(self) -> T | None:
        """The file's new value if it changed and can be used (``read`` never makes None)."""
        seen = signature(self.path)
        if seen == self._seen:
            return None
        self._seen = seen  # a broken version is logged once, not at every look
        if seen is None:
            self._log.error("%s %s is gone; the last good one stays in use", self.what,
                            self.path)
            return None
        try:
            return self._read(self.path)
        except self._errors as exc:
            problem = str(exc)
        except Exception as exc:  # a fault of read's own: the type only (no value may show)
            problem = type(exc).__name__
        self._log.error("%s not reloaded, the last good one stays in use: %s", self.what,
                        problem)
        return None

    def _use(self, value: T | None) -> bool:
        if value is None:
            return False
        self.value = value
        self._on_change(value)
        self._log.info("%s %s reloaded", self.what, self.path)
        return True
