"""The ``otel-responses`` command as a real process: flags, env vars, logs, demo mode, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from otel_responses import __version__
from otel_responses.app import create_app
from otel_responses.cli import _option_values, build_parser
from otel_responses.config import SERVE_OPTIONS, Settings, settings_from
from otel_responses.store.url import StoreSpec
from otel_responses.telemetry.options import TelemetryOptions
from tests.servers import run_cli
from tests.upstreams import RawUpstream


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otel_responses", *args], capture_output=True,
                          text=True, timeout=30, env={**os.environ, **(env or {})})


def test_version() -> None:
    result = _cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"otel-responses {__version__}"


def test_help_names_every_flag_and_env_var() -> None:
    out = _cli("serve", "--help").stdout
    for opt in SERVE_OPTIONS:
        assert opt.flag in out
        assert opt.env in out


def test_invalid_env_var_is_a_clear_error() -> None:
    result = _cli("serve", env={"OTEL_RESPONSES_READ_TIMEOUT": "soon"})
    assert result.returncode != 0
    assert "OTEL_RESPONSES_READ_TIMEOUT" in result.stderr


def test_env_var_configures_and_flag_wins(upstream: RawUpstream) -> None:
    env = {"OTEL_RESPONSES_UPSTREAM": upstream.url + "/v1",
           "OTEL_RESPONSES_UPSTREAM_API_KEY": "sk-from-env"}
    with run_cli("serve", env=env) as (base, _):
        echo = httpx.post(base + "/v1/responses", content=b"{}",
                          headers={"x-scenario": "echo"}).json()
    assert ["authorization", "Bearer sk-from-env"] in [[k.lower(), v] for k, v in echo["headers"]]
    with run_cli("serve", "--upstream-api-key", "sk-from-flag", env=env) as (base, _):
        echo = httpx.post(base + "/v1/responses", content=b"{}",
                          headers={"x-scenario": "echo"}).json()
    assert ["authorization", "Bearer sk-from-flag"] in [[k.lower(), v] for k, v in echo["headers"]]


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    return out


def test_json_access_log_line(upstream: RawUpstream) -> None:
    with run_cli("--upstream", upstream.url + "/v1", "--log-format", "json") as (base, proc):
        httpx.post(base + "/v1/responses", content=b'{"model":"m1"}',
                   headers={"x-scenario": "echo"})
        out = _stop(proc)
    entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "otel_responses.access"]
    assert len(access) == 1
    assert access[0]["model"] == "m1"
    assert access[0]["status"] == 200
    assert access[0]["path"] == "/v1/responses"
    assert all("sk-" not in line for line in out.splitlines())


def _read_stream(url: str, out: dict[str, object]) -> None:
    try:
        with httpx.stream("POST", url, content=b"{}", headers={"x-scenario": "held"},
                          timeout=30) as resp:
            out["body"] = b"".join(resp.iter_raw())
    except httpx.HTTPError as exc:
        out["error"] = exc


def test_sigterm_drains_in_flight_streams(upstream: RawUpstream) -> None:
    upstream.release.clear()
    with run_cli("--upstream", upstream.url + "/v1", "--shutdown-grace", "10") as (base, proc):
        result: dict[str, object] = {}
        reader = threading.Thread(target=_read_stream, args=(base + "/v1/responses", result))
        reader.start()
        time.sleep(0.3)  # the stream is open and held by the upstream
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None, "exited while a stream was in flight"
        upstream.release.set()
        reader.join(10)
        # A clean drain is a normal end: status 0 (uvicorn alone dies of the signal again).
        assert proc.wait(10) == 0
    assert result.get("body") == b'data: {"n":0}\n\ndata: {"n":"last"}\n\n'


def test_sigterm_gives_up_after_the_grace_period(upstream: RawUpstream) -> None:
    upstream.release.clear()
    try:
        with run_cli("--upstream", upstream.url + "/v1", "--shutdown-grace", "1") as (base, proc):
            result: dict[str, object] = {}
            reader = threading.Thread(target=_read_stream, args=(base + "/v1/responses", result))
            reader.start()
            time.sleep(0.3)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            # Cut short by the grace period: the process still dies of the signal.
            assert proc.wait(10) == -signal.SIGTERM
            assert time.monotonic() - started < 5
            reader.join(10)
            assert not reader.is_alive()
    finally:
        upstream.release.set()


def test_server_uses_uvloop_and_httptools_when_installed() -> None:
    import uvloop
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from otel_responses.app import create_app
    from otel_responses.config import Settings
    from otel_responses.server import uvicorn_config

    settings = Settings(upstream="http://127.0.0.1:9/v1", client_header_timeout=3)
    config = uvicorn_config(create_app(settings), settings)
    config.load()
    assert issubclass(config.http_protocol_class, HttpToolsProtocol)
    assert config.http_protocol_class.header_timeout == 3  # type: ignore[attr-defined]
    factory = config.get_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_serve_lets_a_thread_hold_the_gil_half_a_millisecond(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from otel_responses import cli
    from otel_responses.config import Settings

    seen: list[float] = []
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda self, sockets=None: seen.append(sys.getswitchinterval()))
    before = sys.getswitchinterval()
    try:
        cli.serve(Settings(upstream="http://127.0.0.1:9/v1"))
    finally:
        sys.setswitchinterval(before)
    # Not CPython's 5 ms: the export thread would keep the event loop waiting that long.
    assert seen == [pytest.approx(0.0005)]


def test_one_settings_object_carries_the_telemetry_options(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Flags and OTEL_RESPONSES_* vars for telemetry land in Settings.telemetry; the standard
    variables (OTEL_SDK_DISABLED, OTEL_SEMCONV_STABILITY_OPT_IN, OPENINFERENCE_HIDE_*) set
    the defaults of what no flag sets."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http,gen_ai_latest_experimental")
    monkeypatch.setenv("OPENINFERENCE_HIDE_INPUTS", "true")
    env = {"OTEL_RESPONSES_USER_HEADER": "x-team-user", "OTEL_RESPONSES_PORT": "9000"}
    args = vars(build_parser(env).parse_args(["serve", "--provider", "vllm",
                                              "--max-attribute-length", "99"]))
    args.pop("command")
    settings = settings_from(_option_values(args, SERVE_OPTIONS, env)[0])
    assert settings.port == 9000
    telemetry = settings.telemetry
    assert (telemetry.provider, telemetry.user_header, telemetry.max_attribute_length) == (
        "vllm", "x-team-user", 99)
    assert (telemetry.tracing, telemetry.genai_semconv, telemetry.masking.hide_inputs) == (
        False, True, True)
    assert telemetry.session_header == TelemetryOptions().session_header
    # A bad telemetry value is refused by the flag's name, like any other.
    got = _cli("serve", "--max-attribute-length", "0")
    assert got.returncode != 0 and "--max-attribute-length must be" in got.stderr


def test_the_store_url_is_parsed_once_when_settings_are_made(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    parses: list[str | None] = []
    parse = StoreSpec.parse.__func__  # type: ignore[attr-defined]

    def counted(cls: type[StoreSpec], value: str | None, data_dir: str) -> StoreSpec:
        parses.append(value)
        return parse(cls, value, data_dir)
    monkeypatch.setattr(StoreSpec, "parse", classmethod(counted))
    settings = Settings(store="sqlite:///chats.db", data_dir=str(tmp_path))
    specs = [settings.store_spec for _ in range(3)]
    assert parses == ["sqlite:///chats.db"] and all(s is specs[0] for s in specs)
    assert settings.store_spec == StoreSpec("sqlite", tmp_path / "chats.db")
    # A changed copy is parsed anew; the parsed spec never shows in the repr (a URL's password).
    changed = settings.replace(store="redis://:hunter2@127.0.0.1:6379/0")
    assert changed.store_spec.kind == "redis" and parses[-1] == changed.store
    assert "hunter2" not in repr(changed)


@pytest.mark.parametrize(("api", "store", "warned"), [
    ("responses", "memory", True), ("responses", "none", False), ("responses", None, False),
    ("chat", "memory", False)])
def test_a_store_in_pass_through_mode_is_ignored_with_a_warning(
        api: str, store: str | None, warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", "otel_responses")
    create_app(Settings(upstream="http://127.0.0.1:9/v1", upstream_api=api, store=store))
    said = [r.getMessage() for r in caplog.records if "--store is ignored" in r.getMessage()]
    assert len(said) == warned
