"""``--store`` URLs: parsed and checked at startup (pure), described without a password, and
opened into a backend."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from otel_responses.store.memory import MemoryStore
from otel_responses.store.record import ResponseStore
from otel_responses.store.sqlite import SQLiteStore

StoreKind = Literal["none", "memory", "sqlite", "redis"]
DEFAULT_FILE = "responses.db"
MB = 1024 * 1024
# --store-max-mb when unset: a memory store shares the process with the proxy, a file has room.
DEFAULT_MAX_MB: dict[StoreKind, float] = {"memory": 256, "sqlite": 1024}


def default_data_dir() -> str:
    """Where state lives unless told: ``$XDG_STATE_HOME/otel-responses``, else
    ``~/.local/state/otel-responses``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "otel-responses")


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """A parsed ``--store``: the backend, and its file (SQLite) or URL (Redis)."""

    kind: StoreKind
    path: Path | None = None
    url: str | None = field(default=None, repr=False)  # may hold a password

    @classmethod
    def parse(cls, value: str | None, data_dir: str) -> StoreSpec:
        """``memory``, ``none``, ``sqlite:///relative.db`` (in ``data_dir``),
        ``sqlite:////absolute.db``, ``redis://[:password@]host:port/db`` or ``rediss://``;
        None: a SQLite file in ``data_dir``. ValueError names what is wrong."""
        if value is None:
            return cls("sqlite", Path(data_dir) / DEFAULT_FILE)
        if value in ("none", "memory"):
            return cls(value)
        scheme, _, rest = value.partition("://")
        if scheme == "sqlite":
            if not rest.startswith("/") or rest.strip("/") == "":
                raise ValueError("sqlite URLs are sqlite:///relative/file.db (in the data "
                                 "directory) or sqlite:////absolute/file.db")
            relative = rest[1:]
            return cls("sqlite", Path(relative) if relative.startswith("/")
                       else Path(data_dir) / relative)
        if scheme in ("redis", "rediss"):
            try:
                parts = urlsplit(value)
                _port = parts.port  # reading it checks it
            except ValueError as exc:
                raise ValueError(f"is not a usable Redis URL ({exc})") from None
            if not parts.hostname:
                raise ValueError("Redis URLs name a host: redis://[:password@]host:port/db")
            db = parts.path.strip("/")
            if db and not db.isdigit():
                raise ValueError(f"Redis database must be a number, not {db!r}")
            return cls("redis", url=value)
        raise ValueError("must be memory, none, sqlite:///file.db, sqlite:////abs/file.db, "
                         "redis://host:port/db or rediss://…")

    @property
    def described(self) -> str:
        """For logs: the path, or the Redis URL with any password replaced by ``***``."""
        if self.kind == "sqlite":
            return f"sqlite {self.path}"
        if self.kind == "redis" and self.url is not None:
            parts = urlsplit(self.url)
            if parts.password is None:
                return self.url
            user = parts.username or ""
            host = parts.netloc.rpartition("@")[2]
            return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
        return self.kind

    async def open(self, *, max_mb: float | None, timeout: float) -> ResponseStore | None:
        """The backend, opened (None for ``none``); raises if it cannot be (a SQLite file
        that cannot be created; a Redis server is only reached on first use)."""
        max_bytes = int((max_mb or DEFAULT_MAX_MB.get(self.kind, 0)) * MB)
        if self.kind == "memory":
            return MemoryStore(max_bytes)
        if self.kind == "sqlite":
            assert self.path is not None
            store = SQLiteStore(self.path, max_bytes)
            await store.open()
            return store
        if self.kind == "redis":
            # Imported here: only a Redis store needs the client loaded.
            from otel_responses.store.redisdb import RedisStore
            assert self.url is not None
            return RedisStore(self.url, timeout=timeout, described=self.described)
        return None
