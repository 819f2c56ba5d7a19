"""GRPO with stillroom's verifiers as rewards, for real: TRL's GRPOTrainer samples from a tiny
random Llama (the embedded SmolLM2 tokenizer, nothing downloaded) on the CPU, the real verifiers
grade each completion, a few steps train, save and resume; and the RL export loads with
``datasets`` and trains in TRL as is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("trl")

from typer.testing import CliRunner  # noqa: E402

from stillroom.cli.main import app  # noqa: E402
from stillroom.export_rl import export_rl  # noqa: E402
from stillroom.train.grpo import TRAIN_FILE, load_grpo_config, train_grpo  # noqa: E402
from stillroom.verify.rewards import RowVerifierReward  # noqa: E402
from tests.tiny_models import tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer_dir: Path) -> Path:
    torch.set_num_threads(1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    folder = tmp_path_factory.mktemp("student")
    model = tiny_llama(tokenizer, max_positions=256)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def addition_rows(count: int) -> list[dict[str, Any]]:
    return [{"id": f"add-{i}", "prompt": f"What is {i} + 3?", "answer": f"{i} + 3 = {i + 3}",
             "completion": f"{i} + 3 = {i + 3}"}  # a teacher's answer: never graded
            for i in range(count)]


def test_recipe_trains_with_verifier_rewards_saves_and_resumes(tmp_path: Path, student: Path) -> None:
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in addition_rows(8)), encoding="utf-8")
    config = tmp_path / "grpo.yaml"
    # exact: a random model never writes the equation (reward 0); length: short answers pass,
    # so rewards differ within a group and the policy gets a gradient.
    config.write_text(
        f"student: {student}\ndata: data.jsonl\noutput_dir: run\nmax_steps: 2\nbatch_size: 4\n"
        "num_generations: 4\nmax_completion_length: 8\nlearning_rate: 0.01\nsave_steps: 1\n"
        "rewards:\n  - verifier: exact\n    options: {reference_column: answer}\n"
        "  - verifier: length\n    options: {max: 40, unit: characters}\n    weight: 0.5\n",
        encoding="utf-8")
    before = {k: v.clone() for k, v in
              transformers.AutoModelForCausalLM.from_pretrained(student).state_dict().items()}
    final = train_grpo(load_grpo_config(config))

    record = json.loads((final / TRAIN_FILE).read_text(encoding="utf-8"))
    assert record["recipe"] == "grpo" and record["steps"] == 2 and record["rows"] == 8
    assert record["reward_names"] == ["exact", "length"]
    exact, length = record["reward_curves"]["exact"], record["reward_curves"]["length"]
    assert [step for step, _ in exact] == [1, 2] and all(value == 0.0 for _, value in exact)
    # The total is TRL's weighted sum of the verifiers' rewards: 1.0 * exact + 0.5 * length.
    for (_, total), (_, short) in zip(record["rewards_curve"], length, strict=True):
        assert total == pytest.approx(0.5 * short)
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    after = transformers.AutoModelForCausalLM.from_pretrained(final).state_dict()
    # Some completions were short and some not, so advantages were not all 0: the policy moved.
    assert any(0 < short < 1 for _, short in length), length
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # Resume: one step more starts from the last checkpoint, not from scratch.
    config.write_text(config.read_text(encoding="utf-8").replace("max_steps: 2", "max_steps: 3"),
                      encoding="utf-8")
    record = json.loads((train_grpo(load_grpo_config(config)) / TRAIN_FILE).read_text(encoding="utf-8"))
    assert record["resumed_from"] == "checkpoint-2" and record["steps"] == 3


def test_the_rl_export_trains_in_trl_and_in_the_recipe_as_is(tmp_path: Path, student: Path) -> None:
    from datasets import load_dataset
    from trl import GRPOConfig, GRPOTrainer

    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in addition_rows(4)), encoding="utf-8")
    exported = export_rl(tmp_path / "in.jsonl", tmp_path / "tasks.parquet", verifier="exact",
                         options={"reference_column": "answer"})

    # TRL directly: the file as datasets loads it, the per-row verifier as the reward.
    dataset = load_dataset("parquet", data_files=str(exported), split="train")
    seen: list[tuple[Any, Any]] = []
    reward = RowVerifierReward()

    def graded(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        seen.extend(zip(completions, columns["answer"], strict=True))
        return reward(prompts, completions, **columns)

    tokenizer = transformers.AutoTokenizer.from_pretrained(student)
    trainer = GRPOTrainer(
        model=str(student), reward_funcs=[graded], train_dataset=dataset, processing_class=tokenizer,
        args=GRPOConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=4,
                        num_generations=4, max_completion_length=6, report_to="none",
                        save_strategy="no", bf16=False, gradient_checkpointing=False,
                        disable_tqdm=True),
    )
    trainer.train()
    assert len(seen) == 4  # one prompt's group of 4 sampled completions
    completion, answer = seen[0]
    assert isinstance(completion, list) and completion[0]["role"] == "assistant"  # conversational
    assert answer.endswith(f"= {int(answer.split()[0]) + 3}")  # the reference column came through
    assert "rewards/graded/mean" in trainer.state.log_history[0]

    # The recipe: no `rewards` key, each row's verifier.
    (tmp_path / "grpo.yaml").write_text(
        f"student: {student}\ndata: tasks.parquet\noutput_dir: run\nmax_steps: 1\nbatch_size: 4\n"
        "max_completion_length: 6\n", encoding="utf-8")
    done = CliRunner().invoke(app, ["train", "grpo", str(tmp_path / "grpo.yaml")])
    assert done.exit_code == 0, done.output
    assert "trained 1 steps on 4 prompts" in done.output
    record = json.loads((tmp_path / "run" / "final" / TRAIN_FILE).read_text(encoding="utf-8"))
    assert record["rewards"] == "per row (verifier column)" and record["reward_names"] == ["verifier"]


def test_a_template_that_opens_the_trace_earns_nothing_for_an_unfinished_one(
        tmp_path: Path, student: Path) -> None:
    """An R1-style template (the generation prompt ends with ``<think>``): the policy's
    completions start inside the trace, and a random model never closes it in 6 tokens, so
    even a reward every text passes (length) earns 0: no unfinished thought is graded."""
    import shutil

    opener = tmp_path / "opener"
    shutil.copytree(student, opener)
    tokenizer = transformers.AutoTokenizer.from_pretrained(opener)
    tokenizer.chat_template += "{% if add_generation_prompt %}<think>\n{% endif %}"
    tokenizer.save_pretrained(opener)
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in addition_rows(4)), encoding="utf-8")
    base = (f"student: {opener}\ndata: data.jsonl\nmax_steps: 1\nbatch_size: 4\n"
            "max_completion_length: 6\nsave_steps: 100\n"
            "rewards:\n  - verifier: length\n    options: {max: 1000, unit: characters}\n")
    curves = {}
    for opened in ("auto", "false"):
        config = tmp_path / f"{opened}.yaml"
        config.write_text(base + f"think_opened: {opened}\noutput_dir: run-{opened}\n",
                          encoding="utf-8")
        record = json.loads((train_grpo(load_grpo_config(config)) / TRAIN_FILE).read_text(encoding="utf-8"))
        assert record["prompts_opening_trace"] == 4
        curves[opened] = record["reward_curves"]["length"]
    assert curves == {"auto": [[1, 0.0]], "false": [[1, 1.0]]}


def test_lora_adapters_are_merged_into_the_saved_model(tmp_path: Path, student: Path) -> None:
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in addition_rows(2)), encoding="utf-8")
    (tmp_path / "grpo.yaml").write_text(
        f"student: {student}\ndata: data.jsonl\noutput_dir: run\nmax_steps: 1\nbatch_size: 4\n"
        "max_completion_length: 6\nlora: {r: 4, alpha: 8}\n"
        "rewards: [{verifier: math, options: {reference_column: answer}}]\n", encoding="utf-8")
    final = train_grpo(load_grpo_config(tmp_path / "grpo.yaml"))
    assert not (final / "adapter_config.json").exists()  # plain weights, loadable without peft
    model = transformers.AutoModelForCausalLM.from_pretrained(final)
    assert not any("lora" in name for name, _ in model.named_parameters())
