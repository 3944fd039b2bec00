"""Run real servers on loopback sockets for tests: ASGI apps under uvicorn, or CLI subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Self

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_asgi(app: Any, **config: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn server in a thread; yield its base URL."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "on"}
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextlib.contextmanager
def serve_tcp(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
              setup: Callable[[], None] | None = None, backlog: int = 512, *,
              host: str = "127.0.0.1",
              tls: ssl.SSLContext | None = None) -> Iterator[tuple[int, asyncio.AbstractEventLoop]]:
    """Run an asyncio TCP server on a loopback port in a thread; yield (port, its loop).

    ``setup`` runs inside the loop first (to create loop-bound objects). On exit every task of
    the loop is cancelled and awaited, so no handler is left half-run. ``host`` is a loopback
    address (``::1`` for IPv6); with ``tls`` the server speaks TLS.
    """
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()
    ports: list[int] = []

    async def main() -> None:
        if setup is not None:
            setup()
        server = await asyncio.start_server(handler, host, 0, backlog=backlog, ssl=tls)
        ports.append(server.sockets[0].getsockname()[1])
        started.set()
        await stop.wait()
        server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not started.wait(5):
        raise RuntimeError("TCP server did not start")
    try:
        yield ports[0], loop
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


class LoopbackServer:
    """A raw asyncio TCP server on a loopback port, in a thread, while ``running``: subclasses
    answer each connection in ``_connection``. Set ``host`` to ``::1`` for IPv6, ``tls`` for
    https."""

    port: int
    host: str = "127.0.0.1"
    tls: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @contextlib.contextmanager
    def running(self) -> Iterator[Self]:
        with serve_tcp(self._connection, host=self.host, tls=self.tls) as (self.port, _):
            yield self

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


def wait_http_ok(url: str, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


@contextlib.contextmanager
def run_cli(*args: str, env: dict[str, str] | None = None, ready_path: str = "/healthz",
            port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``otel-responses ARGS --port P`` as a subprocess; yield (base URL, process)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "otel_responses", *args, "--port", str(port)]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(base + ready_path, proc=proc)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
