"""A run killed with SIGKILL (or stopped with Ctrl-C) and started again: every row exactly once,
each with its own answer, and no answered request sent twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stillroom.data.output import OutputFolder

pytestmark = pytest.mark.integration

N_ROWS = 240


def write_prompts(path: Path, n: int = N_ROWS) -> None:
    path.write_text("".join(json.dumps({"id": i, "prompt": f"prompt {i}"}) + "\n" for i in range(n)))


def command(source: Path, out: Path, base_url: str) -> list[str]:
    stillroom = str(Path(sys.executable).with_name("stillroom"))
    return [stillroom, "complete", str(source), "-o", str(out), "--base-url", base_url,
            "--model", "echo", "--concurrency", "8", "--flush-rows", "10", "--no-progress"]


def committed_lines(out: Path) -> int:
    log = out / ".stillroom" / "commits.jsonl"
    return log.read_text().count("\n") if log.exists() else 0


def answered_prompts(cache_dir: Path) -> set[str]:
    with sqlite3.connect(cache_dir / "requests.sqlite") as db:
        return {json.loads(value)["text"].removeprefix("echo: ") for (value,) in db.execute("SELECT value FROM responses")}


def sent_after(log: Path, moment: float) -> list[str]:
    prompts = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry["t"] > moment:
            prompts.append(entry["body"]["messages"][-1]["content"])
    return prompts


def wait_for_commits(out: Path, process: subprocess.Popen[bytes], count: int) -> None:
    deadline = time.monotonic() + 60
    while committed_lines(out) < count:
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def check_output(out: Path) -> None:
    folder = OutputFolder(out)
    rows = folder.read_rows("data")
    assert sorted(row["id"] for row in rows) == list(range(N_ROWS))  # each row exactly once
    for row in rows:
        assert row["completion"] == f"echo: {row['prompt']}"  # its own answer
    assert folder.count("failed") == 0 and folder.is_complete()


def test_kill_9_then_resume(echo_server: Callable[..., tuple[str, Path]], tmp_path: Path, isolated_cache: Path) -> None:
    base_url, requests_log = echo_server(latency_ms=60)
    source, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    write_prompts(source)
    process = subprocess.Popen(command(source, out, base_url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_commits(out, process, 3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = time.time()
    answered = answered_prompts(isolated_cache)
    committed = len(OutputFolder(out).read_rows("data"))
    assert not (out / "README.md").exists()  # a killed run does not look finished
    assert 0 < committed < N_ROWS and len(answered) >= committed

    rerun = subprocess.run(command(source, out, base_url), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    check_output(out)
    resent = set(sent_after(requests_log, killed_at)) & answered
    assert not resent, f"answered requests were sent again: {sorted(resent)[:5]}"
    # Everything not answered before the kill was asked exactly once after it.
    after = sent_after(requests_log, killed_at)
    assert sorted(after) == sorted({f"prompt {i}" for i in range(N_ROWS)} - answered)


def test_ctrl_c_commits_what_finished_and_says_how_to_resume(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    base_url, _ = echo_server(latency_ms=60)
    source, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    write_prompts(source)
    process = subprocess.Popen(command(source, out, base_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_commits(out, process, 2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stdout + stderr
    assert "run the same command again to resume" in " ".join(stderr.split())
    assert not (out / "README.md").exists()
    sessions = OutputFolder(out).read_sessions()
    assert sessions[-1]["status"] == "interrupted"
    rerun = subprocess.run(command(source, out, base_url), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    check_output(out)
    assert os.path.exists(out / "report.html")
