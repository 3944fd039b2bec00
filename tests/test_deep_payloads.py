"""Deep or huge payloads never lose the span: recorded cut and flagged, images still masked."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_responses.outcome import Outcome
from otel_responses.protocol.body import TOO_DEEP, cut_depth
from otel_responses.protocol.tools import tool_runs
from otel_responses.telemetry.masking import REDACTED, MaskingConfig, mask_images_in_request
from otel_responses.telemetry.options import TelemetryOptions
from otel_responses.telemetry.recorder import CallRecord
from otel_responses.telemetry.spans import SpanWriter
from tests.recordings import Recording
from tests.spans import SpanSink, traced_proxy
from tests.test_metrics import scrape, value
from tests.upstreams import RawUpstream

IMAGE = "data:image/png;base64," + "QUJD" * 10_000  # 40,000 characters: masked by default


def _leaked(attrs: dict[str, Any]) -> list[str]:
    """The attributes that hold the oversized image's data (none should)."""
    return [key for key, v in attrs.items() if "QUJDQUJD" in str(v)]


def _nested(depth: int, bottom: Any) -> Any:
    for _ in range(depth):
        bottom = [bottom]
    return bottom


def _nested_text(depth: int, bottom: str) -> str:
    """`_nested` as JSON text, written directly: json.dumps would hit the test's own stack."""
    return "[" * depth + bottom + "]" * depth


def _deep_request(depth: int) -> bytes:
    """A valid Responses request with an input image at the top and ``depth`` levels down."""
    image = json.dumps({"type": "input_image", "image_url": IMAGE})
    return ('{"model":"deep","input":[{"role":"user","content":['
            '{"type":"input_text","text":"look"},' + image + ','
            '{"type":"input_text","text":"x","extra":' + _nested_text(depth, image) + "}"
            "]}]}").encode()


def _deep_response(depth: int) -> str:
    return ('{"id":"resp_deep","object":"response","status":"completed","model":"deep",'
            '"output":[{"type":"message","role":"assistant","id":"msg_1","content":['
            '{"type":"output_text","text":"fine","annotations":[' + _nested_text(depth, "1")
            + ']}]},{"type":"function_call","call_id":"call_1","name":"f","arguments":"{}"}],'
            '"usage":{"input_tokens":7,"output_tokens":3,"total_tokens":10}}')


def _recordings(depths: list[int]) -> dict[str, Recording]:
    out = {}
    for depth in depths:
        body = _deep_response(depth)
        created = body.replace('"completed"', '"in_progress"', 1)
        stream = (f"event: response.created\ndata: "
                  f'{{"type":"response.created","response":{created}}}\n\n'
                  f"event: response.completed\ndata: "
                  f'{{"type":"response.completed","response":{body}}}\n\n')
        out[f"json{depth}"] = Recording(f"json{depth}", "POST", "/v1/responses", {}, None, 200,
                                        {"content-type": "application/json"}, body)
        out[f"sse{depth}"] = Recording(f"sse{depth}", "POST", "/v1/responses", {}, None, 200,
                                       {"content-type": "text/event-stream"}, stream)
    return out


# How deep the proxy's parser reaches depends on its stack there; across these, some parse
# but nest deeper than the walks and encoders can go, and each must still give its span.
DEPTHS = [300, 600, 800, 900, 940, 970]


@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    raw = RawUpstream(recordings=_recordings(DEPTHS), seed=2)
    with raw.running():
        yield raw


@pytest.fixture
def proxy(upstream: RawUpstream) -> Iterator[tuple[str, SpanSink]]:
    with traced_proxy(upstream.url + "/v1") as pair:
        yield pair


def _call(base: str, body: bytes, scenario: str = "echo") -> None:
    response = httpx.post(base + "/v1/responses", content=body, timeout=10,
                          headers={"content-type": "application/json", "x-scenario": scenario})
    assert response.status_code == 200


def _no_telemetry_errors(base: str) -> None:
    assert value(scrape(base), "otel_responses_telemetry_errors_total") == 0


def test_a_deep_request_keeps_its_span_with_its_images_masked(
        proxy: tuple[str, SpanSink]) -> None:
    base, sink = proxy
    parsed = 0
    for depth in DEPTHS:
        sink.clear()
        _call(base, _deep_request(depth))
        attrs = dict(sink.one().attributes or {})
        assert _leaked(attrs) == []  # the oversized image, shallow or deep
        if attrs["input.mime_type"] == "text/plain":
            continue  # too deep for the parser here: recorded as text (below)
        parsed += 1
        assert attrs["llm.request.model_name"] == "deep"
        # Re-serialised (compactly) with both images, top and bottom, replaced.
        assert attrs["input.value"].count(f'"image_url":"{REDACTED}"') == 2
    assert parsed >= 3  # 300 to 800 levels parse everywhere
    _no_telemetry_errors(base)


@pytest.mark.parametrize("scenario", ["json", "sse"])
def test_a_deep_response_keeps_its_span(proxy: tuple[str, SpanSink], scenario: str) -> None:
    base, sink = proxy
    parsed = 0
    for depth in DEPTHS:
        sink.clear()
        _call(base, b'{"model":"deep","input":"hi"}', f"replay:{scenario}{depth}")
        attrs = dict(sink.one().attributes or {})
        if attrs.get("openai.response.status") != "completed":
            continue  # too deep for the parser here: not recorded (or only the snapshot)
        parsed += 1
        assert attrs["llm.token_count.total"] == 10
        assert attrs["llm.finish_reason"] == "tool_call"
        assert attrs["llm.output_messages.0.message.contents.0.message_content.text"] == "fine"
    assert parsed >= 3
    _no_telemetry_errors(base)


def test_what_is_nested_past_the_stack_is_recorded_cut_and_flagged() -> None:
    """Parsed elsewhere (a shallower stack, another thread), a payload can nest deeper than
    the span's encoders reach here: its span is recorded with it cut at MAX_DEPTH."""
    sink = SpanSink()
    writer = SpanWriter(sink.provider.get_tracer("t"), TelemetryOptions(genai_semconv=True))
    raw = _deep_request(5000)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 10_000)  # a parse on a shallower stack than the span's
    try:
        request = json.loads(raw)
    finally:
        sys.setrecursionlimit(limit)
    response = json.loads(_deep_response(3))
    response["output"][0]["content"][0]["annotations"] = [_nested(5000, 1)]
    request["metadata"] = {"tag": _nested(5000, "x")}
    record = CallRecord(request_raw=raw, request=request, status=200, stream=False,
                        response=response, error=None, outcome=Outcome.COMPLETED, start_ns=1,
                        end_ns=2)
    span, headers = writer.start([], 1)
    writer.finish(span, record, headers)
    attrs = dict(sink.one().attributes or {})
    assert attrs["otel_responses.request.truncated"] is True
    assert attrs["otel_responses.response.truncated"] is True
    assert attrs["llm.token_count.total"] == 10
    assert attrs["llm.output_messages.0.message.contents.0.message_content.text"] == "fine"
    assert TOO_DEEP in attrs["output.value"]
    assert json.loads(attrs["gen_ai.input.messages"])
    assert TOO_DEEP in attrs["metadata"]
    assert _leaked(attrs) == []


def test_a_tool_output_nested_past_the_stack_is_recorded_cut() -> None:
    """The same for a server tool's output on its TOOL span."""
    sink = SpanSink()
    writer = SpanWriter(sink.provider.get_tracer("t"), TelemetryOptions())
    response = json.loads(_deep_response(3))
    response["output"].append({"id": "mcp_1", "type": "mcp_call", "server_label": "s",
                               "name": "t", "arguments": "{}", "output": _nested(5000, 1),
                               "status": "completed"})
    record = CallRecord(request_raw=b"{}", request={}, status=200, stream=False,
                        response=response, error=None, outcome=Outcome.COMPLETED, start_ns=1,
                        end_ns=2, tools=tool_runs(response, {}, 1, 2, final=True))
    span, headers = writer.start([], 1)
    writer.finish(span, record, headers)
    (tool,) = [s for s in sink.wait(2) if s.name == "s.t"]
    assert TOO_DEEP in (tool.attributes or {})["output.value"]
    assert tool.status.is_ok


def test_a_request_too_deep_to_parse_keeps_its_span_and_hides_its_images(
        upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    body = _deep_request(5000)  # past what json.loads reads: recorded as text
    with traced_proxy(upstream.url + "/v1") as (base, sink):
        _call(base, body)
        attrs = dict(sink.one().attributes or {})
    assert attrs["input.mime_type"] == "text/plain"
    assert attrs["input.value"].startswith('{"model":"deep"')
    assert _leaked(attrs) == []
    monkeypatch.setenv("OPENINFERENCE_HIDE_INPUT_IMAGES", "true")
    with traced_proxy(upstream.url + "/v1") as (base, sink):
        _call(base, body.replace(IMAGE.encode(), b"https://example.com/cat.png"))
        assert dict(sink.one().attributes or {})["input.value"] == REDACTED


# ---- the walks, unit by unit ----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4)
    | st.sampled_from(["input_image", IMAGE, "https://x/y.png"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["type", "image_url", "a", "b"]), inner, max_size=4),
    max_leaves=30)


def _reference_mask(node: Any, cfg: MaskingConfig) -> Any:
    """The plain recursive walk, for shallow values: what the iterative one must equal."""
    if isinstance(node, dict):
        url = node.get("image_url")
        if node.get("type") == "input_image" and isinstance(url, str) and (
                cfg.hide_input_images or (len(url) > cfg.base64_image_max_length
                                          and url.startswith("data:image/"))):
            return {**node, "image_url": REDACTED}
        return {k: _reference_mask(v, cfg) for k, v in node.items()}
    if isinstance(node, list):
        return [_reference_mask(v, cfg) for v in node]
    return node


@given(body=json_values, hide=st.booleans())
def test_image_masking_walk_matches_the_plain_walk_and_never_mutates(body: Any,
                                                                     hide: bool) -> None:
    cfg = MaskingConfig(hide_input_images=hide)
    before = json.dumps(body)
    masked = mask_images_in_request(body, cfg)
    expected = _reference_mask(body, cfg)
    assert (expected if expected != body else None) == masked
    assert json.dumps(body) == before


def test_image_masking_walk_reaches_any_depth() -> None:
    image = {"type": "input_image", "image_url": IMAGE}
    masked = mask_images_in_request(_nested(20_000, image), MaskingConfig())
    for _ in range(20_000):
        masked = masked[0]
    assert masked == {**image, "image_url": REDACTED}


def _depth(value: Any) -> int:
    return 1 + max(map(_depth, value.values() if isinstance(value, dict) else value),
                   default=0) if isinstance(value, dict | list) else 0


@given(value=json_values, limit=st.integers(0, 5))
def test_cut_depth_bounds_nesting_and_keeps_what_is_shallow(value: Any, limit: int) -> None:
    before = json.dumps(value)
    cut, was_cut = cut_depth(value, limit)
    assert _depth(cut) <= limit
    assert was_cut == (_depth(value) > limit)
    if not was_cut:
        assert cut == value
    assert json.dumps(value) == before
