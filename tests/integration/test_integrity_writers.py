"""One output folder, one writer: a second process on the same folder is refused before it sends
anything, and a lock left by a killed run is taken over, saying so."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integrity_helpers import (
    Problems,
    Proc,
    Server,
    answered_prompts,
    check_all,
    check_no_processes,
    check_not_resent,
    commit_lines,
    complete_args,
    env_with,
    prompt_rows,
    run_cli,
    wait_until,
    write_rows,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]



FLUSH = ["--flush-rows", "5", "--concurrency", "2"]


@pytest.mark.parametrize(("seed", "overwrite"), [(1, False), (2, True)],
                         ids=["plain", "second-with-overwrite"])
def test_second_writer_is_refused(
    seed: int, overwrite: bool, fault_server: Callable[..., Server], tmp_path: Path, isolated_cache: Path
) -> None:
    """Two `stillroom complete` on one folder, started 0.5-1.5 s apart. Each talks to its own
    server (the URL is not part of the run's identity, so both are the same run), which tells
    whose requests were whose: exactly one runs, the other exits 2 naming the folder or its lock
    and sends nothing (with --overwrite too: it must not clear the folder under the first);
    every row is written once and no answer is paid for twice."""
    rng = random.Random(seed)
    first_server, second_server = fault_server(latency_ms=50), fault_server(latency_ms=50)
    rows = prompt_rows(120)
    source, out = tmp_path / "input.jsonl", tmp_path / "out"
    write_rows(source, rows)
    env = env_with(isolated_cache)
    first = Proc(complete_args(source, out, first_server.base_url, *FLUSH), env, tmp_path / "logs",
                 name="first").start()
    time.sleep(rng.uniform(0.5, 1.5))
    assert first.running(), "the first run ended before the second began; the test proves nothing"
    extra = ["--overwrite"] if overwrite else []
    second = Proc(complete_args(source, out, second_server.base_url, *FLUSH, *extra), env,
                  tmp_path / "logs", name="second").start()
    results = {"first": first.result(), "second": second.result()}
    for result in results.values():
        check_no_processes(result.pgid)
    codes = {name: result.returncode for name, result in results.items()}
    problems = Problems()
    attempt = problems.attempt

    if sorted(codes.values()) != [0, 2]:
        problems.append(f"exit codes {codes}: exactly one writer must run, the other be refused")
    else:
        refused = "first" if codes["first"] == 2 else "second"
        result = results[refused]
        refused_server = first_server if refused == "first" else second_server
        if "Traceback" in result.stderr:
            problems.append(f"the refused {refused} run printed a traceback")
        if str(out) not in result.stderr and "lock" not in result.stderr.lower():
            problems.append(f"the refusal names neither the folder nor its lock: {result.stderr!r}")
        if refused_server.count():
            problems.append(f"the refused {refused} run sent {refused_server.count()} requests")
    attempt(lambda: check_all(rows, out))
    paid = first_server.answered() + second_server.answered()
    twice = sorted(prompt for prompt, count in paid.items() if count > 1)
    if twice:
        problems.append(f"{len(twice)} answers paid for twice: {twice[:3]}")
    assert not problems, " | ".join(problems) + "\n" + "\n".join(
        f"[{name}] {result.output}" for name, result in results.items())


def test_lock_of_a_killed_run_is_taken_over(
    fault_server: Callable[..., Server], tmp_path: Path, isolated_cache: Path
) -> None:
    """A run SIGKILLed mid-way leaves its lock behind, naming its pid; the next run takes it
    over, says so on stderr, and finishes the job."""
    server = fault_server(latency_ms=40)
    rows = prompt_rows(100)
    source, out = tmp_path / "input.jsonl", tmp_path / "out"
    write_rows(source, rows)
    env = env_with(isolated_cache)
    args = complete_args(source, out, server.base_url, *FLUSH)
    killed = Proc(args, env, tmp_path / "logs", name="killed").start()
    assert wait_until(lambda: commit_lines(out) >= 2, killed, what="2 commits"), "ended too soon"
    killed.signal(signal.SIGKILL)
    check_no_processes(killed.result().pgid)
    locks = [p for p in out.rglob("*") if p.is_file() and "lock" in p.name.lower()]
    assert locks, f"no lock file in {out} after a run was killed mid-way"
    assert any(str(killed.pid) in p.read_text(errors="replace") for p in locks), (
        f"no lock file names the killed run's pid {killed.pid}: "
        f"{ {str(p): p.read_text(errors='replace')[:200] for p in locks} }")
    cached, start = answered_prompts(isolated_cache), server.count()

    rerun = run_cli(args, env, tmp_path / "logs", name="rerun")
    assert rerun.returncode == 0, rerun.output
    assert "lock" in rerun.stderr.lower(), f"the takeover of a stale lock was not reported\n{rerun.output}"
    assert "Traceback" not in rerun.stderr, rerun.output
    check_all(rows, out)
    check_not_resent(server.prompts_after(start), cached)
