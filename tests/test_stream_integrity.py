"""Stream and connection integrity (issue #14), probed over real sockets from both sides.

A scripted upstream writes every byte the test names (framing anomalies included) and a raw
socket client reads every byte the proxy sends: a cut body must look cut, a connection the
proxy does not fully understand is never reused, trailers never become headers, a POST that
reached the upstream is never sent twice, and the response head is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import openai
import pytest
import uvloop
from opentelemetry.trace import StatusCode

from otel_responses.app import create_app
from otel_responses.config import Settings
from otel_responses.transport import connection
from otel_responses.transport.pool import UpstreamPool, UpstreamResponse
from otel_responses.transport.target import UpstreamTarget
from tests.faults import (
    dechunk_raw,
    fd_counts,
    poll,
    raw_connect,
    raw_post,
    read_until_closed,
)
from tests.servers import LoopbackServer, serve_asgi
from tests.spans import SpanSink
from tests.test_metrics import scrape, value

CLOSE, RESET, STALL = "close", "reset", "stall"
Step = bytes | float | str  # bytes to write, seconds to wait, or CLOSE / RESET / STALL


@dataclass
class Received:
    connection: int  # which upstream connection carried it, from 1
    head: bytes
    body: bytes


@dataclass
class ScriptedUpstream(LoopbackServer):
    """Answers the n-th request it reads with the n-th script (a list of steps), byte exact.

    A script that does not end with CLOSE, RESET or STALL leaves the connection open for the
    next request.
    """

    scripts: list[list[Step]]
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length) if length else b""
                self.received.append(Received(number, head, body))
                script = self.scripts[len(self.received) - 1]
                for step in script:
                    if isinstance(step, bytes):
                        writer.write(step)
                        await writer.drain()
                    elif isinstance(step, float):
                        await asyncio.sleep(step)
                    elif step == RESET:
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                        writer.transport.abort()
                        return
                    elif step == STALL:
                        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                            async with asyncio.timeout(30):
                                while await reader.read(65536):
                                    pass
                        return
                    else:
                        assert step == CLOSE, step
                        return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()


@dataclass
class Proxied:
    base: str
    sink: SpanSink
    server_errors: list[logging.LogRecord]  # what uvicorn logged at ERROR


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@contextlib.contextmanager
def proxy_for(upstream: ScriptedUpstream, http: str = "auto",
              **settings: object) -> Iterator[Proxied]:
    sink = SpanSink()
    app = create_app(Settings(upstream=upstream.url, **settings),  # type: ignore[arg-type]
                     tracer_provider=sink.provider)
    errors: list[logging.LogRecord] = []
    handler = _Collect(errors)
    server_log = logging.getLogger("uvicorn.error")
    with serve_asgi(app, http=http) as base:
        server_log.addHandler(handler)  # after uvicorn's logging set-up, which resets handlers
        try:
            yield Proxied(base, sink, errors)
        finally:
            server_log.removeHandler(handler)


def post_raw(base: str) -> tuple[bytes, bool]:
    """A stream request over a raw socket: the 200's body as far as it came, and whether it
    had its terminating chunk."""
    sock = raw_connect(base)
    sock.sendall(raw_post("/v1/responses", b'{"model":"m","input":"x","stream":true}',
                          extra=b"Connection: close\r\n"))
    raw = read_until_closed(sock)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:100]
    return dechunk_raw(raw)


def proxy_connections_to(upstream: ScriptedUpstream) -> int:
    """Sockets this process holds open to the upstream (the proxy's pool)."""
    sockets, _ = fd_counts({upstream.port: "upstream"})
    return dict(sockets).get("to upstream", 0)


def _client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=10)


def chunked(*pieces: bytes, trailers: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n" + trailers + b"\r\n"


def head(status: int = 200, *fields: str) -> bytes:
    return (f"HTTP/1.1 {status} X\r\n" + "".join(f"{f}\r\n" for f in fields) + "\r\n").encode()


def fixed(body: bytes, *fields: str) -> bytes:
    return head(200, "Content-Type: application/json", f"Content-Length: {len(body)}",
                *fields) + body


OK = fixed(b'{"ok":true}')
SSE = b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n'


# -- a cut body must look cut ---------------------------------------------------------------

@pytest.mark.parametrize("http", ["httptools", "h11"])
@pytest.mark.parametrize("ctype", ["text/event-stream", "application/json"])
@pytest.mark.parametrize("how", ["fin", "rst", "badchunk", "stall"])
def test_a_chunked_body_the_upstream_cut_is_cut_for_the_client(
        http: str, ctype: str, how: str) -> None:
    first = SSE if ctype == "text/event-stream" else b'{"id":"resp_1","output":[{"ty'
    ending: list[Step] = {"fin": [0.05, CLOSE], "rst": [0.05, RESET],
                          "badchunk": [b"zz\r\nnot a chunk\r\n", CLOSE], "stall": [STALL]}[how]
    script = [head(200, f"Content-Type: {ctype}", "Transfer-Encoding: chunked"),
              b"%x\r\n%s\r\n" % (len(first), first), *ending]
    with ScriptedUpstream([script]).running() as up, \
            proxy_for(up, http=http, read_timeout=0.5) as proxied:
        body, complete = post_raw(proxied.base)
        assert body == first  # every byte the upstream sent, nothing after the cut
        assert not complete, "the client got a terminating chunk for a cut body"
        span = proxied.sink.one()
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "upstream_cut", dict(span.attributes)
        # One line from the proxy, no traceback from the server.
        assert proxied.server_errors == [], [r.getMessage() for r in proxied.server_errors]


def test_the_openai_sdk_sees_a_cut_stream_fail() -> None:
    """Before, the SDK's iteration just ended: a truncated answer taken for a whole one."""
    script = [head(200, "Content-Type: text/event-stream", "Transfer-Encoding: chunked"),
              b"%x\r\n%s\r\n" % (len(SSE), SSE), 0.05, RESET]
    with ScriptedUpstream([script]).running() as up, proxy_for(up) as proxied:
        client = openai.OpenAI(base_url=proxied.base + "/v1", api_key="sk-test", max_retries=0,
                               http_client=_client())
        events = []
        with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
            for event in client.responses.create(model="m", input="x", stream=True):
                events.append(event.type)
        assert events == ["response.created"]


@pytest.mark.parametrize(("ending", "complete"), [(CLOSE, True), (RESET, False)])
def test_a_body_delimited_by_the_close_ends_with_a_fin_and_is_cut_by_a_reset(
        ending: str, complete: bool) -> None:
    """No length, no chunking: the upstream's FIN ends the body, its RST cuts it."""
    script = [head(200, "Content-Type: text/event-stream", "Connection: close"), SSE, 0.05,
              ending]
    with ScriptedUpstream([script]).running() as up, proxy_for(up) as proxied:
        assert post_raw(proxied.base) == (SSE, complete)
        assert proxied.sink.one().attributes["error.type"] == "upstream_cut"
        assert proxied.server_errors == []


def test_a_truncated_stream_the_upstream_ended_cleanly_still_ends_cleanly() -> None:
    """A proper end of a chunked body is passed on: the bytes say it ended, so does the proxy."""
    script = [head(200, "Content-Type: text/event-stream", "Transfer-Encoding: chunked")
              + chunked(SSE)]
    with ScriptedUpstream([script]).running() as up, proxy_for(up) as proxied:
        assert post_raw(proxied.base) == (SSE, True)
        assert proxied.sink.one().attributes["error.type"] == "upstream_cut"


# -- never reuse a connection the proxy does not fully understand -------------------------

EXTRA_AFTER_RESPONSE = {
    # a whole second response in the same read: its headers must not merge into the first
    "response": OK + head(200, "X-Evil: 1", "Set-Cookie: stolen=1", "Content-Length: 5") + b"evil!",
    "partial-head": OK + b"HTTP/1.1 200 OK\r\nX-Evil: 1\r\n",
    "garbage": OK + b"\x00garbage",
    "after-chunked": head(200, "Content-Type: application/json", "Transfer-Encoding: chunked")
    + chunked(b'{"ok":true}') + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    "204-with-body": head(204) + b"HTTP/1.1 200 OK\r\nX-Evil: 1\r\nContent-Length: 4\r\n\r\nevil",
}


@pytest.mark.parametrize("case", sorted(EXTRA_AFTER_RESPONSE))
def test_bytes_after_a_complete_response_poison_the_connection(case: str) -> None:
    second = fixed(b'{"second":true}')
    with ScriptedUpstream([[EXTRA_AFTER_RESPONSE[case]], [second]]).running() as up, \
            proxy_for(up) as proxied, _client() as client:
        first = client.post(proxied.base + "/v1/responses", content=b"{}")
        assert first.status_code in (200, 204)
        assert "x-evil" not in first.headers and "set-cookie" not in first.headers
        if first.status_code == 200:
            assert first.json() == {"ok": True}
        again = client.post(proxied.base + "/v1/responses", content=b"{}")
        assert (again.status_code, again.json()) == (200, {"second": True})
    assert [r.connection for r in up.received] == [1, 2]


def test_bytes_arriving_on_an_idle_connection_poison_it() -> None:
    with ScriptedUpstream([[OK, 0.05, b"HTTP/1.1 200 OK\r\nX-Evil: 1\r\n"],
                           [fixed(b'{"second":true}')]]).running() as up, \
            proxy_for(up) as proxied, _client() as client:
        assert client.post(proxied.base + "/v1/responses", content=b"{}").status_code == 200
        # The stray bytes arrive while idle, and the proxy closes the connection.
        assert poll(lambda: not proxy_connections_to(up), 5)
        again = client.post(proxied.base + "/v1/responses", content=b"{}")
        assert again.json() == {"second": True} and "x-evil" not in again.headers
    assert [r.connection for r in up.received] == [1, 2]


FRAMING_ANOMALIES = {
    "content-length-and-chunked": head(200, "Content-Length: 3", "Transfer-Encoding: chunked")
    + chunked(b"hello"),
    "two-content-lengths": head(200, "Content-Length: 3", "Content-Length: 5") + b"hello",
    "transfer-coding-not-chunked": head(200, "Transfer-Encoding: gzip, chunked")
    + chunked(b"hello"),
    "unasked-101": head(101, "Upgrade: h2c", "Connection: upgrade") + OK,
    "endless-1xx": head(103, "Link: </a>") * 6 + OK,
    "bad-status-line": b"HTTP/1.1 2000 OK\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(FRAMING_ANOMALIES))
def test_a_response_with_framing_anomalies_is_a_502_on_a_closed_connection(
        case: str, caplog: pytest.LogCaptureFixture) -> None:
    second = fixed(b'{"second":true}')
    with ScriptedUpstream([[FRAMING_ANOMALIES[case]], [second]]).running() as up, \
            proxy_for(up) as proxied, _client() as client, \
            caplog.at_level(logging.WARNING, "otel_responses.proxy"):
        bad = client.post(proxied.base + "/v1/responses", content=b"{}")
        assert bad.status_code == 502, bad.text
        assert bad.json()["error"]["code"] == "upstream_invalid_response"
        again = client.post(proxied.base + "/v1/responses", content=b"{}")
        assert again.json() == {"second": True}
        assert proxied.server_errors == []
    assert [r.connection for r in up.received] == [1, 2]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    # The detail is in the proxy's log, not in the client's error.
    assert any("UpstreamInvalid: " in r.getMessage() for r in caplog.records)


def test_informational_responses_before_the_answer_are_skipped() -> None:
    script = [head(100) + head(103, "Link: </a>") + OK]
    with ScriptedUpstream([script, [OK]]).running() as up, \
            proxy_for(up) as proxied, _client() as client:
        for _ in range(2):
            assert client.post(proxied.base + "/v1/responses", content=b"{}").json() == \
                {"ok": True}
    assert [r.connection for r in up.received] == [1, 1]


# -- trailers are not headers ---------------------------------------------------------------

@pytest.mark.parametrize("split", [False, True])
def test_trailers_never_become_response_headers(split: bool) -> None:
    start = head(200, "Content-Type: text/event-stream", "Transfer-Encoding: chunked",
                 "Trailer: Set-Cookie, Location")
    body = chunked(SSE, trailers=b"Set-Cookie: session=evil\r\nLocation: http://evil/\r\n")
    script: list[Step] = [start, 0.05, body] if split else [start + body]
    with ScriptedUpstream([script, [OK]]).running() as up, \
            proxy_for(up) as proxied, _client() as client:
        resp = client.post(proxied.base + "/v1/responses", content=b"{}",
                           headers={"te": "trailers"})
        assert resp.status_code == 200 and resp.content == SSE
        assert "set-cookie" not in resp.headers and "location" not in resp.headers
        assert "trailer" not in resp.headers
        # The connection ended cleanly: it is reused.
        assert client.post(proxied.base + "/v1/responses", content=b"{}").status_code == 200
    assert [r.connection for r in up.received] == [1, 1]


# -- a POST is sent once --------------------------------------------------------------------

def _retries(base: str) -> float:
    return value(scrape(base), "otel_responses_upstream_retries_total")


def test_a_post_the_upstream_read_is_never_sent_again() -> None:
    """The upstream reads the POST on a kept-alive connection and closes it, unanswered."""
    with ScriptedUpstream([[OK], [CLOSE]]).running() as up, \
            proxy_for(up) as proxied, _client() as client:
        assert client.post(proxied.base + "/v1/responses", content=b"{}").status_code == 200
        resp = client.post(proxied.base + "/v1/responses", content=b'{"billed":1}')
        assert resp.status_code == 502
        assert resp.json()["error"]["code"] == "upstream_unreachable"
        assert _retries(proxied.base) == 0
    assert [r.body for r in up.received] == [b"{}", b'{"billed":1}']


@pytest.mark.parametrize("ending", [CLOSE, RESET])
def test_an_idempotent_get_on_a_stale_connection_is_retried_once_and_counted(
        ending: str) -> None:
    with ScriptedUpstream([[OK], [ending], [OK]]).running() as up, \
            proxy_for(up) as proxied, _client() as client:
        assert client.get(proxied.base + "/v1/models").status_code == 200
        resp = client.get(proxied.base + "/v1/models")
        assert resp.status_code == 200, resp.text
        assert _retries(proxied.base) == 1
    assert [r.connection for r in up.received] == [1, 1, 2]


def test_a_post_on_a_connection_the_upstream_closed_while_idle_goes_on_a_new_one() -> None:
    """Nothing reached the wire: the closed idle connection is dropped before writing."""
    with ScriptedUpstream([[OK, CLOSE], [OK]]).running() as up, \
            proxy_for(up) as proxied, _client() as client:
        assert client.post(proxied.base + "/v1/responses", content=b"{}").status_code == 200
        assert poll(lambda: not proxy_connections_to(up), 5)  # the proxy saw the FIN
        assert client.post(proxied.base + "/v1/responses", content=b"{}").status_code == 200
    assert [r.connection for r in up.received] == [1, 2]


# -- bounds on the response head -------------------------------------------------------------

HEAD_BOUNDS = {
    "too-many-fields": head(200, *(f"X-F{i}: v" for i in range(connection.MAX_HEADERS + 1)),
                            "Content-Length: 0"),
    "one-huge-field": head(200, "X-Big: " + "b" * connection.MAX_HEAD_BYTES,
                           "Content-Length: 0"),
    "many-1xx": (head(103, "Link: " + "l" * 20_000) * 4) + OK,
    # never finished: the bound, not the read timeout, ends it
    "endless": head(200, "Content-Length: 0")[:-2] + b"X-Slow: " + b"s" * 200_000,
}


@pytest.mark.parametrize("case", sorted(HEAD_BOUNDS))
def test_a_response_head_over_the_bounds_is_a_counted_502(case: str) -> None:
    with ScriptedUpstream([[HEAD_BOUNDS[case], STALL], [OK]]).running() as up, \
            proxy_for(up, read_timeout=30) as proxied, _client() as client:
        resp = client.post(proxied.base + "/v1/responses", content=b"{}")
        assert resp.status_code == 502
        error = resp.json()["error"]
        assert error["code"] == "upstream_headers_too_large", error
        assert client.post(proxied.base + "/v1/responses", content=b"{}").status_code == 200
        samples = scrape(proxied.base)
        assert value(samples, "otel_responses_upstream_faults_total", kind="header_limit") == 1
    assert [r.connection for r in up.received] == [1, 2]


def test_a_head_at_the_bounds_passes() -> None:
    fields = [f"X-F{i}: " + "v" * 100 for i in range(connection.MAX_HEADERS - 1)]
    with ScriptedUpstream([[head(200, *fields, "Content-Length: 2") + b"{}"]]).running() as up, \
            proxy_for(up) as proxied, _client() as client:
        resp = client.post(proxied.base + "/v1/responses", content=b"{}")
        assert resp.status_code == 200 and resp.headers["x-f0"] == "v" * 100
    assert len(up.received) == 1


# -- proxy-made errors: stable codes, no internal detail --------------------------------------

def test_proxy_made_errors_carry_no_internal_detail(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: refused
        port = unused.getsockname()[1]
        with caplog.at_level(logging.INFO), \
                serve_asgi(create_app(Settings(upstream=f"http://127.0.0.1:{port}"))) as base:
            resp = _client().post(base + "/v1/responses", content=b"{}")
            assert poll(lambda: any(r.name == "otel_responses.access" for r in caplog.records),
                        5)
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert error == {"message": error["message"], "type": "upstream_error", "param": None,
                     "code": "upstream_unreachable"}
    for internal in ("Errno", "ConnectionRefused", "OSError", str(port)):
        assert internal not in error["message"], error["message"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "otel_responses.proxy"]
    assert any("ConnectionRefusedError" in w for w in warnings), warnings
    access = [r.access for r in caplog.records  # type: ignore[attr-defined]
              if r.name == "otel_responses.access"]
    assert access[-1]["outcome"] == "upstream_unreachable"
    assert access[-1]["bytes_out"] == len(resp.content)


@pytest.mark.parametrize(("status", "outcome"), [(404, "client_error"), (429, "client_error"),
                                                 (500, "upstream_error"), (503, "upstream_error")])
def test_the_access_log_says_who_failed(status: int, outcome: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps({"error": {"message": "no", "type": "x", "param": None,
                                 "code": None}}).encode()
    answer = head(status, "Content-Type: application/json", f"Content-Length: {len(body)}") + body
    with caplog.at_level(logging.INFO, "otel_responses.access"), \
            ScriptedUpstream([[answer]]).running() as up, proxy_for(up) as proxied:
        assert _client().post(proxied.base + "/v1/responses", content=b"{}").status_code == status
        assert poll(lambda: any(r.name == "otel_responses.access" for r in caplog.records), 5)
    fields = next(r.access for r in caplog.records  # type: ignore[attr-defined]
                  if r.name == "otel_responses.access")
    assert (fields["status"], fields["outcome"], fields["bytes_out"]) == (status, outcome,
                                                                           len(body))


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop],
                         ids=["asyncio", "uvloop"])
def test_a_post_whose_connection_was_reset_before_writing_is_sent_on_a_new_one(
        loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """Nothing reached the wire: the reset pooled connection fails the first send at once."""
    with ScriptedUpstream([[OK, 0.05, RESET], [OK]]).running() as up:
        pool = UpstreamPool(UpstreamTarget.parse(up.url), connect_timeout=5,
                                            read_timeout=5)

        async def post(body: bytes) -> UpstreamResponse:
            response = await pool.request("POST", "/v1/responses", [], body)
            assert b"".join([chunk async for chunk in response.body()]) == b'{"ok":true}'
            response.close()
            return response

        async def main() -> UpstreamResponse:
            await post(b"{}")
            # Block the loop while the reset arrives: the pool cannot have seen it.
            time.sleep(0.3)
            try:
                return await post(b'{"billed":1}')
            finally:
                pool.close()

        loop = loop_factory()
        try:
            second = loop.run_until_complete(main())
        finally:
            loop.close()
    assert second.retried
    assert [(r.connection, r.body) for r in up.received] == [(1, b"{}"), (2, b'{"billed":1}')]
