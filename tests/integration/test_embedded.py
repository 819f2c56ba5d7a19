"""The embedded model, in-process through llama.cpp and behind llama.cpp's OpenAI server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stillroom import api
from stillroom.data.output import OutputFolder
from stillroom.llm.llamacpp import embedded_model_path
from stillroom.llm.openai_compat import OpenAIConfig
from tests.servers import free_port, running

pytestmark = pytest.mark.integration

PROMPTS = [{"id": "a", "prompt": "Name a colour."}, {"id": "b", "prompt": "What is 2 + 2?"}]


def test_in_process_with_logprobs_and_samples_is_reproducible(tmp_path: Path) -> None:
    options = dict(n=2, temperature=0.8, max_tokens=12, top_logprobs=3, seed=11, progress=False)
    first = api.complete(PROMPTS, tmp_path / "one", **options)
    second = api.complete(PROMPTS, tmp_path / "two", use_cache=False, **options)
    assert first.counts["data"] == 2 and second.backends["default"]["cache_hits"] == 0
    rows_one = {r["id"]: r for r in OutputFolder(tmp_path / "one").read_rows("data")}
    rows_two = {r["id"]: r for r in OutputFolder(tmp_path / "two").read_rows("data")}
    for key, row in rows_one.items():
        assert row["completions"] == rows_two[key]["completions"]  # same seed, no cache: same text
        assert len(row["completions"]) == 2 and all(text.strip() for text in row["completions"])
        for logprobs in row["logprobs"]:
            assert logprobs and all(len(token["top_logprobs"]) == 3 for token in logprobs)
            assert all(token["logprob"] <= 0 for token in logprobs)
        assert row["metadata"]["complete"]["model"] == "SmolLM2-135M-Instruct"


def test_logprob_tokens_spell_the_completion_even_when_cut_at_max_tokens(tmp_path: Path) -> None:
    # The last sampled token never enters llama.cpp's context; its id is recovered from the text
    # after the known tokens (tokenizing the whole text again merged "\n" + "\n" into "\n\n").
    prompts = [{"id": "poem", "prompt": "Write a four-line poem about rain, one line each."},
               {"id": "list", "prompt": "List three fruits, one per line."}]
    api.complete(prompts, tmp_path / "out", n=4, temperature=0.9, max_tokens=9, top_logprobs=2,
                 seed=3, progress=False)
    checked = 0
    for row in OutputFolder(tmp_path / "out").read_rows("data"):
        for text, logprobs in zip(row["completions"], row["logprobs"], strict=True):
            if text.isascii():
                assert "".join(entry["token"] for entry in logprobs) == text
                checked += 1
    assert checked >= 4


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--logits_all", "true"]
    with running(command, port, log, timeout=120):
        yield f"http://127.0.0.1:{port}/v1"


def test_complete_cli_against_llama_cpp_server_needs_no_key(llama_server: str, tmp_path: Path) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in PROMPTS))
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    stillroom = str(Path(sys.executable).with_name("stillroom"))
    result = subprocess.run(
        [stillroom, "complete", str(source), "-o", str(tmp_path / "out"), "--base-url", llama_server,
         "--model", "smollm2", "--max-tokens", "10", "--top-logprobs", "2", "--temperature", "0",
         "--concurrency", "2", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = OutputFolder(tmp_path / "out").read_rows("data")
    assert sorted(r["id"] for r in rows) == ["a", "b"]
    for row in rows:
        assert row["completion"].strip()
        assert row["logprobs"] and all(len(t["top_logprobs"]) == 2 for t in row["logprobs"])


def test_structured_output_through_llama_cpp_server(llama_server: str, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    backend = OpenAIConfig(model="smollm2", base_url=llama_server, structured_output="json_object")
    from stillroom import Pipeline
    from stillroom.stages import Complete

    Pipeline([Complete(backend="s", json_schema=schema, max_tokens=40, temperature=0.0)],
             input=[{"prompt": "Name a colour, as JSON."}], backends={"s": backend}).run(
        tmp_path / "out", progress=False)
    row = OutputFolder(tmp_path / "out").read_rows("data")[0]
    assert isinstance(row["completion_json"]["colour"], str)
    assert json.loads(row["completion"]) == row["completion_json"]


async def test_a_seeded_request_answers_the_same_whatever_ran_before_it() -> None:
    """Prompt chunks are reused across requests (a shared system prompt is evaluated once), yet
    the answer to a seeded request does not depend on what the model evaluated before it."""
    from stillroom.llm.llamacpp import LlamaCppBackend
    from stillroom.llm.types import GenerationParams, Request

    system = "You answer as a careful, friendly assistant. " * 12

    def ask(question: str, with_system: bool) -> Request:
        messages = [{"role": "system", "content": system}] if with_system else []
        messages.append({"role": "user", "content": question})
        return Request(messages=messages, params=GenerationParams(temperature=0.9, max_tokens=24, seed=5))

    cases = [("Name a fruit.", True), ("Tell me a joke.", True), ("Name a fruit.", False)]
    fresh = {}
    for case in cases:
        backend = LlamaCppBackend()
        fresh[case] = (await backend.generate(ask(*case))).text
        await backend.aclose()
    shared = LlamaCppBackend()
    for case in [cases[1], cases[0], cases[2], cases[0], cases[1]]:
        assert (await shared.generate(ask(*case))).text == fresh[case], case
    await shared.aclose()


async def test_presence_penalty_counts_generated_tokens_only() -> None:
    from stillroom.llm.llamacpp import LlamaCppConfig
    from stillroom.llm.types import GenerationParams, Request

    backend = LlamaCppConfig().build()
    ask = [{"role": "user", "content": "Repeat the word 'cat' twenty times."}]
    answers = []
    for penalty in (None, 100.0):
        params = GenerationParams(temperature=0, max_tokens=30, presence_penalty=penalty, top_logprobs=1)
        completion = await backend.generate(Request(messages=ask, params=params))
        answers.append([entry["token"] for entry in completion.logprobs or []])
    plain, penalized = answers
    assert len(set(plain)) < len(plain)  # "cat" comes back unpenalized
    assert penalized and len(set(penalized)) == len(penalized)
    # "cat" is in the prompt, yet the penalized answer may still say it once: prompt tokens are
    # not penalized (OpenAI's meaning).
    assert any("cat" in token for token in penalized)
    await backend.aclose()
