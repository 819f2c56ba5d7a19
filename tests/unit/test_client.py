"""LLMClient: cache, retries, backoff, overload handling, timeouts, structured output."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from stillroom.llm.cache import RequestCache, request_key
from stillroom.llm.client import LLMClient
from stillroom.llm.types import BackendError, GenerationParams, Request, RequestFailed
from tests.fakes import ScriptedBackend, server_error


def ask(text: str = "hi", sample: int = 0, **params: Any) -> Request:
    return Request(messages=[{"role": "user", "content": text}], params=GenerationParams(**params), sample=sample)


def client(backend: ScriptedBackend, **kwargs: Any) -> LLMClient:
    kwargs.setdefault("retry_base_delay", 0.001)
    kwargs.setdefault("retry_max_delay", 0.01)
    return LLMClient(backend, **kwargs)


async def test_retryable_errors_are_retried_until_success() -> None:
    def script(request: Request, attempt: int) -> str:
        if attempt < 3:
            raise server_error(502)
        return "finally"

    backend = ScriptedBackend(script)
    llm = client(backend, max_retries=5)
    completion = await llm.generate(ask())
    assert completion.text == "finally"
    assert llm.stats.requests_sent == 3 and llm.stats.retries == 2
    assert llm.stats.errors == {"InternalServerError": 2}


async def test_retries_run_out_into_request_failed_with_attempts() -> None:
    backend = ScriptedBackend(lambda r, a: (_ for _ in ()).throw(server_error(500)))
    llm = client(backend, max_retries=3)
    with pytest.raises(RequestFailed) as failure:
        await llm.generate(ask())
    assert failure.value.attempts == 4 and failure.value.kind == "InternalServerError"
    assert llm.stats.failed_requests == 1


async def test_client_errors_are_not_retried() -> None:
    backend = ScriptedBackend(lambda r, a: (_ for _ in ()).throw(
        BackendError("bad request", kind="BadRequestError", status=400)))
    with pytest.raises(RequestFailed) as failure:
        await client(backend, max_retries=5).generate(ask())
    assert failure.value.attempts == 1


async def test_a_bug_in_a_backend_is_reported_not_retried() -> None:
    backend = ScriptedBackend(lambda r, a: {}["missing"])
    with pytest.raises(RequestFailed) as failure:
        await client(backend).generate(ask())
    assert failure.value.kind == "BackendCrash" and "KeyError" in str(failure.value)


async def test_a_slow_attempt_times_out_and_is_retried() -> None:
    calls = 0

    class SlowOnce(ScriptedBackend):
        async def generate(self, request: Request):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.sleep(5)
            return await super().generate(request)

    llm = client(SlowOnce(), timeout=0.05, max_retries=2)
    started = time.monotonic()
    completion = await llm.generate(ask())
    assert completion.text.startswith("answer to hi")
    assert time.monotonic() - started < 2
    assert llm.stats.errors == {"APITimeoutError": 1}


async def test_retry_after_is_honoured() -> None:
    def script(request: Request, attempt: int) -> str:
        if attempt == 1:
            raise server_error(429, retry_after=0.3)
        return "ok"

    llm = client(ScriptedBackend(script), max_retries=2, retry_max_delay=1.0)
    started = time.monotonic()
    await llm.generate(ask())
    assert time.monotonic() - started >= 0.3


async def test_a_retry_after_beyond_the_longest_delay_fails_the_request_not_the_run() -> None:
    # One `Retry-After: 86400` must neither stall the row for a day nor pause the backend: the
    # request fails at once with the reason, and other requests go out as before.
    def script(request: Request, attempt: int) -> str:
        if request.messages[-1]["content"] == "slow":  # type: ignore[index]
            raise server_error(429, retry_after=86400)
        return "ok"

    llm = client(ScriptedBackend(script), max_retries=5, retry_max_delay=0.05)
    with pytest.raises(RequestFailed) as failure:
        await asyncio.wait_for(llm.generate(ask("slow")), timeout=5)
    assert "86400" in str(failure.value) and "retry_max_delay" in str(failure.value)
    assert failure.value.attempts == 1
    started = time.monotonic()
    assert (await asyncio.wait_for(llm.generate(ask("fine")), timeout=5)).text == "ok"
    assert llm.limiter.paused_for <= 0.05 and time.monotonic() - started < 5


async def test_an_empty_answer_is_not_cached(tmp_path: Path) -> None:
    # A rerun must ask again: an empty text is a failure of the row, not an answer to keep.
    answers = iter(["", "now an answer"])
    backend = ScriptedBackend(lambda request, attempt: next(answers))
    cache = RequestCache(tmp_path / "cache.sqlite")
    llm = client(backend, cache=cache)
    assert (await llm.generate(ask("q"))).text == ""
    again = await llm.generate(ask("q"))
    assert again.text == "now an answer" and not again.cached
    assert (await llm.generate(ask("q"))).cached  # a real answer is cached as before
    assert len(backend.calls) == 2
    cache.close()


async def test_overload_halves_the_concurrency_limit() -> None:
    def script(request: Request, attempt: int) -> str:
        if attempt == 1:
            raise server_error(503)
        return "ok"

    backend = ScriptedBackend(script, latency=0.01)
    llm = client(backend, concurrency=8, max_retries=3)
    await asyncio.gather(*(llm.generate(ask(str(i))) for i in range(8)))
    assert llm.limiter.limit < 8
    assert backend.max_in_flight <= 8


async def test_concurrency_is_bounded() -> None:
    backend = ScriptedBackend(latency=0.01)
    llm = client(backend, concurrency=3)
    await asyncio.gather(*(llm.generate(ask(str(i))) for i in range(20)))
    assert backend.max_in_flight == 3


async def test_cached_answers_are_not_asked_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = RequestCache(tmp_path / "c.sqlite")
    backend = ScriptedBackend()
    first = client(backend, cache=cache)
    a = await first.generate(ask("x"))
    b = await first.generate(ask("x"))
    c = await first.generate(ask("x", sample=1))
    assert len(backend.calls) == 2
    assert b.cached and not a.cached and a.text == b.text and c.text != a.text
    assert first.stats.cache_hits == 1
    # A new client (a new process, after a crash) finds the same answers once written, which the
    # writer thread does within moments of their arrival.
    for _ in range(200):
        if len(RequestCache(tmp_path / "c.sqlite")) == 2:
            break
        await asyncio.sleep(0.005)
    again = client(ScriptedBackend(), cache=RequestCache(tmp_path / "c.sqlite"))
    assert (await again.generate(ask("x"))).cached


def test_cache_key_depends_on_what_was_asked_only() -> None:
    identity = {"backend": "openai", "model": "m"}
    base = request_key(identity, ask("x", temperature=0.5))
    assert base == request_key(dict(identity), ask("x", temperature=0.5))
    assert base != request_key(identity, ask("x", temperature=0.6))
    assert base != request_key(identity, ask("x", temperature=0.5, sample=1))
    assert base != request_key({"backend": "openai", "model": "n"}, ask("x", temperature=0.5))
    assert base != request_key(identity, ask("y", temperature=0.5))


async def test_structured_output_is_validated_and_reasked() -> None:
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}

    def script(request: Request, attempt: int) -> str:
        if len(request.messages) == 1:
            return "I think it deserves a 4"
        assert "could not be used" in request.messages[-1]["content"]
        return 'Sure: ```json\n{"score": 4}\n```'

    llm = client(ScriptedBackend(script))
    completion = await llm.generate(ask(json_schema=schema))
    assert completion.parsed == {"score": 4}


async def test_structured_output_that_never_parses_fails_with_the_raw_text() -> None:
    schema = {"type": "object", "required": ["score"]}
    llm = client(ScriptedBackend(lambda r, a: "no json here"), max_reasks=1)
    with pytest.raises(RequestFailed) as failure:
        await llm.generate(ask(json_schema=schema))
    assert failure.value.kind == "InvalidStructuredOutput"
    assert "no json here" in str(failure.value)


def test_extra_body_and_the_structured_mode_are_part_of_the_cache_key() -> None:
    # Two requests that differ only in extra_body (a thinking switch, max_tokens of the server's
    # own) are different questions; the second run used to get the first one's answers.
    from stillroom.llm.openai_compat import OpenAIConfig

    def identity(**options: Any) -> dict[str, Any]:
        config = OpenAIConfig(model="m", base_url="http://127.0.0.1:1/v1", **options)
        return config.build().cache_identity()

    plain = identity()
    assert plain == {"backend": "openai", "model": "m"}  # caches made before keep their keys
    thinking = identity(extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert thinking != plain
    assert thinking != identity(extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert identity(structured_output="prompt") != plain
