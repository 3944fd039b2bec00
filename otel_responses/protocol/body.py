"""JSON bodies: a request's object parsed at most once (the access log and the recorder share one
`ParsedBody`, handed down in the ASGI scope under `SCOPE_KEY`), and the one encoder for writing."""

from __future__ import annotations

import json
from typing import Any

SCOPE_KEY = "otel_responses.parsed_body"
# One encoder, reused: json.dumps builds a new one per call when given options.
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_ESCAPED = json.JSONEncoder(separators=(",", ":")).encode


def json_text(value: Any) -> str:
    """Compact JSON, non-ASCII characters as they are: how every body and event is written (the
    adapter's, the store's), so a stored Response reads back byte for byte."""
    return _ENCODE(value)


def json_bytes(value: Any) -> bytes:
    """`json_text` in UTF-8. A lone surrogate (``\\ud800`` is valid JSON, but no character)
    has no UTF-8: such a value is written with non-ASCII escaped, as the client may have sent
    it, rather than failing the call."""
    text = _ENCODE(value)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _ESCAPED(value).encode()


def json_object(raw: bytes | str) -> dict[str, Any] | None:
    """`raw` (a body, or an SSE event's data) as a JSON object, or None if it is not one."""
    if not raw.lstrip().startswith(b"{" if isinstance(raw, bytes) else "{"):
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return None
    return value if isinstance(value, dict) else None


class ParsedBody:
    """Remembers the last body parsed. Callers must not mutate the object they get back."""

    __slots__ = ("_raw", "_value")

    def __init__(self) -> None:
        self._raw: bytes | None = None
        self._value: dict[str, Any] | None = None

    def object(self, raw: bytes) -> dict[str, Any] | None:
        # Each layer joins the body's chunks itself, so the bytes are equal, not identical.
        if self._raw is None or (raw is not self._raw and raw != self._raw):
            self._value = json_object(raw)
            self._raw = raw
        return self._value


TOO_DEEP = "…[nested too deep]"
"""What stands for a value nested past `cut_depth`'s bound."""
MAX_DEPTH = 64
"""JSON nesting kept when a payload is too deep to record whole (no real one comes near)."""


def cut_depth(value: Any, max_depth: int) -> tuple[Any, bool]:
    """A copy of ``value`` with each container nested more than ``max_depth`` deep replaced by
    `TOO_DEEP`, and whether any was. Iterative: the value may nest deeper than Python's stack,
    which is why it is cut (JSON parses far deeper than the encoders and walks can go)."""
    cut = False
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 0)]  # node, holder, key, depth
    while stack:
        node, holder, key, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth >= max_depth:
                holder[key], cut = TOO_DEEP, True
                continue
            copy: Any = dict(node) if isinstance(node, dict) else list(node)
            holder[key] = copy
            pairs = copy.items() if isinstance(copy, dict) else enumerate(copy)
            stack.extend((child, copy, k, depth + 1) for k, child in pairs
                         if isinstance(child, dict | list))
        else:
            holder[key] = node
    return root[0], cut
