"""The proxy over real sockets: byte-exact replay, routes, headers, credentials, error paths."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import socket
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from otel_responses.app import create_app
from otel_responses.config import Settings
from tests.recordings import Recording, load_recordings, need, recordings_params, sse_payloads
from tests.servers import serve_asgi
from tests.upstreams import RawUpstream

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    raw = RawUpstream(recordings={r.name: r for r in load_recordings()}, seed=7)
    with raw.running():
        yield raw


@contextlib.contextmanager
def proxy(upstream_url: str, **settings: object) -> Iterator[str]:
    app = create_app(Settings(upstream=upstream_url, **settings))  # type: ignore[arg-type]
    with serve_asgi(app) as base:
        yield base


@pytest.fixture(scope="module")
def proxy_url(upstream: RawUpstream) -> Iterator[str]:
    with proxy(upstream.url + "/v1") as base:
        yield base


def _echo(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def _upstream_header(echo: dict, name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name]


# -- byte-exact replay of every recording ------------------------------------------------------

@pytest.mark.parametrize("rec", recordings_params())
def test_recording_round_trips_byte_for_byte(rec: Recording | None, proxy_url: str) -> None:
    rec = need(rec)
    body = json.dumps(rec.request_body).encode() if rec.request_body is not None else b""
    headers = {"x-scenario": f"replay:{rec.name}", "content-type": "application/json"}
    with httpx.Client(timeout=10) as client, client.stream(
            "POST", proxy_url + rec.request_path, content=body, headers=headers) as resp:
        received = b"".join(resp.iter_raw())
        assert resp.status_code == rec.status
        got_headers = {k.lower(): v for k, v in resp.headers.multi_items()}
    assert received == rec.body_bytes
    for name, value in rec.headers.items():
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in ("content-length", "content-encoding"):
            continue
        assert got_headers.get(lname) == value, name
    if rec.is_sse:
        assert "content-length" not in got_headers
    else:
        assert got_headers["content-length"] == str(len(rec.body_bytes))


@pytest.mark.parametrize("rec", recordings_params())
def test_openai_sdk_through_proxy_sees_the_recorded_events(rec: Recording | None,
                                                           proxy_url: str) -> None:
    rec = need(rec)
    client = openai.OpenAI(base_url=proxy_url + "/v1", api_key="sk-test", max_retries=0)
    # A few error recordings kept only the response; any request gets the recorded answer.
    sent = rec.request_body if isinstance(rec.request_body, dict) else {"model": "m", "input": "x"}
    params = {k: v for k, v in sent.items() if k != "stream"}
    headers = {"x-scenario": f"replay:{rec.name}"}
    if rec.status >= 400:
        with pytest.raises(openai.APIStatusError) as info:
            client.responses.create(**params, stream=bool(sent.get("stream")),
                                    extra_headers=headers)
        assert info.value.status_code == rec.status
        return
    if not rec.is_sse:
        resp = client.responses.create(**params, extra_headers=headers)
        assert resp.id == json.loads(rec.body)["id"]
        return
    events = list(client.responses.create(**params, stream=True, extra_headers=headers))
    expected = sse_payloads(rec.body)
    assert [e.type for e in events] == [e["type"] for e in expected]
    assert [e.model_dump(exclude_unset=True) for e in events] == expected


@pytest.mark.parametrize("rec", recordings_params(lambda r: r.is_sse and r.status < 400))
def test_the_sdks_stream_helper_accumulates_the_recorded_final_response(
        rec: Recording | None, proxy_url: str) -> None:
    """`responses.stream()` parses what the proxy passes on into the recording's own final
    Response: every output item (tool calls included), status and usage."""
    rec = need(rec)
    expected = sse_payloads(rec.body)[-1]["response"]  # each recorded stream ends whole
    client = openai.OpenAI(base_url=proxy_url + "/v1", api_key="sk-test", max_retries=0)
    params = {k: v for k, v in rec.request_body.items() if k != "stream"}
    with client.responses.stream(**params,
                                 extra_headers={"x-scenario": f"replay:{rec.name}"}) as stream:
        events = list(stream)
        if expected["status"] == "completed":
            final = stream.get_final_response()
        else:  # the helper's final response is a completed one only: it says so
            with pytest.raises(RuntimeError, match=r"response\.completed"):
                stream.get_final_response()
            final = events[-1].response  # type: ignore[union-attr]
    assert events[-1].type == f"response.{expected['status']}"
    assert _without_parsed(final.to_dict()) == expected


def _without_parsed(value: object) -> object:
    """A parsed response as sent: without the fields the SDK's parsing adds (``parsed`` to
    text parts, ``parsed_arguments`` to function calls)."""
    if isinstance(value, dict):
        return {k: _without_parsed(v) for k, v in value.items()
                if k not in ("parsed", "parsed_arguments")}
    if isinstance(value, list):
        return [_without_parsed(v) for v in value]
    return value


# -- routes, query strings, prefixes ------------------------------------------------------------

ROUTES = [
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/resp_1"),
    ("GET", "/v1/responses/resp_1?stream=true&starting_after=3"),
    ("DELETE", "/v1/responses/resp_1"),
    ("POST", "/v1/responses/resp_1/cancel"),
    ("GET", "/v1/responses/resp_1/input_items?limit=2&order=asc"),
    ("POST", "/v1/responses/input_tokens"),
    ("POST", "/v1/responses/compact"),
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"),
    ("PUT", "/v1/some/other/path?x=%20y"),
]


@pytest.mark.parametrize(("method", "target"), ROUTES)
def test_every_route_is_forwarded_verbatim(method: str, target: str, proxy_url: str) -> None:
    body = b'{"model":"m","input":"hi"}' if method in ("POST", "PUT") else b""
    echo = _echo(httpx.request(method, proxy_url + target, content=body or None,
                               headers={"x-scenario": "echo"}))
    assert echo["method"] == method
    assert echo["target"] == target
    assert base64.b64decode(echo["body_b64"]) == body


def test_upstream_path_prefix(upstream: RawUpstream) -> None:
    with proxy(upstream.url + "/openai/v1/") as base:
        echo = _echo(httpx.post(base + "/v1/responses?api-version=preview", content=b"{}",
                                headers={"x-scenario": "echo"}))
    assert echo["target"] == "/openai/v1/responses?api-version=preview"
    with proxy(upstream.url) as base:
        echo = _echo(httpx.get(base + "/v1/models", headers={"x-scenario": "echo"}))
    assert echo["target"] == "/v1/models"


def test_request_body_is_forwarded_as_raw_bytes(proxy_url: str) -> None:
    # Not re-serialised: odd spacing, key order and non-ASCII escapes survive.
    body = b'{ "input" : "caf\\u00e9 \xc3\xa9",\n "model":"m" ,"x":1.0e0}'
    echo = _echo(httpx.post(proxy_url + "/v1/responses", content=body,
                            headers={"x-scenario": "echo"}))
    assert base64.b64decode(echo["body_b64"]) == body


# -- headers and credentials --------------------------------------------------------------------

def test_hop_by_hop_headers_are_dropped_both_ways(upstream: RawUpstream, proxy_url: str) -> None:
    resp = httpx.post(proxy_url + "/v1/responses", content=b"{}", headers={
        "x-scenario": "echo", "x-custom": "kept", "proxy-authorization": "Basic xx",
        "te": "trailers", "connection": "keep-alive, x-dropme", "x-dropme": "1",
        "keep-alive": "timeout=5", "trailer": "x-t", "upgrade": "websocket",
    })
    echo = _echo(resp)
    sent = {k.lower() for k, _ in echo["headers"]}
    assert _upstream_header(echo, "x-custom") == ["kept"]
    for name in ("proxy-authorization", "te", "x-dropme", "keep-alive", "trailer", "upgrade"):
        assert name not in sent, name
    assert _upstream_header(echo, "host") == [f"127.0.0.1:{upstream.port}"]
    # Response side: the upstream sent Keep-Alive, Proxy-Agent and Connection: keep-alive, X-Hop.
    assert resp.headers["x-upstream"] == "raw"
    assert "keep-alive" not in resp.headers
    assert "proxy-agent" not in resp.headers


def test_client_credentials_are_forwarded_by_default(proxy_url: str) -> None:
    echo = _echo(httpx.post(proxy_url + "/v1/responses", content=b"{}", headers={
        "x-scenario": "echo", "authorization": "Bearer sk-client"}))
    assert _upstream_header(echo, "authorization") == ["Bearer sk-client"]


def test_upstream_api_key_replaces_the_clients(upstream: RawUpstream) -> None:
    with proxy(upstream.url + "/v1", upstream_api_key="sk-real") as base:
        echo = _echo(httpx.post(base + "/v1/responses", content=b"{}", headers={
            "x-scenario": "echo", "authorization": "Bearer sk-client"}))
        assert _upstream_header(echo, "authorization") == ["Bearer sk-real"]
        azure = _echo(httpx.post(base + "/v1/responses", content=b"{}", headers={
            "x-scenario": "echo", "api-key": "client-key"}))
        assert _upstream_header(azure, "api-key") == ["sk-real"]
        assert _upstream_header(azure, "authorization") == []
        keyless = _echo(httpx.post(base + "/v1/responses", content=b"{}",
                                   headers={"x-scenario": "echo"}))
        assert _upstream_header(keyless, "authorization") == ["Bearer sk-real"]


def test_content_encoding_passes_through_untouched(proxy_url: str) -> None:
    with httpx.stream("GET", proxy_url + "/v1/models",
                      headers={"x-scenario": "gzip", "accept-encoding": "gzip"}) as resp:
        raw = b"".join(resp.iter_raw())
        assert resp.headers["content-encoding"] == "gzip"
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw).startswith(b'{"object":"response"')


def test_proxy_adds_no_encoding_the_client_did_not_ask_for(proxy_url: str) -> None:
    with httpx.Client() as client:
        client.headers.clear()
        echo = _echo(client.post(proxy_url + "/v1/responses", content=b"{}",
                                 headers={"x-scenario": "echo"}))
    sent = {k.lower() for k, _ in echo["headers"]}
    assert "accept-encoding" not in sent
    assert "user-agent" not in sent


# -- streaming without buffering ------------------------------------------------------------

def test_first_event_reaches_client_before_upstream_sends_the_second(
        upstream: RawUpstream, proxy_url: str) -> None:
    upstream.release.clear()
    try:
        with httpx.stream("POST", proxy_url + "/v1/responses", content=b"{}",
                          headers={"x-scenario": "held"}, timeout=5) as resp:
            chunks = resp.iter_raw()
            first = next(chunks)  # would block forever if the proxy buffered
            assert first == b'data: {"n":0}\n\n'
            upstream.release.set()
            rest = b"".join(chunks)
        assert rest == b'data: {"n":"last"}\n\n'
    finally:
        upstream.release.set()


# -- error paths --------------------------------------------------------------------------------

def _assert_openai_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]


def test_upstream_unreachable_is_502() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connection refused
        with proxy(f"http://127.0.0.1:{port}/v1") as base:
            resp = httpx.post(base + "/v1/responses", content=b"{}")
    _assert_openai_error(resp, 502, "upstream_unreachable")


def test_upstream_connect_timeout_is_504() -> None:
    # A listener whose accept queue is full drops further SYNs, so connect() times out.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        try:
            with proxy(f"http://127.0.0.1:{port}/v1", connect_timeout=0.3) as base:
                resp = httpx.post(base + "/v1/responses", content=b"{}", timeout=10)
        finally:
            for s in fillers:
                s.close()
    _assert_openai_error(resp, 504, "upstream_timeout")


def test_upstream_read_timeout_is_504(upstream: RawUpstream) -> None:
    with proxy(upstream.url + "/v1", read_timeout=0.3) as base:
        started = time.monotonic()
        resp = httpx.post(base + "/v1/responses", content=b"{}", headers={"x-scenario": "stall"})
        assert time.monotonic() - started < 5
    _assert_openai_error(resp, 504, "upstream_timeout")


def test_body_over_limit_is_413(proxy_url: str, upstream: RawUpstream) -> None:
    with proxy(upstream.url + "/v1", max_body_bytes=1000) as base:
        declared = httpx.post(base + "/v1/responses", content=b"x" * 1001,
                              headers={"x-scenario": "echo"})
        _assert_openai_error(declared, 413, "request_too_large")

        def chunks() -> Iterator[bytes]:
            for _ in range(20):
                yield b"y" * 100

        streamed = httpx.post(base + "/v1/responses", content=chunks(),
                              headers={"x-scenario": "echo"})
        _assert_openai_error(streamed, 413, "request_too_large")
        ok = httpx.post(base + "/v1/responses", content=b"z" * 1000,
                        headers={"x-scenario": "echo"})
        assert ok.status_code == 200


def test_upstream_cutting_a_stream_cuts_the_clients_stream(
        proxy_url: str, caplog: pytest.LogCaptureFixture) -> None:
    body = b""
    with caplog.at_level(logging.WARNING, "otel_responses.proxy"), httpx.stream(
            "POST", proxy_url + "/v1/responses", content=b"{}",
            headers={"x-scenario": "cut"}, timeout=5) as resp, \
            pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        for chunk in resp.iter_raw():  # ends, no hang; the missing end is an error
            body += chunk
    assert body.startswith(b"event: response.created\n")
    assert body.endswith(b'data: {"ty')
    assert any("ended" in r.getMessage() and "early" in r.getMessage() for r in caplog.records)


def test_upstream_cutting_a_fixed_length_body_drops_the_client_connection(
        proxy_url: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(proxy_url + "/v1/responses", content=b"{}",
                   headers={"x-scenario": "cut-fixed"}, timeout=5)
    # and the proxy is still serving
    assert httpx.get(proxy_url + "/healthz").status_code == 200


def test_client_disconnect_closes_the_upstream_request_within_a_second(
        upstream: RawUpstream, proxy_url: str) -> None:
    before = len(upstream.closed_at)
    with httpx.stream("POST", proxy_url + "/v1/responses", content=b"{}",
                      headers={"x-scenario": "drip"}, timeout=5) as resp:
        next(resp.iter_raw())
        left = time.monotonic()
    deadline = left + 3
    while len(upstream.closed_at) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(upstream.closed_at) > before, "upstream stream was never closed"
    assert upstream.closed_at[-1] - left < 1.0


def test_upstream_errors_pass_through_unchanged(proxy_url: str) -> None:
    recs = [r for r in load_recordings() if r.status >= 400]
    if not recs:
        need(None)
    for rec in recs:
        resp = httpx.post(proxy_url + "/v1/responses", content=b"{}",
                          headers={"x-scenario": f"replay:{rec.name}"})
        assert resp.status_code == rec.status
        assert resp.content == rec.body_bytes


def test_bad_requests_never_take_the_proxy_down(proxy_url: str) -> None:
    for body in (b"{not json", b"\xff\xfe\x00", b"[]", b""):
        resp = httpx.post(proxy_url + "/v1/responses", content=body,
                          headers={"x-scenario": "echo"})
        assert resp.status_code == 200
        assert base64.b64decode(resp.json()["body_b64"]) == body
    assert httpx.get(proxy_url + "/healthz").status_code == 200


# -- operations ---------------------------------------------------------------------------------

def test_health_and_readiness(proxy_url: str) -> None:
    assert httpx.get(proxy_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(proxy_url + "/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_one_access_log_line_per_request(proxy_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "otel_responses.access"):
        httpx.post(proxy_url + "/v1/responses", content=b'{"model":"gpt-x","input":"hi"}',
                   headers={"x-scenario": "echo"})
        deadline = time.monotonic() + 2
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = [r for r in caplog.records if r.name == "otel_responses.access"]
    assert len(lines) == 1
    fields = lines[0].access  # type: ignore[attr-defined]
    assert fields["method"] == "POST"
    assert fields["path"] == "/v1/responses"
    assert fields["route"] == "responses.create"
    assert fields["status"] == 200
    assert fields["model"] == "gpt-x"
    assert fields["bytes_in"] == 30
    assert fields["bytes_out"] > 30
    assert fields["stream"] is False
    assert fields["duration_ms"] > 0


def test_overhead_header_is_opt_in(upstream: RawUpstream, proxy_url: str) -> None:
    plain = httpx.post(proxy_url + "/v1/responses", content=b"{}", headers={"x-scenario": "echo"})
    assert "x-otel-responses-overhead-ms" not in plain.headers
    with proxy(upstream.url + "/v1", overhead_header=True) as base:
        resp = httpx.post(base + "/v1/responses", content=b"{}", headers={"x-scenario": "echo"})
    overhead_ms = float(resp.headers["x-otel-responses-overhead-ms"])
    assert 0 < overhead_ms < 1000


# -- the openai SDK through the proxy to the demo upstream ---------------------------------

@pytest.fixture(scope="module")
def demo_client() -> Iterator[openai.OpenAI]:
    from otel_responses.demo.app import create_demo_app

    with serve_asgi(create_demo_app()) as demo, proxy(demo + "/v1") as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)


WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


def test_sdk_create_stream_and_helper_against_demo(demo_client: openai.OpenAI) -> None:
    plain = demo_client.responses.create(model="demo", input="Hello proxy")
    assert "Hello proxy" in plain.output_text
    assert plain.usage.output_tokens > 0
    events = list(demo_client.responses.create(model="demo", input="Hello proxy", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].type == "response.completed"
    assert deltas == events[-1].response.output_text == plain.output_text
    with demo_client.responses.stream(model="demo", input="Hello proxy") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == plain.output_text


def test_sdk_tool_round_trip_against_demo(demo_client: openai.OpenAI) -> None:
    first = demo_client.responses.create(model="demo", input="Weather in Paris?",
                                         tools=[WEATHER])
    (call,) = [i for i in first.output if i.type == "function_call"]
    assert call.name == "get_weather"
    assert "city" in json.loads(call.arguments)
    second = demo_client.responses.create(
        model="demo", tools=[WEATHER],
        input=[{"role": "user", "content": "Weather in Paris?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name,
                "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert "sunny" in second.output_text


def test_sdk_stored_response_routes_against_demo(demo_client: openai.OpenAI) -> None:
    created = demo_client.responses.create(model="demo", input="keep me", stream=True)
    events = list(created)
    response_id = events[-1].response.id
    assert demo_client.responses.retrieve(response_id).output_text == \
        events[-1].response.output_text
    resumed = list(demo_client.responses.retrieve(response_id, stream=True, starting_after=3))
    assert [e.sequence_number for e in resumed] == [e.sequence_number for e in events[4:]]
    items = demo_client.responses.input_items.list(response_id)
    assert items.data
    assert demo_client.responses.delete(response_id) is None
    with pytest.raises(openai.NotFoundError):
        demo_client.responses.retrieve(response_id)
