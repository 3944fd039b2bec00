"""The watcher the keys and price files share: changes seen, a broken or gone file logged once
with the last good value kept, new values handed over on the event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from otel_responses import watched_file
from otel_responses.watched_file import WatchedFile

LOG = logging.getLogger("tests.watched_file")


def _read(path: str) -> int:
    text = Path(path).read_text()
    if text.startswith("sk-"):
        raise TypeError(f"cannot use {text}")  # a fault of the reader's own, quoting a value
    return int(text)  # ValueError: the expected kind of error


def _write(path: Path, text: str) -> None:
    staged = path.with_suffix(".new")
    staged.write_text(text)
    staged.replace(path)  # a new inode, as an editor or a mount swap makes


def test_broken_or_gone_is_logged_once_and_the_last_good_value_stays(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "number"
    path.write_text("1")
    seen: list[int] = []
    watched = WatchedFile(path, _read, ValueError, what="number file", log=LOG,
                          on_change=seen.append)
    assert (watched.value, seen) == (1, [1])
    caplog.set_level(logging.INFO, LOG.name)
    for text in ("two", "sk-secret-0123"):
        _write(path, text)
        assert not watched.check() and not watched.check()  # looked at twice, logged once
    path.unlink()
    assert not watched.check() and not watched.check()
    assert watched.value == 1 and seen == [1]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3, errors
    assert "invalid literal for int()" in errors[0]  # an expected error: its message
    assert errors[1].endswith(": TypeError") and "sk-secret" not in caplog.text  # the type only
    assert "is gone" in errors[2]
    _write(path, "3")
    assert watched.check() and (watched.value, seen) == (3, [1, 3])
    assert "number file" in caplog.records[-1].getMessage()


def test_watch_rereads_off_the_loop_and_hands_the_value_over_on_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watched_file, "RELOAD_INTERVAL", 0.01)
    path = tmp_path / "number"
    path.write_text("1")
    reads: list[int] = []  # the thread of each read
    handed: list[int] = []  # the thread of each new value

    def read(name: str) -> int:
        reads.append(threading.get_ident())
        return _read(name)

    async def main() -> int:
        watched = WatchedFile(path, read, ValueError, what="number file", log=LOG,
                              on_change=lambda value: handed.append(threading.get_ident()))
        task = asyncio.create_task(watched.watch())
        _write(path, "2")
        for _ in range(500):  # bounded: the change shows within a few intervals
            if watched.value == 2:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        return watched.value

    assert asyncio.run(main()) == 2
    loop_thread = threading.get_ident()  # asyncio.run runs the loop in this thread
    assert reads[0] == loop_thread and reads[1] != loop_thread  # startup's, then the watcher's
    assert handed == [loop_thread, loop_thread]
