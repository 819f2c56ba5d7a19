"""The Anthropic backend against llm-katan's Messages API (a third-party server, echo backend).

katan's echo answer reads ``[echo] model=... messages=N max_tokens=M ...\\nUser: <last user message>``,
so each test can tell what the server received.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from stillroom import api
from stillroom.llm import AnthropicConfig, LLMClient
from stillroom.llm.types import Completion, GenerationParams, Request, RequestFailed

pytestmark = pytest.mark.integration

KEY = "sk-ant-test-key-4d1b"
MODEL = "claude-echo"


@pytest.fixture
def anthropic_server(
    katan: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., str]:
    """Start katan with its Anthropic routes; returns the server root the SDK expects."""
    # katan's anthropic provider refuses requests without an x-api-key header.
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)

    def start(*flags: str) -> str:
        # katan serves /v1/messages; the SDK appends /v1/messages to its base URL itself.
        return katan(*flags, providers="openai,anthropic").removesuffix("/v1")

    return start


def client_for(base_url: str, **options: float) -> LLMClient:
    config = AnthropicConfig(model=MODEL, base_url=base_url)
    return LLMClient(config.build(), **options)  # type: ignore[arg-type]


def ask(question: str, *, system: str | None = None, **params: object) -> Request:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    return Request(messages=messages, params=GenerationParams(**params))  # type: ignore[arg-type]


async def test_echo_comes_back_with_usage(anthropic_server: Callable[..., str]) -> None:
    client = client_for(anthropic_server())
    try:
        questions = [f"What is {i} + {i}?" for i in range(4)]
        completions = await asyncio.gather(
            *(client.generate(ask(q, system="Answer briefly.")) for q in questions)
        )
        for question, completion in zip(questions, completions, strict=True):
            assert f"User: {question}" in completion.text
            # The system prompt arrived as the `system` parameter (katan counts it as one
            # message), and the default max_tokens was sent.
            assert "messages=2" in completion.text
            assert "max_tokens=1024" in completion.text
            assert completion.finish_reason == "stop"
            assert completion.model == MODEL
            assert completion.prompt_tokens > 0 and completion.completion_tokens > 0
        stats = client.stats
        assert stats.responses == 4 and stats.retries == 0
        assert stats.prompt_tokens == sum(c.prompt_tokens for c in completions)
        assert stats.completion_tokens == sum(c.completion_tokens for c in completions)
        explicit = await client.generate(ask("Hi", max_tokens=7, temperature=0.2))
        assert "max_tokens=7" in explicit.text and "temperature=0.2" in explicit.text
    finally:
        await client.aclose()


async def test_half_the_requests_failing_are_retried(anthropic_server: Callable[..., str]) -> None:
    client = client_for(
        anthropic_server("--error-rate", "0.5"), retry_base_delay=0.01, retry_max_delay=0.05
    )
    try:
        questions = [f"question {i}" for i in range(20)]
        results = await asyncio.gather(
            *(client.generate(ask(q)) for q in questions), return_exceptions=True
        )
    finally:
        await client.aclose()
    answered = 0
    for question, result in zip(questions, results, strict=True):
        if isinstance(result, Completion):
            assert f"User: {question}" in result.text
            answered += 1
        else:
            # Seven 500s in a row (p = 0.5**7 per request) end as a failure after every retry.
            assert isinstance(result, RequestFailed), result
            assert result.kind == "InternalServerError"
            assert result.attempts == client.max_retries + 1
    assert answered >= 15
    assert client.stats.retries > 0
    assert client.stats.errors["InternalServerError"] == client.stats.retries + (20 - answered)


async def test_rate_limit_is_retried_then_reported(anthropic_server: Callable[..., str]) -> None:
    client = client_for(
        anthropic_server("--rate-limit-after", "1"), max_retries=2, retry_base_delay=0.01
    )
    try:
        first = await client.generate(ask("first"))
        assert "User: first" in first.text
        with pytest.raises(RequestFailed) as failed:
            await client.generate(ask("second"))
    finally:
        await client.aclose()
    assert failed.value.kind == "RateLimitError"
    assert failed.value.attempts == 3


async def test_a_rejected_key_fails_at_once(
    anthropic_server: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = anthropic_server("--validate-keys")  # katan then accepts only its own default key
    monkeypatch.setenv("ANTHROPIC_API_KEY", "not-the-right-key")
    client = client_for(url, retry_base_delay=0.01)
    try:
        with pytest.raises(RequestFailed) as failed:
            await client.generate(ask("Hi"))
    finally:
        await client.aclose()
    assert failed.value.kind == "AuthenticationError"
    assert failed.value.attempts == 1  # a 401 is not worth retrying


def test_complete_writes_the_echo_of_every_prompt(
    anthropic_server: Callable[..., str], tmp_path: Path, isolated_cache: Path
) -> None:
    url = anthropic_server()
    rows = [{"id": i, "prompt": f"Name a fruit, number {i}."} for i in range(5)]
    out = tmp_path / "out"
    result = api.complete(
        rows,
        out,
        backend=AnthropicConfig(model=MODEL, base_url=url, retry_base_delay=0.01),
        max_tokens=64,
        progress=False,
    )
    assert result.counts.get("data") == 5
    table = ds.dataset(out / "data").to_table()
    by_id = dict(zip(table["id"].to_pylist(), table["completion"].to_pylist(), strict=True))
    assert sorted(by_id) == list(range(5))
    for row in rows:
        assert f"User: {row['prompt']}" in by_id[row["id"]]
        assert "max_tokens=64" in by_id[row["id"]]
    # The key was only ever in a header: nothing written on disk holds it.
    for folder in (out, isolated_cache):
        for path in folder.rglob("*"):
            if path.is_file():
                assert KEY.encode() not in path.read_bytes(), path
