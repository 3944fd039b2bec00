"""Masked means masked: a secret in every content field of every recorded exchange never
reaches the exported OTLP bytes or the logs (and does when nothing is masked)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from otel_responses.app import create_app
from otel_responses.config import Settings
from otel_responses.telemetry.export import build_tracer_provider, shutdown_provider
from tests.otlp import ExportedSpan, otlp_http_receiver
from tests.recordings import Recording, load_recordings, need
from tests.servers import serve_asgi
from tests.upstreams import RawUpstream

SECRET = "Zq7SECRETxK2"
# Fields that carry what a user or a model wrote, in requests, responses and stream events:
# written down from the Responses API, not read from the code under test.
MESSAGE_FIELDS = {"input", "instructions", "text", "delta", "refusal", "arguments", "output",
                  "code", "logs", "content", "message", "query", "queries", "revised_prompt",
                  "variables", "encrypted_content", "result", "partial_image_b64", "outputs",
                  "results", "summary"}
# What the user wrote that is not a message: tool and schema descriptions, image and file data.
OTHER_FIELDS = {"description", "image_url", "file_data", "file_url", "schema", "url"}


def _inject(value: Any, fields: set[str], everything: bool = False) -> Any:
    """``value`` with SECRET in every string a content field holds: a string under such a
    field, every string of an object under it (a schema, prompt variables), and the strings
    of a list under it (search queries), whose objects (items, parts) are walked in turn."""
    if isinstance(value, str):
        return f"{SECRET} {value}" if everything else value
    if isinstance(value, list):
        return [_inject(v, fields, everything) for v in value]
    if isinstance(value, dict):
        if everything:
            return {k: _inject(v, fields, True) for k, v in value.items()}
        return {k: _field(v, fields) if _content(k, v, value, fields) else _inject(v, fields)
                for k, v in value.items()}
    return value


def _field(value: Any, fields: set[str]) -> Any:
    if isinstance(value, list):
        return [_inject(v, fields, isinstance(v, str)) for v in value]
    return _inject(value, fields, True)


def _content(key: str, value: Any, owner: dict[str, Any], fields: set[str]) -> bool:
    """Whether ``owner[key]`` is content. Three names are also settings: an error's "code"
    (beside its "message"), the request's ``text`` object (format, verbosity) and
    ``reasoning.summary`` ("auto"); the content ones are interpreter code, text strings and
    summary part lists."""
    if key == "code" and "message" in owner:
        return False
    if key == "text" and isinstance(value, dict):
        return False
    if key == "summary" and not isinstance(value, list):
        return False
    return key in fields


def _secret_body(rec: Recording, fields: set[str]) -> str:
    if rec.is_sse:
        out = []
        for line in rec.body.replace("\r\n", "\n").split("\n"):
            if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                line = "data: " + json.dumps(_inject(json.loads(line[5:]), fields))
            out.append(line)
        return "\n".join(out)
    try:
        return json.dumps(_inject(json.loads(rec.body), fields))
    except ValueError:  # a non-JSON error body: the upstream echoing the prompt verbatim
        return f"{SECRET} {rec.body}"


def _secret_recordings(fields: set[str]) -> list[Recording]:
    return [replace(rec, request_body=_inject(rec.request_body, fields),
                    body=_secret_body(rec, fields)) for rec in load_recordings()]


def _exported(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
              env: dict[str, str], fields: set[str]) -> tuple[bytes, str, list[ExportedSpan]]:
    """Replay every secret-laden recording through a proxy exporting to a real OTLP receiver;
    the bytes it received, the log text, and the spans."""
    recordings = _secret_recordings(fields)
    # The OTel GenAI attributes too: they carry the same messages in their own shape.
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    caplog.set_level(logging.DEBUG)
    upstream = RawUpstream(recordings={r.name: r for r in recordings}, seed=5)
    with upstream.running(), otlp_http_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        provider = build_tracer_provider()
        app = create_app(Settings(upstream=upstream.url + "/v1"), tracer_provider=provider)
        with serve_asgi(app) as base, httpx.Client(timeout=10) as client:
            for rec in recordings:
                body = json.dumps(rec.request_body) if rec.request_body is not None else "{}"
                response = client.post(base + "/v1/responses", content=body, headers={
                    "x-scenario": f"replay:{rec.name}", "content-type": "application/json"})
                assert response.status_code == rec.status
            receiver.wait_for(len(recordings))
        shutdown_provider(provider)
    return b"".join(receiver.raw), caplog.text, receiver.spans


def _where(spans: list[ExportedSpan]) -> list[tuple[str, str]]:
    """(span, attribute or status) holding SECRET: what a failure names."""
    return [(span.name, key) for span in spans
            for key, value in [*span.attributes.items(), ("status", span.status_message)]
            if SECRET in str(value)]


@pytest.fixture
def recordings() -> Iterator[None]:
    need(next(iter(load_recordings()), None))
    yield


ALL = MESSAGE_FIELDS | OTHER_FIELDS


@pytest.mark.usefixtures("recordings")
@pytest.mark.parametrize(("env", "fields"), [
    ({"OPENINFERENCE_HIDE_INPUTS": "true", "OPENINFERENCE_HIDE_OUTPUTS": "true"}, ALL),
    ({"OPENINFERENCE_HIDE_INPUT_MESSAGES": "true", "OPENINFERENCE_HIDE_OUTPUT_MESSAGES": "true"},
     MESSAGE_FIELDS),
    ({"OPENINFERENCE_HIDE_INPUT_TEXT": "true", "OPENINFERENCE_HIDE_OUTPUT_TEXT": "true"},
     MESSAGE_FIELDS),
], ids=["inputs+outputs", "messages", "text"])
def test_masked_secrets_reach_no_byte_exported_or_logged(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        env: dict[str, str], fields: set[str]) -> None:
    exported, logs, spans = _exported(monkeypatch, caplog, env, fields)
    kinds = [span.attributes["openinference.span.kind"] for span in spans]
    assert kinds.count("LLM") == len(load_recordings())
    assert "TOOL" in kinds  # the tool calls' own spans are masked alike
    assert _where(spans) == []
    assert SECRET.encode() not in exported
    assert SECRET not in logs


@pytest.mark.usefixtures("recordings")
def test_unmasked_the_secrets_are_recorded(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """The check above can fail: without masking the same traffic puts SECRET in the span
    attributes and the status of error responses."""
    exported, _, _ = _exported(monkeypatch, caplog, {}, ALL)
    assert exported.count(SECRET.encode()) > 100
