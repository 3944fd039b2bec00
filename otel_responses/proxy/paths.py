"""Refuses request paths the upstream could resolve elsewhere than the proxy routes them: dot
segments (``..``, ``.``), however encoded, and encoded NUL, CR or LF."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from otel_responses.proxy.errors import ProxyError

log = logging.getLogger("otel_responses.proxy")

# Percent-decoding is repeated this often: a server that decodes twice turns %252e into ".".
_DECODE_ROUNDS = 3
_SEPARATORS = re.compile(rb"[/\\]")  # some servers (IIS, Windows-hosted ones) split on "\"
_CONTROL = frozenset(b"\x00\r\n")


def unsafe_path(raw_path: bytes) -> bool:
    """True when ``raw_path`` (as received, before any decoding) has a ``.`` or ``..`` segment
    (``/`` or ``\\`` separated, ``;params`` ignored as Tomcat does) or a NUL, CR or LF, as it
    is or percent-decoded up to three times."""
    if not any(ch in raw_path for ch in b".%\\"):
        return False  # the common case: nothing that could be or decode to a dot
    path = raw_path
    for _ in range(_DECODE_ROUNDS + 1):
        if _CONTROL.intersection(path) or any(
                segment.split(b";", 1)[0] in (b".", b"..")
                for segment in _SEPARATORS.split(path)):
            return True
        decoded = unquote_to_bytes(path)
        if decoded == path:
            return False
        path = decoded
    return False


def invalid_path() -> ProxyError:
    return ProxyError(400, "The request path contains a '.' or '..' segment, encoded or not, or "
                      "an encoded control character; the proxy does not forward it.",
                      "invalid_request_error", "invalid_path")


class PathGuard:
    """Pure ASGI: answers 400 (OpenAI-shaped) to an unsafe path instead of passing it on.

    Normalising instead would forward a path other than the one the client sent, and a client
    that sends ``..`` towards an API has made a mistake or is probing: both want to know.
    """

    __slots__ = ("app",)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
            if unsafe_path(raw_path):
                # repr: the path may hold encoded line breaks, which must not reach the log.
                log.info("refused %s %r: 400 invalid_path", scope["method"], raw_path)
                await invalid_path().send(send)
                return
        await self.app(scope, receive, send)
