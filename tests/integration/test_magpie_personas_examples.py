"""Magpie and persona prompts on the embedded SmolLM2-135M-Instruct: the pre-query prefix cut from
the real GGUF chat template, and both examples end to end (shortened)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import LINEAGE_KEYS
from stillroom.generate.magpie import PRESETS, TEMPLATE_MARKER, Magpie
from stillroom.generate.personas import PersonaPrompts
from stillroom.llm.llamacpp import LlamaCppBackend
from stillroom.llm.types import Request

EXAMPLES = Path(__file__).parents[2] / "examples"
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

pytestmark = pytest.mark.integration


def render_independently(template: str, messages: list[dict[str, str]]) -> str:
    """The GGUF's template rendered by plain jinja2 (not through the backend)."""
    import jinja2

    return jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token="", eos_token=""
    )


def test_magpie_prefix_is_what_the_embedded_template_renders_before_the_user_text() -> None:
    backend = LlamaCppBackend(n_ctx=512)
    try:
        plain = asyncio.run(Magpie().prequery(backend))
        custom = asyncio.run(Magpie(system="Answer briefly.").prequery(backend))
        template = backend._model(False).metadata["tokenizer.chat_template"]
    finally:
        asyncio.run(backend.aclose())
    user = "Tell me a fact about owls."
    rendered = render_independently(template, [{"role": "user", "content": user}])
    assert plain.prefix == rendered[: rendered.index(user)]
    assert SMOLLM_SYSTEM in plain.prefix  # the template's own default system prompt
    assert plain.prefix.endswith("<|im_start|>user\n")
    assert plain.end_of_turn == "<|im_end|>"
    assert plain.prefix == PRESETS["smollm2"].plain  # the preset for servers says the same
    rendered = render_independently(
        template,
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": user}],
    )
    assert custom.prefix == rendered[: rendered.index(user)]
    assert SMOLLM_SYSTEM not in custom.prefix


def test_the_raw_prefix_tokenizes_as_the_start_of_the_chat_prompt() -> None:
    backend = LlamaCppBackend(n_ctx=512)
    try:
        prequery = asyncio.run(Magpie().prequery(backend))
        model = backend._model(False)
        messages = [{"role": "user", "content": "Tell me a fact about owls."}]
        chat_tokens, _ = backend._prompt(model, Request(messages=messages))
        raw_tokens, _ = backend._prompt(model, Request(prompt=prequery.prefix))
        assert chat_tokens[: len(raw_tokens)] == raw_tokens
        # The prefix opens with <|im_start|>, the model's BOS: once, never doubled.
        assert raw_tokens[0] == model.token_bos() != raw_tokens[1]
    finally:
        asyncio.run(backend.aclose())


def assert_lineage(row: dict, stage: str, method: str) -> None:
    lineage = row["metadata"][stage]
    assert set(LINEAGE_KEYS) <= set(lineage), lineage
    assert lineage["method"] == method
    assert lineage["model"] == "SmolLM2-135M-Instruct"
    assert row["id"]


def test_magpie_example_runs_on_the_embedded_model(tmp_path: Path) -> None:
    pipeline = Pipeline.from_file(EXAMPLES / "magpie.yaml")
    stage = pipeline.stages[0]
    assert isinstance(stage, Magpie)
    stage.max_tokens = 40  # keep the test short; the example uses 96 and 192
    stage.response_max_tokens = 12
    result = pipeline.run(tmp_path / "out", progress=False, limit=3)
    folder = OutputFolder(tmp_path / "out")
    data, dropped = folder.read_rows("data"), folder.read_rows("dropped")
    assert result.counts["failed"] == 0
    assert len(data) + len(dropped) == 3  # one instruction per input row, kept or dropped
    for row in data:
        assert_lineage(row, "magpie", "magpie")
        assert row["metadata"]["magpie"]["step"] == "response"
        assert row["prompt"].strip() and row["completion"].strip()
        assert TEMPLATE_MARKER.search(row["prompt"]) is None
        assert len(row["prompt"].split()) >= stage.min_words
        assert "\n" not in row["prompt"]  # the reference's early stop at the newline
        # 12 answer tokens: an unfinished answer is kept and flagged, never passed off as whole.
        finish = row["metadata"]["magpie"]["response_finish_reason"]
        assert row["response_truncated"] is (finish == "length")
    for row in dropped:
        assert_lineage(row, "magpie", "magpie")
        assert row["drop_reason"].startswith(
            ("empty", "leaked template", "instruction", "empty response")
        )
    assert len({r["metadata"]["magpie"]["seed"] for r in data + dropped}) == 3


def test_personas_example_runs_on_the_embedded_model(tmp_path: Path) -> None:
    pipeline = Pipeline.from_file(EXAMPLES / "personas.yaml")
    prompts, complete = pipeline.stages
    assert isinstance(prompts, PersonaPrompts)
    prompts.max_tokens = 40  # keep the test short; the example uses 160 and 192
    complete.max_tokens = 12  # type: ignore[attr-defined]
    result = pipeline.run(tmp_path / "out", progress=False, limit=2)
    folder = OutputFolder(tmp_path / "out")
    data, dropped = folder.read_rows("data"), folder.read_rows("dropped")
    assert result.counts["failed"] == 0
    assert len(data) + len(dropped) == 2 * len(prompts.kinds)  # every prompt kept or dropped
    for row in data + dropped:
        assert_lineage(row, "persona_prompts", "personas")
        lineage = row["metadata"]["persona_prompts"]
        assert lineage["step"] == row["kind"] in prompts.kinds
        assert lineage["parent_id"] in {"persona-01", "persona-02"}
    for row in data:
        assert row["prompt"].strip() and row["completion"].strip()
        assert "complete" in row["metadata"]
        assert len(row["prompt"].split()) >= prompts.min_words
