"""The upstream client over real sockets: TLS, HTTP(S)_PROXY / ALL_PROXY / NO_PROXY (http and https
proxies, IPv6), keep-alive and retries."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from otel_responses.app import create_app
from otel_responses.config import Settings
from otel_responses.demo.app import create_demo_app
from otel_responses.transport import pool
from otel_responses.transport.forward_proxy import ForwardProxy, bypassed
from otel_responses.transport.target import UpstreamTarget
from tests.servers import LoopbackServer, free_port, serve_asgi
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

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A private CA and a certificate for 127.0.0.1 and ::1 signed by it."""
    where = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "::1", "localhost")
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
    tls: ssl.SSLContext | None = None  # an https:// proxy

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ")
        auth = next((line.split(":", 1)[1].strip() for line in lines[1:]
                     if line.lower().startswith("proxy-authorization:")), None)
        self.seen.append((lines[0], auth))
        if self.refuse:
            await _answer_and_close(writer, b"407 Proxy Authentication Required")
            return
        # The request target as RFC 9110 has it: CONNECT's is host:port, an IPv6 host bracketed.
        url = urlsplit("//" + target if method == "CONNECT" else target)
        try:
            port = url.port
        except ValueError:  # "::1:443": which colon starts the port?
            port = None
        if url.hostname is None or port is None:
            await _answer_and_close(writer, b"400 Bad Request")
            return
        up_reader, up_writer = await asyncio.open_connection(url.hostname, port)
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            kept = [line for line in lines[1:] if line and not line.lower().startswith("proxy-")]
            origin_form = f"{url.path}?{url.query}" if url.query else url.path
            up_writer.write(f"{method} {origin_form} HTTP/1.1\r\n".encode()
                            + "".join(f"{line}\r\n" for line in kept).encode() + b"\r\n")
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()
            writer.close()


async def _answer_and_close(writer: asyncio.StreamWriter, status: bytes) -> None:
    writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()
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


@pytest.mark.parametrize("no_proxy", ["localhost,127.0.0.1", "example.com, 127.0.0.0/8"])
def test_no_proxy_bypasses_the_proxy(no_proxy: str, raw_upstream: RawUpstream,
                                     forward_proxy: ForwardProxyServer,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", forward_proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)
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


def test_all_proxy_is_the_fallback_for_both_schemes(
        tls: Tls, tls_demo: str, raw_upstream: RawUpstream, forward_proxy: ForwardProxyServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    monkeypatch.setenv("ALL_PROXY", forward_proxy.url)
    with proxy_to(raw_upstream.url + "/v1") as base:
        assert _http().post(base + "/v1/responses", content=b"{}").status_code == 200
    with proxy_to(tls_demo + "/v1") as base:
        _assert_demo_round_trip(base)
    assert [line for line, _ in forward_proxy.seen[:2]] == [
        f"POST {raw_upstream.url}/v1/responses HTTP/1.1",
        f"CONNECT {urlsplit(tls_demo).netloc} HTTP/1.1"]


# -- an https:// proxy: TLS to the proxy itself ------------------------------------------------

@pytest.fixture
def tls_proxy(tls: Tls) -> Iterator[ForwardProxyServer]:
    with ForwardProxyServer(tls=tls.server_context()).running() as server:
        yield server


def test_https_upstream_through_https_proxy_is_tls_in_tls(
        tls: Tls, tls_demo: str, tls_proxy: ForwardProxyServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    monkeypatch.setenv("HTTPS_PROXY", tls_proxy.url)
    assert tls_proxy.url.startswith("https://")
    with proxy_to(tls_demo + "/v1") as base:
        _assert_demo_round_trip(base)
    assert {line for line, _ in tls_proxy.seen} == {f"CONNECT {urlsplit(tls_demo).netloc} HTTP/1.1"}


def test_http_upstream_through_https_proxy_with_credentials(
        tls: Tls, raw_upstream: RawUpstream, tls_proxy: ForwardProxyServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    monkeypatch.setenv("http_proxy", tls_proxy.url.replace("https://", "https://svc:pw@"))
    with proxy_to(raw_upstream.url + "/v1") as base:
        resp = _http().post(base + "/v1/responses", content=b'{"model":"m"}')
    assert resp.status_code == 200, resp.text
    assert tls_proxy.seen == [(f"POST {raw_upstream.url}/v1/responses HTTP/1.1",
                               "Basic " + base64.b64encode(b"svc:pw").decode())]


def test_untrusted_https_proxy_certificate_is_a_clear_502(
        tls_demo: str, tls_proxy: ForwardProxyServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The proxy's certificate is verified with the upstream's trust (here: the system CAs)."""
    monkeypatch.setenv("HTTPS_PROXY", tls_proxy.url)
    with caplog.at_level(logging.WARNING, "otel_responses.proxy"), \
            proxy_to(tls_demo + "/v1") as base:
        resp = _http().post(base + "/v1/responses", content=b"{}")
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_unreachable"
    assert tls_proxy.seen == []  # no CONNECT was sent to a proxy that could not be verified
    assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage()
               and f"via proxy 127.0.0.1:{tls_proxy.port}" in r.getMessage()
               for r in caplog.records)


# -- IPv6 upstreams ----------------------------------------------------------------------------

def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_ipv6_upstream_through_the_proxy_is_bracketed(
        scheme: str, tls: Tls, forward_proxy: ForwardProxyServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    monkeypatch.setenv(f"{scheme.upper()}_PROXY", forward_proxy.url)
    upstream = RawUpstream()
    upstream.host, upstream.tls = "::1", tls.server_context() if scheme == "https" else None
    with upstream.running(), proxy_to(upstream.url + "/v1") as base:
        resp = _http().post(base + "/v1/responses", content=b"{}")
    assert resp.status_code == 200, resp.text
    authority = f"[::1]:{upstream.port}"
    assert forward_proxy.seen[0][0] == (f"CONNECT {authority} HTTP/1.1" if scheme == "https"
                                        else f"POST http://{authority}/v1/responses HTTP/1.1")
    assert upstream.seen[0].header("host") == authority


# -- proxy settings read from the environment, once, at start ----------------------------------

_TARGETS = {scheme: UpstreamTarget.parse(f"{scheme}://api.example.com/v1")
            for scheme in ("http", "https")}


@pytest.mark.parametrize(("env", "scheme", "expected"), [
    ({"ALL_PROXY": "http://all:1"}, "https", "all"),
    ({"ALL_PROXY": "http://all:1"}, "http", "all"),
    ({"HTTPS_PROXY": "http://https:1", "ALL_PROXY": "http://all:1"}, "https", "https"),
    ({"HTTPS_PROXY": "http://https:1", "ALL_PROXY": "http://all:1"}, "http", "all"),
    ({"all_proxy": "http://lower:1", "ALL_PROXY": "http://upper:1"}, "http", "lower"),
    ({"http_proxy": "http://lower:1", "HTTP_PROXY": "http://upper:1"}, "http", "lower"),
    # A lowercase variable set empty unsets the scheme, as urllib.request.getproxies reads it.
    ({"http_proxy": "", "HTTP_PROXY": "http://upper:1", "ALL_PROXY": "http://all:1"}, "http",
     "all"),
    ({"https_proxy": "https://tls:1"}, "https", "tls"),
    ({"HTTPS_PROXY": "http://https:1", "NO_PROXY": ".example.com"}, "https", None),
    ({"ALL_PROXY": "http://all:1", "no_proxy": "*"}, "http", None),
    ({"ALL_PROXY": "http://all:1", "no_proxy": "", "NO_PROXY": "*"}, "http", "all"),
    ({}, "https", None),
])
def test_which_proxy_the_environment_names(env: dict[str, str], scheme: str,
                                           expected: str | None) -> None:
    proxy = ForwardProxy.for_target(_TARGETS[scheme], env)
    assert (proxy.host if proxy else None) == expected


def test_https_proxy_is_tls_to_the_proxy_on_port_443_by_default() -> None:
    proxy = ForwardProxy.for_target(_TARGETS["https"], {"HTTPS_PROXY": "https://p.internal"})
    assert proxy == ForwardProxy("p.internal", 443, None, tls=True)


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"])
def test_socks_proxy_is_refused_naming_the_variable(name: str) -> None:
    with pytest.raises(ValueError) as refused:
        ForwardProxy.for_target(_TARGETS["https"], {name: "socks5://me:secret@127.0.0.1:1080"})
    message = str(refused.value)
    assert message.startswith(f"{name}=socks5://127.0.0.1:1080: socks5:// proxies are not "
                              "supported")
    assert "secret" not in message


def test_socks_proxy_stops_the_start_with_a_clear_error() -> None:
    env = {**os.environ, "ALL_PROXY": "socks5h://127.0.0.1:1080", "OTEL_SDK_DISABLED": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "otel_responses", "--upstream", "https://127.0.0.1:9/v1",
         "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "otel-responses: ALL_PROXY=socks5h://127.0.0.1:1080: socks5h:// proxies are not " \
           "supported" in result.stderr
    assert "Traceback" not in result.stderr


# -- NO_PROXY entries --------------------------------------------------------------------------

@pytest.mark.parametrize(("no_proxy", "host", "port", "expected"), [
    ("*", "api.openai.com", 443, True),
    ("internal, *", "api.openai.com", 443, True),
    ("openai.com", "api.openai.com", 443, True),
    ("openai.com", "openai.com", 443, True),
    (".openai.com", "openai.com", 443, True),
    ("openai.com", "notopenai.com", 443, False),
    ("api.openai.com:443", "api.openai.com", 443, True),
    ("api.openai.com:8443", "api.openai.com", 443, False),
    ("10.0.0.0/8", "10.1.2.3", 80, True),
    ("10.0.0.0/8", "11.1.2.3", 80, False),
    ("10.0.0.0/8", "10.example.com", 80, False),
    ("10.1.2.3", "10.1.2.3", 80, True),
    ("::1", "::1", 443, True),
    ("[::1]:443", "::1", 443, True),
    ("[::1]:443", "::1", 8443, False),
    ("fd00::/8", "fd12::1", 443, True),
    ("fd00::/8", "fe80::1", 443, False),
    ("", "api.openai.com", 443, False),
    (" , ,", "api.openai.com", 443, False),
])
def test_no_proxy_entries(no_proxy: str, host: str, port: int, expected: bool) -> None:
    assert bypassed(no_proxy, host, port) is expected


_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
_DOMAIN = st.lists(_LABEL, min_size=1, max_size=3).map(".".join)
_PORT = st.integers(1, 65535)


@given(entries=st.lists(st.tuples(st.sampled_from(["", "."]), _DOMAIN,
                                  st.none() | _PORT), max_size=4),
       host=_DOMAIN, port=_PORT)
def test_no_proxy_names_agree_with_urllib(entries: list[tuple[str, str, int | None]], host: str,
                                          port: int) -> None:
    """For names and name:port entries the rule is urllib.request's (and curl's)."""
    no_proxy = ",".join(f"{dot}{name}" + (f":{p}" if p else "") for dot, name, p in entries)
    expected = urllib.request.proxy_bypass_environment(f"{host}:{port}", {"no": no_proxy})
    assert bypassed(no_proxy, host, port) is bool(expected)


@given(network=st.ip_addresses().flatmap(
           lambda a: st.integers(0, a.max_prefixlen).map(
               lambda n: ipaddress.ip_network(f"{a}/{n}", strict=False))),
       address=st.ip_addresses(), port=_PORT)
def test_no_proxy_networks_hold_their_addresses(
        network: ipaddress.IPv4Network | ipaddress.IPv6Network,
        address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
    assert bypassed(str(network), str(address), port) is (address in network)
    assert bypassed(str(network.network_address), str(network.network_address), port)


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
