"""Damaged run state: a truncated or garbage request cache, a deleted or truncated committed
shard, a garbage run record, a garbage line in the commit log, temporary-file debris.

Whatever the damage, a rerun either stops with exit 2 and one line naming the damaged file (no
traceback), or recovers safely and says on stderr what it did; after a recovery every invariant
holds; it never exits 0 with rows missing; and `stillroom inspect` never calls an incomplete or
damaged folder complete.

Two base folders are made once for the module (a run SIGKILLed after a few commits, and a
finished run); each test damages its own copy and reruns against its own server.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integrity_helpers import (
    STILLROOM,
    Problems,
    Proc,
    Result,
    Server,
    answered_prompts,
    check_all,
    check_no_processes,
    check_not_resent,
    check_one_line_error,
    commit_lines,
    commit_records,
    complete_args,
    env_with,
    fault_command,
    last_line,
    prompt_rows,
    run_cli,
    wait_until,
    write_rows,
)
from tests.servers import free_port, running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]



ROWS = prompt_rows(100)
FLUSH = ["--flush-rows", "5", "--concurrency", "2"]


@dataclass
class Base:
    source: Path
    partial: Path  # a run killed after a few commits
    partial_cache: Path
    complete: Path  # a finished run
    complete_cache: Path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    root = tmp_path_factory.mktemp("damage-base")
    source = root / "input.jsonl"
    write_rows(source, ROWS)
    port = free_port()
    with running(fault_command(port, root / "requests.jsonl", latency_ms=30), port, root / "server.log"):
        url = f"http://127.0.0.1:{port}/v1"
        partial, complete = root / "partial", root / "complete"
        killed = Proc(complete_args(source, partial, url, *FLUSH), env_with(root / "partial-cache"),
                      root / "logs", name="base-killed").start()
        assert wait_until(lambda: commit_lines(partial) >= 5, killed, what="5 commits"), "ended too soon"
        killed.signal(signal.SIGKILL)
        check_no_processes(killed.result().pgid)
        finished = run_cli(complete_args(source, complete, url, *FLUSH),
                           env_with(root / "complete-cache"), root / "logs", name="base-complete")
        assert finished.returncode == 0, finished.output
        check_all(ROWS, complete)
    yield Base(source, partial, root / "partial-cache", complete, root / "complete-cache")


# -- the damage ------------------------------------------------------------------------------


def _checkpointed(cache: Path) -> Path:
    """Fold the WAL into the database file, so damage to the file is damage to the answers."""
    db_path = cache / "requests.sqlite"
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    return db_path


def cache_truncated(out: Path, cache: Path) -> str:
    db_path = _checkpointed(cache)
    with open(db_path, "r+b") as handle:
        handle.truncate(db_path.stat().st_size // 2)
    return "requests.sqlite"


def cache_garbage(out: Path, cache: Path) -> str:
    db_path = _checkpointed(cache)
    db_path.write_bytes(os.urandom(db_path.stat().st_size))
    return "requests.sqlite"


def _committed_shard(out: Path) -> Path:
    """A data shard from the middle of the commit log."""
    named = [r["files"]["data"] for r in commit_records(out) if "data" in r.get("files", {})]
    assert len(named) >= 3, f"the base run committed too few shards: {named}"
    return out / named[len(named) // 2]


def shard_deleted(out: Path, cache: Path) -> str:
    shard = _committed_shard(out)
    shard.unlink()
    return shard.name


def shard_truncated(out: Path, cache: Path) -> str:
    shard = _committed_shard(out)
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size // 2)
    return shard.name


def run_json_garbage(out: Path, cache: Path) -> str:
    (out / ".stillroom" / "run.json").write_bytes(b"\x00\x13garbage{{{ not json")
    return "run.json"


def _commit_log_lines(out: Path) -> tuple[Path, list[bytes]]:
    log = out / ".stillroom" / "commits.jsonl"
    lines = log.read_bytes().splitlines()
    assert len(lines) >= 3, "the base run committed too few lines"
    return log, lines


def commit_line_inserted(out: Path, cache: Path) -> str:
    log, lines = _commit_log_lines(out)
    lines.insert(len(lines) // 2, b'{"seq": 3, "files": {"data": "data/part-0')
    log.write_bytes(b"\n".join(lines) + b"\n")
    return "commits.jsonl"


def commit_line_replaced(out: Path, cache: Path) -> str:
    log, lines = _commit_log_lines(out)
    lines[len(lines) // 2] = b"\xff\xfe garbage where a commit was"
    log.write_bytes(b"\n".join(lines) + b"\n")
    return "commits.jsonl"


def tmp_debris(out: Path, cache: Path) -> str:
    (out / "data" / "part-00099.parquet.tmp").write_bytes(os.urandom(300))
    (out / "failed" / "part-00098.parquet.tmp").write_bytes(b"")
    (out / ".stillroom" / "run.json.tmp").write_bytes(b'{"fingerprint": {"half')
    return ".tmp"


@dataclass
class Case:
    damage: Callable[[Path, Path], str]
    base: str  # "partial" or "complete"
    check_cache: bool = True  # (c) holds unless the cache itself was damaged


CASES: dict[str, Case] = {
    "cache-truncated": Case(cache_truncated, "partial", check_cache=False),
    "cache-garbage": Case(cache_garbage, "partial", check_cache=False),
    "shard-deleted": Case(shard_deleted, "complete"),
    "shard-truncated": Case(shard_truncated, "complete"),
    "run-json-garbage": Case(run_json_garbage, "partial"),
    "commit-line-inserted": Case(commit_line_inserted, "partial"),
    "commit-line-replaced": Case(commit_line_replaced, "partial"),
    "tmp-debris": Case(tmp_debris, "partial"),
}


def inspect(out: Path, env: dict[str, str], workdir: Path) -> Result:
    return run_cli([STILLROOM, "inspect", str(out)], {**env, "COLUMNS": "500"}, workdir,
                   name="inspect")


def says_complete(result: Result) -> bool:
    return result.returncode == 0 and re.search(r":\s+complete\b", result.stdout) is not None


def check_inspect_not_complete(result: Result, why: str) -> None:
    """`stillroom inspect` shows the folder (exit 0) or refuses it in one line (exit 2), without
    a traceback, and does not call it complete."""
    assert "Traceback" not in result.stdout + result.stderr and result.returncode in (0, 2), (
        f"`stillroom inspect` crashed {why}: exit {result.returncode}, stderr ends: "
        f"{last_line(result.stderr)}")
    assert not says_complete(result), f"`stillroom inspect` calls the folder complete {why}"


@pytest.mark.parametrize("name", list(CASES))
def test_damaged_state(
    name: str, base: Base, fault_server: Callable[..., Server], tmp_path: Path
) -> None:
    case = CASES[name]
    out, cache = tmp_path / "out", tmp_path / "cache"
    shutil.copytree(getattr(base, case.base), out)
    shutil.copytree(getattr(base, f"{case.base}_cache"), cache)
    damaged = case.damage(out, cache)
    env = env_with(cache)
    server = fault_server(latency_ms=10)

    problems = Problems()
    attempt = problems.attempt

    attempt(lambda: check_inspect_not_complete(
        inspect(out, env, tmp_path / "logs"), f"after damage ({name}) of a {case.base} run"))
    cached = answered_prompts(cache) if case.check_cache else set()
    rerun = run_cli(complete_args(base.source, out, server.base_url, *FLUSH), env,
                    tmp_path / "logs", name="rerun")
    if rerun.returncode == 0:
        attempt(lambda: check_recovered(rerun, name, damaged))
        attempt(lambda: check_all(ROWS, out))  # never exit 0 with rows missing
        attempt(lambda: check_not_resent(server.prompts_after(0), cached))
        if name == "tmp-debris":
            left = sorted(str(p.relative_to(out)) for p in out.rglob("*.tmp"))
            attempt(lambda: _assert(not left, f"temporary debris left in the folder: {left}"))
    else:
        attempt(lambda: check_one_line_error(rerun, damaged))
        attempt(lambda: check_inspect_not_complete(
            inspect(out, env, tmp_path / "logs"), f"after a refused rerun ({name})"))
    assert not problems, " | ".join(problems) + f"\n--- the rerun: {rerun.output}"


def _assert(condition: bool, message: str) -> None:
    assert condition, message


def check_recovered(rerun: Result, name: str, damaged: str) -> None:
    assert "Traceback" not in rerun.stderr, f"a traceback on stderr\n{rerun.output}"
    assert damaged in rerun.stderr, (
        f"rerun exit 0 after damage ({name}) but stderr does not name {damaged!r} "
        f"(a silent recovery)")
