"""Against llm-katan (a third-party OpenAI-compatible server) injecting faults: no row is lost,
every failure is accounted for with its reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stillroom import api
from stillroom.data.output import OutputFolder
from stillroom.llm.openai_compat import OpenAIConfig

pytestmark = pytest.mark.integration

N_ROWS = 40


@pytest.fixture(autouse=True)
def katan_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # llm-katan insists that an Authorization header is present (any value).
    monkeypatch.setenv("OPENAI_API_KEY", "katan-accepts-any-key")


def prompts(n: int = N_ROWS) -> list[dict[str, Any]]:
    return [{"id": i, "prompt": f"question number {i}"} for i in range(n)]


def run(base_url: str, out: Path, **backend: Any) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    config = OpenAIConfig(model="echo-model", base_url=base_url, retry_base_delay=0.01,
                          retry_max_delay=0.05, **backend)
    result = api.complete(prompts(), out, backend=config, progress=False, max_failure_rate=1.0)
    folder = OutputFolder(out)
    return result, folder.read_rows("data"), folder.read_rows("failed")


def assert_accounted(data: list[dict[str, Any]], failed: list[dict[str, Any]]) -> None:
    ids = [row["id"] for row in data] + [row["id"] for row in failed]
    assert sorted(ids) == list(range(N_ROWS)), "a row was lost or written twice"
    for row in data:
        assert f"User: question number {row['id']}\n" in row["completion"] + "\n"
        assert row["completion"].strip()
    for row in failed:
        assert row["error"] and row["stage"] == "complete" and row["attempts"] >= 1
        assert "completion" not in row


def test_random_server_errors(katan: Callable[..., str], tmp_path: Path) -> None:
    url = katan("--error-rate", "0.5")
    result, data, failed = run(url, tmp_path / "out", concurrency=8, max_retries=1)
    assert_accounted(data, failed)
    assert data and failed  # at 50% errors and 2 attempts, ~1 row in 4 fails
    assert {row["error_type"] for row in failed} == {"InternalServerError"}
    assert all(row["attempts"] == 2 for row in failed)
    stats = result.backends["default"]
    assert stats["errors"]["InternalServerError"] == stats["requests_sent"] - stats["responses"]
    assert result.counts["failed"] == len(failed)


def test_rate_limit_that_never_lifts(katan: Callable[..., str], tmp_path: Path) -> None:
    url = katan("--rate-limit-after", "10")
    result, data, failed = run(url, tmp_path / "out", concurrency=4, max_retries=2)
    assert_accounted(data, failed)
    assert len(data) == 10  # exactly the requests before the limit
    assert {row["error_type"] for row in failed} == {"RateLimitError"}
    assert result.failures_by_reason == {"complete: RateLimitError": N_ROWS - 10}


def test_overload_slows_the_backend_down_until_everything_succeeds(katan: Callable[..., str], tmp_path: Path) -> None:
    url = katan("--max-inflight", "3", "--latency-ms", "30")
    result, data, failed = run(url, tmp_path / "out", concurrency=16, max_retries=10)
    assert_accounted(data, failed)
    assert not failed
    stats = result.backends["default"]
    assert stats["errors"].get("InternalServerError", 0) > 0  # 503s happened...
    assert stats["retries"] > 0  # ...and were retried after slowing down


def test_latency_beyond_the_timeout_fails_with_timeouts(katan: Callable[..., str], tmp_path: Path) -> None:
    url = katan("--latency-ms", "400")
    result, data, failed = run(url, tmp_path / "out", concurrency=8, max_retries=1, timeout=0.1)
    assert_accounted(data, failed)
    assert not data
    assert {row["error_type"] for row in failed} == {"APITimeoutError"}
    assert all(row["attempts"] == 2 for row in failed)
