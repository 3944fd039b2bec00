"""Where a client request goes upstream: base URL joining that honours /v1 and path prefixes."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """An upstream base URL such as ``https://api.openai.com/v1`` or ``http://h/openai/v1``.

    Clients use the proxy as ``http://proxy/v1``, so their paths start with ``/v1/``. When the
    upstream base itself ends in ``/v1`` that segment is not repeated; otherwise the client's
    whole path is appended to the base.
    """

    origin: str  # scheme://host[:port]
    prefix: str  # base path without trailing slash ("" or "/openai/v1")

    @classmethod
    def parse(cls, url: str) -> UpstreamTarget:
        """The target of ``url``; ValueError for anything that is not plainly an http(s) URL.

        The origin becomes the Host header and the path the request line, so both must be
        printable ASCII: ``urlsplit`` would silently drop a CR, LF or tab, and pass a NUL or a
        space on to the request line. Credentials (``user:password@``) are refused: the
        ``Authorization`` header already carries the client's key or ``--upstream-api-key``,
        and a URL with a password ends up in process listings and logs.
        """
        bad = next((ch for ch in url if not "!" <= ch <= "~"), None)
        if bad is not None:
            raise ValueError(f"must be a URL of printable ASCII characters; it contains "
                             f"{bad!r} (a space, a control character such as CR, LF or NUL, "
                             f"or non-ASCII: use the xn-- form of an international host name)")
        parts = urlsplit(url)
        if "@" in parts.netloc:  # checked first: the messages below quote the URL
            raise ValueError("must not contain credentials (user:password@): give the key with "
                             "--upstream-api-key (OTEL_RESPONSES_UPSTREAM_API_KEY)")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, not {url!r}")
        try:
            parts.port  # noqa: B018 (validates it)
        except ValueError:
            raise ValueError(f"has an invalid port: {url!r}") from None
        return cls(f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/"))

    @property
    def scheme(self) -> str:
        return self.origin.split("://", 1)[0]

    @property
    def host(self) -> str:
        """The host name or IP address, without the brackets of an IPv6 literal."""
        return urlsplit(self.origin).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.origin)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def authority(self) -> str:
        """``host:port`` with the port always given and an IPv6 literal bracketed, as a
        CONNECT request names its target (RFC 9110, section 9.3.6)."""
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def path(self, raw_path: str, query: str = "") -> str:
        """The request target upstream (base path, client path, query) for a client's path."""
        path = raw_path
        if self.prefix.endswith("/v1") and (path == "/v1" or path.startswith("/v1/")):
            path = path[3:]
        path = self.prefix + path
        return f"{path}?{query}" if query else path
