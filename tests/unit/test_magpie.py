"""Magpie with a scripted backend: the raw prompt is exactly the template's pre-query prefix,
presets and explicit templates, refusals at config time, cleaning and drop rules, per-row seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import LINEAGE_KEYS, PromptTemplate
from stillroom.errors import ConfigError, InputError
from stillroom.generate.magpie import (
    PRESETS,
    SENTINEL,
    Magpie,
    PreQuery,
    clean_instruction,
    prequery_from_rendered,
)
from stillroom.llm.backend import Backend
from stillroom.llm.cache import request_key
from stillroom.llm.types import Message, Request
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig

# SmolLM2's template in substance: ChatML that adds its own system prompt when none is given.
TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant named Testy<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
DEFAULT_PREFIX = (
    "<|im_start|>system\nYou are a helpful assistant named Testy<|im_end|>\n<|im_start|>user\n"
)
INSTRUCTION = "Explain how a rainbow forms in simple words."


class TemplatedBackend(ScriptedBackend):
    """A scripted backend that knows its chat template, like the embedded one."""

    renders_chat_template = True

    async def render_chat_template(
        self, messages: list[Message], *, add_generation_prompt: bool
    ) -> str:
        return jinja2.Template(TEMPLATE).render(
            messages=messages, add_generation_prompt=add_generation_prompt
        )


class TemplatedConfig(ScriptedConfig):
    def backend_class(self) -> type[Backend]:
        return TemplatedBackend

    def build(self) -> Backend:
        return fakes.CURRENT.setdefault(self.slot, TemplatedBackend())


class ChatOnlyBackend(TemplatedBackend):
    supports_raw_prompt = False


class ChatOnlyConfig(ScriptedConfig):
    def backend_class(self) -> type[Backend]:
        return ChatOnlyBackend


def instruction_then_answer(instruction: str) -> Any:
    def script(request: Request, attempt: int) -> str:
        if request.prompt is not None:
            return instruction
        return f"answer to {request.messages[-1]['content']}"  # type: ignore[index]

    return script


def use(script: Any, backend_class: type[ScriptedBackend] = TemplatedBackend) -> ScriptedBackend:
    fakes.CURRENT.clear()
    backend = fakes.CURRENT["default"] = backend_class(script)
    return backend


def run(tmp_path: Path, stage: Magpie, data: Any, config: Any = None) -> dict[str, list[dict]]:
    config = config or TemplatedConfig()
    Pipeline([stage], input=data, backends={"default": config}).run(
        tmp_path / "out", progress=False
    )
    folder = OutputFolder(tmp_path / "out")
    return {kind: folder.read_rows(kind) for kind in ("data", "dropped", "failed")}


def empty_rows(n: int) -> list[dict[str, Any]]:
    return [{"id": str(i)} for i in range(n)]


def raw_requests(backend: ScriptedBackend) -> list[Request]:
    return [call for call in backend.calls if call.prompt is not None]


def chat_requests(backend: ScriptedBackend) -> list[Request]:
    return [call for call in backend.calls if call.messages is not None]


def test_the_raw_prompt_is_exactly_the_templates_prefix_with_its_default_system(
    tmp_path: Path,
) -> None:
    backend = use(instruction_then_answer(INSTRUCTION))
    out = run(tmp_path, Magpie(), empty_rows(1))
    [raw] = raw_requests(backend)
    assert raw.prompt == DEFAULT_PREFIX
    assert raw.messages is None
    assert raw.params.temperature == 1.0 and raw.params.top_p == 1.0
    # The end of turn, then the reference's early stops (gen_ins.py: "\n" and "assistant").
    assert raw.params.stop == ("<|im_end|>", "\n", "assistant")
    [chat] = chat_requests(backend)
    assert chat.messages == [{"role": "user", "content": INSTRUCTION}]
    assert chat.params.temperature == 0.0  # the answer is greedy
    [row] = out["data"]
    assert row["prompt"] == INSTRUCTION
    assert row["completion"] == f"answer to {INSTRUCTION}"
    assert "messages" not in row


def test_a_custom_system_prompt_goes_into_the_prefix_and_the_answer(tmp_path: Path) -> None:
    backend = use(instruction_then_answer(INSTRUCTION))
    out = run(tmp_path, Magpie(system="Be terse.", messages=True), empty_rows(1))
    [raw] = raw_requests(backend)
    assert raw.prompt == "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n"
    [chat] = chat_requests(backend)
    assert chat.messages == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": INSTRUCTION},
    ]
    [row] = out["data"]
    assert row["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": INSTRUCTION},
        {"role": "assistant", "content": f"answer to {INSTRUCTION}"},
    ]


def test_lineage_of_an_instruction_made_from_nothing(tmp_path: Path) -> None:
    use(instruction_then_answer(INSTRUCTION))
    [row] = run(tmp_path, Magpie(), empty_rows(1))["data"]
    lineage = row["metadata"]["magpie"]
    assert set(LINEAGE_KEYS) <= set(lineage)
    assert lineage["method"] == "magpie" and lineage["step"] == "response"
    assert lineage["parent_id"] is None and lineage["seed_id"] == row["id"]
    assert lineage["input_id"] == "0"
    assert lineage["model"] == "scripted-model"
    assert lineage["template"] == PromptTemplate("magpie.chat_template", DEFAULT_PREFIX).version
    assert row["id"].startswith("magpie-")


def test_a_row_with_content_is_the_parent(tmp_path: Path) -> None:
    use(instruction_then_answer(INSTRUCTION))
    [row] = run(tmp_path, Magpie(), [{"id": "topic-1", "topic": "weather"}])["data"]
    assert row["metadata"]["magpie"]["parent_id"] == "topic-1"
    assert row["metadata"]["magpie"]["seed_id"] == "topic-1"
    assert row["topic"] == "weather"  # input columns are carried through


@pytest.mark.parametrize(
    ("preset", "system", "prefix", "stop"),
    [
        ("chatml", None, "<|im_start|>user\n", "<|im_end|>"),
        (
            "llama3",
            None,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
            "<|eot_id|>",
        ),
        (
            "chatml",
            "Be kind.",
            "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\n",
            "<|im_end|>",
        ),
        ("phi3", None, "<|user|>\n", "<|end|>"),
    ],
)
def test_a_preset_sends_its_prefix_even_to_a_backend_that_cannot_render(
    tmp_path: Path, preset: str, system: str | None, prefix: str, stop: str
) -> None:
    backend = use(instruction_then_answer(INSTRUCTION), ScriptedBackend)
    stage = Magpie(pre_query_template=preset, system=system)
    [row] = run(tmp_path, stage, empty_rows(1), ScriptedConfig())["data"]
    [raw] = raw_requests(backend)
    assert raw.prompt == prefix
    assert raw.params.stop == (stop, "\n", "assistant")
    expected = PromptTemplate(f"magpie.{preset}", prefix).version
    assert row["metadata"]["magpie"]["template"] == expected


def test_an_explicit_template_is_sent_as_written(tmp_path: Path) -> None:
    backend = use(instruction_then_answer(INSTRUCTION), ScriptedBackend)
    stage = Magpie(pre_query_template="### User:\n")
    [row] = run(tmp_path, stage, empty_rows(1), ScriptedConfig())["data"]
    [raw] = raw_requests(backend)
    assert raw.prompt == "### User:\n"
    assert raw.params.stop == ("\n", "assistant")  # an unknown template's end is unknown
    assert row["metadata"]["magpie"]["template"].startswith("magpie.explicit@")


def test_an_explicit_template_with_a_system_prompt_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        Pipeline(
            [Magpie(pre_query_template="### User:\n", system="Be kind.")],
            input=empty_rows(1),
            backends={"default": ScriptedConfig()},
        )
    assert error.value.key == "pre_query_template"


def test_a_backend_without_raw_prompts_is_refused_at_config_time() -> None:
    with pytest.raises(ConfigError) as error:
        Pipeline([Magpie()], input=empty_rows(1), backends={"default": ChatOnlyConfig()})
    assert error.value.key == "backend"
    assert "raw prompt" in str(error.value)


def test_a_backend_that_cannot_render_its_template_needs_pre_query_template() -> None:
    with pytest.raises(ConfigError) as error:
        Pipeline([Magpie()], input=empty_rows(1), backends={"default": ScriptedConfig()})
    assert error.value.key == "pre_query_template"
    assert "chatml" in str(error.value)
    # The same backend with a preset is fine.
    Pipeline(
        [Magpie(pre_query_template="chatml")],
        input=empty_rows(1),
        backends={"default": ScriptedConfig()},
    )


def test_distinct_rows_send_distinct_requests_and_a_rerun_sends_the_same(tmp_path: Path) -> None:
    backend = use(lambda request, attempt: f"instruction with seed {request.params.seed} here")
    out = run(tmp_path / "a", Magpie(), empty_rows(6))
    first = raw_requests(backend)
    assert len(first) == 6
    identity = backend.cache_identity()
    assert len({request_key(identity, r) for r in first}) == 6  # no two rows share a cached answer
    assert len({r["prompt"] for r in out["data"]}) == 6
    assert len({r["id"] for r in out["data"]}) == 6
    backend = use(lambda request, attempt: f"instruction with seed {request.params.seed} here")
    again = run(tmp_path / "b", Magpie(), empty_rows(6))
    assert backend.calls == []  # the same requests again: all answered from the request cache
    assert sorted(r["prompt"] for r in again["data"]) == sorted(r["prompt"] for r in out["data"])
    backend = use(lambda request, attempt: f"instruction with seed {request.params.seed} here")
    run(tmp_path / "c", Magpie(seed=7), empty_rows(6))
    assert {r.params.seed for r in raw_requests(backend)}.isdisjoint(
        {r.params.seed for r in first}
    )


PREQUERY = PreQuery(DEFAULT_PREFIX, "<|im_end|>", "t@1")


@pytest.mark.parametrize(
    ("text", "truncated", "kept", "reason"),
    [
        ("  What is the capital of Peru?  ", False, "What is the capital of Peru?", None),
        ("", False, "", "empty instruction"),
        ("   \n ", False, "", "empty instruction"),
        (
            "What is the capital of Peru?<|im_end|>\n<|im_start|>assistant\nLima.",
            False,
            "What is the capital of Peru?",
            None,
        ),
        ("<|im_start|>system\nYou are nice", False, "", "leaked template: the instruction starts"),
        ("What is the capital of Peru?", True, None, "instruction cut off"),
        ("List three prime numbers.<|im_end|>", True, "List three prime numbers.", None),
        ("assistant\nSure, here you go.", False, None, "leaked template: starts with a role"),
        ("User: what is a prime number?", False, "User: what is a prime number?", None),
        (
            "You are a helpful assistant named Testy and you answer well",
            False,
            None,
            "leaked template: repeats the template's system prompt",
        ),
        ("Hello there", False, "Hello there", "instruction too short (2 words < min_words 3)"),
        ("Hello there friend", False, "Hello there friend", None),
    ],
)
def test_cleaning_and_drop_rules(
    text: str, truncated: bool, kept: str | None, reason: str | None
) -> None:
    cleaned = clean_instruction(
        text, PREQUERY, truncated=truncated, min_words=3, stops=["<|im_end|>"]
    )
    if kept is not None:
        assert cleaned.instruction == kept
    if reason is None:
        assert cleaned.drop_reason is None
    else:
        assert cleaned.drop_reason is not None and cleaned.drop_reason.startswith(reason)


def test_a_dropped_instruction_is_in_dropped_with_lineage_and_no_answer_is_asked(
    tmp_path: Path,
) -> None:
    backend = use(instruction_then_answer("<|im_start|>assistant\nHi"))
    out = run(tmp_path, Magpie(), empty_rows(2))
    assert out["data"] == [] and out["failed"] == []
    assert len(out["dropped"]) == 2
    for row in out["dropped"]:
        assert row["drop_reason"].startswith("leaked template")
        lineage = row["metadata"]["magpie"]
        assert lineage["method"] == "magpie" and lineage["step"] == "instruction"
        assert lineage["raw_instruction"] == "<|im_start|>assistant\nHi"
        assert row["id"].startswith("magpie-")
    assert chat_requests(backend) == []


def test_an_empty_answer_drops_the_row_with_its_instruction(tmp_path: Path) -> None:
    use(lambda request, attempt: INSTRUCTION if request.prompt is not None else "  ")
    out = run(tmp_path, Magpie(), empty_rows(1))
    [row] = out["dropped"]
    assert row["drop_reason"].startswith("empty response")
    assert row["prompt"] == INSTRUCTION
    assert row["metadata"]["magpie"]["step"] == "response"


def test_a_row_without_an_id_is_refused_before_any_request(tmp_path: Path) -> None:
    assert "`id`" in (Magpie().check_row({"topic": "x"}) or "")
    assert Magpie().check_row({"id": "1"}) is None
    backend = use(instruction_then_answer(INSTRUCTION))
    with pytest.raises(InputError, match="`id`"):
        run(tmp_path, Magpie(), [{"topic": "x"}])
    assert backend.calls == []


def test_prefix_is_cut_at_the_sentinel_and_end_of_turn_follows_it() -> None:
    rendered = f"<s>[INST] {SENTINEL} [/INST]"
    found = prequery_from_rendered(rendered, "magpie.chat_template")
    assert found.prefix == "<s>[INST] "
    assert found.end_of_turn == "[/INST]"
    with pytest.raises(ValueError, match="verbatim"):
        prequery_from_rendered("<|user|>\nsomething else", "x")


def test_a_template_that_rejects_a_system_prompt_fails_the_row_with_the_reason(
    tmp_path: Path,
) -> None:
    class NoSystemBackend(TemplatedBackend):
        async def render_chat_template(
            self, messages: list[Message], *, add_generation_prompt: bool
        ) -> str:
            raise ValueError("System role not supported")

    use(instruction_then_answer(INSTRUCTION), NoSystemBackend)
    out = run(tmp_path, Magpie(system="x"), empty_rows(1))
    [row] = out["failed"]
    assert row["error_type"] == "ChatTemplateError"
    assert "System role not supported" in row["error"]


def test_presets_hold_a_system_slot() -> None:
    for name, preset in PRESETS.items():
        assert "{system}" in preset.with_system, name
        assert preset.end_of_turn, name


# -- the reference's early stops and truncated answers ------------------------------------------


@pytest.mark.parametrize(
    ("options", "stops"),
    [
        ({"stop_at_newline": False, "stop_at_assistant": False}, ("<|im_end|>",)),
        ({"stop_at_assistant": False}, ("<|im_end|>", "\n")),
        ({"stop": ["###"]}, ("###", "\n", "assistant")),
        ({"stop": ["\n"], "stop_at_assistant": False}, ("\n",)),
    ],
)
def test_early_stops_can_be_turned_off_and_add_to_explicit_stops(
    tmp_path: Path, options: dict[str, Any], stops: tuple[str, ...]
) -> None:
    backend = use(instruction_then_answer(INSTRUCTION))
    run(tmp_path, Magpie(**options), empty_rows(1))
    [raw] = raw_requests(backend)
    assert raw.params.stop == stops


@pytest.mark.parametrize(
    ("options", "kept"),
    [
        ({}, "Name three rivers in Peru."),  # cut at the newline, as the reference does
        ({"stop_at_newline": False}, "Name three rivers in Peru.\nUse a list."),
    ],
)
def test_an_instruction_is_cut_at_the_newline_unless_turned_off(
    tmp_path: Path, options: dict[str, Any], kept: str
) -> None:
    # The scripted backend ignores stop strings, as a server may: the cleaning cuts too.
    use(instruction_then_answer("Name three rivers in Peru.\nUse a list."))
    [row] = run(tmp_path, Magpie(**options), empty_rows(1))["data"]
    assert row["prompt"] == kept


def test_an_instruction_is_cut_where_a_skipped_assistant_header_left_its_word(
    tmp_path: Path,
) -> None:
    use(instruction_then_answer("Name three rivers in Peru.assistant\n\nThe Amazon,"))
    [row] = run(tmp_path, Magpie(), empty_rows(1))["data"]
    assert row["prompt"] == "Name three rivers in Peru."


class CutAnswerBackend(TemplatedBackend):
    """Answers that ran into max_tokens: finish_reason "length" (instructions end normally)."""

    async def generate(self, request: Request) -> Any:
        done = await super().generate(request)
        if request.messages is not None and "cut" in str(request.messages[-1]["content"]):
            done.finish_reason = "length"
        return done


def test_a_truncated_answer_is_kept_and_flagged_by_default(tmp_path: Path) -> None:
    # The reference keeps every answer (gen_res.py never reads finish_reason); the flag says
    # which ones are unfinished instead of passing them off as complete.
    use(lambda request, attempt: f"Tell me a story, row {request.params.seed % 2 and 'cut'} now"
        if request.prompt is not None else "Once upon a", CutAnswerBackend)
    stage = Magpie()
    assert "response_truncated" in stage.generated_columns()
    out = run(tmp_path, stage, empty_rows(8))
    assert out["dropped"] == [] and len(out["data"]) == 8
    flags = {row["prompt"]: row["response_truncated"] for row in out["data"]}
    assert flags and all(flag is ("cut" in prompt) for prompt, flag in flags.items())
    assert True in flags.values() and False in flags.values()
    for row in out["data"]:
        expected = "length" if row["response_truncated"] else "stop"
        assert row["metadata"]["magpie"]["response_finish_reason"] == expected


def test_a_truncated_answer_is_dropped_with_its_reason_when_asked(tmp_path: Path) -> None:
    use(lambda request, attempt: "Tell me a long story, cut short"
        if request.prompt is not None else "Once upon a", CutAnswerBackend)
    stage = Magpie(truncated_response="drop", response_max_tokens=5)
    assert "response_truncated" not in stage.generated_columns()
    out = run(tmp_path, stage, empty_rows(2))
    assert out["data"] == [] and len(out["dropped"]) == 2
    for row in out["dropped"]:
        assert row["drop_reason"] == "response cut off at response_max_tokens (5)"
        assert row["completion"] == "Once upon a"
        assert row["metadata"]["magpie"]["step"] == "response"


# -- one BOS on the transformers backend ----------------------------------------------------------


def test_a_pre_query_prefix_holding_the_bos_text_reaches_the_model_with_one_bos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Llama-3-like case on the tiny model: the prefix starts with the BOS text, as the
    template renders it, and the tokenizer also adds BOS (and here an EOS after the text) by
    default. The model must see exactly one BOS, and nothing after the prefix."""
    pytest.importorskip("torch")
    from tokenizers import processors

    from stillroom.llm.transformers_backend import TransformersBackend, TransformersConfig
    from tests.tiny_models import byte_tokenizer, tiny_llama

    tokenizer = byte_tokenizer(bos=True)
    # A post-processor that also appends a special token (like add_eos_token=True).
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <pad>", special_tokens=[("<bos>", 1), ("<pad>", 0)]
    )
    folder = tmp_path / "tiny"
    tiny_llama(tokenizer, 256).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    seen: list[list[int]] = []
    original = TransformersBackend._prompt_ids

    def spy(self: Any, prompt: Any) -> list[int]:
        ids = original(self, prompt)
        if isinstance(prompt, str):
            seen.append(ids)
        return ids

    monkeypatch.setattr(TransformersBackend, "_prompt_ids", spy)
    prefix = "<bos><|user|>\n"
    stage = Magpie(pre_query_template=prefix, max_tokens=4, min_words=1, response_max_tokens=2)
    config = TransformersConfig(model=str(folder))
    Pipeline([stage], input=empty_rows(1), backends={"default": config}).run(
        tmp_path / "out", progress=False
    )
    plain = list(tokenizer("<|user|>\n", add_special_tokens=False)["input_ids"])
    assert seen == [[1, *plain]]  # one BOS, the prefix as written, no trailing special token
