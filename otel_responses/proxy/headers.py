"""Header policy: which headers cross the proxy in each direction, and API-key replacement."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Headers = list[tuple[bytes, bytes]]

UPSTREAM_API_KEY = "otel_responses.upstream_api_key"
"""ASGI scope key the guard sets on an authenticated request: the caller's own upstream key,
or None. Its presence means the client's credentials (a key of the proxy's) never go upstream."""

# RFC 9110 §7.6.1 connection-specific fields, plus Host (set from the upstream URL) and
# Content-Length (recomputed by the HTTP client from the exact bytes forwarded).
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
})
# Expect is answered by the server the client talks to (uvicorn), not forwarded.
_REQUEST_ONLY_DROPPED = frozenset({b"host", b"content-length", b"expect"})
_CREDENTIALS = frozenset({b"authorization", b"api-key"})


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in Connection are hop-by-hop too."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def _is_hop(name: bytes, named: set[bytes]) -> bool:
    return name in _HOP_BY_HOP or name.startswith(b"proxy-") or name in named


def upstream_request_headers(client_headers: Headers, api_key: str | None,
                             scope: Mapping[str, Any]) -> Headers:
    """Headers to send upstream: end-to-end ones, with the client's key replaced by ``api_key``
    (the configured one) if given. When the guard authenticated the request (``scope`` has
    `UPSTREAM_API_KEY`), the client's key is always dropped, and the caller's upstream key
    is sent, else ``api_key``, else none."""
    replace = api_key is not None
    if UPSTREAM_API_KEY in scope:
        api_key, replace = scope[UPSTREAM_API_KEY] or api_key, True
    named = _connection_tokens(client_headers)
    out: Headers = []
    key_header = b"authorization"
    for name, value in client_headers:
        lname = name.lower()
        if _is_hop(lname, named) or lname in _REQUEST_ONLY_DROPPED:
            continue
        if replace and lname in _CREDENTIALS:
            # Keep the client's style: Azure clients send api-key, OpenAI clients a bearer token.
            key_header = lname
            continue
        out.append((lname, value))
    if api_key is not None:
        value = api_key if key_header == b"api-key" else "Bearer " + api_key
        out.append((key_header, value.encode("latin-1")))
    return out


def client_response_headers(upstream_headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Headers to send to the client: the upstream's end-to-end ones, values byte for byte.

    Names are lower-cased as ASGI requires; HTTP/1.1 names are case-insensitive anyway.
    """
    # Names already lower case (as most servers send them) keep their tuple: the list lives
    # as long as the response, and a held stream would otherwise pay for a copy of each.
    raw = [header if header[0].islower() else (header[0].lower(), header[1])
           for header in upstream_headers]
    named = _connection_tokens(raw)
    return [(name, value) for name, value in raw if not _is_hop(name, named)]
