"""Magpie's multi-turn extension with a scripted backend: each later instruction is sampled from
the template's rendering of the conversation so far plus a new user turn's prefix (rendered, or a
preset's headers), answered with the whole conversation; the row holds `messages` and each turn's
lineage; a turn that fails, is dropped by the cleaning, comes back empty or is cut spoils the
whole conversation, with its reason."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from stillroom import Pipeline
from stillroom.data.rows import PromptTemplate
from stillroom.errors import ConfigError
from stillroom.generate.conversation_prompts import digest
from stillroom.generate.magpie import Magpie
from stillroom.llm.types import Completion, Request
from tests.fakes import ScriptedBackend, ScriptedConfig, server_error
from tests.unit.test_magpie import (
    DEFAULT_PREFIX,
    TEMPLATE,
    TemplatedBackend,
    TemplatedConfig,
    chat_requests,
    empty_rows,
    raw_requests,
    run,
    use,
)

QUESTIONS = ["How do rainbows form in the sky?", "Why are they curved like an arc?",
             "Can two rainbows appear at once?"]


def numbered(request: Request, attempt: int) -> str:
    """Instruction k is QUESTIONS[k-1] (k = user turns already in the prompt + 1); the answer to a
    conversation names its last question."""
    if request.prompt is not None:
        return QUESTIONS[request.prompt.count("<|im_start|>user\n") - 1]
    return f"answer to {request.messages[-1]['content']}"  # type: ignore[index]


def rendered(messages: list[dict[str, str]]) -> str:
    return jinja2.Template(TEMPLATE).render(messages=messages, add_generation_prompt=False)


def talk(turns: int) -> list[dict[str, str]]:
    out = []
    for question in QUESTIONS[:turns]:
        out += [{"role": "user", "content": question},
                {"role": "assistant", "content": f"answer to {question}"}]
    return out


def test_each_later_instruction_is_sampled_after_the_rendered_conversation(tmp_path: Path) -> None:
    backend = use(numbered)
    [row] = run(tmp_path, Magpie(turns=3), empty_rows(1))["data"]
    assert row["messages"] == talk(3)
    assert "prompt" not in row and "completion" not in row and "response_truncated" not in row

    raws = [request.prompt for request in raw_requests(backend)]
    assert raws[0] == DEFAULT_PREFIX  # turn 1 as in a single-turn run
    for turn in (2, 3):  # the conversation so far as the template renders it, then a user header
        assert raws[turn - 1] == rendered(talk(turn - 1)) + "<|im_start|>user\n"
    chats = [request.messages for request in chat_requests(backend)]
    assert chats == [talk(3)[: 2 * k + 1] for k in range(3)]  # the whole conversation each time

    meta = row["metadata"]["magpie"]
    assert (meta["step"], meta["turn_count"]) == ("conversation", 3)
    turns = meta["turns"]
    assert [(t["turn"], t["role"]) for t in turns] == [
        (k, role) for k in (1, 2, 3) for role in ("user", "assistant")]
    template = PromptTemplate("magpie.chat_template", DEFAULT_PREFIX).version
    assert all(t["template"] == template for t in turns if t["role"] == "user")
    assert all(t["model"] == "scripted-model" and t["finish_reason"] == "stop" for t in turns)
    assert all(t["system_digest"] is None for t in turns)
    seeds = [t["seed"] for t in turns if t["role"] == "user"]
    assert seeds[0] == meta["seed"] and len(set(seeds)) == 3
    # Each turn's requests carry that turn's seed.
    assert [r.params.seed for r in raw_requests(backend)] == seeds
    assert [r.params.seed for r in chat_requests(backend)] == seeds


def test_a_system_prompt_opens_the_conversation_and_every_rendering(tmp_path: Path) -> None:
    backend = use(numbered)
    [row] = run(tmp_path, Magpie(turns=2, system="Be brief."), empty_rows(1))["data"]
    system = {"role": "system", "content": "Be brief."}
    assert row["messages"] == [system, *talk(2)]
    assert raw_requests(backend)[1].prompt == rendered([system, *talk(1)]) + "<|im_start|>user\n"
    assert row["metadata"]["magpie"]["turns"][0]["system_digest"] == digest("Be brief.")


@pytest.mark.parametrize(("preset", "after_first"), [
    ("chatml", "<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n<|im_start|>user\n"),
    ("llama3", "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{a}<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\n"),
    ("gemma", "<end_of_turn>\n<start_of_turn>model\n{a}<end_of_turn>\n<start_of_turn>user\n"),
])
def test_a_preset_renders_the_conversation_with_its_turn_headers(
    tmp_path: Path, preset: str, after_first: str
) -> None:
    def script(request: Request, attempt: int) -> str:
        if request.prompt is not None:
            return QUESTIONS[0] if len(raw_requests(backend)) == 1 else QUESTIONS[1]
        return "An answer."

    backend = use(script, ScriptedBackend)
    [row] = run(tmp_path, Magpie(turns=2, pre_query_template=preset), empty_rows(1),
                ScriptedConfig())["data"]
    first, second = (str(request.prompt) for request in raw_requests(backend))
    assert second == first + QUESTIONS[0] + after_first.format(a="An answer.")
    assert [m["content"] for m in row["messages"]] == [QUESTIONS[0], "An answer.", QUESTIONS[1],
                                                       "An answer."]


def test_turns_above_one_with_an_explicit_template_text_are_refused() -> None:
    with pytest.raises(ConfigError) as error:
        Pipeline([Magpie(turns=2, pre_query_template="### User:\n")], input=empty_rows(1),
                 backends={"default": ScriptedConfig()})
    assert error.value.key == "turns"


def test_a_later_instruction_the_cleaning_drops_drops_the_whole_conversation(
    tmp_path: Path
) -> None:
    def script(request: Request, attempt: int) -> str:
        if request.prompt is not None:
            return QUESTIONS[0] if request.prompt == DEFAULT_PREFIX else "Why?"
        return "An answer."

    use(script)
    out = run(tmp_path, Magpie(turns=3), empty_rows(1))
    assert out["data"] == []
    [dropped] = out["dropped"]
    assert dropped["drop_reason"] == "turn 2 instruction: instruction too short (1 words < min_words 3)"
    assert dropped["messages"] == [{"role": "user", "content": QUESTIONS[0]},
                                   {"role": "assistant", "content": "An answer."}]


class CutBackend(TemplatedBackend):
    """Answers the second turn's question with a reply cut at max_tokens."""

    async def generate(self, request: Request) -> Completion:
        completion = await super().generate(request)
        if request.messages is not None and request.messages[-1]["content"] == QUESTIONS[1]:
            completion.finish_reason = "length"
        return completion


def test_an_answer_cut_at_max_tokens_in_any_turn_drops_the_conversation(tmp_path: Path) -> None:
    use(numbered, CutBackend)
    out = run(tmp_path, Magpie(turns=3), empty_rows(1))  # truncated_response: flag, the default
    assert out["data"] == []
    [dropped] = out["dropped"]
    assert dropped["drop_reason"] == "turn 2: response cut off at response_max_tokens (1024)"
    assert len(dropped["messages"]) == 4
    assert dropped["metadata"]["magpie"]["turns"][-1]["finish_reason"] == "length"


def test_an_empty_answer_in_a_later_turn_drops_the_conversation(tmp_path: Path) -> None:
    def script(request: Request, attempt: int) -> str:
        if request.messages is not None and request.messages[-1]["content"] == QUESTIONS[1]:
            return "  "
        return numbered(request, attempt)

    use(script)
    [dropped] = run(tmp_path, Magpie(turns=2), empty_rows(1))["dropped"]
    assert dropped["drop_reason"] == "turn 2: empty response (finish_reason=stop)"


def test_a_turn_that_keeps_failing_sends_the_conversation_to_failed(tmp_path: Path) -> None:
    def script(request: Request, attempt: int) -> str:
        if request.prompt is not None and QUESTIONS[0] in request.prompt:
            raise server_error(500)  # turn 2's instruction, every attempt
        return numbered(request, attempt)

    use(script)
    config = TemplatedConfig(max_retries=1)
    out = run(tmp_path, Magpie(turns=3), empty_rows(1), config)
    assert out["data"] == [] and out["dropped"] == []
    [failed] = out["failed"]
    assert "turn 2 (user, backend 'default')" in failed["error"]
    assert failed["error_type"] == "InternalServerError" and failed["attempts"] == 2
    assert "messages" not in failed


def test_one_turn_writes_the_single_turn_row_unchanged(tmp_path: Path) -> None:
    use(numbered)
    [row] = run(tmp_path, Magpie(turns=1), empty_rows(1))["data"]
    assert (row["prompt"], row["completion"], row["response_truncated"]) == (
        QUESTIONS[0], f"answer to {QUESTIONS[0]}", False)
    assert "messages" not in row and "turns" not in row["metadata"]["magpie"]
