"""TransformersBackend.score on a tiny random Llama in memory (no download): what a prompt of
None, "" or text means, the max_tokens / max_length cuts and their mark, pooled batches, and the
cache key of a scoring call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stillroom.llm.client import LLMClient, score_key
from stillroom.llm.types import BackendError, RequestFailed
from tests.tiny_models import byte_tokenizer, tiny_llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return byte_tokenizer(bos=False)


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    return tiny_llama(tokenizer, max_positions=64)


def backend_of(model: Any, tokenizer: Any, **options: Any) -> Any:
    from stillroom.llm.transformers_backend import TransformersBackend

    return TransformersBackend.from_model(model, tokenizer, name="tiny", **options)


def ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def logprobs_by_hand(model: Any, context: list[int], target: list[int]) -> list[float]:
    sequence = context + target
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([sequence])).logits[0].double(), dim=-1)
    return [float(logprobs[p - 1, sequence[p]]) for p in range(len(context), len(sequence)) if p > 0]


def test_none_is_after_bos_and_empty_text_is_as_the_tokenizer_reads_plain_text(
    model: Any, tokenizer: Any
) -> None:
    backend = backend_of(model, tokenizer)
    after_bos, plain, prompted = asyncio.run(_gather(
        backend.score(None, "abc"), backend.score("", "abc"), backend.score("Q:", "abc")
    ))
    target = ids(tokenizer, "abc")
    assert [e["logprob"] for e in after_bos] == pytest.approx(logprobs_by_hand(model, [1], target),
                                                              rel=1e-5)
    # This tokenizer puts nothing before plain text: nothing predicts "a", which is left out.
    assert [e["token"] for e in plain] == ["b", "c"]
    assert [e["logprob"] for e in plain] == pytest.approx(logprobs_by_hand(model, [], target),
                                                          rel=1e-5)
    assert [e["logprob"] for e in prompted] == pytest.approx(
        logprobs_by_hand(model, ids(tokenizer, "Q:"), target), rel=1e-5)
    assert not any("truncated" in e for e in after_bos + plain + prompted)
    with_bos = backend_of(model, byte_tokenizer(bos=True))
    (alone,) = asyncio.run(_gather(with_bos.score("", "abc")))
    assert [e["token"] for e in alone] == ["a", "b", "c"]  # after the tokenizer's own BOS


def test_max_tokens_and_max_length_cut_the_completion_and_mark_it(
    model: Any, tokenizer: Any
) -> None:
    backend = backend_of(model, tokenizer)
    prompt, completion = "Say:", "abcdefghij"
    full, first4, fits8, fits_model, nothing, exact = asyncio.run(_gather(
        backend.score(prompt, completion),
        backend.score(prompt, completion, max_tokens=4),
        backend.score(prompt, completion, max_length=len(ids(tokenizer, prompt)) + 8),
        backend.score(prompt, "z" * 100, max_length=10_000),  # the model holds 64
        backend.score(prompt, completion, max_length=3),  # the prompt alone is 4 tokens
        backend.score(prompt, completion, max_tokens=10),  # all of it: no cut
    ))
    assert [e["token"] for e in first4] == list("abcd") and first4[-1]["truncated"] is True
    assert [e["logprob"] for e in first4] == pytest.approx([e["logprob"] for e in full[:4]],
                                                           rel=1e-5)
    assert [e["token"] for e in fits8] == list("abcdefgh") and fits8[-1]["truncated"] is True
    assert len(fits_model) == 64 - len(ids(tokenizer, prompt)) and fits_model[-1]["truncated"]
    assert nothing == []
    assert [e["token"] for e in exact] == [e["token"] for e in full] == list(completion)
    assert [e["logprob"] for e in exact] == pytest.approx([e["logprob"] for e in full], rel=1e-5)
    assert not any("truncated" in e for e in exact + full)
    # Without max_length, a pair longer than the model is refused, as before.
    with pytest.raises(BackendError, match="holds 64"):
        asyncio.run(backend.score(prompt, "z" * 100))


def test_waiting_scores_are_pooled_sorted_by_length_and_split_by_batch_tokens(
    model: Any, tokenizer: Any
) -> None:
    backend = backend_of(model, tokenizer, batch_size=3, batch_tokens=60)
    shapes: list[list[int]] = []
    run_rows = backend._score_rows

    def recording(rows: list[Any], results: list[Any]) -> None:
        shapes.append([len(row.context) + len(row.target) for row in rows])
        run_rows(rows, results)

    backend._score_rows = recording
    completions = ["x" * n for n in (3, 25, 7, 18, 2, 30, 11, 5)]
    alone = [asyncio.run(_gather(backend_of(model, tokenizer).score("P:", c)))[0]
             for c in completions]
    together = asyncio.run(_gather(*(backend.score("P:", c) for c in completions)))
    # One pool (8 <= 8 batches of 3), longest first, at most 3 rows and 60 padded tokens a pass.
    flat = [length for lengths in shapes for length in lengths]
    assert sorted(flat, reverse=True) == flat and len(flat) == len(completions)
    assert all(len(lengths) <= 3 and len(lengths) * lengths[0] <= 60 or len(lengths) == 1
               for lengths in shapes)
    assert backend.score_passes == len(shapes) < len(completions)
    for batched, single in zip(together, alone, strict=True):
        assert [e["logprob"] for e in batched] == pytest.approx(
            [e["logprob"] for e in single], rel=1e-4, abs=1e-5)


def test_a_scoring_calls_cache_key_holds_its_limits_only_when_set(model: Any, tokenizer: Any) -> None:
    identity = {"backend": "transformers", "model": "tiny"}
    plain = score_key(identity, "p", "c", None)
    assert plain == score_key(identity, "p", "c", None, {})  # keys of earlier runs still hold
    assert plain != score_key(identity, "p", "c", None, {"max_length": 5})
    assert score_key(identity, "p", "c", None, {"max_tokens": 5}) != score_key(
        identity, "p", "c", None, {"max_length": 5})
    backend = backend_of(model, tokenizer)
    assert backend.cache_identity() == {"backend": "transformers", "model": "tiny",
                                        "dtype": "float32", "max_new_tokens": 1024}
    client = LLMClient(backend, timeout=None)
    cut = asyncio.run(client.score("Say:", "abcdef", max_tokens=2))
    assert len(cut) == 2 and cut[-1]["truncated"]
    with pytest.raises(RequestFailed, match="BadRequestError"):
        asyncio.run(client.score("Say:", "z" * 100))


def test_a_raw_prompt_that_starts_with_the_bos_text_gets_one_bos(model: Any) -> None:
    backend = backend_of(model, byte_tokenizer(bos=True))
    assert backend._prompt_ids("<bos>Hi") == backend._prompt_ids("Hi") == [1, *ids(
        backend._tokenizer, "Hi")]


async def _gather(*calls: Any) -> list[Any]:
    return list(await asyncio.gather(*calls))
