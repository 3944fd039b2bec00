"""One stored response (`StoredResponse`), how it is serialised, and the protocol every backend
implements (`ResponseStore`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from otel_responses.protocol.body import json_bytes

Operation = Literal["read", "write", "delete"]
OPERATIONS: tuple[Operation, ...] = ("read", "write", "delete")


class StoreUnavailable(Exception):
    """The store could not be read or written (down, timed out, failing); the message says why
    and never carries a credential."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as the store keeps it.

    ``response`` is the final Response object exactly as the client got it; ``input_items`` is
    this request's own input (not the chain's), as a list of items that all have ids;
    ``events`` is the event stream exactly as it was sent (SSE bytes; None: the response was
    not streamed). Backends keep the events apart and read them only when asked: a chain's
    history never needs them, and they are most of a streamed record's size.
    ``owner`` is the inbound key that created it (None: no inbound keys); a record is visible
    only to its owner. ``ancestors`` are the ids of the chain it continues, oldest first (the
    last is `previous_response_id`), so a chain is read in one round trip. Times are Unix
    seconds.
    """

    id: str
    owner: str | None
    created_at: float
    expires_at: float
    response: Mapping[str, Any]
    input_items: Sequence[Mapping[str, Any]]
    events: bytes | None
    ancestors: Sequence[str] = ()

    @property
    def previous_response_id(self) -> str | None:
        """The response this one continues: the last of its ancestors."""
        return self.ancestors[-1] if self.ancestors else None

    def encode(self) -> bytes:
        """Everything but the events, as JSON (with the derived ``previous_response_id``,
        which records written by earlier versions hold and their readers require)."""
        return json_bytes({
            "id": self.id, "owner": self.owner, "created_at": self.created_at,
            "expires_at": self.expires_at, "previous_response_id": self.previous_response_id,
            "response": self.response, "input_items": self.input_items,
            "ancestors": self.ancestors,
        })

    @classmethod
    def decode(cls, data: bytes, events: bytes | None = None) -> StoredResponse:
        """The record ``encode`` made, with its ``events``; `StoreUnavailable` if ``data`` is
        not one (a store holding something else is a failing store, not a missing record)."""
        try:
            raw = json.loads(data)
            return cls(raw["id"], raw["owner"], float(raw["created_at"]),
                       float(raw["expires_at"]), raw["response"], raw["input_items"],
                       events, tuple(raw["ancestors"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreUnavailable(f"a stored record cannot be read: {exc}") from None

    def visible(self, owner: str | None, now: float) -> bool:
        return self.owner == owner and now < self.expires_at


class ResponseStore(Protocol):
    """A backend. ``get`` and ``delete`` see only records of ``owner`` that have not expired;
    every method raises `StoreUnavailable` when the backend fails."""

    async def get(self, response_id: str, owner: str | None, *,
                  events: bool = False) -> StoredResponse | None:
        """The record; its ``events`` are read only if asked for (else they may be None)."""

    async def get_many(self, response_ids: Sequence[str],
                       owner: str | None) -> list[StoredResponse | None]:
        """The records of ``response_ids``, in that order (None where one is not found),
        without their events, in one round trip where the backend has one."""

    async def put(self, record: StoredResponse) -> None:
        """Store ``record`` whole, or not at all (a reader never sees part of it)."""

    async def delete(self, response_id: str, owner: str | None) -> bool:
        """True if a record was deleted."""

    async def aclose(self) -> None: ...
