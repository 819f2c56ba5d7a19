"""`stillroom train sft` on a data folder whose rows carry a `reasoning` column, then `stillroom
eval` of the student with thinking on, off and budget-forced, through the installed command in
a subprocess. The student is a tiny random Llama over the embedded SmolLM2 tokenizer (its real
ChatML template, which has no thinking field: the trace goes in <think> tags); its answers are
garbage, so the test checks the mechanics, not accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

STILLROOM = str(Path(sys.executable).with_name("stillroom"))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STILLROOM, *args], capture_output=True, text=True, timeout=400,
                          cwd=cwd)


def write_yaml(path: Path, keys: dict[str, Any]) -> Path:
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in keys.items()), encoding="utf-8")
    return path


def make_student(folder: Path, tokenizer_dir: Path) -> Path:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def data_folder(out: Path) -> Path:
    (out / "data").mkdir(parents=True)
    rows: list[dict[str, Any]] = [
        {"id": f"r{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i),
         "completion": f"The answer is {2 * i}.",
         "reasoning": f"{i} plus {i}: count {i} more from {i}, which gives {2 * i}."}
        for i in range(6)]
    rows.append({"id": "plain", "prompt": "What is 5 + 0?", "answer": "5",
                 "completion": "The answer is 5.", "reasoning": None})
    # A stillroom output keeps Parquet files in data/: every column in every row, null where a
    # row has no trace.
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), out / "data" / "part-00000.parquet")
    return out


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_train_on_traces_then_eval_thinking_on_off_and_forced(
    tmp_path: Path, smollm2_tokenizer_dir: Path
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("trl")
    student = make_student(tmp_path / "student", smollm2_tokenizer_dir)
    data_folder(tmp_path / "traces")
    common = {"student": str(student), "data": "traces", "max_steps": 2, "batch_size": 4,
              "max_length": 128, "learning_rate": 0.005, "seed": 0}

    write_yaml(tmp_path / "sft.yaml", {**common, "output_dir": "run"})
    trained = cli("train", "sft", "sft.yaml", cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    record = json.loads((tmp_path / "run" / "final" / "stillroom_train.json").read_text())
    assert record["steps"] == 2 and record["rows"] == 7
    assert record["reasoning"] == {"mode": "tags", "field": None, "rows_with_trace": 6,
                                   "masked": False}

    write_yaml(tmp_path / "masked.yaml", {**common, "output_dir": "masked", "max_steps": 1,
                                          "mask_reasoning": True})
    masked = cli("train", "sft", "masked.yaml", cwd=tmp_path)
    assert masked.returncode == 0, masked.stdout + masked.stderr
    record = json.loads((tmp_path / "masked" / "final" / "stillroom_train.json").read_text())
    assert record["reasoning"]["masked"] is True and record["steps"] == 1

    final = "run/final"
    write_yaml(tmp_path / "eval.yaml", {
        "data": "traces", "verifier": "math", "perplexity": False,
        "generation": {"max_new_tokens": 8, "batch_size": 4},
        "models": {"think": {"model": final, "thinking": "on"},
                   "no_think": {"model": final, "thinking": "off"},
                   "forced": {"model": final, "budget_forcing": {"max_thinking_tokens": 4}},
                   "teacher": {"column": "completion"}},
        "paired_test": {"a": "think", "b": "no_think"},
        "paired_tests": [{"a": "forced", "b": "think"}],
    })
    evaluated = cli("eval", "eval.yaml", "-o", "eval.json", "-q", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert "thinking" in evaluated.stdout  # the table's column
    assert "think vs no_think" in evaluated.stdout and "forced vs think" in evaluated.stdout
    result = json.loads((tmp_path / "eval.json").read_text())
    models = result["models"]
    assert models["think"]["reasoning"]["thinking"] == "on"
    assert models["think"]["reasoning"]["with_trace"] == 7  # the prompt opened every trace
    assert models["no_think"]["reasoning"]["thinking"] == "off"
    assert models["forced"]["reasoning"]["thinking"] == "budget forcing"
    assert models["forced"]["budget_forcing"]["mean_thinking_tokens"] <= 4
    assert models["teacher"]["accuracy"] == 1.0 and models["teacher"]["reasoning"] is None
    assert [t["models"] for t in result["paired_tests"]] == [["think", "no_think"],
                                                             ["forced", "think"]]
    for item in result["items"]:
        think = item["outputs"]["think"]
        # The graded output is never the trace: an unended trace is "" and fails with its reason.
        if think["reasoning_ended"]:
            assert think["reasoning"] not in think["output"] or not think["reasoning"]
        else:
            assert think["output"] == "" and "never ended" in think["reason"]
        assert think["reasoning_tokens"] <= think["tokens"]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_contradictory_reasoning_options_exit_2_naming_the_key(tmp_path: Path) -> None:
    write_yaml(tmp_path / "sft.yaml", {"data": "d", "reasoning": "drop", "mask_reasoning": True})
    bad = cli("train", "sft", "sft.yaml", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "sft.yaml" in bad.stderr and "mask_reasoning" in bad.stderr

    (tmp_path / "eval.yaml").write_text(
        "data: d.jsonl\nmodels:\n  a: {model: embedded, thinking: off, budget_forcing: true}\n",
        encoding="utf-8")
    bad = cli("eval", "eval.yaml", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "eval.yaml:3" in bad.stderr and "models.a.thinking" in bad.stderr


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_row_with_two_traces_exits_2_naming_the_file_and_line(
    tmp_path: Path, smollm2_tokenizer_dir: Path
) -> None:
    make_student(tmp_path / "student", smollm2_tokenizer_dir)
    rows = [{"prompt": "What is 2 + 2?", "completion": "4", "reasoning": "two and two"},
            # the trace in the column and again inline: which to train on is unclear
            {"prompt": "What is 3 + 3?", "completion": "<think>three twice</think> 6",
             "reasoning": "three and three"}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows),
                                         encoding="utf-8")
    write_yaml(tmp_path / "sft.yaml", {"student": "student", "data": "data.jsonl",
                                       "output_dir": "run", "max_steps": 1})
    bad = cli("train", "sft", "sft.yaml", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "data.jsonl:2: row 1: a trace in `reasoning` and another inline" in bad.stderr
    assert not (tmp_path / "run" / "final").exists()
