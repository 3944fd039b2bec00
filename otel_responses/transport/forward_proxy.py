"""The HTTP proxy the environment names (HTTP(S)_PROXY, NO_PROXY), and CONNECT tunnels."""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from otel_responses.transport.errors import UpstreamError
from otel_responses.transport.target import UpstreamTarget

# A proxy's answer to CONNECT is a short head; anything longer is not an HTTP proxy.
_MAX_TUNNEL_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class ForwardProxy:
    """An HTTP proxy from HTTP(S)_PROXY: CONNECT tunnels for https, absolute URLs for http."""

    host: str
    port: int
    authorization: bytes | None  # Proxy-Authorization value, from user:password in the URL

    @classmethod
    def for_target(cls, target: UpstreamTarget) -> ForwardProxy | None:
        """The proxy the environment names for ``target``, as httpx's ``trust_env`` finds it."""
        scheme = target.origin.split("://", 1)[0]
        url = urllib.request.getproxies_environment().get(scheme)
        if not url or urllib.request.proxy_bypass_environment(f"{target.host}:{target.port}"):
            return None
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"unsupported {scheme}_proxy {url!r}: only http:// proxies")
        auth = None
        if parts.username is not None:
            user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = b"Basic " + base64.b64encode(user_pass.encode())
        return cls(parts.hostname, parts.port or 80, auth)


async def open_tunnel(loop: asyncio.AbstractEventLoop, proxy: ForwardProxy, host: str,
                      port: int, tls: ssl.SSLContext,
                      protocol: asyncio.Protocol) -> asyncio.Transport:
    """CONNECT through ``proxy`` to ``host:port``, then TLS inside the tunnel for ``protocol``;
    the TLS transport."""
    transport, tunnel = await loop.create_connection(_Tunnel, proxy.host, proxy.port)
    authority = f"{host}:{port}".encode("idna")
    head = b"CONNECT " + authority + b" HTTP/1.1\r\nhost: " + authority + b"\r\n"
    if proxy.authorization:
        head += b"proxy-authorization: " + proxy.authorization + b"\r\n"
    transport.write(head + b"\r\n")
    try:
        status_line = await tunnel.answer
        if not (status_line.startswith(b"HTTP/1.") and status_line[9:10] == b"2"):
            raise UpstreamError(f"proxy refused CONNECT: {status_line.decode('latin-1')}")
        tls_transport = await loop.start_tls(transport, protocol, tls, server_hostname=host)
    except BaseException:
        transport.abort()
        raise
    assert tls_transport is not None
    return tls_transport


class _Tunnel(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT: the status line, once the whole head is in."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._head = b""

    def data_received(self, data: bytes) -> None:
        self._head += data
        if self.answer.done():
            return
        if b"\r\n\r\n" in self._head:
            self.answer.set_result(self._head.split(b"\r\n", 1)[0])
        elif len(self._head) > _MAX_TUNNEL_HEAD:
            self.answer.set_exception(UpstreamError("proxy answered CONNECT with no HTTP head"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(
                UpstreamError(f"proxy closed during CONNECT ({exc or 'EOF'})"))
