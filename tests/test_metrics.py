"""Prometheus metrics through the proxy: values the recordings imply, exemplars, stream endings,
upstream faults, open streams, cardinality, content negotiation and the separate port."""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from otel_responses.app import create_app
from otel_responses.config import Settings
from otel_responses.telemetry.metrics import ProxyMetrics
from otel_responses.telemetry.options import TelemetryOptions
from otel_responses.telemetry.recorder import CallRecord
from tests.recordings import Recording, load_recordings, need, sse_payloads
from tests.servers import free_port, run_cli, serve_asgi
from tests.spans import SpanSink
from tests.upstreams import RawUpstream

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
HISTOGRAMS = ("gen_ai_client_operation_duration_seconds", "gen_ai_client_token_usage",
              "gen_ai_client_operation_time_to_first_chunk_seconds",
              "gen_ai_server_time_per_output_token_seconds",
              "otel_responses_proxy_overhead_seconds")
TERMINAL = {"response.completed": "completed", "response.incomplete": "incomplete",
            "response.failed": "failed", "error": "error_event"}


def _sse(*events: dict[str, Any]) -> str:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


def _synthetic(name: str, status: int, content_type: str, body: str) -> Recording:
    return Recording(name=name, request_method="POST", request_path="/v1/responses",
                     request_headers={}, request_body={"model": "gpt-4o", "input": "hi",
                                                       "stream": content_type.endswith("stream")},
                     status=status, headers={"content-type": content_type}, body=body)


_CREATED = {"type": "response.created", "sequence_number": 0,
            "response": {"id": "resp_s", "object": "response", "status": "in_progress",
                         "model": "gpt-4o-2024-08-06", "output": []}}
_DELTA = {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_s",
          "output_index": 0, "content_index": 0, "delta": "Hel"}
# Endings no recording has: a failed response, an error event, an upstream 503.
SYNTHETIC = [
    _synthetic("synthetic__stream_failed", 200, "text/event-stream", _sse(
        _CREATED, _DELTA,
        {"type": "response.failed", "sequence_number": 2,
         "response": {**_CREATED["response"], "status": "failed",
                      "error": {"code": "server_error", "message": "The model failed."}}})),
    _synthetic("synthetic__stream_error_event", 200, "text/event-stream", _sse(
        _CREATED, _DELTA,
        {"type": "error", "sequence_number": 2, "code": "rate_limit_exceeded",
         "message": "Slow down.", "param": None})),
    _synthetic("synthetic__error_503", 503, "application/json",
               '{"error": {"message": "overloaded", "type": "server_error", "code": null}}'),
]


# -- helpers shared with test_prometheus ---------------------------------------------------

def scrape(base: str, path: str = "/metrics") -> list[Sample]:
    resp = httpx.get(base + path, headers={"accept": OPENMETRICS}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    return [s for family in text_string_to_metric_families(resp.text) for s in family.samples]


def value(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples
               if s.name == name and labels.items() <= s.labels.items())


def by_label(samples: Iterable[Sample], name: str, label: str, **labels: str) -> dict[str, float]:
    out: collections.Counter[str] = collections.Counter()
    for s in samples:
        if s.name == name and labels.items() <= s.labels.items():
            out[s.labels[label]] += s.value
    return dict(out)


def wait_for(base: str, done: Callable[[list[Sample]], bool], timeout: float = 5.0,
             path: str = "/metrics") -> list[Sample]:
    """Scrape until ``done``: metrics are recorded just after the client got its last byte."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(base, path)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def wait_for_calls(base: str, calls: int, requests: int | None = None) -> list[Sample]:
    requests = calls if requests is None else requests
    return wait_for(base, lambda s: (
        value(s, "gen_ai_client_operation_duration_seconds_count") >= calls
        and value(s, "otel_responses_requests_total") >= requests))


def send(base: str, rec: Recording, client: httpx.Client | None = None) -> httpx.Response:
    body = json.dumps(rec.request_body).encode() if rec.request_body is not None else b"{}"
    return (client or httpx).post(
        base + "/v1/responses", content=body, timeout=10,
        headers={"x-scenario": f"replay:{rec.name}", "content-type": "application/json"})


def final_response(rec: Recording) -> dict[str, Any] | None:
    """The Response the recording ends with: a stream's last terminal snapshot, or the body."""
    if rec.status >= 400:
        return None
    if rec.is_sse:
        snapshots = [e["response"] for e in sse_payloads(rec.body)
                     if e.get("type") in TERMINAL and "response" in e]
        return snapshots[-1] if snapshots else None
    return json.loads(rec.body)


def stream_ending(rec: Recording) -> str | None:
    endings = [TERMINAL[e["type"]] for e in sse_payloads(rec.body) if e.get("type") in TERMINAL]
    return endings[-1] if endings else None


def has_delta(rec: Recording) -> bool:
    return rec.is_sse and any(e.get("type", "").endswith(".delta")
                              for e in sse_payloads(rec.body))


def span_ids(sink: SpanSink) -> set[tuple[str, str]]:
    return {(format(s.context.trace_id, "032x"), format(s.context.span_id, "016x"))
            for s in sink.calls()}


def assert_exemplars_on_every_observed_bucket(samples: list[Sample],
                                              spans: set[tuple[str, str]]) -> int:
    """Every bucket that received an observation carries an exemplar of a value inside it,
    naming an exported span; empty buckets carry none. Returns how many were checked."""
    series: dict[tuple[str, tuple[tuple[str, str], ...]], list[Sample]] = {}
    for s in samples:
        if s.name.endswith("_bucket") and s.name[:-len("_bucket")] in HISTOGRAMS:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            series.setdefault((s.name, key), []).append(s)
    checked = 0
    for buckets in series.values():
        buckets.sort(key=lambda s: float(s.labels["le"]))
        previous_count, previous_le = 0.0, float("-inf")
        for bucket in buckets:
            le = float(bucket.labels["le"])
            if bucket.value > previous_count:
                ex = bucket.exemplar
                assert ex is not None, bucket
                assert previous_le < ex.value <= le, bucket
                assert (ex.labels["trace_id"], ex.labels["span_id"]) in spans, bucket
                checked += 1
            else:
                assert bucket.exemplar is None, bucket
            previous_count, previous_le = bucket.value, le
    return checked


@contextlib.contextmanager
def metered_proxy(upstream_url: str, **settings: Any) -> Iterator[tuple[str, SpanSink, Any]]:
    """A proxy with its own metrics registry, tracing into memory: (base URL, spans, app)."""
    sink = SpanSink()
    app = create_app(Settings(upstream=upstream_url, **settings), tracer_provider=sink.provider)
    with serve_asgi(app) as base:
        yield base, sink, app


def recording_upstream(seed: int) -> RawUpstream:
    return RawUpstream(recordings={r.name: r for r in [*load_recordings(), *SYNTHETIC]},
                       seed=seed)


# -- tests ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    raw = recording_upstream(seed=5)
    with raw.running():
        yield raw


def _reported_usage(usage: dict[str, Any]) -> dict[str, int]:
    """Written out from the Responses API's usage object, one token type per field."""
    inputs = usage.get("input_tokens_details") or {}
    outputs = usage.get("output_tokens_details") or {}
    counts = {"input": usage.get("input_tokens"), "output": usage.get("output_tokens"),
              "cached_input": inputs.get("cached_tokens"),
              "cache_creation_input": inputs.get("cache_write_tokens"),
              "reasoning": outputs.get("reasoning_tokens")}
    return {k: v for k, v in counts.items() if v is not None}


def test_metric_values_equal_what_the_recordings_imply(upstream: RawUpstream) -> None:
    recs = load_recordings()
    need(recs[0] if recs else None)
    with metered_proxy(upstream.url + "/v1") as (base, sink, _), httpx.Client() as client:
        for rec in recs:
            assert send(base, rec, client).status_code == rec.status
        samples = wait_for_calls(base, len(recs))
    spans = span_ids(sink)
    assert len(spans) == len(recs)

    token_sum: collections.Counter[str] = collections.Counter()
    token_count: collections.Counter[str] = collections.Counter()
    total_tokens = 0
    for rec in recs:
        usage = (final_response(rec) or {}).get("usage") or {}
        total_tokens += usage.get("total_tokens", 0)
        for token_type, count in _reported_usage(usage).items():
            token_sum[token_type] += count
            token_count[token_type] += 1
    assert by_label(samples, "gen_ai_client_token_usage_sum", "gen_ai_token_type") == token_sum
    assert by_label(samples, "gen_ai_client_token_usage_count", "gen_ai_token_type") == \
        token_count
    assert token_sum["cached_input"] > 0 and token_sum["reasoning"] > 0  # the data covers both
    # Subsets are their own series, never added on top: input + output is the billed total.
    assert token_sum["input"] + token_sum["output"] == total_tokens

    def counted(key: Callable[[Recording], str]) -> dict[str, int]:
        return dict(collections.Counter(key(r) for r in recs))

    request_body = {r.name: r.request_body if isinstance(r.request_body, dict) else {}
                    for r in recs}
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert by_label(samples, "otel_responses_requests_total", "status_class",
                    route="responses.create", method="POST") == \
        counted(lambda r: f"{r.status // 100}xx")
    assert by_label(samples, duration, "error_type") == \
        counted(lambda r: str(r.status) if r.status >= 400 else "")
    assert by_label(samples, duration, "gen_ai_request_model") == \
        counted(lambda r: request_body[r.name].get("model", ""))
    assert by_label(samples, duration, "gen_ai_response_model") == \
        counted(lambda r: (final_response(r) or {}).get("model", ""))
    assert by_label(samples, duration, "stream") == counted(
        lambda r: "true" if r.is_sse or request_body[r.name].get("stream") is True else "false")
    assert by_label(samples, duration, "gen_ai_provider_name") == {"openai": len(recs)}
    assert by_label(samples, duration, "gen_ai_operation_name") == {"chat": len(recs)}

    streams = [r for r in recs if r.is_sse]
    endings = collections.Counter(stream_ending(r) for r in streams)
    assert by_label(samples, "otel_responses_stream_endings_total", "outcome") == {
        "completed": endings["completed"], "incomplete": endings["incomplete"],
        "failed": 0, "cancelled": 0, "error_event": 0, "upstream_cut": 0,
        "client_disconnect": 0}
    ttft = "gen_ai_client_operation_time_to_first_chunk_seconds"
    assert value(samples, ttft + "_count") == sum(has_delta(r) for r in streams) > 0
    assert 0 < value(samples, ttft + "_sum") < value(samples, duration[:-6] + "_sum",
                                                     stream="true")
    assert value(samples, "gen_ai_server_time_per_output_token_seconds_count") == sum(
        has_delta(r) and stream_ending(r) in ("completed", "incomplete")
        and final_response(r)["usage"]["output_tokens"] > 1 for r in streams)
    assert by_label(samples, "otel_responses_proxy_overhead_seconds_count", "route") == \
        {"responses.create": len(recs)}
    assert value(samples, "otel_responses_upstream_faults_total") == 0
    assert value(samples, "otel_responses_telemetry_errors_total") == 0
    assert assert_exemplars_on_every_observed_bucket(samples, spans) >= len(recs)


def test_plain_text_unless_openmetrics_is_asked_for(upstream: RawUpstream) -> None:
    with metered_proxy(upstream.url + "/v1") as (base, _, _):
        httpx.post(base + "/v1/responses", json={"model": "m", "input": "x"},
                   headers={"x-scenario": "echo"})
        wait_for_calls(base, 1)
        plain = httpx.get(base + "/metrics")
        rich = httpx.get(base + "/metrics", headers={"accept": OPENMETRICS})
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "gen_ai_client_operation_duration_seconds_bucket{" in plain.text
    assert "trace_id" not in plain.text
    assert rich.headers["content-type"].startswith("application/openmetrics-text")
    assert rich.text.endswith("# EOF\n")
    assert "# {span_id=" in rich.text


def test_stream_endings_and_upstream_faults_by_kind(upstream: RawUpstream) -> None:
    synthetic = {r.name: r for r in SYNTHETIC}
    with metered_proxy(upstream.url + "/v1", read_timeout=0.5) as (base, _, _):
        stream = b'{"model":"gpt-4o","input":"x","stream":true}'
        with pytest.raises(httpx.RemoteProtocolError):  # a cut body is cut for the client too
            httpx.post(base + "/v1/responses", content=stream, headers={"x-scenario": "cut"})
        with httpx.stream("POST", base + "/v1/responses", content=stream,
                          headers={"x-scenario": "drip"}) as resp:
            next(resp.iter_raw())
        assert httpx.post(base + "/v1/responses", content=stream,
                          headers={"x-scenario": "stall"}).status_code == 504
        for rec in synthetic.values():
            assert send(base, rec).status_code == rec.status
        samples = wait_for_calls(base, 6)
    assert by_label(samples, "otel_responses_stream_endings_total", "outcome") == {
        "completed": 0, "incomplete": 0, "cancelled": 0, "failed": 1, "error_event": 1,
        "upstream_cut": 1, "client_disconnect": 1}
    assert by_label(samples, "otel_responses_upstream_faults_total", "kind") == {
        "connect": 0, "timeout": 1, "reset": 1, "5xx": 1, "invalid": 0, "header_limit": 0}
    assert by_label(samples, "gen_ai_client_operation_duration_seconds_count", "error_type") == {
        "upstream_cut": 1, "client_disconnect": 1, "504": 1, "503": 1, "server_error": 1,
        "rate_limit_exceeded": 1}
    assert by_label(samples, "otel_responses_requests_total", "status_class") == \
        {"2xx": 4, "5xx": 2}
    # The failed stream had a first delta but is no success: no time per output token.
    assert value(samples, "gen_ai_client_operation_time_to_first_chunk_seconds_count") >= 2
    assert value(samples, "gen_ai_server_time_per_output_token_seconds_count") == 0


def test_unreachable_upstream_is_a_connect_fault() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        with metered_proxy(f"http://127.0.0.1:{sock.getsockname()[1]}/v1") as (base, _, _):
            assert httpx.post(base + "/v1/responses", json={"model": "m"}).status_code == 502
            samples = wait_for_calls(base, 1)
    assert by_label(samples, "otel_responses_upstream_faults_total", "kind") == {
        "connect": 1, "timeout": 0, "reset": 0, "5xx": 0, "invalid": 0, "header_limit": 0}
    assert by_label(samples, "gen_ai_client_operation_duration_seconds_count", "error_type") == \
        {"502": 1}


def test_open_streams_and_in_flight_requests_on_every_route() -> None:
    raw = RawUpstream()
    with raw.running(), metered_proxy(raw.url + "/v1") as (base, _, _), \
            contextlib.ExitStack() as streams:
        held = [streams.enter_context(httpx.stream(method, base + path, headers={
            "x-scenario": "held"}, content=body)) for method, path, body in (
            ("POST", "/v1/responses", b'{"model":"m","input":"x","stream":true}'),
            ("GET", "/v1/responses/resp_1?stream=true", None))]
        chunks = [resp.iter_raw() for resp in held]  # dropping one would close its stream
        for chunk in chunks:
            next(chunk)
        samples = scrape(base)
        assert value(samples, "otel_responses_open_streams") == 2
        assert value(samples, "otel_responses_in_flight_requests") == 2
        raw.release.set()
        assert [b"".join(chunk) for chunk in chunks] == [b'data: {"n":"last"}\n\n'] * 2
        streams.close()
        samples = wait_for(base, lambda s: value(s, "otel_responses_open_streams") == 0
                           and value(s, "otel_responses_in_flight_requests") == 0)
    assert value(samples, "otel_responses_open_streams") == 0
    assert value(samples, "otel_responses_in_flight_requests") == 0
    assert by_label(samples, "otel_responses_requests_total", "route") == {
        "responses.create": 1, "responses.retrieve": 1}


def test_telemetry_errors_are_counted(upstream: RawUpstream) -> None:
    def broken(record: CallRecord) -> None:
        raise RuntimeError("boom")

    with metered_proxy(upstream.url + "/v1") as (base, _, app):
        app.sinks = (*app.sinks, broken)
        resp = httpx.post(base + "/v1/responses", json={"model": "m", "input": "x"},
                          headers={"x-scenario": "echo"})
        assert resp.status_code == 200
        samples = wait_for(base, lambda s: value(s, "otel_responses_telemetry_errors_total") > 0)
    assert value(samples, "otel_responses_telemetry_errors_total") == 1


def test_model_labels_stay_bounded_under_a_thousand_junk_names(upstream: RawUpstream) -> None:
    # Quotes, backslashes, newlines and non-ASCII must survive escaping; too long is junk.
    junk = [f'junk-{i} "q" \\ new\nline ✓' for i in range(1000)]
    junk[3] = "x" * 1000
    with metered_proxy(upstream.url + "/v1") as (base, _, _), httpx.Client() as client:
        for name in junk:
            client.post(base + "/v1/responses", json={"model": name, "input": "x"},
                        headers={"x-scenario": "echo"})
        samples = wait_for_calls(base, len(junk))
    kept = [name for name in junk if len(name) <= 256][:50]  # the first 50 sane names
    models = by_label(samples, "gen_ai_client_operation_duration_seconds_count",
                      "gen_ai_request_model")
    assert models == {**dict.fromkeys(kept, 1), "other": len(junk) - len(kept)}
    # One label set per kept model (plus "other"), whatever the junk: not one per junk name.
    # The rest are the fixed series (fault kinds, stream endings, rejection reasons, …).
    label_sets = {tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                  for s in samples}
    assert len(label_sets) <= len(kept) + 1 + 30, len(label_sets)


def test_model_allow_list(upstream: RawUpstream) -> None:
    with metered_proxy(upstream.url + "/v1", metrics_models=("gpt-4o",)) as (base, _, _):
        for model in ("gpt-4o", "gpt-4o", "gpt-5", "junk"):
            httpx.post(base + "/v1/responses", json={"model": model, "input": "x"},
                       headers={"x-scenario": "echo"})
        samples = wait_for_calls(base, 4)
    assert by_label(samples, "gen_ai_client_operation_duration_seconds_count",
                    "gen_ai_request_model") == {"gpt-4o": 2, "other": 2}


def test_provider_label_follows_the_provider_setting(upstream: RawUpstream) -> None:
    options = TelemetryOptions(provider="azure")
    with metered_proxy(upstream.url + "/v1", telemetry=options) as (base, _, _):
        httpx.post(base + "/v1/responses", json={"model": "m", "input": "x"},
                   headers={"x-scenario": "echo"})
        samples = wait_for_calls(base, 1)
    assert by_label(samples, "gen_ai_client_operation_duration_seconds_count",
                    "gen_ai_provider_name") == {"azure.ai.openai": 1}


def test_time_per_output_token_and_token_types_from_one_call() -> None:
    metrics = ProxyMetrics()
    usage = {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 40},
             "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2}}

    def call(output_tokens: int, first_token_ns: int | None, outcome: str = "completed") -> None:
        metrics.observe_call(CallRecord(
            request_raw=b"", request={"model": "m", "stream": True}, status=200, stream=True,
            response={"model": "m-1", "usage": {**usage, "output_tokens": output_tokens}},
            error=None, outcome=outcome, start_ns=0, end_ns=3_000_000_000,
            first_token_ns=first_token_ns))

    call(5, first_token_ns=1_000_000_000)  # (3 s - 1 s) / (5 - 1) = 0.5 s per token
    call(1, first_token_ns=1_000_000_000)  # one output token: no time per token
    call(5, first_token_ns=None)  # no first delta: neither TTFT nor time per token
    call(5, first_token_ns=1_000_000_000, outcome="failed")  # not a success
    get = metrics.registry.get_sample_value
    labels = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
              "gen_ai_request_model": "m", "gen_ai_response_model": "m-1", "stream": "true"}
    ok = {**labels, "error_type": ""}
    assert get("gen_ai_server_time_per_output_token_seconds_count", ok) == 1
    assert get("gen_ai_server_time_per_output_token_seconds_sum", ok) == pytest.approx(0.5)
    assert get("gen_ai_client_operation_time_to_first_chunk_seconds_sum", ok) == \
        pytest.approx(2.0)
    assert get("gen_ai_client_operation_duration_seconds_count",
               {**labels, "error_type": "failed"}) == 1
    for token_type, total in (("input", 400), ("cached_input", 160), ("reasoning", 8),
                              ("output", 16)):
        assert sum(get("gen_ai_client_token_usage_sum",
                       {**labels, "error_type": e, "gen_ai_token_type": token_type}) or 0
                   for e in ("", "failed")) == total
    assert get("gen_ai_client_token_usage_count",
               {**ok, "gen_ai_token_type": "cache_creation_input"}) is None  # never reported


def test_metrics_port_serves_metrics_and_the_main_port_forwards(upstream: RawUpstream) -> None:
    port = free_port()
    with metered_proxy(upstream.url + "/v1", metrics_port=port) as (base, _, _):
        forwarded = httpx.get(base + "/metrics", headers={"x-scenario": "echo"})
        assert forwarded.json()["target"] == "/v1/metrics"  # the upstream answered
        samples = wait_for(f"http://127.0.0.1:{port}", lambda s: value(
            s, "otel_responses_requests_total", route="passthrough") == 1)
        assert value(samples, "otel_responses_requests_total", route="passthrough") == 1
    with pytest.raises(httpx.ConnectError):  # stopped with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics")


def test_metrics_port_closes_idle_connections(upstream: RawUpstream) -> None:
    """Clients that connect and send nothing (or half a request) are dropped after the client
    header timeout instead of each holding a server thread for ever; scrapes go on."""
    port = free_port()
    with metered_proxy(upstream.url + "/v1", metrics_port=port, client_header_timeout=0.5):
        wait_for(f"http://127.0.0.1:{port}", bool)
        idle = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(20)]
        idle[0].sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")  # and never the blank line
        try:
            assert all(sock.recv(65536) == b"" for sock in idle[1:])  # closed by the server
            assert idle[0].recv(65536) == b""
            assert wait_for(f"http://127.0.0.1:{port}", bool)
        finally:
            for sock in idle:
                sock.close()


def test_metrics_host_binds_the_metrics_port_apart_from_the_proxy(upstream: RawUpstream) -> None:
    """A sidecar's shape: the proxy on loopback, its metrics on another interface (0.0.0.0 in
    a pod, for Prometheus); here two loopback addresses stand for the two."""
    port = free_port()
    with run_cli("--upstream", upstream.url + "/v1", "--host", "127.0.0.1", "--metrics-port",
                 str(port), "--metrics-host", "127.0.0.2") as (base, proc):
        samples = wait_for(f"http://127.0.0.2:{port}", lambda s: bool(s))
        assert value(samples, "otel_responses_open_streams") == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/metrics")
        with pytest.raises(httpx.ConnectError):
            httpx.get(base.replace("127.0.0.1", "127.0.0.2") + "/healthz")
        proc.terminate()
        assert f"metrics: http://127.0.0.2:{port}/metrics" in proc.communicate(timeout=20)[0]


def test_metrics_flags_from_the_command_line(upstream: RawUpstream) -> None:
    port = free_port()
    with run_cli("--upstream", upstream.url + "/v1", "--metrics-port", str(port),
                 env={"OTEL_RESPONSES_METRICS_MODELS": "gpt-4o, gpt-5"}) as (base, _):
        for model in ("gpt-4o", "gpt-5", "gpt-6"):
            httpx.post(base + "/v1/responses", json={"model": model, "input": "x"},
                       headers={"x-scenario": "echo"})
        samples = wait_for(f"http://127.0.0.1:{port}", lambda s: value(
            s, "gen_ai_client_operation_duration_seconds_count") == 3)
    assert by_label(samples, "gen_ai_client_operation_duration_seconds_count",
                    "gen_ai_request_model") == {"gpt-4o": 1, "gpt-5": 1, "other": 1}


def test_metrics_without_tracing(upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with serve_asgi(create_app(Settings(upstream=upstream.url + "/v1"))) as base:
        echo = httpx.post(base + "/v1/responses", json={"model": "m", "input": "x"},
                          headers={"x-scenario": "echo", "traceparent": parent}).json()
        samples = wait_for_calls(base, 1)
    assert [v for k, v in echo["headers"] if k.lower() == "traceparent"] == [parent]
    assert value(samples, "gen_ai_client_operation_duration_seconds_count") == 1
    assert all(s.exemplar is None for s in samples)


def test_metrics_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="metrics_port"):
        Settings(port=9000, metrics_port=9000)
    with pytest.raises(ValueError, match="metrics_max_models"):
        Settings(metrics_max_models=0)
