"""Replay every recorded Chat Completions exchange through the adapter's translators and
compare what comes out with what the recording says."""

from __future__ import annotations

import json

import pytest

from otel_responses.protocol.chat import (
    StreamTranslator,
    completion_chunk,
    translate_request,
    upstream_error,
)
from tests.adapter_checks import (
    CREATED_AT,
    RESPONSE_ID,
    check_stream,
    expected_status,
    expected_summary,
    expected_usage,
    output_summary,
    replay_completion,
    replay_stream,
    responses_body,
    sdk_accumulate,
    usage_triple,
    validate_response,
)
from tests.recordings import (
    CHAT_DIR,
    Recording,
    chat_outcome,
    need,
    recordings_params,
    sse_payloads,
)


@pytest.mark.parametrize("rec", recordings_params(lambda r: r.status < 400 and r.is_sse,
                                                  CHAT_DIR))
def test_stream_recording(rec: Recording | None) -> None:
    rec = need(rec, CHAT_DIR)
    events = replay_stream(rec)
    final = check_stream(events)
    outcome = chat_outcome(rec)
    status, reason = expected_status(outcome)
    assert final["status"] == status
    assert (final["incomplete_details"] or {}).get("reason") == reason
    assert output_summary(final) == expected_summary(outcome)
    assert usage_triple(final) == expected_usage(outcome)
    assert final["model"] == sse_payloads(rec.body)[0]["model"]
    if status == "failed":
        assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    # The SDK's own accumulator (behind the strict stream helper) takes the stream whole.
    last = sdk_accumulate(events)
    assert (last.type, last.response.status) == (events[-1]["type"], status)
    assert last.response.output_text == outcome.text


@pytest.mark.parametrize("rec", recordings_params(lambda r: r.status < 400 and not r.is_sse,
                                                  CHAT_DIR))
def test_nonstream_recording(rec: Recording | None) -> None:
    rec = need(rec, CHAT_DIR)
    response = replay_completion(rec)
    validate_response(response)
    outcome = chat_outcome(rec)
    status, reason = expected_status(outcome)
    assert (response["status"], (response["incomplete_details"] or {}).get("reason")) == (
        status, reason)
    assert output_summary(response) == expected_summary(outcome)
    assert usage_triple(response) == expected_usage(outcome)
    assert response["model"] == json.loads(rec.body)["model"]
    # Output order: reasoning, then the message, then the calls.
    order = [item["type"] for item in response["output"]]
    assert order == sorted(order, key=["reasoning", "message", "function_call"].index)
    # Streamed at once (a server that answers a stream request with JSON): the same answer.
    translator = StreamTranslator(translate_request(responses_body(rec.request_body)),
                                  RESPONSE_ID, CREATED_AT)
    events = [*translator.start(), *translator.feed(completion_chunk(json.loads(rec.body))),
              *translator.finish()]
    streamed = check_stream(events)
    assert streamed["output"] == response["output"]
    assert (streamed["status"], streamed["usage"]) == (response["status"], response["usage"])


@pytest.mark.parametrize("rec", recordings_params(lambda r: r.status >= 400, CHAT_DIR))
def test_error_recording(rec: Recording | None) -> None:
    rec = need(rec, CHAT_DIR)
    body = upstream_error(rec.status, rec.body_bytes)
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] == json.loads(rec.body)["error"]["message"]
    assert isinstance(error["type"], str)
    assert error["code"] is None or isinstance(error["code"], str)
