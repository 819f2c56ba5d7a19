"""The GRPO recipe's config and data checks, and the RL export, without training (the recipe's
training runs are in tests/integration/test_grpo.py). Every check here happens before a model
is loaded: the student named is a folder that does not exist, so a check that came too late
would fail on loading it instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stillroom.cli.main import app
from stillroom.errors import ConfigError, InputError
from stillroom.export_rl import export_rl, rl_rows
from stillroom.train.grpo import (
    build_trainer,
    load_grpo_config,
    parse_grpo_config,
    prompt_turns,
    reward_functions,
    reward_records,
)

REWARD = "rewards:\n  - verifier: exact\n    options: {reference_column: answer}\n"


def write(folder: Path, rows: list[dict], config: str) -> Path:
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path = folder / "grpo.yaml"
    path.write_text("student: no-such-model\ndata: data.jsonl\n" + config, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("data: d.jsonl\nnum_generations: 1\n", "num_generations", 2),
        ("data: d.jsonl\nrewards: []\n", "rewards", 2),
        ("data: d.jsonl\nrewards:\n  - verifier: maths\n", "rewards.0.verifier", 3),
        ("data: d.jsonl\nrewards:\n  - verifier: exact\n    wieght: 2\n", "rewards.0.wieght", 4),
        ("data: d.jsonl\nloss_type: ppo\n", "loss_type", 2),
        ("data: d.jsonl\nscale_rewards: always\n", "scale_rewards", 2),
        ("data: d.jsonl\ntemperature: 0\n", "temperature", 2),
        ("data: d.jsonl\nrewards:\n  - verifier: exact\n    weight: .nan\n", "rewards.0.weight", 4),
        ("data: d.jsonl\nrewards:\n  - verifier: exact\n    weight: .inf\n", "rewards.0.weight", 4),
        ("data: d.jsonl\nrewards:\n  - verifier: exact\n    weight: -1\n", "rewards.0.weight", 4),
        ("data: d.jsonl\nthink_opened: maybe\n", "think_opened", 2),
        ("data: d.jsonl\nthink_end: ''\n", "think_end", 2),
    ],
)
def test_config_errors_name_the_key(text: str, key: str, line: int | None) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_grpo_config(text, "grpo.yaml")
    assert caught.value.key == key and caught.value.line == line and caught.value.path == "grpo.yaml"


def test_config_cross_checks_and_defaults() -> None:
    with pytest.raises(ConfigError, match=r"\(6\) must be a multiple of num_generations \(4\)"):
        parse_grpo_config("data: d\nbatch_size: 3\ngradient_accumulation: 2\n")
    assert parse_grpo_config("data: d\nbatch_size: 2\ngradient_accumulation: 2\n").batch_size == 2
    with pytest.raises(ConfigError, match="two rewards are named 'exact'"):
        parse_grpo_config("data: d\nrewards: [{verifier: exact}, {verifier: exact}]\n")
    named = parse_grpo_config("data: d\nrewards: [{verifier: exact}, {verifier: exact, name: b}]\n")
    assert [spec.label() for spec in named.rewards or []] == ["exact", "b"]
    config = parse_grpo_config("data: d\n")
    assert (config.num_generations, config.beta, config.loss_type, config.rewards) == (4, 0.0, "dapo", None)


def test_a_missing_reference_column_is_a_config_error_before_any_model(tmp_path: Path) -> None:
    rows = [{"id": "a", "prompt": "q1", "answer": "1"}, {"id": "b", "prompt": "q2"}]
    with pytest.raises(ConfigError) as caught:
        build_trainer(load_grpo_config(write(tmp_path, rows, REWARD)))
    assert "`answer`" in caught.value.reason and "row 1 (id 'b')" in caught.value.reason
    assert caught.value.key == "rewards.0"


def test_bad_reward_options_and_missing_prompts(tmp_path: Path) -> None:
    rows = [{"prompt": "q", "answer": "1"}]
    bad = "rewards:\n  - verifier: regex\n    options: {pattern: '('}\n"
    with pytest.raises(ConfigError) as caught:
        build_trainer(load_grpo_config(write(tmp_path, rows, bad)))
    assert caught.value.key == "rewards.0.options.pattern" and "not a regex" in caught.value.reason
    with pytest.raises(InputError, match=r"row 0: no `prompt` \(or `messages`\) column"):
        build_trainer(load_grpo_config(write(tmp_path, [{"answer": "1"}], REWARD)))
    with pytest.raises(ConfigError) as caught:  # no rewards and no verifier column
        build_trainer(load_grpo_config(write(tmp_path, rows, "")))
    assert caught.value.key == "rewards"


def test_think_options_reach_every_reward() -> None:
    r1_prompt = "<|User|>What is 6*7?<|Assistant|><think>\n"
    cut = "Let me try 6*7. Maybe \\boxed{42}? Wait, 6*7 = 4"  # cut mid-thought
    base = "data: d\nrewards: [{verifier: math}]\n"
    for extra, opened in (("", None), ("think_opened: true\n", True), ("think_opened: false\n", False)):
        [reward] = reward_functions(parse_grpo_config(base + extra))
        assert reward.tags.opened is opened
        expected = [1.0] if opened is False else [0.0]  # auto: the prompt opened the trace
        assert reward(prompts=[r1_prompt], completions=[cut], answer=["42"]) == expected
    config = parse_grpo_config("data: d\nthink_start: <reasoning>\nthink_end: </reasoning>\n")
    [per_row] = reward_functions(config)
    assert (per_row.tags.start, per_row.tags.end, per_row.tags.opened) == ("<reasoning>", "</reasoning>", None)
    assert per_row(prompts=["p"], completions=["<Reasoning>\\boxed{42}</reasoning> no"],
                   answer=["42"], verifier=["math"], verifier_options=["{}"]) == [0.0]
    with pytest.raises(ConfigError, match="must differ"):
        parse_grpo_config("data: d\nthink_start: <t>\nthink_end: <t>\n")


def test_the_reference_column_may_not_be_the_answer_column(tmp_path: Path) -> None:
    rows = [{"prompt": "q", "answer": "1", "completion": "1"}]
    for column in ("completion", "reasoning", "messages"):
        bad = f"rewards:\n  - verifier: math\n    options: {{reference_column: {column}}}\n"
        with pytest.raises(ConfigError) as caught:
            build_trainer(load_grpo_config(write(tmp_path, rows, bad)))
        assert caught.value.key == "rewards.0.options.reference_column"
        assert f"`{column}`" in caught.value.reason
    exported = [{"prompt": "q", "answer": "1", "verifier": "exact",
                 "verifier_options": '{"reference_column": "completion"}'}]
    with pytest.raises(ConfigError, match="row 0: the exact verifier may not read"):
        build_trainer(load_grpo_config(write(tmp_path, exported, "")))


def test_a_column_of_text_and_numbers_is_made_text_before_any_model(tmp_path: Path) -> None:
    rows = [{"id": "a", "prompt": "2+2?", "answer": "4"}, {"id": 7, "prompt": "3+3?", "answer": 6},
            {"prompt": "1.5+1.5?", "answer": 3.0}]
    records = reward_records(rows, ["id", "answer"], "data.jsonl")
    assert records == [{"id": "a", "answer": "4"}, {"id": "7", "answer": "6"},
                       {"id": None, "answer": "3.0"}]
    datasets = pytest.importorskip("datasets")
    assert datasets.Dataset.from_list(records)["answer"] == ["4", "6", "3.0"]
    # Per-row verifiers (exported data): every column but the prompt and someone's answer.
    per_row = reward_records([{"prompt": "q", "answer": 1, "verifier": "math", "completion": "x"},
                              {"prompt": "q", "answer": "2", "verifier": "math"}], [], "d")
    assert per_row == [{"answer": "1", "verifier": "math"}, {"answer": "2", "verifier": "math"}]
    # A mix that has no one text form is an error naming the column, before the model loads.
    mixed = [{"prompt": "q", "tests": [{"input": "1", "output": "1"}]},
             {"prompt": "q", "tests": "assert 1"}]
    code = "rewards:\n  - verifier: code\n"
    with pytest.raises(InputError, match=r"the column `tests` holds values of different types"):
        build_trainer(load_grpo_config(write(tmp_path, mixed, code)))


def test_cli_trains_nothing_on_an_answer_graded_against_itself(tmp_path: Path) -> None:
    bad = "rewards:\n  - verifier: exact\n    options: {reference_column: completion}\n"
    path = write(tmp_path, [{"prompt": "q", "answer": "1", "completion": "1"}], bad)
    result = CliRunner().invoke(app, ["train", "grpo", str(path)])
    assert result.exit_code == 2, result.output
    assert "reference_column" in result.output and "Traceback" not in result.output


def test_prompt_turns_from_text_turns_or_messages() -> None:
    assert prompt_turns({"prompt": "hi"}) == [{"role": "user", "content": "hi"}]
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a teacher's answer"}]
    assert prompt_turns({"messages": messages}) == messages[:2]
    for bad in ({"prompt": "  "}, {"prompt": 3}, {"prompt": [{"role": "user"}]}):
        with pytest.raises(ValueError):
            prompt_turns(bad)


def test_cli_refuses_a_missing_column_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, [{"prompt": "q"}], REWARD)
    result = CliRunner().invoke(app, ["train", "grpo", str(path)])
    assert result.exit_code == 2, result.output
    assert "answer" in result.output and "Traceback" not in result.output


# -- the RL export -------------------------------------------------------------------------------


def test_rl_rows_keep_the_task_and_leave_the_answer_out() -> None:
    rows = [{"id": "x", "prompt": "What is 1 + 2?", "answer": "1 + 2 = 3", "completion": "3",
             "reasoning": "...", "metadata": {"a": 1}}]
    tasks = rl_rows(rows, "exact", {"reference_column": "answer"})
    assert tasks == [{"id": "x", "prompt": [{"role": "user", "content": "What is 1 + 2?"}],
                      "answer": "1 + 2 = 3", "verifier": "exact",
                      "verifier_options": '{"reference_column": "answer"}'}]
    standard = rl_rows(rows, "exact", prompt_format="standard")
    assert standard[0]["prompt"] == "What is 1 + 2?"
    with pytest.raises(ConfigError, match="unknown verifier"):
        rl_rows(rows, "maths")
    with pytest.raises(ConfigError) as caught:
        rl_rows(rows, "code")
    assert caught.value.key == "tests"
    turns = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    with pytest.raises(InputError, match="2 turns"):
        rl_rows([{"prompt": turns, "answer": "1"}], "math", prompt_format="standard")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_loads_with_datasets(tmp_path: Path, suffix: str) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"id": f"r{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(3)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = export_rl(tmp_path / "in.jsonl", tmp_path / f"rl{suffix}", verifier="math",
                    options={"timeout_seconds": 2})
    loaded = datasets.load_dataset(suffix.lstrip(".").replace("jsonl", "json"),
                                   data_files=str(out), split="train")
    assert loaded.column_names == ["id", "prompt", "answer", "verifier", "verifier_options"]
    assert loaded[1]["prompt"] == [{"role": "user", "content": "What is 1 + 1?"}]
    assert json.loads(loaded[0]["verifier_options"]) == {"timeout_seconds": 2}
    with pytest.raises(ConfigError, match=r"\.jsonl or \.parquet"):
        export_rl(tmp_path / "in.jsonl", tmp_path / "rl.csv", verifier="math")


def test_export_cli(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "q", "answer": "1"}) + "\n",
                                       encoding="utf-8")
    runner = CliRunner()
    done = runner.invoke(app, ["export", "rl", str(tmp_path / "in.jsonl"), "-o",
                               str(tmp_path / "rl.jsonl"), "-k", "exact", "--options",
                               '{"reference_column": "answer"}'])
    assert done.exit_code == 0, done.output
    assert "exported 1 tasks (exact)" in done.output
    bad = runner.invoke(app, ["export", "rl", str(tmp_path / "in.jsonl"), "-o",
                              str(tmp_path / "rl.jsonl"), "-k", "code"])
    assert bad.exit_code == 2 and "tests" in bad.output and "Traceback" not in bad.output
