"""Who is calling: the identity of the authenticated API key, handed down in the ASGI scope by
the guard (``otel_responses.guard``) to the access log, the span and the response store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCOPE_KEY = "otel_responses.caller"
"""ASGI scope key of the `Caller` of an authenticated request (absent when auth is off)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An inbound key's identity as the keys file names it; never the key itself."""

    name: str
    user_id: str  # the key's user_id, else its name
    team: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


def caller_of(scope: Mapping[str, Any]) -> Caller | None:
    caller = scope.get(SCOPE_KEY)
    return caller if isinstance(caller, Caller) else None
