"""The store across real proxy processes (the CLI): two replicas sharing one redis-server, a
SQLite store surviving a restart, Redis killed mid-run and brought back, and the settings'
own checks (bad URLs, a password never shown)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from otel_responses.cli import startup_summary
from otel_responses.config import SettingError, Settings, parse_duration
from otel_responses.demo.app import create_demo_app
from tests.redisd import redis_server
from tests.servers import run_cli, serve_asgi
from tests.test_metrics import scrape, value


@pytest.fixture(scope="module")
def chat_upstream() -> Iterator[str]:
    with serve_asgi(create_demo_app()) as url:
        yield url + "/v1"


@contextlib.contextmanager
def proxy(upstream: str, *flags: str) -> Iterator[tuple[openai.OpenAI, str, list[str]]]:
    """A proxy process in chat mode; yields its SDK client, base URL, and (once it stopped)
    its output lines."""
    output: list[str] = []
    with run_cli("serve", "--upstream", upstream, "--upstream-api", "chat", *flags) as (base,
                                                                                       proc):
        yield openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0), base, \
            output
        proc.terminate()
        assert proc.stdout is not None
        output += proc.stdout.read().splitlines()


def test_two_replicas_on_one_redis_share_the_chains(chat_upstream: str) -> None:
    with redis_server() as redisd, \
            proxy(chat_upstream, "--store", redisd.url) as (one, _, _), \
            proxy(chat_upstream, "--store", redisd.url) as (other, _, _):
        first = one.responses.create(model="demo", input="started on one")
        second = other.responses.create(model="demo", input="continued on the other",
                                        previous_response_id=first.id)
        assert one.responses.retrieve(second.id).output_text == second.output_text
        assert [i.content[0].text for i in one.responses.input_items.list(second.id)] == \
            ["continued on the other"]
        third = one.responses.create(model="demo", input="and back",
                                     previous_response_id=second.id)
        assert third.previous_response_id == second.id
        other.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            one.responses.retrieve(first.id)
        with pytest.raises(openai.BadRequestError, match="earlier in its chain"):
            one.responses.create(model="demo", input="x", previous_response_id=third.id)


def test_the_default_sqlite_store_survives_a_restart(chat_upstream: str, tmp_path: Path) -> None:
    flags = ("--data-dir", str(tmp_path / "state"))
    with proxy(chat_upstream, *flags) as (client, _, output):
        first = client.responses.create(model="demo", input="before the restart")
    assert any(f"responses stored: sqlite {tmp_path / 'state' / 'responses.db'}" in line
               for line in output)
    with proxy(chat_upstream, *flags) as (client, _, _):
        assert client.responses.retrieve(first.id).output_text == first.output_text
        after = client.responses.create(model="demo", input="after the restart",
                                        previous_response_id=first.id)
        assert after.previous_response_id == first.id


def test_redis_killed_mid_run_fails_fast_and_recovers(chat_upstream: str) -> None:
    with redis_server() as redisd, \
            proxy(chat_upstream, "--store", redisd.url) as (client, base, output):
        first = client.responses.create(model="demo", input="while redis runs")
        redisd.stop()
        # Reads a request needs: 503, within the client's bound (a hang fails the test).
        for call in (lambda: client.responses.retrieve(first.id, timeout=10),
                     lambda: client.responses.create(model="demo", input="more", timeout=10,
                                                     previous_response_id=first.id)):
            with pytest.raises(openai.InternalServerError) as caught:
                call()
            assert caught.value.status_code == 503
            assert isinstance(caught.value.body, dict)
            assert caught.value.body["code"] == "store_unavailable"
        # A write is not needed by the request: the client gets its response.
        unstored = client.responses.create(model="demo", input="redis is down", timeout=10)
        assert unstored.output_text
        samples = scrape(base)
        assert value(samples, "otel_responses_store_errors_total", operation="read") == 2
        assert value(samples, "otel_responses_store_errors_total", operation="write") == 1
        # The retrieval is one of the proxy's exchanges: counted and logged like the others.
        assert value(samples, "otel_responses_requests_total", route="responses.retrieve",
                     status_class="5xx") == 1
        redisd.start()  # empty: it keeps nothing on disk
        again = client.responses.create(model="demo", input="redis is back")
        assert client.responses.retrieve(again.id).id == again.id
    assert any(f"response {unstored.id} was not stored" in line for line in output)
    assert any(f"GET /v1/responses/{first.id} 503" in line for line in output)


def test_a_store_file_that_cannot_be_made_stops_the_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = subprocess.run([sys.executable, "-m", "otel_responses", "--upstream-api", "chat",
                           "--data-dir", str(blocker / "state"), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        f"otel-responses: cannot create the response store {blocker / 'state' / 'responses.db'}"
        ": Not a directory")


@pytest.mark.parametrize("store", ["sqlite://relative.db", "sqlite:///", "redis://",
                                   "redis://host:port/0", "redis://host/zero", "postgres://x"])
def test_unusable_store_urls_stop_the_start(store: str) -> None:
    with pytest.raises(SettingError) as caught:
        Settings(store=store)
    assert caught.value.name == "store"


def test_a_redis_password_is_never_shown() -> None:
    settings = Settings(upstream="http://h/v1", upstream_api="chat",
                        store="redis://:s3cret@cache:6380/2")
    assert "s3cret" not in startup_summary(settings, demo=False) + repr(settings)
    assert "redis://:***@cache:6380/2" in startup_summary(settings, demo=False)
    with pytest.raises(SettingError) as caught:
        Settings(store="redis://:s3cret@cache:port/2")
    assert "s3cret" not in str(caught.value)


def test_durations_take_units() -> None:
    assert [parse_duration(v) for v in ("90", "15m", "12h", "30d", "1.5s")] == \
        [90, 900, 43200, 2592000, 1.5]
    with pytest.raises(ValueError):
        parse_duration("soon")
