"""Span attributes an endpoint adds to the call the telemetry middleware records: one dict per
call, handed down in the ASGI scope under `NOTES_KEY` (as `ParsedBody` is), read at the end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from otel_responses.protocol.messages import Attributes

NOTES_KEY = "otel_responses.span_notes"
CHAIN_ROOT = "otel_responses.store.chain_root"
"""The first response of the stored chain a request continues: the session when none is given."""


def call_notes(scope: Mapping[str, Any]) -> Attributes:
    """The call's notes when a telemetry middleware records it, else a dict nobody reads."""
    notes = scope.get(NOTES_KEY)
    return notes if isinstance(notes, dict) else {}
