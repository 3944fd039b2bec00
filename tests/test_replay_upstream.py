"""The replaying upstream serving the recorded Chat Completions exchanges on their recorded paths:
byte for byte to a plain HTTP client, and parsed by the openai SDK as the real hosts' were."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.recordings import CHAT_DIR, Recording, need, recordings_params, sse_payloads
from tests.upstreams import RawUpstream

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


@pytest.mark.parametrize("rec", recordings_params(folder=CHAT_DIR))
def test_each_recording_is_served_verbatim_on_its_path(rec: Recording | None) -> None:
    rec = need(rec, CHAT_DIR)
    with RawUpstream.replaying(rec, seed=5).running() as upstream:
        response = httpx.post(upstream.url + rec.request_path, timeout=10,
                              content=json.dumps(rec.request_body).encode(),
                              headers={"content-type": "application/json"})
        missed = httpx.post(upstream.url + "/v1/elsewhere", content=b"{}", timeout=10)
    assert response.status_code == rec.status
    assert response.content == rec.body_bytes
    for name, value in rec.headers.items():
        if name.lower() not in _HOP:
            assert response.headers[name] == value
    framing = "transfer-encoding" if rec.is_sse else "content-length"
    assert response.headers[framing] == ("chunked" if rec.is_sse else str(len(rec.body_bytes)))
    assert missed.status_code == 404 and missed.json()["error"]["type"]
    seen, elsewhere = upstream.seen
    assert seen.target == rec.request_path and json.loads(seen.body) == rec.request_body
    assert elsewhere.target == "/v1/elsewhere"


def _sdk_call(client: openai.OpenAI, body: dict[str, Any]) -> list[Any]:
    """The recorded request through the SDK's typed create(); what it parsed, as dicts."""
    known = {"model", "messages", "stream"}
    result = client.chat.completions.create(
        model=body["model"], messages=body["messages"], stream=body.get("stream", False),
        extra_body={k: v for k, v in body.items() if k not in known})
    return [c.to_dict() for c in result] if body.get("stream") else [result.to_dict()]


def _in_band_error(rec: Recording) -> bool:
    return rec.status == 200 and '"error"' in rec.body


@pytest.mark.parametrize("rec", recordings_params(lambda r: not _in_band_error(r),
                                                  folder=CHAT_DIR))
def test_the_openai_sdk_reads_each_replay_as_recorded(rec: Recording | None) -> None:
    rec = need(rec, CHAT_DIR)
    prefix = rec.request_path.removesuffix("/chat/completions")
    with RawUpstream.replaying(rec, seed=9).running() as upstream, openai.OpenAI(
            base_url=upstream.url + prefix, api_key="sk-test", max_retries=0) as client:
        if rec.status >= 400:
            with pytest.raises(openai.APIStatusError) as caught:
                _sdk_call(client, rec.request_body)
            assert caught.value.status_code == rec.status
            return
        parsed = _sdk_call(client, rec.request_body)
    expected = sse_payloads(rec.body) if rec.is_sse else [json.loads(rec.body)]
    assert [p["id"] for p in parsed] == [p["id"] for p in expected]
    assert [p.get("choices") for p in parsed] == [p.get("choices") for p in expected]

