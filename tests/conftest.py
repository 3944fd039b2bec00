"""Test-wide settings: deterministic hypothesis runs without wall-clock deadlines, and a closing
summary of the tests that were skipped and what would run them."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Generator, Iterator

import pytest
from hypothesis import settings

from otel_responses.demo.app import create_demo_app
from tests.e2e import llama as llama  # a session fixture, so every module shares one server
from tests.redisd import RedisServer, redis_server
from tests.servers import serve_asgi
from tests.upstreams import RawUpstream

settings.register_profile("default", deadline=None, max_examples=100)
settings.register_profile("ci", deadline=None, max_examples=100, derandomize=True,
                          print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "default")

# No test exports spans to a collector it did not start (the default OTLP endpoint on
# localhost would only add retries and a shutdown flush wait); export tests opt back in.
os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")

# Adapter mode stores responses in a SQLite file under $XDG_STATE_HOME by default: the tests,
# and the proxies they start, keep theirs in one throwaway directory, never in the home.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="otel-responses-tests-state-")
atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], ignore_errors=True)

@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    """A raw-socket upstream (tests/upstreams.py) for the tests of one module."""
    raw = RawUpstream()
    with raw.running():
        yield raw


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    """The demo upstream's /v1 base URL, for the tests of one module."""
    with serve_asgi(create_demo_app()) as url:
        yield url + "/v1"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, for the tests of one module."""
    with redis_server() as server:
        yield server


# What turns each kind of skip into a run, by a phrase of its reason.
ENABLERS = (
    ("shared fixtures", "the recorded traffic at ../shared/fixtures, next to the repository"),
    ("install-e2e", "bash .ci/install-e2e  (Codex CLI, Arize Phoenix, openai-agents, "
                    "llama.cpp server + SmolLM2, the prometheus-operator CRD schemas, the Open "
                    "Responses OpenAPI document)"),
    ("unshare", "a kernel and user that allow `unshare -n` (network namespaces)"),
    ("prometheus", "apt-get install -y --no-install-recommends prometheus  (prometheus, promtool)"),
    ("redis-server", "apt-get install -y --no-install-recommends redis-server"),
)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Generator[None]:
    """The last lines of a run, after pytest's own summary (which lists the skipped tests):
    how many were skipped, and what enables each kind."""
    yield
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    needs: Counter[str] = Counter()
    for report in skipped:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
        reason = reason.removeprefix("Skipped: ")
        needs[next((how for phrase, how in ENABLERS if phrase in reason), reason)] += 1
    terminalreporter.section("skipped tests, and what enables them")
    for how, count in needs.most_common():
        terminalreporter.line(f"{count:4d} skipped, to run them: {how}")
    terminalreporter.line("CI (.ci/run, CI=true) installs all of these; there a missing one "
                          "fails instead of skipping.")
