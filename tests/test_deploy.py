"""deploy/: the Dockerfile lints, the manifests render and validate, and every otel-responses
container they describe runs the product as written (probes, metrics, SIGTERM drain)."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import kubernetes_validate
import pytest
import yaml

from otel_responses.config import SERVE_OPTIONS
from otel_responses.telemetry.export import exporter_names
from otel_responses.telemetry.masking import MaskingConfig
from tests.manifests import (
    BIN,
    CHART,
    COMPOSE,
    DEPLOY,
    ROOT,
    ProxySpec,
    compose_spec,
    crd_errors,
    dockerfile_spec,
    helm,
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


# The chart's values matrix: each mode bare, and with every optional part switched on.
HELM_VALUES: dict[str, dict[str, Any]] = {
    "gateway": {},
    "gateway-full": {
        "upstream": {"apiKeySecret": {"name": "openai"}},
        "otlp": {"endpoint": "http://collector:4318", "headersSecret": {"name": "otlp"}},
        "masking": {"INPUT_MESSAGES": True, "OUTPUT_TEXT": True},
        "settings": {"read-timeout": 900, "genai-semconv": True, "metrics-models": "gpt-5,o3"},
        "metrics": {"port": 9100, "serviceMonitor": {"enabled": True},
                    "prometheusRule": {"enabled": True}},
        "extraEnv": [{"name": "OTEL_RESOURCE_ATTRIBUTES", "value": "deployment.environment=prod"}],
        "autoscaling": {"enabled": False}, "shutdownGrace": 5, "terminationGracePeriodSeconds": 10,
    },
    "sidecar": {"mode": "sidecar", "port": 8787,
                "otlp": {"endpoint": "http://collector:4318"}},
}


def _rendered() -> dict[str, list[dict[str, Any]]]:
    return ({f"kubernetes/{name}": kustomize(DEPLOY / "kubernetes" / name)
             for name in KUSTOMIZATIONS}
            | {f"helm/{name}": helm(values) for name, values in HELM_VALUES.items()})


RENDERED = _rendered()
COMPOSE_FILE = yaml.safe_load(COMPOSE.read_text())


def _all_specs() -> list[ProxySpec]:
    specs = [spec for name, objects in RENDERED.items() for spec in proxy_specs(objects, name)]
    image = dockerfile_spec(DEPLOY / "Dockerfile")
    return [*specs, image, compose_spec(COMPOSE_FILE["services"]["otel-responses"], image)]


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


@pytest.mark.parametrize("name", RENDERED)
def test_rendered_objects_are_valid_kubernetes(name: str) -> None:
    objects = RENDERED[name]
    assert objects
    for obj in objects:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _custom_resources() -> list[tuple[str, dict[str, Any]]]:
    return [(name, obj) for name, objects in RENDERED.items() for obj in objects
            if obj["kind"] in CRD_KINDS]


@pytest.mark.parametrize(("name", "obj"), _custom_resources(),
                         ids=[f"{n}/{o['kind']}" for n, o in _custom_resources()])
def test_rendered_custom_resources_are_valid_against_their_crds(name: str,
                                                                obj: dict[str, Any]) -> None:
    """Each ServiceMonitor and PrometheusRule, from Kustomize and from Helm, against the
    prometheus-operator CRD's schema; its metadata as any Kubernetes object's."""
    assert crd_errors(obj) == []
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": obj["metadata"]}, KUBERNETES_VERSION, strict=True)


def test_every_custom_resource_kind_is_rendered_by_kustomize_and_helm() -> None:
    rendered = {(name.split("/")[0], obj["kind"]) for name, obj in _custom_resources()}
    assert rendered == {(tool, kind) for tool in ("kubernetes", "helm") for kind in CRD_KINDS}


def _set(obj: dict[str, Any], path: str, value: object) -> None:
    *parents, last = path.split(".")
    for key in parents:
        obj = obj[int(key)] if isinstance(obj, list) else obj[key]
    obj[last] = value


@pytest.mark.parametrize(("kind", "path", "value", "error"), [
    ("ServiceMonitor", "spec.endpoints.0.port", 9100, "9100 is not of type 'string'"),
    ("ServiceMonitor", "spec.endpoints.0.interval", "30 seconds", "does not match"),
    ("ServiceMonitor", "spec.endpoints.0.intervall", "30s", "'intervall' was unexpected"),
    ("ServiceMonitor", "spec.selector", "app=otel-responses", "is not of type 'object'"),
    ("PrometheusRule", "spec.groups.0.rules.0.for", "5 minutes", "does not match"),
    ("PrometheusRule", "spec.groups.0.rules.0.expr", ["up"], "is not valid under any"),
    ("PrometheusRule", "spec.group", [], "'group' was unexpected"),
])
def test_a_broken_custom_resource_field_is_caught(kind: str, path: str, value: object,
                                                  error: str) -> None:
    obj = copy.deepcopy(next(o for _, o in _custom_resources() if o["kind"] == kind))
    assert crd_errors(obj) == []
    _set(obj, path, value)
    errors = crd_errors(obj)
    where = path.rsplit(".", 1)[0] if "unexpected" in error else path
    assert [e for e in errors if e.startswith(where + ":") and error in e], errors


@pytest.mark.parametrize("name", ["kubernetes/gateway", "helm/gateway-full"])
def test_prometheus_rule_is_the_dashboards_alerts(name: str) -> None:
    rules = [o for o in RENDERED[name] if o["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    assert rules[0]["spec"] == yaml.safe_load((ROOT / "dashboards" / "alerts.yaml").read_text())


@pytest.mark.parametrize("name", ["kubernetes/gateway", "helm/gateway-full"])
def test_service_monitor_selects_the_gateway_service(name: str) -> None:
    objects = RENDERED[name]
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    service = next(o for o in objects if o["kind"] == "Service")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports


def test_sidecar_variants_differ_only_in_where_the_sidecar_runs() -> None:
    native, legacy = (proxy_specs(RENDERED[f"kubernetes/{n}"], n)
                      for n in ("sidecar", "sidecar-legacy"))
    assert len(native) == len(legacy) == 1
    assert dataclasses.replace(native[0], source="") == dataclasses.replace(legacy[0], source="")
    app_deployment = next(o for o in RENDERED["kubernetes/sidecar"] if o["kind"] == "Deployment")
    pod = app_deployment["spec"]["template"]
    assert pod["spec"]["initContainers"][0]["restartPolicy"] == "Always"
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
    base_url = next(e["value"] for e in app["env"] if e["name"] == "OPENAI_BASE_URL")
    assert base_url == f"http://127.0.0.1:{native[0].setting('port')}/v1"


@pytest.mark.parametrize("name", ["kubernetes/sidecar", "kubernetes/sidecar-legacy",
                                  "helm/sidecar"])
def test_sidecar_proxy_listens_on_loopback_only(name: str) -> None:
    """It may add the upstream key: only the pod's own containers may reach it. Prometheus
    scrapes the metrics port at the pod IP; the probes run inside the container."""
    spec, = proxy_specs(RENDERED[name], name)
    proxy_port = int(spec.setting("port") or 0)
    assert spec.listen_host(proxy_port) == "127.0.0.1"
    assert proxy_port not in spec.ports.values()
    assert spec.listen_host(spec.metrics_port) == "0.0.0.0"
    assert spec.probes
    assert all(probe.command is not None and probe.host == "127.0.0.1"
               and int(probe.port) == proxy_port for probe in spec.probes), spec.probes


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.source)
def test_ports_reached_from_outside_do_not_listen_on_loopback_only(spec: ProxySpec) -> None:
    """The kubelet's httpGet probes and Prometheus come in at the pod (or container) IP."""
    outside = [spec.metrics_port] + [spec.ports[probe.port] for probe in spec.probes
                                     if probe.command is None]
    for port in outside:
        assert not ipaddress.ip_address(spec.listen_host(port)).is_loopback, port


def test_every_manifest_runs_an_otel_responses_container() -> None:
    sources = {spec.source.split(":")[0] for spec in SPECS}
    assert sources == set(RENDERED) | {"deploy/Dockerfile", "compose/docker-compose.yaml"}


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
            wait_http_ok(run.url(spec.probes[0].port, spec.probes[0].path), proc=proc)
            # Answered by the proxy itself: a path it does not serve would go to the upstream.
            forwarded = len(upstream.seen)
            for probe in spec.probes:
                if probe.command is None:
                    assert httpx.get(run.url(probe.port, probe.path)).status_code == 200, probe
                else:
                    ran = subprocess.run(run.command(probe), capture_output=True, text=True,
                                         timeout=10)
                    assert ran.returncode == 0, (probe, ran.stderr)
            metrics = httpx.get(run.url(spec.metrics_port, "/metrics"))
            assert metrics.status_code == 200
            assert "otel_responses_" in metrics.text
            assert len(upstream.seen) == forwarded, "a probe or /metrics reached the upstream"
            api_port = spec.probes[0].port
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
        if "otlp" not in exporter_names(run.env, demo=False):
            return
        spans = receiver.wait_for(1)
    assert spans[0].resource["service.name"] == run.env.get("OTEL_SERVICE_NAME", "otel-responses")


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


def test_chart_passes_helm_lint() -> None:
    from helm_python.chart import lint

    for values in HELM_VALUES.values():
        result = lint(CHART, values, strict=True)
        assert result["errors"] == [], result
        assert [m for m in result["messages"] if m["severity"] > 1] == [], result


def test_chart_settings_are_the_serve_flags_the_chart_does_not_set_itself() -> None:
    """values.schema.json's ``settings`` names and ``masking`` names are the product's: a flag
    added, renamed or removed must show up in the chart."""
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    spec = next(s for s in SPECS if s.source.startswith("helm/gateway-full"))
    own = {o.name for o in SERVE_OPTIONS
           if o.flag in spec.command or o.env in dict(spec.env)} - {
               n.replace("-", "_") for n in HELM_VALUES["gateway-full"]["settings"]}
    settings = {n.replace("-", "_") for n in schema["settings"]["propertyNames"]["enum"]}
    assert settings == {o.name for o in SERVE_OPTIONS} - own
    assert set(schema["masking"]["propertyNames"]["enum"]) == {
        f.name.removeprefix("hide_").upper() for f in dataclasses.fields(MaskingConfig)
        if f.name.startswith("hide_")}


@pytest.mark.parametrize("values", [{"settings": {"upstream-api": "chat"}}, {"mode": "proxy"},
                                    {"shutdownGrace": 60}])
def test_chart_refuses_values_the_product_cannot_take(values: dict[str, Any]) -> None:
    with pytest.raises(Exception, match=r"schema|terminationGracePeriodSeconds"):
        helm(values)


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema",
                             "vendor.compose-spec", str(COMPOSE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_images_are_pinned() -> None:
    for name, service in COMPOSE_FILE["services"].items():
        repository, _, tag = service["image"].rpartition(":")
        assert repository and "/" not in tag and tag not in ("", "latest"), (name, service)


def _mounts(service: str) -> dict[str, Path]:
    """Container path -> file in this repository, for a compose service's bind mounts."""
    mounts = {}
    for volume in COMPOSE_FILE["services"][service]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = (COMPOSE.parent / source).resolve()
        assert mounts[target].is_file(), volume
    return mounts


def test_compose_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    """The files laid out as the container sees them; promtool checks the config and the rule
    files it names, and the config must name our alerts."""
    promtool = shutil.which("promtool")
    if promtool is None:
        assert os.environ.get("CI") != "true", "promtool missing (apt-get install prometheus)"
        pytest.skip("prometheus (promtool) not installed")
    for target, source in _mounts("prometheus").items():
        (tmp_path / target.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, tmp_path / target.lstrip("/"))
    command = COMPOSE_FILE["services"]["prometheus"]["command"]
    config = next(a.split("=", 1)[1] for a in command if a.startswith("--config.file="))
    result = subprocess.run([promtool, "check", "config", str(tmp_path / config.lstrip("/"))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = _mounts("prometheus")["/etc/prometheus/alerts.yaml"]
    assert rules == ROOT / "dashboards" / "alerts.yaml"
    count = sum(len(group["rules"]) for group in yaml.safe_load(rules.read_text())["groups"])
    assert f"{count} rules found" in result.stdout + result.stderr


def test_compose_grafana_provisions_our_dashboard_and_exemplar_links() -> None:
    mounts = _mounts("grafana")
    provisioning = "/etc/grafana/provisioning/"
    providers = [p for target, source in mounts.items()
                 if target.startswith(provisioning + "dashboards/")
                 for p in yaml.safe_load(source.read_text())["providers"]]
    loaded = {source for target, source in mounts.items() for p in providers
              if target.startswith(p["options"]["path"].rstrip("/") + "/")}
    assert loaded == {ROOT / "dashboards" / "otel-responses.json"}
    sources = [d for target, source in mounts.items()
               if target.startswith(provisioning + "datasources/")
               for d in yaml.safe_load(source.read_text())["datasources"]]
    by_uid = {d["uid"]: d for d in sources}
    prometheus = next(d for d in sources if d["type"] == "prometheus")
    links = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert [by_uid[link["datasourceUid"]]["type"] for link in links] == ["jaeger"]
    hosts = {urlsplit(d["url"]).hostname for d in sources}
    assert hosts <= set(COMPOSE_FILE["services"])


def test_compose_collector_fans_traces_out_to_jaeger_and_phoenix() -> None:
    config = next(source for source in _mounts("otel-collector").values())
    pipeline = yaml.safe_load(config.read_text())["service"]["pipelines"]["traces"]
    exporters = yaml.safe_load(config.read_text())["exporters"]
    targets = {urlsplit(e["endpoint"] if "//" in e["endpoint"] else "//" + e["endpoint"]).hostname
               for name, e in exporters.items() if name in pipeline["exporters"]}
    assert targets == {"jaeger", "phoenix"}
    proxy_env = dict(next(s for s in SPECS if s.source.startswith("compose")).env)
    assert urlsplit(proxy_env["OTEL_EXPORTER_OTLP_ENDPOINT"]).hostname == "otel-collector"


def test_readme_sidecar_snippet_uses_real_flags_and_its_own_port() -> None:
    """The three lines the README offers for copying: the image's entrypoint with these args
    is a valid command line, and the app's base URL is the port the sidecar listens on."""
    deploy = (ROOT / "README.md").read_text().split("## Deploy", 1)[1]
    snippet = yaml.safe_load(re.search(r"```yaml\n(.*?)```", deploy, re.S).group(1))
    sidecar, = snippet["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    image = dockerfile_spec(DEPLOY / "Dockerfile")
    spec = dataclasses.replace(image, command=(image.command[0], *sidecar["args"]))
    assert spec.unknown_settings() == []
    app, = snippet["containers"]
    base_url = next(e["value"] for e in app["env"] if e["name"] == "OPENAI_BASE_URL")
    assert base_url == f"http://127.0.0.1:{spec.setting('port')}/v1"
