"""Reasoning traces through the backends' parsers and LLMClient, without a server.

The same paths against real local servers (the echo server's vLLM-shaped reasoning fields and
inline tags, the anthropic SDK against a Messages endpoint, the embedded model) are in
tests/integration/test_reasoning_servers.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stillroom.errors import ConfigError
from stillroom.llm import AnthropicConfig, LLMClient, OpenAIConfig
from stillroom.llm.anthropic_backend import messages_body, parse_message
from stillroom.llm.backend import Backend
from stillroom.llm.cache import RequestCache
from stillroom.llm.openai_compat import parse_chat_response
from stillroom.llm.reasoning import TRUNCATED_REASONING, ThinkTags
from stillroom.llm.stats import BackendStats
from stillroom.llm.types import BackendError, Completion, GenerationParams, Request, RequestFailed
from stillroom.testing.echo_server import _answer, _anthropic_answer


def ask(text: str = "hi", **params: Any) -> Request:
    return Request(messages=[{"role": "user", "content": text}], params=GenerationParams(**params))


class FixedBackend(Backend):
    """Answers every request with copies of one completion; counts the calls."""

    kind = "fixed"
    supports_json_schema = True

    def __init__(self, completion: Completion, tokens_per_char: float | None = None):
        super().__init__("fixed-model")
        self.completion = completion
        self.calls = 0
        self.tokens_per_char = tokens_per_char

    async def generate(self, request: Request) -> Completion:
        self.calls += 1
        return Completion.from_record(self.completion.to_record())

    def count_tokens(self, text: str) -> int | None:
        return None if self.tokens_per_char is None else round(len(text) * self.tokens_per_char)


def client(backend: Backend, **kwargs: Any) -> LLMClient:
    return LLMClient(backend, retry_base_delay=0.001, retry_max_delay=0.01, **kwargs)


# -- OpenAI-compatible responses ------------------------------------------------------------------


def chat_response(message: dict[str, Any], finish: str = "stop", **usage: Any) -> dict[str, Any]:
    return {"model": "m", "choices": [{"message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 20, **usage}}


def test_reasoning_content_and_its_reported_token_count_are_kept() -> None:
    completion = parse_chat_response(chat_response(
        {"role": "assistant", "content": "42", "reasoning_content": "6 times 7"},
        completion_tokens_details={"reasoning_tokens": 17}), "m")
    assert (completion.text, completion.reasoning) == ("42", "6 times 7")
    assert completion.reasoning_tokens == 17 and not completion.reasoning_tokens_estimated
    assert completion.reasoning_ended


def test_the_newer_reasoning_field_wins_over_an_empty_reasoning_content() -> None:
    # vLLM's docs warn that a client reading only the old name can see it empty.
    completion = parse_chat_response(chat_response(
        {"role": "assistant", "content": "42", "reasoning": "new name", "reasoning_content": ""}),
        "m")
    assert completion.reasoning == "new name"
    old = parse_chat_response(chat_response(
        {"role": "assistant", "content": "42", "reasoning_content": "old name",
         "reasoning": None}), "m")
    assert old.reasoning == "old name"


def test_no_reasoning_field_means_no_trace() -> None:
    for message in ({"role": "assistant", "content": "hi"},
                    {"role": "assistant", "content": "hi", "reasoning_content": None},
                    {"role": "assistant", "content": "hi", "reasoning": ""}):
        completion = parse_chat_response(chat_response(message), "m")
        assert completion.reasoning is None and completion.reasoning_ended
        assert completion.to_record().keys() == {"text", "finish_reason", "prompt_tokens",
                                                 "completion_tokens", "model", "logprobs"}


def test_a_trace_cut_at_max_tokens_with_null_content_has_not_ended() -> None:
    completion = parse_chat_response(chat_response(
        {"role": "assistant", "content": None, "reasoning_content": "let me think about"},
        finish="length"), "m")
    assert completion.text == "" and completion.reasoning == "let me think about"
    assert not completion.reasoning_ended
    # A stop with a trace and an answer, or a length cut inside the answer, did end the trace.
    answered = parse_chat_response(chat_response(
        {"role": "assistant", "content": "partial answ", "reasoning_content": "done"},
        finish="length"), "m")
    assert answered.reasoning_ended


def test_without_a_trace_null_content_is_still_an_error() -> None:
    with pytest.raises(BackendError, match="no content"):
        parse_chat_response(chat_response({"role": "assistant", "content": None}), "m")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (["not", "an", "object"], "the body"),
        ({"choices": {"0": {}}}, "choices"),
        ({"choices": [None]}, "choices[0]"),
        ({"choices": [{"message": "hi", "finish_reason": "stop"}]}, "message"),
        (chat_response({"role": "assistant", "content": 5}), "message.content"),
        (chat_response({"role": "assistant", "content": [{"type": "text", "text": "a"}]}),
         "message.content"),
        (chat_response({"role": "assistant", "content": "a", "reasoning": {"x": 1}}),
         "message.reasoning"),
        (chat_response({"role": "assistant", "content": "a", "reasoning_content": ["x"]}),
         "message.reasoning_content"),
        ({"choices": [{"text": 7, "finish_reason": "stop"}]}, "choices[0].text"),
        ({"choices": [{"message": {"content": "a"}, "finish_reason": 1}]}, "finish_reason"),
        ({**chat_response({"content": "a"}), "usage": [1]}, "usage"),
        (chat_response({"content": "a"}, prompt_tokens="many"), "usage.prompt_tokens"),
        (chat_response({"content": "a"}, completion_tokens=-2), "usage.completion_tokens"),
        (chat_response({"content": "a"}, completion_tokens=2.5), "usage.completion_tokens"),
        ({"choices": [{"message": {"content": "a"}, "logprobs": {"content": [{"x": 1}]}}]},
         "logprobs"),
    ],
)
def test_fields_of_the_wrong_type_are_a_response_validation_error(body: Any, field: str) -> None:
    with pytest.raises(BackendError) as error:
        parse_chat_response(body, "m")
    assert error.value.kind == "APIResponseValidationError" and not error.value.retryable
    assert f"malformed response: {field} " in str(error.value)


@pytest.mark.parametrize(
    "details",
    [[1], "x", {"reasoning_tokens": "many"}, {"reasoning_tokens": -3},
     {"reasoning_tokens": 2.5}, {"reasoning_tokens": 49}, {"reasoning_tokens": True}],
)
async def test_a_reasoning_count_that_cannot_be_true_is_ignored_then_estimated(
    details: Any,
) -> None:
    completion = parse_chat_response(chat_response(
        {"content": "42", "reasoning": "six times seven"}, completion_tokens=20,
        completion_tokens_details=details), "m")
    assert completion.reasoning_tokens == 0 and completion.text == "42"
    read = await client(FixedBackend(completion)).generate(ask())
    assert 0 < read.reasoning_tokens <= 20 and read.reasoning_tokens_estimated


def test_a_reasoning_count_up_to_the_whole_completion_is_kept() -> None:
    for count in (0, 20):
        completion = parse_chat_response(chat_response(
            {"content": "", "reasoning": "t"}, completion_tokens=20,
            completion_tokens_details={"reasoning_tokens": count}), "m")
        assert completion.reasoning_tokens == count


def test_the_echo_servers_field_mode_is_read_back() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "a b c"}]}
    completion = parse_chat_response(_answer(body, 1, "field"), "m")
    assert completion.text == "echo: a b c"
    assert completion.reasoning == "echo-trace: the user wrote 3 words: a b c"
    assert completion.reasoning_tokens == 9 and completion.completion_tokens == 9 + 4
    cut = parse_chat_response(_answer({**body, "max_tokens": 4}, 1, "field"), "m")
    assert cut.reasoning == "echo-trace: the user wrote" and not cut.reasoning_ended
    assert cut.finish_reason == "length"


# -- Anthropic --------------------------------------------------------------------------------


def test_thinking_blocks_become_the_reasoning_and_redacted_data_is_not_kept() -> None:
    message = {
        "model": "claude", "stop_reason": "end_turn",
        "content": [
            {"type": "thinking", "thinking": "first", "signature": "s"},
            {"type": "redacted_thinking", "data": "ENCRYPTED-BLOB"},
            {"type": "thinking", "thinking": "second", "signature": "s"},
            {"type": "text", "text": "the answer"},
        ],
        "usage": {"input_tokens": 3, "output_tokens": 50},
    }
    completion = parse_message(message, "claude")
    assert completion.text == "the answer"
    assert completion.reasoning == "first\n\nsecond"
    assert "ENCRYPTED" not in str(completion.to_record())
    assert completion.reasoning_ended and completion.completion_tokens == 50
    # Counted apart only when the API says; otherwise LLMClient estimates.
    assert completion.reasoning_tokens == 0
    counted = parse_message({**message, "usage": {
        "input_tokens": 3, "output_tokens": 50, "output_tokens_details": {"thinking_tokens": 40}}},
        "claude")
    assert counted.reasoning_tokens == 40


def test_thinking_cut_at_max_tokens_has_not_ended() -> None:
    body = {"model": "claude", "max_tokens": 3, "thinking": {"type": "enabled"},
            "messages": [{"role": "user", "content": "x y"}]}
    completion = parse_message(_anthropic_answer(body, 1), "claude")
    assert completion.finish_reason == "length" and completion.text == ""
    assert completion.reasoning == "echo-trace: the user" and not completion.reasoning_ended
    plain = parse_message(_anthropic_answer({**body, "thinking": None}, 1), "claude")
    assert plain.reasoning is None and plain.text == "echo: x y"


def test_thinking_budget_goes_into_the_request_and_the_cache_identity() -> None:
    local = "http://127.0.0.1:1"
    config = AnthropicConfig(model="claude", thinking_budget=2048, max_tokens_default=4096,
                             base_url=local)
    assert config.build().cache_identity()["thinking_budget"] == 2048
    plain = AnthropicConfig(model="claude", base_url=local)
    assert "thinking_budget" not in plain.build().cache_identity()
    body = messages_body("claude", ask(), 4096, 2048)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert "thinking" not in messages_body("claude", ask(), 4096)


def test_a_thinking_budget_below_anthropics_floor_is_refused_in_the_config() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 1024") as error:
        AnthropicConfig(model="claude", thinking_budget=1000, max_tokens_default=4096)
    assert "thinking_budget" in str(error.value)


def test_a_budget_above_the_default_is_fine_when_every_stage_sets_more() -> None:
    # The default is never sent when each stage sets its own max_tokens.
    config = AnthropicConfig(model="claude", thinking_budget=2048)
    config.check_params(GenerationParams(max_tokens=4096), key="")
    assert messages_body("claude", ask(max_tokens=4096), 1024, 2048)["max_tokens"] == 4096
    # A stage (or a request) that leaves max_tokens to the default is refused, naming both.
    with pytest.raises(ConfigError) as error:
        config.check_params(GenerationParams(), key="")
    assert error.value.key == "max_tokens"
    assert "max_tokens_default 1024" in str(error.value)
    assert "thinking_budget 2048" in str(error.value)
    with pytest.raises(BackendError, match="max_tokens_default 1024") as refused:
        messages_body("claude", ask(), 1024, 2048)
    assert refused.value.kind == "BadRequestError" and not refused.value.retryable


def test_the_per_stage_message_names_the_budget_and_the_backend() -> None:
    # Printed as "max_tokens: <message>" with no stage: it must explain itself.
    config = AnthropicConfig(model="claude-x", thinking_budget=2048, max_tokens_default=4096)
    for params in ({"max_tokens": 100}, {"temperature": 0.5}, {"top_p": 0.5}):
        with pytest.raises(ConfigError) as error:
            config.check_params(GenerationParams(**params), key="")
        text = str(error.value)
        assert "thinking_budget 2048" in text and "anthropic backend (claude-x)" in text, text


@pytest.mark.parametrize(
    ("params", "key"),
    [({"max_tokens": 2048}, "max_tokens"), ({"temperature": 0.7}, "temperature"),
     ({"top_p": 0.5}, "top_p")],
)
def test_parameters_thinking_forbids_fail_before_any_request(params: dict[str, Any], key: str) -> None:
    config = AnthropicConfig(model="claude", thinking_budget=2048, max_tokens_default=4096)
    with pytest.raises(ConfigError) as error:
        config.check_params(GenerationParams(**params), key="stages.teacher")
    assert error.value.key == f"stages.teacher.{key}"
    # The same rule per request: a non-retryable bad request, never sent.
    with pytest.raises(BackendError) as refused:
        messages_body("claude", ask(**params), 4096, 2048)
    assert refused.value.kind == "BadRequestError" and not refused.value.retryable
    config.check_params(GenerationParams(temperature=1, top_p=0.95, max_tokens=3000))
    AnthropicConfig(model="claude").check_params(GenerationParams(temperature=0.2))


# -- inline tags in LLMClient ------------------------------------------------------------------


def test_think_options_enter_the_run_identity_only_when_on() -> None:
    plain = OpenAIConfig(model="m", base_url="http://127.0.0.1:1/v1")
    assert not any(name.startswith("think") for name in plain.identity())
    on = OpenAIConfig(model="m", base_url="http://127.0.0.1:1/v1", think_tags=True,
                      think_opened=True)
    assert on.identity()["think_opened"] is True and on.identity()["think_end"] == "</think>"
    assert on.think() == ThinkTags("<think>", "</think>", opened=True)
    assert plain.think() is None
    # The request cache key does not depend on them: the cache keeps the backend's text.
    assert plain.build().cache_identity() == on.build().cache_identity()


async def test_inline_trace_is_split_and_its_tokens_estimated() -> None:
    backend = FixedBackend(Completion(text="<think>abc def</think>\nthe answer", completion_tokens=10))
    completion = await client(backend, think=ThinkTags()).generate(ask())
    assert completion.text == "the answer" and completion.reasoning == "abc def"
    assert completion.reasoning_ended and completion.reasoning_tokens_estimated
    # 7 of 17 characters are the trace's.
    assert completion.reasoning_tokens == round(10 * 7 / 17)


async def test_a_tokenizer_counts_the_trace_exactly_tags_included() -> None:
    text = "<think>abcd</think>answer"
    backend = FixedBackend(Completion(text=text, completion_tokens=25), tokens_per_char=1.0)
    llm = client(backend, think=ThinkTags())
    completion = await llm.generate(ask())
    assert completion.reasoning_tokens == len("<think>abcd</think>")
    assert not completion.reasoning_tokens_estimated
    assert llm.stats.reasoning_tokens == completion.reasoning_tokens


async def test_without_think_tags_the_text_is_left_alone() -> None:
    backend = FixedBackend(Completion(text="<think>x</think>y", completion_tokens=3))
    completion = await client(backend).generate(ask())
    assert completion.text == "<think>x</think>y" and completion.reasoning is None
    # Nor when the caller asks for the text as written (budget forcing continues it).
    kept = await client(backend, think=ThinkTags()).generate(ask(), split_traces=False)
    assert kept.text == "<think>x</think>y" and kept.reasoning is None


async def test_a_backend_trace_is_not_split_again_but_estimated_when_uncounted() -> None:
    backend = FixedBackend(Completion(text="</think> answer", reasoning="trace",
                                      completion_tokens=10))
    completion = await client(backend, think=ThinkTags()).generate(ask())
    assert completion.text == "</think> answer" and completion.reasoning == "trace"
    assert completion.reasoning_tokens_estimated
    assert completion.reasoning_tokens == round(10 * len("trace") / len("trace</think> answer"))


async def test_cache_keeps_the_raw_text_and_a_changed_parse_reuses_it(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "c.sqlite")
    backend = FixedBackend(Completion(text="<think>t</think>a", completion_tokens=4))
    first = client(backend, cache=cache, think=ThinkTags())
    assert (await first.generate(ask())).text == "a"
    cache.flush()
    again = client(backend, cache=cache, think=ThinkTags())
    hit = await again.generate(ask())
    assert hit.cached and (hit.text, hit.reasoning) == ("a", "t")
    assert again.stats.cached_reasoning_tokens == hit.reasoning_tokens > 0
    assert again.stats.reasoning_tokens == 0
    # Switched off, the same cached answer comes back whole: the backend is not asked again.
    raw = await client(backend, cache=cache).generate(ask())
    assert raw.cached and raw.text == "<think>t</think>a" and backend.calls == 1
    cache.close()


async def test_a_trace_that_never_ended_is_no_answer_and_is_not_cached(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "c.sqlite")
    backend = FixedBackend(Completion(text="still thinking", finish_reason="length",
                                      completion_tokens=4))
    llm = client(backend, cache=cache, think=ThinkTags(opened=True))
    completion = await llm.generate(ask())
    assert completion.text == "" and completion.reasoning == "still thinking"
    assert not completion.reasoning_ended and completion.reasoning_tokens == 4
    cache.flush()
    again = await llm.generate(ask())
    assert not again.cached and backend.calls == 2
    cache.close()


async def test_a_backend_trace_cut_off_is_not_cached(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "c.sqlite")
    backend = FixedBackend(Completion(text="", reasoning="cut", reasoning_ended=False,
                                      finish_reason="length", completion_tokens=4))
    llm = client(backend, cache=cache)
    await llm.generate(ask())
    cache.flush()
    assert len(cache) == 0
    cache.close()


async def test_structured_output_after_an_unended_trace_fails_with_its_reason() -> None:
    backend = FixedBackend(Completion(text="<think>{\"a\":", finish_reason="length",
                                      completion_tokens=4))
    llm = client(backend, think=ThinkTags())
    with pytest.raises(RequestFailed) as failure:
        await llm.generate(ask(json_schema={"type": "object"}))
    assert failure.value.kind == TRUNCATED_REASONING and "length" in str(failure.value)
    assert backend.calls == 1  # not re-asked: the same max_tokens would cut it again
    assert "raise max_tokens" in str(failure.value)


async def test_a_model_that_stopped_without_closing_its_trace_is_not_told_to_raise_max_tokens(
) -> None:
    # think_opened, and the model answered plainly: it stopped on its own, more tokens would
    # not close a trace it never wrote.
    backend = FixedBackend(Completion(text="{\"a\": 1}", finish_reason="stop",
                                      completion_tokens=4))
    llm = client(backend, think=ThinkTags(opened=True))
    with pytest.raises(RequestFailed) as failure:
        await llm.generate(ask(json_schema={"type": "object"}))
    message = str(failure.value)
    assert failure.value.kind == TRUNCATED_REASONING
    assert "raise max_tokens" not in message and "without closing its trace (</think>)" in message


async def test_structured_output_reads_the_answer_after_the_trace() -> None:
    backend = FixedBackend(Completion(text="<think>plan</think>{\"a\": 1}", completion_tokens=6))
    completion = await client(backend, think=ThinkTags()).generate(
        ask(json_schema={"type": "object"}))
    assert completion.parsed == {"a": 1} and completion.reasoning == "plan"


def test_from_config_carries_the_configs_settings() -> None:
    config = OpenAIConfig(model="m", base_url="http://127.0.0.1:1/v1", think_tags=True,
                          think_start="<reason>", think_end="</reason>", concurrency=3,
                          max_retries=2, timeout=9)
    llm = LLMClient.from_config(config)
    assert llm.think == ThinkTags("<reason>", "</reason>")
    assert (llm.max_retries, llm.timeout, llm.limiter.limit) == (2, 9, 3)
    assert LLMClient.from_config(config, timeout=None).timeout is None


# -- stats ------------------------------------------------------------------------------------


def test_stats_carry_reasoning_tokens_and_read_old_records() -> None:
    stats = BackendStats(reasoning_tokens=5, cached_reasoning_tokens=2)
    total = BackendStats()
    total.add(stats.as_dict())
    total.add({"completion_tokens": 7})  # a record from before reasoning was counted
    assert (total.reasoning_tokens, total.cached_reasoning_tokens) == (5, 2)
    assert total.completion_tokens == 7


async def test_the_transformers_engine_counts_an_inline_trace_with_its_tokenizer() -> None:
    torch = pytest.importorskip("torch")
    from stillroom.llm import TransformersBackend
    from tests.tiny_models import byte_tokenizer, tiny_llama

    torch.set_num_threads(1)
    tokenizer = byte_tokenizer(bos=True)
    backend = TransformersBackend.from_model(tiny_llama(tokenizer, 64), tokenizer, name="tiny")
    try:
        # One token per byte, no BOS: a count of the text alone.
        assert backend.count_tokens("<think>ab</think>") == len("<think>ab</think>")
        # A random model never closes the trace the prompt opened: all of it is the trace,
        # counted by the tokenizer (capped at the tokens generated), not estimated.
        llm = client(backend, think=ThinkTags(opened=True))
        completion = await llm.generate(Request(prompt="q", params=GenerationParams(
            max_tokens=6, temperature=0.0)))
        assert not completion.reasoning_ended and completion.text == ""
        assert completion.reasoning_tokens == completion.completion_tokens == 6
        assert not completion.reasoning_tokens_estimated
    finally:
        await backend.aclose()
