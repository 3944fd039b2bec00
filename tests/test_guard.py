"""The guard over real sockets: the openai SDK against a proxy with a keys file, the demo and
raw upstreams behind it, limits in memory and in a real redis-server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from otel_responses import watched_file
from otel_responses.config import SettingError, Settings
from otel_responses.guard import keys as guard_keys
from otel_responses.guard import middleware as guard_middleware
from otel_responses.protocol import encoding
from tests.guard import Clock, client, guarded, metric, wait_metric, write_keys
from tests.redisd import RedisServer, redis_server
from tests.servers import run_cli
from tests.upstreams import RawUpstream

ALICE, BOB = "sk-alice-0123456789abcdef", "sk-bob-fedcba9876543210"


def keys(*entries: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"keys": list(entries), **top}


def alice(**fields: Any) -> dict[str, Any]:
    return {"name": "alice", "key": ALICE, "user_id": "u-alice", "team": "research", **fields}


# -- 401, 403, 429 as the openai SDK sees them ---------------------------------------------

def test_missing_or_unknown_key_is_401_authentication_error(demo: str, tmp_path: Path) -> None:
    with guarded(demo, write_keys(tmp_path / "keys.yaml", keys(alice()))) as (base, sink):
        missing = httpx.post(base + "/v1/responses", json={"model": "demo", "input": "hi"})
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        for key in (BOB, ALICE + "x"):
            with pytest.raises(openai.AuthenticationError) as caught:
                client(base, key).responses.create(model="demo", input="hi")
            error = caught.value
            assert error.status_code == 401 and error.code == "invalid_api_key"
            assert error.response.headers["content-type"] == "application/json"
        # The key may also come as api-key (Azure style); health checks need none.
        answer = httpx.post(base + "/v1/responses", headers={"api-key": ALICE},
                            json={"model": "demo", "input": "hi"})
        assert answer.status_code == 200, answer.text
        assert httpx.get(base + "/healthz").status_code == 200
        assert httpx.get(base + "/readyz").status_code == 200
        assert metric(base, "otel_responses_rejections_total",
                      'reason="invalid_api_key"') == 3
        assert len(sink.wait(1)) == 1  # refused calls make no span


def test_model_outside_the_allow_list_is_403_permission_denied(demo: str,
                                                               tmp_path: Path) -> None:
    entry = alice(models=["demo", "gpt-4o-*"])
    with guarded(demo, write_keys(tmp_path / "keys.yaml", keys(entry))) as (base, _):
        sdk = client(base, ALICE)
        with pytest.raises(openai.PermissionDeniedError) as caught:
            sdk.responses.create(model="gpt-4o", input="hi")
        assert caught.value.status_code == 403
        assert caught.value.param == "model" and caught.value.code == "model_not_allowed"
        assert sdk.responses.create(model="demo", input="hi").output_text
        assert metric(base, "otel_responses_rejections_total",
                      'reason="model_not_allowed"') == 1


def test_over_the_request_limit_is_429_rate_limit_error_with_headers(demo: str,
                                                                      tmp_path: Path) -> None:
    entry = alice(limits={"requests_per_minute": 2, "tokens_per_minute": 10_000})
    with guarded(demo, write_keys(tmp_path / "keys.yaml", keys(entry))) as (base, _):
        sdk = client(base, ALICE)
        for _ in range(2):
            sdk.responses.create(model="demo", input="hi")
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.responses.create(model="demo", input="hi")
        error = caught.value
        headers = error.response.headers
        assert error.status_code == 429 and error.code == "rate_limit_exceeded"
        assert 1 <= int(headers["retry-after"]) <= 61
        assert headers["x-ratelimit-limit-requests"] == "2"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        assert headers["x-ratelimit-limit-tokens"] == "10000"
        assert int(headers["x-ratelimit-remaining-tokens"]) < 10_000
        assert metric(base, "otel_responses_rejections_total",
                      'reason="requests_per_minute"') == 1


# -- keys never leak; identity reaches spans, logs and the upstream key ---------------------

def test_key_never_forwarded_and_upstream_key_substituted(upstream: RawUpstream,
                                                          tmp_path: Path) -> None:
    entries = keys(alice(upstream_api_key="sk-upstream-of-alice"),
                   {"name": "bob", "key": BOB})
    with guarded(upstream.url + "/v1", write_keys(tmp_path / "keys.yaml", entries),
                 upstream_api_key="sk-proxy-wide") as (base, _):
        seen = {}
        for name, headers in (("alice", {"authorization": f"Bearer {ALICE}"}),
                              ("bob", {"api-key": BOB})):
            answer = httpx.post(base + "/v1/embeddings", headers={**headers,
                                "x-scenario": "echo"}, json={"model": "x", "input": "y"})
            echo = answer.json()
            seen[name] = {k.lower(): v for k, v in echo["headers"]}
            assert base64.b64decode(echo["body_b64"]) == b'{"model":"x","input":"y"}'
        assert seen["alice"]["authorization"] == "Bearer sk-upstream-of-alice"
        assert seen["bob"]["api-key"] == "sk-proxy-wide"  # the client's header style is kept
        assert "authorization" not in seen["bob"]


def test_adapter_mode_sends_the_keys_upstream_key_not_the_inbound_one(
        upstream: RawUpstream, tmp_path: Path) -> None:
    """The adapter builds its own chat request: the same key policy applies to it."""
    entries = keys(alice(upstream_api_key="sk-upstream-of-alice"), {"name": "bob", "key": BOB})
    with guarded(upstream.url + "/v1", write_keys(tmp_path / "keys.yaml", entries),
                 upstream_api="chat") as (base, _):
        for key in (ALICE, BOB):
            with contextlib.suppress(openai.APIError):  # the echo is no chat completion
                client(base, key).responses.create(
                    model="m", input="hi", extra_headers={"x-scenario": "echo"})
        alice_sent, bob_sent = upstream.seen[-2:]
        assert alice_sent.target.endswith("/chat/completions")
        assert alice_sent.header("authorization") == "Bearer sk-upstream-of-alice"
        assert bob_sent.header("authorization") is None and bob_sent.header("api-key") is None
        assert not any(k in str(sent.headers) for k in (ALICE, BOB)
                       for sent in (alice_sent, bob_sent))


def test_a_stored_response_belongs_to_the_key_that_made_it(demo: str, tmp_path: Path) -> None:
    """Adapter mode with keys: another key can neither read, continue nor delete it."""
    entries = keys(alice(), {"name": "bob", "key": BOB})
    with guarded(demo, write_keys(tmp_path / "keys.yaml", entries), upstream_api="chat",
                 store="memory") as (base, _):
        mine, theirs = client(base, ALICE), client(base, BOB)
        first = mine.responses.create(model="demo", input="My name is Alice.")
        assert mine.responses.retrieve(first.id).id == first.id
        assert mine.responses.create(model="demo", input="Who am I?",
                                     previous_response_id=first.id).output_text
        with pytest.raises(openai.NotFoundError):
            theirs.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            theirs.responses.delete(first.id)
        with pytest.raises(openai.BadRequestError) as caught:
            theirs.responses.create(model="demo", input="Who is she?",
                                    previous_response_id=first.id)
        assert caught.value.code == "previous_response_not_found"
        assert mine.responses.retrieve(first.id).id == first.id  # still there for its owner


def test_without_any_upstream_key_no_credential_goes_upstream(upstream: RawUpstream,
                                                             tmp_path: Path) -> None:
    with guarded(upstream.url + "/v1", write_keys(tmp_path / "keys.yaml", keys(alice()))) \
            as (base, _):
        echo = httpx.post(base + "/v1/responses", headers={
            "authorization": f"Bearer {ALICE}", "x-scenario": "echo"}, json={}).json()
        assert not {k.lower() for k, _ in echo["headers"]} & {"authorization", "api-key"}


def test_identity_on_spans_and_access_log_and_keys_nowhere(
        demo: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    entry = alice(models=["demo"], limits={"requests_per_minute": 1})
    with guarded(demo, write_keys(tmp_path / "keys.yaml", keys(entry)),
                 metrics_key_label=True) as (base, sink):
        sdk = client(base, ALICE)
        sdk.responses.create(model="demo", input="hi", user="claimed-by-client")
        for call in (lambda: sdk.responses.create(model="gpt-4o", input="hi"),
                     lambda: sdk.responses.create(model="demo", input="hi"),
                     lambda: client(base, BOB).responses.create(model="demo", input="hi")):
            with pytest.raises(openai.APIStatusError) as caught:
                call()
            assert ALICE not in caught.value.response.text
            assert BOB not in caught.value.response.text
        span = sink.one()
        attributes = dict(span.attributes or {})
        assert attributes["user.id"] == "u-alice"
        assert attributes["otel_responses.api_key.name"] == "alice"
        assert attributes["otel_responses.api_key.team"] == "research"
        metrics_text = httpx.get(base + "/metrics").text
        assert 'otel_responses_rejections_total{key="alice",reason="model_not_allowed"} 1.0' \
            in metrics_text
    access = [r for r in caplog.records if r.name == "otel_responses.access"]
    fields = [r.access for r in access]  # type: ignore[attr-defined]
    assert {(f["status"], f.get("key"), f.get("team")) for f in fields} >= {
        (200, "alice", "research"), (403, "alice", "research"), (429, "alice", "research"),
        (401, None, None)}
    everything = caplog.text + json.dumps(attributes) + metrics_text + json.dumps(fields)
    assert ALICE not in everything and BOB not in everything
    assert "sk-alice" not in everything and "sk-bob" not in everything


# -- exact under concurrency ---------------------------------------------------------------

async def _burst(urls: list[str], key: str, count: int) -> list[int]:
    """``count`` requests at once, spread over ``urls``; their statuses."""
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        answers = await asyncio.gather(*(
            http.post(urls[i % len(urls)] + "/v1/responses",
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "demo", "input": "hi"}) for i in range(count)))
    return [a.status_code for a in answers]


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_hundred_concurrent_requests_against_ten_pass_exactly_ten(
        demo: str, tmp_path: Path, store: str, request: pytest.FixtureRequest) -> None:
    url = "memory" if store == "memory" else request.getfixturevalue("redis").url
    entry = alice(limits={"requests_per_minute": 10}, name=f"burst-{store}")
    with guarded(demo, write_keys(tmp_path / "keys.yaml", keys(entry)),
                 rate_limit_store=url) as (base, _):
        statuses = asyncio.run(_burst([base], ALICE, 100))
        assert sorted(statuses) == [200] * 10 + [429] * 90


def test_two_processes_sharing_redis_pass_exactly_ten(redis: RedisServer,
                                                      tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys.yaml", keys(alice(
        name="two-process", limits={"requests_per_minute": 10, "max_concurrent": 100})))
    env = {"OTEL_RESPONSES_API_KEYS_FILE": str(path),
           "OTEL_RESPONSES_RATE_LIMIT_STORE": redis.url}
    with run_cli(env=env) as (one, _), run_cli(env=env) as (two, _):
        statuses = asyncio.run(_burst([one, two], ALICE, 100))
        assert sorted(statuses) == [200] * 10 + [429] * 90
        refused = sum(metric(b, "otel_responses_rejections_total",
                             'reason="requests_per_minute"') for b in (one, two))
        assert refused == 90


def test_max_concurrent_holds_a_slot_per_open_stream(upstream: RawUpstream,
                                                     tmp_path: Path) -> None:
    entry = alice(limits={"max_concurrent": 1})
    with guarded(upstream.url + "/v1", write_keys(tmp_path / "keys.yaml", keys(entry))) \
            as (base, _), httpx.Client(timeout=10) as http:
        auth = {"authorization": f"Bearer {ALICE}"}
        upstream.release.clear()
        with http.stream("POST", base + "/v1/responses", json={"model": "demo"},
                         headers={**auth, "x-scenario": "held"}) as held:
            assert held.status_code == 200
            second = http.post(base + "/v1/responses", headers={**auth, "x-scenario": "echo"},
                               json={"model": "demo"})
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "rate_limit_exceeded"
            upstream.release.set()
            held.read()
        assert metric(base, "otel_responses_rejections_total", 'reason="max_concurrent"') == 1
        again = http.post(base + "/v1/responses", headers={**auth, "x-scenario": "echo"},
                          json={"model": "demo"})
        assert again.status_code == 200


# -- tokens: charged after the call, windows that pass -------------------------------------

@pytest.mark.parametrize("api", ["responses", "chat"])  # chat: the adapter's synthesized usage
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_stream_tokens_charged_stop_the_next_call_and_recover(
        demo: str, tmp_path: Path, store: str, api: str, request: pytest.FixtureRequest) -> None:
    url = "memory" if store == "memory" else request.getfixturevalue("redis").url
    clock = Clock()
    entry = alice(name=f"tokens-{store}-{api}", limits={"tokens_per_minute": 40})
    with guarded(demo, write_keys(tmp_path / "keys.yaml", keys(entry)), clock,
                 rate_limit_store=url, upstream_api=api, store="memory") as (base, _):
        sdk = client(base, ALICE)
        with sdk.responses.stream(model="demo", input="count these words for me") as stream:
            used = stream.get_final_response().usage
        assert used is not None and used.total_tokens < 40
        charged = wait_metric(base, "otel_responses_limit_tokens_charged_total", 1)
        assert charged == used.total_tokens  # the stream's reported usage, exactly
        with sdk.responses.stream(model="demo", input="and once more, a longer one") as stream:
            second = stream.get_final_response().usage
        assert second is not None
        wait_metric(base, "otel_responses_limit_tokens_charged_total",
                    charged + second.total_tokens)
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.responses.create(model="demo", input="hi")
        headers = caught.value.response.headers
        assert headers["x-ratelimit-remaining-tokens"] == "0"
        assert 0 < int(headers["retry-after"]) <= 61
        clock.advance(61.5)  # past the window and its last bucket
        assert sdk.responses.create(model="demo", input="hi").output_text


def test_cut_stream_charges_an_estimate(upstream: RawUpstream, tmp_path: Path) -> None:
    entry = alice(limits={"tokens_per_day": 1_000_000})
    with guarded(upstream.url + "/v1", write_keys(tmp_path / "keys.yaml", keys(entry))) \
            as (base, _), httpx.Client(timeout=10) as http:
        body = {"model": "demo", "input": "x" * 400, "stream": True}
        with pytest.raises(httpx.RemoteProtocolError), http.stream(
                "POST", base + "/v1/responses", json=body, headers={
                    "authorization": f"Bearer {ALICE}", "x-scenario": "cut"}) as cut:
            cut.read()
        sent = len(json.dumps(body, separators=(",", ":")))
        charged = wait_metric(base, "otel_responses_limit_tokens_charged_total", 1)
        assert charged >= sent / 4  # the request's bytes at least, a token per 4


# -- hot reload -----------------------------------------------------------------------------

def _status(base: str, key: str, model: str = "demo") -> int:
    return httpx.post(base + "/v1/responses", headers={"authorization": f"Bearer {key}"},
                      json={"model": model, "input": "hi"}, timeout=10).status_code


def _until(base: str, key: str, status: int, model: str = "demo") -> None:
    """Poll until the reloaded file shows (it is checked once a second)."""
    deadline = time.monotonic() + 10
    while _status(base, key, model) != status:
        assert time.monotonic() < deadline, f"never answered {status}"


def test_hot_reload_adds_removes_changes_and_survives_a_broken_file(
        demo: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_keys(tmp_path / "keys.yaml", keys(alice()))
    with guarded(demo, path) as (base, _):
        assert _status(base, ALICE) == 200 and _status(base, BOB) == 401
        write_keys(path, keys(alice(), {"name": "bob", "key": BOB}))
        _until(base, BOB, 200)
        write_keys(path, keys({"name": "bob", "key": BOB, "models": ["other"]}))
        _until(base, ALICE, 401)
        assert _status(base, BOB) == 403  # its allow-list changed with it
        path.write_text("keys: [ {name: bob, key: ")  # broken: the last good file stays
        caplog.set_level(logging.ERROR, "otel_responses.guard")
        deadline = time.monotonic() + 10
        while not any("not reloaded" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the broken file was never reported"
            assert _status(base, BOB) == 403 and _status(base, ALICE) == 401
        # Reported and refused: the last good file still decides.
        assert _status(base, BOB) == 403 and _status(base, ALICE) == 401
        assert BOB not in caplog.text
        write_keys(path, keys({"name": "bob", "key": BOB, "limits": {
            "requests_per_minute": 1}}))
        _until(base, BOB, 429)


def test_requests_never_read_the_keys_file_the_watcher_does_it_off_the_loop(
        demo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stat and parse of the keys file, counted with where it ran: never on the event
    loop, which serves the requests."""
    looks: list[tuple[str, bool]] = []  # (stat or load, on an event loop)

    def counted(name: str, do: Any) -> Any:
        def look(*args: Any) -> Any:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                looks.append((name, False))
            else:
                looks.append((name, True))
            return do(*args)
        return look
    monkeypatch.setattr(watched_file, "signature", counted("stat", watched_file.signature))
    monkeypatch.setattr(guard_keys, "load", counted("load", guard_keys.load))
    monkeypatch.setattr(watched_file, "RELOAD_INTERVAL", 0.01)
    path = write_keys(tmp_path / "keys.yaml", keys(alice()))
    with guarded(demo, path) as (base, _):
        assert [_status(base, ALICE) for _ in range(5)] == [200] * 5
        write_keys(path, keys(alice(), {"name": "bob", "key": BOB}))
        _until(base, BOB, 200)
    assert ("load", False) in looks[2:] and ("stat", False) in looks[2:]  # after startup's
    assert ("stat", True) not in looks and ("load", True) not in looks


def test_a_keys_limits_are_worked_out_once_until_the_file_changes(
        demo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planned: list[str] = []
    plan_of = guard_middleware._plan_of

    def counted(*args: Any) -> Any:
        planned.append(args[1].caller.name)
        return plan_of(*args)
    monkeypatch.setattr(guard_middleware, "_plan_of", counted)
    path = write_keys(tmp_path / "keys.yaml", keys(alice(limits={"tokens_per_minute": 10**6})))
    with guarded(demo, path) as (base, _):
        assert [_status(base, ALICE) for _ in range(3)] == [200] * 3
        assert planned == ["alice"]
        write_keys(path, keys(alice(limits={"requests_per_minute": 1})))
        _until(base, ALICE, 429)  # the new limits, worked out once for all these requests
        assert planned == ["alice", "alice"]


# -- the store goes away ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_down_fails_open_or_closed_then_recovers(demo: str, tmp_path: Path,
                                                       mode: str) -> None:
    entry = alice(name=f"outage-{mode}", limits={"requests_per_minute": 2})
    with redis_server() as server, guarded(
            demo, write_keys(tmp_path / "keys.yaml", keys(entry)),
            rate_limit_store=server.url, rate_limit_fail=mode) as (base, _):
        assert _status(base, ALICE) == 200
        server.stop()
        statuses = {_status(base, ALICE) for _ in range(4)}
        assert statuses == ({200} if mode == "open" else {503})
        assert metric(base, "otel_responses_limit_store_errors_total",
                      'operation="admit"') == 4
        if mode == "closed":
            assert metric(base, "otel_responses_rejections_total",
                          'reason="limit_store_unavailable"') == 4
        server.start()  # a fresh, empty server: the limit counts from zero again
        assert [_status(base, ALICE) for _ in range(3)] == [200, 200, 429]


def test_redis_lost_before_settling_is_counted_logged_once_and_charges_nothing(
        upstream: RawUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The store answers the admission, then dies before the call ends: the settlement fails
    as an admission would (counted, logged once), and no charge is reported."""
    entry = alice(name="settle-lost", limits={"tokens_per_day": 1_000_000})
    auth = {"authorization": f"Bearer {ALICE}"}
    caplog.set_level(logging.WARNING, "otel_responses.guard")
    with redis_server() as server, guarded(
            upstream.url + "/v1", write_keys(tmp_path / "keys.yaml", keys(entry)),
            rate_limit_store=server.url) as (base, _), httpx.Client(timeout=10) as http:
        upstream.release.clear()
        with http.stream("POST", base + "/v1/responses", json={"model": "demo"},
                         headers={**auth, "x-scenario": "held"}) as held:
            assert held.status_code == 200  # admitted
            server.stop()
            upstream.release.set()
            held.read()
        wait_metric(base, "otel_responses_limit_store_errors_total", 1, 'operation="settle"')
        # Open: admitted without the store, and that call's settlement fails too.
        assert http.post(base + "/v1/responses", headers={**auth, "x-scenario": "echo"},
                         json={"model": "demo"}).status_code == 200
        wait_metric(base, "otel_responses_limit_store_errors_total", 2, 'operation="settle"')
        assert metric(base, "otel_responses_limit_store_errors_total",
                      'operation="admit"') == 1
        assert metric(base, "otel_responses_limit_tokens_charged_total") == 0
    failures = [r.getMessage() for r in caplog.records if "store failed" in r.getMessage()]
    assert len(failures) == 1 and "failed on settle" in failures[0], failures


def test_a_broken_keys_file_stops_the_start_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - name: alice\n    key: {ALICE}\n    limits: {{rpm: 5}}\n")
    done = subprocess.run([sys.executable, "-m", "otel_responses", "--api-keys", str(path),
                           "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "keys[0].limits has unknown fields: rpm" in done.stderr
    assert ALICE not in done.stderr + done.stdout


def test_store_and_fail_settings_are_checked() -> None:
    for field, value in (("rate_limit_store", "mysql://x"), ("rate_limit_fail", "maybe")):
        with pytest.raises(SettingError, match=field):
            Settings(upstream="http://127.0.0.1:9/v1", **{field: value})
    assert Settings(rate_limit_store="rediss://:pw@host:6380/1").rate_limit_store
    assert "pw" not in repr(Settings(rate_limit_store="redis://:pw@host/0"))


def test_model_limits_count_per_key_and_glob(demo: str, tmp_path: Path) -> None:
    document = keys(alice(), {"name": "bob", "key": BOB},
                    model_limits={"demo*": {"requests_per_minute": 1}})
    with guarded(demo, write_keys(tmp_path / "keys.yaml", document)) as (base, _):
        assert _status(base, ALICE, "demo") == 200
        assert _status(base, ALICE, "demo-large") == 429  # the same glob's counter
        assert _status(base, ALICE, "other") == 200  # no glob matches: the key's own limits
        assert _status(base, BOB, "demo") == 200  # each key has its own count


def test_model_of_a_compressed_body_is_checked(upstream: RawUpstream, tmp_path: Path) -> None:
    entry = alice(models=["demo"])
    with guarded(upstream.url + "/v1", write_keys(tmp_path / "keys.yaml", keys(entry))) \
            as (base, _):
        def post(body: bytes, coding: str) -> httpx.Response:
            return httpx.post(base + "/v1/responses", content=body, headers={
                "authorization": f"Bearer {ALICE}", "content-encoding": coding,
                "content-type": "application/json", "x-scenario": "echo"})

        denied = post(gzip.compress(b'{"model": "gpt-4o", "input": "hi"}'), "gzip")
        assert denied.status_code == 403 and denied.json()["error"]["param"] == "model"
        body = gzip.compress(b'{"model": "demo", "input": "hi"}')
        allowed = post(body, "gzip")
        assert base64.b64decode(allowed.json()["body_b64"]) == body  # forwarded as received
        assert post(b"\x1f\x8b broken", "gzip").status_code == 403  # its model is unreadable


def test_a_compressed_body_is_decoded_once_for_the_guard_the_adapter_and_the_span(
        demo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []  # the limit of each decoder made

    class Counted(encoding.ContentDecoder):
        def __init__(self, codings: list[str], limit: int, per_input_byte: int = 0) -> None:
            super().__init__(codings, limit, per_input_byte)
            made.append(limit)

    monkeypatch.setattr(encoding, "ContentDecoder", Counted)
    keys_file = write_keys(tmp_path / "keys.yaml", keys(alice(models=["demo"])))
    with guarded(demo, keys_file, upstream_api="chat") as (base, sink):
        response = httpx.post(base + "/v1/responses", timeout=10,
                              content=gzip.compress(b'{"model": "demo", "input": "zipped"}'),
                              headers={"authorization": f"Bearer {ALICE}",
                                       "content-encoding": "gzip",
                                       "content-type": "application/json"})
        assert response.status_code == 200 and response.json()["status"] == "completed"
        attrs = sink.one().attributes or {}
    assert json.loads(str(attrs["input.value"]))["input"] == "zipped"
    assert made == [Settings().max_body_bytes]  # the guard's decoding, and only it
