"""A run killed with SIGKILL (or stopped with Ctrl-C) and started again: every row exactly once,
each with its own answer, and no answered request sent twice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
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


@pytest.mark.timeout(300)
def test_kill_9_of_a_ray_run_then_resume(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path, isolated_cache: Path
) -> None:
    """The driver of a Ray run killed mid-run; a rerun on the same cluster finishes the job with
    every row once, asking only what the first session had no answer for."""
    ray = pytest.importorskip("ray")
    base_url, requests_log = echo_server(latency_ms=60)
    source, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    write_prompts(source)
    # The cluster outlives the killed driver (as a real one would); this test owns and stops it.
    # A short temp dir: Ray's unix socket paths under it must stay within 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="sr-ray-", dir="/tmp")
    context = ray.init(num_cpus=2, _temp_dir=temp_dir, include_dashboard=False,
                       log_to_driver=False)
    try:
        ray_command = [*command(source, out, base_url), "--executor", "ray", "--workers", "2",
                       "--address", context.address_info["gcs_address"]]
        process = subprocess.Popen(ray_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for_commits(out, process, 3)
        process.send_signal(signal.SIGKILL)
        process.wait()
        # The killed driver's workers die with its job; wait until no request arrives any more.
        size, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 1.5:
            assert time.monotonic() - quiet_since < 60
            if requests_log.stat().st_size != size:
                size, quiet_since = requests_log.stat().st_size, time.monotonic()
            time.sleep(0.1)
        answered = answered_prompts(isolated_cache)
        committed = len(OutputFolder(out).read_rows("data"))
        assert not (out / "README.md").exists()
        assert 0 < committed < N_ROWS and len(answered) >= committed

        rerun_at = time.time()
        rerun = subprocess.run(ray_command, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        check_output(out)
        after = sent_after(requests_log, rerun_at)
        assert not set(after) & answered, "answered requests were sent again"
        assert sorted(after) == sorted({f"prompt {i}" for i in range(N_ROWS)} - answered)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_sigterm_stops_a_run_started_with_sigint_ignored(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    # A background job of a shell script starts with SIGINT ignored; SIGTERM, sent on as SIGINT,
    # must still stop the run cleanly (committing what finished), not be dropped.
    base_url, _ = echo_server(latency_ms=60)
    source, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    write_prompts(source)
    process = subprocess.Popen(
        command(source, out, base_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    wait_for_commits(out, process, 2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stdout + stderr
    assert OutputFolder(out).read_sessions()[-1]["status"] == "interrupted"
    rerun = subprocess.run(command(source, out, base_url), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    check_output(out)
