"""A real ``redis-server`` (Debian's package) on a free loopback port, for the store and the
rate-limit tests; it can be killed and brought back on the same port to test outages."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.e2e import unavailable
from tests.servers import free_port


class RedisServer:
    """One ``redis-server`` process with no persistence; ``url`` stays valid across restarts."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server not found: apt-get install -y redis-server")
        log = (self._workdir / "redis.log").open("ab")
        self._proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self._workdir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start: "
                                   + (self._workdir / "redis.log").read_text()[-2000:])
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill it (SIGKILL: an outage, not a shutdown)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A started server, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="otel-responses-redis-") as workdir:
        server = RedisServer(Path(workdir))
        server.start()
        try:
            yield server
        finally:
            server.stop()
