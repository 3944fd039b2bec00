"""Input the proxy refuses: header values and upstream URLs that would smuggle bytes upstream,
credentials in the upstream URL, dot-segment paths however encoded, and slow-loris clients."""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import subprocess
import sys
import time

import httpx
import pytest

from otel_responses.app import create_app
from otel_responses.config import Settings
from tests.servers import free_port, run_cli, serve_asgi
from tests.upstreams import RawUpstream


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the proxy as a user would; a proxy that starts (instead of refusing) is stopped."""
    cmd = [sys.executable, "-m", "otel_responses", *args, "--port", str(free_port())]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=15,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        pytest.fail(f"started instead of refusing: {args} {env}")


# ---- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["sk-1\r\nx-injected: 1", "sk-1\nx", "sk-1\rx", "sk\x01"])
def test_an_api_key_that_would_break_the_header_is_refused_by_flag_and_env(
        upstream: RawUpstream, key: str) -> None:
    seen = len(upstream.seen)
    by_flag = _start("--upstream", upstream.url + "/v1", "--upstream-api-key", key)
    by_env = _start("--upstream", upstream.url + "/v1",
                    env={"OTEL_RESPONSES_UPSTREAM_API_KEY": key})
    for result, named in ((by_flag, "--upstream-api-key"),
                          (by_env, "OTEL_RESPONSES_UPSTREAM_API_KEY")):
        assert result.returncode != 0
        assert named in result.stderr
        assert "Traceback" not in result.stderr
        assert key.split("\n")[0].split("\r")[0] not in result.stderr  # the key is not echoed
    assert len(upstream.seen) == seen


def test_a_nul_in_the_api_key_is_refused() -> None:
    # argv and environ cannot carry a NUL: only an embedding application can pass one.
    with pytest.raises(ValueError, match="upstream_api_key"):
        Settings(upstream="http://127.0.0.1:9/v1", upstream_api_key="sk-1\x00x")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/v1\r\nx-injected: 1", "http://127.0.0.1:9/v 1",
                                 "http://127.0.0.1:9/v1\t", "http://127.0.0.1:9\n/v1"])
def test_an_upstream_url_with_line_breaks_or_spaces_is_refused(url: str) -> None:
    result = _start("--upstream", url)
    assert result.returncode != 0
    assert "--upstream " in result.stderr and "printable ASCII" in result.stderr
    result = _start(env={"OTEL_RESPONSES_UPSTREAM": url})
    assert result.returncode != 0
    assert "OTEL_RESPONSES_UPSTREAM " in result.stderr


def test_an_upstream_url_with_a_nul_is_refused() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        Settings(upstream="http://127.0.0.1:9/v1\x00")


def test_credentials_in_the_upstream_url_are_refused(upstream: RawUpstream) -> None:
    url = upstream.url.replace("http://", "http://user:s3cret@") + "/v1"
    result = _start("--upstream", url)
    assert result.returncode != 0
    assert "--upstream must not contain credentials" in result.stderr
    assert "s3cret" not in result.stderr
    for embedded in (url, "ftp://user:s3cret@host/v1", "http://user:s3cret@host:bad/v1"):
        with pytest.raises(ValueError, match="credentials") as refused:
            Settings(upstream=embedded)
        assert "s3cret" not in str(refused.value)


# ---- paths -----------------------------------------------------------------------------------

def _raw_request(base: str, target: str) -> tuple[int, bytes]:
    """One request with ``target`` sent byte for byte (HTTP clients normalise dot segments)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


UNSAFE = ["/v1/../admin", "/v1/responses/..", "/v1/./responses", "/v1/%2e%2e/admin",
          "/v1/%2E%2e/admin", "/v1/.%2E/admin", "/v1/..%2fadmin", "/v1/..%2Fadmin",
          "/v1/responses/%2e", "/v1\\..\\admin", "/v1/%5c..%5cadmin", "/v1/%252e%252e/admin",
          "/v1/..;/admin", "/v1/responses%00.json", "/v1/a%0d%0aX-Injected:%201"]
SAFE = ["/v1/models/gpt-4o", "/v1/files/report.v2.json", "/v1/models/org%2Fmodel",
        "/v1/responses/resp_1/input_items?after=..", "/v1/.well-known/x", "/v1/a...b"]


def test_dot_segments_are_refused_with_an_openai_error_and_never_forwarded(
        upstream: RawUpstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "otel_responses.proxy")
    with serve_asgi(create_app(Settings(upstream=upstream.url + "/v1"))) as base:
        seen = len(upstream.seen)
        for target in UNSAFE:
            status, body = _raw_request(base, target)
            assert status == 400, target
            error = json.loads(body)["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "invalid_request_error"
            assert error["code"] == "invalid_path"
        assert len(upstream.seen) == seen, "a refused path reached the upstream"
        refused = [r.getMessage() for r in caplog.records if "invalid_path" in r.getMessage()]
        assert len(refused) == len(UNSAFE)
        assert "refused GET b'/v1/a%0d%0aX-Injected:%201'" in refused[-1]
        for target in SAFE:
            status, _ = _raw_request(base, target)
            assert status == 200, target
    assert [r.target for r in upstream.seen[seen:]] == SAFE  # forwarded as sent


# ---- slow clients ----------------------------------------------------------------------------

def _closed_within(socks: list[socket.socket], seconds: float) -> int:
    """How many of ``socks`` the server closed (EOF or reset) within ``seconds``."""
    closed = 0
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(min(left, 0.5)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except ConnectionError:
                    data = b""
                if not data:
                    selector.unregister(sock)
                    closed += 1
    return closed


def _dribble(sock: socket.socket, times: int, byte: bytes = b"x") -> None:
    """``byte`` every quarter second, ``times`` times or until the server has closed."""
    for _ in range(times):
        time.sleep(0.25)
        try:
            sock.send(byte)
        except OSError:
            return


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


def test_slow_loris_connections_are_closed_and_others_still_served(
        upstream: RawUpstream) -> None:
    port = free_port()
    with run_cli("--upstream", upstream.url + "/v1", "--client-header-timeout", "1",
                 port=port) as (base, _):
        socks: list[socket.socket] = []
        try:
            for _ in range(500):  # half-open: a request head that never ends
                socks.append(_connect(port))
                socks[-1].send(b"POST /v1/responses HTTP/1.1\r\nhost: x\r\n")
            silent = _connect(port)  # connects, sends nothing
            dribbler = _connect(port)  # a header byte now and then, forever
            dribbler.send(b"GET /healthz HTTP/1.1\r\n")
            # Meanwhile a normal client is served.
            assert httpx.get(base + "/healthz", timeout=5).status_code == 200
            socks += [silent, dribbler]
            _dribble(dribbler, 8)
            assert _closed_within(socks, 8) == len(socks)
            assert httpx.get(base + "/healthz", timeout=5).status_code == 200
        finally:
            for sock in socks:
                sock.close()


@pytest.mark.parametrize(("start", "byte"), [
    (b"GET /healthz HTTP/1.1\r\n", b"x"),
    (b"", b"\r\n"),  # blank lines: the parser begins no request for them
    (b"", b""),  # idle: uvicorn's keep-alive timeout (5 s)
])
def test_a_kept_alive_connection_dribbling_its_next_head_is_closed(
        upstream: RawUpstream, start: bytes, byte: bytes) -> None:
    port = free_port()
    with run_cli("--upstream", upstream.url + "/v1", "--client-header-timeout", "1",
                 port=port) as _:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        with sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sock.setblocking(False)
            sock.send(start)
            # Each byte would restart uvicorn's keep-alive timer; the head bound still holds.
            _dribble(sock, 12, byte)
            assert _closed_within([sock], 5) == 1
