"""The transformers backend on the embedded SmolLM2 GGUF, loaded by transformers (no llama.cpp).

Loading de-quantizes the GGUF (tens of seconds on two cores), so one backend serves the module.
Answers are kept short (max_tokens <= 16): these tests are about the mechanics (batching,
logprobs, stops, seeds, scoring), not the quality of a 135M model.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from stillroom.generate.magpie import PRESETS, Magpie, PreQuery
from stillroom.llm import LLMClient, TransformersBackend, TransformersConfig, backends
from stillroom.llm.llamacpp import embedded_model_path
from stillroom.llm.types import Completion, GenerationParams, Request

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def backend() -> Iterator[TransformersBackend]:
    built = TransformersConfig().build()
    assert isinstance(built, TransformersBackend)
    built.load()
    yield built
    asyncio.run(built.aclose())


@pytest.fixture
def batch_sizes(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> dict[str, list[int]]:
    """The size of every batch the worker runs during the test, by what it did."""
    sizes: dict[str, list[int]] = {"generate": [], "score": []}
    for name, work in (("generate", backend._generate_sync), ("score", backend._score_sync)):

        def recording(jobs: list[Any], name: str = name, work: Any = work) -> list[Any]:
            sizes[name].append(len(jobs))
            return work(jobs)

        monkeypatch.setattr(backend, f"_{name}_sync", recording)
    return sizes


def ask(question: str = QUESTION, **params: Any) -> Request:
    params.setdefault("max_tokens", 12)
    return Request(
        messages=[{"role": "user", "content": question}], params=GenerationParams(**params)
    )


async def test_greedy_is_repeatable_and_does_not_depend_on_the_batch(
    backend: TransformersBackend, batch_sizes: dict[str, list[int]]
) -> None:
    client = LLMClient(backend, concurrency=16)  # no cache: every call reaches the model
    first = await client.generate(ask(temperature=0))
    second = await client.generate(ask(temperature=0))
    assert first.text and first.text == second.text
    # The same request again, batched with a longer prompt (so it is left-padded) and a raw one.
    together = await asyncio.gather(
        client.generate(
            ask("Write a long poem about the sea, the sky and the wind.", temperature=0)
        ),
        client.generate(ask(temperature=0)),
        client.generate(
            Request(
                prompt="The capital of France is",
                params=GenerationParams(temperature=0, max_tokens=6),
            )
        ),
    )
    assert batch_sizes["generate"] == [1, 1, 3]
    poem, again, raw = together
    assert again.text == first.text
    assert again.completion_tokens == first.completion_tokens
    assert poem.text and poem.text != first.text
    assert raw.text and raw.completion_tokens <= 6
    for completion in (first, poem, raw):
        assert completion.prompt_tokens > 0 and completion.completion_tokens > 0
        assert completion.finish_reason in ("stop", "length")
        assert completion.model == "SmolLM2-135M-Instruct"
        assert completion.logprobs is None  # not asked for
    assert client.stats.prompt_tokens == sum(c.prompt_tokens for c in (first, second, *together))


async def test_logprobs_have_k_alternatives_and_match_greedy(backend: TransformersBackend) -> None:
    completion = await backend.generate(ask(temperature=0, max_tokens=8, top_logprobs=3))
    assert completion.logprobs is not None
    assert len(completion.logprobs) == completion.completion_tokens
    for entry in completion.logprobs:
        alternatives = entry["top_logprobs"]
        assert len(alternatives) == 3
        assert entry["logprob"] <= 0.0
        values = [alt["logprob"] for alt in alternatives]
        assert values == sorted(values, reverse=True)
        # Greedy: the chosen token is the most likely one, with the same logprob.
        assert alternatives[0]["id"] == entry["id"]
        assert alternatives[0]["logprob"] == entry["logprob"]
        assert set(entry) == {"token", "id", "logprob", "top_logprobs"}
    assert "".join(entry["token"] for entry in completion.logprobs) == completion.text


async def test_stop_strings_cut_the_text(backend: TransformersBackend) -> None:
    full = await backend.generate(ask(temperature=0, max_tokens=12, top_logprobs=0))
    words = full.text.split()
    assert len(words) >= 3, full.text
    stop = " " + words[2]
    stopped = await backend.generate(
        ask(temperature=0, max_tokens=12, top_logprobs=0, stop=(stop, "never appears"))
    )
    assert stopped.text == full.text[: full.text.index(stop)]
    assert stopped.finish_reason == "stop"
    assert 0 < stopped.completion_tokens < full.completion_tokens
    assert len(stopped.logprobs or []) == stopped.completion_tokens


async def test_a_magpie_prefix_is_read_as_written_and_stops_at_the_newline(
    backend: TransformersBackend,
) -> None:
    # The embedded model's template text, cut before the user's words: the prompt ids are the
    # text's own (its first token is <|im_start|>, the tokenizer's BOS: never a second one).
    prefix = PRESETS["smollm2"].plain
    tokenizer = backend._tokenizer
    ids = backend._prompt_ids(prefix)
    assert ids == list(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    assert ids.count(tokenizer.bos_token_id) == prefix.count(tokenizer.bos_token or "\0")
    stops = Magpie().instruction_stops(PreQuery(prefix, "<|im_end|>", "t"))
    asked = await backend.generate(
        Request(prompt=prefix, params=GenerationParams(temperature=0, max_tokens=16,
                                                       stop=tuple(stops)))
    )
    assert "\n" not in asked.text and "assistant" not in asked.text


async def test_max_tokens_ends_with_length(backend: TransformersBackend) -> None:
    completion = await backend.generate(
        ask("Write a long poem about the sea, the sky and the wind.", temperature=0, max_tokens=3)
    )
    assert completion.completion_tokens == 3
    assert completion.finish_reason == "length"


async def test_a_seeded_sample_is_the_same_whatever_runs_beside_it(
    backend: TransformersBackend, batch_sizes: dict[str, list[int]]
) -> None:
    seeded = ask("Say a random word.", temperature=1.0, seed=11, max_tokens=8)
    alone = await backend.generate(seeded)
    crowd = await asyncio.gather(
        backend.generate(ask("Name a colour.", temperature=0, max_tokens=8)),
        backend.generate(seeded),
        backend.generate(ask("Name an animal.", temperature=0.7, max_tokens=8)),  # unseeded
    )
    assert crowd[1].text == alone.text
    # The seeded request ran on its own; the greedy and the unseeded one shared a batch.
    assert sorted(batch_sizes["generate"]) == [1, 1, 2]
    others = [
        await backend.generate(
            Request(messages=seeded.messages, params=seeded.params, sample=sample)
        )
        for sample in (1, 2)
    ]
    # Each sample has its own seed (seed + sample), so the samples differ.
    assert len({alone.text, *(c.text for c in others)}) >= 2


async def test_score_prefers_the_models_own_answer(
    backend: TransformersBackend, batch_sizes: dict[str, list[int]]
) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    answer: Completion = await backend.generate(ask(temperature=0, max_tokens=12, top_logprobs=0))
    own, noise, alone = await asyncio.gather(
        backend.score(messages, answer.text),
        backend.score(messages, "zebra quantum pickle sandwich"),
        backend.score(None, "Paris is the capital of France."),
    )
    assert batch_sizes == {"generate": [1], "score": [3]}  # the three scores made one batch
    for scored in (own, noise, alone):
        assert scored
        assert all(math.isfinite(t["logprob"]) and t["logprob"] <= 0.0 for t in scored)
    assert sum(t["logprob"] for t in own) > sum(t["logprob"] for t in noise)
    # Teacher forcing the greedy answer gives back the logprobs it was generated with.
    assert [t["id"] for t in own] == [t["id"] for t in answer.logprobs or []]
    for scored, generated in zip(own, answer.logprobs or [], strict=True):
        assert scored["logprob"] == pytest.approx(generated["logprob"], abs=1e-3)
    assert "".join(t["token"] for t in alone) == "Paris is the capital of France."


def test_config_and_identity() -> None:
    assert backends.get("transformers") is TransformersConfig
    config = TransformersConfig()
    assert config.concurrency == 16
    assert TransformersConfig(batch_size=3).concurrency == 6
    assert TransformersConfig(batch_size=3, concurrency=1).concurrency == 1
    # Where it runs and how it batches do not change which answers a cache may serve.
    assert config.identity() == TransformersConfig(device="auto", batch_size=2).identity()
    assert config.identity() != TransformersConfig(dtype="bfloat16").identity()
    gguf = embedded_model_path()
    built = TransformersConfig(model=str(gguf)).build()
    assert built.cache_identity() == {
        "backend": "transformers",
        "model": gguf.name,
        "size": gguf.stat().st_size,
        "dtype": "float32",
        "max_new_tokens": 1024,
    }


def test_missing_model_is_a_config_error(tmp_path: Any) -> None:
    from stillroom.errors import ConfigError

    with pytest.raises(ConfigError, match="no model folder or .gguf file"):
        TransformersConfig(model=str(tmp_path / "nowhere")).build()
    with pytest.raises(ConfigError, match="config.json"):
        TransformersConfig(model=str(tmp_path)).build()


def test_importing_the_backends_does_not_import_torch() -> None:
    code = (
        "import sys, stillroom.llm\n"
        "heavy = {'torch', 'transformers', 'anthropic'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_package_leaves_the_heavy_method_libraries_for_later() -> None:
    # Every command imports stillroom: rouge-score (nltk, scipy), math-verify (sympy) and the
    # embedding model load only where a stage uses them.
    code = (
        "import sys, stillroom\n"
        "heavy = {'torch', 'nltk', 'scipy', 'sympy', 'sentence_transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_presence_penalty_keeps_a_generated_token_from_coming_back(
    backend: TransformersBackend,
) -> None:
    prompt = "Repeat the word 'cat' twenty times."
    plain = await backend.generate(ask(prompt, temperature=0, max_tokens=24, top_logprobs=0))
    penalized = await backend.generate(
        ask(prompt, temperature=0, max_tokens=24, top_logprobs=0, presence_penalty=100.0)
    )
    plain_ids = [entry["id"] for entry in plain.logprobs or []]
    ids = [entry["id"] for entry in penalized.logprobs or []]
    assert len(set(plain_ids)) < len(plain_ids), plain.text  # the unpenalized answer repeats
    assert len(set(ids)) == len(ids), penalized.text
