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
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {url!r}")
        return cls(f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/"))

    @property
    def host(self) -> str:
        return urlsplit(self.origin).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.origin)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def path(self, raw_path: str, query: str = "") -> str:
        """The request target upstream (base path, client path, query) for a client's path."""
        path = raw_path
        if self.prefix.endswith("/v1") and (path == "/v1" or path.startswith("/v1/")):
            path = path[3:]
        path = self.prefix + path
        return f"{path}?{query}" if query else path
