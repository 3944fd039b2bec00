"""The operator's price file (``--prices``): read and validated at startup, then re-read when it
changes, as a Kubernetes ConfigMap mount does when it swaps its symlink."""

from __future__ import annotations

import logging

import yaml

from otel_responses.telemetry.cost import PriceEntry, Pricer, PricesError, parse_prices
from otel_responses.watched_file import WatchedFile

log = logging.getLogger("otel_responses.cost")


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


class PricesFile(WatchedFile[tuple[PriceEntry, ...]]):
    """Feeds ``pricer`` the entries of the price file at ``path``: read once now (raising
    `PricesError` if unusable), then again whenever the file changed (`WatchedFile`). A changed
    file that is broken or gone is logged and the last good entries stay in use."""

    def __init__(self, path: str, pricer: Pricer) -> None:
        super().__init__(path, read_prices, PricesError, what="price file", log=log,
                         on_change=pricer.use)
