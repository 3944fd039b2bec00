"""Strings from parsed JSON made encodable: JSON can spell a lone surrogate (``"\\ud800"``),
which no UTF-8 encoder (OTLP, Prometheus) accepts."""

from __future__ import annotations

import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
TRUNCATED = "…[truncated]"


def capped(text: str, max_length: int) -> str:
    """``text`` cut to ``max_length`` characters, marked `TRUNCATED`, if it is longer."""
    if len(text) <= max_length:
        return text
    return text[:max_length - len(TRUNCATED)] + TRUNCATED


def encodable(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD; ``text`` itself when it has none.

    ASCII strings cost nothing (CPython knows they are); others one UTF-8 encoding.
    """
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text)
    return text
