"""The dashboard and alert rules against a real Prometheus: it scrapes the proxy (exporting its
spans to a real OTLP receiver) while traffic flows, every PromQL expression of the dashboard
must return data, promtool tests the rules."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from otel_responses.app import create_app
from otel_responses.config import Settings
from otel_responses.telemetry.options import TelemetryOptions
from tests.otlp import otlp_http_receiver
from tests.recordings import load_recordings, need
from tests.servers import free_port, serve_asgi, wait_http_ok
from tests.test_metrics import SYNTHETIC, recording_upstream, send

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
DASHBOARD = json.loads((DASHBOARDS / "otel-responses.json").read_text())
# What Grafana would put in for the variables: every model and provider, a short window.
VARIABLES = {"model": ".*", "provider": ".*", "priced_model": ".*", "__rate_interval": "10s",
             "__range": "1m"}
REQUIRED_PANELS = (
    "Request rate by status", "Error ratio", "Latency p50 / p95 / p99",
    "Time to first token p50 / p95", "Tokens per second by model and type", "Cache-hit ratio",
    "Reasoning share", "Open streams", "Stream outcomes", "Proxy overhead p99",
    "Top models by tokens", "Spans exported / dropped", "Span export queue fill",
    "Spend per model", "Spend rate (USD/hour)", "Top models by spend",
    "Savings from cached input", "Unpriced calls")
STREAM = b'{"model":"gpt-4o","input":"x","stream":true}'


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = (f"{name} is not installed (Debian: apt-get install -y "
                  "--no-install-recommends prometheus)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " -- required under CI=true")
        pytest.skip(reason)
    return path


def _panels() -> list[dict[str, Any]]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def _queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with the dashboard variables substituted) for every target."""
    return [(panel["title"], substitute(target["expr"]))
            for panel in _panels() for target in panel["targets"]]


def substitute(expr: str) -> str:
    """Grafana's $var / ${var} interpolation; an unknown variable fails loudly (KeyError)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: VARIABLES[m.group(1) or m.group(2)], expr)


def _template_variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in DASHBOARD["templating"]["list"]}


def test_dashboard_shape() -> None:
    variables = _template_variables()
    assert variables["prometheus"]["type"] == "datasource"
    assert variables["prometheus"]["query"] == "prometheus"
    assert variables["traces"]["type"] == "custom"  # Tempo or Jaeger: test_first_run.py
    for name in ("model", "provider", "priced_model"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${prometheus}"
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    panels = {p["title"]: p for p in _panels()}
    assert set(REQUIRED_PANELS) <= panels.keys()
    for panel in panels.values():
        assert panel["datasource"]["uid"] == "${prometheus}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            # Quantile panels (latency, TTFT, overhead) show exemplars that open the trace.
            assert target.get("exemplar", False) == ("histogram_quantile" in target["expr"])
    # The GenAI panels follow the model and provider variables.
    for title in ("Error ratio", "Latency p50 / p95 / p99", "Tokens per second by model and type",
                  "Top models by tokens", "Cache-hit ratio"):
        assert all('=~"$model"' in t["expr"] and '=~"$provider"' in t["expr"]
                   for t in panels[title]["targets"]), title
    # The spend panels follow the provider and the model calls were priced as.
    for title in ("Spend per model", "Spend rate (USD/hour)", "Top models by spend",
                  "Savings from cached input"):
        assert all('model=~"$priced_model"' in t["expr"] and 'provider=~"$provider"' in t["expr"]
                   for t in panels[title]["targets"]), title
    # No two panels overlap on the grid.
    taken: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        g = panel["gridPos"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                 for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, panel["title"]
        assert g["x"] + g["w"] <= 24
        taken |= cells


def test_alert_rules_pass_promtool() -> None:
    promtool = _binary("promtool")
    for args in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts.test.yaml"],
                 ["check", "config", "prometheus.yml"]):
        done = subprocess.run([promtool, *args], cwd=DASHBOARDS, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@contextlib.contextmanager
def _prometheus(binary: str, target: str, workdir: Path) -> Iterator[str]:
    """Prometheus on loopback from the example config: 1 s scrapes of ``target``, our rules."""
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DASHBOARDS / "alerts.yaml")]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--enable-feature=exemplar-storage", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(url + "/-/ready", proc=proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def _traffic(base: str, seconds: float) -> Iterator[list[BaseException]]:
    """Replay every recording plus the endings none has, round after round, in a thread;
    yields the list of errors it met (stopped at exit, or after ``seconds`` at most)."""
    recordings = [*load_recordings(), *SYNTHETIC]
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        deadline = time.monotonic() + seconds
        with httpx.Client(timeout=10) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    for rec in recordings:
                        assert send(base, rec, client).status_code == rec.status
                    with pytest.raises(httpx.RemoteProtocolError):  # cut: the connection drops
                        client.post(base + "/v1/responses", content=STREAM,
                                    headers={"x-scenario": "cut"})
                    with client.stream("POST", base + "/v1/responses", content=STREAM,
                                       headers={"x-scenario": "drip"}) as resp:
                        next(resp.iter_raw())  # then leave: a client disconnect
                except Exception as exc:
                    errors.append(exc)
                    return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        stop.set()
        thread.join(15)


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _has_a_number(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


def _exemplar_ids(prom: str, metric: str) -> list[tuple[str, str]]:
    now = time.time()
    body = httpx.get(prom + "/api/v1/query_exemplars", timeout=10, params={
        "query": metric, "start": now - 120, "end": now}).json()
    assert body["status"] == "success", body
    return [(e["labels"]["trace_id"], e["labels"]["span_id"])
            for series in body["data"] for e in series["exemplars"]]


@contextlib.contextmanager
def _deployed_proxy(upstream_url: str, collector: str,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The proxy as deployed: it builds its tracer provider from the OTEL_* variables (so its
    span export metrics are live), exports to ``collector`` and flushes when it stops."""
    for name, setting in {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_SCHEDULE_DELAY": "100",
                          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector}.items():
        monkeypatch.setenv(name, setting)
    # Named as the recordings' upstream, so their calls are priced from its price table.
    settings = Settings(upstream=upstream_url, telemetry=TelemetryOptions(provider="openai"))
    with serve_asgi(create_app(settings)) as base:
        yield base


def test_every_dashboard_query_has_data_in_a_real_prometheus(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = _binary("prometheus")
    recs = load_recordings()
    need(recs[0] if recs else None)
    queries = _queries()
    variables = [v for v in _template_variables().values() if v["type"] == "query"]
    raw = recording_upstream(seed=3)
    with otlp_http_receiver() as collector, raw.running(), \
            _deployed_proxy(raw.url + "/v1", collector.endpoint, monkeypatch) as base, \
            _traffic(base, seconds=60) as errors, \
            _prometheus(binary, base.removeprefix("http://"), tmp_path) as prom:
        deadline = time.monotonic() + 40
        while True:
            missing = [(title, expr, result) for title, expr in queries
                       if not _has_a_number(result := _query(prom, expr))]
            if not missing or errors or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert not errors, errors
        assert not missing, "\n".join(f"{t}: {e} -> {r}" for t, e, r in missing)

        for variable in variables:
            # label_values(selector, label): what Grafana asks Prometheus's label API for.
            selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)",
                                           substitute(variable["query"])).groups()
            values = httpx.get(f"{prom}/api/v1/label/{label}/values",
                               params={"match[]": selector}, timeout=10).json()["data"]
            assert values, variable["name"]

        exemplars = {metric: _exemplar_ids(prom, metric) for metric in (
            "gen_ai_client_operation_duration_seconds_bucket",
            "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
            "otel_responses_proxy_overhead_seconds_bucket", "otel_responses_cost_usd_total")}
        rules = httpx.get(prom + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    exported = {(s.trace_id, s.span_id) for s in collector.spans}
    for metric, ids in exemplars.items():
        assert ids, f"Prometheus stored no exemplars for {metric}"
        assert set(ids) <= exported, metric
    defined = yaml.safe_load((DASHBOARDS / "alerts.yaml").read_text())["groups"]
    alerting = {r["name"]: r for group in rules for r in group["rules"]
                if r["type"] == "alerting"}
    assert alerting.keys() == {r["alert"] for group in defined for r in group["rules"]}
    assert all(r["health"] == "ok" for r in alerting.values()), alerting
