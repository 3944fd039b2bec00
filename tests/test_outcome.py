"""One outcome vocabulary: the proxy's own errors, the metrics and the span speak it."""

from __future__ import annotations

from otel_responses.outcome import FAULT_KINDS, STREAM_ENDINGS, SUCCESSES, UNREACHED, Outcome
from otel_responses.proxy import errors
from otel_responses.telemetry.recorder import CallRecorder


def test_each_upstream_failure_answers_with_its_outcome_as_code() -> None:
    made = [errors.upstream_unreachable(), errors.upstream_timeout(),
            errors.upstream_invalid_response(), errors.upstream_headers_too_large()]
    for err in made:
        assert err.code == err.outcome.value and err.outcome in FAULT_KINDS
        assert err.status in (502, 504)
    assert {e.outcome for e in made} >= UNREACHED
    assert errors.body_too_large(10).outcome is Outcome.REJECTED


def test_the_groups_partition_sensibly() -> None:
    assert not SUCCESSES & set(FAULT_KINDS)
    assert not SUCCESSES & UNREACHED
    assert len(set(FAULT_KINDS.values())) == len(FAULT_KINDS)  # one label per fault
    assert set(STREAM_ENDINGS) <= set(Outcome)


def _record(status: int, body: bytes, stream: bool = False) -> Outcome:
    call = CallRecorder(1)
    call.request_chunk(b'{"model": "m", "input": "x"}')
    ctype = b"text/event-stream" if stream else b"application/json"
    call.response_start(status, [(b"content-type", ctype)])
    call.response_chunk(body, False)
    return call.finish().outcome


def test_the_recorder_names_http_errors_as_the_access_log_does() -> None:
    assert _record(404, b'{"error": {"message": "no"}}') is Outcome.CLIENT_ERROR
    assert _record(503, b"busy") is Outcome.UPSTREAM_ERROR
    assert _record(429, b"data: {}\n\n", stream=True) is Outcome.CLIENT_ERROR
    assert Outcome.of_status(404) is Outcome.CLIENT_ERROR
    assert Outcome.of_status(500) is Outcome.UPSTREAM_ERROR
    assert _record(200, b'{"status": "incomplete"}') is Outcome.INCOMPLETE
    assert _record(200, b'event: response.failed\ndata: {"type": "response.failed", '
                   b'"response": {"status": "failed"}}\n\n', stream=True) is Outcome.FAILED
