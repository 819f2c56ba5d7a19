"""s1's budget forcing: the shared per-prompt steps (waits, cap, floor), and the ``budget_forced``
stage over a scripted backend: the raw path after a rendered template, the server path that
continues a final assistant message, refusals before any request, failures, cache reruns."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stillroom.errors import ConfigError
from stillroom.evaluate.budget import Forced, start, think_step
from stillroom.evaluate.config import BudgetForcing
from stillroom.evaluate.generation import Generation
from stillroom.generate.budget_forced import BudgetForced
from stillroom.llm.anthropic_backend import AnthropicConfig
from stillroom.llm.backend import Backend
from stillroom.llm.cache import RequestCache
from stillroom.llm.client import LLMClient
from stillroom.llm.llamacpp import LlamaCppConfig
from stillroom.llm.openai_compat import OpenAIConfig
from stillroom.llm.types import BackendError, Completion, Message, Request, RequestFailed
from stillroom.pipeline.stage import RowFailure, StageContext, stages

# -- the shared steps ------------------------------------------------------------------------------


def run_thinking(options: BudgetForcing, cap: int, rounds: Callable[[int], Generation]) -> Forced:
    """Drive think_step as both callers do: round after round until it says thinking is over."""
    state = start("P", options)
    number = 0
    while think_step(state, rounds(number), options, cap):
        number += 1
        assert number < 100, "thinking never ended"
    return state


def ends_after(tokens: int) -> Callable[[int], Generation]:
    """A model that writes ``tokens`` tokens and then ends its thinking, every round."""
    return lambda _: Generation("t " * tokens, tokens, "stop")


@pytest.mark.parametrize("floor", [0, 1, 5])
def test_waits_are_appended_exactly_max_waits_times_whatever_the_floor(floor: int) -> None:
    options = BudgetForcing(max_waits=3, min_thinking_tokens=floor, max_thinking_tokens=100)
    state = run_thinking(options, 100, ends_after(4))
    assert state.waits == 3 and state.thinking.count("Wait") == 3
    assert state.thinking_tokens == 16 and not state.capped


def test_no_waits_by_default() -> None:
    state = run_thinking(BudgetForcing(), 100, ends_after(4))
    assert state.waits == 0 and state.thinking == "t " * 4


def test_the_cap_wins_over_the_waits_left() -> None:
    options = BudgetForcing(max_waits=10, max_thinking_tokens=10)
    # 4 + 4 tokens with a wait after each, then 2 left: the round runs into the budget.
    state = run_thinking(options, 10, lambda n: Generation("t " * min(4, 10 - 4 * n),
                                                           min(4, 10 - 4 * n),
                                                           "stop" if n < 2 else "length"))
    assert state.capped and state.waits == 2 and state.thinking_tokens == 10


def test_reaching_the_cap_exactly_with_a_stop_still_caps() -> None:
    state = run_thinking(BudgetForcing(max_waits=5, max_thinking_tokens=4), 4, ends_after(4))
    assert state.capped and state.waits == 0


def test_the_floor_extends_past_max_waits_until_it_is_reached() -> None:
    options = BudgetForcing(max_waits=1, min_thinking_tokens=10, max_thinking_tokens=100)
    state = run_thinking(options, 100, ends_after(3))
    # 3 (wait: max_waits) 6 (floor) 9 (floor) 12: done.
    assert state.waits == 3 and state.thinking_tokens == 12 and not state.capped


def test_the_floor_stops_when_a_round_writes_nothing() -> None:
    options = BudgetForcing(min_thinking_tokens=10, max_thinking_tokens=100)
    state = run_thinking(options, 100, lambda n: ends_after(3)(n) if n == 0 else
                         Generation("", 0, "stop"))
    assert state.waits == 1 and state.thinking_tokens == 3


def test_a_wait_goes_after_a_newline_unless_the_text_ends_in_space() -> None:
    options = BudgetForcing(max_waits=2)
    texts = iter(["so", "then\n", "done"])
    state = run_thinking(options, 100, lambda _: Generation(next(texts), 1, "stop"))
    assert state.thinking == "so\nWaitthen\nWaitdone"


# -- the stage over a scripted backend --------------------------------------------------------------

TEMPLATE_OPEN = "<user>{content}</user><assistant>"


class Continuing(Backend):
    """Continues whatever it is given (a raw prompt, or a final assistant message) by the script:
    ``script(text_so_far, stop, max_tokens) -> (text, finish_reason)``; one token per word."""

    kind = "continuing"
    supports_raw_prompt = True
    renders_chat_template = True

    def __init__(self, script: Callable[[str, tuple[str, ...], int], tuple[str, str]],
                 *, reasoning_field: bool = False):
        super().__init__("continuing-model")
        self.script = script
        self.reasoning_field = reasoning_field
        self.requests: list[Request] = []

    async def render_chat_template(self, messages: list[Message], *,
                                   add_generation_prompt: bool) -> str:
        assert add_generation_prompt
        return TEMPLATE_OPEN.format(content=messages[-1]["content"])

    async def generate(self, request: Request) -> Completion:
        self.requests.append(request)
        if request.prompt is not None:
            so_far = request.prompt
        else:
            assert request.messages is not None and request.messages[-1]["role"] == "assistant"
            so_far = request.messages[-1]["content"]
        text, finish = self.script(so_far, request.params.stop or (), request.params.max_tokens or 0)
        if text == "FAIL":
            raise BackendError("the server broke", kind="BadRequestError", status=400)
        completion = Completion(text=text, finish_reason=finish,
                                completion_tokens=len(text.split()), model=self.model)
        if self.reasoning_field and request.params.stop:  # a reasoning parser took it all
            completion.reasoning, completion.text = text, ""
        return completion


class ChatOnly(Continuing):
    supports_raw_prompt = False
    renders_chat_template = False


def thinker(answer: str = " 12", answer_finish: str = "stop") -> Callable[..., tuple[str, str]]:
    """Thinks 3 words per round and ends (until the budget), then answers ``answer``."""

    def script(so_far: str, stop: tuple[str, ...], max_tokens: int) -> tuple[str, str]:
        if not stop:  # the answer round
            assert so_far.endswith("</think>\nFinal Answer:")
            return answer, answer_finish
        if max_tokens < 3:
            return " ".join(["x"] * max_tokens), "length"
        return "a b c", "stop"

    return script


def run_stage(stage: BudgetForced, backend: Backend, row: dict[str, Any],
              cache: RequestCache | None = None) -> dict[str, Any]:
    client = LLMClient(backend, cache=cache, max_retries=0)
    ctx = StageContext("budget_forced", seed=7, clients={stage.backend: client})
    try:
        return asyncio.run(stage.process(row, ctx))
    finally:
        asyncio.run(client.aclose())


def test_raw_path_continues_the_rendered_turn_and_fills_the_row() -> None:
    backend = Continuing(thinker())
    stage = BudgetForced(max_waits=1, max_thinking_tokens=20, max_answer_tokens=8)
    row = run_stage(stage, backend, {"id": "r", "prompt": "What is 7 + 5?"})
    opened = "<user>What is 7 + 5?</user><assistant><think>"
    assert [r.prompt for r in backend.requests] == [
        opened, opened + "a b c\nWait", opened + "a b c\nWaita b c</think>\nFinal Answer:",
    ]
    assert [r.params.stop for r in backend.requests] == [("</think>",), ("</think>",), None]
    assert [r.params.max_tokens for r in backend.requests] == [20, 17, 8]
    assert all(r.params.seed == 7 for r in backend.requests)
    assert row["completion"] == "Final Answer: 12"  # the prefix is kept: what a verifier reads
    assert row["reasoning"] == "a b c\nWaita b c"
    assert row["metadata"]["budget_forced"] == {
        "backend": "default", "model": "continuing-model", "requests": 3,
        "thinking_tokens": 6, "answer_tokens": 1, "waits": 1, "capped": False,
    }


def test_a_conversational_prompt_gets_its_answer_as_an_assistant_message() -> None:
    stage = BudgetForced(max_thinking_tokens=4)
    row = run_stage(stage, Continuing(thinker()),
                    {"prompt": [{"role": "user", "content": "Hi"}]})
    assert row["completion"] == [{"role": "assistant", "content": "Final Answer: 12"}]
    assert row["reasoning"] == "a b c" and row["metadata"]["budget_forced"]["capped"] is False


def test_a_trace_cut_at_the_cap_is_kept_and_flagged() -> None:
    stage = BudgetForced(max_waits=5, max_thinking_tokens=7)
    row = run_stage(stage, Continuing(thinker()), {"prompt": "Q"})
    figures = row["metadata"]["budget_forced"]
    assert figures["capped"] and figures["thinking_tokens"] == 7 and figures["waits"] == 2
    assert row["completion"] == "Final Answer: 12"


def test_server_path_sends_the_partial_assistant_turn_last() -> None:
    backend = ChatOnly(thinker(), reasoning_field=True)
    stage = BudgetForced(backend="teacher", max_waits=1, max_thinking_tokens=20, system="Be brief.")
    row = run_stage(stage, backend, {"prompt": "Q"})
    partials = [r.messages[-1]["content"] for r in backend.requests]  # type: ignore[index]
    assert partials == ["<think>", "<think>a b c\nWait", "<think>a b c\nWaita b c</think>\nFinal Answer:"]
    for request in backend.requests:
        assert request.messages[:2] == [{"role": "system", "content": "Be brief."},  # type: ignore[index]
                                        {"role": "user", "content": "Q"}]
    # The server's reasoning parser split the continuation off; it is one trace to us.
    assert row["reasoning"] == "a b c\nWaita b c" and row["completion"] == "Final Answer: 12"


class RawOnly(Continuing):
    """A server's /v1/completions: raw prompts, no template of its own in reach."""

    renders_chat_template = False


def test_a_named_chat_template_renders_here_and_the_server_continues_raw_text(
    tmp_path: Path,
) -> None:
    template = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}|{{ m.content }}]{% endfor %}"
                "{% if add_generation_prompt %}[assistant|{% if thinking %}{% endif %}{% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": template, "bos_token": {"content": "<s>"}, "eos_token": "</s>"}))
    stage = BudgetForced.model_validate(
        {"type": "budget_forced", "chat_template": "tokenizer_config.json", "max_thinking_tokens": 3,
         "chat_template_kwargs": {"thinking": True}}, context={"base_dir": tmp_path})
    backend = RawOnly(thinker())
    row = run_stage(stage, backend, {"prompt": "Q"})
    assert [r.prompt for r in backend.requests] == [
        "<s>[user|Q][assistant|<think>", "<s>[user|Q][assistant|<think>a b c</think>\nFinal Answer:"]
    assert row["reasoning"] == "a b c" and row["completion"] == "Final Answer: 12"
    assert stage.identity()["chat_template_sha256"]  # an edited template is another run
    stage.check_backends({"default": OpenAIConfig(model="m", base_url="http://127.0.0.1:8000/v1")})
    with pytest.raises(ConfigError, match="raw prompts") as error:
        stage.check_backends({"default": AnthropicConfig(model="claude")})
    assert error.value.key == "chat_template"


def test_a_chat_template_that_does_not_compile_or_exist_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}{{ m.content }")
    for name, reason in (("bad.jinja", "does not compile"), ("missing.jinja", "no such")):
        with pytest.raises(ConfigError, match=reason) as error:
            BudgetForced.model_validate({"chat_template": name}, context={"base_dir": tmp_path})
        assert error.value.key == "chat_template"


def test_an_answer_cut_at_its_own_budget_fails_the_row() -> None:
    stage = BudgetForced(max_thinking_tokens=3, max_answer_tokens=2)
    with pytest.raises(RowFailure) as failure:
        run_stage(stage, Continuing(thinker(" 1 2", "length")), {"prompt": "Q"})
    assert failure.value.kind == "AnswerTruncated" and "max_answer_tokens (2)" in str(failure.value)


def test_an_empty_answer_fails_the_row() -> None:
    with pytest.raises(RowFailure) as failure:
        run_stage(BudgetForced(max_thinking_tokens=3), Continuing(thinker("  ")), {"prompt": "Q"})
    assert failure.value.kind == "EmptyCompletion"


def test_a_failed_request_fails_the_row_with_its_kind() -> None:
    def script(so_far: str, stop: tuple[str, ...], max_tokens: int) -> tuple[str, str]:
        return ("FAIL", "stop") if "Wait" in so_far else ("a", "stop")

    with pytest.raises(RequestFailed) as failure:
        run_stage(BudgetForced(max_waits=1), Continuing(script), {"prompt": "Q"})
    assert failure.value.kind == "BadRequestError"


def test_a_rerun_is_served_round_by_round_from_the_cache(tmp_path: Path) -> None:
    stage = BudgetForced(max_waits=2, max_thinking_tokens=30)
    first_backend, second_backend = Continuing(thinker()), Continuing(thinker())
    answers = []
    for backend in (first_backend, second_backend):
        cache = RequestCache.in_dir(tmp_path)
        try:
            answers.append(run_stage(stage, backend, {"prompt": "Q"}, cache))
        finally:
            cache.close()
    first, second = answers
    assert len(first_backend.requests) == 4 and second_backend.requests == []
    assert first == second


def test_thinking_rounds_count_as_reasoning_tokens_fresh_and_cached(tmp_path: Path) -> None:
    stage = BudgetForced(max_waits=1, max_thinking_tokens=30)
    counted = []
    for _ in range(2):
        cache = RequestCache.in_dir(tmp_path)
        client = LLMClient(Continuing(thinker()), cache=cache)
        try:
            asyncio.run(stage.process({"prompt": "Q"}, StageContext("b", 0, {"default": client})))
        finally:
            cache.close()
        stats = client.stats
        counted.append((stats.reasoning_tokens, stats.cached_reasoning_tokens,
                        stats.completion_tokens + stats.cached_completion_tokens))
    # 2 rounds of 3 thinking tokens, and the 1-token answer, which is not reasoning.
    assert counted == [(6, 0, 7), (0, 6, 7)]


def test_options_are_evaluations_budget_forcing_options() -> None:
    assert stages.get("budget_forced") is BudgetForced  # a pipeline file's `type` finds it
    stage = BudgetForced(max_waits=2, wait="Hmm", answer_prefix="A:")
    assert stage.options() == BudgetForcing(max_waits=2, wait="Hmm", answer_prefix="A:")
    with pytest.raises(ValueError, match="min_thinking_tokens"):
        BudgetForced(min_thinking_tokens=9, max_thinking_tokens=3)
    assert stage.generated_columns() == ["completion", "reasoning"]


# -- which backends can continue the assistant's turn -----------------------------------------------


def test_in_process_backends_and_continuing_servers_are_accepted() -> None:
    stage = BudgetForced(backend="t")
    stage.check_backends({"t": LlamaCppConfig()})
    vllm = OpenAIConfig(model="m", base_url="http://127.0.0.1:8000/v1", extra_body={
        "continue_final_message": True, "add_generation_prompt": False})
    stage.check_backends({"t": vllm})


def test_a_backend_that_reads_every_text_as_an_opened_trace_is_refused() -> None:
    config = LlamaCppConfig(think_tags=True, think_opened=True)
    with pytest.raises(ConfigError, match="think_opened") as error:
        BudgetForced(backend="t").check_backends({"t": config})
    assert "'t'" in str(error.value)
    BudgetForced(backend="t").check_backends({"t": LlamaCppConfig(think_tags=True)})


@pytest.mark.parametrize("config", [
    OpenAIConfig(model="m", base_url="http://127.0.0.1:8000/v1"),
    OpenAIConfig(model="m", base_url="http://127.0.0.1:8000/v1",
                 extra_body={"continue_final_message": True}),  # a new turn would still open
    AnthropicConfig(model="claude"),
], ids=["openai", "openai-half", "anthropic"])
def test_a_backend_that_cannot_continue_the_turn_is_refused(config: Any) -> None:
    with pytest.raises(ConfigError) as error:
        BudgetForced(backend="teacher").check_backends({"teacher": config})
    assert "'teacher'" in str(error.value) and error.value.key == "backend"


def test_a_round_that_wrote_past_the_end_of_thinking_is_cut_at_it():
    """A server that ignores `stop` returns the end tag and an answer inside a thinking round:
    only the text before the tag is thinking, and the round counts as ended."""
    from stillroom.evaluate.budget import start, think_step
    from stillroom.evaluate.config import BudgetForcing
    from stillroom.evaluate.generation import Generation

    options = BudgetForcing(max_thinking_tokens=100, max_waits=1)
    state = start("Q: 2+2?\n", options)
    again = think_step(state, Generation(text="2+2 is 4</think>\n\nFinal Answer: 5", tokens=9,
                                         finish_reason="stop"), options, cap=100)
    assert state.thinking == "2+2 is 4\nWait"  # the cut text, then the wait asked for
    assert "Final Answer" not in state.thinking and options.think_end not in state.thinking
    assert again and state.waits == 1  # the one wait asked for is still appended
