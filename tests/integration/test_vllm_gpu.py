"""The vLLM backend on a real GPU: generation with logprobs, and teacher-forced scoring.

Runs only where CUDA is available, vllm imports, and STILLROOM_VLLM_MODEL names a local model
folder (an instruct model with a chat template; a small one such as SmolLM2-135M-Instruct or
Qwen2.5-0.5B-Instruct keeps it quick). Nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os

import pytest

from stillroom.llm.types import BackendError, GenerationParams, Request
from stillroom.llm.vllm_backend import VLLMBackend, VLLMConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _skip_reason() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU here"
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install vllm)"
    try:
        import vllm  # noqa: F401
    except Exception as error:  # a broken install: say why rather than fail
        return f"vllm does not import ({type(error).__name__}: {error})"
    if not os.environ.get("STILLROOM_VLLM_MODEL"):
        return "set STILLROOM_VLLM_MODEL to a local model folder to run it"
    return None


@pytest.fixture(scope="module")
def backend() -> VLLMBackend:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    config = VLLMConfig(
        model=os.environ["STILLROOM_VLLM_MODEL"],
        max_model_len=1024,
        gpu_memory_utilization=0.5,
        enforce_eager=True,  # no CUDA graph capture: starts in seconds
        batch_size=8,
    )
    built = config.build()
    assert isinstance(built, VLLMBackend)
    built.load()
    return built


def ask(question: str, **params: object) -> Request:
    return Request(
        messages=[{"role": "user", "content": question}],
        params=GenerationParams(**params),  # type: ignore[arg-type]
    )


def test_generate_with_logprobs_then_score_the_same_text(backend: VLLMBackend) -> None:
    questions = ["Name a colour.", "What is 2 + 2?", "Say hello."]

    async def run() -> tuple[list, list]:
        completions = await asyncio.gather(
            *(backend.generate(ask(q, temperature=0, max_tokens=12, top_logprobs=3))
              for q in questions)
        )
        scores = await asyncio.gather(
            *(backend.score([{"role": "user", "content": q}], c.text, top_logprobs=3)
              for q, c in zip(questions, completions, strict=True))
        )
        return completions, scores

    completions, scores = asyncio.run(run())
    tokenizer = backend._tokenizer
    for completion, scored in zip(completions, scores, strict=True):
        assert completion.text and completion.finish_reason in ("stop", "length")
        entries = completion.logprobs
        assert entries is not None and len(entries) == completion.completion_tokens
        assert tokenizer.decode([e["id"] for e in entries], skip_special_tokens=True) == (
            completion.text
        )
        for entry in entries:
            top = entry["top_logprobs"]
            assert len(top) == 3
            assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
            # Greedy: the chosen token is the most likely one.
            assert entry["id"] == top[0]["id"]
            assert entry["logprob"] <= 0 and math.isfinite(entry["logprob"])
        # Teacher forcing the greedy text gives back its logprobs (same model, same numbers
        # up to batch-shape noise) wherever re-tokenizing the text gives the same tokens.
        if [e["id"] for e in scored] == [e["id"] for e in entries]:
            for forced, generated in zip(scored, entries, strict=True):
                assert forced["logprob"] == pytest.approx(generated["logprob"], abs=0.1)
        assert all(len(e["top_logprobs"]) == 3 for e in scored)


def test_seeded_sampling_reproduces_and_an_overlong_prompt_fails_alone(
    backend: VLLMBackend,
) -> None:
    async def run() -> list:
        return await asyncio.gather(
            backend.generate(ask("Tell me a word.", temperature=1.0, seed=7, max_tokens=8)),
            backend.generate(Request(prompt="word " * 2000, params=GenerationParams(max_tokens=4))),
            return_exceptions=True,
        )

    first, overlong = asyncio.run(run())
    (second, _) = asyncio.run(run())
    assert not isinstance(first, BaseException) and not isinstance(second, BaseException)
    assert first.text == second.text
    assert isinstance(overlong, BackendError) and overlong.status == 400
