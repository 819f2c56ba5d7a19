"""Against a server that misbehaves (stillroom.testing.fault_server): a day-long Retry-After must
not stall a run, an empty answer must not be cached (a rerun asks again), retried 500s, dropped
connections and non-JSON bodies must leave every row in data/ or failed/ with a reason, and a
server that echoes the API key must not get it written anywhere."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from stillroom.testing.fault_server import Faults, fault_for
from tests.integrity_helpers import (
    STILLROOM,
    Server,
    answered_prompts,
    cache_answers,
    check_all,
    check_no_secret,
    check_not_resent,
    check_rows_once,
    complete_args,
    env_with,
    pipeline_file,
    prompt_rows,
    read_all,
    read_kind,
    run_args,
    run_cli,
    write_rows,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]



ANY_FAILURE = ["--max-failure-rate", "1"]


def test_retry_after_a_day_does_not_stall_the_run(
    fault_server: Callable[..., Server], tmp_path: Path, isolated_cache: Path
) -> None:
    """5% of prompts are always answered 429 with `Retry-After: 86400`, and the backend allows
    at most 1 s between retries: the run must end (a wait the backend would never make fails the
    request, or is cut to retry_max_delay) with exactly those rows in failed/, with a reason."""
    faults = Faults(seed=5, rate_429=0.05, retry_after="86400", sticky=True)
    server = fault_server(latency_ms=10, seed=5, rate_429=0.05, retry_after="86400", sticky=True)
    rows = prompt_rows(100)
    limited = {row["prompt"] for row in rows if fault_for(faults, row["prompt"], 0, 1) == "429"}
    assert 2 <= len(limited) <= 10, f"the seed gives {len(limited)} rate-limited prompts"
    source = tmp_path / "input.jsonl"
    write_rows(source, rows)
    pipeline = pipeline_file(tmp_path / "pipeline.yaml", source, server.base_url,
                             [{"type": "complete", "backend": "t"}],
                             backend={"retry_max_delay": 1, "max_retries": 2, "concurrency": 8})
    out = tmp_path / "out"
    result = run_cli(run_args(pipeline, out, *ANY_FAILURE, "--flush-rows", "10"),
                     env_with(isolated_cache), tmp_path / "logs", timeout=45)
    assert result.returncode == 0, result.output
    check_all(rows, out)
    failed = read_kind(out, "failed")
    assert {row["prompt"] for row in failed} == limited, (
        f"failed/ holds {sorted(r['prompt'] for r in failed)}, the server rate-limited {sorted(limited)}")
    for row in failed:
        reason = f"{row['error_type']} {row['error']}"
        assert "RateLimit" in reason or "429" in reason, f"the reason does not say 429: {reason}"


def test_empty_answers_are_not_cached(
    fault_server: Callable[..., Server], tmp_path: Path, isolated_cache: Path
) -> None:
    """20% of the first 50 requests come back with an empty answer: those rows go to failed/
    with a reason; a rerun with --overwrite, now against a healthy server, asks exactly those
    prompts again (an empty answer was never cached) and ends with every row in data/."""
    server = fault_server(latency_ms=10, seed=7, rate_empty=0.2, first_k=50)
    rows = prompt_rows(60)
    source, out = tmp_path / "input.jsonl", tmp_path / "out"
    write_rows(source, rows)
    env = env_with(isolated_cache)
    args = complete_args(source, out, server.base_url, "--concurrency", "4", *ANY_FAILURE)
    first = run_cli(args, env, tmp_path / "logs", name="first")
    assert first.returncode == 0, first.output
    emptied = sorted(e["prompt"] for e in server.entries() if e["fault"] == "empty")
    assert emptied, "the server sent no empty answer; the test proves nothing"
    check_rows_once(rows, out)
    failed = read_kind(out, "failed")
    assert sorted(row["prompt"] for row in failed) == emptied
    assert all("empty" in f"{row['error_type']} {row['error']}".lower() for row in failed), failed[:2]
    cached_empty = sorted(key for key, text in cache_answers(isolated_cache).items() if not text.strip())
    start = server.count()

    rerun = run_cli([*args, "--overwrite"], env, tmp_path / "logs", name="rerun")
    assert rerun.returncode == 0, rerun.output
    resent = sorted(server.prompts_after(start))
    assert resent == emptied, (
        f"the rerun sent {len(resent)} requests, not the {len(emptied)} that came back empty "
        f"(empty answers cached: {len(cached_empty)}): sent {resent[:5]}, expected {emptied[:5]}")
    check_all(rows, out)
    assert len(read_kind(out, "data")) == len(rows)


def test_mixed_faults_with_retries(
    fault_server: Callable[..., Server], tmp_path: Path, isolated_cache: Path
) -> None:
    """500s, dropped connections and non-JSON bodies (10% each, per attempt), three retries:
    every row ends in data/ with its own answer or in failed/ with a reason; what failed never
    got a proper answer; the cache holds only proper answers; a rerun with --overwrite asks only
    what has no answer."""
    server = fault_server(latency_ms=(5, 20), seed=11, rate_500=0.1, rate_drop=0.1,
                          rate_nonjson=0.1)
    rows = prompt_rows(100)
    source, out = tmp_path / "input.jsonl", tmp_path / "out"
    write_rows(source, rows)
    pipeline = pipeline_file(tmp_path / "pipeline.yaml", source, server.base_url,
                             [{"type": "complete", "backend": "t"}],
                             backend={"max_retries": 3, "retry_base_delay": 0.05,
                                      "retry_max_delay": 0.2, "concurrency": 8})
    env = env_with(isolated_cache)
    args = run_args(pipeline, out, *ANY_FAILURE, "--flush-rows", "10")
    result = run_cli(args, env, tmp_path / "logs", timeout=60)
    assert result.returncode == 0, result.output
    faulted = sum(1 for e in server.entries() if e["fault"])
    assert faulted >= 10, f"only {faulted} faults were injected; the test proves little"
    check_all(rows, out)
    answered = server.answered()
    kinds = read_all(out)
    for row in kinds["failed"]:
        assert not answered[row["prompt"]], (
            f"row {row['id']} is in failed/ ({row['error']}) but the server answered it properly")
    for row in kinds["data"]:
        assert answered[row["prompt"]], f"row {row['id']} is in data/ with no proper answer sent"
    texts = cache_answers(isolated_cache).values()
    bad = [text for text in texts if not text.startswith("echo: ") or not answered[text[6:]]]
    assert not bad, f"the cache holds answers the server never gave properly: {bad[:3]}"

    cached, start = answered_prompts(isolated_cache), server.count()
    rerun = run_cli([*args, "--overwrite"], env, tmp_path / "logs", name="rerun", timeout=60)
    assert rerun.returncode == 0, rerun.output
    check_not_resent(server.prompts_after(start), cached)
    check_all(rows, out)


def test_server_that_echoes_the_key(
    fault_server: Callable[..., Server], tmp_path: Path, isolated_cache: Path
) -> None:
    """A 401 whose message repeats the Authorization header it got: the key (from
    OPENAI_API_KEY) is in no file of the output folder or the cache, and in nothing printed by
    the run or by `stillroom inspect`."""
    key = "sk-itest-" + secrets.token_hex(16)
    server = fault_server(latency_ms=5, seed=3, rate_401=0.3, sticky=True)
    rows = prompt_rows(40)
    source, out = tmp_path / "input.jsonl", tmp_path / "out"
    write_rows(source, rows)
    env = env_with(isolated_cache, OPENAI_API_KEY=key)
    result = run_cli(complete_args(source, out, server.base_url, *ANY_FAILURE), env,
                     tmp_path / "logs")
    assert result.returncode == 0, result.output
    assert all(e["auth"] for e in server.entries()), "the key was not sent; the test proves nothing"
    assert any(e["fault"] == "401" for e in server.entries()), "no 401 was answered"
    failed = read_kind(out, "failed")
    assert failed and all(row["error_type"] == "AuthenticationError" for row in failed), failed[:2]
    check_all(rows, out)
    shown = run_cli([STILLROOM, "inspect", str(out), "--samples", "50"], env, tmp_path / "logs",
                    name="inspect")
    check_no_secret(key, out, isolated_cache, texts=[result.stdout, result.stderr,
                                                     shown.stdout, shown.stderr])
