"""Compressed bodies through the proxy: the span and metrics equal the plain replay's."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_responses.protocol.encoding import SCOPE_KEY, DecodedBody, codings, decoder
from otel_responses.telemetry.recorder import CallRecorder
from tests.recordings import Recording, final_response, load_recordings, need, recordings_params
from tests.spans import SpanSink, traced_proxy
from tests.test_metrics import _reported_usage, by_label, scrape
from tests.upstreams import _CODINGS, RawUpstream, _Coder, gzip_bomb

CODINGS = ["gzip", "deflate", "raw-deflate", "br", "zstd", "gzip, br"]
_VARYING = ("session.id",)  # the response id is the session when none is given: same anyway


@pytest.fixture(scope="module")
def proxy() -> Iterator[tuple[str, SpanSink, RawUpstream]]:
    raw = RawUpstream(recordings={r.name: r for r in load_recordings()}, seed=13)
    with raw.running(), traced_proxy(raw.url + "/v1") as (base, sink):
        yield base, sink, raw


def _call(client: openai.OpenAI, rec: Recording, compress: str) -> Any:
    """Through the real openai SDK, the response left unread: its raw bytes are the client's."""
    # The SDK's HTTP client accepts gzip, deflate and br; zstd is what Codex CLI also takes.
    headers = {"x-scenario": f"replay:{rec.name}", "x-compress": compress,
               "accept-encoding": "gzip, deflate, br, zstd"}
    try:
        return client.post("/responses", cast_to=httpx.Response, body=rec.request_body,
                           options={"headers": headers}, stream=True)
    except openai.APIStatusError as exc:  # read by the SDK already
        return exc.response


def _attributes(sink: SpanSink) -> dict[str, Any]:
    span = sink.one()
    sink.clear()
    return {k: v for k, v in (span.attributes or {}).items() if k not in _VARYING}


def _tokens(base: str) -> dict[str, float]:
    return by_label(scrape(base), "gen_ai_client_token_usage_sum", "gen_ai_token_type")


@pytest.mark.parametrize("rec", recordings_params())
def test_a_compressed_replay_records_what_the_plain_one_does(
        rec: Recording | None, proxy: tuple[str, SpanSink, RawUpstream]) -> None:
    rec = need(rec)
    base, sink, upstream = proxy
    sink.clear()
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    plain_response = _call(client, rec, "")
    plain_response.read()
    plain_response.close()
    plain = _attributes(sink)
    usage = _reported_usage((final_response(rec) or {}).get("usage") or {})
    for coding in CODINGS:
        before = _tokens(base)
        resp = _call(client, rec, coding)
        assert resp.status_code == rec.status
        if resp.is_closed:
            # Read (and decoded, if its client knows the coding) by the SDK on an error status.
            assert resp.content in (rec.body_bytes, upstream.sent[-1])
        else:
            assert b"".join(resp.iter_raw()) == upstream.sent[-1]
            resp.close()
        assert resp.headers["content-encoding"] == coding.replace("raw-", "")
        assert _attributes(sink) == plain, coding
        after = _tokens(base)
        assert {k: after.get(k, 0) - before.get(k, 0) for k in {*after, *usage}} == \
            {k: usage.get(k, 0) for k in {*after, *usage}}, coding


@pytest.mark.parametrize("kind", ["corrupt", "compress"])
def test_an_unreadable_body_is_flagged_and_relayed_untouched(
        kind: str, proxy: tuple[str, SpanSink, RawUpstream]) -> None:
    recs = [r for r in load_recordings() if r.name == "openllmetry__simple_text_gpt41nano"]
    rec = need(recs[0] if recs else None)
    base, sink, upstream = proxy
    sink.clear()
    with httpx.Client(timeout=10) as client, client.stream(
            "POST", base + "/v1/responses", content=json.dumps(rec.request_body),
            headers={"x-scenario": f"replay:{rec.name}", "x-compress": kind}) as resp:
        assert b"".join(resp.iter_raw()) == upstream.sent[-1]
    attrs = sink.one().attributes or {}
    assert attrs["otel_responses.response.unreadable"].startswith(
        "gzip:" if kind == "corrupt" else "unsupported content-encoding")
    assert "output.value" not in attrs
    assert httpx.get(base + "/healthz").status_code == 200


def test_a_gzip_bomb_is_relayed_whole_and_recorded_truncated(
        proxy: tuple[str, SpanSink, RawUpstream]) -> None:
    base, sink, _ = proxy
    sink.clear()
    with httpx.Client(timeout=60) as client, client.stream(
            "POST", base + "/v1/responses", content=b'{"model":"m","input":"x"}',
            headers={"x-scenario": "gzip-bomb"}) as resp:
        assert b"".join(resp.iter_raw()) == gzip_bomb()
    attrs = sink.wait(1, timeout=30)[0].attributes or {}
    assert attrs["otel_responses.response.truncated"] is True
    assert "otel_responses.response.unreadable" not in attrs


@pytest.mark.parametrize("names", [["gzip"], ["br"], ["zstd"], ["gzip", "zstd"]])
def test_a_growing_limit_decodes_text_to_its_end_and_stops_a_bomb(names: list[str]) -> None:
    """``per_input_byte``: the limit grows with the coded bytes fed, so a body that compresses
    like text decodes whole past the limit while a run of zeros (a bomb) stops near it."""
    text = random.Random(1).randbytes(300_000).hex().encode()  # 600 kB, ~2:1
    header = _coded_as(names)
    coded = _compress(text, names)
    limit = 200_000  # above a zstd block (128 KiB), which decodes at once
    grown, fixed = decoder(header, limit, 200), decoder(header, limit)
    assert grown is not None and fixed is not None
    pieces = [coded[i:i + 4096] for i in range(0, len(coded), 4096)]
    assert b"".join(grown.feed(p) for p in pieces) == text and not grown.truncated
    assert len(b"".join(fixed.feed(p) for p in pieces)) == limit and fixed.truncated
    bomb = _compress(bytes(50_000_000), names)
    stopped = decoder(header, limit, 200)
    assert stopped is not None
    got = b"".join(stopped.feed(bomb[i:i + 4096]) for i in range(0, len(bomb), 4096))
    # It stops within the first pieces: what two 4 KiB pieces let the limit grow by.
    assert stopped.truncated and len(got) <= limit + 2 * 200 * 4096


def _coded_as(names: list[str]) -> list[tuple[bytes, bytes]]:
    """The Content-Encoding header of a body coded with ``names`` (in the order applied)."""
    return [(b"content-encoding", ", ".join(_CODINGS[n][0] for n in names).encode())]


def _compress(data: bytes, names: list[str]) -> bytes:
    coder = _Coder(names)
    return coder.piece(data) + coder.end()


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4000) | st.text(max_size=3000).map(str.encode),
       names=st.lists(st.sampled_from(["gzip", "deflate", "raw-deflate", "br", "zstd"]),
                      min_size=1, max_size=3),
       cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
       limit=st.integers(min_value=1, max_value=6000))
def test_any_chunking_decodes_to_the_one_shot_result(data: bytes, names: list[str],
                                                     cuts: list[int], limit: int) -> None:
    body = _compress(data, names)
    header = _coded_as(names)
    edges = [0, *sorted(c % (len(body) + 1) for c in cuts), len(body)]
    chunked = decoder(header, limit)
    one_shot = decoder(header, limit)
    assert chunked is not None and one_shot is not None
    got = b"".join(chunked.feed(body[a:b]) for a, b in itertools.pairwise(edges))
    assert got == one_shot.feed(body) == data[:limit]
    assert chunked.truncated == one_shot.truncated == (len(data) > limit)
    assert chunked.unreadable is None


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=20),
       names=st.sampled_from([["gzip"], ["br"], ["zstd"], ["deflate", "br"]]))
def test_a_compressed_stream_at_any_chunking_records_as_the_plain_one(
        cuts: list[int], names: list[str]) -> None:
    recs = [r for r in load_recordings() if r.name == "dd-trace-py__stream_text"]
    rec = need(recs[0] if recs else None)
    body = _compress(rec.body_bytes, names)
    edges = [0, *sorted(c % (len(body) + 1) for c in cuts), len(body)]
    records = []
    for encoded, chunks in ((False, [rec.body_bytes]),
                            (True, [body[a:b] for a, b in itertools.pairwise(edges)])):
        call = CallRecorder(0)
        headers = [(b"content-type", b"text/event-stream")]
        call.response_start(200, headers + (_coded_as(names) if encoded else []))
        for chunk in chunks:
            call.response_chunk(chunk, True)
        call.response_chunk(b"", False)
        records.append(call.finish())
    plain, compressed = records
    assert compressed.response == plain.response is not None
    assert (compressed.outcome, compressed.events, compressed.first_token_ns is not None) == \
        (plain.outcome, plain.events, True)


def test_a_compressed_request_body_is_recorded_as_sent(
        proxy: tuple[str, SpanSink, RawUpstream]) -> None:
    """Codex CLI can zstd its request; the upstream gets it untouched, the span reads it."""
    base, sink, upstream = proxy
    sink.clear()
    body = json.dumps({"model": "m", "instructions": "be brief", "input": "zipped hi"}).encode()
    for coding in ("zstd", "gzip", "br"):
        packed = _compress(body, [coding])
        response = httpx.post(base + "/v1/responses", content=packed, timeout=10, headers={
            "content-type": "application/json", "content-encoding": coding})
        assert response.status_code == 200
        assert upstream.seen[-1].body == packed  # forwarded as received
        attrs = _attributes(sink)
        assert json.loads(attrs["input.value"]) == json.loads(body), coding
        assert attrs["llm.input_messages.1.message.content"] == "zipped hi"


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_a_compressed_stream_marks_its_first_token_at_the_first_delta(
        coding: str, proxy: tuple[str, SpanSink, RawUpstream]) -> None:
    rec = need(next((r for r in load_recordings() if r.name == "dd-trace-py__stream_text"), None))
    base, sink, _ = proxy
    sink.clear()
    with openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0) as client:
        _call(client, rec, coding).read()
    span = sink.one()
    events = [e.name for e in span.events]
    assert events[0] == "First Token Stream Event" and events[-1] == "response.completed"
    first, last = span.events[0].timestamp, span.events[-1].timestamp
    assert span.start_time < first < last


def test_the_codings_are_every_content_encoding_header_in_any_case() -> None:
    headers = [(b"Content-Encoding", b"gzip"), (b"content-type", b"br"),
               (b"content-encoding", b" Identity, ZSTD ")]
    assert codings(headers) == ["gzip", "zstd"]
    assert decoder([(b"content-type", b"application/json")], 1) is None
    assert decoder([(b"content-encoding", b"identity")], 1) is None


def test_a_body_is_decoded_again_only_when_the_result_could_differ() -> None:
    """`DecodedBody` is shared by layers with different limits: a whole result serves any limit
    it fits in; a cut one serves only its own limit; other bytes are other bodies."""
    gzipped = _coded_as(["gzip"])
    text = b"x" * 1000
    body = _compress(text, ["gzip"])
    shared = DecodedBody()
    whole = shared.decode(gzipped, body, 4000)
    assert whole is not None and whole.whole and whole.body == text
    assert shared.decode(gzipped, bytes(body), 4000) is whole  # equal bytes, joined elsewhere
    assert shared.decode(gzipped, body, 1000) is whole
    cut = shared.decode(gzipped, body, 999)
    assert cut is not None and cut.truncated and cut.body == text[:999]
    assert shared.decode(gzipped, body, 999) is cut
    again = shared.decode(gzipped, body, 4000)
    assert again is not None and again is not cut and again.body == text
    other = shared.decode(gzipped, _compress(b"y", ["gzip"]), 4000)
    assert other is not None and other.body == b"y"
    assert shared.decode([(b"content-type", b"text/plain")], body, 4000) is None
    assert DecodedBody.shared({SCOPE_KEY: shared}) is shared
    assert DecodedBody.shared({}) is not shared


@pytest.mark.parametrize(("module", "coding"), [("brotli", "br"), ("zstandard", "zstd")])
def test_a_missing_library_says_so_and_decodes_nothing(monkeypatch: pytest.MonkeyPatch,
                                                       module: str, coding: str) -> None:
    from otel_responses.protocol import encoding

    monkeypatch.setattr(encoding, module, None)  # as when the package is not installed
    dec = decoder([(b"content-encoding", coding.encode())], 1 << 20)
    assert dec is not None
    assert dec.feed(_compress(b'{"a": 1}', [coding])) == b""
    assert dec.unreadable is not None and "not installed" in dec.unreadable
    plain = decoder(_coded_as(["gzip"]), 1 << 20)  # the others are unaffected
    assert plain is not None and plain.feed(_compress(b"ok", ["gzip"])) == b"ok"
