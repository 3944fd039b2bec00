"""What a new user meets: the startup line, help, errors that name what was typed, exact flags,
a collector that is down, upstream reachability, the README's snippet and the skip summary."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from otel_responses.app import create_app
from otel_responses.config import SERVE_OPTIONS, Settings
from otel_responses.telemetry.export import EXPORT_FAILED, build_tracer_provider, span_pipelines
from tests.servers import free_port, run_cli, serve_asgi
from tests.upstreams import RawUpstream

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", "otel_responses", *args],
                              capture_output=True, text=True, timeout=15,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        pytest.fail(f"otel-responses {' '.join(args)} started serving instead of exiting")


# ---- startup ---------------------------------------------------------------------------------

def _startup_lines(*args: str, env: dict[str, str]) -> list[str]:
    with run_cli(*args, env=env) as (_, proc):
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    return [line for line in out.splitlines() if "spans:" in line]


def test_startup_says_once_the_upstream_where_spans_go_and_the_metrics_url(
        upstream: RawUpstream) -> None:
    collector, metrics_port = free_port(), free_port()
    lines = _startup_lines(
        "--upstream", upstream.url + "/v1", "--metrics-port", str(metrics_port),
        env={"OTEL_TRACES_EXPORTER": "otlp",
             "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector}"})
    assert len(lines) == 1, lines
    assert f"upstream {upstream.url}/v1;" in lines[0]
    assert f"spans: OTLP http/protobuf to http://127.0.0.1:{collector}/v1/traces;" in lines[0]
    assert f"metrics: http://127.0.0.1:{metrics_port}/metrics" in lines[0]


@pytest.mark.parametrize(("env", "says"), [
    ({"OTEL_TRACES_EXPORTER": "none"}, "spans: no exporter"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
      "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, "spans: OTLP grpc to http://127.0.0.1:9;"),
    ({"OTEL_SDK_DISABLED": "true"}, "spans: off"),
])
def test_startup_line_says_where_spans_go(upstream: RawUpstream, env: dict[str, str],
                                          says: str) -> None:
    lines = _startup_lines("--upstream", upstream.url + "/v1", env=env)
    assert len(lines) == 1 and says in lines[0], lines


# ---- help, errors, flags ---------------------------------------------------------------------

def test_top_level_help_lists_the_commands_and_every_serve_flag() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout and "demo-upstream" in result.stdout
    for opt in SERVE_OPTIONS:
        assert opt.flag in result.stdout, opt.flag
        assert opt.env in result.stdout, opt.env


@pytest.mark.parametrize(("option", "value"), [
    ("read_timeout", "0"), ("client_header_timeout", "-1"), ("max_body_bytes", "0"),
    ("connect_timeout", "nan"), ("shutdown_grace", "inf"),
    ("upstream", "ftp://example.com"), ("metrics_max_models", "0"), ("port", "99999"),
    ("metrics_port", "70000"), ("metrics_host", "0.0.0.0")])
def test_a_bad_setting_names_the_flag_or_env_var_the_user_typed(option: str, value: str) -> None:
    opt = next(o for o in SERVE_OPTIONS if o.name == option)
    port = () if option == "port" else ("--port", str(free_port()))
    by_flag = _cli(opt.flag, value, *port)
    assert by_flag.returncode != 0
    assert f"otel-responses: {opt.flag} " in by_flag.stderr
    by_env = _cli(*port, env={opt.env: value})
    assert by_env.returncode != 0
    assert f"otel-responses: {opt.env} " in by_env.stderr
    for result in (by_flag, by_env):  # never the internal field name
        assert re.search(rf"(?<![-\w]){option}\b", result.stderr) is None, result.stderr


def test_metrics_port_equal_to_port_names_the_flag() -> None:
    port = str(free_port())
    result = _cli("--metrics-port", port, "--port", port)
    assert result.returncode != 0
    assert "otel-responses: --metrics-port must differ" in result.stderr


@pytest.mark.parametrize("args", [
    ("--upstream-ap", "chat"), ("--upstream-api-k", "chat"), ("--read", "5"),
    ("serve", "--unsupported", "drop"), ("demo-upstream", "--token", "1")])
def test_a_flag_prefix_is_an_unknown_flag_not_another_flag(args: tuple[str, ...]) -> None:
    result = _cli(*args, "--port", str(free_port()))
    assert result.returncode == 2
    assert f"unrecognized arguments: {args[-2]} {args[-1]}" in result.stderr


# ---- the collector is down -------------------------------------------------------------------

def test_a_collector_that_is_down_is_logged_once_with_a_count_not_per_batch(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # A loopback port nobody listens on: every export is refused.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                       f"http://127.0.0.1:{free_port()}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0.3")
    provider = build_tracer_provider({"OTEL_TRACES_EXPORTER": "otlp"})
    try:
        tracer = provider.get_tracer("test")
        with caplog.at_level(logging.INFO):
            for _ in range(5):  # five batches, each exported and failed on its own
                tracer.start_span("call").end()
                provider.force_flush()
        (pipeline,) = span_pipelines(provider)
        assert pipeline.dropped[EXPORT_FAILED] == 5
        sdk_lines = [r for r in caplog.records if r.name.startswith("opentelemetry")]
        assert sdk_lines == [], [r.getMessage() for r in sdk_lines]
        ours = [r.getMessage() for r in caplog.records if "span export failed" in r.getMessage()]
        assert len(ours) == 1, ours
        assert "1 batches, 1 spans dropped" in ours[0]
        assert "last error: Failed to export" in ours[0]  # the SDK's own words
    finally:
        provider.shutdown()


def test_drop_tally_reports_at_once_then_once_per_interval_with_the_count() -> None:
    from otel_responses.telemetry.export import DropReport, DropTally

    tally = DropTally(60.0)
    assert tally.add(3, now=100.0) == DropReport(1, 3)
    assert [tally.add(2, now=100.0 + t) for t in (1, 30, 59.9)] == [None, None, None]
    assert tally.add(1, now=160.0) == DropReport(4, 7)
    assert tally.add(1, now=161.0) is None


# ---- is the upstream up? ---------------------------------------------------------------------

def _upstream_up(base: str) -> float:
    text = httpx.get(base + "/metrics").text
    match = re.search(r"^otel_responses_upstream_up (\S+)$", text, re.M)
    assert match is not None, "otel_responses_upstream_up is not exported"
    return float(match.group(1))


def test_upstream_up_follows_the_latest_call(upstream: RawUpstream) -> None:
    with serve_asgi(create_app(Settings(upstream=upstream.url + "/v1"),
                               tracer_provider=TracerProvider())) as base:
        assert _upstream_up(base) == 1  # nothing has failed yet
        # Closed without an answer: the proxy answers 502 itself.
        assert httpx.post(base + "/v1/responses", content=b"{}",
                          headers={"x-scenario": "drop-once"}).status_code == 502
        assert _upstream_up(base) == 0
        assert httpx.get(base + "/readyz").status_code == 200  # the proxy itself can serve
        assert httpx.post(base + "/v1/responses", content=b"{}",
                          headers={"x-scenario": "echo"}).status_code == 200
        assert _upstream_up(base) == 1


def test_upstream_up_is_0_when_nothing_listens() -> None:
    with serve_asgi(create_app(Settings(upstream=f"http://127.0.0.1:{free_port()}/v1"),
                               tracer_provider=TracerProvider())) as base:
        assert httpx.post(base + "/v1/responses", content=b"{}").status_code == 502
        assert _upstream_up(base) == 0


# ---- README, repository ----------------------------------------------------------------------

def test_the_readme_openai_snippet_works_as_pasted() -> None:
    snippets = [block for block in re.findall(r"```python\n(.*?)```", README, re.S)
                if "OpenAI(" in block]
    assert snippets, "no openai SDK snippet in the README"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    port = free_port()
    with run_cli(port=port) as _:  # the demo upstream, as a newcomer starts it
        for snippet in snippets:
            code = textwrap.dedent(snippet).replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                    text=True, timeout=30, env=env)
            assert result.returncode == 0, result.stderr
            assert "Hello there" in result.stdout


def test_chat_mode_with_no_upstream_serves_responses_over_the_demo_chat_api() -> None:
    import openai

    with run_cli("--upstream-api", "chat") as (base, proc), \
            openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0) as client:
        response = client.responses.create(model="demo", input="Hello there")
        with client.responses.stream(model="demo", input="Hello there") as stream:
            final = stream.get_final_response()
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert response.status == final.status == "completed"
    assert "Hello there" in response.output_text and "Hello there" in final.output_text
    (line,) = [line for line in out.splitlines() if "spans:" in line]
    assert "(Chat Completions, adapted)" in line


def test_the_test_command_ends_with_the_skipped_tests_and_what_enables_them(
        tmp_path: Path) -> None:
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n"
        "def test_a(): pytest.skip('shared fixtures not found at /x (clone without ../shared)')\n"
        "def test_b(): pytest.skip('shared fixtures not found at /x (clone without ../shared)')\n"
        "def test_c(): pytest.skip('promtool is not installed (Debian: apt-get install -y '"
        "'--no-install-recommends prometheus)')\n"
        "def test_d(): pytest.skip('Codex CLI not installed: set X or run `bash "
        ".ci/install-e2e`')\n"
        "def test_e(): pass\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p",
                             "tests.conftest", "-q", "-ra", str(tmp_path)], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path, env=env)
    tail = result.stdout.splitlines()
    section = next(i for i, line in enumerate(tail) if "what enables them" in line)
    # After pytest's own list of the skipped tests (-ra, as pyproject.toml sets it).
    assert section > next(i for i, line in enumerate(tail) if "short test summary" in line)
    summary = "\n".join(tail[section:])
    assert "2 skipped, to run them: the recorded traffic at ../shared/fixtures" in summary
    assert "1 skipped, to run them: apt-get install" in summary
    assert "1 skipped, to run them: bash .ci/install-e2e" in summary


def test_no_tracked_file_is_also_ignored() -> None:
    tracked_ignored = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", "--exclude-standard"], cwd=ROOT,
        capture_output=True, text=True, check=True).stdout.split()
    assert tracked_ignored == []


def test_the_dashboard_traces_variable_takes_jaeger_or_tempo() -> None:
    dashboard = json.loads((ROOT / "dashboards" / "otel-responses.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    sources = {v["query"]: name for name, v in variables.items() if v["type"] == "datasource"}
    assert {"tempo", "jaeger"} <= sources.keys()
    traces = variables["traces"]
    assert traces["type"] == "custom"
    for kind in ("tempo", "jaeger"):
        assert f"${{{sources[kind]}}}" in traces["query"]
    assert "${traces}" in json.dumps(dashboard["links"])
