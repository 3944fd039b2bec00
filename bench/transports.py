"""aiohttp and httpx behind the proxy's UpstreamPool interface, and a launcher that swaps them in.

    python bench/transports.py aiohttp serve --upstream URL ...   # the proxy CLI, aiohttp inside

Bench only: the product keeps its own client. The libraries are imported from
``bench/.venv-clients`` (see envs.py), appended to ``sys.path`` so that every package the
project venv already has (httpx among them) wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

from otel_responses.transport import (
    ForwardProxy,
    Headers,
    UpstreamError,
    UpstreamPool,
    UpstreamTarget,
    UpstreamTimeout,
)
from otel_responses.transport.pool import KEEPALIVE_EXPIRY

import envs

# Headers each library adds of its own; the client's (or none) must reach the upstream instead.
_AIOHTTP_SKIPPED = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
# What the proxy used when it was built on httpx: httpcore polls every idle connection on each
# request, so a large idle pool costs CPU on the hot path.
_HTTPX_MAX_IDLE = 32


class _Response(Protocol):
    status: int
    headers: Headers
    retried: bool

    def body(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


@contextlib.contextmanager
def _mapped(timeouts: tuple[type[BaseException], ...],
            errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """A library's failures as the proxy's: forward.py maps those to 502/504 or a cut."""
    try:
        yield
    except timeouts as exc:
        raise UpstreamTimeout(f"{type(exc).__name__}: {exc}") from exc
    except errors as exc:
        raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc


def _refuse_forward_proxy(proxy: ForwardProxy | None) -> None:
    """The libraries are measured without proxy support (no ``trust_env``)."""
    if proxy is not None:
        raise ValueError("the bench transports take no forward proxy: unset HTTP(S)_PROXY, "
                         "ALL_PROXY")


def _background(awaitable: Any) -> None:
    """forward.py closes synchronously; the libraries close asynchronously."""
    task = asyncio.ensure_future(awaitable)
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)


_PENDING: set[asyncio.Future[Any]] = set()


Errors = tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]


class _Wrapped:
    """A library's response with the status and headers (as received: case and order kept)."""

    __slots__ = ("_errors", "_raw", "headers", "retried", "status")

    def __init__(self, raw: Any, errors: Errors, status: int, headers: Headers) -> None:
        self._raw, self._errors = raw, errors
        self.status, self.headers = status, headers
        self.retried = False


class AiohttpResponse(_Wrapped):
    __slots__ = ()

    async def body(self) -> AsyncIterator[bytes]:
        with _mapped(*self._errors):
            async for chunk in self._raw.content.iter_any():
                yield chunk

    def close(self) -> None:
        # Back to the pool when the body was read to its end; otherwise the connection closes.
        self._raw.release()


class AiohttpPool:
    """One ClientSession on a keep-alive TCPConnector; C parser, no decompression, no cap."""

    def __init__(self, target: UpstreamTarget, *, connect_timeout: float,
                 read_timeout: float, forward_proxy: ForwardProxy | None = None) -> None:
        _refuse_forward_proxy(forward_proxy)
        import aiohttp
        import yarl

        self._url = yarl.URL
        self._origin = target.origin
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_EXPIRY),
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout,
                                          sock_read=read_timeout),
            auto_decompress=False, skip_auto_headers=_AIOHTTP_SKIPPED, trust_env=False)
        self._errors: Errors = ((TimeoutError,), (aiohttp.ClientError, OSError))

    async def request(self, method: str, target: str, headers: Headers,
                      body: bytes | None) -> _Response:
        with _mapped(*self._errors):
            raw = await self._session.request(
                method, self._url(self._origin + target, encoded=True),  # the path as sent
                headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers],
                data=body, allow_redirects=False)
        return AiohttpResponse(raw, self._errors, raw.status, list(raw.raw_headers))

    def close(self) -> None:
        _background(self._session.close())


class HttpxResponse(_Wrapped):
    __slots__ = ()

    async def body(self) -> AsyncIterator[bytes]:
        with _mapped(*self._errors):
            # Transfer-decoded, never content-decoded; closes (pools) the connection at the end.
            async for chunk in self._raw.aiter_raw():
                yield chunk

    def close(self) -> None:
        if not self._raw.is_closed:  # the body was not read to its end: drop the connection
            _background(self._raw.aclose())


class HttpxPool:
    """One AsyncClient, HTTP/1.1, keep-alive pool without a connection cap."""

    def __init__(self, target: UpstreamTarget, *, connect_timeout: float,
                 read_timeout: float, forward_proxy: ForwardProxy | None = None) -> None:
        _refuse_forward_proxy(forward_proxy)
        import httpx

        self._origin = target.origin
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=None,
                                max_keepalive_connections=_HTTPX_MAX_IDLE,
                                keepalive_expiry=KEEPALIVE_EXPIRY),
            http1=True, http2=False, follow_redirects=False, trust_env=False)
        self._client.headers.clear()  # no Accept, Accept-Encoding, User-Agent of its own
        self._errors: Errors = ((httpx.TimeoutException,), (httpx.HTTPError, OSError))

    async def request(self, method: str, target: str, headers: Headers,
                      body: bytes | None) -> _Response:
        with _mapped(*self._errors):
            request = self._client.build_request(method, self._origin + target,
                                                 headers=headers, content=body)
            raw = await self._client.send(request, stream=True)
        return HttpxResponse(raw, self._errors, raw.status_code, list(raw.headers.raw))

    def close(self) -> None:
        _background(self._client.aclose())


TRANSPORTS: dict[str, type[Any]] = {"own": UpstreamPool, "aiohttp": AiohttpPool,
                                    "httpx": HttpxPool}


def versions() -> dict[str, str]:
    """The version of each transport as the launcher would import it."""
    import importlib.metadata as metadata

    import otel_responses

    _add_clients_site()
    return {"own": otel_responses.__version__, "aiohttp": metadata.version("aiohttp"),
            "httpx": metadata.version("httpx")}


def _add_clients_site() -> None:
    site = str(envs.clients_site())
    if site not in sys.path:
        sys.path.append(site)


def main(argv: list[str]) -> None:
    name, rest = argv[0], argv[1:]
    if name == "--versions":
        print(versions())
        return
    from otel_responses import cli
    from otel_responses.proxy import forward

    _add_clients_site()
    # Before the app is built: Proxy.start() then creates this transport instead of its own.
    forward.UpstreamPool = TRANSPORTS[name]  # type: ignore[misc]
    cli.main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
