"""The store backends behind one contract (memory, SQLite, a real redis-server), and what each
adds: SQLite's private file, size bound, crash safety and off-loop waits; Redis's native TTL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from otel_responses.store.memory import MemoryStore
from otel_responses.store.record import ResponseStore, StoredResponse, StoreUnavailable
from otel_responses.store.redisdb import KEY_PREFIX
from otel_responses.store.service import ChainBroken, Responses
from otel_responses.store.sqlite import BUSY_TIMEOUT, SQLiteStore
from otel_responses.store.url import StoreSpec
from tests.redisd import RedisServer, redis_server
from tests.stored import record

Opener = Callable[[], Awaitable[ResponseStore]]


@pytest.fixture(scope="module")
def redisd() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "sqlite", "redis"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    spec = {"memory": "memory", "sqlite": "sqlite:///responses.db",
            "redis": None}[request.param]
    if spec is None:
        spec = request.getfixturevalue("redisd").url
    return lambda: StoreSpec.parse(spec, str(tmp_path)).open(max_mb=None, timeout=2)


def run(opener: Opener, body: Callable[[ResponseStore], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        store = await opener()
        try:
            return await body(store)
        finally:
            await store.aclose()
    return asyncio.run(main())


def test_a_stored_record_reads_back_equal(opener: Opener) -> None:
    stored = record({"model": "m", "input": "hi"}, "hello", [("call_1", "f", '{"a": 1}')])

    async def body(store: ResponseStore) -> StoredResponse | None:
        await store.put(stored)
        return await store.get(stored.id, None)
    got = run(opener, body)
    assert got == StoredResponse.decode(stored.encode(), got.events)
    assert got.response == stored.response


def test_a_record_names_its_previous_response_as_every_version_reads_it() -> None:
    """``previous_response_id`` is the last ancestor, and it is still written for readers of
    records made by earlier versions (which stored it, and require it)."""
    root = record({"model": "m", "input": "one"}, "uno")
    assert root.previous_response_id is None
    last = record({"model": "m", "input": "three"}, "tres", chain=(root.id, "resp_2"))
    assert last.previous_response_id == "resp_2"
    for stored in (root, last):
        written = json.loads(stored.encode())
        assert written["previous_response_id"] == stored.previous_response_id
        assert StoredResponse.decode(stored.encode(), stored.events) == stored


def test_events_are_read_only_when_asked_for(opener: Opener) -> None:
    stored = record({"model": "m", "input": "hi"}, "hello")

    async def body(store: ResponseStore) -> tuple[Any, Any]:
        await store.put(stored)
        return await store.get(stored.id, None, events=True), await store.get(stored.id, None)
    with_events, plain = run(opener, body)
    assert with_events == stored
    assert plain.input_items == stored.input_items
    assert plain.events in (None, stored.events)  # memory keeps them at hand anyway


def test_a_record_is_seen_and_deleted_by_its_owner_only(opener: Opener) -> None:
    stored = record({"model": "m", "input": "hi"}, "hello", owner="key-a")

    async def body(store: ResponseStore) -> list[Any]:
        await store.put(stored)
        return [await store.get(stored.id, "key-b"), await store.get(stored.id, None),
                await store.delete(stored.id, "key-b"), await store.get(stored.id, "key-a"),
                await store.delete(stored.id, "key-a"), await store.get(stored.id, "key-a"),
                await store.delete(stored.id, "key-a")]
    found = run(opener, body)
    assert found[:3] == [None, None, False]
    assert found[3] is not None and found[3].id == stored.id
    assert found[4:] == [True, None, False]


def test_an_expired_record_is_gone(opener: Opener) -> None:
    stored = record({"model": "m", "input": "hi"}, "hello")
    expired = dataclasses.replace(stored, expires_at=time.time() - 1)

    async def body(store: ResponseStore) -> list[Any]:
        await store.put(expired)
        return [await store.get(expired.id, None), await store.delete(expired.id, None)]
    assert run(opener, body) == [None, False]


def test_redis_keys_carry_the_ttl(redisd: RedisServer) -> None:
    stored = record({"model": "m", "input": "hi"}, "hello", ttl=120)

    async def body(store: ResponseStore) -> None:
        await store.put(stored)
    run(lambda: StoreSpec.parse(redisd.url, "/unused").open(max_mb=None, timeout=2), body)
    ttl_ms = redis.Redis.from_url(redisd.url).pttl(KEY_PREFIX + stored.id)
    assert 0 < ttl_ms <= 120_000


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_the_size_bound_evicts_oldest_first(kind: str, tmp_path: Path) -> None:
    records = [record({"model": "m", "input": f"turn {n}"}, "x" * 2000) for n in range(30)]
    size = len(records[0].encode()) + len(records[0].events or b"")
    bound = size * 10 + size // 2  # room for ten

    async def main() -> tuple[list[bool], int]:
        store: Any = MemoryStore(bound) if kind == "memory" else SQLiteStore(
            tmp_path / "r.db", bound)
        if kind == "sqlite":
            await store.open()
        for r in records:
            await store.put(r)
        kept = [await store.get(r.id, None) is not None for r in records]
        held = store.size if kind == "memory" else await store.size()
        await store.aclose()
        return kept, held
    kept, held = asyncio.run(main())
    assert kept == [False] * 20 + [True] * 10
    assert held <= bound


async def _sqlite(path: Path, work: Callable[[SQLiteStore], Awaitable[Any]]) -> Any:
    store = SQLiteStore(path, 10 * 1024 * 1024)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.aclose()


def test_sqlite_files_are_private_and_outlive_the_process(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deep" / "responses.db"
    stored = record({"model": "m", "input": "hi"}, "hello")

    async def put(store: SQLiteStore) -> dict[str, int]:
        await store.put(stored)
        # While it is open: the database, its write-ahead log and its shared-memory index.
        return {f.name: stat.S_IMODE(f.stat().st_mode) for f in path.parent.iterdir()}
    modes = asyncio.run(_sqlite(path, put))
    assert modes == {"responses.db": 0o600, "responses.db-wal": 0o600,
                     "responses.db-shm": 0o600}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = asyncio.run(_sqlite(path, lambda store: store.get(stored.id, None)))
    assert again is not None and again.response == stored.response


CRASH_MID_WRITE = """
import asyncio, os, sys
from pathlib import Path
from otel_responses.store.sqlite import SQLiteStore
from tests.stored import record

def crash(self, db, keep):  # the row is written, the transaction not committed
    os._exit(3)

async def main():
    store = SQLiteStore(Path(sys.argv[1]), 10 * 1024 * 1024)
    await store.open()
    await store.put(record({"model": "m", "input": "kept"}, "kept"))
    SQLiteStore._evict = crash
    await store.put(record({"model": "m", "input": "lost"}, "lost"))

asyncio.run(main())
"""


def test_a_crash_mid_write_leaves_no_trace_of_the_record(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    done = subprocess.run([sys.executable, "-c", CRASH_MID_WRITE, str(path)], cwd=Path.cwd(),
                          timeout=60, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr

    async def survey(store: SQLiteStore) -> tuple[list[str], int, int]:
        def rows() -> tuple[list[str], int]:
            db = store._conn()
            texts = [bytes(d).decode() for (d,) in db.execute("SELECT data FROM responses")]
            return texts, db.execute("SELECT SUM(size) FROM responses").fetchone()[0]
        texts, summed = await store._run(rows)
        return texts, summed, await store.size()
    texts, summed, total = asyncio.run(_sqlite(path, survey))
    assert len(texts) == 1 and '"kept"' in texts[0] and '"lost"' not in texts[0]
    assert summed == total  # the running total never counted the lost write


def test_sqlite_waits_off_the_event_loop_and_gives_up(tmp_path: Path) -> None:
    """Another process holds the write lock: the write waits in the store's thread while the
    loop keeps running, then fails as StoreUnavailable."""
    path = tmp_path / "r.db"
    lock = ("import sqlite3, time\n"
            f"db = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)")

    async def write(store: SQLiteStore) -> tuple[int, str]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(BUSY_TIMEOUT / 20)
                ticks += 1
        holder = subprocess.Popen([sys.executable, "-c", lock], stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert holder.stdout is not None
            assert (await asyncio.to_thread(holder.stdout.readline)).strip() == "locked"
            task = asyncio.ensure_future(ticker())
            try:
                await store.put(record({"model": "m", "input": "hi"}, "hello"))
            except StoreUnavailable as exc:
                return ticks, str(exc)
            finally:
                task.cancel()
            return ticks, ""
        finally:
            holder.kill()
            holder.wait()
    ticks, error = asyncio.run(_sqlite(path, write))
    assert "locked" in error
    assert ticks >= 5  # the loop ran on while the write waited


def _small(response_id: str, text: str) -> StoredResponse:
    """A record small enough to share a database page with others."""
    now = time.time()
    return StoredResponse(response_id, None, now, now + 60, {"id": response_id, "text": text},
                          [], None)


def test_a_deleted_response_leaves_no_trace_in_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    secret = "the-patient-is-allergic-to-penicillin"
    records = [_small("resp_before", "fine"), _small("resp_doomed", secret),
               _small("resp_after", "fine")]

    async def work(store: SQLiteStore) -> bool:
        for r in records:
            await store.put(r)
        return await store.delete("resp_doomed", None)
    assert asyncio.run(_sqlite(path, work))
    # Closed: the write-ahead log is checkpointed into the file and removed.
    assert [p.name for p in tmp_path.iterdir()] == ["r.db"]
    data = path.read_bytes()
    assert b"resp_after" in data and secret.encode() not in data


def test_a_long_chain_is_read_whole_and_a_gap_anywhere_breaks_it(opener: Opener) -> None:
    async def body(store: ResponseStore) -> tuple[list[str], list[str]]:
        responses = Responses(ttl=3600, store=store)
        chain: list[str] = []
        for turn in range(30):
            stored = record({"model": "m", "input": f"turn {turn}"}, f"answer {turn}",
                            chain=chain)
            await responses.save(stored)
            chain = [*chain, stored.id]
        whole = [r.id for r in await responses.chain(chain[-1], None)]
        assert whole == chain  # oldest first
        await store.delete(chain[12], None)
        with pytest.raises(ChainBroken) as caught:
            await responses.chain(chain[-1], None)
        return whole, [caught.value.missing, *[r.id for r in await responses.chain(chain[11],
                                                                                 None)]]
    whole, (missing, *before_gap) = run(opener, body)
    assert len(whole) == 30 and missing == whole[12]
    assert before_gap == whole[:12]
