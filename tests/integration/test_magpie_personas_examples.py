"""Magpie on the embedded SmolLM2-135M-Instruct: the pre-query prefix cut from the real GGUF chat
template. examples/magpie.yaml and examples/personas.yaml run through the CLI in
tests/integration/test_examples.py, which checks their rows."""

from __future__ import annotations

import asyncio

import pytest

from stillroom.generate.magpie import PRESETS, Magpie
from stillroom.llm.llamacpp import LlamaCppBackend
from stillroom.llm.types import Request

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
