"""The servers under test, each a real subprocess on 127.0.0.1, and what /proc says about them."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import payloads

BENCH = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every core spent not idle since boot (/proc/stat), all processes."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / CLK_TCK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stat_cpu(pid: int) -> float:
    """utime + stime of every thread, live or exited, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    health: str = "/healthz"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> list[int]:
        """The server and its descendants (LiteLLM may fork workers; ours never do)."""
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo.extend(_children(pid))
        return pids

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.tree():
            with contextlib.suppress(OSError):
                total += _stat_cpu(pid)
        return total

    def rss_kb(self) -> int:
        total = 0
        for pid in self.tree():
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(int(line.split()[1]) for line in f
                                  if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                pass
        return total

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log}")
            try:
                status, _ = get(self.port, self.health, timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s; see {self.log}")

    def stop(self) -> None:
        """SIGTERM the process group this server leads (it was started in its own session)."""
        if not self.alive():
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {payloads.MASTER_KEY}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def spawn(name: str, port: int, argv: list[str], logdir: Path, env: dict[str, str],
           health: str = "/healthz", cwd: Path | None = None) -> Server:
    log = logdir / f"{name}.log"
    full_env = {**os.environ, **env}
    # Never the repo root as cwd: `python -m otel_responses` would import the checkout there,
    # not the package installed for that interpreter (a candidate venv would be ignored).
    cwd = cwd or logdir
    with open(log, "wb") as out:
        # Own session: stop() can signal exactly this server and whatever it forked.
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                cwd=cwd, start_new_session=True)
    return Server(name, port, proc, log, health, env)


def start_upstream(name: str, logdir: Path, token_delay: float = 0.0) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "otel_responses", "demo-upstream", "--port", str(port),
            "--token-delay", str(token_delay)]
    return spawn(name, port, argv, logdir, {})


def start_sink(logdir: Path) -> Server:
    port = free_port()
    return spawn("otlp-sink", port, [sys.executable, str(BENCH / "sink.py"), "--port",
                                      str(port)], logdir, {}, health="/stats")


def start_proxy(name: str, logdir: Path, upstream: Server, *, tracing: bool,
                sink: Server | None, bsp_delay_ms: int, python: str = sys.executable,
                transport: str | None = None, flags: tuple[str, ...] = ()) -> Server:
    """otel-responses as installed for ``python`` (another venv can hold a candidate fix);
    with ``transport`` (own, aiohttp, httpx), launched by transports.py with that client;
    ``flags`` are added to its command line (e.g. ``--upstream-api chat``)."""
    port = free_port()
    command = ["-m", "otel_responses"] if transport is None \
        else [str(BENCH / "transports.py"), transport]
    argv = [python, *command, "serve", "--port", str(port),
            "--upstream", f"http://127.0.0.1:{upstream.port}/v1", "--overhead-header", *flags]
    env: dict[str, str] = {}
    if tracing:
        assert sink is not None
        env = {"OTEL_TRACES_EXPORTER": "otlp",
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink.port}/v1/traces",
               "OTEL_BSP_SCHEDULE_DELAY": str(bsp_delay_ms)}
    else:
        env = {"OTEL_SDK_DISABLED": "true"}
    return spawn(name, port, argv, logdir, env)


def start_litellm(name: str, logdir: Path, upstream: Server, litellm_bin: Path,
                  provider: str = "openai") -> Server:
    """LiteLLM's proxy in front of ``upstream``, as the LiteLLM ``provider`` (``openai``
    passes /v1/responses through; a chat-only provider bridges it to Chat Completions)."""
    port = free_port()
    workdir = logdir / name
    workdir.mkdir(exist_ok=True)
    (workdir / "config.yaml").write_text(
        "model_list:\n"
        f"  - model_name: {payloads.MODEL}\n"
        "    litellm_params:\n"
        f"      model: {provider}/{payloads.MODEL}\n"
        f"      api_base: http://127.0.0.1:{upstream.port}/v1\n"
        "      api_key: sk-upstream-unused\n"
        "general_settings:\n"
        f"  master_key: {payloads.MASTER_KEY}\n")
    argv = [str(litellm_bin), "--config", "config.yaml", "--host", "127.0.0.1",
            "--port", str(port)]
    # The local cost map: otherwise LiteLLM fetches one from the internet at start.
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return spawn(name, port, argv, logdir, env, health="/health/liveliness", cwd=workdir)
