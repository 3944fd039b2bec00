"""A JSON object body seen through a bounded window: its first and last bytes only, so a 60 MB
answer costs a fixed amount of memory and a parse that never holds the GIL for long."""

from __future__ import annotations

import codecs
import re
from typing import Any

from otel_responses.protocol.body import json_object

HEAD_BYTES = 1024 * 1024
"""Bodies up to this size are parsed whole; past it only this prefix is kept, and parsed as a
truncated document (strings and arrays cut where the prefix ends)."""
TAIL_BYTES = 64 * 1024
"""The last bytes kept: the top-level members after a huge ``output`` (``usage`` above all)."""

_STRUCTURE = re.compile(r'["{}\[\],:]')
_CLOSERS = {"{": "}", "[": "]"}
# An escape cut short, or the first half of a surrogate pair whose second half was cut off.
_PARTIAL_ESCAPE = re.compile(r"\\(u(?:[dD][89abAB][0-9a-fA-F]{0,2}|[0-9a-fA-F]{0,3}))?$")


class BodyWindow:
    """Fed a body chunk by chunk; keeps its head and tail, counts the rest."""

    __slots__ = ("_head", "_tail", "size")

    def __init__(self) -> None:
        self._head = bytearray()
        self._tail = bytearray()
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = HEAD_BYTES - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self._tail += chunk
            if len(self._tail) > TAIL_BYTES:
                del self._tail[:-TAIL_BYTES]

    @property
    def whole(self) -> bool:
        """Whether every byte was kept (the object parsed is then the body's own)."""
        return self.size <= HEAD_BYTES

    def object(self) -> dict[str, Any] | None:
        """The body as a JSON object; past `HEAD_BYTES`, what the head and tail show of it."""
        if self.whole:
            return json_object(bytes(self._head))
        head = prefix_object(self._head)
        if head is None:
            return None
        head.update(trailing_members(self._tail))
        return head


def prefix_object(data: bytes | bytearray) -> dict[str, Any] | None:
    """The JSON object whose first bytes are ``data``, its open strings and containers closed
    where ``data`` ends (a member cut before its value is left out); None if it is not one."""
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(data)  # drops a cut code point
    start = len(text) - len(text.lstrip())
    if not text.startswith("{", start):
        return None
    stack: list[str] = []
    expect_key = False
    safe = start  # the end of the longest prefix that closing its containers makes valid
    pos = start
    while (found := _STRUCTURE.search(text, pos)) is not None:
        char, at = found.group(), found.start()
        pos = at + 1
        if char == '"':
            end = _string_end(text, pos)
            if end < 0:  # the data ends inside this string
                if not expect_key:
                    return _closed(_without_cut_escape(text) + '"', stack)
                break
            pos = end + 1
            if not expect_key:
                safe = pos
        elif char in "{[":
            stack.append(char)
            expect_key = char == "{"
            safe = pos
        elif char in "}]":
            if not stack:
                break
            stack.pop()
            expect_key = False
            safe = pos
            if not stack:  # the whole object fits: the rest is after it
                return json_object(text[start:pos].encode())
        elif char == ",":
            safe = at
            expect_key = bool(stack) and stack[-1] == "{"
        else:  # ":"
            expect_key = False
    # Every push and pop is a safe point, so the containers open at `safe` are those open now.
    return _closed(text[:safe], stack)


def trailing_members(data: bytes | bytearray) -> dict[str, Any]:
    """The complete top-level members at the end of a JSON object whose last bytes are
    ``data``, read backwards from its closing brace; {} if none can be read."""
    text = bytes(data).decode("utf-8", "replace").rstrip()
    if not text.endswith("}"):
        return {}
    marks = [(m.start(), m.group()) for m in _STRUCTURE.finditer(text, 0, len(text) - 1)]
    depth = 1  # inside the top-level object
    start: int | None = None
    i = len(marks) - 1
    while i >= 0:
        at, char = marks[i]
        i -= 1
        if char == '"':
            if _escaped(text, at) is not False:
                return _members(text, start)  # escaped, or unknowable at the window's edge
            while i >= 0:  # back to the string's opening quote
                at, char = marks[i]
                i -= 1
                if char == '"':
                    escaped = _escaped(text, at)
                    if escaped is None:
                        return _members(text, start)
                    if not escaped:
                        break
            else:
                break
        elif char in "}]":
            depth += 1
        elif char in "{[":
            depth -= 1
            if depth == 0:  # the top-level brace itself: every member is here
                return _members(text, at)
        elif char == "," and depth == 1:
            start = at
    return _members(text, start)


def _members(text: str, start: int | None) -> dict[str, Any]:
    if start is None:
        return {}
    value = json_object(("{" + text[start + 1:]).encode())
    return value or {}


def _string_end(text: str, pos: int) -> int:
    """The index of the quote closing the string whose content starts at ``pos``, or -1."""
    while (end := text.find('"', pos)) >= 0:
        if not _escaped(text, end):
            return end
        pos = end + 1
    return -1


def _escaped(text: str, at: int) -> bool | None:
    """Whether the quote at ``at`` is escaped; None if the backslashes run to the window's
    start (what precedes them is unknown)."""
    run = at
    while run > 0 and text[run - 1] == "\\":
        run -= 1
    if run == 0 and at > 0:
        return None
    return (at - run) % 2 == 1


def _without_cut_escape(text: str) -> str:
    """``text`` without the escape sequences the cut left unfinished at its end (at most two:
    a cut second half of a surrogate pair, then the first half it leaves alone)."""
    while (match := _PARTIAL_ESCAPE.search(text)) is not None:
        run = match.start()
        while run > 0 and text[run - 1] == "\\":
            run -= 1
        if (match.start() - run) % 2:  # the backslash is itself escaped: a complete "\\"
            break
        text = text[:match.start()]
    return text


def _closed(text: str, stack: list[str]) -> dict[str, Any] | None:
    return json_object((text + "".join(_CLOSERS[c] for c in reversed(stack))).encode())
