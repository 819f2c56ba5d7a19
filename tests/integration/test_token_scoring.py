"""Scoring given token ids (a teacher scoring a student's own tokens) with real engines: the
embedded model in process through llama.cpp, and behind llama-cpp-python's OpenAI server."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stillroom.llm.cache import RequestCache
from stillroom.llm.client import LLMClient
from stillroom.llm.llamacpp import LlamaCppBackend, embedded_model_path
from stillroom.llm.openai_compat import OpenAIConfig
from stillroom.llm.types import BackendError, GenerationParams, Request, RequestFailed
from stillroom.testing.echo_server import echo_logprob
from tests.servers import echo_command, free_port, running

pytestmark = pytest.mark.integration

N_CTX = 256
CHAT = (
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    "2 + 2 equals 4. Adding two and two gives four, the answer."
)


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(n_ctx=N_CTX, n_threads=1)
    yield backend
    asyncio.run(backend.aclose())


def tokenize(backend: LlamaCppBackend, text: str) -> list[int]:
    model = backend._model(False)
    return [int(t) for t in model.tokenize(text.encode(), add_bos=False, special=True)]


def reference_logprobs(ids: list[int]) -> np.ndarray:
    """Log-softmax of every position's logits from a separate llama.cpp context that evaluates
    the ids in one batch (no chunking, no reuse): row i is the distribution after ids[:i+1]."""
    from llama_cpp import Llama

    model = Llama(model_path=str(embedded_model_path()), n_ctx=N_CTX, n_threads=1,
                  logits_all=True, verbose=False)
    try:
        model.eval(ids)
        logits = np.asarray(model.scores[: len(ids)], dtype=np.float64)
    finally:
        model.close()
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def test_llamacpp_scores_match_a_separate_evaluation(llama: LlamaCppBackend) -> None:
    ids = tokenize(llama, CHAT)
    prompt = tokenize(llama, CHAT.split("2 + 2 equals")[0])
    assert ids[: len(prompt)] == prompt
    start = len(prompt)
    entries = asyncio.run(llama.score_tokens(ids, start, 4))
    reference = reference_logprobs(ids)
    assert [entry["id"] for entry in entries] == ids[start:]
    for offset, entry in enumerate(entries):
        row = reference[start + offset - 1]
        assert entry["logprob"] == pytest.approx(row[ids[start + offset]], abs=1e-3)
        top = entry["top_logprobs"]
        assert [alt["id"] for alt in top] == [int(i) for i in np.argsort(-row)[:4]]
        assert [alt["logprob"] for alt in top] == sorted((alt["logprob"] for alt in top), reverse=True)
        if entry["id"] == top[0]["id"]:
            assert entry["logprob"] == top[0]["logprob"]
    assert "".join(entry["token"] for entry in entries) == "2 + 2 equals" + CHAT.split("2 + 2 equals")[1]
    without = asyncio.run(llama.score_tokens(ids, start))
    assert "top_logprobs" not in without[0]
    assert [e["logprob"] for e in without] == [e["logprob"] for e in entries]


def test_llamacpp_prefix_reuse_gives_a_fresh_models_numbers(llama: LlamaCppBackend) -> None:
    # Several samples of one prompt share its chunks: scoring them one after another must give
    # exactly what a fresh backend gives for each.
    prompt = tokenize(llama, CHAT.split("2 + 2 equals")[0])
    samples = [prompt + tokenize(llama, text) for text in
               ("Four.", "The answer is 4, since two plus two is four.", "4")]
    in_turn = [asyncio.run(llama.score_tokens(ids, len(prompt), 2)) for ids in samples]
    assert asyncio.run(llama.score_tokens(samples[0], len(prompt), 2)) == in_turn[0]
    fresh = LlamaCppBackend(n_ctx=N_CTX, n_threads=1)
    try:
        for ids, scored in zip(samples, in_turn, strict=True):
            assert asyncio.run(fresh.score_tokens(ids, len(prompt), 2)) == scored
    finally:
        asyncio.run(fresh.aclose())


def test_llamacpp_scores_agree_with_generated_logprobs(llama: LlamaCppBackend) -> None:
    # The teacher's score of the student's tokens is what the teacher's own sampling reported.
    request = Request(prompt="Name a colour:", params=GenerationParams(
        temperature=0.0, max_tokens=8, top_logprobs=1, seed=1))
    completion = asyncio.run(llama.generate(request))
    model = llama._model(True)
    prompt_ids, _ = llama._prompt(model, request)
    generated = [entry["id"] for entry in completion.logprobs or []]
    entries = asyncio.run(llama.score_tokens([*prompt_ids, *generated], len(prompt_ids)))
    assert [entry["id"] for entry in entries] == generated
    # Generation evaluates its tokens one at a time, scoring in batches; on this 4-bit model
    # llama.cpp's two paths differ by up to ~0.1 nat from the fifth generated token on (measured:
    # a separate context fed one token at a time reproduces the generated numbers exactly). A
    # row off by one would differ by whole nats.
    gaps = [abs(scored["logprob"] - sampled["logprob"])
            for scored, sampled in zip(entries, completion.logprobs or [], strict=True)]
    assert gaps[:4] == pytest.approx([0.0] * 4, abs=1e-3)
    assert max(gaps) < 0.2 and sum(gaps) / len(gaps) < 0.06


def test_llamacpp_refuses_ids_out_of_range_and_contexts_too_long(llama: LlamaCppBackend) -> None:
    vocabulary = llama._model(True).n_vocab()
    with pytest.raises(BackendError, match=f"token id {vocabulary} is outside") as error:
        asyncio.run(llama.score_tokens([1, 2, vocabulary], 1))
    assert not error.value.retryable
    with pytest.raises(BackendError, match=f"{N_CTX + 1} tokens.*n_ctx is {N_CTX}") as error:
        asyncio.run(llama.score_tokens([1] * (N_CTX + 1), 1))
    assert not error.value.retryable
    # A context that fills n_ctx exactly still scores, and the backend still works afterwards.
    full = asyncio.run(llama.score_tokens([1] + [28] * (N_CTX - 1), N_CTX - 2))
    assert len(full) == 2 and all(np.isfinite(entry["logprob"]) for entry in full)


# -- served teachers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    folder = tmp_path_factory.mktemp("echo")
    with running(echo_command(port), port, folder / "echo.log"):
        yield f"http://127.0.0.1:{port}/v1"


def _client(url: str, cache: RequestCache | None = None, **options: Any) -> LLMClient:
    config = OpenAIConfig(model="echo", base_url=url, **options)
    return LLMClient.from_config(config, cache=cache, retry_base_delay=0.01, retry_max_delay=0.01)


async def _score(client: LLMClient, *calls: tuple[list[int], int, int | None]) -> list[Any]:
    try:
        return list(await asyncio.gather(*(client.score_tokens(*call) for call in calls)))
    finally:
        await client.backend.aclose()


@pytest.mark.parametrize("options", [
    {}, {"client": "sdk"}, {"score_api": "prompt_logprobs"},
    {"score_api": "prompt_logprobs", "client": "sdk"},
])
def test_a_served_teacher_scores_given_ids_through_the_client(
    echo_url: str, tmp_path: Path, options: dict[str, Any]
) -> None:
    ids = [5, 900, 17, 17, 4242]
    cache = RequestCache(tmp_path / "cache.sqlite")
    client = _client(echo_url, cache, **options)
    scored, plain = asyncio.run(_score(client, (ids, 2, 3), (ids, 1, None)))
    assert [e["id"] for e in scored] == ids[2:] and [e["id"] for e in plain] == ids[1:]
    assert [e["logprob"] for e in plain] == [echo_logprob(p, t) for p, t in zip(ids, ids[1:], strict=False)]
    assert [e["token"] for e in scored] == [f"<{t}>" for t in ids[2:]]
    assert all("top_logprobs" not in e for e in plain)
    by_id = options.get("score_api") == "prompt_logprobs"
    for previous, entry in zip(ids[1:], scored, strict=False):
        top = entry["top_logprobs"]
        assert len(top) == 3 and [t["logprob"] for t in top] == sorted(
            (t["logprob"] for t in top), reverse=True)
        assert top[0] == {"id": previous + 1 if by_id else None, "token": f"<{previous + 1}>",
                          "logprob": pytest.approx(-0.1)}
    again = _client(echo_url, cache, **options)
    assert asyncio.run(_score(again, (ids, 2, 3))) == [scored]
    assert (again.stats.cache_hits, again.stats.requests_sent) == (1, 0)
    cache.close()


def test_a_server_scoring_the_wrong_number_of_tokens_is_retried_then_fails(echo_url: str) -> None:
    client = _client(echo_url, None, extra_body={"echo_score_drop": 1}, max_retries=2)
    with pytest.raises(RequestFailed, match="ScoreMismatch"):
        asyncio.run(_score(client, ([5, 6, 7], 1, 2)))
    assert client.stats.requests_sent == 3


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1"]
    with running(command, port, log, timeout=120):
        yield f"http://127.0.0.1:{port}/v1"


def test_llama_cpp_python_server_cannot_score_token_ids_and_says_so_at_once(
    llama_server: str, llama: LlamaCppBackend
) -> None:
    # Its /completions takes text prompts only (0.3.x): refused with what to use instead, not
    # retried (a retry cannot change it).
    ids = tokenize(llama, CHAT)
    client = _client(llama_server, None, max_retries=3)
    with pytest.raises(RequestFailed, match="takes text only"):
        asyncio.run(_score(client, (ids, 5, 2)))
    assert client.stats.requests_sent == 1


def _text_echo(url: str, **options: Any) -> LLMClient:
    return LLMClient.from_config(OpenAIConfig(kind="openai", base_url=url, model="smollm2",
                                              score_api="text_echo", max_retries=0, **options))


def test_llama_cpp_python_server_scores_the_text_of_the_ids_as_llamacpp_does(
    llama_server: str, llama: LlamaCppBackend
) -> None:
    # score_api: text_echo sends the ids' text; the server's numbers equal the in-process
    # engine's (same GGUF), position by position, alternatives included.
    ids = tokenize(llama, CHAT)
    start = len(ids) - 1 - ids[::-1].index(ids[0]) + 2  # the assistant's answer
    served = _text_echo(llama_server)
    local = LLMClient(llama)
    got = asyncio.run(served.score_tokens(ids, start, 3, text=CHAT))
    want = asyncio.run(local.score_tokens(ids, start, 3))
    assert [e["id"] for e in got] == ids[start:]
    for mine, theirs in zip(got, want, strict=True):
        assert mine["token"] == theirs["token"]
        assert mine["logprob"] == pytest.approx(theirs["logprob"], abs=1e-3)
        # The same alternatives (by value: the server writes special tokens as "").
        assert [t["logprob"] for t in mine["top_logprobs"]] == pytest.approx(
            [t["logprob"] for t in theirs["top_logprobs"]], abs=1e-3)
    asyncio.run(served.aclose())


def test_text_echo_refuses_a_text_that_tokenizes_to_other_ids_and_a_context_without_bos(
    llama_server: str, llama: LlamaCppBackend
) -> None:
    ids = tokenize(llama, CHAT)
    # A non-canonical split: " four" written as " f" + "our" tokenizes back to one token.
    split = tokenize(llama, "<|im_start|>user\nhi<|im_end|>") + tokenize(llama, " f") + \
        tokenize(llama, "our")
    plain = tokenize(llama, "Two and two make four, said the teacher.")

    async def refusals() -> list[str]:
        served = _text_echo(llama_server)
        calls = [
            (split, 3, "<|im_start|>user\nhi<|im_end|> four"),
            # Without the leading BOS the server's echo would be one position off.
            (plain, 2, "Two and two make four, said the teacher."),
            (ids, 5, None),  # the text is needed
            # A scored token with the first token's id is refused up front.
            ([*ids, ids[0]], 5, CHAT + "<|im_start|>"),
        ]
        messages = []
        for token_ids, start, text in calls:
            with pytest.raises(RequestFailed) as failure:
                await served.score_tokens(token_ids, start, None, text=text)
            messages.append(str(failure.value))
        await served.aclose()
        return messages

    messages = asyncio.run(refusals())
    for message, expected in zip(messages, ["tokenizes this text differently", "one position off",
                                            "needs the text", "leaves out"], strict=True):
        assert expected in message
