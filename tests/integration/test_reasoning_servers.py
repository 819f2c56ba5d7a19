"""Reasoning traces from real local components: stillroom's echo server answering in the shape
vLLM documents for a server run with a reasoning parser (``reasoning`` / ``reasoning_content``
beside ``content``, ``usage.completion_tokens_details.reasoning_tokens``) or inline in
``<think>`` tags, through both OpenAI clients (aiohttp and the openai SDK); the anthropic SDK
against the echo server's Messages endpoint with extended thinking; and the embedded model through
llama.cpp writing its trace inline after a few-shot prompt that opens it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

import pytest
from typer.testing import CliRunner

from stillroom import Pipeline
from stillroom.cli.main import app
from stillroom.llm import AnthropicConfig, LlamaCppConfig, LLMClient, OpenAIConfig
from stillroom.llm.types import GenerationParams, Request, RequestFailed
from stillroom.stages import Complete
from tests.servers import echo_command, free_port, running

pytestmark = pytest.mark.integration

EchoStarter = Callable[..., tuple[str, Path]]


@pytest.fixture
def reasoning_echo(tmp_path: Path) -> Iterator[EchoStarter]:
    """Start the echo server in a reasoning mode; returns (its /v1 URL, its request log)."""
    with ExitStack() as stack:

        def start(mode: str) -> tuple[str, Path]:
            port = free_port()
            log = tmp_path / f"echo-{port}.jsonl"
            command = [*echo_command(port, 0.0, log), "--reasoning", mode]
            stack.enter_context(running(command, port, tmp_path / f"echo-{port}.log"))
            return f"http://127.0.0.1:{port}/v1", log

        yield start


def ask(text: str, **params: Any) -> Request:
    return Request(messages=[{"role": "user", "content": text}],
                   params=GenerationParams(**params))


def trace_of(user: str) -> str:
    """The echo server's trace for ``user`` (see stillroom.testing.echo_server)."""
    return f"echo-trace: the user wrote {len(user.split())} words: {user}"


def requests_in(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize("client", ["aiohttp", "sdk"])
async def test_reasoning_fields_reach_the_completion_through_both_clients(
    reasoning_echo: EchoStarter, client: Literal["aiohttp", "sdk"]
) -> None:
    url, _ = reasoning_echo("field")
    llm = LLMClient.from_config(OpenAIConfig(model="r1", base_url=url, client=client,
                                             max_retries=0))
    try:
        done = await llm.generate(ask("what is two plus two"))
        assert done.text == "echo: what is two plus two"
        assert done.reasoning == trace_of("what is two plus two")
        # Counted by the server (usage.completion_tokens_details), not estimated.
        assert done.reasoning_tokens == len(done.reasoning.split())
        assert not done.reasoning_tokens_estimated and done.reasoning_ended
        # Cut at max_tokens while thinking: content null, finish_reason length.
        cut = await llm.generate(ask("what is two plus two", max_tokens=3))
        assert cut.text == "" and cut.reasoning == "echo-trace: the user"
        assert not cut.reasoning_ended and cut.finish_reason == "length"
        assert llm.stats.reasoning_tokens == done.reasoning_tokens + 3
        # A raw prompt has no reasoning field to fill: the echo answers it plainly.
        raw = await llm.generate(Request(prompt="plain"))
        assert raw.text == "echo: plain" and raw.reasoning is None
    finally:
        await llm.aclose()


def rows() -> list[dict[str, Any]]:
    # Trace lengths (words, the echo's tokens): 9 and 18; max_tokens 12 cuts the second.
    return [{"id": "short", "prompt": "two plus two"},
            {"id": "long", "prompt": "please add these numbers " + " ".join(["one"] * 7)}]


def run(url: str, out: Path, **backend: Any) -> Any:
    config = OpenAIConfig(model="r1", base_url=url, max_retries=0, **backend)
    return Pipeline([Complete(backend="r1", max_tokens=12)], input=rows(),
                    backends={"r1": config}).run(out, progress=False, max_failure_rate=1.0)


def test_inline_traces_in_a_run_are_split_counted_cached_and_cut_rows_fail(
    reasoning_echo: EchoStarter, tmp_path: Path
) -> None:
    url, log = reasoning_echo("inline")
    first = run(url, tmp_path / "one", think_tags=True)
    data = first.dataset.to_list()
    # The answer is what follows </think>; the cut trace is no answer: its row is not in data/.
    assert [row["id"] for row in data] == ["short"]
    assert data[0]["completion"] == "echo: two plus two"
    assert [row["id"] for row in first.failed] == ["long"]
    stats = first.backends["r1"]
    # The inline server does not count the trace: estimated from the split (9 of 9 + 4 words'
    # characters for the answered row; all 12 tokens for the cut one).
    assert stats["reasoning_tokens"] > 12 and stats["completion_tokens"] == 13 + 12
    sent = requests_in(log)

    # Another run, the same cache: the answer is served from it with its trace; the cut one was
    # never cached, so it is asked again.
    second = run(url, tmp_path / "two", think_tags=True)
    assert requests_in(log) == sent + 1
    again = second.backends["r1"]
    assert again["cache_hits"] == 1 and again["cached_reasoning_tokens"] > 0
    assert second.dataset.to_list()[0]["completion"] == "echo: two plus two"

    # Without think_tags the same cached text comes back whole (the split is not in the key).
    third = run(url, tmp_path / "three")
    assert third.backends["r1"]["cache_hits"] == 1
    whole = third.dataset.to_list()
    assert whole[0]["completion"] == f"<think>{trace_of('two plus two')}</think>echo: two plus two"


async def test_anthropic_sdk_with_extended_thinking(reasoning_echo: EchoStarter) -> None:
    url, log = reasoning_echo("none")  # /v1/messages answers in Anthropic's shape whatever the mode
    config = AnthropicConfig(model="claude-echo", base_url=url.removesuffix("/v1"),
                             thinking_budget=1024, max_tokens_default=1100, max_retries=0)
    llm = LLMClient.from_config(config)
    try:
        done = await llm.generate(ask("think about this"))
        assert done.text == "echo: think about this"
        assert done.reasoning == trace_of("think about this")
        assert done.reasoning_ended and done.finish_reason == "stop"
        assert done.reasoning_tokens_estimated and 0 < done.reasoning_tokens < done.completion_tokens
        body = json.loads(log.read_text().splitlines()[-1])["body"]
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
        assert body["max_tokens"] == 1100

        # A trace longer than max_tokens: stop_reason max_tokens, no text block.
        long = " ".join(["word"] * 1200)
        cut = await llm.generate(ask(long))
        assert cut.finish_reason == "length" and cut.text == "" and not cut.reasoning_ended

        # Parameters thinking forbids are refused before anything is sent.
        sent = requests_in(log)
        with pytest.raises(RequestFailed) as refused:
            await llm.generate(ask("hi", temperature=0.3))
        assert refused.value.kind == "BadRequestError" and "temperature" in str(refused.value)
        assert refused.value.attempts == 1 and requests_in(log) == sent
    finally:
        await llm.aclose()


def test_a_thinking_budget_below_anthropics_floor_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "p.yaml").write_text(
        "input: in.jsonl\nbackends:\n  default: {kind: anthropic, model: c, "
        "base_url: 'http://127.0.0.1:9', thinking_budget: 500, max_tokens_default: 2000}\n"
        "stages:\n  - type: complete\n")
    result = CliRunner().invoke(app, ["run", str(tmp_path / "p.yaml"), "-o",
                                      str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 2
    assert "thinking_budget" in result.output and "Traceback" not in result.output


def test_a_budget_above_the_default_runs_when_the_stage_sets_more(
    reasoning_echo: EchoStarter, tmp_path: Path
) -> None:
    url, log = reasoning_echo("none")
    (tmp_path / "in.jsonl").write_text('{"prompt": "think about this"}\n')
    backend = ("backends:\n  default: {kind: anthropic, model: c, "
               f"base_url: '{url.removesuffix('/v1')}', thinking_budget: 2048}}\n")

    def run(stage: str, out: str) -> Any:
        (tmp_path / f"{out}.yaml").write_text(f"input: in.jsonl\n{backend}stages:\n{stage}")
        return CliRunner().invoke(app, ["run", str(tmp_path / f"{out}.yaml"), "-o",
                                        str(tmp_path / out), "--no-progress"])

    # max_tokens_default (1024) is below the budget, but this stage never sends it.
    done = run("  - {type: complete, max_tokens: 4096}\n", "ok")
    assert done.exit_code == 0, done.output
    body = json.loads(log.read_text().splitlines()[-1])["body"]
    assert body["max_tokens"] == 4096 and body["thinking"]["budget_tokens"] == 2048
    # A stage that leaves it to the default is refused before any request, in words that
    # name the budget, the backend and the default.
    sent = requests_in(log)
    refused = run("  - {type: complete}\n", "refused")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "max_tokens_default 1024" in refused.output
    assert "thinking_budget 2048 of the anthropic backend (c)" in refused.output
    assert requests_in(log) == sent


@pytest.fixture
async def odd_server() -> Any:
    """A real local HTTP server answering every chat or Messages request with the JSON body
    the test put in ``bodies`` (fields of the wrong type that no honest server sends)."""
    from aiohttp import web

    bodies: list[Any] = []
    calls: list[str] = []

    async def answer(request: Any) -> Any:
        calls.append(request.path)
        return web.json_response(bodies[0])

    application = web.Application()
    application.router.add_post("/v1/chat/completions", answer)
    application.router.add_post("/v1/messages", answer)
    runner = web.AppRunner(application)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", bodies, calls
    finally:
        await runner.cleanup()


def chat_body_with(message: dict[str, Any], **usage: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", **message},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8, **usage}}


@pytest.mark.parametrize("client", ["aiohttp", "sdk"])
async def test_wrong_types_from_a_server_fail_the_request_once_naming_the_field(
    odd_server: Any, client: Literal["aiohttp", "sdk"]
) -> None:
    base, bodies, calls = odd_server
    llm = LLMClient.from_config(OpenAIConfig(model="m", base_url=f"{base}/v1", client=client,
                                             max_retries=3))
    try:
        for body, field in (
            (chat_body_with({"content": 5}), "message.content"),
            (chat_body_with({"content": "a", "reasoning": {"x": 1}}), "message.reasoning"),
            (chat_body_with({"content": "a"}, prompt_tokens="x"), "usage.prompt_tokens"),
        ):
            bodies[:] = [body]
            sent = len(calls)
            with pytest.raises(RequestFailed) as failed:
                await llm.generate(ask("hi"))
            assert failed.value.kind == "APIResponseValidationError", failed.value
            assert field in str(failed.value) and failed.value.attempts == 1
            assert len(calls) == sent + 1  # not retried: the server would send it again
        # A count that cannot be true is ignored and estimated, the answer kept.
        bodies[:] = [chat_body_with({"content": "42", "reasoning": "six sevens"},
                                    completion_tokens_details={"reasoning_tokens": 49})]
        kept = await llm.generate(ask("hi"))
        assert kept.text == "42" and kept.reasoning_tokens_estimated
        assert 0 < kept.reasoning_tokens <= kept.completion_tokens == 5
    finally:
        await llm.aclose()


async def test_wrong_types_in_a_messages_response_fail_the_request_naming_the_field(
    odd_server: Any,
) -> None:
    base, bodies, calls = odd_server
    llm = LLMClient.from_config(AnthropicConfig(model="c", base_url=base, max_retries=3))
    message = {"id": "m", "type": "message", "role": "assistant", "model": "c",
               "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 5}}
    try:
        for content, field in (("Hello", "content is a string"),
                               ([None], "content[0] is null"),
                               ([{"type": "text", "text": None}], "content[0].text")):
            bodies[:] = [{**message, "content": content}]
            with pytest.raises(RequestFailed) as failed:
                await llm.generate(ask("hi"))
            assert failed.value.kind == "APIResponseValidationError", failed.value
            assert field in str(failed.value) and failed.value.attempts == 1
    finally:
        await llm.aclose()


FEW_SHOT = ("Q: What is 2 + 3?\n<think>2 plus 3 makes 5.</think>\nA: 5\n\n"
            "Q: What is 4 + 4?\n<think>4 plus 4 makes 8.</think>\nA: 8\n\n"
            "Q: What is 10 + 1?\n<think>10 plus 1 makes 11.</think>\nA: 11\n\n")


@pytest.mark.skipif(sys.platform == "win32", reason="llama.cpp wheel")
async def test_embedded_model_writes_an_inline_trace_after_an_opened_think_tag() -> None:
    # The prompt opens the trace (think_opened), as reasoning models' chat templates do; the
    # few-shot examples make SmolLM2 close it. What is asserted is the split, not the sums.
    config = LlamaCppConfig(n_threads=1, think_tags=True, think_opened=True)
    llm = LLMClient.from_config(config)
    params: dict[str, Any] = {"temperature": 0.0, "max_tokens": 30, "stop": ("\n\n", "Q:")}
    try:
        done = await llm.generate(Request(prompt=FEW_SHOT + "Q: What is 1 + 6?\n<think>",
                                          params=GenerationParams(**params)))
        assert done.reasoning_ended and done.reasoning and "</think>" not in done.reasoning
        assert done.text.startswith("A:") and "<think>" not in done.text
        # Counted by llama.cpp's tokenizer, not estimated; part of the completion's tokens.
        assert not done.reasoning_tokens_estimated
        assert 0 < done.reasoning_tokens < done.completion_tokens
        assert llm.stats.reasoning_tokens == done.reasoning_tokens

        cut = await llm.generate(Request(prompt=FEW_SHOT + "Q: What is 1 + 6?\n<think>",
                                         params=GenerationParams(**{**params, "max_tokens": 3})))
        assert not cut.reasoning_ended and cut.text == "" and cut.reasoning
        assert cut.finish_reason == "length"
    finally:
        await llm.aclose()


def test_the_echo_servers_default_answers_are_unchanged(reasoning_echo: EchoStarter) -> None:
    """The bench's server: without a reasoning mode its answers are as before, no extra fields."""
    url, _ = reasoning_echo("none")

    async def one() -> Any:
        llm = LLMClient.from_config(OpenAIConfig(model="m", base_url=url, max_retries=0))
        try:
            return await llm.generate(ask("a b"))
        finally:
            await llm.aclose()

    plain = asyncio.run(one())
    assert plain.text == "echo: a b" and plain.reasoning is None and plain.completion_tokens == 3


@pytest.mark.timeout(300)
def test_ray_workers_split_inline_traces_too(
    reasoning_echo: EchoStarter, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The Ray executor builds its workers' clients from the same config, think_tags included."""
    ray = pytest.importorskip("ray")
    url, _ = reasoning_echo("inline")
    # A short folder: Ray's socket paths must fit in 107 bytes.
    ray.init(num_cpus=1, _temp_dir=str(tmp_path_factory.mktemp("ray")), include_dashboard=False,
             log_to_driver=False)
    try:
        config = OpenAIConfig(model="r1", base_url=url, max_retries=0, think_tags=True)
        result = Pipeline([Complete(backend="r1", max_tokens=12)], input=rows(),
                          backends={"r1": config}).run(tmp_path / "out", progress=False,
                                                       max_failure_rate=1.0, executor="ray",
                                                       workers=1)
    finally:
        ray.shutdown()
    assert [row["completion"] for row in result.dataset.to_list()] == ["echo: two plus two"]
    assert result.backends["r1"]["reasoning_tokens"] > 12
