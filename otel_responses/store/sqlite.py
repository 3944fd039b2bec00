"""The embedded backend: one SQLite file (created 0600), used from one dedicated thread so the
event loop never waits on disk; bounded by size, oldest evicted first."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from otel_responses.store.record import StoredResponse, StoreUnavailable

T = TypeVar("T")

# A running total kept by triggers, in the same transaction as each change: the size bound
# holds however many processes share the file, without summing the table on every write.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY, owner TEXT, created_at REAL NOT NULL, expires_at REAL NOT NULL,
    size INTEGER NOT NULL, data BLOB NOT NULL, events BLOB);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created_at);
CREATE INDEX IF NOT EXISTS responses_by_expiry ON responses (expires_at);
CREATE TABLE IF NOT EXISTS store_size (total INTEGER NOT NULL);
INSERT INTO store_size SELECT COALESCE(SUM(size), 0) FROM responses
    WHERE NOT EXISTS (SELECT 1 FROM store_size);
CREATE TRIGGER IF NOT EXISTS responses_added AFTER INSERT ON responses
    BEGIN UPDATE store_size SET total = total + new.size; END;
CREATE TRIGGER IF NOT EXISTS responses_removed AFTER DELETE ON responses
    BEGIN UPDATE store_size SET total = total - old.size; END;
"""
PURGE_EVERY = 60.0  # seconds between sweeps of expired records (reads skip them anyway)
BUSY_TIMEOUT = 2.0  # seconds to wait for another process's write lock


def create_private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only (0600) unless it exists, with its missing
    parent directories (0700). SQLite gives its -wal and -shm files the database's mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


class SQLiteStore:
    """Every statement runs on one worker thread holding the one connection; each write is a
    single transaction (nothing half-written is visible, even after a crash: SQLite's WAL)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="otel-responses-sqlite")
        self._db: sqlite3.Connection | None = None
        self._purged = 0.0

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        create_private_file(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=BUSY_TIMEOUT)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
        db.execute("PRAGMA recursive_triggers=ON")  # a REPLACE's delete updates the total too
        db.execute("PRAGMA secure_delete=ON")  # deleted user data is zeroed, not left in free pages
        db.executescript(_SCHEMA)
        self._db = db

    async def _run(self, work: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable(f"SQLite store {self.path} is not open")
        return self._db

    async def get(self, response_id: str, owner: str | None, *,
                  events: bool = False) -> StoredResponse | None:
        columns = "data, events" if events else "data, NULL"
        row = await self._run(lambda: self._conn().execute(
            f"SELECT {columns} FROM responses WHERE id = ? AND owner IS ? AND expires_at > ?",
            (response_id, owner, time.time())).fetchone())
        return None if row is None else StoredResponse.decode(row[0], row[1])

    async def get_many(self, response_ids: Sequence[str],
                       owner: str | None) -> list[StoredResponse | None]:
        marks = ",".join("?" * len(response_ids))
        rows = await self._run(lambda: self._conn().execute(
            f"SELECT id, data FROM responses WHERE id IN ({marks}) AND owner IS ? "
            "AND expires_at > ?", (*response_ids, owner, time.time())).fetchall())
        found = {response_id: data for response_id, data in rows}
        return [StoredResponse.decode(found[response_id]) if response_id in found else None
                for response_id in response_ids]

    async def put(self, record: StoredResponse) -> None:
        data = record.encode()
        await self._run(lambda: self._put(record, data))

    def _put(self, record: StoredResponse, data: bytes) -> None:
        db = self._conn()
        now = time.time()
        with _transaction(db):
            db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (record.id, record.owner, record.created_at, record.expires_at,
                        len(data) + len(record.events or b""), data, record.events))
            if now - self._purged > PURGE_EVERY:
                db.execute("DELETE FROM responses WHERE expires_at <= ?", (now,))
                self._purged = now
            self._evict(db, keep=record.id)

    def _evict(self, db: sqlite3.Connection, keep: str) -> None:
        """Delete the oldest records until the total is within the bound."""
        excess = db.execute("SELECT total FROM store_size").fetchone()[0] - self.max_bytes
        if excess <= 0:
            return
        doomed = []
        for response_id, size in db.execute(
                "SELECT id, size FROM responses ORDER BY created_at, rowid"):
            if excess <= 0:
                break
            if response_id != keep:
                doomed.append((response_id,))
                excess -= size
        db.executemany("DELETE FROM responses WHERE id = ?", doomed)

    async def delete(self, response_id: str, owner: str | None) -> bool:
        def work() -> bool:
            cursor = self._conn().execute(
                "DELETE FROM responses WHERE id = ? AND owner IS ? AND expires_at > ?",
                (response_id, owner, time.time()))
            return cursor.rowcount > 0
        return await self._run(work)

    async def size(self) -> int:
        """Bytes of records held (their encoded size)."""
        return await self._run(
            lambda: self._conn().execute("SELECT total FROM store_size").fetchone()[0])

    async def aclose(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await self._run(db.close)
        self._executor.shutdown(wait=False)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK if anything failed."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
