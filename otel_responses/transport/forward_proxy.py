"""The forward proxy the environment names (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY), read once at
start, and CONNECT tunnels through it, over TLS to the proxy itself for an https:// proxy."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from otel_responses.transport.errors import UpstreamError
from otel_responses.transport.target import UpstreamTarget

# A proxy's answer to CONNECT is a short head; anything longer is not an HTTP proxy.
_MAX_TUNNEL_HEAD = 64 * 1024
_SCHEMES = ("http", "https")


@dataclass(frozen=True, slots=True)
class ForwardProxy:
    """An http:// or https:// proxy: CONNECT tunnels for https upstreams, absolute URLs for
    http ones; ``tls``: the connection to the proxy itself is TLS, verified as the upstream's."""

    host: str
    port: int
    authorization: bytes | None  # Proxy-Authorization value, from user:password in the URL
    tls: bool = False

    @classmethod
    def for_target(cls, target: UpstreamTarget,
                   env: Mapping[str, str] = os.environ) -> ForwardProxy | None:
        """The proxy ``env`` names for ``target``, as curl and httpx find it: ``<scheme>_proxy``
        first, then ``all_proxy``; none when ``no_proxy`` exempts the target (see
        :func:`bypassed`). ValueError, naming the variable, for a proxy that is not http(s)."""
        found = _variable(env, target.scheme) or _variable(env, "all")
        if found is None:
            return None
        no_proxy = _variable(env, "no")
        if no_proxy is not None and bypassed(no_proxy[1], target.host, target.port):
            return None
        name, url = found
        parts = urlsplit(url if "://" in url else "http://" + url)
        shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # never the password
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(
                f"{name}={shown}: {scheme}:// proxies are not supported, only http:// and "
                f"https:// ones; unset {name} or list the upstream's host in NO_PROXY")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"{name}={shown}: invalid port") from None
        if not parts.hostname:
            raise ValueError(f"{name}={shown}: no proxy host")
        auth = None
        if parts.username is not None:
            user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = b"Basic " + base64.b64encode(user_pass.encode())
        return cls(parts.hostname, port, auth, tls=scheme == "https")


def _variable(env: Mapping[str, str], key: str) -> tuple[str, str] | None:
    """``<key>_proxy`` or ``<KEY>_PROXY``, named as set, with its value: the lowercase one wins
    even when set empty, which unsets it (as urllib.request.getproxies and curl read them)."""
    for name in (f"{key}_proxy", f"{key.upper()}_PROXY"):
        if name in env:
            value = env[name].strip()
            return (name, value) if value else None
    return None


def bypassed(no_proxy: str, host: str, port: int) -> bool:
    """Whether the NO_PROXY list ``no_proxy`` exempts ``host:port`` from the proxy.

    Entries, comma-separated, as curl reads them: ``*`` exempts every host; a domain name
    exempts itself and its subdomains (a leading dot is ignored); an IP address or a CIDR
    network exempts the IP literals in it (no name is resolved); ``entry:port`` (``[v6]:port``)
    only that port.
    """
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.lower().split(","):
        name, only_port = _split_port(entry.strip())
        if name == "*":
            return True
        if not name or (only_port is not None and only_port != port):
            continue
        try:
            network = ipaddress.ip_network(name, strict=False)
        except ValueError:
            domain = name.strip(".")
            if domain and (host == domain or host.endswith("." + domain)):
                return True
        else:
            if address is not None and address in network:
                return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port`` or ``[v6]:port`` into its parts; an IPv6 address (or network) alone has
    colons but no port."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        name, _, port = entry.partition(":")
    else:
        return entry, None
    return name, int(port) if port.isdigit() else None


async def open_tunnel(loop: asyncio.AbstractEventLoop, proxy: ForwardProxy,
                      proxy_tls: ssl.SSLContext | None, target: UpstreamTarget,
                      tls: ssl.SSLContext, protocol: asyncio.Protocol) -> asyncio.Transport:
    """CONNECT through ``proxy`` (over TLS with ``proxy_tls`` for an https:// proxy, so then
    TLS inside TLS) to ``target``, then TLS inside the tunnel for ``protocol``; the transport."""
    transport, tunnel = await loop.create_connection(_Tunnel, proxy.host, proxy.port,
                                                     ssl=proxy_tls)
    authority = target.authority.encode("ascii")  # UpstreamTarget.parse allows only ASCII
    head = b"CONNECT " + authority + b" HTTP/1.1\r\nhost: " + authority + b"\r\n"
    if proxy.authorization:
        head += b"proxy-authorization: " + proxy.authorization + b"\r\n"
    transport.write(head + b"\r\n")
    try:
        status_line = await tunnel.answer
        if not (status_line.startswith(b"HTTP/1.") and status_line[9:10] == b"2"):
            raise UpstreamError(f"proxy refused CONNECT: {status_line.decode('latin-1')}")
        tls_transport = await loop.start_tls(transport, protocol, tls,
                                             server_hostname=target.host)
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
