"""Runs interrupted at seeded random moments (SIGKILL, SIGTERM, Ctrl-C), sometimes twice, across
stage kinds, then run again to the end: every input row exactly once, each with its own answer,
nothing answered resent, nothing left running; a finished run rerun is a no-op. And the race
between the final flush and a timed commit that lost rows in a normal run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integrity_helpers import (
    STILLROOM,
    Proc,
    Server,
    answered_prompts,
    check_all,
    check_complete_folder,
    check_dedup,
    check_no_processes,
    check_not_resent,
    check_rows_once,
    commit_lines,
    commit_records,
    complete_args,
    data_snapshot,
    env_with,
    is_marked_complete,
    last_line,
    pipeline_file,
    prompt_rows,
    read_all,
    run_args,
    run_cli,
    wait_until,
    write_rows,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]



FLUSH = ["--flush-rows", "5", "--flush-seconds", "0.2"]
COMPLETE = {"type": "complete", "backend": "t"}
DEDUP = {"type": "dedup", "method": "exact", "column": "prompt"}
# A verifier on the completion: "echo: prompt N" passes, "echo: question N" fails and is dropped.
VERIFY = {"type": "verify", "kind": "regex", "options": {"pattern": r"echo: prompt \d+"},
          "drop_failed": True}
SECOND = {"type": "complete", "backend": "t", "prompt_template": "{completion}",
          "output_column": "answer2"}


def scenario_rows(kind: str) -> list[dict[str, Any]]:
    if kind == "row":
        return prompt_rows(120)
    if kind in ("finalize", "card"):
        # A column only the later rows have: early shards store it as all-null, so the end of
        # the run rewrites them to one schema, and a kill can land in the middle of that.
        rows = prompt_rows(60)
        for row in rows[40:]:
            row["tag"] = f"t{row['id']}"
        return rows
    if kind in ("dedup", "three", "stream"):
        return prompt_rows(100, distinct=80)  # ids 80..99 repeat prompts 0..19
    rows = prompt_rows(100)
    for row in rows[::7]:
        row["prompt"] = row["prompt"].replace("prompt", "question")
    return rows


STAGES = {
    "dedup": [COMPLETE, DEDUP],
    # dedup first: streamed (an index over the input file, then its decisions as the rows are
    # read again), its drops committed with the keys of the rows the next stage answers
    "stream": [DEDUP, COMPLETE],
    "verify": [COMPLETE, VERIFY],
    "three": [COMPLETE, DEDUP, SECOND],
}
ANSWERS = {"three": {"completion": "prompt", "answer2": "completion"}}


def command(kind: str, tmp_path: Path, server: Server, rows: list[dict[str, Any]]) -> list[str]:
    source, out = tmp_path / "input.jsonl", tmp_path / "out"
    write_rows(source, rows)
    if kind in ("row", "finalize", "card"):
        return complete_args(source, out, server.base_url, "--concurrency", "4", *FLUSH)
    pipeline = pipeline_file(tmp_path / "pipeline.yaml", source, server.base_url, STAGES[kind],
                             backend={"concurrency": 4})
    return run_args(pipeline, out, *FLUSH)


def committed_keys(out: Path) -> int:
    return sum(len(record.get("keys", [])) for record in commit_records(out))


def kill_point(kind: str, rng: random.Random, out: Path, server: Server, start_count: int,
               total: int) -> tuple[Callable[[], bool], str, float]:
    """A seeded random moment to interrupt a run of ``kind`` (a condition, what it is, and a
    delay after it): after some commits of the stage that is running; inside a stage that
    commits only at its end (before an all-rows stage), after some requests; or, for
    ``finalize``, 0-80 ms after the last row was committed, while shards are rewritten to one
    schema and the card is written; for ``card``, as soon as README.md appears."""
    if kind in ("row", "verify", "stream"):
        lines = commit_lines(out) + rng.randint(1, 8)
        return (lambda: commit_lines(out) >= lines), f"{lines} commit lines", 0.0
    if kind == "finalize":
        return (lambda: committed_keys(out) >= total), "every row committed", rng.uniform(0, 0.08)
    if kind == "card":  # the moment the card appears, before or after the completion record
        return (lambda: (out / "README.md").exists()), "README.md written", 0.0
    if kind == "dedup":
        requests = start_count + rng.randint(5, 60)
        return (lambda: server.count() >= requests), f"{requests} requests", 0.0
    # three: in the LAST stage, after the dedup's checkpoint and some commits of the last segment
    lines = commit_lines(out, segment_at_least=1) + rng.randint(1, 6)
    return ((lambda: commit_lines(out, segment_at_least=1) >= lines),
            f"{lines} last-stage commits", 0.0)


CASES = [
    ("row", signal.SIGKILL, 11, 1),
    ("row", signal.SIGINT, 13, 2),
    ("finalize", signal.SIGKILL, 15, 2),
    ("card", signal.SIGKILL, 16, 1),
    ("dedup", signal.SIGKILL, 21, 1),
    ("dedup", signal.SIGINT, 22, 2),
    ("stream", signal.SIGKILL, 51, 2),
    ("stream", signal.SIGTERM, 52, 1),
    ("verify", signal.SIGTERM, 31, 1),
    ("verify", signal.SIGKILL, 32, 2),
    ("three", signal.SIGKILL, 41, 2),
    ("three", signal.SIGTERM, 42, 1),
]


@pytest.mark.parametrize(("kind", "sig", "seed", "kills"), CASES,
                         ids=[f"{k}-{s.name}-seed{n}-x{c}" for k, s, n, c in CASES])
def test_interrupted_then_resumed(
    kind: str, sig: signal.Signals, seed: int, kills: int,
    fault_server: Callable[..., Server], tmp_path: Path, isolated_cache: Path,
) -> None:
    """Start the run, interrupt it with ``sig`` at a seeded random moment (``kills`` times, each
    a new session resuming the last), then run it to the end and once more: after each session
    nothing answered before it was asked again and nothing of it is left running; a session
    that ends marked complete is whole; the end holds every row once with its own answer; the
    last rerun changes nothing and sends nothing."""
    rng = random.Random(seed)
    server = fault_server(latency_ms=(20, 50), seed=seed)
    rows = scenario_rows(kind)
    args = command(kind, tmp_path, server, rows)
    out, env = tmp_path / "out", env_with(isolated_cache)

    cached, start = set(), 0  # what the cache held before each session; where its requests begin
    for attempt in range(kills):
        proc = Proc(args, env, tmp_path / "logs", name=f"killed-{attempt}").start()
        condition, what, delay = kill_point(kind, rng, out, server, server.count(), len(rows))
        # The card appears a few milliseconds before the completion record: look closely.
        reached = wait_until(condition, proc, what=what, interval=0.001 if kind == "card" else 0.01)
        time.sleep(delay)
        signalled = reached and proc.signal(sig)
        result = proc.result()
        check_no_processes(result.pgid)  # (e)
        check_not_resent(server.prompts_after(start), cached)  # (c)
        if result.returncode == 0 or is_marked_complete(out):
            # It finished (or was marked complete just before the signal): it must be whole.
            check_all(rows, out, answers=ANSWERS.get(kind), card_required=result.returncode == 0)
        else:
            assert signalled, f"the run failed on its own\n{result.output}"
            assert not (out / "README.md").exists(), (
                "an interrupted run has a card: README.md without .stillroom/complete.json "
                "(the README promises an interrupted run has neither)")
            if sig == signal.SIGINT:
                assert result.returncode == 130, result.output
                assert "Traceback" not in result.stderr, result.output
        cached, start = answered_prompts(isolated_cache), server.count()

    rerun = run_cli(args, env, tmp_path / "logs", name="rerun")
    assert rerun.returncode == 0, rerun.output
    check_all(rows, out, answers=ANSWERS.get(kind))
    if kind in ("dedup", "three", "stream"):
        check_dedup(rows, out)
    check_not_resent(server.prompts_after(start), cached)

    # A finished run, rerun, is a no-op: the same rows, no request, exit 0.
    before, sent = data_snapshot(out), server.count()
    again = run_cli(args, env, tmp_path / "logs", name="no-op")
    assert again.returncode == 0, again.output
    assert server.count() == sent, f"a rerun of a finished run sent {server.count() - sent} requests"
    after = data_snapshot(out)
    assert after == before, (f"a rerun of a finished run changed the folder: "
                             f"{ {k: len(v) for k, v in before.items()} } -> "
                             f"{ {k: len(v) for k, v in after.items()} }")
    check_all(rows, out, answers=ANSWERS.get(kind))


def test_finished_dedup_pipeline_rerun_does_not_double_rows(
    fault_server: Callable[..., Server], tmp_path: Path, isolated_cache: Path
) -> None:
    """Reported: a finished complete -> dedup run, rerun into its folder, went from 140 rows to
    280. A second rerun is there in case the first one only half-did it."""
    server = fault_server(latency_ms=5)
    rows = prompt_rows(150, distinct=140)
    args = command("dedup", tmp_path, server, rows)
    out, env = tmp_path / "out", env_with(isolated_cache)
    first = run_cli(args, env, tmp_path / "logs")
    assert first.returncode == 0, first.output
    check_all(rows, out)
    assert len(read_all(out)["data"]) == 140
    for rerun in range(2):
        again = run_cli(args, env, tmp_path / "logs", name=f"rerun-{rerun}")
        assert again.returncode == 0, again.output
        counts = {kind: len(kind_rows) for kind, kind_rows in read_all(out).items()}
        assert counts == {"data": 140, "failed": 0, "dropped": 10}, f"rerun {rerun + 1}: {counts}"
        check_all(rows, out)


def test_a_streamed_dedup_killed_between_its_chunks_resumes_without_loss(
    tmp_path: Path, isolated_cache: Path
) -> None:
    """`stillroom dedup` on more rows than one commit holds (chunks of 50,000), SIGKILLed right
    after its first chunk's commit, then run again: each row once, the duplicates dropped, and
    the rerun decides only the chunks not committed."""
    rows = prompt_rows(120_000, distinct=100_000)
    source, out = tmp_path / "input.jsonl", tmp_path / "out"
    write_rows(source, rows)
    args = [STILLROOM, "dedup", str(source), "-o", str(out), "--method", "exact",
            "--column", "prompt", "--no-progress"]
    env = env_with(isolated_cache)
    proc = Proc(args, env, tmp_path / "logs", name="killed").start()
    reached = wait_until(lambda: commit_lines(out) >= 1, proc, what="the first chunk committed",
                         interval=0.001, timeout=90)
    assert reached and proc.signal(signal.SIGKILL), "the run ended before its first commit"
    proc.result()
    assert commit_lines(out) < 3, "all chunks were committed before the kill: no resume tested"
    rerun = run_cli(args, env, tmp_path / "logs", name="rerun")
    assert rerun.returncode == 0, rerun.output
    keys = [key for record in commit_records(out) for key in record.get("keys", [])]
    assert sorted(keys) == ["c0", "c1", "c2"], keys
    assert is_marked_complete(out)
    check_rows_once(rows, out)
    check_complete_folder(out)
    check_dedup(rows, out)
    assert len(read_all(out)["dropped"]) == 20_000


@contextlib.contextmanager
def slow_disk(folder: Path) -> Iterator[None]:
    """Keep the disk's journal busy (8 MiB written and fsynced, over and over), so every fsync of
    a commit takes milliseconds instead of microseconds: the window in which a timed commit is
    still running when the last row arrives grows from rare to common."""
    stop = threading.Event()

    def churn() -> None:
        block = os.urandom(1 << 20)
        with open(folder / "slow-disk.bin", "wb") as handle:
            while not stop.is_set():
                handle.seek(0)
                for _ in range(8):
                    handle.write(block)
                handle.flush()
                os.fsync(handle.fileno())

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        (folder / "slow-disk.bin").unlink(missing_ok=True)


# Many short runs, one after another in one process (the race needs many run endings; a CLI
# start per ending would cost a second of CPU each). Prints one JSON line per run.
RACE_DRIVER = """
import json, sys, traceback
from stillroom import api
source, root, url, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
flushes = [float(f) for f in sys.argv[5].split(",")]
config = api.backend_config("echo", base_url=url, concurrency=1)
for index in range(runs):
    flush = flushes[index % len(flushes)]
    out, cache = f"{root}/out-{index}", f"{root}/cache-{index}"
    try:
        api.complete(source, out, backend=config, cache_dir=cache, progress=False,
                     flush_seconds=flush, diversity_embeddings=False)
        error = None
    except BaseException as exc:
        error = traceback.format_exception_only(exc)[-1].strip()
    print(json.dumps({"out": out, "flush": flush, "error": error}), flush=True)
"""
DRIVERS, DRIVER_RUNS = 2, 25


def test_final_flush_races_a_timed_commit(
    fault_server: Callable[..., Server], tmp_path: Path, isolated_cache: Path
) -> None:
    """Reported: rows lost in a normal run when the final flush and a timed commit overlap
    (intermittent). As reported: `stillroom complete` of 40 rows at --concurrency 1 against a
    server answering in 250 ms, --flush-seconds 0.25 (the latency), 0.5 and the default (40 x
    250 ms is the default's 10 s). Beside them, to make the intermittent certain: 50 runs of 12
    rows at concurrency 1, rows every 5-30 ms and a timed commit due every 20-40 ms, on a disk
    kept busy. Exit 0 must mean every row in data/ and a complete card; no run may crash."""
    slow, fast = fault_server(latency_ms=250), fault_server(latency_ms=(5, 30))
    rows, short = prompt_rows(40), prompt_rows(12)
    source, short_source = tmp_path / "input.jsonl", tmp_path / "short.jsonl"
    write_rows(source, rows)
    write_rows(short_source, short)
    procs = []
    with slow_disk(tmp_path):
        for index, flush in enumerate(["0.25", "0.25", "0.5", None]):
            out = tmp_path / f"out-{index}"
            extra = ["--concurrency", "1", *(["--flush-seconds", flush] if flush else [])]
            procs.append((out, f"40 rows, --flush-seconds {flush or 'default'}", Proc(
                complete_args(source, out, slow.base_url, *extra),
                env_with(tmp_path / f"cache-{index}"), tmp_path / "logs", name=f"race-{index}",
            ).start()))
        drivers = []
        for index in range(DRIVERS):
            root = tmp_path / f"driver-{index}"
            root.mkdir()
            args = [sys.executable, "-c", RACE_DRIVER, str(short_source), str(root),
                    fast.base_url, str(DRIVER_RUNS), "0.02,0.03,0.04"]
            drivers.append(Proc(args, env_with(isolated_cache), tmp_path / "logs",
                                name=f"driver-{index}").start())
        results = [(out, what, proc.result()) for out, what, proc in procs]
        driven = [proc.result(timeout=150) for proc in drivers]
    problems = []
    for out, what, result in results:
        check_no_processes(result.pgid)
        if result.returncode != 0:
            problems.append(f"{what}: exit {result.returncode}: {last_line(result.stderr)}")
            continue
        try:
            check_all(rows, out)
        except AssertionError as error:
            problems.append(f"{what}: exit 0 but {str(error).splitlines()[0]}")
    ended = 0
    for result in driven:
        check_no_processes(result.pgid)
        for line in result.stdout.splitlines():
            run = json.loads(line)
            ended += 1
            what = f"12 rows, flush_seconds {run['flush']} ({Path(run['out']).parent.name})"
            if run["error"]:
                problems.append(f"{what}: raised {run['error']}")
                continue
            try:
                check_all(short, Path(run["out"]))
            except AssertionError as error:
                problems.append(f"{what}: returned but {str(error).splitlines()[0]}")
    assert ended == DRIVERS * DRIVER_RUNS, f"only {ended} short runs ended\n" + "\n".join(
        r.output for r in driven)
    assert not problems, f"{len(problems)} of {4 + ended} runs: " + "; ".join(problems[:6])
