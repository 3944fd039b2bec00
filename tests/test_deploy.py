"""deploy/: the Dockerfile lints, the manifests render and validate, and every otel-responses
container they describe runs the product as written (probes, metrics, SIGTERM drain)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from tests.manifests import (
    BIN,
    DEPLOY,
    ROOT,
    ProxySpec,
    dockerfile_spec,
    kustomize,
    localize,
    proxy_specs,
)
from tests.otlp import otlp_http_receiver
from tests.servers import wait_http_ok
from tests.upstreams import RawUpstream

KUBERNETES_VERSION = "1.33.0"  # native sidecars are on by default from 1.29
KUSTOMIZATIONS = ("gateway", "sidecar", "sidecar-legacy")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def _rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(DEPLOY / "kubernetes" / name) for name in KUSTOMIZATIONS}


RENDERED = _rendered()


def _all_specs() -> list[ProxySpec]:
    specs = [spec for name, objects in RENDERED.items()
             for spec in proxy_specs(objects, f"kubernetes/{name}")]
    return [*specs, dockerfile_spec(DEPLOY / "Dockerfile")]


SPECS = _all_specs()


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([str(BIN / "hadolint"), str(DEPLOY / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_unprivileged_and_binds_every_interface() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    user = next(line.split()[1] for line in text.splitlines() if line.startswith("USER "))
    assert all(part.isdigit() and int(part) > 0 for part in user.split(":")), user
    spec = dockerfile_spec(DEPLOY / "Dockerfile")
    assert spec.setting("host") == "0.0.0.0"
    assert spec.shutdown_grace() < spec.grace_period


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_rendered_objects_are_valid_kubernetes(name: str) -> None:
    objects = RENDERED[name]
    assert objects
    for obj in objects:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_prometheus_rule_is_the_dashboards_alerts() -> None:
    rules = [o for o in RENDERED["gateway"] if o["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    assert rules[0]["spec"] == yaml.safe_load((ROOT / "dashboards" / "alerts.yaml").read_text())


def test_service_monitor_selects_the_gateway_service() -> None:
    objects = RENDERED["gateway"]
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    service = next(o for o in objects if o["kind"] == "Service")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports


def test_sidecar_variants_differ_only_in_where_the_sidecar_runs() -> None:
    native, legacy = (proxy_specs(RENDERED[n], n) for n in ("sidecar", "sidecar-legacy"))
    assert len(native) == len(legacy) == 1
    strip = {"source": ""}
    assert native[0].__class__(**{**vars(native[0]), **strip}) == \
        legacy[0].__class__(**{**vars(legacy[0]), **strip})
    pod = next(o for o in RENDERED["sidecar"] if o["kind"] == "Deployment")["spec"]["template"]
    assert pod["spec"]["initContainers"][0]["restartPolicy"] == "Always"
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
    base_url = next(e["value"] for e in app["env"] if e["name"] == "OPENAI_BASE_URL")
    assert base_url == f"http://127.0.0.1:{native[0].setting('port')}/v1"


def test_every_manifest_runs_an_otel_responses_container() -> None:
    sources = {spec.source.split(":")[0] for spec in SPECS}
    assert sources == {f"kubernetes/{n}" for n in KUSTOMIZATIONS} | {"deploy/Dockerfile"}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.source)
def test_every_flag_and_variable_exists(spec: ProxySpec) -> None:
    assert spec.unknown_settings() == []


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.source)
def test_manifest_runs_as_written(spec: ProxySpec, upstream: RawUpstream, tmp_path: Path) -> None:
    """The container's command line and environment, on loopback ports: every probe answers,
    metrics are served, spans reach the OTLP endpoint, and SIGTERM drains a held stream well
    inside the pod's termination grace period."""
    assert spec.shutdown_grace() < spec.grace_period, "SIGKILL would cut the drain short"
    with otlp_http_receiver() as receiver:
        run = localize(spec, upstream.url + "/v1", receiver.endpoint.removesuffix("/v1/traces"))
        upstream.release.clear()
        proc = subprocess.Popen(run.argv, env=run.env, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            port, path = spec.probes[0]
            wait_http_ok(run.url(port, path), proc=proc)
            # Answered by the proxy itself: a path it does not serve would go to the upstream.
            forwarded = len(upstream.seen)
            for port, path in spec.probes:
                assert httpx.get(run.url(port, path)).status_code == 200, (port, path)
            metrics = httpx.get(run.url(spec.metrics_port, "/metrics"))
            assert metrics.status_code == 200
            assert "otel_responses_" in metrics.text
            assert len(upstream.seen) == forwarded, "a probe or /metrics reached the upstream"
            api_port = next(p for p, _ in spec.probes)
            result: dict[str, object] = {}
            reader = threading.Thread(target=_read_held_stream,
                                      args=(run.url(api_port, "/v1/responses"), result))
            reader.start()
            _wait_for_held_stream(upstream)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert proc.poll() is None, "exited with a stream in flight"
            upstream.release.set()
            reader.join(10)
            assert proc.wait(spec.grace_period) == 0
        finally:
            upstream.release.set()
            if proc.poll() is None:
                proc.kill()
            log = proc.communicate()[0]
        assert result.get("body") == b'data: {"n":0}\n\ndata: {"n":"last"}\n\n', (result, log)
        spans = receiver.wait_for(1)
    service = run.env.get("OTEL_SERVICE_NAME")
    if service is not None:
        assert spans[0].resource["service.name"] == service


def _read_held_stream(url: str, out: dict[str, object]) -> None:
    try:
        with httpx.stream("POST", url, content=b'{"model":"m","stream":true}',
                          headers={"x-scenario": "held"}, timeout=30) as resp:
            out["body"] = b"".join(resp.iter_raw())
    except httpx.HTTPError as exc:  # the assertion on "body" reports it
        out["error"] = exc


def _wait_for_held_stream(upstream: RawUpstream) -> None:
    deadline = time.monotonic() + 10
    before = len(upstream.seen)
    while len(upstream.seen) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # the first event is on its way back through the proxy
