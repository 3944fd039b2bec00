"""The proxy's uvicorn server: slow clients cannot hold connections open, and a clean drain on
SIGTERM ends the process with exit status 0."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from otel_responses.config import Settings

# Seconds an idle keep-alive connection stays open between requests (uvicorn's default).
KEEP_ALIVE_TIMEOUT = 5


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection that has not sent a complete request
    head ``header_timeout`` seconds after it opened, or after its first byte since the last
    response.

    uvicorn bounds only the silence between requests (``timeout_keep_alive``), and any byte
    restarts that: a client sending a header byte now and then, or nothing at all on a new
    connection, holds a file descriptor forever (slow loris). The bound covers the head only;
    bodies and responses are the application's time.
    """

    header_timeout = 10.0

    @classmethod
    def bounded(cls, header_timeout: float) -> type[HeaderTimeoutProtocol]:
        """This protocol with its bound, as uvicorn's ``http=`` takes a class."""
        return type(cls.__name__, (cls,), {"header_timeout": header_timeout})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Bytes between requests start the bound even before a request begins: the parser
        # skips blank lines there, and uvicorn's keep-alive timer stops at any byte.
        if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a request pipelined behind one still answering
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head arriving while a response (a long stream) is still going out:
            # the response is not cut for it; the bound starts again.
            self._arm()
        elif not self.transport.is_closing():
            self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server, ending with exit status 0 once a SIGTERM or SIGINT drain finished
    every request within the grace period.

    After draining, uvicorn restores the signal handlers it found and raises the signal again,
    so that the process dies of it. The handler installed here is the one it finds: it lets a
    clean drain end normally and a drain cut short by the grace period still die of the signal.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.drained = True

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        if threading.current_thread() is not threading.main_thread():
            super().run(sockets)
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._after_uvicorn) for sig in signals}
        try:
            super().run(sockets)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        in_flight = set(self.server_state.tasks)
        await super().shutdown(sockets)
        # uvicorn cancels the requests still running when the grace period ends; its request
        # cycle swallows the CancelledError, but the task still counts the cancellation.
        self.drained = not any(task.cancelling() for task in in_flight)

    def _after_uvicorn(self, sig: int, frame: FrameType | None) -> None:
        if not self.drained:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)
        # Before uvicorn installs its own handler (still starting): stop as it would.
        self.should_exit = True


def uvicorn_config(app: Any, settings: Settings, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        # The client must see the upstream's Server and Date headers, not ours.
        server_header=False, date_header=False,
        http=HeaderTimeoutProtocol.bounded(settings.client_header_timeout),
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
        timeout_graceful_shutdown=settings.shutdown_grace, lifespan="on", **extra,
    )
