"""The request cache when its file or folder is not what it should be: a clear error naming the
file (exit 2), never a raw sqlite3 traceback and never a run that goes on half-blind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from stillroom.errors import CacheError
from stillroom.llm.cache import RequestCache


def filled(path: Path, n: int = 2000) -> None:
    cache = RequestCache(path)
    for i in range(n):
        cache.put(f"k{i}", {"text": "x" * 200, "i": i})
    cache.close()
    with sqlite3.connect(path) as db:  # everything into the main file, as after a clean exit
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "zeroed_header"])
def test_a_damaged_cache_file_is_named_before_the_run(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "requests.sqlite"
    filled(path)
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a database at all" * 100)
    else:
        path.write_bytes(b"\0" * 100 + raw[100:])
    with pytest.raises(CacheError, match=r"requests\.sqlite is damaged.*--no-cache") as error:
        RequestCache(path)
    assert error.value.exit_code == 2


def test_a_cache_folder_that_is_a_file_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="is a file"):
        RequestCache.in_dir(blocker)


def test_a_whole_cache_opens_and_answers(tmp_path: Path) -> None:
    path = tmp_path / "requests.sqlite"
    filled(path, 10)
    cache = RequestCache(path)
    assert cache.get("k3") == {"text": "x" * 200, "i": 3} and len(cache) == 10
    cache.close()


def test_a_damaged_entry_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "requests.sqlite"
    filled(path, 3)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE responses SET value = ? WHERE key = 'k1'", (b"{torn",))
    cache = RequestCache(path)
    assert cache.get("k1") is None and cache.get("k2") is not None
    cache.close()
