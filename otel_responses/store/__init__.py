"""Stored responses for adapter mode: the record, the store protocol and its backends (memory,
SQLite, Redis), the chain of a ``previous_response_id`` and the retrieval endpoints."""

from otel_responses.store.record import (
    ResponseStore,
    StoredResponse,
    StoreUnavailable,
)

__all__ = ["ResponseStore", "StoreUnavailable", "StoredResponse"]
