"""The real redis-server helper: it answers, it can be killed (an outage) and comes back."""

from __future__ import annotations

from tests.redisd import redis_server


def test_killed_and_restarted_on_the_same_url() -> None:
    with redis_server() as server:
        assert server._answers()
        url = server.url
        server.stop()
        assert not server._answers()
        server.start()
        assert server._answers() and server.url == url
