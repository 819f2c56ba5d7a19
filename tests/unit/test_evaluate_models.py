"""stillroom.evaluate with a tiny random Llama and the embedded tokenizer (built per module,
nothing downloaded): batched generation, perplexity against an independent computation, budget
forcing on a real model, and `stillroom eval` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from stillroom.cli.main import app  # noqa: E402
from stillroom.evaluate import (  # noqa: E402
    BudgetForcing,
    Sampling,
    TransformersGenerator,
    answer_perplexity,
    budget_force,
    summarize_perplexity,
)
from stillroom.train.common import render_prompt  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    # Untied embeddings: with tied ones a random model mostly repeats its last token, which
    # would make "batched equals unbatched" an easy test.
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    folder = tmp_path_factory.mktemp("student")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(student_dir: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()


PROMPTS = ["Hi", "What is 12 + 30? Answer with a number.", "Sort 3, 1, 2.",
           "Tell me a long story about a fox who lives in a forest near the river."]


def turns(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_batched_greedy_equals_unpadded_generate(model: Any, tokenizer: Any) -> None:
    generator = TransformersGenerator(model, tokenizer, batch_size=4)
    # Different lengths, one batch: left padding must not change any row's greedy tokens.
    outs = generator.generate([turns(p) for p in PROMPTS], 12)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        text = render_prompt(turns(prompt), tokenizer)
        assert generator.render(turns(prompt)) == text
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        reference = model.generate(
            ids, attention_mask=torch.ones_like(ids),
            generation_config=transformers.GenerationConfig(
                do_sample=False, max_new_tokens=12, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id),
        )[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in reference:
            reference = reference[: reference.index(tokenizer.eos_token_id)]
            assert out.finish_reason == "stop"
        else:
            assert out.finish_reason == "length"
        assert out.tokens == len(reference)
        assert out.text == tokenizer.decode(reference, skip_special_tokens=True)
    assert generator.tokens_generated == sum(o.tokens for o in outs)


def test_per_prompt_budgets_and_stop_strings(model: Any, tokenizer: Any) -> None:
    generator = TransformersGenerator(model, tokenizer, batch_size=2)
    prompts = [turns(p) for p in PROMPTS[:3]]
    outs = generator.generate(prompts, [3, 7, 0])
    assert [o.tokens for o in outs] == [3, 7, 0]
    assert [o.finish_reason for o in outs] == ["length", "length", "length"]
    full = generator.generate(prompts[1:2], 10)[0].text
    # A two-character piece of the text, without white space, that first appears mid-way.
    pieces = [full[i : i + 2] for i in range(len(full) - 1)]
    later = [p for p in pieces if p.strip() == p and len(p) == 2 and full.find(p) > 0]
    assert later, full
    stop = later[len(later) // 2]
    cut = generator.generate(prompts[1:2], 10, stop=[stop])[0]
    assert cut.finish_reason == "stop" and cut.text == full[: full.find(stop)]


def test_sampling_is_seeded(model: Any, tokenizer: Any) -> None:
    def sample(seed: int) -> list[str]:
        generator = TransformersGenerator(model, tokenizer, sampling=Sampling(1.0, 0.9, seed))
        return [o.text for o in generator.generate([turns(p) for p in PROMPTS], 8)]

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def independent_nll(model: Any, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """One unpadded forward, log-softmax, the answer tokens' log-probs summed by hand."""
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return -sum(float(logprobs[len(prompt_ids) + j - 1, token]) for j, token in enumerate(answer_ids))


def test_perplexity_equals_an_independent_computation(model: Any, tokenizer: Any) -> None:
    answers = ["12 + 30 = 42", "1, 2, 3", "Once upon a time a fox lived by the river.", "ok"]
    pairs = [(tokenizer(render_prompt(turns(p), tokenizer), add_special_tokens=False)["input_ids"], a)
             for p, a in zip(PROMPTS, answers, strict=True)]
    scored = answer_perplexity(model, tokenizer, pairs, batch_size=3)
    total_nll = total_tokens = 0.0
    for (prompt_ids, answer), got in zip(pairs, scored, strict=True):
        target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        expected = independent_nll(model, prompt_ids, target)
        assert got is not None and got.tokens == len(target) and not got.truncated
        assert got.nll == pytest.approx(expected, rel=1e-4)
        total_nll += expected
        total_tokens += len(target)
    summary = summarize_perplexity(scored)
    assert summary["perplexity"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-4)
    assert summary["tokens"] == total_tokens and summary["scored"] == 4


def test_perplexity_cuts_long_answers_and_skips_what_cannot_be_scored(model: Any, tokenizer: Any) -> None:
    prompt_ids = tokenizer("Say many words:", add_special_tokens=False)["input_ids"]
    long_answer = " ".join(["word"] * 50)
    scored = answer_perplexity(model, tokenizer, [(prompt_ids, long_answer), (prompt_ids, ""),
                                                  (list(range(5, 40)), "x")], max_length=20)
    first, empty, no_room = scored
    assert first is not None and first.truncated and first.tokens == 20 - len(prompt_ids)
    target = tokenizer(long_answer, add_special_tokens=False)["input_ids"][: first.tokens]
    assert first.nll == pytest.approx(independent_nll(model, prompt_ids, target), rel=1e-4)
    assert empty is None and no_room is None
    assert summarize_perplexity(scored)["skipped"] == 2


def test_budget_forcing_on_a_real_model_caps_thinking(model: Any, tokenizer: Any) -> None:
    generator = TransformersGenerator(model, tokenizer, batch_size=4)
    prompts = [generator.render(turns(p)) for p in PROMPTS[:2]]
    options = BudgetForcing(max_thinking_tokens=5, max_answer_tokens=4)
    forced = budget_force(generator, prompts, options, max_new_tokens=64)
    for f in forced:
        # A random model never writes </think>: thinking runs into the cap (or stops at EOS).
        assert f.thinking_tokens <= 5 and (f.capped or f.finish_reason == "stop")
        assert f.answer.startswith("Final Answer:") and f.answer_tokens <= 4
        assert f.prompt.endswith("<|im_start|>assistant\n<think>")
    assert generator.tokens_generated == sum(f.tokens for f in forced)


def test_cli_eval_with_a_tiny_model(tmp_path: Path, student_dir: Path) -> None:
    rows = [{"id": f"q{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1),
             "completion": f"{i} + 1 = {i + 1}"} for i in range(4)]
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.yaml").write_text(
        f"data: held.jsonl\nmodels:\n  baseline: {student_dir}\n"
        "  student: {model: " + str(student_dir) + ", budget_forcing: {max_thinking_tokens: 3}}\n"
        "  teacher: {column: completion}\n"
        "generation: {max_new_tokens: 6, batch_size: 4}\n"
    )
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "eval.yaml"), "-o",
                                      str(tmp_path / "eval.json"), "-q"])
    assert result.exit_code == 0, result.output
    assert "accuracy (math verifier) on 4 held-out items" in result.output
    assert "paired test" in result.output and "n/a" in result.output
    saved = json.loads((tmp_path / "eval.json").read_text())
    for key in ("metric", "n", "baseline", "student", "teacher", "heldout_prompts", "paired_test",
                "models", "items"):
        assert key in saved
    assert saved["teacher"] == 1.0 and saved["n"] == 4
    baseline = saved["models"]["baseline"]
    assert baseline["perplexity"] > 1 and baseline["perplexity_detail"]["scored"] == 4
    assert baseline["tokens"] > 0 and saved["models"]["teacher"]["perplexity"] == "n/a"
    # The same model: the same perplexity, whatever budget forcing does to its answers.
    assert saved["models"]["student"]["perplexity"] == pytest.approx(baseline["perplexity"])
    assert saved["models"]["student"]["budget_forcing"]["mean_thinking_tokens"] <= 3
    first = saved["items"][0]["outputs"]
    assert first["student"]["output"].startswith("Final Answer:")
    assert first["student"]["thinking_tokens"] <= 3 and "answer_nll" in first["baseline"]
    assert set(saved["paired_test"]) >= {"b", "c", "p_value", "method"}
    # A bad key stops the CLI before any model loads, naming file, line and key.
    (tmp_path / "bad.yaml").write_text("data: held.jsonl\nmodels:\n  a: {model: x, colour: 1}\n")
    bad = CliRunner().invoke(app, ["eval", str(tmp_path / "bad.yaml")])
    assert bad.exit_code == 2 and "bad.yaml:3: models.a.colour: unknown key" in bad.output
