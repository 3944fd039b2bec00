"""The operator's price file (``--prices``): read and validated at startup, then re-read when it
changes, as a Kubernetes ConfigMap mount does when it swaps its symlink."""

from __future__ import annotations

import asyncio
import logging
import os

import yaml

from otel_responses.telemetry.cost import PriceEntry, Pricer, PricesError, parse_prices

log = logging.getLogger("otel_responses.cost")

# Seconds between two looks at the file (one stat() call each, in a worker thread).
RELOAD_INTERVAL = 2.0
_Signature = tuple[int, int, int, int]


def read_prices(path: str) -> tuple[PriceEntry, ...]:
    """The entries of the YAML or JSON file at ``path``; `PricesError` names what is wrong."""
    try:
        with open(path, encoding="utf-8") as file:
            document = yaml.safe_load(file)  # JSON is YAML
    except OSError as exc:
        raise PricesError(f"price file {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PricesError(f"price file {path}: not valid YAML or JSON: {exc}") from None
    try:
        return parse_prices(document)
    except PricesError as exc:
        raise PricesError(f"price file {path}: {exc}") from None


def _signature(path: str) -> _Signature | None:
    """What changes when the file is rewritten or its mount swapped (stat follows symlinks)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class PricesFile:
    """Feeds ``pricer`` the entries of the file at ``path``: read once now (raising
    `PricesError` if unusable), then again by `check` whenever the file changed. A changed
    file that is broken or gone is logged and the last good entries stay in use."""

    def __init__(self, path: str, pricer: Pricer) -> None:
        self.path = path
        self.pricer = pricer
        self._seen = _signature(path)
        pricer.use(read_prices(path))

    def check(self) -> bool:
        """Re-read the file if it changed since the last look; True if new entries are in use."""
        signature = _signature(self.path)
        if signature == self._seen:
            return False
        self._seen = signature
        if signature is None:
            log.warning("price file %s is gone; keeping the prices last read from it",
                        self.path)
            return False
        try:
            entries = read_prices(self.path)
        except PricesError as exc:
            log.warning("price file changed but cannot be used, keeping the last good one: %s",
                        exc)
            return False
        self.pricer.use(entries)
        log.info("price file %s reloaded: %d entries", self.path, len(entries))
        return True

    async def watch(self) -> None:
        """Look for changes every `RELOAD_INTERVAL` seconds until cancelled (off the loop)."""
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            await asyncio.to_thread(self.check)
