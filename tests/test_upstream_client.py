"""The upstream client over real sockets: TLS, HTTP(S)_PROXY / NO_PROXY, keep-alive and retries."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import trustme

from otel_responses.app import create_app
from otel_responses.config import Settings
from otel_responses.demo.app import create_demo_app
from otel_responses.transport import pool
from otel_responses.transport.forward_proxy import ForwardProxy
from otel_responses.transport.target import UpstreamTarget
from tests.servers import LoopbackServer, serve_asgi
from tests.upstreams import RawUpstream

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
               "ALL_PROXY", "all_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@dataclass(frozen=True)
class Tls:
    ca_file: Path
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A private CA and a certificate for 127.0.0.1 signed by it."""
    where = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = Tls(where / "ca.pem", where / "cert.pem", where / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca_file))
    cert.cert_chain_pems[0].write_to_path(str(files.cert_file))
    cert.private_key_pem.write_to_path(str(files.key_file))
    return files


@pytest.fixture(scope="module")
def tls_demo(tls: Tls) -> Iterator[str]:
    """The demo upstream served over TLS; yields its https base URL."""
    with serve_asgi(create_demo_app(), ssl_certfile=str(tls.cert_file),
                    ssl_keyfile=str(tls.key_file)) as base:
        yield base.replace("http://", "https://")


@pytest.fixture
def raw_upstream() -> Iterator[RawUpstream]:
    with RawUpstream().running() as raw:
        yield raw


@dataclass
class ForwardProxyServer(LoopbackServer):
    """A minimal HTTP proxy: CONNECT tunnels, and absolute-form requests sent on to the origin.

    ``seen`` holds the first request line of every proxy connection and its
    Proxy-Authorization header.
    """

    refuse: bool = False  # answer every request 407
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ")
        auth = next((line.split(":", 1)[1].strip() for line in lines[1:]
                     if line.lower().startswith("proxy-authorization:")), None)
        self.seen.append((lines[0], auth))
        if self.refuse:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
            kept = [line for line in lines[1:] if line and not line.lower().startswith("proxy-")]
            origin_form = f"{url.path}?{url.query}" if url.query else url.path
            up_writer.write(f"{method} {origin_form} HTTP/1.1\r\n".encode()
                            + "".join(f"{line}\r\n" for line in kept).encode() + b"\r\n")
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    if writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()


@pytest.fixture
def forward_proxy() -> Iterator[ForwardProxyServer]:
    with ForwardProxyServer().running() as server:
        yield server


@contextlib.contextmanager
def proxy_to(upstream_url: str) -> Iterator[str]:
    with serve_asgi(create_app(Settings(upstream=upstream_url))) as base:
        yield base


def _http() -> httpx.Client:
    """A test client that ignores HTTP(S)_PROXY: only the product under test may use them."""
    return httpx.Client(trust_env=False, timeout=20)


def _sdk(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0,
                         http_client=_http())


def _assert_demo_round_trip(base: str) -> None:
    """One plain and one streamed call of the openai SDK through the proxy, both complete."""
    client = _sdk(base)
    response = client.responses.create(model="demo", input="hello over tls")
    assert response.status == "completed" and response.output_text
    with client.responses.stream(model="demo", input="and streamed") as stream:
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text


# -- TLS ---------------------------------------------------------------------------------------

def test_https_upstream_verified_against_ssl_cert_file(
        tls: Tls, tls_demo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    with proxy_to(tls_demo + "/v1") as base:
        _assert_demo_round_trip(base)


def test_untrusted_upstream_certificate_is_a_clear_502(
        tls_demo: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "otel_responses.proxy"), \
            proxy_to(tls_demo + "/v1") as base:
        resp = _http().post(base + "/v1/responses", json={"model": "demo", "input": "x"})
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert error["code"] == "upstream_unreachable"
    # The TLS detail is for the operator's log, not for the client.
    assert "CERTIFICATE_VERIFY_FAILED" not in resp.text
    assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)


# -- HTTP(S)_PROXY and NO_PROXY ----------------------------------------------------------------

def test_http_upstream_through_http_proxy_with_credentials(
        raw_upstream: RawUpstream, forward_proxy: ForwardProxyServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://svc:p%40ss@127.0.0.1:{forward_proxy.port}")
    with proxy_to(raw_upstream.url + "/v1") as base:
        resp = _http().post(base + "/v1/responses?x=1", content=b'{"model":"m"}')
    assert resp.status_code == 200, resp.text
    assert forward_proxy.seen == [
        (f"POST {raw_upstream.url}/v1/responses?x=1 HTTP/1.1",
         "Basic " + base64.b64encode(b"svc:p@ss").decode())]
    assert base64.b64decode(resp.json()["body_b64"]) == b'{"model":"m"}'


def test_https_upstream_through_connect_tunnel(
        tls: Tls, tls_demo: str, forward_proxy: ForwardProxyServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    monkeypatch.setenv("HTTPS_PROXY", forward_proxy.url)
    with proxy_to(tls_demo + "/v1") as base:
        _assert_demo_round_trip(base)
    authority = urlsplit(tls_demo).netloc
    assert forward_proxy.seen[0] == (f"CONNECT {authority} HTTP/1.1", None)
    assert {line for line, _ in forward_proxy.seen} == {f"CONNECT {authority} HTTP/1.1"}


def test_no_proxy_bypasses_the_proxy(raw_upstream: RawUpstream,
                                     forward_proxy: ForwardProxyServer,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", forward_proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    with proxy_to(raw_upstream.url) as base:
        assert _http().post(base + "/v1/responses", content=b"{}").status_code == 200
    assert forward_proxy.seen == []
    assert raw_upstream.seen[0].target == "/v1/responses"


def test_proxy_refusing_connect_is_a_clear_502(tls_demo: str, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with ForwardProxyServer(refuse=True).running() as refusing, \
            caplog.at_level(logging.WARNING, "otel_responses.proxy"):
        monkeypatch.setenv("HTTPS_PROXY", refusing.url)
        with proxy_to(tls_demo) as base:
            resp = _http().post(base + "/v1/responses", content=b"{}")
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert "407" not in resp.text
    assert any("407 Proxy Authentication Required" in r.getMessage() for r in caplog.records)


def test_https_proxy_url_is_rejected_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    with pytest.raises(ValueError, match="only http:// proxies"):
        ForwardProxy.for_target(UpstreamTarget.parse("https://api.openai.com/v1"))


# -- keep-alive pool ---------------------------------------------------------------------------

def test_sequential_requests_share_one_upstream_connection(raw_upstream: RawUpstream) -> None:
    with proxy_to(raw_upstream.url) as base, _http() as client:
        for i in range(20):
            resp = client.post(base + "/v1/responses", content=json.dumps({"n": i}))
            assert resp.status_code == 200
    assert raw_upstream.connections == 1
    assert len(raw_upstream.seen) == 20


def test_idle_connections_past_their_expiry_are_not_reused(
        raw_upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "KEEPALIVE_EXPIRY", 0.0)
    with proxy_to(raw_upstream.url) as base, _http() as client:
        for _ in range(3):
            assert client.post(base + "/v1/responses", content=b"{}").status_code == 200
    assert raw_upstream.connections == 3


def test_connection_the_upstream_closed_while_idle_is_not_reused(
        raw_upstream: RawUpstream) -> None:
    with proxy_to(raw_upstream.url) as base, _http() as client:
        first = client.post(base + "/v1/responses", content=b"{}", headers={"x-scenario": "close"})
        assert first.status_code == 200
        # The upstream closes 50 ms after answering; the next request must not ride on it.
        _wait_until(lambda: raw_upstream.connections == 1 and len(raw_upstream.seen) == 1)
        time.sleep(0.2)
        assert client.post(base + "/v1/responses", content=b"{}").status_code == 200
    assert raw_upstream.connections == 2


def test_reused_connection_closed_unanswered_is_retried_once_for_a_get(
        raw_upstream: RawUpstream) -> None:
    """A POST is never retried once written (tests/test_stream_integrity.py); a GET is."""
    with proxy_to(raw_upstream.url) as base, _http() as client:
        assert client.get(base + "/v1/models").status_code == 200
        resp = client.get(base + "/v1/models?retry=1", headers={"x-scenario": "drop-once"})
    assert resp.status_code == 200, resp.text
    assert raw_upstream.dropped == 1
    assert [r.target for r in raw_upstream.seen] == ["/v1/models", "/v1/models?retry=1",
                                                     "/v1/models?retry=1"]
    assert raw_upstream.connections == 2


def test_fresh_connection_closed_unanswered_is_not_retried(raw_upstream: RawUpstream) -> None:
    with proxy_to(raw_upstream.url) as base:
        resp = _http().post(base + "/v1/responses", content=b"{}",
                          headers={"x-scenario": "drop-once"})
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_unreachable"
    assert len(raw_upstream.seen) == 1


def test_informational_103_is_skipped(raw_upstream: RawUpstream) -> None:
    with proxy_to(raw_upstream.url) as base, _http() as client:
        for _ in range(2):  # and the connection stays usable after it
            resp = client.post(base + "/v1/responses", content=b"{}",
                               headers={"x-scenario": "early-hints"})
            assert resp.status_code == 200
            assert resp.json() == {"hinted": True}
    assert raw_upstream.connections == 1


def _wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
