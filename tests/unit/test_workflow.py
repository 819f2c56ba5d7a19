"""Workflow files: steps checked before anything runs, {out} filled in, steps resumed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stillroom.errors import ConfigError
from stillroom.workflow import Workflow, is_workflow_text


def write(folder: Path, text: str) -> Path:
    path = folder / "flow.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_file_with_steps_is_a_workflow() -> None:
    assert is_workflow_text("steps:\n  - eval: {}\n")
    assert not is_workflow_text("stages:\n  - type: complete\n")
    assert not is_workflow_text("steps: [\n")


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("steps: []\n", 1, "steps", "non-empty"),
        ("steps:\n  - name: a\n", 2, "steps[0]", "exactly one of"),
        ("steps:\n  - name: a\n    train: rl\n    config: {data: x}\n", 3, "steps[0].train",
         "one of sft, kd, dpo"),
        ("steps:\n  - name: a\n    eval: {data: x}\n    extra: 1\n", 4, "steps[0].extra", "unknown key"),
        ("steps:\n  - name: a\n    eval: {data: x}\n  - name: a\n    eval: {data: y}\n", 4,
         "steps[1].name", "unique"),
        # The recipe's own check, re-pointed at the workflow file's line.
        ("steps:\n  - name: tune\n    train: sft\n    config:\n      data: x\n"
         "      learning_rate: -1\n", 6, "steps[0].config.learning_rate", "greater than 0"),
        ("steps:\n  - name: gen\n    pipeline:\n      stages:\n        - type: complete\n"
         "          temprature: 0.5\n", 6, "steps[0].pipeline.stages[0].temprature", "temprature"),
    ],
)
def test_every_step_is_checked_before_anything_runs(
    tmp_path: Path, text: str, line: int, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        Workflow.from_file(write(tmp_path, text))
    assert error.value.line == line, str(error.value)
    assert error.value.key is not None and error.value.key.startswith(key), str(error.value)
    assert message in str(error.value)
    assert str(tmp_path / "flow.yaml") in str(error.value)


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("trl")


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer_dir: Path) -> Path:
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    out = tmp_path_factory.mktemp("student")
    transformers.LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_steps_run_in_order_read_each_other_and_resume(tmp_path: Path, student_dir: Path) -> None:
    rows = [{"id": str(i), "prompt": f"Say {i}.", "completion": str(i), "answer": str(i)}
            for i in range(6)]
    rows.append(dict(rows[0], id="dup"))  # the dedup step removes it
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    flow = write(tmp_path, f"""
steps:
  - name: rows
    pipeline:
      input: {{path: rows.jsonl}}
      stages: [{{type: dedup, method: exact, column: prompt}}]
  - name: tune
    train: sft
    config: {{student: {student_dir}, data: "{{out}}/rows", max_steps: 2, batch_size: 4,
             learning_rate: 0.01, max_length: 64}}
  - name: check
    eval:
      data: "{{out}}/rows"
      models: {{student: "{{out}}/tune/final", teacher: {{column: completion}}}}
      verifier: exact
      generation: {{max_new_tokens: 4}}
""")
    lines: list[str] = []
    produced = Workflow.from_file(flow).run(tmp_path / "out", log=lines.append, progress=False)
    assert produced["rows"] == tmp_path / "out" / "rows"
    record = json.loads((tmp_path / "out" / "tune" / "final" / "stillroom_train.json").read_text())
    assert record["rows"] == 6 and record["steps"] == 2
    result: dict[str, Any] = json.loads((tmp_path / "out" / "check" / "eval.json").read_text())
    assert result["n"] == 6 and result["teacher"] == 1.0 and "student" in result["models"]
    # A rerun skips every finished step.
    again: list[str] = []
    Workflow.from_file(flow).run(tmp_path / "out", log=again.append, progress=False)
    assert sum("skipped" in line for line in again) == 3, again
    # A finished step whose config changed is not silently skipped.
    flow.write_text(flow.read_text().replace("max_steps: 2", "max_steps: 3"))
    with pytest.raises(ConfigError, match="trained with a different config"):
        Workflow.from_file(flow).run(tmp_path / "out", log=again.append, progress=False)


def test_a_finished_pipeline_step_whose_input_changed_is_run_again(tmp_path: Path) -> None:
    # The skip used to compare the pipeline only: a grown input or another --limit was skipped
    # with rows missing.
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"id": i, "prompt": f"p{i}"}) + "\n"
                                                 for i in range(3)))
    flow = write(tmp_path, """
steps:
  - name: rows
    pipeline:
      input: rows.jsonl
      stages: [{type: dedup, method: exact, column: prompt}]
""")
    out = tmp_path / "out"
    Workflow.from_file(flow).run(out, log=lambda line: None, progress=False)
    lines: list[str] = []
    Workflow.from_file(flow).run(out, log=lines.append, progress=False)
    assert any("skipped" in line for line in lines)
    with open(tmp_path / "rows.jsonl", "a") as handle:
        handle.write(json.dumps({"id": 3, "prompt": "p3"}) + "\n")
    from stillroom.errors import OutputFolderError

    with pytest.raises(OutputFolderError, match="different run"):
        Workflow.from_file(flow).run(out, log=lines.append, progress=False)
    lines.clear()
    Workflow.from_file(flow).run(out, log=lines.append, progress=False, overwrite=True)
    assert not any("skipped" in line for line in lines)
